/* Watching one file for changes on an event loop: inotify on its directory,
 * so editors that save by rename are seen too. */
#ifndef ECHOHOST_WATCH_H
#define ECHOHOST_WATCH_H

#include <stddef.h>

#include "ev.h"

struct watch;
typedef void watch_proc(void *ud);

/* Calls proc(ud) from the loop after one of the n files was written or
 * renamed over (once per batch of changes). NULL on failure, with
 * "--watch PATH: reason" in err. */
struct watch *watch_start(ev_loop *loop, char *const *paths, int n,
                          watch_proc *proc, void *ud, char *err,
                          size_t errlen);
void watch_stop(struct watch *w);
/* Replaces *w (may be NULL) by a watch of the n files: the handler and the
 * modules it loaded, after each load. 0, or -1 and the reason logged. */
int watch_restart(struct watch **w, ev_loop *loop, char *const *paths, int n,
                  watch_proc *proc, void *ud);

#endif
