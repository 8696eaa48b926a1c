/*
 * snapshot.c - snapshot settings and jobs, on the loop thread (snapshot.h): what a snapshot
 * holds, and the hand-off of its write to libuv's pool and back. The files themselves are
 * snapshot_file.c's; the copy of the shadows, chunk.c's.
 */
#include "snapshot.h"

#include "phema.h"
#include "session_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int snap_dtype_parse(struct msg_str name, enum dtype *out)
{
    if (msg_str_eq(name, "f32"))
        *out = DTYPE_F32;
    else if (msg_str_eq(name, "bf16"))
        *out = DTYPE_BF16;
    else if (msg_str_eq(name, "f16"))
        *out = DTYPE_F16;
    else
        return -EINVAL;
    return 0;
}

int snap_config_set(struct snap_config *out, const struct msg_config *c, bool has_power,
                    char *err, size_t errlen)
{
    struct snap_config cfg = {0, DTYPE_F32, 0};

    if (c != NULL && c->has_snapshot_every) {
        struct ema_time t;
        char why[200];
        if (ema_time_parse(c->snapshot_every.ptr, c->snapshot_every.len, false, &t, why,
                           sizeof(why)) < 0 || t.unit != EMA_UNIT_BA || t.value == 0) {
            snprintf(err, errlen, "config.snapshot_every: \"%.*s\" is not a number of batches "
                     "(\"100ba\")", (int)(c->snapshot_every.len > 32 ? 32 : c->snapshot_every.len),
                     c->snapshot_every.ptr);
            return -EINVAL;
        }
        if (!has_power) {
            snprintf(err, errlen, "config.snapshot_every: only power profiles (sigma_rel or "
                     "gamma) are snapshotted, and the session has none");
            return -EINVAL;
        }
        cfg.every = t.value;
    }
    if (c != NULL && c->has_snapshot_dtype) {
        if (snap_dtype_parse(c->snapshot_dtype, &cfg.dtype) < 0) {
            snprintf(err, errlen, "config.snapshot_dtype: \"%.*s\" is not \"f32\", \"bf16\" or "
                     "\"f16\"", (int)(c->snapshot_dtype.len > 32 ? 32 : c->snapshot_dtype.len),
                     c->snapshot_dtype.ptr);
            return -EINVAL;
        }
    }
    if (c != NULL && c->has_snapshot_keep)
        cfg.keep = c->snapshot_keep;
    *out = cfg;
    return 0;
}

bool snap_due(const struct snap_config *c, uint64_t batch)
{
    return c->every > 0 && batch > 0 && batch % c->every == 0;
}

void snap_job_free(struct snap_job *j)
{
    if (j == NULL)
        return;
    for (unsigned p = 0; p < j->nprof; p++)
        free(j->prof[p].buf);
    free(j->tensors);
    free(j->off);
    free(j->names);
    free(j->shard_meta);
    free(j->shard_pool);
    free(j);
}

/* "[8,6]" into out (room for ST_RANK_MAX numbers); returns the characters written. */
static size_t dims_json(char *out, const uint64_t *d, size_t n)
{
    size_t at = 0;

    out[at++] = '[';
    for (size_t k = 0; k < n; k++)
        at += (size_t)sprintf(out + at, "%s%" PRIu64, k ? "," : "", d[k]);
    out[at++] = ']';
    out[at] = '\0';
    return at;
}

/* A shard session's metadata for its snapshot files, as a group checkpoint's shard file says
 * where it belongs (docs/scaleout.md "The shard files"): the group, and each slice. */
static int job_shard_meta(struct snap_job *j, const struct session *s)
{
    size_t n = s->has_group ? 3 : 0, pool = 3 * 24 + sizeof(s->group_job);
    /* A value: {"global_shape":[...],"offsets":[...]}, two lists of at most ST_RANK_MAX
     * numbers of at most 20 digits and a comma. */
    const size_t value_max = 40 + 2 * (ST_RANK_MAX * 21 + 2);

    for (size_t i = 0; i < s->ntensors; i++)
        if (s->sliced) {
            n++;
            pool += 7 + strlen(s->tensors[i].name) + value_max;
        }
    if (n == 0)
        return 0;
    j->shard_meta = calloc(n, sizeof(*j->shard_meta));
    j->shard_pool = malloc(pool);
    if (j->shard_meta == NULL || j->shard_pool == NULL)
        return -ENOMEM;
    char *w = j->shard_pool;
    size_t m = 0;
    if (s->has_group) {
        j->shard_meta[m++] = (struct st_meta){"job", w};
        w += sprintf(w, "%s", s->group_job) + 1;
        j->shard_meta[m++] = (struct st_meta){"rank", w};
        w += sprintf(w, "%" PRIu64, s->group_rank) + 1;
        j->shard_meta[m++] = (struct st_meta){"world_size", w};
        w += sprintf(w, "%" PRIu64, s->group_world) + 1;
    }
    for (size_t i = 0; i < s->ntensors; i++) {
        const uint64_t *offs, *g = session_tensor_slice(s, i, &offs);
        size_t nd;
        if (g == NULL)
            continue;
        (void)session_tensor_shape(s, i, &nd);
        j->shard_meta[m].key = w;
        w += sprintf(w, "slice.%s", s->tensors[i].name) + 1;
        j->shard_meta[m++].value = w;
        w += sprintf(w, "{\"global_shape\":");
        w += dims_json(w, g, nd);
        w += sprintf(w, ",\"offsets\":");
        w += dims_json(w, offs, nd);
        w += sprintf(w, "}") + 1;
    }
    j->nshard_meta = m;
    return 0;
}

