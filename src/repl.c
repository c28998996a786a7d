/* REPL: `echohost --repl`, a Lua 5.4 prompt on echohost's values, and the
 * evaluator shared with control-socket sessions [lua.c doREPL]. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "control.h"
#include "edit.h"
#include "lhost.h"
#include "repl.h"

#define REPL_PROMPT "> "
#define REPL_PROMPT2 ">> "
#define REPL_HISTORY_MAX 1000
#define REPL_EOFMARK "<eof>"            /* an incomplete chunk [lua.c] */
#define REPL_HOOK_COUNT 10000           /* instructions between checks */

struct repl {
    lua_State *L;
    const char *chunkname;
    repl_write_fn *write;
    void *ud;
    char *buf;                  /* the chunk read so far */
    size_t len, cap;
    long limit_ms;              /* 0: none */
    repl_check_fn *check;
    long long deadline_ms;
    int sigint;                 /* Ctrl-C interrupts (the local prompt) */
    int returns;                /* the chunk is "=expr": already a return */
};

struct repl_input {
    lua_State *L;               /* prompts and completion, or NULL */
    int tty;
    const struct edit *ed;      /* line editing on the terminal, or NULL */
    int cancelled;              /* the last read was ended by Ctrl-C */
    char *history;              /* file, or NULL: not a terminal, or not
                                   writable (said once) */
};

static const char *const repl_modules[] = {"glue", "socket", "proc", NULL};

/* The session running now: hooks and signal handlers find it here (one
 * evaluation at a time per process). */
static struct repl *repl_running;

static long long repl_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- session setup ---------------------------------------------------- */

/* print() of a session: like the base print, but through its writer. */
/* Pushes tostring of every value on the stack, joined by tabs, then end. */
static void repl_push_joined(lua_State *L, const char *end) {
    int n = lua_gettop(L);
    luaL_Buffer b;

    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_addstring(&b, end);
    luaL_pushresult(&b);
}

static int repl_print(lua_State *L) {
    struct repl *r = lua_touserdata(L, lua_upvalueindex(1));
    const char *s;
    size_t len;

    repl_push_joined(L, "\n");
    s = lua_tolstring(L, -1, &len);
    r->write(r->ud, REPL_OUT, s, len);
    return 0;
}

static int repl_require(lua_State *L) {
    lua_getglobal(L, "require");
    lua_insert(L, 1);
    lua_call(L, 1, 1);
    return 1;
}

/* require(name) in protected mode: the value, or nil when it fails. */
static void repl_tryrequire(lua_State *L, const char *name) {
    lua_pushcfunction(L, repl_require);
    lua_pushstring(L, name);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lua_pop(L, 1);
        lua_pushnil(L);
    }
}

struct repl *repl_new(lua_State *L, const char *chunkname,
                      repl_write_fn *write, void *ud) {
    struct repl *r = calloc(1, sizeof *r);
    char name[64];

    if (r == NULL)
        return NULL;
    r->L = L;
    r->chunkname = chunkname;
    r->write = write;
    r->ud = ud;
    for (int i = 0; repl_modules[i]; i++) {
        snprintf(name, sizeof name, "echohost.%s", repl_modules[i]);
        repl_tryrequire(L, name);
        lua_setglobal(L, repl_modules[i]);      /* glue = require(...) */
    }
    repl_tryrequire(L, "echohost.pretty");
    lua_setfield(L, LUA_REGISTRYINDEX, "echohost.repl.pretty");
    lua_pushlightuserdata(L, r);
    lua_pushcclosure(L, repl_print, 1);
    lua_setglobal(L, "print");
    return r;
}

void repl_free(struct repl *r) {
    if (r == NULL)
        return;
    free(r->buf);
    free(r);
}

void repl_reset(struct repl *r) {
    r->len = r->returns = 0;
}

void repl_set_limits(struct repl *r, long ms, repl_check_fn *check) {
    r->limit_ms = ms;
    r->check = check;
}

/* --- evaluation --------------------------------------------------------- */

