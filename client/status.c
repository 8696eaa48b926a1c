/*
 * status.c - the daemon's status and metrics, and the copies of session
 * states out of replies (status and register give them alike).
 */
#include "emaclient_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* What emac_status hands out, and emac_status_free takes back. */
struct status_box {
    struct emac_status pub; /* first: the pointer users hold */
    char *raw;              /* the result map as received */
    size_t raw_len;
    struct arena arena;
    struct emac_health *health; /* per session, beside session_list */
    bool *has_health;           /* ... and whether emad sent it */
    const char **alarms;        /* every session's alarms, back to back */
    struct emac_profile_info **profiles; /* per session (NULL: none) */
    size_t *nprofiles;
    struct emac_group *groups;  /* per session, beside session_list */
    bool *has_group;
};

/* A session's health, its strings into the arena and its alarms from *next on. */
static void copy_health(struct arena *a, struct emac_health *o, const struct msg_health *h,
                        const char ***next)
{
    o->enabled = h->enabled;
    o->on_nonfinite = client_arena_str(a, h->on_nonfinite);
    o->updates_checked = h->updates_checked;
    o->nonfinite_total = h->nonfinite_total;
    o->nonfinite_updates = h->nonfinite_updates;
    o->has_last_nonfinite = h->has_last_nonfinite;
    o->last_nonfinite_update = h->last_nonfinite.update;
    o->last_nonfinite_count = h->last_nonfinite.count;
    o->last_nonfinite_tensor =
        h->has_last_nonfinite ? client_arena_str(a, h->last_nonfinite.tensor) : NULL;
    o->has_distance = h->has_distance;
    o->distance = h->distance;
    o->noop_updates = h->noop_updates;
    o->last_update_noop = h->last_update_noop;
    o->has_interval = h->has_interval;
    o->interval = h->interval;
    o->stalled = h->stalled;
    o->nalarms = h->nalarms;
    o->alarms = *next;
    for (size_t i = 0; i < h->nalarms; i++)
        (*next)[i] = client_arena_str(a, h->alarms[i]);
    *next += h->nalarms;
}

/* ---- strings copied out of replies ---- */

const char *client_arena_str(struct arena *a, struct msg_str s)
{
    char *p;
    if (s.ptr == NULL)
        return NULL;
    if (a->used + s.len + 1 > a->cap)
        return ""; /* cannot happen: arenas are sized from the reply */
    p = a->buf + a->used;
    if (s.len)
        memcpy(p, s.ptr, s.len);
    p[s.len] = '\0';
    a->used += s.len + 1;
    return p;
}

size_t client_session_strings(const struct msg_session_state *s)
{
    size_t n = s->session.len + s->half_life.len + s->update_interval.len + s->ema_start.len +
               s->shm.len + s->shadow_shm.len + 6;
    for (size_t i = 0; s->has_profiles && i < s->nprofiles; i++) {
        const struct msg_profile *c = &s->profiles[i].config;
        n += s->profiles[i].name.len + s->profiles[i].schedule.len + c->schedule.len +
             c->half_life.len + c->ema_start.len + c->update_interval.len + 6;
    }
    return n;
}

/* A profile's settings from a reply (strings into a). */
static void copy_settings(struct arena *a, struct emac_profile *o, const struct msg_profile *c,
                          const char *name)
{
    memset(o, 0, sizeof(*o));
    o->name = name;
    o->schedule = c->has_schedule ? client_arena_str(a, c->schedule) : NULL;
    o->half_life = c->has_half_life ? client_arena_str(a, c->half_life) : NULL;
    o->has_smoothing = c->has_smoothing;
    o->smoothing = c->smoothing;
    o->ema_start = c->has_ema_start ? client_arena_str(a, c->ema_start) : NULL;
    o->update_interval = c->has_update_interval ? client_arena_str(a, c->update_interval) : NULL;
    o->has_decay = c->has_decay;
    o->decay = c->decay;
    o->has_min_decay = c->has_min_decay;
    o->min_decay = c->min_decay;
    o->has_update_after_step = c->has_update_after_step;
    o->update_after_step = c->update_after_step;
    o->has_inv_gamma = c->has_inv_gamma;
    o->inv_gamma = c->inv_gamma;
    o->has_power = c->has_power;
    o->power = c->power;
    o->has_sigma_rel = c->has_sigma_rel;
    o->sigma_rel = c->sigma_rel;
    o->has_gamma = c->has_gamma;
    o->gamma = c->gamma;
}

