/*
 * observe.c - what the sessions and the server tell the metrics
 * (metrics.h): the counters a completed operation adds, and the view of
 * the registry and the connections read when rendering. Loop thread only.
 */
#include "metrics.h"
#include "server.h"
#include "session_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double unix_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double since(const struct op *op)
{
    return op->t0 != 0 ? (double)(uv_hrtime() - op->t0) / 1e9 : -1;
}

void metrics_op_done(struct metrics *m, struct op *op)
{
    struct session *s = op->s;

    if (m == NULL)
        return;
    switch (op->phase) {
    case PH_TENSORS:
        if (op->kind == OP_INIT) {
            metrics_register(m, false);
            if (s->reg->live_dir[0] != '\0')
                metrics_file(m, METRICS_FILE_JOURNAL, op_init(op)->rc == 0, -1);
            return;
        }
        if (op_event(op)->action == EMA_ACTION_START)
            return;
        metrics_update(m, s->params_bytes, since(op));
        s->last_update_at = unix_now();
        s->last_update_batch = op_event(op)->clock.batch;
        return;
    case PH_CAST:
    case PH_RESTORE:
        metrics_swap(m, op->phase == PH_CAST, s->params_bytes);
        return;
    case PH_FILE:
        metrics_file(m, op->kind == OP_SAVE ? METRICS_FILE_SAVE : METRICS_FILE_LOAD,
                     op_file(op)->rc == 0, since(op));
        return;
    case PH_JOURNAL:
        metrics_file(m, METRICS_FILE_JOURNAL, op_file(op)->rc == 0, -1);
        return;
    case PH_STASH:
    case PH_SNAPCOPY:
    case PH_NONE:
        return;
    }
}

/* One session's gauges. */
static void session_fill(const struct session *s, struct metrics_session *o)
{
    uint64_t newest = 0;

    snprintf(o->label, sizeof(o->label), "%s", s->qualified);
    o->uid = s->uid;
    o->has_update = s->last_update_at > 0;
    o->last_update_time = s->last_update_at;
    o->last_update_batch = s->last_update_batch;
    o->has_event = s->st.has_last_time;
    o->last_batch = s->st.last_time.batch;
    for (const struct op *op = s->q_head; op != NULL; op = op->next) {
        o->queued++;
        if (op->kind == OP_EVENT && op_event((struct op *)op)->has_clock &&
            op_event((struct op *)op)->clock.batch > newest)
            newest = op_event((struct op *)op)->clock.batch;
    }
    o->lag_batches = newest > o->last_batch ? newest - o->last_batch : 0;
    o->shadow_bytes = s->shadow_bytes;
    const struct health *h = &s->health;
    o->health = h->enabled;
    o->nonfinite_total = h->nonfinite_total;
    o->nonfinite_updates = h->nonfinite_updates;
    o->noop_updates = h->own.noop_updates;
    o->last_nonfinite = h->last_count;
    o->last_noop = h->own.last_noop;
    o->has_distance = h->enabled && h->own.has_distance;
    o->distance = h->own.distance;
    o->stalled = h->stalled;
    _Static_assert(METRICS_PROFILES == PROFILE_MAX && METRICS_PROFILE_NAME == PROFILE_NAME_MAX,
                   "metrics.h's profile bounds are profile.h's");
    for (unsigned p = 0; h->enabled && p < s->nprof; p++) {
        struct metrics_profile *mp = &o->prof[o->nprof++];
        snprintf(mp->name, sizeof(mp->name), "%s", s->prof[p].name);
        mp->noop_updates = h->prof[p].noop_updates;
        mp->last_noop = h->prof[p].last_noop;
        mp->has_distance = h->prof[p].has_distance;
        mp->distance = h->prof[p].distance;
    }
}

int metrics_view_fill(struct emad *ctx, struct metrics_view *v)
{
    const struct registry *r = ctx->sessions;
    size_t i = 0;

    memset(v, 0, sizeof(*v));
    v->start_time = ctx->started_unix;
    if (ctx->srv != NULL)
        v->connections = ctx->srv->nconns - ctx->srv->nclosing;
    if (r == NULL || r->count == 0)
        return 0;
    if ((v->session_list = calloc(r->count, sizeof(*v->session_list))) == NULL)
        return -ENOMEM;
    for (const struct session *s = r->head; s != NULL && i < r->count; s = s->next) {
        struct metrics_session *o = &v->session_list[i++];
        session_fill(s, o);
        v->sessions[!s->ready          ? METRICS_SESSION_INITIALISING
                    : s->owner != NULL ? METRICS_SESSION_ATTACHED
                                       : METRICS_SESSION_DETACHED]++;
        v->queued += o->queued;
        v->shadow_bytes += o->shadow_bytes;
    }
    v->nsessions = i;
    return 0;
}

void metrics_view_free(struct metrics_view *v)
{
    free(v->session_list);
    v->session_list = NULL;
}

int metrics_render_ctx(struct emad *ctx, bool all, uid_t uid, struct metrics_text *out)
{
    struct metrics_view v;
    int rc;

    if ((rc = metrics_view_fill(ctx, &v)) < 0)
        return rc;
    static const struct metrics none;
    rc = metrics_render(ctx->metrics != NULL ? ctx->metrics : &none, &v, all, uid, out);
    metrics_view_free(&v);
    return rc;
}
