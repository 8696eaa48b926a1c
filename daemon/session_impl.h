/*
 * session_impl.h - what the session files share (see session.h for the
 * map): the session and its tensors, the operations of its FIFO, one struct
 * per kind of request, and the functions one file gives another. Not for
 * the rest of emad.
 */
#ifndef EMAD_SESSION_IMPL_H
#define EMAD_SESSION_IMPL_H

#include "health.h"
#include "peer.h"
#include "pool.h"
#include "profile.h"
#include "session.h"
#include "snapshot.h"

#include <limits.h>
#include <msgpack.h>

/* Elements per chunk: a few MiB of each stream, enough to amortise the
 * hand-off, small enough that sessions interleave finely. */
#define CHUNK_ELEMS (1u << 20)
/* Bytes per chunk of the stash copies. */
#define COPY_CHUNK_BYTES (4u << 20)

struct tensor {
    char *name;                /* NUL-terminated copy, in the session's names block */
    enum dtype dtype;          /* of the param */
    enum dtype shadow_dtype;   /* f32 for f32/f16/bf16, else dtype */
    uint64_t numel;
    uint64_t offset;           /* in the params area */
    uint64_t shadow_offset;    /* in the shadow object */
    uint64_t dims_at;          /* its shape in the session's dims (shard.c) */
    uint32_t ndim;             /* dimensions of its shape (a flat tensor: 1, [numel]) */
};

/* A chunk is a run of pieces: parts of tensors processed by one worker. */
struct piece {
    uint32_t tensor;
    uint64_t start;            /* first element */
    uint64_t count;
};

struct plan {
    struct piece *pieces;
    size_t npieces;
    size_t *first;             /* chunk c is pieces[first[c], first[c + 1]) */
    size_t nchunks;
    uint64_t param_bytes;      /* of every tensor's params, and of one profile's shadow of */
    uint64_t shadow_bytes;     /* them: the traffic --inline-max weighs (op.c phase_bytes) */
};

/* Another rank of the node holding the same slices as the session's owner (the leader), sharing
 * its shadow (replica.c, docs/scaleout.md "Replicas"). */
struct replica {
    struct peer *owner;        /* its connection; NULL: the slot is free */
    pid_t pid;
    uint64_t rank;             /* the group rank it registered with */
    char shm_name[256];        /* its segment */
    struct shm_map seg;
    struct seg_geometry geo;
    bool active;               /* the EMA weights are in its params */
    bool has_mark;             /* its last batch_end's sample of its params: */
    uint64_t mark_batch, mark_hash;
};

