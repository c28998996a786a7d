/* Glue type terms: interning, substitution of parameters, joining partly
 * known types (_), formatting and parsing ("list (option int)"). */
#include <ctype.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"

#define TY_BUCKETS      4096
#define TY_PARAMS       16

const struct glue_ty glue_ty_int = {GLUE_INT, 0, NULL, 0, NULL, 0};
const struct glue_ty glue_ty_string = {GLUE_STRING, 0, NULL, 0, NULL, 0};
const struct glue_ty glue_ty_fn = {GLUE_FN, 0, NULL, 0, NULL, 0};
const struct glue_ty glue_ty_any = {GLUE_ANY, 0, NULL, 0, NULL, 0};

static const struct glue_ty ty_params[TY_PARAMS] = {
    GLUE_PARAM_TY(0), GLUE_PARAM_TY(1), GLUE_PARAM_TY(2), GLUE_PARAM_TY(3),
    GLUE_PARAM_TY(4), GLUE_PARAM_TY(5), GLUE_PARAM_TY(6), GLUE_PARAM_TY(7),
    GLUE_PARAM_TY(8), GLUE_PARAM_TY(9), GLUE_PARAM_TY(10), GLUE_PARAM_TY(11),
    GLUE_PARAM_TY(12), GLUE_PARAM_TY(13), GLUE_PARAM_TY(14),
    GLUE_PARAM_TY(15)
};

/* Interned applications, shared by every thread_info of the process (the
 * terms are immutable and few; glue_ty_free_all releases them). */
struct ty_node {
    struct ty_node *next;
    struct glue_ty ty;
    const struct glue_ty *argv[];
};

static struct ty_node *buckets[TY_BUCKETS];

static size_t ty_hash(const struct glue_type *t, int nargs,
                      const struct glue_ty *const *args) {
    size_t h = (size_t)(uintptr_t)t;

    for (int i = 0; i < nargs; i++)
        h = h * 31 + (size_t)(uintptr_t)args[i];
    return (h ^ (h >> 7) ^ (h >> 17)) % TY_BUCKETS;
}

/* The interned term t applied to args (interned terms themselves); NULL
 * when out of memory or nested deeper than GLUE_TY_DEPTH. */
const struct glue_ty *glue_ty_app(const struct glue_type *t, int nargs,
                                  const struct glue_ty *const *args) {
    size_t h = ty_hash(t, nargs, args);
    struct ty_node *n;
    int depth = 0;

    for (int i = 0; i < nargs; i++) {
        if (args[i] == NULL)
            return NULL;
        if (args[i]->depth + 1 > depth)
            depth = args[i]->depth + 1;
    }
    if (depth > GLUE_TY_DEPTH)
        return NULL;
    for (n = buckets[h]; n; n = n->next)
        if (n->ty.type == t && n->ty.nargs == nargs &&
            (nargs == 0 || memcmp(n->argv, args, nargs * sizeof *args) == 0))
            return &n->ty;
    n = malloc(sizeof *n + (size_t)nargs * sizeof *args);
    if (n == NULL)
        return NULL;
    if (nargs)
        memcpy(n->argv, args, (size_t)nargs * sizeof *args);
    n->ty = (struct glue_ty){GLUE_APP, 0, t, nargs, n->argv, depth};
    n->next = buckets[h];
    buckets[h] = n;
    return &n->ty;
}

/* The term for parameter i of a declaration (i < 16), or NULL. */
const struct glue_ty *glue_ty_param(int i) {
    return i >= 0 && i < TY_PARAMS ? &ty_params[i] : NULL;
}

static const struct glue_ty *base_of(int kind) {
    switch (kind) {
    case GLUE_INT: return &glue_ty_int;
    case GLUE_STRING: return &glue_ty_string;
    case GLUE_FN: return &glue_ty_fn;
    default: return &glue_ty_any;
    }
}

/* t (a declaration's field type) with parameter i replaced by env[i]
 * (kept when env is NULL); the result is interned. NULL on failure. */
