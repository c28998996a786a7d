/* Glue printers (S-expressions to a FILE *, a buffer or a malloc'd string)
 * and the reader; both walk values with explicit stacks, never recursion. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"

/* Grows *p (an array of elsize-byte items, capacity *cap) to hold need. */
static int grow(void *pp, size_t *cap, size_t need, size_t elsize) {
    void **p = pp;
    size_t n = *cap ? *cap : 64;
    void *q;

    if (need <= *cap)
        return 0;
    while (n < need)
        n *= 2;
    if ((q = realloc(*p, n * elsize)) == NULL)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}

/* --- Printer ------------------------------------------------------------ */

struct sink {
    FILE *f;                    /* a stream, or */
    char *buf;                  /* a buffer of len bytes (growing if dyn) */
    size_t len, n;
    int dyn;
    int failed;
};

static void emit(struct sink *s, const char *p, size_t k) {
    if (s->f) {
        if (fwrite(p, 1, k, s->f) != k)
            s->failed = 1;
        return;
    }
    if (s->dyn && grow(&s->buf, &s->len, s->n + k + 1, 1) < 0) {
        s->failed = 1;
        return;
    }
    if (s->n < s->len) {
        size_t room = s->len - 1 - s->n;
        memcpy(s->buf + s->n, p, k < room ? k : room);
        s->buf[s->n + (k < room ? k : room)] = '\0';
    }
    s->n += k;
}

static void emits(struct sink *s, const char *p) {
    emit(s, p, strlen(p));
}

/* "..." with every byte that is not printable ASCII escaped. */
static void emit_string(struct sink *s, value v) {
    size_t len;
    const char *p = glue_string(v, &len);
    char esc[8];

    emit(s, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        switch (c) {
        case '"': emit(s, "\\\"", 2); break;
        case '\\': emit(s, "\\\\", 2); break;
        case '\n': emit(s, "\\n", 2); break;
        case '\t': emit(s, "\\t", 2); break;
        case '\r': emit(s, "\\r", 2); break;
        default:
            if (c >= 0x20 && c < 0x7f) {
                emit(s, (const char *)&p[i], 1);
            } else {
                snprintf(esc, sizeof esc, "\\x%02x", c);
                emit(s, esc, 4);
            }
        }
    }
    emit(s, "\"", 1);
}

struct pframe {
    value v;
    const struct glue_ty *ty;           /* an application: the env */
    const struct glue_ctor *c;
    unsigned int next;
};

struct printer {
    struct sink *s;
    glue_printer *const *printers;      /* for parameters, or NULL */
    struct pframe *st;
    size_t n, cap;
};

/* Prints an atom, or opens a frame for a boxed constructor. */
static void print_item(struct printer *pr, value v, const struct glue_ty *ty) {
    struct sink *s = pr->s;
    const struct glue_ctor *c;
    char num[32];

    switch (ty ? ty->kind : GLUE_ANY) {
    case GLUE_INT:
        snprintf(num, sizeof num, "%" PRIdPTR, Long_val(v));
        emits(s, Is_long(v) ? num : "<bad>");
        return;
    case GLUE_STRING:
        if (Is_block(v) && v != 0 && Tag_val(v) == String_tag)
            emit_string(s, v);
        else
            emits(s, "<bad>");
        return;
    case GLUE_FN:
        emits(s, "<fun>");
        return;
    case GLUE_PARAM:
        if (pr->printers && pr->printers[ty->param]) {
            if (s->f)
                fflush(s->f);
            pr->printers[ty->param](v);
            return;
        }
        emits(s, "<unk>");
        return;
    case GLUE_APP:
        break;
    default:
        emits(s, "<unk>");
        return;
    }
    if ((c = glue_ctor_of(ty->type, v)) == NULL) {
        emits(s, "<bad>");
    } else if (c->arity == 0) {
        emits(s, c->name);
    } else if (grow(&pr->st, &pr->cap, pr->n + 1, sizeof *pr->st) < 0) {
        s->failed = 1;
    } else {
        emit(s, "(", 1);
        emits(s, c->name);
        pr->st[pr->n++] = (struct pframe){v, ty, c, 0};
    }
}

