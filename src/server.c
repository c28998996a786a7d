/* The server's master process: binds the port, forks the event-model
 * workers, restarts those that die, relays signals, drains on SIGTERM. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "control.h"
#include "daemon.h"
#include "forksrv.h"
#include "hload.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "server.h"
#include "supervise.h"
#include "upgrade.h"
#include "watch.h"
#include "worker.h"

#define BACKLOG 4096
#define BACKOFF_MIN_MS 100        /* a worker that died young waits this, */
#define BACKOFF_MAX_MS 5000       /* doubling up to this */
#define LIVED_LONG_MS 2000        /* lived this long: restart at once */
#define KILL_GRACE_MS 2000        /* workers drain themselves: past their
                                     deadline, SIGKILL */
#define LISTEN_NAME_LEN (EH_UNIX_PATH_MAX + 8)  /* "unix:/run/x.sock" */

struct master;

struct slot {
    struct master *m;
    pid_t pid;                  /* 0: not running */
    long long started;          /* ev_now_ms() at fork */
    int starts;
    int fails;                  /* quick deaths in a row: the backoff */
    long long timer;            /* pending restart, or 0 */
};

struct master {
    const struct eh_config *cfg;
    ev_loop *loop;
    struct supervisor sup;      /* signals, the workers' pids, the drain */
    int exclusive;              /* one socket shared, EPOLLEXCLUSIVE */
    int nslots;
    struct slot *slots;
    struct server_stats st;     /* st.workers: the shared block */
    int nls;                    /* listeners (--listen) */
    struct worker_listener *ls; /* nls x nslots: slot i's are ls[i*nls..] */
    char (*names)[LISTEN_NAME_LEN];     /* nls: what each really is */
    struct listener_stats *lstats;      /* shared, as ls */
    uint16_t udp_ports[EH_LISTEN_MAX];  /* of the UDP listeners */
    int nudp;
    struct control *ctl;        /* --control socket, or NULL */
    struct metrics *metrics;    /* --metrics endpoint, or NULL */
    struct hstate *handler;     /* the current version, or NULL: C echo */
    struct watch *watch;        /* --watch */
    int wready[2];              /* started by an upgrade: closed by every
                                   worker once it serves, or -1 */
    int status;
    pid_t pid;
};

static struct upgrade_inherit inherit = {  /* what the old master handed */
    .control = -1, .metrics = -1, .ready = -1};
static int upgraded;            /* started by an old master's SIGUSR2 */
/* The socket files of the unix: listeners that are this process's to
 * remove at exit: those it bound, or took over from an old master once
 * serving in its place (zero: not its own, e.g. handed to a new one). */
static struct net_unix_id unix_ids[EH_LISTEN_MAX];

/* --- listening --------------------------------------------------------- */

/* The sockets an upgrade handed over: one per --listen (shared), or one
 * per --listen for each of slots workers. The first fd, -2 with err. */
static int inherited_sockets(const struct eh_config *cfg, int slots,
                             int *shared, char *err, size_t len) {
    int n = inherit.shared ? cfg->nlisten : cfg->nlisten * slots;

    if (inherit.nfds != n) {
        snprintf(err, len, "upgrade: %d sockets handed over, %d wanted "
                 "(--listen and --workers changed?)", inherit.nfds, n);
        return -2;
    }
    for (int i = 0; i < n; i++)
        if (daemon_check_socket(inherit.fd + i,
                                cfg->listen[i % cfg->nlisten].kind ==
                                EH_LISTEN_UDP ? SOCK_DGRAM : SOCK_STREAM,
                                "upgrade", err, len) < 0)
            return -2;
    *shared = inherit.shared;
    log_info("upgrade: serving the %d %s of pid %d", n, n == 1 ? "socket"
             : "sockets", (int)inherit.old);
    return inherit.fd;
}

/* Socket activation (LISTEN_FDS): systemd passed one socket for each
 * --listen, in its order, from fd 3 (a listening stream socket for TCP, a
 * datagram socket for udp://), made non-blocking here; *shared set. Or
 * those of an upgrade (slots: the workers). The first fd; -1 when there
 * are none (bind as --listen says), -2 with err. */
