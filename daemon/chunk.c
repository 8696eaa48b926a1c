/*
 * chunk.c - the data work of operations, one chunk at a time: this file
 * alone runs on the worker threads (and, for the events of sessions within
 * --inline-max, on the loop thread: op.c runs_here), and it alone reads or
 * writes tensor data (the params, the stash, the shadow). Each function takes its
 * operation and a chunk index (pool.h); results go into the operation, for
 * op.c to read on the loop thread once the job completes.
 */
#include "session_impl.h"

#include "half.h"
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* Every address in the segment comes from the geometry checked at register
 * (s->geo) and the tensor table checked against it: never from the live
 * header, which the trainer may have rewritten since. */
static void *param_ptr(const struct session *s, const struct tensor *t, uint64_t start)
{
    return (char *)s->seg.base + s->geo.params_offset + t->offset + start * dtype_size(t->dtype);
}

struct logged {
    struct op *op;
    struct redo_rec *rec;
    uint64_t from;
    bool init, update;
    struct health_part *part; /* NULL: no health this update */
    double smoothing;
};

/* The update of one piece, with the health signals into part when it is not NULL. */
static int update_piece(struct session *s, const struct tensor *t, size_t ti, void *sh,
                        const void *pa, uint64_t n, double smoothing, void *old,
                        struct health_part *part)
{
    const struct kernel_ops *k = s->reg->kops;
    struct health_part unused;

    if (part == NULL && !s->health.enabled)
        return old != NULL ? kernel_update_save(k, t->dtype, sh, pa, n, smoothing, old)
                           : kernel_update(k, t->dtype, sh, pa, n, smoothing);
    if (part == NULL) {
        /* Signals not gathered this time (a replay after a crash covers part of the update;
         * no memory for the parts): the session's policy on non-finite params still holds. */
        memset(&unused, 0, sizeof(unused));
        unused.first_nonfinite = SIZE_MAX;
        part = &unused;
    }
    uint64_t before = part->k.nonfinite;
    int rc = kernel_update_health(k, t->dtype, sh, pa, n, smoothing, old,
                                  s->health.skip_nonfinite, &part->k);
    if (part->k.nonfinite != before && ti < part->first_nonfinite)
        part->first_nonfinite = ti;
    return rc;
}

_Static_assert(HEALTH_PROFILES == PROFILE_MAX, "a health signal per profile");

/* With profiles: the piece's starts, then every due profile in one pass over the params
 * (kernel_multi.h), each updating profile's health signals into part->prof, and the one the
 * event picked also into part->k (the session's own fields). */
static int profiles_piece(struct session *s, const struct op_event *e, const struct tensor *t,
                          size_t ti, uint64_t start, uint64_t n, struct health_part *part)
{
    const struct kernel_multi_ops *mops = s->reg->mops;
    void *pa = param_ptr(s, t, start);
    void *sh[PROFILE_MAX];
    double decay[PROFILE_MAX];
    unsigned who[PROFILE_MAX];
    unsigned k = 0;
    int rc = 0;

    for (unsigned p = 0; p < s->nprof && rc == 0; p++) {
        if (e->plan.init & (1u << p))
            rc = kernel_shadow_init(s->reg->kops, t->dtype, shadow_ptr_p(s, t, start, p), pa, n);
        if (e->plan.due & (1u << p)) {
            who[k] = p;
            sh[k] = shadow_ptr_p(s, t, start, p);
            decay[k++] = e->plan.decay[p];
        }
    }
    if (rc != 0 || k == 0)
        return rc;
    if (part == NULL && !s->health.enabled)
        return kernel_multi_update(mops, t->dtype, sh, k, pa, n, decay);
    /* Without parts (no memory for them; only profiles that start at this event) the policy on
     * non-finite params still holds, for every shadow the pass writes. */
    struct kernel_health h[PROFILE_MAX];
    memset(h, 0, sizeof(h));
    rc = kernel_multi_update_health(mops, t->dtype, sh, k, pa, n, decay, NULL,
                                    s->health.skip_nonfinite, h);
    if (part == NULL)
        return rc;
    for (unsigned j = 0; j < k; j++) {
        unsigned p = who[j];
        /* A profile that started at this event had no shadow before it to compare with. */
        if (e->plan.init & (1u << p))
            continue;
        kernel_health_add(&part->prof[p], &h[j]);
        if (p != e->health_prof)
            continue;
        kernel_health_add(&part->k, &h[j]);
        if (h[j].nonfinite > 0 && ti < part->first_nonfinite)
            part->first_nonfinite = ti;
    }
    return rc;
}

