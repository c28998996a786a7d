/* echohost.log: error, warn, info, debug(fmt, ...) through the server's
 * logger, each line naming the caller's file:line. */
#include <lauxlib.h>

#include "llog.h"
#include "log.h"

static llog_conn_fn *conn_of;

void llog_set_conn(llog_conn_fn *fn) {
    conn_of = fn;
}

/* Upvalue 1: the level; 2: the prefix ("handler " in a handler). */
static int log_write(lua_State *L) {
    int level = (int)lua_tointeger(L, lua_upvalueindex(1));
    const char *msg;

    luaL_checkstring(L, 1);
    if (level > log_level)
        return 0;
    if (lua_gettop(L) > 1) {
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_getfield(L, -1, "string");
        luaL_checktype(L, -1, LUA_TTABLE);
        lua_getfield(L, -1, "format");
        lua_insert(L, 1);                       /* format, fmt, ... */
        lua_settop(L, lua_gettop(L) - 2);
        lua_call(L, lua_gettop(L) - 1, 1);
    }
    msg = lua_tostring(L, -1);
    luaL_where(L, 1);                           /* "file:line: " */
    lua_Integer id = conn_of ? conn_of(L) : 0;
    if (id && log_format != LOG_TEXT)       /* conn is a field there */
        log_conn(level, (unsigned long long)id, "%s%s%s",
                 lua_tostring(L, lua_upvalueindex(2)), lua_tostring(L, -1),
                 msg);
    else if (id)
        log_msg(level, "%s%sconn %lld: %s",
                lua_tostring(L, lua_upvalueindex(2)), lua_tostring(L, -1),
                (long long)id, msg);
    else
        log_msg(level, "%s%s%s", lua_tostring(L, lua_upvalueindex(2)),
                lua_tostring(L, -1), msg);
    return 0;
}

static const char *const names[] = {"error", "warn", "info", "debug"};

void llog_push(lua_State *L, const char *prefix) {
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, LOG_ERROR + i);
        lua_pushstring(L, prefix);
        lua_pushcclosure(L, log_write, 2);
        lua_setfield(L, -2, names[i]);
    }
}

int luaopen_echohost_log(lua_State *L) {
    llog_push(L, "");
    return 1;
}
