/* PROXY protocol headers (HAProxy's v1 text line and v2 binary block):
 * the parser, which does no I/O, and a reader that takes from a socket
 * only the bytes of the header, so what follows stays in the socket. */
#ifndef ECHOHOST_PROXYPROTO_H
#define ECHOHOST_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>

#define PROXY_V1_MAX 107        /* the longest v1 line, CRLF included */
#define PROXY_V2_MAX 4096       /* the longest v2 header accepted, 16 + TLVs */

/* What proxy_parse and proxy_read return. */
enum {
    PROXY_MORE = 0,             /* a header's beginning: read on */
    PROXY_DONE = 1,             /* a whole header, in *h */
    PROXY_MISSING = -1,         /* starts with neither signature */
    PROXY_MALFORMED = -2,       /* a signature, then something wrong */
    PROXY_OVERSIZED = -3,       /* v1 with no CRLF in 107 bytes, v2 longer
                                   than PROXY_V2_MAX */
    PROXY_TRUNCATED = -4,       /* proxy_read: the peer closed or failed
                                   before the header was whole */
};

struct proxy_hdr {
    int version;                /* 1 or 2 */
    int local;                  /* v2 LOCAL, v2 UNSPEC, v1 UNKNOWN: no
                                   address: the socket's own peer stands */
    size_t len;                 /* bytes of the header */
    struct sockaddr_storage src, dst;   /* AF_INET, AF_INET6 or AF_UNIX
                                           (v2); unset when local */
};

/* Parses the header at the start of buf[0..len): PROXY_DONE with *h
 * filled (the header may be followed by anything), PROXY_MORE when buf is
 * the beginning of a header and more is needed, or a negative PROXY_*
 * with *why (a static string: "v1: bad source address") saying what is
 * wrong. Whatever len, the outcome on a prefix of buf is PROXY_MORE or
 * the outcome on buf. */
int proxy_parse(const unsigned char *buf, size_t len, struct proxy_hdr *h,
                const char **why);

/* After proxy_parse said PROXY_MORE on buf[0..len): how many bytes to read
 * at most next so as not to read past the header (> 0). With *peek set
 * (v1) the reader must look first and take no more than through the next
 * '\n'. */
size_t proxy_want(const unsigned char *buf, size_t len, int *peek);

/* A header being read from a socket. Zero it before the first read. */
struct proxy_in {
    size_t len;
    unsigned char buf[PROXY_V2_MAX];
};

/* Reads from fd (non-blocking: until EAGAIN) only bytes of the header,
 * parsing as they come: PROXY_MORE (wait for fd readable, call again),
 * PROXY_DONE with *h, or a negative PROXY_* with *why (PROXY_TRUNCATED
 * for an EOF or a read error; errno is kept for the latter). */
int proxy_read(struct proxy_in *in, int fd, struct proxy_hdr *h,
               const char **why);

#endif
