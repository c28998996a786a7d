/* Process conventions of a service: the pid file, dropping root, and
 * systemd's readiness notification and socket activation (its protocols,
 * without libsystemd). Errors go into a caller buffer. */
#ifndef ECHOHOST_DAEMON_H
#define ECHOHOST_DAEMON_H

#include <stddef.h>
#include <sys/types.h>

#define DAEMON_ERR_LEN 320

/* Refuses a pid file that names a live process other than allow (the
 * master an upgrade replaces; 0: none): 0 when path is absent or stale (it
 * will be taken over), -1 with err. */
int daemon_pid_check(const char *path, pid_t allow, char *err,
                     size_t errlen);
/* Writes getpid() to path (through a temporary file and a rename). 0 or
 * -1 with err. */
int daemon_pid_write(const char *path, char *err, size_t errlen);
/* The pid in path: > 0, 0 when there is none (absent, empty, garbage),
 * -1 when it cannot be read. */
long daemon_pid_read(const char *path);
/* Removes path if it still holds getpid(). */
void daemon_pid_remove(const char *path);

/* --user: the account, looked up before anything binds. 0 or -1 with err
 * (unknown user; not running as root). */
int daemon_user_lookup(const char *name, uid_t *uid, gid_t *gid, char *err,
                       size_t errlen);
/* Drops root for good: initgroups, setgid, setuid (checked). 0 or -1. */
int daemon_drop(const char *name, uid_t uid, gid_t gid, char *err,
                size_t errlen);

/* sd_notify: state ("READY=1", "STOPPING=1") to $NOTIFY_SOCKET, a path or
 * an abstract name ("@..."); nothing without it. 0, or -1 with err. */
int daemon_notify(const char *state, char *err, size_t errlen);

/* sd_listen_fds: with $LISTEN_PID our pid, the descriptors systemd passed
 * from fd 3 on, $LISTEN_FDS of them (the variables are then unset, so
 * children do not see them). The first fd (3) with *count set, 0 when not
 * activated (*count 0), -1 with err (a count that is not a number). */
int daemon_listen_fds(int *count, char *err, size_t errlen);
/* fd is a socket of type (SOCK_STREAM: listening; SOCK_DGRAM): 0, or -1
 * with err ("LISTEN_FDS: fd 3 is not a listening stream socket", what
 * the variable that passed it). */
int daemon_check_socket(int fd, int type, const char *what, char *err,
                        size_t errlen);

#endif
