/*
 * test_profiles.c - EMA profiles end to end (docs/protocol.md "Profiles"): emad as a subprocess,
 * a trainer speaking the raw protocol on a segment made by libemaclient, with a composer, a
 * warm-up and a power profile on f32 and bf16 params.
 *
 * Every profile's shadow is checked bit for bit against a scalar computation here that follows
 * the formulas of docs/protocol.md and the lerp of kernel.h (PyTorch's, w = (float)(1 - decay)),
 * read straight from the shadow object and through a swap of each profile into the params.
 */
#include "harness.h"

#include "emaclient.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

static const struct emac_tensor_spec specs[] = {
    {"w", "f32", 1031, NULL, 0},
    {"h", "bf16", 515, NULL, 0},
};
#define NT 2
#define NP 3

/* ---- the raw protocol ---- */

static void call_ok(struct rpc *c, const char *method, const struct msg_desc *d, const void *req)
{
    if (rpc_call(c, method, d, req) == NULL)
        fail_msg("%s: %s: %s", method, c->code, c->message);
}

/* A call that must fail with code, its message containing want. */
static void call_fails(struct rpc *c, const char *method, const struct msg_desc *d,
                       const void *req, const char *code, const char *want)
{
    if (rpc_call(c, method, d, req) != NULL)
        fail_msg("%s succeeded; expected %s (%s)", method, code, want);
    if (strcmp(c->code, code) != 0 || strstr(c->message, want) == NULL)
        fail_msg("%s: %s: %s; expected %s with \"%s\"", method, c->code, c->message, code, want);
}

/* ---- the session as the test sees it ---- */

struct seen {
    char shadow_shm[256];
    uint64_t shadow_bytes;
    uint64_t offset[NT];  /* each tensor's shadow offset (profile 0) */
    uint64_t poff[NP];    /* each profile's shadow_offset */
    uint64_t updates[NP];
    uint64_t last_batch[NP];
    char eval[40];
    size_t nprofiles;
};

/* The session's status: its shadow, its tensors' offsets and its profiles. */
static void status_of(struct rpc *c, const char *name, emac_segment *seg, struct seen *out)
{
    struct msg_status req = {true, msg_str_c(name), false, false};
    struct msg_status_reply rep;
    char why[256];

    const msgpack_object *res = rpc_call(c, "status", &msg_status_desc, &req);
    if (res == NULL)
        fail_msg("status: %s: %s", c->code, c->message);
    if (msg_decode(&msg_status_reply_desc, res, &rep, why, sizeof(why)) < 0)
        fail_msg("status reply: %s", why);
    assert_int_equal(rep.nsessions, 1);
    const struct msg_session_state *s = &rep.sessions[0];
    memset(out, 0, sizeof(*out));
    assert_int_equal(msg_str_copy(s->shadow_shm, out->shadow_shm, sizeof(out->shadow_shm)), 0);
    out->shadow_bytes = s->shadow_bytes;
    assert_true(s->has_profiles);
    assert_true(s->has_eval_profile);
    assert_int_equal(msg_str_copy(s->eval_profile, out->eval, sizeof(out->eval)), 0);
    out->nprofiles = s->nprofiles;
    for (size_t i = 0; i < s->nprofiles && i < NP; i++) {
        out->poff[i] = s->profiles[i].shadow_offset;
        out->updates[i] = s->profiles[i].updates;
        out->last_batch[i] = s->profiles[i].has_last_batch ? s->profiles[i].last_batch : 0;
    }
    msg_free(&msg_status_reply_desc, &rep);
    /* The layout of session.h: the first tensor after the header page, each at a multiple of
     * 64 bytes. */
    uint64_t at = 4096;
    for (size_t t = 0; t < NT; t++) {
        at = (at + 63) & ~(uint64_t)63;
        out->offset[t] = at;
        at += emac_segment_tensor(seg, t)->numel * 4;
    }
}

/* ---- the reference ---- */

static const char *const names[NP] = {"fast", "warm", "p"};

/* The profiles: composer smoothing 0.75 every 2 batches from batch 3; timm warm-up after 2
 * batches; EDM2 power gamma 6.94 every 3 batches. */
static void pack_profiles(struct msg_profile *p)
{
    memset(p, 0, NP * sizeof(*p));
    p[0].name = msg_str_c(names[0]);
    p[0].has_smoothing = true;
    p[0].smoothing = 0.75;
    p[0].has_update_interval = true;
    p[0].update_interval = msg_str_c("2ba");
    p[0].has_ema_start = true;
    p[0].ema_start = msg_str_c("3ba");
    p[1].name = msg_str_c(names[1]);
    p[1].has_decay = true;
    p[1].decay = 0.999;
    p[1].has_min_decay = true;
    p[1].min_decay = 0.1;
    p[1].has_update_after_step = true;
    p[1].update_after_step = 2;
    p[1].has_inv_gamma = true;
    p[1].inv_gamma = 1.0;
    p[1].has_power = true;
    p[1].power = 0.75;
    p[2].name = msg_str_c(names[2]);
    p[2].has_schedule = true;
    p[2].schedule = msg_str_c("power");
    p[2].has_gamma = true;
    p[2].gamma = 6.94;
    p[2].has_update_interval = true;
    p[2].update_interval = msg_str_c("3ba");
}

