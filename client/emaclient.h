/*
 * emaclient.h - the C client of emad, the EMA daemon (libemaclient).
 *
 * emad keeps the exponential moving average of a trainer's weights in a
 * separate process. This library speaks its protocol (docs/protocol.md, version
 * 1: msgpack-rpc over a Unix socket). This is the only header users include;
 * link with `pkg-config --libs emaclient`.
 *
 * A trainer's life with the library:
 *   emac_connect()            one connection to emad (hello)
 *   emac_segment_create()     its tensors, in a shared-memory segment
 *   emac_register()           a session: emad maps the segment, makes a shadow
 *   emac_event() per event    batch_end (the update), eval_start/eval_end (swaps), ...
 *     or emac_event_send() + emac_event_wait() to overlap the update with compute
 *   emac_close(), emac_session_free(), emac_segment_destroy(), emac_disconnect()
 *
 * Conventions
 *   - Functions return 0 on success or a negative errno-style code. When a
 *     struct emac_error is passed (it may be NULL), it is filled on failure:
 *     `code` is the contract's error code (BADARG, NOSESSION, ...) for errors
 *     emad reported (the function returns -EREMOTEIO then), or one of the
 *     client-side codes below, and `message` a sentence naming the problem.
 *   - Results are returned through out-parameters and owned by the caller,
 *     who frees them with the matching *_free function. Pointers returned by
 *     accessors (emac_segment_tensor, emac_session_shadow, ...) point into
 *     the object they were taken from and live as long as it does.
 *
 * Crash safety
 *   emad swaps the EMA weights into the trainer's tensors only after copying
 *   the training weights to the segment's stash, and marks that in the
 *   segment's header (swap_state). If the connection to emad is lost (emad
 *   died or closed it) while a session's segment is not in the TRAIN state,
 *   the library copies the stash back itself and records it
 *   (emac_session_restored). A trainer that finds a segment left by a crash
 *   calls emac_segment_restore.
 *
 *   Then, unless reconnecting is turned off (emac_set_reconnect), the call
 *   that noticed reconnects with a bounded, jittered exponential backoff,
 *   registers every session of the client again with resume (same segment,
 *   same shadow addresses), and sends again the events and swaps that were
 *   not answered, so that the call returns as if nothing had happened:
 *     - an update emad had completed is never applied twice: events and
 *       swaps carry a per-session request number (seq) and emad answers one
 *       it has applied from its record (emac_result.replayed);
 *     - an update emad had not completed is applied on the new connection.
 *       If emad died while writing it, by default the update is applied
 *       over the part written before (those elements take it twice) and the
 *       session says so (emac_result.interrupted,
 *       emac_session_info.interrupted, emad's log); an emad run with
 *       --crash-exact keeps, per chunk of the shadow, how far a cut-short
 *       update got (and the old values of the block it was writing), and
 *       the update sent again writes only the rest: exactly once;
 *     - a swap is done again against the weights the params hold now (the
 *       library put the training weights back when the connection dropped);
 *     - other requests in flight (register, close, save, load, drop) fail
 *       with DISCONNECTED, since they may or may not have been carried out;
 *       the client is connected again for the next call.
 *   If no connection comes back within the timeout, the call fails with
 *   DISCONNECTED, naming the last attempt's error; a later call tries again.
 *   A session emad no longer knows (dropped, or a state directory lost)
 *   cannot be resumed: its requests fail with DISCONNECTED, saying why.
 *
 * Thread safety
 *   An emac_client and the sessions registered on it are not thread-safe:
 *   serialise every call on a client and its sessions (one client per thread
 *   is the simple way). Distinct clients are independent. Segments are plain
 *   memory: their tensors may be read and written from any thread, within the
 *   rules of the protocol (never while emad reads or swaps them). Results
 *   (emac_status, emac_result, emac_file) are plain memory.
 */
#ifndef EMACLIENT_H
#define EMACLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EMAC_PROTO_VERSION 1

