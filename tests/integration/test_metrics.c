/*
 * test_metrics.c - emad's metrics (docs/running.md "Metrics") as a client,
 * an operator and Prometheus read them: the metrics request counts what
 * was done and shows a peer other than root its own sessions only.
 */
#include "emaclient.h"
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define N 4096

static int teardown(void **state)
{
    return teardown_seg_left(state);
}

/* The value of the sample whose name and labels are series, or -1 when
 * text has no such sample. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);

    for (const char *l = text; l != NULL && *l != '\0';) {
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
        l = strchr(l, '\n');
        if (l != NULL)
            l++;
    }
    return -1;
}

static char *metrics_of(emac_client *c)
{
    struct emac_error err;
    char *text = NULL;

    if (emac_metrics(c, &text, &err) < 0)
        fail_msg("metrics: %s: %s", err.code, err.message);
    assert_non_null(text);
    return text;
}

static emac_session *session_ok(emac_client *c, const char *name, emac_segment **seg)
{
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_config cfg = {"1ba", false, 0, NULL, NULL};
    struct emac_error err;
    emac_session *s = NULL;

    assert_int_equal(emac_segment_create(&spec, 1, seg, &err), 0);
    if (emac_register(c, name, *seg, &cfg, false, &s, &err) < 0)
        fail_msg("register %s: %s: %s", name, err.code, err.message);
    return s;
}

/* promtool (Debian's prometheus package) agrees that text is a valid
 * exposition; skipped where it is not installed. */
static void promtool_accepts(const struct daemon *d, const char *text)
{
    char path[200], out[8192];
    FILE *f;

    if (access("/usr/bin/promtool", X_OK) != 0) {
        print_message("promtool not installed (apt-get install prometheus): format not checked "
                      "by it\n");
        return;
    }
    snprintf(path, sizeof(path), "%s/metrics.txt", d->dir);
    assert_non_null(f = fopen(path, "w"));
    fputs(text, f);
    fclose(f);
    char *argv[] = {"sh", "-c", "exec promtool check metrics < \"$0\"", path, NULL};
    int status = run_capture(argv, NULL, out, sizeof(out));
    if (status != 0)
        fail_msg("promtool check metrics failed (%d):\n%s", status, out);
}

