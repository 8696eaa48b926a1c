/*
 * session.c - sessions on a client: register (and resume after a
 * reconnect, through the hooks the connection calls), the shadow mapped
 * read-only, events, swaps, close; save, load and drop by name.
 */
#include "emaclient_int.h"

#include "names.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The public enum is the wire's list, in the same order. */
_Static_assert(EMAC_ACTION_NONE == (int)NAMES_ACTION_NONE &&
                   EMAC_ACTION_START == (int)NAMES_ACTION_START &&
                   EMAC_ACTION_UPDATE == (int)NAMES_ACTION_UPDATE &&
                   EMAC_ACTION_START_UPDATE == (int)NAMES_ACTION_START_UPDATE &&
                   EMAC_ACTION_SWAP_IN == (int)NAMES_ACTION_SWAP_IN &&
                   EMAC_ACTION_SWAP_OUT == (int)NAMES_ACTION_SWAP_OUT,
               "enum emac_action follows enum names_action");
_Static_assert(EMAC_TENSOR_NAME_MAX == NAMES_TENSOR_MAX, "one limit for tensor names");

static const struct client_hooks session_hooks;

/* Check that s can send a request; what names it for messages. */
static int session_usable(emac_session *s, const char *what, struct emac_error *err)
{
    if (s->closed)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: session \"%s\" was closed", what, s->name);
    if (s->c == NULL)
        return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
                       "%s: the client of session \"%s\" was disconnected", what, s->name);
    if (s->gone)
        return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED, "%s: %s", what, s->gone_why);
    return 0;
}

/* Map the shadow object named in the register reply and point each
 * tensor's view into it, after checking that everything lies inside. */
static int session_map_shadow(emac_session *s, const struct msg_register_reply *rep,
                              struct emac_error *err)
{
    char name[256];
    struct stat st;
    int fd;

    if (msg_str_copy(rep->shadow_shm, name, sizeof(name)) < 0)
        return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "register: shadow_shm is not a name");
    s->shadows = calloc(s->seg->n, sizeof(*s->shadows));
    if (s->shadows == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "register: out of memory");
    if (rep->shadow_bytes > 0) {
        fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0)
            return client_set_err(err, -errno, EMAC_E_SYSTEM, "register: cannot open the shadow %s: %s",
                           name, strerror(errno));
        if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < rep->shadow_bytes) {
            close(fd);
            return client_set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: the shadow %s is smaller than shadow_bytes %" PRIu64, name,
                           rep->shadow_bytes);
        }
        s->shadow_map_bytes = rep->shadow_bytes;
        s->shadow_base = mmap(NULL, s->shadow_map_bytes, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (s->shadow_base == MAP_FAILED) {
            s->shadow_base = NULL;
            return client_set_err(err, -errno, EMAC_E_SYSTEM, "register: mmap of the shadow %s: %s",
                           name, strerror(errno));
        }
    }
    for (size_t i = 0; i < s->seg->n; i++) {
        const struct emac_tensor *p = &s->seg->tensors[i];
        struct emac_shadow *o = &s->shadows[i];
        enum dtype dt;
        uint64_t end;
        if (rep->has_shadow_offsets) {
            /* Compact: in our order, by the dtype rule. */
            dt = dtype_shadow(s->seg->meta[i].dt);
            o->offset = rep->shadow_offsets[i];
            goto place;
        }
        const struct msg_shadow_tensor *t = &rep->tensors[i];
        if (!msg_str_eq(t->name, p->name))
            return client_set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: reply's tensors[%zu] is \"%.*s\", expected \"%s\"", i,
                           (int)(t->name.len > 64 ? 64 : t->name.len), t->name.ptr, p->name);
        if (dtype_from_name(t->shadow_dtype.ptr, t->shadow_dtype.len, &dt) < 0 ||
            dt != dtype_shadow(s->seg->meta[i].dt))
            return client_set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: tensor \"%s\": shadow_dtype \"%.*s\" for a %s tensor",
                           p->name, (int)(t->shadow_dtype.len > 16 ? 16 : t->shadow_dtype.len),
                           t->shadow_dtype.ptr, p->dtype);
        o->offset = t->shadow_offset;
