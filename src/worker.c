/* Event-model worker: accepts on the shared port, echoes in C (or feeds a
 * Lua handler), bounds every connection's memory, drains on SIGTERM. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "control.h"
#include "log.h"
#include "lpubsub.h"
#include "net.h"
#include "proxyproto.h"
#include "rt_dgram.h"
#include "supervise.h"
#include "worker.h"

#define SCRATCH_LEN (64 * 1024)   /* the worker's one read buffer */
#define ACCEPT_MAX 16             /* accepts per wake-up [anet, ae] */
#define ACCEPT_PAUSE_MS 100       /* no fd left: wait before accepting */
#define OUT_MIN 4096              /* smallest output queue allocation */
#if defined(__SANITIZE_ADDRESS__)
#define CONN_SPARE_MAX 0          /* ASan: every freed conn is poisoned */
#else
#define CONN_SPARE_MAX 256        /* freed conns kept (~60 KiB) */
#endif

enum {
    CONN_READING = 1 << 0,      /* registered for EV_READABLE */
    CONN_WRITING = 1 << 1,      /* registered for EV_WRITABLE */
    CONN_PAUSED = 1 << 2,       /* output over high water: not reading
                                   (unless CONN_DUPLEX) */
    CONN_NOREAD = 1 << 3,       /* the handler asked us not to read */
    CONN_EOF = 1 << 4,          /* the client shut down its side */
    CONN_CLOSING = 1 << 5,      /* conn_close: flush, then close */
    CONN_DEAD = 1 << 6,         /* on w->dead, freed after the iteration */
    CONN_SHUTWR = 1 << 7,       /* conn_shutdown_send: FIN once flushed */
    CONN_PROXY = 1 << 8,        /* its PROXY header is not in yet: the
                                   handler has not seen it */
    CONN_DUPLEX = 1 << 9,       /* reads are the handler's to pause: output
                                   over high water does not */
    CONN_HUP = 1 << 10,         /* EV_HUP: read on until end of file */
    CONN_REASON_SHIFT = 11      /* index into reasons[] */
};

/* R_PROXY: its PROXY header was refused (only the access log sees it) */
enum { R_EOF, R_ERROR, R_TIMEOUT, R_RESET, R_SHUTDOWN, R_CLOSED, R_PROXY };
static const char *const reasons[] = {
    "eof", "error", "timeout", "reset", "shutdown", "closed", "proxy"
};

/* Bytes queued for the client: data[head .. head+len). */
struct conn_out {
    size_t head, len, cap;
    char data[];
};

/* A listener in the worker: accepting (TCP) or echoing (UDP). */
struct worker_lsock {
    struct worker *w;
    struct worker_listener l;   /* l.fd -1 once draining */
    struct udp_echo *udp;       /* UDP: the echo on l.fd */
};

struct conn {
    int fd;
    uint64_t id;                /* unique within the server run */
    struct net_peer peer;       /* named when first asked; behind
                                   ,proxy: the header's source */
    const char *listener;       /* its listener's name: "127.0.0.1:8888" */
    struct worker *w;
    void *hdata;                /* owned by the handler runtime */
    struct conn_out *out;
    struct worker_lsock *ls;    /* the listener that accepted it */
    struct proxy_in *pin;       /* ,proxy: until the header is in */
    long long proxy_timer;      /* --proxy-timeout for it, or 0 */
    unsigned flags;
    long long last_active_ms;
    long long opened_ms;
    uint64_t bytes_in, bytes_out;   /* this connection's (control: conns()) */
    struct conn *prev, *next;
};

struct worker {
    int slot;                   /* 0 .. workers-1 */
    const struct eh_config *cfg;
    ev_loop *loop;
    struct handler *h;          /* NULL: C echo */
    struct worker_stats *stats;
    struct worker_lsock *ls;    /* its listeners */
    int nls;
    int exclusive;              /* their fds shared with the other workers */
    int spare_fd;               /* kept for EMFILE (see accept_proc) */
    int sigfd;
    char *scratch;              /* the one read buffer of this worker */
    size_t scratch_len;
    conn *conns;                /* open connections */
    conn *dead;                 /* closed, freed after the iteration */
    conn *spare;                /* freed, kept for the next accepts */
    int nspare;
    uint64_t next_id;
    long long sweep_timer;
    struct sup_drain drain;     /* SIGTERM */
    long long last_reject_log;
};