/* Updates, swaps, saves and errors are counted as they happen. */
static void test_metrics_count_what_was_done(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_file file;
    struct emac_status *st;
    char series[256];
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_metrics");
    char *text = metrics_of(c);
    assert_true(sample(text, "emad_updates_total") == 0);
    assert_true(sample(text, "emad_errors_total{code=\"NOSESSION\"}") == 0);
    assert_true(sample(text, "emad_connections") == 1);
    assert_non_null(strstr(text, "emad_build_info{version=\""));
    free(text);

    emac_session *s = session_ok(c, "counted", &seg_left);
    for (uint64_t b = 1; b <= 5; b++)
        r = event_at(s, "batch_end", b);
    assert_true(r.updates > 0);
    assert_int_equal(emac_swap(s, "ema", &r, &err), 0);
    assert_int_equal(emac_swap(s, "train", &r, &err), 0);
    assert_int_equal(emac_save(c, "counted", "m1", &file, &err), 0);
    /* Errors: two NOSESSION, one STATE (drop of an attached session). */
    assert_int_equal(emac_status(c, "nosuch", &st, &err), -EREMOTEIO);
    assert_int_equal(emac_drop(c, "nosuch", &err), -EREMOTEIO);
    assert_int_equal(emac_drop(c, "counted", &err), -EREMOTEIO);
    assert_string_equal(err.code, "STATE");

    text = metrics_of(c);
    assert_true(sample(text, "emad_updates_total") == (double)r.updates);
    assert_true(sample(text, "emad_update_duration_seconds_count") == (double)r.updates);
    assert_true(sample(text, "emad_update_duration_seconds_bucket{le=\"+Inf\"}") ==
                (double)r.updates);
    assert_true(sample(text, "emad_update_bytes_total") == (double)r.updates * N * 4);
    assert_true(sample(text, "emad_swaps_total{direction=\"in\"}") == 1);
    assert_true(sample(text, "emad_swaps_total{direction=\"out\"}") == 1);
    assert_true(sample(text, "emad_registers_total") == 1);
    assert_true(sample(text, "emad_errors_total{code=\"NOSESSION\"}") == 2);
    assert_true(sample(text, "emad_errors_total{code=\"STATE\"}") == 1);
    assert_true(sample(text, "emad_errors_total{code=\"BADARG\"}") == 0);
    assert_true(
        sample(text, "emad_state_file_operations_total{operation=\"save\",result=\"ok\"}") == 1);
    assert_true(sample(text, "emad_state_file_duration_seconds_count{operation=\"save\"}") == 1);
    assert_true(sample(text, "emad_sessions{state=\"attached\"}") == 1);
    snprintf(series, sizeof(series), "emad_session_last_update_batch{session=\"%u:counted\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 5);
    snprintf(series, sizeof(series), "emad_session_lag_batches{session=\"%u:counted\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 0);
    snprintf(series, sizeof(series), "emad_session_shadow_bytes{session=\"%u:counted\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == (double)emac_session_state(s)->shadow_bytes);
    promtool_accepts(&d, text);
    free(text);

    /* A resume is counted as one. */
    assert_int_equal(emac_close(s, true, &err), 0);
    emac_session_free(s);
    struct emac_config cfg = {"1ba", false, 0, NULL, NULL};
    assert_int_equal(emac_register(c, "counted", seg_left, &cfg, true, &s, &err), 0);
    text = metrics_of(c);
    assert_true(sample(text, "emad_resumes_total") == 1);
    assert_true(sample(text, "emad_registers_total") == 1);
    free(text);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* As another uid (run_as_uid()): register "theirs", ask for the metrics:
 * its own session's series, none of root's. */
static void other_uid_metrics(const void *sock, struct verdict *v)
{
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_error err;
    emac_client *c = NULL;
    emac_segment *seg = NULL;
    emac_session *s = NULL;
    char *text = NULL;

    CHILD_CHECK(v, emac_connect(sock, "other uid", &c, &err) == 0, "connect: %s", err.message);
    CHILD_CHECK(v, emac_segment_create(&spec, 1, &seg, &err) == 0, "segment: %s", err.message);
    CHILD_CHECK(v, emac_register(c, "theirs", seg, NULL, false, &s, &err) == 0, "register: %s: %s",
                err.code, err.message);
    CHILD_CHECK(v, emac_metrics(c, &text, &err) == 0, "metrics: %s: %s", err.code, err.message);
    CHILD_CHECK(v, strstr(text, "session=\"65534:theirs\"") != NULL,
                "its own session's series are missing:\n%.4000s", text);
    CHILD_CHECK(v, strstr(text, "roots-secret") == NULL, "root's session is shown to it:\n%.4000s",
                text);
    CHILD_CHECK(v, sample(text, "emad_sessions{state=\"attached\"}") == 2,
                "the global series do not count every session:\n%.4000s", text);
    CHILD_CHECK(v, emac_close(s, false, &err) == 0, "close: %s", err.message);
out:
    free(text);
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
}

/* Session names are their owners' data: through the socket, a peer other
 * than root sees the per-session series of its own sessions only; root
 * sees every session's. */
static void test_metrics_show_other_uids_their_own_sessions_only(void **state)
{
    struct daemon d;
    (void)state;

    if (geteuid() != 0)
        skip();
    daemon_start_open(&d, "nogroup");
    emac_client *c = client_connect(&d, "test_metrics");
    emac_session *s = session_ok(c, "roots-secret", &seg_left);
    run_as_uid(65534, 65534, other_uid_metrics, d.sock);
    char *text = metrics_of(c);
    assert_true(sample(text, "emad_session_shadow_bytes{session=\"0:roots-secret\"}") ==
                (double)emac_session_state(s)->shadow_bytes);
    /* theirs was closed: gone from root's view too. */
    assert_null(strstr(text, "65534:theirs"));
    free(text);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_metrics_count_what_was_done, teardown),
        cmocka_unit_test_teardown(test_metrics_show_other_uids_their_own_sessions_only, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
