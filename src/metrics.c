/* --metrics HOST:PORT: the master serves the statistics (src/stats.h) as
 * Prometheus text exposition on HTTP GET /metrics, non-blocking on its own
 * loop: a few scrapers at once, bounded requests, short deadlines. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "net.h"
#include "stats.h"

#define METRICS_CONNS_MAX 4         /* scrapers at once; more get a 503 */
#define METRICS_REQ_MAX 4096        /* a request's line and headers */
#define METRICS_METHOD_MAX 16       /* "OPTIONS" fits, garbage does not */
#define METRICS_REQUEST_MS 2000     /* the whole request arrives within */
#define METRICS_RESPONSE_MS 10000   /* the response is read within */
#define METRICS_LINGER_MS 1000      /* then what the client sends is read
                                       and dropped, so the close does not
                                       reset the response away */
#define METRICS_BACKLOG 16
#define METRICS_ACCEPT_MAX 16       /* accepts per wake-up */
#define METRICS_PAUSE_MS 100        /* no descriptor left: wait */

enum { MX_READING, MX_WRITING, MX_LINGERING };

struct mx_conn {
    struct metrics *mx;
    int fd;
    int state;
    long long timer;
    char *out;                  /* the response, out[pos .. len) to go */
    size_t outlen, outpos;
    size_t reqlen;
    char req[METRICS_REQ_MAX];
    struct mx_conn *prev, *next;
};

struct metrics {
    ev_loop *loop;
    int fd;
    const struct server_stats *st;
    struct mx_conn *conns;
    int nconns;
};

/* --- the exposition ------------------------------------------------------ */

struct mx_buf {
    char *p;
    size_t len, cap;
    int failed;                 /* out of memory: the text is cut */
};