static void repl_puts(struct repl *r, int stream, const char *s) {
    r->write(r->ud, stream, s, strlen(s));
    r->write(r->ud, stream, "\n", 1);
}

/* Reports the error on top of the stack and pops it [lua.c report]. */
static void repl_report(struct repl *r) {
    lua_State *L = r->L;
    const char *msg = lua_tostring(L, -1);

    if (msg == NULL)
        msg = lua_pushfstring(L, "(error object is a %s value)",
                              luaL_typename(L, -1));
    repl_puts(r, REPL_ERR, msg);
    lua_settop(L, 0);
}

/* The hook of a running evaluation: interrupts (Ctrl-C set it with a
 * count of 1, or the session's check asks) and the time limit. */
static void repl_hook(lua_State *L, lua_Debug *ar) {
    struct repl *r = repl_running;

    (void)ar;
    if (r == NULL)
        return;
    if (r->check && r->check(r->ud)) {
        lua_sethook(L, NULL, 0, 0);
        luaL_error(L, "interrupted!");
    }
    if (r->limit_ms && repl_now_ms() > r->deadline_ms) {
        lua_sethook(L, NULL, 0, 0);
        luaL_error(L, "evaluation stopped: longer than %d ms",
                   (int)r->limit_ms);
    }
}

/* Ctrl-C during an evaluation: the next instruction raises [lua.c lstop]. */
static void repl_stop(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

static void repl_sigint(int sig) {
    struct repl *r = repl_running;
    int mask = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;

    signal(sig, SIG_DFL);       /* a second Ctrl-C ends the process */
    if (r)
        lua_sethook(r->L, repl_stop, mask, 1);
}

/* Runs the function on top of the stack with a traceback handler, and
 * Ctrl-C or the limits able to stop it [lua.c docall]. */
static int repl_docall(struct repl *r) {
    lua_State *L = r->L;
    int status;

    repl_running = r;
    if (r->limit_ms || r->check) {
        r->deadline_ms = repl_now_ms() + r->limit_ms;
        lua_sethook(L, repl_hook, LUA_MASKCOUNT, REPL_HOOK_COUNT);
    }
    if (r->sigint)
        signal(SIGINT, repl_sigint);
    status = eh_pcall(L, 0, LUA_MULTRET);
    if (r->sigint)
        signal(SIGINT, SIG_DFL);
    lua_sethook(L, NULL, 0, 0);
    repl_running = NULL;
    return status;
}

static int repl_fallback_results(lua_State *L) {
    repl_push_joined(L, "");
    return 1;
}

/* Writes the values on the stack through pretty.results [lua.c l_print]. */
static void repl_results(struct repl *r) {
    lua_State *L = r->L;
    int n = lua_gettop(L);

    if (n == 0)
        return;
    luaL_checkstack(L, 2, "too many results to print");
    lua_getfield(L, LUA_REGISTRYINDEX, "echohost.repl.pretty");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "results");
        lua_remove(L, -2);
    } else {
        lua_pop(L, 1);
        lua_pushcfunction(L, repl_fallback_results);
    }
    lua_insert(L, 1);
    if (eh_pcall(L, n, 1) != LUA_OK || !lua_isstring(L, -1)) {
        lua_pushfstring(L, "error printing results: %s",
                        lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
        repl_report(r);
        return;
    }
    repl_puts(r, REPL_OUT, lua_tostring(L, -1));
    lua_settop(L, 0);
}

/* 1 when the load error on top says the chunk is incomplete (and pops
 * it) [lua.c incomplete]. */
static int repl_incomplete(lua_State *L, int status) {
    size_t lmsg, lmark = sizeof(REPL_EOFMARK) - 1;
    const char *msg;

    if (status != LUA_ERRSYNTAX)
        return 0;
    msg = lua_tolstring(L, -1, &lmsg);
    if (lmsg >= lmark && strcmp(msg + lmsg - lmark, REPL_EOFMARK) == 0) {
        lua_pop(L, 1);
        return 1;
    }
    return 0;
}

