/* Control socket, master side: a Unix socket in the master's loop, one REPL
 * session (its own Lua state) per operator, and the functions that reach
 * every worker over a SOCK_SEQPACKET channel (stats, conns, handler). */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "control.h"
#include "control_proto.h"
#include "lhost.h"
#include "log.h"
#include "repl.h"

#define CONTROL_IN_MAX (1 << 20)        /* an operator's pending input */
#define CONTROL_OUT_MAX (8 << 20)       /* output queued for one operator */
#define CONTROL_EVAL_MS 10000           /* one evaluation in the master */

/* --- the socket ----------------------------------------------------------- */

static int control_addr(const char *path, struct sockaddr_un *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa->sun_path, path);
    return 0;
}

/* A path that exists may be reused only when it is a socket nobody accepts
 * on (a server that died without unlinking it). 0 when free, -1 with err. */
static int control_check_path(const char *path, char *err, size_t errlen) {
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "control socket %s: path exists and is not a "
                 "socket (refusing to replace it)", path);
        return -1;
    }
    if (control_addr(path, &sa) < 0 ||
        (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -1;
    }
    rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    close(fd);
    if (rc == 0) {
        snprintf(err, errlen, "control socket %s: in use by a running server",
                 path);
        return -1;
    }
    if (errno != ECONNREFUSED) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -1;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "control socket %s: stale socket: unlink: %s",
                 path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Binds with umask 077, so the socket is 0600 from birth (fchmod before
 * bind does nothing to a Unix socket). */
static int control_listen(const char *path, char *err, size_t errlen) {
    struct sockaddr_un sa;
    mode_t old;
    int fd, rc;

    if (control_addr(path, &sa) < 0) {
        snprintf(err, errlen, "control socket %s: path too long", path);
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        return -1;
    }
    old = umask(077);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        if (rc == 0)
            unlink(path);
        close(fd);
        return -1;
    }
    return fd;
}

static void control_accept(ev_loop *loop, int fd, void *ud, int mask);

/* CONTROL_EVAL_MS, or ECHOHOST_CONTROL_EVAL_MS (milliseconds, > 0). */
static long control_eval_ms(void) {
    const char *env = getenv("ECHOHOST_CONTROL_EVAL_MS");
    long ms = env ? strtol(env, NULL, 10) : 0;

    return ms > 0 ? ms : CONTROL_EVAL_MS;
}

struct control *control_open(ev_loop *loop, const struct eh_config *cfg,
                             char *err, size_t errlen) {
    struct control *ctl = calloc(1, sizeof *ctl);

    if (ctl == NULL) {
        snprintf(err, errlen, "control socket: out of memory");
        return NULL;
    }
    ctl->loop = loop;
    ctl->cfg = cfg;
    ctl->fd = -1;
    ctl->eval_ms = control_eval_ms();
    if (strlen(cfg->control) >= sizeof ctl->path) {
        snprintf(err, errlen, "control socket %s: path too long",
                 cfg->control);
        goto err;
    }
    strcpy(ctl->path, cfg->control);
    if (control_check_path(ctl->path, err, errlen) < 0)
        goto err;
    if ((ctl->fd = control_listen(ctl->path, err, errlen)) < 0)
        goto err;
    if (ev_add(loop, ctl->fd, EV_READABLE, control_accept, ctl) == EV_ERR) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        unlink(ctl->path);
        goto err;
    }
    return ctl;
err:
    if (ctl->fd >= 0)
        close(ctl->fd);
    free(ctl);
    return NULL;
}

/* --- sessions ------------------------------------------------------------- */

static void control_sess_free(struct control_sess *s, int unloop) {
    struct control *ctl = s->ctl;

    if (s->prev)
        s->prev->next = s->next;
    else
        ctl->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (unloop) {
        ev_del(ctl->loop, s->fd, EV_READABLE | EV_WRITABLE);
        log_info("control: operator gone");
    }
    close(s->fd);
    repl_free(s->r);
    if (s->L)
        lhost_close(s->L);
    free(s->in);
    free(s->out);
    free(s);
}

