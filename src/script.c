/* Script mode: lua5.4's command line [lua.c] over a state with the echohost
 * modules, run as echohost-lua and as echohost --script. */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "edit.h"
#include "lhost.h"
#include "script.h"

#define SCRIPT_PROMPT   "> "
#define SCRIPT_PROMPT2  ">> "
#define SCRIPT_EOFMARK  "<eof>"         /* the end of an incomplete chunk */

/* What collectargs found [lua.c has_i ...] */
#define ARGS_ERROR      1               /* a bad option */
#define ARGS_I          2
#define ARGS_V          4
#define ARGS_E          8
#define ARGS_NOENV      16              /* -E */

struct script_cli {
    int argc;
    char **argv;
    int first;                  /* argv index of the first lua.c argument */
    int script;                 /* of the script, argc if none (or bad arg) */
    int args;                   /* ARGS_* */
};

static lua_State *script_L;     /* the state SIGINT stops */
static const char *progname;    /* prefix of messages; NULL in the REPL */
static const char *usagename;   /* argv[0], or "echohost" of --script */
static const char *usagemode;   /* "", or " --script" */

/* ---- messages and protected calls --------------------------------------- */

static void script_message(const char *msg) {
    if (progname)
        lua_writestringerror("%s: ", progname);
    lua_writestringerror("%s\n", msg);
}

/* Prints and pops the error message of a failed status; returns status. */
static int script_report(lua_State *L, int status) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        script_message(msg ? msg : "(error object is not a string)");
        lua_pop(L, 1);
    }
    return status;
}

static void script_usage(const char *badoption) {
    lua_writestringerror("%s: ", progname);
    if (badoption[1] == 'e' || badoption[1] == 'l')
        lua_writestringerror("'%s' needs argument\n", badoption);
    else
        lua_writestringerror("unrecognized option '%s'\n", badoption);
    lua_writestringerror("usage: %s", usagename);
    lua_writestringerror("%s [options] [script [args]]\n", usagemode);
    lua_writestringerror("%s",
        "Available options are:\n"
        "  -e stat   execute string 'stat'\n"
        "  -i        enter interactive mode after executing 'script'\n"
        "  -l mod    require library 'mod' into global 'mod'\n"
        "  -l g=mod  require library 'mod' into global 'g'\n"
        "  -v        show version information\n"
        "  -E        ignore environment variables\n"
        "  -W        turn warnings on\n"
        "  --        stop handling options\n"
        "  -         stop handling options and execute stdin\n");
}

