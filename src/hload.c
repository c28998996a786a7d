/* A handler's Lua state: made once, loaded through echohost.loader, swapped
 * version by version; the instruction budget of every call into it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "hload.h"
#include "lconn.h"
#include "log.h"
#include "lhost.h"
#include "llog.h"

static void budget_hook(lua_State *L, lua_Debug *ar) {
    (void)ar;
    luaL_error(L, "instruction budget exceeded");
}

void hload_budget(lua_State *L, long budget) {
    if (budget > 0)             /* lua_sethook also resets the count */
        lua_sethook(L, budget_hook, LUA_MASKCOUNT, budget > INT32_MAX ?
                    INT32_MAX : (int)budget);
}

static const char *const kinds[] = {"fn", "callbacks", "direct", NULL};
static const char *const fields[] = {"on_data", "on_open", "on_close",
                                     "handle", "on_datagram"};
#define NFIELDS 5

/* Pushes what the server provides to a handler's require: a fresh
 * echohost.settings from --set, echohost.log and the handler's
 * echohost.socket (connect only). */
static void push_provided(lua_State *L, const struct hstate *hs) {
    const struct eh_config *cfg = hs->cfg;

    lua_createtable(L, 0, 2);
    lua_createtable(L, 0, cfg->nsettings);
    for (int i = 0; i < cfg->nsettings; i++) {
        const char *kv = cfg->settings[i], *eq = strchr(kv, '=');
        lua_pushlstring(L, kv, (size_t)(eq - kv));
        lua_pushstring(L, eq + 1);
        lua_rawset(L, -3);                      /* settings[k] = v */
    }
    lua_setfield(L, -2, "echohost.settings");
    lua_rawgeti(L, LUA_REGISTRYINDEX, hs->log_ref);
    lua_setfield(L, -2, "echohost.log");
    lconn_push_socket_module(L);
    lua_setfield(L, -2, "echohost.socket");
}

/* Protected: loader.load(path, provided) (the function, the path and the
 * hstate are arguments); returns the kind, the NFIELDS refs and h.modules. */
static int load_proc(lua_State *L) {
    const struct hstate *hs = lua_touserdata(L, 3);

    lua_settop(L, 2);
    push_provided(L, hs);
    lua_call(L, 2, 2);                          /* h | nil, err */
    if (lua_isnil(L, 1))
        return lua_error(L);                    /* the loader's message */
    lua_settop(L, 1);
    lua_getfield(L, 1, "kind");
    lua_pushinteger(L, luaL_checkoption(L, -1, NULL, kinds));
    for (int i = 0; i < NFIELDS; i++) {
        lua_getfield(L, 1, fields[i]);
        lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
    }
    lua_getfield(L, 1, "modules");
    return NFIELDS + 2;
}

static void free_files(struct hstate *hs) {
    for (int i = 0; i < hs->nfiles; i++)
        free(hs->files[i]);
    free(hs->files);
    hs->files = NULL;
    hs->nfiles = 0;
}

/* hs->files = path and the modules (the table at -1), for --watch; an
 * allocation failure only shortens the list. */
static void set_files(struct hstate *hs, lua_State *L, const char *path) {
    int n = lua_istable(L, -1) ? (int)luaL_len(L, -1) : 0;

    free_files(hs);
    if ((hs->files = calloc(n + 1, sizeof *hs->files)) == NULL)
        return;
    hs->files[hs->nfiles++] = strdup(path);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        const char *f = lua_tostring(L, -1);
        if (f && (hs->files[hs->nfiles] = strdup(f)) != NULL)
            hs->nfiles++;
        lua_pop(L, 1);
    }
    if (hs->files[0] == NULL)
        free_files(hs);
}

/* The first line of the error at -1 (pops it), naming path. */
static void copy_error(lua_State *L, const char *path, char *err,
                       size_t errlen) {
    const char *msg = lua_tostring(L, -1);
    size_t plen = strlen(path);
    int n;

    if (msg == NULL)
        msg = "(error object is not a string)";
    n = (int)strcspn(msg, "\n");
    if (strncmp(msg, path, plen) == 0)
        snprintf(err, errlen, "%.*s", n, msg);
    else                        /* "not enough memory", raised past Lua */
        snprintf(err, errlen, "%s: %.*s", path, n, msg);
    lua_pop(L, 1);
}

