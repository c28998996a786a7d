/* Glue values: CertiCoq's value layout, the managed heap, type descriptors,
 * printers, the reader and declarations. No Lua: a host (the Lua binding,
 * glue_lua.h) gives fn values their meaning through thread_info's hooks. */
#ifndef ECHOHOST_GLUE_H
#define ECHOHOST_GLUE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* --- Values (CertiCoq runtime/values.h) ----------------------------------
 * A value is a word. Low bit 1: an unboxed 63-bit integer or constructor
 * without arguments, (n << 1) | 1. Low bit 0: a pointer to the first field
 * of a block whose header word sits right before it. */
typedef intptr_t value;
typedef uintptr_t uval;
typedef uintptr_t header_t;

#define Is_long(v)      (((uval)(v) & 1) != 0)
#define Is_block(v)     (((uval)(v) & 1) == 0)
#define Val_long(x)     ((value)(((uval)(x) << 1) + 1))
#define Long_val(v)     ((intptr_t)(v) >> 1)
#define Hd_val(v)       (((header_t *)(v))[-1])
#define Field(v, i)     (((value *)(v))[i])
#define Tag_hd(h)       ((unsigned int)((h) & 0xFF))
#define Wosize_hd(h)    ((size_t)((h) >> 10))
#define Tag_val(v)      Tag_hd(Hd_val(v))
#define Wosize_val(v)   Wosize_hd(Hd_val(v))
#define Make_header(size, tag)  ((header_t)(size) << 10 | (header_t)(tag))

#define No_scan_tag     251     /* tags >= this: fields are not values */
#define Fn_tag          251     /* Field 0: Val_long(host reference) */
#define String_tag      252     /* bytes, OCaml padding in the last byte */
#define No_scan(t)      ((t) >= No_scan_tag)

#define GLUE_INT_MAX    ((intptr_t)(UINTPTR_MAX >> 2))
#define GLUE_INT_MIN    (-GLUE_INT_MAX - 1)
#define GLUE_NO_TAG     0xFFFFFFFFu     /* get_T_tag of a foreign value */
#define GLUE_MAX_CTORS  200             /* boxed ordinals stay below 251 */
#define GLUE_MAX_ARITY  200             /* fields of one constructor */
#define GLUE_ERR_LEN    256
#define GLUE_TY_DEPTH   100             /* deepest type term */

static inline uval get_unboxed_ordinal(value v) {
    return (uval)v >> 1;
}

static inline uval get_boxed_ordinal(value v) {
    return Hd_val(v) & 255;
}

static inline value *get_args(value v) {
    return (value *)v;
}

/* --- Type descriptors ----------------------------------------------------
 * A type term is a base type, a parameter of the declaration it appears in,
 * an application of a declared type, or "unknown" (printed _). Terms made
 * by glue_ty_app/glue_ty_subst are interned: equal terms, equal pointers. */
enum glue_kind {
    GLUE_INT, GLUE_STRING, GLUE_FN, GLUE_ANY, GLUE_PARAM, GLUE_APP
};

struct glue_type;

struct glue_ty {
    int kind;
    int param;                          /* GLUE_PARAM: index */
    const struct glue_type *type;       /* GLUE_APP */
    int nargs;
    const struct glue_ty *const *args;
    int depth;                          /* interned terms: nesting depth */
};

#define GLUE_PARAM_TY(i)        {GLUE_PARAM, (i), NULL, 0, NULL, 0}
#define GLUE_APP_TY(t, n, a)    {GLUE_APP, 0, (t), (n), (a), 0}

struct glue_field {
    const char *name;
    const struct glue_ty *type;         /* may use the type's parameters */
};

struct glue_ctor {
    const char *name;
    unsigned int arity;
    unsigned int ordinal;               /* boxed/unboxed counted apart */
    const struct glue_field *fields;
};

struct glue_type {
    const char *name;
    int nparams;
    const char *const *params;
    unsigned int nctors;
    const struct glue_ctor *ctors;      /* in declaration order: tag order */
};

extern const struct glue_ty glue_ty_int, glue_ty_string, glue_ty_fn,
    glue_ty_any;

const struct glue_ty *glue_ty_app(const struct glue_type *t, int nargs,
                                  const struct glue_ty *const *args);
const struct glue_ty *glue_ty_param(int i);
const struct glue_ty *glue_ty_subst(const struct glue_ty *t,
                                    const struct glue_ty *const *env);
