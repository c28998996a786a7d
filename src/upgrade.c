/* Binary upgrade (SIGUSR2): the old master forks and execs the binary it
 * was started as, handing over its sockets from fd 3 on with a pipe for the
 * answer; the new master takes them and writes "R" on the pipe once it
 * serves. The old one then stops accepting and drains; a new one that
 * exits, or is not ready in time, leaves the old one serving. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "supervise.h"
#include "upgrade.h"

#define FD_FIRST 3              /* as LISTEN_FDS: after stdin/out/err */

static char binary[PATH_MAX];   /* argv[0] made absolute at the start */
static char *const *command;

/* --- the new master ----------------------------------------------------- */

/* fd is what the old master said it is: a socket (listening, when
 * stream), or a pipe. 0, or -1 with err. */
static int inherited_fd(int fd, int pipe, char *err, size_t errlen) {
    struct stat st;
    int type = 0;
    socklen_t len = sizeof type;

    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, UPGRADE_ENV ": fd %d: %s", fd, strerror(errno));
        return -1;
    }
    if (pipe ? !S_ISFIFO(st.st_mode) : !S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, UPGRADE_ENV ": fd %d is not a %s", fd,
                 pipe ? "pipe" : "socket");
        return -1;
    }
    if (!pipe && (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
                  daemon_check_socket(fd, type == SOCK_DGRAM ? SOCK_DGRAM :
                                      SOCK_STREAM, UPGRADE_ENV, err,
                                      errlen) < 0))
        return -1;
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    return 0;
}

int upgrade_inherited(struct upgrade_inherit *in, char *err, size_t errlen) {
    const char *v = getenv(UPGRADE_ENV);
    int old, ctl, mx, ready, n = 0;

    if (v == NULL)
        return 0;
    if (sscanf(v, "old=%d listen=%d shared=%d control=%d metrics=%d "
               "ready=%d%n", &old, &in->nfds, &in->shared, &ctl, &mx, &ready,
               &n) != 6 ||
        v[n] != '\0' || in->nfds < 1 || ready < FD_FIRST) {
        snprintf(err, errlen, UPGRADE_ENV " '%s': malformed (set by the "
                 "master that SIGUSR2 upgrades, for its new binary)", v);
        return -1;
    }
    if ((pid_t)old != getppid())
        return 0;               /* left over, not for us: as LISTEN_PID */
    unsetenv(UPGRADE_ENV);
    in->old = (pid_t)old;
    in->fd = FD_FIRST;
    in->control = ctl;
    in->metrics = mx;
    in->ready = ready;
    for (int i = 0; i < in->nfds; i++)
        if (inherited_fd(FD_FIRST + i, 0, err, errlen) < 0)
            return -1;
    if ((ctl >= 0 && inherited_fd(ctl, 0, err, errlen) < 0) ||
        (mx >= 0 && inherited_fd(mx, 0, err, errlen) < 0) ||
        inherited_fd(ready, 1, err, errlen) < 0)
        return -1;
    return 1;
}

int upgrade_report_ready(struct upgrade_inherit *in, char *err,
                         size_t errlen) {
    ssize_t n = write(in->ready, "R", 1);

    if (n != 1)
        snprintf(err, errlen, "upgrade: cannot report to the old master "
                 "(pid %d): %s", (int)in->old,
                 n < 0 ? strerror(errno) : "short write");
    close(in->ready);
    in->ready = -1;
    return n == 1 ? 0 : -1;
}

/* --- the binary --------------------------------------------------------- */

/* dir/name (dir dlen bytes; relative: to the working directory) into
 * binary. 0, or -1 when it does not fit. */
static int make_path(const char *dir, size_t dlen, const char *name) {
    char cwd[PATH_MAX];
    int n;

    if (dlen > 0 && dir[0] == '/')
        n = snprintf(binary, sizeof binary, "%.*s/%s", (int)dlen, dir, name);
    else if (getcwd(cwd, sizeof cwd) == NULL)
        return -1;
    else
        n = snprintf(binary, sizeof binary, "%s/%.*s%s%s", cwd, (int)dlen,
                     dir, dlen ? "/" : "", name);
    return n < (int)sizeof binary ? 0 : -1;
}