static int print_value(struct sink *s, value v, const struct glue_ty *ty,
                       glue_printer *const *printers) {
    struct printer pr = {s, printers, NULL, 0, 0};

    print_item(&pr, v, ty);
    while (pr.n > 0 && !s->failed) {
        struct pframe *f = &pr.st[pr.n - 1];
        if (f->next == f->c->arity) {
            emit(s, ")", 1);
            pr.n--;
            continue;
        }
        const struct glue_field *fd = &f->c->fields[f->next];
        value child = Field(f->v, f->next++);
        const struct glue_ty *cty = glue_ty_subst(fd->type, f->ty->args);
        emit(s, " ", 1);
        print_item(&pr, child, cty);
    }
    free(pr.st);
    return s->failed ? -1 : 0;
}

/* Prints v, of type ty, to f. 0, or -1 on a write error or no memory. */
int glue_fprint(FILE *f, value v, const struct glue_ty *ty) {
    struct sink s = {f, NULL, 0, 0, 0, 0};
    return print_value(&s, v, ty, NULL);
}

/* Prints v into buf like snprintf: returns the full length, writes at most
 * len bytes including the terminating zero ((size_t)-1: no memory). */
size_t glue_sprint(char *buf, size_t len, value v, const struct glue_ty *ty) {
    struct sink s = {NULL, buf, len, 0, 0, 0};

    if (len > 0)
        buf[0] = '\0';
    return print_value(&s, v, ty, NULL) < 0 ? (size_t)-1 : s.n;
}

/* Prints v into a new malloc'd string (its length in *len); NULL when out
 * of memory. The caller frees it. */
char *glue_aprint(value v, const struct glue_ty *ty, size_t *len) {
    struct sink s = {NULL, NULL, 0, 0, 1, 0};

    if (grow(&s.buf, &s.len, 64, 1) < 0)
        return NULL;
    s.buf[0] = '\0';
    if (print_value(&s, v, ty, NULL) < 0) {
        free(s.buf);
        return NULL;
    }
    *len = s.n;
    return s.buf;
}

/* CertiCoq's print_T: prints v (a value of t) on stdout, the type's
 * parameters with the given printers. */
void glue_print_with(value v, const struct glue_type *t,
                     glue_printer *const *printers) {
    const struct glue_ty *params[16];
    struct sink s = {stdout, NULL, 0, 0, 0, 0};

    for (int i = 0; i < t->nparams && i < 16; i++)
        params[i] = glue_ty_param(i);
    print_value(&s, v, glue_ty_app(t, t->nparams, params), printers);
}

/* Printers of the base types, for print_T's parameters (stdout). */
void print_int(value v) {
    printf("%" PRIdPTR, Long_val(v));
}

void print_string(value v) {
    struct sink s = {stdout, NULL, 0, 0, 0, 0};
    emit_string(&s, v);
}

void print_fn(value v) {
    (void)v;
    fputs("<fun>", stdout);
}

/* --- Reader --------------------------------------------------------------- */

enum tok { T_EOF, T_OPEN, T_CLOSE, T_INT, T_STRING, T_IDENT, T_FUN, T_BAD };

struct rframe {
    const struct glue_type *t;
    const struct glue_ctor *c;
    size_t vbase, ebase;
};

struct reader {
    struct thread_info *ti;
    const char *s;
    size_t len, pos;
    enum tok tok;               /* the current token: [start, pos) */
    size_t start;
    intptr_t num;
    char *str;                  /* decoded string literal */
    size_t nstr, capstr;
    struct rframe *fr;
    size_t nfr, capfr;
    value *vals;
    size_t nvals, capvals;
    const struct glue_ty **env;
    size_t nenv, capenv;
    char *err;
    size_t errlen;
    int failed;
};

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int rfail(struct reader *r, size_t at, const char *fmt, ...) {
    size_t line = 1, col = 1;
    va_list ap;
    int n;

    if (r->failed || r->errlen == 0)
        return r->failed = 1, -1;
    for (size_t i = 0; i < at && i < r->len; i++, col++)
        if (r->s[i] == '\n')
            line++, col = 0;
    if (line > 1)
        n = snprintf(r->err, r->errlen, "line %zu, column %zu: ", line, col);
    else
        n = snprintf(r->err, r->errlen, "column %zu: ", col);
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < r->errlen)
        vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    r->failed = 1;
    return -1;
}