static int activated_sockets(const struct eh_config *cfg, int slots,
                             int *shared, char *err, size_t len) {
    int n, fd;

    if (upgraded)
        return inherited_sockets(cfg, slots, shared, err, len);
    if ((fd = daemon_listen_fds(&n, err, len)) < 0)
        return -2;
    if (n == 0)
        return -1;
    if (n != cfg->nlisten) {
        snprintf(err, len, "LISTEN_FDS: %d %s passed for %d --listen (one "
                 "for each, in their order)", n, n == 1 ? "socket" :
                 "sockets", cfg->nlisten);
        return -2;
    }
    for (int l = 0; l < n; l++)
        if (daemon_check_socket(fd + l, cfg->listen[l].kind == EH_LISTEN_UDP
                                ? SOCK_DGRAM : SOCK_STREAM, "LISTEN_FDS",
                                err, len) < 0 ||
            net_nonblock(err, fd + l, 1) < 0)
            return -2;
    log_info("socket activation: serving the %d %s passed from fd %d", n,
             n == 1 ? "socket" : "sockets", fd);
    *shared = 1;
    return fd;
}

/* A socket for l, non-blocking (flags: NET_REUSEPORT, NET_FREE; a unix:
 * one fills *id, the file it bound). The fd, or NET_ERR with err. */
static int listen_one(char *err, const struct eh_listen *l, int flags,
                      struct net_unix_id *id) {
    char nerr[NET_ERR_LEN];
    int fd;

    if (l->kind == EH_LISTEN_UDP)
        return net_udp_server(err, l->host, l->port, NET_NONBLOCK | flags);
    if (l->kind == EH_LISTEN_TCP)
        return net_tcp_server(err, l->host, l->port, BACKLOG,
                              NET_NONBLOCK | flags);
    fd = net_unix_server(nerr, l->host, l->mode, BACKLOG, NET_NONBLOCK, id);
    if (fd < 0)
        snprintf(err, NET_ERR_LEN, "listen unix:%.*s", NET_ERR_LEN - 16,
                 nerr);
    return fd;
}

/* Removes the socket files of the unix: listeners that are still this
 * process's (at exit: a server that is killed leaves a stale one, taken
 * over by the next start). */
static void unlink_unix(const struct eh_config *cfg) {
    for (int i = 0; i < cfg->nlisten; i++)
        if (cfg->listen[i].kind == EH_LISTEN_UNIX && unix_ids[i].ino != 0)
            net_unix_unlink(cfg->listen[i].host, &unix_ids[i]);
}

/* Serving in an old master's place: its files are ours to remove. */
static void claim_unix(const struct eh_config *cfg) {
    for (int i = 0; i < cfg->nlisten; i++)
        if (cfg->listen[i].kind == EH_LISTEN_UNIX)
            net_unix_id_of(cfg->listen[i].host, &unix_ids[i]);
}

void server_release_unix(void) {
    memset(unix_ids, 0, sizeof unix_ids);
}

/* "127.0.0.1:8888", "udp://[::1]:7" or "unix:/run/x.sock": the address fd
 * really has. */
static int listen_name(char *err, const struct eh_listen *l, int fd,
                       char *buf, size_t len) {
    const char *scheme = l->kind == EH_LISTEN_UDP ? "udp://" : "";
    size_t n = strlen(scheme);

    if (l->kind == EH_LISTEN_UNIX) {
        snprintf(buf, len, "unix:%.*s", EH_UNIX_PATH_MAX, l->host);
        return 0;
    }
    memcpy(buf, scheme, n);
    return net_sock_name(err, fd, buf + n, len - n);
}

/* Listener l for every slot. Reuseport mode (the default;
 * ECHOHOST_ACCEPT=exclusive selects the other): one socket per worker slot,
 * all SO_REUSEPORT on the same port (the first learns the port when it is
 * 0). The master keeps them open, so a dead worker's queued connections
 * (and datagrams) wait for its replacement. Exclusive mode, and a unix:
 * listener always (a path has one socket): one socket that every worker
 * polls with EPOLLEXCLUSIVE (so are the sockets systemd
 * passed: act, the first, or -1). 0 or -1 (logged). */