/* The tensor table of the files: the session's names and shapes (a tensor registered without
 * one flat, [numel]), in the snapshot dtype where the
 * shadow is f32 (the shadow's own dtype otherwise: f64, integers). */
static int job_tensors(struct snap_job *j, const struct session *s)
{
    size_t pool = 0;

    for (size_t i = 0; i < s->ntensors; i++)
        pool += strlen(s->tensors[i].name) + 1;
    j->tensors = calloc(s->ntensors ? s->ntensors : 1, sizeof(*j->tensors));
    j->off = calloc(s->ntensors ? s->ntensors : 1, sizeof(*j->off));
    j->names = malloc(pool ? pool : 1);
    if (j->tensors == NULL || j->off == NULL || j->names == NULL)
        return -ENOMEM;
    char *w = j->names;
    uint64_t off = 0;
    for (size_t i = 0; i < s->ntensors; i++) {
        const struct tensor *t = &s->tensors[i];
        size_t len = strlen(t->name) + 1;
        memcpy(w, t->name, len);
        struct st_tensor *o = &j->tensors[i];
        o->name = w;
        w += len;
        o->dtype = t->shadow_dtype == DTYPE_F32 ? j->cfg.dtype : t->shadow_dtype;
        size_t nd;
        const uint64_t *shape = session_tensor_shape(s, i, &nd);
        o->rank = (unsigned)nd;
        memcpy(o->shape, shape, nd * sizeof(*shape));
        j->off[i] = off;
        off += t->numel * dtype_size(o->dtype);
    }
    j->ntensors = s->ntensors;
    j->data_bytes = off;
    return job_shard_meta(j, s);
}

/* A job of s's without profiles yet, its snapshot settings cfg. */
static int job_new(struct session *s, const struct snap_config *cfg, struct snap_job **out,
                   char *err, size_t errlen)
{
    struct snap_job *j = calloc(1, sizeof(*j));
    int rc = -ENOMEM;

    if (j == NULL)
        goto err_mem;
    j->s = s;
    j->uid = s->uid;
    j->cfg = *cfg;
    j->epoch = s->st.has_last_time ? s->st.last_time.epoch : 0;
    snprintf(j->state_dir, sizeof(j->state_dir), "%s", s->reg->ctx->opts->state_dir);
    snprintf(j->session, sizeof(j->session), "%s", s->name);
    if (store_default_name(s->name, strlen(s->name), j->dirname, sizeof(j->dirname)) < 0) {
        snprintf(err, errlen, "snapshot: session %s: its name does not map to a directory "
                 "name of at most %d characters", s->name, STORE_NAME_MAX);
        rc = -ENAMETOOLONG;
        goto err;
    }
    if (job_tensors(j, s) < 0)
        goto err_mem;
    *out = j;
    return 0;
err_mem:
    snprintf(err, errlen, "snapshot: session %s: out of memory for the copy of its shadows",
             s->name);
err:
    snap_job_free(j);
    return rc;
}

/* The next profile of j: profile p of s, its name, width and batch (the file and the copy's
 * buffer are the caller's). */
static struct snap_prof *job_add_prof(struct snap_job *j, const struct session *s, unsigned p)
{
    const struct profile *pr = &s->prof[p];
    struct snap_prof *sp = &j->prof[j->nprof++];

    sp->index = p;
    snprintf(sp->name, sizeof(sp->name), "%s", pr->name);
    if (pr->kind == PROFILE_POWER) {
        sp->gamma = pr->sched.u.power.gamma;
        sp->has_sigma_rel = pr->has_sigma_rel || phema_sigma_rel(sp->gamma, &sp->sigma_rel) == 0;
        if (pr->has_sigma_rel)
            sp->sigma_rel = pr->sigma_rel;
    }
    sp->batch = pr->last_batch;
    return sp;
}

