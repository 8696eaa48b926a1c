/*
 * test_shard.c - shard sessions (docs/protocol.md "Shard sessions"), against emad as a
 * subprocess: shapes, slices and the group kept by the session, shown by status, written into
 * snapshot files, brought back by a restart (clean and after SIGKILL); emactl list and emactl
 * job grouping a job's ranks; the new fields' bounds refused with BADARG.
 */
#include "harness.h"

#include "emaclient.h"
#include "msg.h"
#include "safetensors.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

static emac_segment *made[6];

/* The chunks before the second batch_end of a two-replica session of one small tensor: the
 * leader's register (its journal and one) and its first batch_end (one). */
#define STALL_AFTER_ONE_EVENT "EMAD_TEST_STALL_AFTER=3"

static int teardown(void **state)
{
    kill_leftovers(state);
    for (size_t i = 0; i < 6; i++) {
        emac_segment_destroy(made[i]);
        made[i] = NULL;
    }
    return 0;
}

static const uint64_t w_shape[] = {4, 6}, w_global[] = {8, 6}, w_offsets[] = {4, 0};
static const uint64_t b_shape[] = {6};

/* Rank `rank` of job "llama" (world 2): w, the rows 4..7 of an 8x6 tensor; b, a whole [6]
 * vector; steps, a flat i64 counter. One power profile, so that snapshots can be asked for. */
static emac_session *register_rank(emac_client *c, size_t slot, const char *name, uint64_t rank,
                                   uint64_t world, const char *job)
{
    struct emac_tensor_spec specs[] = {
        {"w", "f32", 24, w_shape, 2},
        {"b", "f32", 6, b_shape, 1},
        {"steps", "i64", 1, NULL, 0},
    };
    struct emac_profile prof = {.name = "p10", .schedule = "power", .has_sigma_rel = true,
                                .sigma_rel = 0.10};
    struct emac_group g = {job, rank, world, 0};
    struct emac_error err;
    emac_session *s = NULL;

    assert_int_equal(emac_segment_create(specs, 3, &made[slot], &err), 0);
    if (emac_segment_set_slice(made[slot], 0, w_global, w_offsets, 2, &err) < 0 ||
        emac_segment_set_group(made[slot], &g, &err) < 0)
        fail_msg("%s: %s", err.code, err.message);
    float *w = emac_segment_tensor(made[slot], 0)->data;
    for (int i = 0; i < 24; i++)
        w[i] = (float)i;
    if (emac_register_profiles(c, name, made[slot], &prof, 1, NULL, NULL, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    return s;
}

/* The client library checks a slice before emad sees it. */
static void test_slice_checked_by_the_library(void **state)
{
    struct emac_tensor_spec specs[] = {{"w", "f32", 24, w_shape, 2}, {"flat", "f32", 3, NULL, 0}};
    const uint64_t past[] = {5, 0}, g3[] = {8, 6, 1};
    struct emac_group g = {"job", 2, 2, 0};
    struct emac_error err;
    (void)state;

    assert_int_equal(emac_segment_create(specs, 2, &made[0], &err), 0);
    assert_true(emac_segment_set_slice(made[0], 0, w_global, past, 2, &err) < 0);
    assert_string_equal(err.code, "USAGE");
    expect_in(err.message, "offsets 5 + shape 4 pass global_shape 8");
    assert_true(emac_segment_set_slice(made[0], 0, g3, w_offsets, 3, &err) < 0);
    assert_true(emac_segment_set_slice(made[0], 1, w_global, w_offsets, 2, &err) < 0);
    assert_true(emac_segment_set_slice(made[0], 2, w_global, w_offsets, 2, &err) < 0);
    assert_int_equal(emac_segment_set_slice(made[0], 0, w_global, w_offsets, 2, &err), 0);
    assert_int_equal(emac_segment_set_slice(made[0], 0, NULL, NULL, 0, &err), 0);
    assert_true(emac_segment_set_group(made[0], &g, &err) < 0);
    expect_in(err.message, "group.rank: 2 is not below world (2)");
}

/* The status of one session, with its table, over the raw protocol. */
static const msgpack_object *status_tensors(struct rpc *r, const char *session)
{
    struct msg_status req = {true, msg_str_c(session), true, true};
    const msgpack_object *res = rpc_call(r, "status", &msg_status_desc, &req);
    if (res == NULL)
        fail_msg("status: %s: %s", r->code, r->message);
    return res;
}

static const msgpack_object *map_get(const msgpack_object *m, const char *key)
{
    assert_int_equal(m->type, MSGPACK_OBJECT_MAP);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, strlen(key)) == 0)
            return &kv->val;
    }
    return NULL;
}

/* The u64 array under key of m, as "a,b,c". */
static void u64s(const msgpack_object *m, const char *key, char *out, size_t len)
{
    const msgpack_object *a = map_get(m, key);
    size_t at = 0;

    assert_non_null(a);
    assert_int_equal(a->type, MSGPACK_OBJECT_ARRAY);
    out[0] = '\0';
    for (uint32_t i = 0; i < a->via.array.size; i++)
        at += (size_t)snprintf(out + at, len - at, "%s%llu", i ? "," : "",
                               (unsigned long long)a->via.array.ptr[i].via.u64);
}