const struct glue_ty *glue_ty_subst(const struct glue_ty *t,
                                    const struct glue_ty *const *env) {
    const struct glue_ty *args[TY_PARAMS];

    switch (t->kind) {
    case GLUE_PARAM:
        return env ? env[t->param] : glue_ty_param(t->param);
    case GLUE_APP:
        if (t->nargs > TY_PARAMS)
            return NULL;
        for (int i = 0; i < t->nargs; i++)
            args[i] = glue_ty_subst(t->args[i], env);
        return glue_ty_app(t->type, t->nargs, args);
    default:
        return base_of(t->kind);
    }
}

/* The more precise of two compatible terms (_ joins anything); NULL when
 * they disagree. */
const struct glue_ty *glue_ty_join(const struct glue_ty *a,
                                   const struct glue_ty *b) {
    const struct glue_ty *args[TY_PARAMS];

    if (a == b || b->kind == GLUE_ANY)
        return a;
    if (a->kind == GLUE_ANY)
        return b;
    if (a->kind != GLUE_APP || b->kind != GLUE_APP || a->type != b->type ||
        a->nargs != b->nargs || a->nargs > TY_PARAMS)
        return NULL;
    for (int i = 0; i < a->nargs; i++)
        if ((args[i] = glue_ty_join(a->args[i], b->args[i])) == NULL)
            return NULL;
    return glue_ty_app(a->type, a->nargs, args);
}

/* Unifies a declaration's field type with the type t of an argument,
 * refining env (the declaration's parameters, _ when unknown). 0 on
 * success, -1 when t does not fit. */
int glue_ty_match(const struct glue_ty *decl, const struct glue_ty *t,
                  const struct glue_ty **env) {
    const struct glue_ty *j;

    switch (decl->kind) {
    case GLUE_PARAM:
        if ((j = glue_ty_join(env[decl->param], t)) == NULL)
            return -1;
        env[decl->param] = j;
        return 0;
    case GLUE_APP:
        if (t->kind == GLUE_ANY)
            return 0;
        if (t->kind != GLUE_APP || t->type != decl->type ||
            t->nargs != decl->nargs)
            return -1;
        for (int i = 0; i < decl->nargs; i++)
            if (glue_ty_match(decl->args[i], t->args[i], env) < 0)
                return -1;
        return 0;
    default:
        return (t->kind == decl->kind || t->kind == GLUE_ANY) ? 0 : -1;
    }
}

struct tybuf {
    char *buf;
    size_t len, n;
};

static void put(struct tybuf *b, const char *s) {
    size_t k = strlen(s);

    if (b->len > 0 && b->n < b->len - 1) {
        size_t room = b->len - 1 - b->n;
        memcpy(b->buf + b->n, s, k < room ? k : room);
        b->buf[b->n + (k < room ? k : room)] = '\0';
    }
    b->n += k;
}

static void format(struct tybuf *b, const struct glue_ty *t, int nested) {
    switch (t->kind) {
    case GLUE_INT: put(b, "int"); return;
    case GLUE_STRING: put(b, "string"); return;
    case GLUE_FN: put(b, "fn"); return;
    case GLUE_APP: break;
    default: put(b, "_"); return;
    }
    if (nested && t->nargs > 0)
        put(b, "(");
    put(b, t->type->name);
    for (int i = 0; i < t->nargs; i++) {
        put(b, " ");
        format(b, t->args[i], 1);
    }
    if (nested && t->nargs > 0)
        put(b, ")");
}

/* Writes t as text ("list (option int)") like snprintf: returns the full
 * length, writes at most len bytes including the terminating zero. */
size_t glue_ty_format(char *buf, size_t len, const struct glue_ty *t) {
    struct tybuf b = {buf, len, 0};

    if (len > 0)
        buf[0] = '\0';
    format(&b, t, 0);
    return b.n;
}

/* Frees every interned term (at exit: for leak checkers). No term made
 * before may be used after. */
void glue_ty_free_all(void) {
    for (int i = 0; i < TY_BUCKETS; i++) {
        while (buckets[i]) {
            struct ty_node *n = buckets[i];
            buckets[i] = n->next;
            free(n);
        }
    }
}

