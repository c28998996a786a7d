/* Control socket, master side: a Unix socket in the master's loop, a
 * session process forked for each operator, and the requests of those
 * sessions relayed to every worker over its SOCK_SEQPACKET channel (conns,
 * handler; stats() is read from the shared statistics); and the operator's
 * client. */
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

#include "control.h"
#include "control_proto.h"
#include "log.h"
#include "net.h"
#include "repl.h"
#include "stats.h"

#define CONTROL_EVAL_MS 10000           /* one evaluation of a session */

/* --- the socket ----------------------------------------------------------- */

static void control_accept(ev_loop *loop, int fd, void *ud, int mask);

/* CONTROL_EVAL_MS, or ECHOHOST_CONTROL_EVAL_MS (milliseconds, > 0). */
static long control_eval_ms(void) {
    const char *env = getenv("ECHOHOST_CONTROL_EVAL_MS");
    long ms = env ? strtol(env, NULL, 10) : 0;

    return ms > 0 ? ms : CONTROL_EVAL_MS;
}

/* Listens on fd (bound, non-blocking: an old master's) if fd >= 0, else
 * binds cfg->control. */
static struct control *control_listen_on(ev_loop *loop,
                                         const struct eh_config *cfg,
                                         int fd, char *err, size_t errlen) {
    struct control *ctl = calloc(1, sizeof *ctl);
    char nerr[NET_ERR_LEN];

    if (ctl == NULL) {
        snprintf(err, errlen, "control socket: out of memory");
        return NULL;
    }
    ctl->loop = loop;
    ctl->cfg = cfg;
    ctl->fd = fd;
    ctl->master = getpid();
    ctl->eval_ms = control_eval_ms();
    if (strlen(cfg->control) >= sizeof ctl->path) {
        snprintf(err, errlen, "control socket %s: path too long",
                 cfg->control);
        goto err;
    }
    strcpy(ctl->path, cfg->control);
    if (fd < 0) {
        ctl->fd = net_unix_server(nerr, ctl->path, 0600, 16, NET_NONBLOCK,
                                  &ctl->id);
        if (ctl->fd < 0) {
            snprintf(err, errlen, "control socket %s", nerr);
            goto err;
        }
    }
    ctl->owns_path = fd < 0;
    if (ev_add(loop, ctl->fd, EV_READABLE, control_accept, ctl) == EV_ERR) {
        snprintf(err, errlen, "control socket: %s", strerror(errno));
        if (ctl->owns_path)
            net_unix_unlink(ctl->path, &ctl->id);
        goto err;
    }
    return ctl;
err:
    if (ctl->fd >= 0)
        close(ctl->fd);
    free(ctl);
    return NULL;
}

struct control *control_open(ev_loop *loop, const struct eh_config *cfg,
                             char *err, size_t errlen) {
    return control_listen_on(loop, cfg, -1, err, errlen);
}

struct control *control_adopt(ev_loop *loop, const struct eh_config *cfg,
                              int fd, char *err, size_t errlen) {
    return control_listen_on(loop, cfg, fd, err, errlen);
}

int control_fd(const struct control *ctl) {
    return ctl->fd;
}

void control_claim(struct control *ctl) {
    ctl->owns_path = 1;
    net_unix_id_of(ctl->path, &ctl->id);    /* the old master's file */
}

void control_release(struct control *ctl) {
    if (ctl->fd >= 0) {
        ev_del(ctl->loop, ctl->fd, EV_READABLE);
        close(ctl->fd);
        ctl->fd = -1;
    }
    ctl->owns_path = 0;
}

/* --- buffers -------------------------------------------------------------- */

