/* Binary upgrade (SIGUSR2), both sides: the old master runs the new binary
 * with its listening sockets, control socket and a readiness pipe; the new
 * master takes them from its environment, and says when it serves. */
#ifndef ECHOHOST_UPGRADE_H
#define ECHOHOST_UPGRADE_H

#include <stddef.h>
#include <sys/types.h>

#include "ev.h"

#define UPGRADE_ERR_LEN 320
#define UPGRADE_ENV "ECHOHOST_UPGRADE"

/* --- the new master ----------------------------------------------------- */

/* What the old master handed over, from fd 3 on. */
struct upgrade_inherit {
    pid_t old;                  /* the old master (our parent) */
    int fd;                     /* the first listening socket: 3 */
    int nfds;                   /* listening sockets, fd .. fd+nfds-1 */
    int shared;                 /* 1: one per --listen, every worker polls
                                   it; 0: one per worker per --listen,
                                   worker i's from fd + i * nlisten */
    int control;                /* the control socket, or -1 */
    int metrics;                /* the --metrics socket, or -1 */
    int ready;                  /* the pipe to report on, or -1 */
};

/* At the start: 1 when the old master started us (in filled, the fds
 * close-on-exec from now on, $ECHOHOST_UPGRADE unset), 0 when not (no
 * variable, or one meant for another process), -1 with err (malformed, or
 * an fd that is not what it should be). */
int upgrade_inherited(struct upgrade_inherit *in, char *err, size_t errlen);
/* Serving: tells the old master, which then drains and exits. 0, or -1
 * with err (the old master is gone or gave up). */
int upgrade_report_ready(struct upgrade_inherit *in, char *err,
                         size_t errlen);

/* --- the old master ----------------------------------------------------- */

/* The binary SIGUSR2 runs and its arguments: argv as the server was
 * started, argv[0] made absolute now (through $PATH when it has no '/'). */
void upgrade_set_command(char *const *argv);
const char *upgrade_binary(void);

/* The end of an upgrade: ok 1 once the new master (pid) reported ready (the
 * caller stops accepting and drains), 0 when it failed (already logged;
 * the caller goes on serving). */
typedef void upgrade_done_proc(void *ud, pid_t pid, int ok);

struct upgrade {
    ev_loop *loop;
    pid_t pid;                  /* the new master, 0: none */
    int fd;                     /* the readiness pipe (read end), or -1 */
    long long timer;            /* --upgrade-timeout, or 0 */
    int ready;                  /* it reported: we drain */
    int cancelled;              /* we stop: it was killed */
    char why[UPGRADE_ERR_LEN];  /* why it failed, "" while it may not */
    upgrade_done_proc *done;
    void *ud;
};

/* What the old master hands over. */
struct upgrade_fds {
    const int *listen;          /* as upgrade_inherit describes them */
    int nlisten;
    int shared;
    int control;                /* or -1 */
    int metrics;                /* or -1 */
};

void upgrade_init(struct upgrade *u, ev_loop *loop, upgrade_done_proc *done,
                  void *ud);
/* SIGUSR2: forks and execs the binary with fds; done() is called later,
 * once. Refused (logged) while another upgrade is in progress. */
void upgrade_start(struct upgrade *u, const struct upgrade_fds *fds,
                   double timeout);
/* An upgrade that has not succeeded yet is given up: the new master is
 * killed (a stop signal came first). */
void upgrade_cancel(struct upgrade *u);
/* From the caller's waitpid(-1) loop: 1 when pid was the new master (its
 * end logged, done() called if it had not reported), else 0. */
int upgrade_reaped(struct upgrade *u, pid_t pid, int status);

#endif
