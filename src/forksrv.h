/* Fork model (--model fork): a process per connection, the design of the
 * original Coq echo server. */
#ifndef ECHOHOST_FORKSRV_H
#define ECHOHOST_FORKSRV_H

#include <sys/types.h>

#include "config.h"

struct hstate;

/* A bound socket: TCP or unix listening, or UDP. */
struct forksrv_listen {
    enum eh_listen_kind kind;
    int fd;                     /* non-blocking */
    int proxy;                  /* ,proxy: a PROXY header comes first */
    const char *name;           /* "127.0.0.1:8888", "udp://[::1]:7" */
};

/* Accepts on the n stream sockets of ls (owned from now on) and forks a
 * child per connection until SIGTERM/SIGINT; each child serves with hs (the
 * handler loaded here, reloaded on SIGHUP and --watch) or echoes in C (hs
 * NULL). UDP sockets are served by this process: C echo, or hs's datagram
 * function in hs's own state. Returns the exit status. */
int forksrv_main(const struct eh_config *cfg, const struct forksrv_listen *ls,
                 int n, struct hstate *hs);

/* server.c: the loop is about to run: systemd hears READY=1, or after an
 * upgrade the pid file names us and the old master hears we serve. 0, or
 * -1: not taking over (logged; exit 1). */
int server_serving(const struct eh_config *cfg);
/* server.c: a new server took over: the unix: listeners' files are its
 * own to remove, no longer this one's. */
void server_release_unix(void);

#endif
