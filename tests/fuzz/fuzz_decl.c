/* libFuzzer target: the declaration parser (glue.declare) and the type
 * term parser. Declared types must then print and read their values. */
#include <stdlib.h>
#include <string.h>

#include "glue_prelude.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

/* Reads and prints each nullary constructor of the declared types. */
static void exercise(struct thread_info *ti, int from) {
    char err[GLUE_ERR_LEN], out[256];
    const struct glue_ty *ty;
    value v;

    for (int i = from; i < glue_ntypes(ti); i++) {
        const struct glue_type *t = glue_type_at(ti, i);
        for (unsigned int j = 0; j < t->nctors; j++) {
            const char *name = t->ctors[j].name;
            if (t->ctors[j].arity > 0)
                continue;
            if (glue_read(ti, name, strlen(name), NULL, &v, &ty, err,
                          sizeof err) < 0)
                __builtin_trap();
            glue_sprint(out, sizeof out, v, ty);
            if (strcmp(out, name) != 0)
                __builtin_trap();
        }
    }
}

/* One thread_info, replaced only after a declaration succeeded (a failed
 * one registers nothing), so most inputs cost no heap set-up. */
static struct thread_info *ti;

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    char err[GLUE_ERR_LEN];
    char *s;
    int from;

    if (ti == NULL && ((ti = make_tinfo()) == NULL ||
                       glue_prelude_register(ti) < 0))
        return 0;
    from = glue_ntypes(ti);
    if (glue_declare(ti, (const char *)data, size, "f", err, sizeof err) == 0)
        exercise(ti, from);
    else if (strncmp(err, "f:", 2) != 0 || glue_ntypes(ti) != from)
        __builtin_trap();               /* located, and all or nothing */
    if ((s = malloc(size + 1)) != NULL) {
        memcpy(s, data, size);
        s[size] = '\0';
        glue_ty_parse(ti, s, err, sizeof err);
        free(s);
    }
    if (glue_ntypes(ti) != from) {
        free_tinfo(ti);
        ti = NULL;
    }
    return 0;
}
