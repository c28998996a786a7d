/* Sockets without Lua, the one OS socket layer: resolving, TCP and Unix
 * listen and accept, non-blocking connect, options, address text, the monotonic
 * clock; errors written into a caller buffer [Redis anet.c]. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "net.h"

__attribute__((format(printf, 2, 3)))
static void net_set_error(char *err, const char *fmt, ...) {
    va_list ap;

    if (err == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(err, NET_ERR_LEN, fmt, ap);
    va_end(ap);
}

/* "unix:/run/x.sock", the path made one printable word, cut to fit. */
static int format_unix(const struct sockaddr_un *un, char *buf, size_t len) {
    const char *p = un->sun_path;
    size_t max = sizeof un->sun_path, at = 5, i = 0;

    if (len < 6)
        return NET_ERR;
    memcpy(buf, "unix:", 5);
    if (p[0] == '\0' && p[1] != '\0') {
        buf[at++] = '@';                /* abstract: a NUL, then the name */
        i = 1;
    }
    for (; i < max && p[i] != '\0' && at + 1 < len; i++)
        buf[at++] = p[i] > ' ' && p[i] <= '~' ? p[i] : '?';
    buf[at] = '\0';
    return NET_OK;
}

int net_format_addr(const struct sockaddr *sa, char *buf, size_t len) {
    char host[INET6_ADDRSTRLEN];
    int n;

    if (sa->sa_family == AF_UNIX)
        return format_unix((const struct sockaddr_un *)sa, buf, len);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        n = snprintf(buf, len, "%s:%d", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        n = snprintf(buf, len, "[%s]:%d", host, ntohs(in6->sin6_port));
    } else {
        n = snprintf(buf, len, "?");
    }
    return n < 0 || (size_t)n >= len ? NET_ERR : NET_OK;
}

double net_now(void) {
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void net_hints(struct addrinfo *hints, int flags) {
    memset(hints, 0, sizeof *hints);
    hints->ai_family = AF_UNSPEC;
    hints->ai_socktype = flags & NET_RES_DGRAM ? SOCK_DGRAM : SOCK_STREAM;
    hints->ai_flags = AI_NUMERICSERV
                      | (flags & NET_RES_PASSIVE ? AI_PASSIVE : 0)
                      | (flags & NET_RES_NUMERIC ? AI_NUMERICHOST : 0)
                      | (flags & NET_RES_ADDRCONFIG ? AI_ADDRCONFIG : 0);
}

int net_resolve(char *err, const char *host, int port, int flags,
                struct addrinfo **res) {
    struct addrinfo hints;
    char service[8];
    int rv;

    net_hints(&hints, flags);
    snprintf(service, sizeof service, "%d", port);
    rv = getaddrinfo(host, service, &hints, res);
    if (rv != 0) {
        int e = errno;
        net_set_error(err, "resolve %s: %s", host,
                      rv == EAI_SYSTEM ? strerror(e) : gai_strerror(rv));
        errno = e;
    }
    return rv;
}

int net_socket(const struct addrinfo *ai, int flags) {
    int type = ai->ai_socktype | SOCK_CLOEXEC;

    if (flags & NET_NONBLOCK)
        type |= SOCK_NONBLOCK;
    return socket(ai->ai_family, type, ai->ai_protocol);
}

static int set_int_opt(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value);
}

/* A non-blocking connect interrupted by a signal goes on in the
 * background, as one in progress. */
int net_connect_start(const struct addrinfo *ai, int *fd) {
    int e;

    if ((*fd = net_socket(ai, NET_NONBLOCK)) < 0)
        return NET_ERR;
    set_int_opt(*fd, IPPROTO_TCP, TCP_NODELAY, 1);
    if (connect(*fd, ai->ai_addr, ai->ai_addrlen) == 0)
        return 0;
    if (errno == EINPROGRESS || errno == EINTR)
        return 1;
    e = errno;
    close(*fd);
    *fd = -1;
    errno = e;
    return NET_ERR;
}

int net_connect_result(int fd) {
    int e = 0;
    socklen_t len = sizeof e;

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) < 0)
        return errno;
    return e;
}

/* SO_REUSEPORT lets a second server on the port share its traffic, so a
 * group's first socket first proves the port free: a plain bind (with
 * SO_REUSEADDR for TCP, so TIME_WAIT does not count; not for UDP, where it
 * would share the port with any socket that set it) fails on anyone
 * listening. */
