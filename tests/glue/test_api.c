/* C tests of the generated glue API: constructors in caller memory and on
 * the managed heap, header words, ordinals, tags, names_of_T, printers. */
#include <stdlib.h>
#include <unistd.h>

#include "tinfo.h"
#include "check.h"

static value list_v, ident_v, option_v, pair_v;

/* Runs fn with stdout sent to a temporary file; returns what it printed
 * (static buffer). */
static const char *capture(void (*fn)(void)) {
    static char out[4096];
    FILE *tmp = tmpfile();
    int saved = dup(1);
    size_t n;

    fflush(stdout);
    dup2(fileno(tmp), 1);
    fn();
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    rewind(tmp);
    n = fread(out, 1, sizeof out - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return out;
}

static void show_list(void) { print_list(list_v, print_int); }
static void show_ident(void) { print_identity(ident_v); }
static void show_option(void) { print_option(option_v, print_string); }
static void show_pair(void) { print_prod(pair_v, print_int, print_bool); }

static void test_unboxed(void) {
    ASSERT_EQ(make_list_nil(), 1);              /* (0 << 1) | 1 */
    ASSERT_EQ(make_bool_true(), 1);
    ASSERT_EQ(make_bool_false(), 3);            /* (1 << 1) | 1 */
    ASSERT_EQ(make_identity_Child(), 1);        /* unboxed ordinal 0 */
    ASSERT_EQ(get_bool_tag(make_bool_false()), bool_false_tag);
    ASSERT_EQ(get_identity_tag(make_identity_Child()), 1);
    ASSERT_EQ(get_list_tag(make_list_nil()), list_nil_tag);
}

static void test_caller_memory(void) {
    value a[3], b[3], p[2], e[2];
    value l2 = make_list_cons(Val_long(2), make_list_nil(), b);
    value l1 = make_list_cons(Val_long(1), l2, a);
    struct list_cons_args *args = (struct list_cons_args *)get_args(l1);

    ASSERT_EQ(l1, (value)(a + 1));              /* header right before */
    ASSERT_EQ(a[0], (2 << 10) | 0);             /* arity 2, ordinal 0 */
    ASSERT_EQ(Wosize_val(l1), 2);
    ASSERT_EQ(Tag_val(l1), 0);
    ASSERT_EQ(get_list_tag(l1), list_cons_tag);
    ASSERT_EQ(args->hd, Val_long(1));
    ASSERT_EQ(args->tl, l2);
    ASSERT_EQ(Long_val(Field(l2, 0)), 2);

    value parent = make_identity_Parent(Val_long(42), p);
    ASSERT_EQ(p[0], (1 << 10) | 0);
    ASSERT_EQ(get_identity_tag(parent), identity_Parent_tag);
    ASSERT_EQ(get_boxed_ordinal(parent), 0);

    value err = make_result_Error(Val_long(7), e);
    ASSERT_EQ(e[0], (1 << 10) | 1);             /* boxed ordinal 1 */
    ASSERT_EQ(get_result_tag(err), result_Error_tag);
    ASSERT_EQ(get_result_tag(make_result_Ok(Val_long(1), e)), result_Ok_tag);
}

static void test_names(void) {
    ASSERT_STR_EQ(names_of_list[0], "nil");
    ASSERT_STR_EQ(names_of_list[1], "cons");
    ASSERT_STR_EQ(names_of_bool[0], "true");
    ASSERT_STR_EQ(names_of_identity[0], "Parent");
    ASSERT_EQ(sizeof names_of_identity[0], 7);  /* longest + 1 */
    ASSERT_EQ(glue_type_list.nctors, 2);
    ASSERT_STR_EQ(glue_type_list.ctors[1].fields[1].name, "tl");
    ASSERT_EQ(glue_type_list.ctors[1].ordinal, 0);
    ASSERT_EQ(glue_type_prod.nparams, 2);
}

static void test_printers(void) {
    value a[3], b[3], p[2], o[2], q[3];
    struct thread_info *ti = prelude_tinfo();
    char buf[16];

    list_v = make_list_cons(Val_long(1), make_list_cons(Val_long(-2),
                            make_list_nil(), b), a);
    ASSERT_STR_EQ(capture(show_list), "(cons 1 (cons -2 nil))");
    ident_v = make_identity_Parent(Val_long(42), p);
    ASSERT_STR_EQ(capture(show_ident), "(Parent 42)");
    ident_v = make_identity_Child();
    ASSERT_STR_EQ(capture(show_ident), "Child");
    option_v = make_option_Some(glue_make_string(ti, "a\"\n\x01\\", 5), o);
    ASSERT_STR_EQ(capture(show_option), "(Some \"a\\\"\\n\\x01\\\\\")");
    pair_v = make_prod_pair(Val_long(3), make_bool_false(), q);
    ASSERT_STR_EQ(capture(show_pair), "(pair 3 false)");

    const struct glue_ty *li = glue_ty_app(&glue_type_list, 1,
                                           (const struct glue_ty *[]){
                                               &glue_ty_int});
    ASSERT_EQ(glue_sprint(buf, sizeof buf, list_v, li), 22);
    ASSERT_STR_EQ(buf, "(cons 1 (cons -");    /* truncated, terminated */
    ASSERT_EQ(glue_sprint(NULL, 0, list_v, li), 22);
    free_tinfo(ti);
}

static void test_heap_alloc(void) {
    struct thread_info *ti = prelude_tinfo();
    value l = make_list_nil(), v;
    size_t n = 0, room = (size_t)(ti->limit - ti->alloc);

    v = alloc_make_identity_Parent(ti, Val_long(5));
    ASSERT_EQ(Hd_val(v), (1 << 10) | 0);
    ASSERT_EQ(Field(v, 0), Val_long(5));
    room -= 2;
    while ((v = alloc_make_list_cons(ti, Val_long((long)n), l)) != 0)
        l = v, n++;
    ASSERT_EQ(n, room / 3);                     /* full: 0, no overflow */
    ASSERT_TRUE(ti->alloc <= ti->limit);
    ASSERT_EQ(alloc_make_list_cons(ti, Val_long(1), l), 0);
    ASSERT_EQ(get_list_tag(l), list_cons_tag);
    ASSERT_EQ(Long_val(Field(l, 0)), (long)n - 1);
    free_tinfo(ti);
}

static void test_strings(void) {
    struct thread_info *ti = prelude_tinfo();
    size_t len;
    const char *s;

    for (size_t n = 0; n < 20; n++) {
        char in[20];
        memset(in, 'a' + (int)n, n);
        value v = glue_make_string(ti, in, n);
        ASSERT_EQ(Tag_val(v), String_tag);
        ASSERT_EQ(Wosize_val(v), n / 8 + 1);
        s = glue_string(v, &len);
        ASSERT_EQ(len, n);
        ASSERT_TRUE(memcmp(s, in, n) == 0);
    }
    free_tinfo(ti);
}

int main(void) {
    test_unboxed();
    test_caller_memory();
    test_names();
    test_printers();
    test_heap_alloc();
    test_strings();
    glue_ty_free_all();
    return check_done();
}
