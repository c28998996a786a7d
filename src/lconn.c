/* The "echohost.conn" object: recv, send, close, settimeout, id, peer and
 * state, the same for every interpreter; the I/O is the runtime's (ops). */
#include <errno.h>
#include <string.h>

#include <lauxlib.h>

#include "lconn.h"
#include "lpubsub.h"

int lconn_fail(lua_State *L, const char *msg, int code) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushinteger(L, code);
    return 3;
}

int lconn_would_wait(lua_State *L, const char *what, const char *for_) {
    return luaL_error(L, "%s would wait: only a coroutine of the connection "
                      "(handle, conn:spawn) can wait%s", what, for_);
}

int lconn_busy(lua_State *L, const char *what, const char *dir,
               const char *obj) {
    return luaL_error(L, "%s: another coroutine is waiting to %s this %s",
                      what, dir, obj);
}

int lconn_too_many(lua_State *L, const char *kind, int max) {
    return luaL_error(L, "too many %s on this connection (at most %d)", kind,
                      max);
}

int lconn_reason_code(const char *reason) {
    return strcmp(reason, "reset") == 0 ? ECONNRESET : 0;
}

/* --- timers ------------------------------------------------------------- */

static struct lconn *checkconn(lua_State *L);
static int done(const struct lconn *u);

/* Takes t off its connection and lets its userdata and function go. */
static void timer_release(lua_State *L, struct ltimer *t) {
    struct lconn *u = t->u;
    struct ltimer **p;

    if (u == NULL)
        return;
    for (p = &u->timers; *p && *p != t; p = &(*p)->next)
        ;
    if (*p)
        *p = t->next;
    u->ntimers--;
    t->u = NULL;
    luaL_unref(L, LUA_REGISTRYINDEX, t->fn_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
    t->fn_ref = t->self_ref = LUA_NOREF;
}

static void timer_cancel(lua_State *L, struct ltimer *t) {
    if (t->u == NULL)
        return;
    if (t->u->ops)
        t->u->ops->timer_disarm(t->u, t);
    timer_release(L, t);
}

/* Every timer of u: at close, reset and when the connection ends. */
static void timers_cancel(lua_State *L, struct lconn *u) {
    while (u->timers)
        timer_cancel(L, u->timers);
}

int lconn_timer_push(lua_State *L, struct ltimer *t) {
    if (t->u == NULL)
        return 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->self_ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->fn_ref);
    lua_getiuservalue(L, -2, 1);                /* t, fn, conn */
    return 1;
}

int lconn_timer_done(lua_State *L, struct ltimer *t) {
    int again = t->u != NULL && t->period > 0 && t->u->ops != NULL &&
                !t->u->closed;

    if (!again)
        timer_release(L, t);
    lua_pop(L, 1);                              /* t */
    return again;
}

static int upstream_only(lua_State *L, const char *what) {
    return luaL_error(L, "%s is not available on an upstream socket: timers, "
                      "coroutines and subscriptions belong to the client's "
                      "conn", what);
}

/* conn:after(secs, fn), conn:every(secs, fn): upvalue 1 is 1 for every. */
static int lconn_timer(lua_State *L) {
    struct lconn *u = checkconn(L);
    int every = (int)lua_tointeger(L, lua_upvalueindex(1));
    double secs = luaL_checknumber(L, 2);
    struct ltimer *t, **p;

    if (every)
        luaL_argcheck(L, secs > 0 && secs <= 1e7, 2, "expected seconds > 0");
    else
        luaL_argcheck(L, secs >= 0 && secs <= 1e7, 2, "expected seconds >= 0");
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (u->upstream)
        return upstream_only(L, every ? "every" : "after");
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    if (u->ntimers >= LCONN_TIMERS_MAX)
        return lconn_too_many(L, "timers", LCONN_TIMERS_MAX);
    t = lua_newuserdatauv(L, sizeof *t, 1);
    memset(t, 0, sizeof *t);
    t->fn_ref = t->self_ref = LUA_NOREF;
    luaL_setmetatable(L, LCONN_TIMER);
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, 1);                /* the timer keeps its conn */
    lua_pushvalue(L, 3);
    t->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, -1);
    t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    t->u = u;
    t->period = every ? secs : 0;
    for (p = &u->timers; *p; p = &(*p)->next)
        ;
    *p = t;
    u->ntimers++;
    u->ops->timer_arm(u, t, secs);
    return 1;
}

