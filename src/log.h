/* Logging to stderr: one line per event, prefixed with the pid. */
#ifndef ECHOHOST_LOG_H
#define ECHOHOST_LOG_H

/* LOG_NOTICE is printed at every level: the lines scripts depend on
 * ("listening on", which says the port chosen for port 0). */
enum { LOG_NOTICE = -1, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

extern int log_level;

int log_parse_level(const char *name);   /* -1 if unknown */
void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
    do { if (log_level >= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
