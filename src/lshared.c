/* echohost.shared: the shared dictionary for Lua, one per process tree
 * (made before the server forks) over src/shdict.c. README "The shared
 * dictionary" is the contract; lua/echohost/dict.lua is its Lua twin. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lshared.h"
#include "shdict.h"

#define LSHARED_NAME "echohost.shared"

int luaopen_echohost_shared(lua_State *L);

static struct shdict *lshared_dict;     /* this process's, once made */

int lshared_init(size_t capacity, char *err, size_t errlen) {
    struct shdict *d = shdict_create(capacity);

    if (d == NULL) {
        snprintf(err, errlen, "shared dictionary: %s", strerror(errno));
        return -1;
    }
    shdict_free(lshared_dict);
    lshared_dict = d;
    return 0;
}

static struct shdict *checkdict(lua_State *L) {
    return *(struct shdict **)luaL_checkudata(L, 1, LSHARED_NAME);
}

/* The key at index 2 (argument #1 of a method call). */
static const char *checkkey(lua_State *L, size_t *len) {
    const char *key = NULL;

    if (lua_type(L, 2) == LUA_TSTRING)
        key = lua_tolstring(L, 2, len);
    luaL_argcheck(L, key && *len >= 1 && *len <= SHDICT_KEY_MAX, 2,
                  "key of 1..250 bytes expected");
    return key;
}

static void checknumber(lua_State *L, int arg, struct shdict_value *v) {
    memset(v, 0, sizeof *v);
    if (lua_type(L, arg) != LUA_TNUMBER)
        luaL_typeerror(L, arg, "number");
    if (lua_isinteger(L, arg)) {
        v->type = SHDICT_INTEGER;
        v->u.integer = lua_tointeger(L, arg);
    } else {
        v->type = SHDICT_NUMBER;
        v->u.number = lua_tonumber(L, arg);
    }
}

static void checkvalue(lua_State *L, int arg, struct shdict_value *v) {
    switch (lua_type(L, arg)) {
    case LUA_TNUMBER:
        checknumber(L, arg, v);
        break;
    case LUA_TBOOLEAN:
        memset(v, 0, sizeof *v);
        v->type = SHDICT_BOOLEAN;
        v->u.boolean = lua_toboolean(L, arg);
        break;
    case LUA_TSTRING:
        memset(v, 0, sizeof *v);
        v->type = SHDICT_STRING;
        v->str = lua_tolstring(L, arg, &v->len);
        break;
    default:
        luaL_typeerror(L, arg, "string, number or boolean");
    }
}

/* A ttl: none or nil is 0 (never expires). */
static double checkttl(lua_State *L, int arg) {
    double ttl = -1;

    if (lua_isnoneornil(L, arg))
        return 0;
    if (lua_type(L, arg) == LUA_TNUMBER)
        ttl = lua_tonumber(L, arg);
    luaL_argcheck(L, ttl >= 0, arg, "ttl of 0 or more seconds expected");
    return ttl;
}

static void pushvalue(lua_State *L, const struct shdict_value *v) {
    switch (v->type) {
    case SHDICT_BOOLEAN: lua_pushboolean(L, v->u.boolean); break;
    case SHDICT_INTEGER: lua_pushinteger(L, v->u.integer); break;
    case SHDICT_NUMBER: lua_pushnumber(L, v->u.number); break;
    case SHDICT_STRING: lua_pushlstring(L, v->str, v->len); break;
    default: lua_pushnil(L);
    }
}