static int control_grow(char **buf, size_t *cap, size_t need) {
    size_t ncap = *cap ? *cap : 4096;
    char *p;

    while (ncap < need)
        ncap *= 2;
    if (ncap == *cap)
        return 0;
    if ((p = realloc(*buf, ncap)) == NULL)
        return -1;
    *buf = p;
    *cap = ncap;
    return 0;
}

/* Queues one frame for the client: "<type> <len>\n" then the payload. */
void control_frame(struct control_sess *s, int type, const char *data,
                          size_t len) {
    char head[32];
    int n = snprintf(head, sizeof head, "%c %zu\n", type, len);

    if (s->closing)
        return;
    if (s->outlen + n + len > CONTROL_OUT_MAX ||
        control_grow(&s->out, &s->outcap, s->outlen + n + len) < 0) {
        log_warn("control: operator not reading its output, closing");
        s->closing = 1;
        return;
    }
    memcpy(s->out + s->outlen, head, n);
    memcpy(s->out + s->outlen + n, data, len);
    s->outlen += n + len;
}

static void control_sess_write(void *ud, int stream, const char *data,
                               size_t len) {
    control_frame(ud, stream == REPL_ERR ? CONTROL_FRAME_ERR
                                         : CONTROL_FRAME_OUT, data, len);
}

static void control_writable(ev_loop *loop, int fd, void *ud, int mask);

/* Writes what is queued; the rest waits for EV_WRITABLE. -1 when the
 * session is over (and freed). */
static int control_flush(struct control_sess *s) {
    while (s->outpos < s->outlen) {
        ssize_t n = send(s->fd, s->out + s->outpos, s->outlen - s->outpos,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (ev_add(s->ctl->loop, s->fd, EV_WRITABLE, control_writable, s)
                == EV_OK)
                return 0;
        }
        if (n < 0) {
            control_sess_free(s, 1);
            return -1;
        }
        s->outpos += n;
    }
    s->outpos = s->outlen = 0;
    ev_del(s->ctl->loop, s->fd, EV_WRITABLE);
    if (s->closing) {
        control_sess_free(s, 1);
        return -1;
    }
    return 0;
}

static void control_writable(ev_loop *loop, int fd, void *ud, int mask) {
    (void)loop; (void)fd; (void)mask;
    control_flush(ud);
}

