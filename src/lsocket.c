/* echohost.socket: blocking TCP sockets for Lua (IPv4 and IPv6), the Socket
 * module of the original Coq echo server plus connect, shutdown, timeouts. */
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <lauxlib.h>
#include <lua.h>

#include "net.h"

#define SOCK_META "echohost.socket"
#define SOCK_RECV_DEFAULT 4096          /* bytes one recv() asks for */
#define SOCK_RECV_MAX (64 * 1024 * 1024)
#define SOCK_BACKLOG 128

struct sock {
    int fd;                     /* -1 once closed */
    double timeout;             /* seconds per operation; < 0: block forever */
};

int luaopen_echohost_socket(lua_State *L);

/* ---- helpers ------------------------------------------------------------ */

/* Pushes a new socket userdata in the closed state: a raise between this and
 * storing the descriptor leaks nothing [liolib.c newprefile]. */
static struct sock *newsock(lua_State *L) {
    struct sock *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->fd = -1;
    s->timeout = -1;
    luaL_setmetatable(L, SOCK_META);
    return s;
}

/* The socket at idx; raises if it is not one or is closed [liolib.c tofile]. */
static struct sock *checksock(lua_State *L, int idx) {
    struct sock *s = luaL_checkudata(L, idx, SOCK_META);
    if (s->fd < 0)
        luaL_error(L, "attempt to use a closed socket");
    return s;
}

/* nil, message, errno: the one I/O failure shape [lauxlib.c luaL_fileresult].
 * ETIMEDOUT is "timeout"; a peer that went away is "closed". */
static int sock_fail(lua_State *L, const char *what, int err) {
    lua_pushnil(L);
    if (err == ETIMEDOUT)
        lua_pushliteral(L, "timeout");
    else if (err == 0 || err == EPIPE || err == ECONNRESET)
        lua_pushliteral(L, "closed");
    else
        lua_pushfstring(L, "%s: %s", what, strerror(err));
    lua_pushinteger(L, err);
    return 3;
}

/* Waits until fd is ready for events or the deadline (< 0: none) passes.
 * 0 when ready (or when there is no deadline: the blocking call then
 * waits itself), -1 with errno ETIMEDOUT or poll's error. */
static int sock_wait(int fd, short events, double deadline) {
    struct pollfd p = {.fd = fd, .events = events};

    if (deadline < 0)
        return 0;
    for (;;) {
        double left = deadline - net_now();
        int ms = left <= 0 ? 0 : (int)ceil(left * 1000);
        int n = poll(&p, 1, ms);
        if (n > 0)
            return 0;
        if (n == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR)
            return -1;
    }
}

static double sock_deadline(const struct sock *s) {
    return s->timeout < 0 ? -1 : net_now() + s->timeout;
}

/* Pushes host, port, family ("inet" or "inet6") of an address. */
static int addr_push(lua_State *L, const struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        lua_pushstring(L, host);
        lua_pushinteger(L, ntohs(in6->sin6_port));
        lua_pushliteral(L, "inet6");
    } else {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        lua_pushstring(L, host);
        lua_pushinteger(L, ntohs(in->sin_port));
        lua_pushliteral(L, "inet");
    }
    return 3;
}

/* Checks host (arg 1) and port (arg 2, lo..65535): before anything is
 * pushed, so that a missing argument reads "got no value". */
static void check_hostport(lua_State *L, int lo) {
    lua_Integer port;

    luaL_checkstring(L, 1);
    port = luaL_checkinteger(L, 2);
    if (port < lo || port > 65535)
        luaL_argerror(L, 2, lo == 0 ? "port out of range 0..65535"
                                    : "port out of range 1..65535");
}

/* Resolves host and port (args 1 and 2, checked by check_hostport). On a
 * resolver failure pushes nil, message, code (a negative EAI_* value, or
 * errno for EAI_SYSTEM) and returns NULL; the caller returns 3. The list
 * is the caller's to free. */
