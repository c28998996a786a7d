/* Handler runtime internals (handler_lua.c) shared by the event runtime
 * (handler.c) and the fork-model runtime (handler_blocking.c): loading a
 * handler file, the "echohost.conn" object, the instruction budget. */
#ifndef ECHOHOST_HANDLER_LUA_H
#define ECHOHOST_HANDLER_LUA_H

#include <stddef.h>
#include <lua.h>

#define HL_CONN "echohost.conn"

enum hl_kind { HL_FN, HL_CALLBACKS, HL_DIRECT };

/* A loaded handler: registry refs (LUA_REFNIL when absent). */
struct hl_refs {
    enum hl_kind kind;
    int data;                   /* the function, or on_data */
    int open, close, handle;
};

struct hconn;

/* The userdata behind a conn object. It may outlive its connection (a
 * handler can keep it): hc is NULL and fd -1 once the connection is gone. */
struct lconn {
    struct hconn *hc;           /* event model */
    int fd;                     /* fork model: the blocking socket */
    int eof;                    /* fork model: the client shut down */
    int closed;                 /* conn:close() was called */
    int direct;                 /* fork model: run by handle(conn) */
    lua_Integer id;
    double timeout;             /* seconds; < 0: none */
    char peer[64];
};

/* Loads path in a fresh _ENV (__index = _G) and checks what it returns.
 * 0 and refs filled, or -1 with "file:line: message" in err. */
int hl_load(lua_State *L, const char *path, long budget, struct hl_refs *r,
            char *err, size_t errlen);
void hl_unref(lua_State *L, struct hl_refs *r);

/* Creates the echohost.conn metatable in L (once per state). */
void hl_createmeta(lua_State *L);
/* Pushes a new conn object; raises on memory errors. */
struct lconn *hl_newconn(lua_State *L, lua_Integer id, const char *peer);

/* Arms the instruction budget of L for one call or resume (0: none). */
void hl_budget(lua_State *L, long budget);

/* I/O failure results: nil, msg, code. Returns 3. */
int hl_fail(lua_State *L, const char *msg, int code);

/* Replies: a string is sent, nil is nothing; otherwise raises. */
const char *hl_reply(lua_State *L, int idx, size_t *len);

/* Methods implemented by each runtime, dispatched on lconn. */
int hl_event_recv(lua_State *L, struct lconn *u);
int hl_event_send(lua_State *L, struct lconn *u);
int hl_event_close(lua_State *L, struct lconn *u);
int hl_block_recv(lua_State *L, struct lconn *u);
int hl_block_send(lua_State *L, struct lconn *u);
int hl_block_close(lua_State *L, struct lconn *u);

#endif