/* What status says of "llama-r1" (group and, asked for, the table with shapes). */
static void expect_shard_status(const struct daemon *d)
{
    struct rpc r;
    char buf[256];

    rpc_open(&r, d, "test_shard");
    const msgpack_object *res = status_tensors(&r, "llama-r1");
    const msgpack_object *sessions = map_get(res, "sessions");
    assert_int_equal(sessions->via.array.size, 1);
    const msgpack_object *s = &sessions->via.array.ptr[0];
    const msgpack_object *g = map_get(s, "group");
    assert_non_null(g);
    assert_int_equal(map_get(g, "rank")->via.u64, 1);
    assert_int_equal(map_get(g, "world")->via.u64, 2);
    assert_int_equal(map_get(g, "replicas")->via.u64, 1);
    const msgpack_object *job = map_get(g, "job");
    assert_int_equal(job->via.str.size, 5);
    assert_memory_equal(job->via.str.ptr, "llama", 5);
    const msgpack_object *t = map_get(s, "table");
    assert_non_null(t);
    u64s(t, "ndims", buf, sizeof(buf));
    assert_string_equal(buf, "2,1,1");
    u64s(t, "shapes", buf, sizeof(buf));
    assert_string_equal(buf, "4,6,6,1");
    u64s(t, "global_shapes", buf, sizeof(buf));
    assert_string_equal(buf, "8,6,6,1");
    u64s(t, "slice_offsets", buf, sizeof(buf));
    assert_string_equal(buf, "4,0,0,0");
    rpc_close(&r);
}

/* A snapshot file of "llama-r1": real shapes, and the slice and group in its metadata. */
static void expect_snapshot_shapes(emac_client *c)
{
    struct emac_snapshot *l = NULL;
    struct emac_error err;
    struct st_file f;
    char why[512];
    size_t n = 0;

    assert_int_equal(emac_snapshots(c, "llama-r1", &l, &n, &err), 0);
    assert_true(n >= 1);
    if (st_open(&f, l[n - 1].file, why, sizeof(why)) < 0)
        fail_msg("%s", why);
    const struct st_tensor *w = st_find(&f.h, "w"), *b = st_find(&f.h, "b");
    const struct st_tensor *steps = st_find(&f.h, "steps");
    assert_non_null(w);
    assert_non_null(b);
    assert_non_null(steps);
    assert_int_equal(w->rank, 2);
    assert_int_equal(w->shape[0], 4);
    assert_int_equal(w->shape[1], 6);
    assert_int_equal(b->rank, 1);
    assert_int_equal(b->shape[0], 6);
    assert_int_equal(steps->rank, 1); /* registered without a shape: flat */
    assert_int_equal(steps->shape[0], 1);
    assert_string_equal(st_meta_get(&f.h, "slice.w"), "{\"global_shape\":[8,6],\"offsets\":[4,0]}");
    /* Every tensor of a sliced session says where it belongs: b and steps are whole. */
    assert_string_equal(st_meta_get(&f.h, "slice.b"), "{\"global_shape\":[6],\"offsets\":[0]}");
    assert_string_equal(st_meta_get(&f.h, "slice.steps"),
                        "{\"global_shape\":[1],\"offsets\":[0]}");
    assert_string_equal(st_meta_get(&f.h, "job"), "llama");
    assert_string_equal(st_meta_get(&f.h, "rank"), "1");
    assert_string_equal(st_meta_get(&f.h, "world_size"), "2");
    /* The data: the shadow of w after one update from a constant start is the params. */
    float wv[24];
    assert_int_equal(st_read(&f, w, 0, wv, sizeof(wv), why, sizeof(why)), 0);
    assert_true(wv[23] == 23.0f);
    st_close(&f);
    emac_snapshots_free(l);
}

static void test_shapes_slices_and_group_kept(void **state)
{
    struct emac_snapshot *l = NULL;
    struct emac_status *st;
    struct emac_error err;
    struct daemon d;
    size_t n = 0;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_shard");
    emac_session *s = register_rank(c, 0, "llama-r1", 1, 2, "llama");
    event_at(s, "batch_end", 1);
    if (emac_snapshot(s, &l, &n, &err) < 0)
        fail_msg("snapshot: %s: %s", err.code, err.message);
    emac_snapshots_free(l);
    expect_shard_status(&d);
    expect_snapshot_shapes(c);
    assert_int_equal(emac_status(c, "llama-r1", &st, &err), 0);
    const struct emac_group *g = emac_status_group(st, 0);
    assert_non_null(g);
    assert_string_equal(g->job, "llama");
    assert_int_equal(g->rank, 1);
    assert_int_equal(g->world, 2);
    assert_null(emac_status_group(st, 1));
    emac_status_free(st);

    /* emactl show names the group. */
    char out[8192];
    char *show[] = {(char *)emactl_bin(), "--socket", d.sock, "show", "llama-r1", NULL};
    assert_int_equal(run_capture(show, NULL, out, sizeof(out)), 0);
    expect_in(out, "\ngroup            job llama, rank 1 of 2, 1 replica\n");

    /* A clean stop keeps it in a state file; the next emad brings shapes and group back. */
    emac_session_free(s);
    emac_disconnect(c);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    check_daemon_stderr(&d, -1);
    daemon_start_env(&d, NULL, NULL);
    expect_shard_status(&d);

    /* Resumed with the same shapes: accepted; a snapshot after it still has them. */
    c = client_connect(&d, "test_shard");
    struct emac_profile prof = {.name = "p10", .schedule = "power", .has_sigma_rel = true,
                                .sigma_rel = 0.10};
    if (emac_register_profiles(c, "llama-r1", made[0], &prof, 1, NULL, NULL, true, &s, &err) < 0)
        fail_msg("resume: %s: %s", err.code, err.message);
    event_at(s, "batch_end", 2);
    if (emac_snapshot(s, &l, &n, &err) < 0)
        fail_msg("snapshot: %s: %s", err.code, err.message);
    emac_snapshots_free(l);
    expect_snapshot_shapes(c);

    /* After SIGKILL the journal brings them back too. */
    emac_session_free(s);
    emac_disconnect(c);
    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    expect_shard_status(&d);

    /* A resume whose slice differs is refused, naming why. */
    c = client_connect(&d, "test_shard");
    const uint64_t other[] = {0, 0};
    assert_int_equal(emac_segment_set_slice(made[0], 0, w_global, other, 2, &err), 0);
    assert_true(emac_register_profiles(c, "llama-r1", made[0], &prof, 1, NULL, NULL, true, &s,
                                       &err) < 0);
    assert_string_equal(err.code, "BADARG");
    expect_in(err.message, "shapes or slices differ");
    emac_disconnect(c);
    daemon_stop(&d);
}

