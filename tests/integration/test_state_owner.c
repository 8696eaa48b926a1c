/*
 * test_state_owner.c - state files belong to the uid that saved them (issue #10): a user's
 * save and load reach only <state dir>/users/<uid>/, a file that records another uid is
 * refused, and no error shows another user's data. Another uid is played by a child that
 * drops root to nobody (65534) and speaks to emad through libemaclient; emad admits it with
 * --allow-group nogroup, as test_hostile.c does. Runs as root only (skipped otherwise).
 * Also: each uid's state files are bounded in number and bytes (--max-state-files-per-uid,
 * --max-state-bytes-per-uid), a save over either getting LIMIT; that one runs as any user.
 * Harness: harness.h.
 */
#include "emaclient.h"
#include "harness.h"

#include <errno.h>
#include <dirent.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define NOBODY 65534 /* Debian's nobody, whose primary group is nogroup (65534) */
#define N 4096

/* A session of one f32 tensor named tensor, every element a function of step. */
static emac_session *session_ok(emac_client *c, const char *name, const char *tensor,
                                emac_segment **seg, float step)
{
    struct emac_tensor_spec spec = {tensor, "f32", N, NULL, 0};
    struct emac_error err;
    emac_session *s = NULL;

    assert_int_equal(emac_segment_create(&spec, 1, seg, &err), 0);
    float *w = emac_segment_tensor(*seg, 0)->data;
    for (size_t i = 0; i < N; i++)
        w[i] = (float)i + step;
    if (emac_register(c, name, *seg, NULL, false, &s, &err) < 0)
        fail_msg("register %s: %s: %s", name, err.code, err.message);
    return s;
}

/* ---- the other user ---- */

/* Whether text holds none of the words (a NULL-terminated list). */
static bool shows_none(const char *text, const char *const words[])
{
    for (size_t i = 0; words[i] != NULL; i++)
        if (strstr(text, words[i]) != NULL)
            return false;
    return true;
}

/* Run fn(d, verdict) as the other user, nobody (uid and gid 65534, no supplementary groups);
 * fail the test with the child's verdict unless every check of fn held. */
static void run_as_nobody(const struct daemon *d, void (*fn)(const void *d, struct verdict *v))
{
    run_as_uid(NOBODY, NOBODY, fn, d);
}

/* In the child: connect as "thief" and register session name, of one f32 tensor "w" of N; false
 * (and the verdict says why) if it cannot. What it made is in *c, *seg, *s for the caller to
 * free. */
static bool thief_session(const char *sock, const char *name, emac_client **c,
                          emac_segment **seg, emac_session **s, struct verdict *v)
{
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_error err;

    CHILD_CHECK(v, emac_connect(sock, "thief", c, &err) == 0, "connect: %s: %s", err.code,
                err.message);
    CHILD_CHECK(v, emac_segment_create(&spec, 1, seg, &err) == 0, "segment: %s", err.message);
    CHILD_CHECK(v, emac_register(*c, name, *seg, NULL, false, s, &err) == 0,
                "register: %s: %s", err.code, err.message);
out:
    return v->line == 0;
}

/* Words of root's session that no error to another user may show. */
static const char *const roots_data[] = {"victim", "secret.weight", "users/0", NULL};

/*
 * The other user has a session like root's. Loading root's "snap" finds no file (its own
 * directory has none); loading "named", root's file of another tensor table, does not show
 * that table. Saving "snap" makes its own file, in its own directory, which it loads back.
 */
