/* Event loop: file events indexed by fd and timers in a binary heap, over
 * epoll [Redis ae.c, ae_epoll.c]. Knows nothing about Lua or connections. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "ev.h"

#define EV_MAX_FIRED 512        /* events taken from one epoll_wait */
#define EV_SLOT_BITS 32         /* timer id = sequence << 32 | slot */
#define EV_POLLED_MAX 64        /* fds polled at once; more stay in epoll */

struct ev_file {
    int mask;                   /* EV_READABLE | EV_WRITABLE | EV_EXCLUSIVE
                                 * | EV_EDGE */
    ev_file_proc *rproc;
    ev_file_proc *wproc;
    void *ud;
    int polled;                 /* out of epoll: ev_set_polled */
    int again;                  /* AGAIN_*: on the ev_again list */
    int again_next;             /* the next fd on that list, or -1 */
};

enum { AGAIN_NO, AGAIN_YES, AGAIN_CANCELLED };

struct ev_timer {
    long long id;               /* 0: the slot is free */
    long long when;             /* ev_now_ms() deadline */
    ev_timer_proc *proc;
    void *ud;
    int heap;                   /* index in loop->heap; -1 while running */
    int next_free;
    unsigned round;             /* added or rearmed during this round */
};

struct ev_loop {
    int epfd;
    int setsize;
    struct ev_file *files;      /* indexed by fd, grows on demand */
    struct epoll_event fired[EV_MAX_FIRED];
    struct ev_timer *timers;    /* slots, addressed by the low id bits */
    int ntimers;
    int free_timer;             /* head of the free slot list, or -1 */
    int *heap;                  /* slot numbers, earliest deadline first */
    int heap_len;
    long long timer_seq;
    unsigned round;
    long long now;              /* ev_now_ms() at the last wake-up */
    int stop;
    long busy_us;               /* ev_set_busy_poll */
    int polled[EV_POLLED_MAX];  /* ev_set_polled fds, in no order */
    int npolled;
    int again;                  /* ev_again list head (an fd), or -1 */
    ev_after_proc *after;
    void *after_ud;
};

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

long long ev_now_ms(void) {
    return now_us() / 1000;
}

long long ev_time_ms(const ev_loop *loop) {
    return loop->now;
}

/* --- epoll backend [ae_epoll.c] ---------------------------------------- */

static int api_create(ev_loop *loop) {
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    return loop->epfd < 0 ? EV_ERR : EV_OK;
}

/* Tells epoll that fd now waits for mask (old: what it waited for). */
static int api_add(ev_loop *loop, int fd, int old, int mask) {
    struct epoll_event ee;
    int op = old == EV_NONE ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;

    memset(&ee, 0, sizeof ee);
    ee.data.fd = fd;
    if (mask & EV_READABLE)
        ee.events |= EPOLLIN;
    if (mask & EV_WRITABLE)
        ee.events |= EPOLLOUT;
    if (mask & EV_EDGE)
        ee.events |= EPOLLET;
    if ((mask & (EV_EDGE | EV_EXCLUSIVE)) == EV_EDGE)
        ee.events |= EPOLLRDHUP;        /* EPOLLEXCLUSIVE refuses it */
    if (mask & EV_EXCLUSIVE) {
        /* EPOLLEXCLUSIVE is refused by EPOLL_CTL_MOD: delete and re-add */
        if (op == EPOLL_CTL_MOD)
            epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, &ee);
        op = EPOLL_CTL_ADD;
        ee.events |= EPOLLEXCLUSIVE;
    }
    return epoll_ctl(loop->epfd, op, fd, &ee) < 0 ? EV_ERR : EV_OK;
}

/* fd now waits for mask, which may be EV_NONE (then it leaves epoll). */
static void api_del(ev_loop *loop, int fd, int old, int mask) {
    struct epoll_event ee;

    memset(&ee, 0, sizeof ee);
    if (mask != EV_NONE)
        api_add(loop, fd, old, mask);
    else
        epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, &ee);
}

