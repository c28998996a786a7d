/* Supervision, shared by the event master (server.c), the fork master
 * (forksrv.c) and, for its drain, the event worker (worker.c): signals
 * through a signalfd, the table of children and their reaping, the drain
 * with a deadline, kill-and-wait, a second stop signal ending it at once,
 * and SIGUSR2's upgrade. */
#ifndef ECHOHOST_SUPERVISE_H
#define ECHOHOST_SUPERVISE_H

#include <sys/types.h>
#include <unistd.h>

#include "config.h"
#include "ev.h"
#include "upgrade.h"

/* --- the drain ----------------------------------------------------------- */

/* What a drain drives. begin: stop taking work. busy: 1 while work is left.
 * end: end what is left now (deadline 1: the drain deadline passed, 0: a
 * second stop signal came). */
struct sup_drain_ops {
    void (*begin)(void *ud);
    int (*busy)(void *ud);
    void (*end)(void *ud, int deadline);
};

struct sup_drain {
    ev_loop *loop;
    const struct sup_drain_ops *ops;
    void *ud;
    int on;                     /* draining */
    long long timer;            /* the deadline, or 0 */
};

void sup_drain_init(struct sup_drain *d, ev_loop *loop,
                    const struct sup_drain_ops *ops, void *ud);
/* A stop: the first begins the drain, which stops the loop once nothing
 * is busy or ends it after ms; a second one ends it now. The owner stops
 * the loop itself when the last work finishes (sup_drain_done). */
void sup_drain_stop(struct sup_drain *d, long ms);
/* 1 when draining and nothing is busy: stop the loop. */
int sup_drain_done(const struct sup_drain *d);

/* --- the signals --------------------------------------------------------- */

/* Blocks the n signals of sigs (the process's whole mask from now on when
 * set is 1, added to it when 0) and reads them from a signalfd on loop:
 * proc(ud, signo) for each. The fd, or -1 with errno. */
typedef void sup_signal_proc(void *ud, int signo);
int sup_signals(ev_loop *loop, const int *sigs, int n, int set,
                sup_signal_proc *proc, void *ud);

/* --- a master's children ------------------------------------------------- */

/* What a master does for the signals and its children. tag: what the
 * master said the child is (sup_add), -1 for a child it did not add.
 * reopened may be NULL (after log_reopen on SIGUSR1); handed_over may be
 * NULL (the new master serves: before this one drains). */
struct sup_ops {
    void (*reload)(void *ud, const char *trigger);  /* SIGHUP */
    void (*reopened)(void *ud);                     /* SIGUSR1 */
    void (*upgrade)(void *ud);  /* SIGUSR2: calls sup_upgrade */
    void (*handed_over)(void *ud);
    void (*stop_accepting)(void *ud);               /* the drain begins */
    void (*exited)(void *ud, int tag, pid_t pid, int status);
};

/* How a master's children end. */
struct sup_policy {
    const char *noun;           /* "workers", "children": the log's */
    int term_on_drain;          /* SIGTERM them when the drain begins */
    long deadline_extra_ms;     /* past --drain-timeout before killing */
    long term_grace_ms;         /* killing: SIGTERM, SIGKILL this much
                                   later; 0: SIGKILL at once */
    int deadline_level;         /* the log level of killing at the
                                   deadline (LOG_WARN, LOG_INFO) */
};

struct sup_child {
    pid_t pid;
    int tag;
};

struct supervisor {
    const struct eh_config *cfg;
    ev_loop *loop;
    const struct sup_ops *ops;
    const struct sup_policy *policy;
    void *ud;
    int sigfd;
    struct sup_child *kids;     /* live children, unordered */
    int nkids, capkids;
    struct sup_drain drain;
    struct upgrade up;          /* SIGUSR2: the new master we start */
};

/* Blocks TERM, INT, HUP, USR1, USR2 and CHLD (children inherit the mask
 * and set their own) and reads them on loop. 0, or -1 with errno. */
int sup_init(struct supervisor *s, ev_loop *loop,
             const struct eh_config *cfg, const struct sup_policy *policy,
             const struct sup_ops *ops, void *ud);
/* Kills and waits for the children left, then frees the table. */
void sup_fini(struct supervisor *s);
/* In a child just forked: closes the master's signalfd and upgrade pipe
 * (frees nothing: the child may not touch the pages it shares). Inline: a
 * --model fork child runs no code of ours but its server's file (every
 * page of code a child runs is a page fault). */
static inline void sup_after_fork(struct supervisor *s) {
    close(s->sigfd);
    if (s->up.fd >= 0)
        close(s->up.fd);
}

/* A child forked (tag: the master's name for it). 0, or -1: out of memory
 * (it is not supervised). */
int sup_add(struct supervisor *s, pid_t pid, int tag);
int sup_count(const struct supervisor *s);
int sup_draining(const struct supervisor *s);
void sup_signal_all(struct supervisor *s, int sig);
/* Reaps every child that has exited: exited() for each. */
void sup_reap(struct supervisor *s);
/* Ends every child (sup_policy's way) and waits for it: exited() for
 * each. */
void sup_kill_all(struct supervisor *s);
/* Stops accepting and drains (why: the log's), as after an upgrade. */
void sup_drain(struct supervisor *s, const char *why);

/* From ops->upgrade: starts the new binary with fds (refused, logged,
 * while draining or upgrading). */
void sup_upgrade(struct supervisor *s, const struct upgrade_fds *fds);

/* "exited with status 1", "was killed by signal 9 (Killed)". */
void sup_describe(int status, char *buf, size_t len);

#endif
