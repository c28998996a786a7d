/* Handler runtime for the fork model: the same handler file and forms as the
 * event runtime, on one socket with blocking calls (poll-based timeouts). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>

#include "conn.h"
#include "handler_lua.h"
#include "lhost.h"
#include "log.h"

#define BLOCK_READ_MAX 65536

static long block_budget;       /* cfg->lua_budget of this child */
static size_t block_mem;        /* cfg->lua_mem_limit of this child */
static char block_buf[BLOCK_READ_MAX];

/* 1 when fd is ready for events, 0 on timeout (seconds, < 0: none), -1. */
static int wait_fd(int fd, short events, double timeout) {
    struct pollfd p = {.fd = fd, .events = events};
    int ms = timeout < 0 ? -1 : (int)(timeout * 1000 + 0.5);
    int r;

    while ((r = poll(&p, 1, ms)) < 0 && errno == EINTR)
        ;
    return r;
}

static int io_fail(lua_State *L, const char *what, int e) {
    if (e == ECONNRESET || e == EPIPE || e == ENOTCONN)
        return hl_fail(L, "closed", e);
    lua_pushnil(L);
    lua_pushfstring(L, "%s: %s", what, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

/* Reads at most max bytes into block_buf: > 0, 0 at EOF, -1 (errno), or -2
 * on timeout (seconds, < 0: none). */
static ssize_t block_read(struct lconn *u, size_t max, double timeout) {
    for (;;) {
        int r = wait_fd(u->fd, POLLIN, timeout);
        if (r == 0)
            return -2;
        if (r < 0)
            return -1;
        ssize_t n = recv(u->fd, block_buf, max, 0);
        if (n >= 0 || (errno != EINTR && errno != EAGAIN))
            return n;
    }
}

int hl_block_recv(lua_State *L, struct lconn *u) {
    size_t max = (size_t)lua_tointeger(L, 2);
    ssize_t n;

    if (max == 0 || max > BLOCK_READ_MAX)
        max = BLOCK_READ_MAX;
    if (u->eof)
        return hl_fail(L, "closed", 0);
    if (!u->direct)             /* as in the event model */
        return luaL_error(L, "conn:recv would wait: only a handle(conn) "
                          "coroutine can wait for data");
    n = block_read(u, max, u->timeout);
    hl_budget(L, block_budget);     /* like a resume in the event model */
    if (n == -2)
        return hl_fail(L, "timeout", ETIMEDOUT);
    if (n < 0)
        return io_fail(L, "recv", errno);
    if (n == 0) {
        u->eof = 1;
        return hl_fail(L, "closed", 0);
    }
    lua_pushlstring(L, block_buf, (size_t)n);
    return 1;
}

/* 0, -1 (errno) or -2 on timeout. */
static int block_write(struct lconn *u, const char *s, size_t len) {
    size_t off = 0;

    while (off < len) {
        ssize_t n = send(u->fd, s + off, len - off, MSG_NOSIGNAL);
        if (n >= 0) {
            off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -1;
        int r = wait_fd(u->fd, POLLOUT, u->timeout);
        if (r <= 0)
            return r == 0 ? -2 : -1;
    }
    return 0;
}

int hl_block_send(lua_State *L, struct lconn *u) {
    size_t len;
    const char *s = lua_tolstring(L, 2, &len);
    int r = block_write(u, s, len);

    hl_budget(L, block_budget);
    if (r == -2)
        return hl_fail(L, "timeout", ETIMEDOUT);
    if (r < 0)
        return io_fail(L, "send", errno);
    lua_pushinteger(L, (lua_Integer)len);
    return 1;
}

int hl_block_close(lua_State *L, struct lconn *u) {
    shutdown(u->fd, SHUT_WR);   /* the fd itself is closed on exit */
    lua_pushboolean(L, 1);
    return 1;
}

/* Logs the error at the top of L; returns 1 (the exit status). */
static int block_fault(lua_State *L, const char *path, struct lconn *u) {
    const char *msg = lua_tostring(L, -1);
    log_error("handler %s: connection %s closed: %s", path, u->peer,
              msg ? msg : "(error object is not a string)");
    lua_pop(L, 1);
    return 1;
}

/* Calls ref(conn [, arg]) and sends its reply. 0 or 1 after a fault. */
static int block_call(lua_State *L, const char *path, int ref, int conn_ref,
                      struct lconn *u, const char *arg, size_t len) {
    size_t rlen;
    const char *reply;

    if (ref == LUA_REFNIL)
        return 0;
    lhost_set_mem_limit(L, 0);  /* pushes are unprotected: see handler.c */
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_rawgeti(L, LUA_REGISTRYINDEX, conn_ref);
    if (arg)
        lua_pushlstring(L, arg, len);
    lhost_set_mem_limit(L, block_mem);
    hl_budget(L, block_budget);
    if (eh_pcall(L, arg ? 2 : 1, 1) != LUA_OK)
        return block_fault(L, path, u);
    if (lua_type(L, -1) != LUA_TSTRING && !lua_isnil(L, -1)) {
        lua_pushfstring(L, "handler returned a %s (expected a string or nil)",
                        luaL_typename(L, -1));
        lua_remove(L, -2);
        return block_fault(L, path, u);
    }
    reply = lua_tolstring(L, -1, &rlen);
    if (reply && rlen && !u->closed && block_write(u, reply, rlen) < 0)
        u->closed = 1;
    lua_pop(L, 1);
    return 0;
}

/* Per-message function and callbacks: reads until EOF or a close. */
static int serve_callbacks(lua_State *L, const char *path,
                           const struct hl_refs *r, int conn_ref,
                           struct lconn *u) {
    const char *reason = "closed";
    int status = 0;

    if (r->kind == HL_CALLBACKS)
        status = block_call(L, path, r->open, conn_ref, u, NULL, 0);
    while (status == 0 && !u->closed) {
        ssize_t n = block_read(u, BLOCK_READ_MAX, -1);
        if (n <= 0) {
            reason = n == 0 ? "eof" : "error";
            break;
        }
        status = block_call(L, path, r->data, conn_ref, u, block_buf,
                            (size_t)n);
    }
    if (status)
        reason = "error";
    if (r->kind == HL_CALLBACKS && r->close != LUA_REFNIL) {
        lua_pushstring(L, reason);
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->close);
        lua_rawgeti(L, LUA_REGISTRYINDEX, conn_ref);
        lua_rotate(L, -3, -1);                  /* close, conn, reason */
        hl_budget(L, block_budget);
        if (eh_pcall(L, 2, 0) != LUA_OK)
            status = block_fault(L, path, u);
    }
    return status;
}

/* Direct style: handle(conn) with plain blocking calls. */
static int serve_direct(lua_State *L, const char *path,
                        const struct hl_refs *r, int conn_ref,
                        struct lconn *u) {
    u->direct = 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->handle);
    lua_rawgeti(L, LUA_REGISTRYINDEX, conn_ref);
    hl_budget(L, block_budget);
    if (eh_pcall(L, 1, 0) != LUA_OK)
        return block_fault(L, path, u);
    return 0;
}

int handler_serve_blocking(const struct eh_config *cfg, int fd,
                           const char *peer) {
    lua_State *L = lhost_newstate(cfg->lua_mem_limit);
    char err[512];
    struct hl_refs r;
    struct lconn *u;
    int conn_ref, status;

    block_budget = cfg->lua_budget;
    block_mem = cfg->lua_mem_limit;
    if (L == NULL) {
        log_error("handler: cannot create a Lua state");
        close(fd);
        return 1;
    }
    hl_createmeta(L);
    if (hl_load(L, cfg->handler, cfg->lua_budget, &r, err, sizeof err) < 0) {
        log_error("handler %s: not loaded: %s", cfg->handler, err);
        lhost_close(L);
        close(fd);
        return 1;
    }
    /* non-blocking under the hood: every wait is a poll with the timeout */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    u = hl_newconn(L, (lua_Integer)getpid(), peer);
    u->fd = fd;
    conn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (r.kind == HL_DIRECT)
        status = serve_direct(L, cfg->handler, &r, conn_ref, u);
    else
        status = serve_callbacks(L, cfg->handler, &r, conn_ref, u);
    u->fd = -1;
    u->closed = 1;
    close(fd);
    lhost_close(L);
    return status;
}