static void thief(const void *arg, struct verdict *v)
{
    const struct daemon *d = arg;
    struct emac_error err;
    struct emac_file f;
    emac_client *c = NULL;
    emac_session *s = NULL;
    emac_segment *seg = NULL;
    struct emac_result r;
    struct emac_time t = {1, 0, false, 0};
    char want[PATH_MAX];
    int rc;

    if (!thief_session(d->sock, "thief", &c, &seg, &s, v))
        goto out;
    CHILD_CHECK(v, emac_event(s, "batch_end", &t, &r, &err) == 0, "batch_end: %s", err.message);

    rc = emac_load(c, "thief", "snap", &f, &err);
    CHILD_CHECK(v, rc != 0, "loaded root's file %s into its own session", f.path);
    CHILD_CHECK(v, shows_none(err.message, roots_data), "the error shows root's data: %s: %s",
                err.code, err.message);
    snprintf(want, sizeof(want), "%s/users/%d/snap.emastate", d->state, NOBODY);
    CHILD_CHECK(v, strstr(err.message, want) != NULL && strcmp(err.code, "IO") == 0,
                "the error should say that %s does not exist: %s: %s", want, err.code,
                err.message);

    rc = emac_load(c, "thief", "named", &f, &err);
    CHILD_CHECK(v, rc != 0, "loaded root's file %s of another table", f.path);
    CHILD_CHECK(v, shows_none(err.message, roots_data), "the error shows root's data: %s: %s",
                err.code, err.message);

    CHILD_CHECK(v, emac_save(c, "thief", "snap", &f, &err) == 0, "save: %s: %s", err.code,
                err.message);
    CHILD_CHECK(v, strcmp(f.path, want) == 0, "saved to %s, not %s", f.path, want);
    CHILD_CHECK(v, emac_load(c, "thief", "snap", &f, &err) == 0, "load of its own: %s: %s",
                err.code, err.message);
    CHILD_CHECK(v, strcmp(f.path, want) == 0, "loaded %s, not %s", f.path, want);
    CHILD_CHECK(v, emac_close(s, false, &err) == 0, "close: %s", err.message);
out:
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg);
}

/*
 * Files that are not the other user's own but that it can name: "legacy", root's, in the state
 * directory itself where older emads saved every user's files, and "mine", root's, that an
 * administrator copied into its directory. Both are refused, and say nothing of root's.
 */
static void thief_of_moved_files(const void *arg, struct verdict *v)
{
    const struct daemon *d = arg;
    static const char *const names[] = {"legacy", "mine"};
    struct emac_error err;
    struct emac_file f;
    emac_client *c = NULL;
    emac_session *s = NULL;
    emac_segment *seg = NULL;
    int rc;

    if (!thief_session(d->sock, "thief2", &c, &seg, &s, v))
        goto out;
    for (size_t i = 0; i < 2; i++) {
        rc = emac_load(c, "thief2", names[i], &f, &err);
        CHILD_CHECK(v, rc != 0, "loaded root's file %s", f.path);
        CHILD_CHECK(v, strcmp(err.code, "PERM") == 0 &&
                           strstr(err.message, "was not saved from a session of yours") != NULL,
                    "%s: the refusal should say whose the file is not: %s: %s", names[i],
                    err.code, err.message);
        CHILD_CHECK(v, shows_none(err.message, roots_data), "the error shows root's data: %s",
                    err.message);
    }
    CHILD_CHECK(v, emac_close(s, false, &err) == 0, "close: %s", err.message);
out:
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg);
}

/* ---- the tests ---- */

static void copy_file(const char *from, const char *to)
{
    char cmd[2 * PATH_MAX + 16];

    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", from, to);
    assert_int_equal(system(cmd), 0);
}

/*
 * Root saves "snap" and "named"; another user can neither load them nor learn anything of them
 * from the errors, and its own "snap" goes to its own directory; root's "snap" is still root's
 * and loads back the shadow root saved. A file of root's in the state directory itself (as an
 * older emad saved it) loads for root and is refused to the other user, as is a file of root's
 * copied into the other user's directory; and a file of the other user's copied into root's is
 * refused to root's session.
 */
