/*
 * test_metrics.c - daemon/metrics.c: the counters and their exposition in
 * the Prometheus text format 0.0.4 (docs/running.md "Metrics"): the
 * format's rules, label escaping, cumulative histograms, and the
 * per-session series a peer other than root may see.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

static char *render(const struct metrics *m, const struct metrics_view *v, bool all, uid_t uid)
{
    struct metrics_text t = {0};

    assert_int_equal(metrics_render(m, v, all, uid, &t), 0);
    assert_non_null(t.data);
    assert_int_equal(strlen(t.data), t.len);
    return t.data;
}

/* The value of the sample line that starts with prefix (name and labels),
 * or -1 when there is none. */
static double value_of(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);

    for (const char *l = text; l != NULL && *l != '\0';
         l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
        if (strncmp(l, prefix, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    return -1;
}

static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;

    for (const char *p = strstr(text, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

static struct metrics_view two_users(struct metrics_session *s)
{
    struct metrics_view v;

    memset(&v, 0, sizeof(v));
    memset(s, 0, 2 * sizeof(*s));
    snprintf(s[0].label, sizeof(s[0].label), "1000:alice-run");
    s[0].uid = 1000;
    s[0].has_update = true;
    s[0].last_update_time = 1700000000.5;
    s[0].last_update_batch = 42;
    s[0].has_event = true;
    s[0].last_batch = 43;
    s[0].lag_batches = 2;
    s[0].queued = 3;
    s[0].shadow_bytes = 4096;
    snprintf(s[1].label, sizeof(s[1].label), "1001:bob-run");
    s[1].uid = 1001;
    s[1].shadow_bytes = 8192;
    v.session_list = s;
    v.nsessions = 2;
    v.sessions[METRICS_SESSION_ATTACHED] = 1;
    v.sessions[METRICS_SESSION_DETACHED] = 1;
    v.connections = 5;
    v.queued = 3;
    v.shadow_bytes = 12288;
    v.start_time = 1700000000;
    return v;
}

/* Every line is a comment (# HELP or # TYPE, HELP first) or a sample of
 * the family last typed: name[{labels}] value; counters end in _total. */
static void test_metrics_render_follows_the_format(void **state)
{
    struct metrics m;
    struct metrics_session s[2];
    struct metrics_view v = two_users(s);
    char family[128] = "", type[32] = "";
    (void)state;

    memset(&m, 0, sizeof(m));
    metrics_update(&m, 100, 0.002);
    char *text = render(&m, &v, true, 0);
    assert_true(text[strlen(text) - 1] == '\n');
    char *save = NULL;
    char *copy = strdup(text);
    for (char *l = strtok_r(copy, "\n", &save); l != NULL; l = strtok_r(NULL, "\n", &save)) {
        char name[128];
        if (strncmp(l, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(l + 7, "%127s", family), 1);
            type[0] = '\0';
            continue;
        }
        if (strncmp(l, "# TYPE ", 7) == 0) {
            assert_int_equal(sscanf(l + 7, "%127s %31s", name, type), 2);
            assert_string_equal(name, family); /* TYPE follows its HELP */
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            if (strcmp(type, "counter") == 0)
                assert_string_equal(family + strlen(family) - 6, "_total");
            continue;
        }
        assert_true(l[0] != '#');
        assert_true(type[0] != '\0'); /* no sample before its family's TYPE */
        size_t n = strcspn(l, "{ ");
        assert_true(n > 0);
        memcpy(name, l, n);
        name[n] = '\0';
        assert_memory_equal(name, "emad_", 5);
        for (size_t i = 0; i < n; i++)
            assert_true(isalnum((unsigned char)name[i]) || name[i] == '_');
        if (strcmp(type, "histogram") == 0) {
            size_t f = strlen(family);
            assert_memory_equal(name, family, f);
            assert_true(strcmp(name + f, "_bucket") == 0 || strcmp(name + f, "_sum") == 0 ||
                        strcmp(name + f, "_count") == 0);
        } else {
            assert_string_equal(name, family);
        }
        const char *val = strrchr(l, ' ');
        char *end;
        assert_non_null(val);
        strtod(val + 1, &end);
        assert_true(*end == '\0' && end != val + 1);
    }
    free(copy);
    assert_true(strstr(text, "emad_build_info{version=\"") != NULL);
    assert_true(value_of(text, "emad_connections") == 5);
    assert_true(value_of(text, "emad_sessions{state=\"attached\"}") == 1);
    assert_true(value_of(text, "emad_sessions{state=\"initialising\"}") == 0);
    assert_true(value_of(text, "emad_updates_total") == 1);
    assert_true(value_of(text, "emad_update_bytes_total") == 100);
    assert_true(value_of(text, "emad_shadow_bytes") == 12288);
    free(text);
}

static void test_metrics_label_values_are_escaped(void **state)
{
    struct metrics m;
    struct metrics_session s[2];
    struct metrics_view v = two_users(s);
    (void)state;

    memset(&m, 0, sizeof(m));
    snprintf(s[1].label, sizeof(s[1].label), "1001:a\"b\\c\nd");
    char *text = render(&m, &v, true, 0);
    assert_true(value_of(text, "emad_session_shadow_bytes{session=\"1001:a\\\"b\\\\c\\nd\"}") ==
                8192);
    /* No raw newline inside a label: every line still starts a sample or a comment. */
    assert_null(strstr(text, "\nd\""));

    struct metrics_text t = {0};
    assert_int_equal(metrics_text_label(&t, "x\\\"\n"), 0);
    assert_string_equal(t.data, "x\\\\\\\"\\n");
    metrics_text_free(&t);
    free(text);
}

static void test_metrics_histograms_are_cumulative_up_to_inf(void **state)
{
    struct metrics m;
    struct metrics_view v;
    const double seen[] = {0.000005, 0.00001, 0.0011, 0.3, 0.3, 20};
    double sum = 0;
    (void)state;

    memset(&m, 0, sizeof(m));
    memset(&v, 0, sizeof(v));
    for (size_t i = 0; i < sizeof(seen) / sizeof(seen[0]); i++) {
        metrics_update(&m, 1, seen[i]);
        sum += seen[i];
    }
    char *text = render(&m, &v, true, 0);
    /* le is an upper bound, inclusive. */
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"1e-05\"}") == 2);
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"0.001\"}") == 2);
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"0.0025\"}") == 3);
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"0.25\"}") == 3);
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"0.5\"}") == 5);
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"10\"}") == 5);
    assert_true(value_of(text, "emad_update_duration_seconds_bucket{le=\"+Inf\"}") == 6);
    assert_true(value_of(text, "emad_update_duration_seconds_count") == 6);
    assert_float_equal(value_of(text, "emad_update_duration_seconds_sum"), sum, 1e-12);
    assert_int_equal(count_lines_with(text, "emad_update_duration_seconds_bucket{"),
                     METRICS_BUCKETS + 1);
    /* Every bucket's count is at least the one before it. */
    double last = 0;
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        char key[128];
        snprintf(key, sizeof(key), "emad_update_duration_seconds_bucket{le=\"%g\"}",
                 metrics_bucket_bounds[i]);
        double c = value_of(text, key);
        assert_true(c >= last);
        last = c;
    }
    free(text);

    /* Labelled histograms: save and load apart; journals are not timed. */
    memset(&m, 0, sizeof(m));
    metrics_file(&m, METRICS_FILE_SAVE, true, 0.2);
    metrics_file(&m, METRICS_FILE_SAVE, false, 3);
    metrics_file(&m, METRICS_FILE_JOURNAL, true, 1);
    text = render(&m, &v, true, 0);
    assert_true(value_of(text, "emad_state_file_duration_seconds_count{operation=\"save\"}") == 2);
    assert_true(value_of(text, "emad_state_file_duration_seconds_bucket{operation=\"save\","
                               "le=\"0.25\"}") == 1);
    assert_true(value_of(text, "emad_state_file_duration_seconds_count{operation=\"load\"}") == 0);
    assert_true(value_of(text, "emad_state_file_operations_total{operation=\"save\","
                               "result=\"error\"}") == 1);
    assert_true(value_of(text, "emad_state_file_operations_total{operation=\"journal\","
                               "result=\"ok\"}") == 1);
    assert_null(strstr(text, "operation=\"journal\",le="));
    free(text);
}

