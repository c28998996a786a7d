/* Sockets without Lua, the one OS socket layer [Redis anet.h]: resolving,
 * TCP and Unix listen and accept, non-blocking connect, options, address
 * text and the monotonic clock of deadlines. Errors go into a caller buffer char
 * err[NET_ERR_LEN] (may be NULL). */
#ifndef ECHOHOST_NET_H
#define ECHOHOST_NET_H

#include <stddef.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#define NET_OK 0
#define NET_ERR -1
#define NET_ERR_LEN 256
#define NET_ADDR_LEN 64         /* "[ffff:...:ffff]:65535" fits */

/* flags of net_tcp_server and net_socket */
#define NET_NONBLOCK 1          /* the returned socket is non-blocking */
#define NET_REUSEPORT 2         /* SO_REUSEPORT: share the port */
#define NET_FREE 4              /* with REUSEPORT: fail if anyone else
                                   listens there (a plain bind first) */

/* flags of net_resolve and net_hints */
#define NET_RES_PASSIVE 1       /* addresses to bind (AI_PASSIVE) */
#define NET_RES_NUMERIC 2       /* a numeric host only: never a lookup */
#define NET_RES_ADDRCONFIG 4    /* only families configured here */
#define NET_RES_DGRAM 8         /* UDP (SOCK_DGRAM) instead of TCP */

/* CLOCK_MONOTONIC in seconds: the clock of every deadline. */
double net_now(void);

/* Fills hints for TCP (UDP with NET_RES_DGRAM) on host:port with a numeric port, any family. */
void net_hints(struct addrinfo *hints, int flags);
/* getaddrinfo of host and port: 0 with *res the caller's to free, or the
 * EAI_* code with err filled as "resolve nosuch.invalid: Name or service
 * not known" (for EAI_SYSTEM, errno names the reason and is kept). */
int net_resolve(char *err, const char *host, int port, int flags,
                struct addrinfo **res);

/* A close-on-exec socket of ai's family and type (flags: NET_NONBLOCK), or
 * NET_ERR with errno. */
int net_socket(const struct addrinfo *ai, int flags);
/* A non-blocking close-on-exec socket with TCP_NODELAY into *fd, its
 * connect to ai started: 0 when connected, 1 in progress (wait for it
 * writable, then net_connect_result), NET_ERR with errno (no socket). */
int net_connect_start(const struct addrinfo *ai, int *fd);
/* The outcome of a connect that finished (fd became writable): 0 or the
 * errno it failed with. */
int net_connect_result(int fd);

/* A TCP socket bound to host:port (numeric or a name; port 0 picks one)
 * and listening with backlog, SO_REUSEADDR and TCP_NODELAY set (accepted
 * sockets inherit it), close-on-exec. The fd, or NET_ERR with err filled as
 * "bind 127.0.0.1:8888: Address already in use". */
int net_tcp_server(char *err, const char *host, int port, int backlog,
                   int flags);
/* A UDP socket bound to host:port as above (flags NET_NONBLOCK,
 * NET_REUSEPORT, NET_FREE; no SO_REUSEADDR: for UDP it would share the
 * port). The fd, or NET_ERR with err filled. */
int net_udp_server(char *err, const char *host, int port, int flags);
/* The socket file a process bound (net_unix_server): it removes only its
 * own, not one a later server put at the same path. */
struct net_unix_id {
    dev_t dev;
    ino_t ino;
};

/* sa for path: 0, or NET_ERR with errno ENAMETOOLONG. */
int net_unix_addr(const char *path, struct sockaddr_un *sa);
/* A Unix stream socket listening on path with backlog, close-on-exec
 * (flags: NET_NONBLOCK), of file mode `mode` from birth (bound under umask
 * 077, then chmod: it is never more open than asked). A path that exists
 * is taken over only when it is a stale socket (its connect is refused: a
 * server died without removing it); a live one or any other file is
 * refused. The fd with *id filled, or NET_ERR with err naming the path:
 * "/run/e.sock: in use by a running server", "/x: path exists and is not
 * a socket (refusing to replace it)", "/x/y: bind: No such file or
 * directory". */
int net_unix_server(char *err, const char *path, unsigned mode, int backlog,
                    int flags, struct net_unix_id *id);
/* *id of the socket file at path now (one another process bound and
 * handed over); NET_ERR with errno (then *id matches no file). */
int net_unix_id_of(const char *path, struct net_unix_id *id);
/* Removes path if it is still the socket file id names. */
void net_unix_unlink(const char *path, const struct net_unix_id *id);

/* A peer's address, named only when asked (net_peer_name): most
 * connections of the C echo never are. A Unix socket's peer is named at
 * accept (its credentials, SO_PEERCRED). */
struct net_peer {
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } addr;
    char name[NET_ADDR_LEN];    /* "" until named */
};

/* net_accept, the peer kept unnamed in p; flags: accept4's (SOCK_CLOEXEC
 * always), 0 for a blocking socket. */
int net_accept_peer(int lfd, struct net_peer *p, int flags);
/* "127.0.0.1:53412", "[::1]:53412", "unix:pid=4242,uid=1000". */
const char *net_peer_name(struct net_peer *p);
/* A peer known only by its name (an upstream's "host:port"). */
void net_peer_set_name(struct net_peer *p, const char *name);

/* accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC, retrying EINTR. The fd, or
 * NET_ERR with errno kept (EAGAIN, EMFILE...) so callers can branch; peer
 * (NET_ADDR_LEN bytes, may be NULL) receives "127.0.0.1:53412", or for a
 * Unix socket the client's credentials, "unix:pid=4242,uid=1000". */
int net_accept(int lfd, char *peer, size_t peerlen);

int net_nonblock(char *err, int fd, int on);
/* SO_LINGER 0: the close that follows sends an RST, dropping unsent data. */
void net_abort(int fd);

/* "127.0.0.1:53412" or "[::1]:53412" into buf; NET_OK or NET_ERR (too
 * short). AF_UNIX: "unix:" and the path, "@" for an abstract one's NUL,
 * any byte outside '!'..'~' as '?', cut to fit (so it can be logged as one
 * word whatever sent it). */
int net_format_addr(const struct sockaddr *sa, char *buf, size_t len);
/* The local address of fd, formatted as above. */
int net_sock_name(char *err, int fd, char *buf, size_t len);
/* The local port of fd, or NET_ERR. */
int net_sock_port(char *err, int fd);

#endif
