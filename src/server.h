/* The server: master process, workers, signals; event and fork models. */
#ifndef ECHOHOST_SERVER_H
#define ECHOHOST_SERVER_H

#include "config.h"

/* Runs the server until SIGTERM/SIGINT. Returns the process exit status
 * (0 after a clean drain, 1 on a runtime error, already logged). */
int server_main(const struct eh_config *cfg);

#endif
