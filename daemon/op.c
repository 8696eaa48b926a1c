/*
 * op.c - the FIFO of each session's operations, on the loop thread.
 *
 * An operation (register's shadow initialisation, an event, a swap, save,
 * load, close, drop, re-attach) waits in its session's queue; the head runs,
 * its data work split into chunks on the worker pool (chunk.c), and its
 * reply is sent from the pool's completion callback on the loop thread.
 * Nothing here touches tensor data.
 */
#include "metrics.h"
#include "session_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void op_run(struct op *op);
static void op_done(struct pool_job *job);
static void session_start_next(struct session *s);

static void reply_action(struct op *op)
{
    struct op_event *e = op_event(op);
    struct msg_action a;

    memset(&a, 0, sizeof(a));
    a.action = msg_str_c(ema_action_name(e->action));
    a.active = op->s->st.active;
    a.started = op->s->st.started;
    a.updates = op->s->st.updates;
    a.has_interrupted = op->s->interrupted;
    a.interrupted = op->s->interrupted;
    if (e->health && op->s->health.last_count > 0) {
        a.has_nonfinite = true;
        a.nonfinite = op->s->health.last_count;
        a.has_nonfinite_tensor = true;
        a.nonfinite_tensor = msg_str_c(op->s->tensors[op->s->health.last_nonfinite_tensor].name);
    }
    if (e->diverged) {
        a.has_diverged = true;
        a.diverged = true;
    }
    /* A snapshot written after an earlier event failed: said once, on the next reply (the
     * event itself succeeded; status keeps the count and the message). */
    if (op->s->snap_error_new) {
        a.has_snapshot_error = true;
        a.snapshot_error = msg_str_c(op->s->snap_error);
        op->s->snap_error_new = false;
    }
    peer_reply(op->peer, op->msgid, &msg_action_desc, &a);
}

/* The update is complete: its health signals, and a warning for non-finite params. */
static void finish_health(struct op *op)
{
    struct session *s = op->s;
    size_t first;

    if (s->nprof > 0)
        health_finish_profiles(&s->health, op_event(op)->plan.due & ~op_event(op)->plan.init);
    uint64_t n = health_finish(&s->health, s->st.updates, uv_hrtime(), &first);

    if (n == 0 || first >= s->ntensors)
        return;
    const char *name = s->tensors[first].name;
    char shown[LOG_ESCAPED_SIZE(128)];
    log_warn(reg_log(s->reg), "session %s: update %" PRIu64 ": %" PRIu64 " non-finite param "
             "elements (NaN or Inf), the first in tensor \"%s\"; %s", s->name, s->st.updates, n,
             log_escape(name, strlen(name), shown, sizeof(shown)),
             s->health.skip_nonfinite ? "their shadow elements were left as they were"
                                      : "they were applied to the shadow (on_nonfinite apply)");
}

/* The answer to a request seq that was applied before: what it did then. */
static void reply_recorded(struct op *op, const struct seq_record *rec)
{
    struct msg_action a;

    memset(&a, 0, sizeof(a));
    a.action = msg_str_c(ema_action_name((enum ema_action)rec->action));
    a.active = rec->active;
    a.started = rec->started;
    a.updates = rec->updates;
    a.has_replayed = true;
    a.replayed = true;
    a.has_interrupted = op->s->interrupted;
    a.interrupted = op->s->interrupted;
    peer_reply(op->peer, op->msgid, &msg_action_desc, &a);
}

void reply_register(struct op *op, bool compact)
{
    struct session *s = op->s;
    struct msg_register_reply rep;
    size_t n = s->ntensors ? s->ntensors : 1;
    /* Compact: the offsets alone (the client knows the names, in order, and
     * the dtype rule); a million-tensor reply shrinks from ~40 to ~5 MB. */
    struct msg_shadow_tensor *t = compact ? NULL : calloc(n, sizeof(*t));
    uint64_t *offsets = compact ? malloc(n * sizeof(*offsets)) : NULL;

    if (t == NULL && offsets == NULL) {
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "register: out of memory");
        return;
    }
    memset(&rep, 0, sizeof(rep));
    rep.session = msg_str_c(s->name);
    rep.shadow_shm = msg_str_c(s->shadow_name);
    rep.shadow_bytes = s->shadow_bytes;
    for (size_t i = 0; i < s->ntensors; i++) {
        if (offsets != NULL) {
            offsets[i] = s->tensors[i].shadow_offset;
            continue;
        }
        t[i].name = msg_str_c(s->tensors[i].name);
        t[i].shadow_offset = s->tensors[i].shadow_offset;
        t[i].shadow_dtype = msg_str_c(dtype_name(s->tensors[i].shadow_dtype));
    }
    rep.tensors = t;
    rep.ntensors = t ? s->ntensors : 0;
    rep.has_shadow_offsets = offsets != NULL;
    rep.shadow_offsets = offsets;
    rep.nshadow_offsets = offsets ? s->ntensors : 0;
    session_fill_state(s, s->uid, &rep.state);
    peer_reply(op->peer, op->msgid, &msg_register_reply_desc, &rep);
    free(t);
    free(offsets);
}

