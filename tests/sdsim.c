/* sdsim: what systemd does to a service it starts, for the ops tests.
 *
 *   sdsim [--listen HOST:PORT] [--notify PATH|@NAME OUT] -- CMD [ARGS]
 *
 * --listen binds and listens on HOST:PORT (IPv4, port 0: any) as fd 3 and
 * sets LISTEN_FDS=1 and LISTEN_PID (socket activation); --notify binds a
 * datagram socket at PATH (or the abstract NAME), sets NOTIFY_SOCKET, and
 * forks a reader that appends each datagram received, as one line, to OUT
 * until CMD ends (at most 120 s). Then it execs CMD: its pid stays the one
 * the caller started. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) __attribute__((noreturn));

static void die(const char *what) {
    fprintf(stderr, "sdsim: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* fd 3: a listening TCP socket on host:port. */
static void listen_fd3(const char *spec) {
    struct sockaddr_in sa;
    char host[64];
    const char *colon = strrchr(spec, ':');
    int fd, on = 1;

    if (colon == NULL || (size_t)(colon - spec) >= sizeof host) {
        fprintf(stderr, "sdsim: bad --listen %s\n", spec);
        exit(2);
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "sdsim: bad host %s\n", host);
        exit(2);
    }
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        listen(fd, 128) < 0)
        die("bind/listen");
    if (fd != 3 && (dup2(fd, 3) < 0 || close(fd) < 0))
        die("dup2");
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_FDNAMES", "echohost", 1);
}

/* The reader: one line in out per datagram, until the parent is gone
 * (then what it sent last, still queued, is read too). */
static void reader(int fd, const char *out, pid_t parent) {
    char buf[4096];
    int of = open(out, O_WRONLY | O_APPEND | O_CREAT, 0644), last = 0;

    if (of < 0)
        die(out);
    for (int i = 0; i < 1200 && !last; i++) {
        struct pollfd p = {fd, POLLIN, 0};
        ssize_t n;
        last = getppid() != parent;
        if (poll(&p, 1, last ? 0 : 100) <= 0)
            continue;
        while ((n = recv(fd, buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
            buf[n++] = '\n';
            if (write(of, buf, (size_t)n) != n)
                die(out);
        }
    }
    _exit(0);
}

static void notify(const char *name, const char *out) {
    struct sockaddr_un sa;
    size_t len = strlen(name);
    pid_t parent = getpid();
    int fd;

    if (len >= sizeof sa.sun_path) {
        fprintf(stderr, "sdsim: name too long\n");
        exit(2);
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, name, len);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0)
        die("socket");
    if (bind(fd, (struct sockaddr *)&sa,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0)
        die("bind");
    switch (fork()) {
    case -1:
        die("fork");
    case 0:                             /* no death signal: it would kill the
                                         * reader before it reads what the
                                         * parent sent last; it sees the
                                         * parent gone within 100 ms */
        reader(fd, out, parent);
    }
    close(fd);
    setenv("NOTIFY_SOCKET", name, 1);
}

int main(int argc, char **argv) {
    char pid[32];
    int i = 1;

    for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            listen_fd3(argv[++i]);
        } else if (strcmp(argv[i], "--notify") == 0 && i + 2 < argc) {
            notify(argv[i + 1], argv[i + 2]);
            i += 2;
        } else {
            fprintf(stderr, "usage: sdsim [--listen HOST:PORT] "
                    "[--notify PATH|@NAME OUT] -- CMD [ARGS]\n");
            return 2;
        }
    }
    if (i + 1 >= argc) {
        fprintf(stderr, "sdsim: no command\n");
        return 2;
    }
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (getenv("LISTEN_FDS"))
        setenv("LISTEN_PID", pid, 1);
    execvp(argv[i + 1], argv + i + 1);
    die(argv[i + 1]);
}
