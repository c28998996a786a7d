# Sourced by tests/run.sh. The Lua-primitive specs again, this time inside
# the echohost binary (`echohost --script busted`): the modules come from the
# binary's package.preload instead of build/echohost/*.so, and busted itself
# runs in script mode (--ignore-lua: do not re-exec under lua5.4).
busted_suite script_mode "$ECHOHOST_BIN" --script "$(command -v busted)" \
    --ignore-lua tests/socket_spec.lua tests/proc_spec.lua tests/tcp_srv_spec.lua
