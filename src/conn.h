/* A client connection of an event-model worker, and the contract between
 * the worker (socket I/O, buffers, backpressure, timers) and the event
 * runtime (Lua). worker.c implements the conn_* calls; rt_event.c
 * implements the handler_* calls. With no --handler the worker echoes in C
 * and never calls handler_*. */
#ifndef ECHOHOST_CONN_H
#define ECHOHOST_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "ev.h"
#include "net.h"

struct handler;
struct hstate;

typedef struct conn conn;       /* private to worker.c */

/* --- worker.c, for the handler runtime ------------------------------------ */

/* Unique within the server run. */
uint64_t conn_id(const conn *c);
/* "127.0.0.1:53412", "[::1]:53412" */
const char *conn_peer(conn *c);
/* The same, unnamed until asked (net_peer_name). */
const struct net_peer *conn_net_peer(const conn *c);
/* What the handler runtime keeps for c (NULL at first), owned by it. */
void *conn_data(const conn *c);
void conn_set_data(conn *c, void *data);

/* Queues len bytes (copied) for the client. 0, or -1 when the connection is
 * closing or gone. The queue may pass the high-water mark: callers that must
 * respect backpressure check conn_can_send() first and wait for
 * handler_on_drain(). */
int conn_send(conn *c, const char *data, size_t len);
/* 1 while the queued output is below the high-water mark. */
int conn_can_send(const conn *c);
size_t conn_pending(const conn *c);
/* Stop (on = 0) or resume (on = 1) reading from the client: the runtime's
 * own input buffer is bounded this way. */
void conn_want_read(conn *c, int on);
/* From now on output over the high-water mark does not pause reading
 * (direct style: its input buffer is bounded by conn_want_read, and a
 * coroutine may read while another waits to write). */
void conn_set_duplex(conn *c);
/* Flush what is queued, then close. Idempotent. handler_on_close follows
 * (later, never from inside this call). */
void conn_close(conn *c);
/* Flush what is queued, then shut the sending side (the client reads
 * EOF); reading goes on. */
void conn_shutdown_send(conn *c);
/* Close now with a TCP RST; queued output is dropped. handler_on_close
 * follows ("closed"). */
void conn_reset(conn *c);
/* A handler error ends c: counted in the worker's errors and faults. */
void conn_note_fault(conn *c);
/* 1 once conn_close was called or the socket failed. */
int conn_closing(const conn *c);
ev_loop *conn_loop(const conn *c);

/* --- rt_event.c, for the worker ------------------------------------------- */

/* The runtime of this worker, on the handler the master loaded before the
 * fork (this process's copy of it, owned from now on). NULL: no memory. */
struct handler *handler_create(ev_loop *loop, const struct eh_config *cfg,
                               const struct hstate *loaded);
void handler_destroy(struct handler *h);
/* Loads path (NULL: the current file) in a fresh environment and makes it
 * current; on failure the old handler stays and err says why (with file and
 * line). 0 or -1. */
int handler_reload(struct handler *h, const char *path, char *err,
                   size_t errlen);
/* handler_reload of the current file, on SIGHUP: a failure is logged. */
int handler_reload_logged(struct handler *h, const char *trigger);
int handler_version(const struct handler *h);
/* Bytes the handler's Lua state holds (what --lua-mem caps). */
size_t handler_mem(const struct handler *h);
/* The state and current version: what the worker's UDP listeners give
 * rtdgram_reply (src/rt_dgram.h). Lives as long as h. */
struct hstate *handler_state(struct handler *h);

void handler_on_open(struct handler *h, conn *c);
/* buf is the worker's scratch buffer: copy what must outlive the call. */
void handler_on_data(struct handler *h, conn *c, const char *buf, size_t len);
/* The client shut down its side: no more data will come. The runtime calls
 * conn_close() once it has nothing more to send. */
void handler_on_eof(struct handler *h, conn *c);
/* Output fell to the low-water mark after having passed the high one. */
void handler_on_drain(struct handler *h, conn *c);
/* The connection is going away (reason: "eof", "error", "timeout", "reset",
 * "shutdown", "closed"); release conn_data(c). c is freed after this returns.
 * Returns the reason the handler saw ("error" after a handler error). */
const char *handler_on_close(struct handler *h, conn *c, const char *reason);

#endif
