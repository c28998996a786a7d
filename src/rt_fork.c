/* The fork runtime: the same handler forms and conn object as the event
 * runtime, on one socket of a forked child. The connection's coroutines
 * (handle, conn:spawn) park in their waits; one loop ppolls over what they
 * wait for, the conn's timers, --idle-timeout and SIGTERM (the drain
 * deadline), and resumes those that became ready. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "hload.h"
#include "lconn.h"
#include "lpubsub.h"
#include "lhost.h"
#include "llog.h"
#include "log.h"
#include "net.h"
#include "rt_fork.h"

#define FORK_READ_MAX 65536
#define FORK_POLL_MAX (2 + LCONN_UPSTREAMS_MAX)  /* + the pubsub doorbell */

enum { W_TIMEOUT = -2, W_END = -3 };    /* frt_write_block, besides 0 */
enum { R_READY, R_TIMEOUT, R_CLOSED };  /* why a parked task resumes */

struct frt;
struct ftask;
struct fup;

/* A socket of the child, the client's or an upstream: at most one task
 * parked reading it and one writing (or connecting) it. */
struct fside {
    int fd;                     /* -1 once closed */
    struct fup *up;             /* NULL: the client's */
    struct ftask *reader, *writer;
};

/* A coroutine of the connection, handle or one of conn:spawn. The extra
 * space of its lua_State points here (task_of); other threads (the main
 * one, a coroutine.create of the handler) are no task and cannot wait. A
 * parked task resumes with no values: its continuation reads why (and
 * code) and pushes the operation's results with the function the
 * immediate path uses. */
struct ftask {
    struct frt *f;
    lua_State *co;              /* NULL: a free slot */
    int ref;                    /* the thread, in the registry */
    int parked, ready;          /* in a wait; due to resume with why, code */
    int why, code;
    struct fside *side;         /* its operation's socket (NULL: sleep) */
    struct fup *up;             /* connect: the upstream it connects */
    double until;               /* the wait's deadline (< 0: none) */
    double secs;                /* send: the timeout of each wait */
    lua_KFunction k;            /* recv: lconn's continuation, or NULL */
    size_t max;                 /* recv: at most this many bytes */
    const char *s;              /* send: the data, a string at index 2 of
                                   the parked call, so it stays put */
    size_t len, off;
};

/* An upstream socket (echohost.socket.connect): in use from the connect
 * until it is closed, reset, gone or its connection ends. */
struct fup {
    struct frt *f;
    struct fside side;
    int in_use;
    struct lconn *u;            /* the object, once connected */
    int ref;                    /* it, in the registry, while open */
    struct addrinfo *ai, *cur;  /* connecting: the addresses, the one tried */
    int err;                    /* the errno of the last address tried */
    char addr[NET_ADDR_LEN];    /* that address: the object's peer */
};

/* The child's one connection. */
struct frt {
    struct hstate *hs;
    lua_State *L;
    long budget;
    size_t mem;
    double idle;                /* --idle-timeout, seconds; 0: none */
    double active;              /* the client's last traffic */
    struct fside cs;            /* the client's socket */
    struct lconn *u;
    int conn_ref;
    int direct;                 /* served by handle(conn) */
    int eof;                    /* the client shut down its side */
    int in_call, close_after;   /* see ev_close in rt_event.c */
    int faulted;
    int input;                  /* callbacks: the client's input is ready */
    const char *end;            /* why it ended (a close reason), or NULL */
    uint64_t bytes_in, bytes_out;
    sigset_t waitmask;          /* the mask while waiting: SIGTERM let in */
    struct ftask tasks[LCONN_TASKS_MAX];
    int ntasks;
    struct fup ups[LCONN_UPSTREAMS_MAX];
    int nups;
    char buf[FORK_READ_MAX];
};

static volatile sig_atomic_t frt_stop;

static void frt_sigterm(int sig) {
    (void)sig;
    frt_stop = 1;
}

static double deadline(double secs) {
    return secs < 0 ? -1 : net_now() + secs;
}

