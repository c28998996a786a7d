/* File watch: inotify on the directories of the files, matched by name (a
 * same name in another watched directory only costs an extra reload). */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "log.h"
#include "watch.h"

struct watch {
    ev_loop *loop;
    int fd;                     /* inotify */
    char **names;               /* the files' names in their directories */
    int n;
    watch_proc *proc;
    void *ud;
};

static void watch_read(ev_loop *loop, int fd, void *ud, int mask) {
    struct watch *w = ud;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int changed = 0;
    ssize_t n;
    (void)loop; (void)mask;

    while ((n = read(fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)(void *)p;
            for (int i = 0; e->len && i < w->n; i++)
                if (strcmp(e->name, w->names[i]) == 0)
                    changed = 1;
            p += sizeof *e + e->len;
        }
    }
    if (changed)
        w->proc(w->ud);
}

/* Adds path's directory and name. 0 or -1 (errno). */
static int watch_add(struct watch *w, const char *path) {
    char *d = strdup(path), *b = strdup(path);
    int rc = -1;

    if (d && b && (w->names[w->n] = strdup(basename(b))) != NULL) {
        w->n++;
        rc = inotify_add_watch(w->fd, dirname(d),
                               IN_CLOSE_WRITE | IN_MOVED_TO) < 0 ? -1 : 0;
    }
    free(d);
    free(b);
    return rc;
}

struct watch *watch_start(ev_loop *loop, char *const *paths, int n,
                          watch_proc *proc, void *ud, char *err,
                          size_t errlen) {
    struct watch *w = calloc(1, sizeof *w);
    int i = 0;

    if (w == NULL || (w->names = calloc(n, sizeof *w->names)) == NULL)
        goto err;
    w->loop = loop;
    w->proc = proc;
    w->ud = ud;
    if ((w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
        goto err;
    for (; i < n; i++)
        if (watch_add(w, paths[i]) < 0)
            goto err;
    if (ev_add(loop, w->fd, EV_READABLE, watch_read, w) == EV_ERR)
        goto err;
    return w;
err:
    snprintf(err, errlen, "--watch %s: %s", paths[i < n ? i : 0],
             strerror(errno));
    if (w && w->names == NULL)
        w->fd = -1;
    watch_stop(w);
    return NULL;
}

void watch_stop(struct watch *w) {
    if (w == NULL)
        return;
    if (w->fd >= 0) {
        ev_del(w->loop, w->fd, EV_READABLE);
        close(w->fd);
    }
    for (int i = 0; i < w->n; i++)
        free(w->names[i]);
    free(w->names);
    free(w);
}

int watch_restart(struct watch **w, ev_loop *loop, char *const *paths, int n,
                  watch_proc *proc, void *ud) {
    char err[512];

    watch_stop(*w);
    *w = watch_start(loop, paths, n, proc, ud, err, sizeof err);
    if (*w == NULL)
        log_error("%s", err);
    return *w ? 0 : -1;
}
