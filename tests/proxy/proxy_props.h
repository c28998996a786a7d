/* The properties every input must have for the PROXY header parser and
 * reader (src/proxyproto.c), checked by its C test on the seed corpus and
 * by its libFuzzer target on whatever the fuzzer makes. */
#ifndef ECHOHOST_PROXY_PROPS_H
#define ECHOHOST_PROXY_PROPS_H

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxyproto.h"

/* The outcome on data[0..len), *h zeroed first so headers compare. */
static int props_parse(const unsigned char *data, size_t len,
                       struct proxy_hdr *h, const char **why) {
    memset(h, 0, sizeof *h);
    *why = NULL;
    return proxy_parse(data, len, h, why);
}

/* proxy_read over a socketpair holding data[0..len) (at most what its
 * buffer takes): the outcome, *h, and in *left how much it left unread.
 * -100 if the pair cannot be made. */
static int props_read(const unsigned char *data, size_t len,
                      struct proxy_hdr *h, const char **why, size_t *left) {
    static struct proxy_in in;
    unsigned char rest[PROXY_V2_MAX + 64];
    int sv[2], rc;
    ssize_t n;

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) < 0)
        return -100;
    if (len > 0 && write(sv[0], data, len) != (ssize_t)len) {
        close(sv[0]);
        close(sv[1]);
        return -100;
    }
    memset(&in, 0, sizeof in);
    memset(h, 0, sizeof *h);
    *why = NULL;
    rc = proxy_read(&in, sv[1], h, why);
    *left = 0;
    while ((n = read(sv[1], rest, sizeof rest)) > 0)
        *left += (size_t)n;
    close(sv[0]);
    close(sv[1]);
    return rc;
}

/* NULL if data[0..len) has every property, else the one it lacks:
 * - the outcome is one of PROXY_MORE, _DONE, _MISSING, _MALFORMED,
 *   _OVERSIZED; a failure says why;
 * - a header is at most PROXY_V1_MAX (v1) or PROXY_V2_MAX (v2) bytes, all
 *   in data, and parses the same alone;
 * - on a shorter prefix the outcome is PROXY_MORE or the same one (the
 *   parser never needs to see past the header, and never changes its
 *   mind);
 * - PROXY_MORE only while fewer than PROXY_V2_MAX bytes are seen, and
 *   proxy_want then asks for at least one byte;
 * - proxy_read, fed data through a socket, comes to the same outcome and
 *   header and leaves exactly what follows the header unread (up to 4 KiB
 *   of input: what one socketpair buffer holds whole). */
static const char *proxy_props(const unsigned char *data, size_t len) {
    struct proxy_hdr h, h2;
    const char *why, *why2;
    size_t left, cuts[3] = {len / 2, len ? len - 1 : 0, 0};
    int rc = props_parse(data, len, &h, &why), rc2, peek;

    if (rc < PROXY_OVERSIZED || rc > PROXY_DONE)
        return "outcome out of range";
    if (rc < 0 && why == NULL)
        return "a failure without a reason";
    if (rc == PROXY_DONE) {
        if (h.len > len || h.len == 0 || (h.version != 1 && h.version != 2) ||
            h.len > (h.version == 1 ? PROXY_V1_MAX : PROXY_V2_MAX))
            return "header length or version out of range";
        if (props_parse(data, h.len, &h2, &why2) != PROXY_DONE ||
            memcmp(&h, &h2, sizeof h) != 0)
            return "the header alone parses otherwise";
        cuts[2] = h.len - 1;
    }
    for (int i = 0; i < 3; i++) {
        if (cuts[i] >= len)
            continue;
        rc2 = props_parse(data, cuts[i], &h2, &why2);
        if (rc2 != PROXY_MORE && (rc2 != rc ||
            (rc == PROXY_DONE && memcmp(&h, &h2, sizeof h) != 0)))
            return "a prefix parses to another outcome";
    }
    if (rc == PROXY_MORE &&
        (len >= PROXY_V2_MAX || proxy_want(data, len, &peek) == 0))
        return "more wanted past the longest header, or nothing wanted";
    if (len > PROXY_V2_MAX)
        return NULL;
    rc2 = props_read(data, len, &h2, &why2, &left);
    if (rc2 == -100)
        return NULL;                    /* no socket: nothing to say */
    if (rc2 != rc)
        return "proxy_read comes to another outcome";
    if (rc == PROXY_DONE &&
        (memcmp(&h, &h2, sizeof h) != 0 || left != len - h.len))
        return "proxy_read took other bytes than the header's";
    if (rc == PROXY_MORE && left != 0)
        return "proxy_read waits with bytes unread";
    return NULL;
}

#endif
