/* Glue declarations: parses "Inductive T (A) := C (f : A)." text into
 * type descriptors and registers them, all or nothing. The one parser of
 * the syntax: glue.declare's, and the generator's (through glue-decl). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"

#define DECL_MAX_PARAMS 16
#define DECL_MAX_NAME   127     /* what the reader and glue_ty_parse take */

enum dtok { D_EOF, D_IDENT, D_DEF, D_OPEN, D_CLOSE, D_COLON, D_BAR, D_DOT };

struct dparse {
    struct thread_info *ti;
    const char *s;
    size_t len, pos;
    enum dtok tok;
    size_t start;               /* current token: [start, pos) */
    const char *chunk;
    char *err;
    size_t errlen;
    void **mem;                 /* everything allocated, freed on error */
    size_t nmem, capmem;
    struct glue_type **types;   /* declared by this text, registered at end */
    int ntypes, captypes;
};

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int dfail(struct dparse *p, size_t at, const char *fmt, ...) {
    size_t line = 1, col = 1;
    va_list ap;
    int n;

    for (size_t i = 0; i < at && i < p->len; i++, col++)
        if (p->s[i] == '\n')
            line++, col = 0;
    n = snprintf(p->err, p->errlen, "%s:%zu:%zu: ", p->chunk, line, col);
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < p->errlen)
        vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

/* malloc that remembers the block (NULL when out of memory). */
static void *dalloc(struct dparse *p, size_t size) {
    void *b;

    if (p->nmem == p->capmem) {
        size_t cap = p->capmem ? 2 * p->capmem : 32;
        void **m = realloc(p->mem, cap * sizeof *m);
        if (m == NULL)
            return NULL;
        p->mem = m;
        p->capmem = cap;
    }
    if ((b = calloc(1, size ? size : 1)) == NULL)
        return NULL;
    p->mem[p->nmem++] = b;
    return b;
}

static void *dgrow(struct dparse *p, void *old, size_t size) {
    void *b = dalloc(p, size);

    if (b && old)
        memcpy(b, old, size / 2);       /* callers double the size */
    return b;
}

static char *dstrndup(struct dparse *p, const char *s, size_t n) {
    char *d = dalloc(p, n + 1);

    if (d)
        memcpy(d, s, n);
    return d;
}