/* Each kind's own struct: an event carries no file or segment fields. */
static size_t op_size(enum op_kind kind)
{
    switch (kind) {
    case OP_INIT:
        return sizeof(struct op_init);
    case OP_ATTACH:
        return sizeof(struct op_attach);
    case OP_EVENT:
        return sizeof(struct op_event);
    case OP_SAVE:
    case OP_LOAD:
        return sizeof(struct op_file);
    case OP_CLOSE:
    case OP_DROP:
        return sizeof(struct op_close);
    case OP_SNAPSHOT:
        return sizeof(struct op_snapshot);
    }
    return sizeof(struct op);
}

struct op *op_new(struct session *s, enum op_kind kind, struct peer *c, uint32_t msgid)
{
    size_t size = op_size(kind);
    struct op *op = calloc(1, size);

    if (op == NULL) {
        peer_fail(c, msgid, MSG_E_INTERNAL, "out of memory queueing the request");
        return NULL;
    }
    op->s = s;
    op->kind = kind;
    op->peer = c;
    op->msgid = msgid;
    if (kind == OP_SAVE || kind == OP_LOAD)
        msgpack_sbuffer_init(&op_file(op)->meta);
    peer_hold(c, size);
    return op;
}

void op_free(struct op *op)
{
    if (op->kind == OP_SAVE || op->kind == OP_LOAD) {
        struct op_file *f = op_file(op);
        msgpack_sbuffer_destroy(&f->meta); /* save's metadata, or load's copy of the file's */
        if (f->has_loaded) {
            msg_free(&msg_saved_state_desc, &f->loaded);
            msgpack_unpacked_destroy(&f->unpacked);
        }
    }
    if (op->kind == OP_ATTACH)
        shm_unmap(&op_attach(op)->new_seg);
    if (op->kind == OP_EVENT)
        snap_job_free(op_event(op)->snap);
    if (op->kind == OP_SNAPSHOT)
        snap_job_free(op_snapshot(op)->job);
    peer_release(op->peer, op_size(op->kind));
    free(op);
}

void op_enqueue(struct op *op)
{
    struct session *s = op->s;

    if (s->q_tail)
        s->q_tail->next = op;
    else
        s->q_head = op;
    s->q_tail = op;
    if (!s->busy)
        session_start_next(s);
}

void op_finish(struct op *op)
{
    struct session *s = op->s;
    struct registry *r = s->reg;

    /* A replica's operation gives the leader's segment back (replica.c). */
    if (s->rep_in != NULL)
        replica_exchange(s, s->rep_in);
    s->q_head = op->next;
    if (s->q_head == NULL)
        s->q_tail = NULL;
    s->busy = false;
    op_free(op);
    replica_settle(s);
    if (s->q_head != NULL) {
        session_start_next(s);
    } else if (s->removed) {
        if (s->snap_pending == 0) /* else the last snapshot write's callback frees it */
            session_free(s);
    } else if (s->owner == NULL) {
        shm_unmap(&s->seg);
    }
    registry_check_drained(r);
}

static void session_start_next(struct session *s)
{
    if (s->busy || s->q_head == NULL)
        return;
    s->busy = true;
    op_run(s->q_head);
}

/*
 * The bytes an event's phase reads and writes, at most: an update reads the params and reads and
 * writes every profile's shadow (and saves it once more with --crash-exact), a cast reads a
 * shadow and writes the params, the stash copies move the params area both ways. The params
 * area is the trainer's to size (the tensors need only fit in it), so the copies count it, not
 * the tensors. UINT64_MAX for the phases that never run on the loop.
 */
static uint64_t phase_bytes(const struct session *s, enum op_phase phase)
{
    const struct plan *p = &s->plan;
    uint64_t k = s->nprof > 0 ? s->nprof : 1;

    switch (phase) {
    case PH_TENSORS:
        return p->param_bytes + (2 + (s->reg->ctx->opts->crash_exact ? 1 : 0)) * k *
                                    p->shadow_bytes;
    case PH_CAST:
        return p->param_bytes + p->shadow_bytes;
    case PH_STASH:
    case PH_RESTORE:
        return s->geo.params_bytes > UINT64_MAX / 2 ? UINT64_MAX : 2 * s->geo.params_bytes;
    default:
        return UINT64_MAX;
    }
}

/*
 * Whether the phase's work runs on the loop thread (--inline-max): the data work of an event
 * (update, swap) that moves so few bytes that a worker's wake-up and the loop's wake-up by the
 * worker would cost more than the work itself (docs/performance.md "The fixed cost of an
 * update"). Never the file phases (disk I/O) nor registration (run once), nor while the test
 * hook that stalls a chunk is armed.
 */
