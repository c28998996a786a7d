/* Fork model: accept, fork a child per connection, the parent closes its
 * copy and accepts again; children are reaped as they exit. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forksrv.h"
#include "hload.h"
#include "log.h"
#include "net.h"
#include "proxyproto.h"
#include "rt_dgram.h"
#include "rt_fork.h"
#include "supervise.h"
#include "udp.h"
#include "upgrade.h"
#include "watch.h"

#define ACCEPT_MAX 16
#define CHILD_BUF (64 * 1024)
#define KILL_GRACE_MS 1000        /* SIGTERM to a child, then SIGKILL */

struct forksrv;

/* A listener: accepting (TCP) or echoing here (UDP). */
struct flisten {
    struct forksrv *fs;
    struct forksrv_listen l;    /* l.fd -1 once draining */
    struct udp_echo *udp;
    struct udp_stats udp_stats;
};

struct forksrv {
    const struct eh_config *cfg;
    pid_t pid;                  /* the master's: a child checks its parent */
    struct hstate *hs;          /* the loaded handler, or NULL: C echo */
    struct watch *watch;        /* --watch */
    ev_loop *loop;
    int epfd;                   /* the loop's, for a child to close */
    struct flisten ls[EH_LISTEN_MAX];
    int nls;
    uint16_t udp_ports[EH_LISTEN_MAX];  /* the loop guard's own ports */
    int nudp;
    struct supervisor sup;      /* signals, the children, the drain */
    long long last_reject_log;
};

/* --- the child --------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= n;
    }
    return 0;
}

/* The close reason of a failed read or write (errno). */
static const char *io_reason(int e) {
    if (e == EAGAIN || e == EWOULDBLOCK)
        return "timeout";       /* SO_RCVTIMEO/SO_SNDTIMEO */
    return e == ECONNRESET || e == EPIPE ? "reset" : "error";
}

/* RFC 862 over a blocking socket: until EOF, an error, or --idle-timeout
 * without progress (SO_RCVTIMEO/SO_SNDTIMEO). */
static int echo_blocking(const struct eh_config *cfg, int fd,
                         struct rtfork_tally *t) {
    static char buf[CHILD_BUF];

    if (cfg->idle_timeout > 0) {
        struct timeval tv;
        tv.tv_sec = (time_t)cfg->idle_timeout;
        tv.tv_usec = (suseconds_t)((cfg->idle_timeout - tv.tv_sec) * 1e6);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            t->reason = n == 0 ? "eof" : io_reason(errno);
            break;
        }
        t->bytes_in += (uint64_t)n;
        if (write_all(fd, buf, n) < 0) {
            t->reason = io_reason(errno);
            break;
        }
        t->bytes_out += (uint64_t)n;
    }
    close(fd);
    return 0;
}

/* In the child, on a ,proxy listener: reads the PROXY header from fd
 * (still non-blocking) within --proxy-timeout, then peer is the client it
 * names. 0, or -1 when the header is refused (logged). */
static int child_proxy(const struct eh_config *cfg, int fd,
                       struct net_peer *peer, const char *listener) {
    static struct proxy_in in;
    double until = net_now() + cfg->proxy_timeout;
    const char *why = "none whole within --proxy-timeout";
    struct proxy_hdr h;
    int rc;

    while ((rc = proxy_read(&in, fd, &h, &why)) == PROXY_MORE) {
        struct pollfd p = {fd, POLLIN, 0};
        double left = until - net_now();
        if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) == 0) {
            why = "none whole within --proxy-timeout";
            break;
        }
    }
    if (rc == PROXY_DONE) {
        if (!h.local)
            net_format_addr((const struct sockaddr *)&h.src, peer->name,
                            sizeof peer->name);
        return 0;
    }
    log_warn("%s: closing %s: PROXY header: %s", listener,
             net_peer_name(peer), why);
    return -1;
}

/* In the child: the connection with the handler, or the C echo (on a
 * blocking socket: see accept_flags). The exit status. */
static int child_serve(struct forksrv *fs, int fd, struct net_peer *peer,
                       struct rtfork_tally *t) {
    int status;

    if (fs->hs == NULL)
        return echo_blocking(fs->cfg, fd, t);
    status = rtfork_serve(fs->hs, fd, peer, t);
    fflush(NULL);               /* what the handler wrote with io.write */
    return status;
}

/* In the child: no master state, default signals but ^C (the master's),
 * die with the master, blocking I/O. Never returns.
 * Every page the child writes is a copy-on-write fault (and on a VM a TLB
 * flush), and every page of code it runs first a fault too: it frees
 * nothing it inherited and leaves by _exit, so no atexit handler,
 * destructor or stdio cleanup touches memory, it names the peer and reads
 * the clock only for what uses them, and the C echo's child runs no code of
 * ours outside this file. */
