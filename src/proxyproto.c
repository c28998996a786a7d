/* PROXY protocol headers, v1 and v2 (haproxy.org/download/2.6/doc/
 * proxy-protocol.txt): a parser without I/O, and a reader that takes from
 * a socket only the bytes of the header. Strict where the text says
 * "must": an unexpected value closes the connection. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "proxyproto.h"

#define V1_MIN 15               /* "PROXY UNKNOWN\r\n" */
#define V2_HEAD 16              /* signature, ver_cmd, family, length */

static const unsigned char v1_sig[] = "PROXY ";
static const unsigned char v2_sig[12] = {
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A
};

static int fail(const char **why, int rc, const char *what) {
    *why = what;
    return rc;
}

/* 1 if buf[0..len) agrees with sig[0..siglen) as far as both go. */
static int starts(const unsigned char *buf, size_t len,
                  const unsigned char *sig, size_t siglen) {
    return memcmp(buf, sig, len < siglen ? len : siglen) == 0;
}

/* --- v1 ----------------------------------------------------------------- */

/* "0".."65535", no sign, no leading zero. 0 or -1. */
static int v1_port(const char *s, size_t n, in_port_t *port) {
    unsigned long v = 0;

    if (n == 0 || n > 5 || (s[0] == '0' && n > 1))
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = htons((in_port_t)v);
    return 0;
}

/* An address of family af, its text s[0..n), into ss (port 0). 0 or -1. */
static int v1_addr(int af, const char *s, size_t n,
                   struct sockaddr_storage *ss) {
    char text[INET6_ADDRSTRLEN];

    if (n == 0 || n >= sizeof text)
        return -1;
    memcpy(text, s, n);
    text[n] = '\0';
    memset(ss, 0, sizeof *ss);
    ss->ss_family = (sa_family_t)af;
    if (af == AF_INET)
        return inet_pton(AF_INET, text,
                         &((struct sockaddr_in *)ss)->sin_addr) == 1 ? 0 : -1;
    return inet_pton(AF_INET6, text,
                     &((struct sockaddr_in6 *)ss)->sin6_addr) == 1 ? 0 : -1;
}

static void set_port(struct sockaddr_storage *ss, in_port_t port) {
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = port;
    else
        ((struct sockaddr_in6 *)ss)->sin6_port = port;
}

/* The fields after "PROXY ", each ended by one space but the last:
 * "TCP4 1.2.3.4 5.6.7.8 1234 80". line[0..n) has no CR or LF. */
static int v1_fields(const char *line, size_t n, struct proxy_hdr *h,
                     const char **why) {
    const char *f[5];
    size_t flen[5];
    in_port_t sport, dport;
    int nf = 0, af;

    for (size_t at = 0; nf < 5; nf++) {
        const char *sp = memchr(line + at, ' ', n - at);
        f[nf] = line + at;
        flen[nf] = sp ? (size_t)(sp - f[nf]) : n - at;
        if (sp == NULL) {
            nf++;
            break;
        }
        at = (size_t)(sp - line) + 1;
        if (nf == 4)
            return fail(why, PROXY_MALFORMED, "v1: too many fields");
    }
    if (nf != 5)
        return fail(why, PROXY_MALFORMED, "v1: too few fields");
    af = flen[0] == 4 && memcmp(f[0], "TCP4", 4) == 0 ? AF_INET : AF_INET6;
    if (v1_addr(af, f[1], flen[1], &h->src) < 0)
        return fail(why, PROXY_MALFORMED, "v1: bad source address");
    if (v1_addr(af, f[2], flen[2], &h->dst) < 0)
        return fail(why, PROXY_MALFORMED, "v1: bad destination address");
    if (v1_port(f[3], flen[3], &sport) < 0 ||
        v1_port(f[4], flen[4], &dport) < 0)
        return fail(why, PROXY_MALFORMED, "v1: bad port");
    set_port(&h->src, sport);
    set_port(&h->dst, dport);
    return PROXY_DONE;
}

static int v1_parse(const unsigned char *buf, size_t len, struct proxy_hdr *h,
                    const char **why) {
    size_t room = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    const unsigned char *lf = memchr(buf, '\n', room);
    const char *line = (const char *)buf + 6;
    size_t n;

    if (lf == NULL)
        return len < PROXY_V1_MAX ? PROXY_MORE
               : fail(why, PROXY_OVERSIZED, "v1: no CRLF in 107 bytes");
    if (lf == buf || lf[-1] != '\r' || memchr(buf, '\r', lf - 1 - buf))
        return fail(why, PROXY_MALFORMED, "v1: line not ended by CRLF");
    if (lf - buf < V1_MIN - 1)
        return fail(why, PROXY_MALFORMED, "v1: line too short");
    n = (size_t)(lf - 1 - buf) - 6;
    h->version = 1;
    h->len = (size_t)(lf - buf) + 1;
    if (n >= 7 && memcmp(line, "UNKNOWN", 7) == 0 &&
        (n == 7 || line[7] == ' ')) {
        h->local = 1;           /* the rest of the line is to be ignored */
        return PROXY_DONE;
    }
    if (n < 5 || (memcmp(line, "TCP4 ", 5) != 0 &&
                  memcmp(line, "TCP6 ", 5) != 0))
        return fail(why, PROXY_MALFORMED, "v1: unknown protocol");
    h->local = 0;
    return v1_fields(line, n, h, why);
}