static void test_state_files_belong_to_the_uid_that_saved_them(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    emac_segment *named_seg = NULL;
    char path[PATH_MAX], to[PATH_MAX];
    (void)state;

    if (geteuid() != 0)
        skip();
    daemon_start_open(&d, "nogroup");
    emac_client *c = client_connect(&d, "test_state_owner");
    emac_session *s = session_ok(c, "victim", "w", &seg_left, 1);
    assert_int_equal(event_at(s, "batch_end", 1).updates, 1);
    if (emac_save(c, "victim", "snap", &f, &err) < 0)
        fail_msg("save: %s: %s", err.code, err.message);
    snprintf(path, sizeof(path), "%s/users/0/snap.emastate", d.state);
    assert_string_equal(f.path, path);
    const struct emac_shadow *sh = emac_session_shadow(s, 0);
    float *saved = malloc(N * sizeof(float));
    assert_non_null(saved);
    memcpy(saved, sh->data, N * sizeof(float));
    emac_session *named = session_ok(c, "victim-named", "secret.weight", &named_seg, 2);
    assert_int_equal(emac_save(c, "victim-named", "named", &f, &err), 0);
    assert_int_equal(emac_close(named, false, &err), 0);
    emac_session_free(named);
    emac_segment_destroy(named_seg);

    run_as_nobody(&d, thief);

    /* Root's file is root's still. */
    float *w = emac_segment_tensor(seg_left, 0)->data;
    w[0] = 1000.0f;
    assert_int_equal(event_at(s, "batch_end", 2).updates, 2);
    assert_int_equal(emac_load(c, "victim", "snap", &f, &err), 0);
    assert_string_equal(f.path, path);
    assert_memory_equal(sh->data, saved, N * sizeof(float));

    /* Files that moved: root's into the state directory itself and into nobody's directory,
     * nobody's into root's. */
    snprintf(to, sizeof(to), "%s/legacy.emastate", d.state);
    copy_file(path, to);
    snprintf(to, sizeof(to), "%s/users/%d/mine.emastate", d.state, NOBODY);
    copy_file(path, to);
    run_as_nobody(&d, thief_of_moved_files);
    assert_int_equal(emac_load(c, "victim", "legacy", &f, &err), 0);
    snprintf(to, sizeof(to), "%s/legacy.emastate", d.state);
    assert_string_equal(f.path, to);
    snprintf(path, sizeof(path), "%s/users/%d/snap.emastate", d.state, NOBODY);
    snprintf(to, sizeof(to), "%s/users/0/theirs.emastate", d.state);
    copy_file(path, to);
    assert_int_equal(emac_load(c, "victim", "theirs", &f, &err), -EREMOTEIO);
    assert_string_equal(err.code, "PERM");
    assert_non_null(strstr(err.message, "was not saved from a session of yours"));
    assert_memory_equal(sh->data, saved, N * sizeof(float));

    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    free(saved);
    daemon_stop(&d);
}

/* emad refuses to start on a state directory that others may write, saying which and how to
 * fix it; once fixed, it starts. */
static void test_world_writable_state_dir_is_refused_at_start(void **state)
{
    struct daemon d;
    char err_path[160], mode[16], fix[200];
    (void)state;

    make_dir(&d);
    assert_int_equal(mkdir(d.state, 0700), 0);
    assert_int_equal(chmod(d.state, 01777), 0);
    char *argv[] = {(char *)emad_bin(), "--socket", d.sock, "--state-dir", d.state,
                    "--log-file", d.log, NULL};
    snprintf(err_path, sizeof(err_path), "%s/emad.stderr", d.dir);
    d.pid = spawn(argv, NULL, -1, -1);
    int status = wait_exit(d.pid);
    d.pid = 0;
    assert_int_not_equal(status, 0);
    snprintf(mode, sizeof(mode), "mode 1777");
    snprintf(fix, sizeof(fix), "chmod go-w %s", d.state);
    if (!file_contains(d.log, d.state) || !file_contains(d.log, mode) ||
        !file_contains(d.log, fix))
        fail_msg("emad's log should name %s, its %s and the fix \"%s\"", d.state, mode, fix);
    assert_false(file_contains(d.log, "listening"));

    assert_int_equal(chmod(d.state, 0700), 0);
    daemon_start_env(&d, NULL, NULL);
    daemon_stop(&d);
}

/* Entries of dir other than "." and "..". */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

/* Save session's shadow as name: refused with LIMIT naming option and the user's directory
 * udir, and nothing in udir changed: still the files a1 and a2, byte for byte. */