static void child_run(struct forksrv *fs, int fd, struct net_peer *peer,
                      const struct flisten *fl) {
    const struct eh_config *cfg = fs->cfg;
    const char *listener = fl->l.name;
    struct rtfork_tally t = {0, 0, "closed"};
    long long started = cfg->access_log ? ev_now_ms() : 0;
    sigset_t none;
    int status;

    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != fs->pid)
        _exit(1);
    for (int i = 0; i < fs->nls; i++)
        close(fs->ls[i].l.fd);
    sup_after_fork(&fs->sup);
    close(fs->epfd);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_DFL);
    signal(SIGUSR1, SIG_IGN);           /* the parent reopens the log */
    signal(SIGUSR2, SIG_IGN);           /* and upgrades */
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (fl->l.proxy && child_proxy(cfg, fd, peer, listener) < 0) {
        t.reason = "proxy";
        status = 0;
        close(fd);
    } else {
        if (fl->l.proxy && fs->hs == NULL)
            net_nonblock(NULL, fd, 0);
        status = child_serve(fs, fd, peer, &t);
    }
    if (cfg->access_log)
        log_conn(LOG_NOTICE, (unsigned long long)getpid(), "access: id=%d "
                 "peer=%s listener=%s in=%llu out=%llu ms=%lld reason=%s",
                 (int)getpid(), net_peer_name(peer), listener,
                 (unsigned long long)t.bytes_in,
                 (unsigned long long)t.bytes_out, ev_now_ms() - started,
                 t.reason);
    _exit(status);
}

/* --- the parent -------------------------------------------------------- */

static int reject_log_due(struct forksrv *fs) {
    long long now = ev_time_ms(fs->loop);

    if (now - fs->last_reject_log < 1000)
        return 0;
    fs->last_reject_log = now;
    return 1;
}

/* The master's work per connection is the bound of the fork model (it
 * forks them one after the other): it names no peer it does not log. */
static void serve(struct forksrv *fs, int fd, struct net_peer *peer,
                  const struct flisten *fl) {
    pid_t pid;

    if (sup_count(&fs->sup) >= fs->cfg->max_conns)
        sup_reap(&fs->sup);     /* a child may have exited unnoticed yet */
    if (sup_count(&fs->sup) >= fs->cfg->max_conns) {
        close(fd);
        if (reject_log_due(fs))
            log_warn("max-conns %d reached: refusing %s", fs->cfg->max_conns,
                     net_peer_name(peer));
        return;
    }
    pid = fork();
    if (pid == 0)
        child_run(fs, fd, peer, fl);
    close(fd);
    if (pid < 0) {
        if (reject_log_due(fs))
            log_warn("fork: %s: refusing %s", strerror(errno),
                     net_peer_name(peer));
        return;
    }
    if (sup_add(&fs->sup, pid, 0) < 0)
        log_error("out of memory tracking child %d", (int)pid);
    log_debug("child %d serves %s", (int)pid, net_peer_name(peer));
}

/* The C echo's child reads and writes a blocking socket, so it is accepted
 * so (no fcntl in each child); the PROXY header's reader and a handler's
 * runtime want it non-blocking. */
static int accept_flags(const struct forksrv *fs, const struct flisten *fl) {
    return fs->hs == NULL && !fl->l.proxy ? 0 : SOCK_NONBLOCK;
}

static void accept_proc(ev_loop *loop, int lfd, void *ud, int mask) {
    struct flisten *fl = ud;
    struct forksrv *fs = fl->fs;
    struct net_peer peer;
    int flags = accept_flags(fs, fl);

    (void)loop;
    (void)mask;
    for (int i = 0; i < ACCEPT_MAX && fl->l.fd >= 0; i++) {
        int fd = net_accept_peer(lfd, &peer, flags);
        if (fd >= 0) {
            serve(fs, fd, &peer, fl);
            continue;
        }
        if (errno != EAGAIN && errno != ECONNABORTED && errno != EPROTO &&
            reject_log_due(fs))
            log_warn("accept: %s", strerror(errno));
        return;
    }
}

/* A child ended: only a crash is worth a line. */
static void child_exited(void *ud, int tag, pid_t pid, int status) {
    (void)ud;
    (void)tag;
    if (WIFSIGNALED(status) && WTERMSIG(status) != SIGTERM &&
        WTERMSIG(status) != SIGKILL)
        log_warn("child %d was killed by signal %d (%s)", (int)pid,
                 WTERMSIG(status), strsignal(WTERMSIG(status)));
}

static void close_listeners(struct forksrv *fs) {
    for (int i = 0; i < fs->nls; i++) {
        struct flisten *fl = &fs->ls[i];
        if (fl->l.fd < 0)
            continue;
        if (fl->udp)
            udp_echo_stop(fl->udp);
        else
            ev_del(fs->loop, fl->l.fd, EV_READABLE);
        fl->udp = NULL;
        close(fl->l.fd);
        fl->l.fd = -1;
    }
}

