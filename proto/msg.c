/*
 * msg.c - table-driven encoder and decoder for the contract's messages.
 */
#include "msg.h"
#include "names.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQ(st, k, t, m) {k, t, 0, offsetof(st, m), 0, 0, NULL, sizeof(k) - 1}
#define OPT(st, k, t, m) {k, t, MSG_OPTIONAL, offsetof(st, m), offsetof(st, has_##m), 0, NULL, sizeof(k) - 1}
#define NUL(st, k, t, m) {k, t, MSG_NULLABLE, offsetof(st, m), offsetof(st, has_##m), 0, NULL, sizeof(k) - 1}
#define OBJ(st, k, m, sub) {k, MSG_OBJ, 0, offsetof(st, m), 0, 0, &sub, sizeof(k) - 1}
#define OPT_OBJ(st, k, m, sub) {k, MSG_OBJ, MSG_OPTIONAL, offsetof(st, m), offsetof(st, has_##m), 0, &sub, sizeof(k) - 1}
#define NUL_OBJ(st, k, m, sub) {k, MSG_OBJ, MSG_NULLABLE, offsetof(st, m), offsetof(st, has_##m), 0, &sub, sizeof(k) - 1}
#define ARR(st, k, m, sub) {k, MSG_ARRAY, 0, offsetof(st, m), 0, offsetof(st, n##m), &sub, sizeof(k) - 1}
#define SARR(st, k, m) {k, MSG_STR_ARRAY, 0, offsetof(st, m), 0, offsetof(st, n##m), NULL, sizeof(k) - 1}
#define OPT_UARR(st, k, m) \
    {k, MSG_U64_ARRAY, MSG_OPTIONAL, offsetof(st, m), offsetof(st, has_##m), offsetof(st, n##m), NULL, \
     sizeof(k) - 1}
#define UARR(st, k, m) {k, MSG_U64_ARRAY, 0, offsetof(st, m), 0, offsetof(st, n##m), NULL, sizeof(k) - 1}
#define OPT_NAMED(st, k, m, sub) \
    {k, MSG_NAMED, MSG_OPTIONAL, offsetof(st, m), offsetof(st, has_##m), offsetof(st, n##m), &sub, \
     sizeof(k) - 1}
#define OPT_ARR(st, k, m, sub) \
    {k, MSG_ARRAY, MSG_OPTIONAL, offsetof(st, m), offsetof(st, has_##m), offsetof(st, n##m), &sub, \
     sizeof(k) - 1}
#define DESC(name, st, fields) {name, sizeof(st), fields, sizeof(fields) / sizeof(fields[0]), false}
#define STRICT_DESC(name, st, fields) \
    {name, sizeof(st), fields, sizeof(fields) / sizeof(fields[0]), true}

static const struct msg_field time_fields[] = {
    REQ(struct msg_time, "batch", MSG_U64, batch),
    REQ(struct msg_time, "epoch", MSG_U64, epoch),
    OPT(struct msg_time, "duration", MSG_F64, duration),
    OPT(struct msg_time, "samples", MSG_U64, samples),
    OPT(struct msg_time, "tokens", MSG_U64, tokens),
    OPT(struct msg_time, "seconds", MSG_U64, seconds),
};
const struct msg_desc msg_time_desc = DESC("time", struct msg_time, time_fields);

static const struct msg_field hello_fields[] = {
    REQ(struct msg_hello, "proto", MSG_U64, proto),
    REQ(struct msg_hello, "client", MSG_STR, client),
    OPT(struct msg_hello, "pid", MSG_I64, pid),
};
const struct msg_desc msg_hello_desc = DESC("hello", struct msg_hello, hello_fields);

static const struct msg_field hello_reply_fields[] = {
    REQ(struct msg_hello_reply, "proto", MSG_U64, proto),
    REQ(struct msg_hello_reply, "server", MSG_STR, server),
    REQ(struct msg_hello_reply, "pid", MSG_I64, pid),
    REQ(struct msg_hello_reply, "workers", MSG_U64, workers),
    SARR(struct msg_hello_reply, "features", features),
};
const struct msg_desc msg_hello_reply_desc =
    DESC("hello reply", struct msg_hello_reply, hello_reply_fields);

static const struct msg_field tensor_fields[] = {
    REQ(struct msg_tensor, "name", MSG_STR, name),
    REQ(struct msg_tensor, "dtype", MSG_STR, dtype),
    REQ(struct msg_tensor, "offset", MSG_U64, offset),
    REQ(struct msg_tensor, "numel", MSG_U64, numel),
    OPT_UARR(struct msg_tensor, "shape", shape),
    OPT_UARR(struct msg_tensor, "global_shape", global_shape),
    OPT_UARR(struct msg_tensor, "offsets", offsets),
};
const struct msg_desc msg_tensor_desc = DESC("tensor", struct msg_tensor, tensor_fields);

#define PF struct msg_profile
static const struct msg_field profile_fields[] = {
    OPT(PF, "schedule", MSG_STR, schedule),
    OPT(PF, "half_life", MSG_STR, half_life),
    OPT(PF, "smoothing", MSG_F64, smoothing),
    OPT(PF, "update_interval", MSG_STR, update_interval),
    OPT(PF, "ema_start", MSG_STR, ema_start),
    OPT(PF, "decay", MSG_F64, decay),
    OPT(PF, "min_decay", MSG_F64, min_decay),
    OPT(PF, "update_after_step", MSG_U64, update_after_step),
    OPT(PF, "inv_gamma", MSG_F64, inv_gamma),
    OPT(PF, "power", MSG_F64, power),
    OPT(PF, "sigma_rel", MSG_F64, sigma_rel),
    OPT(PF, "gamma", MSG_F64, gamma),
};
#undef PF
/* Strict: a misspelt setting must not leave a profile on a default the user did not mean. */
const struct msg_desc msg_profile_desc = STRICT_DESC("profile", struct msg_profile, profile_fields);

#define PS struct msg_profile_state
static const struct msg_field profile_state_fields[] = {
    REQ(PS, "name", MSG_STR, name),
    REQ(PS, "schedule", MSG_STR, schedule),
    OBJ(PS, "config", config, msg_profile_desc),
    REQ(PS, "started", MSG_BOOL, started),
    REQ(PS, "updates", MSG_U64, updates),
    NUL(PS, "last_batch", MSG_U64, last_batch),
    NUL(PS, "last_decay", MSG_F64, last_decay),
    REQ(PS, "shadow_offset", MSG_U64, shadow_offset),
};
#undef PS
const struct msg_desc msg_profile_state_desc =
    DESC("profile state", struct msg_profile_state, profile_state_fields);

static const struct msg_field config_fields[] = {
    OPT(struct msg_config, "half_life", MSG_STR, half_life),
    OPT(struct msg_config, "smoothing", MSG_F64, smoothing),
    OPT(struct msg_config, "update_interval", MSG_STR, update_interval),
    OPT(struct msg_config, "ema_start", MSG_STR, ema_start),
    OPT(struct msg_config, "on_nonfinite", MSG_STR, on_nonfinite),
    OPT(struct msg_config, "health", MSG_BOOL, health),
    OPT_NAMED(struct msg_config, "profiles", profiles, msg_profile_desc),
    OPT(struct msg_config, "eval_profile", MSG_STR, eval_profile),
    OPT(struct msg_config, "snapshot_every", MSG_STR, snapshot_every),
    OPT(struct msg_config, "snapshot_dtype", MSG_STR, snapshot_dtype),
    OPT(struct msg_config, "snapshot_keep", MSG_U64, snapshot_keep),
};
const struct msg_desc msg_config_desc = DESC("config", struct msg_config, config_fields);

static const struct msg_field table_fields[] = {
    SARR(struct msg_table, "names", names),
    SARR(struct msg_table, "dtypes", dtypes),
    UARR(struct msg_table, "offsets", offsets),
    UARR(struct msg_table, "numels", numels),
    OPT_UARR(struct msg_table, "ndims", ndims),
    OPT_UARR(struct msg_table, "shapes", shapes),
    OPT_UARR(struct msg_table, "global_shapes", global_shapes),
    OPT_UARR(struct msg_table, "slice_offsets", slice_offsets),
};
const struct msg_desc msg_table_desc = DESC("tensor table", struct msg_table, table_fields);

static const struct msg_field group_fields[] = {
    REQ(struct msg_group, "job", MSG_STR, job),
    REQ(struct msg_group, "rank", MSG_U64, rank),
    REQ(struct msg_group, "world", MSG_U64, world),
    OPT(struct msg_group, "replicas", MSG_U64, replicas),
};
const struct msg_desc msg_group_desc = DESC("group", struct msg_group, group_fields);

static const struct msg_field register_fields[] = {
    REQ(struct msg_register, "session", MSG_STR, session),
    REQ(struct msg_register, "shm", MSG_STR, shm),
    ARR(struct msg_register, "tensors", tensors, msg_tensor_desc),
    OPT_OBJ(struct msg_register, "config", config, msg_config_desc),
    OPT(struct msg_register, "resume", MSG_BOOL, resume),
    OPT(struct msg_register, "existing", MSG_BOOL, existing),
    OPT(struct msg_register, "compact", MSG_BOOL, compact),
    OPT_OBJ(struct msg_register, "table", table, msg_table_desc),
    OPT_OBJ(struct msg_register, "group", group, msg_group_desc),
};
const struct msg_desc msg_register_desc = DESC("register", struct msg_register, register_fields);

static const struct msg_field shadow_tensor_fields[] = {
    REQ(struct msg_shadow_tensor, "name", MSG_STR, name),
    REQ(struct msg_shadow_tensor, "shadow_offset", MSG_U64, shadow_offset),
    REQ(struct msg_shadow_tensor, "shadow_dtype", MSG_STR, shadow_dtype),
};
const struct msg_desc msg_shadow_tensor_desc =
    DESC("shadow tensor", struct msg_shadow_tensor, shadow_tensor_fields);

static const struct msg_field nonfinite_fields[] = {
    REQ(struct msg_nonfinite, "update", MSG_U64, update),
    REQ(struct msg_nonfinite, "count", MSG_U64, count),
    REQ(struct msg_nonfinite, "tensor", MSG_STR, tensor),
};
const struct msg_desc msg_nonfinite_desc =
    DESC("last nonfinite", struct msg_nonfinite, nonfinite_fields);

#define HS struct msg_health
static const struct msg_field health_fields[] = {
    REQ(HS, "enabled", MSG_BOOL, enabled),
    REQ(HS, "on_nonfinite", MSG_STR, on_nonfinite),
    REQ(HS, "updates_checked", MSG_U64, updates_checked),
    REQ(HS, "nonfinite_total", MSG_U64, nonfinite_total),
    REQ(HS, "nonfinite_updates", MSG_U64, nonfinite_updates),
    NUL_OBJ(HS, "last_nonfinite", last_nonfinite, msg_nonfinite_desc),
    NUL(HS, "distance", MSG_F64, distance),
    REQ(HS, "noop_updates", MSG_U64, noop_updates),
    REQ(HS, "last_update_noop", MSG_BOOL, last_update_noop),
    NUL(HS, "interval", MSG_F64, interval),
    REQ(HS, "stalled", MSG_BOOL, stalled),
    SARR(HS, "alarms", alarms),
};
#undef HS
const struct msg_desc msg_health_desc = DESC("health", struct msg_health, health_fields);

#define SS struct msg_session_state
static const struct msg_field session_state_fields[] = {
    REQ(SS, "session", MSG_STR, session),
    REQ(SS, "attached", MSG_BOOL, attached),
    NUL(SS, "owner_pid", MSG_I64, owner_pid),
    REQ(SS, "tensors", MSG_U64, tensors),
    REQ(SS, "params_bytes", MSG_U64, params_bytes),
    REQ(SS, "shadow_bytes", MSG_U64, shadow_bytes),
    REQ(SS, "smoothing", MSG_F64, smoothing),
    NUL(SS, "half_life", MSG_STR, half_life),
    REQ(SS, "update_interval", MSG_STR, update_interval),
    REQ(SS, "ema_start", MSG_STR, ema_start),
    REQ(SS, "started", MSG_BOOL, started),
    REQ(SS, "active", MSG_BOOL, active),
    REQ(SS, "updates", MSG_U64, updates),
    REQ(SS, "swaps", MSG_U64, swaps),
    NUL_OBJ(SS, "last_time", last_time, msg_time_desc),
    REQ(SS, "last_update_seconds", MSG_F64, last_update_seconds),
    REQ(SS, "shm", MSG_STR, shm),
    REQ(SS, "shadow_shm", MSG_STR, shadow_shm),
    OPT(SS, "interrupted", MSG_BOOL, interrupted),
    OPT(SS, "seq", MSG_U64, seq),
    OPT_OBJ(SS, "health", health, msg_health_desc),
    OPT_ARR(SS, "profiles", profiles, msg_profile_state_desc),
    OPT(SS, "eval_profile", MSG_STR, eval_profile),
    OPT(SS, "snapshot_failures", MSG_U64, snapshot_failures),
    OPT(SS, "snapshot_error", MSG_STR, snapshot_error),
    OPT_OBJ(SS, "group", group, msg_group_desc),
    OPT_OBJ(SS, "table", table, msg_table_desc),
};
#undef SS
const struct msg_desc msg_session_state_desc =
    DESC("session state", struct msg_session_state, session_state_fields);

static const struct msg_field register_reply_fields[] = {
    REQ(struct msg_register_reply, "session", MSG_STR, session),
    REQ(struct msg_register_reply, "shadow_shm", MSG_STR, shadow_shm),
    REQ(struct msg_register_reply, "shadow_bytes", MSG_U64, shadow_bytes),
    ARR(struct msg_register_reply, "tensors", tensors, msg_shadow_tensor_desc),
    OBJ(struct msg_register_reply, "state", state, msg_session_state_desc),
    OPT_UARR(struct msg_register_reply, "shadow_offsets", shadow_offsets),
};
const struct msg_desc msg_register_reply_desc =
    DESC("register reply", struct msg_register_reply, register_reply_fields);

static const struct msg_field event_fields[] = {
    REQ(struct msg_event, "session", MSG_STR, session),
    REQ(struct msg_event, "event", MSG_STR, event),
    OBJ(struct msg_event, "time", time, msg_time_desc),
    OPT(struct msg_event, "seq", MSG_U64, seq),
};
const struct msg_desc msg_event_desc = DESC("event", struct msg_event, event_fields);

static const struct msg_field action_fields[] = {
    REQ(struct msg_action, "action", MSG_STR, action),
    REQ(struct msg_action, "active", MSG_BOOL, active),
    REQ(struct msg_action, "started", MSG_BOOL, started),
    REQ(struct msg_action, "updates", MSG_U64, updates),
    OPT(struct msg_action, "replayed", MSG_BOOL, replayed),
    OPT(struct msg_action, "interrupted", MSG_BOOL, interrupted),
    OPT(struct msg_action, "nonfinite", MSG_U64, nonfinite),
    OPT(struct msg_action, "nonfinite_tensor", MSG_STR, nonfinite_tensor),
    OPT(struct msg_action, "snapshot_error", MSG_STR, snapshot_error),
};
const struct msg_desc msg_action_desc = DESC("action", struct msg_action, action_fields);

static const struct msg_field swap_fields[] = {
    REQ(struct msg_swap, "session", MSG_STR, session),
    REQ(struct msg_swap, "to", MSG_STR, to),
    OPT(struct msg_swap, "seq", MSG_U64, seq),
    OPT(struct msg_swap, "profile", MSG_STR, profile),
};
const struct msg_desc msg_swap_desc = DESC("swap", struct msg_swap, swap_fields);

static const struct msg_field status_fields[] = {
    OPT(struct msg_status, "session", MSG_STR, session),
    OPT(struct msg_status, "tensors", MSG_BOOL, tensors),
};
const struct msg_desc msg_status_desc = DESC("status", struct msg_status, status_fields);

#define SI struct msg_server_info
static const struct msg_field server_info_fields[] = {
    REQ(SI, "server", MSG_STR, server),
    REQ(SI, "version", MSG_STR, version),
    REQ(SI, "proto", MSG_U64, proto),
    REQ(SI, "pid", MSG_I64, pid),
    REQ(SI, "uptime_seconds", MSG_F64, uptime_seconds),
    REQ(SI, "workers", MSG_U64, workers),
    REQ(SI, "connections", MSG_U64, connections),
    REQ(SI, "sessions", MSG_U64, sessions),
    REQ(SI, "max_connections", MSG_U64, max_connections),
    REQ(SI, "max_sessions", MSG_U64, max_sessions),
    REQ(SI, "max_message", MSG_U64, max_message),
    REQ(SI, "socket", MSG_STR, socket),
    REQ(SI, "state_dir", MSG_STR, state_dir),
};
#undef SI
const struct msg_desc msg_server_info_desc =
    DESC("server info", struct msg_server_info, server_info_fields);

static const struct msg_field status_reply_fields[] = {
    OBJ(struct msg_status_reply, "server", server, msg_server_info_desc),
    ARR(struct msg_status_reply, "sessions", sessions, msg_session_state_desc),
};
const struct msg_desc msg_status_reply_desc =
    DESC("status reply", struct msg_status_reply, status_reply_fields);

static const struct msg_field file_fields[] = {
    REQ(struct msg_file, "session", MSG_STR, session),
    OPT(struct msg_file, "name", MSG_STR, name),
};
const struct msg_desc msg_file_desc = DESC("save/load", struct msg_file, file_fields);

static const struct msg_field file_reply_fields[] = {
    REQ(struct msg_file_reply, "path", MSG_STR, path),
    REQ(struct msg_file_reply, "bytes", MSG_U64, bytes),
};
const struct msg_desc msg_file_reply_desc =
    DESC("save/load reply", struct msg_file_reply, file_reply_fields);

static const struct msg_field close_fields[] = {
    REQ(struct msg_close, "session", MSG_STR, session),
    OPT(struct msg_close, "keep", MSG_BOOL, keep),
};
const struct msg_desc msg_close_desc = DESC("close", struct msg_close, close_fields);

static const struct msg_field drop_fields[] = {
    REQ(struct msg_drop, "session", MSG_STR, session),
};
const struct msg_desc msg_drop_desc = DESC("drop", struct msg_drop, drop_fields);

static const struct msg_field error_fields[] = {
    REQ(struct msg_error, "code", MSG_STR, code),
    REQ(struct msg_error, "message", MSG_STR, message),
};
const struct msg_desc msg_error_desc = DESC("error", struct msg_error, error_fields);

const struct msg_desc msg_empty_desc = {"empty", sizeof(struct msg_empty), NULL, 0, false};

static const struct msg_field metrics_reply_fields[] = {
    REQ(struct msg_metrics_reply, "text", MSG_STR, text),
};
const struct msg_desc msg_metrics_reply_desc =
    DESC("metrics reply", struct msg_metrics_reply, metrics_reply_fields);

static const struct msg_field saved_tensor_fields[] = {
    REQ(struct msg_saved_tensor, "name", MSG_STR, name),
    REQ(struct msg_saved_tensor, "dtype", MSG_STR, dtype),
    REQ(struct msg_saved_tensor, "numel", MSG_U64, numel),
    OPT(struct msg_saved_tensor, "offset", MSG_U64, offset),
};
const struct msg_desc msg_saved_tensor_desc =
    DESC("saved tensor", struct msg_saved_tensor, saved_tensor_fields);

#define SV struct msg_saved_state
static const struct msg_field saved_state_fields[] = {
    REQ(SV, "format", MSG_U64, format),
    REQ(SV, "session", MSG_STR, session),
    ARR(SV, "tensors", tensors, msg_saved_tensor_desc),
    OBJ(SV, "config", config, msg_config_desc),
    REQ(SV, "started", MSG_BOOL, started),
    REQ(SV, "active", MSG_BOOL, active),
    REQ(SV, "updates", MSG_U64, updates),
    REQ(SV, "swaps", MSG_U64, swaps),
    NUL_OBJ(SV, "last_time", last_time, msg_time_desc),
    REQ(SV, "shadow_bytes", MSG_U64, shadow_bytes),
    OPT(SV, "uid", MSG_U64, uid),
    OPT(SV, "shadow_shm", MSG_STR, shadow_shm),
    OPT(SV, "seq", MSG_U64, seq),
    OPT_OBJ(SV, "table", table, msg_table_desc),
    OPT_ARR(SV, "profiles", profiles, msg_profile_state_desc),
    OPT_OBJ(SV, "group", group, msg_group_desc),
};
#undef SV
const struct msg_desc msg_saved_state_desc =
    DESC("state file", struct msg_saved_state, saved_state_fields);

static const struct msg_field snapshot_fields[] = {
    REQ(struct msg_snapshot, "session", MSG_STR, session),
};
const struct msg_desc msg_snapshot_desc = DESC("snapshot", struct msg_snapshot, snapshot_fields);

#define SE struct msg_snapshot_entry
static const struct msg_field snapshot_entry_fields[] = {
    REQ(SE, "file", MSG_STR, file),       REQ(SE, "profile", MSG_STR, profile),
    REQ(SE, "batch", MSG_U64, batch),     REQ(SE, "dtype", MSG_STR, dtype),
    REQ(SE, "bytes", MSG_U64, bytes),
};
#undef SE
const struct msg_desc msg_snapshot_entry_desc =
    DESC("snapshot entry", struct msg_snapshot_entry, snapshot_entry_fields);

static const struct msg_field snapshots_reply_fields[] = {
    ARR(struct msg_snapshots_reply, "snapshots", snapshots, msg_snapshot_entry_desc),
};
const struct msg_desc msg_snapshots_reply_desc =
    DESC("snapshots reply", struct msg_snapshots_reply, snapshots_reply_fields);

const struct msg_desc *const msg_all_descs[] = {
    &msg_hello_desc,          &msg_hello_reply_desc, &msg_register_desc,
    &msg_register_reply_desc, &msg_event_desc,       &msg_action_desc,
    &msg_swap_desc,           &msg_status_desc,      &msg_status_reply_desc,
    &msg_file_desc,           &msg_file_reply_desc,  &msg_close_desc,
    &msg_drop_desc,           &msg_error_desc,       &msg_empty_desc,
    &msg_metrics_reply_desc,  &msg_saved_state_desc, &msg_snapshot_desc,
    &msg_snapshots_reply_desc, NULL,
};

struct msg_str msg_str_c(const char *s)
{
    struct msg_str v = {s, s ? strlen(s) : 0};
    return v;
}

bool msg_str_eq(struct msg_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

int msg_str_copy(struct msg_str s, char *out, size_t outlen)
{
    if (s.len >= outlen)
        return -ENAMETOOLONG;
    if (s.len > 0 && memchr(s.ptr, '\0', s.len) != NULL)
        return -EINVAL;
    if (s.len > 0)
        memcpy(out, s.ptr, s.len);
    out[s.len] = '\0';
    return 0;
}

/* ---- decoding ---- */

/* The path of the field being decoded (keys and indices), rendered as
 * "tensors[3].name" only when an error message needs it: decoding a
 * million-tensor register must not format a million paths. */
#define PATH_DEPTH 16

struct path {
    struct {
        const char *key; /* NULL: an array index */
        size_t index;    /* with a key: its length */
    } el[PATH_DEPTH];
    size_t depth; /* may exceed PATH_DEPTH: the deeper levels are not shown */
};

static void path_render(const struct path *p, char *buf, size_t len)
{
    size_t used = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < p->depth && i < PATH_DEPTH && used < len; i++) {
        int n = p->el[i].key != NULL
                    ? snprintf(buf + used, len - used, i ? ".%.*s" : "%.*s",
                               (int)(p->el[i].index > 64 ? 64 : p->el[i].index), p->el[i].key)
                    : snprintf(buf + used, len - used, "[%zu]", p->el[i].index);
        if (n < 0)
            break;
        used += (size_t)n;
    }
}

static int fail(char *err, size_t errlen, const struct path *p, const char *fmt, ...)
{
    va_list ap;
    char where[192];
    int n;

    path_render(p, where, sizeof(where));
    n = snprintf(err, errlen, "%s: ", where[0] ? where : "params");
    if (n >= 0 && (size_t)n < errlen) {
        va_start(ap, fmt);
        vsnprintf(err + n, errlen - n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static size_t path_key(struct path *p, const char *key, size_t len)
{
    if (p->depth < PATH_DEPTH) {
        p->el[p->depth].key = key;
        p->el[p->depth].index = len;
    }
    return p->depth++;
}

static size_t path_index(struct path *p, size_t idx)
{
    if (p->depth < PATH_DEPTH) {
        p->el[p->depth].key = NULL;
        p->el[p->depth].index = idx;
    }
    return p->depth++;
}

static void path_pop(struct path *p, size_t old)
{
    p->depth = old;
}

static bool key_is(const msgpack_object *k, const char *key, size_t klen)
{
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
           memcmp(k->via.str.ptr, key, klen) == 0;
}

/* The value of key's first occurrence in map, or NULL. The peers write the
 * fields in the descriptor's order, so *next, the entry after the last one
 * found, is tried first; it is the first occurrence while every entry
 * before it was found so (*in_order): none of them has this key. */
static const msgpack_object *map_find(const msgpack_object *map, const char *key, size_t klen,
                                      uint32_t *next, bool *in_order)
{
    if (*in_order && *next < map->via.map.size && key_is(&map->via.map.ptr[*next].key, key, klen))
        return &map->via.map.ptr[(*next)++].val;
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        if (key_is(&map->via.map.ptr[i].key, key, klen)) {
            /* found out of order: entries before it may be unmatched */
            *in_order = false;
            return &map->via.map.ptr[i].val;
        }
    }
    return NULL;
}

static int decode_map(const struct msg_desc *d, const msgpack_object *map, void *out,
                      struct path *p, char *err, size_t errlen);

static int decode_u64(const msgpack_object *o, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return -1;
    *v = o->via.u64;
    return 0;
}

static int decode_value(const struct msg_field *f, const msgpack_object *o, char *slot,
                        char *obj, struct path *p, char *err, size_t errlen)
{
    switch (f->type) {
    case MSG_U64:
        if (decode_u64(o, (uint64_t *)slot) < 0)
            return fail(err, errlen, p, "expected a non-negative integer");
        return 0;
    case MSG_I64:
        if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
            *(int64_t *)slot = o->via.i64;
            return 0;
        }
        if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER || o->via.u64 > INT64_MAX)
            return fail(err, errlen, p, "expected an integer");
        *(int64_t *)slot = (int64_t)o->via.u64;
        return 0;
    case MSG_F64:
        if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
            *(double *)slot = o->via.f64;
        else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            *(double *)slot = (double)o->via.u64;
        else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
            *(double *)slot = (double)o->via.i64;
        else
            return fail(err, errlen, p, "expected a number");
        return 0;
    case MSG_BOOL:
        if (o->type != MSGPACK_OBJECT_BOOLEAN)
            return fail(err, errlen, p, "expected true or false");
        *(bool *)slot = o->via.boolean;
        return 0;
    case MSG_STR:
        if (o->type != MSGPACK_OBJECT_STR)
            return fail(err, errlen, p, "expected a string");
        ((struct msg_str *)slot)->ptr = o->via.str.ptr;
        ((struct msg_str *)slot)->len = o->via.str.size;
        return 0;
    case MSG_OBJ:
        if (o->type != MSGPACK_OBJECT_MAP)
            return fail(err, errlen, p, "expected a map");
        return decode_map(f->sub, o, slot, p, err, errlen);
    case MSG_NAMED: {
        size_t elem = f->sub->size;
        uint32_t n;
        char *arr;
        if (o->type != MSGPACK_OBJECT_MAP)
            return fail(err, errlen, p, "expected a map of names to maps");
        n = o->via.map.size;
        arr = n ? calloc(n, elem) : NULL;
        if (n && arr == NULL)
            return -ENOMEM;
        *(void **)slot = arr;
        *(size_t *)(obj + f->count_offset) = n;
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            const msgpack_object *e = &o->via.map.ptr[i].val;
            int rc;
            if (k->type != MSGPACK_OBJECT_STR) {
                size_t old = path_index(p, i);
                rc = fail(err, errlen, p, "expected a string key");
                path_pop(p, old);
            } else {
                size_t old = path_key(p, k->via.str.ptr, k->via.str.size);
                rc = e->type == MSGPACK_OBJECT_MAP
                         ? decode_map(f->sub, e, arr + i * elem, p, err, errlen)
                         : fail(err, errlen, p, "expected a map");
                path_pop(p, old);
                /* The key is the element's name (its first member). */
                if (rc == 0)
                    *(struct msg_str *)(arr + i * elem) =
                        (struct msg_str){k->via.str.ptr, k->via.str.size};
            }
            if (rc < 0) {
                msg_free(&(struct msg_desc){"", 0, f, 1, false}, obj);
                return rc;
            }
        }
        return 0;
    }
    case MSG_ARRAY:
    case MSG_STR_ARRAY:
    case MSG_U64_ARRAY: {
        size_t elem = f->type == MSG_ARRAY       ? f->sub->size
                      : f->type == MSG_STR_ARRAY ? sizeof(struct msg_str)
                                                 : sizeof(uint64_t);
        uint32_t n;
        char *arr;
        if (o->type != MSGPACK_OBJECT_ARRAY)
            return fail(err, errlen, p, "expected an array");
        n = o->via.array.size;
        /* n is bounded by the message's real size: the wire scanner saw
         * every element before msgpack-c allocated anything. */
        arr = n ? calloc(n, elem) : NULL;
        if (n && arr == NULL)
            return -ENOMEM;
        *(void **)slot = arr;
        *(size_t *)(obj + f->count_offset) = n;
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *e = &o->via.array.ptr[i];
            size_t old = path_index(p, i);
            int rc;
            if (f->type == MSG_ARRAY) {
                rc = e->type == MSGPACK_OBJECT_MAP
                         ? decode_map(f->sub, e, arr + i * elem, p, err, errlen)
                         : fail(err, errlen, p, "expected a map");
            } else if (f->type == MSG_STR_ARRAY) {
                struct msg_field sf = {.key = NULL, .type = MSG_STR};
                rc = decode_value(&sf, e, arr + i * elem, NULL, p, err, errlen);
            } else {
                rc = decode_u64(e, (uint64_t *)(arr + i * elem)) < 0
                         ? fail(err, errlen, p, "expected a non-negative integer")
                         : 0;
            }
            path_pop(p, old);
            if (rc < 0) {
                /* Elements decoded so far own arrays of their own. */
                msg_free(&(struct msg_desc){"", 0, f, 1, false}, obj);
                return rc;
            }
        }
        return 0;
    }
    }
    return fail(err, errlen, p, "unknown field type");
}

/* A strict map's keys must all be fields of d: the error names the first that is not, and the
 * fields there are. */
static int check_keys(const struct msg_desc *d, const msgpack_object *map, struct path *p,
                      char *err, size_t errlen)
{
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        bool known = false;
        for (size_t j = 0; j < d->nfields && !known; j++)
            known = key_is(k, d->fields[j].key, d->fields[j].keylen);
        if (known)
            continue;
        char list[400];
        size_t at = 0;
        list[0] = '\0';
        for (size_t j = 0; j < d->nfields && at < sizeof(list); j++) {
            int n = snprintf(list + at, sizeof(list) - at, "%s%s", j ? ", " : "",
                             d->fields[j].key);
            if (n < 0)
                break;
            at += (size_t)n;
        }
        size_t old = k->type == MSGPACK_OBJECT_STR ? path_key(p, k->via.str.ptr, k->via.str.size)
                                                   : path_index(p, i);
        int rc = fail(err, errlen, p, "not a field of a %s (%s)", d->name, list);
        path_pop(p, old);
        return rc;
    }
    return 0;
}

