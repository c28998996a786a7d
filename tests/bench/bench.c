/* echohost-bench: epoll load generator for echo servers. Modes rr, stream,
 * connrate, idle and udp; every echoed byte is checked against what was
 * sent; one JSON line per run; any mismatch exits 1. */

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_proc.h"

#define BENCH_PAT_LEN   1048573         /* prime: streams never align */
#define BENCH_MAX_SIZE  (1 << 20)
#define BENCH_RBUF      (256 * 1024)
#define BENCH_EVENTS    512
#define BENCH_MAX_PIDS  16
#define BENCH_CONNECTING 128            /* idle mode: connects in flight */
#define BENCH_SETTLE_NS 250000000ULL    /* idle mode: pause before RSS */
#define BENCH_UDP_MAX   65507           /* udp mode: largest datagram */
#define BENCH_UDP_WINDOW 1024           /* udp mode: most in flight */
#define BENCH_LOSS_NS   200000000ULL    /* udp: no reply this long: lost */

/* Latency histogram: exact below 128 ns, then 64 buckets per power of two
 * (relative error under 1.6 %), up to 2^63 ns. */
#define HIST_BITS    7
#define HIST_HALF    (1 << (HIST_BITS - 1))
#define HIST_BUCKETS ((64 - HIST_BITS + 1) * HIST_HALF + HIST_HALF)

enum bench_mode {
    MODE_RR, MODE_STREAM, MODE_CONNRATE, MODE_IDLE, MODE_FORK, MODE_UDP
};
static const char *const bench_mode_names[] = {
    "rr", "stream", "connrate", "idle", "fork", "udp", NULL
};

enum conn_state { ST_FREE, ST_CONNECTING, ST_OPEN, ST_IDLE, ST_DEAD };

struct bench_opts {
    enum bench_mode mode;
    int conns, threads, allow_remote, rst;
    size_t size, window;
    double duration, warmup;
    const char *target, *label;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    pid_t pids[BENCH_MAX_PIDS];
    int npids;
};

struct bench_stats {
    uint64_t msgs, errors, mismatches, max_ns;
    uint64_t lost;                      /* udp: datagrams never echoed */
    uint64_t hist[HIST_BUCKETS];
};

/* In udp mode a conn is a connected UDP socket: sent is the next datagram's
 * number, rcvd the number of the next one expected back (the loopback keeps
 * their order, so a later one back means the ones before were lost),
 * t_start the time of the last progress, chunk_ts the send times. */
struct bench_conn {
    int fd, events;
    enum conn_state state;
    uint32_t seed;              /* pattern offset where this stream starts */
    uint64_t sent, rcvd;        /* stream offsets */
    uint64_t msg_end;           /* rr: offset where the current message ends */
    uint64_t t_start;           /* rr: send time; connrate/idle: connect time */
    uint64_t chunk_sent, chunk_done;    /* stream: chunk counters */
    uint64_t *chunk_ts;         /* stream: send time of chunk k at k % nring */
};

struct bench_thread {
    int id, ep, nconns, live, opened, connecting, ready;
    struct bench_conn *conns;
    struct bench_stats st;
    uint64_t rng;
    pthread_t tid;
    char *buf;
};

static struct bench_opts bo;
static unsigned char *bench_pat;       /* 2 * PAT_LEN: any slice contiguous */
static size_t bench_nring;
static uint64_t g_warm_end, g_end;
/* CPU time at the start [0] and the end [1] of the measured window. */
struct cpu_sample {
    int taken;
    long long server;           /* ns used by the --pid trees; -1: unknown */
    long long busy, steal;      /* ticks of every CPU, from /proc/stat */
    double self;                /* seconds used by this client */
};
static struct cpu_sample g_cpu[2];
static char g_first_error[160];

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;                    /* xorshift64 */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void note_error(const char *what, int err) {
    if (g_first_error[0]) return;       /* racy between threads: harmless */
    snprintf(g_first_error, sizeof g_first_error, "%s: %s", what,
             err ? strerror(err) : "unexpected end of stream");
}

/* --- histogram ------------------------------------------------------------ */

