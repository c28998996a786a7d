/* echohost-lua: lua5.4's command line with the echohost modules built in,
 * the same program as `echohost --script`. */
#include <stdio.h>

#include "lpubsub.h"
#include "lshared.h"
#include "script.h"

int main(int argc, char **argv) {
    static char name[] = "echohost-lua";
    static char *none[] = {name, NULL};
    char err[128];

    if (argc < 1)
        argc = 1, argv = none;

    /* before the script forks: its children share these */
    if (lshared_init(LSHARED_DEFAULT, err, sizeof err) < 0 ||
        lpubsub_init(LPUBSUB_DEFAULT, err, sizeof err) < 0) {
        fprintf(stderr, "%s: %s\n", argv[0], err);
        return 1;
    }
    return script_main(argc, argv, 1, NULL);
}