/* Session names are their owners' data. */
static void test_metrics_per_session_series_of_one_uid(void **state)
{
    struct metrics m;
    struct metrics_session s[2];
    struct metrics_view v = two_users(s);
    (void)state;

    memset(&m, 0, sizeof(m));
    char *all = render(&m, &v, true, 0);
    char *alice = render(&m, &v, false, 1000);
    char *nobody = render(&m, &v, false, 4242);

    assert_true(strstr(all, "bob-run") != NULL);
    assert_true(strstr(all, "alice-run") != NULL);
    assert_null(strstr(alice, "bob-run"));
    assert_true(value_of(alice, "emad_session_lag_batches{session=\"1000:alice-run\"}") == 2);
    assert_true(value_of(alice, "emad_session_queued_operations{session=\"1000:alice-run\"}") == 3);
    assert_true(value_of(alice, "emad_session_batch{session=\"1000:alice-run\"}") == 43);
    assert_true(value_of(alice, "emad_session_last_update_batch{session=\"1000:alice-run\"}") ==
                42);
    assert_float_equal(
        value_of(alice, "emad_session_last_update_timestamp_seconds{session=\"1000:alice-run\"}"),
        1700000000.5, 1e-6);
    assert_null(strstr(nobody, "session=\""));
    /* The global series are everyone's: the totals stay. */
    assert_true(value_of(nobody, "emad_shadow_bytes") == 12288);
    /* A session without an update (or an event) has no such sample. */
    assert_null(strstr(all, "emad_session_last_update_timestamp_seconds{session=\"1001:bob-run\""));
    assert_null(strstr(all, "emad_session_batch{session=\"1001:bob-run\""));
    assert_true(value_of(all, "emad_session_shadow_bytes{session=\"1001:bob-run\"}") == 8192);
    free(all);
    free(alice);
    free(nobody);
}

