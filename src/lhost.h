/* Lua host: creating Lua states with the echohost modules preloaded, a
 * memory-capped allocator, and the one protected call every C->Lua call uses. */
#ifndef ECHOHOST_LHOST_H
#define ECHOHOST_LHOST_H

#include <stddef.h>
#include <lua.h>

/* A new state with the standard libraries opened, every echohost module
 * in package.preload and lua.c's warning function (off until "@on").
 * mem_limit caps the bytes the state may hold (0 = no cap); an allocation
 * past it fails as "not enough memory". NULL on failure. */
lua_State *lhost_newstate(size_t mem_limit);

/* lhost_newstate with flags: LHOST_NOENV, package.path and cpath ignore
 * LUA_PATH and LUA_CPATH (lua -E). */
#define LHOST_NOENV     1
lua_State *lhost_newstate_flags(size_t mem_limit, int flags);

/* Closes a state made by lhost_newstate and frees its allocator. */
void lhost_close(lua_State *L);

/* Lua modules of lua/ built into the binary (src/embed.lua writes the
 * table, ended by a NULL name). */
struct lhost_embed {
    const char *name;           /* "echohost.loader" */
    const char *chunkname;      /* "@lua/echohost/loader.lua" */
    const char *src;
    size_t len;
};
extern const struct lhost_embed lhost_embedded[];

/* Registers the echohost C modules, and the Lua ones built in (compiled
 * when first required), in package.preload [linit.c]. */
void lhost_preload(lua_State *L);

/* Bytes in use / the cap of a state made by lhost_newstate. */
size_t lhost_mem_used(lua_State *L);
void lhost_set_mem_limit(lua_State *L, size_t limit);

/* lua_pcall with a traceback message handler [lua.c docall]. On error the
 * message (with traceback) is left on the stack; returns the lua_pcall code. */
int eh_pcall(lua_State *L, int nargs, int nresults);

/* Traceback message handler, usable with lua_pcall/lua_resume callers. */
int lhost_msghandler(lua_State *L);

#endif
