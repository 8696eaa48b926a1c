/*
 * test_snapshots.c - snapshots of power profiles end to end (docs/protocol.md "Snapshots"):
 * emad as a subprocess, a trainer speaking the raw protocol on a segment made by libemaclient,
 * two power profiles (sigma_rel 0.05 and 0.10) on f32 and bf16 params.
 *
 * The files are read with proto/safetensors.h and compared with the shadow object itself, bit
 * for bit for f32 and as round-to-nearest-even of it for bf16; the failures come from the
 * eio_shim (EIO on one snapshot's temp file, or a write that stalls for good).
 */
#include "harness.h"

#include "emaclient.h"
#include "half.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

static const struct emac_tensor_spec specs[] = {
    {"w", "f32", 1031, NULL, 0},
    {"h", "bf16", 515, NULL, 0},
};
#define NT 2
#define NP 2
static const char *const pnames[NP] = {"p05", "p10"};

/* ---- the raw protocol ---- */

static const msgpack_object *call_ok(struct rpc *c, const char *method,
                                     const struct msg_desc *d, const void *req)
{
    const msgpack_object *o = rpc_call(c, method, d, req);
    if (o == NULL)
        fail_msg("%s: %s: %s", method, c->code, c->message);
    return o;
}

/* ---- params and the session ---- */

static float bf16_f32(uint16_t h)
{
    return half_bf16_to_f32(h);
}

static void set_params(emac_segment *seg, uint64_t b)
{
    for (size_t t = 0; t < NT; t++) {
        const struct emac_tensor *x = emac_segment_tensor(seg, t);
        for (uint64_t i = 0; i < x->numel; i++) {
            float v = (float)sin((double)(i * 7 + t * 3 + b * 13) * 0.37) * (1.0f + (float)b);
            if (t == 0)
                ((float *)x->data)[i] = v;
            else
                ((uint16_t *)x->data)[i] = half_f32_to_bf16(v);
        }
    }
    (void)bf16_f32;
}

struct snapcfg {
    const char *every; /* NULL: none */
    const char *dtype; /* NULL: default */
    uint64_t keep;
    bool power;        /* false: one composer profile only */
};

static void register_snap(struct rpc *c, const char *name, emac_segment *seg,
                          const struct snapcfg *sc)
{
    struct msg_register reg;
    struct msg_tensor t[NT];
    struct msg_profile p[NP];

    register_msg(&reg, t, NT, name, seg);
    memset(p, 0, sizeof(p));
    for (size_t i = 0; i < NP; i++) {
        p[i].name = msg_str_c(pnames[i]);
        if (sc->power) {
            p[i].has_sigma_rel = true;
            p[i].sigma_rel = i == 0 ? 0.05 : 0.10;
        } else {
            p[i].has_smoothing = true;
            p[i].smoothing = 0.5;
        }
    }
    reg.has_config = true;
    reg.config.has_profiles = true;
    reg.config.profiles = p;
    reg.config.nprofiles = NP;
    reg.config.has_snapshot_every = sc->every != NULL;
    reg.config.snapshot_every = msg_str_c(sc->every);
    reg.config.has_snapshot_dtype = sc->dtype != NULL;
    reg.config.snapshot_dtype = msg_str_c(sc->dtype);
    reg.config.has_snapshot_keep = sc->keep > 0;
    reg.config.snapshot_keep = sc->keep;
    call_ok(c, "register", &msg_register_desc, &reg);
}

/* batch_end at b; the reply's snapshot_error into err (may be NULL; "" when none). */
static void batch_end(struct rpc *c, const char *name, emac_segment *seg, uint64_t b, char *err,
                      size_t errlen)
{
    struct msg_event ev = {msg_str_c(name), msg_str_c("batch_end"), {.batch = b}, false, 0};
    struct msg_action a;
    char why[256];

    set_params(seg, b);
    const msgpack_object *o = call_ok(c, "event", &msg_event_desc, &ev);
    assert_int_equal(msg_decode(&msg_action_desc, o, &a, why, sizeof(why)), 0);
    if (err != NULL)
        snprintf(err, errlen, "%.*s", a.has_snapshot_error ? (int)a.snapshot_error.len : 0,
                 a.has_snapshot_error ? a.snapshot_error.ptr : "");
    msg_free(&msg_action_desc, &a);
}