static void conn_kill(conn *c, int reason);

/* --- what others see ---------------------------------------------------- */

uint64_t conn_id(const conn *c) {
    return c->id;
}

const char *conn_peer(conn *c) {
    return net_peer_name(&c->peer);
}

const struct net_peer *conn_net_peer(const conn *c) {
    return &c->peer;
}

void *conn_data(const conn *c) {
    return c->hdata;
}

void conn_set_data(conn *c, void *data) {
    c->hdata = data;
}

void worker_each_conn(struct worker *w, worker_conn_proc *proc, void *ud) {
    for (conn *c = w->conns; c; c = c->next) {
        struct conn_info ci = {
            c->id, conn_peer(c), c->listener, c->bytes_in, c->bytes_out,
            c->opened_ms, c->last_active_ms, conn_pending(c)};
        proc(ud, &ci);
    }
}

struct handler *worker_handler(struct worker *w) {
    return w->h;
}

/* --- reading and writing ----------------------------------------------- */

size_t conn_pending(const conn *c) {
    return c->out ? c->out->len : 0;
}

int conn_can_send(const conn *c) {
    return conn_pending(c) < c->w->cfg->high_water;
}

int conn_closing(const conn *c) {
    return (c->flags & (CONN_CLOSING | CONN_DEAD)) != 0;
}

ev_loop *conn_loop(const conn *c) {
    return c->w->loop;
}

static void conn_fail(conn *c, int err) {
    int reset = err == ECONNRESET || err == EPIPE;

    stat_add(reset ? &c->w->stats->resets : &c->w->stats->socket_errors, 1);
    log_debug("conn %llu (%s): %s", (unsigned long long)c->id, conn_peer(c),
              strerror(err));
    conn_kill(c, reset ? R_RESET : R_ERROR);
}

static void conn_read_proc(ev_loop *loop, int fd, void *ud, int mask);
static void conn_write_proc(ev_loop *loop, int fd, void *ud, int mask);

/* Registers for reading exactly when nothing holds reads back. */
static void conn_update_read(conn *c) {
    int paused = (c->flags & CONN_PAUSED) && !(c->flags & CONN_DUPLEX);
    int want = !paused && !(c->flags & (CONN_NOREAD | CONN_EOF |
                                        CONN_CLOSING | CONN_DEAD));

    if (want && !(c->flags & CONN_READING)) {
        if (ev_add(c->w->loop, c->fd, EV_READABLE | EV_EDGE, conn_read_proc,
                   c) < 0) {
            conn_fail(c, errno);
            return;
        }
        c->flags |= CONN_READING;
    } else if (!want && (c->flags & CONN_READING)) {
        ev_del(c->w->loop, c->fd, EV_READABLE);
        c->flags &= ~CONN_READING;
    }
}

void conn_set_duplex(conn *c) {
    c->flags |= CONN_DUPLEX;
    conn_update_read(c);
}

void conn_want_read(conn *c, int on) {
    if (on)
        c->flags &= ~CONN_NOREAD;
    else
        c->flags |= CONN_NOREAD;
    conn_update_read(c);
}

/* Appends to the output queue, compacting or growing it. 0 or -1. */
static int out_append(conn *c, const char *data, size_t len) {
    struct conn_out *o = c->out;
    size_t need = (o ? o->len : 0) + len;

    if (o && o->head + need <= o->cap) {
        memcpy(o->data + o->head + o->len, data, len);
        o->len += len;
        return 0;
    }
    if (o && need <= o->cap) {
        memmove(o->data, o->data + o->head, o->len);
        o->head = 0;
    } else {
        size_t cap = o ? o->cap * 2 : OUT_MIN;
        size_t hw = c->w->cfg->high_water;
        if (cap > hw)
            cap = hw;
        if (cap < need)
            cap = need;
        if (o && o->head) {
            memmove(o->data, o->data + o->head, o->len);
            o->head = 0;
        }
        struct conn_out *n = realloc(o, sizeof *n + cap);
        if (n == NULL)
            return -1;
        if (o == NULL)
            n->head = n->len = 0;
        n->cap = cap;
        c->out = o = n;
    }
    memcpy(o->data + o->len, data, len);
    o->len += len;
    return 0;
}

/* Writes what it can at once and queues the rest, so the usual echo is one
 * read and one write with no copy and no epoll_ctl. */