static void save_refused(emac_client *c, const char *session, const char *name,
                         const char *option, const char *udir, unsigned char *const before[2],
                         const size_t before_len[2])
{
    struct emac_error err;
    struct emac_file f;
    char path[PATH_MAX + 32];

    assert_int_equal(emac_save(c, session, name, &f, &err), -EREMOTEIO);
    if (strcmp(err.code, "LIMIT") != 0 || strstr(err.message, option) == NULL ||
        strstr(err.message, udir) == NULL ||
        strstr(err.message, "no request deletes a state file") == NULL)
        fail_msg("save %s: expected LIMIT naming %s, %s and how to free room: %s: %s", name,
                 option, udir, err.code, err.message);
    assert_int_equal(entries(udir), 2);
    for (int i = 0; i < 2; i++) {
        size_t len;
        snprintf(path, sizeof(path), "%s/a%d.emastate", udir, i + 1);
        unsigned char *now = slurp(path, &len);
        assert_int_equal(len, before_len[i]);
        assert_memory_equal(now, before[i], len);
        free(now);
    }
}

/*
 * With emad started with extra (a quota) and option the limit that the third file passes: a
 * user's saves "a1" and "a2" go through, "a3" is refused with LIMIT and nothing changes; a save
 * over "a2" still goes through (it frees what it takes) and "a3" is still refused; "a1" loads.
 * The test's own uid plays the user. Returns the size of a file.
 */
static size_t third_save_refused(const char *const extra[], const char *option)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    unsigned char *before[2];
    size_t before_len[2], size;
    char udir[PATH_MAX - 32];

    daemon_start(&d, extra);
    emac_client *c = client_connect(&d, "test_state_owner");
    emac_session *s = session_ok(c, "saver", "w", &seg_left, 1);
    assert_int_equal(event_at(s, "batch_end", 1).updates, 1);
    snprintf(udir, sizeof(udir), "%s/users/%lu", d.state, (unsigned long)geteuid());
    for (int i = 0; i < 2; i++) {
        char name[8];
        snprintf(name, sizeof(name), "a%d", i + 1);
        if (emac_save(c, "saver", name, &f, &err) < 0)
            fail_msg("save %s: %s: %s", name, err.code, err.message);
        before[i] = slurp(f.path, &before_len[i]);
        assert_int_equal(before_len[i], f.bytes);
    }
    assert_int_equal(event_at(s, "batch_end", 2).updates, 2);

    save_refused(c, "saver", "a3", option, udir, before, before_len);
    /* Over an existing name: it changes a2, which becomes the reference. */
    if (emac_save(c, "saver", "a2", &f, &err) < 0)
        fail_msg("save over a2: %s: %s", err.code, err.message);
    free(before[1]);
    before[1] = slurp(f.path, &before_len[1]);
    save_refused(c, "saver", "a3", option, udir, before, before_len);
    if (emac_load(c, "saver", "a1", &f, &err) < 0)
        fail_msg("load a1: %s: %s", err.code, err.message);

    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg_left);
    seg_left = NULL;
    daemon_stop(&d);
    size = before_len[0];
    free(before[0]);
    free(before[1]);
    return size;
}

/* A user's saves under new names stop at --max-state-files-per-uid, and at
 * --max-state-bytes-per-uid (here: bytes for two files and a half, room for many files). */
static void test_state_files_per_uid_are_bounded_in_number_and_bytes(void **state)
{
    const char *const files2[] = {"--max-state-files-per-uid", "2", NULL};
    char limit[32];
    (void)state;

    size_t size = third_save_refused(files2, "--max-state-files-per-uid");
    snprintf(limit, sizeof(limit), "%zu", size * 5 / 2);
    const char *const bytes[] = {"--max-state-bytes-per-uid", limit, NULL};
    third_save_refused(bytes, "--max-state-bytes-per-uid");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_state_files_belong_to_the_uid_that_saved_them,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_world_writable_state_dir_is_refused_at_start,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_state_files_per_uid_are_bounded_in_number_and_bytes,
                                  teardown_seg_left),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("state_owner", tests, NULL, NULL);
}