/* emactl list adds a row per job, emactl job a row per rank: missing and lagging ranks. */
static void test_emactl_groups_a_job(void **state)
{
    struct daemon d;
    char out[16384];
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_shard");
    /* Ranks 0, 1 and 3 of a world of 4 here (rank 2 is on another node, or dead). */
    emac_session *r0 = register_rank(c, 0, "job-a.r0", 0, 4, "job-a");
    emac_session *r1 = register_rank(c, 1, "job-a.r1", 1, 4, "job-a");
    emac_session *r3 = register_rank(c, 2, "job-a.r3", 3, 4, "job-a");
    for (uint64_t b = 1; b <= 5; b++) {
        event_at(r0, "batch_end", b);
        event_at(r3, "batch_end", b);
        if (b <= 3)
            event_at(r1, "batch_end", b);
    }
    char *list[] = {(char *)emactl_bin(), "--socket", d.sock, "list", NULL};
    assert_int_equal(run_capture(list, NULL, out, sizeof(out)), 0);
    expect_in(out, "JOB    WORLD  RANKS  ATTACHED  MIN BATCH  MAX BATCH  MISSING  LAGGING\n");
    expect_in(out, "job-a      4    3/4         3          3          5  2        1\n");

    char *job[] = {(char *)emactl_bin(), "--socket", d.sock, "job", "job-a", NULL};
    assert_int_equal(run_capture(job, NULL, out, sizeof(out)), 0);
    expect_in(out, "job job-a: world 4, 3 of its ranks present in 3 sessions (3 attached), "
                   "batches 3 to 5\n");
    expect_in(out, "  missing  2\n  lagging  1\n");
    expect_in(out, "   1  job-a.r1  ");
    expect_in(out, "      3        3         1  lagging\n");
    expect_in(out, "   3  job-a.r3  ");

    /* A detached rank is still present, shown detached. */
    emac_session_free(r1);
    struct emac_error err;
    assert_int_equal(emac_close(r3, true, &err), 0);
    emac_session_free(r3);
    assert_int_equal(run_capture(job, NULL, out, sizeof(out)), 0);
    expect_in(out, "(2 attached)");
    expect_in(out, "detached");

    char *none[] = {(char *)emactl_bin(), "--socket", d.sock, "job", "nosuch", NULL};
    assert_int_equal(run_capture(none, NULL, out, sizeof(out)), 1);
    expect_in(out, "NOSESSION");
    emac_session_free(r0);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* register's new fields out of their rules: BADARG naming the field, nothing registered. */
static void test_bad_shard_fields_refused(void **state)
{
    struct emac_tensor_spec spec = {"w", "f32", 24, w_shape, 2};
    struct emac_error err;
    struct msg_register reg;
    struct msg_tensor t;
    struct daemon d;
    struct rpc r;
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(&spec, 1, &made[0], &err), 0);
    rpc_open(&r, &d, "test_shard");
    struct {
        uint64_t shape[2], global[2], offsets[2];
        size_t nshape, nglobal, noffsets;
        bool has_global, has_offsets;
        struct msg_group group;
        bool has_group;
        const char *want;
    } cases[] = {
        {{4, 6}, {8, 6}, {5, 0}, 2, 2, 2, true, true, {{0}, 0, 0, false, 0}, false,
         "register: tensors[0]: dimension 0: offsets 5 + shape 4 pass global_shape 8"},
        {{4, 6}, {8, 6}, {UINT64_MAX, 0}, 2, 2, 2, true, true, {{0}, 0, 0, false, 0}, false,
         "pass global_shape"},
        {{4, 6}, {8, 6}, {4, 0}, 2, 1, 2, true, true, {{0}, 0, 0, false, 0}, false,
         "must have as many dimensions as shape"},
        {{4, 6}, {8, 6}, {4, 0}, 2, 2, 2, true, false, {{0}, 0, 0, false, 0}, false,
         "global_shape and offsets come together"},
        {{4, 5}, {8, 6}, {4, 0}, 2, 2, 2, false, false, {{0}, 0, 0, false, 0}, false,
         "register: tensors[0].shape: its product is not numel (24)"},
        {{4, 6}, {8, 6}, {4, 0}, 2, 2, 2, false, false, {{"j", 1}, 4, 4, false, 0}, true,
         "register: group.rank: 4 is not below world (4)"},
        {{4, 6}, {8, 6}, {4, 0}, 2, 2, 2, false, false, {{"j", 1}, 0, 1, true, 0}, true,
         "register: group.replicas: 0 is not in 1..64"},
        {{4, 6}, {8, 6}, {4, 0}, 2, 2, 2, false, false, {{"j k", 3}, 0, 1, false, 0}, true,
         "register: group.job: must be"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        register_msg(&reg, &t, 1, "bad", made[0]);
        t.has_shape = true;
        t.shape = cases[i].shape;
        t.nshape = cases[i].nshape;
        t.has_global_shape = cases[i].has_global;
        t.global_shape = cases[i].global;
        t.nglobal_shape = cases[i].nglobal;
        t.has_offsets = cases[i].has_offsets;
        t.offsets = cases[i].offsets;
        t.noffsets = cases[i].noffsets;
        reg.has_group = cases[i].has_group;
        reg.group = cases[i].group;
        assert_null(rpc_call(&r, "register", &msg_register_desc, &reg));
        assert_string_equal(r.code, "BADARG");
        expect_in(r.message, "%s", cases[i].want);
    }
    /* Nothing was registered; a valid one is. */
    register_msg(&reg, &t, 1, "bad", made[0]);
    t.has_shape = true;
    t.shape = cases[0].shape;
    t.nshape = 2;
    assert_non_null(rpc_call(&r, "register", &msg_register_desc, &reg));
    rpc_close(&r);
    daemon_stop(&d);
}

/* ---- replicas (docs/scaleout.md "Replicas") ---- */

/* One f32 tensor of 1000 elements, ranks of a job of world 2 holding the same weights. */
static emac_session *register_replica_cfg(emac_client *c, size_t slot, const char *name,
                                          uint64_t rank, uint64_t replicas,
                                          const struct emac_config *cfg)
{
    struct emac_tensor_spec spec = {"w", "f32", 1000, NULL, 0};
    struct emac_group g = {name, rank, 2, replicas}; /* the job is named as the session */
    struct emac_error err;
    emac_session *s = NULL;

    if (made[slot] == NULL)
        assert_int_equal(emac_segment_create(&spec, 1, &made[slot], &err), 0);
    assert_int_equal(emac_segment_set_group(made[slot], &g, &err), 0);
    if (emac_register(c, name, made[slot], cfg, false, &s, &err) < 0)
        fail_msg("register %s rank %llu: %s: %s", name, (unsigned long long)rank, err.code,
                 err.message);
    return s;
}

static emac_session *register_replica(emac_client *c, size_t slot, const char *name,
                                      uint64_t rank, uint64_t replicas)
{
    const struct emac_config cfg = {.half_life = "2ba"};

    return register_replica_cfg(c, slot, name, rank, replicas, &cfg);
}

static void set_params(size_t slot, uint64_t batch, float shift)
{
    float *w = emac_segment_tensor(made[slot], 0)->data;
    for (int i = 0; i < 1000; i++)
        w[i] = (float)i * 0.5f + (float)batch + shift;
}

/* The status map of one session, over the raw protocol. */
static const msgpack_object *session_status(struct rpc *r, const char *name)
{
    struct msg_status req = {true, msg_str_c(name), false, false};
    const msgpack_object *res = rpc_call(r, "status", &msg_status_desc, &req);
    if (res == NULL)
        fail_msg("status %s: %s: %s", name, r->code, r->message);
    return &map_get(res, "sessions")->via.array.ptr[0];
}

static void test_replicas_share_one_shadow(void **state)
{
    struct emac_error err;
    struct daemon d;
    struct rpc r;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c0 = client_connect(&d, "rank0"), *c1 = client_connect(&d, "rank1");
    emac_client *cs = client_connect(&d, "solo");
    emac_session *s0 = register_replica(c0, 0, "ddp", 0, 2);
    emac_session *s1 = register_replica(c1, 1, "ddp", 1, 2);
    /* The same model alone, fed the leader's params: what the shared shadow must hold. */
    emac_session *solo = register_replica(cs, 2, "solo", 0, 1);
    /* A third rank of a 2-replica session finds every seat taken. */
    emac_client *c2 = client_connect(&d, "rank2");
    emac_session *s2 = NULL;
    struct emac_tensor_spec spec = {"w", "f32", 1000, NULL, 0};
    struct emac_group g = {"ddp", 1, 2, 2};
    assert_int_equal(emac_segment_create(&spec, 1, &made[3], &err), 0);
    assert_int_equal(emac_segment_set_group(made[3], &g, &err), 0);
    assert_true(emac_register(c2, "ddp", made[3], NULL, false, &s2, &err) < 0);
    assert_string_equal(err.code, "EXISTS");
    emac_disconnect(c2);

    /* One shadow: the replica maps the leader's, and the session's shadow is one model's. */
    rpc_open(&r, &d, "test_shard");
    const msgpack_object *st = session_status(&r, "ddp");
    assert_int_equal(map_get(st, "replicas_attached")->via.u64, 2);
    uint64_t shared = map_get(st, "shadow_bytes")->via.u64;
    st = session_status(&r, "solo");
    assert_int_equal(map_get(st, "shadow_bytes")->via.u64, shared);
    const struct emac_shadow *sh0 = emac_session_shadow(s0, 0), *sh1 = emac_session_shadow(s1, 0);
    const struct emac_shadow *shs = emac_session_shadow(solo, 0);
    struct msg_status all = {false, msg_str_c(NULL), false, false};
    const msgpack_object *res = rpc_call(&r, "status", &msg_status_desc, &all);
    assert_non_null(res);
    assert_int_equal(map_get(res, "sessions")->via.array.size, 2); /* ddp and solo */

    /* Both ranks step; the leader's batch_end updates, the replica's does not. */
    for (uint64_t b = 1; b <= 3; b++) {
        set_params(0, b, 0);
        set_params(1, b, 0);
        set_params(2, b, 0);
        struct emac_result a = event_at(s0, "batch_end", b);
        assert_int_equal(a.updates, b);
        struct emac_result z = event_at(s1, "batch_end", b);
        assert_int_equal(z.action, EMAC_ACTION_NONE);
        assert_int_equal(z.updates, b);
        event_at(solo, "batch_end", b);
    }
    assert_memory_equal(sh0->data, shs->data, 4000);
    assert_memory_equal(sh1->data, shs->data, 4000);

    /* The replica's eval swaps the EMA weights into its own params only; its training weights
     * come back bit for bit. */
    float train1[1000], train0[1000];
    memcpy(train1, emac_segment_tensor(made[1], 0)->data, sizeof(train1));
    memcpy(train0, emac_segment_tensor(made[0], 0)->data, sizeof(train0));
    struct emac_result in = event_at(s1, "eval_start", 3);
    assert_int_equal(in.action, EMAC_ACTION_SWAP_IN);
    assert_true(in.active);
    assert_memory_equal(emac_segment_tensor(made[1], 0)->data, shs->data, 4000);
    assert_memory_equal(emac_segment_tensor(made[0], 0)->data, train0, 4000);
    st = session_status(&r, "ddp");
    assert_false(map_get(st, "active")->via.boolean); /* the leader's params: training */
    /* The leader's eval in the meantime, and its way back. */
    assert_int_equal(event_at(s0, "eval_start", 3).action, EMAC_ACTION_SWAP_IN);
    assert_memory_equal(emac_segment_tensor(made[0], 0)->data, shs->data, 4000);
    assert_int_equal(event_at(s0, "eval_end", 3).action, EMAC_ACTION_SWAP_OUT);
    assert_memory_equal(emac_segment_tensor(made[0], 0)->data, train0, 4000);
    struct emac_result out = event_at(s1, "eval_end", 3);
    assert_int_equal(out.action, EMAC_ACTION_SWAP_OUT);
    assert_false(out.active);
    assert_memory_equal(emac_segment_tensor(made[1], 0)->data, train1, 4000);

    /* A replica whose params differ from the leader's at the same batch is caught. */
    set_params(0, 4, 0);
    set_params(1, 4, 0.25f);
    set_params(2, 4, 0);
    event_at(s0, "batch_end", 4);
    event_at(solo, "batch_end", 4);
    assert_false(emac_session_diverged(s1));
    event_at(s1, "batch_end", 4);
    assert_true(emac_session_diverged(s1));
    st = session_status(&r, "ddp");
    assert_int_equal(map_get(st, "diverged")->via.u64, 1);
    const msgpack_object *why = map_get(st, "last_divergence");
    char text[256];
    snprintf(text, sizeof(text), "%.*s", (int)why->via.str.size, why->via.str.ptr);
    expect_in(text, "batch 4: replica rank 1 (pid %ld) holds other params than the leader",
              (long)getpid());
    assert_memory_equal(sh0->data, shs->data, 4000); /* the leader's params made the update */
    char shown[8192];
    char *show[] = {(char *)emactl_bin(), "--socket", d.sock, "show", "ddp", NULL};
    assert_int_equal(run_capture(show, NULL, shown, sizeof(shown)), 0);
    expect_in(shown, "\nreplicas         2 attached (the leader included); 1 divergence found\n");

    /* emactl job counts both ranks present, in one session. */
    char *jobcmd[] = {(char *)emactl_bin(), "--socket", d.sock, "job", "ddp", NULL};
    assert_int_equal(run_capture(jobcmd, NULL, shown, sizeof(shown)), 0);
    expect_in(shown, "job ddp: world 2, 2 of its ranks present in 1 sessions (1 attached)");
    expect_in(shown, "  missing  -\n");
    expect_in(shown, "   0  ddp  ");
    expect_in(shown, "   1  ddp  ");

    /* The leader dies: the replica goes on, and leads (its batch_end updates now). */
    emac_session_free(s0);
    emac_disconnect(c0);
    for (int tries = 0;; tries++) {
        st = session_status(&r, "ddp");
        if (map_get(st, "replicas_attached")->via.u64 == 1)
            break;
        if (tries == 1000)
            fail_msg("the leader's disconnect was not seen");
        sleep_ms(10);
    }
    assert_true(map_get(st, "attached")->via.boolean);
    set_params(1, 5, 0);
    set_params(2, 5, 0);
    struct emac_result led = event_at(s1, "batch_end", 5);
    assert_int_equal(led.action, EMAC_ACTION_UPDATE);
    assert_int_equal(led.updates, 5);
    event_at(solo, "batch_end", 5);
    assert_memory_equal(sh1->data, shs->data, 4000);

    /* The last replica gone: detached, as any session. */
    emac_session_free(s1);
    emac_disconnect(c1);
    for (int tries = 0;; tries++) {
        st = session_status(&r, "ddp");
        if (!map_get(st, "attached")->via.boolean)
            break;
        if (tries == 1000)
            fail_msg("the last replica's disconnect was not seen");
        sleep_ms(10);
    }
    assert_int_equal(map_get(st, "replicas_attached")->via.u64, 0);
    rpc_close(&r);
    emac_session_free(solo);
    emac_disconnect(cs);
    daemon_stop(&d);
}

/* Ranks 0 and 1 of a job "ddp" of world 2, replicas of one session (their segments made[4] and
 * made[5]), each on its own connection; rank 0 leads. */
struct ddp_pair {
    emac_client *c[2];
    emac_session *s[2];
};

static void pair_open(struct ddp_pair *p, struct daemon *d)
{
    p->c[0] = client_connect(d, "rank0");
    p->c[1] = client_connect(d, "rank1");
    p->s[0] = register_replica(p->c[0], 4, "ddp", 0, 2);
    p->s[1] = register_replica(p->c[1], 5, "ddp", 1, 2);
}

/* Both ranks' params at batch b, and their batch_end: the leader's, its b-th update, then the
 * replica's, which updates nothing. */
static void pair_step(struct ddp_pair *p, uint64_t b)
{
    set_params(4, b, 0);
    set_params(5, b, 0);
    assert_int_equal(event_at(p->s[0], "batch_end", b).updates, b);
    assert_int_equal(event_at(p->s[1], "batch_end", b).action, EMAC_ACTION_NONE);
}

static void pair_close(struct ddp_pair *p)
{
    for (int k = 1; k >= 0; k--) {
        emac_session_free(p->s[k]);
        if (p->c[k] != NULL)
            emac_disconnect(p->c[k]);
    }
}

/* A replica's close detaches that replica alone: the session and the leader go on. */
static void test_replica_close_detaches_it_alone(void **state)
{
    struct emac_error err;
    struct daemon d;
    struct rpc r;
    (void)state;

    daemon_start(&d, NULL);
    struct ddp_pair p;
    pair_open(&p, &d);
    pair_step(&p, 1);
    assert_int_equal(emac_close(p.s[1], false, &err), 0);
    emac_session_free(p.s[1]);
    rpc_open(&r, &d, "test_shard");
    const msgpack_object *st = session_status(&r, "ddp");
    assert_int_equal(map_get(st, "replicas_attached")->via.u64, 1);
    assert_int_equal(map_get(st, "diverged")->via.u64, 0);
    assert_true(map_get(st, "attached")->via.boolean);
    set_params(4, 2, 0);
    assert_int_equal(event_at(p.s[0], "batch_end", 2).updates, 2);
    /* Its seat is free again: a rank joins anew. */
    p.s[1] = register_replica(p.c[1], 5, "ddp", 1, 2);
    st = session_status(&r, "ddp");
    assert_int_equal(map_get(st, "replicas_attached")->via.u64, 2);
    rpc_close(&r);
    pair_close(&p);
    daemon_stop(&d);
}

/*
 * A replica's events outside the update: its checkpoint swaps the EMA weights into its own
 * params, and its next batch_start swaps its training weights back, bit for bit (the state
 * machine runs on the replica's own active flag).
 */
static void test_replica_checkpoint_swaps_back(void **state)
{
    struct daemon d;
    struct ddp_pair p;
    (void)state;

    daemon_start(&d, NULL);
    pair_open(&p, &d);
    const struct emac_shadow *sh = emac_session_shadow(p.s[1], 0);
    for (uint64_t b = 1; b <= 3; b++) {
        event_at(p.s[0], "batch_start", b);
        event_at(p.s[1], "batch_start", b);
        pair_step(&p, b);
    }
    assert_false(emac_session_diverged(p.s[1]));

    float train[1000];
    memcpy(train, emac_segment_tensor(made[5], 0)->data, sizeof(train));
    struct emac_result in = event_at(p.s[1], "checkpoint", 3);
    assert_int_equal(in.action, EMAC_ACTION_SWAP_IN);
    assert_memory_equal(emac_segment_tensor(made[5], 0)->data, sh->data, 4000);
    struct emac_result out = event_at(p.s[1], "batch_start", 4);
    assert_int_equal(out.action, EMAC_ACTION_SWAP_OUT);
    assert_false(out.active);
    assert_memory_equal(emac_segment_tensor(made[5], 0)->data, train, 4000);
    /* The leader's own state is untouched by the replica's swaps. */
    assert_int_equal(event_at(p.s[0], "batch_start", 4).action, EMAC_ACTION_NONE);
    pair_close(&p);
    daemon_stop(&d);
}

/*
 * The leader gone while an update of its runs (held back by the test hook): until that update
 * ends, no rank leads. A replica's connection that asks then to resume the session as its owner
 * is refused: a connection takes one seat, and its close frees one. The replica leads once the
 * update is done.
 */
static void test_replica_cannot_take_a_second_seat(void **state)
{
    struct emac_error err;
    struct emac_result res;
    struct daemon d;
    struct rpc r;
    emac_ticket tk;
    (void)state;

    make_dir(&d);
    daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=3000", STALL_AFTER_ONE_EVENT,
                                          NULL});
    struct ddp_pair p;
    pair_open(&p, &d);
    set_params(4, 1, 0);
    set_params(5, 1, 0);
    event_at(p.s[0], "batch_end", 1);
    struct emac_time t = {.batch = 2};
    assert_int_equal(emac_event_send(p.s[0], "batch_end", &t, &tk, &err), 0);
    sleep_ms(300); /* emad takes it up; it is held back for 3 s */
    emac_disconnect(p.c[0]);
    p.c[0] = NULL;
    rpc_open(&r, &d, "test_shard");
    for (int tries = 0;; tries++) {
        const msgpack_object *st = session_status(&r, "ddp");
        if (map_get(st, "replicas_attached")->via.u64 == 1)
            break;
        if (tries == 200)
            fail_msg("the leader's disconnect was not seen");
        sleep_ms(10);
    }
    emac_session *again = NULL;
    assert_true(emac_register(p.c[1], "ddp", made[5], NULL, true, &again, &err) < 0);
    assert_string_equal(err.code, "EXISTS");
    expect_in(err.message, "this connection holds a replica of session ddp already");
    /* Once the update is done the replica leads: its batch_end updates. */
    set_params(5, 3, 0);
    for (int tries = 0;; tries++) {
        if (emac_event(p.s[1], "batch_end", &(struct emac_time){.batch = 3}, &res, &err) < 0)
            fail_msg("batch_end: %s: %s", err.code, err.message);
        if (res.action == EMAC_ACTION_UPDATE)
            break;
        if (tries == 100)
            fail_msg("the replica never came to lead");
        sleep_ms(50);
    }
    rpc_close(&r);
    pair_close(&p);
    daemon_stop(&d);
}

