/* echohost.pubsub: publish/subscribe between the connections of every
 * process of a server, over the bus of src/bus.c. */
#ifndef ECHOHOST_LPUBSUB_H
#define ECHOHOST_LPUBSUB_H

#include <stddef.h>
#include <stdint.h>
#include <lua.h>

#include "lconn.h"

#define LPUBSUB_DEFAULT (1024 * 1024)   /* bytes, without lpubsub_init */
#define LPUBSUB_NAME "echohost.subscription"

/* A subscription of conn:subscribe (the registry's; the Lua userdata is a
 * box pointing here while it is active). */
struct lsub {
    struct lconn *u;                /* NULL once cancelled */
    struct lchan *chan;
    struct lsub *prev, *next;       /* the channel's, in subscribing order */
    struct lsub *cnext;             /* the conn's */
    struct lsub *dead;              /* cancelled while messages went out */
    struct lsub_box *box;
    int fn_ref, self_ref;
    uint64_t from;                  /* the first message it gets */
};

/* Makes this process tree's bus of capacity bytes, before the processes
 * that share it are forked (otherwise the first use makes one of
 * LPUBSUB_DEFAULT bytes). 0, or -1 with "pubsub: <reason>" in err. */
int lpubsub_init(size_t capacity, char *err, size_t errlen);

/* The subscriptions' metatable in L (lconn_createmeta calls it). */
void lpubsub_createmeta(lua_State *L);

/* conn:subscribe(channel, fn) for u (conn at 1, channel at 2, fn at 3,
 * checked): pushes the subscription, or nil and a message. */
int lpubsub_subscribe(lua_State *L, struct lconn *u);
/* Every subscription of u: at close, reset and when the connection ends. */
void lpubsub_cancel_all(lua_State *L, struct lconn *u);

/* Delivery: s's function, conn, message and channel on L (which must be
 * s's state); returns 3, the argument count. Raises on memory errors. */
int lpubsub_push(lua_State *L, struct lsub *s, const char *ch, size_t chlen,
                 const char *msg, size_t len);

/* The runtime that watches this process's doorbell: add(fd) when the
 * first subscription comes, del(fd) when the last goes; the runtime calls
 * lpubsub_dispatch when fd is readable. */
void lpubsub_set_watch(void (*add)(int fd), void (*del)(int fd));
void lpubsub_dispatch(void);
/* The doorbell now, or -1 (for a runtime that polls itself). */
int lpubsub_fd(void);
/* Messages this process missed by reading too slowly, since it began;
 * also added to *counter from now on (a worker's stats slot). */
uint64_t lpubsub_lost(void);
void lpubsub_count_lost(_Atomic uint64_t *counter);

#endif
