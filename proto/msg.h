/*
 * msg.h - the typed messages of the contract (docs/protocol.md "Methods", "Errors").
 *
 * Every message body is a plain C struct described by a table of fields
 * (struct msg_desc). One generic encoder and one generic decoder walk those
 * tables, so adding a field is one line and handlers never walk msgpack
 * objects by hand. Decoding checks types and presence and produces a message
 * that names the offending field ("tensors[3].dtype: expected a string").
 *
 * Strings are views (struct msg_str): after decoding they point into the
 * wire decoder's buffer and live as long as the message; for encoding they
 * may point anywhere. Arrays of structs are allocated by msg_decode() and
 * released by msg_free().
 */
#ifndef EMAD_MSG_H
#define EMAD_MSG_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A string view; not NUL-terminated. */
struct msg_str {
    const char *ptr;
    size_t len;
};

enum msg_type {
    MSG_U64,       /* uint64_t; accepts any non-negative msgpack integer */
    MSG_I64,       /* int64_t */
    MSG_F64,       /* double; accepts float32, float64 and integers */
    MSG_BOOL,      /* bool */
    MSG_STR,       /* struct msg_str */
    MSG_OBJ,       /* a nested struct described by sub */
    MSG_ARRAY,     /* pointer to an array of structs described by sub, plus a size_t count */
    MSG_STR_ARRAY, /* struct msg_str *, plus a size_t count */
    MSG_U64_ARRAY, /* uint64_t *, plus a size_t count */
    MSG_NAMED,     /* a map of string keys to structs described by sub: an array of those
                      structs (each starting with struct msg_str name, the key, which sub does
                      not list), in the map's order, plus a size_t count */
};

#define MSG_OPTIONAL 0x1 /* may be absent: has_<member> tells */
#define MSG_NULLABLE 0x2 /* optional, and sent as nil rather than left out */

struct msg_desc;

struct msg_field {
    const char *key;
    enum msg_type type;
    unsigned flags;
    size_t offset;              /* of the value */
    size_t has_offset;          /* of the bool has_<member>, for optional fields */
    size_t count_offset;        /* of the size_t count, for arrays */
    const struct msg_desc *sub; /* for MSG_OBJ and MSG_ARRAY */
    size_t keylen;              /* strlen(key), known at compile time */
};

struct msg_desc {
    const char *name; /* for messages: "hello", "register", ... */
    size_t size;      /* sizeof the struct */
    const struct msg_field *fields;
    size_t nfields;
    bool strict; /* a key the fields do not name is an error (else it is ignored) */
};

/* §4: the trainer's clock. */
struct msg_time {
    uint64_t batch; /* optimizer steps completed */
    uint64_t epoch; /* epochs completed */
    bool has_duration;
    double duration; /* elapsed fraction of training, [0, 1] */
    /* Extension: the counts an ema_start in sp, tok or sec is compared with. */
    bool has_samples;
    uint64_t samples; /* samples trained on */
    bool has_tokens;
    uint64_t tokens; /* tokens trained on */
    bool has_seconds;
    uint64_t seconds; /* whole wall-clock seconds of training */
};

struct msg_hello {
    uint64_t proto;
    struct msg_str client;
    bool has_pid;
    int64_t pid;
};

struct msg_hello_reply {
    uint64_t proto;
    struct msg_str server;
    int64_t pid;
    uint64_t workers;
    struct msg_str *features;
    size_t nfeatures;
};

struct msg_tensor {
    struct msg_str name;
    struct msg_str dtype; /* "f32", "bf16", ... */
    uint64_t offset;      /* relative to params_offset */
    uint64_t numel;
    bool has_shape;
    uint64_t *shape;
    size_t nshape;
    /* Extension (docs/protocol.md "Shard sessions"): where this local slice sits in the full
     * tensor. Both or neither, with shape, of its number of dimensions. */
    bool has_global_shape;
    uint64_t *global_shape;
    size_t nglobal_shape;
    bool has_offsets;
    uint64_t *offsets;
    size_t noffsets;
};

/* The most dimensions a tensor's shape may have (as safetensors' and group checkpoints'). */
#define MSG_DIMS_MAX 8
/* The most ranks a group may name, and replicas of one session. */
#define MSG_WORLD_MAX (1u << 20)
#define MSG_REPLICAS_MAX 64

/* Extension: the job a shard session belongs to (docs/protocol.md "Shard sessions"). */
struct msg_group {
    struct msg_str job;
    uint64_t rank;
    uint64_t world;
    bool has_replicas; /* ranks of this node holding the same slices (default 1) */
    uint64_t replicas;
};

