/*
 * registry.c - the sessions of every uid: names per uid and root's ways to
 * name others', lookup for the handlers, per-uid usage, the status report,
 * and waiting for every operation to end at a stop.
 */
#include "session_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int registry_init(struct registry *r, struct emad *ctx)
{
    memset(r, 0, sizeof(*r));
    r->ctx = ctx;
    r->kops = kernel_ops_best();
    r->mops = kernel_multi_ops_best();
    r->home = 1469598103934665603ull; /* FNV-1a of the state directory */
    for (const char *p = ctx->opts->state_dir; *p != '\0'; p++)
        r->home = (r->home ^ (unsigned char)*p) * 1099511628211ull;
    if (snprintf(r->live_dir, sizeof(r->live_dir), "%s/live", ctx->opts->state_dir) >=
        (int)sizeof(r->live_dir))
        r->live_dir[0] = '\0';
    return 0;
}

static bool named(const struct session *s, const char *name, size_t len)
{
    return strlen(s->name) == len && memcmp(s->name, name, len) == 0;
}

/* Names are per uid: the same name for two users is two sessions. */
struct session *registry_find(struct registry *r, uid_t uid, const char *name, size_t len)
{
    for (struct session *s = r->head; s != NULL; s = s->next)
        if (s->uid == uid && named(s, name, len))
            return s;
    return NULL;
}

/*
 * The session a peer of uid means by name: its own of that name. Root may
 * name another user's too: its own first, else the only session of that
 * name, else "<uid>:<name>" (how status shows other users' sessions to
 * root). 0, -ENOENT, or -EEXIST when root's name fits several users'.
 */
int registry_resolve(struct registry *r, uid_t uid, const char *name, size_t len,
            struct session **out)
{
    struct session *only = NULL;
    unsigned n = 0;
    uint64_t owner = 0;
    size_t i = 0;

    if ((*out = registry_find(r, uid, name, len)) != NULL)
        return 0;
    if (uid != 0)
        return -ENOENT;
    for (struct session *s = r->head; s != NULL; s = s->next)
        if (named(s, name, len)) {
            only = s;
            n++;
        }
    if (n > 1)
        return -EEXIST;
    if ((*out = only) != NULL)
        return 0;
    while (i < len && name[i] >= '0' && name[i] <= '9' && owner <= UINT32_MAX)
        owner = owner * 10 + (uint64_t)(name[i++] - '0');
    if (i == 0 || i + 1 >= len || name[i] != ':' || owner > UINT32_MAX)
        return -ENOENT;
    *out = registry_find(r, (uid_t)owner, name + i + 1, len - i - 1);
    return *out != NULL ? 0 : -ENOENT;
}

void registry_usage(const struct registry *r, uid_t uid, struct usage *u)
{
    memset(u, 0, sizeof(*u));
    for (const struct session *s = r->head; s != NULL; s = s->next) {
        if (s->uid != uid)
            continue;
        u->sessions++;
        u->tensors += s->ntensors;
        u->shadow_bytes += shadow_object_bytes(s);
    }
}

void registry_unlink(struct registry *r, struct session *s)
{
    for (struct session **pp = &r->head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            r->count--;
            s->removed = true;
            return;
        }
    }
}

void registry_insert(struct registry *r, struct session *s)
{
    s->next = r->head;
    r->head = s;
    r->count++;
}

void registry_free(struct registry *r)
{
    while (r->head != NULL) {
        struct session *s = r->head;
        if (s->kept || !s->ready) {
            journal_remove(s);
        } else {
            /* Not in a state file (the save failed): leave its journal and
             * shadow for the next emad to take back, as after a crash. */
            log_warn(reg_log(r), "session %s: shadow %s and its journal left in place for the "
                     "next start", s->name, s->shadow_name);
            s->shadow_name[0] = '\0';
        }
        registry_unlink(r, s);
        session_free(s);
    }
}

void registry_check_drained(struct registry *r)
{
    if (r->drained != NULL && pool_in_flight(r->ctx->pool) == 0 && r->snap_in_flight == 0) {
        bool idle = true;
        for (struct session *s = r->head; s != NULL && idle; s = s->next)
            idle = s->q_head == NULL;
        if (idle) {
            void (*cb)(struct registry *) = r->drained;
            r->drained = NULL;
            cb(r);
        }
    }
}

void registry_drain(struct registry *r, void (*cb)(struct registry *r))
{
    r->drained = cb;
    registry_check_drained(r);
}

void registry_peer_closed(struct registry *r, struct peer *c)
{
    for (struct session *s = r->head; s != NULL; s = s->next) {
        struct replica *rep;
        while ((rep = replica_of(s, c)) != NULL)
            replica_gone(s, rep);
        if (s->owner != c)
            continue;
        s->owner = NULL;
        /* Replicas go on: the first still attached leads (now, or after the running op). */
        if (replica_count(s) > 0) {
            log_info(reg_log(r), "session %s: leader (pid %ld) disconnected; its replicas go on",
                     s->name, (long)s->owner_pid);
            replica_settle(s);
            continue;
        }
        log_info(reg_log(r), "session %s: owner (pid %ld) disconnected; detached, shadow kept",
                 s->name, (long)s->owner_pid);
        /* The trainer's segment is no longer ours to read once nothing runs. */
        if (s->q_head == NULL)
            shm_unmap(&s->seg);
    }
}

