/* Logging: one line per event, written with a single write(2) so lines
 * from several processes do not interleave (O_APPEND for a file); text,
 * logfmt or JSON lines. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define LOG_MSG_MAX 1024        /* the message, before any escaping */
#define LOG_LINE_MAX (LOG_MSG_MAX * 6 + 256)

int log_level = LOG_INFO;
int log_format = LOG_TEXT;

static int log_fd = STDERR_FILENO;
static char *log_path;          /* --log, or NULL: stderr */
static int log_up;              /* log_started() was called */
static int log_worker = -1;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "logfmt", "json"};

static int lookup(const char *name, const char *const *names, int n) {
    for (int i = 0; i < n; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

int log_parse_level(const char *name) {
    return lookup(name, level_names, 4);
}

int log_parse_format(const char *name) {
    return lookup(name, format_names, 3);
}

static int log_openfd(const char *path) {
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

int log_open(const char *path, char *err, size_t errlen) {
    int fd = log_openfd(path);

    if (fd < 0 || (log_path = strdup(path)) == NULL) {
        snprintf(err, errlen, "cannot open the log %s: %s", path,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    log_fd = fd;
    return 0;
}

/* dup2 replaces the descriptor in one step: a line is written whole to the
 * old file or to the new one. */
int log_reopen(void) {
    int fd;

    if (log_path == NULL)
        return 0;
    if ((fd = log_openfd(log_path)) < 0) {
        log_error("cannot reopen the log %s: %s (writing on to the old "
                  "file)", log_path, strerror(errno));
        return -1;
    }
    if (fd != log_fd) {
        dup2(fd, log_fd);
        close(fd);
    }
    return 0;
}

void log_started(void) {
    log_up = 1;
}

void log_set_worker(int slot) {
    log_worker = slot;
}

/* A line being built: what does not fit is cut (one byte is kept for the
 * newline). */
struct line {
    char buf[LOG_LINE_MAX];
    size_t len;
};

static void put(struct line *l, const char *s, size_t n) {
    if (n > sizeof l->buf - 1 - l->len)
        n = sizeof l->buf - 1 - l->len;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

__attribute__((format(printf, 2, 3)))
static void putf(struct line *l, const char *fmt, ...) {
    size_t room = sizeof l->buf - 1 - l->len;
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(l->buf + l->len, room + 1, fmt, ap);
    va_end(ap);
    if (n > 0)
        l->len += (size_t)n < room ? (size_t)n : room;
}

/* The length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
    size_t len = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 ? 3
                 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;

    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    if ((len == 3 && s[0] == 0xe0 && s[1] < 0xa0) ||
        (len == 3 && s[0] == 0xed && s[1] >= 0xa0) ||
        (len == 4 && s[0] == 0xf0 && s[1] < 0x90) ||
        (len == 4 && s[0] == 0xf4 && s[1] >= 0x90))
        return 0;
    return len;
}

/* msg as a JSON string (invalid UTF-8 becomes U+FFFD) or a logfmt quoted
 * value. */
static void put_quoted(struct line *l, const char *msg, int json) {
    const unsigned char *s = (const unsigned char *)msg;
    size_t n = strlen(msg);

    put(l, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        size_t u;
        if (s[i] == '"' || s[i] == '\\') {
            putf(l, "\\%c", s[i]);
        } else if (s[i] == '\n') {
            put(l, "\\n", 2);
        } else if (s[i] < 0x20 || s[i] == 0x7f) {
            putf(l, json ? "\\u%04x" : "\\x%02x", s[i]);
        } else if (s[i] < 0x80 || !json) {
            put(l, (const char *)s + i, 1);
        } else if ((u = utf8_len(s + i, n - i)) > 0) {
            put(l, (const char *)s + i, u);
            i += u - 1;
        } else {
            put(l, "\\ufffd", 6);
        }
    }
    put(l, "\"", 1);
}

static void log_line(struct line *l, int level, unsigned long long id,
                     const char *msg) {
    const char *lv = level < 0 ? "notice" : level_names[level];
    struct timespec ts;
    struct tm tm;
    char when[64];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (log_format == LOG_TEXT) {
        putf(l, "%02d:%02d:%02d.%03ld [%d] %s: %s", tm.tm_hour, tm.tm_min,
             tm.tm_sec, ts.tv_nsec / 1000000, (int)getpid(), lv, msg);
        return;
    }
    snprintf(when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    if (log_format == LOG_LOGFMT) {
        putf(l, "ts=%s level=%s pid=%d", when, lv, (int)getpid());
        if (log_worker >= 0)
            putf(l, " worker=%d", log_worker);
        if (id)
            putf(l, " conn=%llu", id);
        put(l, " msg=", 5);
        put_quoted(l, msg, 0);
        return;
    }
    putf(l, "{\"ts\":\"%s\",\"level\":\"%s\",\"pid\":%d", when, lv,
         (int)getpid());
    if (log_worker >= 0)
        putf(l, ",\"worker\":%d", log_worker);
    if (id)
        putf(l, ",\"conn\":%llu", id);
    put(l, ",\"msg\":", 7);
    put_quoted(l, msg, 1);
    put(l, "}", 1);
}

static void log_vwrite(int level, unsigned long long id, const char *fmt,
                       va_list ap) {
    static struct line l;       /* one line at a time per process */
    char msg[LOG_MSG_MAX];

    if (level > log_level)
        return;
    vsnprintf(msg, sizeof msg, fmt, ap);
    l.len = 0;
    log_line(&l, level, id, msg);
    l.buf[l.len++] = '\n';
    (void)!write(log_fd, l.buf, l.len);
    if (level == LOG_ERROR && !log_up && log_fd != STDERR_FILENO)
        (void)!write(STDERR_FILENO, l.buf, l.len);
}

void log_msg(int level, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    log_vwrite(level, 0, fmt, ap);
    va_end(ap);
}

void log_conn(int level, unsigned long long id, const char *fmt, ...) {
    va_list ap;

    va_start(ap, fmt);
    log_vwrite(level, id, fmt, ap);
    va_end(ap);
}