static bool runs_here(const struct op *op, enum op_phase phase)
{
    const struct emad *ctx = op->s->reg->ctx;

    if (op->kind != OP_EVENT || phase_bytes(op->s, phase) > ctx->opts->inline_max)
        return false;
    return !pool_stall_armed(ctx->pool);
}

static void submit(struct op *op, enum op_phase phase, pool_chunk_fn fn, size_t nchunks)
{
    op->phase = phase;
    op->job.run = fn;
    op->job.done = op_done;
    op->job.arg = op;
    op->job.nchunks = nchunks;
    if (op->t0 == 0)
        op->t0 = uv_hrtime(); /* the first phase's start: what the metrics time */
    struct emad *ctx = op->s->reg->ctx;
    bool here = runs_here(op, phase);
    if (op->kind == OP_EVENT)
        metrics_job(ctx->metrics, here);
    if (here)
        pool_run_here(ctx->pool, &op->job);
    else
        pool_submit(ctx->pool, &op->job);
}

/* The header of the trainer's segment, read or written on the loop thread
 * under the SIGBUS guard: -EFAULT if the trainer shrank the object. */
static int seg_state_get(struct session *s, uint32_t *state)
{
    struct shm_guard g;

    shm_guard_enter(&g, &s->seg);
    *state = seg_swap_state_load(s->seg.base);
    return shm_guard_leave(&g);
}

static int seg_state_set(struct session *s, uint32_t state, bool bump)
{
    struct shm_guard g;

    shm_guard_enter(&g, &s->seg);
    seg_swap_state_store(s->seg.base, state);
    if (bump)
        seg_swap_generation_bump(s->seg.base);
    return shm_guard_leave(&g);
}

/* The trainer's segment faulted under us (it shrank): that session alone
 * fails; the segment is dropped and the session detached, shadow kept. */
static void segment_broken(struct op *op)
{
    struct session *s = op->s;

    log_error(reg_log(s->reg), "session %s: segment %s shrank or vanished while emad used it "
              "(SIGBUS); session detached", s->name, s->shm_name);
    peer_fail(op->peer, op->msgid, MSG_E_SHM,
                "session %s: segment %s shrank or vanished while emad was using it (SIGBUS): "
                "the operation did not complete and the shadow may hold part of it; the "
                "session is detached: register again with resume and a valid segment",
                s->name, s->shm_name);
    shm_unmap(&s->seg);
    /* A replica's segment (exchanged in) fails that replica alone. */
    if (s->rep_in != NULL)
        s->rep_in->owner = NULL;
    else
        s->owner = NULL;
    shadow_sync(s);
    op_finish(op);
}

/* The shadow faulted under us: someone resized it (possible only where it
 * had to be given to its trainer, or the trainer is emad's own uid). Its
 * contents are lost: that session alone fails, and is removed. */
static void shadow_failed(struct op *op)
{
    struct session *s = op->s;

    log_error(reg_log(s->reg), "session %s: shadow %s was resized or removed while emad used "
              "it (SIGBUS); session removed", s->name, s->shadow_name);
    peer_fail(op->peer, op->msgid, MSG_E_SHM,
                "session %s: its shadow %s was resized or removed while emad was using it "
                "(SIGBUS): the EMA weights are lost and the session is removed; register again",
                s->name, s->shadow_name);
    if (!s->removed) {
        journal_remove(s);
        registry_unlink(s->reg, s);
    }
    op_finish(op);
}

static size_t copy_chunks(const struct session *s)
{
    return (s->geo.params_bytes + COPY_CHUNK_BYTES - 1) / COPY_CHUNK_BYTES;
}

/* Apply the state change of a completed action, and record it in the
 * shadow's header before anyone is told: a reply is a promise that a crash
 * of emad from then on keeps it. */