int conn_send(conn *c, const char *data, size_t len) {
    struct worker *w = c->w;

    if (c->flags & (CONN_CLOSING | CONN_DEAD | CONN_SHUTWR))
        return -1;
    if (c->out == NULL) {
        ssize_t n = write(c->fd, data, len);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_fail(c, errno);
                return -1;
            }
            n = 0;
        }
        stat_add(&w->stats->bytes_out, n);
        stat_add(&c->ls->l.stats->bytes_out, n);
        c->bytes_out += n;
        if ((size_t)n == len)
            return 0;
        data += n;
        len -= n;
    }
    if (out_append(c, data, len) < 0) {
        conn_fail(c, ENOMEM);
        return -1;
    }
    if (!(c->flags & CONN_WRITING)) {
        if (ev_add(w->loop, c->fd, EV_WRITABLE | EV_EDGE, conn_write_proc,
                   c) < 0) {
            conn_fail(c, errno);
            return -1;
        }
        c->flags |= CONN_WRITING;
    }
    if (c->out->len >= w->cfg->high_water && !(c->flags & CONN_PAUSED)) {
        c->flags |= CONN_PAUSED;
        conn_update_read(c);
    }
    return 0;
}

void conn_note_fault(conn *c) {
    stat_add(&c->w->stats->faults, 1);
}

void conn_shutdown_send(conn *c) {
    if (c->flags & (CONN_CLOSING | CONN_DEAD | CONN_SHUTWR))
        return;
    c->flags |= CONN_SHUTWR;
    if (c->out == NULL)
        shutdown(c->fd, SHUT_WR);
}

void conn_reset(conn *c) {
    if (c->flags & CONN_DEAD)
        return;
    net_abort(c->fd);
    conn_kill(c, R_CLOSED);     /* the close in worker_after sends the RST */
}

static int close_reason(const conn *c) {
    return (c->flags & CONN_EOF) ? R_EOF : R_CLOSED;
}

void conn_close(conn *c) {
    if (c->flags & (CONN_CLOSING | CONN_DEAD))
        return;
    c->flags |= CONN_CLOSING;
    if (c->out == NULL) {
        conn_kill(c, close_reason(c));  /* close() leaves epoll: no DEL */
        return;
    }
    conn_update_read(c);
}

/* The queue fell to low water after passing high water: read again. */
static void conn_drained(conn *c) {
    c->flags &= ~CONN_PAUSED;
    conn_update_read(c);
    if (c->w->h && !(c->flags & CONN_DEAD))
        handler_on_drain(c->w->h, c);
}

static void conn_write_proc(ev_loop *loop, int fd, void *ud, int mask) {
    conn *c = ud;
    struct conn_out *o = c->out;
    ssize_t n;

    (void)mask;
    if (o == NULL)
        return;
    do {
        n = write(fd, o->data + o->head, o->len);
    } while (n < 0 && errno == EINTR);  /* no edge would come again */
    if (n < 0) {
        if (errno != EAGAIN)
            conn_fail(c, errno);
        return;
    }
    stat_add(&c->w->stats->bytes_out, n);
    stat_add(&c->ls->l.stats->bytes_out, n);
    c->bytes_out += n;
    c->last_active_ms = ev_time_ms(loop);
    o->head += n;
    o->len -= n;
    if (o->len == 0) {
        free(o);
        c->out = NULL;
        ev_del(loop, fd, EV_WRITABLE);
        c->flags &= ~CONN_WRITING;
    }
    if (c->out == NULL && (c->flags & CONN_SHUTWR))
        shutdown(fd, SHUT_WR);
    if ((c->flags & CONN_PAUSED) &&
        conn_pending(c) <= c->w->cfg->low_water)
        conn_drained(c);
    if (c->out == NULL && (c->flags & CONN_CLOSING))
        conn_kill(c, close_reason(c));
}

static void conn_eof(conn *c) {
    c->flags |= CONN_EOF;
    if (c->w->h == NULL && c->out == NULL) {
        conn_kill(c, close_reason(c));  /* close() leaves epoll: no DEL */
        return;
    }
    conn_update_read(c);
    if (c->w->h)
        handler_on_eof(c->w->h, c);
    else
        conn_close(c);
}

