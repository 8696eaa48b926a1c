/*
 * test_session.c - the pure parts of sessions: the chunk plan that splits
 * tensors over the workers. (The names' rules are proto/names.c's, proved
 * in test_names.c.)
 */
#include "session_impl.h"

#include <errno.h>
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

/* A state file loads into a session only if its tensors, its shadow's size and its number of
 * profiles are the session's: a file whose config names more profiles than the shadows the
 * session's object holds, its shadow size rewritten to match, would otherwise make the next
 * update write past the mapping. */
static void test_saved_state_must_hold_the_sessions_profiles(void **state)
{
    struct session *s = calloc(1, sizeof(*s));
    struct tensor t = {.name = "w", .dtype = DTYPE_F32, .shadow_dtype = DTYPE_F32, .numel = 16};
    struct msg_saved_tensor mt = {{"w", 1}, {"f32", 3}, 16, false, 0};
    struct msg_profile prof[8];
    struct msg_saved_state m;
    char err[256];
    (void)state;

    assert_non_null(s);
    s->tensors = &t;
    s->ntensors = 1;
    s->shadow_bytes = 3 * 4096;
    s->nprof = 3;
    memset(&m, 0, sizeof(m));
    memset(prof, 0, sizeof(prof));
    m.tensors = &mt;
    m.ntensors = 1;
    m.shadow_bytes = s->shadow_bytes;
    m.config.has_profiles = true;
    m.config.profiles = prof;
    m.config.nprofiles = 3;
    assert_int_equal(session_check_saved(s, &m, err, sizeof(err)), 0);
    m.config.nprofiles = 8;
    assert_int_equal(session_check_saved(s, &m, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "the file holds 8 EMA profiles, the session 3"));
    /* Without profiles, a file is one shadow: it loads into a session of one profile only. */
    m.config.has_profiles = false;
    m.config.nprofiles = 0;
    assert_int_equal(session_check_saved(s, &m, err, sizeof(err)), -EINVAL);
    s->nprof = 0;
    assert_int_equal(session_check_saved(s, &m, err, sizeof(err)), 0);
    /* And the other checks still hold: the shadow's size, the tensors. */
    m.shadow_bytes = 4096;
    assert_int_equal(session_check_saved(s, &m, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "the file's shadow is 4096 bytes"));
    m.shadow_bytes = s->shadow_bytes;
    mt.numel = 15;
    assert_int_equal(session_check_saved(s, &m, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "tensor 0 differs"));
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_covers_every_element_once),
        cmocka_unit_test(test_plan_splits_a_large_tensor_over_many_chunks),
        cmocka_unit_test(test_plan_spreads_many_tiny_tensors),
        cmocka_unit_test(test_saved_state_must_hold_the_sessions_profiles),
    };
    return cmocka_run_group_tests_name("session", tests, NULL, NULL);
}
