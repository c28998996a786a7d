/* echohost.glue: glue values in Lua. Each declared type is a table of
 * constructors; a value is an "echohost.value" userdata pinning its block
 * in the managed heap (a root slot, released by __gc). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "glue_lua.h"
#include "glue_prelude.h"

int luaopen_echohost_glue(lua_State *L);

#define VALUE_MT    "echohost.value"
#define BOX_MT      "echohost.gluetext"
#define MAX_PARAMS  16

struct lvalue {
    value v;                    /* the word when unboxed (slot < 0) */
    int slot;                   /* root slot of a boxed value */
    const struct glue_ty *ty;
    struct thread_info *ti;
};

static const char *const lua_keywords[] = {
    "and", "break", "do", "else", "elseif", "end", "false", "for",
    "function", "goto", "if", "in", "local", "nil", "not", "or", "repeat",
    "return", "then", "true", "until", "while", NULL
};

static struct thread_info *tinfo(lua_State *L) {
    struct thread_info *ti = glue_tinfo_of(L);

    if (ti == NULL)
        luaL_error(L, "echohost.glue: no thread_info");
    return ti;
}

static value word_of(const struct lvalue *lv) {
    return lv->slot >= 0 ? glue_root_get(lv->ti, lv->slot) : lv->v;
}

/* The value at idx; raises if it is not one, or if it was finalized (a
 * finalizer of another object can still reach it). */
static struct lvalue *checkvalue(lua_State *L, int idx) {
    struct lvalue *lv = luaL_checkudata(L, idx, VALUE_MT);

    if (lv->slot < 0 && lv->v == 0)
        luaL_error(L, "attempt to use a collected glue value");
    return lv;
}

/* Makes room for `need` words: collect; if the heap stays crowded, let
 * Lua's collector drop unreachable values first, then grow. -1: full. */
static int reserve(lua_State *L, struct thread_info *ti, size_t need) {
    if ((size_t)(ti->limit - ti->alloc) >= need)
        return 0;
    if (glue_collect(ti, need, 0) == 0)
        return 0;
    lua_gc(L, LUA_GCCOLLECT);
    return glue_collect(ti, need, 1) < 0 ? -1 : 0;
}

/* Pushes v as a userdata of type ty. v is rooted first: creating the
 * userdata may run finalizers that allocate, and so move v. (If that
 * creation raises a memory error, the slot stays taken until the state
 * closes: a value retained, nothing corrupted.) */
static void push_udata(lua_State *L, struct thread_info *ti, value v,
                       const struct glue_ty *ty) {
    int slot = Is_block(v) ? glue_root(ti, v) : -1;
    struct lvalue *lv;

    if (Is_block(v) && slot < 0)
        luaL_error(L, "not enough memory");
    lv = lua_newuserdatauv(L, sizeof *lv, 0);
    lv->v = Is_block(v) ? 0 : v;
    lv->slot = slot;
    lv->ty = ty ? ty : &glue_ty_any;
    lv->ti = ti;
    luaL_setmetatable(L, VALUE_MT);
}

/* Pushes v, of type ty, as a Lua value: ints and strings as Lua ints and
 * strings, fn values as their function, the rest as userdata. Of unknown
 * type, the block's tag decides. */
static void push_value(lua_State *L, struct thread_info *ti, value v,
                       const struct glue_ty *ty) {
    size_t len;
    const char *s;
    int kind = ty ? ty->kind : GLUE_ANY;

    if (kind == GLUE_ANY || kind == GLUE_PARAM) {
        if (Is_long(v))
            kind = GLUE_INT;
        else if (Tag_val(v) == String_tag)
            kind = GLUE_STRING;
        else if (Tag_val(v) == Fn_tag)
            kind = GLUE_FN;
    }
    switch (kind) {
    case GLUE_INT:
        lua_pushinteger(L, (lua_Integer)Long_val(v));
        return;
    case GLUE_STRING:
        s = glue_string(v, &len);
        lua_pushlstring(L, s, len);
        return;
    case GLUE_FN:
        glue_push_closure(ti, L, v);
        return;
    default:
        push_udata(L, ti, v, ty);
    }
}

