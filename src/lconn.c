/* The "echohost.conn" object: recv, send, close, settimeout, id, peer and
 * state, the same for every interpreter; the I/O is the runtime's (ops). */
#include <errno.h>
#include <string.h>

#include <lauxlib.h>

#include "lconn.h"

int lconn_fail(lua_State *L, const char *msg, int code) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushinteger(L, code);
    return 3;
}

int lconn_reason_code(const char *reason) {
    return strcmp(reason, "reset") == 0 ? ECONNRESET : 0;
}

void lconn_gone(struct lconn *u, int code) {
    u->ops = NULL;
    u->rt = NULL;
    if (!u->closed)
        u->end_code = code;
}

/* luaL_checkudata, comparing the metatable with upvalue 1 instead of
 * looking it up by name on every call (two calls per message). */
static struct lconn *checkconn(lua_State *L) {
    struct lconn *u = lua_touserdata(L, 1);
    int ok = u != NULL && lua_getmetatable(L, 1);

    if (ok) {
        ok = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
    }
    if (!ok)
        luaL_typeerror(L, 1, LCONN_NAME);
    return u;
}

static int done(const struct lconn *u) {
    return u->closed || u->ops == NULL;
}

static int lconn_recv(lua_State *L) {
    struct lconn *u = checkconn(L);
    lua_Integer max = luaL_optinteger(L, 2, 0);

    luaL_argcheck(L, max >= 0, 2, "expected a positive size");
    lua_settop(L, 2);
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    return u->ops->recv(L, u, (size_t)max);
}

static int lconn_send(lua_State *L) {
    struct lconn *u = checkconn(L);
    size_t len;
    const char *s;

    luaL_checktype(L, 2, LUA_TSTRING);
    lua_settop(L, 2);
    s = lua_tolstring(L, 2, &len);
    if (done(u))
        return lconn_fail(L, "closed", u->end_code);
    return u->ops->send(L, u, s, len);
}

static int lconn_close(lua_State *L) {
    struct lconn *u = checkconn(L);

    if (!done(u)) {
        u->closed = 1;
        u->end_code = 0;
        u->ops->close(u);
    }
    u->closed = 1;
    lua_pushboolean(L, 1);
    return 1;
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

/* __index: methods first (upvalue 1), then id, peer and state. */
static int lconn_index(lua_State *L) {
    struct lconn *u = lua_touserdata(L, 1);
    const char *k;

    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    k = lua_tostring(L, 2);
    if (k == NULL)
        return 1;
    if (strcmp(k, "id") == 0)
        lua_pushinteger(L, u->id);
    else if (strcmp(k, "peer") == 0)
        lua_pushstring(L, u->peer);
    else if (strcmp(k, "state") == 0) {
        if (lua_getiuservalue(L, 1, 1) == LUA_TNIL) {
            lua_newtable(L);
            lua_pushvalue(L, -1);
            lua_setiuservalue(L, 1, 1);         /* created on first use */
        }
    } else
        lua_pushnil(L);
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
        lua_pushfstring(L, "echohost.conn %I (%s)", u->id, u->peer);
    return 1;
}

static const luaL_Reg lconn_methods[] = {
    {"close", lconn_close},
    {"recv", lconn_recv},
    {"send", lconn_send},
    {"settimeout", lconn_settimeout},
    {NULL, NULL}
};

static const luaL_Reg lconn_meta[] = {
    {"__close", lconn_close},
    {"__newindex", lconn_newindex},
    {"__tostring", lconn_tostring},
    {NULL, NULL}
};

/* Every function gets the metatable as upvalue 1 (see checkconn). */
void lconn_createmeta(lua_State *L) {
    luaL_newmetatable(L, LCONN_NAME);
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, lconn_meta, 1);
    luaL_newlibtable(L, lconn_methods);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, lconn_methods, 1);         /* methods, upvalue mt */
    lua_pushcclosure(L, lconn_index, 1);
    lua_setfield(L, -2, "__index");             /* mt.__index = lconn_index */
    lua_pop(L, 1);
}

struct lconn *lconn_new(lua_State *L, const struct lconn_ops *ops, void *rt,
                        lua_Integer id, const char *peer) {
    struct lconn *u = lua_newuserdatauv(L, sizeof *u, 1);

    memset(u, 0, sizeof *u);
    u->ops = ops;
    u->rt = rt;
    u->id = id;
    u->timeout = -1;
    strncpy(u->peer, peer, sizeof u->peer - 1);
    luaL_setmetatable(L, LCONN_NAME);
    return u;
}
