/* File watch: inotify on the file's directory, matched by name. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "watch.h"

struct watch {
    ev_loop *loop;
    int fd;                     /* inotify */
    char *name;                 /* the file's name in its directory */
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
            if (e->len && strcmp(e->name, w->name) == 0)
                changed = 1;
            p += sizeof *e + e->len;
        }
    }
    if (changed)
        w->proc(w->ud);
}

struct watch *watch_start(ev_loop *loop, const char *path, watch_proc *proc,
                          void *ud, char *err, size_t errlen) {
    struct watch *w = calloc(1, sizeof *w);
    char *d = strdup(path), *b = strdup(path);
    int ok = 0;

    if (w)
        w->fd = -1;
    if (w == NULL || d == NULL || b == NULL)
        goto out;
    w->loop = loop;
    w->proc = proc;
    w->ud = ud;
    w->name = strdup(basename(b));
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->name == NULL || w->fd < 0)
        goto out;
    if (inotify_add_watch(w->fd, dirname(d), IN_CLOSE_WRITE | IN_MOVED_TO) < 0)
        goto out;
    ok = ev_add(loop, w->fd, EV_READABLE, watch_read, w) != EV_ERR;
out:
    if (!ok) {
        snprintf(err, errlen, "--watch %s: %s", path, strerror(errno));
        watch_stop(w);
        w = NULL;
    }
    free(d);
    free(b);
    return w;
}

void watch_stop(struct watch *w) {
    if (w == NULL)
        return;
    if (w->fd >= 0) {
        ev_del(w->loop, w->fd, EV_READABLE);
        close(w->fd);
    }
    free(w->name);
    free(w);
}