static int master_listen_one(struct master *m, int l, int act) {
    struct eh_listen spec = m->cfg->listen[l];
    int shared = m->exclusive || spec.kind == EH_LISTEN_UNIX;
    int flags = shared ? 0 : NET_REUSEPORT;
    char err[NET_ERR_LEN];

    for (int i = 0; i < m->nslots; i++) {
        struct worker_listener *wl = &m->ls[i * m->nls + l];
        int fd;

        if (act >= 0 && i > 0 && shared && !m->exclusive)
            close(act + i * m->nls + l);    /* that socket again: unused */
        fd = i > 0 && shared ? m->ls[l].fd
             : act >= 0 ? act + (m->exclusive ? l : i * m->nls + l)
             : listen_one(err, &spec, flags |
                          (i == 0 && spec.port ? NET_FREE : 0),
                          &unix_ids[l]);
        if (fd < 0) {
            log_error("%s", err);
            return -1;
        }
        wl->kind = spec.kind;
        wl->fd = fd;
        wl->shared = shared;
        wl->proxy = spec.proxy;
        wl->name = m->names[l];
        wl->stats = &m->lstats[i * m->nls + l];
        if (i == 0 && spec.kind != EH_LISTEN_UNIX &&
            (spec.port = net_sock_port(err, fd)) < 0) {
            log_error("%s", err);
            return -1;
        }
        if (i == 0 && listen_name(err, &spec, fd, m->names[l],
                                  LISTEN_NAME_LEN) < 0) {
            log_error("%s", err);
            return -1;
        }
    }
    if (spec.kind == EH_LISTEN_UDP)
        m->udp_ports[m->nudp++] = (uint16_t)spec.port;
    return 0;
}

/* Every --listen (or the sockets systemd passed for them, one each that
 * the workers share, or those an upgrade handed over); their names,
 * space-separated, into addr (the log's). */
static int master_listen(struct master *m, char *addr, size_t len) {
    char err[DAEMON_ERR_LEN];
    int act = activated_sockets(m->cfg, m->nslots, &m->exclusive, err,
                                sizeof err);
    size_t at = 0;

    if (act == -2) {
        log_error("%s", err);
        return -1;
    }
    for (int l = 0; l < m->nls; l++) {
        if (master_listen_one(m, l, act) < 0)
            return -1;
        at += snprintf(addr + at, at < len ? len - at : 0, "%s%s",
                       l ? " " : "", m->names[l]);
    }
    return 0;
}

static void master_close_listeners(struct master *m) {
    for (int i = 0; i < m->nslots * m->nls; i++) {
        if (m->ls[i].fd >= 0 && (i < m->nls || !m->ls[i].shared))
            close(m->ls[i].fd);
        m->ls[i].fd = -1;
    }
}

/* --- workers ----------------------------------------------------------- */

/* In the new worker: die with the master, drop what only the master uses. */
static void child_setup(struct master *m, int slot) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != m->pid)
        _exit(1);                       /* the master is already gone */
    sup_after_fork(&m->sup);
    ev_destroy(m->loop);
    if (m->wready[0] >= 0)
        close(m->wready[0]);
    if (inherit.ready >= 0)
        close(inherit.ready);           /* the master reports, once */
    control_after_fork(m->ctl);         /* operators' fds are the master's */
    metrics_after_fork(m->metrics);     /* and so are the scrapers' */
    for (int i = 0; i < m->nslots; i++)
        for (int l = 0; l < m->nls && i != slot; l++)
            if (m->ls[i * m->nls + l].fd >= 0 && !m->ls[i * m->nls + l].shared)
                close(m->ls[i * m->nls + l].fd);
}

static long restart_proc(ev_loop *loop, long long id, void *ud);

/* In the new worker: never returns. */
static void worker_child(struct master *m, int i, int ch[2]) {
    struct worker_start ws;

    if (ch[0] >= 0)
        close(ch[0]);
    child_setup(m, i);
    ws.slot = i;
    ws.gen = (unsigned)m->st.workers_started;
    ws.listen = &m->ls[i * m->nls];
    ws.nlisten = m->nls;
    ws.udp_ports = m->udp_ports;
    ws.nudp_ports = m->nudp;
    ws.exclusive = m->exclusive;
    ws.ctl_fd = ch[1];
    ws.ready_fd = m->wready[1];
    ws.stats = &m->st.workers[i];
    ws.handler = m->handler;    /* the worker's copy of the loaded version */
    /* a forked child has no caller to return to: it ends here */
    exit(worker_main(m->cfg, &ws));
}