static int hist_index(uint64_t v) {
    int msb, shift;
    if (v < 2 * HIST_HALF) return (int)v;
    msb = 63 - __builtin_clzll(v);
    shift = msb - HIST_BITS + 1;
    return (shift + 1) * HIST_HALF + (int)((v >> shift) - HIST_HALF);
}

static double hist_value(int i) {
    int shift;
    uint64_t top;
    if (i < 2 * HIST_HALF) return i;
    shift = i / HIST_HALF - 1;
    top = (uint64_t)(i % HIST_HALF + HIST_HALF);
    return ((double)(top << shift) + (double)((top + 1) << shift)) / 2;
}

static void stats_record(struct bench_stats *st, uint64_t now, uint64_t lat) {
    if (now < g_warm_end || now >= g_end) return;
    st->msgs++;
    st->hist[hist_index(lat)]++;
    if (lat > st->max_ns) st->max_ns = lat;
}

/* Quantile q of the histogram, in microseconds (bucket midpoint). */
static double hist_quantile(const struct bench_stats *st, double q) {
    uint64_t want = (uint64_t)ceil(q * (double)st->msgs), sum = 0;
    int i;
    if (st->msgs == 0) return 0;
    if (want == 0) want = 1;
    for (i = 0; i < HIST_BUCKETS; i++) {
        sum += st->hist[i];
        if (sum >= want) {
            double v = hist_value(i);
            if (v > (double)st->max_ns) v = (double)st->max_ns;
            return v / 1000;
        }
    }
    return (double)st->max_ns / 1000;
}

static void sample_cpu(struct cpu_sample *s) {
    struct rusage ru;

    if (bo.npids == 0 ||
        bench_proc_tree(bo.pids, bo.npids, &s->server, NULL) < 0)
        s->server = -1;
    bench_proc_stat_all(&s->busy, &s->steal);
    getrusage(RUSAGE_SELF, &ru);
    s->self = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
              ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) /
              1e6;
    s->taken = 1;
}

/* --- connections ---------------------------------------------------------- */

