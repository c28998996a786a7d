/* The pubsub ring (src/bus.c) alone: every message read is whole and in
 * order, and read + lost = published, for rings of several sizes read at
 * random moments (every wrap and eviction path); the doorbell of a reader
 * in another process; a reader slot of a process that ended taken again;
 * the longest message. Prints "N passed, N failed" (tests/glue/check.h). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus.h"
#include "check.h"

static size_t msg_max;
static uint64_t last_seq;
static unsigned long nread, nbad;

static size_t len_of(uint64_t seq) {
    size_t len = (size_t)(seq * 7919 % 900);
    return len > msg_max ? 0 : len;
}

static void make(uint64_t seq, char *ch, size_t *chlen, char *msg) {
    *chlen = (size_t)snprintf(ch, 16, "c%u", (unsigned)(seq % 97));
    for (size_t i = 0; i < len_of(seq); i++)
        msg[i] = (char)('a' + (seq + i) % 26);
}

static void check_msg(void *ud, uint64_t seq, const char *ch, size_t chlen,
                      const char *msg, size_t len) {
    char wch[16], wmsg[1000];
    size_t wchlen;
    (void)ud;

    make(seq, wch, &wchlen, wmsg);
    if (chlen != wchlen || memcmp(ch, wch, chlen) != 0 ||
        len != len_of(seq) || memcmp(msg, wmsg, len) != 0 ||
        (nread > 0 && seq <= last_seq))
        nbad++;
    last_seq = seq;
    nread++;
}

static void test_ring(size_t cap) {
    struct bus *b = bus_create(cap);
    struct bus_reader *r = bus_attach(b);
    uint64_t lost = 0, n = 100000;
    char ch[16], msg[1000];
    size_t chlen;
    int failed = 0;

    msg_max = bus_message_max(b);
    nread = nbad = 0;
    srand((unsigned)cap);
    for (uint64_t seq = 0; seq < n; seq++) {
        make(seq, ch, &chlen, msg);
        failed += bus_publish(b, ch, chlen, msg, len_of(seq)) != 0;
        if (rand() % 7 == 0)
            bus_read(r, check_msg, NULL, &lost);
    }
    bus_read(r, check_msg, NULL, &lost);
    ASSERT_EQ(failed, 0);
    ASSERT_EQ(nbad, 0);
    ASSERT_EQ(nread + lost, n);
    ASSERT_EQ(last_seq, n - 1);             /* the newest is never lost */
    bus_detach(r);
    bus_free(b);
}

static void test_limits(void) {
    struct bus *b = bus_create(BUS_MIN);
    static char big[BUS_MESSAGE_MAX + 1];

    ASSERT_EQ(bus_message_max(b), BUS_MIN / 4 - 16 - BUS_CHANNEL_MAX);
    ASSERT_EQ(bus_publish(b, "c", 1, big, bus_message_max(b)), 0);
    errno = 0;
    ASSERT_EQ(bus_publish(b, "c", 1, big, bus_message_max(b) + 1), -1);
    ASSERT_EQ(errno, EMSGSIZE);
    bus_free(b);
    b = bus_create(BUS_MAX / 1024);
    ASSERT_EQ(bus_message_max(b), BUS_MESSAGE_MAX);
    bus_free(b);
    errno = 0;
    ASSERT_EQ(bus_create(BUS_MIN - 1) == NULL, 1);
    ASSERT_EQ(errno, EINVAL);
}

static void count_msg(void *ud, uint64_t seq, const char *ch, size_t chlen,
                      const char *msg, size_t len) {
    (void)seq; (void)ch; (void)chlen; (void)msg; (void)len;
    (*(int *)ud)++;
}

/* A child reads, woken by its doorbell, until it has n messages; exits 0
 * if it got them all. The parent publishes once the child is attached. */
static void test_doorbell(void) {
    struct bus *b = bus_create(64 * 1024);
    int ready[2], status = -1;
    pid_t pid;

    ASSERT_EQ(pipe(ready), 0);
    if ((pid = fork()) == 0) {
        struct bus_reader *r = bus_attach(b);
        struct pollfd p = {.fd = bus_reader_fd(r), .events = POLLIN};
        uint64_t lost = 0;
        int got = 0, rounds = 0;
        if (write(ready[1], "x", 1) != 1)
            _exit(3);
        while (got < 1000 && rounds++ < 5000 && poll(&p, 1, 5000) == 1)
            bus_read(r, count_msg, &got, &lost);
        _exit(got == 1000 && lost == 0 ? 0 : 1);
    }
    char c;
    ASSERT_EQ(read(ready[0], &c, 1), 1);
    int failed = 0;
    for (int i = 0; i < 1000; i++) {
        failed += bus_publish(b, "d", 1, "m", 1) != 0;
        if (i % 100 == 0)
            usleep(1000);                   /* let it sleep and wake again */
    }
    ASSERT_EQ(failed, 0);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_EQ(WIFEXITED(status) && WEXITSTATUS(status) == 0, 1);
    close(ready[0]);
    close(ready[1]);
    bus_free(b);
}

/* BUS_READERS + 10 processes attach in turn and end without detaching:
 * each finds a slot (those of the dead are taken again). */
static void test_slots(void) {
    struct bus *b = bus_create(BUS_MIN);
    int ok = 0;

    for (int i = 0; i < BUS_READERS + 10; i++) {
        int status = -1;
        pid_t pid = fork();
        if (pid == 0)
            _exit(bus_attach(b) != NULL ? 0 : 1);
        waitpid(pid, &status, 0);
        ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    ASSERT_EQ(ok, BUS_READERS + 10);
    bus_free(b);
}

int main(void) {
    for (size_t cap = BUS_MIN; cap <= 64 * 1024; cap *= 2)
        test_ring(cap + 8 * (cap / BUS_MIN));   /* odd sizes too */
    test_limits();
    test_doorbell();
    test_slots();
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed != 0;
}