struct session {
    struct session *next;      /* in the registry */
    struct registry *reg;
    char name[NAMES_SESSION_MAX + 1];
    char qualified[NAMES_SESSION_MAX + 16]; /* "<uid>:<name>", how root names it */
    uid_t uid;                 /* owner's uid: only it (and root) may touch it; names are
                                  unique per uid */
    struct peer *owner;        /* NULL while detached */
    pid_t owner_pid;
    struct tensor *tensors;
    size_t ntensors;
    char *names;               /* every tensor's name, back to back (one allocation) */
    uint64_t *dims;            /* per tensor at dims_at: its shape, then for a sliced session
                                  its global shape and offsets (shard.c) */
    bool shaped;               /* registered with shapes (else every tensor is flat) */
    bool sliced;               /* some tensor is a slice of a larger one */
    bool has_group;            /* registered with a group (docs/protocol.md "Shard sessions") */
    char group_job[NAMES_SESSION_MAX + 1];
    uint64_t group_rank, group_world, group_replicas;
    struct replica *rep;       /* group_replicas - 1 slots for the other replicas, or NULL */
    struct replica *rep_in;    /* the replica whose segment the running op has exchanged into
                                  seg, geo, shm_name and st.active (replica.c), or NULL */
    bool has_lead_mark;        /* the leader's sample of its params at its last update: */
    uint64_t lead_batch, lead_hash;
    uint64_t diverged;         /* checks that found a replica differing from the leader */
    char divergence[256];      /* the last one, in words ("" none) */
    struct seg_geometry geo;   /* the segment's, as checked when it was mapped: never read
                                  again from its header, which the trainer can rewrite */
    uint64_t params_bytes;     /* geo.params_bytes (what status shows while detached too) */
    uint64_t shadow_bytes;
    struct plan plan;          /* the tensors in chunks, for updates and casts */
    struct ema_config cfg;     /* with profiles: the eval profile's if composer, else the
                                  first composer one's, else the defaults (status shows it) */
    struct ema_state st;       /* with profiles: updates counts the events that updated any
                                  profile, started is any profile's */
    struct profile prof[PROFILE_MAX]; /* registered with config.profiles: nprof of them */
    unsigned nprof;            /* 0: without profiles (its one profile "ema" is cfg and st) */
    unsigned eval;             /* the profile eval_start and checkpoint swap in */
    uint64_t area_bytes;       /* one profile's shadow (profile p's tensors lie p * area_bytes
                                  after the offsets register reports) */
    char half_life[EMA_TIME_STRLEN];
    char update_interval[EMA_TIME_STRLEN];
    char ema_start[EMA_TIME_STRLEN];
    char shm_name[256];        /* the trainer's segment */
    struct shm_map seg;        /* mapped while attached (or while work uses it) */
    char shadow_name[64];
    struct shm_map shadow;
    double last_update_seconds;
    double last_update_at;      /* unix time the last update completed (0: none yet) */
    uint64_t last_update_batch; /* its batch */
    struct health health;      /* what the updates saw (health.h); loop thread */
    bool interrupted;          /* an update was cut short by a crash of emad */
    uint32_t reloaded;         /* profiles loaded one by one (loadprof.c) since interrupted was
                                  set: all of them clear it */
    uint64_t last_seq;         /* the highest request seq applied (0: none); the outcomes
                                  of the last ones are in the shadow header (recent) */
    uint32_t has_end;          /* replicas: the time of the leaders' last batch_end ([0]) and */
    uint64_t end_batch[2];     /* epoch_end ([1]) applied, bit k set when [k] is; in the */
    uint64_t end_epoch[2];     /* shadow header too. A replica that comes to lead may send */
    bool end_guard;            /* them again: until its first end event applied (replica.c) */
    uint64_t redo_off;         /* the redo records, in the shadow object */
    uint64_t redo_bytes;       /* the object's bytes past shadow_bytes */
    bool redo_pending;         /* an event cut short by a crash awaits its replay: */
    bool redo_clears;          /* ... (the header's pending_* say which event) and which
                                  clears interrupted (set by that crash only) */
    uint64_t *redo_from;       /* per chunk: elements it had written for good */
    struct op *q_head, *q_tail;/* operations waiting or running (the head) */
    bool busy;                 /* the head is running */
    bool ready;                /* the shadow is initialised */
    bool removed;              /* out of the registry; freed when the queue empties */
    bool kept;                 /* written to a state file by registry_save_all */
    bool closing;              /* a close (without keep) or a drop is queued: the session is
                                  as good as gone to resume, drop and load */
    bool shadow_broken;        /* the shadow faulted (resized under emad): the session fails;
                                  set by any thread (atomic) */
    struct snap_config snap;   /* snapshots of the power profiles (snapshot.h) */
    unsigned snap_pending;     /* snapshot writes in flight: the session is freed after them */
    struct snap_job *snap_waiting; /* the next write, started when the one in flight is done
                                  (one at a time: retention sees files in batch order) */
    uint64_t snap_failures;    /* snapshots that failed to write */
    char snap_error[1024];     /* the last failure's message ("" none) */
    bool snap_error_new;       /* ... not yet reported on an event reply */
};

/* ---- operations: one struct per kind, each starting with struct op ---- */

enum op_kind {
    OP_INIT,    /* register: shadow := params (struct op_init) */
    OP_ATTACH,  /* register with resume: adopt a new segment (struct op_attach) */
    OP_EVENT,   /* event and swap (struct op_event) */
    OP_SAVE,    /* struct op_file */
    OP_LOAD,    /* struct op_file */
    OP_CLOSE,   /* struct op_close */
    OP_DROP,    /* struct op_close */
    OP_SNAPSHOT,/* snapshot on request (struct op_snapshot) */
};

enum op_phase {
    PH_NONE,
    PH_TENSORS, /* update / start / initialise: tensor chunks */
    PH_STASH,   /* swap in, first half: params -> stash */
    PH_CAST,    /* swap in, second half: shadow -> params */
    PH_RESTORE, /* swap out: stash -> params */
    PH_FILE,    /* save / load: one chunk */
    PH_JOURNAL, /* load, then: the journal (its fsyncs off the loop thread) */
    PH_SNAPCOPY,/* an update's snapshot, or snapshot: the power profiles' shadows copied */
};

