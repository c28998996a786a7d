/* The event runtime: runs a Lua handler (per-message function, callbacks,
 * or a direct-style coroutine per connection) on the connections of one
 * worker, and gives the conn object its operations there. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "conn.h"
#include "hload.h"
#include "lconn.h"
#include "lhost.h"
#include "log.h"

enum hwait { HW_NONE, HW_RECV, HW_SEND, HW_SLEEP };

struct handler {
    struct hstate hs;           /* the state and the current version */
    lua_State *L;               /* hs.L */
    ev_loop *loop;
    const struct eh_config *cfg;
    size_t inbuf_max;           /* bytes buffered for a coroutine */
};

/* Per-connection state of the runtime: c->hdata. */
struct hconn {
    struct handler *h;
    conn *c;
    struct lconn *u;
    int ud_ref;                 /* the conn object */
    int in_call;                /* a callback is running */
    int close_after;            /* it called conn:close(): close after it */
    int faulted;                /* ended by a handler error */
    lua_State *co;              /* direct style: the coroutine, or NULL */
    int co_ref;
    enum hwait wait;            /* what the parked coroutine waits for */
    size_t recv_max;            /* recv's size argument (0: any) */
    int send_ref;               /* the string a parked send will queue */
    long long timer;            /* the pending operation's timeout, or 0 */
    char *ibuf;                 /* input that arrived while not in recv */
    size_t ioff, ilen, icap;
    int eof;                    /* the client shut down its side */
    int paused;                 /* we stopped reading: ibuf is full */
    int gone;                   /* handler_on_close is running */
    int memfault;               /* a handler call ran out of memory */
    int direct;                 /* a coroutine ran: no callbacks any more */
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
              hc->h->hs.path, hc->u->peer, (long long)hc->u->id,
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

/* Sends the reply at the top of L (a string or nil) and pops it. */
static int send_reply(struct hconn *hc, lua_State *L) {
    size_t len;
    const char *s;

    if (lua_type(L, -1) == LUA_TSTRING) {
        s = lua_tolstring(L, -1, &len);
        if (len)
            conn_send(hc->c, s, len);
    } else if (!lua_isnil(L, -1)) {
        size_t cap = cap_lift(hc->h);
        lua_pushfstring(L, "handler returned a %s (expected a string or nil)",
                        luaL_typename(L, -1));
        cap_restore(hc->h, cap);
        lua_remove(L, -2);
        fault(hc, L, LUA_ERRRUN);
        return -1;
    }
    lua_pop(L, 1);
    return 0;
}

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
    /* eh_pcall, with its message handler kept at index 1 (handler_create) */
    int status = lua_pcall(L, nargs, 1, 1);
    hc->in_call = 0;
    if (status != LUA_OK) {
        fault(hc, L, status);
        return;
    }
    /* a reply after conn:close() is still sent: close means flush first */
    if (send_reply(hc, L) == 0 && hc->close_after)
        conn_close(hc->c);
}

/* --- the coroutine of a direct-style connection --------------------------- */

static void co_end(struct hconn *hc) {
    if (hc->co == NULL)
        return;
    if (hc->send_ref != LUA_NOREF) {
        luaL_unref(hc->h->L, LUA_REGISTRYINDEX, hc->send_ref);
        hc->send_ref = LUA_NOREF;
    }
    luaL_unref(hc->h->L, LUA_REGISTRYINDEX, hc->co_ref);
    hc->co_ref = LUA_NOREF;
    hc->co = NULL;
    hc->wait = HW_NONE;
}

static void co_fault(struct hconn *hc, int status) {
    lua_State *L = hc->h->L, *co = hc->co;
    size_t cap = cap_lift(hc->h);
    const char *msg = lua_tostring(co, -1);

    if (status == LUA_ERRMEM || msg == NULL)
        lua_pushstring(L, msg ? msg : "(error object is not a string)");
    else
        luaL_traceback(L, co, msg, 0);
    cap_restore(hc->h, cap);
    co_end(hc);
    fault(hc, L, status);
}

/* Resumes the parked coroutine with the nargs results on its stack. */
static void co_resume(struct hconn *hc, int nargs) {
    lua_State *co = hc->co;
    int nres, status;

    if (hc->timer) {
        ev_timer_del(hc->h->loop, hc->timer);
        hc->timer = 0;
    }
    hc->wait = HW_NONE;
    hload_budget(co, hc->h->cfg->lua_budget);
    status = lua_resume(co, hc->h->L, nargs, &nres);
    if (status == LUA_YIELD) {
        lua_pop(co, nres);
        if (hc->wait != HW_NONE || hc->gone)
            return;
        size_t cap = cap_lift(hc->h);
        lua_pushliteral(co, "handle yielded outside conn:recv/conn:send");
        cap_restore(hc->h, cap);
        status = LUA_ERRRUN;
    } else if (status == LUA_OK) {
        co_end(hc);
        conn_close(hc->c);      /* handle returned: flush, then close */
        return;
    }
    co_fault(hc, status);
}

