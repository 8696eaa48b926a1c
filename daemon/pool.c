/*
 * pool.c - worker threads taking chunks round robin across jobs.
 */
#include "pool.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void on_async(uv_async_t *h)
{
    struct pool *p = h->data;
    struct pool_job *list;

    /* uv_async_send coalesces: drain everything that finished. */
    pthread_mutex_lock(&p->lock);
    list = p->done_head;
    p->done_head = p->done_tail = NULL;
    pthread_mutex_unlock(&p->lock);
    while (list != NULL) {
        struct pool_job *job = list;
        list = job->link;
        job->link = NULL;
        p->in_flight--;
        job->done(job);
    }
}

static void push_done(struct pool *p, struct pool_job *job)
{
    job->link = NULL;
    if (p->done_tail)
        p->done_tail->link = job;
    else
        p->done_head = job;
    p->done_tail = job;
}

static void *worker(void *arg)
{
    struct pool *p = arg;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (p->run_head == NULL && !p->stop)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->run_head == NULL)
            break;
        struct pool_job *job = p->run_head;
        size_t index = job->next_chunk++;
        /* Hand out one chunk, then move the job to the back of the queue:
         * jobs of different sessions advance chunk by chunk, in turn. */
        p->run_head = job->link;
        if (p->run_head == NULL)
            p->run_tail = NULL;
        job->link = NULL;
        if (job->next_chunk < job->nchunks) {
            if (p->run_tail)
                p->run_tail->link = job;
            else
                p->run_head = job;
            p->run_tail = job;
        }
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

        pthread_mutex_lock(&p->lock);
        if (rc != 0 && job->status == 0)
            job->status = rc;
        p->chunks_done++;
        if (++job->finished == job->nchunks) {
            push_done(p, job);
            uv_async_send(&p->async);
        }
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int pool_init(struct pool *p, uv_loop_t *loop, unsigned nthreads)
{
    int rc;

    if (nthreads == 0)
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    p->threads = calloc(nthreads, sizeof(*p->threads));
    if (p->threads == NULL)
        return -ENOMEM;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if ((rc = uv_async_init(loop, &p->async, on_async)) < 0)
        goto err_free;
    p->async.data = p;
    for (p->nthreads = 0; p->nthreads < nthreads; p->nthreads++) {
        rc = -pthread_create(&p->threads[p->nthreads], NULL, worker, p);
        if (rc < 0) {
            pool_destroy(p);
            return rc;
        }
    }
    return 0;

err_free:
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    return rc;
}

void pool_submit(struct pool *p, struct pool_job *job)
{
    job->next_chunk = 0;
    job->finished = 0;
    job->status = 0;
    job->link = NULL;
    p->in_flight++;
    pthread_mutex_lock(&p->lock);
    if (job->nchunks == 0) {
        push_done(p, job);
        uv_async_send(&p->async);
    } else {
        if (p->run_tail)
            p->run_tail->link = job;
        else
            p->run_head = job;
        p->run_tail = job;
        pthread_cond_broadcast(&p->wake);
    }
    pthread_mutex_unlock(&p->lock);
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
    pthread_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    uv_close((uv_handle_t *)&p->async, NULL);
    free(p->threads);
    p->threads = NULL;
    p->nthreads = 0;
}
