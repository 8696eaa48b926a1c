/*
 * session.c - one session's life: register (a new session, or resume of a
 * detached one), close and drop, and the request handlers, which check a
 * request and queue its operation (op.c). Also the building blocks a
 * restart shares with register: config, tensor table, free.
 */
#include "session_impl.h"

#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

void session_free(struct session *s)
{
    shm_unmap(&s->seg);
    if (s->shadow.base != NULL) {
        shm_unmap(&s->shadow);
        if (s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
    }
    free(s->names);
    free(s->tensors);
    free(s->dims);
    replica_free_all(s);
    plan_free(&s->plan);
    free(s->redo_from);
    health_free(&s->health);
    free(s);
}

/* One mapping from the contract's config (register's, or a state file's)
 * to the state machine's, for register, load and restart alike. */
int session_config_set(struct session *s, const struct msg_config *c, char *err, size_t errlen)
{
    struct ema_config_in in;
    struct ema_config cfg;

    memset(&in, 0, sizeof(in));
    if (c != NULL) {
        if (c->has_half_life) {
            in.half_life = c->half_life.ptr;
            in.half_life_len = c->half_life.len;
        }
        in.has_smoothing = c->has_smoothing;
        in.smoothing = c->smoothing;
        if (c->has_update_interval) {
            in.update_interval = c->update_interval.ptr;
            in.update_interval_len = c->update_interval.len;
        }
        if (c->has_ema_start) {
            in.ema_start = c->ema_start.ptr;
            in.ema_start_len = c->ema_start.len;
        }
    }
    struct profile prof[PROFILE_MAX];
    unsigned nprof = 0, eval = 0;
    if (c != NULL && c->has_profiles) {
        /* Each profile carries its own schedule: top-level settings beside them would be
         * silently ignored. */
        const char *top = c->has_half_life ? "half_life" : c->has_smoothing ? "smoothing"
                          : c->has_update_interval ? "update_interval"
                          : c->has_ema_start ? "ema_start" : NULL;
        if (top != NULL) {
            snprintf(err, errlen, "config.%s: given together with config.profiles; put it in "
                     "a profile", top);
            return -EINVAL;
        }
        if (profile_config(prof, c->profiles, c->nprofiles, c->has_eval_profile,
                           c->eval_profile, &eval, err, errlen) < 0)
            return -EINVAL;
        nprof = (unsigned)c->nprofiles;
        /* What status shows at the top level: a composer profile's settings, the eval
         * profile's first. */
        int shown = prof[eval].kind == PROFILE_COMPOSER ? (int)eval : -1;
        for (unsigned i = 0; i < nprof && shown < 0; i++)
            if (prof[i].kind == PROFILE_COMPOSER)
                shown = (int)i;
        if (shown >= 0) {
            const struct profile *sp = &prof[shown];
            in.half_life = sp->cfg.has_half_life ? sp->half_life : NULL;
            in.half_life_len = sp->cfg.has_half_life ? strlen(sp->half_life) : 0;
            in.has_smoothing = !sp->cfg.has_half_life;
            in.smoothing = sp->cfg.smoothing;
            in.update_interval = sp->update_interval;
            in.update_interval_len = strlen(sp->update_interval);
            in.ema_start = sp->ema_start;
            in.ema_start_len = strlen(sp->ema_start);
        }
    } else if (c != NULL && c->has_eval_profile && !msg_str_eq(c->eval_profile,
                                                                PROFILE_DEFAULT_NAME)) {
        snprintf(err, errlen, "config.eval_profile: without config.profiles the session's one "
                 "profile is \"" PROFILE_DEFAULT_NAME "\"");
        return -EINVAL;
    }
    if (ema_config_init(&cfg, &in, err, errlen) < 0)
        return -EINVAL;
    bool has_power = false;
    for (unsigned i = 0; i < nprof; i++)
        has_power = has_power || prof[i].kind == PROFILE_POWER;
    struct snap_config snap;
    if (snap_config_set(&snap, c, has_power, err, errlen) < 0)
        return -EINVAL;
    bool skip = true;
    if (c != NULL && c->has_on_nonfinite) {
        if (msg_str_eq(c->on_nonfinite, "apply")) {
            skip = false;
        } else if (!msg_str_eq(c->on_nonfinite, "skip")) {
            snprintf(err, errlen, "config.on_nonfinite: \"%.*s\" is neither \"skip\" nor "
                     "\"apply\"", (int)(c->on_nonfinite.len > 32 ? 32 : c->on_nonfinite.len),
                     c->on_nonfinite.ptr);
            return -EINVAL;
        }
    }
    s->health.skip_nonfinite = skip;
    s->health.enabled = c == NULL || !c->has_health || c->health;
    s->cfg = cfg;
    s->snap = snap;
    memcpy(s->prof, prof, nprof * sizeof(prof[0]));
    s->nprof = nprof;
    s->eval = eval;
    if (cfg.has_half_life)
        ema_time_format(&cfg.half_life, s->half_life, sizeof(s->half_life));
    else
        s->half_life[0] = '\0';
    ema_time_format(&cfg.update_interval, s->update_interval, sizeof(s->update_interval));
    ema_time_format(&cfg.ema_start, s->ema_start, sizeof(s->ema_start));
    return 0;
}

/* Check that a state file's tensor table matches the session's: the same names and numel, and
 * the same shadow dtype, which is all the shadow's layout depends on (session_build_tensors).
 * The param dtypes may differ: an f32 session's shadow loads into an f16 or bf16 one, which is
 * how a trainer resumes the exact fp32 shadow of a low-precision model from its own checkpoint
 * without ever writing a shadow itself (docs/protocol.md "load"). */
int session_check_table(const struct session *s, const struct msg_saved_state *m, char *err,
                        size_t errlen)
{
    if (m->ntensors != s->ntensors) {
        snprintf(err, errlen, "the file has %zu tensors, the session %zu", m->ntensors,
                 s->ntensors);
        return -EINVAL;
    }
    for (size_t i = 0; i < s->ntensors; i++) {
        const struct tensor *t = &s->tensors[i];
        enum dtype dt;
        if (!msg_str_eq(m->tensors[i].name, t->name) ||
            dtype_from_name(m->tensors[i].dtype.ptr, m->tensors[i].dtype.len, &dt) < 0 ||
            dtype_shadow(dt) != t->shadow_dtype || m->tensors[i].numel != t->numel) {
            snprintf(err, errlen, "tensor %zu differs: the file has \"%.*s\" %.*s x %" PRIu64
                     ", the session \"%s\" %s x %" PRIu64, i, (int)m->tensors[i].name.len,
                     m->tensors[i].name.ptr, (int)m->tensors[i].dtype.len,
                     m->tensors[i].dtype.ptr, m->tensors[i].numel, t->name,
                     dtype_name(t->dtype), t->numel);
            return -EINVAL;
        }
    }
    return 0;
}

int session_check_saved(const struct session *s, const struct msg_saved_state *m, char *err,
                        size_t errlen)
{
    int rc = session_check_table(s, m, err, errlen);
    if (rc < 0)
        return rc;
    if (m->shadow_bytes != s->shadow_bytes) {
        snprintf(err, errlen, "the file's shadow is %" PRIu64 " bytes, the session's %" PRIu64,
                 m->shadow_bytes, s->shadow_bytes);
        return -EINVAL;
    }
    /* The profiles the file's config names become the session's (session_apply_saved): their
     * number must be the shadows the session's object holds, whatever the file says of its
     * size. */
    if (saved_shadows(m) != session_shadows(s)) {
        snprintf(err, errlen, "the file holds %zu EMA profiles, the session %u", saved_shadows(m),
                 session_shadows(s));
        return -EINVAL;
    }
    return 0;
}

void session_apply_saved(struct session *s, const struct msg_saved_state *m)
{
    char why[256];

    /* A config this emad refuses leaves the session's as it was, and so does one with another
     * number of profiles than the shadows the object holds (session_check_saved refused it). */
    if (saved_shadows(m) == session_shadows(s))
        (void)session_config_set(s, &m->config, why, sizeof(why));
    /* Each profile's state, where the file's profiles are the session's (by place and name). */
    for (size_t i = 0; i < m->nprofiles && i < s->nprof; i++) {
        const struct msg_profile_state *ps = &m->profiles[i];
        struct profile *p = &s->prof[i];
        if (!msg_str_eq(ps->name, p->name))
            continue;
        p->started = ps->started;
        p->updates = ps->updates;
        p->last_batch = ps->has_last_batch ? ps->last_batch : 0;
        p->has_last_decay = ps->has_last_decay;
        p->last_decay = ps->last_decay;
    }
    s->st.started = m->started;
    /* Loading never swaps: the params keep the training weights. */
    s->st.active = false;
    s->st.updates = m->updates;
    s->st.swaps = m->swaps;
    s->st.has_last_time = m->has_last_time;
    s->st.last_time.batch = m->last_time.batch;
    s->st.last_time.epoch = m->last_time.epoch;
    s->st.last_time.has_duration = m->last_time.has_duration;
    s->st.last_time.duration = m->last_time.duration;
}

int session_build_tensors(struct session *s, const struct msg_register *req,
                          uint64_t max_tensors, char *err, size_t errlen)
{
    uint64_t at = SHADOW_HEADER_BYTES;

    size_t count = msg_register_count(req);
    if (count > max_tensors) {
        snprintf(err, errlen, "register: %zu tensors exceed the limit of %" PRIu64
                 " per session (--max-tensors)", count, max_tensors);
        return -E2BIG;
    }
    size_t name_bytes = 1;
    for (size_t i = 0; i < count; i++)
        name_bytes += msg_register_tensor(req, i).name.len + 1;
    s->tensors = calloc(count ? count : 1, sizeof(*s->tensors));
    s->names = malloc(name_bytes);
    if (s->tensors == NULL || s->names == NULL)
        return -ENOMEM;
    char *at_name = s->names;
    for (size_t i = 0; i < count; i++) {
        const struct msg_tensor row = msg_register_tensor(req, i), *mt = &row;
        struct tensor *t = &s->tensors[i];
        size_t esize;
        uint64_t bytes;
        if (!names_tensor_valid(mt->name.ptr, mt->name.len)) {
            snprintf(err, errlen, "register: tensors[%zu].name: must be 1 to %d bytes of UTF-8 "
                     "without NUL", i, NAMES_TENSOR_MAX);
            return -EINVAL;
        }
        if (dtype_from_name(mt->dtype.ptr, mt->dtype.len, &t->dtype) < 0) {
            snprintf(err, errlen, "register: tensors[%zu].dtype: \"%.*s\" is not one of f32, f16, "
                     "bf16, f64, i64, i32, i16, i8, u8, bool", i,
                     (int)(mt->dtype.len > 16 ? 16 : mt->dtype.len), mt->dtype.ptr);
            return -EINVAL;
        }
        memcpy(at_name, mt->name.ptr, mt->name.len);
        at_name[mt->name.len] = '\0';
        t->name = at_name;
        at_name += mt->name.len + 1;
        s->ntensors = i + 1;
        t->numel = mt->numel;
        t->offset = mt->offset;
        t->shadow_dtype = dtype_shadow(t->dtype);
        esize = dtype_size(t->shadow_dtype);
        at = (at + SEG_TENSOR_ALIGN - 1) & ~(uint64_t)(SEG_TENSOR_ALIGN - 1);
        t->shadow_offset = at;
        if (__builtin_mul_overflow(mt->numel, (uint64_t)esize, &bytes) ||
            __builtin_mul_overflow(mt->numel, (uint64_t)dtype_size(t->dtype), &bytes) ||
            __builtin_add_overflow(at, mt->numel * esize, &at)) {
            snprintf(err, errlen, "register: tensors[%zu].numel: %" PRIu64 " is too large", i,
                     mt->numel);
            return -EINVAL;
        }
    }
    /* With several profiles, their shadows lie back to back, each laid out as the first (a
     * single profile's object is exactly what it was before profiles existed). */
    s->area_bytes = at - SHADOW_HEADER_BYTES;
    if (s->nprof > 1) {
        s->area_bytes = (s->area_bytes + SEG_TENSOR_ALIGN - 1) & ~(uint64_t)(SEG_TENSOR_ALIGN - 1);
        if (__builtin_mul_overflow(s->area_bytes, (uint64_t)s->nprof, &at) ||
            __builtin_add_overflow(at, (uint64_t)SHADOW_HEADER_BYTES, &at)) {
            snprintf(err, errlen, "register: %u profiles of %" PRIu64 " shadow bytes are too "
                     "many bytes", s->nprof, s->area_bytes);
            return -EINVAL;
        }
    }
    s->shadow_bytes = at;
    return session_shapes_build(s, req, err, errlen);
}

/* Check the tensors against the mapped segment (SHM errors). */
static int check_segment(const struct session *s, const struct shm_map *seg,
                         const struct seg_geometry *geo, char *err, size_t errlen)
{
    struct shm_guard g;
    uint32_t state;
    struct seg_span *spans = malloc((s->ntensors ? s->ntensors : 1) * sizeof(*spans));
    const char **names = malloc((s->ntensors ? s->ntensors : 1) * sizeof(*names));
    char why[400];
    int rc;

    if (spans == NULL || names == NULL) {
        free(spans);
        free(names);
        return -ENOMEM;
    }
    for (size_t i = 0; i < s->ntensors; i++) {
        spans[i].offset = s->tensors[i].offset;
        spans[i].bytes = s->tensors[i].numel * dtype_size(s->tensors[i].dtype);
        names[i] = s->tensors[i].name;
    }
    rc = seg_spans_check(spans, names, s->ntensors, geo->params_bytes, why, sizeof(why));
    free(spans);
    free(names);
    if (rc < 0) {
        snprintf(err, errlen, "register: shm \"%.100s\": %s", s->shm_name, why);
        return rc;
    }
    shm_guard_enter(&g, seg);
    state = seg_swap_state_load(seg->base);
    if (shm_guard_leave(&g) < 0) {
        snprintf(err, errlen, "register: shm \"%s\" shrank while emad read it", s->shm_name);
        return -EINVAL;
    }
    if (state != SEG_TRAIN) {
        snprintf(err, errlen, "register: shm \"%s\": swap_state is %u: the params hold EMA "
                 "weights; restore the training weights from the stash first", s->shm_name,
                 state);
        return -EINVAL;
    }
    return 0;
}

bool session_same_table(const struct session *a, const struct session *b)
{
    if (a->ntensors != b->ntensors)
        return false;
    for (size_t i = 0; i < a->ntensors; i++)
        if (strcmp(a->tensors[i].name, b->tensors[i].name) != 0 ||
            a->tensors[i].dtype != b->tensors[i].dtype ||
            a->tensors[i].numel != b->tensors[i].numel ||
            a->tensors[i].offset != b->tensors[i].offset)
            return false;
    return true;
}

static void resume(struct registry *r, struct peer *c, uint32_t msgid, struct session *old,
                   struct session *fresh, struct shm_map *seg, bool compact)
{
    struct op *op;

    if (!session_visible(old, c->uid) || (old->uid != c->uid && c->uid != 0)) {
        peer_fail(c, msgid, MSG_E_PERM, "register: session %s belongs to another user",
                    old->name);
        return;
    }
    if (old->owner != NULL) {
        peer_fail(c, msgid, MSG_E_EXISTS, "register: session %s is attached to pid %ld",
                    old->name, (long)old->owner_pid);
        return;
    }
    /* One seat per connection (replica.c): a replica's close would free one and keep the
     * other. */
    if (replica_of(old, c) != NULL) {
        peer_fail(c, msgid, MSG_E_EXISTS, "register: this connection holds a replica of "
                    "session %s already; a connection takes one seat", old->name);
        return;
    }
    if (!session_same_table(old, fresh)) {
        peer_fail(c, msgid, MSG_E_BADARG,
                    "register: resume: the tensor table differs from session %s's (names, "
                    "dtypes, numel and offsets must be identical, in order)", old->name);
        return;
    }
    if (!session_shapes_match(old, fresh)) {
        peer_fail(c, msgid, MSG_E_BADARG,
                    "register: resume: the shapes or slices differ from session %s's (a rank "
                    "resumed with another world size registers a new session)", old->name);
        return;
    }
    /* A replica resuming a session another rank led (emad restarted, and it reconnected
     * first): its request numbers are not the ones recorded. */
    if (old->has_group && old->group_replicas > 1 && fresh->has_group &&
        fresh->group_rank != old->group_rank)
        replica_forget_seqs(old);
    /* Whichever rank resumes, what it sends first may be what it had sent as a replica,
     * unnumbered (a stop may have made it the leader before emad went down). */
    if (old->group_replicas > 1)
        old->end_guard = true;
    /* The job's ranks may be placed anew (a restarted job): the group sent is the one now. */
    if (fresh->has_group) {
        old->has_group = true;
        memcpy(old->group_job, fresh->group_job, sizeof(old->group_job));
        old->group_rank = fresh->group_rank;
        old->group_world = fresh->group_world;
        /* The replica slots are sized by it: it changes only while none was allocated. */
        if (old->rep == NULL)
            old->group_replicas = fresh->group_replicas;
    }
    op = op_new(old, OP_ATTACH, c, msgid);
    if (op == NULL)
        return;
    struct op_attach *a = op_attach(op);
    a->compact = compact;
    a->new_seg = *seg;
    a->new_geo = fresh->geo;
    seg->base = NULL;
    seg->len = 0;
    snprintf(a->new_shm, sizeof(a->new_shm), "%s", fresh->shm_name);
    old->owner = c;
    old->owner_pid = c->pid;
    log_info(reg_log(r), "session %s: resumed by pid %ld", old->name, (long)c->pid);
    op_enqueue(op);
}

void session_register(struct registry *r, struct peer *c, uint32_t msgid,
                      const struct msg_register *req)
{
    const struct emad_opts *opts = r->ctx->opts;
    struct session *s, *old;
    struct shm_map seg = {NULL, 0};
    enum shm_share share;
    struct usage used;
    char err[600];
    int rc;

    if (!names_session_valid(req->session.ptr, req->session.len)) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: session: must be 1 to %d characters of "
                    "[A-Za-z0-9._:/-]", NAMES_SESSION_MAX);
        return;
    }
    old = registry_find(r, c->uid, req->session.ptr, req->session.len);
    /* "<uid>:<name>" is how root names another user's session: a new session
     * called so would take root's requests (status, drop) meant for that
     * user's. Sessions kept from before keep their names. */
    if (old == NULL && names_session_qualified(req->session.ptr, req->session.len)) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: session: \"%.*s\" has the form "
                    "<uid>:<name>, which names another user's session; choose a name that does "
                    "not start with digits and a colon", (int)req->session.len, req->session.ptr);
        return;
    }
    if ((old == NULL || !session_visible(old, c->uid)) && req->has_existing && req->existing) {
        peer_fail(c, msgid, MSG_E_NOSESSION, "register: no session named \"%.*s\" to resume "
                    "(existing was asked: none is created)", (int)req->session.len,
                    req->session.ptr);
        return;
    }
    /* A session whose close or drop is queued is gone to a newcomer: a
     * resume answered now would name a shadow about to be removed. */
    if (old != NULL && session_visible(old, c->uid) && old->closing) {
        peer_fail(c, msgid, (req->has_resume && req->resume) ? MSG_E_NOSESSION : MSG_E_EXISTS,
                    "register: session %s is being closed; register it anew once its close is "
                    "answered", old->name);
        return;
    }
    /* Another rank holding the same weights joins the session as a replica (replica.c). */
    bool join = old != NULL && session_visible(old, c->uid) && replica_joins(old, c, req);
    if (old != NULL && !join && !(req->has_resume && req->resume)) {
        peer_fail(c, msgid, MSG_E_EXISTS, "register: session %s exists (pass resume to "
                    "re-attach to it)", old->name);
        return;
    }
    if (old == NULL && r->count >= opts->max_sessions) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: the daemon holds %u sessions, its limit "
                    "(--max-sessions)", r->count);
        return;
    }
    registry_usage(r, c->uid, &used);
    if (old == NULL && used.sessions >= opts->max_sessions_per_uid) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: uid %ld holds %u sessions, its limit "
                    "(--max-sessions-per-uid); close or drop one first", (long)c->uid,
                    used.sessions);
        return;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: out of memory");
        return;
    }
    s->reg = r;
    memcpy(s->name, req->session.ptr, req->session.len);
    s->uid = c->uid;
    snprintf(s->qualified, sizeof(s->qualified), "%lu:%s", (unsigned long)s->uid, s->name);
    s->owner = c;
    s->owner_pid = c->pid;
    if (msg_str_copy(req->shm, s->shm_name, sizeof(s->shm_name)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: shm: not a valid shared-memory name");
        goto err_free;
    }
    if ((rc = session_config_set(s, req->has_config ? &req->config : NULL, err, sizeof(err))) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: %s", err);
        goto err_free;
    }
    session_group_set(s, req->has_group ? &req->group : NULL);
    rc = session_build_tensors(s, req, opts->max_tensors, err, sizeof(err));
    if (rc < 0) {
        peer_fail(c, msgid, rc == -E2BIG ? MSG_E_LIMIT : rc == -ENOMEM ? MSG_E_INTERNAL
                                                                           : MSG_E_BADARG,
                    "%s", rc == -ENOMEM ? "register: out of memory" : err);
        goto err_free;
    }
    if (old == NULL && used.tensors + s->ntensors > opts->max_tensors_per_uid) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: %zu tensors would bring uid %ld to %" PRIu64
                    ", over its limit of %" PRIu64 " (--max-tensors-per-uid)", s->ntensors,
                    (long)c->uid, used.tensors + s->ntensors, opts->max_tensors_per_uid);
        goto err_free;
    }
    if ((rc = shm_segment_open(s->shm_name, c->uid, &seg, &s->geo, err, sizeof(err))) < 0) {
        peer_fail(c, msgid, MSG_E_SHM, "register: %s", err);
        goto err_free;
    }
    rc = check_segment(s, &seg, &s->geo, err, sizeof(err));
    if (rc < 0) {
        peer_fail(c, msgid, rc == -ENOMEM ? MSG_E_INTERNAL : MSG_E_SHM, "%s", err);
        goto err_unmap;
    }
    if (join) {
        replica_join(r, c, msgid, old, s, &seg, req->has_compact && req->compact);
        goto err_unmap;
    }
    if (old != NULL) {
        resume(r, c, msgid, old, s, &seg, req->has_compact && req->compact);
        goto err_unmap;
    }
    s->seg = seg;
    seg.base = NULL;
    s->params_bytes = s->geo.params_bytes;
    if (plan_build(&s->plan, s->tensors, s->ntensors, CHUNK_ELEMS) < 0) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: out of memory");
        goto err_free;
    }
    redo_layout(s);
    if (used.shadow_bytes + shadow_object_bytes(s) > opts->max_shadow_bytes_per_uid) {
        peer_fail(c, msgid, MSG_E_LIMIT, "register: a shadow of %" PRIu64 " bytes would bring "
                    "uid %ld to %" PRIu64 " bytes, over its limit of %" PRIu64
                    " (--max-shadow-bytes-per-uid)", shadow_object_bytes(s), (long)c->uid,
                    used.shadow_bytes + shadow_object_bytes(s), opts->max_shadow_bytes_per_uid);
        goto err_free;
    }
    if (shm_shadow_create(c->uid, shadow_object_bytes(s), s->shadow_name, sizeof(s->shadow_name),
                          &s->shadow, &share, err, sizeof(err)) < 0) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: %s", err);
        goto err_free;
    }
    registry_share_note(r, share);
    ema_state_init(&s->st);
    for (unsigned i = 0; i < s->nprof; i++)
        s->st.started |= s->prof[i].started; /* warm-up and power: from the start */
    registry_insert(r, s);
    log_info(reg_log(r), "session %s: registered by pid %ld: %zu tensors, %" PRIu64
             " param bytes, shadow %s (%" PRIu64 " bytes)", s->name, (long)c->pid, s->ntensors,
             s->params_bytes, s->shadow_name, s->shadow_bytes);
    struct op *op = op_new(s, OP_INIT, c, msgid);
    if (op == NULL) {
        registry_unlink(r, s);
        session_free(s);
        return;
    }
    op_init(op)->compact = req->has_compact && req->compact;
    op_enqueue(op);
    return;

