/* The fork runtime: the same handler forms and conn object as the event
 * runtime, on one socket of a forked child with blocking calls. Every wait
 * is a ppoll bounded by the conn's timeout and --idle-timeout, and SIGTERM
 * (the drain deadline) wakes it. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>

#include "hload.h"
#include "lconn.h"
#include "lhost.h"
#include "log.h"
#include "rt_fork.h"

#define FORK_READ_MAX 65536

enum { W_TIMEOUT = -2, W_END = -3 };    /* besides > 0, 0 (EOF), -1 */

/* The child's one connection. */
struct frt {
    struct hstate *hs;
    lua_State *L;
    long budget;
    size_t mem;
    double idle;                /* --idle-timeout, seconds; 0: none */
    int fd;
    struct lconn *u;
    int conn_ref;
    int direct;                 /* served by handle(conn) */
    int eof;                    /* the client shut down its side */
    int in_call, close_after;   /* see ev_close in rt_event.c */
    int faulted;
    int in_timer;               /* a timer's function is running */
    const char *end;            /* why it ended (a close reason), or NULL */
    uint64_t bytes_in, bytes_out;
    sigset_t waitmask;          /* the mask while waiting: SIGTERM let in */
    char buf[FORK_READ_MAX];
};

static volatile sig_atomic_t frt_stop;

static void frt_sigterm(int sig) {
    (void)sig;
    frt_stop = 1;
}

static void frt_end(struct frt *f, const char *reason) {
    if (f->end == NULL)
        f->end = reason;
    lconn_gone(f->L, f->u, lconn_reason_code(reason));
}

