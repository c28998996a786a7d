/* The message bus of publish/subscribe: a ring of records in MAP_SHARED
 * memory under a robust process-shared mutex, and a doorbell per reading
 * process, an abstract unix datagram socket that a publisher writes one
 * byte to when that reader asked to be woken (armed). A reader that falls
 * a whole ring behind loses the oldest messages, and counts them. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "pmutex.h"

#define BUS_ALIGN(n) (((n) + 7) & ~(size_t)7)
#define BUS_WRAP UINT32_MAX             /* a record's chlen: go to 0 */
#define BUS_COPY (256 * 1024)           /* a reader's copy, > one record */

struct bus_rec {
    uint64_t seq;
    uint32_t chlen, len;                /* then the channel, the message */
};

#define REC_HDR sizeof(struct bus_rec)
#define REC_SIZE(chlen, len) BUS_ALIGN(REC_HDR + (chlen) + (len))

struct bus_slot {
    _Atomic int pid;                    /* 0: free */
    _Atomic int armed;                  /* wants a doorbell */
};

struct bus_header {
    pthread_mutex_t lock;
    uint64_t head, tail;                /* next seq; oldest seq kept */
    size_t wpos, tpos;                  /* where head goes; where tail is */
    size_t cap;
    unsigned id;                        /* the doorbells' names */
    _Atomic int nslots;                 /* slots ever used */
    struct bus_slot slots[BUS_READERS];
};

struct bus {
    struct bus_header *h;
    char *ring;
    size_t maplen;
};

struct bus_reader {
    struct bus *b;
    int slot, fd;
    pid_t pid;
    uint64_t seq;                       /* the next message to read */
    size_t pos;                         /* where it is, if seq > tail */
    char *copy;
};

static int bell_fd = -1;                /* this process's, to ring with */
static pid_t bell_pid;

static socklen_t bell_addr(const struct bus *b, int slot,
                           struct sockaddr_un *sa) {
    int n;

    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    n = snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1,
                 "echohost-bus-%08x-%d", b->h->id, slot);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* A process died holding the lock, maybe halfway through a record: the
 * ring starts again empty (readers count what it held as lost). */
static void bus_recover(void *ud) {
    struct bus_header *h = ud;

    h->tail = h->head;
    h->wpos = h->tpos = 0;
}

static void bus_lock(struct bus *b) {
    pmutex_lock(&b->h->lock, bus_recover, b->h);
}

static void bus_unlock(struct bus *b) {
    pthread_mutex_unlock(&b->h->lock);
}

struct bus *bus_create(size_t capacity) {
    struct bus *b;
    struct timespec ts;
    int rc;