err_unmap:
    shm_unmap(&seg);
err_free:
    session_free(s);
}

/* "init, fit_start, ...": the events a request may name, for the reply
 * that refuses another. */
static void event_names_list(char *buf, size_t len)
{
    size_t at = 0;

    buf[0] = '\0';
    for (int i = 0; i < NAMES_EVENT_SWAP_EMA && at < len; i++) {
        int n = snprintf(buf + at, len - at, "%s%s", i > 0 ? ", " : "",
                         names_event((enum names_event)i));
        if (n < 0)
            break;
        at += (size_t)n;
    }
}

void session_event(struct registry *r, struct peer *c, uint32_t msgid,
                   const struct msg_event *req)
{
    struct session *s;
    struct op *op;
    enum ema_event ev;
    char err[256];

    if (names_event_lookup(req->event.ptr, req->event.len, &ev) < 0) {
        char known[128];
        event_names_list(known, sizeof(known));
        peer_fail(c, msgid, MSG_E_BADARG, "event: event: \"%.*s\" is not one of %s",
                  (int)(req->event.len > 32 ? 32 : req->event.len), req->event.ptr, known);
        return;
    }
    struct ema_clock clock = {
        .batch = req->time.batch,
        .epoch = req->time.epoch,
        .duration = req->time.duration,
        .has_duration = req->time.has_duration,
        .has_samples = req->time.has_samples,
        .samples = req->time.samples,
        .has_tokens = req->time.has_tokens,
        .tokens = req->time.tokens,
        .has_seconds = req->time.has_seconds,
        .seconds = req->time.seconds,
    };
    if (ema_clock_check(&clock, err, sizeof(err)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "event: %s", err);
        return;
    }
    if (req->has_seq && req->seq == 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "event: seq: request numbers start at 1");
        return;
    }
    if ((s = registry_lookup(r, c, msgid, "event", req->session, true)) == NULL)
        return;
    if (ema_clock_check_start(&s->cfg, ev, &clock, err, sizeof(err)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "event: %s", err);
        return;
    }
    for (unsigned i = 0; i < s->nprof; i++) {
        if (s->prof[i].kind == PROFILE_COMPOSER &&
            ema_clock_check_start(&s->prof[i].cfg, ev, &clock, err, sizeof(err)) < 0) {
            peer_fail(c, msgid, MSG_E_BADARG, "event: profile %s: %s", s->prof[i].name, err);
            return;
        }
    }
    if ((op = op_new(s, OP_EVENT, c, msgid)) == NULL)
        return;
    struct op_event *e = op_event(op);
    e->ev = ev;
    e->has_clock = true;
    e->clock = clock;
    /* A replica's requests are not numbered in the session's record, which is the leader's:
     * they change no counter a replay could apply twice. */
    op->rep = replica_of(s, c);
    e->has_seq = req->has_seq && op->rep == NULL;
    e->seq = req->seq;
    op_enqueue(op);
}