int control_buf_put(struct control_buf *b, const char *data, size_t len) {
    size_t ncap = b->cap ? b->cap : 4096;
    char *p;

    while (ncap < b->len + len)
        ncap *= 2;
    if (ncap != b->cap) {
        if ((p = realloc(b->p, ncap)) == NULL)
            return -1;
        b->p = p;
        b->cap = ncap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

int control_buf_msg(struct control_buf *b, const char *data, size_t len) {
    char head[32];
    int n = snprintf(head, sizeof head, "%zu\n", len);

    if (control_buf_put(b, head, (size_t)n) < 0)
        return -1;
    return control_buf_put(b, data, len);
}

int control_buf_next(struct control_buf *b, const char **msg, size_t *len) {
    const char *start = b->p + b->pos, *nl;
    size_t have = b->len - b->pos, n = 0;

    if (have == 0)
        return 0;
    if ((nl = memchr(start, '\n', have)) == NULL)
        return have > 20 ? -1 : 0;
    if (nl == start)
        return -1;
    for (const char *c = start; c < nl; c++) {
        if (*c < '0' || *c > '9' || n > SIZE_MAX / 10 - 10)
            return -1;
        n = n * 10 + (size_t)(*c - '0');
    }
    if ((size_t)(nl + 1 - start) + n > have)
        return 0;
    *msg = nl + 1;
    *len = n;
    b->pos += (size_t)(nl + 1 - start) + n;
    return 1;
}

void control_buf_compact(struct control_buf *b) {
    if (b->pos == 0)
        return;
    memmove(b->p, b->p + b->pos, b->len - b->pos);
    b->len -= b->pos;
    b->pos = 0;
}

void control_buf_free(struct control_buf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* --- session processes ---------------------------------------------------- */

/* The master sees a session as its process and the channel to it; the
 * operator's Lua runs over there, so nothing it does delays the master. */
struct control_op {
    struct control *ctl;
    pid_t pid;
    int fd;
    struct control_buf in, out;
    struct control_op *prev, *next;
};

/* A request of a session: relayed to every worker, answered once all of
 * them replied or CONTROL_REPLY_MS passed. */
struct control_req {
    struct control_op *op;      /* NULL once the session is gone */
    unsigned wseq;              /* the number the workers see */
    char *text;                 /* the session's "<seq> <command>" */
    struct control_buf reply;
    int pending;
    int oom;                    /* the reply could not be built */
    struct control_req *next;
};

static void control_next(struct control *ctl);

static void control_req_free(struct control_req *q) {
    control_buf_free(&q->reply);
    free(q->text);
    free(q);
}

/* how: OP_FORKED (in a forked child: only close), OP_ENDED (the session
 * ended), OP_KILL (the master closes: end the session process too). */
enum { OP_FORKED, OP_ENDED, OP_KILL };

static void control_op_free(struct control_op *op, int how) {
    struct control *ctl = op->ctl;

    if (op->prev)
        op->prev->next = op->next;
    else
        ctl->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    ctl->nops--;
    if (ctl->cur && ctl->cur->op == op)
        ctl->cur->op = NULL;
    for (struct control_req *q = ctl->queue; q; q = q->next)
        if (q->op == op)
            q->op = NULL;
    if (how != OP_FORKED) {
        ev_del(ctl->loop, op->fd, EV_READABLE | EV_WRITABLE);
        log_info("control: operator gone");
    }
    if (how == OP_KILL)
        kill(op->pid, SIGKILL);
    close(op->fd);
    control_buf_free(&op->in);
    control_buf_free(&op->out);
    free(op);
}

static void control_op_writable(ev_loop *loop, int fd, void *ud, int mask);

/* Sends what is queued for the session; the rest waits for EV_WRITABLE. */
static void control_op_flush(struct control_op *op) {
    struct control_buf *b = &op->out;

    while (b->pos < b->len) {
        ssize_t n = send(op->fd, b->p + b->pos, b->len - b->pos,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (ev_add(op->ctl->loop, op->fd, EV_WRITABLE,
                       control_op_writable, op) == EV_OK)
                return;
        }
        if (n < 0) {
            control_op_free(op, OP_ENDED);
            return;
        }
        b->pos += (size_t)n;
    }
    b->pos = b->len = 0;
    ev_del(op->ctl->loop, op->fd, EV_WRITABLE);
}

static void control_op_writable(ev_loop *loop, int fd, void *ud, int mask) {
    (void)loop; (void)fd; (void)mask;
    control_op_flush(ud);
}

/* Appends one entry of the reply in flight. */
static void control_entry(struct control_req *q, int kind, int slot,
                          pid_t pid, const char *data, size_t len) {
    char head[64];
    int n = snprintf(head, sizeof head, "%c %d %d %zu\n", kind, slot,
                     (int)pid, len);

    if (control_buf_put(&q->reply, head, (size_t)n) < 0 ||
        control_buf_put(&q->reply, data, len) < 0)
        q->oom = 1;                     /* said when it is complete */
}

/* The request in flight is complete: to its session, then the next one. */
static void control_finish(struct control *ctl) {
    struct control_req *q = ctl->cur;
    char rf[32];

    ctl->cur = NULL;
    if (ctl->cur_timer) {
        ev_timer_del(ctl->loop, ctl->cur_timer);
        ctl->cur_timer = 0;
    }
    for (int i = 0; i < ctl->nworkers; i++)
        ctl->workers[i].asked = 0;
    snprintf(rf, sizeof rf, "%llu", ctl->stats ?
             (unsigned long long)ctl->stats->reload_failures : 0ULL);
    control_entry(q, 'D', ctl->nops, ctl->master, rf, strlen(rf));
    if (q->op && (q->oom ||
                  control_buf_msg(&q->op->out, q->reply.p, q->reply.len) < 0))
        log_warn("control: out of memory answering an operator");
    else if (q->op)
        control_op_flush(q->op);
    control_req_free(q);
    control_next(ctl);
}

/* Worker i will not answer the request in flight: why in its entry. 1
 * when that completes the request (the caller finishes it). */
static int control_unasked(struct control *ctl, int i, const char *why) {
    struct control_worker *w = &ctl->workers[i];

    if (ctl->cur == NULL || !w->asked)
        return 0;
    w->asked = 0;
    control_entry(ctl->cur, 'X', i, w->pid, why, strlen(why));
    return --ctl->cur->pending == 0;
}

static long control_deadline(ev_loop *loop, long long id, void *ud) {
    struct control *ctl = ud;

    (void)loop;
    (void)id;
    ctl->cur_timer = 0;
    for (int i = 0; i < ctl->nworkers; i++)
        control_unasked(ctl, i, "no reply");
    if (ctl->cur)
        control_finish(ctl);
    return EV_NOMORE;
}

/* The session's "<seq> <command>": the master's part of handler and
 * reload, then the command to every worker. */
static void control_start(struct control *ctl, struct control_req *q) {
    char *cmd = strchr(q->text, ' '), *msg, err[512];
    int len;

    control_buf_put(&q->reply, q->text, (size_t)(cmd - q->text));
    control_buf_put(&q->reply, "\n", 1);
    cmd++;
    if (ctl->swap && (strcmp(cmd, "reload") == 0 ||
                      strncmp(cmd, "handler ", 8) == 0) &&
        ctl->swap(ctl->swap_ud, cmd[0] == 'r' ? NULL : cmd + 8, err,
                  sizeof err) < 0) {
        control_entry(q, 'F', 0, 0, err, strlen(err));
        control_finish(ctl);
        return;
    }
    if (strcmp(cmd, "stats") == 0) {    /* the session reads the workers' */
        control_finish(ctl);            /* figures in the shared block */
        return;
    }
    q->wseq = ++ctl->seq;
    len = asprintf(&msg, "%u %s", q->wseq, cmd);
    for (int i = 0; i < ctl->nworkers; i++) {
        struct control_worker *w = &ctl->workers[i];
        if (w->fd < 0)
            continue;
        if (len < 0 || send(w->fd, msg, (size_t)len,
                            MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            const char *why = len < 0 ? "out of memory" : strerror(errno);
            control_entry(q, 'X', i, w->pid, why, strlen(why));
            continue;
        }
        w->asked = 1;
        q->pending++;
    }
    if (len >= 0)
        free(msg);
    if (q->pending == 0) {
        control_finish(ctl);
        return;
    }
    ctl->cur_timer = ev_timer_add(ctl->loop, CONTROL_REPLY_MS,
                                  control_deadline, ctl);
}

/* One request at a time goes to the workers; the others wait in turn. */
static void control_next(struct control *ctl) {
    struct control_req *q;

    while (ctl->cur == NULL && (q = ctl->queue) != NULL) {
        if ((ctl->queue = q->next) == NULL)
            ctl->queue_tail = NULL;
        q->next = NULL;
        if (q->op == NULL) {            /* its session is gone */
            control_req_free(q);
            continue;
        }
        ctl->cur = q;
        control_start(ctl, q);
    }
}

static void control_enqueue(struct control_op *op, const char *msg,
                            size_t len) {
    struct control *ctl = op->ctl;
    struct control_req *q = calloc(1, sizeof *q);

    if (q == NULL || (q->text = strndup(msg, len)) == NULL ||
        strlen(q->text) != len || strchr(q->text, ' ') == NULL) {
        log_warn("control: bad request from an operator's session");
        if (q)
            control_req_free(q);
        return;
    }
    q->op = op;
    if (ctl->queue_tail)
        ctl->queue_tail->next = q;
    else
        ctl->queue = q;
    ctl->queue_tail = q;
    control_next(ctl);
}

static void control_op_readable(ev_loop *loop, int fd, void *ud, int mask) {
    struct control_op *op = ud;
    const char *msg;
    size_t len;
    char buf[4096];
    ssize_t n;
    int rc;

    (void)loop; (void)mask;
    n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0 || control_buf_put(&op->in, buf, (size_t)n) < 0) {
        control_op_free(op, OP_ENDED);  /* the session ended */
        return;
    }
    while ((rc = control_buf_next(&op->in, &msg, &len)) == 1)
        control_enqueue(op, msg, len);
    if (rc < 0) {
        log_warn("control: bad request from an operator's session");
        control_op_free(op, OP_KILL);
        return;
    }
    control_buf_compact(&op->in);
}

/* A worker's reply to the request in flight (late ones are dropped). */
static void control_worker_readable(ev_loop *loop, int fd, void *ud,
                                    int mask) {
    struct control *ctl = ud;
    static char buf[CONTROL_MSG_MAX];
    unsigned long got;
    char *end;
    ssize_t n;
    int i;

    (void)mask;
    for (i = 0; i < ctl->nworkers && ctl->workers[i].fd != fd; i++)
        ;
    n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        ev_del(loop, fd, EV_READABLE);  /* closed when the slot is reset */
        if (i < ctl->nworkers && control_unasked(ctl, i, "worker gone"))
            control_finish(ctl);
        return;
    }
    buf[n] = '\0';
    if (i == ctl->nworkers || ctl->cur == NULL || !ctl->workers[i].asked)
        return;
    got = strtoul(buf, &end, 10);
    if (end == buf || *end != ' ' || got != ctl->cur->wseq)
        return;
    end++;
    ctl->workers[i].asked = 0;
    control_entry(ctl->cur, 'W', i, ctl->workers[i].pid, end,
                  (size_t)(n - (end - buf)));
    if (--ctl->cur->pending == 0)
        control_finish(ctl);
}

/* The session process gets fd and one end of a channel; the master keeps
 * the other. 0, or -1 (fd closed). */
static int control_fork_session(struct control *ctl, int fd) {
    struct control_op *op = calloc(1, sizeof *op);
    int ch[2];
    pid_t pid;

    if (op == NULL || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
                                 ch) < 0) {
        free(op);
        close(fd);
        return -1;
    }
    if ((pid = fork()) == 0) {
        close(ch[0]);
        control_sess_main(ctl, fd, ch[1]);
    }
    close(fd);
    close(ch[1]);
    if (pid < 0 || net_nonblock(NULL, ch[0], 1) < 0 ||
        ev_add(ctl->loop, ch[0], EV_READABLE, control_op_readable, op)
        == EV_ERR) {
        if (pid > 0)
            kill(pid, SIGKILL);
        close(ch[0]);
        free(op);
        return -1;
    }
    op->ctl = ctl;
    op->pid = pid;
    op->fd = ch[0];
    op->next = ctl->ops;
    if (op->next)
        op->next->prev = op;
    ctl->ops = op;
    ctl->nops++;
    return 0;
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
    int fd;

    (void)loop;
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
        if (control_fork_session(ctl, fd) < 0) {
            log_warn("control: cannot start a session: %s", strerror(errno));
            continue;
        }
        log_info("control: operator connected");
    }
}