static void commit(struct op *op)
{
    struct op_event *e = op_event(op);
    struct session *s = op->s;

    /* A replica's swap changes its own active flag (exchanged in) and the swap count only: the
     * clock, the record and the shadow header are the leader's. */
    if (op->rep != NULL) {
        ema_commit(&s->st, e->action, NULL);
        return;
    }
    if (s->rep != NULL && e->ev == EMA_EVENT_BATCH_END && e->has_clock &&
        (e->action == EMA_ACTION_UPDATE || e->action == EMA_ACTION_START_UPDATE ||
         e->action == EMA_ACTION_START))
        e->diverged = replica_mark_leader(s, e->clock.batch);
    if (s->group_replicas > 1 && e->has_clock)
        replica_note_end(s, e->ev, &e->clock);
    if (s->nprof > 0 && (e->ev == EMA_EVENT_BATCH_END || e->ev == EMA_EVENT_EPOCH_END))
        profile_commit(s->prof, s->nprof, &e->plan, e->has_clock ? &e->clock : NULL, &s->st);
    else
        ema_commit(&s->st, e->action, e->has_clock ? &e->clock : NULL);
    if (e->resume_from != NULL) {
        /* The replay is complete: the event is applied once, exactly. */
        s->redo_pending = false;
        if (s->redo_clears)
            s->interrupted = false;
        e->resume_from = NULL;
        free(s->redo_from);
        s->redo_from = NULL;
    }
    if (e->has_seq) {
        /* Written in place: the header is where the record must survive. */
        struct seq_record *rec = &shadow_hdr(s)->recent[e->seq % SEQ_RECORDS];
        struct shm_guard g;
        shadow_enter(s, &g);
        *rec = (struct seq_record){.seq = e->seq, .updates = s->st.updates,
                                   .action = (uint8_t)e->action, .active = s->st.active,
                                   .started = s->st.started};
        shadow_leave(s, &g);
        if (e->seq > s->last_seq)
            s->last_seq = e->seq;
    }
    shadow_sync(s);
}

static bool is_swap(enum ema_action a)
{
    return a == EMA_ACTION_SWAP_IN || a == EMA_ACTION_SWAP_OUT;
}

/*
 * A request seq at or below the last one applied is a client sending again
 * what it sent before losing its connection. Data work that cannot be
 * repeated (an update) is answered from the record. A swap is not: its
 * request names the weights wanted in the params, and the client may have
 * put the training weights back since, so it runs again against the state
 * as it is now. true when op was answered here.
 */
static bool replayed(struct op *op)
{
    struct op_event *e = op_event(op);
    struct session *s = op->s;
    struct seq_record copy;
    const struct seq_record *rec = &copy;
    struct shm_guard g;

    if (!e->has_seq || e->seq > s->last_seq)
        return false;
    shadow_enter(s, &g);
    copy = shadow_hdr(s)->recent[e->seq % SEQ_RECORDS];
    shadow_leave(s, &g);
    /* A shadow its trainer could write (no ACLs) may hold any action: one
     * out of range is a record emad cannot answer from. */
    if (rec->seq != e->seq || rec->action >= EMA_ACTION_COUNT) {
        peer_fail(op->peer, op->msgid, MSG_E_STATE,
                    "%s: request seq %" PRIu64 " is not newer than the last applied (%" PRIu64
                    ") and emad no longer remembers its outcome (it keeps the last %u)",
                    ema_event_name(e->ev), e->seq, s->last_seq, SEQ_RECORDS);
        op_finish(op);
        return true;
    }
    if (is_swap((enum ema_action)rec->action))
        return false;
    log_info(reg_log(s->reg), "session %s: request seq %" PRIu64 " sent again; answered from "
             "the record (%s), not applied twice", s->name, e->seq,
             ema_action_name((enum ema_action)rec->action));
    reply_recorded(op, rec);
    op_finish(op);
    return true;
}

/* The action of an event: ema.c's for a session without profiles; with profiles, the update
 * events through profile.c, and the swaps through ema.c with the swapped profile's started. */
static int decide(struct op *op)
{
    struct op_event *e = op_event(op);
    struct session *s = op->s;
    const struct ema_clock *now = e->has_clock ? &e->clock : NULL;

    if (e->ev == EMA_EVENT_EVAL_START || e->ev == EMA_EVENT_CHECKPOINT)
        e->prof = s->eval;
    if (s->nprof == 0)
        return ema_decide(&s->cfg, &s->st, e->ev, now, &e->action);
    if (e->ev == EMA_EVENT_BATCH_END || e->ev == EMA_EVENT_EPOCH_END) {
        int rc = profile_decide(s->prof, s->nprof, s->st.active, e->ev, now, &e->plan);
        e->action = e->plan.action;
        return rc;
    }
    struct ema_state st = s->st;
    st.started = e->prof < s->nprof && s->prof[e->prof].started;
    return ema_decide(&s->cfg, &st, e->ev, now, &e->action);
}

/* With profiles: whose update the health signals describe (the eval profile's when it updates,
 * else the first updating one's), and whether there is one (a profile that starts at this event
 * has no shadow before it to compare with). */
static bool pick_health_profile(struct op_event *e, const struct session *s)
{
    uint32_t plain = e->plan.due & ~e->plan.init;

    if (plain == 0)
        return false;
    e->health_prof = (plain & (1u << s->eval)) ? s->eval : (unsigned)__builtin_ctz(plain);
    return true;
}

