/* The "echohost.conn" object handlers see: one implementation for every
 * interpreter, over an operations table that each runtime provides (the
 * event runtime, the fork runtime). It knows no runtime [Redis
 * ConnectionType]. */
#ifndef ECHOHOST_LCONN_H
#define ECHOHOST_LCONN_H

#include <stddef.h>
#include <lua.h>

#define LCONN_NAME "echohost.conn"

struct lconn;

/* What a runtime does for the conn object. recv and send push their
 * results (through lconn_fail on failure) and return how many, or return
 * lua_yield(L, 0) when they park the calling coroutine; they are only
 * called while the connection is open and not closed by the handler. */
struct lconn_ops {
    int (*recv)(lua_State *L, struct lconn *u, size_t max);
    int (*send)(lua_State *L, struct lconn *u, const char *s, size_t len);
    void (*close)(struct lconn *u);         /* flush, then close */
};

/* The userdata behind a conn object. A handler may keep it past its
 * connection: lconn_gone() detaches it from the runtime. */
struct lconn {
    const struct lconn_ops *ops;    /* NULL once the connection is gone */
    void *rt;                       /* the runtime's per-connection state */
    int closed;                     /* conn:close() was called */
    int end_code;                   /* errno of how it ended (ECONNRESET) */
    lua_Integer id;
    double timeout;                 /* seconds; < 0: none */
    char peer[64];
};

/* Creates the metatable in L (once per state). */
void lconn_createmeta(lua_State *L);
/* Pushes a new conn object served by ops; raises on memory errors. */
struct lconn *lconn_new(lua_State *L, const struct lconn_ops *ops, void *rt,
                        lua_Integer id, const char *peer);
/* The connection ended; code: the errno later calls report (0, or
 * ECONNRESET after a reset). */
void lconn_gone(struct lconn *u, int code);

/* I/O failure results, the one helper for every runtime: nil, msg, code.
 * Returns 3. */
int lconn_fail(lua_State *L, const char *msg, int code);

/* The close reason's errno for the results of recv and send. */
int lconn_reason_code(const char *reason);

#endif