static int logged_block(void *arg, uint64_t pos, const struct tensor *t, uint64_t start,
                        uint64_t n)
{
    struct logged *l = arg;
    struct session *s = l->op->s;
    const struct kernel_ops *k = s->reg->kops;
    void *sh, *pa;
    int rc = 0;

    if (pos + n <= l->from) /* written for good before a crash */
        return 0;
    sh = shadow_ptr(s, t, start);
    pa = param_ptr(s, t, start);
    if (l->init) {
        /* The start (rare): save, then write. */
        memcpy(l->rec->undo, sh, n * dtype_size(t->shadow_dtype));
        l->rec->undo_count = n;
        __atomic_store_n(&l->rec->undo_at, pos, __ATOMIC_RELEASE);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        rc = kernel_shadow_init(k, t->dtype, sh, pa, n);
        if (l->update && rc == 0)
            rc = kernel_update(k, t->dtype, sh, pa, n, l->smoothing);
    } else {
        /* The update: each old value goes to undo as the kernel reads it,
         * just before it writes the new one (one pass over the shadow). The
         * rest of undo holds UNDO_UNSET until the kernel gets there, so a
         * crash halfway leaves old values exactly where the shadow changed.
         * Stores retire in program order and a killed process's retired
         * stores all land: the release stores and the compiler barriers
         * keep that order, without a fence. */
        memset(l->rec->undo, UNDO_UNSET, n * dtype_size(t->shadow_dtype));
        l->rec->undo_count = n;
        __atomic_store_n(&l->rec->undo_at, pos, __ATOMIC_RELEASE);
        __atomic_signal_fence(__ATOMIC_SEQ_CST);
        if (l->update)
            rc = update_piece(s, t, (size_t)(t - s->tensors), sh, pa, n, l->smoothing,
                              l->rec->undo, l->part);
    }
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&l->rec->done_to, pos + n, __ATOMIC_RELEASE);
    return rc;
}

/* A block of a session of K > 1 profiles under --crash-exact: every shadow the event writes
 * (its starts and its due profiles) copied whole into undo, then marked, then written in the
 * one pass. Copying first, rather than as the kernel reads (logged_block), keeps the K-profile
 * kernel as it is; the copies come from the cache the pass then reads (the block is small). */
static int logged_profiles_block(void *arg, uint64_t pos, const struct tensor *t, uint64_t start,
                                 uint64_t n)
{
    struct logged *l = arg;
    struct session *s = l->op->s;
    const struct op_event *e = op_event(l->op);
    uint32_t mask = e->plan.init | e->plan.due;
    size_t esz = dtype_size(t->shadow_dtype);
    int rc;

    if (pos + n <= l->from) /* written for good before a crash */
        return 0;
    for (unsigned p = 0; p < s->nprof; p++)
        if (mask & (1u << p))
            memcpy(l->rec->undo + p * n * esz, shadow_ptr_p(s, t, start, p), n * esz);
    l->rec->undo_count = n;
    l->rec->undo_profiles = mask;
    __atomic_store_n(&l->rec->undo_at, pos, __ATOMIC_RELEASE);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    rc = profiles_piece(s, e, t, (size_t)(t - s->tensors), start, n, l->part);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n(&l->rec->done_to, pos + n, __ATOMIC_RELEASE);
    return rc;
}

/* Leave a guard entered on (segment, shadow): -EFAULT if either faulted,
 * and a faulted shadow marks the session broken. Else rc. */
static int guard_leave(struct session *s, struct shm_guard *g, int rc)
{
    if (shm_guard_leave(g) == 0)
        return rc;
    if (g->faulted & 2)
        __atomic_store_n(&s->shadow_broken, true, __ATOMIC_RELEASE);
    return -EFAULT;
}