static struct addrinfo *resolve_args(lua_State *L, int passive) {
    const char *host = lua_tostring(L, 1);
    int port = (int)lua_tointeger(L, 2);
    struct addrinfo *res = NULL;
    char err[NET_ERR_LEN];
    int rc;

    rc = net_resolve(err, host, port, passive ? NET_RES_PASSIVE : 0, &res);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        lua_pushinteger(L, rc == EAI_SYSTEM ? errno : rc);
        return NULL;
    }
    return res;
}

/* ---- opening: open_socket, connect, accept_connection ------------------- */

/* A socket bound to one of the addresses; -1 with errno and the address
 * that failed last in where. */
static int bind_any(const struct addrinfo *res, char *where, size_t len) {
    const struct addrinfo *ai;
    int one = 1, fd = -1, err = EADDRNOTAVAIL;

    for (ai = res; ai; ai = ai->ai_next) {
        net_format_addr(ai->ai_addr, where, len);
        if ((fd = net_socket(ai, 0)) < 0) {
            err = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            return fd;
        err = errno;
        close(fd);
    }
    errno = err;
    return -1;
}

/* open_socket(host, port): a TCP socket bound to host:port (SO_REUSEADDR,
 * like the original), not yet listening. */
static int sock_open_socket(lua_State *L) {
    struct addrinfo *res;
    struct sock *s;
    char where[NET_ADDR_LEN + 8];
    char addr[NET_ADDR_LEN];
    int err;

    check_hostport(L, 0);
    s = newsock(L);                   /* then: a raise leaks nothing */
    res = resolve_args(L, 1);
    if (res == NULL)
        return 3;
    s->fd = bind_any(res, addr, sizeof addr);
    err = errno;
    freeaddrinfo(res);
    if (s->fd < 0) {
        snprintf(where, sizeof where, "bind %s", addr);
        return sock_fail(L, where, err);
    }
    return 1;
}

/* Waits for fd's connect in progress, until the deadline (< 0: none).
 * 0 or -1 with errno. */
static int connect_wait(int fd, double deadline) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int err;

    if (deadline >= 0) {
        if (sock_wait(fd, POLLOUT, deadline) < 0)
            return -1;
    } else {
        while (poll(&p, 1, -1) < 0)
            if (errno != EINTR)
                return -1;
    }
    if ((err = net_connect_result(fd)) != 0) {
        errno = err;
        return -1;
    }
    return 0;
}

/* One socket connected to ai within the deadline (< 0: none), blocking
 * once connected; -1 with errno. */