static void mx_printf(struct mx_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Grows b to hold need more bytes (and a NUL). 0, or -1: b->failed. */
static int mx_reserve(struct mx_buf *b, size_t need) {
    size_t cap = b->cap ? b->cap : 4096;
    char *p;

    while (cap < b->len + need + 1)
        cap *= 2;
    if (cap == b->cap)
        return 0;
    if ((p = realloc(b->p, cap)) == NULL) {
        b->failed = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void mx_printf(struct mx_buf *b, const char *fmt, ...) {
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->failed || n < 0 || mx_reserve(b, (size_t)n) < 0) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += n;
}

/* A figure of every worker slot, total and per worker. */
struct mx_family {
    const char *name;           /* after echohost_ and echohost_worker_ */
    const char *type;
    const char *help;
    size_t off;                 /* the stat_t in struct worker_stats */
};

#define MX_OFF(field) offsetof(struct worker_stats, field)

static const struct mx_family mx_families[] = {
    {"connections_open", "gauge", "Connections open now.",
     MX_OFF(conns_open)},
    {"connections_accepted_total", "counter", "Connections accepted.",
     MX_OFF(accepted)},
    {"connections_closed_total", "counter",
     "Accepted connections that ended (those of a worker that died too).",
     MX_OFF(closed)},
    {"connections_rejected_total", "counter",
     "Connections closed at once: --max-conns reached, or no descriptor.",
     MX_OFF(rejected)},
    {"received_bytes_total", "counter", "Bytes read from clients.",
     MX_OFF(bytes_in)},
    {"sent_bytes_total", "counter", "Bytes written to clients.",
     MX_OFF(bytes_out)},
    {"pubsub_lost_total", "counter",
     "Pubsub messages lost: the worker read the ring too slowly.",
     MX_OFF(pubsub_lost)},
    {NULL, NULL, NULL, 0}
};

/* How connections ended badly: the label kind of connection_errors. */
static const struct {
    const char *kind;
    size_t off;
} mx_kinds[] = {
    {"socket", MX_OFF(socket_errors)},  /* a socket error, not a reset */
    {"reset", MX_OFF(resets)},          /* ECONNRESET, EPIPE */
    {"fault", MX_OFF(faults)},          /* a handler error */
    {"timeout", MX_OFF(timeouts)},      /* --idle-timeout */
    {NULL, 0}
};

/* Figures of the worker slots only (the master's are beside them). */
static const struct mx_family mx_worker_families[] = {
    {"handler_version", "gauge",
     "Version of the handler the worker runs (0: C echo).",
     MX_OFF(handler_version)},
    {"handler_reloads_total", "counter",
     "Handler reloads that succeeded in the worker.", MX_OFF(reloads)},
    {"handler_reload_failures_total", "counter",
     "Handler reloads that failed in the worker (the old one stayed).",
     MX_OFF(reload_failures)},
    {"lua_memory_bytes", "gauge", "Bytes the worker's handler state holds.",
     MX_OFF(lua_mem)},
    {NULL, NULL, NULL, 0}
};

static uint64_t mx_get(const struct worker_stats *w, size_t off) {
    return stat_get((const stat_t *)(const void *)((const char *)w + off));
}

static uint64_t mx_sum(const struct server_stats *st, size_t off) {
    uint64_t sum = 0;

    for (int i = 0; i < st->nworkers; i++)
        sum += mx_get(&st->workers[i], off);
    return sum;
}

static void mx_head(struct mx_buf *b, const char *prefix,
                    const struct mx_family *f, const char *who) {
    mx_printf(b, "# HELP %s%s %s%s\n# TYPE %s%s %s\n", prefix, f->name,
              f->help, who, prefix, f->name, f->type);
}

/* A family in total (echohost_NAME) and per worker slot
 * (echohost_worker_NAME{worker="N"}): the sum of the slots is the total. */
static void mx_family(struct mx_buf *b, const struct server_stats *st,
                      const struct mx_family *f) {
    mx_head(b, "echohost_", f, " All workers.");
    mx_printf(b, "echohost_%s %llu\n", f->name,
              (unsigned long long)mx_sum(st, f->off));
    mx_head(b, "echohost_worker_", f, " Per worker slot.");
    for (int i = 0; i < st->nworkers; i++)
        mx_printf(b, "echohost_worker_%s{worker=\"%d\"} %llu\n", f->name, i,
                  (unsigned long long)mx_get(&st->workers[i], f->off));
}

static void mx_errors_head(struct mx_buf *b, const char *prefix,
                           const char *who) {
    mx_printf(b, "# HELP %sconnection_errors_total Connections ended by an "
              "error, by kind: socket (an error other than a reset), reset, "
              "fault (a handler error), timeout (--idle-timeout).%s\n"
              "# TYPE %sconnection_errors_total counter\n", prefix, who,
              prefix);
}

static void mx_errors(struct mx_buf *b, const struct server_stats *st) {
    mx_errors_head(b, "echohost_", " All workers.");
    for (int k = 0; mx_kinds[k].kind; k++)
        mx_printf(b, "echohost_connection_errors_total{kind=\"%s\"} %llu\n",
                  mx_kinds[k].kind,
                  (unsigned long long)mx_sum(st, mx_kinds[k].off));
    mx_errors_head(b, "echohost_worker_", " Per worker slot.");
    for (int i = 0; i < st->nworkers; i++)
        for (int k = 0; mx_kinds[k].kind; k++)
            mx_printf(b, "echohost_worker_connection_errors_total"
                      "{worker=\"%d\",kind=\"%s\"} %llu\n", i,
                      mx_kinds[k].kind, (unsigned long long)
                      mx_get(&st->workers[i], mx_kinds[k].off));
}

/* The master's own figures. */
static void mx_server(struct mx_buf *b, const struct server_stats *st) {
    int up = 0;

    for (int i = 0; i < st->nworkers; i++)
        up += stat_get(&st->workers[i].pid) != 0;
    mx_printf(b, "# HELP echohost_workers Worker processes running now.\n"
              "# TYPE echohost_workers gauge\nechohost_workers %d\n", up);
    mx_printf(b, "# HELP echohost_workers_started_total Worker processes "
              "started (restarts included).\n"
              "# TYPE echohost_workers_started_total counter\n"
              "echohost_workers_started_total %llu\n",
              (unsigned long long)st->workers_started);
    mx_printf(b, "# HELP echohost_handler_version Version of the handler "
              "the master holds, what a worker starts on (0: C echo).\n"
              "# TYPE echohost_handler_version gauge\n"
              "echohost_handler_version %d\n", st->handler_version);
    mx_printf(b, "# HELP echohost_handler_reloads_total Handler reloads "
              "the master made (SIGHUP, --watch, handler(), reload()).\n"
              "# TYPE echohost_handler_reloads_total counter\n"
              "echohost_handler_reloads_total %llu\n",
              (unsigned long long)st->reloads);
    mx_printf(b, "# HELP echohost_handler_reload_failures_total Handler "
              "reloads the master refused (the file did not load).\n"
              "# TYPE echohost_handler_reload_failures_total counter\n"
              "echohost_handler_reload_failures_total %llu\n",
              (unsigned long long)st->reload_failures);
}

static void mx_workers(struct mx_buf *b, const struct server_stats *st) {
    long long now = ev_now_ms();

    mx_printf(b, "# HELP echohost_worker_up 1 while the slot has a worker "
              "process.\n# TYPE echohost_worker_up gauge\n");
    for (int i = 0; i < st->nworkers; i++)
        mx_printf(b, "echohost_worker_up{worker=\"%d\"} %d\n", i,
                  stat_get(&st->workers[i].pid) != 0);
    mx_printf(b, "# HELP echohost_worker_uptime_seconds How long the "
              "slot's worker has run (0: none now).\n"
              "# TYPE echohost_worker_uptime_seconds gauge\n");
    for (int i = 0; i < st->nworkers; i++) {
        const struct worker_stats *w = &st->workers[i];
        double secs = stat_get(&w->pid) == 0 ? 0 :
            (now - (long long)stat_get(&w->started_ms)) / 1000.0;
        mx_printf(b, "echohost_worker_uptime_seconds{worker=\"%d\"} %.3f\n",
                  i, secs < 0 ? 0 : secs);
    }
    for (int f = 0; mx_worker_families[f].name; f++) {
        mx_head(b, "echohost_worker_", &mx_worker_families[f], "");
        for (int i = 0; i < st->nworkers; i++)
            mx_printf(b, "echohost_worker_%s{worker=\"%d\"} %llu\n",
                      mx_worker_families[f].name, i, (unsigned long long)
                      mx_get(&st->workers[i], mx_worker_families[f].off));
    }
}

/* The text of GET /metrics, read now. */
static void mx_render(struct mx_buf *b, const struct server_stats *st) {
    for (int f = 0; mx_families[f].name; f++)
        mx_family(b, st, &mx_families[f]);
    mx_errors(b, st);
    mx_server(b, st);
    mx_workers(b, st);
}

/* --- connections --------------------------------------------------------- */

static void mx_free(struct mx_conn *c) {
    struct metrics *mx = c->mx;

    if (c->prev)
        c->prev->next = c->next;
    else
        mx->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    mx->nconns--;
    if (c->timer)
        ev_timer_del(mx->loop, c->timer);
    ev_del(mx->loop, c->fd, EV_READABLE | EV_WRITABLE);
    close(c->fd);
    free(c->out);
    free(c);
}

static long mx_timeout_proc(ev_loop *loop, long long id, void *ud);

static void mx_deadline(struct mx_conn *c, long ms) {
    if (c->timer)
        ev_timer_del(c->mx->loop, c->timer);
    c->timer = ev_timer_add(c->mx->loop, ms, mx_timeout_proc, c);
    if (c->timer < 0)
        c->timer = 0;
}

/* The response is out: shut our side, read what comes until the client
 * closes or the linger ends. */
static void mx_sent(struct mx_conn *c) {
    ev_del(c->mx->loop, c->fd, EV_WRITABLE);
    shutdown(c->fd, SHUT_WR);
    if (!(ev_mask(c->mx->loop, c->fd) & EV_READABLE)) {
        mx_free(c);                     /* the client closed already */
        return;
    }
    c->state = MX_LINGERING;
    mx_deadline(c, METRICS_LINGER_MS);
}

/* Writes what the socket takes: 1 while some is left (c waits for
 * EV_WRITABLE), else 0 (c is lingering or freed). */
static int mx_flush(struct mx_conn *c) {
    while (c->outpos < c->outlen) {
        ssize_t n = write(c->fd, c->out + c->outpos, c->outlen - c->outpos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 1;
        if (n <= 0) {
            mx_free(c);
            return 0;
        }
        c->outpos += n;
    }
    mx_sent(c);
    return 0;
}

static void mx_writable(ev_loop *loop, int fd, void *ud, int mask) {
    (void)loop;
    (void)fd;
    (void)mask;
    mx_flush(ud);
}

/* Queues "HTTP/1.1 status" with body (Connection: close) and starts
 * sending it. */
static void mx_respond(struct mx_conn *c, const char *status,
                       const char *headers, const char *type,
                       const char *body, size_t len, int head_only) {
    struct mx_buf b = {NULL, 0, 0, 0};

    mx_printf(&b, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu"
              "\r\nConnection: close\r\n%s\r\n", status, type, len, headers);
    if (!head_only && !b.failed && mx_reserve(&b, len) == 0) {
        memcpy(b.p + b.len, body, len);
        b.len += len;
    }
    if (b.failed) {
        free(b.p);
        mx_free(c);
        return;
    }
    c->out = b.p;
    c->outlen = b.len;
    c->outpos = 0;
    c->state = MX_WRITING;
    mx_deadline(c, METRICS_RESPONSE_MS);
    if (mx_flush(c) &&
        ev_add(c->mx->loop, c->fd, EV_WRITABLE, mx_writable, c) < 0)
        mx_free(c);
}

static void mx_error(struct mx_conn *c, const char *status,
                     const char *headers, const char *text) {
    log_debug("metrics: %s", status);
    mx_respond(c, status, headers, "text/plain; charset=utf-8", text,
               strlen(text), 0);
}

static void mx_metrics(struct mx_conn *c, int head_only) {
    struct mx_buf b = {NULL, 0, 0, 0};

    mx_render(&b, c->mx->st);
    if (b.failed) {
        free(b.p);
        mx_error(c, "500 Internal Server Error", "", "out of memory\n");
        return;
    }
    mx_respond(c, "200 OK", "", "text/plain; version=0.0.4; charset=utf-8",
               b.p, b.len, head_only);
    free(b.p);
}

/* --- requests ------------------------------------------------------------ */

/* 1 while the bytes so far can start a request line ("GET " ...): what
 * cannot is refused at once instead of at the deadline. */
static int mx_plausible(const char *p, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (p[i] == ' ')
            return i > 0;
        if (p[i] < 'A' || p[i] > 'Z' || i >= METRICS_METHOD_MAX)
            return 0;
    }
    return 1;
}

/* The header lines from p up to the blank line: "Name: value" each. */
static int mx_headers_ok(const char *p, const char *end) {
    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        const char *colon;
        if (nl == NULL)
            return 0;
        if (nl == p || (nl == p + 1 && *p == '\r'))
            return 1;                   /* the blank line */
        colon = memchr(p, ':', nl - p);
        if (colon == NULL || colon == p)
            return 0;
        for (const char *q = p; q < colon; q++)
            if (*q <= ' ' || *q >= 127)
                return 0;
        p = nl + 1;
    }
    return 1;
}

/* The request head req[0 .. len) is complete (it ends in a blank line):
 * answers it. */
static void mx_request(struct mx_conn *c, size_t len) {
    char *line = c->req, *nl = memchr(line, '\n', len), *sp1, *sp2;
    size_t llen = nl - line, plen;

    if (llen > 0 && line[llen - 1] == '\r')
        llen--;
    sp1 = memchr(line, ' ', llen);
    sp2 = sp1 ? memchr(sp1 + 1, ' ', llen - (sp1 + 1 - line)) : NULL;
    if (memchr(c->req, '\0', len) || sp2 == NULL || sp2 == sp1 + 1 ||
        !mx_plausible(line, sp1 - line + 1) ||
        line + llen - (sp2 + 1) != 8 ||
        (memcmp(sp2 + 1, "HTTP/1.1", 8) && memcmp(sp2 + 1, "HTTP/1.0", 8)) ||
        !mx_headers_ok(nl + 1, c->req + len)) {
        mx_error(c, "400 Bad Request", "", "bad request\n");
        return;
    }
    *sp1 = *sp2 = '\0';
    if (strcmp(line, "GET") && strcmp(line, "HEAD")) {
        mx_error(c, "405 Method Not Allowed", "Allow: GET, HEAD\r\n",
                 "only GET and HEAD\n");
        return;
    }
    plen = strcspn(sp1 + 1, "?");
    if (plen != 8 || memcmp(sp1 + 1, "/metrics", 8)) {
        mx_error(c, "404 Not Found", "", "not found: try /metrics\n");
        return;
    }
    mx_metrics(c, line[0] == 'H');
}

/* The end of the head: just past the blank line, or 0. */
static size_t mx_head_end(const char *p, size_t len) {
    for (size_t i = 1; i < len; i++)
        if (p[i] == '\n' && (p[i - 1] == '\n' ||
                             (i >= 2 && p[i - 1] == '\r' &&
                              p[i - 2] == '\n')))
            return i + 1;
    return 0;
}

/* What the client sends once its request is in: dropped. */
static void mx_drop_input(struct mx_conn *c) {
    char buf[4096];
    ssize_t n = read(c->fd, buf, sizeof buf);

    if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
        return;
    if (c->state == MX_LINGERING)
        mx_free(c);                     /* the client closed: done */
    else
        ev_del(c->mx->loop, c->fd, EV_READABLE);
}

static void mx_readable(ev_loop *loop, int fd, void *ud, int mask) {
    struct mx_conn *c = ud;
    size_t end;
    ssize_t n;

    (void)loop;
    (void)mask;
    if (c->state != MX_READING) {
        mx_drop_input(c);
        return;
    }
    n = read(fd, c->req + c->reqlen, sizeof c->req - c->reqlen);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        mx_free(c);                     /* gone before asking */
        return;
    }
    c->reqlen += n;
    if ((end = mx_head_end(c->req, c->reqlen)) > 0)
        mx_request(c, end);
    else if (!mx_plausible(c->req, c->reqlen))
        mx_error(c, "400 Bad Request", "", "bad request\n");
    else if (c->reqlen == sizeof c->req)
        mx_error(c, "431 Request Header Fields Too Large", "",
                 "request too large\n");
}

