/* Script mode: runs a Lua file with the echohost modules preloaded, with the
 * lua interpreter's conventions for arg and errors [lua.c]. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lhost.h"
#include "script.h"

struct script_args {
    int argc;
    char **argv;
    int index;                  /* argv index of the script */
    const char *path;           /* the script: argv[index] or after "=" */
};

/* arg[i - index] = argv[i] for every argument [lua.c createargtable]. */
static void script_setargs(lua_State *L, const struct script_args *a) {
    lua_createtable(L, a->argc - a->index - 1, a->index + 1);
    for (int i = 0; i < a->argc; i++) {
        lua_pushstring(L, i == a->index ? a->path : a->argv[i]);
        lua_rawseti(L, -2, i - a->index);
    }
    lua_setglobal(L, "arg");
}

/* Runs in protected mode: sets arg, loads the script ("-" is stdin) and
 * calls it with its arguments. A load error is reported here without a
 * traceback (returns false); a run-time error propagates to the caller. */
static int script_pmain(lua_State *L) {
    const struct script_args *a = lua_touserdata(L, 1);
    const char *file = strcmp(a->path, "-") == 0 ? NULL : a->path;
    int nargs = a->argc - a->index - 1;

    script_setargs(L, a);
    if (luaL_loadfile(L, file) != LUA_OK) {
        fprintf(stderr, "echohost: %s\n", lua_tostring(L, -1));
        lua_pushboolean(L, 0);
        return 1;
    }
    luaL_checkstack(L, nargs, "too many arguments to script");
    for (int i = a->index + 1; i < a->argc; i++)
        lua_pushstring(L, a->argv[i]);
    lua_call(L, nargs, 0);
    lua_pushboolean(L, 1);
    return 1;
}

int script_main(int argc, char **argv, int script_index) {
    struct script_args a = {argc, argv, script_index, argv[script_index]};
    lua_State *L;
    int status, ok;

    if (strncmp(a.path, "--script=", 9) == 0)
        a.path += 9;
    if ((L = lhost_newstate(0)) == NULL) {
        fprintf(stderr, "echohost: cannot create a Lua state\n");
        return 1;
    }
    lua_pushcfunction(L, script_pmain);
    lua_pushlightuserdata(L, &a);
    status = eh_pcall(L, 1, 1);
    ok = status == LUA_OK && lua_toboolean(L, -1);
    if (status != LUA_OK)
        fprintf(stderr, "echohost: %s\n", lua_tostring(L, -1));
    fflush(stdout);
    lhost_close(L);
    return ok ? 0 : 1;
}