/* The hot path: one read into the worker's scratch buffer, straight back
 * out (C echo) or to the handler. With no handler the read is capped so
 * the queue never passes --high-water. Connections are edge-triggered (a
 * level-triggered epoll_wait polls again every fd it reported the time
 * before, ~2 % of the CPU of a short connection): a full read may have
 * left bytes, and a short one the end of file after EV_HUP, which no new
 * edge will report: ev_again. */
static void conn_read_proc(ev_loop *loop, int fd, void *ud, int mask) {
    conn *c = ud;
    struct worker *w = c->w;
    size_t room = w->scratch_len;
    ssize_t n;

    if (mask & EV_HUP)
        c->flags |= CONN_HUP;
    if (w->h == NULL) {
        size_t left = w->cfg->high_water - conn_pending(c);
        if (left < room)
            room = left;
    }
    if (room == 0)
        return;
    n = read(fd, w->scratch, room);
    if (n > 0) {
        stat_add(&w->stats->bytes_in, n);
        stat_add(&c->ls->l.stats->bytes_in, n);
        c->bytes_in += n;
        c->last_active_ms = ev_time_ms(loop);
        if (w->h)
            handler_on_data(w->h, c, w->scratch, n);
        else
            conn_send(c, w->scratch, n);
        if ((size_t)n == room || (c->flags & CONN_HUP))
            ev_again(loop, fd);
    } else if (n == 0) {
        conn_eof(c);
    } else if (errno == EINTR) {
        ev_again(loop, fd);
    } else if (errno != EAGAIN) {
        conn_fail(c, errno);
    }
}

/* --- connection lifetime ----------------------------------------------- */