static void run_event(struct op *op)
{
    struct op_event *e = op_event(op);
    struct session *s = op->s;
    uint32_t state;

    if (replayed(op)) /* never a replica's: its seq is not kept (session.c) */
        return;
    /* A replica updates nothing: its batch_end checks its params against the leader's. Every
     * other event goes through the state machine on the replica's own active flag (exchanged
     * in), so that the batch_start after a checkpoint swaps its training weights back. */
    if (op->rep != NULL && (e->ev == EMA_EVENT_BATCH_END || e->ev == EMA_EVENT_EPOCH_END)) {
        if (e->ev == EMA_EVENT_BATCH_END && e->has_clock)
            e->diverged = replica_mark(s, op->rep, e->clock.batch);
        e->action = EMA_ACTION_NONE;
        reply_action(op);
        op_finish(op);
        return;
    }
    if (e->has_clock && replica_is_replay(s, e->ev, &e->clock)) {
        log_info(reg_log(s->reg), "session %s: %s at batch %" PRIu64 " epoch %" PRIu64 " from "
                 "the new leader (pid %ld) is not after the last one applied: sent again, "
                 "not applied twice", s->name, ema_event_name(e->ev), e->clock.batch,
                 e->clock.epoch, (long)s->owner_pid);
        e->action = EMA_ACTION_NONE;
        reply_action(op);
        op_finish(op);
        return;
    }
    if (decide(op) < 0) {
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "event: the state machine refused it");
        op_finish(op);
        return;
    }
    switch (e->action) {
    case EMA_ACTION_NONE:
        commit(op);
        reply_action(op);
        op_finish(op);
        return;
    case EMA_ACTION_START:
    case EMA_ACTION_UPDATE:
    case EMA_ACTION_START_UPDATE:
        /* Every session, of one profile or several (record.c's blocks, chunk.c). */
        e->logged = s->reg->ctx->opts->crash_exact;
        struct shadow_header h;
        struct shm_guard g;
        shadow_enter(s, &g);
        h = *shadow_hdr(s);
        shadow_leave(s, &g);
        if (e->logged && s->redo_pending && e->has_seq && e->seq == h.pending_seq &&
            (uint32_t)e->action == h.pending_action && e->clock.batch == h.pending_batch &&
            e->clock.epoch == h.pending_epoch) {
            e->resume_from = s->redo_from; /* the replay: only what is left */
            log_info(reg_log(s->reg), "session %s: seq %" PRIu64 " sent again after a crash: "
                     "writing the elements the cut-short run had not", s->name, e->seq);
        } else {
            redo_cancel(s, "another event");
        }
        /* Health on plain updates: a start has no shadow before it to compare with, and a
         * replay after a crash sees only what the cut-short run had not written (its signals
         * would describe part of the model; chunk.c still applies the non-finite policy). */
        e->health = (s->nprof == 0 ? e->action == EMA_ACTION_UPDATE
                                   : pick_health_profile(e, s)) &&
                    s->health.enabled && e->resume_from == NULL &&
                    health_prepare(&s->health, s->plan.nchunks) == 0;
        op->t0 = uv_hrtime();
        if (e->logged)
            redo_begin(s, e->resume_from, e->has_seq ? e->seq : 0, e->action, &e->clock);
        else
            shadow_begin(s);
        submit(op, PH_TENSORS, chunk_tensors, s->plan.nchunks);
        return;
    case EMA_ACTION_SWAP_IN:
        /* A replica's swap leaves the leader's pending replay alone: the shadow it reads is not
         * the one a replay would change. */
        if (op->rep == NULL)
            redo_cancel(s, "a swap");
        if (seg_state_get(s, &state) < 0) {
            segment_broken(op);
            return;
        }
        if (state != SEG_TRAIN) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE,
                        "%s: the segment's swap_state is %u, not TRAIN: restore the training "
                        "weights from the stash first", ema_event_name(e->ev), state);
            op_finish(op);
            return;
        }
        submit(op, PH_STASH, chunk_copy, copy_chunks(s));
        return;
    case EMA_ACTION_SWAP_OUT:
        submit(op, PH_RESTORE, chunk_copy, copy_chunks(s));
        return;
    default:
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "event: unknown action");
        op_finish(op);
    }
}

