/* The event loop (src/ev.c) without the rest of the server. Polled fds
 * (ev_set_polled): a polled fd's read proc runs every iteration and the
 * loop does not sleep meanwhile; back in epoll, what came while it was
 * polled is reported at once; deleting, adding a mask and the limits.
 * Edge-triggered fds (EV_EDGE) and ev_again: reported once per arrival,
 * again when a mask is added; ev_again runs the proc once per iteration
 * however often asked, not after the fd is deleted. A guard timer
 * ends each loop: a test that needs it has failed. Prints "N passed, N
 * failed" (tests/glue/check.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "ev.h"

#define GUARD_MS 2000

struct pipe_fd {
    int rd, wr;
    int calls;                  /* read proc calls */
    int stop_after;             /* the loop stops at this many, 0: never */
    int unpoll_at;              /* the proc stops polling at this call */
};

static int guard_fired;

static long guard(ev_loop *loop, long long id, void *ud) {
    (void)id;
    (void)ud;
    guard_fired = 1;
    ev_stop(loop);
    return EV_NOMORE;
}

static void open_pipe(struct pipe_fd *p) {
    int fds[2];

    memset(p, 0, sizeof *p);
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        abort();
    p->rd = fds[0];
    p->wr = fds[1];
}

static void close_pipe(struct pipe_fd *p) {
    close(p->rd);
    close(p->wr);
}

/* Reads what there is; counts the call; maybe stops polling or the loop. */
static void read_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct pipe_fd *p = ud;
    char buf[64];

    (void)mask;
    while (read(fd, buf, sizeof buf) > 0)
        ;
    p->calls++;
    if (p->unpoll_at && p->calls == p->unpoll_at)
        ev_set_polled(loop, fd, 0);
    if (p->stop_after && p->calls >= p->stop_after)
        ev_stop(loop);
}

static void write_proc(ev_loop *loop, int fd, void *ud, int mask) {
    (void)fd;
    (void)ud;
    (void)mask;
    ev_stop(loop);
}

static void run_guarded(ev_loop *loop, long ms) {
    long long id = ev_timer_add(loop, ms, guard, NULL);

    guard_fired = 0;
    ev_run(loop);
    ev_timer_del(loop, id);
}

/* Nothing to read and no timer due: the polled proc still runs, iteration
 * after iteration, without the loop sleeping. */
static void test_polled_runs_without_sleeping(void) {
    ev_loop *loop = ev_create(64);
    struct pipe_fd p;

    open_pipe(&p);
    p.stop_after = 100;
    ASSERT_EQ(ev_add(loop, p.rd, EV_READABLE, read_proc, &p), EV_OK);
    ASSERT_EQ(ev_polled(loop, p.rd), 0);
    ASSERT_EQ(ev_set_polled(loop, p.rd, 1), EV_OK);
    ASSERT_EQ(ev_polled(loop, p.rd), 1);
    ASSERT_EQ(ev_mask(loop, p.rd), EV_READABLE);
    run_guarded(loop, GUARD_MS);
    ASSERT_EQ(guard_fired, 0);
    ASSERT_EQ(p.calls, 100);
    ev_destroy(loop);
    close_pipe(&p);
}

/* Back in epoll, the fd waits again, and bytes written while it was polled
 * (after its last call) are reported at once. */
static void test_unpolled_waits_and_reports(void) {
    ev_loop *loop = ev_create(64);
    struct pipe_fd p;

    open_pipe(&p);
    p.unpoll_at = 3;
    ASSERT_EQ(ev_add(loop, p.rd, EV_READABLE, read_proc, &p), EV_OK);
    ASSERT_EQ(ev_set_polled(loop, p.rd, 1), EV_OK);
    run_guarded(loop, 200);             /* 3 calls, then only the guard */
    ASSERT_EQ(guard_fired, 1);
    ASSERT_EQ(p.calls, 3);
    ASSERT_EQ(ev_polled(loop, p.rd), 0);

    ASSERT_EQ(ev_set_polled(loop, p.rd, 1), EV_OK);
    ASSERT_EQ(write(p.wr, "x", 1), 1);
    ASSERT_EQ(ev_set_polled(loop, p.rd, 0), EV_OK);
    p.stop_after = 4;
    run_guarded(loop, GUARD_MS);
    ASSERT_EQ(guard_fired, 0);
    ASSERT_EQ(p.calls, 4);
    ev_destroy(loop);
    close_pipe(&p);
}

/* A polled fd deleted is called no more and can be added again; one whose
 * proc unpolls it amid other polled fds leaves them polled. */