/* Client-side error codes (besides the contract's codes of docs/protocol.md "Errors"). */
#define EMAC_E_CONNECT "CONNECT"           /* cannot reach emad at the socket path */
#define EMAC_E_DISCONNECTED "DISCONNECTED" /* emad closed the connection */
#define EMAC_E_BADREPLY "BADREPLY"         /* emad's reply did not follow the contract */
#define EMAC_E_USAGE "USAGE"               /* the caller passed invalid arguments */
#define EMAC_E_SYSTEM "SYSTEM"             /* a system call failed (shm_open, mmap, ...) */
#define EMAC_E_BADFILE "BADFILE"           /* a file is no valid safetensors file, or lacks what
                                              post-hoc EMA needs (emac_posthoc_files) */

/* Limits the library checks before anything is sent (docs/protocol.md "Limits"). */
#define EMAC_TENSOR_NAME_MAX 1024 /* bytes of UTF-8 */

/* ---- Errors ---- */

struct emac_error {
    char code[16];     /* "BADARG", "CONNECT", ...; "" when there was no error */
    char message[512]; /* human-readable, names the problem */
};

/* ---- Connections ---- */

typedef struct emac_client emac_client;

/* Resolve the socket path as emad does: explicit (if not NULL), then
 * $EMAD_SOCKET, then $XDG_RUNTIME_DIR/emad.sock, then /run/emad/emad.sock.
 * -ENAMETOOLONG if it does not fit a Unix socket address (107 bytes). */
int emac_socket_path(const char *explicit_path, char *out, size_t outlen);

/* Connect and say hello. socket_path may be NULL (resolved as above);
 * client_name identifies the caller in emad's logs. */
int emac_connect(const char *socket_path, const char *client_name, emac_client **out,
                 struct emac_error *err);
/* Close the connection and free the client. Sessions still registered on it
 * stay valid handles (free them with emac_session_free) but every request
 * on them fails with DISCONNECTED; emad keeps them, detached. NULL is
 * allowed. */
void emac_disconnect(emac_client *c);

/* How the client reconnects after losing its connection (see Crash safety).
 * The defaults: enabled, first delay 50 ms, doubling to at most 2 s, each
 * delay jittered down by up to half, giving up after 30 s without a
 * connection. The environment variable EMAD_RECONNECT_TIMEOUT (seconds, a
 * decimal; 0 turns reconnecting off) overrides the default timeout of
 * clients created after it is set. */
struct emac_reconnect {
    bool enabled;
    unsigned initial_delay_ms; /* >= 1 */
    unsigned max_delay_ms;     /* >= initial_delay_ms */
    unsigned timeout_ms;       /* 0: a single attempt */
};
void emac_reconnect_defaults(struct emac_reconnect *r);
/* Set c's policy; USAGE (-EINVAL) names a bad field. */
int emac_set_reconnect(emac_client *c, const struct emac_reconnect *r, struct emac_error *err);
/* How many times c has reconnected. */
unsigned emac_reconnects(const emac_client *c);

/* What emad said in its hello reply. */
struct emac_server {
    const char *server; /* e.g. "emad 0.1.0" */
    unsigned proto;     /* protocol version */
    long pid;           /* emad's process id */
    unsigned workers;   /* worker threads */
};
const struct emac_server *emac_server_info(const emac_client *c);

/* ---- Segments: the trainer's tensors in shared memory (docs/protocol.md "Segment header") ---- */

typedef struct emac_segment emac_segment;

/* One tensor to place in a segment. */
struct emac_tensor_spec {
    const char *name;      /* 1..EMAC_TENSOR_NAME_MAX bytes of UTF-8 */
    const char *dtype;     /* "f32" "f16" "bf16" "f64" "i64" "i32" "i16" "i8" "u8" "bool" */
    uint64_t numel;        /* elements; 0 is allowed */
    const uint64_t *shape; /* optional (NULL): its product must equal numel */
    size_t ndim;           /* entries in shape */
};

/* One tensor of a segment, where this process sees it. */
struct emac_tensor {
    const char *name;
    const char *dtype;     /* wire name, as in the spec */
    size_t elem_size;      /* bytes per element */
    uint64_t numel;
    uint64_t offset;       /* inside the params area (a multiple of 64) */
    uint64_t bytes;        /* numel * elem_size */
    void *data;            /* the live tensor: read and write it here */
};