/* Two replicas of "ddp" (made[0], made[1]) and a single rank's session "solo" (made[2]) of the
 * same weights, each on its own connection, in an emad with a state directory of its own: the
 * crash tests' cast. s[2] is the solo session. */
struct ddp_trio {
    emac_client *c[3];
    emac_session *s[3];
};

static void trio_open_cfg(struct ddp_trio *t, struct daemon *d, const struct emac_config *cfg)
{
    static const char *const who[] = {"rank0", "rank1", "solo"};

    make_dir(d);
    daemon_start_env(d, NULL, NULL);
    for (size_t k = 0; k < 3; k++)
        t->c[k] = client_connect(d, who[k]);
    t->s[0] = register_replica_cfg(t->c[0], 0, "ddp", 0, 2, cfg);
    t->s[1] = register_replica_cfg(t->c[1], 1, "ddp", 1, 2, cfg);
    t->s[2] = register_replica_cfg(t->c[2], 2, "solo", 0, 1, cfg);
}

static void trio_open(struct ddp_trio *t, struct daemon *d)
{
    const struct emac_config cfg = {.half_life = "2ba"};

    trio_open_cfg(t, d, &cfg);
}

/* emad gone and back with its sessions: SIGKILLed, or stopped with SIGTERM (which saves them
 * to state files). */
