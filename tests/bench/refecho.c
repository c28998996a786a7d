/* refecho: the reference echo server of `make bench`. One thread, one epoll,
 * edge-triggered, accepts until EAGAIN and reads each new socket right
 * away (its client spoke first), no allocation on the steady path: the
 * floor any event-loop echo must reach. With udp://HOST:PORT, the floor of a
 * UDP echo: blocking recvmmsg, then sendmmsg of the batch, nothing else.
 * The options are the variants the benchmark checks it against (none may
 * beat the reference anywhere): -l level-triggered (-e edge-triggered, the
 * default since 2026-12-04: 1-1.3 % more on rr 50x1 KiB, where a
 * level-triggered epoll_wait polls every socket it reported the time
 * before once more), -w wait for epoll before the first read, -d TCP_DEFER_ACCEPT,
 * -1 one accept per wake-up, -c SO_INCOMING_CPU on the listener, -s USECS
 * busy-poll: epoll_wait with no timeout for that long before sleeping.
 * -f is the floor of the other design, a process per connection: blocking
 * accept, fork, the child echoes with blocking reads and writes and _exits,
 * reaped after the next accept (so that its CPU time is counted); no epoll.
 * Usage: refecho [-e|-l] [-w] [-d] [-1] [-c] [-s USECS] [-f]
 *                [HOST:PORT | udp://HOST:PORT]
 * (default 127.0.0.1:0). */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define REF_BUF     (64 * 1024)
#define REF_EVENTS  256
#define REF_ACCEPTS 64
#define REF_BATCH   32                  /* datagrams per recvmmsg */
#define REF_DGRAM   65536

/* Output that did not fit in the socket: the connection stops reading until
 * it has been written (backpressure, bounded by one read per connection). */
struct ref_pending {
    size_t off, len;
    char data[];
};

static int opt_et = 1, opt_wait, opt_defer, opt_one, opt_cpu, opt_fork;
static long opt_spin;           /* -s USECS: epoll_wait(0) that long first */

static struct ref_pending **ref_out;    /* indexed by fd */
static int ref_maxfd;
static char ref_buf[REF_BUF];

/* Listens on an IPv4 HOST:PORT (type SOCK_STREAM) or binds it (SOCK_DGRAM);
 * fills the bound address; -1 on failure. */
static int ref_listen(const char *spec, int type, struct sockaddr_in *bound) {
    char host[64] = "127.0.0.1";
    const char *colon = strrchr(spec, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    int fd, one = 1;

    if (colon) {
        size_t n = (size_t)(colon - spec);
        if (n >= sizeof host) return errno = EINVAL, -1;
        memcpy(host, spec, n);
        host[n] = '\0';
    }
    sa.sin_port = htons((unsigned short)atoi(colon ? colon + 1 : spec));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return errno = EINVAL, -1;
    fd = socket(AF_INET, type | SOCK_CLOEXEC |
                (type == SOCK_STREAM ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -1;
    if (type == SOCK_STREAM) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        /* accepted sockets inherit it: no setsockopt per connection */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        (type == SOCK_STREAM && listen(fd, SOMAXCONN) < 0) ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
        close(fd);
        return -1;
    }
    *bound = sa;
    return fd;
}

/* close() alone takes the fd out of the epoll set (it is never dup'ed): no
 * EPOLL_CTL_DEL, one system call less per connection. */
static void ref_close(int fd) {
    if (fd < ref_maxfd) {
        free(ref_out[fd]);
        ref_out[fd] = NULL;
    }
    close(fd);
}

static void ref_read(int ep, int fd);

static void ref_accept(int ep, int lfd) {
    int i;

    for (i = 0; i < (opt_one ? 1 : REF_ACCEPTS); i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN | (opt_et ? EPOLLET : 0)};
        if (fd < 0) return;
        if (fd >= ref_maxfd) {          /* no room to park output: refuse */
            close(fd);
            continue;
        }
        ev.data.fd = fd;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            continue;
        }
        if (!opt_wait)
            ref_read(ep, fd);
    }
}

