/* Server statistics: the shared block of the workers' counters. */
#include <stddef.h>
#include <sys/mman.h>

#include "stats.h"

struct worker_stats *stats_map(int n) {
    void *p = mmap(NULL, (size_t)n * sizeof(struct worker_stats),
                   PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    return p == MAP_FAILED ? NULL : p;  /* anonymous memory is zeroed */
}

void stats_unmap(struct worker_stats *w, int n) {
    if (w)
        munmap(w, (size_t)n * sizeof *w);
}

void stats_worker_gone(struct worker_stats *w) {
    stat_add(&w->closed, stat_get(&w->conns_open));
    stat_set(&w->conns_open, 0);
    stat_set(&w->lua_mem, 0);
    stat_set(&w->pid, 0);
}
