/*
 * test_export_claims.c - what the manual says of emactl export, posthoc and job that no other
 * test checked (docs/posthoc.md "From the command line", docs/protocol.md "snapshot",
 * "Snapshots", "close", `emactl job --help`): emad as a subprocess, trainers through
 * libemaclient.
 *
 *   - an export keeps f64 and integer tensors as the shadow holds them, whatever --dtype;
 *   - a detached session (disconnected, or closed with keep) exports the shadow it had;
 *   - an export taken while the trainer updates is one batch's shadow, never a mix;
 *   - post-hoc EMA reads the snapshot files of a session detached or closed;
 *   - `emactl job JOB --json` prints each session of the job on a line of its own.
 */
#include "harness.h"

#include "emaclient.h"
#include "half.h"
#include "jtree.h"
#include "safetensors.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

/* ---- emactl and files ---- */

static int emactl(const struct daemon *d, char *out, size_t outlen, const char *const args[])
{
    char *argv[20];
    size_t n = 0;

    argv[n++] = (char *)emactl_bin();
    argv[n++] = "--socket";
    argv[n++] = (char *)d->sock;
    for (size_t i = 0; args[i] != NULL && n < 19; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    return run_capture(argv, NULL, out, outlen);
}

/* Tensor name of the file f, its dtype checked against want, its bytes (malloc'd). */
static void *read_tensor(const struct st_file *f, const char *name, enum dtype want,
                         uint64_t *numel)
{
    char why[256];
    const struct st_tensor *t = st_find(&f->h, name);

    if (t == NULL)
        fail_msg("no tensor \"%s\" in the file", name);
    if (t->dtype != want)
        fail_msg("tensor \"%s\" is %s, expected %s", name, dtype_name(t->dtype),
                 dtype_name(want));
    assert_true(st_numel(t, numel));
    size_t bytes = (size_t)(t->end - t->begin);
    void *buf = malloc(bytes + 1);
    assert_non_null(buf);
    if (st_read(f, t, 0, buf, bytes, why, sizeof(why)) < 0)
        fail_msg("%s", why);
    return buf;
}

static void open_st(struct st_file *f, const char *path)
{
    char why[256];

    if (st_open(f, path, why, sizeof(why)) < 0)
        fail_msg("%s", why);
}

static emac_session *register_plain(emac_client *c, const char *name, emac_segment *seg,
                                    double smoothing)
{
    struct emac_config cfg = {0};
    struct emac_error err;
    emac_session *s;

    cfg.has_smoothing = true;
    cfg.smoothing = smoothing;
    if (emac_register(c, name, seg, &cfg, false, &s, &err) < 0)
        fail_msg("register %s: %s: %s", name, err.code, err.message);
    return s;
}

/* ---- 1. f64 and integer tensors ---- */

static const uint64_t w_shape[2] = {7, 9};
static const struct emac_tensor_spec mixed[] = {
    {"w", "f32", 63, w_shape, 2},
    {"d", "f64", 100, NULL, 0},
    {"n", "i64", 37, NULL, 0},
    {"k", "i32", 41, NULL, 0},
};
#define NMIXED 4

static void set_mixed(emac_segment *seg, uint64_t b)
{
    const struct emac_tensor *w = emac_segment_tensor(seg, 0), *d = emac_segment_tensor(seg, 1),
                             *n = emac_segment_tensor(seg, 2), *k = emac_segment_tensor(seg, 3);

    for (uint64_t i = 0; i < w->numel; i++)
        ((float *)w->data)[i] = (float)sin((double)(i * 7 + b * 13) * 0.31) * (1.0f + 0.1f * b);
    /* Values with more bits than a float holds: an f64 shadow that went through f32 shows. */
    for (uint64_t i = 0; i < d->numel; i++)
        ((double *)d->data)[i] = sin((double)(i * 3 + b * 5) * 0.17) * (1.0 + 1e-12 * i) + b;
    for (uint64_t i = 0; i < n->numel; i++)
        ((int64_t *)n->data)[i] = (int64_t)(b * 1000000007ull) * (i % 2 ? -1 : 1) + (int64_t)i;
    for (uint64_t i = 0; i < k->numel; i++)
        ((int32_t *)k->data)[i] = -(int32_t)(b * 7919u + i);
}

/* The export in path is shadow sh (tensor i's data at sh[i]) of batch b, with the float tensor
 * in dtype and the f64 and integer ones as they are; the integers also the params'. */
static void expect_mixed_export(const char *path, const void *const sh[NMIXED],
                                const emac_segment *seg, const char *dtype, uint64_t b)
{
    struct st_file f;
    uint64_t numel;
    char batch[24];
    enum dtype want = strcmp(dtype, "f32") == 0    ? DTYPE_F32
                      : strcmp(dtype, "bf16") == 0 ? DTYPE_BF16
                                                   : DTYPE_F16;

    open_st(&f, path);
    snprintf(batch, sizeof(batch), "%llu", (unsigned long long)b);
    assert_non_null(st_meta_get(&f.h, "batch"));
    assert_string_equal(st_meta_get(&f.h, "batch"), batch);
    assert_int_equal(f.h.ntensors, NMIXED);

    /* The f32 shadow, converted, in its registered shape. */
    const struct st_tensor *wt = st_find(&f.h, "w");
    assert_non_null(wt);
    assert_int_equal(wt->rank, 2);
    assert_int_equal(wt->shape[0], 7);
    assert_int_equal(wt->shape[1], 9);
    unsigned char *w = read_tensor(&f, "w", want, &numel);
    assert_int_equal(numel, 63);
    for (uint64_t i = 0; i < numel; i++) {
        float s = ((const float *)sh[0])[i];
        uint16_t got, exp;
        if (want == DTYPE_F32) {
            if (memcmp(w + 4 * i, &s, 4) != 0)
                fail_msg("%s w[%llu] differs from the shadow", path, (unsigned long long)i);
            continue;
        }
        memcpy(&got, w + 2 * i, 2);
        exp = want == DTYPE_BF16 ? half_f32_to_bf16(s) : half_f32_to_f16(s);
        if (got != exp)
            fail_msg("%s w[%llu]: %04x, expected %04x", path, (unsigned long long)i, got, exp);
    }
    free(w);

    /* f64: the shadow bit for bit, whatever the dtype asked. */
    void *d = read_tensor(&f, "d", DTYPE_F64, &numel);
    assert_int_equal(numel, 100);
    if (memcmp(d, sh[1], 100 * sizeof(double)) != 0)
        fail_msg("%s: the f64 tensor differs from the f64 shadow (%s export)", path, dtype);
    free(d);

    /* Integers: the shadow's copy of the params, which is the params of batch b. */
    const struct emac_tensor *pn = emac_segment_tensor(seg, 2), *pk = emac_segment_tensor(seg, 3);
    void *n = read_tensor(&f, "n", DTYPE_I64, &numel);
    assert_int_equal(numel, 37);
    assert_memory_equal(n, sh[2], 37 * sizeof(int64_t));
    assert_memory_equal(n, pn->data, 37 * sizeof(int64_t));
    free(n);
    void *k = read_tensor(&f, "k", DTYPE_I32, &numel);
    assert_int_equal(numel, 41);
    assert_memory_equal(k, sh[3], 41 * sizeof(int32_t));
    assert_memory_equal(k, pk->data, 41 * sizeof(int32_t));
    free(k);
    st_close(&f);
}

static void export_mixed_each_dtype(const struct daemon *dm, emac_client *c, const char *session,
                                    const char *profile, const void *const sh[NMIXED],
                                    const emac_segment *seg, uint64_t b)
{
    static const char *const dtypes[] = {"f32", "bf16", "f16"};
    char out[8192], path[PATH_MAX];
    struct emac_error err;
    uint64_t got = 0;

    snprintf(path, sizeof(path), "%s/mixed.safetensors", dm->dir);
    for (size_t k = 0; k < 3; k++) {
        const char *args[] = {"export", session, "--dtype", dtypes[k], "--out", path,
                              profile ? "--profile" : NULL, profile, NULL};
        int rc = emactl(dm, out, sizeof(out), args);
        if (rc != 0)
            fail_msg("emactl export %s --dtype %s: %d: %s", session, dtypes[k], rc, out);
        expect_mixed_export(path, sh, seg, dtypes[k], b);
        /* The library the same. */
        if (emac_export(c, session, profile, dtypes[k], path, &got, &err) < 0)
            fail_msg("emac_export %s %s: %s: %s", session, dtypes[k], err.code, err.message);
        assert_int_equal(got, b);
        expect_mixed_export(path, sh, seg, dtypes[k], b);
    }
}

static void test_export_keeps_f64_and_integer_tensors_as_the_shadow(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_segment *seg, *seg2;
    emac_session *s, *sp;
    const void *sh[NMIXED];
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(mixed, NMIXED, &seg, &err), 0);
    seg_left = seg;
    assert_int_equal(emac_segment_create(mixed, NMIXED, &seg2, &err), 0);
    emac_client *c = client_connect(&d, "test_export_claims");

    /* A session without profiles: its one profile "ema", the default. */
    s = register_plain(c, "mx/plain", seg, 0.75);
    /* One of profiles: a composer one (eval) and a power one. */
    struct emac_profile p[2];
    memset(p, 0, sizeof(p));
    p[0].name = "fast";
    p[0].has_smoothing = true;
    p[0].smoothing = 0.5;
    p[1].name = "p10";
    p[1].has_sigma_rel = true;
    p[1].sigma_rel = 0.10;
    if (emac_register_profiles(c, "mx/prof", seg2, p, 2, "fast", NULL, false, &sp, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    for (uint64_t b = 1; b <= 4; b++) {
        set_mixed(seg, b);
        set_mixed(seg2, b);
        event_at(s, "batch_end", b);
        event_at(sp, "batch_end", b);
    }
    for (size_t i = 0; i < NMIXED; i++) {
        sh[i] = emac_session_shadow(s, i)->data;
        assert_string_equal(emac_session_shadow(s, i)->dtype, i == 0   ? "f32"
                                                              : i == 1 ? "f64"
                                                              : i == 2 ? "i64"
                                                                       : "i32");
    }
    export_mixed_each_dtype(&d, c, "mx/plain", NULL, sh, seg, 4);
    export_mixed_each_dtype(&d, c, "mx/plain", "ema", sh, seg, 4);
    for (size_t pi = 0; pi < 2; pi++) {
        for (size_t i = 0; i < NMIXED; i++)
            sh[i] = emac_session_profile_data(sp, pi, i);
        export_mixed_each_dtype(&d, c, "mx/prof", pi == 0 ? NULL : "p10", sh, seg2, 4);
    }

    assert_int_equal(emac_close(s, false, &err), 0);
    assert_int_equal(emac_close(sp, false, &err), 0);
    emac_session_free(s);
    emac_session_free(sp);
    emac_disconnect(c);
    emac_segment_destroy(seg2);
    emac_segment_destroy(seg);
    seg_left = NULL;
    daemon_stop(&d);
}

/* ---- 2. a detached session ---- */

/* Wait until session name is detached, as another client sees it. */
static void wait_detached(const struct daemon *d, const char *name)
{
    emac_client *c = client_connect(d, "test_export_claims-watch");
    struct emac_error err;
    bool detached = false;

    for (int ms = 0; ms < WAIT_MS && !detached; ms += 10) {
        struct emac_status *st;
        if (emac_status(c, name, &st, &err) < 0)
            fail_msg("status %s: %s: %s", name, err.code, err.message);
        detached = st->nsessions == 1 && !st->session_list[0].attached;
        emac_status_free(st);
        if (!detached)
            sleep_ms(10);
    }
    emac_disconnect(c);
    if (!detached)
        fail_msg("session %s still attached after %d ms", name, WAIT_MS);
}

static void test_export_of_a_detached_session_gives_its_shadow(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_segment *seg;
    void *copy[2][NMIXED];
    const void *sh[NMIXED];
    char out[8192];
    static const char *const names[2] = {"dt/gone", "dt/kept"};
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(mixed, NMIXED, &seg, &err), 0);
    seg_left = seg;
    /* Two sessions on one segment: one whose trainer disconnects, one closed with keep. */
    for (int which = 0; which < 2; which++) {
        emac_client *c = client_connect(&d, "test_export_claims");
        emac_session *s = register_plain(c, names[which], seg, 0.6);
        for (uint64_t b = 1; b <= 3; b++) {
            set_mixed(seg, b);
            event_at(s, "batch_end", b);
        }
        for (size_t i = 0; i < NMIXED; i++) {
            const struct emac_shadow *x = emac_session_shadow(s, i);
            copy[which][i] = malloc(x->numel * x->elem_size + 1);
            assert_non_null(copy[which][i]);
            memcpy(copy[which][i], x->data, x->numel * x->elem_size);
        }
        if (which == 1)
            assert_int_equal(emac_close(s, true, &err), 0);
        emac_session_free(s);
        emac_disconnect(c);
        wait_detached(&d, names[which]);
    }
    /* The params move on; the detached shadows must not. */
    set_mixed(seg, 3);
    emac_client *c = client_connect(&d, "test_export_claims");
    for (int which = 0; which < 2; which++) {
        for (size_t i = 0; i < NMIXED; i++)
            sh[i] = copy[which][i];
        export_mixed_each_dtype(&d, c, names[which], NULL, sh, seg, 3);
        int rc = emactl(&d, out, sizeof(out), (const char *const[]){"drop", names[which], NULL});
        if (rc != 0)
            fail_msg("emactl drop %s: %d: %s", names[which], rc, out);
        for (size_t i = 0; i < NMIXED; i++)
            free(copy[which][i]);
    }
    /* Dropped: nothing to export any more. */
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/x.safetensors", d.dir);
    int rc = emactl(&d, out, sizeof(out),
                    (const char *const[]){"export", names[0], "--out", path, NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "emactl: NOSESSION: export:");
    emac_disconnect(c);
    emac_segment_destroy(seg);
    seg_left = NULL;
    daemon_stop(&d);
}

/* ---- 3. an export while the trainer updates ---- */

#define CC_NUMEL (1u << 19)
#define CC_MAX_BATCH 100000u
static const struct emac_tensor_spec cc_specs[] = {
    {"a", "f32", CC_NUMEL, NULL, 0},
    {"b", "f64", CC_NUMEL / 4, NULL, 0},
    {"c", "f32", CC_NUMEL + 77, NULL, 0},
};
#define NCC 3

/* The trainer thread: batches 1, 2, ... with every param of batch b equal to b, until told to
 * stop; after each batch's reply, the shadow's (uniform) values, which stay until the next. */
struct cc_trainer {
    emac_session *s;
    emac_segment *seg;
    atomic_bool stop;
    atomic_uint_fast64_t done; /* batches answered */
    float sa[CC_MAX_BATCH + 1], sc[CC_MAX_BATCH + 1];
    double sb[CC_MAX_BATCH + 1];
    char why[600]; /* the failure, "" if none */
};

static void cc_record(struct cc_trainer *t, uint64_t b)
{
    t->sa[b] = ((const float *)emac_session_shadow(t->s, 0)->data)[0];
    t->sb[b] = ((const double *)emac_session_shadow(t->s, 1)->data)[0];
    t->sc[b] = ((const float *)emac_session_shadow(t->s, 2)->data)[0];
}

static void *cc_run(void *arg)
{
    struct cc_trainer *t = arg;
    struct emac_error err;
    struct emac_result r;

    cc_record(t, 0);
    for (uint64_t b = 1; b <= CC_MAX_BATCH && !atomic_load(&t->stop); b++) {
        struct emac_time tm = {b, 0, false, 0};
        for (size_t i = 0; i < NCC; i++) {
            const struct emac_tensor *x = emac_segment_tensor(t->seg, i);
            for (uint64_t e = 0; e < x->numel; e++) {
                if (i == 1)
                    ((double *)x->data)[e] = (double)b + 1.0 / 3.0;
                else
                    ((float *)x->data)[e] = (float)b * (i == 0 ? 1.0f : -0.5f);
            }
        }
        if (emac_event(t->s, "batch_end", &tm, &r, &err) < 0) {
            snprintf(t->why, sizeof(t->why), "batch_end %llu: %s: %s", (unsigned long long)b,
                     err.code, err.message);
            break;
        }
        cc_record(t, b);
        atomic_store(&t->done, b);
    }
    return NULL;
}

/* One export read back: its batch, and each tensor's one value (fails on a mix). */
struct cc_seen {
    uint64_t batch;
    float a, c;
    double b;
};

static void cc_check_uniform(const char *path, struct cc_seen *seen)
{
    struct st_file f;
    uint64_t numel;
    char *end;

    open_st(&f, path);
    const char *b = st_meta_get(&f.h, "batch");
    assert_non_null(b);
    seen->batch = strtoull(b, &end, 10);
    assert_true(*b != '\0' && *end == '\0');
    for (size_t i = 0; i < NCC; i++) {
        enum dtype want = i == 1 ? DTYPE_F64 : DTYPE_F32;
        void *v = read_tensor(&f, cc_specs[i].name, want, &numel);
        size_t es = dtype_size(want);
        assert_int_equal(numel, cc_specs[i].numel);
        for (uint64_t e = 1; e < numel; e++)
            if (memcmp((char *)v + e * es, v, es) != 0)
                fail_msg("%s: tensor %s mixes two shadows: element %llu differs from element 0 "
                         "(batch %llu)", path, cc_specs[i].name, (unsigned long long)e,
                         (unsigned long long)seen->batch);
        if (i == 0)
            memcpy(&seen->a, v, 4);
        else if (i == 1)
            memcpy(&seen->b, v, 8);
        else
            memcpy(&seen->c, v, 4);
        free(v);
    }
    st_close(&f);
}

static void test_export_while_the_trainer_updates_is_one_batch(void **state)
{
    enum { EXPORTS = 16 };
    struct daemon d;
    struct emac_error err;
    struct cc_trainer *t = calloc(1, sizeof(*t));
    struct cc_seen seen[EXPORTS];
    char path[PATH_MAX], out[8192];
    pthread_t th;
    (void)state;

    assert_non_null(t);
    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(cc_specs, NCC, &t->seg, &err), 0);
    seg_left = t->seg;
    emac_client *tc = client_connect(&d, "test_export_claims-trainer");
    t->s = register_plain(tc, "cc/s", t->seg, 0.5);
    emac_client *c = client_connect(&d, "test_export_claims");
    snprintf(path, sizeof(path), "%s/cc.safetensors", d.dir);
    assert_int_equal(pthread_create(&th, NULL, cc_run, t), 0);
    for (int k = 0; k < EXPORTS; k++) {
        /* Every fourth through emactl, the others through the library. */
        if (k % 4 == 3) {
            int rc = emactl(&d, out, sizeof(out),
                            (const char *const[]){"export", "cc/s", "--out", path, NULL});
            if (rc != 0) {
                atomic_store(&t->stop, true);
                pthread_join(th, NULL);
                fail_msg("emactl export: %d: %s", rc, out);
            }
        } else if (emac_export(c, "cc/s", NULL, NULL, path, NULL, &err) < 0) {
            atomic_store(&t->stop, true);
            pthread_join(th, NULL);
            fail_msg("emac_export: %s: %s", err.code, err.message);
        }
        cc_check_uniform(path, &seen[k]);
    }
    atomic_store(&t->stop, true);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (t->why[0] != '\0')
        fail_msg("trainer: %s", t->why);
    uint64_t done = atomic_load(&t->done);
    /* Each export is the shadow right after the update of its batch, bit for bit. */
    unsigned distinct = 0;
    for (int k = 0; k < EXPORTS; k++) {
        uint64_t b = seen[k].batch;
        if (b > done)
            fail_msg("export %d: batch %llu, after the last batch answered (%llu)", k,
                     (unsigned long long)b, (unsigned long long)done);
        if (memcmp(&seen[k].a, &t->sa[b], 4) != 0 || memcmp(&seen[k].b, &t->sb[b], 8) != 0 ||
            memcmp(&seen[k].c, &t->sc[b], 4) != 0)
            fail_msg("export %d at batch %llu: %.9g %.17g %.9g; the shadow of that batch: "
                     "%.9g %.17g %.9g", k, (unsigned long long)b, seen[k].a, seen[k].b,
                     seen[k].c, t->sa[b], t->sb[b], t->sc[b]);
        distinct += k == 0 || seen[k].batch != seen[k - 1].batch;
    }
    print_message("%d exports over %llu batches, %u distinct batches\n", EXPORTS,
                  (unsigned long long)done, distinct);
    /* The trainer did run under the exports (else this proved nothing). */
    assert_true(distinct > 1);

    assert_int_equal(emac_close(t->s, false, &err), 0);
    emac_session_free(t->s);
    emac_disconnect(tc);
    emac_disconnect(c);
    emac_segment_destroy(t->seg);
    seg_left = NULL;
    free(t);
    daemon_stop(&d);
}

/* ---- 4. post-hoc EMA of a session detached, then closed ---- */

static const uint64_t ph_shape[2] = {31, 33};
static const struct emac_tensor_spec ph_specs[] = {
    {"layer.w", "f32", 31 * 33, ph_shape, 2},
    {"steps", "i32", 19, NULL, 0},
};
#define NPH 2

static void set_ph(emac_segment *seg, uint64_t b)
{
    const struct emac_tensor *w = emac_segment_tensor(seg, 0), *k = emac_segment_tensor(seg, 1);

    for (uint64_t i = 0; i < w->numel; i++)
        ((float *)w->data)[i] = (float)sin((double)(i * 5 + b * 11) * 0.29) * (1.0f + 0.1f * b);
    for (uint64_t i = 0; i < k->numel; i++)
        ((int32_t *)k->data)[i] = (int32_t)(b * 100 + i);
}

/* emactl posthoc of session at width 0.07 (batch: NULL for the latest) into path. */
static void posthoc(const struct daemon *d, const char *session, const char *batch,
                    const char *path)
{
    char out[8192];
    const char *args[] = {"posthoc", session, "--sigma-rel", "0.07", "--out", path,
                          batch ? "--batch" : NULL, batch, NULL};
    int rc = emactl(d, out, sizeof(out), args);

    if (rc != 0)
        fail_msg("emactl posthoc %s (batch %s): %d: %s", session, batch ? batch : "latest", rc,
                 out);
}

/* The integer tensor of a post-hoc file: the params of batch b (copied from the latest
 * snapshot used, docs/posthoc.md "Reconstruction from files"). */
static void expect_ph_integers(const char *path, uint64_t b)
{
    struct st_file f;
    uint64_t numel;

    open_st(&f, path);
    int32_t *k = read_tensor(&f, "steps", DTYPE_I32, &numel);
    assert_int_equal(numel, 19);
    for (uint64_t i = 0; i < numel; i++)
        if (k[i] != (int32_t)(b * 100 + i))
            fail_msg("%s: steps[%llu] = %d, the params of batch %llu hold %d", path,
                     (unsigned long long)i, k[i], (unsigned long long)b,
                     (int32_t)(b * 100 + i));
    free(k);
    const struct st_tensor *w = st_find(&f.h, "layer.w");
    assert_non_null(w);
    assert_int_equal(w->dtype, DTYPE_F32);
    st_close(&f);
}

static void test_posthoc_reads_the_snapshots_of_a_detached_or_closed_session(void **state)
{
    const struct emac_snapshot_config sc = {"2ba", NULL, 0};
    struct daemon d;
    struct emac_error err;
    struct emac_profile p[2];
    emac_segment *seg;
    emac_session *s;
    char a[PATH_MAX], a4[PATH_MAX], x[PATH_MAX], out[8192];
    const char *name = "ph/closed";
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(ph_specs, NPH, &seg, &err), 0);
    seg_left = seg;
    emac_client *c = client_connect(&d, "test_export_claims");
    memset(p, 0, sizeof(p));
    p[0].name = "p05";
    p[0].has_sigma_rel = true;
    p[0].sigma_rel = 0.05;
    p[1].name = "p10";
    p[1].has_sigma_rel = true;
    p[1].sigma_rel = 0.10;
    if (emac_register_snapshots(c, name, seg, p, 2, NULL, NULL, &sc, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    for (uint64_t b = 1; b <= 6; b++) {
        set_ph(seg, b);
        event_at(s, "batch_end", b);
        if (b % 2 == 0)
            wait_snapshot_files(c, name, b, 2); /* both power profiles' */
    }
    snprintf(a, sizeof(a), "%s/running.safetensors", d.dir);
    snprintf(a4, sizeof(a4), "%s/running4.safetensors", d.dir);
    snprintf(x, sizeof(x), "%s/later.safetensors", d.dir);
    posthoc(&d, name, NULL, a);
    posthoc(&d, name, "4", a4);
    expect_ph_integers(a, 6);
    expect_ph_integers(a4, 4);

    /* The snapshot files carry the registered shapes (docs/protocol.md "Snapshots"). */
    struct emac_snapshot *l;
    size_t n;
    assert_int_equal(emac_snapshots(c, name, &l, &n, &err), 0);
    assert_int_equal(n, 6);
    struct st_file f;
    open_st(&f, l[0].file);
    const struct st_tensor *w = st_find(&f.h, "layer.w");
    assert_non_null(w);
    assert_int_equal(w->rank, 2);
    assert_int_equal(w->shape[0], 31);
    assert_int_equal(w->shape[1], 33);
    st_close(&f);
    emac_snapshots_free(l);

    /* Detached (closed with keep): the same files, the same result, byte for byte. */
    assert_int_equal(emac_close(s, true, &err), 0);
    emac_session_free(s);
    wait_detached(&d, name);
    posthoc(&d, name, NULL, x);
    expect_same_files(a, x);
    posthoc(&d, name, "4", x);
    expect_same_files(a4, x);

    /* Gone (dropped; a close without keep ends it alike): the files outlive the session. */
    int rc = emactl(&d, out, sizeof(out), (const char *const[]){"drop", name, NULL});
    if (rc != 0)
        fail_msg("emactl drop: %d: %s", rc, out);
    rc = emactl(&d, out, sizeof(out), (const char *const[]){"show", name, NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "NOSESSION");
    assert_int_equal(emac_snapshots(c, name, &l, &n, &err), 0);
    assert_int_equal(n, 6);
    emac_snapshots_free(l);
    posthoc(&d, name, NULL, x);
    expect_same_files(a, x);
    posthoc(&d, name, "4", x);
    expect_same_files(a4, x);

    emac_disconnect(c);
    emac_segment_destroy(seg);
    seg_left = NULL;
    daemon_stop(&d);
}

/* ---- 5. emactl job --json ---- */

/* The JSON object text[0..len) parsed into doc; fails unless it is one object. */
static void parse_object(const char *text, size_t len, struct jt_doc *doc)
{
    char why[256];

    if (jt_parse(text, len, 1u << 16, 32, doc, why, sizeof(why)) < 0)
        fail_msg("not JSON: %s: %.*s", why, (int)len, text);
    if (doc->nodes[0].type != JT_OBJECT)
        fail_msg("not a JSON object: %.*s", (int)len, text);
}

static uint64_t get_u64(const struct jt_doc *doc, const struct jt_node *o, const char *key)
{
    const struct jt_node *v = jt_get(doc, o, key);
    uint64_t x;

    if (v == NULL || !jt_u64(doc, v, &x))
        fail_msg("no whole number \"%s\"", key);
    return x;
}

static const char *get_str(const struct jt_doc *doc, const struct jt_node *o, const char *key)
{
    const struct jt_node *v = jt_get(doc, o, key);

    if (v == NULL || v->type != JT_STRING)
        fail_msg("no string \"%s\"", key);
    return jt_str(doc, v);
}

/* Whether objects a (of da) and b (of db) have the same keys. */
static void expect_same_keys(const struct jt_doc *da, const struct jt_doc *db)
{
    const struct jt_node *ra = &da->nodes[0], *rb = &db->nodes[0];

    assert_int_equal(ra->count, rb->count);
    for (const struct jt_node *k = jt_first(da, ra); k != NULL; k = jt_next(da, jt_next(da, k)))
        if (jt_get(db, rb, jt_str(da, k)) == NULL)
            fail_msg("key \"%s\" of emactl job --json is not in emactl show --json",
                     jt_str(da, k));
}

static void test_job_json_prints_each_session_of_the_job_on_a_line(void **state)
{
    static const struct emac_tensor_spec one[] = {{"w", "f32", 64, NULL, 0}};
    static const char *const names[4] = {"jb/r0", "jb/r1", "other/r0", "plain"};
    static const char *const jobs[4] = {"jb", "jb", "other", NULL};
    static const uint64_t ranks[4] = {0, 1, 0, 0};
    struct daemon d;
    struct emac_error err;
    emac_segment *seg[4];
    emac_session *s[4];
    char out[65536], show[65536];
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_export_claims");
    for (int i = 0; i < 4; i++) {
        assert_int_equal(emac_segment_create(one, 1, &seg[i], &err), 0);
        if (i == 0)
            seg_left = seg[0];
        if (jobs[i] != NULL) {
            struct emac_group g = {jobs[i], ranks[i], 3, 0};
            if (emac_segment_set_group(seg[i], &g, &err) < 0)
                fail_msg("group: %s: %s", err.code, err.message);
        }
        s[i] = register_plain(c, names[i], seg[i], 0.9);
        /* Rank 1 a batch behind rank 0. */
        for (uint64_t b = 1; b <= (i == 1 ? 2u : 3u); b++)
            event_at(s[i], "batch_end", b);
    }

    int rc = emactl(&d, out, sizeof(out), (const char *const[]){"job", "jb", "--json", NULL});
    if (rc != 0)
        fail_msg("emactl job --json: %d: %s", rc, out);
    /* One session per line: two lines, each a whole JSON object (in no promised order). */
    size_t lines = 0;
    bool seen[2] = {false, false};
    for (char *line = out, *nl; *line != '\0'; line = nl + 1, lines++) {
        nl = strchr(line, '\n');
        if (nl == NULL)
            fail_msg("output does not end with a newline: %s", out);
        if (lines >= 2)
            fail_msg("more than two lines for the two sessions of job jb:\n%s", out);
        struct jt_doc doc, sdoc;
        parse_object(line, (size_t)(nl - line), &doc);
        const struct jt_node *root = &doc.nodes[0];
        const char *name = get_str(&doc, root, "session");
        size_t r = strcmp(name, names[0]) == 0 ? 0 : strcmp(name, names[1]) == 0 ? 1 : 2;
        if (r == 2 || seen[r])
            fail_msg("line %zu: session %s is not a session of job jb not listed before:\n%s",
                     lines + 1, name, out);
        seen[r] = true;
        const struct jt_node *g = jt_get(&doc, root, "group");
        assert_non_null(g);
        assert_int_equal(g->type, JT_OBJECT);
        assert_string_equal(get_str(&doc, g, "job"), "jb");
        assert_int_equal(get_u64(&doc, g, "rank"), ranks[r]);
        assert_int_equal(get_u64(&doc, g, "world"), 3);
        assert_int_equal(get_u64(&doc, root, "tensors"), 1);
        assert_int_equal(get_u64(&doc, root, "updates"), r == 1 ? 2 : 3);
        const struct jt_node *att = jt_get(&doc, root, "attached");
        assert_non_null(att);
        assert_int_equal(att->type, JT_TRUE);
        /* The fields emactl show --json prints for that session. */
        rc = emactl(&d, show, sizeof(show),
                    (const char *const[]){"show", names[r], "--json", NULL});
        assert_int_equal(rc, 0);
        parse_object(show, strlen(show), &sdoc);
        expect_same_keys(&doc, &sdoc);
        jt_free(&sdoc);
        jt_free(&doc);
    }
    if (lines != 2)
        fail_msg("%zu lines for the two sessions of job jb:\n%s", lines, out);

    rc = emactl(&d, out, sizeof(out), (const char *const[]){"job", "nosuch", "--json", NULL});
    assert_int_equal(rc, 1);
    expect_in(out, "emactl: NOSESSION: job: no session of job \"nosuch\"");

    for (int i = 0; i < 4; i++) {
        assert_int_equal(emac_close(s[i], false, &err), 0);
        emac_session_free(s[i]);
    }
    emac_disconnect(c);
    for (int i = 0; i < 4; i++)
        emac_segment_destroy(seg[i]);
    seg_left = NULL;
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_export_keeps_f64_and_integer_tensors_as_the_shadow,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_export_of_a_detached_session_gives_its_shadow,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_export_while_the_trainer_updates_is_one_batch,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(
            test_posthoc_reads_the_snapshots_of_a_detached_or_closed_session, teardown_seg_left),
        cmocka_unit_test_teardown(test_job_json_prints_each_session_of_the_job_on_a_line,
                                  teardown_seg_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