static void conn_arm(struct bench_thread *t, struct bench_conn *c, int ev) {
    struct epoll_event e = {.events = (uint32_t)ev, .data.ptr = c};
    if (c->events == ev) return;
    c->events = ev;
    epoll_ctl(t->ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void conn_close(struct bench_thread *t, struct bench_conn *c,
                       enum conn_state next) {
    if (c->state == ST_CONNECTING) t->connecting--;
    if (c->state == ST_CONNECTING || c->state == ST_OPEN) t->live--;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->state = next;
}

static void conn_fail(struct bench_thread *t, struct bench_conn *c,
                      const char *what, int err) {
    t->st.errors++;
    note_error(what, err);
    conn_close(t, c, ST_DEAD);           /* connrate: reopened by the loop */
}

static void conn_open(struct bench_thread *t, struct bench_conn *c) {
    struct epoll_event e = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    struct linger lg = {1, 0};
    int one = 1;
    int fd = socket(bo.addr.ss_family,
                    SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    t->opened++;
    c->state = ST_DEAD;
    if (fd < 0) {
        t->st.errors++;
        note_error("socket", errno);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bo.rst) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    c->fd = fd;
    c->events = (int)e.events;
    c->sent = c->rcvd = c->chunk_sent = c->chunk_done = 0;
    c->msg_end = bo.size;
    c->seed = (uint32_t)(rng_next(&t->rng) % BENCH_PAT_LEN);
    c->t_start = now_ns();
    c->state = ST_CONNECTING;
    t->connecting++;
    t->live++;
    if ((connect(fd, (struct sockaddr *)&bo.addr, bo.addrlen) < 0 &&
         errno != EINPROGRESS) ||
        epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &e) < 0)
        conn_fail(t, c, "connect", errno);
}

/* How far the stream may be written now. */
static uint64_t conn_limit(const struct bench_conn *c) {
    switch (bo.mode) {
    case MODE_STREAM: return c->rcvd + bo.window;
    case MODE_RR: return c->msg_end;
    default: return bo.size;
    }
}

/* Writes what the mode allows; arms EPOLLOUT while something is held back
 * by the socket. */
static void conn_pump(struct bench_thread *t, struct bench_conn *c) {
    uint64_t limit = conn_limit(c);
    ssize_t w = 0;

    if (c->sent < limit) {
        size_t n = (size_t)(limit - c->sent);
        if (n > BENCH_RBUF) n = BENCH_RBUF;
        w = send(c->fd, bench_pat + (c->seed + c->sent) % BENCH_PAT_LEN, n,
                 MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            conn_fail(t, c, "send", errno);
            return;
        }
        if (w > 0) c->sent += (uint64_t)w;
    }
    if (bo.mode == MODE_STREAM) {
        uint64_t now = now_ns();
        while (c->sent >= (c->chunk_sent + 1) * bo.size)
            c->chunk_ts[c->chunk_sent++ % bench_nring] = now;
    }
    conn_arm(t, c, c->sent < limit && w >= 0 ? EPOLLIN | EPOLLOUT : EPOLLIN);
}

static void conn_connected(struct bench_thread *t, struct bench_conn *c) {
    int err = 0;
    socklen_t len = sizeof err;

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err) {
        conn_fail(t, c, "connect", err);
        return;
    }
    c->state = ST_OPEN;
    t->connecting--;
    if (bo.mode == MODE_RR) c->t_start = now_ns();
    conn_pump(t, c);
}

/* The echo reached the end of a message (rr, connrate, idle) or of some
 * chunks (stream): record latencies, then send what comes next. */
static void conn_progress(struct bench_thread *t, struct bench_conn *c) {
    uint64_t now = now_ns();

    switch (bo.mode) {
    case MODE_RR:
        if (c->rcvd < c->msg_end) return;
        stats_record(&t->st, now, now - c->t_start);
        c->msg_end += bo.size;
        c->t_start = now;
        break;
    case MODE_STREAM:
        while (c->rcvd >= (c->chunk_done + 1) * bo.size) {
            uint64_t ts = c->chunk_ts[c->chunk_done++ % bench_nring];
            stats_record(&t->st, now, now - ts);
        }
        break;
    default:                            /* connrate, idle: one echo */
        if (c->rcvd < bo.size) return;
        stats_record(&t->st, now, now - c->t_start);
        if (bo.mode == MODE_IDLE) {
            c->state = ST_IDLE;
            t->live--;
            t->ready++;
            conn_arm(t, c, 0);
            return;
        }
        conn_close(t, c, ST_FREE);
        if (now < g_end) conn_open(t, c);
        return;
    }
    conn_pump(t, c);
}

static void conn_mismatch(struct bench_thread *t, struct bench_conn *c,
                          const unsigned char *got, size_t n) {
    const unsigned char *want = bench_pat + (c->seed + c->rcvd) %
                                BENCH_PAT_LEN;
    size_t i = 0;

    if (t->st.mismatches++ == 0) {
        if (c->rcvd + n > c->sent)
            fprintf(stderr, "echohost-bench: mismatch: %zu bytes echoed, "
                    "only %llu sent\n", n, (unsigned long long)
                    (c->sent - c->rcvd));
        else {
            while (i < n && got[i] == want[i]) i++;
            fprintf(stderr, "echohost-bench: mismatch at stream offset "
                    "%llu: got 0x%02x, want 0x%02x\n",
                    (unsigned long long)(c->rcvd + i), got[i], want[i]);
        }
    }
    conn_close(t, c, ST_DEAD);
}

static void conn_readable(struct bench_thread *t, struct bench_conn *c) {
    ssize_t n = read(c->fd, t->buf, BENCH_RBUF);

    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) conn_fail(t, c, "read", errno);
        return;
    }
    if (n == 0) {
        conn_fail(t, c, "read", 0);
        return;
    }
    if (c->rcvd + (uint64_t)n > c->sent ||
        memcmp(t->buf, bench_pat + (c->seed + c->rcvd) % BENCH_PAT_LEN,
               (size_t)n) != 0) {
        conn_mismatch(t, c, (unsigned char *)t->buf, (size_t)n);
        return;
    }
    c->rcvd += (uint64_t)n;
    conn_progress(t, c);
}

/* --- udp mode ------------------------------------------------------------- */

