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

# Runs "$@" as the leader of a new session, bounded by SUITE_TIMEOUT
# seconds; then whatever it left behind in that process group (a server a
# failed spec did not stop) is killed by the group's id.
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}
grouped() {
    rm -f "$log/pgid"
    setsid -w sh -c 'echo $$ >"$0"; exec timeout -k 5 "$SUITE_TIMEOUT" "$@"' \
        "$log/pgid" "$@"
    rc=$?
    pg=$(cat "$log/pgid" 2>/dev/null)
    [ -n "$pg" ] && kill -KILL "-$pg" 2>/dev/null
    [ $rc -eq 124 ] && echo "timed out after $SUITE_TIMEOUT s"
    return $rc
}
export SUITE_TIMEOUT

# busted suites: $1 = name, rest = command
busted_suite() {
    name=$1; shift
    grouped "$@" >"$log/$name" 2>&1
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
    grouped "$@" >"$log/$name" 2>&1
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