static void test_metrics_counts_errors_swaps_and_registers(void **state)
{
    struct metrics m;
    struct metrics_view v;
    char key[64];
    (void)state;

    memset(&m, 0, sizeof(m));
    memset(&v, 0, sizeof(v));
    for (int i = 0; i < METRICS_NERRORS; i++)
        for (int k = 0; k <= i; k++)
            metrics_error(&m, metrics_error_codes[i]);
    metrics_error(&m, "NOSUCHCODE"); /* a bug: counted as INTERNAL */
    metrics_swap(&m, true, 10);
    metrics_swap(&m, true, 10);
    metrics_swap(&m, false, 10);
    metrics_register(&m, false);
    metrics_register(&m, true);
    metrics_register(&m, true);
    char *text = render(&m, &v, true, 0);
    for (int i = 0; i < METRICS_NERRORS; i++) {
        snprintf(key, sizeof(key), "emad_errors_total{code=\"%s\"}", metrics_error_codes[i]);
        assert_true(value_of(text, key) == i + 1 + (i == METRICS_NERRORS - 1));
    }
    assert_string_equal(metrics_error_codes[METRICS_NERRORS - 1], "INTERNAL");
    assert_true(value_of(text, "emad_swaps_total{direction=\"in\"}") == 2);
    assert_true(value_of(text, "emad_swaps_total{direction=\"out\"}") == 1);
    assert_true(value_of(text, "emad_swap_bytes_total") == 30);
    assert_true(value_of(text, "emad_registers_total") == 1);
    assert_true(value_of(text, "emad_resumes_total") == 2);
    free(text);

    /* Contexts without metrics (unit tests of other modules) record nothing. */
    metrics_update(NULL, 1, 1);
    metrics_error(NULL, "BADARG");
    metrics_file(NULL, METRICS_FILE_LOAD, true, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_render_follows_the_format),
        cmocka_unit_test(test_metrics_label_values_are_escaped),
        cmocka_unit_test(test_metrics_histograms_are_cumulative_up_to_inf),
        cmocka_unit_test(test_metrics_per_session_series_of_one_uid),
        cmocka_unit_test(test_metrics_counts_errors_swaps_and_registers),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