static int repl_append(struct repl *r, const char *s, size_t len) {
    if (r->len + len + 1 > r->cap) {
        size_t cap = (r->len + len + 1) * 2;
        char *p = realloc(r->buf, cap);
        if (p == NULL)
            return -1;
        r->buf = p;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, s, len);
    r->len += len;
    r->buf[r->len] = '\0';
    return 0;
}

/* The chunk as an expression: "return <chunk>" [lua.c addreturn]. Leaves
 * the compiled function (LUA_OK) or the error message (LUA_ERRSYNTAX), or
 * nothing and returns -1 when the expression is only incomplete. */
static int repl_addreturn(struct repl *r, const char *code, size_t len) {
    lua_State *L = r->L;
    int status;

    lua_pushliteral(L, "return ");
    lua_pushlstring(L, code, len);
    lua_concat(L, 2);
    code = lua_tolstring(L, -1, &len);
    status = luaL_loadbuffer(L, code, len, r->chunkname);
    lua_remove(L, -2);
    if (status == LUA_OK)
        return LUA_OK;
    if (repl_incomplete(L, status))
        return -1;
    return status;
}

static void repl_run(struct repl *r, int status) {
    if (status == LUA_OK)
        status = repl_docall(r);
    if (status == LUA_OK)
        repl_results(r);
    else
        repl_report(r);
}

int repl_feed(struct repl *r, const char *line, size_t len) {
    int ret, status;

    lua_settop(r->L, 0);
    if (r->len == 0 && len > 0 && line[0] == '=') {     /* "=expr" [5.1] */
        line++, len--;
        r->returns = 1;
    }
    if ((r->len > 0 && repl_append(r, "\n", 1) < 0) ||
        repl_append(r, line, len) < 0) {
        r->len = r->returns = 0;
        repl_puts(r, REPL_ERR, "not enough memory");
        return REPL_READY;
    }
    /* An expression first, so that its values print; then a statement. */
    status = ret = repl_addreturn(r, r->buf, r->len);
    if (ret != LUA_OK && !r->returns) {
        if (ret != -1)
            lua_pop(r->L, 1);
        status = luaL_loadbuffer(r->L, r->buf, r->len, r->chunkname);
        if (repl_incomplete(r->L, status))
            return REPL_MORE;
        if (status != LUA_OK && ret == -1) {        /* "{1," goes on */
            lua_pop(r->L, 1);
            return REPL_MORE;
        }
    }
    if (status == -1)
        return REPL_MORE;
    r->len = r->returns = 0;
    repl_run(r, status);
    return REPL_READY;
}

/* --- line input ----------------------------------------------------------- */

static char *repl_history_path(const char *history) {
    const char *home = getenv("HOME");
    char *path;

    if (history)
        return strdup(history);
    if (home == NULL || *home == '\0') {
        struct passwd *pw = getpwuid(getuid());
        home = pw ? pw->pw_dir : ".";
    }
    if (asprintf(&path, "%s/.echohost_history", home) < 0)
        return NULL;
    return path;
}

/* Creates the history file 0600 if it is missing (write_history() would
 * use the umask's mode; it keeps an existing file's). 0, or -1 and errno. */
static int repl_history_create(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);

    if (fd < 0)
        return -1;
    close(fd);
    return 0;
}

/* A history that cannot be written is said once, then no longer kept. */
static void repl_history_lost(struct repl_input *in, int err) {
    fprintf(stderr, "echohost: history %s: %s (history is not saved)\n",
            in->history, strerror(err));
    free(in->history);
    in->history = NULL;
}

static void repl_history_save(struct repl_input *in) {
    int err;

    if (repl_history_create(in->history) < 0)
        repl_history_lost(in, errno);
    else if ((err = in->ed->write_history(in->history)) != 0)
        repl_history_lost(in, err);
}

/* --- completion and prompts ------------------------------------------------ */

