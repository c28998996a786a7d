/* The shared dictionary's store: a header (a robust process-shared mutex),
 * a hash index and a log-structured arena of exactly capacity bytes, in
 * one MAP_SHARED region. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "pmutex.h"
#include "shdict.h"

#define SHD_ALIGN(n) (((n) + 7) & ~(size_t)7)

/* An entry in the arena, followed by its key and a string's bytes. It
 * takes exactly its cost there, so the entries fill the arena end to end;
 * a deleted or replaced one stays as a hole (type SHDICT_NIL) until the
 * arena is compacted. */
struct shd_entry {
    double expires;             /* CLOCK_MONOTONIC seconds; 0: never */
    union {
        int64_t i;              /* a boolean, an integer */
        double n;
    } num;
    uint32_t next;              /* the chain's next entry: offset + 1; 0 ends */
    uint32_t hash;
    uint32_t size;              /* its cost */
    uint32_t vlen;              /* a string's length */
    uint8_t klen;
    uint8_t type;               /* enum shdict_type */
};

_Static_assert(sizeof(struct shd_entry) <= SHDICT_ENTRY,
               "an entry must fit in the fixed part of its cost");

struct shd_header {
    pthread_mutex_t lock;
    size_t capacity;            /* bytes of the arena */
    size_t used;                /* cost of the entries, expired ones too */
    size_t top;                 /* end of the last entry: the next append */
    double soonest;             /* no entry expires before this */
    uint32_t nbuckets;          /* a power of two */
    int compacting;             /* shd_compact's journal: while it runs, */
    size_t cdst, csrc;          /* [0, cdst) and [csrc, top) hold entries */
};

struct shdict {
    struct shd_header *h;
    uint32_t *buckets;          /* each chain's first entry: offset + 1 */
    char *arena;
    size_t maplen;
};

static double shd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* FNV-1a. */
static uint32_t shd_hash(const char *key, size_t klen) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < klen; i++)
        h = (h ^ (unsigned char)key[i]) * 16777619u;
    return h;
}

/* A store that shd_recover relies on: not moved by the compiler across the
 * stores around it, should this process die here. */
