/*
 * test_emactl_posthoc.c - emactl posthoc and emactl export end to end (docs/posthoc.md): emad as
 * a subprocess, a trainer through libemaclient with two power profiles (sigma_rel 0.05 and 0.10)
 * and a composer one, snapshots every 2 batches, on f32 and bf16 params.
 *
 * posthoc's file must equal what emac_posthoc_files writes from the same snapshot files, byte
 * for byte, and a stored profile's own sigma_rel at one of its snapshot batches must give that
 * snapshot back; export's file must hold the profile's shadow as the trainer sees it mapped,
 * bit for bit in f32 and as round-to-nearest-even of it in bf16 and f16.
 */
#include "harness.h"

#include "emaclient.h"
#include "half.h"
#include "safetensors.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

static const uint64_t w_shape[2] = {31, 33};
static const struct emac_tensor_spec specs[] = {
    {"layer.w", "f32", 31 * 33, w_shape, 2},
    {"layer.h", "bf16", 515, NULL, 0},
};
#define NT 2
#define NPROF 3
static const char *const pnames[NPROF] = {"p05", "p10", "fast"};

/* ---- the trainer ---- */

struct trainer {
    struct daemon d;
    emac_client *c;
    emac_segment *seg;
    emac_session *s;
};

static void set_params(emac_segment *seg, uint64_t b)
{
    for (size_t t = 0; t < NT; t++) {
        const struct emac_tensor *x = emac_segment_tensor(seg, t);
        for (uint64_t i = 0; i < x->numel; i++) {
            float v = (float)sin((double)(i * 5 + t * 3 + b * 11) * 0.29) * (1.0f + 0.1f * b);
            if (t == 0)
                ((float *)x->data)[i] = v;
            else
                ((uint16_t *)x->data)[i] = half_f32_to_bf16(v);
        }
    }
}

