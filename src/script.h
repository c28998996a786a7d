/* Script mode: `echohost --script FILE.lua [ARGS...]` runs a Lua program with
 * the echohost modules available, like the lua interpreter runs a script. */
#ifndef ECHOHOST_SCRIPT_H
#define ECHOHOST_SCRIPT_H

/* Runs argv[script_index] (the script's path, or "--script=PATH") with the
 * arguments after it, in a fresh state from lhost_newstate (no memory cap).
 * The global arg is set as lua.c sets it: arg[0] the script, arg[1..] its
 * arguments, arg[-1], arg[-2], ... what came before it down to the binary;
 * the arguments are also the chunk's varargs. Returns the exit status: 0,
 * or 1 after printing "echohost: <error and traceback>" to stderr. */
int script_main(int argc, char **argv, int script_index);

#endif