static int connect_one(const struct addrinfo *ai, double deadline) {
    int fd, rc = net_connect_start(ai, &fd);

    if (rc < 0)
        return -1;
    if ((rc == 1 && connect_wait(fd, deadline) < 0)
        || net_nonblock(NULL, fd, 0) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* connect(host, port [, timeout]): a socket connected to host:port, trying
 * each address in turn. timeout (seconds) bounds the connect and becomes the
 * socket's timeout, as settimeout. */
static int sock_connect(lua_State *L) {
    double timeout = luaL_optnumber(L, 3, -1);
    struct addrinfo *res, *ai;
    struct sock *s;
    char addr[NET_ADDR_LEN] = "?", where[NET_ADDR_LEN + 8];
    double deadline;
    int err = EADDRNOTAVAIL;

    luaL_argcheck(L, !isnan(timeout), 3, "timeout is NaN");
    check_hostport(L, 1);
    s = newsock(L);                   /* then: a raise leaks nothing */
    if ((res = resolve_args(L, 0)) == NULL)
        return 3;
    s->timeout = timeout < 0 ? -1 : timeout;
    deadline = sock_deadline(s);
    for (ai = res; ai && s->fd < 0; ai = ai->ai_next) {
        net_format_addr(ai->ai_addr, addr, sizeof addr);
        if ((s->fd = connect_one(ai, deadline)) < 0)
            err = errno;
    }
    freeaddrinfo(res);
    if (s->fd < 0) {
        snprintf(where, sizeof where, "connect %s", addr);
        return sock_fail(L, where, err);
    }
    return 1;
}

/* accept_connection(s): the next client as a new socket (no timeout of its
 * own); waits at most s's timeout. */
static int sock_accept_connection(lua_State *L) {
    struct sock *s = checksock(L, 1);
    double deadline = sock_deadline(s);
    struct sock *c = newsock(L);

    for (;;) {
        if (sock_wait(s->fd, POLLIN, deadline) < 0)
            return sock_fail(L, "accept", errno);
        c->fd = accept4(s->fd, NULL, NULL, SOCK_CLOEXEC);
        if (c->fd >= 0)
            return 1;
        if (errno != EINTR && errno != ECONNABORTED)
            return sock_fail(L, "accept", errno);
    }
}

/* ---- using: listen, recv, send, shutdown, settimeout -------------------- */

/* listen(s [, backlog]): true. */
static int sock_listen(lua_State *L) {
    struct sock *s = checksock(L, 1);
    lua_Integer backlog = luaL_optinteger(L, 2, SOCK_BACKLOG);

    luaL_argcheck(L, backlog >= 0 && backlog <= 65535, 2,
                  "backlog out of range 0..65535");
    if (listen(s->fd, (int)backlog) < 0)
        return sock_fail(L, "listen", errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* recv(s [, max]): what one read returns (1..max bytes); nil, "closed", 0
 * once the peer has closed its side. */
static int sock_recv(lua_State *L) {
    struct sock *s = checksock(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, SOCK_RECV_DEFAULT);
    double deadline = sock_deadline(s);
    int flags = deadline < 0 ? 0 : MSG_DONTWAIT;
    luaL_Buffer b;
    char *p;
    ssize_t n;

    luaL_argcheck(L, max >= 1 && max <= SOCK_RECV_MAX, 2,
                  "max out of range 1..67108864");
    p = luaL_buffinitsize(L, &b, (size_t)max);
    for (;;) {
        if (sock_wait(s->fd, POLLIN, deadline) < 0)
            return sock_fail(L, "recv", errno);
        n = recv(s->fd, p, (size_t)max, flags);
        if (n > 0)
            break;
        if (n == 0)
            return sock_fail(L, "recv", 0);
        if (errno != EINTR && errno != EAGAIN)
            return sock_fail(L, "recv", errno);
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* send(s, data): #data once all of it went out; otherwise nil, message,
 * errno, bytes sent so far. Never raises SIGPIPE. */
static int sock_send(lua_State *L) {
    struct sock *s = checksock(L, 1);
    size_t len, sent = 0;
    const char *data;
    double deadline = sock_deadline(s);
    int flags = MSG_NOSIGNAL | (deadline < 0 ? 0 : MSG_DONTWAIT);

    luaL_checktype(L, 2, LUA_TSTRING);  /* a number raises, as conn:send */
    data = lua_tolstring(L, 2, &len);
    while (sent < len) {
        ssize_t n;
        if (sock_wait(s->fd, POLLOUT, deadline) < 0)
            break;
        n = send(s->fd, data + sent, len - sent, flags);
        if (n >= 0)
            sent += (size_t)n;
        else if (errno != EINTR && errno != EAGAIN)
            break;
    }
    if (sent < len) {
        int nret = sock_fail(L, "send", errno);
        lua_pushinteger(L, (lua_Integer)sent);
        return nret + 1;
    }
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

/* shutdown(s [, "send"|"recv"|"both"]): true. Default "both". */
static int sock_shutdown(lua_State *L) {
    static const char *const names[] = {"send", "recv", "both", NULL};
    static const int hows[] = {SHUT_WR, SHUT_RD, SHUT_RDWR};
    struct sock *s = checksock(L, 1);
    int i = luaL_checkoption(L, 2, "both", names);

    if (shutdown(s->fd, hows[i]) < 0)
        return sock_fail(L, "shutdown", errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* settimeout(s, seconds): true. nil or a negative value: block forever. */
static int sock_settimeout(lua_State *L) {
    struct sock *s = checksock(L, 1);
    double t = luaL_optnumber(L, 2, -1);

    luaL_argcheck(L, !isnan(t), 2, "timeout is NaN");
    s->timeout = t < 0 ? -1 : t;
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- addresses ---------------------------------------------------------- */

typedef int getname_fn(int, struct sockaddr *, socklen_t *);

static int sock_getname(lua_State *L, getname_fn *get, const char *what) {
    struct sock *s = checksock(L, 1);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (get(s->fd, (struct sockaddr *)&ss, &len) < 0)
        return sock_fail(L, what, errno);
    return addr_push(L, &ss);
}

/* peername(s): host, port, family of the peer. */
static int sock_peername(lua_State *L) {
    return sock_getname(L, getpeername, "getpeername");
}

/* sockname(s): host, port, family of the local end. */
static int sock_sockname(lua_State *L) {
    return sock_getname(L, getsockname, "getsockname");
}

/* fileno(s): the descriptor. */
static int sock_fileno(lua_State *L) {
    lua_pushinteger(L, checksock(L, 1)->fd);
    return 1;
}

/* ---- closing and the metatable ----------------------------------------- */

/* close_socket(s): true. The descriptor is released even if close() fails
 * (Linux closes it anyway), so the failure is reported but never repeated. */
static int sock_close_socket(lua_State *L) {
    struct sock *s = checksock(L, 1);
    int rc = close(s->fd);

    s->fd = -1;
    if (rc < 0 && errno != EINTR)
        return sock_fail(L, "close", errno);
    lua_pushboolean(L, 1);
    return 1;
}

/* __gc and __close: closes if still open; idempotent. */
static int sock_gc(lua_State *L) {
    struct sock *s = luaL_checkudata(L, 1, SOCK_META);
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    return 0;
}

static int sock_tostring(lua_State *L) {
    struct sock *s = luaL_checkudata(L, 1, SOCK_META);
    if (s->fd < 0)
        lua_pushliteral(L, SOCK_META " (closed)");
    else
        lua_pushfstring(L, SOCK_META " (fd %d)", s->fd);
    return 1;
}

/* Functions of a socket: the module's and the methods (s:recv()). close and
 * accept are the connection-style names of close_socket, accept_connection. */
static const luaL_Reg sock_methods[] = {
    {"accept", sock_accept_connection},
    {"accept_connection", sock_accept_connection},
    {"close", sock_close_socket},
    {"close_socket", sock_close_socket},
    {"fileno", sock_fileno},
    {"listen", sock_listen},
    {"peername", sock_peername},
    {"recv", sock_recv},
    {"send", sock_send},
    {"settimeout", sock_settimeout},
    {"shutdown", sock_shutdown},
    {"sockname", sock_sockname},
    {NULL, NULL}
};

static const luaL_Reg sock_ctors[] = {
    {"connect", sock_connect},
    {"open_socket", sock_open_socket},
    {NULL, NULL}
};

static const luaL_Reg sock_meta[] = {
    {"__index", NULL},          /* placeholder */
    {"__gc", sock_gc},
    {"__close", sock_gc},
    {"__tostring", sock_tostring},
    {NULL, NULL}
};

static void createmeta(lua_State *L) {
    luaL_newmetatable(L, SOCK_META);    /* metatable for sockets */
    luaL_setfuncs(L, sock_meta, 0);     /* add metamethods */
    luaL_newlibtable(L, sock_methods);  /* method table */
    luaL_setfuncs(L, sock_methods, 0);
    lua_setfield(L, -2, "__index");     /* metatable.__index = methods */
    lua_pop(L, 1);
}

int luaopen_echohost_socket(lua_State *L) {
    luaL_newlib(L, sock_methods);
    luaL_setfuncs(L, sock_ctors, 0);
    createmeta(L);
    return 1;
}