/* A session "ph/s" of the three profiles, eval profile "fast", batches 1..last done. */
static void trainer_start(struct trainer *tr, uint64_t last, bool snapshots)
{
    struct emac_profile p[NPROF];
    const struct emac_snapshot_config sc = {"2ba", NULL, 0};
    struct emac_error err;

    memset(tr, 0, sizeof(*tr));
    daemon_start(&tr->d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(specs, NT, &tr->seg, &err), 0);
    seg_left = tr->seg;
    set_params(tr->seg, 0);
    tr->c = client_connect(&tr->d, "test_emactl_posthoc");
    memset(p, 0, sizeof(p));
    p[0].name = pnames[0];
    p[0].has_sigma_rel = true;
    p[0].sigma_rel = 0.05;
    p[1].name = pnames[1];
    p[1].has_sigma_rel = true;
    p[1].sigma_rel = 0.10;
    p[2].name = pnames[2];
    p[2].has_smoothing = true;
    p[2].smoothing = 0.75;
    /* Without snapshots: the composer profile alone (snapshot_every needs a power one). */
    if (emac_register_snapshots(tr->c, "ph/s", tr->seg, snapshots ? p : p + 2,
                                snapshots ? NPROF : 1, "fast", NULL, snapshots ? &sc : NULL,
                                false, &tr->s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    for (uint64_t b = 1; b <= last; b++) {
        set_params(tr->seg, b);
        event_at(tr->s, "batch_end", b);
        /* A session writes one snapshot at a time and skips one that would wait behind two:
         * each batch's files before the next batch, so that every one is written. */
        if (snapshots && b % 2 == 0)
            wait_snapshot_files(tr->c, "ph/s", b, 2); /* both power profiles' */
    }
}

static void trainer_stop(struct trainer *tr)
{
    struct emac_error err;

    assert_int_equal(emac_close(tr->s, false, &err), 0);
    emac_session_free(tr->s);
    emac_disconnect(tr->c);
    emac_segment_destroy(tr->seg);
    seg_left = NULL;
    daemon_stop(&tr->d);
}

/* The snapshot files of ph/s (trainer_start waited for each). */
static size_t snapshot_files(struct trainer *tr, const char ***paths, struct emac_snapshot **l)
{
    struct emac_error err;
    size_t n = 0;

    assert_int_equal(emac_snapshots(tr->c, "ph/s", l, &n, &err), 0);
    assert_non_null(*l);
    *paths = calloc(n, sizeof(**paths));
    assert_non_null(*paths);
    for (size_t i = 0; i < n; i++)
        (*paths)[i] = (*l)[i].file;
    return n;
}

/* ---- emactl ---- */

static int emactl(const struct trainer *tr, char *out, size_t outlen, const char *const args[])
{
    char *argv[16];
    size_t n = 0;

    argv[n++] = (char *)emactl_bin();
    argv[n++] = "--socket";
    argv[n++] = (char *)tr->d.sock;
    for (size_t i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return run_capture(argv, NULL, out, outlen);
}

/* A tensor of a safetensors file as floats (f32, bf16 or f16). */
static float *read_floats(const struct st_file *f, const char *name, uint64_t *numel)
{
    char err[256];
    const struct st_tensor *t = st_find(&f->h, name);

    assert_non_null(t);
    assert_true(st_numel(t, numel));
    size_t es = dtype_size(t->dtype);
    unsigned char *raw = malloc(*numel * es + 1);
    float *v = malloc(*numel * sizeof(float) + 1);
    assert_non_null(raw);
    assert_non_null(v);
    assert_int_equal(st_read(f, t, 0, raw, *numel * es, err, sizeof(err)), 0);
    for (uint64_t i = 0; i < *numel; i++) {
        uint16_t h;
        if (t->dtype == DTYPE_F32) {
            memcpy(&v[i], raw + 4 * i, 4);
            continue;
        }
        memcpy(&h, raw + 2 * i, 2);
        v[i] = t->dtype == DTYPE_BF16 ? half_bf16_to_f32(h) : half_f16_to_f32(h);
    }
    free(raw);
    return v;
}

/* ---- tests ---- */

static void test_posthoc_equals_the_library_and_gives_back_a_stored_profile(void **state)
{
    struct trainer tr;
    struct emac_snapshot *l = NULL;
    const char **paths = NULL;
    char out[8192], a[PATH_MAX], b[PATH_MAX];
    struct emac_error err;
    (void)state;

    trainer_start(&tr, 8, true);
    size_t n = snapshot_files(&tr, &paths, &l);
    assert_int_equal(n, 8); /* 2 profiles x batches 2, 4, 6, 8 */
    snprintf(a, sizeof(a), "%s/emactl.safetensors", tr.d.dir);
    snprintf(b, sizeof(b), "%s/lib.safetensors", tr.d.dir);

    /* The latest batch, f32; then batch 6 in bf16. */
    int rc = emactl(&tr, out, sizeof(out),
                    (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.07", "--out", a,
                                          NULL});
    if (rc != 0)
        fail_msg("emactl posthoc: %d: %s", rc, out);
    expect_in(out, "sigma_rel 0.07 at batch 8");
    assert_int_equal(emac_posthoc_files(paths, n, 0.07, 0, b, NULL, &err), 0);
    expect_same_files(a, b);
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.12", "--batch", "6",
                                      "--dtype", "bf16", "--out", a, "--json", NULL});
    if (rc != 0)
        fail_msg("emactl posthoc: %d: %s", rc, out);
    expect_in(out, "\"batch\": 6");
    assert_int_equal(emac_posthoc_files(paths, n, 0.12, 6, b, "bf16", &err), 0);
    expect_same_files(a, b);

    /* p05's own sigma_rel at its batch-4 snapshot: that snapshot, to within rounding. */
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.05", "--batch", "4",
                                      "--out", a, NULL});
    assert_int_equal(rc, 0);
    const char *snap4 = NULL;
    for (size_t i = 0; i < n; i++)
        if (strcmp(l[i].profile, "p05") == 0 && l[i].batch == 4)
            snap4 = l[i].file;
    assert_non_null(snap4);
    struct st_file fa, fs;
    char why[256];
    assert_int_equal(st_open(&fa, a, why, sizeof(why)), 0);
    assert_int_equal(st_open(&fs, snap4, why, sizeof(why)), 0);
    for (size_t t = 0; t < NT; t++) {
        uint64_t na, ns;
        float *x = read_floats(&fa, specs[t].name, &na), *y = read_floats(&fs, specs[t].name, &ns);
        assert_int_equal(na, ns);
        for (uint64_t i = 0; i < na; i++)
            if (fabsf(x[i] - y[i]) > 1e-5f * (1.0f + fabsf(y[i])))
                fail_msg("%s[%llu]: posthoc %.9g, snapshot %.9g", specs[t].name,
                         (unsigned long long)i, x[i], y[i]);
        free(x);
        free(y);
    }
    st_close(&fa);
    st_close(&fs);

    /* Refusals: a width outside (0, 12^-1/2), a batch before the first snapshot, no --out. */
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.3", "--out", a, NULL});
    assert_int_equal(rc, 2);
    expect_in(out, "--sigma-rel 0.3 is outside");
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.1", "--batch", "1",
                                      "--out", a, NULL});
    assert_int_equal(rc, 2);
    expect_in(out, "--batch 1 is before the first snapshot of session ph/s (batch 2");
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.1", NULL});
    assert_int_equal(rc, 2);
    expect_in(out, "--out FILE is required");
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/none", "--sigma-rel", "0.1", "--out", a,
                                      NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "emactl: STATE: posthoc: session ph/none has no snapshot files");
    /* A file that cannot be written: SYSTEM, and nothing left behind. */
    snprintf(b, sizeof(b), "%s/no/such/dir.safetensors", tr.d.dir);
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"posthoc", "ph/s", "--sigma-rel", "0.1", "--out", b, NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "emactl: SYSTEM: posthoc:");

    free(paths);
    emac_snapshots_free(l);
    trainer_stop(&tr);
}