static long mx_timeout_proc(ev_loop *loop, long long id, void *ud) {
    struct mx_conn *c = ud;

    (void)loop;
    (void)id;
    c->timer = 0;
    if (c->state == MX_READING)
        mx_error(c, "408 Request Timeout", "", "request timeout\n");
    else
        mx_free(c);
    return EV_NOMORE;
}

/* Past METRICS_CONNS_MAX: a fresh socket takes a short reply at once. */
static void mx_busy(int fd) {
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n"
        "Connection: close\r\n\r\nbusy\n";

    if (write(fd, busy, sizeof busy - 1) < 0)
        log_debug("metrics: %s", strerror(errno));
    close(fd);
}

static void mx_accept(ev_loop *loop, int lfd, void *ud, int mask);

static long mx_resume_proc(ev_loop *loop, long long id, void *ud) {
    struct metrics *mx = ud;

    (void)id;
    if (ev_add(loop, mx->fd, EV_READABLE, mx_accept, mx) < 0)
        log_error("metrics: epoll: %s", strerror(errno));
    return EV_NOMORE;
}

/* accept failed (out of descriptors...): level-triggered readiness would
 * spin, so stop accepting for a moment. */
static void mx_pause(struct metrics *mx, int err) {
    log_warn("metrics: accept: %s (pausing %d ms)", strerror(err),
             METRICS_PAUSE_MS);
    ev_del(mx->loop, mx->fd, EV_READABLE);
    ev_timer_add(mx->loop, METRICS_PAUSE_MS, mx_resume_proc, mx);
}

