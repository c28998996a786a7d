/* Supervision: the one supervisor of both masters (signals, children,
 * reaping, the drain and its deadline, kill-and-wait, upgrades) and the
 * drain that the event worker shares with it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "supervise.h"

#define SIGNALS_MAX 8

/* --- the drain ----------------------------------------------------------- */

void sup_drain_init(struct sup_drain *d, ev_loop *loop,
                    const struct sup_drain_ops *ops, void *ud) {
    memset(d, 0, sizeof *d);
    d->loop = loop;
    d->ops = ops;
    d->ud = ud;
}

static long drain_deadline_proc(ev_loop *loop, long long id, void *ud) {
    struct sup_drain *d = ud;

    (void)id;
    d->timer = 0;
    d->ops->end(d->ud, 1);
    ev_stop(loop);
    return EV_NOMORE;
}

void sup_drain_stop(struct sup_drain *d, long ms) {
    if (d->on) {
        d->ops->end(d->ud, 0);
        ev_stop(d->loop);
        return;
    }
    d->on = 1;
    d->ops->begin(d->ud);
    if (!d->ops->busy(d->ud)) {
        ev_stop(d->loop);
        return;
    }
    d->timer = ev_timer_add(d->loop, ms, drain_deadline_proc, d);
}

int sup_drain_done(const struct sup_drain *d) {
    return d->on && !d->ops->busy(d->ud);
}

/* --- the signals --------------------------------------------------------- */

struct sig_reader {
    sup_signal_proc *proc;
    void *ud;
};

/* One reader per process and loop: a master or a worker has one. */
static struct sig_reader sig_reader;

static void signal_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct sig_reader *r = ud;
    struct signalfd_siginfo si;

    (void)loop;
    (void)mask;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si)
        r->proc(r->ud, (int)si.ssi_signo);
}

