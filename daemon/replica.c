/*
 * replica.c - ranks of one node that hold the same weights (DDP; HSDP replicas on one node)
 * sharing one session and one shadow (docs/scaleout.md "Replicas").
 *
 * The first rank to register is the leader: the session's owner, segment and active flag are
 * its own, and its batch_end updates the shadow. The others join as replicas, each with its
 * own connection and segment. A replica's operation runs through the session's FIFO like any
 * other, with its segment and active flag exchanged into the session's for the time it runs
 * (op.c): the swap machinery then stashes, casts and restores that replica's params, and
 * nothing else runs on the session meanwhile. A replica's batch_end updates nothing (its
 * weights are the leader's, by the ranks' guarantee); it only samples its params to check
 * that guarantee.
 */
#include "session_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Elements sampled per check: enough that a rank which missed a step (every element differs)
 * or holds other weights is caught, few enough to cost nothing beside an update. */
#define SAMPLE_ELEMS 64u

bool replica_joins(const struct session *old, const struct peer *c,
                   const struct msg_register *req)
{
    /* A connection takes one seat: a second register of it would hold a seat its close never
     * frees (registry_peer_closed). */
    return old->group_replicas > 1 && old->owner != NULL && old->owner != c &&
           replica_of(old, c) == NULL && !old->closing &&
           req->has_group && req->group.has_replicas &&
           req->group.replicas == old->group_replicas;
}

struct replica *replica_of(const struct session *s, const struct peer *c)
{
    for (uint64_t i = 0; s->rep != NULL && i + 1 < s->group_replicas; i++)
        if (s->rep[i].owner == c)
            return &s->rep[i];
    return NULL;
}

unsigned replica_count(const struct session *s)
{
    unsigned n = s->owner != NULL;

    for (uint64_t i = 0; s->rep != NULL && i + 1 < s->group_replicas; i++)
        n += s->rep[i].owner != NULL;
    return n;
}

void replica_join(struct registry *r, struct peer *c, uint32_t msgid, struct session *old,
                  struct session *fresh, struct shm_map *seg, bool compact)
{
    /* A shadow is one user's data: every replica is of the session's uid (root too). */
    if (c->uid != old->uid) {
        peer_fail(c, msgid, MSG_E_PERM, "register: session %s belongs to another user: "
                  "replicas of a session must all be of its uid", old->name);
        return;
    }
    if (!session_same_table(old, fresh) || !session_shapes_match(old, fresh) ||
        fresh->shaped != old->shaped) {
        peer_fail(c, msgid, MSG_E_BADARG, "register: replica of session %s: the tensor table "
                  "or the shapes differ from the leader's (replicas hold the same tensors)",
                  old->name);
        return;
    }
    if (old->rep == NULL &&
        (old->rep = calloc(old->group_replicas - 1, sizeof(*old->rep))) == NULL) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "register: out of memory");
        return;
    }
    struct replica *slot = NULL;
    for (uint64_t i = 0; i + 1 < old->group_replicas && slot == NULL; i++)
        if (old->rep[i].owner == NULL && old->rep[i].seg.base == NULL)
            slot = &old->rep[i];
    if (slot == NULL) {
        peer_fail(c, msgid, MSG_E_EXISTS, "register: session %s has its %" PRIu64 " replicas "
                  "attached already", old->name, old->group_replicas);
        return;
    }
    memset(slot, 0, sizeof(*slot));
    slot->owner = c;
    slot->pid = c->pid;
    slot->rank = fresh->has_group ? fresh->group_rank : 0;
    snprintf(slot->shm_name, sizeof(slot->shm_name), "%s", fresh->shm_name);
    slot->seg = *seg;
    slot->geo = fresh->geo;
    seg->base = NULL;
    seg->len = 0;
    log_info(reg_log(r), "session %s: replica rank %" PRIu64 " (pid %ld) joined; %u of %" PRIu64
             " attached, one shadow", old->name, slot->rank, (long)c->pid, replica_count(old),
             old->group_replicas);
    /* The reply names the shared shadow; it waits for nothing (no data moves). */
    struct op tmp = {.s = old, .kind = OP_ATTACH, .peer = c, .msgid = msgid};
    reply_register(&tmp, compact);
}

