# The PROXY header parser's C test (tests/proxy/test_proxy.c, built by make
# into $ECHOHOST_BUILD/tests/proxy/): known headers, the fuzz seeds of
# tests/fuzz/proxy/ and the reader over a socketpair. Sourced by
# tests/run.sh (c_suite).
if [ -x "$ECHOHOST_BUILD/tests/proxy/test_proxy" ]; then
    c_suite proxy_test_proxy "$ECHOHOST_BUILD/tests/proxy/test_proxy" tests/fuzz/proxy
fi