/* The earlier of two deadlines (< 0: none). */
static double earlier(double a, double b) {
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* ppoll's timeout until the deadline next (< 0: none: NULL). */
static struct timespec *until_ts(struct timespec *ts, double next) {
    double t = next - net_now();

    if (next < 0)
        return NULL;
    if (t < 0)
        t = 0;
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
    return ts;
}

/* --- tasks ---------------------------------------------------------------- */

static struct frt child;         /* in bss: a child writes few pages */

/* The task of L, or NULL. A thread made while the handler loaded, before
 * the child cleared the main thread's extra space, copied whatever was
 * there: only a pointer to one of the child's tasks running L counts. */
static struct ftask *task_of(lua_State *L) {
    uintptr_t p = (uintptr_t)*(void **)lua_getextraspace(L);
    uintptr_t lo = (uintptr_t)child.tasks;

    if (p < lo || p >= lo + sizeof child.tasks ||
        (p - lo) % sizeof child.tasks[0] != 0)
        return NULL;
    return ((struct ftask *)p)->co == L ? (struct ftask *)p : NULL;
}

/* Marks the parked t to resume with why; R_CLOSED overrides a wake that
 * is pending (what it would operate on is gone). */
static void task_wake(struct ftask *t, int why, int code) {
    if (t == NULL || !t->parked || (t->ready && why != R_CLOSED))
        return;
    t->ready = 1;
    t->why = why;
    t->code = code;
}

/* Parks t on side (as its reader for POLLIN, else its writer; NULL: a
 * sleep) until the deadline; the caller returns lua_yieldk. */
static void task_park(struct ftask *t, struct fside *side, short events,
                      double until) {
    t->parked = 1;
    t->ready = 0;
    t->side = side;
    t->until = until;
    if (side)
        *(events == POLLIN ? &side->reader : &side->writer) = t;
}

static void task_unpark(struct ftask *t) {
    struct fside *s = t->side;

    if (s && s->reader == t)
        s->reader = NULL;
    if (s && s->writer == t)
        s->writer = NULL;
    t->parked = t->ready = 0;
}

/* The task whose parked operation goes on in a continuation. */
static struct ftask *task_resumed(lua_State *L) {
    struct ftask *t = task_of(L);

    if (t->parked)              /* coroutine.resume of a parked task */
        luaL_error(L, "a coroutine of the connection was resumed while it "
                   "waited");
    return t;
}

/* The task of L, or a raise: what ("conn:recv") would wait, for_ (" for
 * data" or "") ends the message. */
static struct ftask *task_waiter(lua_State *L, const char *what,
                                 const char *for_) {
    struct ftask *t = task_of(L);

    if (t == NULL)
        lconn_would_wait(L, what, for_);
    return t;
}

static int busy(lua_State *L, const char *what, int write,
                const struct fside *s) {
    return lconn_busy(L, what, write ? "write" : "read",
                      s->up ? "upstream socket" : "connection");
}

static void frt_fault(struct frt *f);

static void task_end(struct ftask *t) {
    task_unpark(t);
    *(struct ftask **)lua_getextraspace(t->co) = NULL;
    luaL_unref(t->f->L, LUA_REGISTRYINDEX, t->ref);
    t->co = NULL;
    t->f->ntasks--;
}

/* t raised (its message on its stack): logged with t's traceback, and the
 * connection ends with "error". */
static void task_fault(struct ftask *t, int status) {
    struct frt *f = t->f;
    const char *msg = lua_tostring(t->co, -1);

    lhost_set_mem_limit(f->L, 0);       /* unprotected pushes */
    if (status == LUA_ERRMEM || msg == NULL)
        lua_pushstring(f->L, msg ? msg : "(error object is not a string)");
    else
        luaL_traceback(f->L, t->co, msg, 0);
    lhost_set_mem_limit(f->L, f->mem);
    task_end(t);
    frt_fault(f);
}

/* Resumes t with the nargs values on its stack; from: the thread resuming
 * it (a spawn runs inside another coroutine or a callback). */
static void task_resume(struct ftask *t, lua_State *from, int nargs) {
    int nres, status;

    task_unpark(t);
    hload_budget(t->co, t->f->budget);
    status = lua_resume(t->co, from, nargs, &nres);
    if (status == LUA_YIELD && t->parked)
        return;
    if (status == LUA_OK) {
        task_end(t);
        return;
    }
    if (status == LUA_YIELD) {
        lua_pop(t->co, nres);
        lhost_set_mem_limit(t->f->L, 0);
        lua_pushliteral(t->co, "handle yielded outside conn:recv/conn:send");
        lhost_set_mem_limit(t->f->L, t->f->mem);
        status = LUA_ERRRUN;
    }
    task_fault(t, status);
}

/* A new task for the function below its nargs arguments at the top of
 * from (they are moved to it); resume it next. The caller checked that a
 * slot is free. */
static struct ftask *task_new(struct frt *f, lua_State *from, int nargs) {
    struct ftask *t = f->tasks;
    lua_State *co;
    int ref;

    while (t->co)
        t++;
    co = lua_newthread(from);
    ref = luaL_ref(from, LUA_REGISTRYINDEX);
    t->co = co;
    t->ref = ref;
    t->side = NULL;
    t->up = NULL;
    t->k = NULL;
    *(struct ftask **)lua_getextraspace(co) = t;
    f->ntasks++;
    lua_xmove(from, co, nargs + 1);
    return t;
}

/* Resumes every task woken; 1 if any ran. */
static int tasks_run_ready(struct frt *f) {
    int ran = 0;

    for (int i = 0; i < LCONN_TASKS_MAX; i++) {
        struct ftask *t = &f->tasks[i];
        if (t->co && t->parked && t->ready) {
            task_resume(t, f->L, 0);
            ran = 1;
        }
    }
    return ran;
}

/* --- the end of the connection -------------------------------------------- */

/* up is done with (closed, reset, gone, or a connect that failed): its
 * waiters get nil, "closed", code, its object later calls the same. */
static void up_release(struct fup *up, int code) {
    lua_State *L = up->f->L;

    task_wake(up->side.reader, R_CLOSED, code);
    task_wake(up->side.writer, R_CLOSED, code);
    up->side.reader = up->side.writer = NULL;
    if (up->side.fd >= 0)
        close(up->side.fd);
    up->side.fd = -1;
    if (up->ai)
        freeaddrinfo(up->ai);
    up->ai = up->cur = NULL;
    if (up->u)
        lconn_gone(L, up->u, code);
    up->u = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, up->ref);
    up->ref = LUA_NOREF;
    up->in_use = 0;
    up->f->nups--;
}

