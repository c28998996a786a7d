/* Lua host: Lua states with the echohost modules preloaded, a memory-capped
 * allocator, and eh_pcall, the one protected call with a traceback. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lhost.h"

/* Freed blocks of 1 to 4 KiB are kept for the next allocation of their
 * size class: above 1,032 bytes glibc's thread cache ends, and a handler's
 * strings of a message (1 KiB read: 1,049 bytes with Lua's header) die by
 * the hundred at each minor collection, so each malloc searched the bins
 * (callgrind, rr 50x1 KiB: ~450 instructions per message in malloc and
 * free). Sanitizer builds leave it out, to see every block's life. */
#define CACHE_LO 1024               /* glibc's tcache serves up to here */
#define CACHE_HI 4096
#define CACHE_STEP 64
#define CACHE_CLASSES ((CACHE_HI - CACHE_LO) / CACHE_STEP)
#define CACHE_BYTES (256 * 1024)    /* kept at most, per state */

#if defined(__SANITIZE_ADDRESS__)
#define CACHE_ON 0
#else
#define CACHE_ON 1
#endif

struct lhost_mem {
    size_t used;
    size_t limit;               /* 0: no cap */
    size_t cached;              /* bytes in bins */
    void *bin[CACHE_CLASSES];   /* freed blocks, linked by their first word */
};

/* The size class of an n-byte block, or -1 for malloc's own. */
static int size_class(size_t n) {
    if (!CACHE_ON || n <= CACHE_LO || n > CACHE_HI)
        return -1;
    return (int)((n - CACHE_LO - 1) / CACHE_STEP);
}

static size_t class_size(int c) {
    return CACHE_LO + (size_t)(c + 1) * CACHE_STEP;
}

static void *block_new(struct lhost_mem *m, size_t n) {
    int c = size_class(n);
    void *p;

    if (c < 0)
        return malloc(n);
    if ((p = m->bin[c]) == NULL)
        return malloc(class_size(c));
    m->bin[c] = *(void **)p;
    m->cached -= class_size(c);
    return p;
}

static void block_free(struct lhost_mem *m, void *p, size_t n) {
    int c = size_class(n);

    if (c < 0 || m->cached + class_size(c) > CACHE_BYTES) {
        free(p);
        return;
    }
    *(void **)p = m->bin[c];
    m->bin[c] = p;
    m->cached += class_size(c);
}

static void *block_resize(struct lhost_mem *m, void *p, size_t old,
                          size_t n) {
    int oc = size_class(old), nc = size_class(n);
    void *q;

    if (oc < 0 && nc < 0)
        return realloc(p, n);
    if (oc == nc)
        return p;               /* the class's block holds both */
    if ((q = block_new(m, n)) == NULL)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    block_free(m, p, old);
    return q;
}

static void cache_drop(struct lhost_mem *m) {
    for (int c = 0; c < CACHE_CLASSES; c++)
        while (m->bin[c]) {
            void *p = m->bin[c];
            m->bin[c] = *(void **)p;
            free(p);
        }
}

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
        block_free(m, ptr, old);            /* NULL: old is 0, free(NULL) */
        m->used -= old;
        return NULL;
    }
    if (m->limit && nsize > old && m->used + (nsize - old) > m->limit)
        return NULL;
    void *p = ptr ? block_resize(m, ptr, old, nsize) : block_new(m, nsize);
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

/* The warning function of lua.c [lauxlib.c warnfon]: off until "@on",
 * "@off" turns it off again; a warning is "Lua warning: <its pieces>\n"
 * on stderr. ud is the main thread, where lua_setwarnf applies. */
static void warn_off(void *ud, const char *msg, int tocont);
static void warn_on(void *ud, const char *msg, int tocont);

/* 1 if msg is a control message ("@..."), after acting on it. */
static int warn_control(lua_State *L, const char *msg, int tocont) {
    if (tocont || *msg != '@')
        return 0;
    if (strcmp(msg, "@off") == 0)
        lua_setwarnf(L, warn_off, L);
    else if (strcmp(msg, "@on") == 0)
        lua_setwarnf(L, warn_on, L);
    return 1;                   /* unknown controls are ignored */
}

static void warn_off(void *ud, const char *msg, int tocont) {
    warn_control(ud, msg, tocont);
}

/* The next piece of a warning that has begun. */
static void warn_cont(void *ud, const char *msg, int tocont) {
    lua_writestringerror("%s", msg);
    if (tocont) {
        lua_setwarnf(ud, warn_cont, ud);
    } else {
        lua_writestringerror("%s", "\n");
        lua_setwarnf(ud, warn_on, ud);
    }
}

static void warn_on(void *ud, const char *msg, int tocont) {
    if (warn_control(ud, msg, tocont))
        return;
    lua_writestringerror("%s", "Lua warning: ");
    warn_cont(ud, msg, tocont);
}

lua_State *lhost_newstate(size_t mem_limit) {
    return lhost_newstate_flags(mem_limit, 0);
}

lua_State *lhost_newstate_flags(size_t mem_limit, int flags) {
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
    lua_setwarnf(L, warn_off, L);
    if (flags & LHOST_NOENV) {
        lua_pushboolean(L, 1);  /* read by luaopen_package [lua.c -E] */
        lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    }
    luaL_openlibs(L);
    lhost_preload(L);
    m->limit = mem_limit;       /* after the libraries: they must always load */
    return L;
}

/* preload loader of a built-in Lua module, upvalue its lhost_embed:
 * compiles the module when it is first required (not in every state at
 * its start) and runs it with require's arguments. */
static int lhost_embedded_loader(lua_State *L) {
    const struct lhost_embed *e = lua_touserdata(L, lua_upvalueindex(1));
    int nargs = lua_gettop(L);

    /* checked by src/embed.lua at build time: only memory can fail */
    if (luaL_loadbufferx(L, e->src, e->len, e->chunkname, "t") != LUA_OK)
        return lua_error(L);
    lua_insert(L, 1);
    lua_call(L, nargs, 1);
    return 1;
}

void lhost_preload(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *r = preloaded; r->name; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);           /* preload[name] = opener */
    }
    for (const struct lhost_embed *e = lhost_embedded; e->name; e++) {
        lua_pushlightuserdata(L, (void *)e);
        lua_pushcclosure(L, lhost_embedded_loader, 1);
        lua_setfield(L, -2, e->name);           /* preload[name] = loader */
    }
    lua_pop(L, 1);
}

void lhost_close(lua_State *L) {
    struct lhost_mem *m = getmem(L);
    lua_close(L);
    if (m)
        cache_drop(m);
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