    if (capacity < BUS_MIN || capacity > BUS_MAX) {
        errno = EINVAL;
        return NULL;
    }
    capacity = BUS_ALIGN(capacity);
    if ((b = calloc(1, sizeof *b)) == NULL)
        return NULL;
    b->maplen = BUS_ALIGN(sizeof(struct bus_header)) + capacity;
    b->h = mmap(NULL, b->maplen, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (b->h == MAP_FAILED) {
        rc = errno;
        free(b);
        errno = rc;
        return NULL;
    }
    if ((rc = pmutex_init(&b->h->lock)) != 0) {
        munmap(b->h, b->maplen);
        free(b);
        errno = rc;
        return NULL;
    }
    b->ring = (char *)b->h + BUS_ALIGN(sizeof(struct bus_header));
    b->h->cap = capacity;
    clock_gettime(CLOCK_REALTIME, &ts);
    b->h->id = (unsigned)getpid() * 2654435761u ^ (unsigned)ts.tv_nsec;
    return b;
}

void bus_free(struct bus *b) {
    if (b == NULL)
        return;
    munmap(b->h, b->maplen);
    free(b);
}

size_t bus_message_max(const struct bus *b) {
    size_t quarter = b->h->cap / 4 - REC_HDR - BUS_CHANNEL_MAX;

    return quarter < BUS_MESSAGE_MAX ? quarter : BUS_MESSAGE_MAX;
}

uint64_t bus_next(const struct bus *b) {
    return __atomic_load_n(&b->h->head, __ATOMIC_SEQ_CST);
}

/* --- the ring ------------------------------------------------------------ */

static struct bus_rec *rec_at(const struct bus *b, size_t pos) {
    return (struct bus_rec *)(void *)(b->ring + pos);
}

/* pos, or 0 where the writer went back to the start from pos. */
static size_t rec_norm(const struct bus *b, size_t pos) {
    if (b->h->cap - pos < REC_HDR || rec_at(b, pos)->chlen == BUS_WRAP)
        return 0;
    return pos;
}

/* Drops the oldest record. */
static void ring_evict(struct bus *b) {
    struct bus_header *h = b->h;
    const struct bus_rec *r = rec_at(b, h->tpos);

    h->tpos += REC_SIZE(r->chlen, r->len);
    h->tail++;
    h->tpos = h->tail == h->head ? h->wpos : rec_norm(b, h->tpos);
}

/* Where a record of need bytes goes, the oldest dropped to make room. */
static size_t ring_room(struct bus *b, size_t need) {
    struct bus_header *h = b->h;

    for (;;) {
        if (h->tail == h->head)
            return h->wpos = h->tpos = 0;
        if (h->wpos > h->tpos) {            /* free: [wpos, cap), [0, tpos) */
            if (h->cap - h->wpos >= need)
                return h->wpos;
            if (h->cap - h->wpos >= REC_HDR)
                rec_at(b, h->wpos)->chlen = BUS_WRAP;
            h->wpos = 0;
        } else if (h->tpos - h->wpos >= need) {  /* free: [wpos, tpos) */
            return h->wpos;
        } else {
            ring_evict(b);
        }
    }
}

static void bell_ring(struct bus *b, int slot) {
    struct sockaddr_un sa;
    socklen_t len = bell_addr(b, slot, &sa);
    pid_t pid = getpid();

    if (bell_fd < 0 || bell_pid != pid) {
        bell_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        bell_pid = pid;
        if (bell_fd < 0)
            return;
    }
    if (sendto(bell_fd, "", 1, MSG_DONTWAIT | MSG_NOSIGNAL,
               (struct sockaddr *)&sa, len) < 0 && errno == ECONNREFUSED) {
        int owner = atomic_load(&b->h->slots[slot].pid);
        if (owner != 0 && kill(owner, 0) < 0 && errno == ESRCH)
            atomic_compare_exchange_strong(&b->h->slots[slot].pid, &owner, 0);
    }
}

/* Rings every reader that asked to be woken. */
static void bus_wake(struct bus *b) {
    int n = atomic_load(&b->h->nslots);

    for (int i = 0; i < n; i++) {
        struct bus_slot *s = &b->h->slots[i];
        if (atomic_load(&s->pid) != 0 && atomic_exchange(&s->armed, 0))
            bell_ring(b, i);
    }
}

int bus_publish(struct bus *b, const char *ch, size_t chlen,
                const char *msg, size_t len) {
    size_t need = REC_SIZE(chlen, len), pos;
    struct bus_rec *r;

    if (len > bus_message_max(b) || chlen > BUS_CHANNEL_MAX) {
        errno = EMSGSIZE;
        return -1;
    }
    bus_lock(b);
    pos = ring_room(b, need);
    r = rec_at(b, pos);
    r->seq = b->h->head;
    r->chlen = (uint32_t)chlen;
    r->len = (uint32_t)len;
    memcpy((char *)(r + 1), ch, chlen);
    memcpy((char *)(r + 1) + chlen, msg, len);
    b->h->wpos = pos + need;
    __atomic_store_n(&b->h->head, b->h->head + 1, __ATOMIC_SEQ_CST);
    bus_unlock(b);
    bus_wake(b);
    return 0;
}

/* --- readers ------------------------------------------------------------- */

/* A slot for this process: a free one, else one whose process is gone. */
static int slot_claim(struct bus *b, int pid, int from) {
    for (int pass = 0; pass < 2; pass++) {
        for (int i = from; i < BUS_READERS; i++) {
            struct bus_slot *s = &b->h->slots[i];
            int owner = atomic_load(&s->pid);
            if (owner != 0 && (pass == 0 || kill(owner, 0) == 0 ||
                               errno != ESRCH))
                continue;
            if (atomic_compare_exchange_strong(&s->pid, &owner, pid))
                return i;
        }
    }
    return -1;
}

static int reader_bind(struct bus_reader *r) {
    struct sockaddr_un sa;
    socklen_t len = bell_addr(r->b, r->slot, &sa);

    r->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (r->fd < 0)
        return -1;
    if (bind(r->fd, (struct sockaddr *)&sa, len) == 0)
        return 0;
    close(r->fd);
    r->fd = -1;
    return -1;
}

struct bus_reader *bus_attach(struct bus *b) {
    struct bus_reader *r = calloc(1, sizeof *r);
    int from = 0, n;