static void test_delete_and_unpoll_amid_others(void) {
    ev_loop *loop = ev_create(64);
    struct pipe_fd a, b, c;

    open_pipe(&a);
    open_pipe(&b);
    open_pipe(&c);
    a.unpoll_at = 1;
    c.stop_after = 10;
    ASSERT_EQ(ev_add(loop, a.rd, EV_READABLE, read_proc, &a), EV_OK);
    ASSERT_EQ(ev_add(loop, b.rd, EV_READABLE, read_proc, &b), EV_OK);
    ASSERT_EQ(ev_add(loop, c.rd, EV_READABLE, read_proc, &c), EV_OK);
    ASSERT_EQ(ev_set_polled(loop, a.rd, 1), EV_OK);
    ASSERT_EQ(ev_set_polled(loop, b.rd, 1), EV_OK);
    ASSERT_EQ(ev_set_polled(loop, c.rd, 1), EV_OK);
    ev_del(loop, b.rd, EV_READABLE);
    ASSERT_EQ(ev_polled(loop, b.rd), 0);
    ASSERT_EQ(ev_mask(loop, b.rd), EV_NONE);
    run_guarded(loop, GUARD_MS);
    ASSERT_EQ(guard_fired, 0);
    ASSERT_EQ(a.calls, 1);
    ASSERT_EQ(b.calls, 0);
    ASSERT_EQ(c.calls, 10);
    ASSERT_EQ(ev_polled(loop, c.rd), 1);

    /* b, deleted while polled, is added anew: epoll knows it again */
    ASSERT_EQ(ev_add(loop, b.rd, EV_READABLE, read_proc, &b), EV_OK);
    b.stop_after = 1;
    ev_del(loop, c.rd, EV_READABLE);
    ASSERT_EQ(write(b.wr, "x", 1), 1);
    run_guarded(loop, GUARD_MS);
    ASSERT_EQ(guard_fired, 0);
    ASSERT_EQ(b.calls, 1);
    ev_destroy(loop);
    close_pipe(&a);
    close_pipe(&b);
    close_pipe(&c);
}

/* Only a reading fd is polled; adding EV_WRITABLE to a polled one brings it
 * back to epoll waiting for both; 64 at most; an fd not in the loop is not
 * polled. */
static void test_limits(void) {
    ev_loop *loop = ev_create(256);
    struct pipe_fd p, many[65];
    int n;

    open_pipe(&p);
    ASSERT_EQ(ev_set_polled(loop, p.rd, 1), EV_ERR);
    ASSERT_EQ(errno, EBADF);
    ASSERT_EQ(ev_add(loop, p.wr, EV_WRITABLE, write_proc, &p), EV_OK);
    ASSERT_EQ(ev_set_polled(loop, p.wr, 1), EV_ERR);
    ASSERT_EQ(errno, EINVAL);
    ev_del(loop, p.wr, EV_WRITABLE);

    ASSERT_EQ(ev_add(loop, p.rd, EV_READABLE, read_proc, &p), EV_OK);
    ASSERT_EQ(ev_set_polled(loop, p.rd, 1), EV_OK);
    ASSERT_EQ(ev_add(loop, p.rd, EV_WRITABLE, write_proc, &p), EV_OK);
    ASSERT_EQ(ev_polled(loop, p.rd), 0);
    ASSERT_EQ(ev_mask(loop, p.rd), EV_READABLE | EV_WRITABLE);
    ev_del(loop, p.rd, EV_READABLE | EV_WRITABLE);

    for (n = 0; n < 65; n++) {
        open_pipe(&many[n]);
        ASSERT_EQ(ev_add(loop, many[n].rd, EV_READABLE, read_proc, &many[n]),
                  EV_OK);
    }
    for (n = 0; n < 64; n++)
        if (ev_set_polled(loop, many[n].rd, 1) != EV_OK)
            break;
    ASSERT_EQ(n, 64);
    ASSERT_EQ(ev_set_polled(loop, many[64].rd, 1), EV_ERR);
    ASSERT_EQ(errno, EINVAL);
    ASSERT_EQ(ev_polled(loop, many[64].rd), 0);
    ev_destroy(loop);
    for (n = 0; n < 65; n++)
        close_pipe(&many[n]);
    close_pipe(&p);
}

/* Reads one byte a call; asks again (twice) while there was one, or stops
 * the loop at EAGAIN when told to. */
struct nibbler {
    int calls, got;
    int again;                  /* ev_again after a byte */
    int stop_at_empty;
};

static void nibble_proc(ev_loop *loop, int fd, void *ud, int mask) {
    struct nibbler *nb = ud;
    char ch;

    (void)mask;
    nb->calls++;
    if (read(fd, &ch, 1) == 1) {
        nb->got++;
        if (nb->again) {
            ev_again(loop, fd);
            ev_again(loop, fd);
        }
    } else if (nb->stop_at_empty) {
        ev_stop(loop);
    }
}