/* Create a segment for n tensors: a new POSIX shared-memory object named
 * "/emad-<random>" (mode 0600), laid out with each tensor 64-byte aligned,
 * the params at 4096 and the stash after them, the header in the TRAIN
 * state, every tensor zero. USAGE (-EINVAL) names a bad spec; SYSTEM names
 * the system call that failed. */
int emac_segment_create(const struct emac_tensor_spec *specs, size_t n, emac_segment **out,
                        struct emac_error *err);
/* Map an existing segment (one left by an earlier run of the trainer) whose
 * tensors were created from the same specs. SHM when the object is missing
 * or its header fails the checks of docs/protocol.md "Segment header"; USAGE when its layout
 * is not that of the specs. The swap state is left as found: call
 * emac_segment_restore to be sure the params hold the training weights. */
int emac_segment_open(const char *name, const struct emac_tensor_spec *specs, size_t n,
                      emac_segment **out, struct emac_error *err);
/* Unmap the segment and free the handle; the shared-memory object stays
 * (for emac_segment_open). Free the sessions using it first. NULL is allowed. */
void emac_segment_close(emac_segment *seg);
/* Unmap the segment, remove the shared-memory object and free the handle.
 * Free the sessions using it first (emac_session_free): until then the
 * library may restore the segment from its stash. NULL is allowed. */
void emac_segment_destroy(emac_segment *seg);

const char *emac_segment_name(const emac_segment *seg); /* "/emad-..." */
size_t emac_segment_ntensors(const emac_segment *seg);
/* Tensor i (in the order of the specs); NULL when i is out of range. */
const struct emac_tensor *emac_segment_tensor(const emac_segment *seg, size_t i);
/* The whole mapping (header at offset 0) and its size, for tools and tests. */
void *emac_segment_base(const emac_segment *seg);
uint64_t emac_segment_bytes(const emac_segment *seg);
/* The stash: while the EMA weights are swapped in (swap_state EMA), the
 * training weights of tensor i lie at stash + emac_segment_tensor(seg,
 * i)->offset, laid out as in the params. The offset is read from the
 * header after checking it (as emac_segment_restore does); NULL when the
 * check fails. */
void *emac_segment_stash(const emac_segment *seg);

/* The header's swap_state (0 TRAIN, 1 STASHED, 2 EMA), read with acquire
 * ordering, and the swap_generation (either pointer may be NULL). */
#define EMAC_SWAP_TRAIN 0u
#define EMAC_SWAP_STASHED 1u
#define EMAC_SWAP_EMA 2u
void emac_segment_swap_state(const emac_segment *seg, uint32_t *state, uint64_t *generation);

/* If the segment's swap_state is not TRAIN, copy the stash back into the
 * params and set TRAIN; *restored (may be NULL) says whether it did. SHM if
 * the header fails the checks of docs/protocol.md "Segment header" (nothing is copied then).
 * Only safe while emad is not working on the segment: after a crash, after
 * the connection was lost, or before registering it. */
int emac_segment_restore(emac_segment *seg, bool *restored, struct emac_error *err);
/* The same by name, for a segment this process has not mapped: open it,
 * check its header, restore it if needed, unmap it. SHM when it is missing
 * or its header is bad. */
int emac_segment_recover(const char *name, bool *restored, struct emac_error *err);

/* ---- Sessions (docs/protocol.md "EMA semantics", "Methods") ---- */

typedef struct emac_session emac_session;

/* register's "config"; every field is optional (NULL / false: emad's default). */
struct emac_config {
    const char *half_life;       /* time string "1000ba", "2ep" or "inf"; default "1000ba" */
    bool has_smoothing;          /* send smoothing (emad refuses it with half_life) */
    double smoothing;            /* in [0, 1]: shadow = s * shadow + (1 - s) * param */
    const char *update_interval; /* "1ba", "2ep", ...; default 1 in half_life's unit */
    const char *ema_start;       /* "100ba", "1ep", "0.25dur"; default "0.0dur" */
};

/* register's health options (docs/protocol.md "register"), for emac_register_health; every
 * field is optional (NULL / false: emad's default). */
