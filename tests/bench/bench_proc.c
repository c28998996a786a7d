/* Process-tree CPU time and memory from /proc, for echohost-bench: what a
 * server (and its workers or children) used over the measured window. */

#include <ctype.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_proc.h"

struct proc_row {
    pid_t pid, ppid;
    long long child_ticks;      /* cutime + cstime: reaped children */
};

/* Reads pid, ppid and cutime+cstime from /proc/PID/stat. */
static int proc_stat(const char *pid, struct proc_row *r) {
    char path[64], line[1024], *p;
    long long f[4];
    FILE *fp;
    int ok;

    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    if (!(fp = fopen(path, "r"))) return -1;
    ok = fgets(line, sizeof line, fp) != NULL;
    fclose(fp);
    if (!ok || !(p = strrchr(line, ')'))) return -1;
    /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime cutime cstime */
    if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u "
               "%lld %lld %lld %lld", &r->ppid, &f[0], &f[1], &f[2],
               &f[3]) != 5)
        return -1;
    r->pid = (pid_t)atoi(pid);
    r->child_ticks = f[2] + f[3];
    return 0;
}

/* CPU time of a live process in ns: the sum of its threads' run time from
 * /proc/PID/task/TID/schedstat (utime and stime are in 10 ms ticks, too
 * coarse to sum over many short-lived children). */
static long long proc_run_ns(pid_t pid) {
    char path[320];
    long long sum = 0, ns;
    struct dirent *de;
    DIR *d;

    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    if (!(d = opendir(path))) return 0;
    while ((de = readdir(d))) {
        FILE *fp;
        if (!isdigit((unsigned char)de->d_name[0])) continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", (int)pid,
                 de->d_name);
        if (!(fp = fopen(path, "r"))) continue;
        if (fscanf(fp, "%lld", &ns) == 1) sum += ns;
        fclose(fp);
    }
    closedir(d);
    return sum;
}

static long proc_rss_kb(pid_t pid) {
    char path[64], line[256];
    long kb = 0;
    FILE *fp;

    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    if (!(fp = fopen(path, "r"))) return 0;
    while (fgets(line, sizeof line, fp))
        if (sscanf(line, "VmRSS: %ld", &kb) == 1) break;
    fclose(fp);
    return kb;
}

/* Every process in /proc, as a growing array; *n set to its length. */
static struct proc_row *proc_list(size_t *n) {
    struct proc_row *rows = NULL;
    size_t cap = 0;
    struct dirent *de;
    DIR *d = opendir("/proc");

    *n = 0;
    if (!d) return NULL;
    while ((de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0])) continue;
        if (*n == cap) {
            struct proc_row *nr = realloc(rows, (cap = cap * 2 + 256) *
                                          sizeof *rows);
            if (!nr) break;
            rows = nr;
        }
        if (proc_stat(de->d_name, &rows[*n]) == 0) (*n)++;
    }
    closedir(d);
    return rows;
}

/* Marks in[i] for the roots and, pass after pass, their descendants. */
static void proc_mark(const struct proc_row *rows, size_t n, char *in,
                      const pid_t *roots, int nroots) {
    int changed = 1;

    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < nroots; k++)
            if (rows[i].pid == roots[k]) in[i] = 1;
    while (changed) {
        changed = 0;
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; !in[i] && j < n; j++)
                if (in[j] && rows[i].ppid == rows[j].pid) in[i] = changed = 1;
    }
}

int bench_proc_tree(const pid_t *roots, int nroots, long long *cpu_ns,
                    long *rss_kb) {
    long long tick_ns = 1000000000LL / sysconf(_SC_CLK_TCK);
    size_t n;
    struct proc_row *rows = proc_list(&n);
    char *in = calloc(n + 1, 1);
    int found = 0;

    *cpu_ns = 0;
    if (rss_kb) *rss_kb = 0;
    if (in) proc_mark(rows, n, in, roots, nroots);
    for (size_t i = 0; in && i < n; i++) {
        if (!in[i]) continue;
        found = 1;
        *cpu_ns += proc_run_ns(rows[i].pid) + rows[i].child_ticks * tick_ns;
        if (rss_kb) *rss_kb += proc_rss_kb(rows[i].pid);
    }
    free(in);
    free(rows);
    return found ? 0 : -1;
}

/* Reads user+nice+system and steal ticks of all CPUs from /proc/stat (irq
 * and softirq left out: they include the loopback traffic of the run). */
void bench_proc_stat_all(long long *busy, long long *steal) {
    long long f[8] = {0};
    FILE *fp = fopen("/proc/stat", "r");

    *busy = *steal = 0;
    if (!fp) return;
    if (fscanf(fp, "cpu %lld %lld %lld %lld %lld %lld %lld %lld", &f[0],
               &f[1], &f[2], &f[3], &f[4], &f[5], &f[6], &f[7]) == 8) {
        *busy = f[0] + f[1] + f[2];
        *steal = f[7];
    }
    fclose(fp);
}

