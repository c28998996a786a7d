/* Process-tree CPU time and memory from /proc, for echohost-bench. */
#ifndef ECHOHOST_BENCH_PROC_H
#define ECHOHOST_BENCH_PROC_H

#include <sys/types.h>

/* Sums over the live processes under roots (and the children they reaped)
 * the CPU time in ns, and VmRSS in KiB when rss_kb is not NULL. -1 if no
 * root is alive. */
int bench_proc_tree(const pid_t *roots, int nroots, long long *cpu_ns,
                    long *rss_kb);

/* user+nice+system and steal clock ticks of all CPUs, from /proc/stat. */
void bench_proc_stat_all(long long *busy, long long *steal);

#endif