static int decode_map(const struct msg_desc *d, const msgpack_object *map, void *out,
                      struct path *p, char *err, size_t errlen)
{
    char *obj = out;
    int rc = 0;
    size_t i;
    uint32_t next = 0;
    bool in_order = true;

    memset(out, 0, d->size);
    for (i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        const msgpack_object *v = map_find(map, f->key, f->keylen, &next, &in_order);
        size_t old = path_key(p, f->key, f->keylen);
        bool optional = f->flags & (MSG_OPTIONAL | MSG_NULLABLE);

        if (v == NULL || (optional && v->type == MSGPACK_OBJECT_NIL)) {
            if (!optional)
                rc = fail(err, errlen, p, "missing");
        } else {
            rc = decode_value(f, v, obj + f->offset, obj, p, err, errlen);
            if (rc == 0 && optional)
                *(bool *)(obj + f->has_offset) = true;
        }
        path_pop(p, old);
        if (rc < 0)
            break;
    }
    if (rc == 0 && d->strict)
        rc = check_keys(d, map, p, err, errlen);
    if (rc < 0) {
        /* Free what the fields before the failing one allocated. */
        struct msg_desc partial = {d->name, d->size, d->fields, i, false};
        msg_free(&partial, out);
        memset(out, 0, d->size);
    }
    return rc;
}