place:
        o->name = p->name;
        o->dtype = dtype_name(dt);
        o->elem_size = dtype_size(dt);
        o->numel = p->numel;
        if (__builtin_mul_overflow(o->numel, (uint64_t)o->elem_size, &end) ||
            __builtin_add_overflow(end, o->offset, &end) || end > rep->shadow_bytes)
            return client_set_err(err, -EPROTO, EMAC_E_BADREPLY,
                           "register: tensor \"%s\": shadow at %" PRIu64
                           " ends past shadow_bytes %" PRIu64, p->name, o->offset,
                           rep->shadow_bytes);
        o->data = o->numel ? (const char *)s->shadow_base + o->offset : s->shadow_base;
    }
    return 0;
}

static void session_unlink(emac_session *s)
{
    emac_client *c = s->c;

    if (c == NULL)
        return;
    for (emac_session **p = &c->sessions; *p != NULL; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            break;
        }
    }
    /* Tickets of this session can no longer be claimed: forget them (a
     * reply still to come is then discarded on arrival). */
    for (size_t i = 0; i < c->nouts;) {
        if (c->outs[i].owner == s) {
            uint32_t id = c->outs[i].msgid;
            client_remove_out_at(c, i);
            for (size_t k = 0; k < c->nheld; k++)
                if (c->held[k].msgid == id) {
                    free(client_take_held(c, k, NULL));
                    break;
                }
        } else {
            i++;
        }
    }
    s->c = NULL;
}

void emac_session_free(emac_session *s)
{
    if (s == NULL)
        return;
    session_unlink(s);
    if (s->shadow_base != NULL)
        munmap(s->shadow_base, s->shadow_map_bytes);
    free(s->shadows);
    free(s->profiles);
    free(s->arena.buf);
    free(s->name);
    free(s);
}

/* Send register for seg's tensors and wait for the reply (*rep: free it
 * with msg_free on success). */
/* The profiles of struct emac_profile, as config.profiles sends them (views, into out). */
static void profiles_msg(const struct emac_profile *in, size_t n, struct msg_profile *out)
{
    for (size_t i = 0; i < n; i++) {
        const struct emac_profile *p = &in[i];
        struct msg_profile *o = &out[i];
        memset(o, 0, sizeof(*o));
        o->name = msg_str_c(p->name);
        o->has_schedule = p->schedule != NULL;
        o->schedule = msg_str_c(p->schedule);
        o->has_half_life = p->half_life != NULL;
        o->half_life = msg_str_c(p->half_life);
        o->has_smoothing = p->has_smoothing;
        o->smoothing = p->smoothing;
        o->has_update_interval = p->update_interval != NULL;
        o->update_interval = msg_str_c(p->update_interval);
        o->has_ema_start = p->ema_start != NULL;
        o->ema_start = msg_str_c(p->ema_start);
        o->has_decay = p->has_decay;
        o->decay = p->decay;
        o->has_min_decay = p->has_min_decay;
        o->min_decay = p->min_decay;
        o->has_update_after_step = p->has_update_after_step;
        o->update_after_step = p->update_after_step;
        o->has_inv_gamma = p->has_inv_gamma;
        o->inv_gamma = p->inv_gamma;
        o->has_power = p->has_power;
        o->power = p->power;
        o->has_sigma_rel = p->has_sigma_rel;
        o->sigma_rel = p->sigma_rel;
        o->has_gamma = p->has_gamma;
        o->gamma = p->gamma;
    }
}

/* What register sends beyond the table: the config's parts, any of them NULL. */
struct reg_config {
    const struct emac_config *cfg;
    const struct emac_health_config *hcfg;
    const struct emac_profile *profiles;
    size_t nprofiles;
    const char *eval_profile;
    const struct emac_snapshot_config *snap;
};

/* The shape columns (docs/protocol.md "Shard sessions") when any tensor has a shape: a tensor
 * without one is sent flat, [numel]; the slice columns when any has a slice, a tensor without
 * one being its own global tensor. 0 or -ENOMEM. */