/* Parks the unwritten tail and swaps interest from reading to writing. */
static void ref_park(int ep, int fd, const char *p, size_t n) {
    struct ref_pending *o = malloc(sizeof *o + n);
    struct epoll_event ev = {.events = EPOLLOUT | (opt_et ? EPOLLET : 0),
                             .data.fd = fd};
    if (!o) {
        ref_close(fd);
        return;
    }
    o->off = 0;
    o->len = n;
    memcpy(o->data, p, n);
    ref_out[fd] = o;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
}

static void ref_read(int ep, int fd) {
    ssize_t n = read(fd, ref_buf, sizeof ref_buf), w;

    if (opt_et && n == (ssize_t)sizeof ref_buf) {
        /* edge-triggered: what is left would never be signalled again */
        w = write(fd, ref_buf, (size_t)n);
        if (w == n) {
            ref_read(ep, fd);
            return;
        }
        if (w < 0 && errno != EAGAIN) {
            ref_close(fd);
            return;
        }
        ref_park(ep, fd, ref_buf + (w < 0 ? 0 : w), (size_t)(n - (w < 0 ? 0 : w)));
        return;
    }
    if (n <= 0) {
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) ref_close(fd);
        return;
    }
    w = write(fd, ref_buf, (size_t)n);
    if (w == n) return;
    if (w < 0) {
        if (errno != EAGAIN) {
            ref_close(fd);
            return;
        }
        w = 0;
    }
    ref_park(ep, fd, ref_buf + w, (size_t)(n - w));
}

static void ref_write(int ep, int fd) {
    struct ref_pending *o = ref_out[fd];
    struct epoll_event ev = {.events = EPOLLIN | (opt_et ? EPOLLET : 0),
                             .data.fd = fd};
    ssize_t w = write(fd, o->data + o->off, o->len - o->off);

    if (w < 0) {
        if (errno != EAGAIN) ref_close(fd);
        return;
    }
    o->off += (size_t)w;
    if (o->off < o->len) return;
    free(o);
    ref_out[fd] = NULL;
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    if (opt_et)
        ref_read(ep, fd);               /* bytes that came meanwhile */
}

static long long ref_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void ref_loop(int ep, int lfd) {
    struct epoll_event evs[REF_EVENTS];

    for (;;) {
        int i, n = 0;
        /* -s: stay awake a while; on a VM each sleep and wake-up of
         * either side costs the other a hypervisor round trip */
        if (opt_spin) {
            long long start = ref_now_us();
            do
                n = epoll_wait(ep, evs, REF_EVENTS, 0);
            while (n == 0 && ref_now_us() - start < opt_spin);
        }
        if (n == 0)
            n = epoll_wait(ep, evs, REF_EVENTS, -1);
        if (n < 0 && errno != EINTR) return;
        for (i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd)
                ref_accept(ep, lfd);
            else if (ref_out[fd])
                ref_write(ep, fd);
            else
                ref_read(ep, fd);
        }
    }
}

/* -f: a child per connection. */
static void ref_fork_loop(int lfd) {
    int flags = fcntl(lfd, F_GETFL);

    fcntl(lfd, F_SETFL, flags & ~O_NONBLOCK);
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return;
        }
        if (fork() == 0) {
            ssize_t n;
            close(lfd);
            while ((n = read(fd, ref_buf, sizeof ref_buf)) > 0)
                for (ssize_t off = 0, w; off < n; off += w)
                    if ((w = write(fd, ref_buf + off, (size_t)(n - off))) <= 0)
                        _exit(0);
            _exit(0);
        }
        close(fd);
    }
}

/* UDP: each batch straight back; what a full socket does not take is
 * dropped, as echohost does. */