struct ref {
    float shadow[NP][NT][1031];
    bool started_fast;
    uint64_t last_power;
};

static float lerp(float s, float x, float w)
{
    float d = x - s;
    return fabsf(w) < 0.5f ? fmaf(w, d, s) : fmaf(-(1.0f - w), d, x);
}

static uint16_t bf16_rne(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float param_at(const emac_segment *seg, size_t t, uint64_t i)
{
    const struct emac_tensor *x = emac_segment_tensor(seg, t);
    return t == 0 ? ((const float *)x->data)[i] : bf16_f32(((const uint16_t *)x->data)[i]);
}

/* New params for batch b, different for every element and batch. */
static void set_params(emac_segment *seg, uint64_t b)
{
    for (size_t t = 0; t < NT; t++) {
        const struct emac_tensor *x = emac_segment_tensor(seg, t);
        for (uint64_t i = 0; i < x->numel; i++) {
            float v = (float)sin((double)(i * 7 + t * 3 + b * 13) * 0.37) * (1.0f + (float)b);
            if (t == 0)
                ((float *)x->data)[i] = v;
            else
                ((uint16_t *)x->data)[i] = bf16_rne(v);
        }
    }
}

static void ref_copy(struct ref *r, size_t p, const emac_segment *seg)
{
    for (size_t t = 0; t < NT; t++)
        for (uint64_t i = 0; i < specs[t].numel; i++)
            r->shadow[p][t][i] = param_at(seg, t, i);
}

static void ref_lerp(struct ref *r, size_t p, const emac_segment *seg, double decay)
{
    float w = (float)(1.0 - decay);
    for (size_t t = 0; t < NT; t++)
        for (uint64_t i = 0; i < specs[t].numel; i++)
            r->shadow[p][t][i] = lerp(r->shadow[p][t][i], param_at(seg, t, i), w);
}

static void ref_register(struct ref *r, const emac_segment *seg)
{
    memset(r, 0, sizeof(*r));
    for (size_t p = 0; p < NP; p++)
        ref_copy(r, p, seg);
}

/* What batch_end at batch b does to each profile, by the documented formulas. */
static void ref_batch_end(struct ref *r, const emac_segment *seg, uint64_t b)
{
    /* composer: starts (copies) at ema_start 3ba, updates at multiples of 2 once started */
    bool start = !r->started_fast && b >= 3;
    if (start) {
        ref_copy(r, 0, seg);
        r->started_fast = true;
    }
    if (r->started_fast && b % 2 == 0)
        ref_lerp(r, 0, seg, 0.75);
    /* warmup: k = b - update_after_step - 1 */
    double k = (double)b - 2.0 - 1.0;
    double decay = k <= 0 ? 0.0 : fmax(fmin(1.0 - pow(1.0 + k / 1.0, -0.75), 0.999), 0.1);
    ref_lerp(r, 1, seg, decay);
    /* power: every 3 batches, beta = (1 - D/b)^(gamma + 1) */
    if (b % 3 == 0) {
        uint64_t dd = b - r->last_power;
        double beta = pow(1.0 - (double)dd / (double)b, 6.94 + 1.0);
        ref_lerp(r, 2, seg, beta);
        r->last_power = b;
    }
}

/* Every profile's shadow in the object equals the reference, bit for bit. */
static void expect_shadows(const struct seen *sn, const struct ref *r)
{
    int fd = shm_open(sn->shadow_shm, O_RDONLY, 0);
    assert_true(fd >= 0);
    void *m = mmap(NULL, sn->shadow_bytes, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(m != MAP_FAILED);
    for (size_t p = 0; p < NP; p++)
        for (size_t t = 0; t < NT; t++) {
            const char *at = (const char *)m + sn->offset[t] + sn->poff[p];
            assert_true(sn->offset[t] + sn->poff[p] + specs[t].numel * 4 <= sn->shadow_bytes);
            if (memcmp(at, r->shadow[p][t], specs[t].numel * 4) != 0) {
                const float *got = (const float *)at;
                for (uint64_t i = 0; i < specs[t].numel; i++)
                    if (memcmp(&got[i], &r->shadow[p][t][i], 4) != 0)
                        fail_msg("profile %s, tensor %s, element %llu: %a, expected %a",
                                 names[p], specs[t].name, (unsigned long long)i, (double)got[i],
                                 (double)r->shadow[p][t][i]);
            }
        }
    munmap(m, sn->shadow_bytes);
}

/* The params hold profile p's shadow, cast to their dtypes. */
static void expect_params_hold(const emac_segment *seg, const struct ref *r, size_t p)
{
    const struct emac_tensor *w = emac_segment_tensor(seg, 0);
    const struct emac_tensor *h = emac_segment_tensor(seg, 1);
    assert_memory_equal(w->data, r->shadow[p][0], w->numel * 4);
    for (uint64_t i = 0; i < h->numel; i++)
        if (((const uint16_t *)h->data)[i] != bf16_rne(r->shadow[p][1][i]))
            fail_msg("profile %s swapped in: h[%llu] is %#x, expected %#x", names[p],
                     (unsigned long long)i, ((const uint16_t *)h->data)[i],
                     bf16_rne(r->shadow[p][1][i]));
}

static void batch_end(struct rpc *c, const char *name, uint64_t b)
{
    struct msg_event ev = {msg_str_c(name), msg_str_c("batch_end"), {.batch = b}, false, 0};
    call_ok(c, "event", &msg_event_desc, &ev);
}

static void swap(struct rpc *c, const char *name, const char *to, const char *profile)
{
    struct msg_swap sw = {msg_str_c(name), msg_str_c(to), false, 0, profile != NULL,
                          msg_str_c(profile)};
    call_ok(c, "swap", &msg_swap_desc, &sw);
}

static void register_profiles(struct rpc *c, const char *name, emac_segment *seg,
                              struct msg_profile *p, size_t np, const char *eval, bool resume)
{
    struct msg_register reg;
    struct msg_tensor t[NT];

    register_msg(&reg, t, NT, name, seg);
    reg.has_config = true;
    reg.config.has_profiles = true;
    reg.config.profiles = p;
    reg.config.nprofiles = np;
    reg.config.has_eval_profile = eval != NULL;
    reg.config.eval_profile = msg_str_c(eval);
    reg.has_resume = resume;
    reg.resume = resume;
    call_ok(c, "register", &msg_register_desc, &reg);
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

static void test_profiles_update_swap_save_load_and_restart(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_profile prof[NP];
    struct rpc c;
    struct seen sn, saved_sn;
    static struct ref r, saved;
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_profiles");
    pack_profiles(prof);
    register_profiles(&c, "multi", made, prof, NP, NULL, false);
    ref_register(&r, made);
    status_of(&c, "multi", made, &sn);
    assert_int_equal(sn.nprofiles, NP);
    assert_string_equal(sn.eval, "fast"); /* the first profile by default */
    expect_shadows(&sn, &r);

    for (uint64_t b = 1; b <= 10; b++) {
        set_params(made, b);
        batch_end(&c, "multi", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "multi", made, &sn);
    assert_int_equal(sn.updates[0], 4);  /* batches 4, 6, 8, 10 */
    assert_int_equal(sn.updates[1], 10);
    assert_int_equal(sn.updates[2], 3);  /* 3, 6, 9 */
    assert_int_equal(sn.last_batch[2], 9);
    expect_shadows(&sn, &r);

    /* Each profile swapped in, and the eval profile by eval_start. */
    for (size_t p = 0; p < NP; p++) {
        swap(&c, "multi", "ema", names[p]);
        expect_params_hold(made, &r, p);
        swap(&c, "multi", "train", NULL);
    }
    struct msg_event ev = {msg_str_c("multi"), msg_str_c("eval_start"), {.batch = 10}, false, 0};
    call_ok(&c, "event", &msg_event_desc, &ev);
    expect_params_hold(made, &r, 0);
    ev.event = msg_str_c("eval_end");
    call_ok(&c, "event", &msg_event_desc, &ev);
    struct msg_swap bad = {msg_str_c("multi"), msg_str_c("ema"), false, 0, true,
                           msg_str_c("nope")};
    call_fails(&c, "swap", &msg_swap_desc, &bad, "BADARG", "no profile \"nope\"");

    /* save, two more batches, load: every profile back as saved. */
    struct msg_file f = {.session = msg_str_c("multi"), .has_name = true,
        .name = msg_str_c("multi-profiles")};
    call_ok(&c, "save", &msg_file_desc, &f);
    saved = r;
    saved_sn = sn;
    for (uint64_t b = 11; b <= 12; b++) {
        set_params(made, b);
        batch_end(&c, "multi", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "multi", made, &sn);
    expect_shadows(&sn, &r);
    call_ok(&c, "load", &msg_file_desc, &f);
    status_of(&c, "multi", made, &sn);
    expect_shadows(&sn, &saved);
    for (size_t p = 0; p < NP; p++) {
        assert_int_equal(sn.updates[p], saved_sn.updates[p]);
        assert_int_equal(sn.last_batch[p], saved_sn.last_batch[p]);
    }
    r = saved;
    for (uint64_t b = 11; b <= 13; b++) {
        set_params(made, b);
        batch_end(&c, "multi", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "multi", made, &sn);
    expect_shadows(&sn, &r);

    /* SIGKILL and restart: the journal brings the profiles back, the header their counters. */
    rpc_close(&c);
    daemon_kill(&d);
    daemon_start_env(&d, (const char *const[]){"--workers", "2", NULL}, NULL);
    rpc_open(&c, &d, "test_profiles");
    register_profiles(&c, "multi", made, prof, NP, NULL, true);
    status_of(&c, "multi", made, &saved_sn);
    expect_shadows(&saved_sn, &r);
    for (size_t p = 0; p < NP; p++) {
        assert_int_equal(saved_sn.updates[p], sn.updates[p]);
        assert_int_equal(saved_sn.last_batch[p], sn.last_batch[p]);
    }
    for (uint64_t b = 14; b <= 15; b++) {
        set_params(made, b);
        batch_end(&c, "multi", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "multi", made, &sn);
    expect_shadows(&sn, &r);

    /* A clean stop keeps the session in a state file; the next emad restores every profile. */
    rpc_close(&c);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    check_daemon_stderr(&d, -1);
    daemon_start_env(&d, (const char *const[]){"--workers", "2", NULL}, NULL);
    rpc_open(&c, &d, "test_profiles");
    register_profiles(&c, "multi", made, prof, NP, NULL, true);
    status_of(&c, "multi", made, &saved_sn);
    expect_shadows(&saved_sn, &r);
    for (size_t p = 0; p < NP; p++) {
        assert_int_equal(saved_sn.updates[p], sn.updates[p]);
        assert_int_equal(saved_sn.last_batch[p], sn.last_batch[p]);
    }
    for (uint64_t b = 16; b <= 18; b++) {
        set_params(made, b);
        batch_end(&c, "multi", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "multi", made, &sn);
    expect_shadows(&sn, &r);
    struct msg_close cl = {msg_str_c("multi"), false, false};
    call_ok(&c, "close", &msg_close_desc, &cl);
    rpc_close(&c);
    daemon_stop(&d);
}

static void test_eval_profile_chooses_what_eval_start_swaps_in(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_profile prof[NP];
    struct rpc c;
    struct seen sn;
    static struct ref r;
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_profiles");
    pack_profiles(prof);
    register_profiles(&c, "evalp", made, prof, NP, "p", false);
    ref_register(&r, made);
    status_of(&c, "evalp", made, &sn);
    assert_string_equal(sn.eval, "p");
    /* "fast" starts at batch 3: before, it cannot be swapped in (the swap does nothing). */
    struct msg_swap early = {msg_str_c("evalp"), msg_str_c("ema"), false, 0, true,
                             msg_str_c("fast")};
    const msgpack_object *res = rpc_call(&c, "swap", &msg_swap_desc, &early);
    assert_non_null(res);
    struct msg_action a;
    char why[128];
    assert_int_equal(msg_decode(&msg_action_desc, res, &a, why, sizeof(why)), 0);
    assert_true(msg_str_eq(a.action, "none"));
    assert_false(a.active);
    for (uint64_t b = 1; b <= 4; b++) {
        set_params(made, b);
        batch_end(&c, "evalp", b);
        ref_batch_end(&r, made, b);
    }
    struct msg_event ev = {msg_str_c("evalp"), msg_str_c("checkpoint"), {.batch = 4}, false, 0};
    call_ok(&c, "event", &msg_event_desc, &ev);
    expect_params_hold(made, &r, 2);
    swap(&c, "evalp", "train", NULL);
    rpc_close(&c);
    daemon_stop(&d);
}

/* A register that must be refused with BADARG naming the problem. */
static void expect_refused(struct rpc *c, emac_segment *seg, struct msg_profile *p, size_t np,
                           const char *eval, const char *want)
{
    struct msg_register reg;
    struct msg_tensor t[NT];

    register_msg(&reg, t, NT, "bad", seg);
    reg.has_config = true;
    reg.config.has_profiles = true;
    reg.config.profiles = p;
    reg.config.nprofiles = np;
    reg.config.has_eval_profile = eval != NULL;
    reg.config.eval_profile = msg_str_c(eval);
    call_fails(c, "register", &msg_register_desc, &reg, "BADARG", want);
}

static void test_bad_profiles_are_refused(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_profile p[9];
    struct rpc c;
    static const char *const many[9] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    rpc_open(&c, &d, "test_profiles");

    memset(p, 0, sizeof(p));
    for (size_t i = 0; i < 9; i++)
        p[i].name = msg_str_c(many[i]);
    expect_refused(&c, made, p, 9, NULL, "config.profiles: 9 profiles; a session holds 1 to 8");

    /* Unknown field: raw msgpack, since the struct has no room for one. */
    {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        struct msg_register reg;
        struct msg_tensor t[NT];
        register_msg(&reg, t, NT, "bad", made);
        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        wire_pack_request_head(&pk, c.next++, "register");
        msgpack_pack_map(&pk, 4);
        msgpack_pack_str(&pk, 7);
        msgpack_pack_str_body(&pk, "session", 7);
        msgpack_pack_str(&pk, 3);
        msgpack_pack_str_body(&pk, "bad", 3);
        msgpack_pack_str(&pk, 3);
        msgpack_pack_str_body(&pk, "shm", 3);
        msgpack_pack_str(&pk, reg.shm.len);
        msgpack_pack_str_body(&pk, reg.shm.ptr, reg.shm.len);
        msgpack_pack_str(&pk, 7);
        msgpack_pack_str_body(&pk, "tensors", 7);
        msgpack_pack_array(&pk, NT);
        for (size_t i = 0; i < NT; i++)
            msg_encode(&pk, &msg_tensor_desc, &t[i]);
        msgpack_pack_str(&pk, 6);
        msgpack_pack_str_body(&pk, "config", 6);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str(&pk, 8);
        msgpack_pack_str_body(&pk, "profiles", 8);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str(&pk, 4);
        msgpack_pack_str_body(&pk, "fast", 4);
        msgpack_pack_map(&pk, 1);
        msgpack_pack_str(&pk, 8);
        msgpack_pack_str_body(&pk, "halflife", 8);
        msgpack_pack_str(&pk, 5);
        msgpack_pack_str_body(&pk, "100ba", 5);
        send_bytes(c.fd, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
        struct reply rr;
        read_reply_dec(c.fd, &c.dec, &rr);
        assert_string_equal(rr.code, "BADARG");
        expect_in(rr.message, "config.profiles.fast.halflife: not a field of a profile");
    }

    memset(p, 0, sizeof(p));
    p[0].name = msg_str_c("mixed");
    p[0].has_half_life = true;
    p[0].half_life = msg_str_c("10ba");
    p[0].has_sigma_rel = true;
    p[0].sigma_rel = 0.1;
    expect_refused(&c, made, p, 1, NULL, "config.profiles.mixed.half_life: not a setting of a "
                   "power profile");
    p[0].has_schedule = true;
    p[0].schedule = msg_str_c("composer");
    expect_refused(&c, made, p, 1, NULL, "config.profiles.mixed.sigma_rel: not a setting of a "
                   "composer profile");

    memset(p, 0, sizeof(p));
    p[0].name = msg_str_c("p");
    p[0].has_sigma_rel = true;
    p[0].sigma_rel = 0.3;
    expect_refused(&c, made, p, 1, NULL, "config.profiles.p.sigma_rel: 0.3 is not in (0, ");
    p[0].sigma_rel = 0.05;
    p[1] = p[0];
    expect_refused(&c, made, p, 2, NULL, "config.profiles: \"p\" is given twice");
    expect_refused(&c, made, p, 1, "q", "config.eval_profile: \"q\" names none of the profiles");
    p[0].name = msg_str_c("no spaces");
    expect_refused(&c, made, p, 1, NULL, "a profile name is 1 to 32 characters");
    rpc_close(&c);
    daemon_stop(&d);
}

/* --crash-exact with several profiles: every update goes through the redo records (blocks of
 * REDO_BLOCK_ELEMS / 3 elements, each profile's old values in the record) and matches the
 * reference bit for bit; a SIGKILL in an update brings the session back with every profile's
 * counters of the last update that completed, flagged interrupted once the cut-short update is
 * not sent again (test_reconnect has the one sent again, redone exactly). */
static void test_crash_exact_updates_several_profiles_exactly(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_profile p[NP];
    struct rpc c;
    struct seen sn, after;
    static struct ref r;
    (void)state;

    make_dir(&d);
    const char *const exact[] = {"--crash-exact", NULL};
    /* Jobs: register's journal and initialisation, batches 1 to 10; batch 11 stalls. */
    daemon_start_env(&d, exact, (char *[]){"EMAD_TEST_STALL_MS=5000", "EMAD_TEST_STALL_AFTER=12",
                                            NULL});
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_profiles");
    pack_profiles(p);
    register_profiles(&c, "exact3", made, p, NP, NULL, false);
    ref_register(&r, made);
    for (uint64_t b = 1; b <= 10; b++) {
        set_params(made, b);
        batch_end(&c, "exact3", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "exact3", made, &sn);
    expect_shadows(&sn, &r);

    /* Batch 11 held back by the test hook, emad killed in it. */
    set_params(made, 11);
    struct msg_event ev = {msg_str_c("exact3"), msg_str_c("batch_end"), {.batch = 11}, false, 0};
    rpc_send(&c, "event", &msg_event_desc, &ev);
    sleep_ms(300);
    rpc_close(&c);
    daemon_kill(&d);
    daemon_start_env(&d, exact, NULL);
    rpc_open(&c, &d, "test_profiles");
    register_profiles(&c, "exact3", made, p, NP, NULL, true);
    status_of(&c, "exact3", made, &after);
    for (size_t i = 0; i < NP; i++) {
        assert_int_equal(after.updates[i], sn.updates[i]);
        assert_int_equal(after.last_batch[i], sn.last_batch[i]);
    }
    expect_shadows(&after, &r); /* every profile's shadow back at batch 10, bit for bit */
    assert_true(file_contains(d.log, "cut short by the crash"));
    rpc_close(&c);
    daemon_stop(&d);
}

/* The C API: emac_register_profiles, each profile's shadow through emac_session_profile_data,
 * emac_swap_profile; and emactl show's profile lines. */
static void test_c_api_and_emactl_show(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result res;
    emac_session *s = NULL;
    static struct ref r;
    const struct emac_profile_info *pi;
    (void)state;

    struct emac_profile prof[NP];
    memset(prof, 0, sizeof(prof));
    prof[0] = (struct emac_profile){.name = "fast", .has_smoothing = true, .smoothing = 0.75,
                                    .update_interval = "2ba", .ema_start = "3ba"};
    prof[1] = (struct emac_profile){.name = "warm", .has_decay = true, .decay = 0.999,
                                    .has_min_decay = true, .min_decay = 0.1,
                                    .has_update_after_step = true, .update_after_step = 2,
                                    .has_inv_gamma = true, .inv_gamma = 1.0, .has_power = true,
                                    .power = 0.75};
    prof[2] = (struct emac_profile){.name = "p", .schedule = "power", .has_gamma = true,
                                    .gamma = 6.94, .update_interval = "3ba"};
    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    emac_client *c = client_connect(&d, "test_profiles");
    if (emac_register_profiles(c, "capi", made, prof, NP, "warm", NULL, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    ref_register(&r, made);
    assert_int_equal(emac_session_profiles(s, &pi), NP);
    assert_string_equal(pi[1].name, "warm");
    assert_true(pi[1].eval);
    assert_string_equal(pi[2].schedule, "power");
    for (uint64_t b = 1; b <= 7; b++) {
        set_params(made, b);
        event_at(s, "batch_end", b);
        ref_batch_end(&r, made, b);
    }
    for (size_t p = 0; p < NP; p++)
        for (size_t t = 0; t < NT; t++) {
            const void *data = emac_session_profile_data(s, p, t);
            assert_non_null(data);
            assert_memory_equal(data, r.shadow[p][t], specs[t].numel * 4);
        }
    assert_null(emac_session_profile_data(s, NP, 0));
    assert_int_equal(emac_swap_profile(s, "p", &res, &err), 0);
    expect_params_hold(made, &r, 2);
    assert_int_equal(emac_swap(s, "train", &res, &err), 0);
    assert_true(emac_swap_profile(s, "nope", &res, &err) < 0);
    assert_string_equal(err.code, "BADARG");

    char out[8192];
    char *argv[] = {(char *)emactl_bin(), "--socket", d.sock, "show", "capi", NULL};
    assert_int_equal(run_capture(argv, NULL, out, sizeof(out)), 0);
    expect_in(out, "profiles         fast (composer): update_interval 2ba ema_start 3ba "
              "smoothing 0.75; 2 updates, last at batch 6 with decay 0.75");
    expect_in(out, "warm (warmup, eval): update_interval 1ba decay 0.999 min_decay 0.1 "
              "inv_gamma 1 power 0.75 update_after_step 2; 7 updates, last at batch 7");
    expect_in(out, "p (power): update_interval 3ba gamma 6.94; 2 updates, last at batch 6");
    /* Each profile's own health line: fast updated at 4 and 6 from a shadow it had. */
    expect_in(out, "last at batch 6 with decay 0.75\n                   health: 2 updates "
              "checked, distance ");
    /* The C API has the settings too, defaults filled in. */
    const struct emac_profile_info *now;
    struct emac_status *st = NULL;
    assert_int_equal(emac_status(c, "capi", &st, &err), 0);
    assert_int_equal(emac_status_profiles(st, 0, &now), NP);
    assert_string_equal(now[1].config.schedule, "warmup");
    assert_true(now[1].config.has_inv_gamma && now[1].config.inv_gamma == 1.0);
    assert_true(now[2].config.has_gamma && now[2].config.gamma == 6.94);
    assert_int_equal(now[2].updates, 2);
    assert_true(now[2].has_last_decay);
    assert_true(now[2].has_health);
    assert_int_equal(now[2].health.updates_checked, 2);
    assert_true(now[2].health.has_distance && isfinite(now[2].health.distance));
    assert_int_equal(now[1].health.updates_checked, 7);
    emac_status_free(st);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* --crash-exact covers a session of one profile: its updates go through the redo records with
 * the profile's own decays, and match the reference bit for bit. */
static void test_crash_exact_updates_one_warmup_profile_exactly(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_profile prof[NP];
    struct rpc c;
    struct seen sn;
    static struct ref r;
    (void)state;

    daemon_start(&d, (const char *const[]){"--crash-exact", NULL});
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_profiles");
    pack_profiles(prof);
    register_profiles(&c, "exact", made, &prof[1], 1, NULL, false);
    ref_register(&r, made);
    for (uint64_t b = 1; b <= 6; b++) {
        set_params(made, b);
        batch_end(&c, "exact", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "exact", made, &sn);
    assert_int_equal(sn.nprofiles, 1);
    assert_int_equal(sn.updates[0], 6);
    /* The one profile's shadow is where the warm-up reference is. */
    int fd = shm_open(sn.shadow_shm, O_RDONLY, 0);
    assert_true(fd >= 0);
    void *m = mmap(NULL, sn.shadow_bytes, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(m != MAP_FAILED);
    for (size_t t = 0; t < NT; t++)
        assert_memory_equal((const char *)m + sn.offset[t], r.shadow[1][t], specs[t].numel * 4);
    munmap(m, sn.shadow_bytes);
    rpc_close(&c);
    daemon_stop(&d);
}


/* The RMS of (shadow before - param) over the finite elements, as health's distance. */
static double ref_distance(const struct ref *before, size_t p, const emac_segment *seg)
{
    double sum = 0;
    uint64_t n = 0;
    for (size_t t = 0; t < NT; t++)
        for (uint64_t i = 0; i < specs[t].numel; i++) {
            float x = param_at(seg, t, i);
            if (!isfinite(x))
                continue;
            double d = (double)before->shadow[p][t][i] - (double)x;
            sum += d * d;
            n++;
        }
    return sqrt(sum / (double)n);
}

/* ref_batch_end with on_nonfinite skip: every profile keeps its element where the param is
 * NaN (the element of w given). */
static void ref_batch_end_skip(struct ref *r, const emac_segment *seg, uint64_t b, uint64_t nan_at)
{
    float keep[NP];
    for (size_t p = 0; p < NP; p++)
        keep[p] = r->shadow[p][0][nan_at];
    ref_batch_end(r, seg, b);
    for (size_t p = 0; p < NP; p++)
        r->shadow[p][0][nan_at] = keep[p];
}

struct prof_health {
    bool has;
    uint64_t checked, noops;
    bool last_noop, has_distance;
    double distance;
    size_t nalarms;
    char alarm0[16];
};

static void health_of(struct rpc *c, const char *name, struct prof_health out[NP],
                      uint64_t *nonfinite_total, char *session_alarms, size_t len)
{
    struct msg_status req = {.has_session = true, .session = msg_str_c(name)};
    struct msg_status_reply rep;
    char why[256];

    const msgpack_object *res = rpc_call(c, "status", &msg_status_desc, &req);
    if (res == NULL)
        fail_msg("status: %s: %s", c->code, c->message);
    if (msg_decode(&msg_status_reply_desc, res, &rep, why, sizeof(why)) < 0)
        fail_msg("status reply: %s", why);
    const struct msg_session_state *s = &rep.sessions[0];
    assert_int_equal(s->nprofiles, NP);
    assert_true(s->has_health);
    *nonfinite_total = s->health.nonfinite_total;
    session_alarms[0] = '\0';
    for (size_t i = 0; i < s->health.nalarms; i++)
        snprintf(session_alarms + strlen(session_alarms), len - strlen(session_alarms), "%.*s,",
                 (int)s->health.alarms[i].len, s->health.alarms[i].ptr);
    for (size_t p = 0; p < NP; p++) {
        const struct msg_profile_state *ps = &s->profiles[p];
        memset(&out[p], 0, sizeof(out[p]));
        out[p].has = ps->has_health;
        out[p].checked = ps->health.updates_checked;
        out[p].noops = ps->health.noop_updates;
        out[p].last_noop = ps->health.last_update_noop;
        out[p].has_distance = ps->health.has_distance;
        out[p].distance = ps->health.distance;
        out[p].nalarms = ps->health.nalarms;
        if (ps->health.nalarms > 0)
            msg_str_copy(ps->health.alarms[0], out[p].alarm0, sizeof(out[p].alarm0));
    }
    msg_free(&msg_status_reply_desc, &rep);
}

static void expect_close(double got, double want)
{
    if (!(fabs(got - want) <= 1e-5 * fabs(want) + 1e-12))
        fail_msg("distance %.17g, expected %.17g", got, want);
}

static void test_every_profile_has_health_signals(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_profile prof[NP];
    struct rpc c;
    struct seen sn;
    struct prof_health ph[NP];
    static struct ref r, before;
    double dist[NP] = {0};
    uint64_t nonfinite;
    char alarms[128];
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", NULL});
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_profiles");
    pack_profiles(prof);
    register_profiles(&c, "health", made, prof, NP, NULL, false);
    ref_register(&r, made);

    /* Batch 1, then batch 2 with the same params: warm (decay 0 until batch 3) copies params
     * its shadow already holds, and is the only profile due: a no-op, for warm alone. */
    set_params(made, 1);
    batch_end(&c, "health", 1);
    ref_batch_end(&r, made, 1);
    batch_end(&c, "health", 2);
    ref_batch_end(&r, made, 2);
    health_of(&c, "health", ph, &nonfinite, alarms, sizeof(alarms));
    assert_true(ph[0].has && ph[1].has && ph[2].has);
    assert_int_equal(ph[0].checked, 0); /* fast has not started */
    assert_false(ph[0].has_distance);
    assert_int_equal(ph[1].checked, 2);
    assert_true(ph[1].last_noop);
    assert_int_equal(ph[1].noops, 1);
    assert_int_equal(ph[1].nalarms, 1);
    assert_string_equal(ph[1].alarm0, "noop");
    assert_int_equal(ph[2].checked, 0); /* p first updates at 3 */
    assert_non_null(strstr(alarms, "noop,"));

    /* Batches 3 to 9, a NaN in w at 7 (only warm is due) and at 9 (warm and p are due, fast,
     * the eval profile, is not): every due profile keeps its element, whichever is due. */
    for (uint64_t b = 3; b <= 9; b++) {
        set_params(made, b);
        before = r;
        uint64_t nan_at = b == 7 ? 5 : b == 9 ? 7 : UINT64_MAX;
        if (nan_at != UINT64_MAX) {
            ((float *)emac_segment_tensor(made, 0)->data)[nan_at] = NAN;
            ref_batch_end_skip(&r, made, b, nan_at);
        } else {
            ref_batch_end(&r, made, b);
        }
        batch_end(&c, "health", b);
        /* Each profile's distance at its last update with a shadow before it. */
        if (b >= 4 && b % 2 == 0)
            dist[0] = ref_distance(&before, 0, made);
        dist[1] = ref_distance(&before, 1, made);
        if (b % 3 == 0)
            dist[2] = ref_distance(&before, 2, made);
    }
    status_of(&c, "health", made, &sn);
    expect_shadows(&sn, &r);
    health_of(&c, "health", ph, &nonfinite, alarms, sizeof(alarms));
    assert_int_equal(nonfinite, 2);
    assert_int_equal(ph[0].checked, 3); /* 4, 6, 8 (3 started it) */
    assert_int_equal(ph[1].checked, 9);
    assert_int_equal(ph[2].checked, 3); /* 3, 6, 9 */
    for (size_t p = 0; p < NP; p++) {
        assert_true(ph[p].has_distance);
        expect_close(ph[p].distance, dist[p]);
        assert_false(ph[p].last_noop);
        assert_int_equal(ph[p].nalarms, 0);
    }
    assert_int_equal(ph[1].noops, 1);
    assert_non_null(strstr(alarms, "nonfinite,"));
    assert_null(strstr(alarms, "noop"));

    /* The metrics carry each profile's distance, labelled by session and profile. */
    char *text = NULL, want[128];
    emac_client *cl = NULL;
    assert_int_equal(emac_connect(d.sock, "test_profiles", &cl, &err), 0);
    assert_int_equal(emac_metrics(cl, &text, &err), 0);
    for (size_t p = 0; p < NP; p++) {
        snprintf(want, sizeof(want), "emad_session_profile_distance{session=\"%u:health\","
                 "profile=\"%s\"} ", (unsigned)getuid(), names[p]);
        if (strstr(text, want) == NULL)
            fail_msg("no \"%s\" in the metrics:\n%s", want, text);
    }
    snprintf(want, sizeof(want), "emad_session_profile_noop_updates_total{session=\"%u:health\","
             "profile=\"warm\"} 1\n", (unsigned)getuid());
    assert_non_null(strstr(text, want));
    free(text);
    emac_disconnect(cl);
    rpc_close(&c);
    daemon_stop(&d);
}

/* load with profile (docs/protocol.md "load"): a file of one shadow, saved from a plain f32
 * session whose params are the values wanted, becomes one profile's shadow with the state the
 * request gives; the others stay. Misuse is refused clearly. */
static void test_load_of_one_profile_from_a_single_shadow_file(void **state)
{
    static const struct emac_tensor_spec f32_specs[] = {
        {"w", "f32", 1031, NULL, 0},
        {"h", "f32", 515, NULL, 0},
    };
    struct daemon d;
    struct emac_error err;
    struct msg_profile p[NP];
    struct rpc c;
    struct seen sn;
    static struct ref r;
    emac_segment *tmp = NULL;
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(specs, NT, &made, &err), 0);
    set_params(made, 0);
    rpc_open(&c, &d, "test_profiles");
    pack_profiles(p);
    register_profiles(&c, "lp", made, p, NP, NULL, false);
    ref_register(&r, made);
    for (uint64_t b = 1; b <= 4; b++) {
        set_params(made, b);
        batch_end(&c, "lp", b);
        ref_batch_end(&r, made, b);
    }

    /* The values for profile "p": a plain f32 session of the same names, saved. */
    assert_int_equal(emac_segment_create(f32_specs, NT, &tmp, &err), 0);
    for (size_t t = 0; t < NT; t++) {
        float *x = emac_segment_tensor(tmp, t)->data;
        for (uint64_t i = 0; i < f32_specs[t].numel; i++) {
            x[i] = (float)i * 0.25f - 3.0f + (float)t;
            r.shadow[2][t][i] = x[i];
        }
    }
    struct msg_register reg;
    struct msg_tensor mt[NT];
    register_msg(&reg, mt, NT, "lp-tmp", tmp);
    call_ok(&c, "register", &msg_register_desc, &reg);
    struct msg_file f = {.session = msg_str_c("lp-tmp"), .has_name = true,
        .name = msg_str_c("lp-one")};
    call_ok(&c, "save", &msg_file_desc, &f);

    /* Misuse. */
    f.session = msg_str_c("lp");
    f.has_profile = true;
    f.profile = msg_str_c("p");
    call_fails(&c, "save", &msg_file_desc, &f, "BADARG", "profile: only load takes one");
    f.profile = msg_str_c("nope");
    call_fails(&c, "load", &msg_file_desc, &f, "BADARG", "no profile \"nope\"");
    f.has_profile = false;
    f.has_profile_state = true;
    call_fails(&c, "load", &msg_file_desc, &f, "BADARG", "profile_state: only with profile");
    struct msg_file all = {.session = msg_str_c("lp"), .has_name = true,
        .name = msg_str_c("lp-all")};
    call_ok(&c, "save", &msg_file_desc, &all);
    all.has_profile = true;
    all.profile = msg_str_c("p");
    call_fails(&c, "load", &msg_file_desc, &all, "STATE", "holds 3 EMA profiles");

    /* The load: p's shadow and state, the others untouched. */
    f.has_profile = true;
    f.profile = msg_str_c("p");
    f.profile_state = (struct msg_profile_set){true, 41, true, 3, true, 0.5};
    call_ok(&c, "load", &msg_file_desc, &f);
    status_of(&c, "lp", made, &sn);
    expect_shadows(&sn, &r);
    assert_int_equal(sn.updates[2], 41);
    assert_int_equal(sn.last_batch[2], 3);
    assert_int_equal(sn.updates[1], 4);
    /* Its schedule goes on from that state: the next power update at batch 6, D = 3. */
    r.last_power = 3;
    for (uint64_t b = 5; b <= 6; b++) {
        set_params(made, b);
        batch_end(&c, "lp", b);
        ref_batch_end(&r, made, b);
    }
    status_of(&c, "lp", made, &sn);
    expect_shadows(&sn, &r);
    assert_int_equal(sn.updates[2], 42);
    emac_segment_destroy(tmp);
    rpc_close(&c);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_profiles_update_swap_save_load_and_restart, teardown),
        cmocka_unit_test_teardown(test_eval_profile_chooses_what_eval_start_swaps_in, teardown),
        cmocka_unit_test_teardown(test_bad_profiles_are_refused, teardown),
        cmocka_unit_test_teardown(test_crash_exact_updates_several_profiles_exactly, teardown),
        cmocka_unit_test_teardown(test_c_api_and_emactl_show, teardown),
        cmocka_unit_test_teardown(test_crash_exact_updates_one_warmup_profile_exactly,
                                  teardown),
        cmocka_unit_test_teardown(test_every_profile_has_health_signals, teardown),
        cmocka_unit_test_teardown(test_load_of_one_profile_from_a_single_shadow_file,
                                  teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("profiles", tests, NULL, NULL);
}