/* What every operation has: its place in the FIFO and who gets the reply. */
struct op {
    struct op *next;
    struct session *s;
    enum op_kind kind;
    enum op_phase phase;
    struct peer *peer;         /* who gets the reply (held, with the op's size) */
    uint32_t msgid;
    struct pool_job job;
    uint64_t t0;               /* uv_hrtime when the data work began */
    struct replica *rep;       /* a replica's event: runs on its segment (replica.c) */
};

struct op_event {
    struct op op;
    enum ema_event ev;
    bool has_clock;
    struct ema_clock clock;
    enum ema_action action;
    const uint64_t *resume_from; /* sent again after a crash: per chunk, done already */
    bool logged;               /* tensor work in logged blocks (--crash-exact) */
    bool health;               /* the update fills s->health.parts (health.h) */
    bool has_seq;              /* the client's request number */
    uint64_t seq;
    struct profile_plan plan;  /* with profiles: what the update does to each */
    unsigned prof;             /* the profile a swap in casts (0 without profiles) */
    unsigned health_prof;      /* with profiles: the profile whose update health describes */
    struct snap_job *snap;     /* the snapshot after this update (PH_SNAPCOPY), or NULL */
    bool diverged;             /* a replica check of this event found a difference */
};

struct op_snapshot {
    struct op op;
    struct snap_job *job;
    bool export;                             /* export one profile (snap_job_export) */
    char profile[PROFILE_NAME_MAX + 1];      /* with export: which */
    enum dtype dtype;                        /* with export */
};

struct op_init {
    struct op op;
    bool compact;              /* the reply lists shadow offsets only */
    int rc;                    /* the journal written beside the initialisation */
    char err[512];
};

struct op_attach {
    struct op op;
    bool compact;
    struct shm_map new_seg;
    struct seg_geometry new_geo; /* new_seg's checked geometry */
    char new_shm[256];
};

struct op_close {
    struct op op;
    bool keep;                 /* close with keep: detach only */
};

struct op_file {
    struct op op;
    char file[160];            /* the state file's name */
    msgpack_sbuffer meta;      /* save: metadata; load: the file's metadata copy */
    char path[PATH_MAX];       /* result */
    uint64_t bytes;
    int rc;                    /* result (then, for a load, the journal's) */
    char err[512];
    struct msg_saved_state loaded; /* load: decoded metadata */
    msgpack_unpacked unpacked;     /* load: what loaded points into */
    bool has_loaded;
    bool one_profile;              /* load of one profile's shadow (loadprof.c): */
    unsigned prof;                 /* ... its index */
    bool has_set;                  /* ... and the state it takes */
    struct msg_profile_set set;
};

/* The kind's struct: op is its first member. */
static inline struct op_event *op_event(struct op *op)
{
    return (struct op_event *)op;
}

static inline struct op_init *op_init(struct op *op)
{
    return (struct op_init *)op;
}

static inline struct op_attach *op_attach(struct op *op)
{
    return (struct op_attach *)op;
}

static inline struct op_close *op_close(struct op *op)
{
    return (struct op_close *)op;
}

static inline struct op_file *op_file(struct op *op)
{
    return (struct op_file *)op;
}

static inline struct op_snapshot *op_snapshot(struct op *op)
{
    return (struct op_snapshot *)op;
}

static inline struct log *reg_log(const struct registry *r)
{
    return r->ctx->log;
}

/* ---- registry.c ---- */

/* What a uid holds, against the per-uid limits. */
struct usage {
    unsigned sessions;
    uint64_t tensors;
    uint64_t shadow_bytes;
};

struct session *registry_find(struct registry *r, uid_t uid, const char *name, size_t len);
int registry_resolve(struct registry *r, uid_t uid, const char *name, size_t len,
                     struct session **out);
/* A session the peer may use (its owner only if owner_only); replies and
 * returns NULL otherwise. */
struct session *registry_lookup(struct registry *r, struct peer *p, uint32_t msgid,
                                const char *method, struct msg_str name, bool owner_only);
void registry_usage(const struct registry *r, uid_t uid, struct usage *u);
void registry_insert(struct registry *r, struct session *s);
void registry_unlink(struct registry *r, struct session *s);
void registry_check_drained(struct registry *r);
void registry_share_note(struct registry *r, enum shm_share share);
bool session_visible(const struct session *s, uid_t uid);
void session_fill_state(const struct session *s, uid_t viewer, struct msg_session_state *o);
bool session_same_table(const struct session *a, const struct session *b);

