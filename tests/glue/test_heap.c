/* C tests of the glue runtime (linked without Lua): the collector and its
 * roots, checked growth, deep values printed and read without recursion,
 * fn values through host hooks. */
#include <stdlib.h>

#include "tinfo.h"
#include "check.h"

/* Elements of the deep list; GLUE_TEST_DEEP overrides (valgrind). */
static long deep = 1000000;

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
    struct thread_info *ti = prelude_tinfo();
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
    struct thread_info *ti = prelude_tinfo();
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
    struct thread_info *ti = prelude_tinfo();
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

/* A host that counts what the collector releases; same: equal refs. */
static int released[8];

static void count_release(void *host, intptr_t ref) {
    (void)host;
    released[ref]++;
}

static int same_ref(void *host, intptr_t a, intptr_t b) {
    (void)host;
    return a == b;
}

static void test_fn_host(void) {
    struct thread_info *ti = prelude_tinfo();
    value f1, f2, f3;
    int s1, s3;

    ASSERT_EQ(glue_reserve(ti, 16), 0);
    f1 = glue_make_fn(ti, 1);
    f2 = glue_make_fn(ti, 2);
    f3 = glue_make_fn(ti, 1);
    ASSERT_EQ(Tag_val(f1), Fn_tag);
    ASSERT_EQ(glue_fn_ref(f2), 2);
    ASSERT_EQ(glue_equal(ti, f1, f3), 0);       /* no host: never the same */
    ti->release = count_release;
    ti->same = same_ref;
    ASSERT_EQ(glue_equal(ti, f1, f3), 1);
    ASSERT_EQ(glue_equal(ti, f1, f2), 0);
    s1 = glue_root(ti, f1);
    s3 = glue_root(ti, f3);
    ASSERT_EQ(glue_collect(ti, 0, 1), 0);       /* f2 died */
    ASSERT_EQ(released[2], 1);
    ASSERT_EQ(released[1], 0);
    ASSERT_EQ(glue_fn_ref(glue_root_get(ti, s1)), 1);
    glue_unroot(ti, s3);
    free_tinfo(ti);                             /* f1 and f3 released */
    ASSERT_EQ(released[1], 2);
    ASSERT_EQ(released[2], 1);
}

int main(void) {
    if (getenv("GLUE_TEST_DEEP"))
        deep = atol(getenv("GLUE_TEST_DEEP"));
    test_roots();
    test_limit();
    test_deep();
    test_fn_host();
    glue_ty_free_all();
    return check_done();
}
