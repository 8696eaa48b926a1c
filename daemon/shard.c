/*
 * shard.c - what a session keeps of its place in a distributed job (docs/protocol.md "Shard
 * sessions"): each tensor's shape and, for a slice of a larger tensor, its global shape and
 * offsets; the job's name, this rank, the world size. None of it changes the EMA (which is
 * elementwise); it is kept with the session so that status, snapshot files, state files and a
 * restarted emad say where every element belongs.
 */
#include "session_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int session_shapes_build(struct session *s, const struct msg_register *req, char *err,
                         size_t errlen)
{
    size_t n = msg_register_count(req), dim = 0, total = 0;
    bool shaped = false, sliced = false;
    char why[256];

    /* First pass: every bound (at most MSG_DIMS_MAX dimensions each, so total cannot
     * overflow), and how much room the dimensions take. */
    for (size_t i = 0; i < n; i++) {
        struct msg_tensor t = msg_register_tensor_at(req, i, &dim);
        if (msg_tensor_check_shape(&t, i, why, sizeof(why)) < 0) {
            snprintf(err, errlen, "register: %s", why);
            return -EINVAL;
        }
        shaped |= t.has_shape;
        sliced |= t.has_global_shape;
        total += t.has_shape ? t.nshape : 1;
    }
    s->shaped = shaped;
    s->sliced = sliced;
    s->dims = malloc((total ? total : 1) * (sliced ? 3 : 1) * sizeof(*s->dims));
    if (s->dims == NULL)
        return -ENOMEM;
    /* Each tensor's shape (a flat one as [numel]), then for a sliced session its global shape
     * and offsets (a tensor that is not a slice: its shape, and zeros). */
    size_t at = 0;
    dim = 0;
    for (size_t i = 0; i < n && i < s->ntensors; i++) {
        struct msg_tensor t = msg_register_tensor_at(req, i, &dim);
        struct tensor *o = &s->tensors[i];
        size_t k = t.has_shape ? t.nshape : 1;
        o->ndim = (uint32_t)k;
        o->dims_at = at;
        for (size_t d = 0; d < k; d++) {
            uint64_t v = t.has_shape ? t.shape[d] : t.numel;
            s->dims[at + d] = v;
            if (sliced) {
                s->dims[at + k + d] = t.has_global_shape ? t.global_shape[d] : v;
                s->dims[at + 2 * k + d] = t.has_global_shape ? t.offsets[d] : 0;
            }
        }
        at += sliced ? 3 * k : k;
    }
    return 0;
}

void session_group_set(struct session *s, const struct msg_group *g)
{
    s->has_group = g != NULL;
    if (g == NULL)
        return;
    /* Checked by msg_group_check: the job fits. */
    size_t len = g->job.len < sizeof(s->group_job) ? g->job.len : sizeof(s->group_job) - 1;
    memcpy(s->group_job, g->job.ptr, len);
    s->group_job[len] = '\0';
    s->group_rank = g->rank;
    s->group_world = g->world;
    s->group_replicas = g->has_replicas ? g->replicas : 1;
}

bool session_shapes_match(const struct session *a, const struct session *b)
{
    if (!a->shaped || !b->shaped)
        return true;
    if (a->sliced != b->sliced || a->ntensors != b->ntensors)
        return false;
    for (size_t i = 0; i < a->ntensors; i++) {
        const struct tensor *x = &a->tensors[i], *y = &b->tensors[i];
        size_t cells = (size_t)x->ndim * (a->sliced ? 3 : 1);
        if (x->ndim != y->ndim ||
            memcmp(a->dims + x->dims_at, b->dims + y->dims_at, cells * sizeof(*a->dims)) != 0)
            return false;
    }
    return true;
}

const uint64_t *session_tensor_shape(const struct session *s, size_t i, size_t *ndim)
{
    *ndim = s->tensors[i].ndim;
    return s->dims + s->tensors[i].dims_at;
}

const uint64_t *session_tensor_slice(const struct session *s, size_t i, const uint64_t **offsets)
{
    const struct tensor *t = &s->tensors[i];

    if (!s->sliced)
        return NULL;
    *offsets = s->dims + t->dims_at + 2 * t->ndim;
    return s->dims + t->dims_at + t->ndim;
}

/* Every tensor's dimensions into t's shape columns (allocated here). */
static int fill_dims(const struct session *s, struct msg_table *t)
{
    size_t total = 0, at = 0;
    int rc;

    for (size_t i = 0; i < s->ntensors; i++)
        total += s->tensors[i].ndim;
    if ((rc = msg_table_init_dims(t, total, s->sliced)) < 0)
        return rc;
    for (size_t i = 0; i < s->ntensors; i++) {
        const struct tensor *x = &s->tensors[i];
        t->ndims[i] = x->ndim;
        if (x->ndim == 0) /* a scalar: no dims, and s->dims may be NULL */
            continue;
        const uint64_t *d = s->dims + x->dims_at;
        memcpy(t->shapes + at, d, x->ndim * sizeof(*d));
        if (s->sliced) {
            memcpy(t->global_shapes + at, d + x->ndim, x->ndim * sizeof(*d));
            memcpy(t->slice_offsets + at, d + 2 * x->ndim, x->ndim * sizeof(*d));
        }
        at += x->ndim;
    }
    return 0;
}

int session_table_dims(const struct session *s, struct msg_table *t)
{
    /* A session registered without shapes keeps none: a restart brings it back as it was. */
    return s->shaped ? fill_dims(s, t) : 0;
}

void session_fill_group(const struct session *s, bool *has, struct msg_group *g)
{
    *has = s->has_group;
    if (!s->has_group)
        return;
    g->job = msg_str_c(s->group_job);
    g->rank = s->group_rank;
    g->world = s->group_world;
    g->has_replicas = true;
    g->replicas = s->group_replicas;
}

int session_fill_table(const struct session *s, struct msg_session_state *o)
{
    struct msg_table *t = &o->table;
    int rc;

    if ((rc = msg_table_init(t, s->ntensors)) < 0)
        return rc;
    o->has_table = true;
    for (size_t i = 0; i < s->ntensors; i++)
        msg_table_set(t, i, s->tensors[i].name, dtype_name(s->tensors[i].dtype),
                      s->tensors[i].offset, s->tensors[i].numel);
    /* Status always shows shapes: a session registered without them has flat ones. */
    return fill_dims(s, t);
}
