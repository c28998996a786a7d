# echohost: one non-recursive Makefile; every output goes to build/.

CC      ?= cc
CFLAGS  ?= -O2 -g
PREFIX  ?= /usr/local
LUA     ?= lua5.4
BUILD   ?= build

LUA_CFLAGS := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUA_LIBS   := $(shell pkg-config --libs lua5.4 2>/dev/null || echo -llua5.4)
# The binaries take Lua in whole from liblua5.4.a (as Debian's lua5.4 does):
# one library fewer mapped in every process the fork model starts, and every
# lua_* and luaL_* a C module may call is there (-rdynamic exports them).
LUA_STATIC := -Wl,--whole-archive $(shell pkg-config --variable=libdir lua5.4 \
              2>/dev/null || echo /usr/lib/x86_64-linux-gnu)/liblua5.4.a \
              -Wl,--no-whole-archive

CWARNS  := -Wall -Wextra -Wshadow -Wundef -Wwrite-strings -Wstrict-prototypes \
           -Wmissing-prototypes -Wold-style-definition -Wformat=2 \
           -Wpointer-arith -Wcast-align -Wvla
ifeq ($(CI),true)
CWARNS  += -Werror
endif

# -fno-plt: a call into libc jumps through the GOT that -z now fills at
# start, not through a PLT stub (a page of code less for each child of the
# fork model to fault in).
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -fno-plt $(CWARNS) $(CFLAGS) $(EXTRA_CFLAGS) \
             -Isrc -Iglue -I$(BUILD)/glue $(LUA_CFLAGS) -MMD -MP
LDLIBS_ALL = $(LUA_STATIC) -lm -ldl

ifeq ($(V),1)
Q :=
else
Q := @
endif

# --- Debian packages --------------------------------------------------------
# lua5.4 + headers: the embedded language (and the glue generator's);
# lua-busted, lua-check, lua-socket: the test suite and its clients;
# libedit-dev: line editing in the REPL; valgrind: leak checks of the glue;
# gcc, libc6-dev: the compiler (its libasan/libubsan serve make asan-test);
# prometheus: its promtool checks what --metrics serves; haproxy: the load
# balancer tests/proxy_spec.lua puts in front of echohost (send-proxy,
# send-proxy-v2, its health checks; make bench's peer too).
DEPS_PKGS  := gcc libc6-dev lua5.4 liblua5.4-dev lua-busted lua-check lua-socket \
              libedit-dev pkg-config valgrind prometheus haproxy
# make bench: the peers it measures (socat, python3 asyncio, nodejs; haproxy's
# Lua service, from DEPS_PKGS) and gnuplot for the chart; taskset comes with
# util-linux.
BENCH_PKGS := socat python3 nodejs gnuplot-nox
# make fuzz: clang, and the libFuzzer runtime (not a dependency of clang-14).
FUZZ_PKGS  := clang libclang-rt-14-dev