/* The glue type of the Lua value at idx, or NULL if it has none. */
static const struct glue_ty *type_of(lua_State *L, int idx) {
    struct lvalue *lv;

    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        return lua_isinteger(L, idx) || lua_tointegerx(L, idx, NULL) != 0 ||
               lua_tonumber(L, idx) == 0 ? &glue_ty_int : NULL;
    case LUA_TSTRING: return &glue_ty_string;
    case LUA_TFUNCTION: return &glue_ty_fn;
    case LUA_TUSERDATA:
        lv = luaL_testudata(L, idx, VALUE_MT);
        return lv ? lv->ty : NULL;
    default: return NULL;
    }
}

/* Heap words the Lua value at idx needs as a field. */
static size_t words_of(lua_State *L, int idx) {
    switch (lua_type(L, idx)) {
    case LUA_TSTRING: return lua_rawlen(L, idx) / sizeof(value) + 2;
    case LUA_TFUNCTION: return 2;
    default: return 0;
    }
}

/* Converts the Lua value at idx (type-checked, room reserved) to a word;
 * fn refs were taken beforehand, in refs[idx]. */
static value to_word(lua_State *L, struct thread_info *ti, int idx, int ref) {
    size_t len;
    const char *s;
    lua_Integer n;

    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        n = lua_tointegerx(L, idx, NULL);
        return Val_long(n);
    case LUA_TSTRING:
        s = lua_tolstring(L, idx, &len);
        return glue_make_string(ti, s, len);
    case LUA_TFUNCTION:
        return glue_make_fn(ti, ref);
    default:
        return word_of(lua_touserdata(L, idx));
    }
}

/* A float that type_of refused: "1.5 (not an integer)", or an integral
 * one past lua_Integer: "1e+19 (out of the integer range)". */
static void not_an_int(char *buf, size_t len, lua_Number x) {
    int integral = floor(x) == x && !isinf(x);

    snprintf(buf, len, LUA_NUMBER_FMT " (%s)", (LUAI_UACNUMBER)x,
             integral ? "out of the integer range" : "not an integer");
}

/* Raises "T.C: argument i (f) expected X, got Y"; X is the field's type,
 * or for a parameter nothing has fixed yet its name and what it takes. */
static int arg_error(lua_State *L, const struct glue_type *t,
                     const struct glue_ctor *c, unsigned int i,
                     const struct glue_ty *want, const struct glue_ty *got) {
    const struct glue_ty *decl = c->fields[i].type;
    char w[160], g[128];

    if (want == NULL || want->kind == GLUE_ANY)     /* not "_": say what fits */
        snprintf(w, sizeof w, "%s (an int, a string, a function or a glue "
                 "value)", decl->kind == GLUE_PARAM ? t->params[decl->param]
                                                    : "a value");
    else
        glue_ty_format(w, sizeof w, want);
    if (got)
        glue_ty_format(g, sizeof g, got);
    else if (lua_type(L, (int)i + 1) == LUA_TNUMBER)
        not_an_int(g, sizeof g, lua_tonumber(L, (int)i + 1));
    else
        snprintf(g, sizeof g, "%s", luaL_typename(L, (int)i + 1));
    return luaL_error(L, "%s.%s: argument %d (%s) expected %s, got %s",
                      t->name, c->name, (int)i + 1, c->fields[i].name, w, g);
}

/* Checks the arguments against c's fields, inferring the parameters in
 * env; returns the heap words the fields need. */
static size_t check_args(lua_State *L, const struct glue_type *t,
                         const struct glue_ctor *c,
                         const struct glue_ty **env) {
    size_t words = c->arity + 1;
    int n = lua_gettop(L);

    if (n != (int)c->arity)
        luaL_error(L, "%s.%s expects %d argument%s, got %d", t->name, c->name,
                   (int)c->arity, c->arity == 1 ? "" : "s", n);
    for (unsigned int i = 0; i < c->arity; i++) {
        const struct glue_ty *ty = type_of(L, (int)i + 1);
        if (ty == NULL || glue_ty_match(c->fields[i].type, ty, env) < 0)
            arg_error(L, t, c, i, glue_ty_subst(c->fields[i].type, env), ty);
        if (ty == &glue_ty_int) {
            lua_Integer x = lua_tointegerx(L, (int)i + 1, NULL);
            if (x > GLUE_INT_MAX || x < GLUE_INT_MIN)
                luaL_error(L, "%s.%s: argument %d (%s) out of range", t->name,
                           c->name, (int)i + 1, c->fields[i].name);
        }
        words += words_of(L, (int)i + 1);
    }
    return words;
}

