/*
 * test_session.c - the pure parts of sessions: the chunk plan that splits
 * tensors over the workers. (The names' rules are proto/names.c's, proved
 * in test_names.c.)
 */
#include "session_impl.h"

#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* Every element of every tensor is covered exactly once, in order, and no
 * chunk holds more than chunk_elems elements. */
static void check_plan(const struct tensor *t, size_t n, uint64_t chunk_elems)
{
    struct plan p;
    uint64_t *next = calloc(n ? n : 1, sizeof(*next));

    assert_non_null(next);
    assert_int_equal(plan_build(&p, t, n, chunk_elems), 0);
    for (size_t c = 0; c < p.nchunks; c++) {
        uint64_t elems = 0;
        assert_true(p.first[c] < p.first[c + 1]);
        for (size_t i = p.first[c]; i < p.first[c + 1]; i++) {
            const struct piece *pc = &p.pieces[i];
            assert_true(pc->tensor < n);
            assert_int_equal(pc->start, next[pc->tensor]);
            assert_true(pc->count > 0);
            next[pc->tensor] += pc->count;
            elems += pc->count;
        }
        assert_true(elems <= chunk_elems);
    }
    assert_int_equal(p.first[p.nchunks], p.npieces);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(next[i], t[i].numel);
    plan_free(&p);
    free(next);
}

static void test_plan_covers_every_element_once(void **state)
{
    struct tensor t[6] = {
        {.numel = 10}, {.numel = 0}, {.numel = 5000}, {.numel = 1}, {.numel = 4096}, {.numel = 3},
    };
    (void)state;

    check_plan(t, 6, 1024);
    check_plan(t, 6, 64);
    check_plan(t, 6, 1u << 20);
    check_plan(t, 0, 1024);
    /* No tensors: no chunk and no piece (an update of it does nothing). */
    struct plan p;
    assert_int_equal(plan_build(&p, t, 0, 1024), 0);
    assert_int_equal(p.nchunks, 0);
    assert_int_equal(p.npieces, 0);
    plan_free(&p);
}

static void test_plan_splits_a_large_tensor_over_many_chunks(void **state)
{
    struct tensor t = {.numel = 10 * 1000 + 7};
    struct plan p;
    (void)state;

    assert_int_equal(plan_build(&p, &t, 1, 1000), 0);
    assert_int_equal(p.nchunks, 11);
    plan_free(&p);
    check_plan(&t, 1, 1000);
}

static void test_plan_spreads_many_tiny_tensors(void **state)
{
    const size_t n = 100000;
    struct tensor *t = calloc(n, sizeof(*t));
    struct plan p;
    (void)state;

    assert_non_null(t);
    for (size_t i = 0; i < n; i++)
        t[i].numel = (i % 7 == 0) ? 0 : 1 + i % 300;
    assert_int_equal(plan_build(&p, t, n, 1u << 16), 0);
    /* Far more than one chunk (all cores get work) yet far fewer than tensors. */
    assert_true(p.nchunks > 8);
    assert_true(p.nchunks < n / 10);
    plan_free(&p);
    check_plan(t, n, 1u << 16);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_covers_every_element_once),
        cmocka_unit_test(test_plan_splits_a_large_tensor_over_many_chunks),
        cmocka_unit_test(test_plan_spreads_many_tiny_tensors),
    };
    return cmocka_run_group_tests_name("session", tests, NULL, NULL);
}