/* The drain begins: children finish their connection meanwhile. */
static void stop_accepting(void *ud) {
    close_listeners(ud);
}

/* SIGUSR2: the new binary gets every listening socket. */
static void upgrade(void *ud) {
    struct forksrv *fs = ud;
    int fds[EH_LISTEN_MAX];
    struct upgrade_fds f = {fds, fs->nls, 1, -1, -1};

    for (int i = 0; i < fs->nls; i++)
        fds[i] = fs->ls[i].l.fd;
    sup_upgrade(&fs->sup, &f);
}

static void watch_changed(void *ud);

/* --watch: the handler file and the modules it required next to it. */
static int fork_watch(struct forksrv *fs) {
    return watch_restart(&fs->watch, fs->loop, fs->hs->files, fs->hs->nfiles,
                         watch_changed, fs);
}

/* Loads the handler file again; children forked from now on serve with the
 * new version, those running keep theirs. A failure keeps the old one. */
static void fork_reload(struct forksrv *fs, const char *trigger) {
    char err[HLOAD_ERR_LEN];

    if (fs->hs == NULL) {
        log_debug("%s: no handler to reload", trigger);
        return;
    }
    if (hstate_load(fs->hs, NULL, err, sizeof err) < 0) {
        hstate_log_refused(fs->hs, trigger, err);
        return;
    }
    log_info("handler %s version %d loaded", fs->hs->path, fs->hs->version);
    if (fs->cfg->watch)
        fork_watch(fs);         /* the files may have changed */
}

static void watch_changed(void *ud) {
    fork_reload(ud, "--watch");
}

static void reload(void *ud, const char *trigger) {
    fork_reload(ud, trigger);
}

/* SIGUSR1 reopens this process's log only: children keep the old file. */
/* The new server serves: the unix: listeners' files are its own now. */
static void handed_over(void *ud) {
    (void)ud;
    server_release_unix();
}

static const struct sup_ops fork_ops = {
    reload, NULL, upgrade, handed_over, stop_accepting, child_exited
};

/* A child serves its connection to the end, or to the drain deadline
 * (nothing unusual: no warning): then SIGTERM (its handler gets on_close
 * "shutdown") and SIGKILL KILL_GRACE_MS later. */
static const struct sup_policy fork_policy = {
    "children", 0, 0, KILL_GRACE_MS, LOG_INFO
};

/* Accepting on each TCP socket, echoing on each UDP one or running the
 * handler's datagram function here, in this process's state (the one
 * children are forked from; SIGHUP and --watch swap it). 0 or -1. */
static int open_listeners(struct forksrv *fs) {
    for (int i = 0; i < fs->nls; i++) {
        struct flisten *fl = &fs->ls[i];
        struct udp_opts o = {
            .name = fl->l.name, .rate = fs->cfg->udp_rate,
            .own_ports = fs->udp_ports, .nown = fs->nudp,
            .stats = &fl->udp_stats,
            .handler = fs->hs ? rtdgram_reply : NULL, .handler_ud = fs->hs};
        if (fl->l.kind == EH_LISTEN_UDP)
            fl->udp = udp_echo_start(fs->loop, fl->l.fd, &o);
        if (fl->l.kind == EH_LISTEN_UDP ? fl->udp == NULL
            : ev_add(fs->loop, fl->l.fd, EV_READABLE, accept_proc, fl) < 0)
            return -1;
    }
    return 0;
}

int forksrv_main(const struct eh_config *cfg, const struct forksrv_listen *ls,
                 int n, struct hstate *hs) {
    struct forksrv fs;
    int rc = 0;

    memset(&fs, 0, sizeof fs);
    fs.cfg = cfg;
    fs.pid = getpid();
    fs.hs = hs;
    for (int i = 0; i < n && i < EH_LISTEN_MAX; i++) {
        fs.ls[fs.nls].fs = &fs;
        fs.ls[fs.nls++].l = ls[i];
        if (ls[i].kind == EH_LISTEN_UDP)
            fs.udp_ports[fs.nudp++] = (uint16_t)net_sock_port(NULL, ls[i].fd);
    }
    fs.loop = ev_create(64);
    fs.epfd = fs.loop ? ev_fd(fs.loop) : -1;
    if (fs.loop == NULL ||
        sup_init(&fs.sup, fs.loop, cfg, &fork_policy, &fork_ops, &fs) < 0 ||
        open_listeners(&fs) < 0) {
        log_error("fork server: %s", strerror(errno));
        rc = 1;
    } else if ((hs && cfg->watch && fork_watch(&fs) < 0) ||
               server_serving(cfg) < 0) {
        rc = 1;
    } else {
        ev_run(fs.loop);
    }
    sup_fini(&fs.sup);
    watch_stop(fs.watch);
    close_listeners(&fs);
    ev_destroy(fs.loop);
    return rc;
}