struct emac_health_config {
    const char *on_nonfinite; /* "skip" (default): a NaN or Inf param element leaves its shadow
                                 element as it was; "apply": it is averaged in like any other */
    bool has_health;          /* send health */
    bool health;              /* false: no health signals for this session */
};

/* One session, as status and register report it (docs/protocol.md "Methods"). */
struct emac_session_info {
    const char *session;
    bool attached;             /* an owner connection is present */
    long owner_pid;            /* -1 while detached */
    uint64_t tensors;
    uint64_t params_bytes;
    uint64_t shadow_bytes;
    double smoothing;
    const char *half_life;     /* NULL when configured by smoothing */
    const char *update_interval;
    const char *ema_start;
    bool started;              /* the EMA has begun */
    bool active;               /* the EMA weights are swapped into the params */
    uint64_t updates;
    uint64_t swaps;
    bool has_last_time;        /* an event has been seen */
    uint64_t last_batch;
    uint64_t last_epoch;
    bool has_last_duration;
    double last_duration;
    double last_update_seconds; /* how long the last update took */
    const char *shm;            /* the trainer's segment */
    const char *shadow_shm;     /* the shadow's segment */
    bool interrupted;           /* emad died while writing the shadow: it holds part of
                                   an update (sticky until a load) */
    uint64_t seq;               /* the highest event/swap request number applied */
};

/* The shadow of one tensor, mapped read-only from emad's shadow object. */
struct emac_shadow {
    const char *name;
    const char *dtype;  /* "f32" for f32/f16/bf16 params, "f64" for f64, else the param's */
    size_t elem_size;
    uint64_t numel;
    uint64_t offset;    /* inside the shadow object */
    const void *data;   /* read-only; changes as emad updates it */
};

/* Register a session named `session` (1..128 of [A-Za-z0-9._:/-]) for the
 * tensors of seg, owned by this connection. cfg may be NULL (all defaults).
 * With resume, re-attach to an existing session of that name with the same
 * tensor table, keeping its shadow and state (seg may be a new segment).
 * On success *out maps the session's shadow read-only. seg must outlive the
 * session handle. Several sessions may share one client. */
int emac_register(emac_client *c, const char *session, emac_segment *seg,
                  const struct emac_config *cfg, bool resume, emac_session **out,
                  struct emac_error *err);
/* emac_register with health options (hcfg may be NULL: emad's defaults). */
int emac_register_health(emac_client *c, const char *session, emac_segment *seg,
                         const struct emac_config *cfg, const struct emac_health_config *hcfg,
                         bool resume, emac_session **out, struct emac_error *err);
/*
 * EMA profiles (docs/protocol.md "Profiles"): a session may hold 1 to EMAC_PROFILES_MAX named
 * EMAs of its tensors, each with its own schedule and shadow. A field left NULL / false is
 * emad's default; schedule NULL lets emad infer it from the fields given.
 */
#define EMAC_PROFILES_MAX 8

struct emac_profile {
    const char *name;            /* 1..32 of [A-Za-z0-9_.-] */
    const char *schedule;        /* "composer", "warmup", "power", or NULL */
    /* composer: as struct emac_config */
    const char *half_life;
    bool has_smoothing;
    double smoothing;
    const char *ema_start;
    const char *update_interval; /* any schedule; warmup and power: "Nba" */
    /* warmup (timm's ModelEmaV3) */
    bool has_decay;
    double decay;
    bool has_min_decay;
    double min_decay;
    bool has_update_after_step;
    uint64_t update_after_step;
    bool has_inv_gamma;
    double inv_gamma;
    bool has_power;
    double power;
    /* power (EDM2): sigma_rel or gamma */
    bool has_sigma_rel;
    double sigma_rel;
    bool has_gamma;
    double gamma;
};

/* One profile as status and register report it. */
struct emac_profile_info {
    const char *name;
    const char *schedule;     /* "composer", "warmup" or "power" */
    bool eval;                /* the session's eval_profile */
    bool started;
    uint64_t updates;
    bool has_last_batch;
    uint64_t last_batch;      /* the batch of its last update */
    bool has_last_decay;
    double last_decay;        /* the decay of its last update */
    uint64_t shadow_offset;   /* its shadow lies this many bytes after the first profile's */
    struct emac_profile config; /* its settings, emad's defaults filled in */
};