static void trio_restart(struct daemon *d, bool graceful)
{
    if (graceful) {
        assert_int_equal(kill(d->pid, SIGTERM), 0);
        assert_int_equal(wait_exit(d->pid), 0);
    } else {
        daemon_kill(d);
    }
    daemon_start_env(d, NULL, NULL);
}

/* Both replicas' shadow, bit for bit the solo session's. */
static void trio_expect_solo(struct ddp_trio *t)
{
    for (size_t k = 0; k < 2; k++)
        assert_memory_equal(emac_session_shadow(t->s[k], 0)->data,
                            emac_session_shadow(t->s[2], 0)->data, 4000);
}

static void trio_close(struct ddp_trio *t, struct daemon *d)
{
    for (int k = 1; k >= 0; k--)
        emac_session_free(t->s[k]);
    emac_session_free(t->s[2]);
    for (int k = 1; k >= 0; k--)
        emac_disconnect(t->c[k]);
    emac_disconnect(t->c[2]);
    daemon_stop(d);
}

/*
 * emad SIGKILLed under two replicas: each rank's client reconnects on its next call, the first
 * resumes the session (and leads), the second joins it again as a replica; the shared shadow
 * goes on bit for bit as a single rank's session through the same crash.
 */
static void test_replicas_come_back_after_a_crash(void **state)
{
    struct daemon d;
    struct ddp_trio t;
    struct rpc r;
    (void)state;

    trio_open(&t, &d);
    for (uint64_t b = 1; b <= 4; b++) {
        if (b == 3) {
            daemon_kill(&d);
            daemon_start_env(&d, NULL, NULL);
        }
        for (size_t k = 0; k < 3; k++)
            set_params(k, b, 0);
        assert_int_equal(event_at(t.s[0], "batch_end", b).updates, b);
        assert_int_equal(event_at(t.s[1], "batch_end", b).action, EMAC_ACTION_NONE);
        assert_false(emac_session_diverged(t.s[1]));
        event_at(t.s[2], "batch_end", b);
    }
    assert_int_equal(emac_reconnects(t.c[0]), 1);
    assert_int_equal(emac_reconnects(t.c[1]), 1);
    rpc_open(&r, &d, "test_shard");
    const msgpack_object *st = session_status(&r, "ddp");
    assert_int_equal(map_get(st, "replicas_attached")->via.u64, 2);
    assert_int_equal(map_get(st, "updates")->via.u64, 4);
    rpc_close(&r);
    trio_expect_solo(&t);
    /* The replica's eval after the crash still swaps into its own params. */
    assert_int_equal(event_at(t.s[1], "eval_start", 4).action, EMAC_ACTION_SWAP_IN);
    assert_memory_equal(emac_segment_tensor(made[1], 0)->data,
                        emac_session_shadow(t.s[2], 0)->data, 4000);
    assert_int_equal(event_at(t.s[1], "eval_end", 4).action, EMAC_ACTION_SWAP_OUT);
    trio_close(&t, &d);
}

