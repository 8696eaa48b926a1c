/*
 * test_snapshot_client.c - the client side of snapshots (docs/protocol.md "Snapshots"):
 * emac_register_snapshots, emac_snapshot, emac_snapshots and emactl snapshot / snapshots,
 * against emad as a subprocess.
 */
#include "harness.h"

#include "emaclient.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

static emac_segment *made;

static int teardown(void **state)
{
    kill_leftovers(state);
    emac_segment_destroy(made);
    made = NULL;
    return 0;
}

/* Two power profiles (sigma_rel 0.05, 0.10) on one f32 tensor. */
static emac_session *register_two(emac_client *c, const char *name, const char *every)
{
    struct emac_tensor_spec spec = {"w", "f32", 1000, NULL, 0};
    struct emac_profile prof[2];
    struct emac_snapshot_config snap = {every, NULL, 0};
    struct emac_error err;
    emac_session *s = NULL;

    memset(prof, 0, sizeof(prof));
    prof[0] = (struct emac_profile){.name = "p05", .schedule = "power", .has_sigma_rel = true,
                                    .sigma_rel = 0.05};
    prof[1] = (struct emac_profile){.name = "p10", .schedule = "power", .has_sigma_rel = true,
                                    .sigma_rel = 0.10};
    assert_int_equal(emac_segment_create(&spec, 1, &made, &err), 0);
    float *p = emac_segment_tensor(made, 0)->data;
    for (int i = 0; i < 1000; i++)
        p[i] = (float)i;
    if (emac_register_snapshots(c, name, made, prof, 2, NULL, NULL, &snap, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    return s;
}

static size_t count(const struct emac_snapshot *l, size_t n, const char *profile, uint64_t batch)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += strcmp(l[i].profile, profile) == 0 && l[i].batch == batch;
    return k;
}

/* Wait until emad lists want files of session snapc (written off its queue). */
static void wait_files(emac_client *c, size_t want)
{
    struct emac_snapshot *l;
    struct emac_error err;
    size_t n;

    for (int tries = 0;; tries++) {
        assert_int_equal(emac_snapshots(c, "snapc", &l, &n, &err), 0);
        emac_snapshots_free(l);
        if (n == want)
            return;
        if (tries == 1000)
            fail_msg("%zu snapshot files after 10 s, want %zu", n, want);
        sleep_ms(10);
    }
}

static void test_snapshot_and_snapshots_list_the_files_written(void **state)
{
    struct emac_snapshot *l = NULL;
    struct emac_error err;
    struct daemon d;
    struct stat st;
    size_t n = 0;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_snapshot_client");
    emac_session *s = register_two(c, "snapc", "2ba");

    /* Nothing has updated: nothing to snapshot, nothing listed. */
    assert_true(emac_snapshot(s, &l, &n, &err) < 0);
    assert_string_equal(err.code, "STATE");
    assert_null(l);
    assert_int_equal(emac_snapshots(c, "snapc", &l, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(l);

    for (uint64_t b = 1; b <= 5; b++)
        event_at(s, "batch_end", b);
    /* Those of batches 2 and 4 are written off the session's queue: wait for them, since a
     * request while two are pending is skipped (the disk is too slow). */
    wait_files(c, 4);
    /* On request at batch 5: one file per power profile, as the reply lists it. */
    if (emac_snapshot(s, &l, &n, &err) < 0)
        fail_msg("snapshot: %s: %s", err.code, err.message);
    assert_int_equal(n, 2);
    assert_int_equal(count(l, n, "p05", 5), 1);
    assert_int_equal(count(l, n, "p10", 5), 1);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(l[i].dtype, "f32");
        assert_int_equal(stat(l[i].file, &st), 0);
        assert_int_equal((uint64_t)st.st_size, l[i].bytes);
        assert_true(l[i].bytes > 4000);
    }
    emac_snapshots_free(l);

    /* Every 2 batches (2 and 4) plus the one on request. */
    assert_int_equal(emac_snapshots(c, "snapc", &l, &n, &err), 0);
    assert_int_equal(n, 6);
    for (uint64_t b = 2; b <= 5; b++) {
        size_t want = b == 3 ? 0 : 1;
        assert_int_equal(count(l, n, "p05", b), want);
        assert_int_equal(count(l, n, "p10", b), want);
    }
    /* By profile, then batch. */
    assert_string_equal(l[0].profile, "p05");
    assert_int_equal(l[0].batch, 2);
    assert_string_equal(l[5].profile, "p10");
    assert_int_equal(l[5].batch, 5);

    /* emactl lists the same files, as text and as JSON. */
    char out[16384], expect[4200];
    char *text[] = {(char *)emactl_bin(), "--socket", d.sock, "snapshots", "snapc", NULL};
    assert_int_equal(run_capture(text, NULL, out, sizeof(out)), 0);
    expect_in(out, "PROFILE  BATCH  DTYPE");
    snprintf(expect, sizeof(expect), "%s\n", l[0].file);
    expect_in(out, "%s", expect);
    char *json[] = {(char *)emactl_bin(), "--socket", d.sock, "--json", "snapshots", "snapc", NULL};
    assert_int_equal(run_capture(json, NULL, out, sizeof(out)), 0);
    expect_in(out, "\"file\": \"%s\"", l[5].file);
    expect_in(out, "\"profile\": \"p10\"");
    expect_in(out, "\"bytes\": %llu", (unsigned long long)l[5].bytes);
    emac_snapshots_free(l);

    /* emactl snapshot takes one more at the session's batch. */
    event_at(s, "batch_end", 6);
    wait_files(c, 8);
    event_at(s, "batch_end", 7);
    char *take[] = {(char *)emactl_bin(), "--socket", d.sock, "--json", "snapshot", "snapc", NULL};
    assert_int_equal(run_capture(take, NULL, out, sizeof(out)), 0);
    expect_in(out, "\"batch\": 7");
    char *none[] = {(char *)emactl_bin(), "--socket", d.sock, "snapshot", "nosuch", NULL};
    assert_int_equal(run_capture(none, NULL, out, sizeof(out)), 1);
    expect_in(out, "emactl: NOSESSION: snapshot:");

    /* A closed session's files are still listed. */
    assert_int_equal(emac_close(s, false, &err), 0);
    assert_int_equal(emac_snapshots(c, "snapc", &l, &n, &err), 0);
    assert_int_equal(n, 10); /* 2, 4, 5, 6 (every 2ba) and 7 */
    emac_snapshots_free(l);
    emac_snapshot(s, &l, &n, &err); /* a closed handle: refused here */
    assert_string_equal(err.code, "USAGE");
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_snapshot_and_snapshots_list_the_files_written, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("snapshot_client", tests, NULL, NULL);
}
