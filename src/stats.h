/* Server statistics: every worker's counters in one block the master maps
 * shared before it forks (one slot per worker index, kept across restarts),
 * and the master's own figures. Read by stats() and --metrics. */
#ifndef ECHOHOST_STATS_H
#define ECHOHOST_STATS_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t stat_t;

/* One slot: written by the worker running in it, except pid, started_ms
 * and the first handler_version, which the master writes at the fork (and,
 * once the worker is reaped, conns_open, closed and lua_mem); read by the
 * master at any time.
 * A slot's counters add up over the workers it has had. */
struct worker_stats {
    stat_t pid;                 /* 0 while the slot has no worker */
    stat_t started_ms;          /* ev_now_ms() when it was forked */
    stat_t conns_open;          /* connections now open */
    stat_t accepted;
    stat_t closed;              /* accepted ones that ended */
    stat_t rejected;            /* closed at once: --max-conns, EMFILE */
    stat_t bytes_in;
    stat_t bytes_out;
    stat_t socket_errors;       /* ended by a socket error other than a
                                   reset (or no memory for it) */
    stat_t resets;              /* ended by ECONNRESET or EPIPE */
    stat_t faults;              /* ended by a handler error */
    stat_t timeouts;            /* ended by --idle-timeout */
    stat_t reloads;             /* handler loads that succeeded */
    stat_t reload_failures;     /* and that failed (the old one stayed) */
    stat_t handler_version;     /* the version it runs; 0: C echo */
    stat_t lua_mem;             /* bytes of its handler's Lua state */
    stat_t pubsub_lost;         /* pubsub messages it read too late */
} __attribute__((aligned(128)));    /* a cache line pair each: no sharing */

struct worker_listener;

/* The master's figures, in its own memory. */
struct server_stats {
    struct worker_stats *workers;   /* the shared block, nworkers slots */
    int nworkers;
    /* nworkers x nlisten: slot i's listeners at [i * nlisten], each with
     * its shared counters (worker.h) */
    const struct worker_listener *listeners;
    int nlisten;
    uint64_t workers_started;
    uint64_t reloads;           /* loads in the master that succeeded */
    uint64_t reload_failures;   /* loads the master refused */
    int handler_version;        /* what a worker starts on; 0: C echo */
};

static inline uint64_t stat_get(const stat_t *c) {
    return atomic_load_explicit(c, memory_order_relaxed);
}

static inline void stat_set(stat_t *c, uint64_t v) {
    atomic_store_explicit(c, v, memory_order_relaxed);
}

/* Each counter has one writer at a time, so a relaxed load and store is
 * enough (no locked instruction on the hot path); the reader never sees a
 * torn value. */
static inline void stat_add(stat_t *c, uint64_t n) {
    stat_set(c, stat_get(c) + n);
}

static inline void stat_sub(stat_t *c, uint64_t n) {
    stat_set(c, stat_get(c) - n);
}

/* What stats() calls errors: socket errors, resets and faults. */
static inline uint64_t stats_errors(const struct worker_stats *w) {
    return stat_get(&w->socket_errors) + stat_get(&w->resets) +
           stat_get(&w->faults);
}

/* n zeroed slots shared with the processes forked after this call; NULL
 * with errno. */
struct worker_stats *stats_map(int n);
void stats_unmap(struct worker_stats *w, int n);
/* Slot i lost its worker (reaped by the master): the connections it had
 * open count as closed, its Lua state is gone. */
void stats_worker_gone(struct worker_stats *w);

#endif