/*
 * The leader gone, the replica leads: its request numbers are its own, not the old leader's.
 * The leader sent two events more than the replica, so the replica's next number is one the
 * old leader's records hold (an update at another batch): the replica's batch_end must be
 * applied, not answered from that record.
 */
static void test_new_leader_is_not_answered_from_the_old_leaders_records(void **state)
{
    struct daemon d;
    struct ddp_pair p;
    struct rpc r;
    (void)state;

    daemon_start(&d, NULL);
    pair_open(&p, &d);
    event_at(p.s[0], "fit_start", 0);
    event_at(p.s[0], "batch_start", 1);
    for (uint64_t b = 1; b <= 3; b++)
        pair_step(&p, b);
    emac_session_free(p.s[0]);
    emac_disconnect(p.c[0]);
    p.c[0] = NULL;
    p.s[0] = NULL;
    rpc_open(&r, &d, "test_shard");
    for (int tries = 0;; tries++) {
        const msgpack_object *st = session_status(&r, "ddp");
        if (map_get(st, "replicas_attached")->via.u64 == 1)
            break;
        if (tries == 1000)
            fail_msg("the leader's disconnect was not seen");
        sleep_ms(10);
    }
    rpc_close(&r);
    set_params(5, 4, 0);
    struct emac_result led = event_at(p.s[1], "batch_end", 4);
    assert_int_equal(led.action, EMAC_ACTION_UPDATE);
    assert_int_equal(led.updates, 4);
    set_params(5, 5, 0);
    assert_int_equal(event_at(p.s[1], "batch_end", 5).updates, 5);
    pair_close(&p);
    daemon_stop(&d);
}

