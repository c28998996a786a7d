-- The glue C API as a library: make install puts headers, libechohost-glue
-- (static and shared), echohost-glue.pc and echohost-glue-gen under PREFIX;
-- a user's .glue file and C program build against them with pkg-config.
local util = require "helpers.util"

local run, spit = util.run, util.spit

local function q(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- A user's type that uses the prelude's list and string.
local GLUE = [[
(* shapes.glue: a user's declarations *)
Inductive shape := Dot | Circle (r : int)
  | Group (name : string) (items : list shape).
]]

-- Generated constructors (caller memory and managed heap), tags, printers
-- of a user type and of list, the reader on both, a read error, and the
-- registry: what a C user of the library does.
local APP = [[
#include <stdio.h>
#include <string.h>

#include "shapes.h"

static int read_print(struct thread_info *ti, const char *text) {
    char err[GLUE_ERR_LEN], ty[64];
    const struct glue_ty *got;
    value v;

    if (glue_read(ti, text, strlen(text), NULL, &v, &got, err,
                  sizeof err) < 0) {
        printf("error: %s\n", err);
        return -1;
    }
    glue_ty_format(ty, sizeof ty, got);
    glue_fprint(stdout, v, got);
    printf(" : %s\n", ty);
    return 0;
}

int main(void) {
    struct thread_info *ti = make_tinfo();
    value argv[2], items, g;

    if (ti == NULL || shapes_register(ti) < 0 || glue_reserve(ti, 64) < 0)
        return 1;
    items = alloc_make_list_cons(ti, make_shape_Dot(), make_list_nil());
    items = alloc_make_list_cons(ti, make_shape_Circle(Val_long(3), argv),
                                 items);
    g = alloc_make_shape_Group(ti, glue_make_string(ti, "g", 1), items);
    print_shape(g);
    printf("\n");
    print_list(items, print_shape);
    printf("\ntags %u %u %s\n", get_shape_tag(g), get_list_tag(items),
           names_of_shape[get_shape_tag(Field(items, 0))]);
    read_print(ti, "(Group \"x\" (cons (Circle 7) nil))");
    read_print(ti, "(pair Dot (Some true))");
    read_print(ti, "(Circle \"7\")");
    printf("%s %s\n", glue_find_type(ti, "shape") ? "shape" : "-",
           glue_find_type(ti, "list") ? "list" : "-");
    free_tinfo(ti);
    glue_ty_free_all();
    return 0;
}
]]

local WANT = [[
(Group "g" (cons (Circle 3) (cons Dot nil)))
(cons (Circle 3) (cons Dot nil))
tags 2 1 Circle
(Group "x" (cons (Circle 7) nil)) : shape
(pair Dot (Some true)) : prod shape (option bool)
error: column 9: expected int, got "7"
shape list
]]

describe("the glue C library (make install)", function()
  local prefix, dir
  local build = os.getenv("ECHOHOST_BUILD") or "build"
  -- An ASan build's library needs the sanitizers in the program too.
  local cflags = os.getenv("ECHOHOST_ASAN") and "-fsanitize=address,undefined " or ""

  setup(function()
    prefix, dir = assert(util.tmpdir()), assert(util.tmpdir())
    -- -o all: install what this build holds, remaking nothing
    local log, status = run(("make -s --no-print-directory -o all install PREFIX=%s BUILD=%s")
      :format(q(prefix), q(build)))
    assert.equal(0, status, log)
    spit(dir .. "/shapes.glue", GLUE)
    spit(dir .. "/app.c", APP)
  end)

  teardown(function()
    os.execute("rm -rf " .. q(prefix) .. " " .. q(dir))
  end)

  -- Runs cmd in dir with the temporary prefix's pkg-config file.
  local function sh(cmd)
    return run(("cd %s && export PKG_CONFIG_PATH=%s/lib/pkgconfig && %s")
      :format(q(dir), q(prefix), cmd))
  end

  it("installs headers, both libraries with a soname, the .pc and the generator", function()
    for _, f in ipairs({ "include/echohost/glue.h", "include/echohost/glue_prelude.h",
        "lib/libechohost-glue.a", "lib/libechohost-glue.so.0", "lib/libechohost-glue.so",
        "lib/pkgconfig/echohost-glue.pc", "bin/echohost-glue-gen",
        "lib/echohost/glue-decl" }) do
      assert(io.open(prefix .. "/" .. f), f .. " not installed"):close()
    end
    local out = run("objdump -p " .. q(prefix .. "/lib/libechohost-glue.so") .. " | grep SONAME")
    assert.matches("SONAME%s+libechohost%-glue%.so%.0\n", out)
    out = sh("pkg-config --cflags --libs echohost-glue")
    assert.equal(("-I%s/include -L%s/lib -lechohost-glue \n"):format(prefix, prefix), out)
  end)

  it("the header needs no Lua, the library links without it", function()
    local out, status = sh("cc -E $(pkg-config --cflags echohost-glue) -x c - </dev/null"
      .. " -include echohost/glue_prelude.h | grep -c 'lua_State'")
    assert.equal("0\n", out)
    assert.equal(1, status)     -- grep found nothing
    out = run("nm -u " .. q(prefix .. "/lib/libechohost-glue.a") .. " | grep -c ' lua'")
    assert.equal("0\n", out)
  end)

  it("echohost-glue-gen writes OUT.h/OUT.c for a user's .glue with the prelude's types", function()
    local out, status = sh(("%s/bin/echohost-glue-gen -o shapes shapes.glue"):format(q(prefix)))
    assert.equal("", out)
    assert.equal(0, status)
    local h = util.slurp(dir .. "/shapes.h")
    assert.matches("#include <echohost/glue_prelude.h>", h, 1, true)
    assert.matches("value alloc_make_shape_Group(struct thread_info *ti, value name,", h, 1, true)
    assert.matches("int shapes_register(struct thread_info *ti);", h, 1, true)
    assert.is_nil(h:find("make_list_cons", 1, true))    -- the library has it
    out, status = sh(("%s/bin/echohost-glue-gen"):format(q(prefix)))
    assert.matches("^usage: echohost%-glue%-gen ", out)
    assert.equal(2, status)
    local bad = util.write_tmp("Inductive t := A (x : lst int).\n")
    finally(function() os.remove(bad) end)
    out, status = sh(("%s/bin/echohost-glue-gen -o bad %s"):format(q(prefix), q(bad)))
    assert.matches(":1:23: unknown type lst\n$", out)
    assert.equal(1, status)
  end)

  it("builds and runs a program against the shared library", function()
    local out, status = sh("cc -std=c11 -Wall -Wextra -Werror " .. cflags
      .. "-o app_shared app.c shapes.c $(pkg-config --cflags --libs echohost-glue)")
    assert.equal("", out)
    assert.equal(0, status)
    out = sh(("LD_LIBRARY_PATH=%s/lib ldd ./app_shared"):format(q(prefix)))
    local lib = prefix:gsub("%p", "%%%0") .. "/lib/"
    assert.matches("libechohost%-glue%.so%.0 => " .. lib, out)
    out, status = sh(("LD_LIBRARY_PATH=%s/lib ./app_shared"):format(q(prefix)))
    assert.equal(WANT, out)
    assert.equal(0, status)
  end)

  it("builds and runs a program against the static library, leaking nothing", function()
    local out, status = sh("cc -std=c11 -Wall -Wextra -Werror " .. cflags
      .. "-o app_static app.c shapes.c $(pkg-config --cflags echohost-glue) "
      .. "-Wl,-Bstatic $(pkg-config --libs echohost-glue) -Wl,-Bdynamic -lm")
    assert.equal("", out)
    assert.equal(0, status)
    out = sh("ldd ./app_static")
    assert.is_nil(out:find("echohost", 1, true))
    local vg = os.getenv("ECHOHOST_ASAN") and ""
      or "valgrind -q --leak-check=full --error-exitcode=9 "
    out, status = sh(vg .. "./app_static")
    assert.equal(WANT, out)
    assert.equal(0, status)
  end)
end)