static int ltimer_cancel(lua_State *L) {
    timer_cancel(L, luaL_checkudata(L, 1, LCONN_TIMER));
    lua_pushboolean(L, 1);
    return 1;
}

static int ltimer_tostring(lua_State *L) {
    struct ltimer *t = luaL_checkudata(L, 1, LCONN_TIMER);
    lua_pushstring(L, t->u ? "echohost.timer (armed)" :
                   "echohost.timer (cancelled)");
    return 1;
}

static const luaL_Reg ltimer_methods[] = {
    {"cancel", ltimer_cancel},
    {NULL, NULL}
};

static void timer_createmeta(lua_State *L) {
    luaL_newmetatable(L, LCONN_TIMER);
    lua_pushcfunction(L, ltimer_tostring);
    lua_setfield(L, -2, "__tostring");
    luaL_newlib(L, ltimer_methods);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void lconn_gone(lua_State *L, struct lconn *u, int code) {
    if (u->ops) {
        timers_cancel(L, u);
        lpubsub_cancel_all(L, u);
    }
    u->ops = NULL;
    u->rt = NULL;
    if (!u->closed)
        u->end_code = code;
}

static const char conn_magic[] = LCONN_NAME;

/* luaL_checkudata without its metatable lookups (this runs twice per
 * message): a full userdata of a conn's size that starts with the address
 * of conn_magic, which only lconn_new writes. Light userdata and strings
 * fail the size test, other values have no block. */
static struct lconn *checkconn_at(lua_State *L, int idx) {
    struct lconn *u = lua_touserdata(L, idx);

    if (u == NULL || lua_rawlen(L, idx) != sizeof *u || u->magic != conn_magic)
        luaL_typeerror(L, idx, LCONN_NAME);
    return u;
}

static struct lconn *checkconn(lua_State *L) {
    return checkconn_at(L, 1);
}

static int done(const struct lconn *u) {
    return u->closed || u->ops == NULL;
}

/* --- the receive buffer ------------------------------------------------- */

/* Appends n bytes through the state's allocator (the --lua-mem cap counts
 * them); raises on memory errors. */
static void rbuf_append(lua_State *L, struct lconn *u, const char *p,
                        size_t n) {
    if (u->roff == u->rlen)
        u->roff = u->rlen = 0;
    if (u->rlen + n > u->rcap && u->roff) {
        memmove(u->rbuf, u->rbuf + u->roff, u->rlen - u->roff);
        u->rlen -= u->roff;
        u->roff = 0;
    }
    if (u->rlen + n > u->rcap) {
        void *ud;
        lua_Alloc f = lua_getallocf(L, &ud);
        size_t cap = u->rcap ? u->rcap : 1024;
        while (cap < u->rlen + n)
            cap *= 2;
        char *b = f(ud, u->rbuf, u->rcap, cap);
        if (b == NULL)
            luaL_error(L, "not enough memory");
        u->rbuf = b;
        u->rcap = cap;
    }
    memcpy(u->rbuf + u->rlen, p, n);
    u->rlen += n;
}

/* Pushes n buffered bytes (skipping skip more after them) and takes them. */
static int rbuf_take(lua_State *L, struct lconn *u, size_t n, size_t skip) {
    if (n + skip == 0) {        /* rbuf may still be NULL */
        lua_pushliteral(L, "");
        return 1;
    }
    lua_pushlstring(L, u->rbuf + u->roff, n);
    u->roff += n + skip;
    return 1;
}

static int lconn_gc(lua_State *L) {
    struct lconn *u = lua_touserdata(L, 1);
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);

    if (u->rbuf)
        f(ud, u->rbuf, u->rcap, 0);
    u->rbuf = NULL;
    u->rcap = u->roff = u->rlen = 0;
    return 0;
}

/* --- framed receive ---------------------------------------------------- */

enum { F_LINE, F_COUNT, F_UNTIL, F_ALL };

/* Pushes the frame if the buffer holds it: 1, else 0. The delimiter of
 * receiveuntil is argument 2. */