static void run_close(struct op *op, bool drop)
{
    struct op_close *c = op_close(op);
    struct session *s = op->s;
    struct registry *r = s->reg;
    struct msg_empty e = {0};

    if (!drop && c->keep) {
        s->owner = NULL;
        log_info(reg_log(r), "session %s: closed with keep; detached, shadow kept", s->name);
    } else {
        log_info(reg_log(r), "session %s: %s; shadow %s removed", s->name,
                 drop ? "dropped" : "closed", s->shadow_name);
        journal_remove(s);
        registry_unlink(r, s);
        /* Once a reply says a session is gone, its shadow is gone: unlink
         * now (the mapping stays until the session is freed). */
        if (s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
        s->shadow_name[0] = '\0';
    }
    peer_reply(op->peer, op->msgid, &msg_empty_desc, &e);
    op_finish(op);
}

static void run_attach(struct op *op)
{
    struct op_attach *a = op_attach(op);
    struct session *s = op->s;
    uint32_t state = SEG_TRAIN;

    shm_unmap(&s->seg);
    s->seg = a->new_seg;
    s->geo = a->new_geo;
    a->new_seg.base = NULL;
    a->new_seg.len = 0;
    snprintf(s->shm_name, sizeof(s->shm_name), "%s", a->new_shm);
    s->params_bytes = s->geo.params_bytes;
    if (seg_state_get(s, &state) < 0) {
        segment_broken(op);
        return;
    }
    /* The trainer restored its training weights itself if it crashed while
     * the EMA weights were in: believe the segment. */
    if (s->st.active && state == SEG_TRAIN) {
        s->st.active = false;
        log_info(reg_log(s->reg), "session %s: the new segment holds the training weights; "
                 "EMA weights no longer active", s->name);
    }
    shadow_sync(s);
    metrics_register(s->reg->ctx->metrics, true);
    reply_register(op, a->compact);
    op_finish(op);
}

static void op_run(struct op *op)
{
    struct session *s = op->s;

    if (shadow_is_broken(s) && op->kind != OP_CLOSE && op->kind != OP_DROP) {
        shadow_failed(op);
        return;
    }
    switch (op->kind) {
    case OP_INIT:
        op->t0 = uv_hrtime();
        shadow_begin(s);
        submit(op, PH_TENSORS, chunk_init, s->plan.nchunks + 1);
        return;
    case OP_ATTACH:
        run_attach(op);
        return;
    case OP_EVENT:
        /* Queued by a replica that leads now (replica_settle): the leader's event. */
        if (op->rep != NULL && op->rep->owner != op->peer && s->owner == op->peer)
            op->rep = NULL;
        /* A replica's event runs on its own segment; one whose replica (or, with replicas,
         * whose leader) is gone since it was queued has no segment of its sender's to run on. */
        if ((op->rep != NULL && op->rep->owner != op->peer) ||
            (op->rep == NULL && s->rep != NULL && s->owner != op->peer)) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE, "session %s: this connection no "
                      "longer holds a segment of it", s->name);
            op_finish(op);
            return;
        }
        if (op->rep != NULL)
            replica_exchange(s, op->rep);
        if (s->seg.base == NULL) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE,
                        "session %s is detached: register with resume first", s->name);
            op_finish(op);
            return;
        }
        run_event(op);
        return;
    case OP_SAVE:
        redo_cancel(s, "a save");
        if (session_meta_encode(s, &op_file(op)->meta) < 0) {
            peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "save: out of memory");
            op_finish(op);
            return;
        }
        submit(op, PH_FILE, chunk_file, 1);
        return;
    case OP_LOAD:
        /* Queued behind a close or drop: the session is gone now. */
        if (s->removed) {
            peer_fail(op->peer, op->msgid, MSG_E_NOSESSION, "load: session %s is being closed",
                        s->name);
            op_finish(op);
            return;
        }
        if (s->st.active) {
            peer_fail(op->peer, op->msgid, MSG_E_STATE,
                        "load: session %s has its EMA weights swapped in; swap out first",
                        s->name);
            op_finish(op);
            return;
        }
        redo_cancel(s, "a load");
        shadow_begin(s);
        submit(op, PH_FILE, chunk_file, 1);
        return;
    case OP_CLOSE:
        run_close(op, false);
        return;
    case OP_DROP:
        run_close(op, true);
        return;
    case OP_SNAPSHOT: {
        char err[512];
        struct op_snapshot *o = op_snapshot(op);
        int rc = o->export ? snap_job_export(s, o->profile, o->dtype, &o->job, err, sizeof(err))
                           : snap_job_new(s, &o->job, err, sizeof(err));
        if (rc < 0) {
            peer_fail(op->peer, op->msgid,
                      rc == -ENOENT   ? MSG_E_STATE
                      : rc == -ESRCH  ? MSG_E_BADARG
                                      : MSG_E_INTERNAL,
                      "%s", err);
            op_finish(op);
            return;
        }
        submit(op, PH_SNAPCOPY, chunk_snapshot, s->plan.nchunks);
        return;
    }
    }
}

static void reply_file(struct op *op)
{
    struct op_file *f = op_file(op);
    struct msg_file_reply rep;

    log_info(reg_log(op->s->reg), "session %s: %s %s (%" PRIu64 " bytes)", op->s->name,
             op->kind == OP_SAVE ? "saved to" : "loaded from", f->path, f->bytes);
    rep.path = msg_str_c(f->path);
    rep.bytes = f->bytes;
    peer_reply(op->peer, op->msgid, &msg_file_reply_desc, &rep);
}

/* A save or load is done: the reply, or for a load the journal first.
 * true when more work was submitted (the op goes on). */
