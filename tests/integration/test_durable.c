/*
 * test_durable.c - durable saves (issue #5): a save whose writes fail with EIO, or whose emad is
 * SIGKILLed midway, leaves the previous state file byte for byte as it was and is never
 * answered with success; the session goes on, and the previous file still loads.
 *
 * The faults come from eio_shim.so (tests/integration/eio_shim.c), preloaded into an emad
 * restarted for the purpose: its writes to the temp file of one save name fail with EIO from
 * a given byte on, or its fsync does, or the write that reaches that byte stalls for good and
 * creates a marker file, so that the test kills emad when the save is certainly halfway through
 * its file, not after a guessed sleep. The shim also fails the fsync of one directory, and logs
 * every fsync and rename, so that a save is seen to sync its directory after its rename (without
 * which a crash may bring back the previous file) and to report IO when it cannot.
 *
 * A user's files are in <state dir>/users/<uid>/ (daemon/store.h): the test's uid's here.
 */
#include "emaclient.h"
#include "harness.h"
#include "msg.h"
#include "wire.h"

#include <dirent.h>
#include <errno.h>
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

/* ---- the shim ---- */

/* Environment for an emad with the shim preloaded (see eio_shim.c for the variables). */
struct shim_env {
    char preload[SHIM_PRELOAD_MAX], match[PATH_MAX + 64], after[64], stall[PATH_MAX + 32];
    char asan[SHIM_ASAN_MAX];
    char dir[PATH_MAX + 32], log[PATH_MAX + 32];
    char *v[8];
};

/* The directory of the test's uid's state files: d's state dir, users/<uid>. */
static const char *user_dir(const struct daemon *d, char *out, size_t outlen)
{
    if (snprintf(out, outlen, "%s/users/%lu", d->state, (unsigned long)geteuid()) >= (int)outlen)
        fail_msg("%s: path too long", d->state);
    return out;
}

/* LD_PRELOAD and ASAN_OPTIONS for the shim into e, from e->v[0]; how many were set. */
static size_t shim_preload_into(struct shim_env *e)
{
    shim_preload(e->preload, e->asan);
    e->v[0] = e->preload;
    e->v[1] = e->asan;
    return 2;
}

/* Environment for the shim logging every fsync and rename to log, and failing the fsyncs of
 * the directory fail_dir (NULL: none). */
static char *const *shim_env_dir(struct shim_env *e, const char *fail_dir, const char *log)
{
    size_t n = shim_preload_into(e);

    snprintf(e->log, sizeof(e->log), "EMAD_TEST_EIO_LOG=%s", log);
    e->v[n++] = e->log;
    if (fail_dir != NULL) {
        snprintf(e->dir, sizeof(e->dir), "EMAD_TEST_EIO_DIR=%s", fail_dir);
        e->v[n++] = e->dir;
    }
    e->v[n] = NULL;
    return e->v;
}

/* Fill e for faults in the temp files of saves of `name` into d's state directory (and nothing
 * else: not the journals in live/, which share the name of the session), from byte after on;
 * stall: the marker path, or NULL to fail with EIO. Returns the NULL-terminated list for
 * daemon_start_env(). */
static char *const *shim_env(struct shim_env *e, const struct daemon *d, const char *name,
                             unsigned long long after, const char *stall)
{
    char dir[PATH_MAX];
    size_t n = shim_preload_into(e);

    snprintf(e->match, sizeof(e->match), "EMAD_TEST_EIO_MATCH=%s/.%s.emastate.tmp-",
             user_dir(d, dir, sizeof(dir)), name);
    snprintf(e->after, sizeof(e->after), "EMAD_TEST_EIO_AFTER=%llu", after);
    e->v[n++] = e->match;
    e->v[n++] = e->after;
    if (stall != NULL) {
        snprintf(e->stall, sizeof(e->stall), "EMAD_TEST_EIO_STALL=%s", stall);
        e->v[n++] = e->stall;
    }
    e->v[n] = NULL;
    return e->v;
}