/* Frees everything; in the master (owner) it also leaves the loop, ends
 * the sessions and removes the socket file, which a forked child must not
 * do. */
static void control_free(struct control *ctl, int owner) {
    if (ctl == NULL)
        return;
    while (ctl->ops)
        control_op_free(ctl->ops, owner ? OP_KILL : OP_FORKED);
    if (ctl->cur)
        control_req_free(ctl->cur);
    while (ctl->queue) {
        struct control_req *q = ctl->queue;
        ctl->queue = q->next;
        control_req_free(q);
    }
    if (ctl->cur_timer && owner)
        ev_timer_del(ctl->loop, ctl->cur_timer);
    if (ctl->fd >= 0) {
        if (owner)
            ev_del(ctl->loop, ctl->fd, EV_READABLE);
        if (owner && ctl->owns_path)
            net_unix_unlink(ctl->path, &ctl->id);
        close(ctl->fd);
    }
    for (int i = 0; i < ctl->nworkers; i++) {
        if (ctl->workers[i].fd < 0)
            continue;
        if (owner)
            ev_del(ctl->loop, ctl->workers[i].fd, EV_READABLE);
        close(ctl->workers[i].fd);
    }
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

/* Worker slot i is process pid reached through fd; the old fd is closed
 * (and what the request in flight waited from it given up). */
void control_set_worker(struct control *ctl, int slot, pid_t pid, int fd) {
    int done;

    if (slot >= ctl->nworkers) {
        struct control_worker *w = realloc(ctl->workers,
                                           (slot + 1) * sizeof *w);
        if (w == NULL) {
            if (fd >= 0)
                close(fd);
            return;
        }
        for (int i = ctl->nworkers; i <= slot; i++)
            w[i].pid = 0, w[i].fd = -1, w[i].asked = 0;
        ctl->workers = w;
        ctl->nworkers = slot + 1;
    }
    done = control_unasked(ctl, slot, "worker gone");
    if (ctl->workers[slot].fd >= 0) {
        ev_del(ctl->loop, ctl->workers[slot].fd, EV_READABLE);
        close(ctl->workers[slot].fd);
    }
    ctl->workers[slot].pid = pid;
    ctl->workers[slot].fd = fd;
    if (fd >= 0 && ev_add(ctl->loop, fd, EV_READABLE,
                          control_worker_readable, ctl) == EV_ERR)
        log_warn("control: worker %d: %s", slot, strerror(errno));
    if (done)
        control_finish(ctl);
}

void control_set_swap(struct control *ctl, control_swap_proc *swap,
                      void *ud) {
    ctl->swap = swap;
    ctl->swap_ud = ud;
}

void control_set_stats(struct control *ctl, const struct server_stats *st) {
    ctl->stats = st;
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

    if (net_unix_addr(path, &sa) < 0)
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
