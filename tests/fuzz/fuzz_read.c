/* libFuzzer target: the glue reader. Whatever it accepts must print and
 * read back to an equal value with the same text and type. */
#include <stdlib.h>
#include <string.h>

#include "glue_prelude.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static struct thread_info *ti;

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    const struct glue_ty *ty, *ty2;
    char err[GLUE_ERR_LEN];
    value v, w;
    size_t len, len2;
    char *text, *text2;
    int slot;

    if (ti == NULL && ((ti = make_tinfo()) == NULL ||
                       glue_prelude_register(ti) < 0))
        return 0;
    if (glue_read(ti, (const char *)data, size, NULL, &v, &ty, err,
                  sizeof err) < 0) {
        if (strncmp(err, "column ", 7) != 0 && strncmp(err, "line ", 5) != 0)
            __builtin_trap();           /* every error says where */
        return 0;
    }
    slot = glue_root(ti, v);
    text = glue_aprint(v, ty, &len);
    if (text == NULL)
        __builtin_trap();
    if (glue_read(ti, text, len, ty, &w, &ty2, err, sizeof err) < 0)
        __builtin_trap();               /* read(print(v)) must work */
    v = glue_root_get(ti, slot);
    text2 = glue_aprint(w, ty2, &len2);
    if (ty2 != ty || glue_equal(ti, v, w) != 1 || text2 == NULL ||
        len2 != len || memcmp(text, text2, len) != 0)
        __builtin_trap();
    free(text);
    free(text2);
    glue_unroot(ti, slot);
    return 0;
}
