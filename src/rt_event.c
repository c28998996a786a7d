/* The event runtime: runs a Lua handler (per-message function, callbacks,
 * or a direct-style coroutine per connection) on the connections of one
 * worker, and gives the conn object its operations there. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "conn.h"
#include "hload.h"
#include "lconn.h"
#include "lpubsub.h"
#include "lhost.h"
#include "llog.h"
#include "log.h"
#include "net.h"

enum hwait { HW_NONE, HW_RECV, HW_SEND, HW_SLEEP, HW_CONNECT, HW_WAKE };

struct handler {
    struct hstate hs;           /* the state and the current version */
    lua_State *L;               /* hs.L */
    ev_loop *loop;
    const struct eh_config *cfg;
    size_t inbuf_max;           /* bytes buffered for a coroutine */
};

/* Per-connection state of the runtime: conn_data(c). */
struct hconn {
    struct handler *h;
    conn *c;
    struct lconn *u;
    int ud_ref;                 /* the conn object */
    int in_call;                /* a callback is running */
    int close_after;            /* it called conn:close(): close after it */
    int faulted;                /* ended by a handler error */
    struct task *tasks;         /* its coroutines, newest first */
    int ntasks;
    struct task *reader;        /* the task parked in a recv of the conn */
    struct task *writer;        /* the task parked in a send of the conn */
    struct hup *ups;            /* its upstream sockets */
    int nups;
    char *ibuf;                 /* input that arrived while not in recv */
    size_t ioff, ilen, icap;
    int eof;                    /* the client shut down its side */
    int paused;                 /* we stopped reading: ibuf is full */
    int gone;                   /* handler_on_close is running */
    int memfault;               /* a handler call ran out of memory */
    int direct;                 /* handle ran: no callbacks any more */
};

/* An upstream socket of a connection (echohost.socket.connect). */
struct hup {
    struct hconn *hc;
    struct lconn *u;            /* the object, once connected */
    int ref;                    /* it, in the registry, while open */
    int fd;                     /* -1 */
    struct task *reader, *writer;   /* writer: also the connecting task */
    struct addrinfo *ai, *cur;  /* connecting: the addresses, the one tried */
    struct hres *res;           /* a name lookup in flight */
    int err;                    /* the last connect's errno */
    int drained;                /* the last read left the socket empty */
    char addr[NET_ADDR_LEN];    /* the address tried last */
    struct hup *next;
};

/* --- Lua calls with the memory cap held back ------------------------------ */

/* Pushing arguments happens outside any protected call: the cap is lifted
 * for those few pushes so that hitting it can only raise inside a call (one
 * message may pass the cap; the handler's next allocation then fails). */
static size_t cap_lift(struct handler *h) {
    size_t cap = h->cfg->lua_mem_limit;
    if (cap)
        lhost_set_mem_limit(h->L, 0);
    return cap;
}

static void cap_restore(struct handler *h, size_t cap) {
    if (cap)
        lhost_set_mem_limit(h->L, cap);
}

/* Logs the error at the top of L and closes the connection. */
static void fault(struct hconn *hc, lua_State *L, int status) {
    const char *msg = lua_tostring(L, -1);

    log_error("handler %s: connection %s (id %lld) closed: %s",
              hc->h->hs.path, lconn_peer(hc->u), (long long)hc->u->id,
              msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
    if (!hc->faulted)
        conn_note_fault(hc->c);
    hc->faulted = 1;
    if (status == LUA_ERRMEM) {
        hc->memfault = 1;
        lua_gc(hc->h->L, LUA_GCCOLLECT);
    }
    conn_close(hc->c);
}

/* Replaces the reply at the top of L with the message fmt (%s: the
 * reply's type) and faults the connection: -1. */
static int reply_fault(struct hconn *hc, lua_State *L, const char *fmt) {
    size_t cap = cap_lift(hc->h);

    lua_pushfstring(L, fmt, luaL_typename(L, -1));
    cap_restore(hc->h, cap);
    lua_remove(L, -2);
    fault(hc, L, LUA_ERRRUN);
    return -1;
}

/* Sends the reply at the top of L (a string or nil) and pops it. */
static int send_reply(struct hconn *hc, lua_State *L) {
    size_t len;
    const char *s;

    if (lua_type(L, -1) == LUA_TSTRING) {
        s = lua_tolstring(L, -1, &len);
        if (len && hc->writer)  /* it would go before that send's bytes */
            return reply_fault(hc, L, "conn:send: another coroutine is "
                               "waiting to write this connection");
        if (len)
            conn_send(hc->c, s, len);
    } else if (!lua_isnil(L, -1)) {
        return reply_fault(hc, L, "handler returned a %s (expected a string "
                           "or nil)");
    }
    lua_pop(L, 1);
    return 0;
}

static struct hconn *in_callback;   /* whose callback or timer runs now */

/* Calls registry function ref(conn [, data]) and sends what it returns. */
static void call_cb(struct hconn *hc, int ref, const char *buf, size_t len,
                    const char *reason) {
    struct handler *h = hc->h;
    lua_State *L = h->L;
    size_t cap = cap_lift(h);
    int nargs = 1;

    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, hc->ud_ref);
    if (buf) {
        lua_pushlstring(L, buf, len);
        nargs++;
    } else if (reason) {
        lua_pushstring(L, reason);
        nargs++;
    }
    cap_restore(h, cap);
    hload_budget(L, h->cfg->lua_budget);
    hc->in_call = 1;
    struct hconn *outer = in_callback;
    in_callback = hc;
    /* eh_pcall, with its message handler kept at index 1 (handler_create) */
    int status = lua_pcall(L, nargs, 1, 1);
    in_callback = outer;
    hc->in_call = 0;
    if (status != LUA_OK) {
        fault(hc, L, status);
        return;
    }
    /* a reply after conn:close() is still sent: close means flush first */
    if (send_reply(hc, L) == 0 && hc->close_after)
        conn_close(hc->c);
}

/* --- the coroutines of a connection (handle, conn:spawn) ------------------ */

/* A coroutine of a connection. Its lua_State's extra space points here, so
 * an operation finds the task that called it; other threads (the main one,
 * a coroutine.create of the handler) have NULL there and cannot wait. */
struct task {
    struct hconn *hc;
    lua_State *co;
    int ref;                    /* the thread, in the registry */
    enum hwait wait;            /* what it is parked on */
    struct hup *up;             /* the upstream it waits on (NULL: the conn) */
    size_t recv_max;            /* recv's size argument (0: any) */
    int send_ref;               /* the string a parked send writes */
    size_t send_off;            /* upstream send: bytes written so far */
    long long timer;            /* the wait's timeout, or 0 */
    struct tpipe *pipe;         /* it runs conn:pipe (in C) */
    struct task *next;
};

struct tpipe;
static void pipe_free(struct task *t);
static void pipe_failed(struct task *t, const char *msg, int code);
static void pipe_data(struct task *t, const char *s, size_t n);
static void pipe_go(struct task *t);
static int ev_pipe(lua_State *L, struct lconn *from, struct lconn *to);

static struct task *task_of(lua_State *L) {
    return *(struct task **)lua_getextraspace(L);
}