static int table_dims(struct msg_table *t, const emac_segment *seg)
{
    size_t total = 0;
    bool shaped = false, sliced = false;
    int rc;

    for (size_t i = 0; i < seg->n; i++) {
        shaped |= seg->meta[i].shape != NULL;
        sliced |= seg->meta[i].slice != NULL;
        total += seg->meta[i].shape != NULL ? seg->meta[i].ndim : 1;
    }
    if (!shaped)
        return 0;
    if ((rc = msg_table_init_dims(t, total, sliced)) < 0)
        return rc;
    size_t at = 0;
    for (size_t i = 0; i < seg->n; i++) {
        const struct seg_tensor *m = &seg->meta[i];
        size_t k = m->shape != NULL ? m->ndim : 1;
        t->ndims[i] = k;
        for (size_t d = 0; d < k; d++) {
            uint64_t dim = m->shape != NULL ? m->shape[d] : seg->tensors[i].numel;
            t->shapes[at + d] = dim;
            if (sliced) {
                t->global_shapes[at + d] = m->slice != NULL ? m->slice[d] : dim;
                t->slice_offsets[at + d] = m->slice != NULL ? m->slice[k + d] : 0;
            }
        }
        at += k;
    }
    return 0;
}

static int register_call(emac_client *c, const char *session, const emac_segment *seg,
                         const struct reg_config *rc_in, bool resume, bool existing,
                         enum client_loss loss, struct msg_register_reply *rep,
                         const char *what, struct emac_error *err)
{
    const struct emac_config *cfg = rc_in != NULL ? rc_in->cfg : NULL;
    const struct emac_health_config *hcfg = rc_in != NULL ? rc_in->hcfg : NULL;
    struct msg_profile prof[EMAC_PROFILES_MAX];
    struct msg_register req;
    int rc;

    memset(&req, 0, sizeof(req));
    /* The table in columns (an extension emad understands): no map and no
     * keys per tensor. Shapes stay here: emac_segment_create checked them. */
    if ((rc = msg_table_init(&req.table, seg->n)) < 0)
        return client_set_err(err, rc, EMAC_E_SYSTEM, "%s: out of memory", what);
    req.has_table = true;
    req.session = msg_str_c(session);
    req.shm = msg_str_c(seg->name);
    for (size_t i = 0; i < seg->n; i++)
        msg_table_set(&req.table, i, seg->tensors[i].name, seg->tensors[i].dtype,
                      seg->tensors[i].offset, seg->tensors[i].numel);
    if ((rc = table_dims(&req.table, seg)) < 0) {
        msg_table_release(&req.table);
        return client_set_err(err, rc, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    req.has_group = seg->has_group;
    req.group = (struct msg_group){msg_str_c(seg->group_job), seg->group_rank, seg->group_world,
                                   seg->group_replicas > 1, seg->group_replicas};
    if (cfg != NULL) {
        req.has_config = true;
        req.config.has_half_life = cfg->half_life != NULL;
        req.config.half_life = msg_str_c(cfg->half_life);
        req.config.has_smoothing = cfg->has_smoothing;
        req.config.smoothing = cfg->smoothing;
        req.config.has_update_interval = cfg->update_interval != NULL;
        req.config.update_interval = msg_str_c(cfg->update_interval);
        req.config.has_ema_start = cfg->ema_start != NULL;
        req.config.ema_start = msg_str_c(cfg->ema_start);
    }
    if (hcfg != NULL) {
        req.has_config = true;
        req.config.has_on_nonfinite = hcfg->on_nonfinite != NULL;
        req.config.on_nonfinite = msg_str_c(hcfg->on_nonfinite);
        req.config.has_health = hcfg->has_health;
        req.config.health = hcfg->health;
    }
    if (rc_in != NULL && rc_in->profiles != NULL) {
        req.has_config = true;
        profiles_msg(rc_in->profiles, rc_in->nprofiles, prof);
        req.config.has_profiles = true;
        req.config.profiles = prof;
        req.config.nprofiles = rc_in->nprofiles;
        req.config.has_eval_profile = rc_in->eval_profile != NULL;
        req.config.eval_profile = msg_str_c(rc_in->eval_profile);
    }
    if (rc_in != NULL && rc_in->snap != NULL) {
        const struct emac_snapshot_config *sn = rc_in->snap;
        req.has_config = true;
        req.config.has_snapshot_every = sn->every != NULL;
        req.config.snapshot_every = msg_str_c(sn->every);
        req.config.has_snapshot_dtype = sn->dtype != NULL;
        req.config.snapshot_dtype = msg_str_c(sn->dtype);
        req.config.has_snapshot_keep = sn->keep > 0;
        req.config.snapshot_keep = sn->keep;
    }
    req.has_resume = resume;
    req.resume = resume;
    /* Reconnecting: a session emad no longer has must not come back empty. */
    req.has_existing = existing;
    req.existing = existing;
    req.has_compact = true; /* offsets only: the names are ours, in order */
    req.compact = true;
    rc = client_call(c, "register", &msg_register_desc, &req, &msg_register_reply_desc, rep, NULL,
                     NULL, false, loss, what, err);
    if (rc == 0) {
        size_t got = rep->has_shadow_offsets ? rep->nshadow_offsets : rep->ntensors;
        if (got != seg->n) {
            rc = client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: reply lists %zu tensors, sent %zu",
                         what, got, seg->n);
            msg_free(&msg_register_reply_desc, rep);
        }
    }
    msg_table_release(&req.table);
    return rc;
}

/* Keep the register reply's state in s (its strings in s's arena). */
static int session_take_state(emac_session *s, const struct msg_register_reply *rep,
                              const char *what, struct emac_error *err)
{
    struct arena a = {NULL, 0, client_session_strings(&rep->state)};

    if ((a.buf = malloc(a.cap)) == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    free(s->arena.buf);
    s->arena = a;
    client_copy_session(&s->arena, &s->state, &rep->state);
    free(s->profiles);
    if (client_copy_profiles(&s->arena, &rep->state, &s->profiles, &s->nprofiles) < 0)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    if (s->state.seq >= s->next_seq)
        s->next_seq = s->state.seq + 1;
    return 0;
}

int emac_register(emac_client *c, const char *session, emac_segment *seg,
                  const struct emac_config *cfg, bool resume, emac_session **out,
                  struct emac_error *err)
{
    return emac_register_health(c, session, seg, cfg, NULL, resume, out, err);
}

static int register_with(emac_client *c, const char *session, emac_segment *seg,
                         const struct reg_config *rcfg, bool resume, emac_session **out,
                         struct emac_error *err);

int emac_register_health(emac_client *c, const char *session, emac_segment *seg,
                         const struct emac_config *cfg, const struct emac_health_config *hcfg,
                         bool resume, emac_session **out, struct emac_error *err)
{
    struct reg_config rcfg = {cfg, hcfg, NULL, 0, NULL, NULL};
    return register_with(c, session, seg, &rcfg, resume, out, err);
}

int emac_register_profiles(emac_client *c, const char *session, emac_segment *seg,
                           const struct emac_profile *profiles, size_t n,
                           const char *eval_profile, const struct emac_health_config *hcfg,
                           bool resume, emac_session **out, struct emac_error *err)
{
    return emac_register_snapshots(c, session, seg, profiles, n, eval_profile, hcfg, NULL, resume,
                                   out, err);
}

int emac_register_snapshots(emac_client *c, const char *session, emac_segment *seg,
                            const struct emac_profile *profiles, size_t n,
                            const char *eval_profile, const struct emac_health_config *hcfg,
                            const struct emac_snapshot_config *snap, bool resume,
                            emac_session **out, struct emac_error *err)
{
    struct reg_config rcfg = {NULL, hcfg, profiles, n, eval_profile, snap};

    if (profiles == NULL || n == 0 || n > EMAC_PROFILES_MAX)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_register_profiles: 1 to %d "
                              "profiles", EMAC_PROFILES_MAX);
    for (size_t i = 0; i < n; i++)
        if (profiles[i].name == NULL)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_register_profiles: "
                                  "profile %zu has no name", i);
    return register_with(c, session, seg, &rcfg, resume, out, err);
}

