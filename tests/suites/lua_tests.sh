# Sourced by tests/run.sh. Lua 5.4.4's own test suite, full mode (no _U),
# under echohost-lua: cd into a copy in the build tree (the tests write
# next to themselves), build its C libraries, run all.lua; it must end with
# "final OK !!!" as under lua5.4. main.lua and files.lua run the
# interpreter again by the name at arg's lowest index: echohost-lua itself.
# One test. The suite is tests/lua-5.4.4-tests/ (unchanged, see its
# SOURCE.md); LUA_TESTS names another copy.
lua_tests_run() {
    lt_dir=$1 lt_bin=$2
    # stdin a pipe: files.lua checks that seeking stdin fails
    grouped sh -c 'cd "$1" && true | "$2" all.lua' sh "$lt_dir" "$lt_bin" \
        >"$log/lua_tests" 2>&1
    grep -q '^final OK !!!$' "$log/lua_tests"
}

lua_tests_suite() {
    lt_src=${LUA_TESTS:-$ROOT/tests/lua-5.4.4-tests}
    if [ -z "$lt_src" ] || [ ! -f "$lt_src/all.lua" ]; then
        echo "suite lua_tests: Lua 5.4.4's tests not found (set LUA_TESTS)"
        failed=$((failed + 1)); return
    fi
    lt_dir="$ECHOHOST_BUILD/lua-tests"
    rm -rf "$lt_dir" && cp -R "$lt_src" "$lt_dir" &&
        make -s -C "$lt_dir/libs" LUA_DIR=/usr/include/lua5.4 >"$log/lua_libs" 2>&1
    if [ $? -ne 0 ]; then
        cat "$log/lua_libs"; echo "suite lua_tests: cannot build its libs"
        failed=$((failed + 1)); return
    fi
    # main.lua reads a background interpreter's pid from "prog & echo $!",
    # racing the interpreter's first line (lua5.4 loses it too, at
    # main.lua:501 or :512): that failure alone is run again, twice at most.
    for lt_try in 1 2 3; do
        lua_tests_run "$lt_dir" "$ECHOHOST_BUILD/echohost-lua" && break
        grep -qE 'main\.lua:(501|512): assertion failed' "$log/lua_tests" ||
            break
        echo "suite lua_tests: main.lua's pid race, run $lt_try; again"
    done
    if grep -q '^final OK !!!$' "$log/lua_tests"; then
        passed=$((passed + 1))
        echo "suite lua_tests: final OK !!!"
    else
        tail -n 30 "$log/lua_tests"
        failed=$((failed + 1))
        echo "suite lua_tests: no 'final OK !!!'"
    fi
}

lua_tests_suite