/* Extension: the tensor table of register in columns, without a map and
 * its keys per tensor (a million tensors: a third of the bytes). */
struct msg_table {
    struct msg_str *names;
    size_t nnames;
    struct msg_str *dtypes;
    size_t ndtypes;
    uint64_t *offsets;
    size_t noffsets;
    uint64_t *numels;
    size_t nnumels;
    /* Extension: the shapes, back to back (docs/protocol.md "Shard sessions"). With ndims,
     * every tensor has a shape; global_shapes and slice_offsets come together. */
    bool has_ndims;
    uint64_t *ndims;
    size_t nndims;
    bool has_shapes;
    uint64_t *shapes;
    size_t nshapes;
    bool has_global_shapes;
    uint64_t *global_shapes;
    size_t nglobal_shapes;
    bool has_slice_offsets;
    uint64_t *slice_offsets;
    size_t nslice_offsets;
};

/* Extension: one EMA profile of a session (docs/protocol.md "Profiles"): a value of
 * config.profiles, and in status and state files its settings. Every field is optional; which
 * ones a profile may carry depends on its schedule. */
struct msg_profile {
    struct msg_str name; /* its key in config.profiles (not a field) */
    bool has_schedule;   /* "composer", "warmup" or "power"; inferred from the fields if absent */
    struct msg_str schedule;
    bool has_half_life; /* composer */
    struct msg_str half_life;
    bool has_smoothing;
    double smoothing;
    bool has_update_interval; /* every schedule; warmup and power: in batches */
    struct msg_str update_interval;
    bool has_ema_start;
    struct msg_str ema_start;
    bool has_decay; /* warmup */
    double decay;
    bool has_min_decay;
    double min_decay;
    bool has_update_after_step;
    uint64_t update_after_step;
    bool has_inv_gamma;
    double inv_gamma;
    bool has_power;
    double power;
    bool has_sigma_rel; /* power: sigma_rel or gamma */
    double sigma_rel;
    bool has_gamma;
    double gamma;
};

/* Extension: what status and state files say of one profile. */
struct msg_profile_state {
    struct msg_str name;
    struct msg_str schedule;
    struct msg_profile config; /* its settings, defaults filled in */
    bool started;              /* its shadow was initialised (composer: at ema_start) */
    uint64_t updates;
    bool has_last_batch; /* nil before its first update */
    uint64_t last_batch;
    bool has_last_decay; /* nil before its first update */
    double last_decay;
    uint64_t shadow_offset; /* bytes to add to each tensor's shadow_offset for this profile */
};

struct msg_config {
    bool has_half_life;
    struct msg_str half_life;
    bool has_smoothing;
    double smoothing;
    bool has_update_interval;
    struct msg_str update_interval;
    bool has_ema_start;
    struct msg_str ema_start;
    bool has_on_nonfinite; /* extension: "skip" (default) or "apply" */
    struct msg_str on_nonfinite;
    bool has_health;       /* extension: false turns the health signals off */
    bool health;
    bool has_profiles;     /* extension: 1 to 8 named profiles (the top-level schedule fields
                              then stay absent) */
    struct msg_profile *profiles;
    size_t nprofiles;
    bool has_eval_profile; /* extension: the profile eval_start and checkpoint swap in */
    struct msg_str eval_profile;
    bool has_snapshot_every; /* extension: snapshots of the power profiles every "Nba" */
    struct msg_str snapshot_every;
    bool has_snapshot_dtype; /* extension: "f32" (default), "bf16" or "f16" */
    struct msg_str snapshot_dtype;
    bool has_snapshot_keep;  /* extension: snapshots kept per profile; 0 (default): all */
    uint64_t snapshot_keep;
};

struct msg_register {
    struct msg_str session;
    struct msg_str shm;
    struct msg_tensor *tensors;
    size_t ntensors;
    bool has_config;
    struct msg_config config;
    bool has_resume;
    bool resume;
    bool has_existing; /* extension: with resume, NOSESSION rather than a new session */
    bool existing;
    bool has_compact;  /* extension: reply with shadow_offsets, tensors empty */
    bool compact;
    bool has_table;    /* extension: the tensors in columns (tensors then empty) */
    struct msg_table table;
    bool has_group;    /* extension: a shard session's job */
    struct msg_group group;
};

struct msg_shadow_tensor {
    struct msg_str name;
    uint64_t shadow_offset;
    struct msg_str shadow_dtype;
};