static void conn_unlink(conn **head, conn *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void conn_link(conn **head, conn *c) {
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

/* Leaves the loop now; the fd is closed and c freed after the iteration
 * (worker_after), so no callback below us touches freed memory. */
static void conn_kill(conn *c, int reason) {
    struct worker *w = c->w;

    if (c->flags & CONN_DEAD)
        return;
    if (c->proxy_timer) {
        ev_timer_del(w->loop, c->proxy_timer);
        c->proxy_timer = 0;
    }
    c->flags |= CONN_DEAD | (unsigned)reason << CONN_REASON_SHIFT;
    ev_forget(w->loop, c->fd);          /* closed by worker_after */
    c->flags &= ~(CONN_READING | CONN_WRITING);
    conn_unlink(&w->conns, c);
    conn_link(&w->dead, c);
}

/* A conn is bigger than malloc's fast bins take, and a loop iteration
 * frees more of them than its per-thread cache keeps: each calloc then
 * searched the bins (a third of the user time of a short connection). So
 * the worker keeps the last CONN_SPARE_MAX freed ones, still in cache. */
static conn *conn_alloc(struct worker *w) {
    conn *c = w->spare;

    if (c == NULL)
        return calloc(1, sizeof *c);
    w->spare = c->next;
    w->nspare--;
    memset(c, 0, sizeof *c);
    return c;
}

static void conn_release(struct worker *w, conn *c) {
    if (w->nspare >= CONN_SPARE_MAX) {
        free(c);
        return;
    }
    c->next = w->spare;
    w->spare = c;
    w->nspare++;
}

static void conn_free(struct worker *w, conn *c) {
    const char *reason = reasons[c->flags >> CONN_REASON_SHIFT];

    if (w->h && !(c->flags & CONN_PROXY))
        reason = handler_on_close(w->h, c, reason);
    if (w->cfg->access_log)
        log_conn(LOG_NOTICE, c->id, "access: id=%llu peer=%s listener=%s "
                 "worker=%d in=%llu out=%llu ms=%lld reason=%s",
                 (unsigned long long)c->id, conn_peer(c), c->listener, w->slot,
                 (unsigned long long)c->bytes_in,
                 (unsigned long long)c->bytes_out,
                 ev_time_ms(w->loop) - c->opened_ms, reason);
    stat_sub(&c->ls->l.stats->conns_open, 1);
    close(c->fd);
    free(c->out);
    free(c->pin);
    conn_release(w, c);
    stat_add(&w->stats->closed, 1);
    stat_sub(&w->stats->conns_open, 1);
}

/* After every iteration: free what was closed; stop once drained. */
static void worker_after(ev_loop *loop, void *ud) {
    struct worker *w = ud;
    conn *c;

    while ((c = w->dead) != NULL) {
        conn_unlink(&w->dead, c);
        conn_free(w, c);
    }
    if (w->h)                   /* one store an iteration, for stats() */
        stat_set(&w->stats->lua_mem, handler_mem(w->h));
    if (sup_drain_done(&w->drain))
        ev_stop(loop);
}

static int reject_log_due(struct worker *w);

/* --- the PROXY header (,proxy listeners) ------------------------------- */

/* Counts a refused header and closes its connection: nothing else sees
 * it (the handler has not been told of it). */
static void proxy_refuse(conn *c, int rc, const char *why) {
    struct listener_stats *st = c->ls->l.stats;

    switch (rc) {
    case PROXY_MISSING: stat_add(&st->proxy_missing, 1); break;
    case PROXY_MALFORMED: stat_add(&st->proxy_malformed, 1); break;
    case PROXY_OVERSIZED: stat_add(&st->proxy_oversized, 1); break;
    case PROXY_TRUNCATED: stat_add(&st->proxy_truncated, 1); break;
    default: stat_add(&st->proxy_timeout, 1); break;   /* PROXY_MORE */
    }
    if (reject_log_due(c->w))
        log_warn("%s: closing %s: PROXY header: %s", c->listener, conn_peer(c),
                 why);
    conn_kill(c, R_PROXY);
}

static long proxy_timeout_proc(ev_loop *loop, long long id, void *ud) {
    conn *c = ud;

    (void)loop;
    (void)id;
    c->proxy_timer = 0;
    proxy_refuse(c, PROXY_MORE, "none whole within --proxy-timeout");
    return EV_NOMORE;
}

/* The header is in: the client is who it names (LOCAL, UNKNOWN: the
 * socket's peer), and the connection starts for the handler. */
static void proxy_accept(conn *c, const struct proxy_hdr *h) {
    struct listener_stats *st = c->ls->l.stats;

    if (h->local)
        stat_add(&st->proxy_local, 1);
    else if (net_format_addr((const struct sockaddr *)&h->src, c->peer.name,
                             sizeof c->peer.name) == 0)
        stat_add(&st->proxy_ok, 1);
    free(c->pin);
    c->pin = NULL;
    ev_timer_del(c->w->loop, c->proxy_timer);
    c->proxy_timer = 0;
    c->flags &= ~CONN_PROXY;
    /* the same registration, the usual proc (no epoll_ctl); what followed
     * the header is still in the socket: proxy_read_proc reads it */
    ev_add(c->w->loop, c->fd, EV_READABLE | EV_EDGE, conn_read_proc, c);
    if (c->w->h)
        handler_on_open(c->w->h, c);
}

static void proxy_read_proc(ev_loop *loop, int fd, void *ud, int mask) {
    conn *c = ud;
    struct proxy_hdr h;
    const char *why = NULL;
    int rc;

    rc = proxy_read(c->pin, fd, &h, &why);
    if (rc == PROXY_DONE) {
        proxy_accept(c, &h);
        if ((c->flags & (CONN_READING | CONN_DEAD)) == CONN_READING)
            conn_read_proc(loop, fd, c, mask);
    } else if (rc < 0) {
        proxy_refuse(c, rc, why);
    }
}

/* A connection of a ,proxy listener waits for its header first. 0 or -1. */
static int proxy_start(struct worker *w, conn *c) {
    c->pin = calloc(1, sizeof *c->pin);
    if (c->pin == NULL)
        return -1;
    c->proxy_timer = ev_timer_add(w->loop,
                                  (long)(w->cfg->proxy_timeout * 1000 + 0.5),
                                  proxy_timeout_proc, c);
    if (c->proxy_timer < 0) {
        c->proxy_timer = 0;
        return -1;
    }
    c->flags |= CONN_PROXY;
    return 0;
}

static void conn_create(struct worker_lsock *ls, int fd,
                        struct net_peer *peer) {
    struct worker *w = ls->w;
    conn *c = conn_alloc(w);
    ev_file_proc *proc = ls->l.proxy ? proxy_read_proc : conn_read_proc;

    if (c == NULL || ev_add(w->loop, fd, EV_READABLE | EV_EDGE, proc, c) < 0 ||
        (ls->l.proxy && proxy_start(w, c) < 0)) {
        log_warn("connection from %s dropped: %s", net_peer_name(peer),
                 strerror(errno));
        stat_add(&w->stats->socket_errors, 1);
        if (c && c->proxy_timer)
            ev_timer_del(w->loop, c->proxy_timer);
        if (c)
            ev_forget(w->loop, fd);
        free(c ? c->pin : NULL);
        free(c);
        close(fd);
        return;
    }
    c->fd = fd;
    c->id = ++w->next_id;
    c->peer = *peer;
    c->listener = ls->l.name;
    c->ls = ls;
    c->w = w;
    c->flags |= CONN_READING;
    c->last_active_ms = ev_time_ms(w->loop);
    c->opened_ms = c->last_active_ms;
    conn_link(&w->conns, c);
    stat_add(&w->stats->accepted, 1);
    stat_add(&w->stats->conns_open, 1);
    stat_add(&ls->l.stats->accepted, 1);
    stat_add(&ls->l.stats->conns_open, 1);
    if (w->h && !(c->flags & CONN_PROXY))
        handler_on_open(w->h, c);
    /* the client spoke first (RFC 862; a balancer, its PROXY header): its
     * bytes are often there already, and reading now saves an epoll_wait
     * per connection */
    if ((c->flags & (CONN_READING | CONN_DEAD)) == CONN_READING)
        proc(w->loop, fd, c, EV_READABLE);
}

/* --- accepting --------------------------------------------------------- */

static void accept_proc(ev_loop *loop, int fd, void *ud, int mask);

static int accept_start(struct worker_lsock *ls) {
    int mask = EV_READABLE | EV_EDGE | (ls->l.shared ? EV_EXCLUSIVE : 0);

    if (ls->l.fd < 0)
        return 0;
    return ev_add(ls->w->loop, ls->l.fd, mask, accept_proc, ls);
}

static long accept_resume(ev_loop *loop, long long id, void *ud) {
    struct worker_lsock *ls = ud;

    (void)loop;
    (void)id;
    if (accept_start(ls) < 0)
        log_error("worker %d: cannot accept on %s: %s", ls->w->slot,
                  ls->l.name, strerror(errno));
    return EV_NOMORE;
}

/* Stops accepting for a moment: nothing could be accepted, and trying
 * again at once would spin. Added again, the socket is reported at once
 * if connections wait. */
static void accept_pause(struct worker_lsock *ls, int err) {
    log_warn("accept on %s: %s (pausing %d ms)", ls->l.name, strerror(err),
             ACCEPT_PAUSE_MS);
    ev_del(ls->w->loop, ls->l.fd, EV_READABLE | EV_EXCLUSIVE);
    ev_timer_add(ls->w->loop, ACCEPT_PAUSE_MS, accept_resume, ls);
}

/* One line a second at most for conditions that can repeat per connection. */
static int reject_log_due(struct worker *w) {
    long long now = ev_time_ms(w->loop);

    if (now - w->last_reject_log < 1000)
        return 0;
    w->last_reject_log = now;
    return 1;
}

/* Out of descriptors: give back the spare, accept and close the client
 * (it sees a close, not a hang), take the spare again [nginx, libuv].
 * 0 if the caller can go on accepting, 1 if the queue is empty (EMFILE
 * comes before EAGAIN: nothing was waiting), -1 if it must pause (errno). */
static int accept_shed(struct worker_lsock *ls, int err) {
    struct worker *w = ls->w;
    int fd, accept_err;

    if (w->spare_fd < 0)
        return -1;
    close(w->spare_fd);
    fd = accept4(ls->l.fd, NULL, NULL, SOCK_CLOEXEC);
    accept_err = errno;
    if (fd >= 0) {
        close(fd);
        stat_add(&w->stats->rejected, 1);
    }
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && reject_log_due(w))
        log_warn("accept: %s: refusing connections", strerror(err));
    if (fd >= 0)
        return 0;
    if (accept_err == EAGAIN || accept_err == EWOULDBLOCK)
        return 1;
    errno = accept_err;
    return -1;
}

static void accept_proc(ev_loop *loop, int lfd, void *ud, int mask) {
    struct worker_lsock *ls = ud;
    struct worker *w = ls->w;
    struct net_peer peer;

    (void)mask;
    for (int i = 0; i < ACCEPT_MAX; i++) {
        int fd = net_accept_peer(lfd, &peer, SOCK_NONBLOCK);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                int shed = accept_shed(ls, errno);
                if (shed == 0)
                    continue;
                if (shed > 0)
                    return;         /* nothing left to accept */
            }
            accept_pause(ls, errno);
            return;
        }
        if (stat_get(&w->stats->conns_open) >=
            (uint64_t)w->cfg->max_conns) {
            close(fd);
            stat_add(&w->stats->rejected, 1);
            if (reject_log_due(w))
                log_warn("max-conns %d reached: refusing %s",
                         w->cfg->max_conns, net_peer_name(&peer));
            continue;
        }
        conn_create(ls, fd, &peer);
    }
    ev_again(loop, lfd);        /* edge-triggered: the rest raise no edge */
}