/* ---- files ---- */

/* The whole file at dir/name (harness.h slurp). */
static unsigned char *slurp_in(const char *dir, const char *name, size_t *len)
{
    char path[PATH_MAX];

    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
        fail_msg("%s/%s: path too long", dir, name);
    return slurp(path, len);
}

/* Fail unless dir/name holds exactly the len bytes at want. */
static void expect_file(const char *dir, const char *name, const unsigned char *want, size_t len)
{
    size_t got_len;
    unsigned char *got = slurp_in(dir, name, &got_len);

    if (got_len != len)
        fail_msg("%s/%s: %zu bytes, %zu before", dir, name, got_len, len);
    if (memcmp(got, want, len) != 0)
        fail_msg("%s/%s: same size, other contents", dir, name);
    free(got);
}

/* How many temp files of saves (".<name>.emastate.tmp-XXXXXX") dir holds; the name of the
 * last one seen goes to last (may be NULL). */
static int temp_files(const char *dir, char *last, size_t lastlen)
{
    DIR *dp = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(dp);
    while ((e = readdir(dp)) != NULL) {
        if (e->d_name[0] != '.' || strstr(e->d_name, ".emastate.tmp-") == NULL)
            continue;
        if (last != NULL)
            snprintf(last, lastlen, "%s", e->d_name);
        n++;
    }
    closedir(dp);
    return n;
}

/* ---- the session ---- */

/* The segment's one f32 tensor, every element a function of step. */
static void fill_params(emac_segment *seg, float step)
{
    const struct emac_tensor *t = emac_segment_tensor(seg, 0);
    float *w = t->data;

    for (uint64_t i = 0; i < t->numel; i++)
        w[i] = (float)(i % 4099) * 0.5f + step;
}

static void batch_end(emac_session *s, uint64_t batch, uint64_t want_updates)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {batch, 0, false, 0};

    if (emac_event(s, "batch_end", &t, &r, &err) < 0)
        fail_msg("batch_end %llu: %s: %s", (unsigned long long)batch, err.code, err.message);
    assert_int_equal(r.updates, want_updates);
}

/* The shadow as emad has it now. */
static void *shadow_copy(const emac_session *s, size_t *len)
{
    const struct emac_shadow *sh = emac_session_shadow(s, 0);
    void *copy;

    *len = sh->numel * sh->elem_size;
    copy = malloc(*len);
    assert_non_null(copy);
    memcpy(copy, sh->data, *len);
    return copy;
}

static void expect_shadow(const emac_session *s, const void *want, size_t len)
{
    const struct emac_shadow *sh = emac_session_shadow(s, 0);

    assert_int_equal(sh->numel * sh->elem_size, len);
    if (memcmp(sh->data, want, len) != 0)
        fail_msg("session %s: the shadow differs from the saved one", emac_session_name(s));
}

static emac_session *register_ok(emac_client *c, const char *name, bool resume)
{
    struct emac_error err;
    emac_session *s = NULL;

    if (emac_register(c, name, seg_left, NULL, resume, &s, &err) < 0)
        fail_msg("register %s%s: %s: %s", name, resume ? " (resume)" : "", err.code,
                 err.message);
    return s;
}

static void save_ok(emac_client *c, const char *session, const char *name, struct emac_file *f)
{
    struct emac_error err;

    if (emac_save(c, session, name, f, &err) < 0)
        fail_msg("save %s to %s: %s: %s", session, name, err.code, err.message);
}

static void load_ok(emac_client *c, const char *session, const char *name, struct emac_file *f)
{
    struct emac_error err;

    if (emac_load(c, session, name, f, &err) < 0)
        fail_msg("load %s from %s: %s: %s", session, name, err.code, err.message);
}

/* Stop emad cleanly (it keeps the session for its next start), start it again in the same
 * directory with envs, and attach the session anew: what a trainer does across a restart. */