/* emac_register with profiles (n of them, in order) and the profile eval_start and checkpoint
 * swap in (NULL: the first); hcfg as emac_register_health. */
int emac_register_profiles(emac_client *c, const char *session, emac_segment *seg,
                           const struct emac_profile *profiles, size_t n,
                           const char *eval_profile, const struct emac_health_config *hcfg,
                           bool resume, emac_session **out, struct emac_error *err);
/* The session's profiles as the register reply gave them (*out: n of them, valid as long as
 * the handle); 0 for a session registered without profiles. */
size_t emac_session_profiles(const emac_session *s, const struct emac_profile_info **out);
/* Profile p's shadow of tensor i (read-only, as emac_session_shadow(s, i)->data for p = 0);
 * NULL when out of range. */
const void *emac_session_profile_data(const emac_session *s, size_t p, size_t i);

/* register's snapshot options (docs/protocol.md "Snapshots"); need a power profile. */
struct emac_snapshot_config {
    const char *every; /* "Nba": after the update of every N-th batch; NULL: only on request */
    const char *dtype; /* "f32" (NULL), "bf16" or "f16" */
    uint64_t keep;     /* files kept per profile, the newest; 0: all */
};

/* emac_register_profiles with snapshots of the power profiles (snap may be NULL). */
int emac_register_snapshots(emac_client *c, const char *session, emac_segment *seg,
                            const struct emac_profile *profiles, size_t n,
                            const char *eval_profile, const struct emac_health_config *hcfg,
                            const struct emac_snapshot_config *snap, bool resume,
                            emac_session **out, struct emac_error *err);

/* Release the handle and unmap the shadow, without telling emad (use
 * emac_close for that; a session left unclosed stays in emad, detached).
 * NULL is allowed. */
void emac_session_free(emac_session *s);

const char *emac_session_name(const emac_session *s);
emac_segment *emac_session_segment(const emac_session *s);
/* The session's state as the register reply gave it (for a resumed session:
 * the state it had kept). Ask emac_status for the current one. */
const struct emac_session_info *emac_session_state(const emac_session *s);
/* The shadow of tensor i (the segment's order); NULL when out of range. */
const struct emac_shadow *emac_session_shadow(const emac_session *s, size_t i);
/* true once the library restored this session's training weights from the
 * stash after losing the connection with the EMA weights swapped in. */
bool emac_session_restored(const emac_session *s);

/* ---- Events and swaps ---- */

/* The trainer's clock (docs/protocol.md "Time"). */
struct emac_time {
    uint64_t batch;    /* optimizer steps completed; the first batch_end carries 1 */
    uint64_t epoch;    /* epochs completed */
    bool has_duration; /* send duration */
    double duration;   /* elapsed fraction of the planned training, in [0, 1] */
};

/* What emad did for an event or a swap. */
enum emac_action {
    EMAC_ACTION_NONE,         /* "none": the event did not apply */
    EMAC_ACTION_START,        /* "start": shadow := params */
    EMAC_ACTION_UPDATE,       /* "update": shadow averaged with the params */
    EMAC_ACTION_START_UPDATE, /* "start+update" */
    EMAC_ACTION_SWAP_IN,      /* "swap_in": EMA weights in the params, training ones stashed */
    EMAC_ACTION_SWAP_OUT,     /* "swap_out": training weights back in the params */
};

struct emac_result {
    enum emac_action action;
    bool active;      /* the EMA weights are in the params now */
    bool started;     /* the EMA has begun */
    uint64_t updates; /* updates completed so far */
    bool replayed;    /* sent again after a reconnect; emad had applied it already and
                         answered from its record (active, started, updates as of then) */
    bool interrupted; /* the session's shadow holds part of an update cut short by a
                         crash of emad (see Crash safety) */
};

/* The wire name of an action ("none", "start+update", ...); NULL if invalid. */
const char *emac_action_name(enum emac_action a);