/* The last update that had non-finite params (status's health). */
struct msg_nonfinite {
    uint64_t update; /* its number */
    uint64_t count;  /* non-finite param elements */
    struct msg_str tensor; /* the first tensor (in register's order) that had one */
};

/* A session's health signals (status, extension; docs/protocol.md "status"). */
struct msg_health {
    bool enabled;
    struct msg_str on_nonfinite;
    uint64_t updates_checked;
    uint64_t nonfinite_total;
    uint64_t nonfinite_updates;
    bool has_last_nonfinite; /* nil until an update has had one */
    struct msg_nonfinite last_nonfinite;
    bool has_distance;       /* nil before the first update checked */
    double distance;
    uint64_t noop_updates;
    bool last_update_noop;
    bool has_interval;       /* nil before two updates */
    double interval;
    bool stalled;
    struct msg_str *alarms;
    size_t nalarms;
    struct msg_str alarm_buf[4]; /* not a field: room an encoder may point alarms at */
};

/* What status reports of one session (§6). */
struct msg_session_state {
    struct msg_str session;
    bool attached;
    bool has_owner_pid; /* nil while detached */
    int64_t owner_pid;
    uint64_t tensors;
    uint64_t params_bytes;
    uint64_t shadow_bytes;
    double smoothing;
    bool has_half_life; /* nil when configured by smoothing */
    struct msg_str half_life;
    struct msg_str update_interval;
    struct msg_str ema_start;
    bool started;
    bool active;
    uint64_t updates;
    uint64_t swaps;
    bool has_last_time; /* nil before the first event */
    struct msg_time last_time;
    double last_update_seconds;
    struct msg_str shm;
    struct msg_str shadow_shm;
    bool has_interrupted; /* extension: an update was cut short by a crash of emad */
    bool interrupted;
    bool has_seq;         /* extension: the highest request seq applied */
    uint64_t seq;
    bool has_health;      /* extension: the health signals */
    struct msg_health health;
    bool has_profiles;    /* extension: sessions registered with profiles */
    struct msg_profile_state *profiles;
    size_t nprofiles;
    bool has_eval_profile;
    struct msg_str eval_profile;
    struct msg_profile_state profile_buf[8]; /* not a field: room an encoder may point
                                                profiles at */
    bool has_snapshot_failures; /* extension: snapshots of the session that failed to write */
    uint64_t snapshot_failures;
    bool has_snapshot_error;    /* ... and the last one's message */
    struct msg_str snapshot_error;
    bool has_group;             /* extension: registered with a group */
    struct msg_group group;
    bool has_table;             /* extension: status with tensors: the table with shapes */
    struct msg_table table;
};

struct msg_register_reply {
    struct msg_str session;
    struct msg_str shadow_shm;
    uint64_t shadow_bytes;
    struct msg_shadow_tensor *tensors;
    size_t ntensors;
    struct msg_session_state state;
    bool has_shadow_offsets; /* extension (compact): each tensor's, in order */
    uint64_t *shadow_offsets;
    size_t nshadow_offsets;
};

struct msg_event {
    struct msg_str session;
    struct msg_str event;
    struct msg_time time;
    bool has_seq; /* extension: the client's request number, for replays */
    uint64_t seq;
};

/* Result of event and swap. */
struct msg_action {
    struct msg_str action;
    bool active;
    bool started;
    uint64_t updates;
    bool has_replayed; /* extension: true when a replayed seq was answered from the record */
    bool replayed;
    bool has_interrupted; /* extension: the shadow holds part of an update cut short */
    bool interrupted;
    bool has_nonfinite;   /* extension: the update's non-finite params, when it had any */
    uint64_t nonfinite;
    bool has_nonfinite_tensor; /* ... and the first tensor that had one */
    struct msg_str nonfinite_tensor;
    bool has_snapshot_error; /* extension: a snapshot written since the last reply failed */
    struct msg_str snapshot_error;
};

struct msg_swap {
    struct msg_str session;
    struct msg_str to; /* "ema" | "train" */
    bool has_seq;      /* extension, as in event */
    uint64_t seq;
    bool has_profile;  /* extension: with to "ema", the profile to swap in */
    struct msg_str profile;
};

struct msg_status {
    bool has_session;
    struct msg_str session;
    bool has_tensors; /* extension: add each session's table, with shapes */
    bool tensors;
};

struct msg_server_info {
    struct msg_str server;  /* "emad" */
    struct msg_str version; /* package version */
    uint64_t proto;
    int64_t pid;
    double uptime_seconds;
    uint64_t workers;
    uint64_t connections;
    uint64_t sessions;
    uint64_t max_connections;
    uint64_t max_sessions;
    uint64_t max_message;
    struct msg_str socket;
    struct msg_str state_dir;
};