static void worker_spawn(struct master *m, int i) {
    struct slot *s = &m->slots[i];
    int ch[2] = {-1, -1};
    pid_t pid;

    if (m->ctl && control_channel(ch) < 0)
        log_warn("worker %d: control channel: %s", i, strerror(errno));
    /* the version it starts on, before it can reload */
    stat_set(&m->st.workers[i].handler_version,
             (uint64_t)m->st.handler_version);
    pid = fork();
    if (pid == 0)
        worker_child(m, i, ch);
    if (ch[1] >= 0)
        close(ch[1]);
    if (pid < 0) {
        log_error("fork worker %d: %s (retrying)", i, strerror(errno));
        if (ch[0] >= 0)
            close(ch[0]);
        s->timer = ev_timer_add(m->loop, BACKOFF_MAX_MS, restart_proc, s);
        return;
    }
    m->st.workers_started++;
    if (sup_add(&m->sup, pid, i) < 0)
        log_error("out of memory tracking worker %d (pid %d)", i, (int)pid);
    s->pid = pid;
    s->starts++;
    s->started = ev_now_ms();
    stat_set(&m->st.workers[i].pid, (uint64_t)pid);
    stat_set(&m->st.workers[i].started_ms, (uint64_t)s->started);
    if (m->ctl)
        control_set_worker(m->ctl, i, pid, ch[0]);
}

static long restart_proc(ev_loop *loop, long long id, void *ud) {
    struct slot *s = ud;
    struct master *m = s->m;

    (void)loop;
    (void)id;
    s->timer = 0;
    if (!sup_draining(&m->sup))
        worker_spawn(m, (int)(s - m->slots));
    return EV_NOMORE;
}

/* Slot i's worker was reaped: its figures say so (no writer is left). */
static void master_worker_gone(struct master *m, int i) {
    stats_worker_gone(&m->st.workers[i]);
    for (int l = 0; l < m->nls; l++)
        stat_set(&m->lstats[i * m->nls + l].conns_open, 0);
}

/* Schedules the restart of slot i, sooner if it lived long. */
static void worker_died(struct master *m, int i, int status) {
    struct slot *s = &m->slots[i];
    pid_t pid = s->pid;
    char what[128];
    long delay;

    s->pid = 0;                         /* reaped: never signal it again */
    sup_describe(status, what, sizeof what);
    if (ev_now_ms() - s->started >= LIVED_LONG_MS)
        s->fails = 0;
    delay = s->fails == 0 ? 0 : BACKOFF_MIN_MS << (s->fails - 1);
    if (delay > BACKOFF_MAX_MS)
        delay = BACKOFF_MAX_MS;
    s->fails++;
    log_warn("worker %d (pid %d) %s; restarting in %ld ms", i, (int)pid,
             what, delay);
    s->timer = ev_timer_add(m->loop, delay, restart_proc, s);
}

/* Slot i's worker was reaped (i -1: not a worker). Restarted unless
 * draining. */
static void master_exited(void *ud, int i, pid_t pid, int status) {
    struct master *m = ud;
    char what[128];

    if (i < 0)
        return;
    master_worker_gone(m, i);
    if (m->ctl)
        control_set_worker(m->ctl, i, 0, -1);
    if (!sup_draining(&m->sup)) {
        worker_died(m, i, status);
        return;
    }
    sup_describe(status, what, sizeof what);
    log_debug("worker %d (pid %d) %s", i, (int)pid, what);
    m->slots[i].pid = 0;
}

/* --- the handler ------------------------------------------------------- */

static void master_watched(void *ud);

/* --watch: the handler file and the modules it required next to it. */
static int master_watch(struct master *m) {
    return watch_restart(&m->watch, m->loop, m->handler->files,
                         m->handler->nfiles, master_watched, m);
}

/* Loads path (NULL: the current file) into the master's copy first: a
 * worker started later forks from it, and a file that does not load is
 * refused here, once, before any worker tries it. 0 or -1 and err. */
