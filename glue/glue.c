/* Glue runtime: thread_info, the managed heap (bump allocation, Cheney
 * copying collector over explicit roots), strings, fn values (opaque host
 * references: the host releases and compares them), the type registry. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"

#define GLUE_NURSERY    GLUE_HEAP_MIN           /* CertiCoq's NURSERY_SIZE */
#define GLUE_HEAP_MAX   ((size_t)1 << 27)       /* words: 1 GiB */

struct glue_heap {
    value *space;               /* the current space, alloc/limit inside */
    size_t words;               /* its size */
    size_t max;                 /* cap on words */
    value *roots;               /* root slots; 0 marks a free slot */
    int nroots, caproots;
    int *free;                  /* free slot numbers */
    int nfree;
    value *fns;                 /* every live fn block (weak) */
    size_t nfns, capfns;
};

struct glue_registry {
    const struct glue_type **types;
    int n, cap;
    void **kept;                /* memory freed with the thread_info */
    int nkept, capkept;
};

/* Creates a thread_info with an empty heap, no types registered (the
 * generated NAME_register adds a file's types) and no host; NULL when out
 * of memory. Free with free_tinfo. */
struct thread_info *make_tinfo(void) {
    struct thread_info *ti = calloc(1, sizeof *ti);

    if (ti == NULL)
        return NULL;
    ti->heap = calloc(1, sizeof *ti->heap);
    ti->reg = calloc(1, sizeof *ti->reg);
    if (ti->heap == NULL || ti->reg == NULL)
        goto err;
    ti->heap->space = malloc(GLUE_NURSERY * sizeof(value));
    if (ti->heap->space == NULL)
        goto err;
    ti->heap->words = GLUE_NURSERY;
    ti->heap->max = GLUE_HEAP_MAX;
    ti->alloc = ti->heap->space;
    ti->limit = ti->alloc + GLUE_NURSERY;
    return ti;
err:
    free_tinfo(ti);
    return NULL;
}

/* Frees the heap, the roots, the declared types; releases the host
 * references of fn values (the host must still be alive). */
void free_tinfo(struct thread_info *ti) {
    if (ti == NULL)
        return;
    if (ti->heap) {
        for (size_t i = 0; ti->release && i < ti->heap->nfns; i++)
            ti->release(ti->host, glue_fn_ref(ti->heap->fns[i]));
        free(ti->heap->space);
        free(ti->heap->roots);
        free(ti->heap->free);
        free(ti->heap->fns);
        free(ti->heap);
    }
    if (ti->reg) {
        for (int i = 0; i < ti->reg->nkept; i++)
            free(ti->reg->kept[i]);
        free(ti->reg->kept);
        free(ti->reg->types);
        free(ti->reg);
    }
    free(ti);
}

/* Caps the heap at `words` words (default 1 GiB worth; 0: unchanged);
 * growing past it fails (glue_reserve returns -1). Returns the old cap. */
size_t glue_set_heap_max(struct thread_info *ti, size_t words) {
    size_t old = ti->heap->max;

    if (words > 0)
        ti->heap->max = words;
    return old;
}

/* Size of the current space, in words. */
size_t glue_heap_words(const struct thread_info *ti) {
    return ti->heap->words;
}

/* Words in use in the current space (live after a collection). */
size_t glue_heap_live(const struct thread_info *ti) {
    return (size_t)(ti->alloc - ti->heap->space);
}

/* --- Collector ------------------------------------------------------------ */

struct gc_state {
    struct thread_info *ti;
    uval from, from_end;
};

/* Copies the block v points to out of from-space (once) and returns its new
 * address; anything else (ints, caller memory) is returned unchanged. */
static value forward(struct gc_state *gc, value v) {
    value *p = (value *)v, *dst;
    size_t n;

    if (Is_long(v) || (uval)v <= gc->from || (uval)v >= gc->from_end)
        return v;
    if (p[-1] == 0)                     /* already copied: p[0] is where */
        return p[0];
    n = Wosize_hd(p[-1]);
    dst = gc->ti->alloc;
    memcpy(dst, p - 1, (n + 1) * sizeof(value));
    gc->ti->alloc = dst + n + 1;
    p[-1] = 0;
    p[0] = (value)(dst + 1);
    return (value)(dst + 1);
}