struct msg_status_reply {
    struct msg_server_info server;
    struct msg_session_state *sessions;
    size_t nsessions;
};

/* save and load */
struct msg_file {
    struct msg_str session;
    bool has_name;
    struct msg_str name;
};

struct msg_file_reply {
    struct msg_str path;
    uint64_t bytes;
};

struct msg_close {
    struct msg_str session;
    bool has_keep;
    bool keep;
};

struct msg_drop {
    struct msg_str session;
};

/* Extension: snapshot and snapshots (docs/protocol.md "Snapshots"). */
struct msg_snapshot {
    struct msg_str session;
};

/* One snapshot file. */
struct msg_snapshot_entry {
    struct msg_str file;    /* its path */
    struct msg_str profile;
    uint64_t batch;
    struct msg_str dtype;   /* "f32", "bf16" or "f16" */
    uint64_t bytes;
};

/* The result of snapshots (every file, by profile then batch) and of snapshot (the files it
 * wrote). */
struct msg_snapshots_reply {
    struct msg_snapshot_entry *snapshots;
    size_t nsnapshots;
};

/* The error map of a response (§7). */
struct msg_error {
    struct msg_str code;
    struct msg_str message;
};

/* Error codes of §7; emad may add more, clients treat unknown ones as errors. */
#define MSG_E_EPROTO "EPROTO"     /* malformed request */
#define MSG_E_VERSION "VERSION"   /* protocol mismatch */
#define MSG_E_NOHELLO "NOHELLO"   /* request before hello */
#define MSG_E_NOMETHOD "NOMETHOD" /* unknown or unimplemented method */
#define MSG_E_BADARG "BADARG"     /* bad or missing argument; the message names it */
#define MSG_E_NOSESSION "NOSESSION"
#define MSG_E_EXISTS "EXISTS"
#define MSG_E_PERM "PERM"         /* not allowed for this peer or connection */
#define MSG_E_SHM "SHM"           /* segment missing or failing the checks of §3 */
#define MSG_E_STATE "STATE"       /* impossible in the session's state */
#define MSG_E_LIMIT "LIMIT"       /* a limit of §2 */
#define MSG_E_IO "IO"             /* a file operation failed */
#define MSG_E_INTERNAL "INTERNAL" /* a bug (logged) */

/* Extension: the notification emad sends to a connection it refuses (another
 * uid, too many connections) just before closing it: [2, "error", [{code, message}]]. */
#define MSG_NOTIFY_ERROR "error"

/* The metadata of a state file written by save (not a wire message, but
 * msgpack all the same): what load needs to check and restore. */
struct msg_saved_tensor {
    struct msg_str name;
    struct msg_str dtype;
    uint64_t numel;
    bool has_offset; /* where it was in the params area (for sessions saved at exit) */
    uint64_t offset;
};

struct msg_saved_state {
    uint64_t format; /* 1 */
    struct msg_str session;
    struct msg_saved_tensor *tensors;
    size_t ntensors;
    struct msg_config config;
    bool started;
    bool active;
    uint64_t updates;
    uint64_t swaps;
    bool has_last_time;
    struct msg_time last_time;
    uint64_t shadow_bytes;
    bool has_uid; /* the owner's uid (for sessions saved at exit) */
    uint64_t uid;
    bool has_shadow_shm; /* journals of running sessions: the shadow object */
    struct msg_str shadow_shm;
    bool has_seq; /* the highest request seq applied */
    uint64_t seq;
    bool has_table; /* the tensors in columns (tensors then empty), as register's */
    struct msg_table table;
    bool has_profiles; /* each profile's state, in config.profiles' order */
    struct msg_profile_state *profiles;
    size_t nprofiles;
    bool has_group; /* a shard session's job */
    struct msg_group group;
};

/* An empty map, the result of close and drop (and the params of metrics). */
struct msg_empty {
    char unused;
};

/* Extension: the result of metrics, the Prometheus text exposition. */
struct msg_metrics_reply {
    struct msg_str text;
};