/* A boxed constructor: upvalues (type, ctor index). */
static int lglue_construct(lua_State *L) {
    const struct glue_type *t = lua_touserdata(L, lua_upvalueindex(1));
    const struct glue_ctor *c =
        &t->ctors[lua_tointeger(L, lua_upvalueindex(2))];
    struct thread_info *ti = tinfo(L);
    const struct glue_ty *env[MAX_PARAMS], *ty;
    int refs[GLUE_MAX_ARITY];   /* fn refs: taken before the heap work */
    value *p;
    size_t words;

    for (int i = 0; i < t->nparams; i++)
        env[i] = &glue_ty_any;
    words = check_args(L, t, c, env);
    if ((ty = glue_ty_app(t, t->nparams, env)) == NULL)
        return luaL_error(L, "%s.%s: type nested too deeply", t->name,
                          c->name);
    luaL_checkstack(L, 2, NULL);
    for (unsigned int i = 0; i < c->arity; i++) {
        refs[i] = LUA_NOREF;
        if (lua_type(L, (int)i + 1) == LUA_TFUNCTION) {
            lua_pushvalue(L, (int)i + 1);
            refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
        }
    }
    if (reserve(L, ti, words) < 0) {
        for (unsigned int i = 0; i < c->arity; i++)
            luaL_unref(L, LUA_REGISTRYINDEX, refs[i]);
        return luaL_error(L, "glue heap exhausted");
    }
    /* From here to push_udata nothing allocates in Lua: no GC point. */
    p = glue_alloc(ti, c->arity, c->ordinal);
    for (unsigned int i = 0; i < c->arity; i++)
        p[i] = to_word(L, ti, (int)i + 1, refs[i]);
    push_udata(L, ti, (value)p, ty);
    return 1;
}

/* --- Values ------------------------------------------------------------- */

static const struct glue_type *headtype(lua_State *L, struct lvalue *lv) {
    if (lv->ty->kind != GLUE_APP)
        luaL_error(L, "value of unknown type");
    return lv->ty->type;
}

static const struct glue_ctor *ctor_of(lua_State *L, struct lvalue *lv) {
    const struct glue_ctor *c = glue_ctor_of(headtype(L, lv), word_of(lv));

    if (c == NULL)
        luaL_error(L, "malformed value of type %s", lv->ty->type->name);
    return c;
}

/* Pushes field i of a boxed value. */
static void push_field(lua_State *L, struct lvalue *lv,
                       const struct glue_ctor *c, unsigned int i) {
    const struct glue_ty *ty = glue_ty_subst(c->fields[i].type, lv->ty->args);

    push_value(L, lv->ti, Field(word_of(lv), i), ty);
}

static int value_gc(lua_State *L) {
    struct lvalue *lv = luaL_checkudata(L, 1, VALUE_MT);

    if (lv->slot >= 0) {
        glue_unroot(lv->ti, lv->slot);
        lv->slot = -1;
        lv->v = 0;                      /* marks it collected */
    }
    return 0;
}

static int box_gc(lua_State *L) {
    char **box = luaL_checkudata(L, 1, BOX_MT);

    free(*box);
    *box = NULL;
    return 0;
}

/* Pushes a box that frees its malloc'd text when collected, so that a
 * raise between malloc and free leaks nothing (liolib's newprefile). */
static char **newbox(lua_State *L) {
    char **box = lua_newuserdatauv(L, sizeof *box, 0);

    *box = NULL;
    luaL_setmetatable(L, BOX_MT);
    return box;
}

/* Replaces the box on top with the text of v (printed into it). */
static void push_printed(lua_State *L, char **box, value v,
                         const struct glue_ty *ty) {
    size_t len;

    if ((*box = glue_aprint(v, ty, &len)) == NULL)
        luaL_error(L, "not enough memory");
    lua_pushlstring(L, *box, len);
    free(*box);
    *box = NULL;
    lua_remove(L, -2);                  /* the box */
}

static int value_tostring(lua_State *L) {
    struct lvalue *lv = checkvalue(L, 1);
    char **box = newbox(L);

    push_printed(L, box, word_of(lv), lv->ty);
    return 1;
}

static int value_eq(lua_State *L) {
    struct lvalue *a = checkvalue(L, 1), *b = checkvalue(L, 2);
    int eq;

    if (a->ty->kind == GLUE_APP && b->ty->kind == GLUE_APP &&
        a->ty->type != b->ty->type) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if ((eq = glue_equal(a->ti, word_of(a), word_of(b))) < 0)
        return luaL_error(L, "not enough memory");
    lua_pushboolean(L, eq);
    return 1;
}

