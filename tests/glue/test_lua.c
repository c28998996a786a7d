/* C tests of the glue's Lua binding (glue_lua.h): the thread_info of a Lua
 * state, fn values holding Lua functions, call() with its error path. */
#include <stdlib.h>

#include <lauxlib.h>
#include <lualib.h>

#include "glue_lua.h"
#include "check.h"

int luaopen_echohost_glue(lua_State *L);

/* A fn value for the Lua function that the chunk returns. */
static value lua_fn(lua_State *L, struct thread_info *ti, const char *chunk) {
    if (luaL_dostring(L, chunk) != LUA_OK)
        return 0;
    return glue_make_fn(ti, luaL_ref(L, LUA_REGISTRYINDEX));
}

static void test_call(void) {
    lua_State *L = luaL_newstate();
    struct thread_info *ti;
    value inc, boom, bad, r;
    size_t len;

    luaL_openlibs(L);
    luaL_requiref(L, "echohost.glue", luaopen_echohost_glue, 0);
    lua_pop(L, 1);
    ti = glue_tinfo_of(L);
    ASSERT_TRUE(ti != NULL);
    glue_reserve(ti, 64);
    inc = lua_fn(L, ti, "return function(x) return x + 1 end");
    boom = lua_fn(L, ti, "return function(x) error('boom ' .. x) end");
    bad = lua_fn(L, ti, "return function() return {} end");
    int s1 = glue_root(ti, inc), s2 = glue_root(ti, boom);
    ASSERT_EQ(Tag_val(inc), Fn_tag);
    glue_push_closure(ti, L, glue_root_get(ti, s1));    /* a second ref */
    value inc2 = glue_make_fn(ti, luaL_ref(L, LUA_REGISTRYINDEX));
    ASSERT_EQ(glue_equal(ti, glue_root_get(ti, s1), inc2), 1);
    ASSERT_EQ(glue_equal(ti, glue_root_get(ti, s1), glue_root_get(ti, s2)), 0);

    r = call(ti, inc, Val_long(41));
    ASSERT_EQ(ti->raised, 0);
    ASSERT_EQ(r, Val_long(42));
    r = call(ti, glue_root_get(ti, s2), Val_long(7));
    ASSERT_EQ(r, 0);
    ASSERT_EQ(ti->raised, 1);
    ASSERT_TRUE(strstr(ti->error, "boom 7") != NULL);
    ASSERT_TRUE(strstr(ti->error, "stack traceback") != NULL);
    r = call(ti, bad, Val_long(1));
    ASSERT_EQ(ti->raised, 1);
    ASSERT_TRUE(strstr(ti->error, "cannot make a glue value of a table"));
    r = call(ti, Val_long(3), Val_long(1));
    ASSERT_EQ(ti->raised, 1);
    ASSERT_STR_EQ(ti->error, "call: not a closure");

    value s = lua_fn(L, ti, "return function(x) return ('<' .. x .. '>') end");
    glue_reserve(ti, 8);
    r = call(ti, s, glue_make_string(ti, "hi", 2));
    ASSERT_EQ(ti->raised, 0);
    ASSERT_TRUE(memcmp(glue_string(r, &len), "<hi>", 4) == 0);
    ASSERT_EQ(len, 4);

    ASSERT_EQ(glue_collect(ti, 0, 1), 0);       /* unrooted fns released */
    r = call(ti, glue_root_get(ti, s1), Val_long(1));
    ASSERT_EQ(r, Val_long(2));
    glue_unroot(ti, s1);
    glue_unroot(ti, s2);
    lua_close(L);                               /* frees ti */
}

int main(void) {
    test_call();
    glue_ty_free_all();
    return check_done();
}
