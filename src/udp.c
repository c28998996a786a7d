/* UDP echo (RFC 862): every datagram back to its sender byte for byte, or
 * a datagram handler's reply, batched with recvmmsg/sendmmsg; a guard
 * against echo loops (CVE-1999-0103) and a per-source rate cap before
 * either; a full socket drops. */
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "net.h"
#include "udp.h"

#define UDP_BATCH 32            /* datagrams per recvmmsg/sendmmsg */
#define UDP_BUF 65536           /* one datagram buffer: any UDP payload */
#define UDP_ROUNDS 8            /* batches per wake-up, then the others */
#define UDP_HOT 8               /* datagrams in a wake-up that make the
                                 * socket polled (ev_set_polled) */
#define UDP_SOURCES 4096        /* rate-cap entries per echo (power of 2) */
#define UDP_PROBE 4             /* entries a source may take */
#define UDP_ERR_LEN 2048        /* a handler fault's log line */

/* One source address and what is left of its allowance. */
struct udp_src {
    unsigned char addr[16];
    int family;                 /* 0: free */
    double tokens;              /* datagrams it may still send now */
    long long last_ms;
};

struct udp_echo {
    ev_loop *loop;
    int fd;
    int mask;                   /* as registered in the loop */
    struct udp_opts o;
    struct udp_src *srcs;       /* UDP_SOURCES of them when o.rate > 0 */
    long long last_log_ms;
    long long last_fault_ms;    /* the last handler fault logged */
    uint64_t unlogged;          /* faults not logged since */
};

/* The buffers of one batch. One per process, shared by its echoes (a
 * worker serves them one at a time): 32 x 64 KiB, touched only as large
 * datagrams arrive, whatever the traffic. */
static struct udp_batch {
    struct mmsghdr in[UDP_BATCH], out[UDP_BATCH];
    struct iovec iov[UDP_BATCH], oiov[UDP_BATCH];
    struct sockaddr_storage addr[UDP_BATCH];
    char *bufs;
    int users;
} *batch;

static int batch_hold(void) {
    if (batch == NULL) {
        if ((batch = calloc(1, sizeof *batch)) == NULL)
            return -1;
        if ((batch->bufs = malloc((size_t)UDP_BATCH * UDP_BUF)) == NULL) {
            free(batch);
            batch = NULL;
            return -1;
        }
        for (int i = 0; i < UDP_BATCH; i++)
            batch->iov[i].iov_base = batch->bufs + (size_t)i * UDP_BUF;
    }
    batch->users++;
    return 0;
}

static void batch_release(void) {
    if (batch && --batch->users == 0) {
        free(batch->bufs);
        free(batch);
        batch = NULL;
    }
}

/* --- the guard ------------------------------------------------------------ */

/* Every port below 1024 (echo 7, daytime 13, qotd 17, chargen 19, time 37,
 * DNS, NTP, SNMP...: services that answer whatever arrives, as OpenBSD's
 * inetd refuses them), and the usual reflectors above it. */
int udp_guarded_port(unsigned port) {
    if (port < 1024)
        return 1;
    switch (port) {
    case 1900:                  /* SSDP */
    case 3283:                  /* Apple Remote Desktop */
    case 3702:                  /* WS-Discovery */
    case 5353:                  /* mDNS */
    case 11211:                 /* memcached */
        return 1;
    }
    return 0;
}

/* No datagram is ever sent from these: unspecified, multicast, broadcast. */
static int bogus_source(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) {
        uint32_t a = ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr);
        return (a >> 24) == 0 || (a >> 28) == 0xe || a == 0xffffffffu;
    }
    if (ss->ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
        return IN6_IS_ADDR_UNSPECIFIED(a) || IN6_IS_ADDR_MULTICAST(a);
    }
    return 1;
}