/* v.name: the field called name, or nil. */
static int value_index(lua_State *L) {
    struct lvalue *lv = checkvalue(L, 1);
    const char *key = lua_tostring(L, 2);
    const struct glue_ctor *c;

    if (key == NULL || lv->ty->kind != GLUE_APP)
        return 0;
    c = ctor_of(L, lv);
    for (unsigned int i = 0; i < c->arity; i++)
        if (strcmp(c->fields[i].name, key) == 0) {
            push_field(L, lv, c, i);
            return 1;
        }
    return 0;
}

/* --- Module functions --------------------------------------------------- */

static int lglue_args(lua_State *L) {
    struct lvalue *lv = checkvalue(L, 1);
    const struct glue_ctor *c = ctor_of(L, lv);

    lua_createtable(L, (int)c->arity, 0);
    for (unsigned int i = 0; i < c->arity; i++) {
        push_field(L, lv, c, i);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int lglue_ctor(lua_State *L) {
    lua_pushstring(L, ctor_of(L, checkvalue(L, 1))->name);
    return 1;
}

static int lglue_collectheap(lua_State *L) {
    struct thread_info *ti = tinfo(L);

    lua_gc(L, LUA_GCCOLLECT);
    if (glue_collect(ti, 0, 1) < 0)
        return luaL_error(L, "glue heap exhausted");
    return 0;
}

/* glue.heap_max([words]) -> the cap in words before the call. A cap below
 * the initial heap could never hold (the heap does not shrink under it),
 * so it raises, as 0 does (which the C API reads as "unchanged"). */
static int lglue_heap_max(lua_State *L) {
    lua_Integer words = 0;

    if (!lua_isnoneornil(L, 1)) {
        words = luaL_checkinteger(L, 1);
        if (words < (lua_Integer)GLUE_HEAP_MIN)
            return luaL_argerror(L, 1, lua_pushfstring(L, "a cap of at least "
                "%d words expected (the initial heap), got %I",
                (int)GLUE_HEAP_MIN, (LUAI_UACINT)words));
    }
    lua_pushinteger(L, (lua_Integer)glue_set_heap_max(tinfo(L),
                                                      (size_t)words));
    return 1;
}

static int lglue_is_value(lua_State *L) {
    lua_pushboolean(L, luaL_testudata(L, 1, VALUE_MT) != NULL);
    return 1;
}

/* A function, or anything with a __call metamethod. */
static int callable(lua_State *L, int idx) {
    if (lua_isfunction(L, idx))
        return 1;
    if (luaL_getmetafield(L, idx, "__call") == LUA_TNIL)
        return 0;
    lua_pop(L, 1);
    return 1;
}

/* glue.match(v, {C = function(fields...) ... end, _ = default}) */
static int lglue_match(lua_State *L) {
    struct lvalue *lv = checkvalue(L, 1);
    const struct glue_ctor *c = ctor_of(L, lv);

    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_getfield(L, 2, c->name) == LUA_TNIL) {
        lua_pop(L, 1);
        if (lua_getfield(L, 2, "_") == LUA_TNIL)
            return luaL_error(L, "glue.match: no case for %s", c->name);
        if (!callable(L, -1))
            return luaL_error(L, "glue.match: the case _ is a %s, not a "
                              "function", luaL_typename(L, -1));
        lua_pushvalue(L, 1);
        lua_call(L, 1, LUA_MULTRET);
        return lua_gettop(L) - 2;
    }
    if (!callable(L, -1))
        return luaL_error(L, "glue.match: the case for %s is a %s, not a "
                          "function", c->name, luaL_typename(L, -1));
    luaL_checkstack(L, (int)c->arity, NULL);
    for (unsigned int i = 0; i < c->arity; i++)
        push_field(L, lv, c, i);
    lua_call(L, (int)c->arity, LUA_MULTRET);
    return lua_gettop(L) - 2;
}

/* glue.show(x): x as glue prints it (a value, an integer or a string). */
static int lglue_show(lua_State *L) {
    struct thread_info *ti = tinfo(L);
    const struct glue_ty *ty = type_of(L, 1);
    char **box;

    if (ty == NULL || ty->kind == GLUE_FN)
        return luaL_typeerror(L, 1, "glue value, integer or string");
    if (ty->kind == GLUE_APP || ty->kind == GLUE_ANY)
        return value_tostring(L);
    if (ty->kind == GLUE_INT) {
        lua_pushfstring(L, "%I", (LUAI_UACINT)lua_tointegerx(L, 1, NULL));
        return 1;
    }
    box = newbox(L);
    if (reserve(L, ti, words_of(L, 1)) < 0)
        return luaL_error(L, "glue heap exhausted");
    push_printed(L, box, to_word(L, ti, 1, LUA_NOREF), ty);
    return 1;
}

static int lglue_stats(lua_State *L) {
    struct thread_info *ti = tinfo(L);

    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)glue_heap_words(ti));
    lua_setfield(L, -2, "heap_words");
    lua_pushinteger(L, (lua_Integer)glue_heap_live(ti));
    lua_setfield(L, -2, "heap_used");
    lua_pushinteger(L, (lua_Integer)ti->nalloc);
    lua_setfield(L, -2, "allocated");
    return 1;
}