static int frame_try(lua_State *L, struct lconn *u) {
    size_t n = u->rlen - u->roff, dlen;
    const char *p, *e;

    if (n == 0)                 /* rbuf may still be NULL */
        return 0;
    p = u->rbuf + u->roff;
    switch (u->fkind) {
    case F_LINE:
        if ((e = memchr(p, '\n', n)) == NULL)
            return 0;
        n = (size_t)(e - p);
        return rbuf_take(L, u, n && p[n - 1] == '\r' ? n - 1 : n,
                         n && p[n - 1] == '\r' ? 2 : 1);
    case F_COUNT:
        return n >= u->fcount ? rbuf_take(L, u, u->fcount, 0) : 0;
    case F_UNTIL:
        e = lua_tolstring(L, 2, &dlen);
        if (n < dlen || (p = memmem(p, n, e, dlen)) == NULL)
            return 0;
        return rbuf_take(L, u, (size_t)(p - (u->rbuf + u->roff)), dlen);
    }
    return 0;                   /* F_ALL: complete at EOF only */
}

static int frame_cont(lua_State *L, int status, lua_KContext ctx);

/* The read's results sit above conn and pattern: a chunk is appended to
 * the buffer (1), or they are a failure, left there (0). */
static int frame_chunk(lua_State *L, struct lconn *u) {
    size_t len;
    const char *s;

    if (lua_gettop(L) != 3 || lua_type(L, 3) != LUA_TSTRING)
        return 0;
    s = lua_tolstring(L, 3, &len);
    rbuf_append(L, u, s, len);
    lua_pop(L, 1);
    return 1;
}

/* The read failed (nil, msg, code at 3..5). EOF ends a "*a" frame, and
 * gives the others their partial bytes; a timeout keeps the buffer. */
static int frame_fail(lua_State *L, struct lconn *u) {
    size_t len = u->rlen - u->roff;

    lua_settop(L, 5);
    if (!lua_isstring(L, 4) || strcmp(lua_tostring(L, 4), "closed") != 0)
        return 3;
    if (u->fkind == F_ALL)
        return rbuf_take(L, u, len, 0);
    rbuf_take(L, u, len, 0);                    /* nil, "closed", code, partial */
    return 4;
}

/* Until the frame is buffered: what is there, else read more. */
static int frame_step(lua_State *L, struct lconn *u, const char *what) {
    for (;;) {
        if (frame_try(L, u))
            return 1;
        if (u->rlen - u->roff >= u->frame_max)
            return lconn_fail(L, "too long", 0);
        if (done(u))
            return lconn_fail(L, "closed", u->end_code);
        /* no more than fits: the buffer never passes frame_max */
        u->ops->recv(L, u, u->frame_max - (u->rlen - u->roff), what,
                     frame_cont);                   /* may park: frame_cont */
        if (!frame_chunk(L, u))
            return frame_fail(L, u);
    }
}

/* A parked read resumed: its results are at the top. */
static int frame_cont(lua_State *L, int status, lua_KContext ctx) {
    struct lconn *u = lua_touserdata(L, 1);
    (void)status; (void)ctx;

    if (!frame_chunk(L, u))
        return frame_fail(L, u);
    return frame_step(L, u, "receive");
}

static int lconn_receive(lua_State *L) {
    struct lconn *u = checkconn(L);
    const char *p;

    if (lua_type(L, 2) == LUA_TNUMBER) {
        lua_Integer n = lua_isinteger(L, 2) ? lua_tointeger(L, 2) : 0;
        luaL_argcheck(L, n >= 1, 2, "expected \"*l\", \"*a\" or a count >= 1");
        u->fkind = F_COUNT;
        u->fcount = (size_t)n;
    } else {
        p = luaL_optstring(L, 2, "*l");
        if (*p == '*')
            p++;
        if (strcmp(p, "l") == 0)
            u->fkind = F_LINE;
        else if (strcmp(p, "a") == 0)
            u->fkind = F_ALL;
        else
            return luaL_argerror(L, 2, "expected \"*l\", \"*a\" or a count >= 1");
    }
    lua_settop(L, 2);
    return frame_step(L, u, "receive");
}

static int lconn_receiveuntil(lua_State *L) {
    struct lconn *u = checkconn(L);
    size_t dlen;

    if (lua_type(L, 2) != LUA_TSTRING || (lua_tolstring(L, 2, &dlen), dlen == 0)
        || dlen > 256)
        return luaL_argerror(L, 2, "expected a delimiter of 1..256 bytes");
    lua_settop(L, 2);
    u->fkind = F_UNTIL;
    return frame_step(L, u, "receiveuntil");
}