static unsigned source_port(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

/* 1 if answering ss could feed an echo loop or a reflection. */
static int guarded(const struct udp_echo *u,
                   const struct sockaddr_storage *ss) {
    unsigned port = source_port(ss);

    if (udp_guarded_port(port) || bogus_source(ss))
        return 1;
    for (int i = 0; i < u->o.nown; i++)
        if (u->o.own_ports[i] == port)
            return 1;
    return 0;
}

/* --- the rate cap --------------------------------------------------------- */

/* The address bytes of ss into key: their length. */
static size_t source_key(const struct sockaddr_storage *ss,
                         unsigned char key[16]) {
    if (ss->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
        return 16;
    }
    memcpy(key, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    return 4;
}

/* A token bucket of o.rate datagrams, refilled at o.rate per second. */
static int src_take(const struct udp_echo *u, struct udp_src *s,
                    long long now) {
    double rate = (double)u->o.rate;
    double t = s->tokens + (double)(now - s->last_ms) * rate / 1000.0;

    s->last_ms = now;
    s->tokens = t > rate ? rate : t;
    if (s->tokens < 1)
        return 0;
    s->tokens -= 1;
    return 1;
}

/* 1 if s is a better entry to take over than v: free, or seen less
 * recently. */
static int better_victim(const struct udp_src *s, const struct udp_src *v) {
    if (v->family == 0)
        return 0;
    return s->family == 0 || s->last_ms < v->last_ms;
}

/* 1 if the source of ss is within its allowance. A source takes one of
 * UDP_PROBE entries from its hash; all taken, it replaces the least
 * recently seen of them (which starts afresh when it comes back). */
static int rate_ok(struct udp_echo *u, const struct sockaddr_storage *ss) {
    unsigned char key[16];
    size_t len = source_key(ss, key);
    uint32_t h = 2166136261u;               /* FNV-1a */
    long long now = ev_time_ms(u->loop);
    struct udp_src *victim = NULL;

    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 16777619u;
    for (int p = 0; p < UDP_PROBE; p++) {
        struct udp_src *s = &u->srcs[(h + p) & (UDP_SOURCES - 1)];
        if (s->family == ss->ss_family && memcmp(s->addr, key, len) == 0)
            return src_take(u, s, now);
        if (victim == NULL || better_victim(s, victim))
            victim = s;
    }
    memcpy(victim->addr, key, len);
    victim->family = ss->ss_family;
    victim->tokens = (double)u->o.rate;
    victim->last_ms = now;
    return src_take(u, victim, now);
}

/* --- echoing -------------------------------------------------------------- */

/* One line a second at most per echo, for what a sender can repeat. */
static void drop_log(struct udp_echo *u, const struct sockaddr_storage *ss,
                     const char *why) {
    long long now = ev_time_ms(u->loop);
    char peer[NET_ADDR_LEN];

    if (now - u->last_log_ms < 1000)
        return;
    u->last_log_ms = now;
    net_format_addr((const struct sockaddr *)ss, peer, sizeof peer);
    log_info("%s: dropping datagrams from %s (%s)", u->o.name, peer, why);
}

/* A handler fault: one line a second at most per echo (a sender can make
 * every datagram fault); the count of those not logged goes in the next. */
static void fault_log(struct udp_echo *u, const char *line) {
    long long now = ev_time_ms(u->loop);

    if (now - u->last_fault_ms < 1000) {
        u->unlogged++;
        return;
    }
    u->last_fault_ms = now;
    if (u->unlogged)
        log_error("%s: %llu more datagrams faulted, not logged", u->o.name,
                  (unsigned long long)u->unlogged);
    u->unlogged = 0;
    log_error("%s", line);
}

/* The handler's answer to datagram i (guarded and within the rate): its
 * length, written over the datagram, or -1 when nothing goes back. */
static int udp_handle(struct udp_echo *u, int i) {
    struct udp_batch *b = batch;
    const struct sockaddr_storage *ss = &b->addr[i];
    char peer[NET_ADDR_LEN], err[UDP_ERR_LEN];
    struct udp_dgram d = {
        .listener = u->o.name, .peer = peer, .buf = b->iov[i].iov_base,
        .len = b->in[i].msg_len, .err = err, .errlen = sizeof err,
        .max = ss->ss_family == AF_INET6 ? UDP_MAX6 : UDP_MAX4};
    int n;

    net_format_addr((const struct sockaddr *)ss, peer, sizeof peer);
    err[0] = '\0';
    n = u->o.handler(u->o.handler_ud, &d);
    if (n == UDP_FAULT) {
        stat_add(&u->o.stats->faults, 1);
        fault_log(u, err);
    } else if (n < 0) {
        stat_add(&u->o.stats->no_reply, 1);
    }
    return n < 0 ? -1 : n;
}

/* Receives a batch: how many datagrams, 0 when there is nothing (or the
 * socket failed: counted, logged, the loop comes back). */
static int udp_recv(struct udp_echo *u) {
    struct udp_batch *b = batch;
    int n;

    for (int i = 0; i < UDP_BATCH; i++) {
        b->iov[i].iov_len = UDP_BUF;
        b->in[i].msg_hdr = (struct msghdr){
            .msg_name = &b->addr[i], .msg_namelen = sizeof b->addr[i],
            .msg_iov = &b->iov[i], .msg_iovlen = 1};
    }
    for (int tries = 0; tries < UDP_BATCH; tries++) {
        n = recvmmsg(u->fd, b->in, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EINTR)
            continue;
        /* an ICMP report: the next one may do */
        stat_add(&u->o.stats->errors, 1);
        if (errno != ECONNREFUSED && errno != ECONNRESET &&
            errno != EHOSTUNREACH && errno != ENETUNREACH) {
            log_warn("%s: recvmmsg: %s", u->o.name, strerror(errno));
            return 0;
        }
    }
    return 0;
}

/* Keeps the datagrams to answer as out[0..k) (the handler's replies in
 * place of them): k. */
static int udp_filter(struct udp_echo *u, int n) {
    struct udp_batch *b = batch;
    struct udp_stats *st = u->o.stats;
    int k = 0;

    for (int i = 0; i < n; i++) {
        struct msghdr *m = &b->in[i].msg_hdr;
        stat_add(&st->datagrams_in, 1);
        stat_add(&st->bytes_in, b->in[i].msg_len);
        if (m->msg_flags & MSG_TRUNC) {
            stat_add(&st->truncated, 1);
            continue;
        }
        if (guarded(u, &b->addr[i])) {
            stat_add(&st->dropped_guard, 1);
            drop_log(u, &b->addr[i], "loop guard");
            continue;
        }
        if (u->srcs && !rate_ok(u, &b->addr[i])) {
            stat_add(&st->dropped_rate, 1);
            drop_log(u, &b->addr[i], "over --udp-rate");
            continue;
        }
        b->oiov[k].iov_base = b->iov[i].iov_base;
        b->oiov[k].iov_len = b->in[i].msg_len;
        if (u->o.handler) {
            int len = udp_handle(u, i);
            if (len < 0)
                continue;
            b->oiov[k].iov_len = (size_t)len;
        }
        b->out[k].msg_hdr = (struct msghdr){
            .msg_name = m->msg_name, .msg_namelen = m->msg_namelen,
            .msg_iov = &b->oiov[k], .msg_iovlen = 1};
        k++;
    }
    return k;
}

/* Sends out[0..k) back. Never waits: what a full socket does not take is
 * dropped (UDP may drop; a worker must not block or queue without end). */
static void udp_send(struct udp_echo *u, int k) {
    struct udp_batch *b = batch;
    struct udp_stats *st = u->o.stats;
    int i = 0;

    while (i < k) {
        int r = sendmmsg(u->fd, b->out + i, k - i, MSG_DONTWAIT);
        if (r > 0) {
            for (int j = i; j < i + r; j++)
                stat_add(&st->bytes_out, b->out[j].msg_len);
            stat_add(&st->datagrams_out, (uint64_t)r);
            i += r;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK ||
                   errno == ENOBUFS) {
            stat_add(&st->dropped_full, (uint64_t)(k - i));
            return;
        } else {
            stat_add(&st->errors, 1);   /* this one cannot go; the rest may */
            i++;
        }
    }
}

static void udp_read_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct udp_echo *u = ud;

    int got = 0;

    (void)mask;
    for (int r = 0; r < UDP_ROUNDS; r++) {
        int n = udp_recv(u);
        if (n > 0)
            udp_send(u, udp_filter(u, n));
        got += n;
        if (n < UDP_BATCH)
            break;
    }
    /* Busy, the socket is polled rather than waited on in epoll: each
     * datagram sent or received would wake the socket's wait queue, where
     * epoll's entry costs a lock and a call (a tenth of the CPU per
     * datagram here). Empty once, it goes back to epoll. */
    if (!ev_polled(loop, fd)) {
        if (got >= UDP_HOT && ev_set_polled(loop, fd, 1) == EV_OK)
            stat_add(&u->o.stats->polled, 1);
    } else if (got == 0) {
        ev_set_polled(loop, fd, 0);
    }
}

struct udp_echo *udp_echo_start(ev_loop *loop, int fd,
                                const struct udp_opts *o) {
    struct udp_echo *u = calloc(1, sizeof *u);

    if (u == NULL)
        return NULL;
    u->loop = loop;
    u->fd = fd;
    u->o = *o;
    u->mask = EV_READABLE | (o->exclusive ? EV_EXCLUSIVE : 0);
    if (o->rate > 0 &&
        (u->srcs = calloc(UDP_SOURCES, sizeof *u->srcs)) == NULL)
        goto err;
    if (batch_hold() < 0)
        goto err;
    if (ev_add(loop, fd, u->mask, udp_read_proc, u) < 0) {
        batch_release();
        goto err;
    }
    return u;
err:
    free(u->srcs);
    free(u);
    return NULL;
}

void udp_echo_stop(struct udp_echo *u) {
    if (u == NULL)
        return;
    ev_del(u->loop, u->fd, u->mask);
    batch_release();
    free(u->srcs);
    free(u);
}
