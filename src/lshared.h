/* echohost.shared: the process tree's shared dictionary, for Lua. */
#ifndef ECHOHOST_LSHARED_H
#define ECHOHOST_LSHARED_H

#include <stddef.h>

#define LSHARED_DEFAULT (1024 * 1024)  /* bytes, without lshared_init */

/* Makes this process's dictionary of capacity bytes, to be called before
 * the processes that share it are forked (a state that requires
 * "echohost.shared" first makes one of LSHARED_DEFAULT bytes). 0, or -1
 * with "shared dictionary: <reason>" in err. */
int lshared_init(size_t capacity, char *err, size_t errlen);

#endif