extern const struct msg_desc msg_time_desc;
extern const struct msg_desc msg_hello_desc;
extern const struct msg_desc msg_hello_reply_desc;
extern const struct msg_desc msg_tensor_desc;
extern const struct msg_desc msg_profile_desc;
extern const struct msg_desc msg_profile_state_desc;
extern const struct msg_desc msg_config_desc;
extern const struct msg_desc msg_table_desc;
extern const struct msg_desc msg_group_desc;
extern const struct msg_desc msg_register_desc;
extern const struct msg_desc msg_shadow_tensor_desc;
extern const struct msg_desc msg_nonfinite_desc;
extern const struct msg_desc msg_health_desc;
extern const struct msg_desc msg_session_state_desc;
extern const struct msg_desc msg_register_reply_desc;
extern const struct msg_desc msg_event_desc;
extern const struct msg_desc msg_action_desc;
extern const struct msg_desc msg_swap_desc;
extern const struct msg_desc msg_status_desc;
extern const struct msg_desc msg_server_info_desc;
extern const struct msg_desc msg_status_reply_desc;
extern const struct msg_desc msg_file_desc;
extern const struct msg_desc msg_file_reply_desc;
extern const struct msg_desc msg_close_desc;
extern const struct msg_desc msg_drop_desc;
extern const struct msg_desc msg_error_desc;
extern const struct msg_desc msg_empty_desc;
extern const struct msg_desc msg_metrics_reply_desc;
extern const struct msg_desc msg_saved_tensor_desc;
extern const struct msg_desc msg_saved_state_desc;
extern const struct msg_desc msg_snapshot_desc;
extern const struct msg_desc msg_snapshot_entry_desc;
extern const struct msg_desc msg_snapshots_reply_desc;

/* Every top-level message, for tests and tools; NULL-terminated. */
extern const struct msg_desc *const msg_all_descs[];

/* Decode map into out (a struct of d->size bytes, zeroed first). 0, -EINVAL
 * with a message naming the field in err, or -ENOMEM. On error nothing needs
 * freeing. */
/* A register's tensors come as a list of maps or as a table: check that it
 * sent one form, with columns of one length (0, or -EINVAL with err naming
 * the problem); then msg_register_count and msg_register_tensor read either
 * form (tensor i as a view, no shape from a table). */
int msg_register_check(const struct msg_register *r, char *err, size_t errlen);
size_t msg_register_count(const struct msg_register *r);
struct msg_tensor msg_register_tensor(const struct msg_register *r, size_t i);
/* Tensor i with its shape and slice from either form; *dim is where tensor i's dimensions
 * start in the table's shape columns: 0 for i = 0, then what the call before left (call in
 * order). Only after msg_register_check. */
struct msg_tensor msg_register_tensor_at(const struct msg_register *r, size_t i, size_t *dim);
/* A tensor's shape and slice against the rules of docs/protocol.md "Shard sessions"
 * (at most MSG_DIMS_MAX dimensions, product numel, global_shape and offsets together, of
 * shape's rank, the slice inside the global shape): 0 or -EINVAL, err naming "tensors[i]". */
int msg_tensor_check_shape(const struct msg_tensor *t, size_t i, char *err, size_t errlen);
/* A group against its rules (job a session-like name, 0 <= rank < world <= MSG_WORLD_MAX,
 * 1 <= replicas <= MSG_REPLICAS_MAX): 0 or -EINVAL with err naming "group.<field>". */
int msg_group_check(const struct msg_group *g, char *err, size_t errlen);
/* The shape columns for total dimensions in all (slices: global_shapes and slice_offsets
 * too), after msg_table_init; msg_table_release frees them. 0 or -ENOMEM. */
int msg_table_init_dims(struct msg_table *t, size_t total, bool slices);
/* Columns for n rows (msg_table_set fills them); msg_table_release frees
 * the columns, not the strings they point to. 0 or -ENOMEM. */
int msg_table_init(struct msg_table *t, size_t n);
void msg_table_set(struct msg_table *t, size_t i, const char *name, const char *dtype,
                   uint64_t offset, uint64_t numel);
void msg_table_release(struct msg_table *t);
/* The same for a state file's metadata (into tensors, offsets present). */
int msg_saved_state_expand(struct msg_saved_state *m, char *err, size_t errlen);

int msg_decode(const struct msg_desc *d, const msgpack_object *map, void *out, char *err,
               size_t errlen);
/* Free what msg_decode() allocated in obj (arrays); obj itself is the caller's. */
void msg_free(const struct msg_desc *d, void *obj);
/* Pack obj as a map. Optional fields are left out unless has_<member> is
 * set; nullable ones are sent as nil. */
void msg_encode(msgpack_packer *pk, const struct msg_desc *d, const void *obj);

/* String views */
struct msg_str msg_str_c(const char *s);
bool msg_str_eq(struct msg_str s, const char *c);
/* Copy into a NUL-terminated buffer; -ENAMETOOLONG if it does not fit. */
int msg_str_copy(struct msg_str s, char *out, size_t outlen);

#endif
