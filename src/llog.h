/* echohost.log, the Lua side of the server's logger. */
#ifndef ECHOHOST_LLOG_H
#define ECHOHOST_LLOG_H

#include <lua.h>

/* Pushes a log module whose lines start with prefix ("handler "). */
void llog_push(lua_State *L, const char *prefix);
int luaopen_echohost_log(lua_State *L);
/* The id of the connection whose handler code runs in L now, or 0: a
 * runtime sets it, and each line logged for a connection then names it
 * ("info: handler x.lua:3: conn 7: ..."). */
typedef lua_Integer llog_conn_fn(lua_State *L);
void llog_set_conn(llog_conn_fn *fn);

#endif