int msg_table_init(struct msg_table *t, size_t n)
{
    size_t rows = n ? n : 1;

    t->names = malloc(rows * sizeof(*t->names));
    t->dtypes = malloc(rows * sizeof(*t->dtypes));
    t->offsets = malloc(rows * sizeof(*t->offsets));
    t->numels = malloc(rows * sizeof(*t->numels));
    t->nnames = t->ndtypes = t->noffsets = t->nnumels = n;
    if (t->names == NULL || t->dtypes == NULL || t->offsets == NULL || t->numels == NULL) {
        msg_table_release(t);
        return -ENOMEM;
    }
    return 0;
}

void msg_table_set(struct msg_table *t, size_t i, const char *name, const char *dtype,
                   uint64_t offset, uint64_t numel)
{
    t->names[i] = msg_str_c(name);
    t->dtypes[i] = msg_str_c(dtype);
    t->offsets[i] = offset;
    t->numels[i] = numel;
}

int msg_table_init_dims(struct msg_table *t, size_t total, bool slices)
{
    size_t n = t->nnames, cells = total ? total : 1;

    t->ndims = malloc((n ? n : 1) * sizeof(*t->ndims));
    t->shapes = malloc(cells * sizeof(*t->shapes));
    if (slices) {
        t->global_shapes = malloc(cells * sizeof(*t->global_shapes));
        t->slice_offsets = malloc(cells * sizeof(*t->slice_offsets));
    }
    if (t->ndims == NULL || t->shapes == NULL ||
        (slices && (t->global_shapes == NULL || t->slice_offsets == NULL)))
        return -ENOMEM;
    t->has_ndims = t->has_shapes = true;
    t->nndims = n;
    t->nshapes = total;
    t->has_global_shapes = t->has_slice_offsets = slices;
    t->nglobal_shapes = t->nslice_offsets = slices ? total : 0;
    return 0;
}

