/* UDP echo (RFC 862) on one listening socket: each datagram straight back
 * to its sender, or the reply of a datagram handler, batched with
 * recvmmsg/sendmmsg, behind the loop guard and the per-source rate cap.
 * Knows the event loop, not workers nor Lua (a handler is a callback). */
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
    stat_t faults;              /* the handler failed: no reply */
    stat_t no_reply;            /* the handler answered nothing (nil) */
    stat_t polled;              /* times busy enough to be polled */
};

#define UDP_NO_REPLY (-1)       /* a handler's result: send nothing */
#define UDP_FAULT (-2)          /* a handler error: no reply, d->err says why */

/* One datagram, as a handler gets it. */
struct udp_dgram {
    const char *listener;       /* "udp://127.0.0.1:7" */
    const char *peer;           /* "127.0.0.1:5000", "[::1]:5000" */
    char *buf;                  /* the datagram; the reply goes over it */
    size_t len;
    size_t max;                 /* the longest reply: UDP_MAX4 or UDP_MAX6 */
    char *err;                  /* UDP_FAULT: the line to log */
    size_t errlen;
};

/* A datagram handler, called for each datagram that passed the loop guard
 * and the rate cap: the reply's length (written over d->buf, at most
 * d->max bytes; d->len with buf untouched echoes), UDP_NO_REPLY, or
 * UDP_FAULT with d->err filled (udp.c logs it and counts it). */
typedef int udp_handler_fn(void *ud, struct udp_dgram *d);

struct udp_opts {
    const char *name;           /* "udp://127.0.0.1:7", for the log */
    long rate;                  /* datagrams/s per source address; 0: off */
    const uint16_t *own_ports;  /* ports of the server's UDP listeners */
    int nown;
    int exclusive;              /* fd is polled by several processes */
    struct udp_stats *stats;    /* where to count (outlives the echo) */
    udp_handler_fn *handler;    /* NULL: echo in C */
    void *handler_ud;           /* its first argument (outlives the echo) */
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
