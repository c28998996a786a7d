/* Process conventions of a service: pid file, dropping root, systemd's
 * sd_notify and socket activation protocols (sd-daemon(3)) without
 * libsystemd. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "daemon.h"

#define LISTEN_FDS_START 3

long daemon_pid_read(const char *path) {
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;
    char *end;
    long pid;

    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    pid = strtol(buf, &end, 10);
    if (end == buf || (*end && *end != '\n') || pid <= 0)
        return 0;
    return pid;
}

int daemon_pid_check(const char *path, pid_t allow, char *err,
                     size_t errlen) {
    long pid = daemon_pid_read(path);

    if (pid < 0) {
        snprintf(err, errlen, "pid file %s: %s", path, strerror(errno));
        return -1;
    }
    if (pid > 0 && pid != getpid() && pid != allow &&
        (kill((pid_t)pid, 0) == 0 || errno == EPERM)) {
        snprintf(err, errlen, "pid file %s: process %ld is running (another "
                 "server?); stop it, or remove the file if it is not one",
                 path, pid);
        return -1;
    }
    return 0;                           /* absent or stale: taken over */
}

int daemon_pid_write(const char *path, char *err, size_t errlen) {
    char tmp[4096], line[32];
    int fd, n = snprintf(line, sizeof line, "%d\n", (int)getpid());

    if (snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid()) >=
        (int)sizeof tmp) {
        snprintf(err, errlen, "pid file %s: path too long", path);
        return -1;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, line, (size_t)n) != n || close(fd) < 0 ||
        rename(tmp, path) < 0) {
        snprintf(err, errlen, "pid file %s: %s", path, strerror(errno));
        if (fd >= 0)
            unlink(tmp);
        return -1;
    }
    return 0;
}

void daemon_pid_remove(const char *path) {
    if (daemon_pid_read(path) == getpid())
        unlink(path);
}

int daemon_user_lookup(const char *name, uid_t *uid, gid_t *gid, char *err,
                       size_t errlen) {
    struct passwd *pw;

    errno = 0;
    if ((pw = getpwnam(name)) == NULL) {
        snprintf(err, errlen, "--user %s: %s", name,
                 errno ? strerror(errno) : "no such user");
        return -1;
    }
    if (geteuid() != 0) {
        snprintf(err, errlen, "--user %s: only root can switch users "
                 "(running as uid %d)", name, (int)geteuid());
        return -1;
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

int daemon_drop(const char *name, uid_t uid, gid_t gid, char *err,
                size_t errlen) {
    if (initgroups(name, gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
        snprintf(err, errlen, "--user %s: %s", name, strerror(errno));
        return -1;
    }
    if (uid != 0 && setuid(0) == 0) {   /* root must be gone for good */
        snprintf(err, errlen, "--user %s: could get root back", name);
        return -1;
    }
    return 0;
}

int daemon_notify(const char *state, char *err, size_t errlen) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    size_t len;
    int fd, rc;

    if (path == NULL || path[0] == '\0')
        return 0;
    len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len >= sizeof sa.sun_path) {
        snprintf(err, errlen, "NOTIFY_SOCKET %s: not a socket path", path);
        return -1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0';          /* an abstract name */
    if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0) {
        snprintf(err, errlen, "NOTIFY_SOCKET: %s", strerror(errno));
        return -1;
    }
    rc = (int)sendto(fd, state, strlen(state), MSG_NOSIGNAL,
                     (struct sockaddr *)&sa,
                     (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                 len));
    if (rc < 0)
        snprintf(err, errlen, "NOTIFY_SOCKET %s: %s", path, strerror(errno));
    close(fd);
    return rc < 0 ? -1 : 0;
}

int daemon_check_socket(int fd, int type, const char *what, char *err,
                        size_t errlen) {
    int got = 0, on = 0;
    socklen_t len = sizeof got, len2 = sizeof on;

    errno = 0;
    if ((getsockopt(fd, SOL_SOCKET, SO_TYPE, &got, &len) < 0 ||
         getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len2) < 0) &&
        errno != ENOTSOCK) {
        snprintf(err, errlen, "%s: fd %d: %s", what, fd, strerror(errno));
        return -1;
    }
    if (errno == ENOTSOCK || got != type || (type == SOCK_STREAM && !on)) {
        snprintf(err, errlen, "%s: fd %d is not a %s socket", what, fd,
                 type == SOCK_STREAM ? "listening stream" : "datagram");
        return -1;
    }
    return 0;
}

int daemon_listen_fds(int *count, char *err, size_t errlen) {
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    char *end;
    long n;

    *count = 0;
    if (pid == NULL || fds == NULL || strtol(pid, &end, 10) != getpid() ||
        *end)
        return 0;                       /* not for us */
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    errno = 0;
    n = strtol(fds, &end, 10);
    if (errno || *end || end == fds || n < 0 || n > 1024) {
        snprintf(err, errlen, "LISTEN_FDS '%s': not a count of descriptors",
                 fds);
        return -1;
    }
    for (int fd = LISTEN_FDS_START; fd < LISTEN_FDS_START + n; fd++)
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    *count = (int)n;
    return LISTEN_FDS_START;
}