/* The session's status: its shadow and each profile's shadow_offset; snapshot failures. */
struct seen {
    char shadow_shm[256];
    uint64_t shadow_bytes;
    uint64_t poff[NP];
    uint64_t failures;
    char error[1024];
};

static void status_of(struct rpc *c, const char *name, struct seen *out)
{
    struct msg_status req = {true, msg_str_c(name), false, false};
    struct msg_status_reply rep;
    char why[256];

    const msgpack_object *res = call_ok(c, "status", &msg_status_desc, &req);
    assert_int_equal(msg_decode(&msg_status_reply_desc, res, &rep, why, sizeof(why)), 0);
    assert_int_equal(rep.nsessions, 1);
    const struct msg_session_state *s = &rep.sessions[0];
    memset(out, 0, sizeof(*out));
    assert_int_equal(msg_str_copy(s->shadow_shm, out->shadow_shm, sizeof(out->shadow_shm)), 0);
    out->shadow_bytes = s->shadow_bytes;
    for (size_t i = 0; i < s->nprofiles && i < NP; i++)
        out->poff[i] = s->profiles[i].shadow_offset;
    out->failures = s->has_snapshot_failures ? s->snapshot_failures : 0;
    if (s->has_snapshot_error)
        snprintf(out->error, sizeof(out->error), "%.*s", (int)s->snapshot_error.len,
                 s->snapshot_error.ptr);
    msg_free(&msg_status_reply_desc, &rep);
}

/* The session's snapshot files as `snapshots` lists them. */
struct listed {
    size_t n;
    char file[16][PATH_MAX];
    char profile[16][40];
    uint64_t batch[16];
    char dtype[16][8];
    uint64_t bytes[16];
};

static void copy_entries(const msgpack_object *o, struct listed *out)
{
    struct msg_snapshots_reply rep;
    char why[256];

    assert_int_equal(msg_decode(&msg_snapshots_reply_desc, o, &rep, why, sizeof(why)), 0);
    assert_true(rep.nsnapshots <= 16);
    memset(out, 0, sizeof(*out));
    out->n = rep.nsnapshots;
    for (size_t i = 0; i < rep.nsnapshots; i++) {
        const struct msg_snapshot_entry *e = &rep.snapshots[i];
        assert_int_equal(msg_str_copy(e->file, out->file[i], sizeof(out->file[i])), 0);
        assert_int_equal(msg_str_copy(e->profile, out->profile[i], sizeof(out->profile[i])), 0);
        assert_int_equal(msg_str_copy(e->dtype, out->dtype[i], sizeof(out->dtype[i])), 0);
        out->batch[i] = e->batch;
        out->bytes[i] = e->bytes;
    }
    msg_free(&msg_snapshots_reply_desc, &rep);
}

static void list(struct rpc *c, const char *name, struct listed *out)
{
    struct msg_snapshot req = {.session = msg_str_c(name)};
    copy_entries(call_ok(c, "snapshots", &msg_snapshot_desc, &req), out);
}

static bool has(const struct listed *l, const char *profile, uint64_t batch)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->profile[i], profile) == 0 && l->batch[i] == batch)
            return true;
    return false;
}

/* Poll the listing until every profile has a file at batch (the writes are asynchronous). */
static void wait_listed(struct rpc *c, const char *name, uint64_t batch, struct listed *out)
{
    for (int ms = 0; ms < WAIT_MS; ms += 10) {
        list(c, name, out);
        if (has(out, pnames[0], batch) && has(out, pnames[1], batch))
            return;
        sleep_ms(10);
    }
    fail_msg("no snapshot files of batch %llu after %d ms", (unsigned long long)batch, WAIT_MS);
}

/* File f holds profile p's shadow exactly as the shadow object holds it now (f32), or its
 * round to nearest even (bf16), with the metadata of docs/protocol.md "Snapshots". */