/* ---- session.c ---- */

void session_free(struct session *s);
/* The config (NULL: every default) into s->cfg and its strings; s is left
 * as it was on -EINVAL. */
int session_config_set(struct session *s, const struct msg_config *c, char *err, size_t errlen);
/* Validate the tensor table and lay out the shadow. 0, or -EINVAL (BADARG)
 * / -E2BIG (LIMIT) with err, or -ENOMEM. */
int session_build_tensors(struct session *s, const struct msg_register *req,
                          uint64_t max_tensors, char *err, size_t errlen);
/* A state file's config and counters into s (a load, a restart). */
/* Whether a state file's tensor table is the session's: the same names and numel in order, and
 * the same shadow dtypes (0, or -EINVAL with the first difference in err). */
int session_check_table(const struct session *s, const struct msg_saved_state *m, char *err,
                        size_t errlen);
/* Whether a state file's tensors, shadow size and number of profiles are the session's, which
 * load requires (0, or -EINVAL with the difference in err). */
int session_check_saved(const struct session *s, const struct msg_saved_state *m, char *err,
                        size_t errlen);
void session_apply_saved(struct session *s, const struct msg_saved_state *m);

/* ---- shard.c ---- */

/* The shapes and slices of register's tensors (either form) into s->dims, after s->tensors are
 * built: 0, -EINVAL (BADARG, with err) or -ENOMEM. */
int session_shapes_build(struct session *s, const struct msg_register *req, char *err,
                         size_t errlen);
/* A checked group into s (NULL: none). */
void session_group_set(struct session *s, const struct msg_group *g);
/* Whether a resume's shapes and slices agree with the session's (true when either has none). */
bool session_shapes_match(const struct session *a, const struct session *b);
/* Tensor i's shape (*ndim dimensions), and in a sliced session its global shape (NULL in
 * another) with *offsets: a tensor registered without a slice is its own global tensor. Point
 * into s->dims. */
const uint64_t *session_tensor_shape(const struct session *s, size_t i, size_t *ndim);
const uint64_t *session_tensor_slice(const struct session *s, size_t i, const uint64_t **offsets);
/* The shape columns of a state file's table (none for a session registered without shapes),
 * after msg_table_init; msg_table_release frees them. 0 or -ENOMEM. */
int session_table_dims(const struct session *s, struct msg_table *t);
/* status: the group, and (status with tensors) the table with shapes, which
 * registry_states_free releases. */
void session_fill_group(const struct session *s, bool *has, struct msg_group *g);
int session_fill_table(const struct session *s, struct msg_session_state *o);

/* ---- replica.c ---- */

/* Whether register from c for old joins it as a replica (group.replicas above 1 on both, old
 * attached to another connection). */
bool replica_joins(const struct session *old, const struct peer *c,
                   const struct msg_register *req);
/* Join: old takes fresh's segment (*seg, taken) for c, and c is answered. */
void replica_join(struct registry *r, struct peer *c, uint32_t msgid, struct session *old,
                  struct session *fresh, struct shm_map *seg, bool compact);
/* c's replica slot in s, or NULL. */
struct replica *replica_of(const struct session *s, const struct peer *c);
/* Exchange the replica's segment and active flag with the session's (op.c, around a replica's
 * operation): called once to enter, once to leave. */
void replica_exchange(struct session *s, struct replica *rep);
/* A replica's connection is gone or it closed: its slot is freed (its segment once no
 * operation uses it). */
void replica_gone(struct session *s, struct replica *rep);
/* After an operation, or once the leader is gone: a free leader seat is taken by the first
 * replica still attached; slots of gone replicas are cleaned. */
void replica_settle(struct session *s);
/* Another rank leads now (a replica took the seat, or resumed the session after a restart):
 * the records of request numbers are the old leader's, and would answer the new one's requests
 * as replays of requests it never sent. They are dropped, in the shadow's header too. */
void replica_forget_seqs(struct session *s);
/* The leader's update at batch is done: sample its params; a replica's batch_end: sample its
 * own (exchanged in). Either compares with the other side at the same batch; true when they
 * differ (counted, logged, kept in s->divergence). */
