/* The PROXY header parser and reader alone (src/proxyproto.c): known
 * headers and what they say, every seed of the fuzz corpus against the
 * outcome its name gives (ok-, local-, missing-, malformed-, oversized-,
 * more-) and the properties of tests/proxy/proxy_props.h, and the reader
 * fed a byte at a time and cut off. Usage: test_proxy CORPUS_DIR. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "net.h"
#include "proxy_props.h"

struct known {
    const char *in;
    size_t len;                 /* bytes of in; 0: strlen(in) */
    int rc;
    const char *src, *dst;      /* formatted, NULL when local or failed */
    const char *why;
};

#define SIG "\r\n\r\n\0\r\nQUIT\n"

static const struct known known[] = {
    {"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET", 0, PROXY_DONE,
     "192.0.2.1:56324", "198.51.100.2:443", NULL},
    {"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n", 0, PROXY_DONE,
     "[2001:db8::1]:65535", "[::1]:0", NULL},
    {"PROXY UNKNOWN\r\n", 0, PROXY_DONE, NULL, NULL, NULL},
    {"PROXY UNKNOWN 1.2.3.4 x y z\r\n", 0, PROXY_DONE, NULL, NULL, NULL},
    {SIG "\x21\x11\x00\x0c" "\xc0\x00\x02\x01" "\x7f\x00\x00\x01"
     "\x1f\x90" "\x00\x07", 28, PROXY_DONE, "192.0.2.1:8080",
     "127.0.0.1:7", NULL},
    {SIG "\x20\x00\x00\x00", 16, PROXY_DONE, NULL, NULL, NULL},
    {SIG "\x21\x00\x00\x02" "ab", 18, PROXY_DONE, NULL, NULL, NULL},
    {SIG "\x21\x31\x00\xd8" "/lb", 19, PROXY_DONE, "unix:/lb", "unix:",
     NULL},                     /* padded with NULs to 16 + 216 below */
    {"GET / HTTP/1.0\r\n", 0, PROXY_MISSING, NULL, NULL, "no PROXY header"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", 0, PROXY_MALFORMED, NULL,
     NULL, "v1: bad port"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 0, PROXY_MALFORMED, NULL, NULL,
     "v1: line not ended by CRLF"},
    {"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", 0, PROXY_MALFORMED, NULL, NULL,
     "v1: unknown protocol"},
    {SIG "\x21\x11\x00\x08" "12345678", 24, PROXY_MALFORMED, NULL, NULL,
     "v2: length shorter than its addresses"},
    {SIG "\x11\x11\x00\x00", 16, PROXY_MALFORMED, NULL, NULL,
     "v2: version not 2"},
    {SIG "\x21\x11\x10\x00", 16, PROXY_OVERSIZED, NULL, NULL,
     "v2: longer than 4096 bytes"},
    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", 0, PROXY_MORE, NULL, NULL, NULL},
    {SIG "\x21\x11\x00\x0c" "1234", 20, PROXY_MORE, NULL, NULL, NULL},
};

static void test_known(void) {
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        const struct known *k = &known[i];
        size_t len = k->len ? k->len : strlen(k->in);
        unsigned char buf[PROXY_V2_MAX];
        char src[NET_ADDR_LEN], dst[NET_ADDR_LEN];
        struct proxy_hdr h;
        const char *why;

        memset(buf, 0, sizeof buf);
        memcpy(buf, k->in, len);
        if (len > 13 && buf[13] == 0x31)
            len = 16 + 216;
        ASSERT_EQ(props_parse(buf, len, &h, &why), k->rc);
        if (k->why)
            ASSERT_STR_EQ(why, k->why);
        if (k->rc != PROXY_DONE)
            continue;
        ASSERT_EQ(h.local, k->src == NULL);
        if (k->src) {
            net_format_addr((struct sockaddr *)&h.src, src, sizeof src);
            net_format_addr((struct sockaddr *)&h.dst, dst, sizeof dst);
            ASSERT_STR_EQ(src, k->src);
            ASSERT_STR_EQ(dst, k->dst);
        }
    }
}

static int expected(const char *name) {
    static const struct { const char *prefix; int rc; } kinds[] = {
        {"ok-", PROXY_DONE}, {"local-", PROXY_DONE},
        {"missing-", PROXY_MISSING}, {"malformed-", PROXY_MALFORMED},
        {"oversized-", PROXY_OVERSIZED}, {"more-", PROXY_MORE},
    };
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (strncmp(name, kinds[i].prefix, strlen(kinds[i].prefix)) == 0)
            return kinds[i].rc;
    return 100;
}

static void test_seed(const char *dir, const char *name) {
    static unsigned char buf[2 * PROXY_V2_MAX];
    char path[4096];
    struct proxy_hdr h;
    const char *why, *bad;
    size_t len;
    FILE *f;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    if ((f = fopen(path, "rb")) == NULL) {
        CHECK_FAIL("%s: cannot open", path);
        return;
    }
    len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (props_parse(buf, len, &h, &why) != expected(name))
        CHECK_FAIL("seed %s: outcome %d (%s)", name,
                   props_parse(buf, len, &h, &why), why ? why : "-");
    else
        check_passed++;
    ASSERT_EQ(h.local, strncmp(name, "local-", 6) == 0);
    if ((bad = proxy_props(buf, len)) != NULL)
        CHECK_FAIL("seed %s: %s", name, bad);
    else
        check_passed++;
}

static int test_corpus(const char *dir) {
    struct dirent *e;
    DIR *d = opendir(dir);
    int n = 0;

    if (d == NULL) {
        CHECK_FAIL("%s: cannot open the corpus", dir);
        return 0;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        test_seed(dir, e->d_name);
        n++;
    }
    closedir(d);
    return n;
}

/* The reader on a v2 header that comes a byte at a time, then data. */
static void test_trickle(void) {
    static const unsigned char hdr[] = SIG "\x21\x11\x00\x0c"
        "\x0a\x00\x00\x01" "\x0a\x00\x00\x02" "\x00\x50" "\x00\x07" "tail";
    struct proxy_in *in = calloc(1, sizeof *in);
    struct proxy_hdr h;
    const char *why;
    char rest[8];
    int sv[2], rc = PROXY_MORE;

    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    for (size_t i = 0; i < 28; i++) {
        ASSERT_EQ(rc, PROXY_MORE);
        ASSERT_EQ(write(sv[0], hdr + i, 1), 1);
        if (i == 27)
            ASSERT_EQ(write(sv[0], hdr + 28, 4), 4);
        rc = proxy_read(in, sv[1], &h, &why);
    }
    ASSERT_EQ(rc, PROXY_DONE);
    ASSERT_EQ(h.len, 28);
    ASSERT_EQ(read(sv[1], rest, sizeof rest), 4);     /* "tail" is left */
    ASSERT_TRUE(memcmp(rest, "tail", 4) == 0);
    /* a v1 line cut off by the peer */
    memset(in, 0, sizeof *in);
    ASSERT_EQ(write(sv[0], "PROXY TCP4 1.2.", 15), 15);
    ASSERT_EQ(proxy_read(in, sv[1], &h, &why), PROXY_MORE);
    shutdown(sv[0], SHUT_WR);
    ASSERT_EQ(proxy_read(in, sv[1], &h, &why), PROXY_TRUNCATED);
    ASSERT_STR_EQ(why, "closed before the header was whole");
    close(sv[0]);
    close(sv[1]);
    free(in);
}

int main(int argc, char **argv) {
    test_known();
    test_trickle();
    if (argc > 1)
        ASSERT_TRUE(test_corpus(argv[1]) >= 40);
    return check_done();
}
