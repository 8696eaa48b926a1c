/*
 * test_pool.c - the worker pool: every chunk runs once, completions reach
 * the loop (coalesced, each once), failures propagate, and jobs interleave
 * (no head-of-line blocking). Also built with ThreadSanitizer.
 */
#include "pool.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

struct counting_job {
    struct pool_job job;
    atomic_int *hits;     /* per chunk */
    int fail_at;          /* chunk that fails, -1 none */
    int sleep_us;
    int done_calls;
    int done_order;       /* position among completions */
    int *order_counter;
};

static int run_chunk(void *arg, size_t index)
{
    struct counting_job *j = arg;
    if (j->sleep_us > 0) {
        struct timespec ts = {0, (long)j->sleep_us * 1000L};
        nanosleep(&ts, NULL);
    }
    atomic_fetch_add(&j->hits[index], 1);
    return (int)index == j->fail_at ? -EIO : 0;
}

static void on_done(struct pool_job *job)
{
    struct counting_job *j = job->arg;
    j->done_calls++;
    j->done_order = (*j->order_counter)++;
}

static void job_init(struct counting_job *j, size_t nchunks, int *order)
{
    memset(j, 0, sizeof(*j));
    j->hits = calloc(nchunks ? nchunks : 1, sizeof(*j->hits));
    assert_non_null(j->hits);
    j->fail_at = -1;
    j->order_counter = order;
    j->job.run = run_chunk;
    j->job.done = on_done;
    j->job.arg = j;
    j->job.nchunks = nchunks;
}

static void run_until_idle(uv_loop_t *loop, struct pool *p)
{
    while (pool_in_flight(p) > 0)
        uv_run(loop, UV_RUN_ONCE);
}

static void test_pool_runs_every_chunk_exactly_once(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct counting_job jobs[5];
    int order = 0;
    const size_t sizes[5] = {1, 7, 1000, 3, 64};
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 4), 0);
    for (int i = 0; i < 5; i++) {
        job_init(&jobs[i], sizes[i], &order);
        pool_submit(&p, &jobs[i].job);
    }
    assert_int_equal(pool_in_flight(&p), 5);
    run_until_idle(&loop, &p);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(jobs[i].done_calls, 1);
        assert_int_equal(jobs[i].job.status, 0);
        for (size_t c = 0; c < sizes[i]; c++)
            assert_int_equal(atomic_load(&jobs[i].hits[c]), 1);
        free(jobs[i].hits);
    }
    assert_int_equal(pool_progress(&p), 1 + 7 + 1000 + 3 + 64);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_pool_job_without_chunks_completes(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct counting_job j;
    int order = 0;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 1), 0);
    job_init(&j, 0, &order);
    pool_submit(&p, &j.job);
    run_until_idle(&loop, &p);
    assert_int_equal(j.done_calls, 1);
    assert_int_equal(j.job.status, 0);
    free(j.hits);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_pool_failure_becomes_job_status_and_other_chunks_still_run(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct counting_job j;
    int order = 0;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);
    job_init(&j, 50, &order);
    j.fail_at = 17;
    pool_submit(&p, &j.job);
    run_until_idle(&loop, &p);
    assert_int_equal(j.job.status, -EIO);
    for (size_t c = 0; c < 50; c++)
        assert_int_equal(atomic_load(&j.hits[c]), 1);
    free(j.hits);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* A small job submitted behind a large one finishes long before it: the
 * workers take chunks from both in turn. */
static void test_pool_small_job_is_not_blocked_behind_a_large_one(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct counting_job big, small;
    int order = 0;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);
    job_init(&big, 300, &order);
    big.sleep_us = 1000;
    job_init(&small, 3, &order);
    small.sleep_us = 1000;
    pool_submit(&p, &big.job);
    pool_submit(&p, &small.job);
    run_until_idle(&loop, &p);
    assert_int_equal(small.done_order, 0);
    assert_int_equal(big.done_order, 1);
    free(big.hits);
    free(small.hits);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Resubmitting from the done callback (how a session runs its next
 * operation) works, many times over. */
struct chain {
    struct pool_job job;
    struct pool *pool;
    int left;
    atomic_int runs;
};

static int chain_chunk(void *arg, size_t index)
{
    struct chain *c = arg;
    (void)index;
    atomic_fetch_add(&c->runs, 1);
    return 0;
}

static void chain_done(struct pool_job *job)
{
    struct chain *c = job->arg;
    if (--c->left > 0)
        pool_submit(c->pool, &c->job);
}

static void test_pool_resubmit_from_done_callback(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct chain c;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 3), 0);
    memset(&c, 0, sizeof(c));
    c.pool = &p;
    c.left = 200;
    c.job.run = chain_chunk;
    c.job.done = chain_done;
    c.job.arg = &c;
    c.job.nchunks = 5;
    pool_submit(&p, &c.job);
    run_until_idle(&loop, &p);
    assert_int_equal(c.left, 0);
    assert_int_equal(atomic_load(&c.runs), 200 * 5);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Many one-chunk jobs finishing together: completions are coalesced into
 * few wake-ups of the loop, and every done callback still runs once. */
static void test_pool_every_completion_reaches_the_loop_once(void **state)
{
    enum { NJOBS = 300 };
    uv_loop_t loop;
    struct pool p;
    static struct counting_job jobs[NJOBS];
    int order = 0;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);
    for (int i = 0; i < NJOBS; i++) {
        job_init(&jobs[i], (size_t)(i % 3), &order); /* 0, 1 and 2 chunks */
        pool_submit(&p, &jobs[i].job);
    }
    run_until_idle(&loop, &p);
    assert_int_equal(order, NJOBS);
    for (int i = 0; i < NJOBS; i++) {
        assert_int_equal(jobs[i].done_calls, 1);
        free(jobs[i].hits);
    }
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_pool_rejects_zero_threads(void **state)
{
    uv_loop_t loop;
    struct pool p;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 0), -EINVAL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_runs_every_chunk_exactly_once),
        cmocka_unit_test(test_pool_job_without_chunks_completes),
        cmocka_unit_test(test_pool_failure_becomes_job_status_and_other_chunks_still_run),
        cmocka_unit_test(test_pool_small_job_is_not_blocked_behind_a_large_one),
        cmocka_unit_test(test_pool_resubmit_from_done_callback),
        cmocka_unit_test(test_pool_every_completion_reaches_the_loop_once),
        cmocka_unit_test(test_pool_rejects_zero_threads),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