int chunk_tensors(void *arg, size_t index)
{
    struct op *op = arg;
    struct session *s = op->s;
    const struct kernel_ops *k = s->reg->kops;
    /* Register's initialisation, or an event's tensor work (or cast). */
    enum ema_action action = op->kind == OP_EVENT ? op_event(op)->action : EMA_ACTION_START;
    bool init = action == EMA_ACTION_START || action == EMA_ACTION_START_UPDATE;
    bool update = action == EMA_ACTION_UPDATE || action == EMA_ACTION_START_UPDATE;
    /* Each chunk its own part: no two workers write the same one. */
    struct health_part *part = op->kind == OP_EVENT && op_event(op)->health && op->phase ==
                               PH_TENSORS ? &s->health.parts[index] : NULL;
    struct shm_guard g;
    int rc = 0;

    /* An update of a session with profiles: profile.c's plan says what each does. */
    const struct op_event *e = op->kind == OP_EVENT ? op_event(op) : NULL;
    bool profiled = e != NULL && s->nprof > 0 && op->phase == PH_TENSORS;

    shm_guard_enter2(&g, &s->seg, &s->shadow);
    if (e != NULL && e->logged && op->phase == PH_TENSORS) {
        struct logged l = {op, redo_rec(s, index), 0, init, update, part, s->cfg.smoothing};
        l.from = l.rec->done_to;
        if (profiled && s->nprof > 1) {
            rc = redo_for_each_block(s, index, logged_profiles_block, &l);
            return guard_leave(s, &g, rc);
        }
        if (profiled) {
            l.init = (e->plan.init & 1u) != 0;
            l.update = (e->plan.due & 1u) != 0;
            l.smoothing = e->plan.decay[0];
        }
        rc = redo_for_each_block(s, index, logged_block, &l);
        return guard_leave(s, &g, rc);
    }
    for (size_t i = s->plan.first[index]; i < s->plan.first[index + 1] && rc == 0; i++) {
        const struct piece *p = &s->plan.pieces[i];
        const struct tensor *t = &s->tensors[p->tensor];
        void *pa = param_ptr(s, t, p->start);
        if (op->phase == PH_CAST) {
            rc = kernel_swap_in(k, t->dtype, pa, shadow_ptr_p(s, t, p->start, e->prof),
                                p->count);
            continue;
        }
        if (profiled) {
            rc = profiles_piece(s, e, t, p->tensor, p->start, p->count, part);
            continue;
        }
        /* Register's initialisation fills every profile's shadow. */
        for (unsigned sp = 0; init && sp < session_shadows(s) && rc == 0; sp++)
            rc = kernel_shadow_init(k, t->dtype, shadow_ptr_p(s, t, p->start, sp), pa, p->count);
        if (update && rc == 0)
            rc = update_piece(s, t, p->tensor, shadow_ptr(s, t, p->start), pa, p->count,
                              s->cfg.smoothing, NULL, part);
    }
    return guard_leave(s, &g, rc);
}

/* Register's work: the journal (chunk 0, beside the first tensor chunks:
 * for a million tensors it takes as long as they do) and the shadow's
 * initialisation. */
int chunk_init(void *arg, size_t index)
{
    struct op_init *op = arg;

    if (index == 0) {
        op->rc = journal_store(op->op.s, op->err, sizeof(op->err));
        return 0;
    }
    return chunk_tensors(arg, index - 1);
}

int chunk_copy(void *arg, size_t index)
{
    struct op *op = arg;
    const struct seg_geometry *geo = &op->s->geo;
    char *params = (char *)op->s->seg.base + geo->params_offset;
    char *stash = (char *)op->s->seg.base + geo->stash_offset;
    uint64_t off = (uint64_t)index * COPY_CHUNK_BYTES;
    uint64_t n = geo->params_bytes - off < COPY_CHUNK_BYTES ? geo->params_bytes - off
                                                            : COPY_CHUNK_BYTES;

    struct shm_guard g;

    shm_guard_enter(&g, &op->s->seg);
    if (op->phase == PH_STASH)
        kernel_stash_copy(stash + off, params + off, n);
    else
        kernel_stash_restore(params + off, stash + off, n);
    return shm_guard_leave(&g);
}

static int chunk_save(void *arg, size_t index)
{
    struct op_file *op = arg;
    struct session *s = op->op.s;
    const struct emad_opts *opts = s->reg->ctx->opts;
    /* Every uid's, root's too, as the other per-uid limits: no request deletes a state file, and
     * the filesystem they fill holds the journals (live/) and the sessions a stop keeps
     * (sessions/) too; those are emad's own and saved outside users/, under no quota. */
    const struct store_quota quota = {opts->max_state_files_per_uid,
                                      opts->max_state_bytes_per_uid};
    (void)index;
    /* Into the directory of the uid that asks (root's own for root): no name a user gives can
     * reach another user's file. */
    op->rc = store_save_user(opts->state_dir, op->op.peer->uid, op->file, &quota, op->meta.data,
                             op->meta.size, shadow_data(s), shadow_data_bytes(s), op->path,
                             sizeof(op->path), &op->bytes, op->err, sizeof(op->err));
    return 0;
}