static void expect_file_is_shadow(const char *f, const struct seen *sn, size_t p, uint64_t batch,
                                  const char *dtype, const char *session)
{
    struct st_file sf;
    char err[512], want[64];

    if (st_open(&sf, f, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    assert_string_equal(st_meta_get(&sf.h, "session"), session);
    assert_string_equal(st_meta_get(&sf.h, "profile"), pnames[p]);
    snprintf(want, sizeof(want), "%llu", (unsigned long long)batch);
    assert_string_equal(st_meta_get(&sf.h, "batch"), want);
    assert_string_equal(st_meta_get(&sf.h, "dtype"), dtype);
    assert_string_equal(st_meta_get(&sf.h, "format"), "pt");
    snprintf(want, sizeof(want), "%.17g", p == 0 ? 0.05 : 0.10);
    assert_string_equal(st_meta_get(&sf.h, "sigma_rel"), want);
    assert_non_null(st_meta_get(&sf.h, "gamma"));
    assert_non_null(st_meta_get(&sf.h, "epoch"));
    int fd = shm_open(sn->shadow_shm, O_RDONLY, 0);
    assert_true(fd >= 0);
    void *m = mmap(NULL, sn->shadow_bytes, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(m != MAP_FAILED);
    uint64_t at = 4096;
    bool bf = strcmp(dtype, "bf16") == 0;
    for (size_t t = 0; t < NT; t++) {
        at = (at + 63) & ~(uint64_t)63;
        const float *sh = (const float *)((const char *)m + at + sn->poff[p]);
        const struct st_tensor *x = st_find(&sf.h, specs[t].name);
        assert_non_null(x);
        assert_int_equal(x->dtype, bf ? DTYPE_BF16 : DTYPE_F32);
        assert_int_equal(x->rank, 1);
        assert_int_equal(x->shape[0], specs[t].numel);
        size_t es = bf ? 2 : 4;
        unsigned char *buf = malloc(specs[t].numel * es);
        assert_non_null(buf);
        assert_int_equal(st_read(&sf, x, 0, buf, specs[t].numel * es, err, sizeof(err)), 0);
        for (uint64_t i = 0; i < specs[t].numel; i++) {
            if (bf) {
                uint16_t got, exp = half_f32_to_bf16(sh[i]);
                memcpy(&got, buf + 2 * i, 2);
                if (got != exp)
                    fail_msg("%s %s[%llu]: %04x, expected %04x", f, specs[t].name,
                             (unsigned long long)i, got, exp);
            } else if (memcmp(buf + 4 * i, &sh[i], 4) != 0) {
                fail_msg("%s %s[%llu]: differs from the shadow", f, specs[t].name,
                         (unsigned long long)i);
            }
        }
        free(buf);
        at += specs[t].numel * 4;
    }
    munmap(m, sn->shadow_bytes);
    st_close(&sf);
}

/* ---- tests ---- */

static emac_segment *made;

static int teardown(void **state)
{
    kill_leftovers(state);
    emac_segment_destroy(made);
    made = NULL;
    return 0;
}

static void test_snapshots_at_their_batches_equal_the_shadow_and_keep_the_newest(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct rpc c;
    struct seen sn;
    struct listed l;
    const struct snapcfg sc = {"2ba", NULL, 2, true};
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_snapshots");
    register_snap(&c, "snap/a", made, &sc);
    for (uint64_t b = 1; b <= 3; b++)
        batch_end(&c, "snap/a", made, b, NULL, 0);
    wait_listed(&c, "snap/a", 2, &l);
    assert_false(has(&l, pnames[0], 1) || has(&l, pnames[0], 3));
    for (uint64_t b = 4; b <= 6; b++)
        batch_end(&c, "snap/a", made, b, NULL, 0);
    /* Batch 6's files hold the shadow as the reply to batch 6 left it (nothing since). */
    wait_listed(&c, "snap/a", 6, &l);
    status_of(&c, "snap/a", &sn);
    assert_int_equal(sn.failures, 0);
    /* keep 2: batch 2's files are gone once batch 6's are written. */
    for (int ms = 0; ms < WAIT_MS && has(&l, pnames[1], 2); ms += 10) {
        sleep_ms(10);
        list(&c, "snap/a", &l);
    }
    if (l.n != 4)
        for (size_t i = 0; i < l.n; i++)
            print_message("listed %s\n", l.file[i]);
    assert_int_equal(l.n, 4);
    for (size_t p = 0; p < NP; p++) {
        assert_false(has(&l, pnames[p], 2));
        assert_true(has(&l, pnames[p], 4));
    }
    for (size_t i = 0; i < l.n; i++) {
        struct stat st;
        assert_int_equal(stat(l.file[i], &st), 0);
        assert_int_equal((uint64_t)st.st_size, l.bytes[i]);
        assert_string_equal(l.dtype[i], "f32");
        assert_non_null(strstr(l.file[i], d.state));
        if (l.batch[i] == 6)
            expect_file_is_shadow(l.file[i], &sn, strcmp(l.profile[i], "p05") == 0 ? 0 : 1, 6,
                                  "f32", "snap/a");
    }
    rpc_close(&c);
    daemon_stop(&d);
}

static void test_snapshot_on_request_in_bf16_and_refusals(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct rpc c;
    struct seen sn;
    struct listed l;
    const struct snapcfg sc = {NULL, "bf16", 0, true};
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_snapshots");
    /* Only power profiles are snapshotted: snapshot_every without one is refused. */
    const struct snapcfg composer = {"2ba", NULL, 0, false};
    struct msg_register reg;
    struct msg_tensor t[NT];
    register_snap(&c, "snap/b", made, &sc);
    struct msg_snapshot req = {.session = msg_str_c("snap/b")};
    /* Before any update there is nothing to snapshot. */
    assert_null(rpc_call(&c, "snapshot", &msg_snapshot_desc, &req));
    assert_string_equal(c.code, "STATE");
    for (uint64_t b = 1; b <= 3; b++)
        batch_end(&c, "snap/b", made, b, NULL, 0);
    list(&c, "snap/b", &l);
    assert_int_equal(l.n, 0); /* no snapshot_every: none taken on their own */
    copy_entries(call_ok(&c, "snapshot", &msg_snapshot_desc, &req), &l);
    assert_int_equal(l.n, 2);
    status_of(&c, "snap/b", &sn);
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.batch[i], 3);
        assert_string_equal(l.dtype[i], "bf16");
        expect_file_is_shadow(l.file[i], &sn, strcmp(l.profile[i], "p05") == 0 ? 0 : 1, 3,
                              "bf16", "snap/b");
    }
    struct listed l2;
    list(&c, "snap/b", &l2);
    assert_int_equal(l2.n, 2);
    rpc_close(&c);
    emac_segment_destroy(made);
    made = NULL;
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    rpc_open(&c, &d, "test_snapshots");
    {
        struct msg_profile p[1];
        memset(p, 0, sizeof(p));
        p[0].name = msg_str_c("c");
        p[0].has_smoothing = true;
        p[0].smoothing = 0.5;
        register_msg(&reg, t, NT, "snap/c", made);
        reg.has_config = true;
        reg.config.has_profiles = true;
        reg.config.profiles = p;
        reg.config.nprofiles = 1;
        reg.config.has_snapshot_every = true;
        reg.config.snapshot_every = msg_str_c(composer.every);
        assert_null(rpc_call(&c, "register", &msg_register_desc, &reg));
        assert_string_equal(c.code, "BADARG");
        assert_non_null(strstr(c.message, "snapshot_every"));
    }
    rpc_close(&c);
    daemon_stop(&d);
}

/* The environment of an emad whose writes to snapshot temp files matching match fail (stall:
 * NULL) or stall for good. */
struct shim_env {
    char preload[SHIM_PRELOAD_MAX], asan[SHIM_ASAN_MAX];
    char match[PATH_MAX + 64], stall[PATH_MAX + 64];
    char *v[6];
};

static char *const *shim_env(struct shim_env *e, const char *match, const char *stall)
{
    size_t n = 0;

    shim_preload(e->preload, e->asan);
    e->v[n++] = e->preload;
    e->v[n++] = e->asan;
    snprintf(e->match, sizeof(e->match), "EMAD_TEST_EIO_MATCH=%s", match);
    e->v[n++] = e->match;
    if (stall != NULL) {
        snprintf(e->stall, sizeof(e->stall), "EMAD_TEST_EIO_STALL=%s", stall);
        e->v[n++] = e->stall;
    }
    e->v[n] = NULL;
    return e->v;
}

static void test_snapshot_io_error_keeps_older_ones_and_is_reported(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct rpc c;
    struct seen sn;
    struct listed l;
    struct shim_env e;
    char why[1024];
    const struct snapcfg sc = {"2ba", NULL, 0, true};
    (void)state;

    /* Batch 4's file of p05 fails (its temp file, ".p05-4.f32.safetensors.tmp.XXXXXXXX"). */
    make_dir(&d);
    daemon_start_env(&d, (const char *const[]){"--workers", "2", NULL},
                     shim_env(&e, "/.p05-4.f32", NULL));
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_snapshots");
    register_snap(&c, "snap/e", made, &sc);
    for (uint64_t b = 1; b <= 2; b++)
        batch_end(&c, "snap/e", made, b, why, sizeof(why));
    wait_listed(&c, "snap/e", 2, &l);
    for (uint64_t b = 3; b <= 4; b++) {
        batch_end(&c, "snap/e", made, b, why, sizeof(why));
        assert_string_equal(why, "");
    }
    /* The write fails after the reply to batch 4: status counts it ... */
    for (int ms = 0; ms < WAIT_MS; ms += 10) {
        status_of(&c, "snap/e", &sn);
        if (sn.failures > 0)
            break;
        sleep_ms(10);
    }
    assert_int_equal(sn.failures, 1);
    assert_non_null(strstr(sn.error, "snap/e"));
    assert_non_null(strstr(sn.error, "p05-4"));
    /* ... and the next event's reply says it, once, while the event itself succeeds. */
    batch_end(&c, "snap/e", made, 5, why, sizeof(why));
    assert_non_null(strstr(why, "p05-4"));
    assert_non_null(strstr(why, "Input/output error"));
    batch_end(&c, "snap/e", made, 6, why, sizeof(why));
    assert_string_equal(why, "");
    wait_listed(&c, "snap/e", 6, &l);
    assert_true(has(&l, "p05", 2));   /* the previous one stays */
    assert_false(has(&l, "p05", 4));  /* no partial file */
    assert_true(has(&l, "p10", 4));   /* the other profile's was written */
    assert_true(file_contains(d.log, "p05-4"));
    rpc_close(&c);
    daemon_stop(&d);
}

static void test_stalled_snapshot_write_does_not_stall_the_next_update(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct rpc c;
    struct listed l;
    struct shim_env e;
    char marker[PATH_MAX];
    const struct snapcfg sc = {"2ba", NULL, 0, true};
    (void)state;

    make_dir(&d);
    snprintf(marker, sizeof(marker), "%s/stalled", d.dir);
    daemon_start_env(&d, (const char *const[]){"--workers", "2", NULL},
                     shim_env(&e, "/.p05-2.f32", marker));
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_snapshots");
    register_snap(&c, "snap/s", made, &sc);
    batch_end(&c, "snap/s", made, 1, NULL, 0);
    batch_end(&c, "snap/s", made, 2, NULL, 0);
    /* The write of p05-2 is now blocked for good. */
    struct stat st;
    int ms = 0;
    while (stat(marker, &st) < 0 && ms < WAIT_MS) {
        sleep_ms(10);
        ms += 10;
    }
    assert_true(ms < WAIT_MS);
    /* Updates go on (each answered within the poll bound of rpc_call()); batch 4's snapshot waits
     * behind the stalled one (one write at a time per session), batch 6's is skipped, and the
     * next reply says so. */
    char why[1024];
    for (uint64_t b = 3; b <= 6; b++) {
        batch_end(&c, "snap/s", made, b, why, sizeof(why));
        assert_string_equal(why, "");
    }
    batch_end(&c, "snap/s", made, 7, why, sizeof(why));
    assert_non_null(strstr(why, "batch 6 skipped"));
    list(&c, "snap/s", &l);
    assert_false(has(&l, "p05", 2));
    assert_false(has(&l, "p05", 4));
    rpc_close(&c);
    /* The stalled thread never returns: no clean stop can wait for it. */
    daemon_kill(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(
            test_snapshots_at_their_batches_equal_the_shadow_and_keep_the_newest, teardown),
        cmocka_unit_test_teardown(test_snapshot_on_request_in_bf16_and_refusals, teardown),
        cmocka_unit_test_teardown(test_snapshot_io_error_keeps_older_ones_and_is_reported,
                                  teardown),
        cmocka_unit_test_teardown(test_stalled_snapshot_write_does_not_stall_the_next_update,
                                  teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("snapshots", tests, NULL, NULL);
}