/* Datagram seq of c: its number in 8 bytes, then the pattern. */
static const unsigned char *udp_body(const struct bench_conn *c,
                                     uint64_t seq) {
    return bench_pat + (c->seed + seq * 7919) % BENCH_PAT_LEN;
}

static void udp_pump(struct bench_thread *t, struct bench_conn *c) {
    unsigned char *d = (unsigned char *)t->buf;
    uint64_t now = now_ns();

    while (c->sent - c->rcvd < bo.window) {
        memcpy(d, &c->sent, 8);
        memcpy(d + 8, udp_body(c, c->sent) + 8, bo.size - 8);
        c->chunk_ts[c->sent % bench_nring] = now;
        c->sent++;                      /* EAGAIN: lost like any other */
        if (send(c->fd, d, bo.size, MSG_DONTWAIT) < 0 && errno != EAGAIN &&
            errno != ENOBUFS && errno != EINTR) {
            conn_fail(t, c, "send", errno);
            return;
        }
    }
}

static void udp_open(struct bench_thread *t, struct bench_conn *c) {
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
    int fd = socket(bo.addr.ss_family,
                    SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    t->opened++;
    c->state = ST_DEAD;
    if (fd < 0 || connect(fd, (struct sockaddr *)&bo.addr, bo.addrlen) < 0 ||
        epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
        if (fd >= 0) close(fd);
        t->st.errors++;
        note_error("udp socket", errno);
        return;
    }
    c->fd = fd;
    c->events = EPOLLIN;
    c->sent = c->rcvd = 0;
    c->seed = (uint32_t)(rng_next(&t->rng) % BENCH_PAT_LEN);
    c->t_start = now_ns();
    c->state = ST_OPEN;
    t->live++;
    udp_pump(t, c);
}

static void udp_mismatch(struct bench_thread *t, struct bench_conn *c,
                         uint64_t seq, size_t n) {
    if (t->st.mismatches++ == 0)
        fprintf(stderr, "echohost-bench: mismatch: datagram %llu came back "
                "with %zu bytes, not the %zu sent\n",
                (unsigned long long)seq, n, bo.size);
    conn_close(t, c, ST_DEAD);
}

static void udp_readable(struct bench_thread *t, struct bench_conn *c) {
    unsigned char *d = (unsigned char *)t->buf;

    for (int i = 0; i < 64 && c->state == ST_OPEN; i++) {
        ssize_t n = recv(c->fd, d, BENCH_RBUF, 0);
        uint64_t seq = 0, now;
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                conn_fail(t, c, "recv", errno);
            return;
        }
        if (n >= 8)
            memcpy(&seq, d, 8);
        if (n >= 8 && seq < c->rcvd)
            continue;                   /* late: already counted lost */
        if ((size_t)n != bo.size || seq >= c->sent ||
            memcmp(d + 8, udp_body(c, seq) + 8, bo.size - 8) != 0) {
            udp_mismatch(t, c, seq, (size_t)n);
            return;
        }
        now = now_ns();
        t->st.lost += seq - c->rcvd;
        c->rcvd = seq + 1;
        c->t_start = now;
        stats_record(&t->st, now, now - c->chunk_ts[seq % bench_nring]);
        udp_pump(t, c);
    }
}

/* Datagrams with no reply for BENCH_LOSS_NS are lost: send others. */
static void udp_sweep(struct bench_thread *t, uint64_t now) {
    for (int i = 0; i < t->nconns; i++) {
        struct bench_conn *c = &t->conns[i];
        if (c->state != ST_OPEN || c->sent == c->rcvd ||
            now - c->t_start < BENCH_LOSS_NS)
            continue;
        t->st.lost += c->sent - c->rcvd;
        c->rcvd = c->sent;
        c->t_start = now;
        udp_pump(t, c);
    }
}

static void conn_event(struct bench_thread *t, struct bench_conn *c,
                       uint32_t ev) {
    if (c->state == ST_CONNECTING) {
        conn_connected(t, c);
        return;
    }
    if (c->state == ST_IDLE) {          /* idle conns must stay silent */
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
            conn_fail(t, c, "idle connection", ECONNRESET);
        return;
    }
    if (c->state != ST_OPEN) return;
    if (bo.mode == MODE_UDP) {
        udp_readable(t, c);
        return;
    }
    if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(t, c);
    if (c->state == ST_OPEN && (ev & EPOLLOUT)) conn_pump(t, c);
}