/* File f holds profile p's shadow of the session, converted to dtype, with its shapes. */
static void expect_export_is_shadow(const struct trainer *tr, const char *f, size_t p,
                                    const char *dtype)
{
    struct st_file sf;
    char why[256];

    if (st_open(&sf, f, why, sizeof(why)) < 0)
        fail_msg("%s", why);
    assert_string_equal(st_meta_get(&sf.h, "profile"), pnames[p]);
    assert_string_equal(st_meta_get(&sf.h, "session"), "ph/s");
    assert_string_equal(st_meta_get(&sf.h, "batch"), "5");
    /* Only a power profile has a gamma. */
    assert_true((st_meta_get(&sf.h, "gamma") != NULL) == (p < 2));
    enum dtype want = strcmp(dtype, "f32") == 0    ? DTYPE_F32
                      : strcmp(dtype, "bf16") == 0 ? DTYPE_BF16
                                                   : DTYPE_F16;
    for (size_t t = 0; t < NT; t++) {
        const struct st_tensor *x = st_find(&sf.h, specs[t].name);
        const float *sh = emac_session_profile_data(tr->s, p, t);
        uint64_t numel;
        assert_non_null(x);
        assert_non_null(sh);
        assert_int_equal(x->dtype, want);
        assert_true(st_numel(x, &numel));
        assert_int_equal(numel, specs[t].numel);
        /* The shape registered, or flat for a tensor registered without one. */
        if (specs[t].ndim > 0) {
            assert_int_equal(x->rank, specs[t].ndim);
            for (size_t k = 0; k < specs[t].ndim; k++)
                assert_int_equal(x->shape[k], specs[t].shape[k]);
        } else {
            assert_int_equal(x->rank, 1);
        }
        size_t es = dtype_size(want);
        unsigned char *buf = malloc(numel * es + 1);
        assert_non_null(buf);
        assert_int_equal(st_read(&sf, x, 0, buf, numel * es, why, sizeof(why)), 0);
        for (uint64_t i = 0; i < numel; i++) {
            uint16_t got, exp;
            if (want == DTYPE_F32) {
                if (memcmp(buf + 4 * i, &sh[i], 4) != 0)
                    fail_msg("%s %s[%llu]: differs from the shadow", f, specs[t].name,
                             (unsigned long long)i);
                continue;
            }
            memcpy(&got, buf + 2 * i, 2);
            exp = want == DTYPE_BF16 ? half_f32_to_bf16(sh[i]) : half_f32_to_f16(sh[i]);
            if (got != exp)
                fail_msg("%s %s[%llu]: %04x, expected %04x", f, specs[t].name,
                         (unsigned long long)i, got, exp);
        }
        free(buf);
    }
    st_close(&sf);
}