/* --- timers and signals ------------------------------------------------ */

/* Closes connections silent for --idle-timeout: one sweep every so often
 * instead of a timer per connection (no timer syscall per message). */
static long sweep_proc(ev_loop *loop, long long id, void *ud) {
    struct worker *w = ud;
    long long idle = (long long)(w->cfg->idle_timeout * 1000);
    long long now = ev_now_ms();
    conn *c, *next;

    (void)loop;
    (void)id;
    for (c = w->conns; c != NULL; c = next) {
        next = c->next;
        if (now - c->last_active_ms >= idle) {
            stat_add(&w->stats->timeouts, 1);
            log_debug("conn %llu (%s): idle timeout",
                      (unsigned long long)c->id, conn_peer(c));
            conn_kill(c, R_TIMEOUT);
        }
    }
    return idle / 4 < 10 ? 10 : idle / 4 > 1000 ? 1000 : idle / 4;
}

static void kill_all(struct worker *w, int reason) {
    while (w->conns != NULL)
        conn_kill(w->conns, reason);
}

/* Stops accepting and echoing datagrams: closes every listener. */
static void close_listeners(struct worker *w) {
    for (int i = 0; i < w->nls; i++) {
        struct worker_lsock *ls = &w->ls[i];
        if (ls->l.fd < 0)
            continue;
        if (ls->udp)
            udp_echo_stop(ls->udp);
        else
            ev_del(w->loop, ls->l.fd, EV_READABLE | EV_EXCLUSIVE);
        ls->udp = NULL;
        close(ls->l.fd);
        ls->l.fd = -1;
    }
}