static void swap_bytes(void *a, void *b, size_t n)
{
    unsigned char t[256];

    while (n > 0) {
        size_t k = n < sizeof(t) ? n : sizeof(t);
        memcpy(t, a, k);
        memcpy(a, b, k);
        memcpy(b, t, k);
        a = (char *)a + k;
        b = (char *)b + k;
        n -= k;
    }
}

void replica_exchange(struct session *s, struct replica *rep)
{
    bool active = s->st.active;

    swap_bytes(&s->seg, &rep->seg, sizeof(s->seg));
    swap_bytes(&s->geo, &rep->geo, sizeof(s->geo));
    swap_bytes(s->shm_name, rep->shm_name, sizeof(s->shm_name));
    s->st.active = rep->active;
    rep->active = active;
    s->rep_in = s->rep_in == NULL ? rep : NULL;
}

void replica_gone(struct session *s, struct replica *rep)
{
    log_info(reg_log(s->reg), "session %s: replica rank %" PRIu64 " (pid %ld) detached; %u "
             "attached", s->name, rep->rank, (long)rep->pid, replica_count(s) - 1);
    rep->owner = NULL;
    /* Its segment is unmapped once no operation uses it (replica_settle). */
    if (s->rep_in != rep)
        shm_unmap(&rep->seg);
}

void replica_forget_seqs(struct session *s)
{
    struct shm_guard g;

    s->last_seq = 0;
    s->end_guard = true;
    shadow_enter(s, &g);
    memset(shadow_hdr(s)->recent, 0, sizeof(shadow_hdr(s)->recent));
    shadow_leave(s, &g);
}

void replica_settle(struct session *s)
{
    if (s->rep == NULL || s->rep_in != NULL)
        return;
    for (uint64_t i = 0; i + 1 < s->group_replicas; i++)
        if (s->rep[i].owner == NULL)
            shm_unmap(&s->rep[i].seg);
    if (s->owner != NULL || s->removed || s->closing || s->busy)
        return;
    for (uint64_t i = 0; i + 1 < s->group_replicas; i++) {
        struct replica *rep = &s->rep[i];
        if (rep->owner == NULL)
            continue;
        /* The first replica still attached leads: its segment becomes the session's. */
        shm_unmap(&s->seg);
        s->seg = rep->seg;
        s->geo = rep->geo;
        snprintf(s->shm_name, sizeof(s->shm_name), "%s", rep->shm_name);
        s->params_bytes = s->geo.params_bytes;
        s->owner = rep->owner;
        s->owner_pid = rep->pid;
        s->group_rank = rep->rank;
        s->st.active = rep->active;
        s->has_lead_mark = false;
        replica_forget_seqs(s);
        memset(rep, 0, sizeof(*rep));
        log_info(reg_log(s->reg), "session %s: the leader is gone; replica pid %ld leads now",
                 s->name, (long)s->owner_pid);
        shadow_sync(s);
        return;
    }
}

/* A hash of SAMPLE_ELEMS param elements of s->seg spread over the tensors (the same positions
 * for every replica), their bytes as they are. -EFAULT if the segment faulted. */
static int sample_hash(const struct session *s, uint64_t *out)
{
    uint64_t h = 1469598103934665603ull;
    size_t n = s->ntensors;
    struct shm_guard g;

    if (n == 0 || s->seg.base == NULL) {
        *out = h;
        return 0;
    }
    shm_guard_enter(&g, &s->seg);
    for (uint64_t k = 0; k < SAMPLE_ELEMS; k++) {
        const struct tensor *t = &s->tensors[(k * 7919u) % n];
        if (t->numel == 0)
            continue;
        uint64_t at = (k * 2654435761u + 12345u) % t->numel;
        size_t es = dtype_size(t->dtype);
        const unsigned char *p = (const unsigned char *)s->seg.base + s->geo.params_offset +
                                 t->offset + at * es;
        for (size_t b = 0; b < es; b++)
            h = (h ^ p[b]) * 1099511628211ull;
    }
    if (shm_guard_leave(&g) < 0)
        return -EFAULT;
    *out = h;
    return 0;
}