/* true, or nil (false for "exists") and the result's fixed message. */
static int pushresult(lua_State *L, int rc) {
    static const char *const msg[] = {
        "ok", "not found", "exists", "no memory", "not a number"
    };

    if (rc == SHDICT_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (rc == SHDICT_EXISTS)
        lua_pushboolean(L, 0);
    else
        lua_pushnil(L);
    lua_pushstring(L, msg[rc]);
    return 2;
}

/* A string longer than the stack buffer is read again into a Lua buffer
 * of its length: the lock is never held while Lua allocates. */
static int shared_get(lua_State *L) {
    struct shdict *d = checkdict(L);
    size_t klen, size;
    const char *key = checkkey(L, &klen);
    char small[LUAL_BUFFERSIZE], *buf = small;
    struct shdict_value v;
    luaL_Buffer b;

    for (size = sizeof small;
         shdict_get(d, key, klen, &v, buf, size) == SHDICT_OK;
         size = v.len) {
        if (v.type == SHDICT_STRING && v.str == NULL) {
            buf = luaL_buffinitsize(L, &b, v.len);      /* ... box */
            continue;
        }
        if (v.type == SHDICT_STRING && buf != small)
            luaL_pushresultsize(&b, v.len);             /* ... string */
        else
            pushvalue(L, &v);
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

static int shared_set(lua_State *L) {
    struct shdict *d = checkdict(L);
    size_t klen;
    const char *key = checkkey(L, &klen);
    struct shdict_value v;

    if (lua_isnoneornil(L, 3)) {
        memset(&v, 0, sizeof v);
        v.type = SHDICT_NIL;
    } else
        checkvalue(L, 3, &v);
    return pushresult(L, shdict_set(d, key, klen, &v, checkttl(L, 4)));
}

static int shared_add(lua_State *L) {
    struct shdict *d = checkdict(L);
    size_t klen;
    const char *key = checkkey(L, &klen);
    struct shdict_value v;

    checkvalue(L, 3, &v);
    return pushresult(L, shdict_add(d, key, klen, &v, checkttl(L, 4)));
}

static int shared_incr(lua_State *L) {
    struct shdict *d = checkdict(L);
    size_t klen;
    const char *key = checkkey(L, &klen);
    struct shdict_value n, init, out;
    int has_init = !lua_isnoneornil(L, 4);
    double ttl;
    int rc;

    checknumber(L, 3, &n);
    if (has_init)
        checknumber(L, 4, &init);
    ttl = checkttl(L, 5);
    rc = shdict_incr(d, key, klen, &n, has_init ? &init : NULL, ttl, &out);
    if (rc != SHDICT_OK)
        return pushresult(L, rc);
    pushvalue(L, &out);
    return 1;
}

static int shared_delete(lua_State *L) {
    struct shdict *d = checkdict(L);
    size_t klen;
    const char *key = checkkey(L, &klen);

    return pushresult(L, shdict_delete(d, key, klen));
}

/* Seconds left as a float; 0 (an integer) for a key that never expires. */
static int shared_ttl(lua_State *L) {
    struct shdict *d = checkdict(L);
    size_t klen;
    const char *key = checkkey(L, &klen);
    double left;

    if (shdict_ttl(d, key, klen, &left) != SHDICT_OK)
        lua_pushnil(L);
    else if (left == 0)
        lua_pushinteger(L, 0);
    else
        lua_pushnumber(L, left);
    return 1;
}

static int shared_flush_all(lua_State *L) {
    shdict_flush(checkdict(L));
    lua_pushboolean(L, 1);
    return 1;
}

static int shared_capacity(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)shdict_capacity(checkdict(L)));
    return 1;
}

static int shared_free_space(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)shdict_free_space(checkdict(L)));
    return 1;
}

static int shared_tostring(lua_State *L) {
    lua_pushfstring(L, "echohost.shared (%I bytes)",
                    (lua_Integer)shdict_capacity(checkdict(L)));
    return 1;
}

static const luaL_Reg shared_methods[] = {
    {"add", shared_add},
    {"capacity", shared_capacity},
    {"delete", shared_delete},
    {"flush_all", shared_flush_all},
    {"free_space", shared_free_space},
    {"get", shared_get},
    {"incr", shared_incr},
    {"set", shared_set},
    {"ttl", shared_ttl},
    {NULL, NULL}
};

static const luaL_Reg shared_metamethods[] = {
    {"__index", NULL},
    {"__tostring", shared_tostring},
    {NULL, NULL}
};

static void createmeta(lua_State *L) {
    luaL_newmetatable(L, LSHARED_NAME);         /* metatable */
    luaL_setfuncs(L, shared_metamethods, 0);
    luaL_newlibtable(L, shared_methods);        /* metatable methods */
    luaL_setfuncs(L, shared_methods, 0);
    lua_setfield(L, -2, "__index");     /* metatable.__index = methods */
    lua_pop(L, 1);
}

/* The module is the dictionary object; the first require in a process
 * that lshared_init did not prepare makes one of the default size. */
int luaopen_echohost_shared(lua_State *L) {
    struct shdict **ud;
    char err[128];

    if (lshared_dict == NULL &&
        lshared_init(LSHARED_DEFAULT, err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = lshared_dict;
    createmeta(L);
    luaL_setmetatable(L, LSHARED_NAME);
    return 1;
}
