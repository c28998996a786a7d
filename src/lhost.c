/* Lua host: Lua states with the echohost modules preloaded, a memory-capped
 * allocator, and eh_pcall, the one protected call with a traceback. */
#include <stdlib.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lhost.h"

struct lhost_mem {
    size_t used;
    size_t limit;               /* 0: no cap */
};

int luaopen_echohost_glue(lua_State *L);
int luaopen_echohost_log(lua_State *L);
int luaopen_echohost_proc(lua_State *L);
int luaopen_echohost_pubsub(lua_State *L);
int luaopen_echohost_shared(lua_State *L);
int luaopen_echohost_socket(lua_State *L);

/* Lua modules linked into the binary: require finds them in preload. */
static const luaL_Reg preloaded[] = {
    {"echohost.glue", luaopen_echohost_glue},
    {"echohost.log", luaopen_echohost_log},
    {"echohost.proc", luaopen_echohost_proc},
    {"echohost.pubsub", luaopen_echohost_pubsub},
    {"echohost.shared", luaopen_echohost_shared},
    {"echohost.socket", luaopen_echohost_socket},
    {NULL, NULL}
};

static void *lhost_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
    struct lhost_mem *m = ud;
    size_t old = ptr ? osize : 0;

    if (nsize == 0) {
        free(ptr);
        m->used -= old;
        return NULL;
    }
    if (m->limit && nsize > old && m->used + (nsize - old) > m->limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        m->used = m->used - old + nsize;
    return p;
}

static struct lhost_mem *getmem(lua_State *L) {
    void *ud;
    lua_Alloc f = lua_getallocf(L, &ud);
    return f == lhost_alloc ? ud : NULL;
}

size_t lhost_mem_used(lua_State *L) {
    struct lhost_mem *m = getmem(L);
    return m ? m->used : (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024;
}

void lhost_set_mem_limit(lua_State *L, size_t limit) {
    struct lhost_mem *m = getmem(L);
    if (m)
        m->limit = limit;
}

static int lhost_panic(lua_State *L) {
    const char *msg = lua_tostring(L, -1);
    lua_writestringerror("echohost: Lua panic: %s\n", msg ? msg : "?");
    return 0;
}

static void warnf(void *ud, const char *msg, int tocont) {
    (void)ud; (void)tocont;
    lua_writestringerror("%s", msg);
}

lua_State *lhost_newstate(size_t mem_limit) {
    struct lhost_mem *m = calloc(1, sizeof *m);
    lua_State *L;

    if (m == NULL)
        return NULL;
    L = lua_newstate(lhost_alloc, m);
    if (L == NULL) {
        free(m);
        return NULL;
    }
    /* Lua leaves it unset, and every new thread copies it: the runtimes
     * keep a coroutine's task there, NULL meaning "not a task" */
    *(void **)lua_getextraspace(L) = NULL;
    lua_atpanic(L, lhost_panic);
    lua_setwarnf(L, warnf, NULL);
    luaL_openlibs(L);
    lhost_preload(L);
    m->limit = mem_limit;       /* after the libraries: they must always load */
    return L;
}

void lhost_preload(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *r = preloaded; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);           /* preload[name] = opener */
    }
    for (const struct lhost_embed *e = lhost_embedded; e->name; e++) {
        /* compiled once by src/embed.lua: only memory can fail here */
        if (luaL_loadbufferx(L, e->src, e->len, e->chunkname, "t") != LUA_OK)
            lua_pop(L, 1);
        else
            lua_setfield(L, -2, e->name);   /* preload[name] = the chunk */
    }
    lua_pop(L, 1);
}

void lhost_close(lua_State *L) {
    struct lhost_mem *m = getmem(L);
    lua_close(L);
    free(m);
}

int lhost_msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            return 1;
        msg = lua_pushfstring(L, "(error object is a %s value)",
                              luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

int eh_pcall(lua_State *L, int nargs, int nresults) {
    int base = lua_gettop(L) - nargs;
    int status;

    lua_pushcfunction(L, lhost_msghandler);
    lua_insert(L, base);
    status = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    return status;
}
