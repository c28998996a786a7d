/* Event-model worker: one process, one event loop, its connections (C echo
 * or a Lua handler), and the statistics the master can read. */
#ifndef ECHOHOST_WORKER_H
#define ECHOHOST_WORKER_H

#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "conn.h"
#include "ev.h"
#include "stats.h"
#include "udp.h"

/* Counters of one listener in one worker slot, in the same shared mapping
 * as worker_stats (nlisten per slot). */
struct listener_stats {
    stat_t conns_open;          /* TCP, unix: connections now open */
    stat_t accepted;
    stat_t bytes_in, bytes_out;
    /* ,proxy: headers taken (with an address; LOCAL or UNKNOWN), and the
     * connections closed for theirs (see enum PROXY_* in proxyproto.h) */
    stat_t proxy_ok, proxy_local;
    stat_t proxy_missing, proxy_malformed, proxy_oversized;
    stat_t proxy_truncated, proxy_timeout;
    struct udp_stats udp;       /* UDP: datagrams */
} __attribute__((aligned(64)));

/* One socket the master bound, as a worker gets it. */
struct worker_listener {
    enum eh_listen_kind kind;
    int fd;                     /* non-blocking; TCP, unix: listening */
    int shared;                 /* one fd for every slot (EPOLLEXCLUSIVE) */
    int proxy;                  /* ,proxy: a PROXY header comes first */
    const char *name;           /* "127.0.0.1:8888", "udp://[::1]:7",
                                   "unix:/run/x.sock" */
    struct listener_stats *stats;   /* this slot's, in the shared mapping */
};

/* What the master hands a worker it forks. */
struct worker_start {
    int slot;                   /* 0 .. workers-1 */
    unsigned gen;               /* worker starts before this one (ids) */
    const struct worker_listener *listen;   /* nlisten of them */
    int nlisten;
    const uint16_t *udp_ports;  /* the UDP listeners' ports (loop guard) */
    int nudp_ports;
    int exclusive;              /* the fds are shared by all workers */
    int ctl_fd;                 /* control channel (worker's end), or -1 */
    int ready_fd;               /* closed once serving (a master started by
                                   an upgrade waits for that), or -1 */
    const struct hstate *handler;   /* loaded by the master, or NULL */
    struct worker_stats *stats; /* this slot in the master's mapping */
};

struct worker;                  /* private to worker.c */

/* What the control channel shows of one open connection. */
struct conn_info {
    uint64_t id;
    const char *peer, *listener;
    uint64_t bytes_in, bytes_out;
    long long opened_ms, last_active_ms;    /* ev_now_ms() clock */
    size_t pending;             /* bytes queued for the client */
};

typedef void worker_conn_proc(void *ud, const struct conn_info *ci);
/* proc(ud, ...) for each open connection, the newest first. */
void worker_each_conn(struct worker *w, worker_conn_proc *proc, void *ud);
/* The worker's handler runtime, or NULL: it echoes in C. */
struct handler *worker_handler(struct worker *w);

/* Counts a handler reload that returned rc (0 or -1) and publishes the
 * version the worker runs now. */
void worker_note_reload(struct worker *w, int rc);

/* Runs a worker in the current (forked) process until it has drained.
 * Returns the exit status: 0 after a drain, 1 on a runtime error. */
int worker_main(const struct eh_config *cfg, const struct worker_start *ws);

#endif