static int executable(const char *path) {
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
           access(path, X_OK) == 0;
}

/* Not resolved through symbolic links: a link flipped to a new release
 * runs that release. */
void upgrade_set_command(char *const *argv) {
    const char *name = argv[0], *slash = strrchr(name, '/'), *p, *end;
    ssize_t n;

    command = argv;
    if (slash != NULL) {
        size_t dlen = (size_t)(slash - name);
        if (dlen == 1 && name[0] == '.')
            dlen = 0;                   /* "./echohost": cwd/echohost */
        if (name[0] == '/' || make_path(name, dlen, slash + 1) < 0)
            snprintf(binary, sizeof binary, "%s", name);
        return;
    }
    p = getenv("PATH");
    for (p = p ? p : "/bin:/usr/bin"; p != NULL; p = end ? end + 1 : NULL) {
        end = strchr(p, ':');
        if (make_path(p, end ? (size_t)(end - p) : strlen(p), name) == 0 &&
            executable(binary))
            return;
    }
    n = readlink("/proc/self/exe", binary, sizeof binary - 1);
    binary[n > 0 ? n : 0] = '\0';   /* not found: what runs now */
}

const char *upgrade_binary(void) {
    return binary;
}

/* --- the old master: the child ------------------------------------------ */

/* In the child: src[0 .. n) become fds FD_FIRST .. (moved out of the way
 * first, so that no source is overwritten before it is moved; dup2 clears
 * close-on-exec), and every other fd from there on is closed. */
static int move_fds(int *src, int n) {
    for (int i = 0; i < n; i++)
        if ((src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, FD_FIRST + n)) < 0)
            return -1;
    for (int i = 0; i < n; i++)
        if (dup2(src[i], FD_FIRST + i) < 0)
            return -1;
    close_range(FD_FIRST + n, ~0U, 0);  /* src[] too: nothing else leaks */
    return 0;
}

/* Never returns. On an exec failure the reason goes on the pipe ("E..."). */
static void child_exec(const struct upgrade_fds *f, int ready) {
    int n = f->nlisten, *src = malloc((n + 3) * sizeof *src), ctl = -1, mx = -1;
    char env[160], msg[UPGRADE_ERR_LEN];
    sigset_t none;
    int len;

    if (src == NULL)
        _exit(127);
    memcpy(src, f->listen, n * sizeof *src);
    if (f->control >= 0) {
        ctl = FD_FIRST + n;
        src[n++] = f->control;
    }
    if (f->metrics >= 0) {
        mx = FD_FIRST + n;
        src[n++] = f->metrics;
    }
    src[n++] = ready;
    if (move_fds(src, n) < 0) {
        len = snprintf(msg, sizeof msg, "Edup2: %s", strerror(errno));
        (void)!write(ready, msg, (size_t)len);
        _exit(127);
    }
    snprintf(env, sizeof env, "old=%d listen=%d shared=%d control=%d "
             "metrics=%d ready=%d", (int)getppid(), f->nlisten, f->shared,
             ctl, mx, FD_FIRST + n - 1);
    setenv(UPGRADE_ENV, env, 1);
    signal(SIGPIPE, SIG_DFL);           /* a fresh start: the new one sets */
    sigemptyset(&none);                 /* its own */
    sigprocmask(SIG_SETMASK, &none, NULL);
    execv(binary, command);
    len = snprintf(msg, sizeof msg, "Ecannot run %s: %s", binary,
                   strerror(errno));
    (void)!write(FD_FIRST + n - 1, msg, (size_t)len);
    _exit(127);
}

/* --- the old master: waiting -------------------------------------------- */

static void upgrade_stop_waiting(struct upgrade *u) {
    if (u->fd >= 0) {
        ev_del(u->loop, u->fd, EV_READABLE);
        close(u->fd);
        u->fd = -1;
    }
    if (u->timer) {
        ev_timer_del(u->loop, u->timer);
        u->timer = 0;
    }
}

/* Gives up on the new master: it is killed, and the failure logged once
 * it is reaped, with its exit status and why (NULL: it closed the pipe). */