# --- sources ----------------------------------------------------------------
# echohost-lua's main (the rest of it is the binary's objects)
LUA_MAIN := src/luamain.c
HOST_SRC := $(filter-out $(LUA_MAIN),$(wildcard src/*.c))
GLUE_SRC := $(filter-out glue/gluedecl.c,$(wildcard glue/*.c))
GLUE_DEFS:= $(sort $(wildcard glue/*.glue))
ifneq ($(wildcard glue/gen.lua),)
GLUE_GEN := $(BUILD)/glue/glue_prelude.c
GLUE_GENH:= $(BUILD)/glue/glue_prelude.h
endif
# The glue runtime without Lua (the library libechohost-glue); lglue.c and
# glue_lua.c are its Lua binding, echohost.glue.
GLUE_LUA_SRC := glue/lglue.c glue/glue_lua.c
GLUE_RT_SRC  := $(filter-out $(GLUE_LUA_SRC),$(GLUE_SRC))
# The generator's parser: glue_decl.c (glue.declare's) as a command.
GLUE_DECL    := $(if $(GLUE_GEN),$(BUILD)/glue/glue-decl)

# Lua modules built into the binary (src/embed.lua), compiled when first
# required: every one of lua/echohost/, so that the handler loader, the
# harness, tcp_srv ... are found whatever LUA_PATH says, uninstalled too.
EMBED_LUA := $(sort $(wildcard lua/echohost/*.lua))
EMBED_C   := $(BUILD)/src/embed.c

OBJ = $(patsubst %.c,$(BUILD)/%.o,$(HOST_SRC) $(GLUE_SRC) $(GLUE_GEN)) \
      $(BUILD)/src/embed.o

# Lua C modules also built as shared objects for a stock lua5.4:
# build/lua/echohost/<name>.so, found through package.cpath "build/lua/?.so"
# (not build/echohost/: that is the binary).
SO_socket := src/lsocket.c src/net.c
SO_proc   := src/lproc.c
SO_shared := src/lshared.c src/shdict.c
SO_glue   := $(GLUE_SRC)
LUAMODS   := $(foreach m,socket proc shared glue,$(if $(wildcard $(firstword $(SO_$(m)))),$(m)))
SOS       := $(foreach m,$(LUAMODS),$(BUILD)/lua/echohost/$(m).so)

BIN   := $(BUILD)/echohost
# lua5.4 with the echohost modules: the objects of BIN, but for its main
LUABIN := $(if $(wildcard $(LUA_MAIN)),$(BUILD)/echohost-lua)
TOOLBIN := $(if $(wildcard tests/bench/bench.c),$(BUILD)/echohost-bench) \
           $(if $(wildcard tests/bench/refecho.c),$(BUILD)/refecho)

.PHONY: all run test test-only lint asan asan-test bench bench-quick fuzz \
        clean deps bench-deps install install-glue glue-test
# Helpers of the tests: ptyrun runs a command on a pseudo-terminal (REPL),
# sdsim starts one as systemd would (socket activation, NOTIFY_SOCKET).
TESTBIN := $(BUILD)/tests/ptyrun $(BUILD)/tests/sdsim
# C tests of the glue runtime (tests/glue/test_*.c), run by tests/suites/glue.sh.
GLUE_TESTS := $(patsubst tests/glue/%.c,$(BUILD)/tests/glue/%,$(wildcard tests/glue/test_*.c))
BUS_TEST   := $(if $(wildcard tests/bus/test_bus.c),$(BUILD)/tests/bus/test_bus)
PROXY_TEST := $(if $(wildcard tests/proxy/test_proxy.c),$(BUILD)/tests/proxy/test_proxy)
EV_TEST    := $(if $(wildcard tests/ev/test_ev.c),$(BUILD)/tests/ev/test_ev)
GLUE_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(GLUE_SRC) $(GLUE_GEN))
GLUE_RT_OBJ:= $(patsubst %.c,$(BUILD)/%.o,$(GLUE_RT_SRC) $(GLUE_GEN))
# The glue C library: the runtime and the prelude's types, no Lua.
GLUE_SONAME := libechohost-glue.so.0
GLUE_LIBS  := $(if $(GLUE_GEN),$(BUILD)/lib/libechohost-glue.a \
              $(BUILD)/lib/$(GLUE_SONAME))
all: deps-check $(BIN) $(LUABIN) $(SOS) $(TOOLBIN) $(TESTBIN) $(GLUE_TESTS) \
     $(BUS_TEST) $(PROXY_TEST) $(EV_TEST) $(GLUE_LIBS)

$(BIN): $(OBJ)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -rdynamic -Wl,-z,now -o $@ $^ $(LDLIBS_ALL) \
	    $(EXTRA_LDFLAGS)

$(LUABIN): $(filter-out $(BUILD)/src/main.o,$(OBJ)) $(BUILD)/src/luamain.o
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -rdynamic -Wl,-z,now -o $@ $^ $(LDLIBS_ALL) \
	    $(EXTRA_LDFLAGS)

$(EMBED_C): src/embed.lua $(EMBED_LUA) Makefile | deps-check
	@mkdir -p $(dir $@)
	@printf '  GEN %s\n' $@
	$(Q)$(LUA) src/embed.lua $(EMBED_LUA) >$@.tmp && mv $@.tmp $@

$(BUILD)/src/embed.o: $(EMBED_C)
	@printf '  CC %s\n' $<
	$(Q)$(CC) $(ALL_CFLAGS) -fPIC -c -o $@ $<

$(BUILD)/%.o: %.c $(GLUE_GENH) | deps-check
	@mkdir -p $(dir $@)
	@printf '  CC %s\n' $<
	$(Q)$(CC) $(ALL_CFLAGS) -fPIC -c -o $@ $<

ifneq ($(GLUE_GEN),)
$(GLUE_GEN) $(GLUE_GENH) &: glue/gen.lua $(GLUE_DEFS) $(GLUE_DECL) | deps-check
	@mkdir -p $(BUILD)/glue
	@printf '  GEN %s\n' $(GLUE_GEN)
	$(Q)$(LUA) glue/gen.lua --decl-tool $(GLUE_DECL) -o $(BUILD)/glue/glue_prelude \
	    $(GLUE_DEFS)

# Built from the sources (not the objects, which wait for the generated
# header): the runtime needs none of the generated types.
$(GLUE_DECL): glue/gluedecl.c $(GLUE_RT_SRC) $(wildcard glue/*.h) | deps-check
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(filter-out -MMD -MP,$(ALL_CFLAGS)) -o $@ glue/gluedecl.c \
	    $(GLUE_RT_SRC) -lm $(EXTRA_LDFLAGS)
endif

$(BUILD)/lua/echohost/%.so: $(GLUE_GENH) | deps-check
	@mkdir -p $(dir $@)
	@printf '  SO %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -fPIC -shared -o $@ $(SO_$*) \
	    $(if $(filter glue,$*),$(GLUE_GEN)) $(EXTRA_LDFLAGS)
$(foreach m,$(LUAMODS),$(eval $(BUILD)/lua/echohost/$(m).so: $(SO_$(m))))
$(BUILD)/lua/echohost/glue.so: $(GLUE_GEN) $(wildcard glue/*.h)

$(BUILD)/echohost-bench: tests/bench/bench.c tests/bench/bench_proc.c \
                         tests/bench/bench_proc.h
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $(filter %.c,$^) -lm -lpthread $(EXTRA_LDFLAGS)

$(BUILD)/tests/ptyrun: tests/ptyrun.c
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< -lutil $(EXTRA_LDFLAGS)

$(BUILD)/tests/sdsim: tests/sdsim.c
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -o $@ $< $(EXTRA_LDFLAGS)

# The runtime's tests link without Lua; test_lua tests the binding.
$(BUILD)/tests/glue/%: tests/glue/%.c $(GLUE_RT_OBJ) tests/glue/check.h \
                       tests/glue/tinfo.h
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/glue -o $@ $< $(GLUE_RT_OBJ) -lm \
	    $(EXTRA_LDFLAGS)
$(BUILD)/tests/glue/test_lua: tests/glue/test_lua.c $(GLUE_OBJ) tests/glue/check.h
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/glue -o $@ $< $(GLUE_OBJ) $(LUA_LIBS) -lm \
	    $(EXTRA_LDFLAGS)

$(BUILD)/lib/libechohost-glue.a: $(GLUE_RT_OBJ)
	@mkdir -p $(dir $@)
	@printf '  AR %s\n' $@
	$(Q)rm -f $@ && ar rcs $@ $^
$(BUILD)/lib/$(GLUE_SONAME): $(GLUE_RT_OBJ)
	@mkdir -p $(dir $@)
	@printf '  SO %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -shared -Wl,-soname,$(GLUE_SONAME) -o $@ $^ -lm \
	    $(EXTRA_LDFLAGS)
glue-test: $(GLUE_TESTS)

$(BUILD)/tests/bus/test_bus: tests/bus/test_bus.c src/bus.c src/bus.h src/pmutex.h \
                           tests/glue/check.h
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/glue -o $@ $(filter %.c,$^) -lpthread $(EXTRA_LDFLAGS)

$(BUILD)/tests/ev/test_ev: tests/ev/test_ev.c src/ev.c src/ev.h tests/glue/check.h
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/glue -o $@ $(filter %.c,$^) $(EXTRA_LDFLAGS)

$(BUILD)/tests/proxy/test_proxy: tests/proxy/test_proxy.c tests/proxy/proxy_props.h \
    src/proxyproto.c src/proxyproto.h src/net.c tests/glue/check.h
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -Itests/glue -Itests/proxy -o $@ $(filter %.c,$^) \
	    $(EXTRA_LDFLAGS)

# -z now: no lazy binding in the children of refecho -f (as in echohost's)
$(BUILD)/refecho: tests/bench/refecho.c
	@mkdir -p $(dir $@)
	@printf '  LD %s\n' $@
	$(Q)$(CC) $(ALL_CFLAGS) -Wl,-z,now -o $@ $< $(EXTRA_LDFLAGS)

-include $(OBJ:.o=.d) $(BUILD)/src/luamain.d

# --- dependencies -------------------------------------------------------------
# Installs only what is missing; not root and something missing: one line, exit 1.
deps-check:
	@sh tests/deps.sh $(DEPS_PKGS)
deps: deps-check
bench-deps:
	@sh tests/deps.sh $(DEPS_PKGS) $(BENCH_PKGS)
.PHONY: deps-check

# --- run, test ----------------------------------------------------------------
run: all
	$(BIN) --listen 127.0.0.1:8888

test: all
	@$(MAKE) --no-print-directory lint
	@sh tests/run.sh $(BUILD)

test-only:
	@sh tests/run.sh $(BUILD)

lint: deps-check
	@luacheck -q lua scripts tests glue/gen.lua

# ASan + UBSan build in its own directory, same tests against it.
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer -O1 -g
asan: deps-check
	@$(MAKE) --no-print-directory BUILD=build/asan CFLAGS="$(ASAN_FLAGS)" \
	    EXTRA_LDFLAGS="$(ASAN_FLAGS)" $(if $(CI),CI=$(CI)) \
	    build/asan/echohost $(patsubst $(BUILD)/%,build/asan/%,$(LUABIN)) \
	    $(foreach m,$(LUAMODS),build/asan/lua/echohost/$(m).so) \
	    build/asan/tests/ptyrun build/asan/tests/sdsim \
	    $(patsubst $(BUILD)/%,build/asan/%,$(GLUE_TESTS)) \
	    $(patsubst $(BUILD)/%,build/asan/%,$(BUS_TEST)) \
	    $(patsubst $(BUILD)/%,build/asan/%,$(GLUE_LIBS)) \
	    $(patsubst $(BUILD)/%,build/asan/%,$(PROXY_TEST)) \
	    $(patsubst $(BUILD)/%,build/asan/%,$(TOOLBIN))
asan-test: asan
	@ECHOHOST_ASAN=1 sh tests/run.sh build/asan

# --- benchmark, fuzzing ---------------------------------------------------------
bench: bench-deps all
	@$(LUA) tests/bench/bench.lua --build $(BUILD)
bench-quick: bench-deps all
	@$(LUA) tests/bench/bench.lua --build $(BUILD) --quick

fuzz: $(GLUE_GEN)
	@sh tests/deps.sh $(FUZZ_PKGS)
	@sh tests/fuzz.sh

# --- install, clean -----------------------------------------------------------
LUA_CMOD_DIR := $(PREFIX)/lib/lua/5.4
LUA_LMOD_DIR := $(PREFIX)/share/lua/5.4
install: all $(if $(GLUE_LIBS),install-glue)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LUA_CMOD_DIR)/echohost \
	    $(DESTDIR)$(LUA_LMOD_DIR)/echohost
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/echohost
	$(if $(LUABIN),install -m 755 $(LUABIN) $(DESTDIR)$(PREFIX)/bin/echohost-lua)
	$(if $(SOS),install -m 644 $(SOS) $(DESTDIR)$(LUA_CMOD_DIR)/echohost/)
	$(if $(wildcard lua/echohost/*.lua),install -m 644 lua/echohost/*.lua \
	    $(DESTDIR)$(LUA_LMOD_DIR)/echohost/)

# The glue C library: headers, libechohost-glue.{a,so}, echohost-glue.pc, and
# echohost-glue-gen (a lua5.4 script: gen.lua and the prelude in its share,
# the parser glue-decl in lib/echohost).
GLUE_VERSION := 0.1.0
GLUE_SHARE   := $(PREFIX)/share/echohost/glue
install-glue: all
	install -d $(DESTDIR)$(PREFIX)/include/echohost $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	    $(DESTDIR)$(GLUE_SHARE) $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/echohost
	install -m 644 glue/glue.h $(GLUE_GENH) $(DESTDIR)$(PREFIX)/include/echohost/
	install -m 644 $(BUILD)/lib/libechohost-glue.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/lib/$(GLUE_SONAME) $(DESTDIR)$(PREFIX)/lib/
	ln -sf $(GLUE_SONAME) $(DESTDIR)$(PREFIX)/lib/libechohost-glue.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(GLUE_VERSION)|' \
	    glue/echohost-glue.pc.in >$(DESTDIR)$(PREFIX)/lib/pkgconfig/echohost-glue.pc
	install -m 644 glue/gen.lua glue/prelude.glue $(DESTDIR)$(GLUE_SHARE)/
	install -m 755 $(GLUE_DECL) $(DESTDIR)$(PREFIX)/lib/echohost/
	sed -e 's|@LUA@|$(shell command -v $(LUA))|' -e 's|@SHARE@|$(GLUE_SHARE)|' \
	    -e 's|@DECL@|$(PREFIX)/lib/echohost/glue-decl|' \
	    glue/echohost-glue-gen.in >$(DESTDIR)$(PREFIX)/bin/echohost-glue-gen
	chmod 755 $(DESTDIR)$(PREFIX)/bin/echohost-glue-gen

clean:
	rm -rf build