void session_swap(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_swap *req)
{
    struct session *s;
    struct op *op;
    enum ema_event ev;

    if (names_swap_lookup(req->to.ptr, req->to.len, &ev) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "swap: to: must be \"ema\" or \"train\"");
        return;
    }
    if (req->has_seq && req->seq == 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "swap: seq: request numbers start at 1");
        return;
    }
    if (req->has_profile && ev != EMA_EVENT_SWAP_EMA) {
        peer_fail(c, msgid, MSG_E_BADARG, "swap: profile: only with to \"ema\"");
        return;
    }
    if ((s = registry_lookup(r, c, msgid, "swap", req->session, true)) == NULL)
        return;
    unsigned prof = s->eval;
    if (req->has_profile) {
        int at = s->nprof > 0 ? profile_find(s->prof, s->nprof, req->profile)
                              : msg_str_eq(req->profile, PROFILE_DEFAULT_NAME) ? 0 : -1;
        if (at < 0) {
            peer_fail(c, msgid, MSG_E_BADARG, "swap: profile: session %s has no profile "
                      "\"%.*s\"", s->name, (int)(req->profile.len > 40 ? 40 : req->profile.len),
                      req->profile.ptr);
            return;
        }
        prof = (unsigned)at;
    }
    if ((op = op_new(s, OP_EVENT, c, msgid)) == NULL)
        return;
    struct op_event *e = op_event(op);
    e->prof = prof;
    e->ev = ev;
    op->rep = replica_of(s, c);
    e->has_seq = req->has_seq && op->rep == NULL;
    e->seq = req->seq;
    op_enqueue(op);
}