/* Waits up to ms (-1: forever); returns the number of fired events. */
static int api_poll(ev_loop *loop, int ms) {
    int n;

    if (loop->busy_us > 0 && ms != 0) {
        long long spin = loop->busy_us, start = now_us();
        if (ms > 0 && spin > (long long)ms * 1000)
            spin = (long long)ms * 1000;
        do {
            n = epoll_wait(loop->epfd, loop->fired, EV_MAX_FIRED, 0);
            if (n != 0)
                return n < 0 ? 0 : n;
        } while (now_us() - start < spin);
        if (ms > 0) {
            ms -= (int)(spin / 1000);
            if (ms <= 0)
                return 0;
        }
    }
    n = epoll_wait(loop->epfd, loop->fired, EV_MAX_FIRED, ms);
    return n < 0 ? 0 : n;
}

static int api_mask(uint32_t events) {
    int mask = EV_NONE;

    if (events & EPOLLIN)
        mask |= EV_READABLE;
    if (events & EPOLLOUT)
        mask |= EV_WRITABLE;
    if (events & (EPOLLERR | EPOLLHUP))
        mask |= EV_READABLE | EV_WRITABLE;
    if (events & (EPOLLRDHUP | EPOLLHUP))
        mask |= EV_READABLE | EV_HUP;
    return mask;
}

/* --- loop -------------------------------------------------------------- */

ev_loop *ev_create(int setsize) {
    ev_loop *loop = calloc(1, sizeof *loop);

    if (loop == NULL)
        return NULL;
    loop->epfd = -1;
    loop->free_timer = -1;
    loop->again = -1;
    loop->setsize = setsize > 16 ? setsize : 16;
    loop->files = calloc(loop->setsize, sizeof *loop->files);
    if (loop->files == NULL || api_create(loop) < 0)
        goto err;
    loop->now = ev_now_ms();
    return loop;
err:
    ev_destroy(loop);
    return NULL;
}

/* Also right in a forked child: closing the epoll fd there leaves the
 * parent's registrations alone (no EPOLL_CTL_DEL is issued). */
void ev_destroy(ev_loop *loop) {
    if (loop == NULL)
        return;
    if (loop->epfd >= 0)
        close(loop->epfd);
    free(loop->files);
    free(loop->timers);
    free(loop->heap);
    free(loop);
}

int ev_fd(const ev_loop *loop) {
    return loop->epfd;
}

int ev_setsize(ev_loop *loop) {
    return loop->setsize;
}

static int grow_files(ev_loop *loop, int fd) {
    int n = loop->setsize;
    struct ev_file *f;

    while (n <= fd)
        n *= 2;
    f = realloc(loop->files, n * sizeof *f);
    if (f == NULL)
        return EV_ERR;
    memset(f + loop->setsize, 0, (n - loop->setsize) * sizeof *f);
    loop->files = f;
    loop->setsize = n;
    return EV_OK;
}

/* Takes fd off the polled list (epoll is the caller's business). */
static void unpoll(ev_loop *loop, int fd) {
    for (int i = 0; i < loop->npolled; i++) {
        if (loop->polled[i] == fd) {
            loop->polled[i] = loop->polled[--loop->npolled];
            break;
        }
    }
    loop->files[fd].polled = 0;
}

int ev_add(ev_loop *loop, int fd, int mask, ev_file_proc *proc, void *ud) {
    struct ev_file *fe;

    if (fd < 0) {
        errno = EBADF;
        return EV_ERR;
    }
    if (fd >= loop->setsize && grow_files(loop, fd) < 0) {
        errno = ENOMEM;
        return EV_ERR;
    }
    fe = &loop->files[fd];
    if ((fe->mask | mask) != fe->mask) {
        /* a polled fd is out of epoll: it comes back, waiting for all */
        if (api_add(loop, fd, fe->polled ? EV_NONE : fe->mask,
                    fe->mask | mask) < 0)
            return EV_ERR;
        if (fe->polled)
            unpoll(loop, fd);
    }
    fe->mask |= mask;
    if (mask & EV_READABLE)
        fe->rproc = proc;
    if (mask & EV_WRITABLE)
        fe->wproc = proc;
    fe->ud = ud;
    return EV_OK;
}