/* --- the run -------------------------------------------------------------- */

static int thread_timeout(const struct bench_thread *t, uint64_t now) {
    uint64_t next = g_end;
    if (t->id == 0 && !g_cpu[0].taken && g_warm_end > now) next = g_warm_end;
    if (next <= now) return 0;
    next = (next - now + 999999) / 1000000;
    return next > 100 ? 100 : (int)next;
}

static int thread_done(struct bench_thread *t, uint64_t now) {
    if (now >= g_end) return 1;
    if (bo.mode == MODE_IDLE)
        return t->opened == t->nconns && t->live == 0;
    return bo.mode != MODE_CONNRATE && t->live == 0;
}

static void *thread_run(void *arg) {
    struct bench_thread *t = arg;
    struct epoll_event evs[BENCH_EVENTS];
    uint64_t now;

    for (int i = 0; bo.mode != MODE_IDLE && i < t->nconns; i++)
        (bo.mode == MODE_UDP ? udp_open : conn_open)(t, &t->conns[i]);
    while (!thread_done(t, now = now_ns())) {
        int n;
        if (t->id == 0 && !g_cpu[0].taken && now >= g_warm_end)
            sample_cpu(&g_cpu[0]);
        while (bo.mode == MODE_IDLE && t->opened < t->nconns &&
               t->connecting < BENCH_CONNECTING)
            conn_open(t, &t->conns[t->opened]);
        for (int i = 0; bo.mode == MODE_CONNRATE && i < t->nconns; i++)
            if (t->conns[i].state == ST_DEAD) conn_open(t, &t->conns[i]);
        if (bo.mode == MODE_UDP) udp_sweep(t, now);
        n = epoll_wait(t->ep, evs, BENCH_EVENTS, thread_timeout(t, now));
        for (int i = 0; i < n; i++)
            conn_event(t, evs[i].data.ptr, evs[i].events);
    }
    if (t->id == 0) sample_cpu(&g_cpu[1]);
    return NULL;
}

static int thread_init(struct bench_thread *t, int id, int nconns) {
    t->id = id;
    t->nconns = nconns;
    t->rng = 0x9e3779b97f4a7c15ULL * (uint64_t)(id + 1) ^ (uint64_t)getpid();
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    t->buf = malloc(BENCH_RBUF);
    t->conns = calloc((size_t)nconns, sizeof *t->conns);
    if (t->ep < 0 || !t->buf || !t->conns) return -1;
    for (int i = 0; i < nconns; i++) {
        t->conns[i].fd = -1;
        if (bo.mode != MODE_STREAM && bo.mode != MODE_UDP) continue;
        t->conns[i].chunk_ts = calloc(bench_nring, sizeof(uint64_t));
        if (!t->conns[i].chunk_ts) return -1;
    }
    return 0;
}

static void thread_free(struct bench_thread *t) {
    for (int i = 0; i < t->nconns; i++) {
        if (t->conns[i].fd >= 0) close(t->conns[i].fd);
        free(t->conns[i].chunk_ts);
    }
    free(t->conns);
    free(t->buf);
    if (t->ep >= 0) close(t->ep);
}

static void stats_merge(struct bench_stats *into, const struct bench_stats *s) {
    into->msgs += s->msgs;
    into->errors += s->errors;
    into->mismatches += s->mismatches;
    into->lost += s->lost;
    if (s->max_ns > into->max_ns) into->max_ns = s->max_ns;
    for (int i = 0; i < HIST_BUCKETS; i++) into->hist[i] += s->hist[i];
}

/* --- report --------------------------------------------------------------- */

static void json_str(const char *s) {
    putchar('"');
    for (; s && *s; s++) {
        if (*s == '"' || *s == '\\') putchar('\\');
        if ((unsigned char)*s >= 0x20) putchar(*s);
    }
    putchar('"');
}

/* Server CPU over the window, and what the rest of the machine used
 * meanwhile (other processes; steal by the hypervisor): the noise gauge. */