static int chunk_load(void *arg, size_t index)
{
    struct op_file *op = arg;
    struct session *s = op->op.s;
    struct store_file f;
    char why[256];
    size_t off = 0;
    (void)index;

    op->rc = store_load_user(s->reg->ctx->opts->state_dir, op->op.peer->uid, op->file, &f,
                             op->path, sizeof(op->path), op->err, sizeof(op->err));
    if (op->rc < 0)
        return 0;
    op->bytes = f.map_len;
    msgpack_unpacked_init(&op->unpacked);
    /* The metadata must outlive the mapping: unpack from a copy. */
    msgpack_sbuffer_write(&op->meta, f.meta, f.meta_len);
    if (msgpack_unpack_next(&op->unpacked, op->meta.data, op->meta.size, &off) !=
            MSGPACK_UNPACK_SUCCESS ||
        msg_decode(&msg_saved_state_desc, &op->unpacked.data, &op->loaded, why, sizeof(why)) <
            0) {
        msgpack_unpacked_destroy(&op->unpacked);
        op->rc = -EBADMSG;
        snprintf(op->err, sizeof(op->err), "load: %.400s: metadata is not a state file's",
                 op->path);
        goto out;
    }
    if (msg_saved_state_expand(&op->loaded, why, sizeof(why)) < 0) {
        msg_free(&msg_saved_state_desc, &op->loaded);
        msgpack_unpacked_destroy(&op->unpacked);
        op->rc = -EBADMSG;
        snprintf(op->err, sizeof(op->err), "load: %.400s: metadata is not a state file's",
                 op->path);
        goto out;
    }
    op->has_loaded = true;
    /* Whose the file is, before anything else of it is shown or used: a file saved by an older
     * emad into the shared directory may be another user's, and so may one an administrator
     * moved. A file loads only into a session of the uid that saved it. */
    if (!op->loaded.has_uid || op->loaded.uid != (uint64_t)s->uid) {
        op->rc = -EPERM;
        snprintf(op->err, sizeof(op->err), "load: %.400s was not saved from a session of "
                 "yours: it is not loaded", op->path);
        goto out;
    }
    if (op->one_profile) {
        if (loadprof_copy(s, op, f.data, f.data_len, why, sizeof(why)) < 0) {
            op->rc = -EINVAL;
            snprintf(op->err, sizeof(op->err), "load: %.150s does not match a profile of "
                     "session %s: %.180s", op->path, s->name, why);
        }
        goto out;
    }
    /* The table first: it names the tensor that differs, where a size does not. */
    int bad = session_check_saved(s, &op->loaded, why, sizeof(why));
    if (bad == 0 && f.data_len != shadow_data_bytes(s)) {
        snprintf(why, sizeof(why), "its data is %" PRIu64 " bytes, the shadow %" PRIu64,
                 f.data_len, shadow_data_bytes(s));
        bad = -EINVAL;
    }
    if (bad < 0) {
        op->rc = -EINVAL;
        snprintf(op->err, sizeof(op->err), "load: %.150s does not match session %s: %.180s",
                 op->path, s->name, why);
        goto out;
    }
    memcpy(shadow_data(s), f.data, shadow_data_bytes(s));
out:
    store_file_close(&f);
    return 0;
}

/* Save and load under the shadow's guard: where the shadow is given to
 * its trainer (no ACLs), the trainer can resize it under emad. */
int chunk_file(void *arg, size_t index)
{
    static const struct shm_map none = {NULL, 0};
    struct op *op = arg;
    struct shm_guard g;
    int rc;

    shm_guard_enter2(&g, &none, &op->s->shadow);
    rc = op->kind == OP_SAVE ? chunk_save(arg, index) : chunk_load(arg, index);
    return guard_leave(op->s, &g, rc);
}

int chunk_journal(void *arg, size_t index)
{
    struct op_file *op = arg;

    (void)index;
    op->rc = journal_store(op->op.s, op->err, sizeof(op->err));
    return 0;
}

/* One piece of a shadow into a snapshot buffer, converted to its dtype (snapshot.h). The buffer
 * is packed, so an element may lie at any alignment: memcpy per element. */
static void snap_piece(void *dst, const void *src, enum dtype from, enum dtype to, uint64_t n)
{
    const float *f = src;
    unsigned char *d = dst;

    if (from == DTYPE_F32 && to == DTYPE_BF16) {
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = half_f32_to_bf16(f[i]);
            memcpy(d + 2 * i, &h, 2);
        }
    } else if (from == DTYPE_F32 && to == DTYPE_F16) {
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h = half_f32_to_f16(f[i]);
            memcpy(d + 2 * i, &h, 2);
        }
    } else {
        memcpy(dst, src, n * dtype_size(from));
    }
}

int chunk_snapshot(void *arg, size_t index)
{
    static const struct shm_map none = {NULL, 0};
    struct op *op = arg;
    struct session *s = op->s;
    struct snap_job *j = op->kind == OP_EVENT ? op_event(op)->snap : op_snapshot(op)->job;
    struct shm_guard g;

    shm_guard_enter2(&g, &none, &s->shadow);
    for (size_t i = s->plan.first[index]; i < s->plan.first[index + 1]; i++) {
        const struct piece *p = &s->plan.pieces[i];
        const struct tensor *t = &s->tensors[p->tensor];
        enum dtype to = j->tensors[p->tensor].dtype;
        for (unsigned k = 0; k < j->nprof; k++) {
            char *dst = j->prof[k].buf + j->off[p->tensor] + p->start * dtype_size(to);
            snap_piece(dst, shadow_ptr_p(s, t, p->start, j->prof[k].index), t->shadow_dtype, to,
                       p->count);
        }
    }
    return guard_leave(s, &g, 0);
}