static int is_ident(int c, int first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

/* Skips blanks and (* nested comments *). */
static int dskip(struct dparse *p) {
    for (;;) {
        while (p->pos < p->len && strchr(" \t\r\n\f\v", p->s[p->pos]) &&
               p->s[p->pos] != '\0')
            p->pos++;
        if (p->pos + 1 >= p->len || p->s[p->pos] != '(' ||
            p->s[p->pos + 1] != '*')
            return 0;
        size_t at = p->pos, depth = 0;
        do {
            if (p->pos + 1 >= p->len)
                return dfail(p, at, "unterminated comment");
            if (p->s[p->pos] == '(' && p->s[p->pos + 1] == '*')
                depth++, p->pos += 2;
            else if (p->s[p->pos] == '*' && p->s[p->pos + 1] == ')')
                depth--, p->pos += 2;
            else
                p->pos++;
        } while (depth > 0);
    }
}

static int dlex(struct dparse *p) {
    static const char punct[] = "():|.";
    static const enum dtok kinds[] = {D_OPEN, D_CLOSE, D_COLON, D_BAR, D_DOT};
    const char *c;

    if (dskip(p) < 0)
        return -1;
    p->start = p->pos;
    if (p->pos >= p->len)
        return p->tok = D_EOF, 0;
    if (is_ident((unsigned char)p->s[p->pos], 1)) {
        while (p->pos < p->len && is_ident((unsigned char)p->s[p->pos], 0))
            p->pos++;
        if (p->pos - p->start > DECL_MAX_NAME)
            return dfail(p, p->start, "name too long");
        return p->tok = D_IDENT, 0;
    }
    if (p->pos + 1 < p->len && p->s[p->pos] == ':' && p->s[p->pos + 1] == '=')
        return p->pos += 2, p->tok = D_DEF, 0;
    if (p->s[p->pos] != '\0' && (c = strchr(punct, p->s[p->pos])) != NULL)
        return p->pos++, p->tok = kinds[c - punct], 0;
    return dfail(p, p->pos, "unexpected character '%c'", p->s[p->pos]);
}

/* Fails with "expected <what>, got <current token>". */
static int dexpected(struct dparse *p, const char *what) {
    size_t n = p->pos - p->start;

    if (p->tok == D_EOF)
        return dfail(p, p->start, "expected %s, got end of input", what);
    if (p->tok == D_IDENT)
        return dfail(p, p->start, "expected %s, got %.*s", what, (int)n,
                     p->s + p->start);
    return dfail(p, p->start, "expected %s, got '%.*s'", what, (int)n,
                 p->s + p->start);
}

/* Requires the current token to be `tok`, then reads the next one. */
static int dexpect(struct dparse *p, enum dtok tok, const char *what) {
    if (p->tok != tok)
        return dexpected(p, what);
    return dlex(p);
}

static int tok_is(struct dparse *p, const char *word) {
    size_t n = p->pos - p->start;
    return p->tok == D_IDENT && strlen(word) == n &&
           memcmp(p->s + p->start, word, n) == 0;
}

/* The type named by the current identifier, among the registry, the
 * types of this text and the one being declared. */
static const struct glue_type *dfind_type(struct dparse *p, const char *name) {
    const struct glue_type *t = glue_find_type(p->ti, name);

    for (int i = 0; t == NULL && i < p->ntypes; i++)
        if (strcmp(p->types[i]->name, name) == 0)
            t = p->types[i];
    return t;
}

static const struct glue_ty *dtexpr(struct dparse *p,
                                    const struct glue_type *self, int depth);

/* atom := ident | '(' texpr ')', an identifier as a type of no arguments. */
static const struct glue_ty *datom(struct dparse *p,
                                   const struct glue_type *self, int depth,
                                   int head);

static const struct glue_ty *dnamed(struct dparse *p,
                                    const struct glue_type *self, int depth,
                                    int head) {
    static const struct glue_ty *const bases[] = {&glue_ty_int,
        &glue_ty_string, &glue_ty_fn};
    static const char *const names[] = {"int", "string", "fn"};
    const struct glue_ty *args[DECL_MAX_PARAMS + 1];
    const struct glue_type *t = NULL;
    const struct glue_ty *r = NULL;
    struct glue_ty *app;
    size_t at = p->start;
    char *name = dstrndup(p, p->s + p->start, p->pos - p->start);
    int want = -1, n = 0;

    if (name == NULL)
        return dfail(p, at, "out of memory"), NULL;
    for (int i = 0; i < self->nparams; i++)
        if (strcmp(self->params[i], name) == 0)
            want = 0, r = glue_ty_param(i);
    for (int i = 0; want < 0 && i < 3; i++)
        if (strcmp(names[i], name) == 0)
            want = 0, r = bases[i];
    if (want < 0) {
        t = strcmp(name, self->name) == 0 ? self : dfind_type(p, name);
        if (t == NULL)
            return dfail(p, at, "unknown type %s", name), NULL;
        want = t->nparams;
    }
    if (dlex(p) < 0)
        return NULL;
    while (head && (p->tok == D_IDENT || p->tok == D_OPEN)) {
        if (n == DECL_MAX_PARAMS)
            return dfail(p, p->start, "too many arguments"), NULL;
        if ((args[n++] = datom(p, self, depth + 1, 0)) == NULL)
            return NULL;
    }
    if (n != want)
        return dfail(p, at, "%s expects %d argument%s, got %d", name, want,
                     want == 1 ? "" : "s", n), NULL;
    if (t == NULL)
        return r;
    app = dalloc(p, sizeof *app);
    const struct glue_ty **argv = dalloc(p, (size_t)n * sizeof *argv);
    if (app == NULL || argv == NULL)
        return dfail(p, at, "out of memory"), NULL;
    memcpy(argv, args, (size_t)n * sizeof *argv);
    *app = (struct glue_ty)GLUE_APP_TY(t, n, argv);
    return app;
}

static const struct glue_ty *datom(struct dparse *p,
                                   const struct glue_type *self, int depth,
                                   int head) {
    const struct glue_ty *t;

    if (depth > GLUE_TY_DEPTH)
        return dfail(p, p->start, "type nested too deeply"), NULL;
    if (p->tok == D_IDENT)
        return dnamed(p, self, depth, head);
    if (p->tok != D_OPEN)
        return dexpected(p, "a type"), NULL;
    if (dlex(p) < 0 || (t = dtexpr(p, self, depth + 1)) == NULL)
        return NULL;
    if (dexpect(p, D_CLOSE, "')'") < 0)
        return NULL;
    return t;
}

/* texpr := ident atom* | '(' texpr ')' */
static const struct glue_ty *dtexpr(struct dparse *p,
                                    const struct glue_type *self, int depth) {
    return datom(p, self, depth, 1);
}

static int dup_ctor(struct dparse *p, const char *name,
                    const struct glue_type *self, unsigned int n) {
    const struct glue_ctor *c;
    const struct glue_type *t = glue_find_ctor(p->ti, name, &c);

    for (int i = 0; t == NULL && i < p->ntypes; i++)
        for (unsigned int j = 0; j < p->types[i]->nctors; j++)
            if (strcmp(p->types[i]->ctors[j].name, name) == 0)
                t = p->types[i];
    for (unsigned int j = 0; t == NULL && j < n; j++)
        if (strcmp(self->ctors[j].name, name) == 0)
            t = self;
    if (t)
        return dfail(p, p->start, "duplicate constructor %s (in %s)", name,
                     t->name);
    return 0;
}

/* fields := ('(' ident+ ':' texpr ')')*, appended to c. */
static int dfields(struct dparse *p, struct glue_type *self,
                   struct glue_ctor *c) {
    size_t cap = 0;
    struct glue_field *fs = NULL;

    while (p->tok == D_OPEN) {
        unsigned int first = c->arity;
        if (dlex(p) < 0)
            return -1;
        if (p->tok != D_IDENT)
            return dexpected(p, "a field name");
        while (p->tok == D_IDENT) {
            char *name = dstrndup(p, p->s + p->start, p->pos - p->start);
            if (name == NULL)
                return dfail(p, p->start, "out of memory");
            for (unsigned int i = 0; i < c->arity; i++)
                if (strcmp(fs[i].name, name) == 0)
                    return dfail(p, p->start, "duplicate field %s in %s",
                                 name, c->name);
            if (c->arity == GLUE_MAX_ARITY)
                return dfail(p, p->start, "too many fields in %s", c->name);
            if (c->arity == cap) {
                cap = cap ? 2 * cap : 4;
                if ((fs = dgrow(p, fs, cap * sizeof *fs)) == NULL)
                    return dfail(p, p->start, "out of memory");
            }
            fs[c->arity++].name = name;
            c->fields = fs;
            if (dlex(p) < 0)
                return -1;
        }
        if (dexpect(p, D_COLON, "':'") < 0)
            return -1;
        const struct glue_ty *ty = dtexpr(p, self, 0);
        if (ty == NULL || dexpect(p, D_CLOSE, "')'") < 0)
            return -1;
        for (unsigned int i = first; i < c->arity; i++)
            fs[i].type = ty;
    }
    return 0;
}

/* ctors := '|'? ctor ('|' ctor)* '.' */
static int dctors(struct dparse *p, struct glue_type *t) {
    size_t cap = 0;
    struct glue_ctor *cs = NULL;
    unsigned int nboxed = 0, nunboxed = 0;

    if (p->tok == D_BAR && dlex(p) < 0)
        return -1;
    for (;;) {
        if (p->tok != D_IDENT)
            return dexpected(p, "a constructor name");
        if (t->nctors == GLUE_MAX_CTORS)
            return dfail(p, p->start, "too many constructors in %s", t->name);
        char *name = dstrndup(p, p->s + p->start, p->pos - p->start);
        if (name == NULL)
            return dfail(p, p->start, "out of memory");
        if (dup_ctor(p, name, t, t->nctors) < 0)
            return -1;
        if (t->nctors == cap) {
            cap = cap ? 2 * cap : 4;
            if ((cs = dgrow(p, cs, cap * sizeof *cs)) == NULL)
                return dfail(p, p->start, "out of memory");
            t->ctors = cs;
        }
        struct glue_ctor *c = &cs[t->nctors++];
        c->name = name;
        if (dlex(p) < 0 || dfields(p, t, c) < 0)
            return -1;
        c->ordinal = c->arity > 0 ? nboxed++ : nunboxed++;
        if (p->tok == D_DOT)
            return dlex(p);
        if (p->tok != D_BAR)
            return dexpected(p, "'|' or '.'");
        if (dlex(p) < 0)
            return -1;
    }
}

/* params := ('(' ident+ ')')* */
static int dparams(struct dparse *p, struct glue_type *t) {
    const char **ps = dalloc(p, DECL_MAX_PARAMS * sizeof *ps);

    if (ps == NULL)
        return dfail(p, p->start, "out of memory");
    t->params = ps;
    while (p->tok == D_OPEN) {
        if (dlex(p) < 0)
            return -1;
        if (p->tok != D_IDENT)
            return dexpected(p, "a parameter name");
        while (p->tok == D_IDENT) {
            char *name = dstrndup(p, p->s + p->start, p->pos - p->start);
            if (name == NULL)
                return dfail(p, p->start, "out of memory");
            if (!strcmp(name, "int") || !strcmp(name, "string") ||
                !strcmp(name, "fn"))
                return dfail(p, p->start, "cannot redefine base type %s",
                             name);
            for (int i = 0; i < t->nparams; i++)
                if (strcmp(ps[i], name) == 0)
                    return dfail(p, p->start, "duplicate parameter %s", name);
            if (t->nparams == DECL_MAX_PARAMS)
                return dfail(p, p->start, "too many parameters");
            ps[t->nparams++] = name;
            if (dlex(p) < 0)
                return -1;
        }
        if (dexpect(p, D_CLOSE, "')'") < 0)
            return -1;
    }
    return 0;
}

static int ddecl(struct dparse *p) {
    struct glue_type *t;
    char *name;

    if (!tok_is(p, "Inductive"))
        return dexpected(p, "'Inductive'");
    if (dlex(p) < 0)
        return -1;
    if (p->tok != D_IDENT)
        return dexpected(p, "a type name");
    if ((t = dalloc(p, sizeof *t)) == NULL ||
        (name = dstrndup(p, p->s + p->start, p->pos - p->start)) == NULL)
        return dfail(p, p->start, "out of memory");
    t->name = name;
    if (!strcmp(name, "int") || !strcmp(name, "string") || !strcmp(name, "fn"))
        return dfail(p, p->start, "cannot redefine base type %s", name);
    if (dfind_type(p, name))
        return dfail(p, p->start, "duplicate type %s", name);
    if (dlex(p) < 0 || dparams(p, t) < 0 || dexpect(p, D_DEF, "':='") < 0 ||
        dctors(p, t) < 0)
        return -1;
    if (p->ntypes == p->captypes) {
        int cap = p->captypes ? 2 * p->captypes : 4;
        struct glue_type **ts = dgrow(p, p->types, (size_t)cap * sizeof *ts);
        if (ts == NULL)
            return dfail(p, p->start, "out of memory");
        p->types = ts;
        p->captypes = cap;
    }
    p->types[p->ntypes++] = t;
    return 0;
}

/* Parses and registers the declarations in text (chunk names it in
 * messages). 0, or -1 with "chunk:line:col: message" in err and nothing
 * registered. */
int glue_declare(struct thread_info *ti, const char *text, size_t len,
                 const char *chunk, char *err, size_t errlen) {
    struct dparse p;
    int rc = 0;

    memset(&p, 0, sizeof p);
    p.ti = ti, p.s = text, p.len = len, p.chunk = chunk;
    p.err = err, p.errlen = errlen;
    if (errlen > 0)
        err[0] = '\0';
    if (dlex(&p) < 0)
        rc = -1;
    while (rc == 0 && p.tok != D_EOF)
        rc = ddecl(&p);
    for (int i = 0; rc == 0 && i < p.ntypes; i++)
        if (glue_add_type(ti, p.types[i]) < 0)
            rc = dfail(&p, p.len, "out of memory");
    for (size_t i = 0; i < p.nmem; i++) {
        if (rc == 0 && glue_keep(ti, p.mem[i]) == NULL)
            rc = -1;                    /* too late to undo: types stay */
        else if (rc < 0)
            free(p.mem[i]);
    }
    free(p.mem);
    return rc;
}