static int load_refs(struct hstate *hs, const char *path, struct hrefs *r,
                     char *err, size_t errlen) {
    lua_State *L = hs->L;

    lua_pushcfunction(L, load_proc);
    lua_rawgeti(L, LUA_REGISTRYINDEX, hs->load_ref);
    lua_pushstring(L, path);
    lua_pushlightuserdata(L, hs);
    hload_budget(L, hs->cfg->lua_budget);
    if (eh_pcall(L, 3, NFIELDS + 2) != LUA_OK) {
        copy_error(L, path, err, errlen);
        lua_gc(L, LUA_GCCOLLECT);
        return -1;
    }
    r->kind = (enum hkind)lua_tointeger(L, -7);
    r->data = (int)lua_tointeger(L, -6);
    r->open = (int)lua_tointeger(L, -5);
    r->close = (int)lua_tointeger(L, -4);
    r->handle = (int)lua_tointeger(L, -3);
    r->dgram = (int)lua_tointeger(L, -2);
    set_files(hs, L, path);
    lua_pop(L, NFIELDS + 2);
    return 0;
}

static void unref(lua_State *L, struct hrefs *r) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->data);
    luaL_unref(L, LUA_REGISTRYINDEX, r->open);
    luaL_unref(L, LUA_REGISTRYINDEX, r->close);
    luaL_unref(L, LUA_REGISTRYINDEX, r->handle);
    luaL_unref(L, LUA_REGISTRYINDEX, r->dgram);
    r->data = r->open = r->close = r->handle = r->dgram = LUA_NOREF;
}

int hstate_load(struct hstate *hs, const char *path, char *err,
                size_t errlen) {
    struct hrefs r;
    char *p = NULL;

    if (path == NULL)
        path = hs->path;
    if (path != hs->path && (p = strdup(path)) == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    if (load_refs(hs, path, &r, err, errlen) < 0) {
        free(p);
        return -1;
    }
    if (p) {
        free(hs->path);
        hs->path = p;
    }
    unref(hs->L, &hs->cur);
    hs->cur = r;
    hs->version++;
    return 0;
}

/* Protected: require "echohost.loader" and ref its load; the handlers'
 * log module. */
static int setup_proc(lua_State *L) {
    lconn_createmeta(L);
    llog_push(L, "handler ");
    lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
    lua_insert(L, 1);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "echohost.loader");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "load");
    luaL_checktype(L, -1, LUA_TFUNCTION);
    lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
    lua_replace(L, 2);
    lua_settop(L, 2);
    return 2;                   /* log ref, load ref */
}

int hstate_open(struct hstate *hs, const struct eh_config *cfg, char *err,
                size_t errlen) {
    memset(hs, 0, sizeof *hs);
    hs->cfg = cfg;
    hs->cur.data = hs->cur.open = hs->cur.close = hs->cur.handle =
        hs->cur.dgram = LUA_NOREF;
    hs->path = strdup(cfg->handler);
    hs->L = lhost_newstate(0);          /* the cap after the setup */
    /* generational, as lua.c runs: a message's strings die young, and a
     * minor collection leaves the old heap alone (callgrind, per-message
     * handler on rr 50x1 KiB: 2,398 -> 1,651 instructions per message).
     * A minor collection after the heap grew by half, not by lua.c's
     * fifth: each one walks the stack of every coroutine, one per direct-
     * style connection (coroutine handler, rr 50x1 KiB: 3,648 -> 3,320
     * instructions per message). The incremental default lets garbage
     * reach the whole heap before it collects. */
    if (hs->L)
        lua_gc(hs->L, LUA_GCGEN, 50, 0);
    if (hs->path == NULL || hs->L == NULL) {
        snprintf(err, errlen, "%s: cannot create a Lua state", cfg->handler);
        goto err;
    }
    lua_pushcfunction(hs->L, setup_proc);
    if (eh_pcall(hs->L, 0, 2) != LUA_OK) {
        copy_error(hs->L, "echohost.loader", err, errlen);
        goto err;
    }
    hs->log_ref = (int)lua_tointeger(hs->L, -2);
    hs->load_ref = (int)lua_tointeger(hs->L, -1);
    lua_settop(hs->L, 0);
    lhost_set_mem_limit(hs->L, cfg->lua_mem_limit);
    if (hstate_load(hs, NULL, err, errlen) < 0)
        goto err;
    return 0;
err:
    hstate_close(hs);
    return -1;
}

void hstate_close(struct hstate *hs) {
    if (hs->L)
        lhost_close(hs->L);
    free_files(hs);
    free(hs->path);
    hs->L = NULL;
    hs->path = NULL;
}

void hstate_log_refused(const struct hstate *hs, const char *trigger,
                        const char *err) {
    log_error("handler %s: %s reload failed, version %d stays: %s", hs->path,
              trigger, hs->version, err);
}