/* Bytes left by the proc are not reported again; a new arrival is, and so
 * is what is there when a mask is added (EPOLL_CTL_MOD asks again). */
static void test_edge_reports_changes(void) {
    ev_loop *loop = ev_create(64);
    struct nibbler nb = {0};
    int sv[2];

    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ASSERT_EQ(ev_add(loop, sv[0], EV_READABLE | EV_EDGE, nibble_proc, &nb),
              EV_OK);
    ASSERT_EQ(ev_mask(loop, sv[0]), EV_READABLE | EV_EDGE);
    ASSERT_EQ(write(sv[1], "0123456789", 10), 10);
    run_guarded(loop, 100);
    ASSERT_EQ(guard_fired, 1);
    ASSERT_EQ(nb.calls, 1);             /* level-triggered: 10 calls */
    ASSERT_EQ(write(sv[1], "x", 1), 1);
    run_guarded(loop, 100);
    ASSERT_EQ(nb.calls, 2);
    ASSERT_EQ(ev_add(loop, sv[0], EV_WRITABLE | EV_EDGE, write_proc, &nb),
              EV_OK);
    run_guarded(loop, GUARD_MS);        /* writable: write_proc stops it */
    ASSERT_EQ(guard_fired, 0);
    ASSERT_EQ(nb.calls, 3);             /* and the bytes left, reported */
    ev_del(loop, sv[0], EV_WRITABLE);
    ASSERT_EQ(ev_mask(loop, sv[0]), EV_READABLE | EV_EDGE);
    ev_del(loop, sv[0], EV_READABLE);
    ASSERT_EQ(ev_mask(loop, sv[0]), EV_NONE);
    ev_destroy(loop);
    close(sv[0]);
    close(sv[1]);
}

/* ev_again: the proc runs without the loop sleeping, once per iteration
 * however often asked, until it stops asking. */
static void test_again_reads_the_rest(void) {
    ev_loop *loop = ev_create(64);
    struct nibbler nb = {0};
    int sv[2];

    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    nb.again = 1;
    nb.stop_at_empty = 1;
    ASSERT_EQ(ev_add(loop, sv[0], EV_READABLE | EV_EDGE, nibble_proc, &nb),
              EV_OK);
    ASSERT_EQ(write(sv[1], "0123456789", 10), 10);
    run_guarded(loop, GUARD_MS);
    ASSERT_EQ(guard_fired, 0);
    ASSERT_EQ(nb.got, 10);
    ASSERT_EQ(nb.calls, 11);
    ev_destroy(loop);
    close(sv[0]);
    close(sv[1]);
}

/* Asked for and then deleted or forgotten (its number reused), the proc
 * does not run; added anew and asked again, it runs once. An fd not
 * reading is not asked. */
static void test_again_cancelled(void) {
    ev_loop *loop = ev_create(64);
    struct nibbler nb = {0};
    int sv[2];

    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ev_again(loop, sv[0]);              /* not in the loop: nothing */
    ev_again(loop, -1);
    ev_again(loop, 100000);
    ASSERT_EQ(ev_add(loop, sv[0], EV_READABLE | EV_EDGE, nibble_proc, &nb),
              EV_OK);
    ev_again(loop, sv[0]);
    ev_del(loop, sv[0], EV_READABLE);
    run_guarded(loop, 50);
    ASSERT_EQ(nb.calls, 0);
    ASSERT_EQ(ev_add(loop, sv[0], EV_READABLE | EV_EDGE, nibble_proc, &nb),
              EV_OK);
    ev_again(loop, sv[0]);
    ev_forget(loop, sv[0]);             /* closed: its number comes back */
    close(sv[0]);
    close(sv[1]);
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    ASSERT_EQ(ev_add(loop, sv[0], EV_READABLE | EV_EDGE, nibble_proc, &nb),
              EV_OK);
    run_guarded(loop, 50);
    ASSERT_EQ(nb.calls, 0);
    ev_again(loop, sv[0]);              /* on the list once, not twice */
    ev_del(loop, sv[0], EV_READABLE);
    ASSERT_EQ(ev_add(loop, sv[0], EV_READABLE | EV_EDGE, nibble_proc, &nb),
              EV_OK);
    ev_again(loop, sv[0]);
    ev_again(loop, sv[0]);
    run_guarded(loop, 50);
    ASSERT_EQ(guard_fired, 1);
    ASSERT_EQ(nb.calls, 1);
    ev_destroy(loop);
    close(sv[0]);
    close(sv[1]);
}

int main(void) {
    test_polled_runs_without_sleeping();
    test_unpolled_waits_and_reports();
    test_delete_and_unpoll_amid_others();
    test_limits();
    test_edge_reports_changes();
    test_again_reads_the_rest();
    test_again_cancelled();
    return check_done();
}