int sup_signals(ev_loop *loop, const int *sigs, int n, int set,
                sup_signal_proc *proc, void *ud) {
    sigset_t mask;
    int fd;

    sigemptyset(&mask);
    for (int i = 0; i < n; i++)
        sigaddset(&mask, sigs[i]);
    sigprocmask(set ? SIG_SETMASK : SIG_BLOCK, &mask, NULL);
    if ((fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return -1;
    sig_reader.proc = proc;
    sig_reader.ud = ud;
    if (ev_add(loop, fd, EV_READABLE, signal_proc, &sig_reader) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* --- the table of children ----------------------------------------------- */

/* The table is a mapping of its own that no child inherits: in the heap,
 * its page would be copy-on-write after each fork and the master's next
 * write to it a page fault, one per connection under --model fork. No
 * child reads it (the workers and the fork children never return to the
 * master's code). */
static int kids_grow(struct supervisor *s) {
    size_t old = (size_t)s->capkids * sizeof *s->kids;
    size_t len = old ? old * 2 : 4096;
    void *p = old ? mremap(s->kids, old, len, MREMAP_MAYMOVE)
                  : mmap(NULL, len, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    if (p == MAP_FAILED)
        return -1;
    if (old == 0)
        madvise(p, len, MADV_DONTFORK);         /* mremap keeps it */
    s->kids = p;
    s->capkids = (int)(len / sizeof *s->kids);
    return 0;
}

int sup_add(struct supervisor *s, pid_t pid, int tag) {
    if (s->nkids == s->capkids && kids_grow(s) < 0)
        return -1;
    s->kids[s->nkids].pid = pid;
    s->kids[s->nkids++].tag = tag;
    return 0;
}

/* Forgets pid; its tag, or -1 when it was not in the table. */
static int kid_remove(struct supervisor *s, pid_t pid) {
    for (int i = 0; i < s->nkids; i++) {
        if (s->kids[i].pid == pid) {
            int tag = s->kids[i].tag;
            s->kids[i] = s->kids[--s->nkids];
            return tag;
        }
    }
    return -1;
}

int sup_count(const struct supervisor *s) {
    return s->nkids;
}

int sup_draining(const struct supervisor *s) {
    return s->drain.on;
}

void sup_signal_all(struct supervisor *s, int sig) {
    for (int i = 0; i < s->nkids; i++)
        kill(s->kids[i].pid, sig);
}

void sup_describe(int status, char *buf, size_t len) {
    if (WIFEXITED(status))
        snprintf(buf, len, "exited with status %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "was killed by signal %d (%s)", WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "stopped (status 0x%x)", status);
}

/* pid was reaped: the upgrade's, or one of ours (never signalled again). */
static void kid_reaped(struct supervisor *s, pid_t pid, int status) {
    if (upgrade_reaped(&s->up, pid, status))
        return;
    s->ops->exited(s->ud, kid_remove(s, pid), pid, status);
}

void sup_reap(struct supervisor *s) {
    pid_t pid;
    int status;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        kid_reaped(s, pid, status);
    if (sup_drain_done(&s->drain))
        ev_stop(s->loop);
}

/* SIGTERM, then up to grace ms for the children to go. */
static void term_and_wait(struct supervisor *s, long grace) {
    long long until = ev_now_ms() + grace;
    pid_t pid;
    int status;

    sup_signal_all(s, SIGTERM);
    while (s->nkids > 0 && ev_now_ms() < until) {
        if ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            kid_reaped(s, pid, status);
        else if (pid < 0)
            break;
        else
            usleep(2000);
    }
}

void sup_kill_all(struct supervisor *s) {
    int status;

    s->drain.on = 1;            /* stopping: nothing restarts now */
    if (s->policy->term_grace_ms > 0)
        term_and_wait(s, s->policy->term_grace_ms);
    sup_signal_all(s, SIGKILL);
    while (s->nkids > 0) {
        struct sup_child k = s->kids[s->nkids - 1];
        if (waitpid(k.pid, &status, 0) < 0)
            status = 0;
        s->nkids--;
        s->ops->exited(s->ud, k.tag, k.pid, status);
    }
}

/* --- the drain of a master ----------------------------------------------- */

static void master_begin(void *ud) {
    struct supervisor *s = ud;

    s->ops->stop_accepting(s->ud);
    if (s->policy->term_on_drain)
        sup_signal_all(s, SIGTERM);
}

static int master_busy(void *ud) {
    return ((struct supervisor *)ud)->nkids > 0;
}

static void master_end(void *ud, int deadline) {
    struct supervisor *s = ud;

    if (deadline && s->nkids > 0)
        log_msg(s->policy->deadline_level, "drain deadline: killing %d %s "
                "still running", s->nkids, s->policy->noun);
    sup_kill_all(s);
}

static const struct sup_drain_ops master_drain_ops = {
    master_begin, master_busy, master_end
};

static long drain_ms(const struct supervisor *s) {
    return (long)(s->cfg->drain_timeout * 1000) + s->policy->deadline_extra_ms;
}

void sup_drain(struct supervisor *s, const char *why) {
    log_info("%s: draining %d %s (at most %g s)", why, s->nkids,
             s->policy->noun, s->cfg->drain_timeout);
    sup_drain_stop(&s->drain, drain_ms(s));
}

/* First SIGTERM/SIGINT: systemd hears STOPPING=1, an upgrade under way is
 * given up, and the children drain. A second one: stop now. */
static void sup_stop(struct supervisor *s, int sig) {
    char err[DAEMON_ERR_LEN];

    if (s->drain.on) {
        log_info("%s again: stopping now", strsignal(sig));
        sup_drain_stop(&s->drain, 0);
        return;
    }
    upgrade_cancel(&s->up);
    if (daemon_notify("STOPPING=1", err, sizeof err) < 0)
        log_warn("%s", err);
    sup_drain(s, strsignal(sig));
}

/* --- upgrades ------------------------------------------------------------ */

/* The new master serves: this one drains. Or it failed: if it wrote the
 * pid file, the file names this one again, which goes on serving. */
static void upgraded(void *ud, pid_t pid, int ok) {
    struct supervisor *s = ud;
    const char *pid_file = s->cfg->pid_file;
    char err[DAEMON_ERR_LEN];

    if (ok) {
        if (s->ops->handed_over)
            s->ops->handed_over(s->ud);
        sup_drain(s, "upgrade");
    } else if (pid_file && daemon_pid_read(pid_file) == pid &&
               daemon_pid_write(pid_file, err, sizeof err) < 0) {
        log_warn("%s", err);
    }
}

void sup_upgrade(struct supervisor *s, const struct upgrade_fds *fds) {
    upgrade_start(&s->up, fds, s->cfg->upgrade_timeout);
}

/* --- a master ------------------------------------------------------------ */

static void master_signal(void *ud, int signo) {
    struct supervisor *s = ud;

    switch (signo) {
    case SIGCHLD:
        sup_reap(s);
        break;
    case SIGHUP:
        s->ops->reload(s->ud, "SIGHUP");
        break;
    case SIGUSR1:               /* logrotate renamed the log */
        log_reopen();
        if (s->ops->reopened)
            s->ops->reopened(s->ud);
        break;
    case SIGUSR2:
        if (s->drain.on)
            log_warn("SIGUSR2: draining: no upgrade");
        else
            s->ops->upgrade(s->ud);
        break;
    default:
        sup_stop(s, signo);
        break;
    }
}

int sup_init(struct supervisor *s, ev_loop *loop,
             const struct eh_config *cfg, const struct sup_policy *policy,
             const struct sup_ops *ops, void *ud) {
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2,
                               SIGCHLD};

    memset(s, 0, sizeof *s);
    s->cfg = cfg;
    s->loop = loop;
    s->policy = policy;
    s->ops = ops;
    s->ud = ud;
    sup_drain_init(&s->drain, loop, &master_drain_ops, s);
    upgrade_init(&s->up, loop, upgraded, s);
    s->sigfd = sup_signals(loop, sigs, (int)(sizeof sigs / sizeof *sigs), 0,
                           master_signal, s);
    return s->sigfd < 0 ? -1 : 0;
}

void sup_fini(struct supervisor *s) {
    if (s->ops == NULL)
        return;                 /* never initialised */
    sup_kill_all(s);
    if (s->sigfd >= 0)
        close(s->sigfd);
    s->sigfd = -1;
    if (s->kids)
        munmap(s->kids, (size_t)s->capkids * sizeof *s->kids);
    s->kids = NULL;
    s->capkids = 0;
}