static int lconn_recv(lua_State *L) {
    struct lconn *u = checkconn(L);
    lua_Integer max = luaL_optinteger(L, 2, 0);
    size_t n = u->rlen - u->roff;

    luaL_argcheck(L, max >= 0, 2, "expected a positive size");
    lua_settop(L, 2);
    if (n)                      /* bytes a receive read past its frame */
        return rbuf_take(L, u, max && (size_t)max < n ? (size_t)max : n, 0);
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    return u->ops->recv(L, u, (size_t)max, "recv", NULL);
}

static int lconn_send(lua_State *L) {
    struct lconn *u = checkconn(L);
    size_t len;
    const char *s;

    luaL_checktype(L, 2, LUA_TSTRING);
    lua_settop(L, 2);
    s = lua_tolstring(L, 2, &len);
    if (done(u) || u->wshut)
        return lconn_fail(L, "closed", u->wshut ? 0 : u->end_code);
    return u->ops->send(L, u, s, len);
}

void lconn_shutdown_send(struct lconn *u) {
    if (!done(u) && !u->wshut) {
        u->wshut = 1;
        u->ops->shutdown(u);
    }
}

static int lconn_shutdown(lua_State *L) {
    struct lconn *u = checkconn(L);
    static const char *const how[] = {"send", NULL};

    luaL_checkoption(L, 2, "send", how);
    lconn_shutdown_send(u);
    lua_pushboolean(L, 1);
    return 1;
}

static void conn_finish(lua_State *L, struct lconn *u, int reset);

void lconn_end_reset(lua_State *L, struct lconn *u) {
    conn_finish(L, u, 1);
}

static int conn_end(lua_State *L, int reset);

static int lconn_reset(lua_State *L) {
    return conn_end(L, 1);
}

static int lconn_sleep(lua_State *L) {
    struct lconn *u = checkconn(L);
    double t = luaL_checknumber(L, 2);

    luaL_argcheck(L, t >= 0 && t <= 1e7, 2, "expected seconds (>= 0)");
    lua_settop(L, 2);
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    return u->ops->sleep(L, u, t);
}

/* conn:close() and conn:reset(): the timers go, then the runtime ends the
 * connection its way; a second call does nothing. */
static void conn_finish(lua_State *L, struct lconn *u, int reset) {
    if (!done(u)) {
        timers_cancel(L, u);
        lpubsub_cancel_all(L, u);
        u->closed = 1;
        u->end_code = 0;
        if (reset)
            u->ops->reset(u);
        else
            u->ops->close(u);
    }
    u->closed = 1;
}

static int conn_end(lua_State *L, int reset) {
    conn_finish(L, checkconn(L), reset);
    lua_pushboolean(L, 1);
    return 1;
}

static int pipe_k(lua_State *L, int status, lua_KContext ctx) {
    (void)status;
    return lua_gettop(L) - (int)ctx;
}

/* Pushes M.pipe of echohost.conn (built in: src/embed.lua), required once
 * per state. */
static void push_lua_pipe(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    if (lua_getfield(L, -1, "echohost.conn") != LUA_TTABLE) {
        lua_pop(L, 1);
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
        lua_getfield(L, -1, "echohost.conn");
        lua_remove(L, -2);
        lua_pushliteral(L, "echohost.conn");
        lua_call(L, 1, 1);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "echohost.conn");
    }
    lua_getfield(L, -1, "pipe");
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* conn:pipe(to): the runtime's pipe where it has one for the pair, else
 * M.pipe, the definition. */
static int lconn_pipe(lua_State *L) {
    struct lconn *from = checkconn(L), *to = checkconn_at(L, 2);
    int n;

    lua_settop(L, 2);
    if (!done(from) && !done(to) && !to->wshut && from->ops->pipe &&
        (n = from->ops->pipe(L, from, to)) >= 0)
        return n;
    push_lua_pipe(L);
    lua_insert(L, 1);
    lua_callk(L, 2, LUA_MULTRET, 0, pipe_k);
    return pipe_k(L, LUA_OK, 0);
}

static int lconn_close(lua_State *L) {
    return conn_end(L, 0);
}

static int lconn_spawn(lua_State *L) {
    struct lconn *u = checkconn(L);

    luaL_checktype(L, 2, LUA_TFUNCTION);
    if (u->upstream)
        return upstream_only(L, "spawn");
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    return u->ops->spawn(L, u);
}