static void drain_begin(void *ud) {
    close_listeners(ud);
}

static int drain_busy(void *ud) {
    return ((struct worker *)ud)->conns != NULL;
}

static void drain_end(void *ud, int deadline) {
    struct worker *w = ud;

    if (deadline && w->conns != NULL)
        log_info("drain deadline: closing %llu connections",
                 (unsigned long long)stat_get(&w->stats->conns_open));
    kill_all(w, R_SHUTDOWN);
}

/* First SIGTERM: stop accepting, let connections finish until the drain
 * deadline. A second one closes everything now. */
static const struct sup_drain_ops drain_ops = {
    drain_begin, drain_busy, drain_end
};

void worker_note_reload(struct worker *w, int rc) {
    stat_add(rc == 0 ? &w->stats->reloads : &w->stats->reload_failures, 1);
    if (w->h)
        stat_set(&w->stats->handler_version, (uint64_t)handler_version(w->h));
}

static void worker_reload(struct worker *w) {
    if (w->h == NULL) {
        log_debug("SIGHUP: no handler to reload");
        return;
    }
    /* NULL: the current file, which handler() on the control socket may
     * have changed since the start */
    worker_note_reload(w, handler_reload_logged(w->h, "SIGHUP"));
}

static void worker_signal(void *ud, int signo) {
    struct worker *w = ud;

    if (signo == SIGTERM)
        sup_drain_stop(&w->drain, (long)(w->cfg->drain_timeout * 1000));
    else if (signo == SIGHUP)
        worker_reload(w);
    else if (signo == SIGUSR1)
        log_reopen();
}

/* SIGTERM, SIGHUP and SIGUSR1 arrive through a signalfd; SIGINT is the
 * master's (a terminal's ^C reaches the whole group: the master relays it
 * once). */
static int worker_signals(struct worker *w) {
    static const int sigs[] = {SIGTERM, SIGHUP, SIGUSR1};

    signal(SIGINT, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);           /* upgrades are the master's */
    w->sigfd = sup_signals(w->loop, sigs, (int)(sizeof sigs / sizeof *sigs), 1,
                           worker_signal, w);
    return w->sigfd < 0 ? -1 : 0;
}

/* --- worker ------------------------------------------------------------ */

