/* A robust process-shared mutex for memory mapped MAP_SHARED before fork
 * (the shared dictionary, the pubsub ring): a process that dies holding it
 * does not wedge the others; the next locker is told to repair the data. */
#ifndef ECHOHOST_PMUTEX_H
#define ECHOHOST_PMUTEX_H

#include <errno.h>
#include <pthread.h>

/* 0, or an errno value. */
static inline int pmutex_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    int rc = pthread_mutexattr_init(&a);

    if (rc != 0)
        return rc;
    if ((rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED)) == 0 &&
        (rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST)) == 0)
        rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc;
}

/* Locks m; when its owner died holding it, calls recover(ud) (still
 * locked) before marking it consistent. */
static inline void pmutex_lock(pthread_mutex_t *m, void (*recover)(void *),
                               void *ud) {
    if (pthread_mutex_lock(m) == EOWNERDEAD) {
        recover(ud);
        pthread_mutex_consistent(m);
    }
}

#endif
