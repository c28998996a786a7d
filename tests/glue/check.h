/* Assertions for the glue C tests (libuv task.h style): a failure prints
 * both values; check_done() prints "N passed, N failed". */
#ifndef ECHOHOST_CHECK_H
#define ECHOHOST_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_passed, check_failed;

#define CHECK_FAIL(fmt, ...) do {                                           \
        check_failed++;                                                     \
        fprintf(stderr, "%s:%d: " fmt "\n", __FILE__, __LINE__,             \
                __VA_ARGS__);                                               \
    } while (0)

#define ASSERT_EQ(a, b) do {                                                \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ == b_)                                                       \
            check_passed++;                                                 \
        else                                                                \
            CHECK_FAIL("ASSERT_EQ(%s, %s): %lld != %lld", #a, #b, a_, b_);  \
    } while (0)

#define ASSERT_NE(a, b) do {                                                \
        long long a_ = (long long)(a), b_ = (long long)(b);                 \
        if (a_ != b_)                                                       \
            check_passed++;                                                 \
        else                                                                \
            CHECK_FAIL("ASSERT_NE(%s, %s): both %lld", #a, #b, a_);         \
    } while (0)

#define ASSERT_STR_EQ(a, b) do {                                            \
        const char *a_ = (a), *b_ = (b);                                    \
        if (a_ && b_ && strcmp(a_, b_) == 0)                                \
            check_passed++;                                                 \
        else                                                                \
            CHECK_FAIL("ASSERT_STR_EQ(%s, %s): \"%s\" != \"%s\"", #a, #b,   \
                       a_ ? a_ : "(null)", b_ ? b_ : "(null)");             \
    } while (0)

#define ASSERT_TRUE(x) do {                                                 \
        if (x)                                                              \
            check_passed++;                                                 \
        else                                                                \
            CHECK_FAIL("ASSERT_TRUE(%s) failed", #x);                       \
    } while (0)

static inline int check_done(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed != 0;
}

#endif