int client_copy_profiles(struct arena *a, const struct msg_session_state *s,
                         struct emac_profile_info **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!s->has_profiles || s->nprofiles == 0)
        return 0;
    if ((*out = calloc(s->nprofiles, sizeof(**out))) == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < s->nprofiles; i++) {
        const struct msg_profile_state *p = &s->profiles[i];
        struct emac_profile_info *o = &(*out)[i];
        o->name = client_arena_str(a, p->name);
        o->schedule = client_arena_str(a, p->schedule);
        o->eval = s->has_eval_profile && p->name.len == s->eval_profile.len &&
                  memcmp(p->name.ptr, s->eval_profile.ptr, p->name.len) == 0;
        o->started = p->started;
        o->updates = p->updates;
        o->has_last_batch = p->has_last_batch;
        o->last_batch = p->last_batch;
        o->has_last_decay = p->has_last_decay;
        o->last_decay = p->last_decay;
        o->shadow_offset = p->shadow_offset;
        copy_settings(a, &o->config, &p->config, o->name);
    }
    *n = s->nprofiles;
    return 0;
}

void client_copy_session(struct arena *a, struct emac_session_info *o,
                         const struct msg_session_state *s)
{
    o->session = client_arena_str(a, s->session);
    o->attached = s->attached;
    o->owner_pid = s->has_owner_pid ? (long)s->owner_pid : -1;
    o->tensors = s->tensors;
    o->params_bytes = s->params_bytes;
    o->shadow_bytes = s->shadow_bytes;
    o->smoothing = s->smoothing;
    o->half_life = s->has_half_life ? client_arena_str(a, s->half_life) : NULL;
    o->update_interval = client_arena_str(a, s->update_interval);
    o->ema_start = client_arena_str(a, s->ema_start);
    o->started = s->started;
    o->active = s->active;
    o->updates = s->updates;
    o->swaps = s->swaps;
    o->has_last_time = s->has_last_time;
    o->last_batch = s->last_time.batch;
    o->last_epoch = s->last_time.epoch;
    o->has_last_duration = s->last_time.has_duration;
    o->last_duration = s->last_time.duration;
    o->last_update_seconds = s->last_update_seconds;
    o->shm = client_arena_str(a, s->shm);
    o->shadow_shm = client_arena_str(a, s->shadow_shm);
    o->interrupted = s->has_interrupted && s->interrupted;
    o->seq = s->has_seq ? s->seq : 0;
}
/* ---- status ---- */

int emac_status(emac_client *c, const char *session, struct emac_status **out,
                struct emac_error *err)
{
    struct msg_status req;
    struct msg_status_reply rep;
    struct status_box *b;
    int rc;

