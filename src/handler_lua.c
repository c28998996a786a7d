/* Handler runtime, shared part: loading a handler file into a fresh
 * environment, the "echohost.conn" object, and the instruction budget. */
#include <string.h>

#include <lauxlib.h>

#include "handler_lua.h"
#include "lhost.h"

/* --- instruction budget --------------------------------------------------- */

static void budget_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    luaL_error(L, "instruction budget exceeded");
}

void hl_budget(lua_State *L, long budget) {
    if (budget > 0)             /* lua_sethook also resets the count */
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, budget > INT32_MAX ?
                    INT32_MAX : (int)budget);
}

/* --- loading -------------------------------------------------------------- */

static const char *const callback_names[] = {"on_data", "on_open",
                                             "on_close"};

/* Checks the value at -1 (returned by the chunk at path); leaves the kind and
 * the four functions (data, open, close, handle; nil when absent) on top. */
static void check_kind(lua_State *L, const char *path) {
    int t = lua_gettop(L);
    if (lua_isfunction(L, t)) {
        lua_pushinteger(L, HL_FN);
        lua_pushvalue(L, t);
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushnil(L);
        return;
    }
    if (!lua_istable(L, t))
        luaL_error(L, "%s: returned %s; a handler returns a function or a "
                   "table with handle, on_open, on_data or on_close", path,
                   luaL_typename(L, t));
    lua_pushinteger(L, HL_CALLBACKS);
    for (int i = 0; i < 3; i++) {
        int ty = lua_getfield(L, t, callback_names[i]);
        if (ty != LUA_TNIL && ty != LUA_TFUNCTION)
            luaL_error(L, "%s: %s is a %s, expected a function", path,
                       callback_names[i], luaL_typename(L, -1));
    }
    int ty = lua_getfield(L, t, "handle");
    if (ty == LUA_TFUNCTION) {
        lua_pushinteger(L, HL_DIRECT);
        lua_replace(L, t + 1);
    } else if (ty != LUA_TNIL) {
        luaL_error(L, "%s: handle is a %s, expected a function", path,
                   luaL_typename(L, -1));
    } else if (lua_isnil(L, t + 2) && lua_isnil(L, t + 3) &&
               lua_isnil(L, t + 4)) {
        luaL_error(L, "%s: returned a table without handle, on_open, on_data "
                   "or on_close", path);
    }
}

/* Protected: loads and runs the chunk, checks it, refs what it returned.
 * Returns the kind and four refs. */
static int load_chunk(lua_State *L) {
    const char *path = lua_touserdata(L, 1);
    int top;

    if (luaL_loadfilex(L, path, "t") != LUA_OK)
        return lua_error(L);
    lua_newtable(L);                            /* the fresh _ENV */
    lua_createtable(L, 0, 1);
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");             /* mt.__index = _G */
    lua_setmetatable(L, -2);
    lua_setupvalue(L, -2, 1);                   /* chunk's _ENV = env */
    lua_call(L, 0, 1);
    check_kind(L, path);
    top = lua_gettop(L);
    for (int i = top - 3; i <= top; i++) {
        lua_pushvalue(L, i);
        lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
        lua_replace(L, i);
    }
    return 5;
}

static void copy_error(lua_State *L, char *err, size_t errlen) {
    const char *msg = lua_tostring(L, -1);
    size_t n;

    if (msg == NULL)
        msg = "(error object is not a string)";
    n = strcspn(msg, "\n");                     /* first line: file:line */
    if (n >= errlen)
        n = errlen - 1;
    memcpy(err, msg, n);
    err[n] = '\0';
}

int hl_load(lua_State *L, const char *path, long budget, struct hl_refs *r,
            char *err, size_t errlen) {
    lua_pushcfunction(L, load_chunk);
    lua_pushlightuserdata(L, (void *)path);
    hl_budget(L, budget);
    if (eh_pcall(L, 1, 5) != LUA_OK) {
        copy_error(L, err, errlen);
        lua_pop(L, 1);
        lua_gc(L, LUA_GCCOLLECT);
        return -1;
    }
    r->kind = (enum hl_kind)lua_tointeger(L, -5);
    r->data = (int)lua_tointeger(L, -4);
    r->open = (int)lua_tointeger(L, -3);
    r->close = (int)lua_tointeger(L, -2);
    r->handle = (int)lua_tointeger(L, -1);
    lua_pop(L, 5);
    return 0;
}

void hl_unref(lua_State *L, struct hl_refs *r) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->data);
    luaL_unref(L, LUA_REGISTRYINDEX, r->open);
    luaL_unref(L, LUA_REGISTRYINDEX, r->close);
    luaL_unref(L, LUA_REGISTRYINDEX, r->handle);
    r->data = r->open = r->close = r->handle = LUA_NOREF;
}

/* --- results -------------------------------------------------------------- */

int hl_fail(lua_State *L, const char *msg, int code) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushinteger(L, code);
    return 3;
}

const char *hl_reply(lua_State *L, int idx, size_t *len) {
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tolstring(L, idx, len);
    if (!lua_isnil(L, idx))
        luaL_error(L, "handler returned a %s (expected a string or nil)",
                   luaL_typename(L, idx));
    *len = 0;
    return NULL;
}

/* --- the conn object ------------------------------------------------------ */

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
        luaL_typeerror(L, 1, HL_CONN);
    return u;
}

static int gone(const struct lconn *u) {
    return u->closed || (u->hc == NULL && u->fd < 0);
}

static int lconn_recv(lua_State *L) {
    struct lconn *u = checkconn(L);
    lua_Integer max = luaL_optinteger(L, 2, 0);

    luaL_argcheck(L, max >= 0, 2, "expected a positive size");
    lua_settop(L, 2);
    if (gone(u))
        return hl_fail(L, "closed", 0);
    return u->hc ? hl_event_recv(L, u) : hl_block_recv(L, u);
}

static int lconn_send(lua_State *L) {
    struct lconn *u = checkconn(L);

    luaL_checktype(L, 2, LUA_TSTRING);
    lua_settop(L, 2);
    if (gone(u))
        return hl_fail(L, "closed", 0);
    return u->hc ? hl_event_send(L, u) : hl_block_send(L, u);
}

static int lconn_close(lua_State *L) {
    struct lconn *u = checkconn(L);

    if (gone(u)) {
        u->closed = 1;
        lua_pushboolean(L, 1);
        return 1;
    }
    u->closed = 1;
    return u->hc ? hl_event_close(L, u) : hl_block_close(L, u);
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
    if (gone(u))
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
void hl_createmeta(lua_State *L) {
    luaL_newmetatable(L, HL_CONN);
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, lconn_meta, 1);
    luaL_newlibtable(L, lconn_methods);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, lconn_methods, 1);         /* methods, upvalue mt */
    lua_pushcclosure(L, lconn_index, 1);
    lua_setfield(L, -2, "__index");             /* mt.__index = lconn_index */
    lua_pop(L, 1);
}

struct lconn *hl_newconn(lua_State *L, lua_Integer id, const char *peer) {
    struct lconn *u = lua_newuserdatauv(L, sizeof *u, 1);

    memset(u, 0, sizeof *u);
    u->fd = -1;
    u->id = id;
    u->timeout = -1;
    strncpy(u->peer, peer, sizeof u->peer - 1);
    luaL_setmetatable(L, HL_CONN);
    return u;
}