/* fn blocks that did not survive release their host reference. */
static void sweep_fns(struct gc_state *gc) {
    struct glue_heap *h = gc->ti->heap;
    size_t j = 0;

    for (size_t i = 0; i < h->nfns; i++) {
        value f = h->fns[i];
        if ((uval)f > gc->from && (uval)f < gc->from_end) {
            if (Hd_val(f) != 0) {
                if (gc->ti->release)
                    gc->ti->release(gc->ti->host, glue_fn_ref(f));
                continue;
            }
            f = Field(f, 0);
        }
        h->fns[j++] = f;
    }
    h->nfns = j;
}

/* Copies everything reachable from the roots into a new space of `words`
 * words (Cheney: breadth first, no recursion). -1 if out of memory. */
static int copy_into(struct thread_info *ti, size_t words) {
    struct glue_heap *h = ti->heap;
    struct gc_state gc = {ti, (uval)h->space, (uval)ti->alloc};
    value *to = malloc(words * sizeof(value)), *scan;

    if (to == NULL)
        return -1;
    ti->alloc = scan = to;
    for (int i = 0; i < h->nroots; i++)
        if (h->roots[i] != 0)
            h->roots[i] = forward(&gc, h->roots[i]);
    while (scan < ti->alloc) {
        header_t hd = *scan;
        size_t n = Wosize_hd(hd);
        if (!No_scan(Tag_hd(hd)))
            for (size_t i = 1; i <= n; i++)
                scan[i] = forward(&gc, scan[i]);
        scan += n + 1;
    }
    sweep_fns(&gc);
    free(h->space);
    h->space = to;
    h->words = words;
    ti->limit = to + words;
    return 0;
}

/* Collects, then makes sure `need` words are free. Without may_grow it
 * fails (-1) when the space stays more than half full, so the caller can
 * drop roots (run Lua's collector) before growing; with may_grow it grows
 * the space up to the cap and fails only when the cap is reached. */
int glue_collect(struct thread_info *ti, size_t need, int may_grow) {
    struct glue_heap *h = ti->heap;
    size_t live, words;

    if (copy_into(ti, h->words) < 0)
        return -1;
    live = glue_heap_live(ti);
    if (live + need <= h->words / 8 && h->words > GLUE_NURSERY) {
        words = 4 * (live + need);      /* mostly garbage: shrink */
        return copy_into(ti, words > GLUE_NURSERY ? words : GLUE_NURSERY);
    }
    if (live + need <= h->words / 2)
        return 0;
    if (!may_grow)
        return -1;
    words = 2 * (live + need) > 2 * h->words ? 2 * (live + need)
                                              : 2 * h->words;
    if (words > h->max)
        words = h->max;
    if (live + need > words) {
        errno = ENOMEM;
        return -1;
    }
    return words == h->words ? 0 : copy_into(ti, words);
}

/* Ensures `need` free words, collecting and growing as needed; a GC point:
 * only values in root slots survive it. 0, or -1 when the cap is hit. */
int glue_reserve(struct thread_info *ti, size_t need) {
    if ((size_t)(ti->limit - ti->alloc) >= need)
        return 0;
    return glue_collect(ti, need, 1) < 0 ? -1 : 0;
}

/* Allocates a block of `words` fields (at least one) with the given tag;
 * returns a pointer to its first field, or NULL when there is no room
 * (no collection happens here). */
value *glue_alloc(struct thread_info *ti, size_t words, unsigned int tag) {
    value *p = ti->alloc;

    if (words == 0)
        words = 1;
    if ((size_t)(ti->limit - p) < words + 1)
        return NULL;
    p[0] = Make_header(words, tag);
    ti->alloc = p + words + 1;
    ti->nalloc += words + 1;
    return p + 1;
}