    if (c == NULL || out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_status: NULL argument");
    *out = NULL;
    memset(&req, 0, sizeof(req));
    if (session != NULL) {
        req.has_session = true;
        req.session = msg_str_c(session);
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    rc = client_call(c, "status", &msg_status_desc, &req, &msg_status_reply_desc, &rep, &b->raw,
                     &b->raw_len, true, LOSS_RECONNECTS, "status", err);
    if (rc < 0) {
        free(b);
        return rc;
    }
    /* Every string of the reply fits in the reply's own size, plus a NUL
     * for each, which takes at least one byte of msgpack header. */
    b->arena.cap = 2 * b->raw_len + 16;
    b->arena.buf = malloc(b->arena.cap);
    b->pub.session_list = rep.nsessions ? calloc(rep.nsessions, sizeof(*b->pub.session_list))
                                        : NULL;
    size_t nalarms = 0;
    for (size_t i = 0; i < rep.nsessions; i++)
        nalarms += rep.sessions[i].has_health ? rep.sessions[i].health.nalarms : 0;
    b->health = calloc(rep.nsessions ? rep.nsessions : 1, sizeof(*b->health));
    b->has_health = calloc(rep.nsessions ? rep.nsessions : 1, sizeof(*b->has_health));
    b->alarms = calloc(nalarms ? nalarms : 1, sizeof(*b->alarms));
    b->profiles = calloc(rep.nsessions ? rep.nsessions : 1, sizeof(*b->profiles));
    b->nprofiles = calloc(rep.nsessions ? rep.nsessions : 1, sizeof(*b->nprofiles));
    b->groups = calloc(rep.nsessions ? rep.nsessions : 1, sizeof(*b->groups));
    b->has_group = calloc(rep.nsessions ? rep.nsessions : 1, sizeof(*b->has_group));
    if (b->arena.buf == NULL || (rep.nsessions && b->pub.session_list == NULL) ||
        b->groups == NULL || b->has_group == NULL ||
        b->health == NULL || b->has_health == NULL || b->alarms == NULL ||
        b->profiles == NULL || b->nprofiles == NULL) {
        msg_free(&msg_status_reply_desc, &rep);
        emac_status_free(&b->pub);
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    }
    b->pub.server = client_arena_str(&b->arena, rep.server.server);
    b->pub.version = client_arena_str(&b->arena, rep.server.version);
    b->pub.proto = (unsigned)rep.server.proto;
    b->pub.pid = (long)rep.server.pid;
    b->pub.uptime_seconds = rep.server.uptime_seconds;
    b->pub.workers = (unsigned)rep.server.workers;
    b->pub.connections = (unsigned)rep.server.connections;
    b->pub.sessions = (unsigned)rep.server.sessions;
    b->pub.max_connections = (unsigned)rep.server.max_connections;
    b->pub.max_sessions = (unsigned)rep.server.max_sessions;
    b->pub.max_message = rep.server.max_message;
    b->pub.socket = client_arena_str(&b->arena, rep.server.socket);
    b->pub.state_dir = client_arena_str(&b->arena, rep.server.state_dir);
    b->pub.nsessions = rep.nsessions;
    const char **next = b->alarms;
    for (size_t i = 0; i < rep.nsessions; i++) {
        client_copy_session(&b->arena, &b->pub.session_list[i], &rep.sessions[i]);
        b->has_health[i] = rep.sessions[i].has_health;
        if (b->has_health[i])
            copy_health(&b->arena, &b->health[i], &rep.sessions[i].health, &next);
        if ((b->has_group[i] = rep.sessions[i].has_group)) {
            const struct msg_group *g = &rep.sessions[i].group;
            b->groups[i] = (struct emac_group){client_arena_str(&b->arena, g->job), g->rank,
                                               g->world, g->has_replicas ? g->replicas : 1};
        }
        if (client_copy_profiles(&b->arena, &rep.sessions[i], &b->profiles[i],
                                 &b->nprofiles[i]) < 0) {
            msg_free(&msg_status_reply_desc, &rep);
            emac_status_free(&b->pub);
            return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        }
    }
    msg_free(&msg_status_reply_desc, &rep);
    *out = &b->pub;
    return 0;
}

void emac_status_free(struct emac_status *st)
{
    struct status_box *b = (struct status_box *)st;

    if (b == NULL)
        return;
    for (size_t i = 0; b->profiles != NULL && i < b->pub.nsessions; i++)
        free(b->profiles[i]);
    free(b->profiles);
    free(b->nprofiles);
    free(b->groups);
    free(b->has_group);
    free(b->pub.session_list);
    free(b->health);
    free(b->has_health);
    free(b->alarms);
    free(b->arena.buf);
    free(b->raw);
    free(b);
}

size_t emac_status_profiles(const struct emac_status *st, size_t i,
                            const struct emac_profile_info **out)
{
    const struct status_box *b = (const struct status_box *)st;

    if (out != NULL)
        *out = NULL;
    if (b == NULL || out == NULL || i >= b->pub.nsessions)
        return 0;
    *out = b->profiles[i];
    return b->nprofiles[i];
}

void emac_status_raw(const struct emac_status *st, const void **data, size_t *len)
{
    const struct status_box *b = (const struct status_box *)st;
    *data = b->raw;
    *len = b->raw_len;
}

/* ---- metrics ---- */

int emac_metrics(emac_client *c, char **text, struct emac_error *err)
{
    struct msg_empty req = {0};
    struct msg_metrics_reply rep;
    int rc;

    if (c == NULL || text == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_metrics: NULL argument");
    *text = NULL;
    rc = client_call(c, "metrics", &msg_empty_desc, &req, &msg_metrics_reply_desc, &rep, NULL, NULL,
                     true, LOSS_RECONNECTS, "metrics", err);
    if (rc < 0)
        return rc;
    /* The reply's strings are views into the connection's buffer. */
    *text = malloc(rep.text.len + 1);
    if (*text == NULL) {
        msg_free(&msg_metrics_reply_desc, &rep);
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    }
    if (rep.text.len > 0)
        memcpy(*text, rep.text.ptr, rep.text.len);
    (*text)[rep.text.len] = '\0';
    msg_free(&msg_metrics_reply_desc, &rep);
    return 0;
}

const struct emac_group *emac_status_group(const struct emac_status *st, size_t i)
{
    const struct status_box *b = (const struct status_box *)st;

    if (b == NULL || i >= b->pub.nsessions || !b->has_group[i])
        return NULL;
    return &b->groups[i];
}

const struct emac_health *emac_status_health(const struct emac_status *st, size_t i)
{
    const struct status_box *b = (const struct status_box *)st;

    if (b == NULL || i >= b->pub.nsessions || !b->has_health[i])
        return NULL;
    return &b->health[i];
}