void msg_table_release(struct msg_table *t)
{
    free(t->names);
    free(t->dtypes);
    free(t->offsets);
    free(t->numels);
    free(t->ndims);
    free(t->shapes);
    free(t->global_shapes);
    free(t->slice_offsets);
    memset(t, 0, sizeof(*t));
}

/* The checks both forms share: one form only, columns of one length. */
static int table_check(const struct msg_table *t, size_t listed, char *err, size_t errlen)
{
    size_t n = t->nnames;

    if (listed != 0) {
        snprintf(err, errlen, "tensors and table: send the tensors in one form, not both");
        return -EINVAL;
    }
    if (t->ndtypes != n || t->noffsets != n || t->nnumels != n) {
        snprintf(err, errlen, "table: names, dtypes, offsets and numels must be as long as "
                 "each other (%zu, %zu, %zu, %zu)", n, t->ndtypes, t->noffsets, t->nnumels);
        return -EINVAL;
    }
    if (!t->has_ndims) {
        if (t->has_shapes || t->has_global_shapes || t->has_slice_offsets) {
            snprintf(err, errlen, "table: shapes, global_shapes and slice_offsets need ndims");
            return -EINVAL;
        }
        return 0;
    }
    if (t->nndims != n) {
        snprintf(err, errlen, "table: ndims has %zu entries for %zu tensors", t->nndims, n);
        return -EINVAL;
    }
    /* Each entry is at most MSG_DIMS_MAX, so the sum cannot overflow. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (t->ndims[i] > MSG_DIMS_MAX) {
            snprintf(err, errlen, "table: ndims[%zu]: %" PRIu64 " dimensions, at most %d", i,
                     t->ndims[i], MSG_DIMS_MAX);
            return -EINVAL;
        }
        total += t->ndims[i];
    }
    if (!t->has_shapes || t->nshapes != total) {
        snprintf(err, errlen, "table: shapes must hold the sum of ndims (%zu) entries, not %zu",
                 total, t->has_shapes ? t->nshapes : 0);
        return -EINVAL;
    }
    if (t->has_global_shapes != t->has_slice_offsets) {
        snprintf(err, errlen, "table: global_shapes and slice_offsets come together");
        return -EINVAL;
    }
    if (t->has_global_shapes && (t->nglobal_shapes != total || t->nslice_offsets != total)) {
        snprintf(err, errlen, "table: global_shapes and slice_offsets must hold the sum of "
                 "ndims (%zu) entries, not %zu and %zu", total, t->nglobal_shapes,
                 t->nslice_offsets);
        return -EINVAL;
    }
    return 0;
}

struct msg_tensor msg_register_tensor_at(const struct msg_register *r, size_t i, size_t *dim)
{
    const struct msg_table *t = &r->table;
    struct msg_tensor o = msg_register_tensor(r, i);

    if (!r->has_table || !t->has_ndims)
        return o;
    size_t k = (size_t)t->ndims[i], at = *dim;
    *dim = at + k;
    o.has_shape = true;
    o.shape = t->shapes + at;
    o.nshape = k;
    if (t->has_global_shapes) {
        o.has_global_shape = o.has_offsets = true;
        o.global_shape = t->global_shapes + at;
        o.offsets = t->slice_offsets + at;
        o.nglobal_shape = o.noffsets = k;
    }
    return o;
}

int msg_tensor_check_shape(const struct msg_tensor *t, size_t i, char *err, size_t errlen)
{
    if (t->has_shape) {
        uint64_t prod = 1;
        if (t->nshape > MSG_DIMS_MAX) {
            snprintf(err, errlen, "tensors[%zu].shape: %zu dimensions, at most %d", i, t->nshape,
                     MSG_DIMS_MAX);
            return -EINVAL;
        }
        for (size_t k = 0; k < t->nshape; k++)
            if (__builtin_mul_overflow(prod, t->shape[k], &prod))
                prod = UINT64_MAX;
        if (prod != t->numel) {
            snprintf(err, errlen, "tensors[%zu].shape: its product is not numel (%" PRIu64 ")",
                     i, t->numel);
            return -EINVAL;
        }
    }
    if (!t->has_global_shape && !t->has_offsets)
        return 0;
    if (t->has_global_shape != t->has_offsets || !t->has_shape) {
        snprintf(err, errlen, "tensors[%zu]: global_shape and offsets come together, with shape",
                 i);
        return -EINVAL;
    }
    if (t->nglobal_shape != t->nshape || t->noffsets != t->nshape) {
        snprintf(err, errlen, "tensors[%zu]: global_shape (%zu) and offsets (%zu) must have as "
                 "many dimensions as shape (%zu)", i, t->nglobal_shape, t->noffsets, t->nshape);
        return -EINVAL;
    }
    for (size_t k = 0; k < t->nshape; k++) {
        uint64_t end;
        if (__builtin_add_overflow(t->offsets[k], t->shape[k], &end) ||
            end > t->global_shape[k]) {
            snprintf(err, errlen, "tensors[%zu]: dimension %zu: offsets %" PRIu64 " + shape %"
                     PRIu64 " pass global_shape %" PRIu64, i, k, t->offsets[k], t->shape[k],
                     t->global_shape[k]);
            return -EINVAL;
        }
    }
    return 0;
}

int msg_group_check(const struct msg_group *g, char *err, size_t errlen)
{
    if (!names_session_valid(g->job.ptr, g->job.len)) {
        snprintf(err, errlen, "group.job: must be 1 to %d characters of [A-Za-z0-9._:/-]",
                 NAMES_SESSION_MAX);
        return -EINVAL;
    }
    if (g->world == 0 || g->world > MSG_WORLD_MAX) {
        snprintf(err, errlen, "group.world: %" PRIu64 " is not in 1..%u", g->world,
                 MSG_WORLD_MAX);
        return -EINVAL;
    }
    if (g->rank >= g->world) {
        snprintf(err, errlen, "group.rank: %" PRIu64 " is not below world (%" PRIu64 ")",
                 g->rank, g->world);
        return -EINVAL;
    }
    if (g->has_replicas && (g->replicas == 0 || g->replicas > MSG_REPLICAS_MAX)) {
        snprintf(err, errlen, "group.replicas: %" PRIu64 " is not in 1..%d", g->replicas,
                 MSG_REPLICAS_MAX);
        return -EINVAL;
    }
    return 0;
}

int msg_saved_state_expand(struct msg_saved_state *m, char *err, size_t errlen)
{
    const struct msg_table *t = &m->table;
    size_t n = t->nnames;
    int rc;

    if (!m->has_table)
        return 0;
    if ((rc = table_check(t, m->ntensors, err, errlen)) < 0 || n == 0)
        return rc;
    m->tensors = calloc(n, sizeof(*m->tensors));
    if (m->tensors == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        m->tensors[i] = (struct msg_saved_tensor){t->names[i], t->dtypes[i], t->numels[i], true,
                                                  t->offsets[i]};
    m->ntensors = n;
    return 0;
}

int msg_register_check(const struct msg_register *r, char *err, size_t errlen)
{
    int rc = r->has_table ? table_check(&r->table, r->ntensors, err, errlen) : 0;

    if (rc == 0 && r->has_group)
        rc = msg_group_check(&r->group, err, errlen);
    return rc;
}

size_t msg_register_count(const struct msg_register *r)
{
    return r->has_table ? r->table.nnames : r->ntensors;
}

struct msg_tensor msg_register_tensor(const struct msg_register *r, size_t i)
{
    const struct msg_table *t = &r->table;

    if (!r->has_table)
        return r->tensors[i];
    return (struct msg_tensor){.name = t->names[i], .dtype = t->dtypes[i],
                               .offset = t->offsets[i], .numel = t->numels[i]};
}

int msg_decode(const struct msg_desc *d, const msgpack_object *map, void *out, char *err,
               size_t errlen)
{
    struct path p;

    p.depth = 0;

    if (map == NULL || map->type != MSGPACK_OBJECT_MAP) {
        memset(out, 0, d->size);
        snprintf(err, errlen, "%s: expected a map", d->name);
        return -EINVAL;
    }
    return decode_map(d, map, out, &p, err, errlen);
}

void msg_free(const struct msg_desc *d, void *obj)
{
    char *o = obj;

    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        void **slot = (void **)(o + f->offset);
        switch (f->type) {
        case MSG_OBJ:
            msg_free(f->sub, o + f->offset);
            break;
        case MSG_NAMED:
        case MSG_ARRAY:
            for (size_t k = 0; *slot && k < *(size_t *)(o + f->count_offset); k++)
                msg_free(f->sub, (char *)*slot + k * f->sub->size);
            /* fall through */
        case MSG_STR_ARRAY:
        case MSG_U64_ARRAY:
            free(*slot);
            *slot = NULL;
            *(size_t *)(o + f->count_offset) = 0;
            break;
        default:
            break;
        }
    }
}

