/* Sockets without Lua: TCP listen and accept, options, address text
 * [Redis anet.h]. Errors go into a caller buffer char err[NET_ERR_LEN]. */
#ifndef ECHOHOST_NET_H
#define ECHOHOST_NET_H

#include <stddef.h>
#include <sys/socket.h>

#define NET_OK 0
#define NET_ERR -1
#define NET_ERR_LEN 256
#define NET_ADDR_LEN 64         /* "[ffff:...:ffff]:65535" fits */

/* flags of net_tcp_server */
#define NET_NONBLOCK 1          /* the returned socket is non-blocking */
#define NET_REUSEPORT 2         /* SO_REUSEPORT: share the port */
#define NET_FREE 4              /* with REUSEPORT: fail if anyone else
                                   listens there (a plain bind first) */

/* A TCP socket bound to host:port (numeric or a name; port 0 picks one)
 * and listening with backlog, SO_REUSEADDR and TCP_NODELAY set (accepted
 * sockets inherit it), close-on-exec. The fd, or NET_ERR with err filled as
 * "bind 127.0.0.1:8888: Address already in use". */
int net_tcp_server(char *err, const char *host, int port, int backlog,
                   int flags);
/* accept4 with SOCK_NONBLOCK | SOCK_CLOEXEC, retrying EINTR. The fd, or
 * NET_ERR with errno kept (EAGAIN, EMFILE...) so callers can branch; peer
 * (NET_ADDR_LEN bytes, may be NULL) receives "127.0.0.1:53412". */
int net_accept(int lfd, char *peer, size_t peerlen);

int net_nonblock(char *err, int fd, int on);

/* "127.0.0.1:53412" or "[::1]:53412" into buf; NET_OK or NET_ERR. */
int net_format_addr(const struct sockaddr *sa, char *buf, size_t len);
/* The local address of fd, formatted as above. */
int net_sock_name(char *err, int fd, char *buf, size_t len);
/* The local port of fd, or NET_ERR. */
int net_sock_port(char *err, int fd);

#endif
