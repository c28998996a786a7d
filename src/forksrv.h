/* Fork model (--model fork): a process per connection, the design of the
 * original Coq echo server. */
#ifndef ECHOHOST_FORKSRV_H
#define ECHOHOST_FORKSRV_H

#include "config.h"

/* Accepts on lfd (listening, non-blocking; owned from now on) and forks a
 * child per connection until SIGTERM/SIGINT. Returns the exit status. */
int forksrv_main(const struct eh_config *cfg, int lfd);

/* server.c: blocks SIGTERM, SIGINT, SIGHUP, SIGCHLD and returns a
 * non-blocking signalfd for them, or -1 with errno. */
int server_signalfd(void);

#endif