/* Reads what the socket has into s->in. 0 on EOF or error, 1 otherwise. */
static int control_recv(struct control_sess *s) {
    for (;;) {
        ssize_t n;
        if (s->inlen + 4096 > CONTROL_IN_MAX)
            return 0;
        if (control_grow(&s->in, &s->incap, s->inlen + 4096) < 0)
            return 0;
        n = recv(s->fd, s->in + s->inlen, s->incap - s->inlen, MSG_DONTWAIT);
        if (n > 0) {
            s->inlen += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

/* The running evaluation asks: did the operator press Ctrl-C (or go)? */
static int control_interrupted(void *ud) {
    struct control_sess *s = ud;
    char *p;

    if (!control_recv(s)) {
        s->closing = 1;
        return 1;
    }
    if ((p = memchr(s->in, CONTROL_INTR, s->inlen)) != NULL) {
        memmove(p, p + 1, s->inlen - (p - s->in) - 1);
        s->inlen--;
        return 1;
    }
    return 0;
}

static void control_line(struct control_sess *s, char *line, size_t len) {
    size_t j = 0;
    int more;

    for (size_t i = 0; i < len; i++)          /* a Ctrl-C between calls */
        if (line[i] != CONTROL_INTR)
            line[j++] = line[i];
    if (j == 0 && len > 0) {          /* "\3\n": Ctrl-C at the prompt */
        repl_reset(s->r);
        control_frame(s, CONTROL_FRAME_READY, "", 0);
        return;
    }
    len = j;
    if (len > 0 && line[0] == CONTROL_META) {  /* "\1<client's cwd>" */
        if (len - 1 < sizeof s->cwd) {
            memcpy(s->cwd, line + 1, len - 1);
            s->cwd[len - 1] = '\0';
        }
        return;
    }
    more = repl_feed(s->r, line, len) == REPL_MORE;
    control_frame(s, more ? CONTROL_FRAME_MORE : CONTROL_FRAME_READY, "", 0);
}

/* Evaluates every complete line received, in order. */
static void control_lines(struct control_sess *s) {
    size_t start = 0;
    char *nl;

    while (!s->closing && start < s->inlen &&
           (nl = memchr(s->in + start, '\n', s->inlen - start)) != NULL) {
        size_t len = nl - (s->in + start);
        char *line = malloc(len + 1);
        if (line == NULL) {
            s->closing = 1;
            break;
        }
        memcpy(line, s->in + start, len);
        line[len] = '\0';
        start += len + 1;
        control_line(s, line, len);
        free(line);
    }
    memmove(s->in, s->in + start, s->inlen - start);
    s->inlen -= start;
}

static void control_readable(ev_loop *loop, int fd, void *ud, int mask) {
    struct control_sess *s = ud;

    (void)loop; (void)fd; (void)mask;
    if (!control_recv(s))
        s->closing = 1;
    control_lines(s);
    if (s->closing && s->outlen == 0) {
        control_sess_free(s, 1);
        return;
    }
    if (s->closing)
        ev_del(s->ctl->loop, s->fd, EV_READABLE);
    control_flush(s);
}

static struct control_sess *control_sess_new(struct control *ctl, int fd) {
    struct control_sess *s = calloc(1, sizeof *s);

    if (s == NULL)
        return NULL;
    s->ctl = ctl;
    s->fd = fd;
    s->L = lhost_newstate(ctl->cfg->lua_mem_limit);
    if (s->L == NULL ||
        (s->r = repl_new(s->L, "=control", control_sess_write, s)) == NULL) {
        if (s->L)
            lhost_close(s->L);
        free(s);
        return NULL;
    }
    repl_set_limits(s->r, ctl->eval_ms, control_interrupted);
    control_openlib(s->L, s);
    s->next = ctl->sessions;
    if (s->next)
        s->next->prev = s;
    ctl->sessions = s;
    return s;
}

/* Mode 0600 keeps others out of the socket; the peer's credentials are
 * checked too (a socket mode can be changed, a directory shared): only root
 * and the server's own user may operate it. 1 if fd may go on; else the
 * peer gets one error frame and fd is closed. */
static int control_peer_ok(int fd) {
    struct ucred cr = {.pid = 0, .uid = (uid_t)-1, .gid = (gid_t)-1};
    socklen_t len = sizeof cr;
    char msg[160], frame[200];
    int n;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0 &&
        (cr.uid == 0 || cr.uid == geteuid()))
        return 1;
    n = snprintf(msg, sizeof msg, "control: uid %d may not operate this "
                 "server (only root and uid %d)\n", (int)cr.uid,
                 (int)geteuid());
    log_warn("%.*s", n - 1, msg);
    n = snprintf(frame, sizeof frame, "%c %d\n%s", CONTROL_FRAME_ERR, n, msg);
    (void)!write(fd, frame, (size_t)n);
    close(fd);
    return 0;
}

static void control_accept(ev_loop *loop, int lfd, void *ud, int mask) {
    struct control *ctl = ud;
    struct control_sess *s;
    char hello[64];
    int fd, n;

    (void)mask;
    for (int i = 0; i < 16; i++) {
        fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warn("control: accept: %s", strerror(errno));
            return;
        }
        if (!control_peer_ok(fd))
            continue;
        if ((s = control_sess_new(ctl, fd)) == NULL ||
            ev_add(loop, fd, EV_READABLE, control_readable, s) == EV_ERR) {
            log_warn("control: cannot start a session");
            if (s)
                control_sess_free(s, 0);
            else
                close(fd);
            continue;
        }
        log_info("control: operator connected");
        n = snprintf(hello, sizeof hello, "echohost server %d, %d %s",
                     (int)getpid(), ctl->nworkers,
                     ctl->nworkers == 1 ? "worker" : "workers");
        control_frame(s, CONTROL_FRAME_INFO, hello, n);
        control_frame(s, CONTROL_FRAME_READY, "", 0);
        control_flush(s);
    }
}

/* Frees everything; in the master (owner) it also leaves the loop and
 * removes the socket file, which a forked worker must not do. */
static void control_free(struct control *ctl, int owner) {
    if (ctl == NULL)
        return;
    while (ctl->sessions)
        control_sess_free(ctl->sessions, owner);
    if (ctl->fd >= 0) {
        if (owner) {
            ev_del(ctl->loop, ctl->fd, EV_READABLE);
            unlink(ctl->path);
        }
        close(ctl->fd);
    }
    for (int i = 0; i < ctl->nworkers; i++)
        if (ctl->workers[i].fd >= 0)
            close(ctl->workers[i].fd);
    free(ctl->workers);
    free(ctl);
}

void control_close(struct control *ctl) {
    control_free(ctl, 1);
}

void control_after_fork(struct control *ctl) {
    control_free(ctl, 0);
}

/* --- workers -------------------------------------------------------------- */

int control_channel(int fds[2]) {
    return socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds);
}

