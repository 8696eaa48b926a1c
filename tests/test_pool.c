/*
 * test_pool.c - the worker pool: every chunk runs once, completions reach
 * the loop, failures propagate, jobs interleave (no head-of-line blocking),
 * a job arriving while every worker is busy starts on the spare, and the
 * workers' priority is lowered while the spare's is not. Also built with
 * ThreadSanitizer.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
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

/* Wait until every worker waits for work (white box: the spare only steps
 * in when none does, so tests about who runs a chunk start from here). */
static void wait_workers_idle(struct pool *p)
{
    for (;;) {
        pthread_mutex_lock(&p->lock);
        bool all = p->idle == p->nthreads;
        pthread_mutex_unlock(&p->lock);
        if (all)
            return;
        sched_yield();
    }
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

/* ---- the spare: a new job does not wait for other jobs' chunks ---- */

/* Chunks of the "busy" job hold both workers until the gate opens; chunk 0
 * of the "fresh" job opens it. Only a thread other than the two workers can
 * run that chunk. The wait has a safety valve so that a regression fails the
 * test instead of hanging it; the valve is far beyond any scheduling delay
 * and is not a speed assertion. */
struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
    bool valve_used;
    int inside;                 /* busy chunks waiting at the gate */
    pid_t tid[8];               /* who ran each chunk of the fresh job */
    struct pool_job busy, fresh;
};

static int busy_chunk(void *arg, size_t index)
{
    struct gate *g = arg;
    struct timespec deadline;
    (void)index;

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    pthread_mutex_lock(&g->lock);
    g->inside++;
    pthread_cond_broadcast(&g->cond);
    while (!g->open)
        if (pthread_cond_timedwait(&g->cond, &g->lock, &deadline) == ETIMEDOUT) {
            g->valve_used = true;
            g->open = true;
        }
    pthread_mutex_unlock(&g->lock);
    return 0;
}

static int fresh_chunk(void *arg, size_t index)
{
    struct gate *g = arg;

    pthread_mutex_lock(&g->lock);
    g->tid[index] = gettid();
    if (index == 0) {
        g->open = true;
        pthread_cond_broadcast(&g->cond);
    }
    pthread_mutex_unlock(&g->lock);
    return 0;
}

static void gate_done(struct pool_job *job)
{
    (void)job;
}

static void test_pool_new_job_starts_on_the_spare_while_every_worker_is_busy(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct gate g;
    (void)state;

    memset(&g, 0, sizeof(g));
    pthread_mutex_init(&g.lock, NULL);
    pthread_cond_init(&g.cond, NULL);
    g.busy = (struct pool_job){.run = busy_chunk, .done = gate_done, .arg = &g, .nchunks = 2};
    g.fresh = (struct pool_job){.run = fresh_chunk, .done = gate_done, .arg = &g, .nchunks = 4};

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);
    wait_workers_idle(&p);
    pool_submit(&p, &g.busy);
    pthread_mutex_lock(&g.lock);
    while (g.inside < 2)
        pthread_cond_wait(&g.cond, &g.lock);
    pthread_mutex_unlock(&g.lock);
    /* Both workers are inside a busy chunk: the fresh job's first chunk can
     * only run on the spare. */
    pool_submit(&p, &g.fresh);
    run_until_idle(&loop, &p);

    assert_false(g.valve_used);
    assert_int_equal(g.fresh.status, 0);
    assert_int_equal(g.tid[0], p.tids[p.nthreads]); /* the spare */
    for (int i = 1; i < 4; i++) /* the rest: the workers, in turn */
        assert_true(g.tid[i] == p.tids[0] || g.tid[i] == p.tids[1]);
    assert_int_equal(p.spare_chunks, 1);
    assert_int_equal(pool_progress(&p), 2 + 4);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    pthread_cond_destroy(&g.cond);
    pthread_mutex_destroy(&g.lock);
}

/* A job submitted while a worker is idle is the workers' alone. */
static void test_pool_spare_stays_idle_while_a_worker_is_free(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct counting_job j;
    int order = 0;
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);
    for (int round = 0; round < 50; round++) {
        job_init(&j, 1, &order);
        wait_workers_idle(&p);
        pool_submit(&p, &j.job);
        run_until_idle(&loop, &p);
        assert_int_equal(atomic_load(&j.hits[0]), 1);
        free(j.hits);
    }
    assert_int_equal(p.spare_chunks, 0);
    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- priorities ---- */

/* Each chunk records the nice value of the thread running it, as that
 * thread sees it. */
struct nice_probe {
    struct pool_job job;
    atomic_int nice[64];
    atomic_int tid[64];
};