static struct repl_input *repl_completing;  /* the terminal's input */
/* a word to complete may hold "." and ":" ("glue.list.co", "s:up") */
static char repl_word_breaks[] = " \t\n\"'`@$><=;|&{}()[],+-*/%^#~";
static char **repl_matches;                 /* the completions, NULL-ended */

/* pretty.complete(text, _G) into repl_matches. */
static int repl_complete_l(lua_State *L) {
    const char *text = lua_touserdata(L, 1);
    lua_Integer n;

    lua_getfield(L, LUA_REGISTRYINDEX, "echohost.repl.pretty");
    lua_getfield(L, -1, "complete");
    lua_pushstring(L, text);
    lua_pushglobaltable(L);
    lua_call(L, 2, 1);
    n = luaL_len(L, -1);
    repl_matches = calloc((size_t)n + 1, sizeof *repl_matches);
    for (lua_Integer i = 0; repl_matches && i < n; i++) {
        lua_geti(L, -1, i + 1);
        repl_matches[i] = strdup(luaL_checkstring(L, -1));
        lua_pop(L, 1);
    }
    return 0;
}

static void repl_matches_free(void) {
    for (size_t i = 0; repl_matches && repl_matches[i]; i++)
        free(repl_matches[i]);
    free(repl_matches);
    repl_matches = NULL;
}

/* readline's generator: the state-th completion (readline frees it). */
static char *repl_match(const char *text, int state) {
    static size_t next;
    (void)text;

    if (state == 0)
        next = 0;
    if (repl_matches == NULL || repl_matches[next] == NULL)
        return NULL;
    return strdup(repl_matches[next++]);
}

static char **repl_complete(const char *text, int start, int end) {
    const struct edit *ed = edit_get();     /* loaded: it calls us */
    lua_State *L = repl_completing ? repl_completing->L : NULL;
    int top;
    (void)start; (void)end;

    *ed->attempted_completion_over = 1;     /* never file names */
    if (L == NULL)
        return NULL;
    repl_matches_free();
    top = lua_gettop(L);
    lua_pushcfunction(L, repl_complete_l);
    lua_pushlightuserdata(L, (void *)text);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK)
        repl_matches_free();
    lua_settop(L, top);
    *ed->completion_append_character = '\0';  /* "glue." goes on */
    return ed->completion_matches(text, repl_match);
}

void repl_input_use_state(struct repl_input *in, lua_State *L) {
    in->L = L;
}

/* tostring(_PROMPT or _PROMPT2) [lua.c get_prompt], protected. */
static int repl_prompt_l(lua_State *L) {
    int more = (int)lua_toboolean(L, 1);

    if (lua_getglobal(L, more ? "_PROMPT2" : "_PROMPT") == LUA_TNIL)
        lua_pushstring(L, more ? REPL_PROMPT2 : REPL_PROMPT);
    else
        luaL_tolstring(L, -1, NULL);
    return 1;
}

/* The prompt, copied to buf (a value of _PROMPT that fails tostring
 * gives the default). */
static const char *repl_prompt(struct repl_input *in, int more, char *buf,
                               size_t len) {
    lua_State *L = in->L;
    const char *p = more ? REPL_PROMPT2 : REPL_PROMPT;
    int top;

    if (L == NULL)
        return p;
    top = lua_gettop(L);
    lua_pushcfunction(L, repl_prompt_l);
    lua_pushboolean(L, more);
    if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_isstring(L, -1))
        p = lua_tostring(L, -1);
    snprintf(buf, len, "%s", p);
    lua_settop(L, top);
    return buf;
}

struct repl_input *repl_input_open(const char *history) {
    struct repl_input *in = calloc(1, sizeof *in);

    if (in == NULL)
        return NULL;
    in->tty = isatty(STDIN_FILENO);
    if (!in->tty)
        return in;
    if ((in->ed = edit_get()) == NULL)
        return in;
    in->history = repl_history_path(history);
    repl_completing = in;
    *in->ed->attempted_completion_function = repl_complete;
    *in->ed->completer_word_break_characters = repl_word_breaks;
    in->ed->using_history();
    in->ed->stifle_history(REPL_HISTORY_MAX);
    if (in->history && repl_history_create(in->history) < 0)
        repl_history_lost(in, errno);       /* before the first prompt */
    if (in->history)
        in->ed->read_history(in->history);
    return in;
}

