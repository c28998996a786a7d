/* Control socket: `--control PATH` (a Unix socket in the master, one REPL
 * session per operator) and `echohost --repl --connect PATH` (its client). */
#ifndef ECHOHOST_CONTROL_H
#define ECHOHOST_CONTROL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "ev.h"

#define CONTROL_ERR_LEN 256

struct control;
struct repl_input;
struct worker;

/* --- master ------------------------------------------------------------- */

/* Listens on cfg->control (mode 0600) on the master's loop. A path that
 * exists is taken over only when it is a stale socket (connect() refused);
 * anything else is refused. NULL on failure with the reason in err. */
struct control *control_open(ev_loop *loop, const struct eh_config *cfg,
                             char *err, size_t errlen);
/* Upgrades. The new master listens on fd, the old master's socket, but
 * leaves the path alone until control_claim (it has taken over: the path
 * is its to unlink at the end). The old one's control_release stops
 * accepting operators (the sessions go on) and leaves the path to the new
 * one. control_fd: the listening socket, to hand over. */
struct control *control_adopt(ev_loop *loop, const struct eh_config *cfg,
                              int fd, char *err, size_t errlen);
void control_claim(struct control *ctl);
void control_release(struct control *ctl);
int control_fd(const struct control *ctl);
/* Ends every session, closes the socket and unlinks its path (if it owns
 * it). */
void control_close(struct control *ctl);

/* handler(path) and reload() call swap(ud, path, err, errlen) (path NULL:
 * the current file) before asking the workers, and stop there when it
 * returns -1: the master refuses a file that does not load. */
typedef int control_swap_proc(void *ud, const char *path, char *err,
                              size_t errlen);
void control_set_swap(struct control *ctl, control_swap_proc *swap,
                      void *ud);
/* stats() reads st: the workers' shared counters and the master's. */
struct server_stats;
void control_set_stats(struct control *ctl, const struct server_stats *st);

/* In a newly forked worker: closes the fds it inherited from the control
 * side of the master (socket, sessions, other channels) and frees the
 * copies of the sessions; the path is left alone. */
void control_after_fork(struct control *ctl);

/* A channel to the workers: a SOCK_SEQPACKET socketpair made before the
 * fork. The master keeps fds[0], the worker fds[1]. -1 with errno. */
int control_channel(int fds[2]);
/* Worker slot i is now process pid reached through fd (the master's end,
 * owned by control from now on; -1 when the slot is empty). */
void control_set_worker(struct control *ctl, int slot, pid_t pid, int fd);

/* --- worker ------------------------------------------------------------- */

/* Answers the master's requests on fd (the worker's end) from the worker's
 * loop. 0, or -1 with errno. */
int control_worker_attach(struct worker *w, ev_loop *loop, int fd);

/* --- client ------------------------------------------------------------- */

/* The prompt of `echohost --repl --connect path`. Returns the exit status. */
int control_client(const char *path, struct repl_input *in);

#endif