static int master_load(struct master *m, const char *path, char *err,
                       size_t errlen) {
    if (hstate_load(m->handler, path, err, errlen) < 0) {
        m->st.reload_failures++;
        return -1;
    }
    m->st.reloads++;
    m->st.handler_version = m->handler->version;
    log_debug("handler %s version %d loaded in the master", m->handler->path,
              m->handler->version);
    if (m->cfg->watch)
        master_watch(m);        /* the files may have changed */
    return 0;
}

/* SIGHUP or --watch: reload in the master, then in every worker. */
static void master_reload(struct master *m, const char *trigger) {
    char err[HLOAD_ERR_LEN];
    int n;

    if (m->handler == NULL) {
        log_info("%s: no handler to reload", trigger);
        return;
    }
    if (master_load(m, NULL, err, sizeof err) < 0) {
        hstate_log_refused(m->handler, trigger, err);
        return;
    }
    n = sup_count(&m->sup);
    log_info("%s: reloading the handler in %d %s", trigger, n,
             n == 1 ? "worker" : "workers");
    sup_signal_all(&m->sup, SIGHUP);
}

static void master_watched(void *ud) {
    master_reload(ud, "--watch");
}

/* The control socket's handler(path) and reload(), before the workers. */
static int control_swap(void *ud, const char *path, char *err,
                        size_t errlen) {
    struct master *m = ud;

    if (m->handler == NULL) {
        snprintf(err, errlen, "this server echoes in C (started without "
                 "--handler): nothing to swap");
        return -1;
    }
    if (master_load(m, path, err, errlen) < 0) {
        hstate_log_refused(m->handler, path ? "handler()" : "reload()", err);
        return -1;
    }
    return 0;
}

/* --- supervision -------------------------------------------------------- */

static void master_reload_proc(void *ud, const char *trigger) {
    master_reload(ud, trigger);
}

static void master_reopened(void *ud) {
    struct master *m = ud;

    sup_signal_all(&m->sup, SIGUSR1);
    log_info("SIGUSR1: log reopened");
}

/* The drain begins: no more accepting, no more restarts. */
static void master_stop_accepting(void *ud) {
    struct master *m = ud;

    master_close_listeners(m);
    for (int i = 0; i < m->nslots; i++) {
        if (m->slots[i].timer) {
            ev_timer_del(m->loop, m->slots[i].timer);
            m->slots[i].timer = 0;
        }
    }
}

/* The new master serves: this one hands over the control socket and the
 * metrics endpoint, then drains. */
static void master_handed_over(void *ud) {
    struct master *m = ud;

    if (m->ctl)
        control_release(m->ctl);
    if (m->metrics)
        metrics_release(m->metrics);
    server_release_unix();
}

/* SIGUSR2: the new binary gets every listening socket (one per --listen,
 * or one per worker per --listen) and the control socket. */
static void master_upgrade(void *ud) {
    struct master *m = ud;
    int n = m->exclusive ? m->nls : m->nslots * m->nls;
    int *fds = malloc(n * sizeof *fds);
    struct upgrade_fds f = {fds, n, m->exclusive,
                            m->ctl ? control_fd(m->ctl) : -1,
                            m->metrics ? metrics_fd(m->metrics) : -1};

    if (fds == NULL) {
        log_error("SIGUSR2: out of memory; still serving");
        return;
    }
    for (int i = 0; i < n; i++)
        fds[i] = m->ls[i].fd;
    sup_upgrade(&m->sup, &f);
    free(fds);
}

static const struct sup_ops master_ops = {
    master_reload_proc, master_reopened, master_upgrade, master_handed_over,
    master_stop_accepting, master_exited
};

/* Workers drain themselves on SIGTERM (--drain-timeout): the master kills
 * what is left KILL_GRACE_MS later, which is worth a warning. */
static const struct sup_policy master_policy = {
    "workers", 1, KILL_GRACE_MS, 0, LOG_WARN
};

/* --- process conventions ----------------------------------------------- */

static uid_t run_uid;           /* --user, looked up at the start */
static gid_t run_gid;

/* The unix: listeners' files it bound, given to --user. 0 or -1 with
 * err. */