/* --- v2 ----------------------------------------------------------------- */

/* The address block of a PROXY command (fam, its bytes a[0..n)). */
static int v2_addrs(unsigned fam, const unsigned char *a, size_t n,
                    struct proxy_hdr *h, const char **why) {
    static const size_t need[] = {0, 12, 36, 216};
    unsigned af = fam >> 4, tp = fam & 0x0F;

    if (fam == 0x00) {
        h->local = 1;           /* UNSPEC: the real endpoints stand */
        return PROXY_DONE;
    }
    if (af < 1 || af > 3 || tp < 1 || tp > 2)
        return fail(why, PROXY_MALFORMED, "v2: unknown address family");
    if (n < need[af])
        return fail(why, PROXY_MALFORMED,
                    "v2: length shorter than its addresses");
    memset(&h->src, 0, sizeof h->src);
    memset(&h->dst, 0, sizeof h->dst);
    if (af == 1) {
        struct sockaddr_in *s = (struct sockaddr_in *)&h->src;
        struct sockaddr_in *d = (struct sockaddr_in *)&h->dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2);
        memcpy(&d->sin_port, a + 10, 2);
    } else if (af == 2) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h->src;
        struct sockaddr_in6 *d = (struct sockaddr_in6 *)&h->dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
    } else {
        struct sockaddr_un *s = (struct sockaddr_un *)&h->src;
        struct sockaddr_un *d = (struct sockaddr_un *)&h->dst;
        s->sun_family = d->sun_family = AF_UNIX;
        memcpy(s->sun_path, a, sizeof s->sun_path);
        memcpy(d->sun_path, a + 108, sizeof d->sun_path);
    }
    h->local = 0;
    return PROXY_DONE;
}

static int v2_parse(const unsigned char *buf, size_t len, struct proxy_hdr *h,
                    const char **why) {
    size_t total;

    if (len < V2_HEAD)
        return PROXY_MORE;
    if (buf[12] >> 4 != 2)
        return fail(why, PROXY_MALFORMED, "v2: version not 2");
    if ((buf[12] & 0x0F) > 1)
        return fail(why, PROXY_MALFORMED, "v2: unknown command");
    total = V2_HEAD + ((size_t)buf[14] << 8 | buf[15]);
    if (total > PROXY_V2_MAX)
        return fail(why, PROXY_OVERSIZED, "v2: longer than 4096 bytes");
    if (len < total)
        return PROXY_MORE;
    h->version = 2;
    h->len = total;
    if ((buf[12] & 0x0F) == 0) {
        h->local = 1;           /* LOCAL: the family is to be ignored */
        return PROXY_DONE;
    }
    /* TLVs after the addresses are skipped: nothing here uses them */
    return v2_addrs(buf[13], buf + V2_HEAD, total - V2_HEAD, h, why);
}

/* --- the API ------------------------------------------------------------ */

int proxy_parse(const unsigned char *buf, size_t len, struct proxy_hdr *h,
                const char **why) {
    if (len == 0)
        return PROXY_MORE;
    if (starts(buf, len, v1_sig, 6))
        return len < 6 ? PROXY_MORE : v1_parse(buf, len, h, why);
    if (starts(buf, len, v2_sig, sizeof v2_sig))
        return len < sizeof v2_sig ? PROXY_MORE : v2_parse(buf, len, h, why);
    return fail(why, PROXY_MISSING, "no PROXY header");
}

/* Both headers are at least V1_MIN bytes long, so that much is safe
 * before either is known. */
size_t proxy_want(const unsigned char *buf, size_t len, int *peek) {
    *peek = 0;
    if (len < V1_MIN)
        return V1_MIN - len;
    if (buf[0] == v2_sig[0]) {
        if (len < V2_HEAD)
            return V2_HEAD - len;
        return V2_HEAD + ((size_t)buf[14] << 8 | buf[15]) - len;
    }
    *peek = 1;
    return PROXY_V1_MAX - len;
}

/* One read of at most want bytes (v1: through the next '\n' at most).
 * > 0, 0 at EOF, -1 with errno. */
static ssize_t take(struct proxy_in *in, int fd, size_t want, int peek) {
    unsigned char *at = in->buf + in->len;
    ssize_t n;

    do {
        n = recv(fd, at, want, peek ? MSG_PEEK : 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0 || !peek)
        return n;
    unsigned char *lf = memchr(at, '\n', (size_t)n);
    if (lf != NULL)
        n = lf - at + 1;
    do {
        n = recv(fd, at, (size_t)n, 0);     /* what was seen is there */
    } while (n < 0 && errno == EINTR);
    return n;
}

int proxy_read(struct proxy_in *in, int fd, struct proxy_hdr *h,
               const char **why) {
    int rc, peek;

    while ((rc = proxy_parse(in->buf, in->len, h, why)) == PROXY_MORE) {
        size_t want = proxy_want(in->buf, in->len, &peek);
        ssize_t n = take(in, fd, want, peek);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return PROXY_MORE;
        if (n < 0)
            return fail(why, PROXY_TRUNCATED, "read failed before the "
                        "header was whole");
        if (n == 0)
            return fail(why, PROXY_TRUNCATED, "closed before the header "
                        "was whole");
        in->len += (size_t)n;
    }
    return rc;
}