static emac_session *restart(struct daemon *d, emac_client **c, emac_session *s,
                             char *const envs[])
{
    char name[160];

    snprintf(name, sizeof(name), "%s", emac_session_name(s));
    emac_session_free(s);
    emac_disconnect(*c);
    assert_int_equal(kill(d->pid, SIGTERM), 0);
    check_daemon_stderr(d, wait_exit(d->pid));
    daemon_start_env(d, NULL, envs);
    *c = client_connect(d, "test_durable");
    return register_ok(*c, name, true);
}

/* ---- EIO ---- */

/*
 * "snap" is saved; emad restarts with the shim failing the writes to snap's next temp file from
 * byte `after` on (or only its fsync, when `after` is past the end). The next save of "snap"
 * fails with IO and a message naming the step, the temp file and the error; snap.emastate is
 * byte-identical, no temp file is left, and the session goes on: an update, a save to another
 * name, and a load of "snap" that brings back the shadow it held.
 */
static void save_fails_with_eio(unsigned long long after, const char *step)
{
    struct emac_tensor_spec spec = {"w", "f32", 1u << 18, NULL, 0}; /* 1 MiB of shadow */
    struct emac_error err;
    struct emac_file f;
    struct shim_env env;
    struct daemon d;
    size_t saved_len, shadow_len;
    char want[64], dir[PATH_MAX];

    daemon_start(&d, NULL);
    user_dir(&d, dir, sizeof(dir));
    emac_client *c = client_connect(&d, "test_durable");
    assert_int_equal(emac_segment_create(&spec, 1, &seg_left, &err), 0);
    fill_params(seg_left, 1);
    emac_session *s = register_ok(c, "durable", false);
    batch_end(s, 1, 1);
    save_ok(c, "durable", "snap", &f);
    unsigned char *saved = slurp_in(dir, "snap.emastate", &saved_len);
    assert_int_equal(saved_len, f.bytes);
    void *shadow = shadow_copy(s, &shadow_len);

    s = restart(&d, &c, s, shim_env(&env, &d, "snap", after, NULL));
    fill_params(seg_left, 2);
    batch_end(s, 2, 2);
    int rc = emac_save(c, "durable", "snap", &f, &err);
    if (rc == 0)
        fail_msg("the save succeeded despite EIO while %s its temp file (%s)", step, f.path);
    assert_int_equal(rc, -EREMOTEIO);
    assert_string_equal(err.code, "IO");
    snprintf(want, sizeof(want), "save: %s ", step);
    if (strstr(err.message, want) == NULL || strstr(err.message, "/.snap.emastate.tmp-") == NULL ||
        strstr(err.message, strerror(EIO)) == NULL)
        fail_msg("the IO error should name the step (\"%s\"), the temp file and the error "
                 "(\"%s\"): %s", want, strerror(EIO), err.message);

    expect_file(dir, "snap.emastate", saved, saved_len);
    assert_int_equal(temp_files(dir, NULL, 0), 0);
    assert_true(file_contains(d.log, "save failed"));

    /* The session goes on. */
    fill_params(seg_left, 3);
    batch_end(s, 3, 3);
    save_ok(c, "durable", "other", &f);
    load_ok(c, "durable", "snap", &f);
    assert_int_equal(f.bytes, saved_len);
    expect_shadow(s, shadow, shadow_len);

    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    free(saved);
    free(shadow);
    daemon_stop(&d);
}

static void test_save_whose_write_fails_with_EIO_is_IO_and_keeps_the_previous_file(void **state)
{
    (void)state;
    save_fails_with_eio(65536, "writing"); /* 64 KiB into a file of 1 MiB */
}

static void test_save_whose_fsync_fails_with_EIO_is_IO_and_keeps_the_previous_file(void **state)
{
    (void)state;
    save_fails_with_eio(1ull << 40, "syncing"); /* every byte written; the fsync fails */
}