static void ref_udp_loop(int fd) {
    static char bufs[REF_BATCH][REF_DGRAM];
    static struct sockaddr_in addrs[REF_BATCH];
    static struct mmsghdr in[REF_BATCH], out[REF_BATCH];
    static struct iovec iov[REF_BATCH], oiov[REF_BATCH];

    for (;;) {
        int i, n;
        for (i = 0; i < REF_BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = REF_DGRAM;
            in[i].msg_hdr = (struct msghdr){
                .msg_name = &addrs[i], .msg_namelen = sizeof addrs[i],
                .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        n = recvmmsg(fd, in, REF_BATCH, MSG_WAITFORONE, NULL);
        if (n < 0 && errno != EINTR) return;
        for (i = 0; i < n; i++) {
            oiov[i].iov_base = bufs[i];
            oiov[i].iov_len = in[i].msg_len;
            out[i].msg_hdr = (struct msghdr){
                .msg_name = &addrs[i], .msg_namelen = in[i].msg_hdr.msg_namelen,
                .msg_iov = &oiov[i], .msg_iovlen = 1};
        }
        for (i = 0; i < n;) {
            int r = sendmmsg(fd, out + i, (unsigned)(n - i), MSG_DONTWAIT);
            if (r > 0) i += r;
            else if (errno != EINTR) break;
        }
    }
}

/* The line the benchmark waits for. */
static void ref_ready(const char *scheme, const struct sockaddr_in *sa) {
    char host[INET_ADDRSTRLEN];

    inet_ntop(AF_INET, &sa->sin_addr, host, sizeof host);
    printf("refecho listening on %s%s:%d\n", scheme, host, ntohs(sa->sin_port));
    fflush(stdout);
}

int main(int argc, char **argv) {
    struct epoll_event ev = {.events = EPOLLIN};
    struct sockaddr_in sa;
    const char *spec = "127.0.0.1:0";
    int udp, ep, lfd, one = 1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-e") == 0) opt_et = 1;
        else if (strcmp(argv[i], "-l") == 0) opt_et = 0;
        else if (strcmp(argv[i], "-w") == 0) opt_wait = 1;
        else if (strcmp(argv[i], "-d") == 0) opt_defer = 1;
        else if (strcmp(argv[i], "-1") == 0) opt_one = 1;
        else if (strcmp(argv[i], "-c") == 0) opt_cpu = 1;
        else if (strcmp(argv[i], "-f") == 0) opt_fork = 1;
        else if (strcmp(argv[i], "-s") == 0 && i + 1 < argc)
            opt_spin = atol(argv[++i]);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: refecho [-e|-l] [-w] [-d] [-1] [-c] [-s USECS] [-f] "
                    "[HOST:PORT | udp://HOST:PORT]\n");
            return 2;
        } else spec = argv[i];
    }
    udp = strncmp(spec, "udp://", 6) == 0;
    lfd = ref_listen(spec + (udp ? 6 : 0), udp ? SOCK_DGRAM : SOCK_STREAM, &sa);
    long maxfd = sysconf(_SC_OPEN_MAX);

    if (lfd < 0) {
        fprintf(stderr, "refecho: cannot listen on %s: %s\n", spec,
                strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    if (udp) {
        ref_ready("udp://", &sa);
        ref_udp_loop(lfd);
        perror("refecho: recvmmsg");
        return 1;
    }
    if (opt_defer)
        setsockopt(lfd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one);
    if (opt_cpu) {
        int cpu = sched_getcpu();
        setsockopt(lfd, SOL_SOCKET, SO_INCOMING_CPU, &cpu, sizeof cpu);
    }
    if (opt_fork) {
        ref_ready("", &sa);
        ref_fork_loop(lfd);
        perror("refecho: accept");
        return 1;
    }
    ref_maxfd = (int)(maxfd > 0 ? maxfd : 1024);
    ref_out = calloc((size_t)ref_maxfd, sizeof *ref_out);
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev.data.fd = lfd;
    if (!ref_out || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        perror("refecho");
        return 1;
    }
    ref_ready("", &sa);
    ref_loop(ep, lfd);
    perror("refecho: epoll_wait");
    return 1;
}
