/*
 * test_segment.c - the checks emad makes on a trainer's tensor table before it
 * touches the segment (proto/segment.c, seg_spans_check): alignment, bounds,
 * overlap, in layout order (the fast path) and in any order (sorted first).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "segment.h"

static const char *const names[] = {"a", "b", "c", "d", "e"};

static int check(const struct seg_span *s, size_t n, uint64_t area, char *err, size_t len)
{
    err[0] = '\0';
    return seg_spans_check(s, names, n, area, err, len);
}

static void test_spans_in_order_and_shuffled_pass(void **state)
{
    char err[256];
    (void)state;

    const struct seg_span ordered[] = {{0, 64}, {64, 100}, {192, 0}, {192, 64}, {256, 8}};
    assert_int_equal(check(ordered, 5, 264, err, sizeof(err)), 0);
    const struct seg_span shuffled[] = {{256, 8}, {64, 100}, {0, 64}, {192, 64}, {192, 0}};
    assert_int_equal(check(shuffled, 5, 264, err, sizeof(err)), 0);
}

static void test_overlap_is_found_in_either_order(void **state)
{
    char err[256];
    (void)state;

    const struct seg_span ordered[] = {{0, 128}, {64, 64}};
    assert_int_equal(check(ordered, 2, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"a\" and \"b\" overlap"));
    const struct seg_span shuffled[] = {{64, 64}, {0, 128}};
    assert_int_equal(check(shuffled, 2, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"b\" and \"a\" overlap"));
}

/* An empty tensor between two overlapping ones, and a long one that covers
 * the next two: the overlap is with the furthest end so far, not just the
 * neighbour. */
static void test_overlap_is_not_hidden_by_empty_or_short_neighbours(void **state)
{
    char err[256];
    (void)state;

    const struct seg_span empty_between[] = {{0, 256}, {64, 0}, {128, 64}};
    assert_int_equal(check(empty_between, 3, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"a\" and \"c\" overlap"));
    const struct seg_span long_first[] = {{0, 1024}, {64, 8}, {512, 8}};
    assert_int_equal(check(long_first, 3, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"a\" and \"b\" overlap"));
    const struct seg_span shuffled[] = {{512, 8}, {0, 1024}, {2048, 8}};
    assert_int_equal(check(shuffled, 3, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"b\" and \"a\" overlap"));
}

static void test_alignment_and_bounds(void **state)
{
    char err[256];
    (void)state;

    const struct seg_span misaligned[] = {{0, 8}, {72, 8}};
    assert_int_equal(check(misaligned, 2, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"b\" (index 1): offset 72 is not a multiple of 64"));
    const struct seg_span past[] = {{0, 8}, {4032, 128}};
    assert_int_equal(check(past, 2, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ends past the params area (4096 bytes)"));
    const struct seg_span wraps[] = {{64, UINT64_MAX}};
    assert_int_equal(check(wraps, 1, 4096, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ends past the params area")); /* not wrapped round to fit */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spans_in_order_and_shuffled_pass),
        cmocka_unit_test(test_overlap_is_found_in_either_order),
        cmocka_unit_test(test_overlap_is_not_hidden_by_empty_or_short_neighbours),
        cmocka_unit_test(test_alignment_and_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
