/*
 * pool.h - emad's worker threads. A job is a number of independent chunks;
 * every worker takes chunks from every running job in turn (round robin),
 * so one big job uses all cores and a small job never waits for a big one
 * to finish. A job that arrives while every worker is busy has its first
 * chunk started at once by a spare thread, so it does not wait for a chunk
 * of another job either. Completion is posted back to the libuv loop
 * through an eventfd the loop polls, where the job's done callback runs.
 */
#ifndef EMAD_POOL_H
#define EMAD_POOL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>

struct pool_job;

/* Runs on a worker: process chunk index of the job. 0 or a negative errno;
 * the first failure becomes the job's status, the other chunks still run. */
typedef int (*pool_chunk_fn)(void *arg, size_t index);
/* Runs on the loop thread once every chunk has run. */
typedef void (*pool_done_fn)(struct pool_job *job);

struct pool_job {
    pool_chunk_fn run;
    pool_done_fn done;
    void *arg;
    size_t nchunks;       /* 0 is allowed: done runs on the next loop turn */
    int status;           /* set before done: 0 or the first chunk failure */
    /* internal, owned by the pool while the job runs */
    size_t next_chunk;    /* next chunk to hand out */
    size_t finished;      /* chunks done */
    struct pool_job *link;
};

struct pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;                    /* workers wait here for chunks */
    pthread_cond_t started;                 /* pool_init waits here for every tid */
    pthread_cond_t spare_wake;              /* the spare waits here for a fresh job */
    struct pool_job *run_head, *run_tail;   /* jobs with chunks left to hand out */
    struct pool_job *done_head, *done_tail; /* finished, waiting for the loop */
    bool signalled;                         /* the eventfd holds a wake-up for done_head */
    int efd;                                /* eventfd: workers -> loop */
    uv_poll_t poll;                         /* the loop's watch on efd */
    pthread_t *threads;                     /* the workers, then the spare */
    pid_t *tids;                            /* kernel thread ids, same order */
    unsigned nthreads;                      /* workers (the spare not counted) */
    unsigned nstarted;                      /* threads created, the spare included */
    unsigned nworkers_up;                   /* workers that have published their tid */
    bool spare_up;                          /* the spare has published its tid */
    unsigned idle;                          /* workers waiting on wake */
    uint64_t spare_chunks;                  /* chunks the spare ran (tests, stats) */
    bool stop;
    uint64_t chunks_done;                   /* progress, for the watchdog */
    unsigned stall_ms;                      /* test hook: a chunk sleeps this long ... */
    unsigned stall_skip;                    /* ... once this many chunks have run */
    unsigned in_flight;                     /* submitted, done not yet called (loop thread) */
};

/* Start nthreads workers and the spare, posting completions to loop.
 * 0 or -errno. */
int pool_init(struct pool *p, uv_loop_t *loop, unsigned nthreads);
/* Run the workers below the calling thread's priority: nice_offset nice
 * levels lower (capped at 19) and, where the kernel takes a time slice hint
 * (EEVDF, Linux 6.12 and later), with the longest slice, so that a thread
 * that wakes up (the event loop, a trainer) preempts a busy worker at once
 * instead of waiting for the scheduler's next tick. The spare keeps the
 * caller's priority. 0 does nothing. 0 or the first -errno. */
int pool_set_priority(struct pool *p, int nice_offset);
/* Queue a job (loop thread only). The job must stay alive until done. */
void pool_submit(struct pool *p, struct pool_job *job);
/* Run every chunk of job on the calling thread (the loop's), then queue it as done: its done
 * callback runs on a later loop turn, as after pool_submit. For jobs smaller than the cost of a
 * worker's wake-up and of the loop's wake-up by that worker. */
void pool_run_here(struct pool *p, struct pool_job *job);
/* Whether the test hook (pool_stall_next) is armed: a stalled chunk must run on a worker, or
 * it would stall the loop. */
bool pool_stall_armed(struct pool *p);
/* Jobs submitted whose done callback has not run yet. */
unsigned pool_in_flight(const struct pool *p);
/* Chunks completed since start (any thread). */
uint64_t pool_progress(struct pool *p);
/* Whether the pool has made progress since the last call, or has nothing to
 * do: what the watchdog pings on (loop thread). */
bool pool_alive(struct pool *p, uint64_t *last_progress);
/* Test hook (EMAD_TEST_STALL_MS, EMAD_TEST_STALL_AFTER): after skip more
 * chunks, make the next one sleep ms. */
void pool_stall_next(struct pool *p, unsigned ms, unsigned skip);
/* Stop and join the workers once their queue is empty, then close the poll
 * handle. Call with no job in flight. */
void pool_destroy(struct pool *p);

#endif