static int port_free(const struct addrinfo *ai) {
    int fd = net_socket(ai, 0);
    int rc = -1;

    if (fd < 0)
        return -1;
    if ((ai->ai_socktype == SOCK_DGRAM ||
         set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1) == 0) &&
        (ai->ai_family != AF_INET6 ||
         set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) == 0))
        rc = bind(fd, ai->ai_addr, ai->ai_addrlen);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Binds (and for TCP listens on) one resolved address. fd, or NET_ERR
 * with err. */
static int server_one(char *err, const struct addrinfo *ai, int backlog,
                      int flags) {
    char where[NET_ADDR_LEN];
    const char *what = "socket";
    int tcp = ai->ai_socktype == SOCK_STREAM;
    int fd;

    net_format_addr(ai->ai_addr, where, sizeof where);
    fd = net_socket(ai, flags & NET_NONBLOCK);
    if (fd < 0)
        goto err;
    what = "setsockopt";
    if (tcp && (set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1) < 0 ||
                set_int_opt(fd, IPPROTO_TCP, TCP_NODELAY, 1) < 0))
        goto err;
    if ((flags & NET_REUSEPORT) &&
        set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1) < 0)
        goto err;
    if (ai->ai_family == AF_INET6 &&
        set_int_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1) < 0)
        goto err;
    what = "bind";
    if ((flags & NET_FREE) && port_free(ai) < 0)
        goto err;
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
        goto err;
    what = "listen";
    if (tcp && listen(fd, backlog) < 0)
        goto err;
    return fd;
err:
    net_set_error(err, "%s %s: %s", what, where, strerror(errno));
    if (fd >= 0)
        close(fd);
    return NET_ERR;
}

static int net_server(char *err, const char *host, int port, int backlog,
                      int flags, int resflags) {
    struct addrinfo *res, *ai;
    int fd = NET_ERR;

    if (net_resolve(err, host, port, NET_RES_PASSIVE | resflags, &res) != 0)
        return NET_ERR;
    /* the first address that binds wins; err keeps the first failure */
    for (ai = res; ai != NULL && fd < 0; ai = ai->ai_next)
        fd = server_one(ai == res ? err : NULL, ai, backlog, flags);
    freeaddrinfo(res);
    return fd;
}

int net_tcp_server(char *err, const char *host, int port, int backlog,
                   int flags) {
    return net_server(err, host, port, backlog, flags, 0);
}

int net_udp_server(char *err, const char *host, int port, int flags) {
    return net_server(err, host, port, 0, flags, NET_RES_DGRAM);
}

/* --- Unix sockets ------------------------------------------------------ */

int net_unix_addr(const char *path, struct sockaddr_un *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path) {
        errno = ENAMETOOLONG;
        return NET_ERR;
    }
    strcpy(sa->sun_path, path);
    return NET_OK;
}

/* A path that exists may be reused only when it is a socket nobody accepts
 * on (a server that died without unlinking it). NET_OK when free (a stale
 * socket removed), NET_ERR with err. */
static int unix_take_path(char *err, const char *path) {
    struct sockaddr_un sa;
    struct stat st;
    int fd, rc;

    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return NET_OK;
        net_set_error(err, "%s: %s", path, strerror(errno));
        return NET_ERR;
    }
    if (!S_ISSOCK(st.st_mode)) {
        net_set_error(err, "%s: path exists and is not a socket (refusing "
                      "to replace it)", path);
        return NET_ERR;
    }
    if (net_unix_addr(path, &sa) < 0 ||
        (fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0) {
        net_set_error(err, "%s: %s", path, strerror(errno));
        return NET_ERR;
    }
    rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (rc == 0) {
        net_set_error(err, "%s: in use by a running server", path);
        return NET_ERR;
    }
    if (e != ECONNREFUSED) {
        net_set_error(err, "%s: %s", path, strerror(e));
        return NET_ERR;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        net_set_error(err, "%s: stale socket: unlink: %s", path,
                      strerror(errno));
        return NET_ERR;
    }
    return NET_OK;
}

/* fchmod before bind does nothing to a Unix socket: umask 077 makes the
 * file 0700 at most from birth, chmod then sets mode. */