/* The connection ended (the first reason stays): the conn object, then
 * the upstreams go, and every parked task gets nil, "closed", code. */
static void frt_end(struct frt *f, const char *reason) {
    int code;

    if (f->end)
        return;
    f->end = reason;
    lconn_gone(f->L, f->u, lconn_reason_code(reason));
    code = f->u->end_code;
    for (int i = 0; i < LCONN_UPSTREAMS_MAX; i++)
        if (f->ups[i].in_use)
            up_release(&f->ups[i], code);
    for (int i = 0; i < LCONN_TASKS_MAX; i++)
        if (f->tasks[i].co)
            task_wake(&f->tasks[i], R_CLOSED, code);
}

/* A socket error ends the connection: "reset" or "error". */
static void frt_ioerr(struct frt *f, int e) {
    frt_end(f, e == ECONNRESET || e == EPIPE ? "reset" : "error");
}

static void frt_close(struct frt *f) {
    shutdown(f->cs.fd, SHUT_WR);    /* the fd itself is closed on exit */
    frt_end(f, f->eof ? "eof" : "closed");
}

/* Logs the error at the top of L (popped) and ends the connection. */
static void frt_fault(struct frt *f) {
    const char *msg = lua_tostring(f->L, -1);

    log_error("handler %s: connection %s (id %lld) closed: %s", f->hs->path,
              lconn_peer(f->u), (long long)f->u->id,
              msg ? msg : "(error object is not a string)");
    lua_pop(f->L, 1);
    f->faulted = 1;
    frt_end(f, "error");
}

/* --- reading and writing -------------------------------------------------- */

/* An I/O error of an upstream: one that went away gives "closed", 104
 * (and is released), others "<what>: <strerror>", errno. */