static int lglue_tag(lua_State *L) {
    struct lvalue *lv = checkvalue(L, 1);
    const struct glue_ctor *c = ctor_of(L, lv);

    lua_pushinteger(L, c - lv->ty->type->ctors);
    return 1;
}

static int lglue_type(lua_State *L) {
    lua_pushstring(L, headtype(L, checkvalue(L, 1))->name);
    return 1;
}

static int lglue_typeof(lua_State *L) {
    struct lvalue *lv = checkvalue(L, 1);
    char buf[512];

    glue_ty_format(buf, sizeof buf, lv->ty);
    lua_pushstring(L, buf);
    return 1;
}

/* The type argument at idx: nil (any), "list int" or a type table. */
static const struct glue_ty *opt_type(lua_State *L, int idx) {
    struct thread_info *ti = tinfo(L);
    const struct glue_ty *args[MAX_PARAMS];
    const struct glue_type *t;
    char err[GLUE_ERR_LEN];

    if (lua_isnoneornil(L, idx))
        return &glue_ty_any;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const struct glue_ty *ty = glue_ty_parse(ti, lua_tostring(L, idx),
                                                 err, sizeof err);
        if (ty == NULL)
            luaL_argerror(L, idx, err);
        return ty;
    }
    if (!luaL_getmetafield(L, idx, "__gluetype"))
        luaL_typeerror(L, idx, "type name or glue type table");
    t = lua_touserdata(L, -1);
    lua_pop(L, 1);
    for (int i = 0; i < t->nparams; i++)
        args[i] = &glue_ty_any;
    return glue_ty_app(t, t->nparams, args);
}