/* For echohost.log: the connection of the running coroutine, else of the
 * running callback. */
static lua_Integer conn_now(lua_State *L) {
    struct task *t = task_of(L);

    if (t)
        return t->hc->u->id;
    return in_callback ? in_callback->u->id : 0;
}

static void task_end(struct task *t) {
    struct hconn *hc = t->hc;
    lua_State *L = hc->h->L;
    struct task **p;

    for (p = &hc->tasks; *p != t; p = &(*p)->next)
        ;
    *p = t->next;
    hc->ntasks--;
    if (t->timer)
        ev_timer_del(hc->h->loop, t->timer);
    if (t->send_ref != LUA_NOREF)
        luaL_unref(L, LUA_REGISTRYINDEX, t->send_ref);
    pipe_free(t);
    *(struct task **)lua_getextraspace(t->co) = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    free(t);
}

/* Direct style closes once every coroutine returned; callbacks once the
 * client's EOF came and no spawned coroutine is left. */
static void conn_maybe_done(struct hconn *hc) {
    if (hc->ntasks == 0 && !hc->gone && (hc->direct || hc->eof))
        conn_close(hc->c);
}

static void task_fault(struct task *t, int status) {
    struct hconn *hc = t->hc;
    lua_State *L = hc->h->L, *co = t->co;
    size_t cap = cap_lift(hc->h);
    const char *msg = lua_tostring(co, -1);

    if (status == LUA_ERRMEM || msg == NULL)
        lua_pushstring(L, msg ? msg : "(error object is not a string)");
    else
        luaL_traceback(L, co, msg, 0);
    cap_restore(hc->h, cap);
    task_end(t);
    fault(hc, L, status);
}

/* Resumes t with the nargs values on its stack; from: the thread resuming
 * it (a spawn runs inside another coroutine). */
static void task_resume(struct task *t, lua_State *from, int nargs) {
    struct hconn *hc = t->hc;
    int nres, status;

    if (t->timer) {
        ev_timer_del(hc->h->loop, t->timer);
        t->timer = 0;
    }
    t->wait = HW_NONE;
    t->up = NULL;
    hload_budget(t->co, hc->h->cfg->lua_budget);
    status = lua_resume(t->co, from, nargs, &nres);
    if (status == LUA_YIELD) {
        lua_pop(t->co, nres);
        if (t->wait != HW_NONE)
            return;
        size_t cap = cap_lift(hc->h);
        lua_pushliteral(t->co, "handle yielded outside conn:recv/conn:send");
        cap_restore(hc->h, cap);
        status = LUA_ERRRUN;
    } else if (status == LUA_OK) {
        task_end(t);
        conn_maybe_done(hc);
        return;
    }
    task_fault(t, status);
}

/* Resumes the parked t with nil, msg, code. */
static void task_fail(struct task *t, const char *msg, int code) {
    if (t->pipe) {
        pipe_failed(t, msg, code);
        return;
    }
    size_t cap = cap_lift(t->hc->h);
    int n = lconn_fail(t->co, msg, code);
    cap_restore(t->hc->h, cap);
    task_resume(t, t->hc->h->L, n);
}

/* A new task running fn with its nargs arguments, on top of from's stack
 * (popped); it runs at once, until it waits or returns. NULL if the
 * connection has LCONN_TASKS_MAX already (nothing popped then). */
static struct task *task_start(struct hconn *hc, lua_State *from, int nargs) {
    struct task *t;

    if (hc->ntasks >= LCONN_TASKS_MAX || (t = calloc(1, sizeof *t)) == NULL)
        return NULL;
    t->hc = hc;
    t->send_ref = LUA_NOREF;
    t->co = lua_newthread(from);
    t->ref = luaL_ref(from, LUA_REGISTRYINDEX);
    *(struct task **)lua_getextraspace(t->co) = t;
    lua_xmove(from, t->co, nargs + 1);
    t->next = hc->tasks;
    hc->tasks = t;
    hc->ntasks++;
    task_resume(t, from, nargs);
    return t;
}

static void co_start(struct hconn *hc) {
    struct handler *h = hc->h;
    size_t cap = cap_lift(h);

    hc->direct = 1;
    conn_set_duplex(hc->c);
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, h->hs.cur.handle);
    lua_rawgeti(h->L, LUA_REGISTRYINDEX, hc->ud_ref);
    cap_restore(h, cap);
    if (task_start(hc, h->L, 1) == NULL) {
        lua_pop(h->L, 2);
        log_error("handler: out of memory for connection %s", conn_peer(hc->c));
        conn_close(hc->c);
    }
}

static void up_abandon(struct hup *up);

/* What a parked recv or send of t holds: the object's waiter slot, the
 * upstream's interest in its fd, the data of a send. */
static void task_unpark(struct task *t) {
    struct hconn *hc = t->hc;

    if (t->wait == HW_RECV || t->wait == HW_SEND) {
        int rd = t->wait == HW_RECV;
        if (t->up) {
            ev_del(hc->h->loop, t->up->fd, rd ? EV_READABLE : EV_WRITABLE);
            *(rd ? &t->up->reader : &t->up->writer) = NULL;
        } else {
            *(rd ? &hc->reader : &hc->writer) = NULL;
        }
    }
    if (t->send_ref != LUA_NOREF) {
        luaL_unref(hc->h->L, LUA_REGISTRYINDEX, t->send_ref);
        t->send_ref = LUA_NOREF;
    }
}

static long co_timeout(ev_loop *loop, long long id, void *ud) {
    struct task *t = ud;
    struct hconn *hc = t->hc;
    (void)loop; (void)id;

    t->timer = 0;
    switch (t->wait) {
    case HW_SLEEP: {
        size_t cap = cap_lift(hc->h);
        lua_pushboolean(t->co, 1);
        cap_restore(hc->h, cap);
        task_resume(t, hc->h->L, 1);
        break;
    }
    case HW_WAKE:
        task_fail(t, "closed", 0);
        break;
    case HW_CONNECT:
        up_abandon(t->up);
        task_fail(t, "timeout", ETIMEDOUT);
        break;
    case HW_RECV:
    case HW_SEND:
        task_unpark(t);
        task_fail(t, "timeout", ETIMEDOUT);
        break;
    case HW_NONE:
        break;
    }
    return EV_NOMORE;
}

/* Parks t on op for at most secs seconds (< 0: no bound); the caller
 * returns lua_yield(k). */
static void task_park(struct task *t, enum hwait op, double secs) {
    t->wait = op;
    if (secs >= 0) {
        long ms = (long)(secs * 1000 + 0.5);
        long long id = ev_timer_add(t->hc->h->loop, ms, co_timeout, t);
        t->timer = id > 0 ? id : 0;
    }
}

/* Wakes a parked t soon with nil, "closed", 0: what it waited on was
 * closed by another coroutine, which is running now. */
static void task_wake_closed(struct task *t) {
    if (t->timer)
        ev_timer_del(t->hc->h->loop, t->timer);
    t->up = NULL;
    t->wait = HW_WAKE;
    long long id = ev_timer_add(t->hc->h->loop, 0, co_timeout, t);
    t->timer = id > 0 ? id : 0;
}

