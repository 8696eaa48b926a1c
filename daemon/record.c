/*
 * record.c - the shadow object's header and crash records (session.h): the
 * counters a restarted emad finds, the request records that answer a
 * request sent again, and the per-chunk redo records that make an update
 * cut short by a crash exact once sent again. The header is written on the
 * loop thread between the chunks of an operation; the records by the
 * workers (chunk.c) and read back here after a crash.
 */
#include "session_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

void *shadow_ptr(const struct session *s, const struct tensor *t, uint64_t start)
{
    return (char *)s->shadow.base + t->shadow_offset + start * dtype_size(t->shadow_dtype);
}

void *shadow_ptr_p(const struct session *s, const struct tensor *t, uint64_t start, unsigned p)
{
    return (char *)shadow_ptr(s, t, start) + (uint64_t)p * s->area_bytes;
}

/* The tensors' part of the shadow object (what save and load move). */
void *shadow_data(const struct session *s)
{
    return (char *)s->shadow.base + SHADOW_HEADER_BYTES;
}

uint64_t shadow_data_bytes(const struct session *s)
{
    return s->shadow_bytes - SHADOW_HEADER_BYTES;
}

struct shadow_header *shadow_hdr(const struct session *s)
{
    return s->shadow.base;
}

/* The loop thread's accesses to a shadow's header go under the guard too:
 * a shadow that faults fails its session (shadow_broken), not emad. */
void shadow_enter(struct session *s, struct shm_guard *g)
{
    shm_guard_enter(g, &s->shadow);
}

void shadow_leave(struct session *s, struct shm_guard *g)
{
    if (shm_guard_leave(g) < 0)
        __atomic_store_n(&s->shadow_broken, true, __ATOMIC_RELEASE);
}

bool shadow_is_broken(const struct session *s)
{
    return __atomic_load_n(&s->shadow_broken, __ATOMIC_ACQUIRE);
}

/* An operation is about to write the shadow: a crash from here on leaves
 * seq_begun ahead of seq_done. */
void shadow_begin(struct session *s)
{
    struct shadow_header *h = shadow_hdr(s);
    struct shm_guard g;

    shadow_enter(s, &g);
    __atomic_store_n(&h->seq_begun, h->seq_done + 1, __ATOMIC_RELEASE);
    shadow_leave(s, &g);
}

/* The state after an operation, where a restarted emad will look for it. */
void shadow_sync(struct session *s)
{
    struct shadow_header *h = shadow_hdr(s);
    struct shm_guard g;

    if (h == NULL || shadow_is_broken(s))
        return;
    shadow_enter(s, &g);
    memcpy(h->magic, SHADOW_MAGIC, 8);
    h->home = s->reg->home;
    h->updates = s->st.updates;
    h->swaps = s->st.swaps;
    h->started = s->st.started;
    h->active = s->st.active;
    h->has_last_time = s->st.has_last_time;
    h->has_last_duration = s->st.last_time.has_duration;
    h->last_batch = s->st.last_time.batch;
    h->last_epoch = s->st.last_time.epoch;
    h->last_duration = s->st.last_time.duration;
    h->interrupted = s->interrupted;
    h->last_seq = s->last_seq;
    replica_end_times_out(s, h);
    h->redo_pending = s->redo_pending ? 1u | (s->redo_clears ? 2u : 0u) : 0u;
    if (s->nprof > 0) {
        struct shadow_profiles *sp =
            (struct shadow_profiles *)((char *)s->shadow.base + SHADOW_PROFILES_AT);
        memcpy(sp->magic, SHADOW_PROFILES_MAGIC, 8);
        sp->count = s->nprof;
        for (unsigned i = 0; i < s->nprof; i++) {
            const struct profile *p = &s->prof[i];
            struct shadow_profile_rec *r = &sp->p[i];
            memset(r->name, 0, sizeof(r->name));
            memcpy(r->name, p->name, strlen(p->name));
            r->updates = p->updates;
            r->last_batch = p->last_batch;
            r->last_decay = p->last_decay;
            r->started = p->started;
            r->has_last_decay = p->has_last_decay;
        }
    }
    __atomic_store_n(&h->seq_done, __atomic_load_n(&h->seq_begun, __ATOMIC_ACQUIRE),
                     __ATOMIC_RELEASE);
    shadow_leave(s, &g);
}

struct redo_rec *redo_rec(const struct session *s, size_t chunk)
{
    return (struct redo_rec *)((char *)s->shadow.base + s->redo_off) + chunk;
}

/* An event's tensor work is about to write the shadow: reset every chunk's
 * record (from where a cut-short run of the same event got, when this is
 * its replay), say which event it is, then mark the shadow begun. */
void redo_begin(struct session *s, const uint64_t *resume_from, uint64_t pending_seq,
                enum ema_action action, const struct ema_clock *clock)
{
    struct shadow_header *h = shadow_hdr(s);
    struct shm_guard g;

    shadow_enter(s, &g);
    uint64_t of = h->seq_done + 1;
    for (size_t c = 0; c < s->plan.nchunks; c++) {
        struct redo_rec *rec = redo_rec(s, c);
        rec->seq = of;
        rec->done_to = resume_from != NULL ? resume_from[c] : 0;
        rec->undo_at = REDO_NONE;
    }
    h->redo_of = of;
    h->pending_seq = pending_seq;
    h->pending_action = (uint32_t)action;
    h->pending_batch = clock->batch;
    h->pending_epoch = clock->epoch;
    h->redo_nchunks = s->plan.nchunks;
    shadow_leave(s, &g);
    shadow_begin(s);
}