static int up_fail(lua_State *L, struct fup *up, const char *what, int e) {
    if (e == ECONNRESET || e == EPIPE) {
        up_release(up, ECONNRESET);
        return lconn_fail(L, "closed", ECONNRESET);
    }
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

/* One read of at most max bytes (0: any) of s: pushes recv's results and
 * returns their count, or -1 when it would block. */
static int side_read(lua_State *L, struct frt *f, struct fside *s,
                     size_t max) {
    ssize_t n;

    if (max == 0 || max > FORK_READ_MAX)
        max = FORK_READ_MAX;
    do
        n = recv(s->fd, f->buf, max, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        return -1;
    if (n < 0 && s->up)
        return up_fail(L, s->up, "recv", errno);
    if (n < 0) {
        frt_ioerr(f, errno);
        return lconn_fail(L, "closed", lconn_reason_code(f->end));
    }
    if (s->up == NULL) {
        f->active = net_now();
        f->bytes_in += (uint64_t)n;
        if (n == 0)
            f->eof = 1;
    }
    if (n == 0)
        return lconn_fail(L, "closed", 0);
    lua_pushlstring(L, f->buf, (size_t)n);
    return 1;
}

/* Writes what the kernel takes of p[*off, len): 0 once all is written, 1
 * when it would block, -1 with errno. */
static int side_write(struct frt *f, struct fside *s, const char *p,
                      size_t len, size_t *off) {
    while (*off < len) {
        ssize_t n = send(s->fd, p + *off, len - *off, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN)
            return 1;
        if (n < 0 && errno != EINTR)
            return -1;
        if (n > 0 && s->up == NULL) {
            f->active = net_now();
            f->bytes_out += (uint64_t)n;
        }
        if (n > 0)
            *off += (size_t)n;
    }
    return 0;
}

/* send's results once side_write gave r (0 or -1). */
static int send_result(lua_State *L, struct frt *f, struct fside *s, int r,
                       size_t len) {
    if (r == 0) {
        lua_pushinteger(L, (lua_Integer)len);
        return 1;
    }
    if (s->up)
        return up_fail(L, s->up, "send", errno);
    frt_ioerr(f, errno);
    return lconn_fail(L, "closed", lconn_reason_code(f->end));
}

/* Waits for the client's socket to take more where no coroutine can wait,
 * bounded by until (< 0: none), --idle-timeout and SIGTERM: 0, W_TIMEOUT
 * or W_END. */
static int frt_wait_out(struct frt *f, double until) {
    struct pollfd p = {.fd = f->cs.fd, .events = POLLOUT};
    struct timespec ts;

    for (;;) {
        double now = net_now();
        double idle = f->idle > 0 ? f->active + f->idle : -1;
        if (frt_stop)
            frt_end(f, "shutdown");
        else if (idle >= 0 && now >= idle)
            frt_end(f, "timeout");
        if (f->end)
            return W_END;
        if (until >= 0 && now >= until)
            return W_TIMEOUT;
        int r = ppoll(&p, 1, until_ts(&ts, earlier(until, idle)),
                      &f->waitmask);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR) {
            frt_ioerr(f, errno);
            return W_END;
        }
    }
}

/* Writes all of s to the client from a callback, a timer or a reply: the
 * child blocks (the other coroutines wait). 0, W_TIMEOUT or W_END. */
static int frt_write_block(struct frt *f, const char *s, size_t len,
                           double timeout) {
    double until = deadline(timeout);
    size_t off = 0;
    int r;

    while ((r = side_write(f, &f->cs, s, len, &off)) == 1)
        if ((r = frt_wait_out(f, until)) != 0)
            return r;
    if (r < 0) {
        frt_ioerr(f, errno);
        return W_END;
    }
    return 0;
}

/* --- parked operations ---------------------------------------------------- */

static int recv_k(lua_State *L, int status, lua_KContext ctx) {
    struct ftask *t = task_resumed(L);
    lua_KFunction k = t->k;
    int n;
    (void)status; (void)ctx;

    if (t->why == R_CLOSED)
        n = lconn_fail(L, "closed", t->code);
    else if (t->why == R_TIMEOUT)
        n = lconn_fail(L, "timeout", ETIMEDOUT);
    else if ((n = side_read(L, t->f, t->side, t->max)) < 0) {
        task_park(t, t->side, POLLIN, t->until);    /* not ready after all */
        return lua_yieldk(L, 0, 0, recv_k);
    }
    t->k = NULL;
    return k ? k(L, LUA_YIELD, 0) : n;
}

/* Parks the task t of L reading s; name ("conn:recv") for a raise. */
static int recv_park(lua_State *L, struct ftask *t, struct fside *s,
                     const char *name, size_t max, lua_KFunction k,
                     double timeout) {
    if (s->reader)
        busy(L, name, 0, s);
    t->max = max;
    t->k = k;
    task_park(t, s, POLLIN, deadline(timeout));
    return lua_yieldk(L, 0, 0, recv_k);
}

static int send_k(lua_State *L, int status, lua_KContext ctx) {
    struct ftask *t = task_resumed(L);
    size_t off = t->off;
    int r;
    (void)status; (void)ctx;

    if (t->why == R_CLOSED)
        return lconn_fail(L, "closed", t->code);
    if (t->why == R_TIMEOUT)
        return lconn_fail(L, "timeout", ETIMEDOUT);
    r = side_write(t->f, t->side, t->s, t->len, &t->off);
    if (r != 1)
        return send_result(L, t->f, t->side, r, t->len);
    /* the timeout bounds each wait: one that made progress starts anew */
    task_park(t, t->side, POLLOUT, t->off > off ? deadline(t->secs)
                                                : t->until);
    return lua_yieldk(L, 0, 0, send_k);
}

/* Writes p to s from the task t: the results, or t parks until the
 * kernel took all of it. */
static int send_park(lua_State *L, struct ftask *t, struct fside *s,
                     const char *p, size_t len, double timeout) {
    size_t off = 0;
    int r = side_write(t->f, s, p, len, &off);

    if (r != 1)
        return send_result(L, t->f, s, r, len);
    t->s = p;
    t->len = len;
    t->off = off;
    t->secs = timeout;
    task_park(t, s, POLLOUT, deadline(timeout));
    return lua_yieldk(L, 0, 0, send_k);
}

static int sleep_k(lua_State *L, int status, lua_KContext ctx) {
    struct ftask *t = task_resumed(L);
    (void)status; (void)ctx;

    if (t->why == R_CLOSED)
        return lconn_fail(L, "closed", t->code);
    lua_pushboolean(L, 1);
    return 1;
}

/* conn:sleep and up:sleep: the task parks on no socket. */
static int f_sleep(lua_State *L, struct lconn *u, double secs) {
    struct ftask *t = task_waiter(L, "conn:sleep", "");
    (void)u;

    task_park(t, NULL, 0, net_now() + secs);
    return lua_yieldk(L, 0, 0, sleep_k);
}

/* shutdown("send") of s: a send parked there gets nil, "closed", 0. */
static void side_shut(struct fside *s) {
    task_wake(s->writer, R_CLOSED, 0);
    shutdown(s->fd, SHUT_WR);
}

/* --- the conn object's operations ----------------------------------------- */

static int f_recv(lua_State *L, struct lconn *u, size_t max,
                  const char *what, lua_KFunction k) {
    struct frt *f = u->rt;
    struct ftask *t;
    char name[32];
    int n;

    if (f->eof)
        return lconn_fail(L, "closed", 0);
    /* as the event runtime's input buffer: what is there, if no one waits */
    if (f->direct && f->cs.reader == NULL &&
        (n = side_read(L, f, &f->cs, max)) >= 0)
        return n;
    snprintf(name, sizeof name, "conn:%s", what);
    t = task_waiter(L, name, " for data");
    if (!f->direct)
        return luaL_error(L, "%s: the data of this connection goes to "
                          "on_data", name);
    return recv_park(L, t, &f->cs, name, max, k, u->timeout);
}

static int f_send(lua_State *L, struct lconn *u, const char *s, size_t len) {
    struct frt *f = u->rt;
    struct ftask *t = task_of(L);
    int r;

    if (f->cs.writer)
        busy(L, "conn:send", 1, &f->cs);
    if (t)
        return send_park(L, t, &f->cs, s, len, u->timeout);
    r = frt_write_block(f, s, len, u->timeout);
    if (r == W_TIMEOUT)
        return lconn_fail(L, "timeout", ETIMEDOUT);
    if (r == W_END)
        return lconn_fail(L, "closed", lconn_reason_code(f->end));
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

static void f_close(struct lconn *u) {
    struct frt *f = u->rt;

    if (f->in_call)
        f->close_after = 1;     /* the callback's reply goes out first */
    else
        frt_close(f);
}

static void f_shutdown(struct lconn *u) {
    side_shut(&((struct frt *)u->rt)->cs);
}

static void f_reset(struct lconn *u) {
    struct frt *f = u->rt;

    net_abort(f->cs.fd);
    close(f->cs.fd);
    f->cs.fd = -1;
    frt_end(f, "closed");
}

static void f_timer_arm(struct lconn *u, struct ltimer *t, double secs) {
    (void)u;
    t->due = net_now() + secs;     /* the loop fires it */
}

static void f_timer_disarm(struct lconn *u, struct ltimer *t) {
    (void)u; (void)t;               /* off the list: nothing to undo */
}

static int f_spawn(lua_State *L, struct lconn *u) {
    struct frt *f = u->rt;
    int n;

    if (f->ntasks >= LCONN_TASKS_MAX)
        return lconn_too_many(L, "coroutines", LCONN_TASKS_MAX);
    n = lua_gettop(L) - 2;                  /* fn at 2, its arguments */
    task_resume(task_new(f, L, n), L, n);   /* until it waits or returns */
    lua_pushboolean(L, 1);
    return 1;
}

static void f_deliver(struct lconn *u, struct lsub *s, const char *ch,
                      size_t chlen, const char *msg, size_t len) {
    struct frt *f = u->rt;
    lua_State *L = f->L;
    int n;

    lhost_set_mem_limit(L, 0);  /* pushes are unprotected: see rt_event.c */
    n = lpubsub_push(L, s, ch, chlen, msg, len);
    lhost_set_mem_limit(L, f->mem);
    hload_budget(L, f->budget);
    if (eh_pcall(L, n, 0) != LUA_OK)
        frt_fault(f);
}

static const struct lconn_ops fork_ops = {
    f_recv, f_send, f_sleep, f_close, f_shutdown, f_reset,
    f_timer_arm, f_timer_disarm, f_spawn, f_deliver,
    NULL                        /* pipe: M.pipe of echohost.conn */
};

/* --- upstream sockets ----------------------------------------------------- */

static int up_recv(lua_State *L, struct lconn *u, size_t max,
                   const char *what, lua_KFunction k) {
    struct fup *up = u->rt;
    struct ftask *t;
    char name[32];
    int n;

    if (up->side.reader == NULL &&
        (n = side_read(L, up->f, &up->side, max)) >= 0)
        return n;
    snprintf(name, sizeof name, "conn:%s", what);
    t = task_waiter(L, name, " for data");
    return recv_park(L, t, &up->side, name, max, k, u->timeout);
}

static int up_send(lua_State *L, struct lconn *u, const char *s,
                   size_t len) {
    struct fup *up = u->rt;
    struct ftask *t = task_of(L);
    size_t off = 0;
    int r;

    if (up->side.writer)
        busy(L, "conn:send", 1, &up->side);
    if (t)
        return send_park(L, t, &up->side, s, len, u->timeout);
    if ((r = side_write(up->f, &up->side, s, len, &off)) == 1)
        task_waiter(L, "conn:send", "");    /* raises */
    return send_result(L, up->f, &up->side, r, len);
}

static void up_close(struct lconn *u) {
    up_release(u->rt, 0);
}

static void up_shutdown(struct lconn *u) {
    side_shut(&((struct fup *)u->rt)->side);
}

static void up_reset(struct lconn *u) {
    struct fup *up = u->rt;

    net_abort(up->side.fd);
    up_release(up, 0);
}

/* lconn raises for timers and spawn on an upstream before these. */
static const struct lconn_ops up_ops = {
    up_recv, up_send, f_sleep, up_close, up_shutdown, up_reset,
    NULL, NULL, NULL, NULL, NULL
};

/* The connect failed with up->err at up->addr (as echohost.socket's). */
static int connect_fail(lua_State *L, struct fup *up) {
    int e = up->err;
    char addr[NET_ADDR_LEN];

    memcpy(addr, up->addr, sizeof addr);
    up_release(up, 0);
    if (e == ETIMEDOUT)
        return lconn_fail(L, "timeout", ETIMEDOUT);
    if (e == EPIPE || e == ECONNRESET)
        return lconn_fail(L, "closed", e);
    lua_pushnil(L);
    lua_pushfstring(L, "connect %s: %s", addr, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

/* Pushes the connected upstream's object; held in the registry while
 * open. */
static int connect_done(lua_State *L, struct fup *up) {
    struct lconn *c = up->f->u;
    struct net_peer peer;

    freeaddrinfo(up->ai);
    up->ai = up->cur = NULL;
    net_peer_set_name(&peer, up->addr);
    up->u = lconn_new(L, &up_ops, up, c->id, &peer, c->frame_max);
    up->u->upstream = 1;
    lua_pushvalue(L, -1);
    up->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

static int connect_k(lua_State *L, int status, lua_KContext ctx);

/* Tries up's addresses from up->cur on: connect's results, or t parks
 * until the one in progress is connected (or t->until). */
static int connect_next(lua_State *L, struct ftask *t, struct fup *up) {
    for (; up->cur; up->cur = up->cur->ai_next) {
        const struct addrinfo *ai = up->cur;
        int rc;

        net_format_addr(ai->ai_addr, up->addr, sizeof up->addr);
        rc = net_connect_start(ai, &up->side.fd);  /* errno: up->err */
        if (rc == 0)
            return connect_done(L, up);
        if (rc == 1) {
            task_park(t, &up->side, POLLOUT, t->until);
            return lua_yieldk(L, 0, 0, connect_k);
        }
        up->err = errno;
    }
    return connect_fail(L, up);
}

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
    struct ftask *t = task_resumed(L);
    struct fup *up = t->up;
    int e;
    (void)status; (void)ctx;

    if (t->why == R_CLOSED)     /* the connection ended: up is released */
        return lconn_fail(L, "closed", t->code);
    if (t->why == R_TIMEOUT) {
        up->err = ETIMEDOUT;
        return connect_fail(L, up);
    }
    if ((e = net_connect_result(up->side.fd)) == 0)
        return connect_done(L, up);
    up->err = e;
    close(up->side.fd);
    up->side.fd = -1;
    up->cur = up->cur->ai_next;
    return connect_next(L, t, up);
}

/* nil, err ("resolve <host>: <reason>"), a negative EAI_* (or errno). */
static int resolve_fail(lua_State *L, const char *err, int rc) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    lua_pushinteger(L, rc == EAI_SYSTEM ? errno : rc);
    return 3;
}

/* The handler's echohost.socket.connect: resolving blocks the child (it
 * serves one connection); each address is tried in turn within timeout. */
static int f_connect(lua_State *L, void *rt, const char *host, int port,
                     double timeout) {
    struct frt *f = rt;
    struct ftask *t = task_waiter(L, "echohost.socket.connect", "");
    struct addrinfo *res;
    struct fup *up = f->ups;
    char err[NET_ERR_LEN];
    int rc;

    if (f->end || f->u->closed)
        return lconn_fail(L, "closed", f->u->end_code);
    if (f->nups >= LCONN_UPSTREAMS_MAX)
        return lconn_too_many(L, "upstream sockets", LCONN_UPSTREAMS_MAX);
    if ((rc = net_resolve(err, host, port, 0, &res)) != 0)
        return resolve_fail(L, err, rc);
    while (up->in_use)
        up++;
    up->in_use = 1;
    f->nups++;
    up->ai = up->cur = res;
    up->err = EADDRNOTAVAIL;
    strcpy(up->addr, "?");
    t->up = up;
    t->until = net_now() + timeout;
    return connect_next(L, t, up);
}

/* --- calls ---------------------------------------------------------------- */

/* Replaces the reply at the top of L with a message (fmt may name the
 * reply's type with %s) and ends the connection as a handler error. */
static int reply_fault(struct frt *f, const char *fmt) {
    lua_State *L = f->L;

    lhost_set_mem_limit(L, 0);          /* unprotected push */
    lua_pushfstring(L, fmt, luaL_typename(L, -1));
    lhost_set_mem_limit(L, f->mem);
    lua_remove(L, -2);
    frt_fault(f);
    return -1;
}

/* Sends the reply at the top of L (a string or nil; popped). 0, or -1
 * after a fault. */
static int frt_reply(struct frt *f) {
    lua_State *L = f->L;
    size_t len;
    const char *reply;

    if (lua_type(L, -1) != LUA_TSTRING && !lua_isnil(L, -1))
        return reply_fault(f, "handler returned a %s (expected a string or "
                           "nil)");
    reply = lua_tolstring(L, -1, &len);
    if (reply && len && f->end == NULL && !f->u->wshut) {
        if (f->cs.writer)       /* it would land inside that send's bytes */
            return reply_fault(f, "conn:send: another coroutine is waiting "
                               "to write this connection");
        frt_write_block(f, reply, len, -1);
    }
    lua_pop(L, 1);
    return 0;
}

/* Calls ref(conn [, arg]); sends a string it returns (nres 1). */
static void frt_call(struct frt *f, int ref, const char *arg, size_t len,
                     int nres) {
    lua_State *L = f->L;
    int status;

    if (ref == LUA_REFNIL)
        return;
    lhost_set_mem_limit(L, 0);  /* pushes are unprotected: see rt_event.c */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, f->conn_ref);
    if (arg)
        lua_pushlstring(L, arg, len);
    lhost_set_mem_limit(L, f->mem);
    hload_budget(L, f->budget);
    f->in_call = 1;
    status = eh_pcall(L, arg ? 2 : 1, nres);
    f->in_call = 0;
    if (status != LUA_OK) {
        frt_fault(f);
        return;
    }
    if (nres && frt_reply(f) < 0)
        return;
    if (f->close_after && f->end == NULL)
        frt_close(f);
}

/* The deadline of the first timer, or of the first parked task. */
static double frt_next_due(const struct frt *f) {
    double next = -1;

    for (const struct ltimer *t = f->u->timers; t; t = t->next)
        next = earlier(next, t->due);
    for (int i = 0; i < LCONN_TASKS_MAX; i++)
        if (f->tasks[i].co && f->tasks[i].parked)
            next = earlier(next, f->tasks[i].until);
    return next;
}

/* Fires the timer due first (ties: the first armed). 1 if one fired. */
static int frt_fire_due(struct frt *f, double now) {
    struct ltimer *first = NULL;
    lua_State *L = f->L;
    int n;

    for (struct ltimer *t = f->u->timers; t; t = t->next)
        if (t->due <= now && (first == NULL || t->due < first->due))
            first = t;
    if (first == NULL)
        return 0;
    lhost_set_mem_limit(L, 0);  /* pushes are unprotected: see rt_event.c */
    n = lconn_timer_push(L, first);
    lhost_set_mem_limit(L, f->mem);
    hload_budget(L, f->budget);
    if (eh_pcall(L, n, 0) != LUA_OK)
        frt_fault(f);
    if (lconn_timer_done(L, first))
        first->due += first->period;
    return 1;
}

/* --- the loop ------------------------------------------------------------- */

/* Callbacks: the client's input goes to on_data (or the per-message
 * function); its EOF closes the connection once no task is left. */
static void frt_input(struct frt *f) {
    ssize_t n = recv(f->cs.fd, f->buf, FORK_READ_MAX, 0);

    if (n < 0 && errno != EAGAIN && errno != EINTR)
        frt_ioerr(f, errno);
    if (n < 0)
        return;
    f->active = net_now();
    f->bytes_in += (uint64_t)n;
    if (n == 0)
        f->eof = 1;
    else
        frt_call(f, f->hs->cur.data, f->buf, (size_t)n, 1);
}

static int poll_add(struct pollfd *p, struct fside **ps, int n,
                    struct fside *s, int input) {
    short ev = (s->reader || input ? POLLIN : 0) | (s->writer ? POLLOUT : 0);

    if (s->fd < 0 || ev == 0)
        return n;
    p[n] = (struct pollfd){.fd = s->fd, .events = ev};
    ps[n] = s;
    return n + 1;
}

/* One ppoll over what the parked tasks wait for (and, for callbacks, the
 * client's input) until the next deadline; wakes what is ready or due.
 * Input ready is read once the tasks woken have run. */
static void frt_poll(struct frt *f) {
    struct pollfd p[FORK_POLL_MAX];
    struct fside *ps[FORK_POLL_MAX];
    struct timespec ts;
    double next = frt_next_due(f), now;
    /* callbacks read nothing while a coroutine waits to write the client
     * (its output is backed up), as under the event loop */
    int n, input = !f->direct && !f->eof && f->end == NULL &&
                   f->cs.writer == NULL;
    int bell = lpubsub_fd(), nsides;

    if (f->idle > 0 && f->end == NULL)
        next = earlier(next, f->active + f->idle);
    n = poll_add(p, ps, 0, &f->cs, input);
    for (int i = 0; i < LCONN_UPSTREAMS_MAX; i++)
        if (f->ups[i].in_use)
            n = poll_add(p, ps, n, &f->ups[i].side, 0);
    nsides = n;
    if (bell >= 0)
        p[n++] = (struct pollfd){.fd = bell, .events = POLLIN};
    if (ppoll(p, (nfds_t)n, until_ts(&ts, next), &f->waitmask) < 0) {
        if (errno != EINTR)
            frt_ioerr(f, errno);
        return;
    }
    if (nsides < n && p[nsides].revents)
        lpubsub_dispatch();
    for (int i = 0; i < nsides; i++) {
        short r = p[i].revents;
        if ((r & (POLLIN | POLLHUP | POLLERR)) && ps[i]->reader)
            task_wake(ps[i]->reader, R_READY, 0);
        else if ((r & (POLLIN | POLLHUP | POLLERR)) && ps[i] == &f->cs)
            f->input = input;
        if (r & (POLLOUT | POLLHUP | POLLERR))
            task_wake(ps[i]->writer, R_READY, 0);
    }
    now = net_now();
    for (int i = 0; i < LCONN_TASKS_MAX; i++) {
        struct ftask *t = &f->tasks[i];
        if (t->co && t->until >= 0 && now >= t->until)
            task_wake(t, R_TIMEOUT, 0);
    }
}

/* Until the connection ended and each of its tasks returned. It closes
 * once they all returned (direct style) or, for callbacks, once the
 * client's EOF came and no spawned task is left. */
static void frt_run(struct frt *f) {
    for (;;) {
        double now;
        if (frt_stop)
            frt_end(f, "shutdown");
        if (tasks_run_ready(f))
            continue;
        if (f->input) {
            f->input = 0;
            if (f->end == NULL && !f->eof)
                frt_input(f);
            continue;
        }
        if (f->ntasks == 0 && f->end)
            return;
        if (f->ntasks == 0 && (f->direct || f->eof)) {
            frt_close(f);
            continue;
        }
        now = net_now();
        if (frt_fire_due(f, now))
            continue;
        if (f->end == NULL && f->idle > 0 && now >= f->active + f->idle) {
            frt_end(f, "timeout");
            continue;
        }
        frt_poll(f);
    }
}

/* Direct style: handle(conn) as the connection's first task. */
static void frt_start_handle(struct frt *f) {
    struct ftask *t;

    f->direct = 1;
    lhost_set_mem_limit(f->L, 0);   /* unprotected: the thread, the refs */
    lua_rawgeti(f->L, LUA_REGISTRYINDEX, f->hs->cur.handle);
    lua_rawgeti(f->L, LUA_REGISTRYINDEX, f->conn_ref);
    t = task_new(f, f->L, 1);
    lhost_set_mem_limit(f->L, f->mem);
    task_resume(t, f->L, 1);
}

static void frt_init(struct frt *f, struct hstate *hs, int fd) {
    f->hs = hs;
    f->L = hs->L;
    f->budget = hs->cfg->lua_budget;
    f->mem = hs->cfg->lua_mem_limit;
    f->idle = hs->cfg->idle_timeout;
    f->active = net_now();
    f->cs.fd = fd;
    for (int i = 0; i < LCONN_TASKS_MAX; i++)
        f->tasks[i].f = f;
    for (int i = 0; i < LCONN_UPSTREAMS_MAX; i++) {
        f->ups[i].f = f;
        f->ups[i].side.fd = -1;
        f->ups[i].side.up = &f->ups[i];
        f->ups[i].ref = LUA_NOREF;
    }
}

/* For echohost.log: the child serves one connection. */
static lua_Integer frt_conn_id(lua_State *L) {
    (void)L;
    return child.u ? child.u->id : 0;
}

int rtfork_serve(struct hstate *hs, int fd, const struct net_peer *peer,
                 struct rtfork_tally *t) {
    struct frt *f = &child;
    const struct hrefs *r = &hs->cur;
    struct sigaction sa;
    sigset_t term;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = frt_sigterm;
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &f->waitmask);
    sigdelset(&f->waitmask, SIGTERM);
    frt_init(f, hs, fd);
    /* non-blocking under the hood: every wait is a ppoll with a bound */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    lua_settop(f->L, 0);
    *(struct ftask **)lua_getextraspace(f->L) = NULL;  /* threads made from
                                                         now on copy it */
    lhost_set_mem_limit(f->L, 0);
    lconn_set_runtime(f->L, f_connect, f);
    llog_set_conn(frt_conn_id);
    f->u = lconn_new(f->L, &fork_ops, f, (lua_Integer)getpid(), peer,
                     hs->cfg->high_water);
    f->conn_ref = luaL_ref(f->L, LUA_REGISTRYINDEX);
    lhost_set_mem_limit(f->L, f->mem);
    if (r->kind == HK_DIRECT)
        frt_start_handle(f);
    else if (r->kind == HK_CALLBACKS)
        frt_call(f, r->open, NULL, 0, 1);
    frt_run(f);
    if (r->kind == HK_CALLBACKS)
        frt_call(f, r->close, f->end, strlen(f->end), 0);
    if (f->cs.fd >= 0)
        close(f->cs.fd);
    t->bytes_in = f->bytes_in;
    t->bytes_out = f->bytes_out;
    t->reason = f->faulted ? "error" : f->end ? f->end : "closed";
    return f->faulted;
}
