/* UDP echo (RFC 862) on one listening socket: each datagram straight back
 * to its sender, batched with recvmmsg/sendmmsg, behind the loop guard and
 * the per-source rate cap. Knows the event loop, not workers. */
#ifndef ECHOHOST_UDP_H
#define ECHOHOST_UDP_H

#include <stdint.h>

#include "ev.h"
#include "stats.h"

#define UDP_MAX4 65507          /* largest UDP payload over IPv4 */
#define UDP_MAX6 65527          /* over IPv6 (no jumbograms) */

/* Counters of one listener in one worker, written only by that worker
 * (relaxed, as src/stats.h says) and read by the master. */
struct udp_stats {
    stat_t datagrams_in;        /* received, whatever became of them */
    stat_t datagrams_out;       /* echoed */
    stat_t bytes_in, bytes_out;
    stat_t dropped_guard;       /* from a guarded source (loop guard) */
    stat_t dropped_rate;        /* over --udp-rate for their source */
    stat_t dropped_full;        /* the socket's send buffer was full */
    stat_t truncated;           /* larger than a buffer: dropped */
    stat_t errors;              /* failed receives and sends */
};

struct udp_opts {
    const char *name;           /* "udp://127.0.0.1:7", for the log */
    long rate;                  /* datagrams/s per source address; 0: off */
    const uint16_t *own_ports;  /* ports of the server's UDP listeners */
    int nown;
    int exclusive;              /* fd is polled by several processes */
    struct udp_stats *stats;    /* where to count (outlives the echo) */
};

struct udp_echo;

/* Starts echoing on fd (a bound non-blocking UDP socket, still the
 * caller's to close) in loop; o is copied, its pointers must outlive the
 * echo. NULL with errno on failure. */
struct udp_echo *udp_echo_start(ev_loop *loop, int fd,
                                const struct udp_opts *o);
/* Leaves the loop and frees u (NULL: nothing); the fd stays open. */
void udp_echo_stop(struct udp_echo *u);

/* 1 if datagrams from this source port are never answered (the loop
 * guard's list of well-known ports). */
int udp_guarded_port(unsigned port);

#endif