void ev_del(ev_loop *loop, int fd, int mask) {
    struct ev_file *fe;
    int left;

    if (fd < 0 || fd >= loop->setsize)
        return;
    fe = &loop->files[fd];
    if ((fe->mask & mask) == EV_NONE)
        return;
    left = fe->mask & ~mask;
    if ((left & (EV_READABLE | EV_WRITABLE)) == EV_NONE)
        left = EV_NONE;
    if (fe->polled) {
        unpoll(loop, fd);
        if (left != EV_NONE)
            api_add(loop, fd, EV_NONE, left);
    } else {
        api_del(loop, fd, fe->mask, left);
    }
    fe->mask = left;
    if (!(left & EV_READABLE) && fe->again == AGAIN_YES)
        fe->again = AGAIN_CANCELLED;
}

void ev_forget(ev_loop *loop, int fd) {
    if (fd >= 0 && fd < loop->setsize) {
        if (loop->files[fd].polled)
            unpoll(loop, fd);
        loop->files[fd].mask = EV_NONE;
        if (loop->files[fd].again == AGAIN_YES)
            loop->files[fd].again = AGAIN_CANCELLED;
    }
}

/* A cancelled entry stays on the list, so an fd is never on it twice. */
void ev_again(ev_loop *loop, int fd) {
    struct ev_file *fe;

    if (fd < 0 || fd >= loop->setsize)
        return;
    fe = &loop->files[fd];
    if (!(fe->mask & EV_READABLE) || fe->again == AGAIN_YES)
        return;
    if (fe->again == AGAIN_NO) {
        fe->again_next = loop->again;
        loop->again = fd;
    }
    fe->again = AGAIN_YES;
}

int ev_set_polled(ev_loop *loop, int fd, int on) {
    struct ev_file *fe;
    struct epoll_event ee;

    if (fd < 0 || fd >= loop->setsize || loop->files[fd].mask == EV_NONE) {
        errno = EBADF;
        return EV_ERR;
    }
    fe = &loop->files[fd];
    if (!on == !fe->polled)
        return EV_OK;
    if (!on) {
        if (api_add(loop, fd, EV_NONE, fe->mask) < 0)
            return EV_ERR;
        unpoll(loop, fd);
        return EV_OK;
    }
    if ((fe->mask & EV_WRITABLE) || loop->npolled == EV_POLLED_MAX) {
        errno = EINVAL;
        return EV_ERR;
    }
    memset(&ee, 0, sizeof ee);
    if (epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, &ee) < 0)
        return EV_ERR;
    loop->polled[loop->npolled++] = fd;
    fe->polled = 1;
    return EV_OK;
}

int ev_polled(const ev_loop *loop, int fd) {
    return fd >= 0 && fd < loop->setsize && loop->files[fd].polled;
}

int ev_mask(ev_loop *loop, int fd) {
    if (fd < 0 || fd >= loop->setsize)
        return EV_NONE;
    return loop->files[fd].mask;
}

/* --- timers: a binary heap of slots ordered by deadline ---------------- */

/* By deadline; timers due in the same millisecond in the order added (an
 * id grows with each add), so that sleeps begun in turn end in turn. */
static int timer_before(ev_loop *loop, int a, int b) {
    const struct ev_timer *x = &loop->timers[loop->heap[a]];
    const struct ev_timer *y = &loop->timers[loop->heap[b]];

    return x->when < y->when || (x->when == y->when && x->id < y->id);
}