static void report_cpu(const struct bench_stats *st) {
    const struct cpu_sample *a = &g_cpu[0], *b = &g_cpu[1];
    double hz = (double)sysconf(_SC_CLK_TCK), cpu, all, self;

    if (!a->taken || !b->taken) {
        printf(",\"server_cpu_s\":null,\"server_cpu_us_per_msg\":null,"
               "\"other_cpu_s\":null,\"steal_s\":null");
        return;
    }
    all = (double)(b->busy - a->busy) / hz;
    self = b->self - a->self;
    printf(",\"steal_s\":%.3f", (double)(b->steal - a->steal) / hz);
    if (a->server < 0 || b->server < 0) {
        printf(",\"server_cpu_s\":null,\"server_cpu_us_per_msg\":null,"
               "\"other_cpu_s\":null");
        return;
    }
    cpu = (double)(b->server - a->server) / 1e9;
    printf(",\"server_cpu_s\":%.3f,\"other_cpu_s\":%.3f", cpu,
           all - cpu - self > 0 ? all - cpu - self : 0);
    printf(",\"server_cpu_us_per_msg\":");
    if (st->msgs) printf("%.3f", cpu * 1e6 / (double)st->msgs);
    else printf("null");
}

static void report(const struct bench_stats *st, double secs, long rss0,
                   long rss1) {
    double rate = secs > 0 ? (double)st->msgs / secs : 0;

    printf("{\"label\":");
    json_str(bo.label ? bo.label : "");
    printf(",\"mode\":\"%s\",\"target\":", bench_mode_names[bo.mode]);
    json_str(bo.target);
    printf(",\"conns\":%d,\"size\":%zu,\"window\":%zu,\"threads\":%d,"
           "\"warmup_s\":%.3f,\"duration_s\":%.3f,\"msgs\":%llu,"
           "\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f", bo.conns, bo.size,
           bo.mode == MODE_STREAM || bo.mode == MODE_UDP ? bo.window : 0,
           bo.threads, bo.warmup,
           secs, (unsigned long long)st->msgs, rate,
           rate * (double)bo.size / 1e6);
    printf(",\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,"
           "\"p999_us\":%.1f,\"max_us\":%.1f", hist_quantile(st, 0.5),
           hist_quantile(st, 0.9), hist_quantile(st, 0.99),
           hist_quantile(st, 0.999), (double)st->max_ns / 1000);
    printf(",\"errors\":%llu,\"mismatches\":%llu",
           (unsigned long long)st->errors,
           (unsigned long long)st->mismatches);
    if (bo.mode == MODE_UDP)
        printf(",\"lost\":%llu", (unsigned long long)st->lost);
    report_cpu(st);
    if (bo.mode == MODE_IDLE && rss0 >= 0 && rss1 >= 0 && st->msgs)
        printf(",\"rss_before_kb\":%ld,\"rss_after_kb\":%ld,"
               "\"rss_per_conn_b\":%.0f", rss0, rss1,
               (double)(rss1 - rss0) * 1024 / (double)st->msgs);
    printf("}\n");
    fflush(stdout);
}

/* --- options -------------------------------------------------------------- */

static void usage(void) {
    fprintf(stderr,
"usage: echohost-bench [options] HOST:PORT\n"
"  -m, --mode MODE        rr | stream | connrate | idle | udp (default rr);\n"
"                         fork: time fork+_exit+waitpid here (no target)\n"
"  -c, --connections N    concurrent connections (udp: sockets; default 1)\n"
"  -s, --size BYTES       message size; stream: chunk size; udp: datagram\n"
"                         size, 8..65507 (default 64)\n"
"  -w, --window N         stream: bytes in flight per connection (4 x size);\n"
"                         udp: datagrams in flight per socket, 1..1024 (1)\n"
"  -d, --duration SECS    measured time; idle: time allowed (default 5)\n"
"  -W, --warmup SECS      unmeasured time before (default 1; idle: none)\n"
"  -t, --threads N        client threads, 1 or 2 (default 1)\n"
"  -p, --pid PID          server process to charge CPU/RSS to (repeatable)\n"
"  -l, --label TEXT       copied into the JSON line\n"
"      --rst              close with RST (no TIME_WAIT on the client)\n"
"      --allow-remote     allow a target that is not a loopback address\n");
    exit(2);
}

