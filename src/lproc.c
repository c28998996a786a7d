/* echohost.proc: processes for Lua -- fork (returning the glue value
 * (Parent pid) or Child, as the original Proc module), waitpid, kill, exit. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <lauxlib.h>
#include <lua.h>

int luaopen_echohost_proc(lua_State *L);

/* nil, "<what> <pid>: <strerror>", errno [lauxlib.c luaL_fileresult]. */
static int proc_fail(lua_State *L, const char *what, lua_Integer pid) {
    int err = errno;
    lua_pushnil(L);
    lua_pushfstring(L, "%s %I: %s", what, pid, strerror(err));
    lua_pushinteger(L, err);
    return 3;
}

static pid_t check_pid(lua_State *L, int arg) {
    lua_Integer pid = luaL_checkinteger(L, arg);
    luaL_argcheck(L, pid >= -2147483647 && pid <= 2147483647, arg,
                  "pid out of range");
    return (pid_t)pid;
}

/* Pushes glue.identity.Parent and glue.identity.Child (the identity type of
 * the glue prelude). Raises if echohost.glue cannot be loaded: better before
 * the fork than in two processes after it. */
static void push_identity(lua_State *L) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "echohost.glue");
    lua_call(L, 1, 1);                          /* glue */
    if (lua_getfield(L, -1, "identity") != LUA_TTABLE)
        luaL_error(L, "echohost.glue has no identity type");
    lua_getfield(L, -1, "Parent");              /* glue identity Parent */
    lua_getfield(L, -2, "Child");               /* glue identity Parent Child */
    if (lua_isnil(L, -2) || lua_isnil(L, -1))
        luaL_error(L, "echohost.glue identity lacks Parent or Child");
}

/* fork(): (Parent pid) in the parent, Child in the child, or nil, message,
 * errno. C stdio is flushed first so that buffered output is not written
 * twice. */
static int proc_fork(lua_State *L) {
    pid_t pid;

    lua_settop(L, 0);
    push_identity(L);                   /* glue identity Parent Child */
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        int err = errno;
        lua_pushnil(L);
        lua_pushfstring(L, "fork: %s", strerror(err));
        lua_pushinteger(L, err);
        return 3;
    }
    if (pid == 0)
        return 1;                       /* Child */
    lua_pop(L, 1);
    lua_pushinteger(L, pid);
    lua_call(L, 1, 1);                  /* Parent(pid) */
    return 1;
}

/* "SIGTERM" for 15; the number itself for a signal without a name. */
static void push_signal(lua_State *L, int sig) {
    const char *abbrev = sigabbrev_np(sig);
    if (abbrev)
        lua_pushfstring(L, "SIG%s", abbrev);
    else
        lua_pushinteger(L, sig);
}

/* waitpid(pid [, "nohang"]): how a child ended, as "exited", code, pid or
 * "signaled", "SIGNAME", pid. With "nohang" and no child ended yet:
 * "running", nil, pid-argument. pid -1 waits for any child. Failure (no such
 * child): nil, message, errno. */
static int proc_waitpid(lua_State *L) {
    static const char *const opts[] = {"block", "nohang", NULL};
    pid_t pid = check_pid(L, 1);
    int nohang = luaL_checkoption(L, 2, "block", opts);
    int status;
    pid_t got;

    do
        got = waitpid(pid, &status, nohang ? WNOHANG : 0);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        return proc_fail(L, "waitpid", pid);
    if (got == 0) {
        lua_pushliteral(L, "running");
        lua_pushnil(L);
        lua_pushinteger(L, pid);
        return 3;
    }
    if (WIFSIGNALED(status)) {
        lua_pushliteral(L, "signaled");
        push_signal(L, WTERMSIG(status));
    } else {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(status));
    }
    lua_pushinteger(L, got);
    return 3;
}

/* The signal number named by arg: 15, "TERM" or "SIGTERM". Raises on an
 * unknown name or number. */
static int check_signal(lua_State *L, int arg) {
    const char *name;

    if (lua_type(L, arg) == LUA_TNUMBER) {
        lua_Integer n = luaL_checkinteger(L, arg);
        luaL_argcheck(L, n >= 0 && n < NSIG, arg, "unknown signal");
        return (int)n;
    }
    name = luaL_optstring(L, arg, "TERM");
    if (strncmp(name, "SIG", 3) == 0)
        name += 3;
    for (int sig = 1; sig < NSIG; sig++) {
        const char *abbrev = sigabbrev_np(sig);
        if (abbrev && strcmp(abbrev, name) == 0)
            return sig;
    }
    return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s'",
                                                 lua_tostring(L, arg)));
}

/* kill(pid [, signal]): true, or nil, message, errno. signal defaults to
 * "TERM"; 0 only checks that the process exists. */
static int proc_kill(lua_State *L) {
    pid_t pid = check_pid(L, 1);
    int sig = check_signal(L, 2);

    if (kill(pid, sig) < 0)
        return proc_fail(L, "kill", pid);
    lua_pushboolean(L, 1);
    return 1;
}

/* getpid(): this process's id. */
static int proc_getpid(lua_State *L) {
    lua_pushinteger(L, getpid());
    return 1;
}

/* exit([code]): ends the process at once with code (0..255, or true = 0,
 * false = 1; default 0) after flushing C stdio. No Lua finalizers or atexit
 * handlers run: a forked child must not run its parent's cleanup. */
static int proc_exit(lua_State *L) {
    lua_Integer code;

    if (lua_isboolean(L, 1))
        code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
    else
        code = luaL_optinteger(L, 1, EXIT_SUCCESS);
    luaL_argcheck(L, code >= 0 && code <= 255, 1, "code out of range 0..255");
    fflush(NULL);
    _exit((int)code);
}

static const luaL_Reg proc_funcs[] = {
    {"exit", proc_exit},
    {"fork", proc_fork},
    {"getpid", proc_getpid},
    {"kill", proc_kill},
    {"waitpid", proc_waitpid},
    {NULL, NULL}
};

int luaopen_echohost_proc(lua_State *L) {
    luaL_newlib(L, proc_funcs);
    return 1;
}