static void heap_swap(ev_loop *loop, int a, int b) {
    int t = loop->heap[a];

    loop->heap[a] = loop->heap[b];
    loop->heap[b] = t;
    loop->timers[loop->heap[a]].heap = a;
    loop->timers[loop->heap[b]].heap = b;
}

static void heap_up(ev_loop *loop, int i) {
    while (i > 0 && timer_before(loop, i, (i - 1) / 2)) {
        heap_swap(loop, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(ev_loop *loop, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < loop->heap_len && timer_before(loop, l, m))
            m = l;
        if (r < loop->heap_len && timer_before(loop, r, m))
            m = r;
        if (m == i)
            return;
        heap_swap(loop, i, m);
        i = m;
    }
}

static void heap_push(ev_loop *loop, int slot) {
    int i = loop->heap_len++;

    loop->heap[i] = slot;
    loop->timers[slot].heap = i;
    heap_up(loop, i);
}

static void heap_remove(ev_loop *loop, int i) {
    int last = --loop->heap_len;

    loop->timers[loop->heap[i]].heap = -1;
    if (i == last)
        return;
    loop->heap[i] = loop->heap[last];
    loop->timers[loop->heap[i]].heap = i;
    heap_down(loop, i);
    heap_up(loop, i);
}

/* A free timer slot (growing the tables), or -1. */
static int timer_slot(ev_loop *loop) {
    int n, slot = loop->free_timer;

    if (slot >= 0) {
        loop->free_timer = loop->timers[slot].next_free;
        return slot;
    }
    n = loop->ntimers ? loop->ntimers * 2 : 16;
    struct ev_timer *t = realloc(loop->timers, n * sizeof *t);
    if (t == NULL)
        return -1;
    loop->timers = t;
    int *h = realloc(loop->heap, n * sizeof *h);
    if (h == NULL)
        return -1;
    loop->heap = h;
    for (int i = n - 1; i > loop->ntimers; i--) {
        t[i].id = 0;
        t[i].next_free = loop->free_timer;
        loop->free_timer = i;
    }
    slot = loop->ntimers;
    loop->ntimers = n;
    return slot;
}

static void timer_free(ev_loop *loop, int slot) {
    loop->timers[slot].id = 0;
    loop->timers[slot].next_free = loop->free_timer;
    loop->free_timer = slot;
}

long long ev_timer_add(ev_loop *loop, long ms, ev_timer_proc *proc,
                       void *ud) {
    int slot = timer_slot(loop);
    struct ev_timer *t;

    if (slot < 0) {
        errno = ENOMEM;
        return EV_ERR;
    }
    t = &loop->timers[slot];
    t->id = (++loop->timer_seq << EV_SLOT_BITS) | slot;
    t->when = ev_now_ms() + (ms > 0 ? ms : 0);
    t->proc = proc;
    t->ud = ud;
    t->round = loop->round;
    heap_push(loop, slot);
    return t->id;
}

static struct ev_timer *timer_find(ev_loop *loop, long long id) {
    long long slot = id & ((1LL << EV_SLOT_BITS) - 1);

    if (id <= 0 || slot >= loop->ntimers || loop->timers[slot].id != id)
        return NULL;
    return &loop->timers[slot];
}

/* Also safe from inside the timer's own proc. */
int ev_timer_del(ev_loop *loop, long long id) {
    struct ev_timer *t = timer_find(loop, id);

    if (t == NULL)
        return EV_ERR;
    if (t->heap >= 0)
        heap_remove(loop, t->heap);
    timer_free(loop, (int)(t - loop->timers));
    return EV_OK;
}

/* Runs the timers due at loop->now. A timer added or rearmed during this
 * pass waits for the next iteration, so a 0 ms timer cannot starve I/O. */
static void process_timers(ev_loop *loop) {
    loop->round++;
    while (loop->heap_len > 0 && !loop->stop) {
        int slot = loop->heap[0];
        struct ev_timer *t = &loop->timers[slot];
        if (t->when > loop->now || t->round == loop->round)
            return;
        heap_remove(loop, 0);
        long long id = t->id;
        long next = t->proc(loop, id, t->ud);
        t = timer_find(loop, id);       /* tables may have moved */
        if (t == NULL)
            continue;                   /* deleted by its own proc */
        if (next == EV_NOMORE) {
            timer_free(loop, slot);
            continue;
        }
        t->when = ev_now_ms() + (next > 0 ? next : 0);
        t->round = loop->round;
        heap_push(loop, slot);
    }
}

/* ms until the next timer is due: 0 when one is late, -1 when none. */
static int poll_timeout(ev_loop *loop) {
    long long d;

    if (loop->heap_len == 0)
        return -1;
    d = loop->timers[loop->heap[0]].when - ev_now_ms();
    if (d < 0)
        return 0;
    return d > 1000000 ? 1000000 : (int)d;
}

static void process_file(ev_loop *loop, int fd, int mask) {
    struct ev_file *fe = &loop->files[fd];
    int called = 0;

    if (fe->mask & mask & EV_READABLE) {
        fe->rproc(loop, fd, fe->ud, mask);
        called = 1;
        fe = &loop->files[fd];          /* the table may have grown */
    }
    if ((fe->mask & mask & EV_WRITABLE) && (!called || fe->wproc != fe->rproc))
        fe->wproc(loop, fd, fe->ud, mask);
}

/* The read procs of the polled fds, as if each had fired; those their
 * procs stop polling (or delete) meanwhile are skipped. */
static void process_polled(ev_loop *loop) {
    int fds[EV_POLLED_MAX], n = loop->npolled;

    memcpy(fds, loop->polled, (size_t)n * sizeof *fds);
    for (int i = 0; i < n && !loop->stop; i++) {
        struct ev_file *fe = &loop->files[fds[i]];
        if (fe->polled)
            fe->rproc(loop, fds[i], fe->ud, EV_READABLE);
    }
}

/* The read procs ev_again asked for; those asked for meanwhile wait for
 * the next iteration. */
static void process_again(ev_loop *loop) {
    int fd = loop->again;

    loop->again = -1;
    while (fd >= 0) {
        struct ev_file *fe = &loop->files[fd];
        int next = fe->again_next, wanted = fe->again == AGAIN_YES;

        fe->again = AGAIN_NO;
        if (wanted && loop->stop)
            ev_again(loop, fd);         /* stopped: still asked next run */
        else if (wanted && !fe->polled)
            fe->rproc(loop, fd, fe->ud, EV_READABLE);
        fd = next;
    }
}

/* One iteration: wait (not while an fd is polled or asked again), dispatch
 * file events, the polled fds, the fds asked again, due timers, then the
 * after-proc. */
static void run_once(ev_loop *loop) {
    int busy = loop->npolled > 0 || loop->again >= 0;
    int n = api_poll(loop, busy ? 0 : poll_timeout(loop));

    loop->now = ev_now_ms();
    for (int i = 0; i < n && !loop->stop; i++) {
        int fd = loop->fired[i].data.fd;
        process_file(loop, fd, api_mask(loop->fired[i].events));
    }
    if (loop->npolled > 0)
        process_polled(loop);
    if (loop->again >= 0)
        process_again(loop);
    process_timers(loop);
    if (loop->after)
        loop->after(loop, loop->after_ud);
}

void ev_set_after(ev_loop *loop, ev_after_proc *proc, void *ud) {
    loop->after = proc;
    loop->after_ud = ud;
}

void ev_run(ev_loop *loop) {
    loop->stop = 0;
    while (!loop->stop)
        run_once(loop);
}

void ev_stop(ev_loop *loop) {
    loop->stop = 1;
}

void ev_set_busy_poll(ev_loop *loop, long us) {
    loop->busy_us = us > 0 ? us : 0;
}