/* Worker slot i is process pid reached through fd; the old fd is closed. */
void control_set_worker(struct control *ctl, int slot, pid_t pid, int fd) {
    if (slot >= ctl->nworkers) {
        struct control_worker *w = realloc(ctl->workers,
                                           (slot + 1) * sizeof *w);
        if (w == NULL) {
            if (fd >= 0)
                close(fd);
            return;
        }
        for (int i = ctl->nworkers; i <= slot; i++)
            w[i].pid = 0, w[i].fd = -1;
        ctl->workers = w;
        ctl->nworkers = slot + 1;
    }
    if (ctl->workers[slot].fd >= 0)
        close(ctl->workers[slot].fd);
    ctl->workers[slot].pid = pid;
    ctl->workers[slot].fd = fd;
}

void control_set_swap(struct control *ctl, control_swap_proc *swap,
                      void *ud) {
    ctl->swap = swap;
    ctl->swap_ud = ud;
}

void control_set_reload_failures(struct control *ctl,
                                 const uint64_t *failures) {
    ctl->reload_failures = failures;
}

/* --- client --------------------------------------------------------------- */

struct control_client {
    int fd;
    char buf[8192];
    size_t pos, len;
};

static volatile sig_atomic_t control_sigint;

static void control_client_sigint(int sig) {
    (void)sig;
    control_sigint = 1;
}

static int control_send(int fd, const char *s, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        s += n;
        len -= n;
    }
    return 0;
}

/* The next byte from the server; Ctrl-C while waiting is passed on as
 * CONTROL_INTR. -1 when the connection is gone. */
static int control_getc(struct control_client *c) {
    while (c->pos == c->len) {
        ssize_t n = recv(c->fd, c->buf, sizeof c->buf, 0);
        if (n < 0 && errno == EINTR) {
            char intr = CONTROL_INTR;
            if (control_sigint && control_send(c->fd, &intr, 1) < 0)
                return -1;
            control_sigint = 0;
            continue;
        }
        if (n <= 0)
            return -1;
        c->pos = 0;
        c->len = n;
    }
    return (unsigned char)c->buf[c->pos++];
}

/* Reads one frame's payload into stdout/stderr (frames of type
 * CONTROL_FRAME_INFO only on a terminal). The frame type, or -1. */