/* Send an event ("init", "fit_start", "batch_start", "batch_end",
 * "epoch_end", "eval_start", "eval_end", "checkpoint") and wait until emad
 * has done what it calls for: after an update the params have been read, after
 * a swap the params hold the other weights. Owner only. */
int emac_event(emac_session *s, const char *event, const struct emac_time *t,
               struct emac_result *out, struct emac_error *err);

/* The split form, to overlap an update with the trainer's own work: send
 * returns at once with a ticket; wait blocks until that event is done. The
 * trainer must not modify its params between sending an update event and
 * the end of its wait. Any number of tickets may be outstanding, on any
 * sessions of the client, and claimed in any order; replies that arrive for
 * other requests are kept until claimed. Each ticket is claimed once.
 * Keep the number in flight modest (a trainer needs one or two): emad stops
 * reading a connection whose unread replies exceed its --max-pending. */
typedef uint32_t emac_ticket;
int emac_event_send(emac_session *s, const char *event, const struct emac_time *t,
                    emac_ticket *ticket, struct emac_error *err);
int emac_event_wait(emac_session *s, emac_ticket ticket, struct emac_result *out,
                    struct emac_error *err);

/* More of the trainer's clock, for an ema_start in "sp", "tok" or "sec" (docs/protocol.md
 * "Time"): each count is sent only when its has_ flag is set. A session whose ema_start counts
 * one of them refuses (BADARG) an update event that lacks it. A struct of its own, so that
 * struct emac_time keeps its size. */
struct emac_time_counts {
    bool has_samples;
    bool has_tokens;
    bool has_seconds;
    uint64_t samples; /* samples trained on so far */
    uint64_t tokens;  /* tokens trained on so far */
    uint64_t seconds; /* whole wall-clock seconds of training so far (Composer's total_wct) */
};

/* emac_event and emac_event_send with the counts too; counts may be NULL (none sent). */
int emac_event_counts(emac_session *s, const char *event, const struct emac_time *t,
                      const struct emac_time_counts *counts, struct emac_result *out,
                      struct emac_error *err);
int emac_event_send_counts(emac_session *s, const char *event, const struct emac_time *t,
                           const struct emac_time_counts *counts, emac_ticket *ticket,
                           struct emac_error *err);

/* Swap on request: to "ema" (as eval_start) or "train" (as eval_end). */
int emac_swap(emac_session *s, const char *to, struct emac_result *out, struct emac_error *err);
/* Swap profile's EMA weights in (docs/protocol.md "Profiles"); "ema" names the one profile of a
 * session registered without profiles. */
int emac_swap_profile(emac_session *s, const char *profile, struct emac_result *out,
                      struct emac_error *err);

/* End the session: emad frees its shadow, or with keep leaves it detached
 * for a later emac_register(..., resume = true). Owner only. The handle
 * stays to be freed with emac_session_free; requests on it fail (USAGE). */
int emac_close(emac_session *s, bool keep, struct emac_error *err);

/* ---- Any session, by name (for tools such as emactl) ---- */

/* A state file written by save or read by load. */
struct emac_file {
    char path[4096]; /* where emad keeps it */
    uint64_t bytes;  /* its size */
};

/* Write the session's complete state to a file in emad's state directory
 * (name: a file name, never a path; NULL for emad's default name). */
int emac_save(emac_client *c, const char *session, const char *name, struct emac_file *out,
              struct emac_error *err);
/* Replace the session's shadow and state from such a file. */
int emac_load(emac_client *c, const char *session, const char *name, struct emac_file *out,
              struct emac_error *err);
/* Remove a detached session and its shadow. */
int emac_drop(emac_client *c, const char *session, struct emac_error *err);

/* The NaN or Inf param elements the last update of s that was answered found (0: none or
 * not an update), and in *tensor (may be NULL) the first tensor, in the segment's order, that
 * had one (NULL when none); valid until the next event of s. On on_nonfinite "skip" their
 * shadow elements were left as they were (docs/running.md "Health"). */
uint64_t emac_session_nonfinite(const emac_session *s, const char **tensor);

/* ---- Status ---- */

