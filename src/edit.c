/* libedit, loaded on first use (edit.h says why). */
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "edit.h"

#define EDIT_LIB "libedit.so.2"         /* what libedit-dev links */

static struct edit edit;
static int edit_state;                  /* 0 not tried, 1 loaded, -1 failed */

static const struct {
    const char *name;
    size_t off;
} edit_syms[] = {
#define SYM(name, field) {name, offsetof(struct edit, field)}
    SYM("readline", readline),
    SYM("add_history", add_history),
    SYM("using_history", using_history),
    SYM("stifle_history", stifle_history),
    SYM("read_history", read_history),
    SYM("write_history", write_history),
    SYM("rl_completion_matches", completion_matches),
    SYM("rl_attempted_completion_function", attempted_completion_function),
    SYM("rl_attempted_completion_over", attempted_completion_over),
    SYM("rl_completer_word_break_characters",
        completer_word_break_characters),
    SYM("rl_completion_append_character", completion_append_character),
    SYM("rl_readline_name", readline_name),
#undef SYM
};

static int edit_load(void) {
    void *h = dlopen(EDIT_LIB, RTLD_NOW | RTLD_LOCAL);

    if (h == NULL) {
        fprintf(stderr, "echohost: no line editing: %s\n", dlerror());
        return -1;
    }
    for (size_t i = 0; i < sizeof edit_syms / sizeof edit_syms[0]; i++) {
        void *p = dlsym(h, edit_syms[i].name);
        if (p == NULL) {
            fprintf(stderr, "echohost: no line editing: %s: %s missing\n",
                    EDIT_LIB, edit_syms[i].name);
            dlclose(h);
            return -1;
        }
        /* a pointer to a function or to a variable, by its field's type */
        memcpy((char *)&edit + edit_syms[i].off, &p, sizeof p);
    }
    return 1;
}

const struct edit *edit_get(void) {
    if (edit_state == 0)
        edit_state = edit_load();
    return edit_state > 0 ? &edit : NULL;
}