/* --- Parsing "list (option int)" --------------------------------------- */

struct typarse {
    struct thread_info *ti;
    const char *s;
    size_t pos;
    char *err;
    size_t errlen;
    int failed;
};

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static const struct glue_ty *typarse_fail(struct typarse *p,
                                          const char *fmt, ...) {
    va_list ap;

    if (!p->failed && p->errlen > 0) {
        int n = snprintf(p->err, p->errlen, "column %zu: ", p->pos + 1);
        va_start(ap, fmt);
        if (n >= 0 && (size_t)n < p->errlen)
            vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    p->failed = 1;
    return NULL;
}

static void typarse_skip(struct typarse *p) {
    while (isspace((unsigned char)p->s[p->pos]))
        p->pos++;
}

static size_t typarse_ident(struct typarse *p, char *name, size_t len) {
    size_t n = 0;
    const char *s = p->s + p->pos;

    if (isalpha((unsigned char)s[0]) || s[0] == '_')
        while (isalnum((unsigned char)s[n]) || s[n] == '_')
            n++;
    if (n == 0 || n >= len)
        return 0;
    memcpy(name, s, n);
    name[n] = '\0';
    p->pos += n;
    return n;
}

static const struct glue_ty *typarse_expr(struct typarse *p, int depth,
                                          int atom);

static const struct glue_ty *typarse_named(struct typarse *p, int depth,
                                           int atom) {
    const struct glue_ty *args[TY_PARAMS], *r;
    const struct glue_type *t;
    char name[128];
    size_t at = p->pos;
    int n = 0;

    if (typarse_ident(p, name, sizeof name) == 0)
        return typarse_fail(p, "expected a type");
    if (strcmp(name, "int") == 0) return &glue_ty_int;
    if (strcmp(name, "string") == 0) return &glue_ty_string;
    if (strcmp(name, "fn") == 0) return &glue_ty_fn;
    if (strcmp(name, "_") == 0) return &glue_ty_any;
    if ((t = glue_find_type(p->ti, name)) == NULL) {
        p->pos = at;
        return typarse_fail(p, "unknown type %s", name);
    }
    for (typarse_skip(p); !atom && n < TY_PARAMS && p->s[p->pos] &&
         p->s[p->pos] != ')'; typarse_skip(p))
        if ((args[n++] = typarse_expr(p, depth + 1, 1)) == NULL)
            return NULL;
    if (n == 0)                         /* "list": list _ */
        for (; n < t->nparams; n++)
            args[n] = &glue_ty_any;
    if (n != t->nparams) {
        p->pos = at;
        return typarse_fail(p, "%s expects %d argument%s, got %d", name,
                            t->nparams, t->nparams == 1 ? "" : "s", n);
    }
    if ((r = glue_ty_app(t, n, args)) == NULL)
        return typarse_fail(p, "type nested too deeply");
    return r;
}

static const struct glue_ty *typarse_expr(struct typarse *p, int depth,
                                          int atom) {
    const struct glue_ty *t;

    typarse_skip(p);
    if (depth > GLUE_TY_DEPTH)
        return typarse_fail(p, "type nested too deeply");
    if (p->s[p->pos] != '(')
        return typarse_named(p, depth, atom);
    p->pos++;
    if ((t = typarse_expr(p, depth + 1, 0)) == NULL)
        return NULL;
    typarse_skip(p);
    if (p->s[p->pos] != ')')
        return typarse_fail(p, "expected ')'");
    p->pos++;
    return t;
}

/* Parses a type term ("list int", "prod (list _) string", "option" meaning
 * option _); NULL with a message "column N: ..." in err on error. */
const struct glue_ty *glue_ty_parse(struct thread_info *ti, const char *s,
                                    char *err, size_t errlen) {
    struct typarse p = {ti, s, 0, err, errlen, 0};
    const struct glue_ty *t = typarse_expr(&p, 0, 0);

    if (t == NULL)
        return NULL;
    typarse_skip(&p);
    if (s[p.pos] != '\0')
        return typarse_fail(&p, "unexpected '%c'", s[p.pos]);
    return t;
}