/* ---- the directory's fsync ---- */

/* The lines of the shim's log, in a malloc'ed array of n pointers into *text. */
static char **log_lines(const char *path, char **text, size_t *n)
{
    size_t len, cap = 16;
    char **lines = malloc(cap * sizeof(*lines));
    char *slash = strrchr(path, '/');
    char dir[PATH_MAX];

    assert_non_null(lines);
    snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    *text = (char *)slurp_in(dir, slash + 1, &len);
    *text = realloc(*text, len + 1);
    assert_non_null(*text);
    (*text)[len] = '\0';
    *n = 0;
    for (char *p = *text, *nl; *p != '\0'; p = nl + 1) {
        nl = strchr(p, '\n');
        assert_non_null(nl);
        *nl = '\0';
        if (*n == cap) {
            cap *= 2;
            lines = realloc(lines, cap * sizeof(*lines));
            assert_non_null(lines);
        }
        lines[(*n)++] = p;
    }
    return lines;
}

/* Fail unless the log shows the save of dir/name.emastate: its temp file synced, renamed to the
 * file, and after that rename, dir synced; the first such rename at or after line *from, and
 * *from moved past it. */
static void expect_synced_save(const char *log, const char *dir, const char *name, size_t *from)
{
    char synced_tmp[PATH_MAX + 64], rename_from[PATH_MAX + 64], rename_to[PATH_MAX + 64];
    char synced_dir[PATH_MAX + 16], *text;
    size_t n, i, temp_synced = SIZE_MAX, renamed = SIZE_MAX;
    char **lines = log_lines(log, &text, &n);

    snprintf(synced_tmp, sizeof(synced_tmp), "fsync %s/.%s.emastate.tmp-", dir, name);
    snprintf(rename_from, sizeof(rename_from), "rename %s/.%s.emastate.tmp-", dir, name);
    snprintf(rename_to, sizeof(rename_to), " %s/%s.emastate", dir, name);
    snprintf(synced_dir, sizeof(synced_dir), "fsync %s", dir);
    for (i = *from; i < n && renamed == SIZE_MAX; i++) {
        if (strncmp(lines[i], synced_tmp, strlen(synced_tmp)) == 0)
            temp_synced = i;
        else if (strncmp(lines[i], rename_from, strlen(rename_from)) == 0 &&
                 strlen(lines[i]) > strlen(rename_to) &&
                 strcmp(lines[i] + strlen(lines[i]) - strlen(rename_to), rename_to) == 0)
            renamed = i;
    }
    if (renamed == SIZE_MAX)
        fail_msg("%s: no rename of a temp file to %s/%s.emastate", log, dir, name);
    if (temp_synced == SIZE_MAX)
        fail_msg("%s: the temp file renamed to %s/%s.emastate was not synced before", log, dir,
                 name);
    for (i = renamed + 1; i < n && strcmp(lines[i], synced_dir) != 0; i++)
        ;
    if (i == n)
        fail_msg("%s: the directory %s was not synced after the rename to %s.emastate: a crash "
                 "could bring back the previous file", log, dir, name);
    *from = i + 1;
    free(lines);
    free(text);
}

/* Each save syncs its directory after its rename: the first, which makes the directory, and the
 * next, into the directory as it is. */