/* ---- encoding ---- */

static void encode_value(msgpack_packer *pk, const struct msg_field *f, const char *slot,
                         const char *obj)
{
    switch (f->type) {
    case MSG_U64:
        msgpack_pack_uint64(pk, *(const uint64_t *)slot);
        break;
    case MSG_I64:
        msgpack_pack_int64(pk, *(const int64_t *)slot);
        break;
    case MSG_F64:
        msgpack_pack_double(pk, *(const double *)slot);
        break;
    case MSG_BOOL:
        if (*(const bool *)slot)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        break;
    case MSG_STR: {
        const struct msg_str *s = (const struct msg_str *)slot;
        msgpack_pack_str(pk, s->len);
        msgpack_pack_str_body(pk, s->ptr, s->len);
        break;
    }
    case MSG_OBJ:
        msg_encode(pk, f->sub, slot);
        break;
    case MSG_NAMED: {
        size_t n = *(const size_t *)(obj + f->count_offset);
        const char *arr = *(char *const *)slot;
        msgpack_pack_map(pk, n);
        for (size_t i = 0; i < n; i++) {
            const struct msg_str *name = (const struct msg_str *)(arr + i * f->sub->size);
            msgpack_pack_str(pk, name->len);
            msgpack_pack_str_body(pk, name->ptr, name->len);
            msg_encode(pk, f->sub, arr + i * f->sub->size);
        }
        break;
    }
    case MSG_ARRAY:
    case MSG_STR_ARRAY:
    case MSG_U64_ARRAY: {
        size_t n = *(const size_t *)(obj + f->count_offset);
        const char *arr = *(char *const *)slot;
        msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n; i++) {
            if (f->type == MSG_ARRAY) {
                msg_encode(pk, f->sub, arr + i * f->sub->size);
            } else if (f->type == MSG_STR_ARRAY) {
                const struct msg_str *s = (const struct msg_str *)arr + i;
                msgpack_pack_str(pk, s->len);
                msgpack_pack_str_body(pk, s->ptr, s->len);
            } else {
                msgpack_pack_uint64(pk, ((const uint64_t *)arr)[i]);
            }
        }
        break;
    }
    }
}

void msg_encode(msgpack_packer *pk, const struct msg_desc *d, const void *obj)
{
    const char *o = obj;
    size_t n = 0;

    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        if (!(f->flags & MSG_OPTIONAL) || *(const bool *)(o + f->has_offset))
            n++;
    }
    msgpack_pack_map(pk, n);
    for (size_t i = 0; i < d->nfields; i++) {
        const struct msg_field *f = &d->fields[i];
        bool present = !(f->flags & (MSG_OPTIONAL | MSG_NULLABLE)) ||
                       *(const bool *)(o + f->has_offset);
        if (!present && (f->flags & MSG_OPTIONAL))
            continue;
        msgpack_pack_str(pk, f->keylen);
        msgpack_pack_str_body(pk, f->key, f->keylen);
        if (present)
            encode_value(pk, f, o + f->offset, o);
        else
            msgpack_pack_nil(pk);
    }
}