/* glue.read(text [, type]) -> value | nil, "column N: ..." */
static int lglue_read(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const struct glue_ty *ty = opt_type(L, 2), *got;
    struct thread_info *ti = tinfo(L);
    char err[GLUE_ERR_LEN];
    value v;

    if (reserve(L, ti, glue_read_bound(text, len)) < 0)
        return luaL_error(L, "glue heap exhausted");
    if (glue_read(ti, text, len, ty, &v, &got, err, sizeof err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    push_value(L, ti, v, got);
    return 1;
}

static void add_types(lua_State *L, int mod, int from);

/* glue.declare(text [, chunkname]) -> true | nil, "chunk:line:col: ..." */
static int lglue_declare(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    const char *chunk = luaL_optstring(L, 2, "declare");
    struct thread_info *ti = tinfo(L);
    int from = glue_ntypes(ti);
    char err[GLUE_ERR_LEN];

    if (glue_declare(ti, text, len, chunk, err, sizeof err) < 0) {
        luaL_pushfail(L);
        lua_pushstring(L, err);
        return 2;
    }
    add_types(L, lua_upvalueindex(1), from);
    lua_pushboolean(L, 1);
    return 1;
}

/* --- Module -------------------------------------------------------------- */

static int is_keyword(const char *s) {
    for (int i = 0; lua_keywords[i]; i++)
        if (strcmp(lua_keywords[i], s) == 0)
            return 1;
    return 0;
}

/* Pushes the table of t's constructors: functions, or values for those
 * without arguments; a reserved word also as name_. */
static void push_type_table(lua_State *L, struct thread_info *ti,
                            const struct glue_type *t) {
    const struct glue_ty *args[MAX_PARAMS];

    for (int i = 0; i < t->nparams; i++)
        args[i] = &glue_ty_any;
    lua_createtable(L, 0, (int)t->nctors);
    for (unsigned int i = 0; i < t->nctors; i++) {
        const struct glue_ctor *c = &t->ctors[i];
        if (c->arity == 0) {
            push_udata(L, ti, Val_long(c->ordinal),
                       glue_ty_app(t, t->nparams, args));
        } else {
            lua_pushlightuserdata(L, (void *)t);
            lua_pushinteger(L, i);
            lua_pushcclosure(L, lglue_construct, 2);
        }
        if (is_keyword(c->name)) {
            char alias[64];
            snprintf(alias, sizeof alias, "%s_", c->name);
            lua_pushvalue(L, -1);
            lua_setfield(L, -3, alias);         /* tbl[name_] = ctor */
        }
        lua_setfield(L, -2, c->name);
    }
    lua_createtable(L, 0, 2);           /* metatable: which type */
    lua_pushlightuserdata(L, (void *)t);
    lua_setfield(L, -2, "__gluetype");
    lua_pushstring(L, t->name);
    lua_setfield(L, -2, "__name");
    lua_setmetatable(L, -2);
}

/* Adds the registry's types from index `from` to the module at mod (as
 * mod[name] unless a function has that name) and to mod.types. */
static void add_types(lua_State *L, int mod, int from) {
    struct thread_info *ti = tinfo(L);

    mod = lua_absindex(L, mod);
    lua_getfield(L, mod, "types");
    for (int i = from; i < glue_ntypes(ti); i++) {
        const struct glue_type *t = glue_type_at(ti, i);
        push_type_table(L, ti, t);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, t->name);           /* types[name] = tbl */
        if (lua_getfield(L, mod, t->name) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_setfield(L, mod, t->name);      /* mod[name] = tbl */
        } else {
            lua_pop(L, 2);
        }
    }
    lua_pop(L, 1);
}

/* The state's thread_info, with the prelude's types on first use. */
static value to_value(lua_State *L, struct thread_info *ti, int idx);

static struct thread_info *open_tinfo(lua_State *L) {
    struct thread_info *ti = glue_tinfo_of(L);

    if (ti)
        return ti;
    ti = glue_lua_open(L, push_value, to_value);
    if (glue_prelude_register(ti) < 0)
        luaL_error(L, "not enough memory");
    return ti;
}

/* call()'s way back: the Lua value at idx as a word (raises if it has no
 * glue type). */
static value to_value(lua_State *L, struct thread_info *ti, int idx) {
    int ref = LUA_NOREF;
    value v;

    idx = lua_absindex(L, idx);
    if (type_of(L, idx) == NULL)
        luaL_error(L, "cannot make a glue value of a %s",
                   luaL_typename(L, idx));
    if (lua_type(L, idx) == LUA_TFUNCTION) {
        lua_pushvalue(L, idx);
        ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    if (reserve(L, ti, words_of(L, idx)) < 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        luaL_error(L, "glue heap exhausted");
    }
    v = to_word(L, ti, idx, ref);
    return v;
}

static const luaL_Reg value_metamethods[] = {
    {"__eq", value_eq},
    {"__gc", value_gc},
    {"__index", value_index},
    {"__tostring", value_tostring},
    {NULL, NULL}
};

static const luaL_Reg glue_funcs[] = {
    {"args", lglue_args},
    {"collect", lglue_collectheap},
    {"ctor", lglue_ctor},
    {"declare", NULL},                  /* a closure over the module */
    {"heap_max", lglue_heap_max},
    {"is_value", lglue_is_value},
    {"match", lglue_match},
    {"read", lglue_read},
    {"show", lglue_show},
    {"stats", lglue_stats},
    {"tag", lglue_tag},
    {"type", lglue_type},
    {"typeof", lglue_typeof},
    {NULL, NULL}
};

static void createmeta(lua_State *L) {
    luaL_newmetatable(L, VALUE_MT);
    luaL_setfuncs(L, value_metamethods, 0);
    lua_pop(L, 1);
    luaL_newmetatable(L, BOX_MT);       /* text being printed */
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

int luaopen_echohost_glue(lua_State *L) {
    open_tinfo(L);
    createmeta(L);
    luaL_newlib(L, glue_funcs);
    lua_newtable(L);
    lua_setfield(L, -2, "types");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, lglue_declare, 1);      /* upvalue: the module */
    lua_setfield(L, -2, "declare");
    add_types(L, -1, 0);
    return 1;
}