static bool finish_file(struct op *op)
{
    struct op_file *f = op_file(op);
    const char *what = op->kind == OP_SAVE ? "save" : "load";

    if (f->rc < 0) {
        /* PERM: a state file of another uid, or a state directory others may write. LIMIT:
         * over the uid's quota of state files (store_quota_check). */
        const char *code = f->rc == -EINVAL   ? MSG_E_STATE
                           : f->rc == -EPERM  ? MSG_E_PERM
                           : f->rc == -EDQUOT ? MSG_E_LIMIT
                                               : MSG_E_IO;
        log_warn(reg_log(op->s->reg), "session %s: %s failed: %s", op->s->name, what, f->err);
        peer_fail(op->peer, op->msgid, code, "%s", f->err);
        return false;
    }
    if (op->kind == OP_LOAD) {
        struct session *s = op->s;
        if (f->one_profile) {
            /* One profile's shadow is the file's now; the others may still hold what the
             * interrupted update left. */
            loadprof_apply(s, f);
            s->reloaded |= 1u << f->prof;
            if (s->reloaded == (s->nprof > 0 ? (1u << s->nprof) - 1 : 1u))
                s->interrupted = false;
        } else {
            session_apply_saved(s, &f->loaded);
            s->interrupted = false; /* the shadow is the file's now */
            /* The trainers go on from the file's time, which may be before the last end
             * applied: what they send next is new, no replay (replica_is_replay). */
            s->has_end = 0;
        }
        shadow_sync(op->s);
        submit(op, PH_JOURNAL, chunk_journal, 1);
        return true;
    }
    reply_file(op);
    return false;
}

/* A snapshot could not be made or written: logged, counted, and for one taken after an event
 * said on the session's next event reply (snapshot.h). */
static void snap_failed(struct session *s, const char *why, bool tell_next)
{
    s->snap_failures++;
    snprintf(s->snap_error, sizeof(s->snap_error), "%s", why);
    s->snap_error_new = s->snap_error_new || tell_next;
    log_warn(reg_log(s->reg), "session %s: %s", s->name, why);
}

/* snapshot's reply: the files it wrote. */
static void reply_snapshot(struct op *op, const struct snap_job *j)
{
    struct msg_snapshot_entry e[PROFILE_MAX];
    static char paths[PROFILE_MAX][PATH_MAX + 128]; /* loop thread only */
    struct msg_snapshots_reply rep = {e, j->nprof};

    for (unsigned p = 0; p < j->nprof; p++) {
        snprintf(paths[p], sizeof(paths[p]), "%s/%s", j->dpath, j->prof[p].file);
        e[p] = (struct msg_snapshot_entry){msg_str_c(paths[p]), msg_str_c(j->prof[p].name),
                                           j->prof[p].batch, msg_str_c(dtype_name(j->cfg.dtype)),
                                           j->prof[p].bytes};
    }
    peer_reply(op->peer, op->msgid, &msg_snapshots_reply_desc, &rep);
}

static void snap_written(struct snap_job *j);

/*
 * Start j's write, or let it wait for the one in flight: a session writes one snapshot at a
 * time, so that its files appear, and are retained, in batch order. One waits at most: a disk
 * slower than snapshot_every then skips snapshots (each skip counted and reported as a failure)
 * rather than holding ever more copies of the shadows in memory.
 */
static void snap_launch(struct snap_job *j)
{
    struct session *s = j->s;

    if (s->snap_pending == 0) {
        snap_start(j, snap_written);
        return;
    }
    if (s->snap_waiting == NULL) {
        s->snap_waiting = j;
        return;
    }
    char why[300];
    snprintf(why, sizeof(why), "snapshot of session %s at batch %" PRIu64 " skipped: the "
             "previous ones are still being written (the disk is slower than snapshot_every)",
             s->name, j->prof[0].batch);
    if (j->op != NULL) {
        peer_fail(j->op->peer, j->op->msgid, MSG_E_IO, "%s", why);
        op_finish(j->op); /* frees j */
        return;
    }
    snap_failed(s, why, true);
    snap_job_free(j);
}

/* A snapshot's files are written, or failed (loop thread, snap_start's callback). */
static void snap_written(struct snap_job *j)
{
    struct session *s = j->s;
    struct registry *r = s->reg;
    struct op *op = j->op;

    if (s->snap_waiting != NULL) {
        struct snap_job *next = s->snap_waiting;
        s->snap_waiting = NULL;
        snap_start(next, snap_written);
    }

    if (j->rc < 0)
        snap_failed(s, j->err, op == NULL);
    else
        log_debug(reg_log(r), "session %s: snapshot of %u power profiles at batch %" PRIu64
                  " written", s->name, j->nprof, j->prof[0].batch);
    if (op != NULL) {
        /* The request waited for the files: IO names the file and the cause. */
        if (j->rc < 0)
            peer_fail(op->peer, op->msgid, MSG_E_IO, "%s", j->err);
        else
            reply_snapshot(op, j);
        op_finish(op); /* frees j with the op */
        return;
    }
    snap_job_free(j);
    if (s->removed && s->q_head == NULL && s->snap_pending == 0)
        session_free(s);
    registry_check_drained(r);
}