bool replica_mark_leader(struct session *s, uint64_t batch);
void replica_note_end(struct session *s, enum ema_event ev, const struct ema_clock *clock);
bool replica_is_replay(const struct session *s, enum ema_event ev, const struct ema_clock *clock);
void replica_end_times_out(const struct session *s, struct shadow_header *h);
void replica_end_times_in(struct session *s, const struct shadow_header *h);
bool replica_mark(struct session *s, struct replica *rep, uint64_t batch);
/* Live replicas, the leader included (0 without replicas). */
unsigned replica_count(const struct session *s);
void replica_free_all(struct session *s);

/* ---- op.c ---- */

/* A new operation of kind on s for the peer's request msgid; replies and
 * returns NULL when out of memory. */
struct op *op_new(struct session *s, enum op_kind kind, struct peer *p, uint32_t msgid);
void op_free(struct op *op);
/* Append op to its session's FIFO (it runs when it reaches the head). */
void op_enqueue(struct op *op);
/* The head op is done: the next one runs. */
void op_finish(struct op *op);
void reply_register(struct op *op, bool compact);

/* ---- chunk.c: worker threads only ---- */

int chunk_tensors(void *op, size_t index);
int chunk_init(void *op, size_t index);
int chunk_copy(void *op, size_t index);
int chunk_file(void *op, size_t index);
int chunk_journal(void *op, size_t index);
/* The power profiles' shadows into the op's snapshot job (PH_SNAPCOPY). */
int chunk_snapshot(void *op, size_t index);

/* ---- record.c ---- */

struct shadow_header *shadow_hdr(const struct session *s);
/* Where element start of tensor t's shadow is (profile 0's, or the only one). */
void *shadow_ptr(const struct session *s, const struct tensor *t, uint64_t start);
/* ... and in profile p's shadow. */
void *shadow_ptr_p(const struct session *s, const struct tensor *t, uint64_t start, unsigned p);
/* How many shadows the object holds: one per profile. */
static inline unsigned session_shadows(const struct session *s)
{
    return s->nprof > 1 ? s->nprof : 1;
}

/* The shadows a state file's config describes, counted as session_shadows counts them. */
static inline size_t saved_shadows(const struct msg_saved_state *m)
{
    return m->config.has_profiles && m->config.nprofiles > 1 ? m->config.nprofiles : 1;
}
/* The tensors' part of the shadow object (what save and load move). */
void *shadow_data(const struct session *s);
uint64_t shadow_data_bytes(const struct session *s);
/* The shadow object's size: the shadow and the records. */
uint64_t shadow_object_bytes(const struct session *s);
void shadow_enter(struct session *s, struct shm_guard *g);
void shadow_leave(struct session *s, struct shm_guard *g);
bool shadow_is_broken(const struct session *s);
void shadow_begin(struct session *s);
void shadow_sync(struct session *s);
struct redo_rec *redo_rec(const struct session *s, size_t chunk);
void redo_layout(struct session *s);
void redo_begin(struct session *s, const uint64_t *resume_from, uint64_t pending_seq,
                enum ema_action action, const struct ema_clock *clock);
int redo_recover(struct session *s);
void redo_cancel(struct session *s, const char *why);
uint64_t redo_block_elems(const struct session *s);
int redo_for_each_block(const struct session *s, size_t c,
                        int (*fn)(void *arg, uint64_t pos, const struct tensor *t,
                                  uint64_t start, uint64_t n),
                        void *arg);

/* loadprof.c: load of one profile's shadow (docs/protocol.md "load", profile). */
int loadprof_args(const struct session *s, const struct msg_file *req, struct op_file *f,
                  char *err, size_t errlen);
int loadprof_copy(struct session *s, const struct op_file *f, const void *data,
                  uint64_t data_len, char *err, size_t errlen);
void loadprof_apply(struct session *s, const struct op_file *f);

/* ---- persist.c ---- */

int session_meta_encode(struct session *s, msgpack_sbuffer *sb);
/* The journal: journal_store on any thread (it logs nothing), 0 or -errno
 * with err; journal_write logs a failure. */
int journal_store(struct session *s, char *err, size_t errlen);
void journal_write(struct session *s);
void journal_failed(struct session *s, const char *why);
void journal_remove(struct session *s);

/* ---- plan.c ---- */

/* Split tensors into chunks of about chunk_elems elements. 0 or -ENOMEM. */
int plan_build(struct plan *p, const struct tensor *t, size_t n, uint64_t chunk_elems);
void plan_free(struct plan *p);

#endif