size_t emac_session_profiles(const emac_session *s, const struct emac_profile_info **out)
{
    if (out != NULL)
        *out = s != NULL ? s->profiles : NULL;
    return s != NULL ? s->nprofiles : 0;
}

const void *emac_session_profile_data(const emac_session *s, size_t p, size_t i)
{
    if (s == NULL || i >= s->seg->n || s->shadow_base == NULL)
        return NULL;
    uint64_t extra = p == 0 ? 0 : p < s->nprofiles ? s->profiles[p].shadow_offset : UINT64_MAX;
    const struct emac_shadow *sh = &s->shadows[i];
    if (extra == UINT64_MAX ||
        sh->offset + extra + sh->numel * sh->elem_size > s->shadow_map_bytes)
        return NULL;
    return (const char *)s->shadow_base + sh->offset + extra;
}

static int register_with(emac_client *c, const char *session, emac_segment *seg,
                         const struct reg_config *rcfg, bool resume, emac_session **out,
                         struct emac_error *err)
{
    struct msg_register_reply rep;
    emac_session *s;
    char what[192];
    int rc;

    if (c == NULL || session == NULL || seg == NULL || out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_register: NULL argument");
    *out = NULL;
    snprintf(what, sizeof(what), "register \"%.128s\"", session);
    s = calloc(1, sizeof(*s));
    if (s == NULL || (s->name = strdup(session)) == NULL) {
        emac_session_free(s);
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    s->seg = seg;
    s->next_seq = 1;
    if ((rc = register_call(c, session, seg, rcfg, resume, false, LOSS_RECONNECTS, &rep, what,
                           err)) < 0) {
        emac_session_free(s);
        return rc;
    }
    if ((rc = session_map_shadow(s, &rep, err)) < 0 ||
        (rc = session_take_state(s, &rep, what, err)) < 0)
        goto err_registered;
    msg_free(&msg_register_reply_desc, &rep);
    s->c = c;
    s->next = c->sessions;
    c->sessions = s;
    c->hooks = &session_hooks;
    *out = s;
    return 0;

err_registered:
    msg_free(&msg_register_reply_desc, &rep);
    /* emad holds a session we cannot use: give it back (keeping a resumed
     * one's shadow), so that a retry is not refused with EXISTS. */
    {
        struct msg_close cl = {msg_str_c(session), true, resume};
        struct msg_empty empty;
        client_call(c, "close", &msg_close_desc, &cl, &msg_empty_desc, &empty, NULL, NULL, false,
                    LOSS_RECONNECTS, what, NULL);
    }
    emac_session_free(s);
    return rc;
}

/*
 * After a reconnect: register s again with resume, and map the shadow
 * (a restarted emad renames it) over the old mapping, at the same address,
 * so that the pointers emac_session_shadow gave stay valid.
 */
static int session_resume(emac_client *c, emac_session *s, struct emac_error *err)
{
    struct msg_register_reply rep;
    char what[192], name[256];
    int rc, fd;

    snprintf(what, sizeof(what), "resume \"%.128s\" after a reconnect", s->name);
    if ((rc = register_call(c, s->name, s->seg, NULL, true, true, LOSS_FAILS, &rep, what,
                            err)) < 0)
        return rc;
    if (rep.shadow_bytes != s->shadow_map_bytes || msg_str_copy(rep.shadow_shm, name,
                                                                sizeof(name)) < 0) {
        rc = client_set_err(err, -EREMOTEIO, "BADREPLY",
                     "%s: emad's shadow has %" PRIu64 " bytes, the session had %zu", what,
                     rep.shadow_bytes, s->shadow_map_bytes);
        goto out;
    }
    for (size_t i = 0; i < s->seg->n; i++) {
        uint64_t off = rep.has_shadow_offsets ? rep.shadow_offsets[i]
                                              : rep.tensors[i].shadow_offset;
        if (off != s->shadows[i].offset) {
            rc = client_set_err(err, -EREMOTEIO, "BADREPLY", "%s: tensor \"%s\" moved in the shadow",
                         what, s->shadows[i].name);
            goto out;
        }
    }
    if (s->shadow_map_bytes > 0) {
        fd = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
        if (fd < 0) {
            rc = client_set_err(err, -EREMOTEIO, EMAC_E_SYSTEM, "%s: cannot open the shadow %s: %s",
                         what, name, strerror(errno));
            goto out;
        }
        void *p = mmap(s->shadow_base, s->shadow_map_bytes, PROT_READ, MAP_SHARED | MAP_FIXED,
                       fd, 0);
        close(fd);
        if (p == MAP_FAILED) {
            rc = client_set_err(err, -EREMOTEIO, EMAC_E_SYSTEM, "%s: mmap of the shadow %s: %s", what,
                         name, strerror(errno));
            goto out;
        }
    }
    rc = session_take_state(s, &rep, what, err);
out:
    msg_free(&msg_register_reply_desc, &rep);
    return rc;
}

/* ---- the hooks the connection calls ---- */

static size_t sessions_restore(emac_client *c, char *note, size_t notelen)
{
    size_t len = 0, count = 0;

    for (emac_session *s = c->sessions; s != NULL; s = s->next) {
        char bad[160];
        if (client_restore_mapping(s->seg->base, s->seg->bytes, bad, sizeof(bad)) != 1)
            continue;
        s->restored = true;
        count++;
        if (len < notelen) {
            int n = snprintf(note + len, notelen - len, "%s\"%s\"", count > 1 ? ", " : "",
                             s->name);
            len += n > 0 ? (size_t)n : 0;
        }
    }
    return count;
}

static int sessions_resume(emac_client *c, struct emac_error *err)
{
    for (emac_session *s = c->sessions; s != NULL; s = s->next) {
        int rc;
        if (s->closed || s->gone)
            continue;
        rc = session_resume(c, s, err);
        if (rc == -EREMOTEIO && strcmp(err->code, "EXISTS") != 0) {
            /* emad answered, and will not give this session back: no
             * attempt will change that. The others go on. */
            s->gone = true;
            snprintf(s->gone_why, sizeof(s->gone_why),
                     "session \"%.128s\" could not be resumed after the connection to emad was "
                     "lost: %s: %.200s", s->name, err->code, err->message);
            continue;
        }
        if (rc < 0)
            return rc; /* attached elsewhere still, or the connection went again */
    }
    /* Only once every session is back: an attempt that fails leaves these
     * to the next one, or to the give-up. */
    for (size_t i = 0; i < c->nouts; i++) {
        struct outstanding *o = &c->outs[i];
        if (o->abandoned == KEPT && o->owner != NULL && o->owner->gone) {
            o->abandoned = SESSION_GONE;
            free(o->req);
            o->req = NULL;
        }
    }
    return 0;
}

static void sessions_detach(emac_client *c)
{
    for (emac_session *s = c->sessions; s != NULL; s = s->next)
        s->c = NULL;
}

static const struct client_hooks session_hooks = {
    .restore = sessions_restore,
    .resume = sessions_resume,
    .detach = sessions_detach,
};

/* ---- accessors ---- */

const char *emac_session_name(const emac_session *s)
{
    return s ? s->name : NULL;
}

emac_segment *emac_session_segment(const emac_session *s)
{
    return s ? s->seg : NULL;
}

const struct emac_session_info *emac_session_state(const emac_session *s)
{
    return s ? &s->state : NULL;
}

const struct emac_shadow *emac_session_shadow(const emac_session *s, size_t i)
{
    return s != NULL && i < s->seg->n ? &s->shadows[i] : NULL;
}

bool emac_session_restored(const emac_session *s)
{
    return s != NULL && s->restored;
}

/* ---- events ---- */

const char *emac_action_name(enum emac_action a)
{
    return names_action((enum names_action)a);
}

/* Decode an event or swap reply into out. */
static int wait_action(emac_session *s, uint32_t id, const char *what, struct emac_result *out,
                       struct emac_error *err)
{
    struct msg_action rep;
    enum names_action a;
    int rc = client_wait_reply(s->c, id, LOSS_RECONNECTS, what, &msg_action_desc, &rep, NULL, NULL,
                               err);

    if (rc < 0 && s->gone)
        return client_set_err(err, rc, EMAC_E_DISCONNECTED, "%s: %s", what, s->gone_why);
    if (rc < 0)
        return rc;
    if (names_action_lookup(rep.action.ptr, rep.action.len, &a) == 0) {
        out->action = (enum emac_action)a;
        out->active = rep.active;
        out->started = rep.started;
        out->updates = rep.updates;
        out->replayed = rep.has_replayed && rep.replayed;
        out->interrupted = rep.has_interrupted && rep.interrupted;
        s->nonfinite = rep.has_nonfinite ? rep.nonfinite : 0;
        if (msg_str_copy(rep.has_nonfinite_tensor ? rep.nonfinite_tensor : msg_str_c(""),
                         s->nonfinite_tensor, sizeof(s->nonfinite_tensor)) < 0)
            s->nonfinite_tensor[0] = '\0';
        return 0;
    }
    return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: unknown action \"%.*s\"", what,
                   (int)(rep.action.len > 32 ? 32 : rep.action.len), rep.action.ptr);
}

uint64_t emac_session_nonfinite(const emac_session *s, const char **tensor)
{
    if (tensor != NULL)
        *tensor = s != NULL && s->nonfinite > 0 ? s->nonfinite_tensor : NULL;
    return s != NULL ? s->nonfinite : 0;
}

/* Append at most max bytes of str to buf (of len, NUL kept), from *at. */
static void what_put(char *buf, size_t len, size_t *at, const char *str, size_t max)
{
    size_t n = strlen(str);

    if (n > max)
        n = max;

    if (*at + n >= len)
        n = len - 1 - *at;
    memcpy(buf + *at, str, n);
    *at += n;
    buf[*at] = '\0';
}

/* What an event is, for its error messages. Every event of every step
 * builds one, and snprintf costs more than the rest of the request
 * together: the pieces are copied instead. */
static void event_what(char *buf, size_t len, const emac_session *s, const char *event)
{
    size_t at = 0;

    buf[0] = '\0';
    what_put(buf, len, &at, "event \"", SIZE_MAX);
    what_put(buf, len, &at, event ? event : "(null)", 32);
    what_put(buf, len, &at, "\" on session \"", SIZE_MAX);
    what_put(buf, len, &at, s ? s->name : "(null)", 128);
    what_put(buf, len, &at, "\"", SIZE_MAX);
}

/* The same for an event waited for by ticket. */
static void ticket_what(char *buf, size_t len, const emac_session *s, emac_ticket ticket)
{
    char digits[16], *d = digits + sizeof(digits) - 1;
    size_t at = 0;

    *d = '\0';
    do
        *--d = (char)('0' + ticket % 10);
    while ((ticket /= 10) != 0);
    buf[0] = '\0';
    what_put(buf, len, &at, "event (ticket ", SIZE_MAX);
    what_put(buf, len, &at, d, SIZE_MAX);
    what_put(buf, len, &at, ") on session \"", SIZE_MAX);
    what_put(buf, len, &at, s->name, 128);
    what_put(buf, len, &at, "\"", SIZE_MAX);
}

int emac_event_send(emac_session *s, const char *event, const struct emac_time *t,
                    emac_ticket *ticket, struct emac_error *err)
{
    return emac_event_send_counts(s, event, t, NULL, ticket, err);
}

/* Send an event; what (event_what's text) is shared with the wait that
 * follows, so that a blocking event builds it once. */
static int event_send(emac_session *s, const char *event, const struct emac_time *t,
                      const struct emac_time_counts *counts, emac_ticket *ticket,
                      const char *what, struct emac_error *err)
{
    struct msg_event req;
    int rc;

    if (s == NULL || event == NULL || t == NULL || ticket == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: NULL argument", what);
    if ((rc = session_usable(s, what, err)) < 0)
        return rc;
    memset(&req, 0, sizeof(req));
    req.session = msg_str_c(s->name);
    req.event = msg_str_c(event);
    req.time.batch = t->batch;
    req.time.epoch = t->epoch;
    req.time.has_duration = t->has_duration;
    req.time.duration = t->duration;
    if (counts != NULL) {
        req.time.has_samples = counts->has_samples;
        req.time.samples = counts->samples;
        req.time.has_tokens = counts->has_tokens;
        req.time.tokens = counts->tokens;
        req.time.has_seconds = counts->has_seconds;
        req.time.seconds = counts->seconds;
    }
    req.has_seq = true;
    req.seq = s->next_seq++;
    return client_send(s->c, "event", &msg_event_desc, &req, s, true, LOSS_RECONNECTS, what, ticket,
                       err);
}

int emac_event_send_counts(emac_session *s, const char *event, const struct emac_time *t,
                           const struct emac_time_counts *counts, emac_ticket *ticket,
                           struct emac_error *err)
{
    char what[200];

    event_what(what, sizeof(what), s, event);
    return event_send(s, event, t, counts, ticket, what, err);
}

int emac_event_wait(emac_session *s, emac_ticket ticket, struct emac_result *out,
                    struct emac_error *err)
{
    char what[200];
    const struct outstanding *o;

    if (s == NULL || out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_event_wait: NULL argument");
    ticket_what(what, sizeof(what), s, ticket);
    if (s->c == NULL)
        return session_usable(s, what, err);
    o = client_find_out(s->c, ticket);
    if (o == NULL || o->owner != s)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                       "%s: no event of this session with that ticket is outstanding", what);
    return wait_action(s, ticket, what, out, err);
}

int emac_event(emac_session *s, const char *event, const struct emac_time *t,
               struct emac_result *out, struct emac_error *err)
{
    return emac_event_counts(s, event, t, NULL, out, err);
}

int emac_event_counts(emac_session *s, const char *event, const struct emac_time *t,
                      const struct emac_time_counts *counts, struct emac_result *out,
                      struct emac_error *err)
{
    emac_ticket id;
    char what[200];
    int rc;

    if (out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_event: out is NULL");
    event_what(what, sizeof(what), s, event);
    if ((rc = event_send(s, event, t, counts, &id, what, err)) < 0)
        return rc;
    return wait_action(s, id, what, out, err);
}

static int swap_call(emac_session *s, const char *to, const char *profile,
                     struct emac_result *out, struct emac_error *err);

int emac_swap(emac_session *s, const char *to, struct emac_result *out, struct emac_error *err)
{
    return swap_call(s, to, NULL, out, err);
}

int emac_swap_profile(emac_session *s, const char *profile, struct emac_result *out,
                      struct emac_error *err)
{
    if (profile == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_swap_profile: NULL profile");
    return swap_call(s, "ema", profile, out, err);
}

static int swap_call(emac_session *s, const char *to, const char *profile,
                     struct emac_result *out, struct emac_error *err)
{
    struct msg_swap req;
    char what[200];
    uint32_t id;
    int rc;

    if (s == NULL || to == NULL || out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_swap: NULL argument");
    snprintf(what, sizeof(what), "swap to \"%.16s\" on session \"%.128s\"", to, s->name);
    if ((rc = session_usable(s, what, err)) < 0)
        return rc;
    memset(&req, 0, sizeof(req));
    req.session = msg_str_c(s->name);
    req.to = msg_str_c(to);
    req.has_profile = profile != NULL;
    req.profile = msg_str_c(profile);
    req.has_seq = true;
    req.seq = s->next_seq++;
    if ((rc = client_send(s->c, "swap", &msg_swap_desc, &req, s, true, LOSS_RECONNECTS, what, &id,
                          err)) < 0)
        return rc;
    return wait_action(s, id, what, out, err);
}

int emac_close(emac_session *s, bool keep, struct emac_error *err)
{
    struct msg_close req;
    struct msg_empty rep;
    char what[200];
    int rc;

    if (s == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_close: session is NULL");
    snprintf(what, sizeof(what), "close session \"%.128s\"", s->name);
    if ((rc = session_usable(s, what, err)) < 0)
        return rc;
    req.session = msg_str_c(s->name);
    req.has_keep = true;
    req.keep = keep;
    rc = client_call(s->c, "close", &msg_close_desc, &req, &msg_empty_desc, &rep, NULL, NULL, false,
                     LOSS_RECONNECTS, what, err);
    if (rc == 0)
        s->closed = true;
    return rc;
}

/* ---- any session, by name ---- */

static int file_call(emac_client *c, const char *method, const char *session, const char *name,
                     struct emac_file *out, struct emac_error *err)
{
    struct msg_file req;
    struct msg_file_reply rep;
    char what[200];
    int rc;

    if (c == NULL || session == NULL || out == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_%s: NULL argument", method);
    snprintf(what, sizeof(what), "%s session \"%.128s\"", method, session);
    memset(&req, 0, sizeof(req));
    req.session = msg_str_c(session);
    req.has_name = name != NULL;
    req.name = msg_str_c(name);
    rc = client_call(c, method, &msg_file_desc, &req, &msg_file_reply_desc, &rep, NULL, NULL, false,
                     LOSS_RECONNECTS, what, err);
    if (rc < 0)
        return rc;
    if (msg_str_copy(rep.path, out->path, sizeof(out->path)) < 0)
        return client_set_err(err, -EPROTO, EMAC_E_BADREPLY, "%s: path in the reply is too long", what);
    out->bytes = rep.bytes;
    return 0;
}

int emac_save(emac_client *c, const char *session, const char *name, struct emac_file *out,
              struct emac_error *err)
{
    return file_call(c, "save", session, name, out, err);
}

int emac_load(emac_client *c, const char *session, const char *name, struct emac_file *out,
              struct emac_error *err)
{
    return file_call(c, "load", session, name, out, err);
}

int emac_drop(emac_client *c, const char *session, struct emac_error *err)
{
    struct msg_drop req;
    struct msg_empty rep;
    char what[200];

    if (c == NULL || session == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_drop: NULL argument");
    snprintf(what, sizeof(what), "drop session \"%.128s\"", session);
    req.session = msg_str_c(session);
    return client_call(c, "drop", &msg_drop_desc, &req, &msg_empty_desc, &rep, NULL, NULL, false,
                       LOSS_RECONNECTS, what, err);
}
