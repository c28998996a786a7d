/* Fork model (--model fork): a process per connection, the design of the
 * original Coq echo server. */
#ifndef ECHOHOST_FORKSRV_H
#define ECHOHOST_FORKSRV_H

#include "config.h"

struct hstate;

/* Accepts on lfd (listening, non-blocking; owned from now on) and forks a
 * child per connection until SIGTERM/SIGINT; each child serves with hs (the
 * handler loaded here, reloaded on SIGHUP and --watch) or echoes in C (hs
 * NULL). Returns the exit status. */
int forksrv_main(const struct eh_config *cfg, int lfd, struct hstate *hs);

/* server.c: blocks SIGTERM, SIGINT, SIGHUP, SIGCHLD and returns a
 * non-blocking signalfd for them, or -1 with errno. */
int server_signalfd(void);

#endif
