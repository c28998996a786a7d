/* Control socket internals shared by control.c (socket, sessions, client)
 * and control_cmd.c (stats/conns/handler/reload and the worker channel). */
#ifndef ECHOHOST_CONTROL_PROTO_H
#define ECHOHOST_CONTROL_PROTO_H

#include <limits.h>
#include <sys/types.h>
#include <sys/un.h>

#include <lua.h>

#include "config.h"
#include "control.h"
#include "ev.h"

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

struct control_worker {
    pid_t pid;
    int fd;                     /* the master's end of the channel, or -1 */
};

struct control_sess {
    struct control *ctl;
    int fd;
    lua_State *L;
    struct repl *r;
    char *in, *out;
    size_t inlen, incap, outlen, outcap, outpos;
    int closing;                /* end the session once its output is out */
    char cwd[PATH_MAX];         /* the client's directory, for paths */
    struct control_sess *prev, *next;
};

struct control {
    ev_loop *loop;
    const struct eh_config *cfg;
    int fd;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct control_worker *workers;
    int nworkers;
    unsigned seq;               /* request numbers: late replies are dropped */
    long eval_ms;               /* longest evaluation of a session */
    control_swap_proc *swap;    /* the master loads first (handler, reload) */
    void *swap_ud;
    const uint64_t *reload_failures;    /* the master's count, or NULL */
    struct control_sess *sessions;
};

/* control.c: queues one frame for the operator (sent by the loop). */
void control_frame(struct control_sess *s, int type, const char *data,
                   size_t len);

/* control_cmd.c: stats, conns, handler, reload as globals of a session. */
void control_openlib(lua_State *L, struct control_sess *s);

#endif