/* UDP listeners echo in C, or run the handler's datagram function in the
 * worker's state (rt_dgram.c). */
static int start_udp(struct worker_lsock *ls, const struct worker_start *ws) {
    struct udp_opts o = {
        .name = ls->l.name, .rate = ls->w->cfg->udp_rate,
        .own_ports = ws->udp_ports, .nown = ws->nudp_ports,
        .exclusive = ws->exclusive, .stats = &ls->l.stats->udp,
        .handler = ls->w->h ? rtdgram_reply : NULL,
        .handler_ud = ls->w->h ? handler_state(ls->w->h) : NULL};

    ls->udp = udp_echo_start(ls->w->loop, ls->l.fd, &o);
    return ls->udp ? 0 : -1;
}

/* Takes over the master's sockets: accepting on each TCP one, echoing on
 * each UDP one. 0 or -1 (logged). */
static int open_listeners(struct worker *w, const struct worker_start *ws) {
    w->ls = calloc(ws->nlisten, sizeof *w->ls);
    if (w->ls == NULL) {
        log_error("worker %d: out of memory", w->slot);
        return -1;
    }
    w->nls = ws->nlisten;
    for (int i = 0; i < w->nls; i++) {
        struct worker_lsock *ls = &w->ls[i];
        ls->w = w;
        ls->l = ws->listen[i];
    }
    for (int i = 0; i < w->nls; i++) {
        struct worker_lsock *ls = &w->ls[i];
        int rc = ls->l.kind == EH_LISTEN_UDP ? start_udp(ls, ws)
                                             : accept_start(ls);
        if (rc < 0) {
            log_error("worker %d: %s: %s", w->slot, ls->l.name,
                      strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int worker_init(struct worker *w, const struct worker_start *ws) {
    w->loop = ev_create(1024);
    w->scratch_len = SCRATCH_LEN;
    w->scratch = malloc(w->scratch_len);
    sup_drain_init(&w->drain, w->loop, &drain_ops, w);
    if (w->loop)
        ev_set_busy_poll(w->loop, w->cfg->busy_poll_us);
    if (w->loop == NULL || w->scratch == NULL || worker_signals(w) < 0) {
        log_error("worker %d: %s", w->slot, strerror(errno));
        return 1;
    }
    if (ws->handler && (w->h = handler_create(w->loop, w->cfg,
                                              ws->handler)) == NULL) {
        log_error("worker %d: %s", w->slot, strerror(errno));
        return 1;
    }
    stat_set(&w->stats->lua_mem, w->h ? handler_mem(w->h) : 0);
    lpubsub_count_lost(&w->stats->pubsub_lost);
    w->exclusive = ws->exclusive;
    if (open_listeners(w, ws) < 0)
        return 1;
    if (ws->ctl_fd >= 0 && control_worker_attach(w, w->loop, ws->ctl_fd) < 0)
        log_warn("worker %d: control channel: %s", w->slot, strerror(errno));
    w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (w->cfg->idle_timeout > 0)
        w->sweep_timer = ev_timer_add(w->loop, 10, sweep_proc, w);
    ev_set_after(w->loop, worker_after, w);
    return 0;
}

static void worker_fini(struct worker *w) {
    kill_all(w, R_SHUTDOWN);
    if (w->loop)
        worker_after(w->loop, w);
    if (w->h)
        handler_destroy(w->h);
    close_listeners(w);
    free(w->ls);
    if (w->spare_fd >= 0)
        close(w->spare_fd);
    if (w->sigfd >= 0)
        close(w->sigfd);
    ev_destroy(w->loop);
    free(w->scratch);
    while (w->spare) {
        conn *c = w->spare;
        w->spare = c->next;
        free(c);
    }
}

int worker_main(const struct eh_config *cfg, const struct worker_start *ws) {
    struct worker w;
    int rc;

    memset(&w, 0, sizeof w);
    w.slot = ws->slot;
    log_set_worker(w.slot);
    w.cfg = cfg;
    w.stats = ws->stats;
    w.spare_fd = w.sigfd = -1;
    w.next_id = (uint64_t)ws->gen << 40;
    rc = worker_init(&w, ws);
    if (ws->ready_fd >= 0)
        close(ws->ready_fd);
    if (rc == 0) {
        log_debug("worker %d ready", w.slot);
        ev_run(w.loop);
    }
    worker_fini(&w);
    return rc;
}