int snap_job_new(struct session *s, struct snap_job **out, char *err, size_t errlen)
{
    struct snap_job *j;
    int rc;

    if ((rc = job_new(s, &s->snap, &j, err, errlen)) < 0)
        return rc;
    rc = -ENOMEM;
    for (unsigned p = 0; p < s->nprof; p++) {
        const struct profile *pr = &s->prof[p];
        if (pr->kind != PROFILE_POWER || pr->last_batch == 0)
            continue;
        struct snap_prof *sp = job_add_prof(j, s, p);
        snprintf(sp->file, sizeof(sp->file), "%s-%llu.%s" SNAP_SUFFIX, pr->name,
                 (unsigned long long)sp->batch, dtype_name(j->cfg.dtype));
        if ((sp->buf = malloc(j->data_bytes ? j->data_bytes : 1)) == NULL)
            goto err_mem;
    }
    if (j->nprof == 0) {
        snprintf(err, errlen, "snapshot: session %s has no power profile that has updated yet",
                 s->name);
        rc = -ENOENT;
        goto err;
    }
    *out = j;
    return 0;
err_mem:
    snprintf(err, errlen, "snapshot: session %s: out of memory for the copy of its power "
             "profiles", s->name);
err:
    snap_job_free(j);
    return rc;
}

/*
 * An export is a snapshot of one profile of any schedule, in the dtype asked for, under a name
 * that snap_name_parse refuses ("<profile>.export.<dtype>.safetensors": no "-<batch>" before
 * the dtype), so that snapshots does not list it, post-hoc EMA never reads it and the retention
 * never deletes it; the next export of that profile and dtype replaces it (at most 3 files a
 * profile). The client copies it to the file it names (docs/protocol.md "snapshot").
 */
int snap_job_export(struct session *s, const char *profile, enum dtype dtype,
                    struct snap_job **out, char *err, size_t errlen)
{
    struct snap_config cfg = {0, dtype, 0};
    struct snap_job *j;
    int rc, p = profile_find(s->prof, s->nprof, msg_str_c(profile));
    /* A session registered without profiles has one, "ema" (docs/protocol.md "Profiles"),
     * which s->prof does not hold: its shadow is shadow 0 and its state the session's. */
    bool plain = s->nprof == 0 && strcmp(profile, PROFILE_DEFAULT_NAME) == 0;

    if (p < 0 && !plain) {
        snprintf(err, errlen, "snapshot: export: session %s has no profile \"%s\"", s->name,
                 profile);
        return -ESRCH;
    }
    if ((rc = job_new(s, &cfg, &j, err, errlen)) < 0)
        return rc;
    struct snap_prof *sp;
    if (plain) {
        sp = &j->prof[j->nprof++];
        sp->index = 0;
        snprintf(sp->name, sizeof(sp->name), "%s", PROFILE_DEFAULT_NAME);
        /* Such a session knows the batch of its last update since emad started (observe.c);
         * before that (a restart), its last event's batch is the best it has: at an update
         * interval above one, perhaps a little past the update. */
        sp->batch = s->last_update_at > 0                          ? s->last_update_batch
                    : s->st.started && s->st.has_last_time ? s->st.last_time.batch
                                                           : 0;
    } else {
        sp = job_add_prof(j, s, (unsigned)p);
    }
    snprintf(sp->file, sizeof(sp->file), "%s.export.%s" SNAP_SUFFIX, sp->name,
             dtype_name(dtype));
    if ((sp->buf = malloc(j->data_bytes ? j->data_bytes : 1)) == NULL) {
        snprintf(err, errlen, "snapshot: export: session %s: out of memory for the copy of "
                 "profile %s", s->name, sp->name);
        snap_job_free(j);
        return -ENOMEM;
    }
    *out = j;
    return 0;
}

static void snap_work(uv_work_t *w)
{
    struct snap_job *j = w->data;

    j->rc = snap_write(j);
}

static void snap_after(uv_work_t *w, int status)
{
    struct snap_job *j = w->data;
    struct session *s = j->s;
    struct registry *r = s->reg;

    (void)status; /* never cancelled */
    s->snap_pending--;
    r->snap_in_flight--;
    j->done(j);
}

void snap_start(struct snap_job *j, void (*done)(struct snap_job *j))
{
    struct session *s = j->s;
    int rc;

    j->done = done;
    j->work.data = j;
    s->snap_pending++;
    s->reg->snap_in_flight++;
    if ((rc = uv_queue_work(s->reg->ctx->loop, &j->work, snap_work, snap_after)) < 0) {
        /* Only for invalid arguments: run it here rather than lose it. */
        j->rc = snap_write(j);
        snap_after(&j->work, rc);
    }
}