static void test_export_equals_the_shadow_in_each_dtype(void **state)
{
    static const char *const dtypes[] = {"f32", "bf16", "f16"};
    struct trainer tr;
    struct emac_snapshot *l = NULL;
    struct emac_error err;
    char out[8192], a[PATH_MAX];
    size_t before, after;
    (void)state;

    trainer_start(&tr, 5, true);
    snprintf(a, sizeof(a), "%s/export.safetensors", tr.d.dir);
    const char **paths = NULL;
    before = snapshot_files(&tr, &paths, &l);
    free(paths);
    emac_snapshots_free(l);
    for (size_t p = 0; p < NPROF; p++) {
        for (size_t k = 0; k < 3; k++) {
            int rc = emactl(&tr, out, sizeof(out),
                            (const char *const[]){"export", "ph/s", "--profile", pnames[p],
                                                  "--dtype", dtypes[k], "--out", a, NULL});
            if (rc != 0)
                fail_msg("emactl export %s %s: %d: %s", pnames[p], dtypes[k], rc, out);
            expect_in(out, "at batch 5, %s, into", dtypes[k]);
            expect_export_is_shadow(&tr, a, p, dtypes[k]);
        }
    }
    /* Default: the eval profile, in f32; JSON. */
    int rc = emactl(&tr, out, sizeof(out),
                    (const char *const[]){"export", "ph/s", "--out", a, "--json", NULL});
    assert_int_equal(rc, 0);
    expect_in(out, "{\"batch\": 5, \"dtype\": \"f32\"}");
    expect_export_is_shadow(&tr, a, 2, "f32");
    /* Exports are not snapshots: neither listed nor used by post-hoc EMA. */
    assert_int_equal(emac_snapshots(tr.c, "ph/s", &l, &after, &err), 0);
    emac_snapshots_free(l);
    assert_int_equal(after, before);

    /* Refusals. */
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"export", "ph/s", "--profile", "nope", "--out", a, NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "emactl: BADARG: export:");
    expect_in(out, "no profile \"nope\"");
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"export", "ph/s", "--dtype", "f64", "--out", a, NULL});
    assert_int_equal(rc, 2);
    rc = emactl(&tr, out, sizeof(out), (const char *const[]){"export", "ph/s", NULL});
    assert_int_equal(rc, 2);
    expect_in(out, "--out FILE is required");
    rc = emactl(&tr, out, sizeof(out),
                (const char *const[]){"export", "ph/none", "--out", a, NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "emactl: NOSESSION: export:");
    trainer_stop(&tr);
}

/* The protocol extension itself: dtype without export, a bad export name, a bad dtype. */
static void test_snapshot_export_refuses_bad_arguments(void **state)
{
    struct trainer tr;
    struct rpc c;
    (void)state;

    trainer_start(&tr, 1, false);
    rpc_open(&c, &tr.d, "test_emactl_posthoc");
    struct msg_snapshot req = {.session = msg_str_c("ph/s"), .has_dtype = true,
                               .dtype = msg_str_c("bf16")};
    assert_null(rpc_call(&c, "snapshot", &msg_snapshot_desc, &req));
    assert_string_equal(c.code, "BADARG");
    req = (struct msg_snapshot){.session = msg_str_c("ph/s"), .has_export = true,
                                .export = msg_str_c("../x")};
    assert_null(rpc_call(&c, "snapshot", &msg_snapshot_desc, &req));
    assert_string_equal(c.code, "BADARG");
    req.export = msg_str_c("fast");
    req.has_dtype = true;
    req.dtype = msg_str_c("f64");
    assert_null(rpc_call(&c, "snapshot", &msg_snapshot_desc, &req));
    assert_string_equal(c.code, "BADARG");
    /* A session without power profiles exports its composer one; a plain snapshot is STATE. */
    req.has_dtype = false;
    const msgpack_object *o = rpc_call(&c, "snapshot", &msg_snapshot_desc, &req);
    if (o == NULL)
        fail_msg("snapshot export: %s: %s", c.code, c.message);
    req.has_export = false;
    assert_null(rpc_call(&c, "snapshot", &msg_snapshot_desc, &req));
    assert_string_equal(c.code, "STATE");
    rpc_close(&c);
    trainer_stop(&tr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_posthoc_equals_the_library_and_gives_back_a_stored_profile,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_export_equals_the_shadow_in_each_dtype, teardown_seg_left),
        cmocka_unit_test_teardown(test_snapshot_export_refuses_bad_arguments, teardown_seg_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