/* The task of L that may wait for hc, or a raise: what ("conn:recv") would
 * wait, and for (" for data" or "") ends the message. */
static struct task *task_waiter(lua_State *L, struct hconn *hc,
                                const char *what, const char *for_) {
    struct task *t = task_of(L);

    if (t == NULL || t->hc != hc)
        lconn_would_wait(L, what, for_);
    return t;
}

/* The task that may park in conn:<what> for data, else a raise: outside a
 * coroutine of the connection, for a callbacks connection (on_data gets
 * its data), or while reader waits already. The name is formatted only to
 * raise: this runs once per message. */
static struct task *recv_waiter(lua_State *L, struct hconn *hc,
                                const char *what, struct task *reader,
                                const char *obj, int on_data) {
    struct task *t = task_of(L);
    char name[32];

    if (t != NULL && t->hc == hc && !on_data && reader == NULL)
        return t;
    snprintf(name, sizeof name, "conn:%s", what);
    if (t == NULL || t->hc != hc)
        lconn_would_wait(L, name, " for data");
    if (on_data)
        luaL_error(L, "%s: the data of this connection goes to on_data",
                   name);
    lconn_busy(L, name, "read", obj);
    return NULL;
}

/* --- input buffer (bytes that arrived while the coroutine was elsewhere) -- */

static int inbuf_append(struct hconn *hc, const char *p, size_t n) {
    if (hc->ioff && hc->ioff == hc->ilen)
        hc->ioff = hc->ilen = 0;
    if (hc->ilen + n > hc->icap) {
        if (hc->ioff) {
            memmove(hc->ibuf, hc->ibuf + hc->ioff, hc->ilen - hc->ioff);
            hc->ilen -= hc->ioff;
            hc->ioff = 0;
        }
        if (hc->ilen + n > hc->icap) {
            size_t cap = hc->icap ? hc->icap : 4096;
            while (cap < hc->ilen + n)
                cap *= 2;
            char *b = realloc(hc->ibuf, cap);
            if (b == NULL)
                return -1;
            hc->ibuf = b;
            hc->icap = cap;
        }
    }
    memcpy(hc->ibuf + hc->ilen, p, n);
    hc->ilen += n;
    if (hc->ilen - hc->ioff >= hc->h->inbuf_max && !hc->paused) {
        hc->paused = 1;
        conn_want_read(hc->c, 0);
    }
    return 0;
}

/* recv's result from src: pushes at most max bytes (0: all), returns how
 * many it took. The immediate path (from ibuf) and the wake-up path (from
 * the worker's scratch buffer) both push through here. */
static size_t recv_push(lua_State *L, const char *src, size_t n, size_t max) {
    if (max && n > max)
        n = max;
    lua_pushlstring(L, src, n);
    return n;
}

static int ev_recv(lua_State *L, struct lconn *u, size_t max,
                   const char *what, lua_KFunction k) {
    struct hconn *hc = u->rt;
    struct task *t;

    if (hc->ilen > hc->ioff) {
        hc->ioff += recv_push(L, hc->ibuf + hc->ioff, hc->ilen - hc->ioff,
                              max);
        if (hc->paused && hc->ilen - hc->ioff < hc->h->inbuf_max / 2) {
            hc->paused = 0;
            conn_want_read(hc->c, 1);
        }
        return 1;
    }
    if (hc->eof || conn_closing(hc->c) || hc->gone)
        return lconn_fail(L, "closed", 0);
    t = recv_waiter(L, hc, what, hc->reader, "connection", !hc->direct);
    hc->reader = t;
    t->recv_max = max;
    task_park(t, HW_RECV, u->timeout);
    return lua_yieldk(L, 0, 0, k);
}

