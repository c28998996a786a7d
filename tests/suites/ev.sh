# The event loop's C test (tests/ev/test_ev.c, built by make into
# $ECHOHOST_BUILD/tests/ev/): polled fds without the rest of the server.
# Sourced by tests/run.sh (c_suite).
if [ -x "$ECHOHOST_BUILD/tests/ev/test_ev" ]; then
    c_suite ev_test_ev "$ECHOHOST_BUILD/tests/ev/test_ev"
fi