/* Resumes the parked coroutine with nil, msg, code. */
static void co_fail(struct hconn *hc, const char *msg, int code) {
    size_t cap = cap_lift(hc->h);
    int n = lconn_fail(hc->co, msg, code);

    cap_restore(hc->h, cap);
    co_resume(hc, n);
}

static void co_start(struct hconn *hc) {
    struct handler *h = hc->h;
    size_t cap = cap_lift(h);

    hc->direct = 1;
    hc->co = lua_newthread(h->L);
    hc->co_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
    lua_rawgeti(hc->co, LUA_REGISTRYINDEX, h->hs.cur.handle);
    lua_rawgeti(hc->co, LUA_REGISTRYINDEX, hc->ud_ref);
    cap_restore(h, cap);
    co_resume(hc, 1);
}

static long co_timeout(ev_loop *loop, long long id, void *ud) {
    struct hconn *hc = ud;
    (void)loop; (void)id;

    hc->timer = 0;
    if (hc->wait == HW_SLEEP) {
        size_t cap = cap_lift(hc->h);
        lua_pushboolean(hc->co, 1);
        cap_restore(hc->h, cap);
        co_resume(hc, 1);
    } else if (hc->wait == HW_RECV || hc->wait == HW_SEND) {
        if (hc->wait == HW_SEND) {
            luaL_unref(hc->h->L, LUA_REGISTRYINDEX, hc->send_ref);
            hc->send_ref = LUA_NOREF;
        }
        co_fail(hc, "timeout", ETIMEDOUT);
    }
    return EV_NOMORE;
}

/* Parks the running coroutine L on op for at most t seconds (< 0: no
 * bound); the caller returns lua_yieldk. */
static void co_park(struct hconn *hc, enum hwait op, double t) {
    hc->wait = op;
    if (t >= 0) {
        long ms = (long)(t * 1000 + 0.5);
        long long id = ev_timer_add(hc->h->loop, ms, co_timeout, hc);
        hc->timer = id > 0 ? id : 0;
    }
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
    if (L != hc->co)
        return luaL_error(L, "conn:%s would wait: only a handle(conn) "
                          "coroutine can wait for data", what);
    hc->recv_max = max;
    co_park(hc, HW_RECV, u->timeout);
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

    if (L != hc->co || hc->gone || conn_can_send(hc->c) ||
        conn_closing(hc->c))
        return send_push(L, hc, s, len);
    hc->send_ref = luaL_ref(L, LUA_REGISTRYINDEX);  /* pops the data */
    co_park(hc, HW_SEND, u->timeout);
    return lua_yield(L, 0);
}

static void ev_close(struct lconn *u) {
    struct hconn *hc = u->rt;

    if (hc->in_call)
        hc->close_after = 1;    /* the callback's reply goes out first */
    else
        conn_close(hc->c);
}

static int ev_sleep(lua_State *L, struct lconn *u, double secs) {
    struct hconn *hc = u->rt;

    if (L != hc->co)
        return luaL_error(L, "conn:sleep would wait: only a handle(conn) "
                          "coroutine can wait");
    co_park(hc, HW_SLEEP, secs);
    return lua_yield(L, 0);
}

static void ev_shutdown(struct lconn *u) {
    conn_shutdown_send(((struct hconn *)u->rt)->c);
}

static void ev_reset(struct lconn *u) {
    conn_reset(((struct hconn *)u->rt)->c);
}

static void ev_timer_arm(struct lconn *u, struct ltimer *t, double secs);

/* A timer of conn:after/every fell due: its function runs like a callback
 * (budget, memory cap, a fault closes the connection). */