/* Where the file system has no ACLs, shadows are given to their trainers,
 * which can then resize them: say so once. */
void registry_share_note(struct registry *r, enum shm_share share)
{
    if (share != SHM_SHARE_CHOWN || r->share_warned)
        return;
    r->share_warned = true;
    log_warn(reg_log(r), "/dev/shm refuses POSIX ACLs: shadows are given to their trainers' "
             "uids (mode 0400), so a trainer can resize its own shadow and fail its session; "
             "mount /dev/shm with ACL support (tmpfs has it) to keep shadows emad's");
}

bool session_visible(const struct session *s, uid_t uid)
{
    return uid == 0 || s->uid == uid;
}

static void session_fill_health(const struct session *s, bool *has, struct msg_health *h);

void session_fill_state(const struct session *s, uid_t viewer, struct msg_session_state *o)
{
    memset(o, 0, sizeof(*o));
    /* Root sees other users' sessions as "<uid>:<name>", the name it may
     * use for them (names are per uid). */
    o->session = msg_str_c(viewer != s->uid ? s->qualified : s->name);
    o->attached = s->owner != NULL;
    o->has_owner_pid = s->owner != NULL;
    o->owner_pid = s->owner_pid;
    o->tensors = s->ntensors;
    o->params_bytes = s->params_bytes;
    o->shadow_bytes = s->shadow_bytes;
    o->smoothing = s->cfg.smoothing;
    o->has_half_life = s->cfg.has_half_life;
    o->half_life = msg_str_c(s->half_life);
    o->update_interval = msg_str_c(s->update_interval);
    o->ema_start = msg_str_c(s->ema_start);
    o->has_snapshot_failures = s->snap.every > 0 || s->snap_failures > 0;
    o->snapshot_failures = s->snap_failures;
    o->has_snapshot_error = s->snap_error[0] != '\0';
    o->snapshot_error = msg_str_c(s->snap_error);
    o->started = s->st.started;
    o->active = s->st.active;
    o->updates = s->st.updates;
    o->swaps = s->st.swaps;
    o->has_last_time = s->st.has_last_time;
    o->last_time.batch = s->st.last_time.batch;
    o->last_time.epoch = s->st.last_time.epoch;
    o->last_time.has_duration = s->st.last_time.has_duration;
    o->last_time.duration = s->st.last_time.duration;
    o->last_update_seconds = s->last_update_seconds;
    o->shm = msg_str_c(s->shm_name);
    o->shadow_shm = msg_str_c(s->shadow_name);
    o->has_interrupted = true;
    o->interrupted = s->interrupted;
    o->has_seq = true;
    o->seq = s->last_seq;
    session_fill_health(s, &o->has_health, &o->health);
    if (s->nprof > 0) {
        o->has_profiles = true;
        o->profiles = o->profile_buf;
        o->nprofiles = s->nprof;
        for (unsigned i = 0; i < s->nprof; i++) {
            profile_state(&s->prof[i], (uint64_t)i * s->area_bytes, &o->profile_buf[i]);
            o->profile_buf[i].has_health = s->health.enabled;
            health_profile_state(&s->health, i, &o->profile_buf[i].health);
        }
        o->has_eval_profile = true;
        o->eval_profile = msg_str_c(s->prof[s->eval].name);
    }
    session_fill_group(s, &o->has_group, &o->group);
    if (s->group_replicas > 1) {
        o->has_replicas_attached = o->has_diverged = true;
        o->replicas_attached = replica_count(s);
        o->diverged = s->diverged;
        o->has_last_divergence = s->divergence[0] != '\0';
        o->last_divergence = msg_str_c(s->divergence);
        o->has_replica_ranks = true;
        o->replica_ranks = o->replica_rank_buf;
        if (s->owner != NULL)
            o->replica_rank_buf[o->nreplica_ranks++] = s->group_rank;
        for (uint64_t i = 0; s->rep != NULL && i + 1 < s->group_replicas; i++)
            if (s->rep[i].owner != NULL && o->nreplica_ranks < MSG_REPLICAS_MAX)
                o->replica_rank_buf[o->nreplica_ranks++] = s->rep[i].rank;
    }
}