static void mx_accept(ev_loop *loop, int lfd, void *ud, int mask) {
    struct metrics *mx = ud;

    (void)mask;
    for (int i = 0; i < METRICS_ACCEPT_MAX; i++) {
        int fd = net_accept(lfd, NULL, 0);
        struct mx_conn *c;
        if (fd < 0) {
            if (errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                mx_pause(mx, errno);
            return;
        }
        if (mx->nconns >= METRICS_CONNS_MAX) {
            mx_busy(fd);
            continue;
        }
        if ((c = calloc(1, sizeof *c)) == NULL ||
            ev_add(loop, fd, EV_READABLE, mx_readable, c) < 0) {
            free(c);
            close(fd);
            continue;
        }
        c->mx = mx;
        c->fd = fd;
        c->next = mx->conns;
        if (mx->conns)
            mx->conns->prev = c;
        mx->conns = c;
        mx->nconns++;
        mx_deadline(c, METRICS_REQUEST_MS);
    }
}

/* --- the endpoint -------------------------------------------------------- */

/* Serves on fd (listening, non-blocking; owned from now on, closed on
 * failure). NULL with err (NET_ERR_LEN) filled. */
static struct metrics *metrics_serve(ev_loop *loop, int fd,
                                     const struct server_stats *st,
                                     char *addr, size_t addrlen, char *err) {
    struct metrics *mx = calloc(1, sizeof *mx);

    if (mx == NULL) {
        snprintf(err, NET_ERR_LEN, "%s", strerror(errno));
        close(fd);
        return NULL;
    }
    mx->loop = loop;
    mx->st = st;
    mx->fd = fd;
    if (net_sock_name(err, mx->fd, addr, addrlen) < 0)
        goto err;
    if (ev_add(loop, mx->fd, EV_READABLE, mx_accept, mx) < 0) {
        snprintf(err, NET_ERR_LEN, "epoll: %s", strerror(errno));
        goto err;
    }
    return mx;
err:
    close(mx->fd);
    free(mx);
    return NULL;
}

struct metrics *metrics_open(ev_loop *loop, const char *host, int port,
                             const struct server_stats *st, char *addr,
                             size_t addrlen, char *err, size_t errlen) {
    char nerr[NET_ERR_LEN];
    int fd = net_tcp_server(nerr, host, port, METRICS_BACKLOG, NET_NONBLOCK);
    struct metrics *mx = fd < 0 ? NULL
                         : metrics_serve(loop, fd, st, addr, addrlen, nerr);

    if (mx == NULL)
        snprintf(err, errlen, "--metrics: %s", nerr);
    return mx;
}

struct metrics *metrics_adopt(ev_loop *loop, int fd,
                              const struct server_stats *st, char *addr,
                              size_t addrlen, char *err, size_t errlen) {
    char nerr[NET_ERR_LEN];
    struct metrics *mx = metrics_serve(loop, fd, st, addr, addrlen, nerr);

    if (mx == NULL)
        snprintf(err, errlen, "--metrics: %s", nerr);
    return mx;
}

int metrics_fd(const struct metrics *mx) {
    return mx->fd;
}

void metrics_release(struct metrics *mx) {
    if (mx->fd >= 0) {
        ev_del(mx->loop, mx->fd, EV_READABLE);
        close(mx->fd);
        mx->fd = -1;
    }
}

void metrics_close(struct metrics *mx) {
    if (mx == NULL)
        return;
    while (mx->conns)
        mx_free(mx->conns);
    metrics_release(mx);
    free(mx);
}

void metrics_after_fork(struct metrics *mx) {
    if (mx == NULL)
        return;
    while (mx->conns) {
        struct mx_conn *c = mx->conns;
        mx->conns = c->next;
        close(c->fd);
        free(c->out);
        free(c);
    }
    if (mx->fd >= 0)
        close(mx->fd);
    free(mx);
}