/* The elements of a block: K > 1 profiles share the undo of one. */
uint64_t redo_block_elems(const struct session *s)
{
    return s->nprof > 1 ? REDO_BLOCK_ELEMS / s->nprof : REDO_BLOCK_ELEMS;
}

/* Call fn for each block of chunk c, in order, with its position in the
 * chunk (elements), its tensor and its first element; stop at a non-zero
 * return and pass it on. The blocks are the same on every run: the plan
 * and redo_block_elems fix them. */
int redo_for_each_block(const struct session *s, size_t c,
                   int (*fn)(void *arg, uint64_t pos, const struct tensor *t,
                             uint64_t start, uint64_t n),
                   void *arg)
{
    const uint64_t block = redo_block_elems(s);
    uint64_t pos = 0;

    for (size_t i = s->plan.first[c]; i < s->plan.first[c + 1]; i++) {
        const struct piece *p = &s->plan.pieces[i];
        for (uint64_t off = 0; off < p->count; off += block) {
            uint64_t n = p->count - off < block ? p->count - off : block;
            int rc = fn(arg, pos, &s->tensors[p->tensor], p->start + off, n);
            if (rc != 0)
                return rc;
            pos += n;
        }
    }
    return 0;
}

static bool writes_tensors(uint32_t action)
{
    return action == EMA_ACTION_START || action == EMA_ACTION_UPDATE ||
           action == EMA_ACTION_START_UPDATE;
}

/* Put back the block caught halfway: every element whose old value the
 * kernel had saved (the others still hold UNDO_UNSET and were not written;
 * a saved old value that happens to be all ones is a NaN, or an integer
 * copied from the params again: either way the replay gives it back). */
static int undo_block(void *arg, uint64_t pos, const struct tensor *t, uint64_t start, uint64_t n)
{
    struct redo_rec *rec = ((void **)arg)[0];
    struct session *s = ((void **)arg)[1];
    size_t esz = dtype_size(t->shadow_dtype);
    unsigned char unset[8];
    char *sh;

    if (pos != rec->undo_at)
        return 0;
    if (rec->undo_count != n)
        return -EINVAL;
    if (s->nprof > 1) {
        /* Whole blocks, copied before the first write (chunk.c): every saved value goes back. */
        if (rec->undo_profiles == 0 || (rec->undo_profiles >> s->nprof) != 0)
            return -EINVAL;
        for (unsigned p = 0; p < s->nprof; p++)
            if (rec->undo_profiles & (1u << p))
                memcpy(shadow_ptr_p(s, t, start, p), rec->undo + p * n * esz, n * esz);
        return 1;
    }
    memset(unset, UNDO_UNSET, sizeof(unset));
    sh = shadow_ptr(s, t, start);
    for (uint64_t i = 0; i < n; i++)
        if (memcmp(rec->undo + i * esz, unset, esz) != 0)
            memcpy(sh + i * esz, rec->undo + i * esz, esz);
    return 1;
}

/*
 * After an event's tensor work was cut short (emad killed, a worker
 * failed): from the records, put back the block caught halfway and keep,
 * per chunk, how far the event had got, until the client sends it again.
 * 0, or -EINVAL when the records cannot tell (the shadow then keeps part
 * of the event and the session says so).
 */
int redo_recover(struct session *s)
{
    struct shadow_header *h = shadow_hdr(s);
    uint64_t *from;

    if (h->redo_nchunks != s->plan.nchunks || !writes_tensors(h->pending_action) ||
        h->pending_seq == 0)
        return -EINVAL;
    from = calloc(s->plan.nchunks ? s->plan.nchunks : 1, sizeof(*from));
    if (from == NULL)
        return -ENOMEM;
    for (size_t c = 0; c < s->plan.nchunks; c++) {
        struct redo_rec *rec = redo_rec(s, c);
        void *arg[2] = {rec, s};
        if (rec->seq != h->redo_of ||
            (rec->undo_at != REDO_NONE && rec->undo_at == rec->done_to &&
             redo_for_each_block(s, c, undo_block, arg) != 1)) {
            free(from);
            return -EINVAL;
        }
        rec->undo_at = REDO_NONE;
        from[c] = rec->done_to;
    }
    free(s->redo_from);
    s->redo_from = from;
    s->redo_pending = true;
    return 0;
}

/* The session's pending replay will not come (another operation came
 * first): the shadow keeps part of the cut-short event, and says so. */
void redo_cancel(struct session *s, const char *why)
{
    if (!s->redo_pending)
        return;
    struct shm_guard g;
    uint64_t pending;

    s->redo_pending = false;
    s->interrupted = true;
    free(s->redo_from);
    s->redo_from = NULL;
    shadow_enter(s, &g);
    pending = shadow_hdr(s)->pending_seq;
    shadow_leave(s, &g);
    log_warn(reg_log(s->reg), "session %s: the event cut short by emad's crash (seq %" PRIu64
             ") was not sent again before %s: the shadow keeps part of it (interrupted)",
             s->name, pending, why);
    shadow_sync(s);
}

/* Where the records go: after the shadow, one per chunk. */
void redo_layout(struct session *s)
{
    s->redo_off = (s->shadow_bytes + 63) & ~(uint64_t)63;
    s->redo_bytes = s->redo_off - s->shadow_bytes + s->plan.nchunks * sizeof(struct redo_rec);
}

/* The shadow object's size: the shadow and the records. */
uint64_t shadow_object_bytes(const struct session *s)
{
    return s->shadow_bytes + s->redo_bytes;
}