static int chown_unix(const struct eh_config *cfg, char *err, size_t len) {
    for (int i = 0; i < cfg->nlisten; i++) {
        const char *path = cfg->listen[i].host;
        if (cfg->listen[i].kind == EH_LISTEN_UNIX && unix_ids[i].ino != 0 &&
            chown(path, run_uid, run_gid) < 0) {
            snprintf(err, len, "listen unix:%.*s: chown: %s",
                     EH_UNIX_PATH_MAX, path, strerror(errno));
            return -1;
        }
    }
    return 0;
}

/* Bound: the pid file, then root is dropped (--user; the control socket
 * and the unix: listeners it bound given to that user first).
 * Started by an upgrade, the pid file waits for the take-over
 * (server_serving), and a master that is not root runs as the old one
 * did, which dropped it. 0, or -1 (logged). */
static int server_settle(const struct eh_config *cfg) {
    char err[DAEMON_ERR_LEN];

    if (cfg->pid_file && !upgraded &&
        daemon_pid_write(cfg->pid_file, err, sizeof err) < 0)
        goto err;
    if (cfg->user == NULL || (upgraded && geteuid() != 0))
        return 0;
    if (cfg->control && chown(cfg->control, run_uid, run_gid) < 0) {
        snprintf(err, sizeof err, "control socket %s: chown: %s",
                 cfg->control, strerror(errno));
        goto err;
    }
    if (chown_unix(cfg, err, sizeof err) < 0)
        goto err;
    if (daemon_drop(cfg->user, run_uid, run_gid, err, sizeof err) < 0)
        goto err;
    log_info("running as %s (uid %d)", cfg->user, (int)run_uid);
    return 0;
err:
    log_error("%s", err);
    return -1;
}

/* Serving: systemd hears READY=1. Or, started by an upgrade: the pid file
 * names this master and the old one hears we serve (it tells systemd our
 * MAINPID). 0, or -1 when the pid file cannot be written (logged: this
 * master does not take over). */
int server_serving(const struct eh_config *cfg) {
    char err[DAEMON_ERR_LEN];

    if (!upgraded) {
        if (daemon_notify("READY=1", err, sizeof err) < 0)
            log_warn("%s", err);
        return 0;
    }
    if (cfg->pid_file && daemon_pid_write(cfg->pid_file, err, sizeof err) < 0) {
        log_error("upgrade: %s: not taking over from pid %d", err,
                  (int)inherit.old);
        return -1;
    }
    log_notice("upgrade: serving in place of pid %d", (int)inherit.old);
    claim_unix(cfg);
    if (upgrade_report_ready(&inherit, err, sizeof err) < 0)
        log_warn("%s", err);
    return 0;
}

/* --- master ------------------------------------------------------------ */

/* Zeroed memory shared with the workers forked later, or NULL. */
static void *shared_alloc(size_t len) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);

    return p == MAP_FAILED ? NULL : p;
}

static int master_metrics(struct master *m) {
    char err[NET_ERR_LEN + 32], addr[NET_ADDR_LEN];

    m->metrics = upgraded && inherit.metrics >= 0
                 ? metrics_adopt(m->loop, inherit.metrics, &m->st, addr,
                                 sizeof addr, err, sizeof err)
                 : metrics_open(m->loop, m->cfg->metrics_host,
                                m->cfg->metrics_port, &m->st, addr,
                                sizeof addr, err, sizeof err);
    if (m->metrics == NULL) {
        log_error("%s", err);
        return -1;
    }
    log_notice("metrics on http://%s/metrics", addr);
    return 0;
}

