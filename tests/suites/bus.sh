# The pubsub ring's C test (tests/bus/test_bus.c, built by make into
# $ECHOHOST_BUILD/tests/bus/): the ring, its doorbells and reader slots
# without Lua. Sourced by tests/run.sh (c_suite).
if [ -x "$ECHOHOST_BUILD/tests/bus/test_bus" ]; then
    c_suite bus_test_bus "$ECHOHOST_BUILD/tests/bus/test_bus"
fi