/* --- Roots ---------------------------------------------------------------- */

/* Makes v a root; returns its slot, or -1 when out of memory. */
int glue_root(struct thread_info *ti, value v) {
    struct glue_heap *h = ti->heap;
    int slot;

    if (h->nfree > 0) {
        slot = h->free[--h->nfree];
    } else {
        if (h->nroots == h->caproots) {
            int cap = h->caproots ? 2 * h->caproots : 64;
            value *r = realloc(h->roots, (size_t)cap * sizeof *r);
            int *f = r ? realloc(h->free, (size_t)cap * sizeof *f) : NULL;
            if (r)
                h->roots = r;
            if (f == NULL)
                return -1;
            h->free = f;
            h->caproots = cap;
        }
        slot = h->nroots++;
    }
    h->roots[slot] = v;
    return slot;
}

/* The current value of a root (it moves when the heap is collected). */
value glue_root_get(const struct thread_info *ti, int slot) {
    return ti->heap->roots[slot];
}

/* Releases a root slot; its value may be collected from now on. */
void glue_unroot(struct thread_info *ti, int slot) {
    struct glue_heap *h = ti->heap;

    if (slot < 0 || slot >= h->nroots || h->roots[slot] == 0)
        return;
    h->roots[slot] = 0;
    h->free[h->nfree++] = slot;
}

/* --- Strings and fn values ------------------------------------------------ */

/* A string block holding len bytes (OCaml layout: zero padding, the last
 * byte counts the padding); 0 when there is no room. */
value glue_make_string(struct thread_info *ti, const char *s, size_t len) {
    size_t words = len / sizeof(value) + 1;
    value *p = glue_alloc(ti, words, String_tag);
    char *b = (char *)p;

    if (p == NULL)
        return 0;
    p[words - 1] = 0;
    if (len)
        memcpy(b, s, len);
    b[words * sizeof(value) - 1] = (char)(words * sizeof(value) - 1 - len);
    return (value)p;
}

/* The bytes of a string block, their count in *len (not terminated). */
const char *glue_string(value v, size_t *len) {
    size_t bytes = Wosize_val(v) * sizeof(value);
    const unsigned char *b = (const unsigned char *)v;

    *len = bytes - 1 - b[bytes - 1];
    return (const char *)b;
}

/* A fn value holding a host reference (ti owns it from now on and hands
 * it to ti->release when the block dies); 0 when there is no room or
 * memory (the reference stays the caller's). */
value glue_make_fn(struct thread_info *ti, intptr_t ref) {
    struct glue_heap *h = ti->heap;
    value *p;

    if (h->nfns == h->capfns) {
        size_t cap = h->capfns ? 2 * h->capfns : 16;
        value *f = realloc(h->fns, cap * sizeof *f);
        if (f == NULL)
            return 0;
        h->fns = f;
        h->capfns = cap;
    }
    p = glue_alloc(ti, 1, Fn_tag);
    if (p == NULL)
        return 0;
    p[0] = Val_long(ref);
    h->fns[h->nfns++] = (value)p;
    return (value)p;
}

/* The host reference a fn value holds. */
intptr_t glue_fn_ref(value fn) {
    return Long_val(Field(fn, 0));
}

/* 1 when a and b are the same value (structurally; fn values: the same
 * function, as ti->same says; without a host, none is), 0 when not, -1
 * when out of memory. No recursion. */
