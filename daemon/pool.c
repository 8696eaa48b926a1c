/*
 * pool.c - worker threads taking chunks round robin across jobs.
 *
 * Completions reach the loop through an eventfd of our own rather than a
 * uv_async_t: libuv's uv_async_send() marks the handle busy, writes its
 * eventfd and only then marks it done, and the loop thread spins (997 tries,
 * then sched_yield, over and over) until it sees "done". The write wakes the
 * loop thread, which may preempt the very worker that has yet to mark the
 * handle done; with workers at a lower priority than the loop
 * (pool_set_priority) the loop then spins for milliseconds (measured: 10 %
 * of the loop thread's CPU time at nice 19, 25 % with SCHED_IDLE workers).
 * Here a worker writes the eventfd after it has released every lock, so the
 * loop never waits for a worker.
 */
#include "pool.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Wake the loop: one eventfd write per batch of completions (p->signalled
 * coalesces them), never under p->lock. */
static void kick_loop(struct pool *p)
{
    uint64_t one = 1;
    ssize_t n;

    /* Only EAGAIN (a counter near 2^64) could fail, and then the loop is
     * already woken. */
    do
        n = write(p->efd, &one, sizeof(one));
    while (n < 0 && errno == EINTR);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct pool *p = h->data;
    struct pool_job *list;
    uint64_t count;
    ssize_t n;
    (void)status;
    (void)events;

    /* Consume the wake-up before taking the list: a completion pushed once
     * the list is taken kicks again, and this read must not swallow that. */
    do
        n = read(p->efd, &count, sizeof(count));
    while (n < 0 && errno == EINTR);
    pthread_mutex_lock(&p->lock);
    list = p->done_head;
    p->done_head = p->done_tail = NULL;
    p->signalled = false;
    pthread_mutex_unlock(&p->lock);
    while (list != NULL) {
        struct pool_job *job = list;
        list = job->link;
        job->link = NULL;
        p->in_flight--;
        job->done(job);
    }
}

/* With p->lock held: queue a finished job; true when the loop must be kicked
 * (after unlocking). */
static bool push_done(struct pool *p, struct pool_job *job)
{
    job->link = NULL;
    if (p->done_tail)
        p->done_tail->link = job;
    else
        p->done_head = job;
    p->done_tail = job;
    if (p->signalled)
        return false;
    p->signalled = true;
    return true;
}

static void append_job(struct pool *p, struct pool_job *job)
{
    job->link = NULL;
    if (p->run_tail)
        p->run_tail->link = job;
    else
        p->run_head = job;
    p->run_tail = job;
}

/* With p->lock held (and held again on return): hand out the next chunk of
 * job, which follows prev in the run queue (NULL: job is the head), move the
 * job to the back of the queue so that jobs advance chunk by chunk in turn,
 * run the chunk unlocked, and account for it. */
