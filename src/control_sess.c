/* Control socket, a session: the process the master forks for each
 * operator, with the operator's Lua state and REPL on a loop of its own; it
 * asks the master for what only the master and the workers know. Whatever
 * the operator runs here delays no one else. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>

#include "control_proto.h"
#include "lhost.h"
#include "log.h"
#include "repl.h"

#define CONTROL_IN_MAX (1 << 20)        /* an operator's pending input */
#define CONTROL_OUT_MAX (8 << 20)       /* output queued for one operator */
#define CONTROL_ASK_MS 60000            /* the master always answers first */

/* The session ends with its process: nothing to free. */
static void control_sess_end(struct control_sess *s) __attribute__((noreturn));

static void control_sess_end(struct control_sess *s) {
    (void)s;
    _exit(0);
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
            control_sess_end(s);
            return -1;
        }
        s->outpos += n;
    }
    s->outpos = s->outlen = 0;
    ev_del(s->ctl->loop, s->fd, EV_WRITABLE);
    if (s->closing) {
        control_sess_end(s);
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
        control_sess_end(s);
        return;
    }
    if (s->closing)
        ev_del(s->ctl->loop, s->fd, EV_READABLE);
    control_flush(s);
}


/* --- asking the master ---------------------------------------------------- */

/* Reads what the master sent into s->chin. 0 when the master is gone. */
static int control_chan_recv(struct control_sess *s) {
    char buf[65536];

    for (;;) {
        ssize_t n = recv(s->chan, buf, sizeof buf, MSG_DONTWAIT);
        if (n > 0) {
            if (control_buf_put(&s->chin, buf, (size_t)n) < 0)
                return 0;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
}

/* The answer to request seq, if it is in: 1 with it pushed. Answers to
 * older requests (given up) are dropped. */
static int control_chan_answer(lua_State *L, struct control_sess *s,
                               unsigned seq) {
    const char *msg;
    size_t len;
    int rc;

    while ((rc = control_buf_next(&s->chin, &msg, &len)) == 1) {
        char *end;
        unsigned long got = strtoul(msg, &end, 10);
        if (end == msg || *end != '\n' || got != seq)
            continue;
        end++;
        if (L)
            lua_pushlstring(L, end, len - (size_t)(end - msg));
        control_buf_compact(&s->chin);
        return L != NULL;
    }
    if (rc < 0)
        s->chin.pos = s->chin.len;      /* cannot happen: drop it all */
    control_buf_compact(&s->chin);
    return 0;
}

/* Sends "<len>\n<seq> <req>" to the master. 0, or -1. */
static int control_sess_send(struct control_sess *s, const char *req) {
    char *msg;
    int len = asprintf(&msg, "%zu\n%u %s", (size_t)snprintf(NULL, 0, "%u %s",
                       s->seq, req), s->seq, req);
    ssize_t off = 0;

    if (len < 0)
        return -1;
    while (off < len) {
        ssize_t n = send(s->chan, msg + off, (size_t)(len - off),
                         MSG_NOSIGNAL);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0)
            off += n;
    }
    free(msg);
    return off == len ? 0 : -1;
}

void control_sess_ask(lua_State *L, struct control_sess *s, const char *req) {
    long long end = ev_now_ms() + CONTROL_ASK_MS;
    struct pollfd pfd[2];

    s->seq++;
    control_chan_answer(NULL, s, 0);    /* late answers: gone */
    if (control_sess_send(s, req) < 0)
        luaL_error(L, "the server's master is gone");
    pfd[0].fd = s->chan;
    pfd[1].fd = s->fd;
    pfd[0].events = pfd[1].events = POLLIN;
    while (!control_chan_answer(L, s, s->seq)) {
        long long left = end - ev_now_ms();
        if (left <= 0)
            luaL_error(L, "the server's master did not answer");
        if (poll(pfd, 2, (int)left) < 0 && errno != EINTR)
            luaL_error(L, "poll: %s", strerror(errno));
        if ((pfd[0].revents && !control_chan_recv(s)) ||
            (pfd[1].revents && control_interrupted(s)))
            luaL_error(L, "interrupted!");
    }
}

/* Between requests only late answers and the master's end arrive. */
static void control_chan_readable(ev_loop *loop, int fd, void *ud, int mask) {
    struct control_sess *s = ud;

    (void)loop; (void)fd; (void)mask;
    if (!control_chan_recv(s))
        control_sess_end(s);            /* the master is gone */
    control_chan_answer(NULL, s, s->seq + 1);
}

/* --- the session process -------------------------------------------------- */

/* Closes every inherited descriptor but stdin/out/err and keep[0..n): the
 * master's sockets, its loop, the other sessions and the workers'
 * channels are not this process's to hold. */
static void control_close_inherited(const int *keep, int n) {
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int dfd = d ? dirfd(d) : -1;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name), k;
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || fd <= 2 || fd == dfd)
            continue;
        for (k = 0; k < n && keep[k] != fd; k++)
            ;
        if (k == n)
            close(fd);
    }
    closedir(d);
}

/* Dies with the master; SIGINT, SIGHUP and SIGUSR1 are the master's to act on (a
 * terminal's ^C reaches the whole group). */
static void control_sess_signals(void) {
    sigset_t set;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);           /* keeps the log it was born with */
    signal(SIGUSR2, SIG_IGN);           /* upgrades are the master's */
    signal(SIGCHLD, SIG_DFL);
    sigemptyset(&set);
    sigprocmask(SIG_SETMASK, &set, NULL);
}

void control_sess_main(struct control *ctl, int fd, int chan) {
    struct control_sess *s = calloc(1, sizeof *s);
    int keep[2] = {fd, chan};
    char hello[64];
    int n;

    control_sess_signals();
    if (getppid() != ctl->master)
        _exit(1);                       /* the master is already gone */
    control_close_inherited(keep, 2);
    ctl->loop = ev_create(16);          /* the master's is not ours */
    if (s == NULL || ctl->loop == NULL)
        _exit(1);
    s->ctl = ctl;
    s->fd = fd;
    s->chan = chan;
    s->L = lhost_newstate(ctl->cfg->lua_mem_limit);
    if (s->L == NULL ||
        (s->r = repl_new(s->L, "=control", control_sess_write, s)) == NULL ||
        ev_add(ctl->loop, fd, EV_READABLE, control_readable, s) == EV_ERR ||
        ev_add(ctl->loop, chan, EV_READABLE, control_chan_readable, s)
        == EV_ERR) {
        log_warn("control: cannot start a session");
        _exit(1);
    }
    repl_set_limits(s->r, ctl->eval_ms, control_interrupted);
    control_openlib(s->L, s);
    n = snprintf(hello, sizeof hello, "echohost server %d, %d %s",
                 (int)ctl->master, ctl->nworkers,
                 ctl->nworkers == 1 ? "worker" : "workers");
    control_frame(s, CONTROL_FRAME_INFO, hello, (size_t)n);
    control_frame(s, CONTROL_FRAME_READY, "", 0);
    control_flush(s);
    ev_run(ctl->loop);
    _exit(0);
}