static void queue_file(struct registry *r, struct peer *c, uint32_t msgid,
                       const struct msg_file *req, bool load)
{
    const char *method = load ? "load" : "save";
    struct session *s;
    struct op *op;

    if ((s = registry_lookup(r, c, msgid, method, req->session, false)) == NULL)
        return;
    /* Loading replaces the shadow under its owner's feet: only the owner may,
     * or anyone the session is visible to once it is detached. */
    if (load && s->owner != NULL && s->owner != c) {
        peer_fail(c, msgid, MSG_E_PERM, "load: session %s is owned by another connection "
                    "(pid %ld)", s->name, (long)s->owner_pid);
        return;
    }
    if ((op = op_new(s, load ? OP_LOAD : OP_SAVE, c, msgid)) == NULL)
        return;
    char why[160];
    if ((!load && (req->has_profile || req->has_profile_state)) ||
        (load && loadprof_args(s, req, op_file(op), why, sizeof(why)) < 0)) {
        peer_fail(c, msgid, MSG_E_BADARG, "%s: %s", method,
                  load ? why : "profile: only load takes one");
        op_free(op);
        return;
    }
    if (req->has_name) {
        if (!store_name_valid(req->name.ptr, req->name.len)) {
            peer_fail(c, msgid, MSG_E_BADARG, "%s: name: must be 1 to 128 characters of "
                        "[A-Za-z0-9._%%-], not starting with '.'", method);
            op_free(op);
            return;
        }
        memcpy(op_file(op)->file, req->name.ptr, req->name.len);
    } else if (store_default_name(s->name, strlen(s->name), op_file(op)->file,
                                  sizeof(op_file(op)->file)) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "%s: session %s needs an explicit file name",
                    method, s->name);
        op_free(op);
        return;
    }
    op_enqueue(op);
}