static bool differs(struct session *s, const struct replica *rep, uint64_t batch)
{
    s->diverged++;
    snprintf(s->divergence, sizeof(s->divergence), "batch %" PRIu64 ": replica rank %" PRIu64
             " (pid %ld) holds other params than the leader (pid %ld) in a sample of %u "
             "elements", batch, rep->rank, (long)rep->pid, (long)s->owner_pid, SAMPLE_ELEMS);
    log_warn(reg_log(s->reg), "session %s: %s; the replicas must hold the same weights after "
             "every optimizer step (docs/scaleout.md \"Replicas\")", s->name, s->divergence);
    return true;
}

bool replica_mark_leader(struct session *s, uint64_t batch)
{
    bool found = false;

    if (s->rep == NULL || sample_hash(s, &s->lead_hash) < 0)
        return false;
    s->has_lead_mark = true;
    s->lead_batch = batch;
    for (uint64_t i = 0; i + 1 < s->group_replicas; i++) {
        const struct replica *rep = &s->rep[i];
        if (rep->owner != NULL && rep->has_mark && rep->mark_batch == batch &&
            rep->mark_hash != s->lead_hash)
            found = differs(s, rep, batch);
    }
    return found;
}

/* Which of the end times an event is: 0 batch_end, 1 epoch_end, -1 neither. */
static int end_kind(enum ema_event ev)
{
    return ev == EMA_EVENT_BATCH_END ? 0 : ev == EMA_EVENT_EPOCH_END ? 1 : -1;
}

void replica_note_end(struct session *s, enum ema_event ev, const struct ema_clock *clock)
{
    int k = end_kind(ev);

    if (k < 0)
        return;
    s->has_end |= 1u << k;
    s->end_batch[k] = clock->batch;
    s->end_epoch[k] = clock->epoch;
    s->end_guard = false;
}

/*
 * A replica's requests are not numbered (its events change nothing), so the records of request
 * numbers cannot tell that a batch_end a replica had in flight when emad crashed, sent again
 * once that replica has come to lead, was applied already, from the old leader's segment. Its
 * time can: the replicas report the same batches (docs/scaleout.md "Replicas"), so, from a
 * change of leader (replica_forget_seqs) or a resume (session.c) until the new leader's first
 * end event applied, an end of batch (of epoch) no later than the last one applied is that one
 * again. Each kind has its own time: a trainer may end a batch and an epoch at the same time.
 */
bool replica_is_replay(const struct session *s, enum ema_event ev, const struct ema_clock *clock)
{
    int k = end_kind(ev);

    return k >= 0 && s->end_guard && s->group_replicas > 1 && (s->has_end & (1u << k)) &&
           clock->batch <= s->end_batch[k] && clock->epoch <= s->end_epoch[k];
}

void replica_end_times_out(const struct session *s, struct shadow_header *h)
{
    h->has_end = s->has_end;
    memcpy(h->end_batch, s->end_batch, sizeof(h->end_batch));
    memcpy(h->end_epoch, s->end_epoch, sizeof(h->end_epoch));
}

/* From a header emad wrote, or one its trainer could (no ACLs): values are only compared. */
void replica_end_times_in(struct session *s, const struct shadow_header *h)
{
    s->has_end = h->has_end & 3u;
    memcpy(s->end_batch, h->end_batch, sizeof(s->end_batch));
    memcpy(s->end_epoch, h->end_epoch, sizeof(s->end_epoch));
}

bool replica_mark(struct session *s, struct replica *rep, uint64_t batch)
{
    /* rep's segment is the session's now (exchanged in). */
    if (sample_hash(s, &rep->mark_hash) < 0)
        return false;
    rep->has_mark = true;
    rep->mark_batch = batch;
    return s->has_lead_mark && s->lead_batch == batch && s->lead_hash != rep->mark_hash &&
           differs(s, rep, batch);
}

void replica_free_all(struct session *s)
{
    for (uint64_t i = 0; s->rep != NULL && i + 1 < s->group_replicas; i++)
        shm_unmap(&s->rep[i].seg);
    free(s->rep);
    s->rep = NULL;
}
