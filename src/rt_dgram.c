/* The datagram runtime: one datagram through a handler's datagram function,
 * in protected mode, under --lua-budget and --lua-mem; its reply (a string
 * of at most the family's largest payload, or nil) or why there is none. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "hload.h"
#include "lconn.h"
#include "lhost.h"
#include "rt_dgram.h"
#include "udp.h"

/* What a datagram call needs, handed to dgram_proc as a light userdata. */
struct dcall {
    const struct hstate *hs;
    const struct udp_dgram *d;
    int own_runtime;            /* no runtime served the state: ours, for now */
};

/* echohost.socket.connect in a datagram function of a state that no
 * connection runtime serves (the fork server's): it would wait, as in a
 * callback of the event runtime. */
static int no_connect(lua_State *L, void *rt, const char *host, int port,
                      double timeout) {
    (void)rt;
    (void)host;
    (void)port;
    (void)timeout;
    return lconn_would_wait(L, "echohost.socket.connect", "");
}

/* Protected: fn(peer, data), one result. Pushing inside the call puts an
 * allocation failure under the cap's rules (a fault, not a panic). */
static int dgram_proc(lua_State *L) {
    struct dcall *c = lua_touserdata(L, 1);

    if (!lconn_has_runtime(L)) {
        lconn_set_runtime(L, no_connect, NULL);
        c->own_runtime = 1;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->hs->cur.dgram);
    lua_pushstring(L, c->d->peer);
    lua_pushlstring(L, c->d->buf, c->d->len);
    lua_call(L, 2, 1);
    return 1;
}

/* d->err = the fault's log line, why after "not answered: ". */
static int dgram_fault(const struct hstate *hs, struct udp_dgram *d,
                       const char *why) {
    snprintf(d->err, d->errlen, "handler %s: datagram from %s (%s) not "
             "answered: %s", hs->path, d->peer, d->listener, why);
    return UDP_FAULT;
}

/* The result at the top of L: the reply copied over d->buf, or none. */
static int dgram_result(lua_State *L, const struct hstate *hs,
                        struct udp_dgram *d) {
    char why[160];
    const char *s;
    size_t len;

    if (lua_isnil(L, -1))
        return UDP_NO_REPLY;
    if (lua_type(L, -1) != LUA_TSTRING) {
        snprintf(why, sizeof why, "handler returned a %s (expected a string "
                 "or nil)", luaL_typename(L, -1));
        return dgram_fault(hs, d, why);
    }
    s = lua_tolstring(L, -1, &len);
    if (len > d->max) {
        snprintf(why, sizeof why, "reply of %zu bytes is longer than a "
                 "datagram can be (at most %zu bytes over IPv%c)", len,
                 d->max, d->peer[0] == '[' ? '6' : '4');
        return dgram_fault(hs, d, why);
    }
    memcpy(d->buf, s, len);
    return (int)len;
}

int rtdgram_reply(void *ud, struct udp_dgram *d) {
    const struct hstate *hs = ud;
    lua_State *L = hs->L;
    struct dcall c = {hs, d, 0};
    int top = lua_gettop(L), status, rc;

    if (hs->cur.dgram == LUA_REFNIL || hs->cur.dgram == LUA_NOREF)
        return (int)d->len;             /* no datagram function: echo */
    lua_pushcfunction(L, dgram_proc);
    lua_pushlightuserdata(L, &c);
    hload_budget(L, hs->cfg->lua_budget);
    status = eh_pcall(L, 1, 1);
    lua_sethook(L, NULL, 0, 0);
    if (c.own_runtime)
        lconn_set_runtime(L, NULL, NULL);
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        rc = dgram_fault(hs, d, msg ? msg : "(error object is not a string)");
        if (status == LUA_ERRMEM)
            lua_gc(L, LUA_GCCOLLECT);
    } else {
        rc = dgram_result(L, hs, d);
    }
    lua_settop(L, top);
    return rc;
}