static void run_chunk(struct pool *p, struct pool_job *prev, struct pool_job *job)
{
    size_t index = job->next_chunk++;

    if (prev)
        prev->link = job->link;
    else
        p->run_head = job->link;
    if (p->run_tail == job)
        p->run_tail = prev;
    job->link = NULL;
    if (job->next_chunk < job->nchunks)
        append_job(p, job);
    unsigned stall = 0;
    if (p->stall_ms > 0 && p->stall_skip-- == 0) {
        stall = p->stall_ms;
        p->stall_ms = 0;
    }
    pthread_mutex_unlock(&p->lock);

    if (stall > 0) {
        struct timespec ts = {stall / 1000, (long)(stall % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    int rc = job->run(job->arg, index);

    bool kick = false;
    pthread_mutex_lock(&p->lock);
    if (rc != 0 && job->status == 0)
        job->status = rc;
    p->chunks_done++;
    if (++job->finished == job->nchunks)
        kick = push_done(p, job);
    if (kick) {
        pthread_mutex_unlock(&p->lock);
        kick_loop(p);
        pthread_mutex_lock(&p->lock);
    }
}

static void *worker(void *arg)
{
    struct pool *p = arg;

    pthread_mutex_lock(&p->lock);
    /* pool_set_priority needs every worker's kernel id. */
    p->tids[p->nworkers_up++] = gettid();
    pthread_cond_signal(&p->started);
    for (;;) {
        while (p->run_head == NULL && !p->stop) {
            p->idle++;
            pthread_cond_wait(&p->wake, &p->lock);
            p->idle--;
        }
        if (p->run_head == NULL)
            break;
        run_chunk(p, NULL, p->run_head);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* With p->lock held: a job none of whose chunks has started, when no worker
 * is free to start it (an idle worker takes it as soon as it runs). */
static struct pool_job *fresh_job(struct pool *p, struct pool_job **prev)
{
    struct pool_job *pr = NULL;

    if (p->idle > 0)
        return NULL;
    for (struct pool_job *j = p->run_head; j != NULL; pr = j, j = j->link) {
        if (j->next_chunk == 0) {
            *prev = pr;
            return j;
        }
    }
    return NULL;
}

/* The spare: while every worker is in the middle of a chunk, a newly
 * submitted job would wait for one of those chunks to end (milliseconds for
 * a big session's chunk) before any of its own work starts. The spare starts
 * its first chunk at once, at the daemon's own priority, so a small session's
 * update is not queued behind a large session's chunks; the job's other
 * chunks go to the workers in turn. It runs at most one chunk per job. */
static void *spare(void *arg)
{
    struct pool *p = arg;
    struct pool_job *job, *prev = NULL;

    pthread_mutex_lock(&p->lock);
    p->tids[p->nthreads] = gettid();
    p->spare_up = true;
    pthread_cond_signal(&p->started);
    for (;;) {
        while ((job = fresh_job(p, &prev)) == NULL && !p->stop)
            pthread_cond_wait(&p->spare_wake, &p->lock);
        if (job == NULL)
            break;
        p->spare_chunks++;
        run_chunk(p, prev, job);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Signals a thread raises itself by what it runs: never blocked in a worker. */
static const int sync_signals[] = {SIGBUS, SIGSEGV, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT};

int pool_init(struct pool *p, uv_loop_t *loop, unsigned nthreads)
{
    int rc;

    if (nthreads == 0)
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    p->threads = calloc(nthreads + 1, sizeof(*p->threads));
    p->tids = calloc(nthreads + 1, sizeof(*p->tids));
    if (p->threads == NULL || p->tids == NULL) {
        rc = -ENOMEM;
        goto err_free;
    }
    p->nthreads = nthreads;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->started, NULL);
    pthread_cond_init(&p->spare_wake, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        rc = -errno;
        goto err_sync;
    }
    if ((rc = uv_poll_init(loop, &p->poll, p->efd)) < 0)
        goto err_efd;
    p->poll.data = p;
    if ((rc = uv_poll_start(&p->poll, UV_READABLE, on_poll)) < 0) {
        uv_close((uv_handle_t *)&p->poll, NULL);
        goto err_efd;
    }
    /* The threads start with every asynchronous signal blocked: what a
     * signal does is the loop thread's business (main.c reads SIGTERM,
     * SIGINT and SIGHUP from a signalfd), never a worker's at a lower
     * priority. The faults a chunk can raise (SIGBUS on a shrunk segment:
     * shm.c's guard) stay deliverable. */
    sigset_t all, old;
    sigfillset(&all);
    for (size_t i = 0; i < sizeof(sync_signals) / sizeof(sync_signals[0]); i++)
        sigdelset(&all, sync_signals[i]);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    for (p->nstarted = 0; p->nstarted <= nthreads; p->nstarted++) {
        rc = -pthread_create(&p->threads[p->nstarted], NULL,
                             p->nstarted < nthreads ? worker : spare, p);
        if (rc < 0) {
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            pool_destroy(p);
            return rc;
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_mutex_lock(&p->lock);
    while (p->nworkers_up + p->spare_up < p->nstarted)
        pthread_cond_wait(&p->started, &p->lock);
    pthread_mutex_unlock(&p->lock);
    return 0;

err_efd:
    close(p->efd);
err_sync:
    pthread_cond_destroy(&p->spare_wake);
    pthread_cond_destroy(&p->started);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
err_free:
    free(p->threads);
    free(p->tids);
    return rc;
}

/* sched_setattr(2) has no glibc wrapper in Debian 12; the layout is the
 * kernel's (struct sched_attr, SCHED_ATTR_SIZE_VER0). */
struct kernel_sched_attr {
    uint32_t size;
    uint32_t sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime; /* for SCHED_OTHER/BATCH: the time slice (6.12+) */
    uint64_t sched_deadline;
    uint64_t sched_period;
};

/* The longest slice the kernel accepts: with EEVDF a thread that wakes with
 * a shorter slice than the running one cancels its "run to parity"
 * protection and preempts it at once; without it, it waits for the tick
 * (4 ms at HZ=250) even when the running thread has a far lower weight. */
#define WORKER_SLICE_NS 100000000ull

static int set_thread_priority(pid_t tid, int policy, int nice)
{
    struct kernel_sched_attr a;

    if (policy == SCHED_OTHER || policy == SCHED_BATCH) {
        memset(&a, 0, sizeof(a));
        a.size = sizeof(a);
        a.sched_policy = (uint32_t)policy;
        a.sched_nice = nice;
        a.sched_runtime = WORKER_SLICE_NS;
        /* Kernels before 6.12 ignore sched_runtime for these policies. */
        if (syscall(SYS_sched_setattr, tid, &a, 0) == 0)
            return 0;
    }
    return setpriority(PRIO_PROCESS, (id_t)tid, nice) < 0 ? -errno : 0;
}

int pool_set_priority(struct pool *p, int nice_offset)
{
    int base, target, policy, rc = 0;

    if (nice_offset == 0)
        return 0;
    /* On Linux the nice value belongs to each thread: PRIO_PROCESS with a
     * tid sets that thread alone, and 0 names the caller. */
    errno = 0;
    base = getpriority(PRIO_PROCESS, 0);
    if (base == -1 && errno != 0)
        return -errno;
    target = base + nice_offset;
    if (target > 19)
        target = 19;
    if (target < -20)
        target = -20;
    policy = sched_getscheduler(0);
    for (unsigned i = 0; i < p->nworkers_up; i++) {
        int r = set_thread_priority(p->tids[i], policy, target);
        if (r < 0 && rc == 0)
            rc = r;
    }
    return rc;
}

void pool_submit(struct pool *p, struct pool_job *job)
{
    bool kick = false;

    job->next_chunk = 0;
    job->finished = 0;
    job->status = 0;
    job->link = NULL;
    p->in_flight++;
    pthread_mutex_lock(&p->lock);
    if (job->nchunks == 0) {
        kick = push_done(p, job);
    } else {
        if (p->run_tail)
            p->run_tail->link = job;
        else
            p->run_head = job;
        p->run_tail = job;
        /* Wake no more workers than the job has chunks: a one-chunk job
         * must not pull every idle worker onto the CPUs. With none idle,
         * the spare starts the job. */
        if (p->idle == 0)
            pthread_cond_signal(&p->spare_wake);
        else if (job->nchunks >= p->idle)
            pthread_cond_broadcast(&p->wake);
        else
            for (size_t i = 0; i < job->nchunks; i++)
                pthread_cond_signal(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
    if (kick)
        kick_loop(p);
}

void pool_run_here(struct pool *p, struct pool_job *job)
{
    bool kick;

    job->next_chunk = job->nchunks;
    job->finished = 0;
    job->status = 0;
    job->link = NULL;
    p->in_flight++;
    for (size_t i = 0; i < job->nchunks; i++) {
        int rc = job->run(job->arg, i);
        if (rc != 0 && job->status == 0)
            job->status = rc;
    }
    pthread_mutex_lock(&p->lock);
    p->chunks_done += job->nchunks;
    job->finished = job->nchunks;
    kick = push_done(p, job);
    pthread_mutex_unlock(&p->lock);
    /* The loop is awake: this only makes its next poll return at once. */
    if (kick)
        kick_loop(p);
}

bool pool_stall_armed(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    bool armed = p->stall_ms > 0;
    pthread_mutex_unlock(&p->lock);
    return armed;
}

unsigned pool_in_flight(const struct pool *p)
{
    return p->in_flight;
}

uint64_t pool_progress(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    uint64_t v = p->chunks_done;
    pthread_mutex_unlock(&p->lock);
    return v;
}

bool pool_alive(struct pool *p, uint64_t *last_progress)
{
    uint64_t now = pool_progress(p);
    bool alive = p->in_flight == 0 || now != *last_progress;

    *last_progress = now;
    return alive;
}

void pool_stall_next(struct pool *p, unsigned ms, unsigned skip)
{
    pthread_mutex_lock(&p->lock);
    p->stall_ms = ms;
    p->stall_skip = skip;
    pthread_mutex_unlock(&p->lock);
}

void pool_destroy(struct pool *p)
{
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_broadcast(&p->wake);
    pthread_cond_signal(&p->spare_wake);
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->nstarted; i++)
        pthread_join(p->threads[i], NULL);
    /* uv_close stops the poll and removes the fd from epoll at once, so the
     * fd may be closed before the close callback has run. */
    uv_close((uv_handle_t *)&p->poll, NULL);
    close(p->efd);
    free(p->threads);
    free(p->tids);
    p->threads = NULL;
    p->tids = NULL;
    p->nthreads = 0;
    p->nstarted = 0;
    p->nworkers_up = 0;
    p->spare_up = false;
}
