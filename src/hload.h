/* A handler's Lua state and its current version. Files are loaded through
 * lua/echohost/loader.lua, the rules every interpreter shares (the harness
 * too); this is its C side, for the event runtime, the fork runtime and the
 * master, which keeps the current version for the workers it restarts. */
#ifndef ECHOHOST_HLOAD_H
#define ECHOHOST_HLOAD_H

#include <stddef.h>
#include <lua.h>

#include "config.h"

#define HLOAD_ERR_LEN 512

enum hkind { HK_FN, HK_CALLBACKS, HK_DIRECT };

/* A loaded handler: registry refs (LUA_REFNIL when absent). For HK_FN the
 * function is in data, and in dgram (it serves datagrams too). */
struct hrefs {
    enum hkind kind;
    int data, open, close, handle;
    int dgram;                  /* on_datagram: the datagram function */
};

struct hstate {
    lua_State *L;
    const struct eh_config *cfg;
    struct hrefs cur;
    char *path;                 /* the file cur came from */
    int version;                /* successful loads so far */
    char **files;               /* path, then the modules it required */
    int nfiles;
    int load_ref;               /* loader.load */
    int log_ref;                /* the handlers' echohost.log */
};

/* Makes the state (libraries, echohost modules, the conn metatable, the
 * loader; then the --lua-mem cap) and loads cfg->handler as version 1.
 * 0, or -1 with "file:line: message" in err (nothing to close then). */
int hstate_open(struct hstate *hs, const struct eh_config *cfg, char *err,
                size_t errlen);
/* Loads path (NULL: the current file) and makes it current; on failure the
 * old version stays and err says why, naming the file. 0 or -1. */
int hstate_load(struct hstate *hs, const char *path, char *err,
                size_t errlen);
void hstate_close(struct hstate *hs);
/* Logs a load that trigger ("SIGHUP", "--watch", "handler()") asked for
 * and that failed with err: the one wording of a refused reload. */
void hstate_log_refused(const struct hstate *hs, const char *trigger,
                        const char *err);

/* Arms the instruction budget of L for one call or resume (0: none). */
void hload_budget(lua_State *L, long budget);

/* The smallest --lua-mem a handler's state can start with. */
#define HLOAD_MEM_MIN (256 * 1024)

#endif