/*
 * A replica's requests are not numbered: a batch_end it had in flight when emad crashed (or
 * stopped), sent again after the restart once it has come to lead, would be applied a second
 * time. Its time tells it was applied (from the old leader's segment, before the crash): it
 * changes nothing, and the next batch updates as ever, the shadow bit for bit a single rank's.
 */
static void new_leader_resends_a_batch(bool graceful)
{
    struct daemon d;
    struct ddp_trio t;

    trio_open(&t, &d);
    for (uint64_t b = 1; b <= 4; b++) {
        for (size_t k = 0; k < 3; k++)
            set_params(k, b, 0);
        if (b == 4) {
            /* Rank 1 calls first after the restart: it resumes the session and leads. */
            struct emac_result again = event_at(t.s[1], "batch_end", 3);
            assert_int_equal(again.action, EMAC_ACTION_NONE);
            assert_int_equal(again.updates, 3);
            assert_int_equal(event_at(t.s[1], "batch_end", 4).updates, 4);
            assert_int_equal(event_at(t.s[0], "batch_end", 4).action, EMAC_ACTION_NONE);
        } else {
            assert_int_equal(event_at(t.s[0], "batch_end", b).updates, b);
            assert_int_equal(event_at(t.s[1], "batch_end", b).action, EMAC_ACTION_NONE);
        }
        event_at(t.s[2], "batch_end", b);
        if (b == 3)
            trio_restart(&d, graceful);
    }
    assert_int_equal(emac_reconnects(t.c[1]), 1);
    trio_expect_solo(&t);
    trio_close(&t, &d);
}

