/* The datagram runtime: a handler's datagram function (on_datagram, or a
 * bare function) on one datagram of a UDP listener, in the handler's state,
 * under the instruction budget and the memory cap. The same for the event
 * workers (each in its own state) and the fork server (in its own). */
#ifndef ECHOHOST_RT_DGRAM_H
#define ECHOHOST_RT_DGRAM_H

struct udp_dgram;

/* A udp_handler_fn over hs (a struct hstate *): calls the current
 * version's datagram function with (peer, data). Its reply, written over
 * d->buf: its length; nil: UDP_NO_REPLY; a raise, the budget, the memory
 * cap, a reply that is not a string or nil or that is longer than d->max:
 * UDP_FAULT with the line to log in d->err. A version with no datagram
 * function echoes (d->len, buf untouched). */
int rtdgram_reply(void *hs, struct udp_dgram *d);

#endif