static double mono_now(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int frt_fire_due(struct frt *f, double now);
static double frt_next_due(const struct frt *f);

/* The earlier of two deadlines (< 0: none). */
static double earlier(double a, double b) {
    return a < 0 ? b : b < 0 ? a : a < b ? a : b;
}

/* Waits until fd is ready for events (0: no fd, a plain sleep), firing
 * the connection's timers as they fall due. 1 when ready, W_TIMEOUT when
 * timeout seconds (< 0: none) passed, W_END when the idle timeout, SIGTERM
 * or a timer ended the connection, -1 with errno. */
static int frt_wait(struct frt *f, short events, double timeout) {
    struct pollfd p = {.fd = f->fd, .events = events};
    double now = mono_now();
    double until = timeout < 0 ? -1 : now + timeout;
    double idle_until = f->idle > 0 ? now + f->idle : -1;
    int r;

    for (;;) {
        if (f->end)
            return W_END;
        if (frt_stop) {
            frt_end(f, "shutdown");
            return W_END;
        }
        now = mono_now();
        if (frt_fire_due(f, now))
            continue;
        if (until >= 0 && now >= until &&
            (idle_until < 0 || until <= idle_until))
            return W_TIMEOUT;
        if (idle_until >= 0 && now >= idle_until) {
            frt_end(f, "timeout");
            return W_END;
        }
        double next = earlier(earlier(until, idle_until), frt_next_due(f));
        double t = next < 0 ? 0 : next > now ? next - now : 0;
        struct timespec ts = {(time_t)t, (long)((t - (time_t)t) * 1e9)};
        r = ppoll(events ? &p : NULL, events ? 1 : 0, next < 0 ? NULL : &ts,
                  &f->waitmask);
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* A socket error ends the connection: "reset" or "error". */
static void frt_ioerr(struct frt *f, int e) {
    if (e == ECONNRESET || e == EPIPE)
        frt_end(f, "reset");
    else
        frt_end(f, "error");
}

/* Reads at most max bytes into f->buf: > 0, 0 at EOF, W_TIMEOUT, W_END
 * (the connection ended: f->end says why). */
static ssize_t frt_read(struct frt *f, size_t max, double timeout) {
    for (;;) {
        int r = frt_wait(f, POLLIN, timeout);
        if (r == W_TIMEOUT || r == W_END)
            return r;
        if (r < 0) {
            frt_ioerr(f, errno);
            return W_END;
        }
        ssize_t n = recv(f->fd, f->buf, max, 0);
        if (n >= 0) {
            f->bytes_in += (uint64_t)n;
            return n;
        }
        if (errno != EINTR && errno != EAGAIN) {
            frt_ioerr(f, errno);
            return W_END;
        }
    }
}

/* Writes all of s: 0, W_TIMEOUT or W_END. */
static int frt_write(struct frt *f, const char *s, size_t len,
                     double timeout) {
    size_t off = 0;

    while (off < len) {
        ssize_t n = send(f->fd, s + off, len - off, MSG_NOSIGNAL);
        if (n >= 0) {
            off += (size_t)n;
            f->bytes_out += (uint64_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN) {
            frt_ioerr(f, errno);
            return W_END;
        }
        int r = frt_wait(f, POLLOUT, timeout);
        if (r == W_TIMEOUT || r == W_END)
            return r;
        if (r < 0) {
            frt_ioerr(f, errno);
            return W_END;
        }
    }
    return 0;
}

/* --- the conn object's operations ---------------------------------------- */

static int f_recv(lua_State *L, struct lconn *u, size_t max,
                  const char *what, lua_KFunction k) {
    struct frt *f = u->rt;
    ssize_t n;

    if (max == 0 || max > FORK_READ_MAX)
        max = FORK_READ_MAX;
    if (f->eof)
        return lconn_fail(L, "closed", 0);
    (void)k;                    /* nothing parks: the results are here */
    if (!f->direct || f->in_timer)  /* as in the event runtime */
        return luaL_error(L, "conn:%s would wait: only a handle(conn) "
                          "coroutine can wait for data", what);
    n = frt_read(f, max, u->timeout);
    hload_budget(L, f->budget);     /* like a resume in the event runtime */
    if (n == W_TIMEOUT)
        return lconn_fail(L, "timeout", ETIMEDOUT);
    if (n == W_END)
        return lconn_fail(L, "closed", lconn_reason_code(f->end));
    if (n == 0) {
        f->eof = 1;
        return lconn_fail(L, "closed", 0);
    }
    lua_pushlstring(L, f->buf, (size_t)n);
    return 1;
}

static int f_send(lua_State *L, struct lconn *u, const char *s, size_t len) {
    struct frt *f = u->rt;
    int r = frt_write(f, s, len, u->timeout);

    hload_budget(L, f->budget);
    if (r == W_TIMEOUT)
        return lconn_fail(L, "timeout", ETIMEDOUT);
    if (r == W_END)
        return lconn_fail(L, "closed", lconn_reason_code(f->end));
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

static void frt_close(struct frt *f) {
    shutdown(f->fd, SHUT_WR);   /* the fd itself is closed on exit */
    frt_end(f, f->eof ? "eof" : "closed");
}

static void f_close(struct lconn *u) {
    struct frt *f = u->rt;

    if (f->in_call && !f->direct)
        f->close_after = 1;     /* the callback's reply goes out first */
    else
        frt_close(f);
}

/* Sleeps secs (bounded by the idle timeout, woken by SIGTERM, firing
 * timers: a wait with no fd). */
static int f_sleep(lua_State *L, struct lconn *u, double secs) {
    struct frt *f = u->rt;
    int r;

    if (!f->direct || f->in_timer)
        return luaL_error(L, "conn:sleep would wait: only a handle(conn) "
                          "coroutine can wait");
    r = frt_wait(f, 0, secs);
    hload_budget(L, f->budget);
    if (r == W_END || f->end)
        return lconn_fail(L, "closed", lconn_reason_code(f->end));
    lua_pushboolean(L, 1);
    return 1;
}

static void f_shutdown(struct lconn *u) {
    shutdown(((struct frt *)u->rt)->fd, SHUT_WR);
}

static void f_reset(struct lconn *u) {
    struct frt *f = u->rt;
    struct linger lg = {1, 0};

    setsockopt(f->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(f->fd);
    f->fd = -1;
    frt_end(f, "closed");
}

static void f_timer_arm(struct lconn *u, struct ltimer *t, double secs) {
    (void)u;
    t->due = mono_now() + secs;     /* frt_wait fires it */
}

static void f_timer_disarm(struct lconn *u, struct ltimer *t) {
    (void)u; (void)t;               /* off the list: nothing to undo */
}

static const struct lconn_ops fork_ops = {
    f_recv, f_send, f_sleep, f_close, f_shutdown, f_reset,
    f_timer_arm, f_timer_disarm
};

/* --- calls ----------------------------------------------------------------- */

/* Logs the error at the top of L and ends the connection. */
static void frt_fault(struct frt *f) {
    const char *msg = lua_tostring(f->L, -1);

    log_error("handler %s: connection %s (id %lld) closed: %s", f->hs->path,
              f->u->peer, (long long)f->u->id,
              msg ? msg : "(error object is not a string)");
    lua_pop(f->L, 1);
    f->faulted = 1;
    frt_end(f, "error");
}

/* Calls ref(conn [, arg]); sends a string it returns. */
static void frt_call(struct frt *f, int ref, const char *arg, size_t len,
                     int nres) {
    lua_State *L = f->L;
    size_t rlen;
    const char *reply;

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
    if (eh_pcall(L, arg ? 2 : 1, nres) != LUA_OK) {
        f->in_call = 0;
        frt_fault(f);
        return;
    }
    f->in_call = 0;
    if (nres == 0)
        return;
    if (lua_type(L, -1) != LUA_TSTRING && !lua_isnil(L, -1)) {
        lua_pushfstring(L, "handler returned a %s (expected a string or nil)",
                        luaL_typename(L, -1));
        lua_remove(L, -2);
        frt_fault(f);
        return;
    }
    reply = lua_tolstring(L, -1, &rlen);
    if (reply && rlen && f->end == NULL && !f->u->wshut)
        frt_write(f, reply, rlen, -1);
    lua_pop(L, 1);
    if (f->close_after && f->end == NULL)
        frt_close(f);
}

static double frt_next_due(const struct frt *f) {
    double next = -1;

    for (const struct ltimer *t = f->u->timers; t; t = t->next)
        next = earlier(next, t->due);
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
    f->in_timer = 1;
    if (eh_pcall(L, n, 0) != LUA_OK)
        frt_fault(f);
    f->in_timer = 0;
    if (lconn_timer_done(L, first))
        first->due += first->period;
    return 1;
}

/* Per-message function and callbacks: reads until the connection ends. */
static void serve_callbacks(struct frt *f) {
    const struct hrefs *r = &f->hs->cur;
    const char *reason;

    if (r->kind == HK_CALLBACKS)
        frt_call(f, r->open, NULL, 0, 1);
    while (f->end == NULL) {
        ssize_t n = frt_read(f, FORK_READ_MAX, -1);
        if (n == 0) {
            f->eof = 1;         /* nothing more will come: close */
            frt_close(f);
        } else if (n > 0) {
            frt_call(f, r->data, f->buf, (size_t)n, 1);
        }
    }
    reason = f->end;
    if (r->kind == HK_CALLBACKS)
        frt_call(f, r->close, reason, strlen(reason), 0);
}

/* Direct style: handle(conn) with plain blocking calls. */
static void serve_direct(struct frt *f) {
    f->direct = 1;
    frt_call(f, f->hs->cur.handle, NULL, 0, 0);
    if (f->end == NULL)
        frt_close(f);           /* handle returned: close */
}

int rtfork_serve(struct hstate *hs, int fd, const char *peer,
                 struct rtfork_tally *t) {
    static struct frt f;        /* in bss: a child writes few pages */
    struct sigaction sa;
    sigset_t term;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = frt_sigterm;
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigprocmask(SIG_BLOCK, &term, &f.waitmask);
    sigdelset(&f.waitmask, SIGTERM);
    f.hs = hs;
    f.L = hs->L;
    f.budget = hs->cfg->lua_budget;
    f.mem = hs->cfg->lua_mem_limit;
    f.idle = hs->cfg->idle_timeout;
    f.fd = fd;
    /* non-blocking under the hood: every wait is a ppoll with a bound */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    lua_settop(f.L, 0);
    lhost_set_mem_limit(f.L, 0);
    f.u = lconn_new(f.L, &fork_ops, &f, (lua_Integer)getpid(), peer,
                    hs->cfg->high_water);
    f.conn_ref = luaL_ref(f.L, LUA_REGISTRYINDEX);
    lhost_set_mem_limit(f.L, f.mem);
    if (hs->cur.kind == HK_DIRECT)
        serve_direct(&f);
    else
        serve_callbacks(&f);
    if (f.fd >= 0)
        close(f.fd);
    t->bytes_in = f.bytes_in;
    t->bytes_out = f.bytes_out;
    t->reason = f.faulted ? "error" : f.end ? f.end : "closed";
    return f.faulted;
}
