/* The fork runtime: runs the handler on one connection in a forked child. */
#ifndef ECHOHOST_RT_FORK_H
#define ECHOHOST_RT_FORK_H

#include <stdint.h>

struct hstate;
struct net_peer;

/* What a child's connection did, for --access-log. */
struct rtfork_tally {
    uint64_t bytes_in, bytes_out;
    const char *reason;         /* the close reason */
};

/* In the child: serves fd with the handler hs the server process loaded
 * before the fork, until the connection ends and its coroutines returned
 * (one ppoll loop over what they wait for; the upstreams it opens close
 * with it). SIGTERM (the drain deadline) ends it with on_close "shutdown".
 * peer is named only if the handler asks (conn.peer). Fills t; returns
 * the exit status: 0, or 1 after a handler error. */
int rtfork_serve(struct hstate *hs, int fd, const struct net_peer *peer,
                 struct rtfork_tally *t);

#endif