struct emac_status {
    const char *server;        /* "emad" */
    const char *version;       /* emad's version */
    unsigned proto;
    long pid;
    double uptime_seconds;
    unsigned workers;
    unsigned connections;      /* open connections, including this one */
    unsigned sessions;         /* sessions held */
    unsigned max_connections;
    unsigned max_sessions;
    uint64_t max_message;      /* bytes */
    const char *socket;        /* the path emad listens on ("" if unnamed) */
    const char *state_dir;     /* where save and load keep files */
    size_t nsessions;          /* entries in session_list */
    struct emac_session_info *session_list;
};

/* A session's health signals, as status reports them (docs/running.md "Health"). */
struct emac_health {
    bool enabled;                /* the session computes them (register's health) */
    const char *on_nonfinite;    /* "skip" or "apply" */
    uint64_t updates_checked;    /* updates they cover (since register or emad's start) */
    uint64_t nonfinite_total;    /* NaN or Inf param elements seen */
    uint64_t nonfinite_updates;  /* updates that saw any */
    bool has_last_nonfinite;     /* the last update that saw any: */
    uint64_t last_nonfinite_update;  /* its number */
    uint64_t last_nonfinite_count;   /* its non-finite elements */
    const char *last_nonfinite_tensor; /* the first tensor that had one (NULL if none) */
    bool has_distance;           /* the last update's distance is known */
    double distance;             /* RMS of (shadow - param) over its finite elements, before it;
                                    NaN or Inf once the shadow holds such values */
    uint64_t noop_updates;       /* updates that changed no shadow element */
    bool last_update_noop;
    bool has_interval;           /* the usual interval is known (after two updates) */
    double interval;             /* seconds between updates (a moving average) */
    bool stalled;                /* attached, and no update for --stall-factor intervals */
    size_t nalarms;
    const char *const *alarms;   /* "nonfinite", "poisoned", "noop", "stalled" */
};

/* Ask for the daemon's status; session (may be NULL) restricts the list to
 * one session (NOSESSION if there is none of that name). */
int emac_status(emac_client *c, const char *session, struct emac_status **out,
                struct emac_error *err);
void emac_status_free(struct emac_status *st);
/* The health signals of session_list[i]; NULL when i is out of range or emad did not report
 * them (an older emad). Valid until emac_status_free. */
const struct emac_health *emac_status_health(const struct emac_status *st, size_t i);
/* Session i's profiles (*out: valid until emac_status_free); 0 without profiles. */
size_t emac_status_profiles(const struct emac_status *st, size_t i,
                            const struct emac_profile_info **out);
/* The status result exactly as received (a msgpack map), for tools that
 * print or forward it; valid until emac_status_free. */
void emac_status_raw(const struct emac_status *st, const void **data, size_t *len);

/* ---- Shard sessions (docs/protocol.md "Shard sessions", docs/scaleout.md) ---- */

/* The job a shard session belongs to: sent with register by every register function that
 * uses the segment (emac_segment_set_group). */
struct emac_group {
    const char *job;   /* 1..128 of [A-Za-z0-9._:/-] */
    uint64_t rank;     /* below world */
    uint64_t world;    /* 1..2^20 ranks */
    uint64_t replicas; /* ranks of this node holding the same slices; 0 or 1: none (reserved:
                          docs/protocol.md "Replicas") */
};

/* Declare tensor i of seg a slice of a larger tensor: its spec's shape (which it must have,
 * of ndim dimensions) lies at offsets in global_shape (docs/protocol.md "Shard sessions").
 * Checked here (USAGE naming the problem) and by emad; sent with every later register of
 * seg. global_shape NULL clears it. */
int emac_segment_set_slice(emac_segment *seg, size_t i, const uint64_t *global_shape,
                           const uint64_t *offsets, size_t ndim, struct emac_error *err);
/* Send group (copied; NULL clears it) with every later register of seg. USAGE for a bad one. */
int emac_segment_set_group(emac_segment *seg, const struct emac_group *g,
                           struct emac_error *err);
/* Session i's group as status reports it; NULL when i is out of range or it has none. Valid
 * until emac_status_free. */
const struct emac_group *emac_status_group(const struct emac_status *st, size_t i);