static int is_ident(int c, int first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int lex_string(struct reader *r) {
    r->nstr = 0;
    for (r->pos++; r->pos < r->len && r->s[r->pos] != '"'; r->pos++) {
        int c = (unsigned char)r->s[r->pos];
        if (c == '\\') {
            int e = r->pos + 1 < r->len ? r->s[r->pos + 1] : 0;
            int h1, h2;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case '"': case '\\': c = e; break;
            case 'x':
                h1 = r->pos + 2 < r->len ? hexval(r->s[r->pos + 2]) : -1;
                h2 = r->pos + 3 < r->len ? hexval(r->s[r->pos + 3]) : -1;
                if (h1 < 0 || h2 < 0)
                    return rfail(r, r->pos, "bad escape in string");
                c = h1 * 16 + h2;
                r->pos += 2;
                break;
            default:
                return rfail(r, r->pos, "bad escape in string");
            }
            r->pos++;
        }
        if (grow(&r->str, &r->capstr, r->nstr + 1, 1) < 0)
            return rfail(r, r->pos, "out of memory");
        r->str[r->nstr++] = (char)c;
    }
    if (r->pos >= r->len)
        return rfail(r, r->start, "unterminated string");
    r->pos++;
    return 0;
}

static int lex_int(struct reader *r) {
    int neg = r->s[r->pos] == '-';
    uintmax_t n = 0, max = neg ? (uintmax_t)GLUE_INT_MAX + 1 : GLUE_INT_MAX;

    r->pos += (size_t)neg;
    if (r->pos >= r->len || r->s[r->pos] < '0' || r->s[r->pos] > '9')
        return rfail(r, r->start, "expected a digit after '-'");
    for (; r->pos < r->len && r->s[r->pos] >= '0' && r->s[r->pos] <= '9';
         r->pos++) {
        n = n * 10 + (uintmax_t)(r->s[r->pos] - '0');
        if (n > max)
            return rfail(r, r->start, "integer out of range");
    }
    r->num = neg ? (intptr_t)(0 - n) : (intptr_t)n;
    return 0;
}

/* n bytes of the input for a message, into buf: printable ASCII as it
 * is, any other byte (NUL, a control, a part of a UTF-8 sequence) as \xHH,
 * so a message is always text whatever the input. Returns buf. */
static const char *escape_text(char *buf, size_t len, const char *s,
                               size_t n) {
    size_t k = 0;

    for (size_t i = 0; i < n && k + 5 <= len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f)
            buf[k++] = (char)c;
        else
            k += (size_t)snprintf(buf + k, len - k, "\\x%02x", c);
    }
    if (len > 0)
        buf[k < len ? k : len - 1] = '\0';
    return buf;
}

/* Reads the next token into r->tok; -1 on a lexical error. */
static int lex(struct reader *r) {
    char esc[8];

    while (r->pos < r->len && strchr(" \t\r\n", r->s[r->pos]) &&
           r->s[r->pos] != '\0')
        r->pos++;
    r->start = r->pos;
    if (r->pos >= r->len)
        return r->tok = T_EOF, 0;
    int c = (unsigned char)r->s[r->pos];
    if (c == '(' || c == ')') {
        r->pos++;
        return r->tok = c == '(' ? T_OPEN : T_CLOSE, 0;
    }
    if (c == '"')
        return r->tok = T_STRING, lex_string(r);
    if (c == '-' || (c >= '0' && c <= '9'))
        return r->tok = T_INT, lex_int(r);
    if (is_ident(c, 1)) {
        while (r->pos < r->len && is_ident((unsigned char)r->s[r->pos], 0))
            r->pos++;
        return r->tok = T_IDENT, 0;
    }
    if (r->len - r->pos >= 5 && memcmp(r->s + r->pos, "<fun>", 5) == 0) {
        r->pos += 5;
        return r->tok = T_FUN, 0;
    }
    r->tok = T_BAD;
    return rfail(r, r->pos, "unexpected character '%s'",
                 escape_text(esc, sizeof esc, r->s + r->pos, 1));
}

/* The current token as text for messages ("cons", "'('", "end of input"):
 * its first 20 bytes and "..." past 24, escaped. */
static const char *tok_text(struct reader *r, char *buf, size_t len) {
    size_t n = r->pos - r->start;

    switch (r->tok) {
    case T_EOF: return "end of input";
    case T_OPEN: return "'('";
    case T_CLOSE: return "')'";
    default: break;
    }
    escape_text(buf, len, r->s + r->start, n > 24 ? 20 : n);
    if (n > 24 && strlen(buf) + 4 <= len)
        strcat(buf, "...");
    return buf;
}

static int expected_fail(struct reader *r, const struct glue_ty *ex) {
    char want[128], got[96];

    if (ex && ex->kind != GLUE_ANY)             /* any: "a value", not "_" */
        glue_ty_format(want, sizeof want, ex);
    else
        snprintf(want, sizeof want, "a value");
    return rfail(r, r->start, "expected %s, got %s", want,
                 tok_text(r, got, sizeof got));
}

