/* C tests of the glue reader, type terms and run-time declarations:
 * results, inferred types, and the exact error messages. */
#include <stdlib.h>

#include "tinfo.h"
#include "check.h"

static struct thread_info *ti;

/* Reads text (any type); returns its printed form or the error message. */
static const char *roundtrip(const char *text, const char *type) {
    static char out[512];
    char err[GLUE_ERR_LEN];
    const struct glue_ty *ty = NULL, *got;
    value v;

    if (type && (ty = glue_ty_parse(ti, type, err, sizeof err)) == NULL) {
        snprintf(out, sizeof out, "type: %s", err);
        return out;
    }
    if (glue_read(ti, text, strlen(text), ty, &v, &got, err, sizeof err) < 0) {
        snprintf(out, sizeof out, "%s", err);
        return out;
    }
    size_t n = glue_sprint(out, sizeof out, v, got);
    out[n < sizeof out ? n : sizeof out - 1] = '\0';
    strcat(out, " : ");
    glue_ty_format(out + strlen(out), sizeof out - strlen(out), got);
    return out;
}

static void test_read_ok(void) {
    ASSERT_STR_EQ(roundtrip("(cons 1 (cons 2 nil))", NULL),
                  "(cons 1 (cons 2 nil)) : list int");
    ASSERT_STR_EQ(roundtrip("  Child ", NULL), "Child : identity");
    ASSERT_STR_EQ(roundtrip("(Parent -4611686018427387904)", NULL),
                  "(Parent -4611686018427387904) : identity");
    ASSERT_STR_EQ(roundtrip("nil", NULL), "nil : list _");
    ASSERT_STR_EQ(roundtrip("nil", "list string"), "nil : list string");
    ASSERT_STR_EQ(roundtrip("(cons nil (cons (cons \"\\x41\" nil) nil))",
                            NULL),
                  "(cons nil (cons (cons \"A\" nil) nil)) : "
                  "list (list string)");
    ASSERT_STR_EQ(roundtrip("(pair (Some true)\n(Error 3))", NULL),
                  "(pair (Some true) (Error 3)) : prod (option bool) "
                  "(result _ int)");
    ASSERT_STR_EQ(roundtrip("42", NULL), "42 : int");
    ASSERT_STR_EQ(roundtrip("\"a\\tb\"", "string"), "\"a\\tb\" : string");
}

static void test_read_errors(void) {
    ASSERT_STR_EQ(roundtrip("(cons 1 (cons \"a\" nil))", NULL),
                  "column 15: expected int, got \"a\"");
    ASSERT_STR_EQ(roundtrip("(cons 1)", NULL),
                  "column 8: expected list int, got ')'");
    ASSERT_STR_EQ(roundtrip("(Parent 1 2)", NULL),
                  "column 11: expected ')' after 1 argument of Parent, got 2");
    ASSERT_STR_EQ(roundtrip("(cons 1 nil", NULL),
                  "column 12: expected ')' after 2 arguments of cons, "
                  "got end of input");
    ASSERT_STR_EQ(roundtrip("Foo", NULL), "column 1: unknown constructor Foo");
    ASSERT_STR_EQ(roundtrip("cons", NULL), "column 1: cons takes 2 arguments");
    ASSERT_STR_EQ(roundtrip("(nil)", NULL), "column 2: nil takes no arguments");
    ASSERT_STR_EQ(roundtrip("Child", "list int"),
                  "column 1: expected list int, got Child");
    ASSERT_STR_EQ(roundtrip("\"abc", NULL), "column 1: unterminated string");
    ASSERT_STR_EQ(roundtrip("\"\\q\"", NULL),
                  "column 2: bad escape in string");
    ASSERT_STR_EQ(roundtrip("4611686018427387904", NULL),
                  "column 1: integer out of range");
    ASSERT_STR_EQ(roundtrip("(Some <fun>)", NULL),
                  "column 7: cannot read a function");
    ASSERT_STR_EQ(roundtrip("nil nil", NULL),
                  "column 5: expected end of input, got nil");
    ASSERT_STR_EQ(roundtrip("", NULL),
                  "column 1: expected a value, got end of input");
    ASSERT_STR_EQ(roundtrip("(Some\n  #)", NULL),
                  "line 2, column 3: unexpected character '#'");
    ASSERT_STR_EQ(roundtrip("(Parent \"\001\xc3\")", NULL),
                  "column 9: expected int, got \"\\x01\\xc3\"");
    ASSERT_STR_EQ(roundtrip("(3)", NULL),
                  "column 2: expected a constructor, got 3");
    ASSERT_STR_EQ(roundtrip("1", "lst int"),
                  "type: column 1: unknown type lst");
    ASSERT_STR_EQ(roundtrip("1", "list int int"),
                  "type: column 1: list expects 1 argument, got 2");
}

static void test_declare(void) {
    char err[GLUE_ERR_LEN];
    const char *ok = "(* shapes *) Inductive shape (A) :=\n"
                     "| Circle (r : int) | Poly (pts : list (prod A A))\n"
                     "| Empty.";
    const struct glue_type *t;

    ASSERT_EQ(glue_declare(ti, ok, strlen(ok), "t", err, sizeof err), 0);
    ASSERT_TRUE((t = glue_find_type(ti, "shape")) != NULL);
    ASSERT_EQ(t->nctors, 3);
    ASSERT_EQ(t->ctors[2].ordinal, 0);          /* unboxed ordinal 0 */
    ASSERT_EQ(t->ctors[1].ordinal, 1);          /* boxed ordinal 1 */
    ASSERT_STR_EQ(roundtrip("(Poly (cons (pair 1 2) nil))", NULL),
                  "(Poly (cons (pair 1 2) nil)) : shape int");

    const char *dup = "Inductive x := X.\nInductive y := Y | X.";
    ASSERT_EQ(glue_declare(ti, dup, strlen(dup), "f.glue", err, sizeof err),
              -1);
    ASSERT_STR_EQ(err, "f.glue:2:20: duplicate constructor X (in x)");
    ASSERT_TRUE(glue_find_type(ti, "x") == NULL);   /* all or nothing */
    const char *bad = "Inductive z := Z (a : list).";
    ASSERT_EQ(glue_declare(ti, bad, strlen(bad), "c", err, sizeof err), -1);
    ASSERT_STR_EQ(err, "c:1:23: list expects 1 argument, got 0");
}

int main(void) {
    ti = prelude_tinfo();
    test_read_ok();
    test_read_errors();
    test_declare();
    free_tinfo(ti);
    glue_ty_free_all();
    return check_done();
}
