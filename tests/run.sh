#!/bin/sh
# Runs every suite against the build in $1 (build/ or build/asan/) and ends
# with one line: "N passed, N failed".
BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
export ECHOHOST_BIN="$ROOT/$BUILD/echohost"
export ECHOHOST_BUILD="$ROOT/$BUILD"
passed=0 failed=0
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

if [ -n "$ECHOHOST_ASAN" ]; then
    # A stock lua5.4 loading instrumented modules needs the runtime first.
    ASAN_PRELOAD="$(cc -print-file-name=libasan.so)"
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0"
    export UBSAN_OPTIONS="print_stacktrace=1"
fi

# busted suites: $1 = name, rest = command
busted_suite() {
    name=$1; shift
    "$@" >"$log/$name" 2>&1
    line=$(grep -E '^[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' \
        "$log/$name" | tail -n 1)
    if [ -z "$line" ]; then
        cat "$log/$name"
        echo "suite $name: no summary (crashed?)"
        failed=$((failed + 1))
        return
    fi
    ok=$(echo "$line" | sed -E 's/^([0-9]+) success.*/\1/')
    ko=$(echo "$line" | sed -E 's/.* ([0-9]+) failures? \/ ([0-9]+) errors?.*/\1 \2/')
    set -- $ko
    passed=$((passed + ok)); failed=$((failed + $1 + $2))
    if [ $(($1 + $2)) -gt 0 ]; then cat "$log/$name"; fi
    echo "suite $name: $line"
}

# C test binaries print their own "N passed, N failed" line.
c_suite() {
    name=$1; shift
    "$@" >"$log/$name" 2>&1
    rc=$?
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log/$name" | tail -n 1)
    if [ -z "$line" ]; then
        cat "$log/$name"; echo "suite $name: no summary (rc $rc)"
        failed=$((failed + 1)); return
    fi
    ok=${line%% passed*}; ko=${line#*, }; ko=${ko%% failed*}
    if [ $rc -ne 0 ] && [ "$ko" = 0 ]; then ko=1; fi
    passed=$((passed + ok)); failed=$((failed + ko))
    if [ "$ko" != 0 ]; then cat "$log/$name"; fi
    echo "suite $name: $line"
}

BUSTED="busted --lua=lua5.4 --cpath=$BUILD/lua/?.so"
if [ -n "$ECHOHOST_ASAN" ]; then
    busted_suite specs env LD_PRELOAD="$ASAN_PRELOAD" $BUSTED
else
    busted_suite specs $BUSTED
fi

for t in tests/suites/*.sh; do
    [ -f "$t" ] || continue
    . "$t"
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