/* The health map of status (docs/protocol.md "status"). h's alarms point into h itself. */
static void session_fill_health(const struct session *s, bool *has, struct msg_health *h)
{
    const struct health *hs = &s->health;
    const char *alarms[HEALTH_ALARMS_MAX];

    *has = true;
    h->enabled = hs->enabled;
    /* What is done, not what was asked: health false runs the plain kernels, which apply. */
    h->on_nonfinite = msg_str_c(hs->enabled && hs->skip_nonfinite ? "skip" : "apply");
    h->updates_checked = hs->own.checked_updates;
    h->nonfinite_total = hs->nonfinite_total;
    h->nonfinite_updates = hs->nonfinite_updates;
    h->has_last_nonfinite = hs->has_last_nonfinite && hs->last_nonfinite_tensor < s->ntensors;
    if (h->has_last_nonfinite) {
        h->last_nonfinite.update = hs->last_nonfinite_update;
        h->last_nonfinite.count = hs->last_nonfinite_count;
        h->last_nonfinite.tensor = msg_str_c(s->tensors[hs->last_nonfinite_tensor].name);
    }
    h->has_distance = hs->own.has_distance;
    h->distance = hs->own.distance;
    h->noop_updates = hs->own.noop_updates;
    h->last_update_noop = hs->own.last_noop;
    h->has_interval = hs->interval > 0;
    h->interval = hs->interval;
    h->stalled = hs->stalled;
    h->nalarms = health_alarms(hs, alarms);
    for (size_t i = 0; i < h->nalarms; i++)
        h->alarm_buf[i] = msg_str_c(alarms[i]);
    h->alarms = h->alarm_buf;
}

void registry_health_tick(struct registry *r, uint64_t now_ns)
{
    double factor = (double)r->ctx->opts->stall_factor;

    for (struct session *s = r->head; s != NULL; s = s->next) {
        /* Working on a request is not stalling: a long update or save ends with a reply. */
        if (s->busy || !health_check_stall(&s->health, s->owner != NULL, now_ns, factor))
            continue;
        log_warn(reg_log(r), "session %s: stalled: no update for %.1f s while its trainer "
                 "(pid %ld) is attached; its usual interval is %.3f s (--stall-factor %g)",
                 s->name, (double)(now_ns - s->health.last_update_ns) / 1e9,
                 (long)s->owner_pid, s->health.interval, factor);
    }
}

/* Whether status lists s for peer uid: every visible session, or the one
 * named (all of that name, for root's ambiguous name). */
static bool shown(const struct session *s, uid_t uid, const struct msg_status *req,
                  const struct session *one, bool all_named)
{
    if (!session_visible(s, uid))
        return false;
    if (!req->has_session)
        return true;
    return all_named ? named(s, req->session.ptr, req->session.len) : s == one;
}

int registry_states(struct registry *r, uid_t uid, const struct msg_status *req,
                    struct msg_session_state **out, size_t *n)
{
    size_t count = 0, i = 0;

    *out = NULL;
    *n = 0;
    /* By name: the one the peer means; for root, every user's session of
     * an ambiguous name. */
    struct session *one = NULL;
    int rc = req->has_session ? registry_resolve(r, uid, req->session.ptr, req->session.len, &one) : 0;
    if (rc == -ENOENT)
        return -ENOENT;
    bool all_named = rc == -EEXIST;
    for (struct session *s = r->head; s != NULL; s = s->next)
        count += shown(s, uid, req, one, all_named);
    if (count == 0)
        return 0;
    *out = calloc(count, sizeof(**out));
    if (*out == NULL)
        return -ENOMEM;
    bool tables = req->has_tensors && req->tensors;
    for (struct session *s = r->head; s != NULL; s = s->next) {
        if (!shown(s, uid, req, one, all_named))
            continue;
        session_fill_state(s, uid, &(*out)[i]);
        if (tables && session_fill_table(s, &(*out)[i]) < 0) {
            registry_states_free(*out, i + 1);
            *out = NULL;
            return -ENOMEM;
        }
        i++;
    }
    *n = count;
    return 0;
}

void registry_states_free(struct msg_session_state *st, size_t n)
{
    for (size_t i = 0; st != NULL && i < n; i++)
        if (st[i].has_table)
            msg_table_release(&st[i].table);
    free(st);
}

/* Find a session the peer may use; replies and returns NULL otherwise. */
struct session *registry_lookup(struct registry *r, struct peer *c, uint32_t msgid,
                       const char *method, struct msg_str name, bool owner_only)
{
    struct session *s = NULL;
    int shown = (int)(name.len > NAMES_SESSION_MAX ? NAMES_SESSION_MAX : name.len);

    if (registry_resolve(r, c->uid, name.ptr, name.len, &s) == -EEXIST) {
        peer_fail(c, msgid, MSG_E_BADARG, "%s: sessions of several users are named \"%.*s\": "
                    "name one as <uid>:<name>", method, shown, name.ptr);
        return NULL;
    }
    if (s == NULL || !session_visible(s, c->uid)) {
        peer_fail(c, msgid, MSG_E_NOSESSION, "%s: no session named \"%.*s\"", method, shown,
                    name.ptr);
        return NULL;
    }
    if (owner_only && s->owner != c && replica_of(s, c) == NULL) {
        if (s->owner == NULL)
            peer_fail(c, msgid, MSG_E_PERM,
                        "%s: session %s is detached; register with resume to own it", method,
                        s->name);
        else
            peer_fail(c, msgid, MSG_E_PERM,
                        "%s: session %s is owned by another connection (pid %ld)", method,
                        s->name, (long)s->owner_pid);
        return NULL;
    }
    return s;
}