static char *repl_getline(void) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);

    if (n < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    if (n > 0 && line[n - 1] == '\r')
        line[--n] = '\0';
    return line;
}

static volatile sig_atomic_t repl_prompt_intr;

static void repl_prompt_sigint(int sig) {
    (void)sig;
    repl_prompt_intr = 1;
}

/* Ctrl-C at the prompt makes readline() return NULL (EINTR): the line,
 * and a chunk in progress, are dropped instead of the process. */
char *repl_input_read(struct repl_input *in, int more) {
    struct sigaction sa, old;
    char prompt[256];
    const char *p;
    char *line;

    in->cancelled = 0;
    if (!in->tty)
        return repl_getline();
    fflush(stdout);
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = repl_prompt_sigint;         /* no SA_RESTART */
    sigaction(SIGINT, &sa, &old);
    repl_prompt_intr = 0;
    p = repl_prompt(in, more, prompt, sizeof prompt);
    if (in->ed) {
        line = in->ed->readline(p);
    } else {                    /* a terminal without libedit */
        fputs(p, stdout);
        fflush(stdout);
        line = repl_getline();
    }
    sigaction(SIGINT, &old, NULL);
    if (line == NULL && repl_prompt_intr) {
        putchar('\n');
        in->cancelled = 1;
        return strdup("");
    }
    if (line && *line && in->ed) {
        in->ed->add_history(line);
        if (in->history)
            repl_history_save(in);
    }
    return line;
}

int repl_input_tty(const struct repl_input *in) {
    return in->tty;
}

int repl_input_cancelled(const struct repl_input *in) {
    return in->cancelled;
}

void repl_input_close(struct repl_input *in) {
    if (in == NULL)
        return;
    if (repl_completing == in)
        repl_completing = NULL;
    repl_matches_free();
    free(in->history);
    free(in);
}

/* --- the local prompt ----------------------------------------------------- */

static void repl_stdio_write(void *ud, int stream, const char *s, size_t len) {
    (void)ud;
    if (stream == REPL_ERR) {
        fflush(stdout);         /* keep the order when both go to one file */
        fwrite(s, 1, len, stderr);
        fflush(stderr);
    } else {
        fwrite(s, 1, len, stdout);
    }
}

static int repl_local(struct repl_input *in) {
    lua_State *L = lhost_newstate(0);
    struct repl *r;
    int more = 0;
    char *line;

    if (L == NULL || (r = repl_new(L, "=stdin", repl_stdio_write, NULL))
        == NULL) {
        fprintf(stderr, "echohost: cannot create a Lua state\n");
        if (L)
            lhost_close(L);
        return 1;
    }
    r->sigint = 1;
    repl_input_use_state(in, L);
    if (repl_input_tty(in))
        printf("echohost REPL, %s; Ctrl-D exits\n", LUA_RELEASE);
    while ((line = repl_input_read(in, more)) != NULL) {
        if (repl_input_cancelled(in)) {
            repl_reset(r);
            more = 0;
        } else {
            more = repl_feed(r, line, strlen(line)) == REPL_MORE;
        }
        free(line);
        fflush(stdout);
    }
    if (repl_input_tty(in))
        putchar('\n');
    fflush(stdout);
    repl_input_use_state(in, NULL);
    repl_free(r);
    lhost_close(L);
    return 0;
}

int repl_main(const char *connect, const char *history) {
    struct repl_input *in = repl_input_open(history);
    int rc;

    if (in == NULL) {
        fprintf(stderr, "echohost: out of memory\n");
        return 1;
    }
    rc = connect ? control_client(connect, in) : repl_local(in);
    repl_input_close(in);
    return rc;
}
