#!/bin/sh
# make fuzz: libFuzzer (clang) over the glue reader, the declaration parser
# and the PROXY header parser, FUZZ_SECONDS (default 30) each. Seeds in
# tests/fuzz/{read,decl,proxy}/;
# new inputs go to a scratch corpus, crashes to build/fuzz/.
set -e
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECONDS_EACH=${FUZZ_SECONDS:-30}
OUT=build/fuzz
# The glue runtime, without Lua and without glue-decl's main.
GLUE_RT="glue/glue.c glue/glue_decl.c glue/glue_print.c glue/glue_ty.c"
mkdir -p "$OUT"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

TARGETS="read decl proxy"
for target in $TARGETS; do
    echo "  FUZZ $target (${SECONDS_EACH}s)"
    if [ "$target" = proxy ]; then      # no Lua, no glue: the parser alone
        set -- -Isrc -Itests/proxy src/proxyproto.c
    else
        set -- -Iglue -Ibuild/glue $GLUE_RT build/glue/glue_prelude.c -lm
    fi
    clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
        -fno-sanitize-recover=all -o "$OUT/fuzz_$target" \
        "tests/fuzz/fuzz_$target.c" "$@"
    mkdir -p "$scratch/$target"
    "$OUT/fuzz_$target" "$scratch/$target" "tests/fuzz/$target" \
        -max_total_time="$SECONDS_EACH" -max_len=4096 -rss_limit_mb=1024 \
        -artifact_prefix="$OUT/$target-" -print_final_stats=1 \
        >"$OUT/$target.log" 2>&1 || {
        tail -n 40 "$OUT/$target.log"
        echo "fuzz $target: failed (see $OUT/$target.log)"
        exit 1
    }
    grep -E '^stat::number_of_executed_units|^Done' "$OUT/$target.log" || true
done
echo "fuzz: no crash in $(($(echo $TARGETS | wc -w) * SECONDS_EACH)) s"
