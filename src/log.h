/* Logging: one line per event, prefixed with the time and pid, written with
 * a single write(2) so lines from several processes do not interleave; to
 * stderr, or to --log FILE (reopened on SIGUSR1), as text, logfmt or JSON
 * lines. */
#ifndef ECHOHOST_LOG_H
#define ECHOHOST_LOG_H

#include <stddef.h>

/* LOG_NOTICE is printed at every level: the lines scripts depend on
 * ("listening on", which says the port chosen for port 0). */
enum { LOG_NOTICE = -1, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum { LOG_TEXT, LOG_LOGFMT, LOG_JSON };

extern int log_level;
extern int log_format;

int log_parse_level(const char *name);   /* -1 if unknown */
int log_parse_format(const char *name);  /* -1 if unknown */

/* Appends to path from now on (created 0644). 0, or -1 with err filled
 * ("cannot open the log /x/y: No such file or directory"). */
int log_open(const char *path, char *err, size_t errlen);
/* Opens the log's path again (after a rename by logrotate): 0, or -1 with
 * the old file kept and the failure logged there. 0 without --log. */
int log_reopen(void);
/* Until this is called, errors also go to stderr when --log is given: the
 * reason a server did not start is seen where it was started. */
void log_started(void);
/* Lines of this process name its worker slot (structured formats). */
void log_set_worker(int slot);

void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A line about connection id (0: none): the structured formats give it a
 * field of its own, the text format says it in the message. */
void log_conn(int level, unsigned long long id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
    do { if (log_level >= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