const struct glue_ty *glue_ty_join(const struct glue_ty *a,
                                   const struct glue_ty *b);
int glue_ty_match(const struct glue_ty *decl, const struct glue_ty *t,
                  const struct glue_ty **env);
size_t glue_ty_format(char *buf, size_t len, const struct glue_ty *t);
void glue_ty_free_all(void);

unsigned int glue_tag(const struct glue_type *t, value v);
const struct glue_ctor *glue_ctor_of(const struct glue_type *t, value v);

/* --- Thread info and the managed heap ------------------------------------
 * Bump allocation in [alloc, limit) as in CertiCoq; a copying collector
 * (Cheney, no recursion) whose roots are the slots of glue_root. */
struct glue_heap;
struct glue_registry;

struct thread_info;

/* The host of fn values (a Lua state for the Lua binding): a fn block
 * holds one of its references, an integer. The runtime calls out when a
 * fn block dies (release) and to compare two of them (same: 1 when the
 * references name one function). Both may be NULL (no host). */
typedef void glue_release_fn(void *host, intptr_t ref);
typedef int glue_same_fn(void *host, intptr_t a, intptr_t b);

struct thread_info {
    value *alloc;
    value *limit;
    struct glue_heap *heap;
    size_t nalloc;                      /* words allocated, ever */
    void *host;                         /* owner of fn references */
    glue_release_fn *release;
    glue_same_fn *same;
    int raised;                         /* set by a host's call() ... */
    char error[GLUE_ERR_LEN];           /* ... and why */
    struct glue_registry *reg;          /* generated and declared types */
};

/* The heap's first size in words, below which it never shrinks: the
 * least cap glue_set_heap_max can honour. */
#define GLUE_HEAP_MIN   ((size_t)1 << 16)

struct thread_info *make_tinfo(void);
void free_tinfo(struct thread_info *ti);
size_t glue_set_heap_max(struct thread_info *ti, size_t words);
size_t glue_heap_words(const struct thread_info *ti);
size_t glue_heap_live(const struct thread_info *ti);
int glue_collect(struct thread_info *ti, size_t need, int may_grow);
int glue_reserve(struct thread_info *ti, size_t need);
value *glue_alloc(struct thread_info *ti, size_t words, unsigned int tag);

int glue_root(struct thread_info *ti, value v);
value glue_root_get(const struct thread_info *ti, int slot);
void glue_unroot(struct thread_info *ti, int slot);

value glue_make_string(struct thread_info *ti, const char *s, size_t len);
const char *glue_string(value v, size_t *len);
value glue_make_fn(struct thread_info *ti, intptr_t ref);
intptr_t glue_fn_ref(value fn);
int glue_equal(struct thread_info *ti, value a, value b);

/* --- Type registry: generated types (registered by their NAME_register)
 * plus those declared at run time --------------------------------------- */
const struct glue_type *glue_find_type(struct thread_info *ti,
                                       const char *name);
const struct glue_type *glue_find_ctor(struct thread_info *ti,
                                       const char *name,
                                       const struct glue_ctor **c);
int glue_declare(struct thread_info *ti, const char *text, size_t len,
                 const char *chunk, char *err, size_t errlen);
int glue_add_type(struct thread_info *ti, const struct glue_type *t);
void *glue_keep(struct thread_info *ti, void *block);
int glue_ntypes(struct thread_info *ti);
const struct glue_type *glue_type_at(struct thread_info *ti, int i);
const struct glue_ty *glue_ty_parse(struct thread_info *ti, const char *s,
                                    char *err, size_t errlen);

/* --- Printers and reader ------------------------------------------------- */
typedef void glue_printer(value v);

void glue_print_with(value v, const struct glue_type *t,
                     glue_printer *const *printers);
int glue_fprint(FILE *f, value v, const struct glue_ty *ty);
size_t glue_sprint(char *buf, size_t len, value v, const struct glue_ty *ty);
char *glue_aprint(value v, const struct glue_ty *ty, size_t *len);
size_t glue_read_bound(const char *text, size_t len);
int glue_read(struct thread_info *ti, const char *text, size_t len,
              const struct glue_ty *expect, value *out,
              const struct glue_ty **outty, char *err, size_t errlen);

void print_int(value v);
void print_string(value v);
void print_fn(value v);

#endif
