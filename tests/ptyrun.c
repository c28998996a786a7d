/* ptyrun: runs a command on a pseudo-terminal and drives it from a script
 * of "expect TEXT" / "send TEXT" lines (C escapes), for the REPL tests. */
#include <errno.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define PTY_OUT_MAX (1 << 20)

static char out[PTY_OUT_MAX];          /* everything the command wrote */
static size_t outlen, seen;            /* seen: where the next expect looks */

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes \n \r \t \e \\ \xHH in place; returns the length. */
static size_t unescape(char *s) {
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r != '\\' || r[1] == '\0') {
            *w++ = *r;
            continue;
        }
        switch (*++r) {
        case 'n': *w++ = '\n'; break;
        case 'r': *w++ = '\r'; break;
        case 't': *w++ = '\t'; break;
        case 'e': *w++ = 27; break;
        case 'x':
            if (hexval(r[1]) >= 0 && hexval(r[2]) >= 0) {
                *w++ = (char)(hexval(r[1]) * 16 + hexval(r[2]));
                r += 2;
            }
            break;
        default: *w++ = *r;
        }
    }
    return w - s;
}

/* Reads what the command wrote within ms: 1 if something came, 0 if
 * not, -1 at EOF (the command ended) or when the buffer is full. */
static int pump(int fd, int ms) {
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t n;

    if (poll(&p, 1, ms) <= 0)
        return 0;
    n = read(fd, out + outlen, sizeof out - outlen - 1);
    if (n <= 0)
        return -1;
    outlen += n;
    out[outlen] = '\0';
    return 1;
}

static int expect(int fd, const char *text, size_t len, long long deadline) {
    for (;;) {
        char *hit = memmem(out + seen, outlen - seen, text, len);
        if (hit) {
            seen = hit - out + len;
            return 0;
        }
        if (now_ms() >= deadline || pump(fd, 50) < 0) {
            if (now_ms() < deadline) {
                hit = memmem(out + seen, outlen - seen, text, len);
                if (hit) {
                    seen = hit - out + len;
                    return 0;
                }
            }
            return -1;
        }
    }
}

static int finish(int fd, pid_t pid, long long deadline) {
    int status;

    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fprintf(stderr, "ptyrun: command did not exit\n");
            return -1;
        }
        if (pump(fd, 50) < 0)
            usleep(10000);
    }
    while (pump(fd, 0) > 0)
        ;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int run_script(FILE *script, int fd, long long deadline) {
    char line[4096];

    while (fgets(line, sizeof line, script)) {
        size_t len = strcspn(line, "\n");
        line[len] = '\0';
        if (strncmp(line, "expect ", 7) == 0) {
            len = unescape(line + 7);
            if (expect(fd, line + 7, len, deadline) < 0) {
                fprintf(stderr, "ptyrun: no '%s' in time\n", line + 7);
                return -1;
            }
        } else if (strncmp(line, "send ", 5) == 0) {
            len = unescape(line + 5);
            if (write(fd, line + 5, len) != (ssize_t)len)
                return -1;
        } else if (strncmp(line, "sleep ", 6) == 0) {
            long long until = now_ms() + atoi(line + 6);
            while (now_ms() < until && pump(fd, 10) >= 0)
                ;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    struct winsize ws = {24, 80, 0, 0};
    long long deadline;
    FILE *script;
    int fd, rc;
    pid_t pid;

    if (argc < 4 || strcmp(argv[3], "--") != 0 || argc < 5) {
        fprintf(stderr, "usage: ptyrun SECONDS SCRIPT -- COMMAND [ARGS]\n");
        return 2;
    }
    if ((script = fopen(argv[2], "r")) == NULL) {
        perror(argv[2]);
        return 2;
    }
    deadline = now_ms() + atoi(argv[1]) * 1000LL;
    pid = forkpty(&fd, NULL, NULL, &ws);
    if (pid < 0) {
        perror("forkpty");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[4], argv + 4);
        perror(argv[4]);
        _exit(127);
    }
    rc = run_script(script, fd, deadline);
    if (rc == 0)
        rc = finish(fd, pid, deadline);
    else
        kill(pid, SIGKILL);
    fwrite(out, 1, outlen, stdout);
    if (rc >= 0)
        printf("\n[exit %d]\n", rc);
    return rc < 0 ? 1 : 0;
}