static void test_new_leader_does_not_apply_a_batch_again(void **state)
{
    (void)state;
    new_leader_resends_a_batch(false);
}

static void test_new_leader_after_a_stop_does_not_apply_a_batch_again(void **state)
{
    (void)state;
    new_leader_resends_a_batch(true);
}

static struct emac_result event_ep(emac_session *s, const char *event, uint64_t batch,
                                   uint64_t epoch)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {batch, epoch, false, 0};

    if (emac_event(s, event, &t, &r, &err) < 0)
        fail_msg("%s at batch %llu epoch %llu: %s: %s", event, (unsigned long long)batch,
                 (unsigned long long)epoch, err.code, err.message);
    return r;
}

/*
 * An EMA updated at each epoch_end, from a trainer that ends an epoch at the clock of its last
 * batch_end (as toy_trainer does): every epoch updates, and after a crash the new leader's
 * epoch_end sent again is known by the epochs' own time, not the batches'.
 */
static void test_epoch_updates_of_replicas_at_their_batch_clock(void **state)
{
    const struct emac_config cfg = {.half_life = "2ep"};
    struct daemon d;
    struct ddp_trio t;
    uint64_t epoch = 0;
    (void)state;

    trio_open_cfg(&t, &d, &cfg);
    for (uint64_t b = 1; b <= 6; b++) {
        bool ends = b % 2 == 0;
        emac_session *lead = b <= 4 ? t.s[0] : t.s[1], *other = b <= 4 ? t.s[1] : t.s[0];
        for (size_t k = 0; k < 3; k++)
            set_params(k, b, 0);
        epoch += ends;
        if (b == 5) {
            /* Rank 1 calls first after the restart and sends the last epoch_end again. */
            struct emac_result again = event_ep(t.s[1], "epoch_end", 4, 2);
            assert_int_equal(again.action, EMAC_ACTION_NONE);
            assert_int_equal(again.updates, 2);
        }
        event_ep(lead, "batch_end", b, epoch);
        event_ep(other, "batch_end", b, epoch);
        event_ep(t.s[2], "batch_end", b, epoch);
        if (ends) {
            struct emac_result r = event_ep(lead, "epoch_end", b, epoch);
            assert_int_equal(r.updates, epoch);
            assert_int_equal(event_ep(other, "epoch_end", b, epoch).action, EMAC_ACTION_NONE);
            assert_int_equal(event_ep(t.s[2], "epoch_end", b, epoch).updates, epoch);
        }
        if (b == 4)
            trio_restart(&d, false);
    }
    trio_expect_solo(&t);
    trio_close(&t, &d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_slice_checked_by_the_library, teardown),
        cmocka_unit_test_teardown(test_shapes_slices_and_group_kept, teardown),
        cmocka_unit_test_teardown(test_emactl_groups_a_job, teardown),
        cmocka_unit_test_teardown(test_bad_shard_fields_refused, teardown),
        cmocka_unit_test_teardown(test_replicas_share_one_shadow, teardown),
        cmocka_unit_test_teardown(test_replica_close_detaches_it_alone, teardown),
        cmocka_unit_test_teardown(test_replica_checkpoint_swaps_back, teardown),
        cmocka_unit_test_teardown(test_replica_cannot_take_a_second_seat, teardown),
        cmocka_unit_test_teardown(test_replicas_come_back_after_a_crash, teardown),
        cmocka_unit_test_teardown(test_new_leader_is_not_answered_from_the_old_leaders_records,
                                  teardown),
        cmocka_unit_test_teardown(test_new_leader_does_not_apply_a_batch_again, teardown),
        cmocka_unit_test_teardown(test_new_leader_after_a_stop_does_not_apply_a_batch_again,
                                  teardown),
        cmocka_unit_test_teardown(test_epoch_updates_of_replicas_at_their_batch_clock, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("shard", tests, NULL, NULL);
}