static int is_loopback(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)
                                       ->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) ||
               (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

/* Resolves HOST:PORT or [V6]:PORT into bo.addr; exits 2 on failure. */
static void parse_target(const char *spec) {
    char host[256];
    const char *colon = strrchr(spec, ':');
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV}, *res;
    size_t n;
    int rc;

    if (!colon || colon == spec) usage();
    n = (size_t)(colon - spec);
    if (spec[0] == '[' && n >= 2 && spec[n - 1] == ']') spec++, n -= 2;
    if (n >= sizeof host) usage();
    memcpy(host, spec, n);
    host[n] = '\0';
    if ((rc = getaddrinfo(host, colon + 1, &hints, &res)) != 0) {
        fprintf(stderr, "echohost-bench: %s: %s\n", host, gai_strerror(rc));
        exit(2);
    }
    memcpy(&bo.addr, res->ai_addr, res->ai_addrlen);
    bo.addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    if (!bo.allow_remote && !is_loopback(&bo.addr)) {
        fprintf(stderr, "echohost-bench: refusing non-loopback target %s "
                "(pass --allow-remote to load another machine)\n", bo.target);
        exit(2);
    }
}

static double parse_num(const char *s, double lo, double hi) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "echohost-bench: bad number '%s' (%g..%g)\n", s, lo,
                hi);
        exit(2);
    }
    return v;
}

static int parse_mode(const char *s) {
    for (int i = 0; bench_mode_names[i]; i++)
        if (strcmp(s, bench_mode_names[i]) == 0) return i;
    usage();
    return 0;
}

static void parse_args(int argc, char **argv) {
    static const struct option lo[] = {
        {"mode", 1, 0, 'm'}, {"connections", 1, 0, 'c'}, {"size", 1, 0, 's'},
        {"window", 1, 0, 'w'}, {"duration", 1, 0, 'd'},
        {"warmup", 1, 0, 'W'}, {"threads", 1, 0, 't'}, {"pid", 1, 0, 'p'},
        {"label", 1, 0, 'l'}, {"rst", 0, 0, 'R'},
        {"allow-remote", 0, 0, 'A'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}
    };
    int o;

    bo.conns = bo.threads = 1;
    bo.size = 64;
    bo.duration = 5;
    bo.warmup = 1;
    while ((o = getopt_long(argc, argv, "m:c:s:w:d:W:t:p:l:h", lo, 0)) != -1) {
        switch (o) {
        case 'm': bo.mode = (enum bench_mode)parse_mode(optarg); break;
        case 'c': bo.conns = (int)parse_num(optarg, 1, 1000000); break;
        case 's': bo.size = (size_t)parse_num(optarg, 1, BENCH_MAX_SIZE); break;
        case 'w': bo.window = (size_t)parse_num(optarg, 1, 1 << 26); break;
        case 'd': bo.duration = parse_num(optarg, 0.01, 3600); break;
        case 'W': bo.warmup = parse_num(optarg, 0, 3600); break;
        case 't': bo.threads = (int)parse_num(optarg, 1, 2); break;
        case 'p':
            if (bo.npids == BENCH_MAX_PIDS) usage();
            bo.pids[bo.npids++] = (pid_t)parse_num(optarg, 1, 1 << 30);
            break;
        case 'l': bo.label = optarg; break;
        case 'R': bo.rst = 1; break;
        case 'A': bo.allow_remote = 1; break;
        default: usage();
        }
    }
    if (bo.mode == MODE_FORK && optind == argc) return;
    if (optind != argc - 1) usage();
    if (bo.mode == MODE_IDLE) {         /* every exchange counts */
        bo.threads = 1;
        bo.warmup = 0;
    }
    if (bo.threads > bo.conns) bo.threads = bo.conns;
    if (bo.mode == MODE_UDP && (bo.size < 8 || bo.size > BENCH_UDP_MAX ||
                                bo.window > BENCH_UDP_WINDOW))
        usage();
    if (!bo.window) bo.window = bo.mode == MODE_UDP ? 1 : 4 * bo.size;
    bo.target = argv[optind];
    parse_target(bo.target);
}

