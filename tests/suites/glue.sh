# Glue runtime C tests (tests/glue/test_*.c, built by make into
# $ECHOHOST_BUILD/tests/glue/): under valgrind, or as they are under ASan.
# Sourced by tests/run.sh (c_suite). The 1,000,000-element list runs
# under ASan (and in tests/glue_spec.lua); valgrind gets 100,000 to stay fast.
for glue_t in "$ECHOHOST_BUILD"/tests/glue/test_*; do
    case $glue_t in *.d) continue ;; esac
    [ -x "$glue_t" ] || continue
    if [ -n "$ECHOHOST_ASAN" ]; then
        c_suite "glue_$(basename "$glue_t")" "$glue_t"
    else
        c_suite "glue_$(basename "$glue_t")" env GLUE_TEST_DEEP=100000 \
            valgrind -q --leak-check=full --error-exitcode=1 "$glue_t"
    fi
done