/* ---- Metrics ---- */

/* Ask for emad's metrics, in the Prometheus text exposition format 0.0.4
 * (docs/running.md "Metrics"). *text is malloc'd and NUL-terminated; the
 * caller free()s it. A peer other than root gets the per-session series of
 * its own uid's sessions only. An emad without the feature "metrics" (see
 * the hello reply) answers NOMETHOD. */
int emac_metrics(emac_client *c, char **text, struct emac_error *err);

/* ---- Snapshots (docs/protocol.md "Snapshots") ---- */

/* One snapshot file of a session: one power profile's shadow at one batch. */
struct emac_snapshot {
    const char *file;    /* its path (emad's state directory) */
    const char *profile;
    uint64_t batch;      /* the batch of the profile's last update, which the file holds */
    const char *dtype;   /* "f32", "bf16" or "f16" */
    uint64_t bytes;      /* the file's size */
};

/* Snapshot every power profile of s now (after the events sent before) and wait for the
 * files: *list (n of them) the files written; free it with emac_snapshots_free. STATE when no
 * power profile has updated yet, IO when a file cannot be written. */
int emac_snapshot(emac_session *s, struct emac_snapshot **list, size_t *n,
                  struct emac_error *err);
/* emac_snapshot of any session of the caller's by name (for tools). */
int emac_snapshot_session(emac_client *c, const char *session, struct emac_snapshot **list,
                          size_t *n, struct emac_error *err);
/* Every snapshot file of the session of that name, running or closed, by profile then batch
 * (none: *list NULL, *n 0). Free *list with emac_snapshots_free. */
int emac_snapshots(emac_client *c, const char *session, struct emac_snapshot **list, size_t *n,
                   struct emac_error *err);
void emac_snapshots_free(struct emac_snapshot *list); /* NULL is allowed */

/* ---- Post-hoc EMA (docs/posthoc.md) ----
 *
 * EDM2's power-function EMA profiles (Karras et al. 2023, sec. 3): a profile of width
 * sigma_rel (0 < sigma_rel < 12^-1/2 = 0.28867...) has exponent gamma; from snapshots of such
 * profiles taken during training, the EMA of any other width at any batch up to the last
 * snapshot is reconstructed as a linear combination. No connection to emad is needed. */

/* gamma of sigma_rel; -EINVAL outside (0, 12^-1/2). */
int emac_phema_gamma(double sigma_rel, double *gamma);
/* sigma_rel of gamma; -EINVAL unless gamma is finite and > 0. */
int emac_phema_sigma_rel(double gamma, double *sigma_rel);

/*
 * The coefficients coef[0..n) that reconstruct the profile (target_gamma at target_batch) from
 * profiles (gamma[i] at batch[i]) by least squares, normalised to sum 1 (EDM2's
 * solve_posthoc_coefficients). Snapshots that repeat others up to rounding get coefficient 0
 * (docs/posthoc.md "Ill-conditioning"). USAGE for invalid numbers or a target the snapshots
 * cannot represent.
 */
int emac_phema_coefficients(size_t n, const double *gamma, const double *batch,
                            double target_gamma, double target_batch, double *coef,
                            struct emac_error *err);

/*
 * Reconstruct the EMA of width sigma_rel at batch `batch` (0: the latest snapshot's) from the
 * safetensors snapshot files paths[0..n) (metadata "batch", and "gamma" or "sigma_rel"; same
 * tensor names and shapes; f32, bf16, f16 or f64), using those taken at batch <= batch, and
 * write it to out_path as safetensors of out_dtype ("f32" (NULL), "bf16" or "f16"), durably
 * (temp file, fsync, rename; mode 0644). Memory: one chunk of output and of input at a time.
 * Errors: USAGE (arguments), BADFILE (a snapshot is malformed or does not match the others),
 * SYSTEM (open, read, write: e.g. -ENOSPC; the old out_path, if any, stays).
 */
int emac_posthoc_files(const char *const *paths, size_t n, double sigma_rel, uint64_t batch,
                       const char *out_path, const char *out_dtype, struct emac_error *err);

#ifdef __cplusplus
}
#endif

#endif
