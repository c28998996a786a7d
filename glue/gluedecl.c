/* glue-decl: the declaration parser of glue_decl.c as a command, for the
 * generator (glue/gen.lua): prints the declarations of .glue files as a Lua
 * chunk, or the first error. One grammar for glue.declare and gen.lua. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"

#define DECL_MAX_FILE   ((size_t)1 << 24)       /* 16 MiB of declarations */

/* The contents of a file (malloc'd, its size in *len), or NULL with a
 * message in err. */
static char *slurp(const char *name, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(name, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", name, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (n == cap) {
            char *b = cap < DECL_MAX_FILE ? realloc(buf, cap ? 2 * cap : 4096)
                                          : NULL;
            if (b == NULL) {
                snprintf(err, errlen, "%s: %s", name, cap < DECL_MAX_FILE
                         ? "out of memory" : "file too large");
                goto err;
            }
            buf = b;
            cap = cap ? 2 * cap : 4096;
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s: %s", name, strerror(errno));
        goto err;
    }
    fclose(f);
    *len = n;
    return buf;
err:
    free(buf);
    fclose(f);
    return NULL;
}

/* Declares the types of one file; -1 with the message in err. */
static int declare_file(struct thread_info *ti, const char *name, char *err,
                        size_t errlen) {
    size_t len;
    char *text = slurp(name, &len, err, errlen);
    int rc;

    if (text == NULL)
        return -1;
    rc = glue_declare(ti, text, len, name, err, errlen);
    free(text);
    return rc;
}

/* A type term as a Lua table: {name = N, param = i, args = {...}}. The
 * depth is bounded (GLUE_TY_DEPTH) by the parser. */
static void put_term(const struct glue_type *owner, const struct glue_ty *t) {
    switch (t->kind) {
    case GLUE_INT: printf("{name=\"int\",args={}}"); return;
    case GLUE_STRING: printf("{name=\"string\",args={}}"); return;
    case GLUE_FN: printf("{name=\"fn\",args={}}"); return;
    case GLUE_PARAM:
        printf("{name=\"%s\",param=%d,args={}}", owner->params[t->param],
               t->param + 1);
        return;
    case GLUE_APP:
        printf("{name=\"%s\",args={", t->type->name);
        for (int i = 0; i < t->nargs; i++) {
            put_term(owner, t->args[i]);
            putchar(',');
        }
        printf("}}");
        return;
    default:
        printf("{name=\"_\",args={}}");
    }
}

static void put_type(const struct glue_type *t, int prelude) {
    printf("{name=\"%s\",prelude=%s,params={", t->name,
           prelude ? "true" : "false");
    for (int i = 0; i < t->nparams; i++)
        printf("\"%s\",", t->params[i]);
    printf("},ctors={\n");
    for (unsigned int i = 0; i < t->nctors; i++) {
        const struct glue_ctor *c = &t->ctors[i];
        printf(" {name=\"%s\",ordinal=%u,fields={", c->name, c->ordinal);
        for (unsigned int j = 0; j < c->arity; j++) {
            printf("{name=\"%s\",type=", c->fields[j].name);
            put_term(t, c->fields[j].type);
            printf("},");
        }
        printf("}},\n");
    }
    printf("}},\n");
}

int main(int argc, char **argv) {
    struct thread_info *ti = make_tinfo();
    char err[GLUE_ERR_LEN];
    int first = 1, nprelude = 0, rc = 0;

    if (ti == NULL) {
        printf("glue-decl: out of memory\n");
        return 1;
    }
    if (argc > 2 && strcmp(argv[1], "--prelude") == 0) {
        rc = declare_file(ti, argv[2], err, sizeof err);
        nprelude = glue_ntypes(ti);
        first = 3;
    }
    for (int i = first; rc == 0 && i < argc; i++)
        rc = declare_file(ti, argv[i], err, sizeof err);
    if (rc == 0) {
        printf("return {\n");
        for (int i = 0; i < glue_ntypes(ti); i++)
            put_type(glue_type_at(ti, i), i < nprelude);
        printf("}\n");
    } else {
        printf("%s\n", err);
    }
    free_tinfo(ti);
    glue_ty_free_all();
    return rc == 0 ? 0 : 1;
}