static int control_frame_in(struct control_client *c, int tty) {
    int type = control_getc(c), ch;
    size_t len = 0;
    FILE *f;

    if (type < 0 || control_getc(c) != ' ')
        return -1;
    while ((ch = control_getc(c)) >= '0' && ch <= '9')
        len = len * 10 + (ch - '0');
    if (ch != '\n')
        return -1;
    f = type == CONTROL_FRAME_ERR ? stderr : stdout;
    if (type == CONTROL_FRAME_ERR)
        fflush(stdout);
    for (size_t i = 0; i < len; i++) {
        if ((ch = control_getc(c)) < 0)
            return -1;
        if (type != CONTROL_FRAME_INFO || tty)
            putc(ch, f);
    }
    if (type == CONTROL_FRAME_INFO && tty)
        putc('\n', f);
    fflush(f);
    return type;
}

/* Prints frames until the server is ready for the next line: REPL_READY or
 * REPL_MORE, -1 when the connection is gone. */
static int control_wait_ready(struct control_client *c, int tty) {
    struct sigaction sa, old;
    int type;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = control_client_sigint;     /* no SA_RESTART: EINTR */
    sigaction(SIGINT, &sa, &old);
    do {
        type = control_frame_in(c, tty);
    } while (type >= 0 && type != CONTROL_FRAME_READY &&
             type != CONTROL_FRAME_MORE);
    sigaction(SIGINT, &old, NULL);
    if (type < 0)
        return -1;
    return type == CONTROL_FRAME_MORE ? REPL_MORE : REPL_READY;
}

static int control_connect(const char *path) {
    struct sockaddr_un sa;
    int fd;

    if (control_addr(path, &sa) < 0)
        return -1;
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Sends the working directory (relative paths given to handler() are the
 * operator's), then one line at a time. */
static int control_session(struct control_client *c, struct repl_input *in) {
    int tty = repl_input_tty(in), more;
    char cwd[PATH_MAX + 2], *line;

    cwd[0] = CONTROL_META;
    if (getcwd(cwd + 1, PATH_MAX) == NULL)
        cwd[1] = '\0';
    strcat(cwd, "\n");
    if (control_send(c->fd, cwd, strlen(cwd)) < 0 ||
        (more = control_wait_ready(c, tty)) < 0)
        return -1;
    while ((line = repl_input_read(in, more == REPL_MORE)) != NULL) {
        size_t j = 0;
        for (size_t i = 0; line[i]; i++)       /* keep the framing intact */
            if (line[i] != CONTROL_INTR && line[i] != CONTROL_META)
                line[j++] = line[i];
        line[j++] = '\n';
        if (repl_input_cancelled(in))           /* drop the chunk there too */
            more = control_send(c->fd, "\003\n", 2);
        else
            more = control_send(c->fd, line, j);
        free(line);
        if (more < 0 || (more = control_wait_ready(c, tty)) < 0)
            return -1;
    }
    if (tty)
        putchar('\n');
    return 0;
}

int control_client(const char *path, struct repl_input *in) {
    struct control_client c;
    struct stat st;
    int rc;

    memset(&c, 0, sizeof c);
    /* the server refuses other users (control_peer_ok): say it here, where
     * its frame could be lost to the reset of an early close */
    if (stat(path, &st) == 0 && geteuid() != 0 && geteuid() != st.st_uid) {
        fprintf(stderr, "echohost: control socket %s belongs to uid %d: only "
                "that user and root may operate it\n", path, (int)st.st_uid);
        return 1;
    }
    if ((c.fd = control_connect(path)) < 0) {
        fprintf(stderr, "echohost: cannot connect to control socket %s: %s\n",
                path, strerror(errno));
        return 1;
    }
    rc = control_session(&c, in);
    close(c.fd);
    if (rc < 0) {
        fprintf(stderr, "echohost: control connection to %s closed\n", path);
        return 1;
    }
    return 0;
}