/* send's result: queues len bytes; pushes len, or nil, "closed", 0. */
static int send_push(lua_State *L, struct hconn *hc, const char *s,
                     size_t len) {
    if (conn_closing(hc->c) || conn_send(hc->c, s, len) < 0)
        return lconn_fail(L, "closed", hc->u->end_code);
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

static int ev_send(lua_State *L, struct lconn *u, const char *s,
                   size_t len) {
    struct hconn *hc = u->rt;
    struct task *t = task_of(L);

    if (hc->writer)             /* these bytes would go before its */
        lconn_busy(L, "conn:send", "write", "connection");
    if (t == NULL || t->hc != hc || hc->gone || conn_can_send(hc->c) ||
        conn_closing(hc->c))
        return send_push(L, hc, s, len);
    hc->writer = t;
    t->send_ref = luaL_ref(L, LUA_REGISTRYINDEX);   /* pops the data */
    task_park(t, HW_SEND, u->timeout);
    return lua_yield(L, 0);
}

static void ev_close(struct lconn *u) {
    struct hconn *hc = u->rt;

    if (hc->in_call)
        hc->close_after = 1;    /* the callback's reply goes out first */
    else
        conn_close(hc->c);
}

static int task_sleep(lua_State *L, struct hconn *hc, double secs) {
    struct task *t = task_waiter(L, hc, "conn:sleep", "");

    task_park(t, HW_SLEEP, secs);
    return lua_yield(L, 0);
}

static int ev_sleep(lua_State *L, struct lconn *u, double secs) {
    return task_sleep(L, u->rt, secs);
}

static int ev_spawn(lua_State *L, struct lconn *u) {
    struct hconn *hc = u->rt;

    if (hc->ntasks >= LCONN_TASKS_MAX)
        return lconn_too_many(L, "coroutines", LCONN_TASKS_MAX);
    if (task_start(hc, L, lua_gettop(L) - 2) == NULL)
        return luaL_error(L, "not enough memory");
    lua_pushboolean(L, 1);
    return 1;
}

static void ev_shutdown(struct lconn *u) {
    conn_shutdown_send(((struct hconn *)u->rt)->c);
}

static void ev_reset(struct lconn *u) {
    conn_reset(((struct hconn *)u->rt)->c);
}

static void ev_timer_arm(struct lconn *u, struct ltimer *t, double secs);

/* Calls the function below the n arguments that push pushed, with the cap
 * lifted while they were pushed, like a callback whose results go unused
 * (budget, memory cap, a fault closes the connection). */
static void call_pushed(struct hconn *hc, int n, size_t cap) {
    struct handler *h = hc->h;
    lua_State *L = h->L;
    int status;

    cap_restore(h, cap);
    hload_budget(L, h->cfg->lua_budget);
    hc->in_call = 1;
    in_callback = hc;
    status = lua_pcall(L, n, 0, 1);     /* message handler at index 1 */
    in_callback = NULL;
    hc->in_call = 0;
    if (status != LUA_OK)
        fault(hc, L, status);
    else if (hc->close_after)
        conn_close(hc->c);
}

/* A timer of conn:after/every fell due: its function runs like a callback. */
static long ev_timer_fire(ev_loop *loop, long long id, void *ud) {
    struct ltimer *t = ud;
    struct hconn *hc = t->u->rt;
    lua_State *L = hc->h->L;
    size_t cap = cap_lift(hc->h);
    (void)loop; (void)id;

    t->rt_id = 0;               /* this ev timer ends: EV_NOMORE */
    call_pushed(hc, lconn_timer_push(L, t), cap);
    if (lconn_timer_done(L, t))
        ev_timer_arm(t->u, t, t->period);
    return EV_NOMORE;
}

static void ev_timer_arm(struct lconn *u, struct ltimer *t, double secs) {
    struct hconn *hc = u->rt;
    long long id = ev_timer_add(hc->h->loop, (long)(secs * 1000 + 0.5),
                                ev_timer_fire, t);

    t->rt_id = id > 0 ? id : 0;
}

static void ev_timer_disarm(struct lconn *u, struct ltimer *t) {
    if (t->rt_id)
        ev_timer_del(((struct hconn *)u->rt)->h->loop, t->rt_id);
    t->rt_id = 0;
}

/* A message for one of the conn's subscriptions: its function runs like
 * a timer's. */
static void ev_deliver(struct lconn *u, struct lsub *s, const char *ch,
                       size_t chlen, const char *msg, size_t len) {
    struct hconn *hc = u->rt;
    size_t cap = cap_lift(hc->h);

    call_pushed(hc, lpubsub_push(hc->h->L, s, ch, chlen, msg, len), cap);
}

static ev_loop *bell_loop;      /* the worker's: its handlers share it */

static void bell_proc(ev_loop *loop, int fd, void *ud, int mask) {
    (void)loop; (void)fd; (void)ud; (void)mask;
    lpubsub_dispatch();
}

static void bell_add(int fd) {
    if (ev_add(bell_loop, fd, EV_READABLE, bell_proc, NULL) < 0)
        log_error("pubsub: cannot watch the doorbell: %s", strerror(errno));
}

static void bell_del(int fd) {
    ev_del(bell_loop, fd, EV_READABLE);
}

static const struct lconn_ops ev_ops = {
    ev_recv, ev_send, ev_sleep, ev_close, ev_shutdown, ev_reset,
    ev_timer_arm, ev_timer_disarm, ev_spawn, ev_deliver, ev_pipe
};

/* --- upstream sockets ------------------------------------------------------ */

static char up_buf[65536];      /* one read of an upstream, this process's */

/* A name lookup of glibc's getaddrinfo_a: its thread writes the pointer to
 * a pipe the loop reads (res_pipe_proc). */
struct hres {
    struct gaicb cb;
    struct addrinfo hints;
    struct hup *up;             /* NULL: abandoned, freed once it ends */
    char serv[8];
    char host[];
};

static int res_pipe[2] = {-1, -1};

static void up_unlink(struct hup *up) {
    struct hup **p;

    for (p = &up->hc->ups; *p != up; p = &(*p)->next)
        ;
    *p = up->next;
    up->hc->nups--;
}

/* Closes the socket and lets everything of up go but the object (which
 * the caller detaches); tasks parked on it are detached, not woken. */
static void up_abandon(struct hup *up) {
    ev_loop *loop = up->hc->h->loop;

    if (up->fd >= 0) {
        ev_del(loop, up->fd, EV_READABLE | EV_WRITABLE);
        close(up->fd);
    }
    if (up->res)
        up->res->up = NULL;
    if (up->ai)
        freeaddrinfo(up->ai);
    if (up->ref != LUA_NOREF)
        luaL_unref(up->hc->h->L, LUA_REGISTRYINDEX, up->ref);
    if (up->u)
        up->u->rt = NULL;
    if (up->reader)
        up->reader->up = NULL;
    if (up->writer)
        up->writer->up = NULL;
    up_unlink(up);
    free(up);
}

/* An upstream's I/O error as recv and send report it: a write to a peer
 * that went away is its reset. */
static int up_errno(int e) {
    return e == EPIPE ? ECONNRESET : e;
}

static int up_ioerr(lua_State *L, int e) {
    return lconn_fail(L, "closed", up_errno(e));
}

/* The socket stays watched after a read (a proxy reads again at once: no
 * epoll_ctl per message); it is let go when it fires with no reader. */
static void up_read_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct hup *up = ud;
    struct task *t = up->reader;
    size_t max, cap;
    ssize_t n;
    int nres;
    (void)mask;

    if (t == NULL) {
        ev_del(loop, fd, EV_READABLE);
        return;
    }
    max = t->recv_max ? t->recv_max : sizeof up_buf;
    n = recv(fd, up_buf, max, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    up->drained = n > 0 && (size_t)n < max;
    up->reader = NULL;
    if (t->pipe) {
        if (n > 0)
            pipe_data(t, up_buf, (size_t)n);
        else
            pipe_failed(t, "closed", n == 0 ? 0 : up_errno(errno));
        return;
    }
    cap = cap_lift(up->hc->h);
    if (n > 0) {
        lua_pushlstring(t->co, up_buf, (size_t)n);
        nres = 1;
    } else {
        nres = n == 0 ? lconn_fail(t->co, "closed", 0) : up_ioerr(t->co, errno);
    }
    cap_restore(up->hc->h, cap);
    task_resume(t, up->hc->h->L, nres);
}

static int up_recv(lua_State *L, struct lconn *u, size_t max,
                   const char *what, lua_KFunction k) {
    struct hup *up = u->rt;
    struct task *t;
    ssize_t n;

    if (max == 0 || max > sizeof up_buf)
        max = sizeof up_buf;
    /* after a short read the socket is most likely empty: epoll tells when
     * it is not, and a recv that would fail is saved */
    if (!up->drained) {
        n = recv(up->fd, up_buf, max, 0);
        if (n > 0) {
            up->drained = (size_t)n < max;
            lua_pushlstring(L, up_buf, (size_t)n);
            return 1;
        }
        if (n == 0)
            return lconn_fail(L, "closed", 0);
        if (errno != EAGAIN && errno != EINTR)
            return up_ioerr(L, errno);
    }
    t = recv_waiter(L, up->hc, what, up->reader, "upstream socket", 0);
    if (ev_add(up->hc->h->loop, up->fd, EV_READABLE, up_read_proc, up) < 0)
        return up_ioerr(L, errno);
    up->reader = t;
    t->recv_max = max;
    task_park(t, HW_RECV, u->timeout);
    t->up = up;
    return lua_yieldk(L, 0, 0, k);
}

/* Writes what is left of s from *off: 1 when all is out, 0 when the
 * socket is full, -1 with errno. */
static int up_write(int fd, const char *s, size_t len, size_t *off) {
    while (*off < len) {
        ssize_t n = send(fd, s + *off, len - *off, MSG_NOSIGNAL);
        if (n >= 0)
            *off += (size_t)n;
        else if (errno == EAGAIN)
            return 0;
        else if (errno != EINTR)
            return -1;
    }
    return 1;
}

static void up_write_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct hup *up = ud;
    struct task *t = up->writer;
    lua_State *L = up->hc->h->L;
    size_t len, cap;
    const char *s;
    int r, nres;
    (void)mask;

    if (t->pipe) {
        up->writer = NULL;
        pipe_go(t);
        return;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->send_ref);
    s = lua_tolstring(L, -1, &len);
    r = up_write(fd, s, len, &t->send_off);
    lua_pop(L, 1);
    if (r == 0)
        return;
    ev_del(loop, fd, EV_WRITABLE);
    up->writer = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->send_ref);
    t->send_ref = LUA_NOREF;
    cap = cap_lift(up->hc->h);
    if (r > 0) {
        lua_pushinteger(t->co, (lua_Integer)len);
        nres = 1;
    } else {
        nres = up_ioerr(t->co, errno);
    }
    cap_restore(up->hc->h, cap);
    task_resume(t, L, nres);
}

