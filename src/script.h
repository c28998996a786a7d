/* Script mode: lua5.4's command line with the echohost modules built in,
 * as echohost-lua and as `echohost --script [OPTIONS] [FILE.lua [ARGS]]`. */
#ifndef ECHOHOST_SCRIPT_H
#define ECHOHOST_SCRIPT_H

/* Runs argv[first..] as lua.c runs its command line: the options -e, -l,
 * -i, -v, -E, -W, -- and -, then the script (a path, or - for stdin) with
 * its arguments, LUA_INIT_5_4 or LUA_INIT first, the REPL with no script
 * on a terminal, stdin otherwise; SIGINT raises "interrupted!" in the
 * running chunk. The global arg is lua.c's: arg[0] the script, arg[1..]
 * its arguments, arg[-1], ... what came before it, down to argv[0]. The
 * state is from lhost_newstate (no memory cap), in generational mode.
 * Messages are "<name>: <message>" on stderr, name NULL meaning argv[0]
 * (echohost-lua; a name also makes the usage "<name> --script ...").
 * Returns the exit status: 0, or 1 after an error or a bad option. */
int script_main(int argc, char **argv, int first, const char *name);

/* echohost --test [BUSTED-ARGS]: runs the busted found on PATH in script
 * mode, with --ignore-lua and argv[first..] as its arguments, so specs run
 * under this Lua 5.4 with the echohost modules built in (a .busted is not
 * needed; its "lua" key is ignored). Returns busted's exit status, or 1
 * after "<name>: --test needs busted on PATH ..." when there is none. */
int script_test(int argc, char **argv, int first, const char *name);

#endif