    if (r == NULL || (r->copy = malloc(BUS_COPY)) == NULL) {
        free(r);
        return NULL;
    }
    r->b = b;
    r->pid = getpid();
    for (;;) {
        if ((r->slot = slot_claim(b, r->pid, from)) < 0) {
            free(r->copy);
            free(r);
            errno = ENOSPC;
            return NULL;
        }
        if (reader_bind(r) == 0)
            break;
        /* the name is someone's still (a slot reclaimed too early) */
        atomic_store(&b->h->slots[r->slot].pid, 0);
        from = r->slot + 1;
    }
    n = atomic_load(&b->h->nslots);
    while (n < r->slot + 1 &&
           !atomic_compare_exchange_weak(&b->h->nslots, &n, r->slot + 1))
        ;
    bus_lock(b);
    r->seq = b->h->head;
    r->pos = b->h->wpos;                /* where message seq goes */
    bus_unlock(b);
    atomic_store(&b->h->slots[r->slot].armed, 1);
    return r;
}

void bus_detach(struct bus_reader *r) {
    if (r == NULL)
        return;
    if (r->pid == getpid()) {
        atomic_store(&r->b->h->slots[r->slot].armed, 0);
        atomic_store(&r->b->h->slots[r->slot].pid, 0);
    }
    close(r->fd);
    free(r->copy);
    free(r);
}

int bus_reader_fd(const struct bus_reader *r) {
    return r->fd;
}

/* Copies the records from r->seq up to end into r->copy, as many as fit;
 * the bytes copied. */
static size_t reader_copy(struct bus_reader *r, uint64_t end, uint64_t *lost) {
    struct bus *b = r->b;
    struct bus_header *h = b->h;
    size_t used = 0;

    bus_lock(b);
    if (r->seq <= h->tail) {
        *lost += h->tail - r->seq;
        r->seq = h->tail;
        r->pos = h->tpos;
    }
    if (end > h->head)                  /* the ring was reset meanwhile */
        end = h->head;
    while (r->seq < end) {
        const struct bus_rec *rec;
        size_t size;
        r->pos = rec_norm(b, r->pos);
        rec = rec_at(b, r->pos);
        size = REC_SIZE(rec->chlen, rec->len);
        if (used + size > BUS_COPY)
            break;
        memcpy(r->copy + used, rec, size);
        used += size;
        r->pos += size;
        r->seq++;
    }
    bus_unlock(b);
    return used;
}

void bus_read(struct bus_reader *r, bus_fn *fn, void *ud, uint64_t *lost) {
    struct bus_slot *s = &r->b->h->slots[r->slot];
    char drain[64];
    uint64_t end;

    while (recv(r->fd, drain, sizeof drain, MSG_DONTWAIT) > 0)
        ;
    end = bus_next(r->b);
    while (r->seq < end) {
        size_t used = reader_copy(r, end, lost);
        if (used == 0)
            break;
        for (size_t off = 0; off < used;) {
            const struct bus_rec *rec = (void *)(r->copy + off);
            const char *ch = (const char *)(rec + 1);
            fn(ud, rec->seq, ch, rec->chlen, ch + rec->chlen, rec->len);
            off += REC_SIZE(rec->chlen, rec->len);
        }
    }
    atomic_store(&s->armed, 1);
    /* published meanwhile: come back after the loop's other events */
    if (bus_next(r->b) > r->seq && atomic_exchange(&s->armed, 0))
        bell_ring(r->b, r->slot);
}