/* Finds the constructor `name` for the expected type; -1 if none fits. */
static int find_ctor(struct reader *r, const struct glue_ty *ex,
                     const struct glue_type **t, const struct glue_ctor **c) {
    char name[128];
    size_t n = r->pos - r->start;

    if (n >= sizeof name)
        return rfail(r, r->start, "name too long");
    memcpy(name, r->s + r->start, n);
    name[n] = '\0';
    if (ex->kind == GLUE_APP) {
        for (unsigned int i = 0; i < ex->type->nctors; i++)
            if (strcmp(ex->type->ctors[i].name, name) == 0) {
                *t = ex->type, *c = &ex->type->ctors[i];
                return 0;
            }
    } else if (ex->kind == GLUE_ANY) {
        if ((*t = glue_find_ctor(r->ti, name, c)) != NULL)
            return 0;
        return rfail(r, r->start, "unknown constructor %s", name);
    }
    return expected_fail(r, ex);
}

static int push_frame(struct reader *r, const struct glue_ty *ex,
                      const struct glue_type *t, const struct glue_ctor *c) {
    size_t np = (size_t)t->nparams;

    if (grow(&r->fr, &r->capfr, r->nfr + 1, sizeof *r->fr) < 0 ||
        grow(&r->env, &r->capenv, r->nenv + np, sizeof *r->env) < 0)
        return rfail(r, r->start, "out of memory");
    r->fr[r->nfr++] = (struct rframe){t, c, r->nvals, r->nenv};
    for (size_t i = 0; i < np; i++)
        r->env[r->nenv++] = ex->kind == GLUE_APP ? ex->args[i] : &glue_ty_any;
    return 0;
}

/* A constructor without arguments, named by the current identifier. */
static int read_nullary(struct reader *r, const struct glue_ty *ex,
                        value *v, const struct glue_ty **ty) {
    const struct glue_ty *any[16];
    const struct glue_type *t;
    const struct glue_ctor *c;

    if (find_ctor(r, ex, &t, &c) < 0)
        return -1;
    if (c->arity > 0)
        return rfail(r, r->start, "%s takes %u argument%s", c->name,
                     c->arity, c->arity == 1 ? "" : "s");
    *v = Val_long(c->ordinal);
    if (ex->kind == GLUE_APP) {
        *ty = ex;
        return 1;
    }
    for (int i = 0; i < t->nparams && i < 16; i++)
        any[i] = &glue_ty_any;
    *ty = glue_ty_app(t, t->nparams, any);
    return 1;
}

/* After '(': a constructor with arguments, pushed as a frame. */
static int read_open(struct reader *r, const struct glue_ty *ex) {
    const struct glue_type *t;
    const struct glue_ctor *c;
    char got[96];

    if (lex(r) < 0)
        return -1;
    if (r->tok != T_IDENT)
        return rfail(r, r->start, "expected a constructor, got %s",
                     tok_text(r, got, sizeof got));
    if (find_ctor(r, ex, &t, &c) < 0)
        return -1;
    if (c->arity == 0)
        return rfail(r, r->start, "%s takes no arguments", c->name);
    return push_frame(r, ex, t, c);
}

/* Reads one item at the expected type: an atom into *v and *ty (returns 1),
 * or the start of a boxed constructor, pushed as a frame (returns 0). */
static int read_item(struct reader *r, const struct glue_ty *ex, value *v,
                     const struct glue_ty **ty) {
    if (lex(r) < 0)
        return -1;
    switch (r->tok) {
    case T_INT:
        if (ex->kind != GLUE_INT && ex->kind != GLUE_ANY)
            return expected_fail(r, ex);
        *v = Val_long(r->num), *ty = &glue_ty_int;
        return 1;
    case T_STRING:
        if (ex->kind != GLUE_STRING && ex->kind != GLUE_ANY)
            return expected_fail(r, ex);
        if ((*v = glue_make_string(r->ti, r->str, r->nstr)) == 0)
            return rfail(r, r->start, "glue heap exhausted");
        *ty = &glue_ty_string;
        return 1;
    case T_FUN:
        return rfail(r, r->start, "cannot read a function");
    case T_IDENT:
        return read_nullary(r, ex, v, ty);
    case T_OPEN:
        return read_open(r, ex);
    default:
        return expected_fail(r, ex);
    }
}

