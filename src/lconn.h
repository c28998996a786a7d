/* The "echohost.conn" object handlers see: one implementation for every
 * interpreter, over an operations table that each runtime provides (the
 * event runtime, the fork runtime). It knows no runtime [Redis
 * ConnectionType]. */
#ifndef ECHOHOST_LCONN_H
#define ECHOHOST_LCONN_H

#include <stddef.h>
#include <lua.h>

#include "net.h"

#define LCONN_NAME "echohost.conn"
#define LCONN_TIMER "echohost.timer"
#define LCONN_TIMERS_MAX 64         /* armed timers per connection */
#define LCONN_SUBS_MAX 64           /* subscriptions per connection */

struct lconn;
struct ltimer;
struct lsub;

/* What a runtime does for the conn object, only while the connection is
 * open and not closed by the handler. recv, send and sleep push their
 * results (lconn_fail on failure) and return how many, or park the calling
 * coroutine and return lua_yieldk(L, 0, 0, k) (k may be NULL); the results
 * pushed at the resume are then recv's (or k's). A call that would wait
 * where no coroutine can raises "conn:<what> would wait: ...". */
struct lconn_ops {
    int (*recv)(lua_State *L, struct lconn *u, size_t max, const char *what,
                lua_KFunction k);
    int (*send)(lua_State *L, struct lconn *u, const char *s, size_t len);
    int (*sleep)(lua_State *L, struct lconn *u, double secs);
    void (*close)(struct lconn *u);         /* flush, then close */
    void (*shutdown)(struct lconn *u);      /* flush, then FIN */
    void (*reset)(struct lconn *u);         /* RST now, output dropped */
    /* Arrange for t to fall due in secs; the runtime then calls t's
     * function (lconn_timer_push, its call, lconn_timer_done). */
    void (*timer_arm)(struct lconn *u, struct ltimer *t, double secs);
    void (*timer_disarm)(struct lconn *u, struct ltimer *t);
    /* conn:spawn(fn, ...): fn at index 2, its arguments above; runs it as
     * a new coroutine of the connection and pushes spawn's results. */
    int (*spawn)(lua_State *L, struct lconn *u);
    /* A message for the subscription s of u: the runtime calls its
     * function like a timer's (lpubsub_push, the call). */
    void (*deliver)(struct lconn *u, struct lsub *s, const char *ch,
                    size_t chlen, const char *msg, size_t len);
    /* from:pipe(to) moved in C (NULL: M.pipe of lua/echohost/conn.lua
     * runs, the definition): from and to are open, to not shut; the bytes
     * a receive read past a frame go first. Returns pipe's results as recv
     * does, or -1 (nothing pushed) where it does not serve the pair: then
     * M.pipe runs. */
    int (*pipe)(lua_State *L, struct lconn *from, struct lconn *to);
};

/* A timer of conn:after/conn:every: the "echohost.timer" userdata. */
struct ltimer {
    struct lconn *u;                /* NULL once cancelled or done */
    int fn_ref, self_ref;           /* the function; the userdata, armed */
    double period;                  /* every: seconds; after: 0 */
    long long rt_id;                /* the runtime's: an ev timer id */
    double due;                     /* the runtime's: when it falls due */
    struct ltimer *next;            /* the conn's timers, in arming order */
};

/* The userdata behind a conn object. A handler may keep it past its
 * connection: lconn_gone() detaches it from the runtime. */
struct lconn {
    const char *magic;              /* lconn_new's mark (see checkconn) */
    unsigned lookups;               /* through the shared __index */
    const struct lconn_ops *ops;    /* NULL once the connection is gone */
    void *rt;                       /* the runtime's per-connection state */
    int closed;                     /* conn:close() was called */
    int wshut;                      /* conn:shutdown("send") was called */
    int end_code;                   /* errno of how it ended (ECONNRESET) */
    lua_Integer id;
    double timeout;                 /* seconds; < 0: none */
    struct net_peer peer;           /* lconn_peer() names it */
    /* framed receive: bytes read past a frame, rbuf[roff .. rlen) */
    char *rbuf;
    size_t roff, rlen, rcap;
    size_t frame_max;               /* --high-water: the longest frame */
    int fkind;                      /* the frame a parked receive wants */
    size_t fcount;                  /* its byte count (receive(n)) */
    struct ltimer *timers;          /* armed, in arming order */
    int ntimers;
    struct lsub *subs;              /* conn:subscribe's, active */
    int nsubs;
    int upstream;                   /* an upstream socket: no timers, no
                                       spawn, no subscriptions (they are
                                       the client conn's) */
};

/* Creates the metatable in L (once per state). */
void lconn_createmeta(lua_State *L);
/* Pushes a new conn object served by ops; frames of receive are at most
 * frame_max bytes. Raises on memory errors. */
struct lconn *lconn_new(lua_State *L, const struct lconn_ops *ops, void *rt,
                        lua_Integer id, const struct net_peer *peer,
                        size_t frame_max);
/* conn.peer: "127.0.0.1:53412", named when first asked. */
const char *lconn_peer(struct lconn *u);
/* The connection ended; code: the errno later calls report (0, or
 * ECONNRESET after a reset). */
void lconn_gone(lua_State *L, struct lconn *u, int code);

/* t fell due: pushes t, its function and the conn and returns 1, the
 * argument count of the call the runtime makes next (t stays below the
 * function), or pushes nothing and returns 0 when t was cancelled. */
int lconn_timer_push(lua_State *L, struct ltimer *t);
/* After that call (its results popped): pops t; 1 if the runtime must arm
 * it again (every, still armed), else t is released. */
int lconn_timer_done(lua_State *L, struct ltimer *t);

/* What require "echohost.socket" gives a handler: connect, through the
 * runtime now serving the state; the other functions of echohost.socket
 * raise there (they would block the worker). */
typedef int (*lconn_connect_fn)(lua_State *L, void *rt, const char *host,
                                int port, double timeout);
void lconn_push_socket_module(lua_State *L);
/* The runtime serving L from now on (fn NULL: none, connect raises). */
void lconn_set_runtime(lua_State *L, lconn_connect_fn fn, void *rt);
/* 1 if a runtime serves L (its connect is set), else 0. */
int lconn_has_runtime(lua_State *L);

#define LCONN_CONNECT_TIMEOUT 60.0  /* seconds, connect's default */
#define LCONN_UPSTREAMS_MAX 64      /* open upstream sockets per conn */
#define LCONN_TASKS_MAX 64          /* coroutines per conn, handle included */

/* The runtimes' raises, one wording for all: what ("conn:recv") would
 * wait outside a coroutine of the connection (for_: " for data" or "");
 * another coroutine waits on the same object (dir "read"/"write", obj
 * "connection"/"upstream socket"); the connection has max of kind
 * ("coroutines") already. Each raises; the int return is for tail calls. */
int lconn_would_wait(lua_State *L, const char *what, const char *for_);
int lconn_busy(lua_State *L, const char *what, const char *dir,
               const char *obj);
int lconn_too_many(lua_State *L, const char *kind, int max);

/* I/O failure results, the one helper for every runtime: nil, msg, code.
 * Returns 3. */
int lconn_fail(lua_State *L, const char *msg, int code);

/* What conn:shutdown("send") and conn:reset() do, for a runtime ending
 * the other side of a pipe. */
void lconn_shutdown_send(struct lconn *u);
void lconn_end_reset(lua_State *L, struct lconn *u);

/* The close reason's errno for the results of recv and send. */
int lconn_reason_code(const char *reason);

#endif
