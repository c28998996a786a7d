/* REPL: the Lua prompt of `echohost --repl`, and the evaluator it shares
 * with control-socket sessions inside a running server. */
#ifndef ECHOHOST_REPL_H
#define ECHOHOST_REPL_H

#include <stddef.h>
#include <lua.h>

enum { REPL_READY, REPL_MORE };          /* what repl_feed wants next */
enum { REPL_OUT = 1, REPL_ERR = 2 };     /* the two output streams */

/* Where a session's output goes: results and print() to REPL_OUT, error
 * messages and tracebacks to REPL_ERR. */
typedef void repl_write_fn(void *ud, int stream, const char *s, size_t len);

struct repl;
struct repl_input;

/* Runs `echohost --repl` (connect == NULL) or the client of a server's
 * control socket. history: the history file, NULL for the default
 * ~/.echohost_history. Returns the exit status. */
int repl_main(const char *connect, const char *history);

/* Prepares L for a session: echohost modules as globals (glue, socket,
 * proc; those that load), echohost.pretty for results, print() through
 * write. Returns a session bound to L (L stays the caller's), or NULL when
 * out of memory. chunkname names the code in messages ("=stdin"). */
struct repl *repl_new(lua_State *L, const char *chunkname,
                      repl_write_fn *write, void *ud);
void repl_free(struct repl *r);

/* Feeds one line (no newline). A complete chunk is run and its results or
 * error written; an incomplete one is kept for the next line. Returns
 * REPL_READY (next line starts a chunk) or REPL_MORE (it continues one). */
int repl_feed(struct repl *r, const char *line, size_t len);
/* Drops a chunk in progress (Ctrl-C at the prompt). */
void repl_reset(struct repl *r);

/* Asked now and then while a session's code runs; nonzero interrupts it. */
typedef int repl_check_fn(void *ud);

/* Stops each evaluation of this session that runs longer than ms
 * milliseconds (0: no limit) with an error, and one that check (when not
 * NULL) says to interrupt with "interrupted!". */
void repl_set_limits(struct repl *r, long ms, repl_check_fn *check);

/* Line input: a terminal gets libedit with history (file created 0600),
 * anything else plain lines without prompts. NULL when out of memory. */
struct repl_input *repl_input_open(const char *history);
/* A line without its newline (malloc'd, caller frees), NULL at end of input
 * (or out of memory). more selects the continuation prompt. */
char *repl_input_read(struct repl_input *in, int more);
int repl_input_tty(const struct repl_input *in);
/* The state the prompt belongs to (the local REPL's): its _PROMPT and
 * _PROMPT2 are the prompts, and Tab completes its globals and fields.
 * Without one (a control session), "> ", ">> " and no completion. */
void repl_input_use_state(struct repl_input *in, lua_State *L);
/* 1 when the last repl_input_read was ended by Ctrl-C: it returned "" and
 * a chunk in progress should be dropped. */
int repl_input_cancelled(const struct repl_input *in);
void repl_input_close(struct repl_input *in);

#endif
