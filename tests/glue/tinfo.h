/* The glue tests' thread_info: make_tinfo with the prelude registered. */
#ifndef ECHOHOST_TINFO_H
#define ECHOHOST_TINFO_H

#include "glue_prelude.h"

static inline struct thread_info *prelude_tinfo(void) {
    struct thread_info *ti = make_tinfo();

    if (ti && glue_prelude_register(ti) < 0) {
        free_tinfo(ti);
        return NULL;
    }
    return ti;
}

#endif
