/* libFuzzer target: the PROXY header parser and reader (src/proxyproto.c).
 * Every input must have the properties of tests/proxy/proxy_props.h: a
 * sane outcome, the same on every prefix or "more", and a reader that
 * takes exactly the header's bytes from a socket. */
#include <stdio.h>
#include <stdlib.h>

#include "proxy_props.h"

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    const char *bad = proxy_props(data, size);

    if (bad != NULL) {
        fprintf(stderr, "fuzz_proxy: %s\n", bad);
        __builtin_trap();
    }
    return 0;
}
