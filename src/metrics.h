/* --metrics HOST:PORT: Prometheus text exposition of the server's
 * statistics on HTTP GET /metrics, served by the master's loop. */
#ifndef ECHOHOST_METRICS_H
#define ECHOHOST_METRICS_H

#include <stddef.h>

#include "ev.h"

struct metrics;
struct server_stats;

/* Listens on host:port on loop and serves st (read at each request; it
 * must outlive the endpoint). addr receives the address it listens on
 * ("127.0.0.1:9100"). NULL with err filled ("--metrics: bind ...: Address
 * already in use"). */
struct metrics *metrics_open(ev_loop *loop, const char *host, int port,
                             const struct server_stats *st, char *addr,
                             size_t addrlen, char *err, size_t errlen);
/* Upgrades: the new master serves on fd, the old master's listening
 * socket (metrics_fd); the old one's metrics_release stops accepting
 * scrapes (those in progress finish). */
struct metrics *metrics_adopt(ev_loop *loop, int fd,
                              const struct server_stats *st, char *addr,
                              size_t addrlen, char *err, size_t errlen);
int metrics_fd(const struct metrics *mx);
void metrics_release(struct metrics *mx);
/* Closes the endpoint and every scrape in progress. NULL is fine. */
void metrics_close(struct metrics *mx);
/* In a newly forked worker: closes the inherited descriptors and frees
 * this copy without touching the loop (the child drops it). */
void metrics_after_fork(struct metrics *mx);

#endif