void session_save(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_file *req)
{
    queue_file(r, c, msgid, req, false);
}

void session_load(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_file *req)
{
    queue_file(r, c, msgid, req, true);
}

void session_close(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_close *req)
{
    struct session *s;
    struct op *op;

    if ((s = registry_lookup(r, c, msgid, "close", req->session, true)) == NULL)
        return;
    /* A replica's close, with keep or not, detaches that replica only: the shadow is the
     * others' too. */
    struct replica *rep = replica_of(s, c);
    if (rep != NULL) {
        struct msg_empty empty = {0};
        replica_gone(s, rep);
        peer_reply(c, msgid, &msg_empty_desc, &empty);
        return;
    }
    if ((op = op_new(s, OP_CLOSE, c, msgid)) == NULL)
        return;
    op_close(op)->keep = req->has_keep && req->keep;
    s->closing = !op_close(op)->keep;
    /* From now on the session is no longer this connection's: a later event
     * gets PERM and a later drop finds it detached, in arrival order. */
    s->owner = NULL;
    op_enqueue(op);
}

void session_drop(struct registry *r, struct peer *c, uint32_t msgid, const struct msg_drop *req)
{
    struct session *s;
    struct op *op;

    if ((s = registry_lookup(r, c, msgid, "drop", req->session, false)) == NULL)
        return;
    if (s->closing) {
        peer_fail(c, msgid, MSG_E_NOSESSION, "drop: session %s is being closed", s->name);
        return;
    }
    if (s->owner != NULL) {
        peer_fail(c, msgid, MSG_E_STATE, "drop: session %s is attached to pid %ld; only a "
                    "detached session can be dropped", s->name, (long)s->owner_pid);
        return;
    }
    if ((op = op_new(s, OP_DROP, c, msgid)) == NULL)
        return;
    s->closing = true;
    op_enqueue(op);
}