static int up_send(lua_State *L, struct lconn *u, const char *s,
                   size_t len) {
    struct hup *up = u->rt;
    struct task *t;
    size_t off = 0;
    int r;

    if (up->writer)             /* these bytes would go into its */
        lconn_busy(L, "conn:send", "write", "upstream socket");
    if ((r = up_write(up->fd, s, len, &off)) > 0) {
        lua_pushinteger(L, (lua_Integer)len);
        return 1;
    }
    if (r < 0)
        return up_ioerr(L, errno);
    t = task_waiter(L, up->hc, "conn:send", "");
    if (ev_add(up->hc->h->loop, up->fd, EV_WRITABLE, up_write_proc, up) < 0)
        return up_ioerr(L, errno);
    up->writer = t;
    t->send_off = off;
    t->send_ref = luaL_ref(L, LUA_REGISTRYINDEX);   /* pops the data */
    task_park(t, HW_SEND, u->timeout);
    t->up = up;
    return lua_yield(L, 0);
}

static int up_sleep(lua_State *L, struct lconn *u, double secs) {
    return task_sleep(L, ((struct hup *)u->rt)->hc, secs);
}

/* up:close() and up:reset(), from a running coroutine: one parked on this
 * socket wakes with nil, "closed", 0. */
static void up_end(struct lconn *u, int reset) {
    struct hup *up = u->rt;
    struct task *r = up->reader, *w = up->writer;

    if (reset)
        net_abort(up->fd);
    up_abandon(up);
    if (r)
        task_wake_closed(r);
    if (w)
        task_wake_closed(w);
}

static void up_close(struct lconn *u) {
    up_end(u, 0);
}

static void up_reset(struct lconn *u) {
    up_end(u, 1);
}

static void up_shutdown(struct lconn *u) {
    shutdown(((struct hup *)u->rt)->fd, SHUT_WR);
}

static const struct lconn_ops up_ops = {
    up_recv, up_send, up_sleep, up_close, up_shutdown, up_reset,
    NULL, NULL, NULL, NULL,     /* lconn raises for timers, spawn and
                                   subscribe */
    ev_pipe
};

/* --- conn:pipe ----------------------------------------------------------------- */

/* from:pipe(to) of two objects of one connection (the conn, its upstream
 * sockets) runs here with no Lua per chunk: what from gives is written to
 * to at once, and the coroutine parks only on from (nothing to read) or to
 * (full), as recv and send would; it is resumed once, with M.pipe's
 * results (lua/echohost/conn.lua, the definition). */
enum { PIPE_READ, PIPE_WRITE };
enum { P_NEXT = 0, P_PARKED = -1, P_RAISE = -2 };
#define PIPE_BURST 16           /* upstream reads per wake-up: then the loop */

struct tpipe {
    struct lconn *from, *to;    /* on the coroutine's stack: kept alive */
    int side;                   /* where it is parked */
    char *buf;                  /* read from from, not yet sent to to */
    size_t off, len, cap;
    size_t chunk;               /* the chunk being sent: counted once out */
    lua_Integer moved;          /* bytes of the chunks to has taken */
};

static char pipe_raise_mark;    /* resumed with it and a message: raise */

static void pipe_free(struct task *t) {
    if (t->pipe) {
        free(t->pipe->buf);
        free(t->pipe);
        t->pipe = NULL;
    }
}

/* The connection u belongs to, if this runtime serves it. */
static struct hconn *pipe_hc(const struct lconn *u) {
    if (u->ops == &ev_ops)
        return u->rt;
    if (u->ops == &up_ops)
        return ((struct hup *)u->rt)->hc;
    return NULL;
}

static struct hup *pipe_up(const struct lconn *u) {
    return u->ops == &up_ops ? u->rt : NULL;
}

static int pipe_done(const struct lconn *u) {
    return u->closed || u->ops == NULL;
}

/* The end: the other side hears of it as M.pipe passes it on, and pipe's
 * results are pushed on the coroutine; returns how many. */
static int pipe_end(struct task *t, int side, const char *msg, int code) {
    struct tpipe *p = t->pipe;
    struct lconn *from = p->from, *to = p->to;
    lua_Integer moved = p->moved;
    lua_State *co = t->co;
    size_t cap;
    int n;

    pipe_free(t);
    if (side == PIPE_WRITE)
        lconn_end_reset(co, from);
    else if (code == ECONNRESET)
        lconn_end_reset(co, to);
    else
        lconn_shutdown_send(to);
    cap = cap_lift(t->hc->h);
    if (side == PIPE_READ && code == 0 && strcmp(msg, "closed") == 0) {
        lua_pushinteger(co, moved);
        n = 1;
    } else {
        n = lconn_fail(co, msg, code);
        lua_pushinteger(co, moved);
        n++;
    }
    cap_restore(t->hc->h, cap);
    return n;
}

/* What send would raise: the message is pushed for the caller to raise. */
static int pipe_busy(struct task *t, const char *obj) {
    size_t cap = cap_lift(t->hc->h);

    lua_pushfstring(t->co, "conn:send: another coroutine is waiting to "
                    "write this %s", obj);
    cap_restore(t->hc->h, cap);
    pipe_free(t);
    return P_RAISE;
}

/* Whether s lies in p->buf: the rest of a kept chunk. */
static int pipe_owns(const struct tpipe *p, const char *s) {
    return p->buf && s >= p->buf && s < p->buf + p->cap;
}

/* Keeps s[0..n) (it may lie in p->buf) to be sent once to can take it. */
static int pipe_keep(struct tpipe *p, const char *s, size_t n) {
    if (pipe_owns(p, s)) {
        memmove(p->buf, s, n);
    } else {
        if (n > p->cap) {
            char *b = realloc(p->buf, n);
            if (b == NULL)
                return -1;
            p->buf = b;
            p->cap = n;
        }
        memcpy(p->buf, s, n);
    }
    p->off = 0;
    p->len = n;
    return 0;
}

/* to:send(s) of M.pipe: P_NEXT (all taken), P_PARKED (the rest kept),
 * P_RAISE, or pipe's results (the end). */
