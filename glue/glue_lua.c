/* The Lua side of fn values: the thread_info of a Lua state, pushing the
 * function a fn value holds, and call() (CertiCoq's closure call). */
#include <stdio.h>

#include <lauxlib.h>

#include "glue_lua.h"

/* The box echohost.glue keeps in the registry: the thread_info and its
 * host, which lives as long as the thread_info. */
struct glue_lua_box {
    struct thread_info *ti;
    struct glue_lua host;
};

/* The thread_info kept in L's registry by echohost.glue, or NULL. */
struct thread_info *glue_tinfo_of(lua_State *L) {
    struct glue_lua_box *box;

    lua_getfield(L, LUA_REGISTRYINDEX, GLUE_TINFO_KEY);
    box = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return box ? box->ti : NULL;
}

static void release_ref(void *host, intptr_t ref) {
    luaL_unref(((struct glue_lua *)host)->L, LUA_REGISTRYINDEX, (int)ref);
}

static int same_ref(void *host, intptr_t a, intptr_t b) {
    lua_State *L = ((struct glue_lua *)host)->L;
    int eq;

    lua_rawgeti(L, LUA_REGISTRYINDEX, (lua_Integer)a);
    lua_rawgeti(L, LUA_REGISTRYINDEX, (lua_Integer)b);
    eq = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return eq;
}

static int box_gc(lua_State *L) {
    struct glue_lua_box *box = lua_touserdata(L, 1);

    free_tinfo(box->ti);
    box->ti = NULL;
    return 0;
}

/* The state's thread_info, created (with no types) on the first call and
 * kept in the registry; its box is created before any value, so it is
 * finalized after all of them. Raises when out of memory. */
struct thread_info *glue_lua_open(lua_State *L, glue_push_fn_t *push,
                                  glue_to_fn_t *to) {
    struct thread_info *ti = glue_tinfo_of(L);
    struct glue_lua_box *box;

    if (ti)
        return ti;
    box = lua_newuserdatauv(L, sizeof *box, 0);
    box->ti = NULL;
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    if ((ti = make_tinfo()) == NULL)
        luaL_error(L, "not enough memory");
    box->ti = ti;
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    box->host.L = lua_tothread(L, -1);
    lua_pop(L, 1);
    box->host.push = push;
    box->host.to = to;
    ti->host = &box->host;
    ti->release = release_ref;
    ti->same = same_ref;
    lua_setfield(L, LUA_REGISTRYINDEX, GLUE_TINFO_KEY);
    return ti;
}

/* Pushes the Lua function a fn value holds. */
void glue_push_closure(struct thread_info *ti, lua_State *L, value fn) {
    (void)ti;
    lua_rawgeti(L, LUA_REGISTRYINDEX, (lua_Integer)glue_fn_ref(fn));
}

static int is_fn(value v) {
    return Is_block(v) && v != 0 && Tag_val(v) == Fn_tag;
}

struct call_args {
    struct thread_info *ti;
    value clo, arg, result;
};

static int call_body(lua_State *L) {
    struct call_args *c = lua_touserdata(L, 1);
    struct glue_lua *h = c->ti->host;

    glue_push_closure(c->ti, L, c->clo);
    h->push(L, c->ti, c->arg, &glue_ty_any);
    lua_call(L, 1, 1);
    c->result = h->to(L, c->ti, -1);
    return 0;
}

static int call_msgh(lua_State *L) {
    const char *msg = lua_tostring(L, 1);

    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

static value call_failed(struct thread_info *ti, const char *msg) {
    ti->raised = 1;
    snprintf(ti->error, sizeof ti->error, "%s", msg);
    return 0;
}

/* Calls the Lua function held by the fn value clo with arg (as a Lua value
 * of unknown type: ints and strings become Lua ints and strings) on the
 * host's state, in protected mode. Returns the result converted back to a
 * value; when the function raised (or clo is not a fn, or ti has no Lua
 * host), returns 0 with ti->raised set and the message (with traceback)
 * in ti->error. A GC point. */
value call(struct thread_info *ti, value clo, value arg) {
    struct call_args c = {ti, clo, arg, 0};
    struct glue_lua *h = ti->host;
    lua_State *L;
    int base;

    ti->raised = 0;
    ti->error[0] = '\0';
    if (h == NULL || h->L == NULL || h->push == NULL || h->to == NULL)
        return call_failed(ti, "call: no Lua state");
    if (!is_fn(clo))
        return call_failed(ti, "call: not a closure");
    L = h->L;
    base = lua_gettop(L);
    lua_pushcfunction(L, call_msgh);
    lua_pushcfunction(L, call_body);
    lua_pushlightuserdata(L, &c);
    if (lua_pcall(L, 1, 0, base + 1) != LUA_OK) {
        call_failed(ti, lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
        lua_settop(L, base);
        return 0;
    }
    lua_settop(L, base);
    return c.result;
}