static void script_setsignal(int sig, void (*handler)(int)) {
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* The hook SIGINT sets: raises at the next instruction, so the script
 * unwinds (__close, pcall, __gc at the end) instead of dying. */
static void script_stop(lua_State *L, lua_Debug *ar) {
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

/* A signal handler may not touch the state but to set a hook [lua.c
 * laction]; a second SIGINT before the hook runs kills the process. */
static void script_sigint(int sig) {
    int mask = LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT;

    script_setsignal(sig, SIG_DFL);
    lua_sethook(script_L, script_stop, mask, 1);
}

/* lua_pcall with a traceback, SIGINT raising "interrupted!" meanwhile. */
static int script_docall(lua_State *L, int narg, int nres) {
    int base = lua_gettop(L) - narg;
    int status;

    lua_pushcfunction(L, lhost_msghandler);
    lua_insert(L, base);
    script_L = L;
    script_setsignal(SIGINT, script_sigint);
    status = lua_pcall(L, narg, nres, base);
    script_setsignal(SIGINT, SIG_DFL);
    lua_remove(L, base);
    return status;
}

static int script_dochunk(lua_State *L, int status) {
    if (status == LUA_OK)
        status = script_docall(L, 0, 0);
    return script_report(L, status);
}

static int script_dofile(lua_State *L, const char *name) {
    return script_dochunk(L, luaL_loadfile(L, name));
}

static int script_dostring(lua_State *L, const char *s, const char *name) {
    return script_dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l "g=mod" or "mod": g = require(mod). */
static int script_dolibrary(lua_State *L, const char *spec) {
    const char *eq = strchr(spec, '=');
    int status;

    lua_pushglobaltable(L);
    lua_pushlstring(L, spec, eq ? (size_t)(eq - spec) : strlen(spec));
    lua_getglobal(L, "require");
    lua_pushstring(L, eq ? eq + 1 : spec);
    status = script_docall(L, 1, 1);
    if (status == LUA_OK)
        lua_settable(L, -3);                    /* _G[g] = the module */
    else
        lua_replace(L, -3);                     /* the message, for report */
    lua_pop(L, 1);
    return script_report(L, status);
}

/* ---- the command line --------------------------------------------------- */

/* Sets c->args and c->script from argv[first..] [lua.c collectargs]:
 * options up to the script's name; -- ends them, - is stdin. On a bad
 * option ARGS_ERROR, with c->script its index. */
static void script_collect(struct script_cli *c) {
    char **argv = c->argv;
    int i;

    c->args = 0;
    for (i = c->first; argv[i] != NULL; i++) {
        const char *a = argv[i];
        c->script = i;
        if (a[0] != '-')
            return;
        switch (a[1]) {
        case '-':
            if (a[2] != '\0')
                goto bad;
            c->script = i + 1;
            return;
        case '\0':
            return;
        case 'E': c->args |= ARGS_NOENV; goto alone;
        case 'W': goto alone;
        case 'i': c->args |= ARGS_I | ARGS_V; goto alone;
        case 'v': c->args |= ARGS_V; goto alone;
        case 'e': c->args |= ARGS_E; /* FALLTHROUGH */
        case 'l':                       /* both take an argument */
            if (a[2] == '\0' && (argv[i + 1] == NULL || argv[++i][0] == '-'))
                goto bad;
            continue;
        default:
            goto bad;
        }
    alone:
        if (a[2] != '\0')
            goto bad;
    }
    c->script = i;
    return;
bad:
    c->args = ARGS_ERROR;
}

/* arg[i - base] = argv[i], base the script's index: the script is arg[0],
 * its arguments positive, what came before it negative [lua.c
 * createargtable]. With no script the base is the interpreter's name:
 * argv[0] (echohost-lua) or "--script". */
static void script_argtable(lua_State *L, const struct script_cli *c) {
    int base = c->script == c->argc ? c->first - 1 : c->script;

    lua_createtable(L, c->argc - base - 1, base + 1);
    for (int i = 0; i < c->argc; i++) {
        lua_pushstring(L, c->argv[i]);
        lua_rawseti(L, -2, i - base);
    }
    lua_setglobal(L, "arg");
}

/* Runs -e and -l in order and turns warnings on at -W; 0 if one failed. */
static int script_runargs(lua_State *L, const struct script_cli *c) {
    for (int i = c->first; i < c->script; i++) {
        const char *a = c->argv[i];
        int status = LUA_OK;
        switch (a[1]) {
        case 'e':
        case 'l': {
            const char *extra = a[2] != '\0' ? a + 2 : c->argv[++i];
            status = a[1] == 'e'
                ? script_dostring(L, extra, "=(command line)")
                : script_dolibrary(L, extra);
            break;
        }
        case 'W':
            lua_warning(L, "@on", 0);
            break;
        }
        if (status != LUA_OK)
            return 0;
    }
    return 1;
}

/* LUA_INIT_5_4, else LUA_INIT: a chunk, or "@file". */
static int script_luainit(lua_State *L) {
    const char *name = "=LUA_INIT" LUA_VERSUFFIX;
    const char *init = getenv(name + 1);

    if (init == NULL) {
        name = "=LUA_INIT";
        init = getenv(name + 1);
    }
    if (init == NULL)
        return LUA_OK;
    if (init[0] == '@')
        return script_dofile(L, init + 1);
    return script_dostring(L, init, name);
}

/* Pushes arg[1..#arg]; returns how many. */
static int script_pushargs(lua_State *L) {
    int n;

    if (lua_getglobal(L, "arg") != LUA_TTABLE)
        luaL_error(L, "'arg' is not a table");
    n = (int)luaL_len(L, -1);
    luaL_checkstack(L, n + 3, "too many arguments to script");
    for (int i = 1; i <= n; i++)
        lua_rawgeti(L, -i, i);
    lua_remove(L, -n - 1);
    return n;
}

/* Runs the script argv[0] ("-" is stdin, but not after "--"). */
static int script_handle(lua_State *L, char **argv) {
    const char *fname = argv[0];
    int status;

    if (strcmp(fname, "-") == 0 && strcmp(argv[-1], "--") != 0)
        fname = NULL;
    status = luaL_loadfile(L, fname);
    if (status == LUA_OK) {
        int n = script_pushargs(L);
        status = script_docall(L, n, LUA_MULTRET);
    }
    return script_report(L, status);
}

/* ---- the REPL [lua.c doREPL] -------------------------------------------- */

/* Line editing: on a terminal, when libedit loads. */
static const struct edit *script_edit(void) {
    return isatty(0) ? edit_get() : NULL;
}

/* Reads a line after the prompt; NULL at the end of input. A terminal gets
 * line editing and history (libedit); other input is echoed after the
 * prompt, as GNU readline does for lua5.4. Free the line with free(). */
static char *script_readline(const char *prompt) {
    const struct edit *ed = script_edit();
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;

    if (ed)
        return ed->readline(prompt);
    fputs(prompt, stdout);
    fflush(stdout);
    if ((n = getline(&line, &cap, stdin)) < 0) {
        free(line);
        return NULL;
    }
    if (n > 0 && line[n - 1] == '\n')
        line[--n] = '\0';
    fputs(line, stdout);
    fputs("\n", stdout);
    return line;
}

/* _PROMPT or _PROMPT2 through tostring, else the default, left on the
 * stack to anchor it. */
static const char *script_prompt(lua_State *L, int firstline) {
    if (lua_getglobal(L, firstline ? "_PROMPT" : "_PROMPT2") == LUA_TNIL)
        return firstline ? SCRIPT_PROMPT : SCRIPT_PROMPT2;
    const char *p = luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    return p;
}

/* 1 (popping the message) if status is a syntax error at the end of the
 * chunk: the chunk is incomplete and more lines may complete it. */
static int script_incomplete(lua_State *L, int status) {
    size_t len, mark = sizeof SCRIPT_EOFMARK - 1;
    const char *msg;

    if (status != LUA_ERRSYNTAX)
        return 0;
    msg = lua_tolstring(L, -1, &len);
    if (len < mark || strcmp(msg + len - mark, SCRIPT_EOFMARK) != 0)
        return 0;
    lua_pop(L, 1);
    return 1;
}

/* Prompts, reads a line and pushes it ("=x" as "return x" on a first
 * line); 0 at the end of input (the prompt is left for the caller). */
static int script_pushline(lua_State *L, int firstline) {
    const char *prompt = script_prompt(L, firstline);
    char *line = script_readline(prompt);
    size_t len;

    if (line == NULL)
        return 0;
    lua_pop(L, 1);                              /* the prompt */
    len = strlen(line);
    if (len > 0 && line[len - 1] == '\n')
        line[--len] = '\0';
    if (firstline && line[0] == '=')
        lua_pushfstring(L, "return %s", line + 1);
    else
        lua_pushlstring(L, line, len);
    free(line);
    return 1;
}

/* Compiles the line as "return <line>;": the chunk replaces the line, or
 * the line stays and the status says why not. */
static int script_addreturn(lua_State *L) {
    const char *line = lua_tostring(L, -1);
    const char *ret = lua_pushfstring(L, "return %s;", line);
    int status = luaL_loadbuffer(L, ret, strlen(ret), "=stdin");

    if (status == LUA_OK) {
        const struct edit *ed = script_edit();
        lua_remove(L, -2);                      /* "return ..." */
        if (line[0] != '\0' && ed)
            ed->add_history(line);
    } else {
        lua_pop(L, 2);                          /* the error, "return ..." */
    }
    return status;
}

/* Compiles the line as a statement, adding lines while it is incomplete. */
static int script_multiline(lua_State *L) {
    for (;;) {
        size_t len;
        const char *line = lua_tolstring(L, 1, &len);
        int status = luaL_loadbuffer(L, line, len, "=stdin");
        if (!script_incomplete(L, status) || !script_pushline(L, 0)) {
            const struct edit *ed = script_edit();
            if (ed)
                ed->add_history(line);
            return status;
        }
        lua_pushliteral(L, "\n");
        lua_insert(L, -2);
        lua_concat(L, 3);                       /* line .. "\n" .. next */
    }
}

/* Reads a chunk: the compiled function on the stack and its status, or -1
 * at the end of input. */
static int script_loadline(lua_State *L) {
    int status;

    lua_settop(L, 0);
    if (!script_pushline(L, 1))
        return -1;
    if ((status = script_addreturn(L)) != LUA_OK)
        status = script_multiline(L);
    lua_remove(L, 1);                           /* the line */
    return status;
}

/* Prints the results on the stack with the global print. */
static void script_print(lua_State *L) {
    int n = lua_gettop(L);

    if (n == 0)
        return;
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, 1);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
        script_message(lua_pushfstring(L, "error calling 'print' (%s)",
                                       lua_tostring(L, -1)));
}

static void script_repl(lua_State *L) {
    const char *name = progname;
    const struct edit *ed = script_edit();
    int status;

    progname = NULL;            /* errors at the prompt have no prefix */
    if (ed)
        *ed->readline_name = "lua";
    while ((status = script_loadline(L)) != -1) {
        if (status == LUA_OK)
            status = script_docall(L, 0, LUA_MULTRET);
        if (status == LUA_OK)
            script_print(L);
        else
            script_report(L, status);
    }
    lua_settop(L, 0);
    lua_writeline();
    progname = name;
}

/* ---- main ----------------------------------------------------------------- */

static void script_version(void) {
    lua_writestring(LUA_COPYRIGHT, strlen(LUA_COPYRIGHT));
    lua_writeline();
}

/* In protected mode: everything after the options were collected [lua.c
 * pmain]. Returns true when nothing failed. */
static int script_pmain(lua_State *L) {
    const struct script_cli *c = lua_touserdata(L, 1);
    int args = c->args;

    luaL_checkversion(L);
    script_argtable(L, c);
    lua_gc(L, LUA_GCGEN, 0, 0);
    if (!(args & ARGS_NOENV) && script_luainit(L) != LUA_OK)
        return 0;
    if (!script_runargs(L, c))
        return 0;
    if (c->script < c->argc && script_handle(L, c->argv + c->script) != LUA_OK)
        return 0;
    if (args & ARGS_I) {
        script_repl(L);
    } else if (c->script == c->argc && !(args & (ARGS_E | ARGS_V))) {
        if (isatty(0)) {
            script_version();
            script_repl(L);
        } else {
            script_dofile(L, NULL);
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

int script_main(int argc, char **argv, int first, const char *name) {
    struct script_cli c = {argc, argv, first, argc, 0};
    lua_State *L;
    int status, ok;

    progname = name ? name : argv[0] && argv[0][0] ? argv[0] : "echohost-lua";
    usagename = progname;
    usagemode = name ? " --script" : "";
    script_collect(&c);
    if (c.args == ARGS_ERROR) {
        script_usage(argv[c.script]);
        return EXIT_FAILURE;
    }
    if (c.args & ARGS_V)
        script_version();
    L = lhost_newstate_flags(0, c.args & ARGS_NOENV ? LHOST_NOENV : 0);
    if (L == NULL) {
        script_message("cannot create state: not enough memory");
        return EXIT_FAILURE;
    }
    lua_pushcfunction(L, script_pmain);
    lua_pushlightuserdata(L, &c);
    status = lua_pcall(L, 1, 1, 0);
    ok = lua_toboolean(L, -1);
    script_report(L, status);
    lhost_close(L);
    return ok && status == LUA_OK ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* ---- echohost --test ---------------------------------------------------- */

/* The first executable "busted" on PATH into path; 0, or -1. */
static int script_find_busted(char *path, size_t len) {
    const char *dirs = getenv("PATH");

    while (dirs && *dirs) {
        size_t n = strcspn(dirs, ":");
        int k = snprintf(path, len, "%.*s%sbusted", (int)n, dirs,
                         n ? "/" : "./");
        if (k > 0 && (size_t)k < len && access(path, X_OK) == 0)
            return 0;
        dirs += n + (dirs[n] == ':');
    }
    return -1;
}

int script_test(int argc, char **argv, int first, const char *name) {
    char busted[PATH_MAX], ignore[] = "--ignore-lua";
    char **args = calloc((size_t)argc + 3, sizeof *args);
    int rc;

    if (args == NULL) {
        fprintf(stderr, "%s: out of memory\n", name);
        return EXIT_FAILURE;
    }
    if (script_find_busted(busted, sizeof busted) < 0) {
        fprintf(stderr, "%s: --test needs busted on PATH (Debian: apt-get "
                "install lua-busted)\n", name);
        free(args);
        return EXIT_FAILURE;
    }
    /* argv[..first), busted, --ignore-lua, argv[first..]: busted runs here,
     * under this Lua, whatever lua its .busted or its #! line names */
    memcpy(args, argv, (size_t)first * sizeof *args);
    args[first] = busted;
    args[first + 1] = ignore;
    memcpy(args + first + 2, argv + first,
           (size_t)(argc - first) * sizeof *args);
    rc = script_main(argc + 2, args, first, name);
    free(args);
    return rc;
}