static void shd_publish(size_t *p, size_t v) {
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    *p = v;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

static struct shd_entry *shd_at(const struct shdict *d, size_t off) {
    return (struct shd_entry *)(void *)(d->arena + off);
}

static char *shd_key(struct shd_entry *e) {
    return (char *)(e + 1);
}

static int shd_expired(const struct shd_entry *e, double now) {
    return e->expires != 0 && e->expires <= now;
}

size_t shdict_cost(size_t klen, const struct shdict_value *v) {
    size_t vsize = v->type == SHDICT_STRING ? v->len
                 : v->type == SHDICT_BOOLEAN ? 1 : 8;
    if (vsize > SHDICT_MAX)
        vsize = SHDICT_MAX;     /* more than any capacity, no overflow */
    return SHD_ALIGN(SHDICT_ENTRY + klen + vsize);
}

/* --- the index ------------------------------------------------------- */

/* The link (a bucket, or an entry's next) to key's entry; *link is 0 when
 * the key is not there. */
static uint32_t *shd_find(struct shdict *d, const char *key, size_t klen,
                          uint32_t hash) {
    uint32_t *link = &d->buckets[hash & (d->h->nbuckets - 1)];

    while (*link) {
        struct shd_entry *e = shd_at(d, *link - 1);
        if (e->hash == hash && e->klen == klen &&
            memcmp(shd_key(e), key, klen) == 0)
            return link;
        link = &e->next;
    }
    return link;
}

/* The entry *link points to becomes a hole. */
static void shd_unlink(struct shdict *d, uint32_t *link) {
    struct shd_entry *e = shd_at(d, *link - 1);

    *link = e->next;
    e->type = SHDICT_NIL;
    d->h->used -= e->size;
}

/* key's entry if it is there and has not expired, else NULL. */
static struct shd_entry *shd_live(struct shdict *d, const char *key,
                                  size_t klen, double now) {
    uint32_t *link = shd_find(d, key, klen, shd_hash(key, klen));
    struct shd_entry *e = *link ? shd_at(d, *link - 1) : NULL;

    return e && !shd_expired(e, now) ? e : NULL;
}

/* Rebuilds the index, used and soonest from the entries of the arena; of
 * two entries of one key (only after a crash) the later one stays. */
static void shd_reindex(struct shdict *d) {
    struct shd_header *h = d->h;
    struct shd_entry *e;

    memset(d->buckets, 0, h->nbuckets * sizeof *d->buckets);
    h->used = 0;
    h->soonest = HUGE_VAL;
    for (size_t off = 0; off < h->top; off += e->size) {
        e = shd_at(d, off);
        if (e->type == SHDICT_NIL)
            continue;
        uint32_t *link = shd_find(d, shd_key(e), e->klen, e->hash);
        if (*link)
            shd_unlink(d, link);
        link = &d->buckets[e->hash & (h->nbuckets - 1)];
        e->next = *link;
        *link = (uint32_t)off + 1;
        h->used += e->size;
        if (e->expires != 0 && e->expires < h->soonest)
            h->soonest = e->expires;
    }
}

/* --- the arena --------------------------------------------------------- */

/* Moves the entries that have not expired down to the start, in order,
 * and reindexes. Journaled for shd_recover: an entry is in flight between
 * the two publishes around its memmove, and lost if this process dies
 * then. */
static void shd_compact(struct shdict *d, double now) {
    struct shd_header *h = d->h;
    size_t src = 0, dst = 0;

    h->cdst = h->csrc = 0;
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    h->compacting = 1;
    while (src < h->top) {
        struct shd_entry *e = shd_at(d, src);
        size_t size = e->size;
        if (e->type != SHDICT_NIL && !shd_expired(e, now)) {
            if (dst != src) {
                shd_publish(&h->csrc, src + size);
                memmove(d->arena + dst, d->arena + src, size);
            }
            dst += size;
            shd_publish(&h->cdst, dst);
        }
        src += size;
        shd_publish(&h->csrc, src);
    }
    shd_publish(&h->top, dst);
    h->compacting = 0;
    shd_reindex(d);
}

/* Whether an entry of cost bytes fits in place of a live one of old bytes
 * (0: none), once the expired entries are dropped if it takes that. */
static int shd_fits(struct shdict *d, size_t cost, size_t old, double now) {
    struct shd_header *h = d->h;

    if (cost > h->capacity)
        return 0;
    if (h->used - old + cost <= h->capacity)
        return 1;
    if (h->soonest > now)
        return 0;               /* nothing to drop */
    shd_compact(d, now);
    return h->used - old + cost <= h->capacity;
}

static void shd_put(struct shd_entry *e, const struct shdict_value *v) {
    switch (v->type) {
    case SHDICT_BOOLEAN: e->num.i = v->u.boolean != 0; break;
    case SHDICT_INTEGER: e->num.i = v->u.integer; break;
    case SHDICT_NUMBER: e->num.n = v->u.number; break;
    default:
        e->vlen = (uint32_t)v->len;
        if (v->len)
            memcpy(shd_key(e) + e->klen, v->str, v->len);
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    e->type = (uint8_t)v->type;
}

/* Stores key = v in place of its entry, if any; shd_fits said it fits. */
static void shd_insert(struct shdict *d, const char *key, size_t klen,
                       const struct shdict_value *v, double expires,
                       double now) {
    struct shd_header *h = d->h;
    uint32_t hash = shd_hash(key, klen), *link = shd_find(d, key, klen, hash);
    size_t cost = shdict_cost(klen, v), off;
    struct shd_entry *e;

    if (*link)
        shd_unlink(d, link);
    if (h->top + cost > h->capacity)
        shd_compact(d, now);    /* used + cost fits: so does top + cost */
    off = h->top;
    e = shd_at(d, off);
    e->expires = expires;
    e->hash = hash;
    e->size = (uint32_t)cost;
    e->vlen = 0;
    e->klen = (uint8_t)klen;
    memcpy(shd_key(e), key, klen);
    shd_put(e, v);
    link = &d->buckets[hash & (h->nbuckets - 1)];
    e->next = *link;
    shd_publish(&h->top, off + cost);
    *link = (uint32_t)off + 1;
    h->used += cost;
    if (expires != 0 && expires < h->soonest)
        h->soonest = expires;
}

/* --- recovery ------------------------------------------------------------ */

/* Whether the bytes at off (below top) read as an entry. */
static int shd_valid(struct shdict *d, size_t off, size_t top) {
    struct shd_entry *e = shd_at(d, off);
    size_t need;

    if (top - off < sizeof *e || e->size % 8 || e->size < sizeof *e ||
        e->size > top - off)
        return 0;
    if (e->type == SHDICT_NIL)
        return 1;
    if (e->type > SHDICT_STRING || e->klen == 0 || e->klen > SHDICT_KEY_MAX)
        return 0;
    need = sizeof *e + e->klen + (e->type == SHDICT_STRING ? e->vlen : 0);
    return need <= e->size && e->hash == shd_hash(shd_key(e), e->klen);
}

/* The holder of the lock died in an operation: trusts the arena up to top
 * and the compaction journal, nothing else. An entry that was being
 * written may be lost; one that makes no sense ends the arena there. */
static void shd_recover(struct shdict *d) {
    struct shd_header *h = d->h;

    if (h->top > h->capacity)
        h->top = 0;
    if (h->compacting && h->cdst < h->csrc && h->csrc <= h->top &&
        h->csrc - h->cdst >= sizeof(struct shd_entry)) {
        struct shd_entry *hole = shd_at(d, h->cdst);
        hole->type = SHDICT_NIL;
        hole->size = (uint32_t)(h->csrc - h->cdst);
    }
    h->compacting = 0;
    for (size_t off = 0; off < h->top; off += shd_at(d, off)->size) {
        if (!shd_valid(d, off, h->top)) {
            h->top = off;
            break;
        }
    }
    shd_reindex(d);
}

static void shd_recover_cb(void *ud) {
    shd_recover(ud);
}

static void shd_lock(struct shdict *d) {
    pmutex_lock(&d->h->lock, shd_recover_cb, d);
}

static void shd_unlock(struct shdict *d) {
    pthread_mutex_unlock(&d->h->lock);
}

/* --- the API ----------------------------------------------------------- */

struct shdict *shdict_create(size_t capacity) {
    size_t hlen = SHD_ALIGN(sizeof(struct shd_header)), blen;
    uint32_t nb = 16;
    struct shdict *d;
    char *base;
    int rc;

    if (capacity == 0 || capacity > SHDICT_MAX) {
        errno = EINVAL;
        return NULL;
    }
    while (nb < capacity / 64)  /* about one chain per entry when full */
        nb <<= 1;
    blen = SHD_ALIGN(nb * sizeof(uint32_t));
    if ((d = malloc(sizeof *d)) == NULL)
        return NULL;
    d->maplen = hlen + blen + capacity;
    base = mmap(NULL, d->maplen, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        goto err;
    d->h = (struct shd_header *)(void *)base;
    d->buckets = (uint32_t *)(void *)(base + hlen);
    d->arena = base + hlen + blen;
    if ((rc = pmutex_init(&d->h->lock)) != 0) {
        munmap(base, d->maplen);
        errno = rc;
        goto err;
    }
    d->h->capacity = capacity;
    d->h->nbuckets = nb;
    d->h->soonest = HUGE_VAL;
    return d;
err:
    rc = errno;
    free(d);
    errno = rc;
    return NULL;
}

void shdict_free(struct shdict *d) {
    if (d == NULL)
        return;
    munmap(d->h, d->maplen);
    free(d);
}

size_t shdict_capacity(const struct shdict *d) {
    return d->h->capacity;
}

static void shd_get_value(struct shd_entry *e, struct shdict_value *v,
                          char *buf, size_t bufsize) {
    v->type = (enum shdict_type)e->type;
    v->str = NULL;
    v->len = 0;
    switch (v->type) {
    case SHDICT_BOOLEAN: v->u.boolean = e->num.i != 0; break;
    case SHDICT_INTEGER: v->u.integer = e->num.i; break;
    case SHDICT_NUMBER: v->u.number = e->num.n; break;
    default:
        v->len = e->vlen;
        if (v->len <= bufsize) {
            if (v->len)
                memcpy(buf, shd_key(e) + e->klen, v->len);
            v->str = buf ? buf : "";
        }
    }
}

int shdict_get(struct shdict *d, const char *key, size_t klen,
               struct shdict_value *v, char *buf, size_t bufsize) {
    struct shd_entry *e;

    shd_lock(d);
    e = shd_live(d, key, klen, shd_now());
    if (e)
        shd_get_value(e, v, buf, bufsize);
    shd_unlock(d);
    return e ? SHDICT_OK : SHDICT_NOT_FOUND;
}

/* A number or a boolean over one of the same cost, in place: no append,
 * so a full arena is not compacted for it. (A string is appended: written
 * in place, a crash could leave it half old, half new.) */
static void shd_overwrite(struct shdict *d, struct shd_entry *e,
                          const struct shdict_value *v, double expires) {
    e->expires = expires;
    shd_put(e, v);
    if (expires != 0 && expires < d->h->soonest)
        d->h->soonest = expires;
}

/* set (add 0) and add (add 1). */
static int shd_store(struct shdict *d, const char *key, size_t klen,
                     const struct shdict_value *v, double ttl, int add) {
    uint32_t *link;
    struct shd_entry *e;
    double now;
    int rc = SHDICT_OK;

    shd_lock(d);
    now = shd_now();
    link = shd_find(d, key, klen, shd_hash(key, klen));
    e = *link ? shd_at(d, *link - 1) : NULL;
    if (e && shd_expired(e, now)) {
        shd_unlink(d, link);
        e = NULL;
    }
    if (e && add)
        rc = SHDICT_EXISTS;
    else if (v->type == SHDICT_NIL) {
        if (e)
            shd_unlink(d, link);
    } else if (e && e->size == shdict_cost(klen, v) &&
               v->type != SHDICT_STRING)
        shd_overwrite(d, e, v, ttl > 0 ? now + ttl : 0);
    else if (!shd_fits(d, shdict_cost(klen, v), e ? e->size : 0, now))
        rc = SHDICT_NO_MEMORY;
    else
        shd_insert(d, key, klen, v, ttl > 0 ? now + ttl : 0, now);
    shd_unlock(d);
    return rc;
}

int shdict_set(struct shdict *d, const char *key, size_t klen,
               const struct shdict_value *v, double ttl) {
    return shd_store(d, key, klen, v, ttl, 0);
}

int shdict_add(struct shdict *d, const char *key, size_t klen,
               const struct shdict_value *v, double ttl) {
    return shd_store(d, key, klen, v, ttl, 1);
}

static double shd_tonumber(const struct shdict_value *v) {
    return v->type == SHDICT_INTEGER ? (double)v->u.integer : v->u.number;
}

/* a + b as Lua's + does it: integers wrap around. */
static struct shdict_value shd_sum(const struct shdict_value *a,
                                   const struct shdict_value *b) {
    struct shdict_value r;

    memset(&r, 0, sizeof r);
    if (a->type == SHDICT_INTEGER && b->type == SHDICT_INTEGER) {
        r.type = SHDICT_INTEGER;
        r.u.integer = (int64_t)((uint64_t)a->u.integer +
                                (uint64_t)b->u.integer);
    } else {
        r.type = SHDICT_NUMBER;
        r.u.number = shd_tonumber(a) + shd_tonumber(b);
    }
    return r;
}

/* incr of a key that is not there: init + n, if there is an init. */
static int shd_incr_new(struct shdict *d, const char *key, size_t klen,
                        const struct shdict_value *n,
                        const struct shdict_value *init, double ttl,
                        double now, struct shdict_value *out) {
    if (init == NULL)
        return SHDICT_NOT_FOUND;
    *out = shd_sum(init, n);
    if (!shd_fits(d, shdict_cost(klen, out), 0, now))
        return SHDICT_NO_MEMORY;
    shd_insert(d, key, klen, out, ttl > 0 ? now + ttl : 0, now);
    return SHDICT_OK;
}

int shdict_incr(struct shdict *d, const char *key, size_t klen,
                const struct shdict_value *n, const struct shdict_value *init,
                double ttl, struct shdict_value *out) {
    struct shd_entry *e;
    struct shdict_value cur;
    double now;
    int rc = SHDICT_OK;

    shd_lock(d);
    now = shd_now();
    e = shd_live(d, key, klen, now);
    if (e == NULL)
        rc = shd_incr_new(d, key, klen, n, init, ttl, now, out);
    else if (e->type != SHDICT_INTEGER && e->type != SHDICT_NUMBER)
        rc = SHDICT_NOT_NUMBER;
    else {
        shd_get_value(e, &cur, NULL, 0);
        *out = shd_sum(&cur, n);
        shd_put(e, out);        /* the same cost: in place */
    }
    shd_unlock(d);
    return rc;
}

int shdict_delete(struct shdict *d, const char *key, size_t klen) {
    uint32_t *link;

    shd_lock(d);
    link = shd_find(d, key, klen, shd_hash(key, klen));
    if (*link)
        shd_unlink(d, link);
    shd_unlock(d);
    return SHDICT_OK;
}

int shdict_ttl(struct shdict *d, const char *key, size_t klen, double *left) {
    struct shd_entry *e;
    double now;

    shd_lock(d);
    now = shd_now();
    e = shd_live(d, key, klen, now);
    if (e)
        *left = e->expires != 0 ? e->expires - now : 0;
    shd_unlock(d);
    return e ? SHDICT_OK : SHDICT_NOT_FOUND;
}

void shdict_flush(struct shdict *d) {
    struct shd_header *h = d->h;

    shd_lock(d);
    shd_publish(&h->top, 0);
    shd_reindex(d);
    shd_unlock(d);
}

size_t shdict_free_space(struct shdict *d) {
    struct shd_header *h = d->h;
    struct shd_entry *e;
    size_t live;
    double now;

    shd_lock(d);
    now = shd_now();
    live = h->used;
    if (h->soonest <= now) {
        for (size_t off = 0; off < h->top; off += e->size) {
            e = shd_at(d, off);
            if (e->type != SHDICT_NIL && shd_expired(e, now))
                live -= e->size;
        }
    }
    shd_unlock(d);
    return h->capacity - live;
}