void session_snapshot(struct registry *r, struct peer *c, uint32_t msgid,
                      const struct msg_snapshot *req)
{
    struct session *s;
    struct op *op;

    enum dtype dt = DTYPE_F32;

    /* export and dtype (an extension of snapshot) are checked before the session is looked up:
     * a malformed request is BADARG whatever the session. */
    if (req->has_export && !profile_name_valid(req->export.ptr, req->export.len)) {
        peer_fail(c, msgid, MSG_E_BADARG, "snapshot: export: not a profile name");
        return;
    }
    if (req->has_dtype && !req->has_export) {
        peer_fail(c, msgid, MSG_E_BADARG, "snapshot: dtype: only with export (the snapshots "
                  "of the power profiles are in the session's snapshot_dtype)");
        return;
    }
    if (req->has_dtype && snap_dtype_parse(req->dtype, &dt) < 0) {
        peer_fail(c, msgid, MSG_E_BADARG, "snapshot: dtype: \"%.*s\" is not \"f32\", \"bf16\" "
                  "or \"f16\"", (int)(req->dtype.len > 32 ? 32 : req->dtype.len), req->dtype.ptr);
        return;
    }
    if ((s = registry_lookup(r, c, msgid, "snapshot", req->session, false)) == NULL)
        return;
    if ((op = op_new(s, OP_SNAPSHOT, c, msgid)) == NULL)
        return;
    if (req->has_export) {
        struct op_snapshot *o = op_snapshot(op);
        o->export = true;
        memcpy(o->profile, req->export.ptr, req->export.len);
        o->profile[req->export.len] = '\0';
        o->dtype = dt;
    }
    op_enqueue(op);
}