int net_unix_server(char *err, const char *path, unsigned mode, int backlog,
                    int flags, struct net_unix_id *id) {
    int type = SOCK_STREAM | SOCK_CLOEXEC;
    const char *what = "socket";
    struct sockaddr_un sa;
    struct stat st;
    mode_t old;
    int fd, rc = -1;

    if (net_unix_addr(path, &sa) < 0) {
        net_set_error(err, "%s: path too long (at most %zu bytes)", path,
                      sizeof sa.sun_path - 1);
        return NET_ERR;
    }
    if (unix_take_path(err, path) < 0)
        return NET_ERR;
    if (flags & NET_NONBLOCK)
        type |= SOCK_NONBLOCK;
    if ((fd = socket(AF_UNIX, type, 0)) < 0)
        goto err;
    what = "bind";
    old = umask(077);
    rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc < 0)
        goto err;
    what = "chmod";
    if (chmod(path, mode & 0777) < 0)
        goto err;
    what = "listen";
    if (listen(fd, backlog) < 0 || lstat(path, &st) < 0)
        goto err;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    return fd;
err:
    net_set_error(err, "%s: %s: %s", path, what, strerror(errno));
    if (rc == 0)
        unlink(path);
    if (fd >= 0)
        close(fd);
    return NET_ERR;
}

int net_unix_id_of(const char *path, struct net_unix_id *id) {
    struct stat st;

    memset(id, 0, sizeof *id);
    if (lstat(path, &st) < 0)
        return NET_ERR;
    if (!S_ISSOCK(st.st_mode)) {
        errno = ENOTSOCK;
        return NET_ERR;
    }
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    return NET_OK;
}

void net_unix_unlink(const char *path, const struct net_unix_id *id) {
    struct stat st;

    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) &&
        st.st_dev == id->dev && st.st_ino == id->ino)
        unlink(path);
}

/* "unix:pid=4242,uid=1000": who is at the other end of a Unix socket (its
 * address is unnamed as a rule, so it would say nothing). */
static void unix_peer(int fd, char *buf, size_t len) {
    struct ucred cr;
    socklen_t n = sizeof cr;

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &n) == 0)
        snprintf(buf, len, "unix:pid=%d,uid=%u", (int)cr.pid,
                 (unsigned)cr.uid);
    else
        snprintf(buf, len, "unix:");
}

int net_accept_peer(int lfd, struct net_peer *p, int flags) {
    socklen_t len;
    int fd;

    do {
        len = sizeof p->addr;   /* a Unix peer's path is cut: unused */
        fd = accept4(lfd, &p->addr.sa, &len, flags | SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return NET_ERR;
    p->name[0] = '\0';
    if (p->addr.sa.sa_family == AF_UNIX)
        unix_peer(fd, p->name, sizeof p->name);
    return fd;
}

const char *net_peer_name(struct net_peer *p) {
    if (p->name[0] == '\0' &&
        net_format_addr(&p->addr.sa, p->name, sizeof p->name) < 0)
        snprintf(p->name, sizeof p->name, "?");
    return p->name;
}

void net_peer_set_name(struct net_peer *p, const char *name) {
    memset(&p->addr, 0, sizeof p->addr);
    snprintf(p->name, sizeof p->name, "%s", name[0] ? name : "?");
}

int net_accept(int lfd, char *peer, size_t peerlen) {
    struct net_peer p;
    int fd = net_accept_peer(lfd, &p, SOCK_NONBLOCK);

    if (fd >= 0 && peer != NULL)
        snprintf(peer, peerlen, "%s", net_peer_name(&p));
    return fd;
}

void net_abort(int fd) {
    struct linger lg = {1, 0};

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

int net_nonblock(char *err, int fd, int on) {
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK
                                        : fl & ~O_NONBLOCK) < 0) {
        net_set_error(err, "fcntl: %s", strerror(errno));
        return NET_ERR;
    }
    return NET_OK;
}

static int sock_addr(char *err, int fd, struct sockaddr_storage *ss) {
    socklen_t len = sizeof *ss;

    if (getsockname(fd, (struct sockaddr *)ss, &len) < 0) {
        net_set_error(err, "getsockname: %s", strerror(errno));
        return NET_ERR;
    }
    return NET_OK;
}

int net_sock_name(char *err, int fd, char *buf, size_t len) {
    struct sockaddr_storage ss;

    if (sock_addr(err, fd, &ss) < 0)
        return NET_ERR;
    return net_format_addr((struct sockaddr *)&ss, buf, len);
}

int net_sock_port(char *err, int fd) {
    struct sockaddr_storage ss;

    if (sock_addr(err, fd, &ss) < 0)
        return NET_ERR;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}