static void test_save_syncs_its_directory_after_the_rename(void **state)
{
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    struct emac_error err;
    struct emac_file f;
    struct shim_env env;
    struct daemon d;
    char dir[PATH_MAX], log[PATH_MAX];
    size_t from = 0;
    (void)state;

    make_dir(&d);
    user_dir(&d, dir, sizeof(dir));
    snprintf(log, sizeof(log), "%s/syncs.log", d.dir);
    daemon_start_env(&d, NULL, shim_env_dir(&env, NULL, log));
    emac_client *c = client_connect(&d, "test_durable");
    assert_int_equal(emac_segment_create(&spec, 1, &seg_left, &err), 0);
    fill_params(seg_left, 1);
    emac_session *s = register_ok(c, "synced", false);
    batch_end(s, 1, 1);
    save_ok(c, "synced", "first", &f);
    expect_synced_save(log, dir, "first", &from);
    batch_end(s, 2, 2);
    save_ok(c, "synced", "first", &f);
    expect_synced_save(log, dir, "first", &from);

    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A save whose rename cannot be made durable (the directory's fsync fails with EIO) is IO, with
 * a message that names the directory, the error, and says the file may not survive a crash;
 * the session goes on and saves elsewhere once the disk is back. */
static void test_save_whose_directory_sync_fails_is_IO(void **state)
{
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    struct emac_error err;
    struct emac_file f;
    struct shim_env env;
    struct daemon d;
    char dir[PATH_MAX], log[PATH_MAX], want[PATH_MAX + 64];
    (void)state;

    make_dir(&d);
    user_dir(&d, dir, sizeof(dir));
    snprintf(log, sizeof(log), "%s/syncs.log", d.dir);
    daemon_start_env(&d, NULL, shim_env_dir(&env, dir, log));
    emac_client *c = client_connect(&d, "test_durable");
    assert_int_equal(emac_segment_create(&spec, 1, &seg_left, &err), 0);
    fill_params(seg_left, 1);
    emac_session *s = register_ok(c, "unsynced", false);
    batch_end(s, 1, 1);
    for (int i = 0; i < 2; i++) { /* making the directory, then into it as it is */
        int rc = emac_save(c, "unsynced", "snap", &f, &err);
        if (rc == 0)
            fail_msg("the save succeeded though %s could not be synced after its rename (%s)",
                     dir, f.path);
        assert_int_equal(rc, -EREMOTEIO);
        assert_string_equal(err.code, "IO");
        snprintf(want, sizeof(want), "save: syncing directory %s after writing ", dir);
        if (strstr(err.message, want) == NULL || strstr(err.message, strerror(EIO)) == NULL ||
            strstr(err.message, "may not survive a crash") == NULL)
            fail_msg("the IO error should name the directory (\"%s\"), the error (\"%s\") and "
                     "the risk: %s", want, strerror(EIO), err.message);
    }
    assert_true(file_contains(d.log, "save failed"));
    batch_end(s, 2, 2); /* the session goes on */

    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- SIGKILL ---- */

/* A connection that has said hello, for a request whose reply never comes. */
static int raw_connect(const char *sock, struct wire_decoder *dec)
{
    wire_decoder_init(dec, 1u << 24, 8);
    return hello_connect(sock, "test_durable raw", dec);
}

static void raw_send_save(int fd, uint32_t msgid, const char *session, const char *name)
{
    struct msg_file req = {.session = msg_str_c(session), .has_name = true,
        .name = msg_str_c(name)};
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, msgid, "save");
    msg_encode(&pk, &msg_file_desc, &req);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* Wait up to WAIT_MS for the file at path to exist; fail if emad (pid) exits first. */
static void wait_for_file(const char *path, pid_t pid)
{
    struct stat st;
    int status;

    for (int waited = 0; waited < WAIT_MS; waited += 5) {
        if (stat(path, &st) == 0)
            return;
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail_msg("emad exited before %s appeared", path);
        sleep_ms(5);
    }
    fail_msg("%s did not appear within %d ms", path, WAIT_MS);
}

/*
 * "big" (64 MiB of shadow) is saved; emad restarts with the shim stalling the write that
 * reaches the middle of big's next temp file. A second save of "big" stalls there, and once
 * the marker says so, emad is SIGKILLed: no reply ever came, big.emastate is byte-identical,
 * and the half-written temp file is beside it. The next emad takes the session back; "big"
 * loads and gives back the shadow it held; the temp file is never taken for a state file.
 */
static void test_sigkill_mid_save_keeps_the_previous_file_loadable(void **state)
{
    enum { N = 16u << 20 }; /* f32: 64 MiB */
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_error err;
    struct emac_status *st = NULL;
    struct emac_file f;
    struct shim_env env;
    struct wire_decoder dec;
    struct daemon d;
    struct reply r;
    char marker[160], temp[300], dir[PATH_MAX];
    size_t saved_len, shadow_len;
    (void)state;

    daemon_start(&d, NULL);
    user_dir(&d, dir, sizeof(dir));
    emac_client *c = client_connect(&d, "test_durable");
    assert_int_equal(emac_segment_create(&spec, 1, &seg_left, &err), 0);
    fill_params(seg_left, 1);
    emac_session *s = register_ok(c, "big", false);
    batch_end(s, 1, 1);
    save_ok(c, "big", "big", &f);
    unsigned char *saved = slurp_in(dir, "big.emastate", &saved_len);
    assert_true(saved_len > (size_t)N * 4);
    void *shadow = shadow_copy(s, &shadow_len);

    snprintf(marker, sizeof(marker), "%s/stalled", d.dir);
    s = restart(&d, &c, s, shim_env(&env, &d, "big", saved_len / 2, marker));
    fill_params(seg_left, 2);
    batch_end(s, 2, 2);

    int fd = raw_connect(d.sock, &dec);
    raw_send_save(fd, 2, "big", "big");
    wait_for_file(marker, d.pid);
    /* The save is stalled halfway through its temp file: the kill lands mid-save. */
    assert_int_equal(temp_files(dir, temp, sizeof(temp)), 1);
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);
    read_reply_dec(fd, &dec, &r);
    if (!r.eof)
        fail_msg("a reply (\"%s\" %s) to a save whose emad was killed midway", r.code,
                 r.message);
    close(fd);
    wire_decoder_free(&dec);
    emac_session_free(s);
    emac_disconnect(c);

    expect_file(dir, "big.emastate", saved, saved_len);
    assert_int_equal(temp_files(dir, NULL, 0), 1);

    /* The next emad: the session comes back, the previous file loads. */
    daemon_start_env(&d, NULL, NULL);
    c = client_connect(&d, "test_durable");
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    assert_int_equal(st->nsessions, 1); /* nothing made of the temp file */
    assert_string_equal(st->session_list[0].session, "big");
    emac_status_free(st);
    /* ... and it is gone: removed at the start, and said so. */
    assert_int_equal(temp_files(dir, NULL, 0), 0);
    assert_true(file_contains(d.log, "removed 1 temp files of saves cut short"));
    s = register_ok(c, "big", true);
    load_ok(c, "big", "big", &f);
    assert_int_equal(f.bytes, saved_len);
    expect_shadow(s, shadow, shadow_len);
    expect_file(dir, "big.emastate", saved, saved_len);
    /* The temp file's name is not a name a client may use (it starts with
     * '.'): refused before any file is opened. */
    assert_int_equal(emac_load(c, "big", temp, &f, &err), -EREMOTEIO);
    assert_string_equal(err.code, "BADARG");

    fill_params(seg_left, 3);
    batch_end(s, 2, 2); /* the file's counters: one update, now the second */
    save_ok(c, "big", "big", &f);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    free(saved);
    free(shadow);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(
            test_save_whose_write_fails_with_EIO_is_IO_and_keeps_the_previous_file,
            teardown_seg_left),
        cmocka_unit_test_teardown(
            test_save_whose_fsync_fails_with_EIO_is_IO_and_keeps_the_previous_file,
            teardown_seg_left),
        cmocka_unit_test_teardown(test_save_syncs_its_directory_after_the_rename,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_save_whose_directory_sync_fails_is_IO, teardown_seg_left),
        cmocka_unit_test_teardown(test_sigkill_mid_save_keeps_the_previous_file_loadable,
                                  teardown_seg_left),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("durable", tests, NULL, NULL);
}
