/* echohost.log, the Lua side of the server's logger. */
#ifndef ECHOHOST_LLOG_H
#define ECHOHOST_LLOG_H

#include <lua.h>

/* Pushes a log module whose lines start with prefix ("handler "). */
void llog_push(lua_State *L, const char *prefix);
int luaopen_echohost_log(lua_State *L);

#endif