/* The files are listed from the directory, not the session: they outlive it (post-hoc EMA is
 * computed after training), so a closed session's snapshots are listed too. */
void session_snapshots(struct registry *r, struct peer *c, uint32_t msgid,
                       const struct msg_snapshot *req)
{
    char name[NAMES_SESSION_MAX + 1], err[512];
    struct msg_snapshots_reply rep = {NULL, 0};
    struct session *s = NULL;
    uid_t uid = c->uid;
    char *pool = NULL;

    /* root names another user's session as status shows it ("<uid>:<name>"). */
    if (registry_resolve(r, c->uid, req->session.ptr, req->session.len, &s) == 0 && s != NULL &&
        session_visible(s, c->uid)) {
        uid = s->uid;
        snprintf(name, sizeof(name), "%s", s->name);
    } else if (names_session_valid(req->session.ptr, req->session.len)) {
        memcpy(name, req->session.ptr, req->session.len);
        name[req->session.len] = '\0';
    } else {
        peer_fail(c, msgid, MSG_E_BADARG, "snapshots: session: not a valid session name");
        return;
    }
    int rc = snap_list(r->ctx->opts->state_dir, uid, name, &rep.snapshots, &rep.nsnapshots,
                       &pool, err, sizeof(err));
    if (rc < 0)
        peer_fail(c, msgid, rc == -ENOMEM ? MSG_E_INTERNAL : MSG_E_IO, "snapshots: %s", err);
    else
        peer_reply(c, msgid, &msg_snapshots_reply_desc, &rep);
    free(rep.snapshots);
    free(pool);
}