/* After an update at a batch of snapshot_every: the copy of the power profiles' shadows, before
 * the reply. true when it was submitted (the op goes on). */
static bool snapshot_after(struct op *op)
{
    struct op_event *e = op_event(op);
    struct session *s = op->s;
    char err[512];

    if (e->ev != EMA_EVENT_BATCH_END || !e->has_clock || !snap_due(&s->snap, e->clock.batch))
        return false;
    int rc = snap_job_new(s, &e->snap, err, sizeof(err));
    if (rc == -ENOENT) /* no power profile has a shadow yet */
        return false;
    if (rc < 0) {
        snap_failed(s, err, true);
        return false;
    }
    submit(op, PH_SNAPCOPY, chunk_snapshot, s->plan.nchunks);
    return true;
}

static void op_done(struct pool_job *job)
{
    struct op *op = job->arg;
    struct session *s = op->s;

    /* First: a shadow that faulted may fault again anywhere below where it
     * did, so nothing reads it any more (not even its redo records). */
    if (job->status == -EFAULT && shadow_is_broken(s)) {
        shadow_failed(op);
        return;
    }
    if (job->status != 0 && op->phase == PH_SNAPCOPY) {
        char why[300];
        snprintf(why, sizeof(why), "snapshot of session %s: copying the shadows failed: %s",
                 s->name, strerror(-job->status));
        snap_failed(s, why, op->kind == OP_EVENT);
        if (op->kind == OP_EVENT)
            reply_action(op);
        else
            peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "%s", why);
        op_finish(op);
        return;
    }
    if (job->status != 0 && op->kind == OP_EVENT && op_event(op)->logged &&
        op->phase == PH_TENSORS) {
        /* Cut short: the records tell how far it got, for its replay. */
        bool clears = s->redo_pending ? s->redo_clears : !s->interrupted;
        op_event(op)->resume_from = NULL; /* redo_recover replaces redo_from */
        struct shm_guard g;
        shadow_enter(s, &g);
        int recovered = redo_recover(s);
        shadow_leave(s, &g);
        if (recovered == 0)
            s->redo_clears = clears;
        else
            redo_cancel(s, "the event failed");
        s->interrupted = true;
        s->reloaded = 0;
        shadow_sync(s);
    }
    if (job->status == -EFAULT) {
        segment_broken(op);
        return;
    }
    if (job->status != 0) {
        log_error(reg_log(s->reg), "session %s: %s failed in a worker: %s", s->name,
                  ema_action_name(op->kind == OP_EVENT ? op_event(op)->action : EMA_ACTION_NONE),
                  strerror(-job->status));
        peer_fail(op->peer, op->msgid, MSG_E_INTERNAL, "session %s: the work failed: %s",
                    s->name, strerror(-job->status));
        op_finish(op);
        return;
    }
    if (op->phase != PH_SNAPCOPY)
        metrics_op_done(s->reg->ctx->metrics, op);
    switch (op->phase) {
    case PH_TENSORS:
        if (op->kind == OP_INIT) {
            s->ready = true;
            shadow_sync(s);
            if (op_init(op)->rc < 0)
                journal_failed(s, op_init(op)->err);
            reply_register(op, op_init(op)->compact);
            break;
        }
        s->last_update_seconds = (double)(uv_hrtime() - op->t0) / 1e9;
        commit(op);
        if (op_event(op)->health)
            finish_health(op);
        if (snapshot_after(op))
            return;
        reply_action(op);
        break;
    case PH_SNAPCOPY:
        if (op->kind == OP_SNAPSHOT) {
            /* The reply waits for the files; the session's next operations wait for it. */
            op_snapshot(op)->job->op = op;
            snap_launch(op_snapshot(op)->job);
            return;
        }
        reply_action(op);
        snap_launch(op_event(op)->snap);
        op_event(op)->snap = NULL;
        break;
    case PH_STASH:
        /* The stash is complete: from here a crash leaves a restorable copy. */
        if (seg_state_set(s, SEG_STASHED, false) < 0) {
            segment_broken(op);
            return;
        }
        submit(op, PH_CAST, chunk_tensors, s->plan.nchunks);
        return;
    case PH_CAST:
    case PH_RESTORE:
        if (seg_state_set(s, op->phase == PH_CAST ? SEG_EMA : SEG_TRAIN, true) < 0) {
            segment_broken(op);
            return;
        }
        commit(op);
        reply_action(op);
        break;
    case PH_FILE:
        if (finish_file(op))
            return;
        break;
    case PH_JOURNAL:
        if (op_file(op)->rc < 0)
            journal_failed(s, op_file(op)->err);
        reply_file(op);
        break;
    case PH_NONE:
        break;
    }
    op_finish(op);
}