/* conn:subscribe(channel, fn): the subscription, nil, "closed", code once
 * the connection is closed, or nil and the bus's message. */
static int lconn_subscribe(lua_State *L) {
    struct lconn *u = checkconn(L);
    size_t len;

    luaL_argcheck(L, lua_type(L, 2) == LUA_TSTRING &&
                  (lua_tolstring(L, 2, &len), len >= 1 && len <= 250), 2,
                  "channel of 1..250 bytes expected");
    luaL_checktype(L, 3, LUA_TFUNCTION);
    if (u->upstream)
        return upstream_only(L, "subscribe");
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    if (u->nsubs >= LCONN_SUBS_MAX)
        return lconn_too_many(L, "subscriptions", LCONN_SUBS_MAX);
    return lpubsub_subscribe(L, u);
}

static int lconn_settimeout(lua_State *L) {
    struct lconn *u = checkconn(L);

    if (lua_isnoneornil(L, 2)) {
        u->timeout = -1;
    } else {
        double t = luaL_checknumber(L, 2);
        luaL_argcheck(L, t >= 0 && t <= 1e7, 2,
                      "expected seconds (>= 0) or nil");
        u->timeout = t;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int lconn_newindex(lua_State *L) {
    return luaL_error(L, "echohost.conn fields are read-only "
                      "(keep your data in conn.state)");
}

static int lconn_tostring(lua_State *L) {
    struct lconn *u = checkconn(L);
    if (done(u))
        lua_pushfstring(L, "echohost.conn %I (closed)", u->id);
    else
        lua_pushfstring(L, "echohost.conn %I (%s)", u->id, lconn_peer(u));
    return 1;
}

static const luaL_Reg lconn_methods[] = {
    {"close", lconn_close},
    {"pipe", lconn_pipe},
    {"receive", lconn_receive},
    {"receiveuntil", lconn_receiveuntil},
    {"recv", lconn_recv},
    {"reset", lconn_reset},
    {"send", lconn_send},
    {"settimeout", lconn_settimeout},
    {"shutdown", lconn_shutdown},
    {"sleep", lconn_sleep},
    {"spawn", lconn_spawn},
    {"subscribe", lconn_subscribe},
    {NULL, NULL}
};

static const luaL_Reg lconn_meta[] = {
    {"__close", lconn_close},
    {"__gc", lconn_gc},
    {"__newindex", lconn_newindex},
    {"__tostring", lconn_tostring},
    {NULL, NULL}
};

/* conn.state: created on first use, kept as the conn's user value. */
static void state_push(lua_State *L, int conn) {
    if (lua_getiuservalue(L, conn, 1) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setiuservalue(L, conn, 1);
    }
}

/* A method call is a lookup on the conn (two per echoed message); through
 * the shared metatable's C __index it costs a C call (~370 instructions,
 * callgrind). A conn in use gets its own metatable instead, whose __index
 * is a table of its methods and fields (id, peer, state): one table lookup
 * (~130). Its LCONN_OWN_META-th lookup makes them (~4,000 instructions and
 * ~700 bytes, once), so short and idle connections keep the shared one. */
#define LCONN_OWN_META 16

/* Sets all of the table at index from in the table at -1. */
static void copy_fields(lua_State *L, int from) {
    lua_pushnil(L);
    while (lua_next(L, from)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* Gives the conn at index 1 (metatable: the shared one) its own; methods:
 * the methods table. */
static void own_meta(lua_State *L, struct lconn *u, int methods) {
    int top = lua_gettop(L);

    lua_getmetatable(L, 1);
    lua_createtable(L, 0, 7);                   /* shared, mt */
    copy_fields(L, top + 1);
    lua_createtable(L, 0, 16);                  /* shared, mt, index */
    copy_fields(L, methods);
    lua_pushinteger(L, u->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, lconn_peer(u));
    lua_setfield(L, -2, "peer");
    state_push(L, 1);
    lua_setfield(L, -2, "state");
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, 1);
    lua_settop(L, top);
}

/* The shared __index: methods first (upvalue 1), then id, peer and state. */
static int lconn_index(lua_State *L) {
    struct lconn *u = checkconn(L);     /* it can be called by hand */
    const char *k;

    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) {
        if (++u->lookups == LCONN_OWN_META)
            own_meta(L, u, lua_upvalueindex(1));
        return 1;
    }
    k = lua_tostring(L, 2);
    if (k == NULL)
        return 1;
    if (strcmp(k, "id") == 0)
        lua_pushinteger(L, u->id);
    else if (strcmp(k, "peer") == 0)
        lua_pushstring(L, lconn_peer(u));
    else if (strcmp(k, "state") == 0)
        state_push(L, 1);
    else
        lua_pushnil(L);
    return 1;
}

void lconn_createmeta(lua_State *L) {
    luaL_newmetatable(L, LCONN_NAME);
    luaL_setfuncs(L, lconn_meta, 0);
    luaL_newlib(L, lconn_methods);
    for (int every = 0; every < 2; every++) {
        lua_pushinteger(L, every);
        lua_pushcclosure(L, lconn_timer, 1);    /* upvalue: every */
        lua_setfield(L, -2, every ? "every" : "after");
    }
    lua_pushcclosure(L, lconn_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
    timer_createmeta(L);
    lpubsub_createmeta(L);
}

struct lconn *lconn_new(lua_State *L, const struct lconn_ops *ops, void *rt,
                        lua_Integer id, const struct net_peer *peer,
                        size_t frame_max) {
    struct lconn *u = lua_newuserdatauv(L, sizeof *u, 1);

    memset(u, 0, sizeof *u);
    u->magic = conn_magic;
    u->ops = ops;
    u->rt = rt;
    u->id = id;
    u->timeout = -1;
    u->frame_max = frame_max;
    u->peer = *peer;
    luaL_setmetatable(L, LCONN_NAME);
    return u;
}

const char *lconn_peer(struct lconn *u) {
    return net_peer_name(&u->peer);
}

/* --- the handler's echohost.socket --------------------------------------- */

#define LCONN_RUNTIME "echohost.runtime"

struct lconn_runtime {
    lconn_connect_fn connect;
    void *rt;
};

void lconn_set_runtime(lua_State *L, lconn_connect_fn fn, void *rt) {
    struct lconn_runtime *r;

    if (lua_getfield(L, LUA_REGISTRYINDEX, LCONN_RUNTIME) == LUA_TNIL) {
        lua_pop(L, 1);
        r = lua_newuserdatauv(L, sizeof *r, 0);
        lua_setfield(L, LUA_REGISTRYINDEX, LCONN_RUNTIME);
    } else {
        r = lua_touserdata(L, -1);
        lua_pop(L, 1);
    }
    r->connect = fn;
    r->rt = rt;
}

int lconn_has_runtime(lua_State *L) {
    const struct lconn_runtime *r;

    lua_getfield(L, LUA_REGISTRYINDEX, LCONN_RUNTIME);
    r = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return r != NULL && r->connect != NULL;
}

static int lsock_connect(lua_State *L) {
    const char *host = luaL_checkstring(L, 1);
    lua_Integer port = luaL_checkinteger(L, 2);
    double timeout = luaL_optnumber(L, 3, LCONN_CONNECT_TIMEOUT);
    const struct lconn_runtime *r;

    luaL_argcheck(L, port >= 1 && port <= 65535, 2,
                  "port out of range 1..65535");
    luaL_argcheck(L, timeout >= 0 && timeout <= 1e7, 3,
                  "expected seconds (>= 0)");
    lua_getfield(L, LUA_REGISTRYINDEX, LCONN_RUNTIME);
    r = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (r == NULL || r->connect == NULL)
        return luaL_error(L, "echohost.socket.connect is not available while "
                          "a handler loads");
    lua_settop(L, 3);
    return r->connect(L, r->rt, host, (int)port, timeout);
}

static int lsock_unavailable(lua_State *L) {
    return luaL_error(L, "echohost.socket.%s is not available in a handler",
                      lua_tostring(L, lua_upvalueindex(1)));
}

void lconn_push_socket_module(lua_State *L) {
    static const char *const blocking[] = {
        "accept", "accept_connection", "close", "close_socket", "fileno",
        "listen", "open_socket", "peername", "recv", "send", "settimeout",
        "shutdown", "sockname", NULL
    };

    lua_createtable(L, 0, 14);
    lua_pushcfunction(L, lsock_connect);
    lua_setfield(L, -2, "connect");
    for (const char *const *n = blocking; *n; n++) {
        lua_pushstring(L, *n);
        lua_pushcclosure(L, lsock_unavailable, 1);
        lua_setfield(L, -2, *n);
    }
}