static int probe_chunk(void *arg, size_t index)
{
    struct nice_probe *np = arg;

    errno = 0;
    atomic_store(&np->nice[index], getpriority(PRIO_PROCESS, 0));
    atomic_store(&np->tid[index], gettid());
    return 0;
}

static void probe_run(uv_loop_t *loop, struct pool *p, struct nice_probe *np)
{
    memset(np, 0, sizeof(*np));
    np->job = (struct pool_job){.run = probe_chunk, .done = gate_done, .arg = np, .nchunks = 64};
    pool_submit(p, &np->job);
    run_until_idle(loop, p);
}

static void assert_workers_at(const struct pool *p, const struct nice_probe *np, int want)
{
    int on_workers = 0;

    for (int i = 0; i < 64; i++) {
        pid_t tid = atomic_load(&np->tid[i]);
        bool is_worker = false;
        for (unsigned w = 0; w < p->nthreads; w++)
            is_worker = is_worker || tid == p->tids[w];
        on_workers += is_worker;
        if (is_worker && atomic_load(&np->nice[i]) != want)
            fail_msg("chunk %d ran on worker %d at nice %d, not %d", i, (int)tid,
                     atomic_load(&np->nice[i]), want);
    }
    assert_true(on_workers > 0); /* else nothing above was checked */
}

static void test_pool_set_priority_lowers_the_workers_only(void **state)
{
    uv_loop_t loop;
    struct pool p;
    struct nice_probe np;
    int base = getpriority(PRIO_PROCESS, 0);
    (void)state;

    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);

    /* 0: the workers keep the caller's priority. */
    assert_int_equal(pool_set_priority(&p, 0), 0);
    probe_run(&loop, &p, &np);
    assert_workers_at(&p, &np, base);

    assert_int_equal(pool_set_priority(&p, 3), 0);
    probe_run(&loop, &p, &np);
    assert_workers_at(&p, &np, base + 3 > 19 ? 19 : base + 3);
    /* The caller and the spare are untouched. */
    assert_int_equal(getpriority(PRIO_PROCESS, 0), base);
    assert_int_equal(getpriority(PRIO_PROCESS, (id_t)p.tids[p.nthreads]), base);

    /* Offsets past the lowest priority stop at 19. */
    assert_int_equal(pool_set_priority(&p, 40), 0);
    probe_run(&loop, &p, &np);
    assert_workers_at(&p, &np, 19);

    pool_destroy(&p);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* The blocked-signal mask of thread tid, from /proc. */
static unsigned long long blocked_of(pid_t tid)
{
    char path[64], line[256];
    unsigned long long mask = 0;
    bool found = false;

    snprintf(path, sizeof(path), "/proc/self/task/%ld/status", (long)tid);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (fgets(line, sizeof(line), fp) != NULL)
        if (sscanf(line, "SigBlk: %llx", &mask) == 1)
            found = true;
    fclose(fp);
    assert_true(found);
    return mask;
}

#define SIGBIT(sig) (1ULL << ((sig) - 1))

/* Signals go to the loop thread: every pool thread (the spare too) blocks
 * SIGTERM, SIGINT and SIGHUP, and none blocks the SIGBUS of a shrunk
 * segment; the caller's own mask is as it was. */
static void test_pool_threads_leave_signals_to_the_loop_thread(void **state)
{
    uv_loop_t loop;
    struct pool p;
    sigset_t before, after;
    (void)state;

    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, &before), 0);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(pool_init(&p, &loop, 2), 0);
    assert_int_equal(pthread_sigmask(SIG_SETMASK, NULL, &after), 0);
    assert_int_equal(sigismember(&after, SIGTERM), sigismember(&before, SIGTERM));
    assert_int_equal(sigismember(&after, SIGHUP), sigismember(&before, SIGHUP));
    for (unsigned i = 0; i <= p.nthreads; i++) {
        unsigned long long m = blocked_of(p.tids[i]);
        assert_true(m & SIGBIT(SIGTERM));
        assert_true(m & SIGBIT(SIGINT));
        assert_true(m & SIGBIT(SIGHUP));
        assert_false(m & SIGBIT(SIGBUS));
        assert_false(m & SIGBIT(SIGSEGV));
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
        cmocka_unit_test(test_pool_new_job_starts_on_the_spare_while_every_worker_is_busy),
        cmocka_unit_test(test_pool_spare_stays_idle_while_a_worker_is_free),
        cmocka_unit_test(test_pool_set_priority_lowers_the_workers_only),
        cmocka_unit_test(test_pool_threads_leave_signals_to_the_loop_thread),
        cmocka_unit_test(test_pool_rejects_zero_threads),
    };
    return cmocka_run_group_tests_name("pool", tests, NULL, NULL);
}
