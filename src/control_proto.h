/* Control socket internals shared by control.c (the master's side: socket,
 * session processes, the requests it relays to the workers; and the
 * client), control_sess.c (a session process) and control_cmd.c (the
 * session's stats/conns/handler/reload and the worker's answerer). */
#ifndef ECHOHOST_CONTROL_PROTO_H
#define ECHOHOST_CONTROL_PROTO_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/un.h>

#include <lua.h>

#include "config.h"
#include "control.h"
#include "ev.h"
#include "net.h"

/* Server -> client frames: "<type> <len>\n<len bytes>". Client -> server:
 * lines ending in "\n"; CONTROL_META starts a line carrying the client's
 * working directory; a CONTROL_INTR byte anywhere is Ctrl-C. */
#define CONTROL_FRAME_OUT 'o'           /* results, print() */
#define CONTROL_FRAME_ERR 'e'           /* errors and tracebacks */
#define CONTROL_FRAME_INFO 'i'          /* greeting, shown on a terminal */
#define CONTROL_FRAME_READY 'p'         /* the next line starts a chunk */
#define CONTROL_FRAME_MORE 'c'          /* the next line continues one */
#define CONTROL_META '\001'
#define CONTROL_INTR '\003'

/* Master <-> worker messages (SOCK_SEQPACKET): "<seq> <command>[ <arg>]"
 * and "<seq> <Lua table constructor>"; a reply fits in one message. */
#define CONTROL_MSG_MAX 65536
#define CONTROL_REPLY_MS 2000           /* how long the master waits */

/* Session <-> master (a SOCK_STREAM socketpair): messages "<len>\n<len
 * bytes>". The session asks "<seq> <command>[ <arg>]" (the commands of the
 * workers); the master answers "<seq>\n" then one entry per worker, "W
 * <slot> <pid> <len>\n<its reply>" or "X <slot> <pid> <len>\n<why not>",
 * "F 0 0 <len>\n<error>" when the master refused a handler, and last "D
 * <operators> <master pid> <len>\n<reload failures>". */

/* A growing byte buffer: data from pos to len is pending. */
struct control_buf {
    char *p;
    size_t len, cap, pos;
};

/* Appends len bytes: 0, or -1 when out of memory. */
int control_buf_put(struct control_buf *b, const char *data, size_t len);
/* Appends one "<len>\n<bytes>" message. 0 or -1. */
int control_buf_msg(struct control_buf *b, const char *data, size_t len);
/* The next complete message from pos: 1 with *msg and *len set (pos moved
 * past it), 0 when incomplete, -1 when malformed. */
int control_buf_next(struct control_buf *b, const char **msg, size_t *len);
/* Drops what was taken (pos) from the front. */
void control_buf_compact(struct control_buf *b);
void control_buf_free(struct control_buf *b);

struct control_worker {
    pid_t pid;
    int fd;                     /* the master's end of the channel, or -1 */
    int asked;                  /* the request in flight waits for it */
};

/* The operator's session, in its own process. */
struct control_sess {
    struct control *ctl;
    int fd;                     /* the operator's socket */
    int chan;                   /* to the master */
    struct control_buf chin;    /* what the master sent */
    unsigned seq;               /* requests to the master */
    lua_State *L;
    struct repl *r;
    char *in, *out;
    size_t inlen, incap, outlen, outcap, outpos;
    int closing;                /* end the session once its output is out */
    char cwd[PATH_MAX];         /* the client's directory, for paths */
};

struct control_op;              /* a session process, seen by the master */
struct control_req;             /* a session's request, in the master */

struct control {
    ev_loop *loop;
    const struct eh_config *cfg;
    pid_t master;
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int owns_path;              /* unlinks it at the end: not while an
                                   upgrade takes over, nor once handed over */
    struct net_unix_id id;      /* the socket file it bound */
    struct control_worker *workers;
    int nworkers;
    unsigned seq;               /* request numbers: late replies are dropped */
    long eval_ms;               /* longest evaluation of a session */
    control_swap_proc *swap;    /* the master loads first (handler, reload) */
    void *swap_ud;
    const struct server_stats *stats;   /* the shared statistics, or NULL */
    struct control_op *ops;     /* session processes */
    int nops;
    struct control_req *queue, *queue_tail;     /* waiting requests */
    struct control_req *cur;    /* the one the workers are answering */
    long long cur_timer;
};

/* control_sess.c: in the newly forked session process: serves the operator
 * on fd, asks the master through chan. Never returns. */
void control_sess_main(struct control *ctl, int fd, int chan)
    __attribute__((noreturn));
/* Queues one frame for the operator (sent by the loop). */
void control_frame(struct control_sess *s, int type, const char *data,
                   size_t len);
/* Asks the master req and waits for the answer: pushes it (the entries
 * after "<seq>\n") as a string, or raises. */
void control_sess_ask(lua_State *L, struct control_sess *s, const char *req);

/* control_cmd.c: stats, conns, handler, reload as globals of a session. */
void control_openlib(lua_State *L, struct control_sess *s);

#endif
