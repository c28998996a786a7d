/* The fork runtime: runs the handler on one connection in a forked child. */
#ifndef ECHOHOST_RT_FORK_H
#define ECHOHOST_RT_FORK_H

struct hstate;

/* In the child: serves fd (blocking) with the handler hs the server process
 * loaded before the fork, until the connection ends. SIGTERM (the drain
 * deadline) ends it with on_close "shutdown". Returns the exit status: 0,
 * or 1 after a handler error. */
int rtfork_serve(struct hstate *hs, int fd, const char *peer);

#endif
