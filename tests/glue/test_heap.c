/* C tests of the glue runtime: the collector and its roots, checked
 * growth, deep values printed and read without recursion, fn values and
 * call() with its error path. */
#include <stdlib.h>

#include <lauxlib.h>
#include <lualib.h>

#include "glue_types.h"
#include "check.h"

/* Elements of the deep list; GLUE_TEST_DEEP overrides (valgrind). */
static long deep = 1000000;

int luaopen_echohost_glue(lua_State *L);

static const struct glue_ty *list_of(const struct glue_ty *a) {
    return glue_ty_app(&glue_type_list, 1, (const struct glue_ty *[]){a});
}

/* [n-1; ...; 0] on the heap (room reserved first: no GC in the loop). */
static value heap_list(struct thread_info *ti, long n) {
    value l = make_list_nil();

    if (glue_reserve(ti, 3 * (size_t)n) < 0)
        return 0;
    for (long i = 0; i < n; i++)
        l = alloc_make_list_cons(ti, Val_long(i), l);
    return l;
}

static void test_roots(void) {
    struct thread_info *ti = make_tinfo();
    const struct glue_ty *li = list_of(&glue_ty_int);
    value l = heap_list(ti, 1000);
    char before[8192], after[8192];
    int slot = glue_root(ti, l);

    glue_sprint(before, sizeof before, l, li);
    heap_list(ti, 5000);                        /* garbage */
    ASSERT_EQ(glue_collect(ti, 0, 1), 0);
    ASSERT_NE(glue_root_get(ti, slot), l);      /* it moved */
    ASSERT_EQ(glue_heap_live(ti), 3000);        /* only the rooted list */
    glue_sprint(after, sizeof after, glue_root_get(ti, slot), li);
    ASSERT_STR_EQ(after, before);
    glue_unroot(ti, slot);
    ASSERT_EQ(glue_collect(ti, 0, 1), 0);
    ASSERT_EQ(glue_heap_live(ti), 0);
    free_tinfo(ti);
}

static void test_limit(void) {
    struct thread_info *ti = make_tinfo();
    int slot = glue_root(ti, heap_list(ti, 20000));

    glue_set_heap_max(ti, 1 << 17);
    ASSERT_EQ(glue_reserve(ti, 1 << 18), -1);   /* over the cap: fails */
    ASSERT_EQ(glue_reserve(ti, 1000), 0);
    ASSERT_EQ(glue_heap_live(ti), 60000);       /* the root survived */
    ASSERT_EQ(Long_val(Field(glue_root_get(ti, slot), 0)), 19999);
    ASSERT_EQ(heap_list(ti, 1 << 17), 0);
    glue_unroot(ti, slot);
    free_tinfo(ti);
}

static void test_deep(void) {
    struct thread_info *ti = make_tinfo();
    const struct glue_ty *li = list_of(&glue_ty_int), *ty;
    value l = heap_list(ti, deep), back;
    int slot = glue_root(ti, l);
    char err[GLUE_ERR_LEN];
    size_t len;
    char *text = glue_aprint(l, li, &len);
    FILE *null = fopen("/dev/null", "w");

    ASSERT_TRUE(text != NULL);
    char head[64];
    snprintf(head, sizeof head, "(cons %ld (cons %ld ", deep - 1, deep - 2);
    ASSERT_EQ(strncmp(text, head, strlen(head)), 0);
    ASSERT_EQ(text[len - 1], ')');
    ASSERT_EQ(glue_sprint(NULL, 0, l, li), len);
    ASSERT_EQ(glue_fprint(null, l, li), 0);
    ASSERT_EQ(glue_read(ti, text, len, NULL, &back, &ty, err, sizeof err), 0);
    ASSERT_STR_EQ(err, "");
    ASSERT_EQ(ty, li);                          /* inferred list int */
    ASSERT_EQ(glue_equal(ti, back, glue_root_get(ti, slot)), 1);
    ASSERT_EQ(glue_equal(ti, Field(back, 1), glue_root_get(ti, slot)), 0);
    fclose(null);
    free(text);
    glue_unroot(ti, slot);
    free_tinfo(ti);
}

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
    if (getenv("GLUE_TEST_DEEP"))
        deep = atol(getenv("GLUE_TEST_DEEP"));
    test_roots();
    test_limit();
    test_deep();
    test_call();
    glue_ty_free_all();
    return check_done();
}