/* The machine's floor for a process per connection: fork, _exit and
 * waitpid in a loop for the duration, no target involved. */
static int fork_cost(void) {
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(bo.duration * 1e9), now;
    unsigned long n = 0;

    do {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0 || waitpid(pid, NULL, 0) < 0) {
            perror("echohost-bench: fork");
            return 3;
        }
        n++;
    } while ((now = now_ns()) < end);
    printf("{\"label\":");
    json_str(bo.label ? bo.label : "");
    printf(",\"mode\":\"fork\",\"forks\":%lu,\"duration_s\":%.3f,"
           "\"us_per_fork\":%.1f}\n", n, (double)(now - t0) / 1e9,
           (double)(now - t0) / 1e3 / (double)n);
    return 0;
}

/* --- main ----------------------------------------------------------------- */

static void on_alarm(int sig) {
    static const char msg[] = "echohost-bench: run exceeded its time bound\n";
    (void)sig;
    if (write(2, msg, sizeof msg - 1) < 0) _exit(3);
    _exit(3);
}

static void bench_setup(void) {
    struct rlimit rl;
    uint64_t s = 0x2545f4914f6cdd1dULL;
    double bound = bo.warmup + bo.duration + 10;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)ceil(bound));
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    bench_pat = malloc(2 * (size_t)BENCH_PAT_LEN);
    if (!bench_pat) exit(3);
    for (size_t i = 0; i < BENCH_PAT_LEN; i++)
        bench_pat[i] = bench_pat[i + BENCH_PAT_LEN] =
            (unsigned char)(rng_next(&s) >> 29);
    bench_nring = bo.mode == MODE_UDP ? bo.window : bo.window / bo.size + 2;
}

static int bench_run(struct bench_thread *th, struct bench_stats *st) {
    uint64_t t0 = now_ns();
    int i;

    g_warm_end = t0 + (uint64_t)(bo.warmup * 1e9);
    g_end = g_warm_end + (uint64_t)(bo.duration * 1e9);
    for (i = 1; i < bo.threads; i++)
        if (pthread_create(&th[i].tid, NULL, thread_run, &th[i]) != 0)
            return -1;
    thread_run(&th[0]);
    for (i = 1; i < bo.threads; i++) pthread_join(th[i].tid, NULL);
    for (i = 0; i < bo.threads; i++) stats_merge(st, &th[i].st);
    return 0;
}

/* The servers' summed VmRSS in KiB, -1 if unknown; idle mode only. */
static long idle_rss(int settle) {
    long long cpu_ns;
    long kb;
    struct timespec ts = {0, BENCH_SETTLE_NS};

    if (bo.mode != MODE_IDLE || bo.npids == 0) return -1;
    if (settle) nanosleep(&ts, NULL);
    if (bench_proc_tree(bo.pids, bo.npids, &cpu_ns, &kb) < 0) return -1;
    return kb;
}

int main(int argc, char **argv) {
    static struct bench_thread th[2];
    static struct bench_stats st;
    long rss0, rss1;
    double secs;
    int i;

    parse_args(argc, argv);
    if (bo.mode == MODE_FORK) return fork_cost();
    bench_setup();
    for (i = 0; i < bo.threads; i++)
        if (thread_init(&th[i], i, bo.conns / bo.threads +
                        (i < bo.conns % bo.threads)) < 0) {
            perror("echohost-bench");
            return 3;
        }
    rss0 = idle_rss(0);
    if (bench_run(th, &st) < 0) return 3;
    secs = (double)(now_ns() - g_warm_end) / 1e9;
    if (bo.mode != MODE_IDLE && secs > bo.duration) secs = bo.duration;
    rss1 = idle_rss(1);
    report(&st, secs, rss0, rss1);
    for (i = 0; i < bo.threads; i++) thread_free(&th[i]);
    if (g_first_error[0])
        fprintf(stderr, "echohost-bench: %llu errors, first: %s\n",
                (unsigned long long)st.errors, g_first_error);
    if (st.mismatches) return 1;
    return st.msgs ? 0 : 3;
}