int glue_equal(struct thread_info *ti, value a, value b) {
    size_t n = 0, cap = 64;
    value *st = malloc(cap * 2 * sizeof *st);
    int eq = 1;

    if (st == NULL)
        return -1;
    st[n++] = a, st[n++] = b;
    while (eq && n > 0) {
        value y = st[--n], x = st[--n];
        if (x == y)
            continue;
        if (Is_long(x) || Is_long(y) || Hd_val(x) != Hd_val(y)) {
            eq = 0;
        } else if (Tag_val(x) == Fn_tag) {
            eq = ti && ti->same &&
                 ti->same(ti->host, glue_fn_ref(x), glue_fn_ref(y));
        } else if (No_scan(Tag_val(x))) {
            eq = memcmp((void *)x, (void *)y,
                        Wosize_val(x) * sizeof(value)) == 0;
        } else {
            size_t k = Wosize_val(x);
            if (n + 2 * k > cap * 2) {
                value *s;
                cap = cap * 2 + k;
                s = realloc(st, cap * 2 * sizeof *st);
                if (s == NULL) {
                    free(st);
                    return -1;
                }
                st = s;
            }
            for (size_t i = 0; i < k; i++)
                st[n++] = Field(x, i), st[n++] = Field(y, i);
        }
    }
    free(st);
    return eq;
}

/* --- Registry ----------------------------------------------------------- */

/* Registers t (after the generated types); -1 when out of memory. */
int glue_add_type(struct thread_info *ti, const struct glue_type *t) {
    struct glue_registry *r = ti->reg;

    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        const struct glue_type **ts = realloc(r->types,
                                              (size_t)cap * sizeof *ts);
        if (ts == NULL)
            return -1;
        r->types = ts;
        r->cap = cap;
    }
    r->types[r->n++] = t;
    return 0;
}

/* Takes ownership of a malloc'd block (freed with ti); returns it, or NULL
 * (and frees it) when out of memory. */
void *glue_keep(struct thread_info *ti, void *block) {
    struct glue_registry *r = ti->reg;

    if (block == NULL)
        return NULL;
    if (r->nkept == r->capkept) {
        int cap = r->capkept ? 2 * r->capkept : 64;
        void **k = realloc(r->kept, (size_t)cap * sizeof *k);
        if (k == NULL) {
            free(block);
            return NULL;
        }
        r->kept = k;
        r->capkept = cap;
    }
    r->kept[r->nkept++] = block;
    return block;
}

/* The number of registered types; glue_type_at(ti, i) walks them. */
int glue_ntypes(struct thread_info *ti) {
    return ti->reg->n;
}

/* The i-th registered type (generated ones first), or NULL. */
const struct glue_type *glue_type_at(struct thread_info *ti, int i) {
    return i >= 0 && i < ti->reg->n ? ti->reg->types[i] : NULL;
}

/* The registered type called name, or NULL. */
const struct glue_type *glue_find_type(struct thread_info *ti,
                                       const char *name) {
    for (int i = 0; i < ti->reg->n; i++)
        if (strcmp(ti->reg->types[i]->name, name) == 0)
            return ti->reg->types[i];
    return NULL;
}

/* The type declaring constructor `name` (names are unique across types),
 * with the constructor in *c; NULL if none. */
const struct glue_type *glue_find_ctor(struct thread_info *ti,
                                       const char *name,
                                       const struct glue_ctor **c) {
    for (int i = 0; i < ti->reg->n; i++) {
        const struct glue_type *t = ti->reg->types[i];
        for (unsigned int j = 0; j < t->nctors; j++)
            if (strcmp(t->ctors[j].name, name) == 0) {
                *c = &t->ctors[j];
                return t;
            }
    }
    return NULL;
}

/* The tag of v as a value of t (GLUE_NO_TAG if v is none of t's). */
unsigned int glue_tag(const struct glue_type *t, value v) {
    int boxed = Is_block(v) && v != 0;
    uval ord = boxed ? get_boxed_ordinal(v) : get_unboxed_ordinal(v);

    for (unsigned int i = 0; i < t->nctors; i++)
        if ((t->ctors[i].arity > 0) == boxed && t->ctors[i].ordinal == ord)
            return (!boxed || Wosize_val(v) == t->ctors[i].arity)
                       ? i : GLUE_NO_TAG;
    return GLUE_NO_TAG;
}

/* The constructor of v as a value of t, or NULL if it is none of t's. */
const struct glue_ctor *glue_ctor_of(const struct glue_type *t, value v) {
    unsigned int tag = glue_tag(t, v);
    return tag == GLUE_NO_TAG ? NULL : &t->ctors[tag];
}