static int master_init(struct master *m, char *addr, size_t len) {
    const char *mode = getenv("ECHOHOST_ACCEPT");

    m->exclusive = mode != NULL && strcmp(mode, "exclusive") == 0;
    m->nslots = m->cfg->workers;
    m->nls = m->cfg->nlisten;
    m->pid = getpid();
    m->slots = calloc(m->nslots, sizeof *m->slots);
    m->ls = calloc(m->nslots * m->nls, sizeof *m->ls);
    m->names = calloc(m->nls, sizeof *m->names);
    m->st.workers = stats_map(m->nslots);   /* before any fork */
    m->st.nworkers = m->nslots;
    m->st.listeners = m->ls;
    m->st.nlisten = m->nls;
    m->st.handler_version = m->handler ? m->handler->version : 0;
    m->lstats = shared_alloc(m->nslots * m->nls * sizeof *m->lstats);
    if (m->slots == NULL || m->ls == NULL || m->names == NULL ||
        m->st.workers == NULL || m->lstats == NULL) {
        log_error("out of memory");
        return -1;
    }
    for (int i = 0; i < m->nslots; i++)
        m->slots[i].m = m;
    for (int i = 0; i < m->nslots * m->nls; i++)
        m->ls[i].fd = -1;
    if (master_listen(m, addr, len) < 0)
        return -1;
    m->loop = ev_create(64);
    if (m->loop == NULL ||
        sup_init(&m->sup, m->loop, m->cfg, &master_policy, &master_ops,
                 m) < 0 ||
        (upgraded && pipe2(m->wready, O_CLOEXEC) < 0)) {
        log_error("master: %s", strerror(errno));
        return -1;
    }
    if (m->cfg->control) {
        char err[CONTROL_ERR_LEN];
        m->ctl = upgraded && inherit.control >= 0
                 ? control_adopt(m->loop, m->cfg, inherit.control, err,
                                 sizeof err)
                 : control_open(m->loop, m->cfg, err, sizeof err);
        if (m->ctl == NULL) {
            log_error("%s", err);
            return -1;
        }
        control_set_swap(m->ctl, control_swap, m);
        control_set_stats(m->ctl, &m->st);
    }
    if (m->cfg->metrics && master_metrics(m) < 0)
        return -1;
    if (m->handler && m->cfg->watch && master_watch(m) < 0)
        return -1;
    return 0;
}

static void master_fini(struct master *m) {
    sup_fini(&m->sup);          /* kills what is left, before its figures go */
    watch_stop(m->watch);
    metrics_close(m->metrics);
    if (m->ctl)
        control_close(m->ctl);
    if (m->ls)
        master_close_listeners(m);
    unlink_unix(m->cfg);
    for (int i = 0; i < 2; i++)
        if (m->wready[i] >= 0)
            close(m->wready[i]);
    ev_destroy(m->loop);
    stats_unmap(m->st.workers, m->nslots);
    if (m->lstats)
        munmap(m->lstats, m->nslots * m->nls * sizeof *m->lstats);
    free(m->slots);
    free(m->ls);
    free(m->names);
}

/* Started by an upgrade: every worker has closed its end of wready (it
 * serves, or it died). All of them up at the first try: take over. */
static void master_workers_ready(ev_loop *loop, int fd, void *ud, int mask) {
    struct master *m = ud;

    (void)mask;
    ev_del(loop, fd, EV_READABLE);
    close(fd);
    m->wready[0] = -1;
    for (int i = 0; i < m->nslots; i++) {
        if (m->slots[i].pid <= 0 || m->slots[i].starts != 1) {
            log_error("upgrade: worker %d did not start: not taking over "
                      "from pid %d", i, (int)inherit.old);
            m->status = 1;
            ev_stop(loop);
            return;
        }
    }
    if (m->ctl)
        control_claim(m->ctl);
    if (server_serving(m->cfg) < 0) {
        m->status = 1;
        ev_stop(loop);
    }
}

/* Spawns the workers; serving once they are up (after an upgrade: once
 * every one of them has said so). 0 or -1. */
static int master_start_workers(struct master *m) {
    if (!upgraded)
        server_serving(m->cfg);
    for (int i = 0; i < m->nslots; i++)
        worker_spawn(m, i);
    if (!upgraded)
        return 0;
    close(m->wready[1]);
    m->wready[1] = -1;
    return ev_add(m->loop, m->wready[0], EV_READABLE, master_workers_ready,
                  m);
}

static int master_main(const struct eh_config *cfg, struct hstate *hs) {
    struct master m;
    char addr[EH_LISTEN_MAX * LISTEN_NAME_LEN];

    memset(&m, 0, sizeof m);
    m.cfg = cfg;
    m.handler = hs;
    m.wready[0] = m.wready[1] = -1;
    if (master_init(&m, addr, sizeof addr) < 0 ||
        server_settle(cfg) < 0) {
        master_fini(&m);
        return 1;
    }
    log_notice("listening on %s (%d %s, %s)", addr, m.nslots,
               m.nslots == 1 ? "worker" : "workers",
               cfg->handler ? cfg->handler : "C echo");
    log_started();
    if (master_start_workers(&m) < 0) {
        log_error("master: %s", strerror(errno));
        m.status = 1;
    } else {
        ev_run(m.loop);
    }
    master_fini(&m);
    return m.status;
}