/* Closes the top frame: ')' then the block. 1 with *v and *ty, or -1. */
static int close_frame(struct reader *r, value *v, const struct glue_ty **ty) {
    struct rframe *f = &r->fr[r->nfr - 1];
    char got[96];
    value *p;

    if (lex(r) < 0)
        return -1;
    if (r->tok != T_CLOSE)
        return rfail(r, r->start, "expected ')' after %u argument%s of %s, "
                     "got %s", f->c->arity, f->c->arity == 1 ? "" : "s",
                     f->c->name, tok_text(r, got, sizeof got));
    if ((p = glue_alloc(r->ti, f->c->arity, f->c->ordinal)) == NULL)
        return rfail(r, r->start, "glue heap exhausted");
    memcpy(p, r->vals + f->vbase, f->c->arity * sizeof *p);
    *v = (value)p;
    *ty = glue_ty_app(f->t, f->t->nparams, r->env + f->ebase);
    if (*ty == NULL)
        return rfail(r, r->start, "type nested too deeply");
    r->nvals = f->vbase;
    r->nenv = f->ebase;
    r->nfr--;
    return 1;
}

/* An upper bound of the heap words reading s can allocate. */
size_t glue_read_bound(const char *s, size_t len) {
    size_t words = 4;
    int in_str = 0, in_tok = 0;

    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            words++;            /* generous: one word per byte */
            continue;
        }
        if (c == '(')
            words += 2;
        else if (c == '"')
            in_str = 1, words += 2;
        if (c != '(' && c != ')' && c != ' ' && c != '\n' && c != '\t') {
            words += !in_tok;
            in_tok = 1;
        } else {
            in_tok = 0;
        }
    }
    return words;
}

/* Reads items until the root value is complete: an atom completes the top
 * frame's next field; a frame whose fields are all read closes. */
static int read_loop(struct reader *r, const struct glue_ty *expect,
                     value *out, const struct glue_ty **outty) {
    const struct glue_ty *ex = expect, *ty = NULL;
    struct rframe *f;
    value v = 0;
    int got;

    for (;;) {
        if ((got = read_item(r, ex, &v, &ty)) < 0)
            return -1;
        if (got == 0) {                 /* opened a frame: its 1st field */
            f = &r->fr[r->nfr - 1];
            ex = glue_ty_subst(f->c->fields[0].type, r->env + f->ebase);
            if (ex == NULL)
                return rfail(r, r->start, "type nested too deeply");
            continue;
        }
        for (;;) {
            if (r->nfr == 0) {
                *out = v, *outty = ty;
                return 0;
            }
            f = &r->fr[r->nfr - 1];
            size_t i = r->nvals - f->vbase;
            if (glue_ty_match(f->c->fields[i].type, ty, r->env + f->ebase) < 0)
                return expected_fail(r, ex);
            if (grow(&r->vals, &r->capvals, r->nvals + 1, sizeof v) < 0)
                return rfail(r, r->start, "out of memory");
            r->vals[r->nvals++] = v;
            if (i + 1 < f->c->arity) {
                ex = glue_ty_subst(f->c->fields[i + 1].type, r->env + f->ebase);
                if (ex == NULL)
                    return rfail(r, r->start, "type nested too deeply");
                break;
            }
            if (close_frame(r, &v, &ty) < 0)
                return -1;
        }
    }
}

/* Reads one value of type expect (NULL: any) from text. On success 0, the
 * value in *out (unrooted: root it before the next GC point) and its type
 * in *outty. On error -1 and "column N: what was expected" in err. A GC
 * point: the heap is collected first if it lacks room for the result. */
int glue_read(struct thread_info *ti, const char *text, size_t len,
              const struct glue_ty *expect, value *out,
              const struct glue_ty **outty, char *err, size_t errlen) {
    struct reader r;
    char got[96];
    int rc;

    memset(&r, 0, sizeof r);
    r.ti = ti, r.s = text, r.len = len, r.err = err, r.errlen = errlen;
    if (errlen > 0)
        err[0] = '\0';
    if (glue_reserve(ti, glue_read_bound(text, len)) < 0)
        return rfail(&r, 0, "glue heap exhausted");
    if (grow(&r.env, &r.capenv, 16, sizeof *r.env) < 0)
        return rfail(&r, 0, "out of memory");  /* env + base: never NULL */
    rc = read_loop(&r, expect ? expect : &glue_ty_any, out, outty);
    if (rc == 0 && lex(&r) == 0 && r.tok != T_EOF)
        rc = rfail(&r, r.start, "expected end of input, got %s",
                   tok_text(&r, got, sizeof got));
    if (r.failed)
        rc = -1;
    free(r.str);
    free(r.fr);
    free(r.vals);
    free(r.env);
    return rc;
}