static void upgrade_fail(struct upgrade *u, const char *why) {
    upgrade_stop_waiting(u);
    if (u->why[0] == '\0' && why != NULL)
        snprintf(u->why, sizeof u->why, "%s", why);
    kill(u->pid, SIGKILL);
}

static void upgrade_succeed(struct upgrade *u) {
    char state[32], err[DAEMON_ERR_LEN];

    upgrade_stop_waiting(u);
    u->ready = 1;
    log_notice("upgrade: the new master (pid %d) serves; this one (pid %d) "
               "stops accepting and drains", (int)u->pid, (int)getpid());
    snprintf(state, sizeof state, "MAINPID=%d", (int)u->pid);
    if (daemon_notify(state, err, sizeof err) < 0)
        log_warn("%s", err);
    u->done(u->ud, u->pid, 1);
}

static void upgrade_readable(ev_loop *loop, int fd, void *ud, int mask) {
    struct upgrade *u = ud;
    char buf[UPGRADE_ERR_LEN];
    ssize_t n = read(fd, buf, sizeof buf - 1);

    (void)loop;
    (void)mask;
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0 && buf[0] == 'R') {
        upgrade_succeed(u);
        return;
    }
    buf[n > 1 ? n : 1] = '\0';
    upgrade_fail(u, n > 1 && buf[0] == 'E' ? buf + 1 : NULL);
}

static long upgrade_timeout_proc(ev_loop *loop, long long id, void *ud) {
    struct upgrade *u = ud;

    (void)loop;
    (void)id;
    u->timer = 0;
    upgrade_fail(u, "not ready within --upgrade-timeout");
    return EV_NOMORE;
}

void upgrade_init(struct upgrade *u, ev_loop *loop, upgrade_done_proc *done,
                  void *ud) {
    memset(u, 0, sizeof *u);
    u->loop = loop;
    u->fd = -1;
    u->done = done;
    u->ud = ud;
}

void upgrade_start(struct upgrade *u, const struct upgrade_fds *fds,
                   double timeout) {
    int p[2];
    pid_t pid;

    if (u->pid != 0) {
        log_warn("SIGUSR2: an upgrade is in progress (new master pid %d): "
                 "this one is refused", (int)u->pid);
        return;
    }
    if (pipe2(p, O_CLOEXEC) < 0 || (pid = fork()) < 0) {
        log_error("SIGUSR2: upgrade: %s; still serving", strerror(errno));
        return;
    }
    if (pid == 0) {
        close(p[0]);
        child_exec(fds, p[1]);
    }
    close(p[1]);
    u->pid = pid;
    u->fd = p[0];
    u->ready = u->cancelled = 0;
    u->why[0] = '\0';
    fcntl(u->fd, F_SETFL, O_NONBLOCK);
    if (ev_add(u->loop, u->fd, EV_READABLE, upgrade_readable, u) < 0) {
        close(u->fd);
        u->fd = -1;
        upgrade_fail(u, strerror(errno));
        return;
    }
    u->timer = ev_timer_add(u->loop, (long)(timeout * 1000),
                            upgrade_timeout_proc, u);
    log_info("SIGUSR2: upgrading: started %s (pid %d)", binary, (int)pid);
}

void upgrade_cancel(struct upgrade *u) {
    if (u->pid != 0 && !u->ready) {
        upgrade_fail(u, NULL);
        u->cancelled = 1;
        log_info("upgrade: given up (this master is stopping): the new "
                 "master (pid %d) is killed", (int)u->pid);
    }
}

int upgrade_reaped(struct upgrade *u, pid_t pid, int status) {
    char what[128];

    if (u->pid == 0 || pid != u->pid)
        return 0;
    u->pid = 0;
    sup_describe(status, what, sizeof what);
    if (u->ready || u->cancelled) {
        if (u->ready)
            log_warn("upgrade: the new master (pid %d) %s", (int)pid, what);
        return 1;
    }
    upgrade_stop_waiting(u);
    log_error("upgrade failed: %s (pid %d) %s%s%s; still serving as pid %d",
              binary, (int)pid, what, u->why[0] ? ": " : " before it was "
              "ready", u->why, (int)getpid());
    u->done(u->ud, pid, 0);
    return 1;
}
