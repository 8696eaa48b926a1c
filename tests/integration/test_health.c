/*
 * test_health.c - the health signals end to end (docs/running.md "Health"): emad as a
 * subprocess, a trainer through libemaclient that writes NaN and Inf into its params, smoothing
 * 1, and a trainer that stops sending updates.
 *
 * The values of finite elements are checked bit for bit against the lerp computed here (as
 * test_engine.c does); skipped elements against the shadow before the update. No assertion on
 * time: the stall test waits for the flag with a generous bound.
 */
#include "harness.h"

#include "emaclient.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* What the tests made, for the teardown to remove even after a failure. */
static emac_segment *segs[4];
static char shadows[4][256];
static size_t nmade;

static int teardown(void **state)
{
    kill_leftovers(state);
    for (size_t i = 0; i < nmade; i++) {
        emac_segment_destroy(segs[i]);
        shm_unlink(shadows[i]);
    }
    nmade = 0;
    return 0;
}

#define OK(call)                                                                                   \
    do {                                                                                           \
        memset(&err, 0, sizeof(err));                                                              \
        int rc_ = (call);                                                                          \
        if (rc_ != 0)                                                                              \
            fail_msg("%s: rc %d, %s: %s", #call, rc_, err.code, err.message);                      \
    } while (0)

/* f32, bf16 and f64 with odd sizes (vector tails), and an integer tensor. */
static const struct emac_tensor_spec specs[] = {
    {"w", "f32", 1031, NULL, 0},
    {"h", "bf16", 515, NULL, 0},
    {"d", "f64", 259, NULL, 0},
    {"n", "i64", 1, NULL, 0},
};
#define NSPECS (sizeof(specs) / sizeof(specs[0]))

static void start(struct daemon *d, const char *extra)
{
    const char *args[] = {"--workers", "2", extra, NULL};
    daemon_start(d, args);
}

/* v in bf16, truncated: exact for the values used here (multiples of 1/64 below 2). */
static uint16_t bf16_of(float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    return (uint16_t)(u >> 16);
}

/* A segment of specs with ordinary values, registered as session name. */
static emac_session *setup(emac_client *c, const char *name, double smoothing,
                           const char *on_nonfinite, bool health)
{
    struct emac_error err;
    emac_session *s = NULL;
    struct emac_config cfg = {.has_smoothing = true, .smoothing = smoothing};
    struct emac_health_config hc = {on_nonfinite, !health, health};
    emac_segment *seg = NULL;

    assert_true(nmade < 4);
    OK(emac_segment_create(specs, NSPECS, &seg, &err));
    segs[nmade] = seg;
    shadows[nmade++][0] = '\0';
    for (size_t t = 0; t < NSPECS; t++) {
        const struct emac_tensor *x = emac_segment_tensor(seg, t);
        for (uint64_t i = 0; i < x->numel; i++) {
            double v = 0.25 + (double)((i * 37 + t * 11) % 97) / 64.0;
            if (t == 0)
                ((float *)x->data)[i] = (float)v;
            else if (t == 1)
                ((uint16_t *)x->data)[i] = bf16_of((float)v);
            else if (t == 2)
                ((double *)x->data)[i] = v;
            else
                ((int64_t *)x->data)[i] = 5;
        }
    }
    OK(emac_register_health(c, name, seg, &cfg, &hc, false, &s, &err));
    snprintf(shadows[nmade - 1], sizeof(shadows[0]), "%s", emac_session_state(s)->shadow_shm);
    return s;
}

/* Move every param a little, so that an update changes the shadow. */
static void step_params(emac_segment *seg, int k)
{
    const struct emac_tensor *w = emac_segment_tensor(seg, 0);
    const struct emac_tensor *d = emac_segment_tensor(seg, 2);
    for (uint64_t i = 0; i < w->numel; i++)
        ((float *)w->data)[i] += 0.125f * (float)k;
    for (uint64_t i = 0; i < d->numel; i++)
        ((double *)d->data)[i] += 0.125 * k;
}

static float bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* The shadow of tensor t, copied (f32 or f64 bytes). */
static void *shadow_copy(emac_session *s, size_t t)
{
    const struct emac_shadow *sh = emac_session_shadow(s, t);
    void *p = malloc(sh->numel * sh->elem_size);
    assert_non_null(p);
    memcpy(p, sh->data, sh->numel * sh->elem_size);
    return p;
}

/* After an update with smoothing 0.5 (w = 0.5: x + -0.5 * (x - s)): element i of tensor t is
 * the lerp of before and the param, or before itself where the param was not finite and the
 * policy is skip. */
static void expect_updated(emac_session *s, size_t t, const void *before, bool skip)
{
    const struct emac_tensor *x = emac_segment_tensor(emac_session_segment(s), t);
    const struct emac_shadow *sh = emac_session_shadow(s, t);
    for (uint64_t i = 0; i < x->numel; i++) {
        if (t == 2) {
            double p = ((const double *)x->data)[i], b = ((const double *)before)[i];
            double got = ((const double *)sh->data)[i];
            double want = skip && !isfinite(p) ? b : fma(-0.5, p - b, p);
            if (memcmp(&got, &want, 8) != 0 && !(isnan(got) && isnan(want)))
                fail_msg("d[%llu]: %a, want %a", (unsigned long long)i, got, want);
            continue;
        }
        float p =
            t == 0 ? ((const float *)x->data)[i] : bf16_to_f32(((const uint16_t *)x->data)[i]);
        float b = ((const float *)before)[i], got = ((const float *)sh->data)[i];
        float want = skip && !isfinite(p) ? b : fmaf(-0.5f, p - b, p);
        if (memcmp(&got, &want, 4) != 0 && !(isnan(got) && isnan(want)))
            fail_msg("%s[%llu]: %a, want %a", specs[t].name, (unsigned long long)i, got, want);
    }
}

/* status of the one session; *st to free. */
static const struct emac_health *health_of(emac_client *c, const char *name,
                                           struct emac_status **st)
{
    struct emac_error err;
    OK(emac_status(c, name, st, &err));
    assert_int_equal((*st)->nsessions, 1);
    const struct emac_health *h = emac_status_health(*st, 0);
    assert_non_null(h);
    assert_null(emac_status_health(*st, 1));
    return h;
}

static bool has_alarm(const struct emac_health *h, const char *name)
{
    for (size_t i = 0; i < h->nalarms; i++)
        if (strcmp(h->alarms[i], name) == 0)
            return true;
    return false;
}

/* The metrics text (the metrics request) holds the line "name{session="<uid>:session"} value". */
static void expect_metric(emac_client *c, const char *name, const char *session, const char *value)
{
    struct emac_error err;
    char *text = NULL;
    char line[256];

    OK(emac_metrics(c, &text, &err));
    snprintf(line, sizeof(line), "\n%s{session=\"%u:%s\"} %s\n", name, (unsigned)getuid(), session,
             value);
    if (strstr(text, line) == NULL)
        fail_msg("no line %s in the metrics:\n%s", line + 1, text);
    free(text);
}

/* No series name for that session in the metrics text. */
static void expect_no_metric(emac_client *c, const char *name, const char *session)
{
    struct emac_error err;
    char *text = NULL;
    char prefix[256];

    OK(emac_metrics(c, &text, &err));
    snprintf(prefix, sizeof(prefix), "\n%s{session=\"%u:%s\"}", name, (unsigned)getuid(), session);
    if (strstr(text, prefix) != NULL)
        fail_msg("%s in the metrics:\n%s", prefix + 1, text);
    free(text);
}

/* A trainer writes NaN and Inf into two tensors (in a vector, in the tail, at the start): the
 * reply and status name the first, the log too; those shadow elements keep their bits, every
 * other element is updated bit-exact; the next clean update clears the alarm. */
static void nonfinite_params_are_skipped_and_reported(const char *option)
{
    struct daemon d;
    struct emac_status *st;
    const char *tensor = "x";

    start(&d, option);
    emac_client *c = client_connect(&d, "test_health");
    emac_session *s = setup(c, "health", 0.5, NULL, true);
    event_at(s, "batch_end", 1); /* the start */
    step_params(emac_session_segment(s), 1);
    assert_int_equal(event_at(s, "batch_end", 2).action, EMAC_ACTION_UPDATE);
    assert_int_equal(emac_session_nonfinite(s, &tensor), 0);
    assert_null(tensor);
    const struct emac_health *h = health_of(c, "health", &st);
    assert_true(h->enabled);
    assert_string_equal(h->on_nonfinite, "skip");
    assert_int_equal(h->updates_checked, 1);
    assert_int_equal(h->nonfinite_total, 0);
    assert_false(h->has_last_nonfinite);
    assert_true(h->has_distance && isfinite(h->distance) && h->distance > 0);
    assert_int_equal(h->nalarms, 0);
    emac_status_free(st);

    step_params(emac_session_segment(s), 2);
    uint16_t *hp = emac_segment_tensor(emac_session_segment(s), 1)->data;
    double *dp = emac_segment_tensor(emac_session_segment(s), 2)->data;
    hp[3] = 0x7fc0;   /* NaN */
    hp[514] = 0xff80; /* -inf, in the tail */
    dp[0] = INFINITY;
    void *before[3] = {shadow_copy(s, 0), shadow_copy(s, 1), shadow_copy(s, 2)};
    struct emac_result r = event_at(s, "batch_end", 3);
    assert_int_equal(r.action, EMAC_ACTION_UPDATE);
    assert_int_equal(emac_session_nonfinite(s, &tensor), 3);
    assert_string_equal(tensor, "h");
    for (size_t t = 0; t < 3; t++)
        expect_updated(s, t, before[t], true);
    h = health_of(c, "health", &st);
    assert_int_equal(h->updates_checked, 2);
    assert_int_equal(h->nonfinite_total, 3);
    assert_int_equal(h->nonfinite_updates, 1);
    assert_true(h->has_last_nonfinite);
    assert_int_equal(h->last_nonfinite_count, 3);
    assert_int_equal(h->last_nonfinite_update, r.updates);
    assert_string_equal(h->last_nonfinite_tensor, "h");
    assert_true(h->has_distance && isfinite(h->distance));
    assert_true(has_alarm(h, "nonfinite"));
    assert_false(has_alarm(h, "poisoned"));
    emac_status_free(st);
    assert_true(file_contains(d.log, "3 non-finite param elements (NaN or Inf), the first in "
                                     "tensor \"h\""));

    /* emactl show, in words and in JSON. */
    char out[16384];
    char *show[] = {(char *)emactl_bin(), "--socket", d.sock, "show", "health", NULL};
    char *json[] = {(char *)emactl_bin(), "--socket", d.sock, "--json", "show", "health", NULL};
    assert_int_equal(run_capture(show, NULL, out, sizeof(out)), 0);
    expect_in(out, "alarms           nonfinite\n");
    expect_in(out, "non-finite       3 param elements in 1 updates; the last at update");
    expect_in(out, "the first in tensor \"h\"");
    assert_int_equal(run_capture(json, NULL, out, sizeof(out)), 0);
    expect_in(out, "\"alarms\": [\n      \"nonfinite\"\n    ]");
    expect_in(out, "\"nonfinite_total\": 3");
    expect_in(out, "\"tensor\": \"h\"");

    /* emactl top's row: the alarm and the distance. */
    char *top[] = {(char *)emactl_bin(), "--socket", d.sock, "top", NULL};
    assert_int_equal(run_capture(top, NULL, out, sizeof(out)), 0);
    const char *row = strstr(out, "\nhealth ");
    assert_non_null(row);
    size_t rowlen = strcspn(row + 1, "\n");
    assert_true(rowlen > 10 && strncmp(row + rowlen - 9, " nonfinite", 10) == 0);

    /* The metrics. */
    expect_metric(c, "emad_session_nonfinite_params_total", "health", "3");
    expect_metric(c, "emad_session_nonfinite_updates_total", "health", "1");
    expect_metric(c, "emad_session_last_update_nonfinite_params", "health", "3");
    expect_metric(c, "emad_session_last_update_noop", "health", "0");
    expect_metric(c, "emad_session_stalled", "health", "0");

    /* Clean params again: the alarm goes, the record of the last one stays. */
    hp[3] = hp[4];
    hp[514] = hp[513];
    dp[0] = dp[1];
    event_at(s, "batch_end", 4);
    assert_int_equal(emac_session_nonfinite(s, NULL), 0);
    expect_metric(c, "emad_session_last_update_nonfinite_params", "health", "0");
    expect_metric(c, "emad_session_nonfinite_params_total", "health", "3");
    h = health_of(c, "health", &st);
    assert_int_equal(h->nalarms, 0);
    assert_true(h->has_last_nonfinite);
    assert_int_equal(h->nonfinite_updates, 1);
    emac_status_free(st);
    for (size_t t = 0; t < 3; t++)
        free(before[t]);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_nonfinite_params_are_skipped_and_reported(void **state)
{
    (void)state;
    nonfinite_params_are_skipped_and_reported(NULL);
}

/* The same through the crash-exact path (the kernels save each old value as they go). */
static void test_nonfinite_params_are_skipped_with_crash_exact(void **state)
{
    (void)state;
    nonfinite_params_are_skipped_and_reported("--crash-exact");
}

/* on_nonfinite "apply": the NaN goes into the shadow, and the next update's distance is NaN:
 * the "poisoned" alarm. A policy that is neither gets BADARG naming the field. */
static void test_apply_policy_poisons_the_shadow(void **state)
{
    struct daemon d;
    struct emac_status *st;
    struct emac_error err;
    (void)state;

    start(&d, NULL);
    emac_client *c = client_connect(&d, "test_health");
    emac_session *bad = NULL;
    struct emac_health_config wrong = {"ignore", false, false};
    emac_segment *seg2 = NULL;
    OK(emac_segment_create(specs, NSPECS, &seg2, &err));
    segs[nmade] = seg2;
    shadows[nmade++][0] = '\0';
    assert_int_not_equal(emac_register_health(c, "wrong", seg2, NULL, &wrong, false, &bad, &err),
                         0);
    assert_string_equal(err.code, "BADARG");
    assert_non_null(strstr(err.message, "config.on_nonfinite"));

    emac_session *s = setup(c, "health", 0.5, "apply", true);
    event_at(s, "batch_end", 1);
    float *wp = emac_segment_tensor(emac_session_segment(s), 0)->data;
    wp[5] = NAN;
    void *before[3] = {shadow_copy(s, 0), shadow_copy(s, 1), shadow_copy(s, 2)};
    event_at(s, "batch_end", 2);
    for (size_t t = 0; t < 3; t++)
        expect_updated(s, t, before[t], false);
    assert_true(isnan(((const float *)emac_session_shadow(s, 0)->data)[5]));
    assert_int_equal(emac_session_nonfinite(s, NULL), 1);
    wp[5] = 1.0f;
    event_at(s, "batch_end", 3);
    const struct emac_health *h = health_of(c, "health", &st);
    assert_string_equal(h->on_nonfinite, "apply");
    assert_true(h->has_distance && isnan(h->distance));
    assert_true(has_alarm(h, "poisoned"));
    assert_false(has_alarm(h, "nonfinite"));
    emac_status_free(st);
    expect_metric(c, "emad_session_distance", "health", "NaN");
    for (size_t t = 0; t < 3; t++)
        free(before[t]);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* Smoothing 1 changes nothing: every update is a no-op, flagged and counted. With health
 * false nothing is computed. */
static void test_noop_updates_are_flagged(void **state)
{
    struct daemon d;
    struct emac_status *st;
    (void)state;

    start(&d, NULL);
    emac_client *c = client_connect(&d, "test_health");
    emac_session *s = setup(c, "health", 1.0, NULL, true);
    event_at(s, "batch_end", 1);
    for (int b = 2; b <= 4; b++) {
        step_params(emac_session_segment(s), b);
        assert_int_equal(event_at(s, "batch_end", (uint64_t)b).action, EMAC_ACTION_UPDATE);
    }
    const struct emac_health *h = health_of(c, "health", &st);
    assert_int_equal(h->updates_checked, 3);
    assert_int_equal(h->noop_updates, 3);
    assert_true(h->last_update_noop);
    assert_true(has_alarm(h, "noop"));
    assert_true(h->distance > 0);
    emac_status_free(st);
    expect_metric(c, "emad_session_noop_updates_total", "health", "3");
    expect_metric(c, "emad_session_last_update_noop", "health", "1");
    emac_session_free(s);

    s = setup(c, "off", 0.5, NULL, false);
    event_at(s, "batch_end", 1);
    event_at(s, "batch_end", 2);
    h = health_of(c, "off", &st);
    assert_false(h->enabled);
    assert_int_equal(h->updates_checked, 0);
    assert_false(h->has_distance);
    assert_int_equal(h->nalarms, 0);
    emac_status_free(st);
    expect_no_metric(c, "emad_session_distance", "off"); /* health false: no health series */
    expect_no_metric(c, "emad_session_noop_updates_total", "off");
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* Updates every 50 ms, then none: with --stall-factor 2 the session is stalled after about
 * 2 s (the floor), shown in status and logged; the next update clears it. */
static void test_stalled_session_is_flagged_and_cleared(void **state)
{
    struct daemon d;
    struct emac_status *st;
    (void)state;

    start(&d, "--stall-factor=2");
    emac_client *c = client_connect(&d, "test_health");
    emac_session *s = setup(c, "health", 0.5, NULL, true);
    event_at(s, "batch_end", 1);
    for (int b = 2; b <= 6; b++) {
        event_at(s, "batch_end", (uint64_t)b);
        sleep_ms(50);
    }
    const struct emac_health *h = health_of(c, "health", &st);
    assert_true(h->has_interval && h->interval > 0);
    emac_status_free(st);
    bool stalled = false;
    for (int i = 0; i < 300 && !stalled; i++) { /* up to 30 s; 2-3 s expected */
        sleep_ms(100);
        h = health_of(c, "health", &st);
        stalled = h->stalled && has_alarm(h, "stalled");
        emac_status_free(st);
    }
    assert_true(stalled);
    assert_true(file_contains(d.log, "session health: stalled: no update for"));
    expect_metric(c, "emad_session_stalled", "health", "1");
    event_at(s, "batch_end", 7);
    expect_metric(c, "emad_session_stalled", "health", "0");
    h = health_of(c, "health", &st);
    assert_false(h->stalled);
    assert_false(has_alarm(h, "stalled"));
    emac_status_free(st);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
#define TEST(f) cmocka_unit_test_teardown(f, teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_nonfinite_params_are_skipped_and_reported),
        TEST(test_nonfinite_params_are_skipped_with_crash_exact),
        TEST(test_apply_policy_poisons_the_shadow),
        TEST(test_noop_updates_are_flagged),
        TEST(test_stalled_session_is_flagged_and_cleared),
    };
#undef TEST
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("health", tests, NULL, NULL);
}
