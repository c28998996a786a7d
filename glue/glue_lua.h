/* The Lua binding's C API: the thread_info of a Lua state, fn values as Lua
 * functions, and call(). Link with echohost.glue (glue/lglue.c). */
#ifndef ECHOHOST_GLUE_LUA_H
#define ECHOHOST_GLUE_LUA_H

#include <lua.h>

#include "glue.h"

/* The binding's conversions: v to a Lua value, and back (may raise). */
typedef void glue_push_fn_t(lua_State *L, struct thread_info *ti, value v,
                            const struct glue_ty *ty);
typedef value glue_to_fn_t(lua_State *L, struct thread_info *ti, int idx);

/* The host of a thread_info opened by echohost.glue (its ti->host): fn
 * references are refs in L's registry. */
struct glue_lua {
    lua_State *L;                       /* the main thread */
    glue_push_fn_t *push;
    glue_to_fn_t *to;
};

/* The thread_info of a Lua state where echohost.glue was required (kept in
 * its registry under this key), or NULL. */
#define GLUE_TINFO_KEY  "echohost.glue.tinfo"
struct thread_info *glue_tinfo_of(lua_State *L);
struct thread_info *glue_lua_open(lua_State *L, glue_push_fn_t *push,
                                  glue_to_fn_t *to);

void glue_push_closure(struct thread_info *ti, lua_State *L, value fn);
value call(struct thread_info *ti, value clo, value arg);

#endif