static int pipe_send(struct task *t, const char *s, size_t n) {
    struct tpipe *p = t->pipe;
    struct lconn *to = p->to;
    struct hup *up = pipe_up(to);
    struct hconn *hc = t->hc;
    size_t off = 0;
    int r;

    if (pipe_done(to) || to->wshut)
        return pipe_end(t, PIPE_WRITE, "closed", to->wshut ? 0 : to->end_code);
    if (!pipe_owns(p, s))
        p->chunk = n;           /* a new one, not the rest of a kept one */
    p->len = p->off = 0;
    if (up == NULL) {
        if (hc->writer)
            return pipe_busy(t, "connection");
        if (hc->gone || conn_can_send(hc->c) || conn_closing(hc->c)) {
            if (conn_closing(hc->c) || conn_send(hc->c, s, n) < 0)
                return pipe_end(t, PIPE_WRITE, "closed", hc->u->end_code);
            p->moved += (lua_Integer)p->chunk;
            return P_NEXT;
        }
        if (pipe_keep(p, s, n) < 0)
            return pipe_end(t, PIPE_WRITE, "not enough memory", ENOMEM);
        hc->writer = t;
        task_park(t, HW_SEND, to->timeout);
        p->side = PIPE_WRITE;
        return P_PARKED;
    }
    if (up->writer)
        return pipe_busy(t, "upstream socket");
    r = up_write(up->fd, s, n, &off);
    if (r > 0) {
        p->moved += (lua_Integer)p->chunk;
        return P_NEXT;
    }
    if (r < 0)
        return pipe_end(t, PIPE_WRITE, "closed", up_errno(errno));
    if (pipe_keep(p, s + off, n - off) < 0)
        return pipe_end(t, PIPE_WRITE, "not enough memory", ENOMEM);
    if (ev_add(hc->h->loop, up->fd, EV_WRITABLE, up_write_proc, up) < 0)
        return pipe_end(t, PIPE_WRITE, "closed", errno);
    up->writer = t;
    task_park(t, HW_SEND, to->timeout);
    t->up = up;
    p->side = PIPE_WRITE;
    return P_PARKED;
}

static void pipe_park_read(struct task *t, struct hup *up) {
    t->recv_max = 0;
    task_park(t, HW_RECV, t->pipe->from->timeout);
    t->pipe->side = PIPE_READ;
    if (up) {
        up->reader = t;
        t->up = up;
    } else {
        t->hc->reader = t;
    }
}

/* from:recv() of M.pipe and the send of what it gave, until one of them
 * must wait or the pipe ends. */
static int pipe_run(struct task *t) {
    struct hconn *hc = t->hc;
    int burst = 0, r = P_NEXT;

    while (r == P_NEXT) {
        struct tpipe *p = t->pipe;
        struct hup *up = pipe_up(p->from);
        ssize_t n;

        if (p->len > p->off) {
            r = pipe_send(t, p->buf + p->off, p->len - p->off);
            continue;
        }
        if (pipe_done(p->from))
            return pipe_end(t, PIPE_READ, "closed", p->from->end_code);
        if (up == NULL) {
            if (hc->ilen > hc->ioff) {
                const char *s = hc->ibuf + hc->ioff;
                size_t len = hc->ilen - hc->ioff;
                hc->ioff = hc->ilen;
                if (hc->paused) {
                    hc->paused = 0;
                    conn_want_read(hc->c, 1);
                }
                r = pipe_send(t, s, len);
                continue;
            }
            if (hc->eof || conn_closing(hc->c) || hc->gone)
                return pipe_end(t, PIPE_READ, "closed", 0);
            pipe_park_read(t, NULL);
            return P_PARKED;
        }
        if (up->drained || burst++ == PIPE_BURST) {
            if (ev_add(hc->h->loop, up->fd, EV_READABLE, up_read_proc, up) < 0)
                return pipe_end(t, PIPE_READ, "closed", errno);
            up->drained = 0;    /* epoll says when there is more */
            pipe_park_read(t, up);
            return P_PARKED;
        }
        n = recv(up->fd, up_buf, sizeof up_buf, 0);
        if (n > 0) {
            up->drained = (size_t)n < sizeof up_buf;
            r = pipe_send(t, up_buf, (size_t)n);
        } else if (n == 0) {
            return pipe_end(t, PIPE_READ, "closed", 0);
        } else if (errno == EAGAIN || errno == EINTR) {
            up->drained = 1;
        } else {
            return pipe_end(t, PIPE_READ, "closed", up_errno(errno));
        }
    }
    return r;
}

/* The wait t was parked in is over (its slot was cleared by the caller). */
static void pipe_unpark(struct task *t) {
    if (t->timer) {
        ev_timer_del(t->hc->h->loop, t->timer);
        t->timer = 0;
    }
    t->wait = HW_NONE;
    t->up = NULL;
}

/* After r of pipe_run, outside the coroutine: it goes on if it ended. */
static void pipe_after(struct task *t, int r) {
    if (r == P_PARKED)
        return;
    if (r == P_RAISE) {
        size_t cap = cap_lift(t->hc->h);
        lua_pushlightuserdata(t->co, &pipe_raise_mark);
        lua_insert(t->co, -2);
        cap_restore(t->hc->h, cap);
        r = 2;
    }
    task_resume(t, t->hc->h->L, r);
}

/* to can take more (its writer slot was cleared): the rest goes. */
static void pipe_go(struct task *t) {
    struct tpipe *p = t->pipe;
    int r;

    if (t->up)
        ev_del(t->hc->h->loop, t->up->fd, EV_WRITABLE);
    pipe_unpark(t);
    r = pipe_send(t, p->buf + p->off, p->len - p->off);
    if (r == P_NEXT)
        r = pipe_run(t);
    pipe_after(t, r);
}

/* from gave s (its reader slot was cleared). */
static void pipe_data(struct task *t, const char *s, size_t n) {
    int r;

    pipe_unpark(t);
    r = pipe_send(t, s, n);
    if (r == P_NEXT)
        r = pipe_run(t);
    pipe_after(t, r);
}

/* The wait failed (EOF, a reset, a timeout, the end; t is unparked). */
static void pipe_failed(struct task *t, const char *msg, int code) {
    pipe_unpark(t);
    task_resume(t, t->hc->h->L, pipe_end(t, t->pipe->side, msg, code));
}

static int pipe_k(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    if (lua_touserdata(L, (int)ctx + 1) == &pipe_raise_mark)
        return lua_error(L);            /* the message is on top */
    return lua_gettop(L) - (int)ctx;
}

static int ev_pipe(lua_State *L, struct lconn *from, struct lconn *to) {
    struct task *t = task_of(L);
    struct hconn *hc = pipe_hc(from);
    struct hup *up = pipe_up(from);
    int r;

    /* elsewhere M.pipe runs, and its recv and send say what is wrong */
    if (t == NULL || hc == NULL || t->hc != hc || pipe_hc(to) != hc ||
        !hc->direct || t->pipe || (up ? up->reader : hc->reader) != NULL)
        return -1;
    if ((t->pipe = calloc(1, sizeof *t->pipe)) == NULL)
        return luaL_error(L, "not enough memory");
    t->pipe->from = from;
    t->pipe->to = to;
    if (from->rlen > from->roff) {      /* bytes a receive read past its frame */
        if (pipe_keep(t->pipe, from->rbuf + from->roff,
                      from->rlen - from->roff) < 0) {
            pipe_free(t);
            return luaL_error(L, "not enough memory");
        }
        t->pipe->chunk = t->pipe->len;
        from->roff = from->rlen;
    }
    r = pipe_run(t);
    if (r == P_RAISE)
        return lua_error(L);
    if (r == P_PARKED)
        return lua_yieldk(L, 0, lua_gettop(L), pipe_k);
    return r;
}