/* A handler that cannot be read is one clear line here, not one per
 * worker (a file that does not compile is reported by the workers). */
static int handler_readable(const struct eh_config *cfg) {
    FILE *f;

    if (cfg->handler == NULL)
        return 1;
    if ((f = fopen(cfg->handler, "r")) == NULL) {
        log_error("handler %s: %s", cfg->handler, strerror(errno));
        return 0;
    }
    fclose(f);
    return 1;
}

/* Binds every --listen once (no workers to share them), or takes the
 * sockets systemd passed. */
static int fork_main(const struct eh_config *cfg, struct hstate *hs) {
    static char names[EH_LISTEN_MAX][LISTEN_NAME_LEN];
    struct forksrv_listen ls[EH_LISTEN_MAX];
    char err[DAEMON_ERR_LEN], addr[EH_LISTEN_MAX * LISTEN_NAME_LEN];
    int shared, act = activated_sockets(cfg, 1, &shared, err, sizeof err);
    size_t at = 0;
    int n, rc;

    if (act == -2) {
        log_error("%s", err);
        return 1;
    }
    for (n = 0; n < cfg->nlisten; n++) {
        const struct eh_listen *l = &cfg->listen[n];
        ls[n].kind = l->kind;
        ls[n].proxy = l->proxy;
        ls[n].name = names[n];
        ls[n].fd = act >= 0 ? act + n : listen_one(err, l, 0, &unix_ids[n]);
        if (ls[n].fd < 0 ||
            listen_name(err, l, ls[n].fd, names[n], sizeof names[n]) < 0) {
            log_error("%s", err);
            n += ls[n].fd >= 0;
            while (n-- > 0)
                close(ls[n].fd);
            unlink_unix(cfg);
            return 1;
        }
        at += snprintf(addr + at, sizeof addr - at, "%s%s", n ? " " : "",
                       names[n]);
    }
    if (server_settle(cfg) < 0) {
        while (n-- > 0)
            close(ls[n].fd);
        unlink_unix(cfg);
        return 1;
    }
    log_notice("listening on %s (fork model, %s)", addr,
               cfg->handler ? cfg->handler : "C echo");
    log_started();
    rc = forksrv_main(cfg, ls, n, hs);
    unlink_unix(cfg);
    return rc;
}

/* Loads the handler once, before anything listens: a file that does not
 * load is one line and exit 1, in both models. */
int server_main(const struct eh_config *cfg) {
    struct hstate hs, *h = NULL;
    char err[HLOAD_ERR_LEN];
    int rc;

    signal(SIGPIPE, SIG_IGN);
    if (cfg->argv)
        upgrade_set_command(cfg->argv);
    if (cfg->log_file && log_open(cfg->log_file, err, sizeof err) < 0) {
        log_error("%s", err);
        return 1;
    }
    if ((upgraded = upgrade_inherited(&inherit, err, sizeof err)) < 0) {
        log_error("%s", err);
        return 1;
    }
    if (cfg->pid_file && daemon_pid_check(cfg->pid_file, upgraded ?
                                          inherit.old : 0, err,
                                          sizeof err) < 0) {
        log_error("%s", err);
        return 1;
    }
    if (cfg->user && !(upgraded && geteuid() != 0) &&
        daemon_user_lookup(cfg->user, &run_uid, &run_gid, err, sizeof err) < 0) {
        log_error("%s", err);
        return 1;
    }
    if (!handler_readable(cfg))
        return 1;
    if (cfg->handler) {
        if (hstate_open(&hs, cfg, err, sizeof err) < 0) {
            log_error("cannot load the handler: %s", err);
            return 1;
        }
        log_info("handler %s version 1 loaded", hs.path);
        h = &hs;
    }
    rc = cfg->model == EH_MODEL_FORK ? fork_main(cfg, h) : master_main(cfg, h);
    if (cfg->pid_file)
        daemon_pid_remove(cfg->pid_file);
    if (h)
        hstate_close(h);
    return rc;
}