static long ev_timer_fire(ev_loop *loop, long long id, void *ud) {
    struct ltimer *t = ud;
    struct hconn *hc = t->u->rt;
    struct handler *h = hc->h;
    lua_State *L = h->L;
    size_t cap = cap_lift(h);
    int n, status;
    (void)loop; (void)id;

    t->rt_id = 0;               /* this ev timer ends: EV_NOMORE */
    n = lconn_timer_push(L, t);
    cap_restore(h, cap);
    hload_budget(L, h->cfg->lua_budget);
    hc->in_call = 1;
    status = lua_pcall(L, n, 0, 1);     /* message handler at index 1 */
    hc->in_call = 0;
    if (status != LUA_OK)
        fault(hc, L, status);
    else if (hc->close_after)
        conn_close(hc->c);
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

static const struct lconn_ops ev_ops = {
    ev_recv, ev_send, ev_sleep, ev_close, ev_shutdown, ev_reset,
    ev_timer_arm, ev_timer_disarm
};

/* --- the worker's calls --------------------------------------------------- */

void handler_on_open(struct handler *h, conn *c) {
    struct hconn *hc = calloc(1, sizeof *hc);
    size_t cap;

    if (hc == NULL) {
        log_error("handler: out of memory for connection %s", c->peer);
        conn_close(c);
        return;
    }
    hc->h = h;
    hc->c = c;
    hc->co_ref = hc->send_ref = LUA_NOREF;
    c->hdata = hc;
    cap = cap_lift(h);
    hc->u = lconn_new(h->L, &ev_ops, hc, (lua_Integer)c->id, c->peer,
                      h->inbuf_max);
    hc->ud_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
    cap_restore(h, cap);
    if (h->hs.cur.kind == HK_DIRECT)
        co_start(hc);
    else if (h->hs.cur.kind == HK_CALLBACKS && h->hs.cur.open != LUA_REFNIL)
        call_cb(hc, h->hs.cur.open, NULL, 0, NULL);
}

void handler_on_data(struct handler *h, conn *c, const char *buf,
                     size_t len) {
    struct hconn *hc = c->hdata;
    size_t took;

    if (hc == NULL || conn_closing(c))
        return;
    if (hc->co == NULL && hc->direct)
        return;                 /* handle returned: closing */
    if (hc->co == NULL && h->hs.cur.kind == HK_DIRECT) {
        if (inbuf_append(hc, buf, len) < 0)
            goto nomem;
        co_start(hc);           /* swapped to direct style since open */
        return;
    }
    if (hc->co == NULL) {
        if (h->hs.cur.data != LUA_REFNIL)
            call_cb(hc, h->hs.cur.data, buf, len, NULL);
        return;
    }
    if (hc->wait != HW_RECV) {
        if (inbuf_append(hc, buf, len) < 0)
            goto nomem;
        return;
    }
    {
        size_t cap = cap_lift(h);
        took = recv_push(hc->co, buf, len, hc->recv_max);
        cap_restore(h, cap);
    }
    if (took < len && inbuf_append(hc, buf + took, len - took) < 0)
        goto nomem;
    co_resume(hc, 1);
    return;
nomem:
    log_error("handler: out of memory buffering input of %s", c->peer);
    conn_close(c);
}

void handler_on_eof(struct handler *h, conn *c) {
    struct hconn *hc = c->hdata;
    (void)h;

    if (hc == NULL)
        return;
    hc->eof = 1;
    if (hc->co == NULL)
        conn_close(c);          /* callbacks: nothing more will come */
    else if (hc->wait == HW_RECV)
        co_fail(hc, "closed", 0);
}

void handler_on_drain(struct handler *h, conn *c) {
    struct hconn *hc = c->hdata;
    size_t len, cap;
    const char *s;
    int n;

    if (hc == NULL || hc->co == NULL || hc->wait != HW_SEND)
        return;
    cap = cap_lift(h);
    lua_rawgeti(hc->co, LUA_REGISTRYINDEX, hc->send_ref);
    s = lua_tolstring(hc->co, -1, &len);
    n = send_push(hc->co, hc, s, len);
    lua_rotate(hc->co, -(n + 1), -1);
    lua_pop(hc->co, 1);                         /* the data */
    cap_restore(h, cap);
    luaL_unref(h->L, LUA_REGISTRYINDEX, hc->send_ref);
    hc->send_ref = LUA_NOREF;
    co_resume(hc, n);
}

const char *handler_on_close(struct handler *h, conn *c, const char *reason) {
    struct hconn *hc = c->hdata;

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
    if (hc->timer) {
        ev_timer_del(h->loop, hc->timer);
        hc->timer = 0;
    }
    if (hc->co && hc->wait != HW_NONE) {
        if (hc->send_ref != LUA_NOREF) {
            luaL_unref(h->L, LUA_REGISTRYINDEX, hc->send_ref);
            hc->send_ref = LUA_NOREF;
        }
        co_fail(hc, "closed", hc->u->end_code);
    } else if (!hc->direct && h->hs.cur.kind == HK_CALLBACKS &&
               h->hs.cur.close != LUA_REFNIL) {
        call_cb(hc, h->hs.cur.close, NULL, 0, reason);
    }
    co_end(hc);
    luaL_unref(h->L, LUA_REGISTRYINDEX, hc->ud_ref);
    if (hc->memfault)
        lua_gc(h->L, LUA_GCCOLLECT);
    free(hc->ibuf);
    free(hc);
    c->hdata = NULL;
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