/* --- connect ----------------------------------------------------------------- */

enum { UP_DONE, UP_PENDING, UP_FAILED };

static void up_connect_proc(ev_loop *loop, int fd, void *ud, int mask);

/* Tries up->cur and the addresses after it until one connects or is in
 * progress. */
static int up_try(struct hup *up) {
    for (; up->cur; up->cur = up->cur->ai_next) {
        const struct addrinfo *ai = up->cur;
        int rc;

        net_format_addr(ai->ai_addr, up->addr, sizeof up->addr);
        rc = net_connect_start(ai, &up->fd);    /* errno kept for up->err */
        if (rc == 0)
            return UP_DONE;
        if (rc == 1 &&
            ev_add(up->hc->h->loop, up->fd, EV_WRITABLE, up_connect_proc,
                   up) == 0)
            return UP_PENDING;
        up->err = errno;
        if (up->fd >= 0)
            close(up->fd);
        up->fd = -1;
    }
    return UP_FAILED;
}

/* Pushes connect's results on L: the object, or nil, msg, code (up is
 * gone then). */
static int up_result(struct hup *up, lua_State *L, int how) {
    struct hconn *hc = up->hc;
    char msg[NET_ADDR_LEN + 128];
    struct net_peer peer;
    int err = up->err;

    if (how == UP_FAILED) {
        snprintf(msg, sizeof msg, "connect %s: %s", up->addr, strerror(err));
        up_abandon(up);
        return lconn_fail(L, msg, err);
    }
    freeaddrinfo(up->ai);
    up->ai = up->cur = NULL;
    net_peer_set_name(&peer, up->addr);
    up->u = lconn_new(L, &up_ops, up, hc->u->id, &peer, hc->h->inbuf_max);
    up->u->upstream = 1;
    lua_pushvalue(L, -1);
    up->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
}

/* The connecting task t goes on with how's results. */
static void up_resume(struct hup *up, int how) {
    struct task *t = up->writer;
    struct handler *h = up->hc->h;
    size_t cap = cap_lift(h);
    int n;

    up->writer = NULL;
    n = up_result(up, t->co, how);
    cap_restore(h, cap);
    task_resume(t, h->L, n);
}

static void up_connect_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct hup *up = ud;
    int how;
    (void)mask;

    ev_del(loop, fd, EV_WRITABLE);
    if ((up->err = net_connect_result(fd)) == 0) {
        how = UP_DONE;
    } else {
        close(fd);
        up->fd = -1;
        up->cur = up->cur->ai_next;
        if ((how = up_try(up)) == UP_PENDING)
            return;
    }
    up_resume(up, how);
}

/* Lookups that ended: the parked connects go on. */
static void res_pipe_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct hres *r;
    (void)loop; (void)ud; (void)mask;

    while (read(fd, &r, sizeof r) == (ssize_t)sizeof r) {
        struct hup *up = r->up;
        int rc = gai_error(&r->cb), how;

        if (up == NULL) {
            if (rc == 0)
                freeaddrinfo(r->cb.ar_result);
            free(r);
            continue;
        }
        up->res = NULL;
        if (rc != 0) {
            struct task *t = up->writer;
            char msg[300];
            size_t cap = cap_lift(up->hc->h);
            snprintf(msg, sizeof msg, "resolve %s: %s", r->host,
                     gai_strerror(rc));   /* errno is the lookup thread's */
            up->writer = NULL;
            up_abandon(up);
            int n = lconn_fail(t->co, msg, rc);
            cap_restore(t->hc->h, cap);
            free(r);
            task_resume(t, t->hc->h->L, n);
            continue;
        }
        up->ai = up->cur = r->cb.ar_result;
        free(r);
        if ((how = up_try(up)) != UP_PENDING)
            up_resume(up, how);
    }
}

/* Runs in getaddrinfo_a's thread. */
static void res_notify(union sigval v) {
    struct hres *r = v.sival_ptr;

    while (write(res_pipe[1], &r, sizeof r) < 0 && errno == EINTR)
        ;
}

static int res_start(struct hup *up, const char *host, const char *serv) {
    struct sigevent sev;
    struct gaicb *list[1];
    size_t hlen = strlen(host);
    struct hres *r;

    if (res_pipe[0] < 0) {
        if (pipe2(res_pipe, O_CLOEXEC) < 0)
            return -1;
        fcntl(res_pipe[0], F_SETFL, O_NONBLOCK);
        if (ev_add(up->hc->h->loop, res_pipe[0], EV_READABLE, res_pipe_proc,
                   NULL) < 0)
            return -1;
    }
    if ((r = calloc(1, sizeof *r + hlen + 1)) == NULL)
        return -1;
    memcpy(r->host, host, hlen + 1);
    memcpy(r->serv, serv, strlen(serv) + 1);
    net_hints(&r->hints, NET_RES_ADDRCONFIG);
    r->cb.ar_name = r->host;
    r->cb.ar_service = r->serv;
    r->cb.ar_request = &r->hints;
    r->up = up;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_THREAD;
    sev.sigev_notify_function = res_notify;
    sev.sigev_value.sival_ptr = r;
    list[0] = &r->cb;
    if (getaddrinfo_a(GAI_NOWAIT, list, 1, &sev) != 0) {
        free(r);
        return -1;
    }
    up->res = r;
    return 0;
}

/* echohost.socket.connect(host, port [, timeout]) in a handler. */
static int ev_connect(lua_State *L, void *rt, const char *host, int port,
                      double timeout) {
    struct addrinfo *ai = NULL;
    struct task *t = task_of(L);
    struct hconn *hc;
    struct hup *up;
    char serv[8], err[NET_ERR_LEN];
    int rc, how;
    (void)rt;

    if (t == NULL)
        return lconn_would_wait(L, "echohost.socket.connect", "");
    hc = t->hc;
    if (hc->gone || conn_closing(hc->c))
        return lconn_fail(L, "closed", hc->u->end_code);
    if (hc->nups >= LCONN_UPSTREAMS_MAX)
        return lconn_too_many(L, "upstream sockets", LCONN_UPSTREAMS_MAX);
    snprintf(serv, sizeof serv, "%d", port);
    rc = net_resolve(err, host, port, NET_RES_NUMERIC, &ai);
    if (rc != 0 && rc != EAI_NONAME)    /* EAI_NONAME: a name to look up */
        return lconn_fail(L, err, rc);
    if ((up = calloc(1, sizeof *up)) == NULL)
        return luaL_error(L, "not enough memory");
    up->hc = hc;
    up->fd = -1;
    up->ref = LUA_NOREF;
    up->next = hc->ups;
    hc->ups = up;
    hc->nups++;
    if (rc == 0) {
        up->ai = up->cur = ai;
        how = up_try(up);
        if (how != UP_PENDING)
            return up_result(up, L, how);
    } else if (res_start(up, host, serv) < 0) {
        up->err = errno;
        snprintf(up->addr, sizeof up->addr, "%s", host);
        return up_result(up, L, UP_FAILED);
    }
    up->writer = t;
    task_park(t, HW_CONNECT, timeout);
    t->up = up;
    return lua_yield(L, 0);
}

/* --- the worker's calls --------------------------------------------------- */

void handler_on_open(struct handler *h, conn *c) {
    struct hconn *hc = calloc(1, sizeof *hc);
    size_t cap;

    if (hc == NULL) {
        log_error("handler: out of memory for connection %s", conn_peer(c));
        conn_close(c);
        return;
    }
    hc->h = h;
    hc->c = c;
    conn_set_data(c, hc);
    cap = cap_lift(h);
    hc->u = lconn_new(h->L, &ev_ops, hc, (lua_Integer)conn_id(c),
                      conn_net_peer(c), h->inbuf_max);
    hc->ud_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
    cap_restore(h, cap);
    if (h->hs.cur.kind == HK_DIRECT)
        co_start(hc);
    else if (h->hs.cur.kind == HK_CALLBACKS && h->hs.cur.open != LUA_REFNIL)
        call_cb(hc, h->hs.cur.open, NULL, 0, NULL);
}

void handler_on_data(struct handler *h, conn *c, const char *buf,
                     size_t len) {
    struct hconn *hc = conn_data(c);
    struct task *t;
    size_t took;

    if (hc == NULL || conn_closing(c))
        return;
    if (!hc->direct && h->hs.cur.kind == HK_DIRECT) {
        if (inbuf_append(hc, buf, len) < 0)
            goto nomem;
        co_start(hc);           /* swapped to direct style since open */
        return;
    }
    if (!hc->direct) {
        if (h->hs.cur.data != LUA_REFNIL)
            call_cb(hc, h->hs.cur.data, buf, len, NULL);
        return;
    }
    if ((t = hc->reader) == NULL) {
        if (hc->ntasks && inbuf_append(hc, buf, len) < 0)
            goto nomem;
        return;                 /* no coroutine left: closing */
    }
    hc->reader = NULL;
    if (t->pipe) {
        pipe_data(t, buf, len);
        return;
    }
    {
        size_t cap = cap_lift(h);
        took = recv_push(t->co, buf, len, t->recv_max);
        cap_restore(h, cap);
    }
    if (took < len && inbuf_append(hc, buf + took, len - took) < 0)
        goto nomem;
    task_resume(t, h->L, 1);
    return;
nomem:
    log_error("handler: out of memory buffering input of %s", conn_peer(c));
    conn_close(c);
}

void handler_on_eof(struct handler *h, conn *c) {
    struct hconn *hc = conn_data(c);
    struct task *t;
    (void)h;

    if (hc == NULL)
        return;
    hc->eof = 1;
    if ((t = hc->reader) != NULL) {
        hc->reader = NULL;
        task_fail(t, "closed", 0);
    } else if (!hc->direct) {
        conn_maybe_done(hc);    /* callbacks: nothing more will come */
    }
}

void handler_on_drain(struct handler *h, conn *c) {
    struct hconn *hc = conn_data(c);
    struct task *t;
    size_t len, cap;
    const char *s;
    int n;

    if (hc == NULL || (t = hc->writer) == NULL)
        return;
    hc->writer = NULL;
    if (t->pipe) {
        pipe_go(t);
        return;
    }
    cap = cap_lift(h);
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, t->send_ref);
    s = lua_tolstring(t->co, -1, &len);
    n = send_push(t->co, hc, s, len);
    lua_rotate(t->co, -(n + 1), -1);
    lua_pop(t->co, 1);                          /* the data */
    cap_restore(h, cap);
    luaL_unref(h->L, LUA_REGISTRYINDEX, t->send_ref);
    t->send_ref = LUA_NOREF;
    task_resume(t, h->L, n);
}

/* The connection ended: its upstreams close, then every parked coroutine
 * gets nil, "closed", code and runs on (its waits now fail at once). */
static void conn_gone_tasks(struct hconn *hc, int code) {
    struct task *t;

    while (hc->ups) {
        if (hc->ups->u)
            lconn_gone(hc->h->L, hc->ups->u, code);
        up_abandon(hc->ups);
    }
    for (;;) {
        for (t = hc->tasks; t && t->wait == HW_NONE; t = t->next)
            ;
        if (t == NULL)
            break;
        task_unpark(t);
        task_fail(t, "closed", code);
    }
}

const char *handler_on_close(struct handler *h, conn *c, const char *reason) {
    struct hconn *hc = conn_data(c);

    if (hc == NULL)
        return reason;
    hc->gone = 1;
    if (hc->faulted)
        reason = "error";
    else if (hc->eof && strcmp(reason, "closed") == 0)
        reason = "eof";
    /* first: the timers go, and whatever the handler does from here on
     * (a parked coroutine resumed, on_close) sees a closed connection */
    lconn_gone(h->L, hc->u, lconn_reason_code(reason));
    conn_gone_tasks(hc, hc->u->end_code);
    if (!hc->direct && h->hs.cur.kind == HK_CALLBACKS &&
        h->hs.cur.close != LUA_REFNIL)
        call_cb(hc, h->hs.cur.close, NULL, 0, reason);
    while (hc->tasks)           /* none is left: each ran to its end */
        task_end(hc->tasks);
    luaL_unref(h->L, LUA_REGISTRYINDEX, hc->ud_ref);
    if (hc->memfault)
        lua_gc(h->L, LUA_GCCOLLECT);
    free(hc->ibuf);
    free(hc);
    conn_set_data(c, NULL);
    return reason;
}

/* --- loading and swapping ------------------------------------------------- */

int handler_reload(struct handler *h, const char *path, char *err,
                   size_t errlen) {
    if (hstate_load(&h->hs, path, err, errlen) < 0)
        return -1;
    log_info("handler %s version %d loaded", h->hs.path, h->hs.version);
    return 0;
}

int handler_reload_logged(struct handler *h, const char *trigger) {
    char err[HLOAD_ERR_LEN];

    if (handler_reload(h, NULL, err, sizeof err) == 0)
        return 0;
    hstate_log_refused(&h->hs, trigger, err);
    return -1;
}

int handler_version(const struct handler *h) {
    return h->hs.version;
}

size_t handler_mem(const struct handler *h) {
    return lhost_mem_used(h->L);
}

struct hstate *handler_state(struct handler *h) {
    return &h->hs;
}

struct handler *handler_create(ev_loop *loop, const struct eh_config *cfg,
                               const struct hstate *loaded) {
    struct handler *h = calloc(1, sizeof *h);

    if (h == NULL)
        return NULL;
    h->hs = *loaded;            /* this process's copy, owned from now on */
    h->L = h->hs.L;
    h->loop = loop;
    h->cfg = cfg;
    h->inbuf_max = cfg->high_water ? cfg->high_water : 256 * 1024;
    *(struct task **)lua_getextraspace(h->L) = NULL;
    lconn_set_runtime(h->L, ev_connect, h);
    llog_set_conn(conn_now);
    bell_loop = loop;
    lpubsub_set_watch(bell_add, bell_del);
    lua_settop(h->L, 0);
    lua_pushcfunction(h->L, lhost_msghandler);     /* index 1, for call_cb */
    return h;
}

void handler_destroy(struct handler *h) {
    if (h == NULL)
        return;
    hstate_close(&h->hs);
    free(h);
}
