/*
 * test_restart.c - what survives a clean restart of emad, and the systemd
 * watchdog. emad runs as a subprocess (harness.h); the trainer side is
 * libemaclient.
 */
#include "emaclient.h"
#include "harness.h"
#include "msg.h"
#include "segment.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define N 5000

static const struct emac_tensor_spec specs[] = {
    {"w", "f32", N, NULL, 0},
    {"b", "bf16", N, NULL, 0},
    {"steps", "i64", 1, NULL, 0},
};

static void step_params(emac_segment *seg, int step)
{
    float *w = emac_segment_tensor(seg, 0)->data;
    uint16_t *b = emac_segment_tensor(seg, 1)->data;
    int64_t *steps = emac_segment_tensor(seg, 2)->data;

    for (size_t i = 0; i < N; i++) {
        w[i] = (float)i * 0.001f + (float)step * 0.25f;
        b[i] = (uint16_t)(0x3f80 + (i + (size_t)step) % 64);
    }
    *steps = step;
}

/* The tensors' shadows, from the first to the end of the last (emad's
 * header page before them is its own business). */
static void *shadow_copy(const emac_session *s, size_t *bytes)
{
    const struct emac_shadow *first = emac_session_shadow(s, 0);
    const struct emac_shadow *last = emac_session_shadow(s, 2);
    size_t n = last->offset + last->numel * last->elem_size - first->offset;
    void *copy = malloc(n);

    assert_non_null(copy);
    memcpy(copy, first->data, n);
    *bytes = n;
    return copy;
}

/* SIGTERM keeps every session; the next emad brings it back detached with
 * its shadow and state, and the trainer resumes where it was. */
static void test_clean_restart_keeps_sessions_detached_with_shadow_and_state(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    struct emac_config cfg = {"4ba", false, 0, NULL, "2ba"};
    emac_session *s = NULL;
    size_t before_len, after_len;
    char kept[200];
    struct stat sb;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_restart");
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "team/run:7", seg_left, &cfg, false, &s, &err), 0);
    for (int b = 1; b <= 6; b++) {
        step_params(seg_left, b);
        event_at(s, "batch_end", (uint64_t)b);
    }
    void *before = shadow_copy(s, &before_len);
    emac_session_free(s);
    emac_disconnect(c);

    /* A clean stop writes the session into the state directory. */
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    check_daemon_stderr(&d, -1);
    snprintf(kept, sizeof(kept), "%s/sessions/team%%2Frun%%3A7.emastate", d.state);
    assert_int_equal(stat(kept, &sb), 0);
    assert_true(file_contains(d.log, "kept in"));

    daemon_start_env(&d, NULL, NULL);
    /* emad answers only once the kept sessions are back in. */
    c = client_connect(&d, "test_restart");
    assert_int_equal(stat(kept, &sb), -1); /* taken back in: the file is gone */
    assert_int_equal(emac_status(c, "team/run:7", &st, &err), 0);
    assert_int_equal(st->nsessions, 1);
    assert_false(st->session_list[0].attached);
    assert_true(st->session_list[0].started);
    assert_int_equal(st->session_list[0].updates, 5); /* starts at 2, updates 2..6 */
    assert_int_equal(st->session_list[0].last_batch, 6);
    assert_string_equal(st->session_list[0].half_life, "4ba");
    assert_string_equal(st->session_list[0].ema_start, "2ba");
    emac_status_free(st);

    /* The trainer resumes with the same table; the shadow is the one it had. */
    assert_int_equal(emac_register(c, "team/run:7", seg_left, &cfg, true, &s, &err), 0);
    void *after = shadow_copy(s, &after_len);
    assert_int_equal(before_len, after_len);
    assert_memory_equal(before, after, before_len);
    step_params(seg_left, 7);
    struct emac_result r = event_at(s, "batch_end", 7);
    assert_int_equal(r.updates, 6);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    free(before);
    free(after);
    daemon_stop(&d);
}

/* SIGKILL: the sessions come back from their journals and shadow objects,
 * with the counters of the last completed operation. */
static void test_sigkill_keeps_sessions_with_shadow_and_counters(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    struct emac_config cfg = {"4ba", false, 0, NULL, "2ba"};
    emac_session *s = NULL;
    size_t before_len, after_len;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_restart");
    struct emac_reconnect policy;
    emac_reconnect_defaults(&policy);
    policy.enabled = false; /* the trainer is gone with emad; test_reconnect has the rest */
    assert_int_equal(emac_set_reconnect(c, &policy, &err), 0);
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "crashy", seg_left, &cfg, false, &s, &err), 0);
    for (int b = 1; b <= 6; b++) {
        step_params(seg_left, b);
        event_at(s, "batch_end", (uint64_t)b);
    }
    event_at(s, "eval_start", 6); /* emad dies with the EMA weights swapped in */
    void *before = shadow_copy(s, &before_len);
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);

    /* The library notices on its next call and restores the training weights. */
    struct emac_result r;
    struct emac_time t = {.batch = 7};
    assert_true(emac_event(s, "eval_end", &t, &r, &err) < 0);
    assert_true(emac_session_restored(s));
    emac_session_free(s);
    emac_disconnect(c);

    daemon_start_env(&d, NULL, NULL);
    c = client_connect(&d, "test_restart");
    assert_int_equal(emac_status(c, "crashy", &st, &err), 0);
    assert_int_equal(st->nsessions, 1);
    assert_false(st->session_list[0].attached);
    assert_false(st->session_list[0].active);
    assert_int_equal(st->session_list[0].updates, 5);
    assert_int_equal(st->session_list[0].swaps, 1);
    assert_int_equal(st->session_list[0].last_batch, 6);
    /* The shadow now carries the new emad's pid, so that no other emad
     * starting later takes it for a dead one's. */
    char mine[64];
    snprintf(mine, sizeof(mine), "/emad-shadow-%ld-", (long)d.pid);
    assert_true(strncmp(st->session_list[0].shadow_shm, mine, strlen(mine)) == 0);
    emac_status_free(st);
    assert_true(file_contains(d.log, "taken back after a crash"));

    assert_int_equal(emac_register(c, "crashy", seg_left, &cfg, true, &s, &err), 0);
    void *after = shadow_copy(s, &after_len);
    assert_int_equal(before_len, after_len);
    assert_memory_equal(before, after, before_len);
    step_params(seg_left, 7);
    assert_int_equal(event_at(s, "batch_end", 7).updates, 6);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    free(before);
    free(after);
    daemon_stop(&d);
}

/* SIGKILL in the middle of an update: the session comes back flagged, the
 * counters those of the last update that completed. */
static void test_sigkill_mid_update_is_reported(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    emac_ticket ticket;
    (void)state;

    make_dir(&d);
    /* Chunks: register's journal and initialisation, batch 1, batch 2; batch 3 stalls. */
    const char *const exact[] = {"--crash-exact", NULL};
    daemon_start_env(&d, exact, (char *[]){"EMAD_TEST_STALL_MS=5000", "EMAD_TEST_STALL_AFTER=4",
                                            NULL});
    emac_client *c = client_connect(&d, "test_restart");
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "cut", seg_left, NULL, false, &s, &err), 0);
    event_at(s, "batch_end", 1);
    event_at(s, "batch_end", 2);
    struct emac_time t = {.batch = 3};
    assert_int_equal(emac_event_send(s, "batch_end", &t, &ticket, &err), 0);
    sleep_ms(300);
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);
    emac_session_free(s);
    emac_disconnect(c);

    daemon_start_env(&d, exact, NULL);
    c = client_connect(&d, "test_restart");
    assert_int_equal(emac_status(c, "cut", &st, &err), 0);
    assert_int_equal(st->nsessions, 1);
    assert_int_equal(st->session_list[0].updates, 2);
    assert_int_equal(st->session_list[0].last_batch, 2);
    emac_status_free(st);
    assert_true(file_contains(d.log, "cut short by the crash"));
    /* The raw status says it too. */
    char out[8192];
    char *argv[] = {(char *)emactl_bin(), "--socket", d.sock, "--json", "show", "cut", NULL};
    assert_int_equal(run_capture(argv, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "\"interrupted\": true"));
    char *text[] = {(char *)emactl_bin(), "--socket", d.sock, "show", "cut", NULL};
    assert_int_equal(run_capture(text, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "interrupted      yes: an update was cut short"));
    assert_non_null(strstr(out, "requests         2 "));
    /* A trainer that does not send batch 3 again (test_reconnect has one
     * that does): the shadow keeps part of it, and says so from then on. */
    assert_int_equal(emac_register(c, "cut", seg_left, NULL, true, &s, &err), 0);
    struct emac_result r = event_at(s, "batch_end", 4);
    assert_true(r.interrupted);
    assert_int_equal(r.updates, 3);
    assert_true(file_contains(d.log, "was not sent again before another event"));
    emac_session_free(s);
    assert_int_equal(emac_drop(c, "cut", &err), -EREMOTEIO); /* attached until reaped */
    assert_string_equal(err.code, "STATE");
    emac_disconnect(c);
    daemon_stop(&d);
}

/* When a clean stop cannot write a session's state file, the session is
 * not lost: its journal and shadow stay for the next start. */
static void test_stop_that_cannot_write_keeps_the_session_for_the_next_start(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    char blocker[200];
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_restart");
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "stay", seg_left, NULL, false, &s, &err), 0);
    event_at(s, "batch_end", 1);
    event_at(s, "batch_end", 2);
    emac_session_free(s);
    emac_disconnect(c);
    /* A file where the directory of state files should go: the save fails. */
    snprintf(blocker, sizeof(blocker), "%s/sessions", d.state);
    FILE *fp = fopen(blocker, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    assert_true(file_contains(d.log, "left in place for the next start"));
    assert_int_equal(unlink(blocker), 0);

    daemon_start_env(&d, NULL, NULL);
    c = client_connect(&d, "test_restart");
    assert_int_equal(emac_status(c, "stay", &st, &err), 0);
    assert_int_equal(st->nsessions, 1);
    assert_int_equal(st->session_list[0].updates, 2);
    emac_status_free(st);
    assert_int_equal(emac_drop(c, "stay", &err), 0);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A session closed before the stop does not come back. */
static void test_closed_sessions_are_not_resurrected(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_restart");
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "gone", seg_left, NULL, false, &s, &err), 0);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    daemon_start_env(&d, NULL, NULL);
    c = client_connect(&d, "test_restart");
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    assert_int_equal(st->nsessions, 0);
    emac_status_free(st);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A kept file that is corrupt is reported and left aside, not loaded. */
static void test_corrupt_kept_session_is_left_aside(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    char dir[200], path[260];
    (void)state;

    make_dir(&d);
    snprintf(dir, sizeof(dir), "%s/sessions", d.state);
    assert_int_equal(mkdir(d.state, 0700), 0);
    assert_int_equal(mkdir(dir, 0700), 0);
    snprintf(path, sizeof(path), "%s/broken.emastate", dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("EMASTATE but not really", fp);
    fclose(fp);
    daemon_start_env(&d, NULL, NULL);
    emac_client *c = client_connect(&d, "test_restart");
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    assert_int_equal(st->nsessions, 0);
    emac_status_free(st);
    emac_disconnect(c);
    assert_true(file_contains(d.log, "cannot restore the session kept in"));
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    daemon_stop(&d);
}

/* At start emad removes the shadows of dead emad processes of its uid, and
 * nothing else. */
static void make_shm(const char *name)
{
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    close(fd);
}

static bool shm_exists(const char *name)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

static void test_start_removes_shadows_of_dead_emads_only(void **state)
{
    struct daemon d;
    char dead[96], live[96], other[96];
    (void)state;

    pid_t child = fork();
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child); /* a pid that is gone */
    snprintf(dead, sizeof(dead), "/emad-shadow-%ld-deadbeef%ld", (long)child, (long)getpid());
    snprintf(live, sizeof(live), "/emad-shadow-%ld-feedface", (long)getpid());
    snprintf(other, sizeof(other), "/emad-restarttest-%ld", (long)getpid());
    make_shm(dead);
    make_shm(live);
    make_shm(other);
    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_restart"); /* emad answers once its start-up is done */
    emac_disconnect(c);
    bool dead_gone = !shm_exists(dead), live_kept = shm_exists(live),
         other_kept = shm_exists(other);
    shm_unlink(dead);
    shm_unlink(live);
    shm_unlink(other);
    assert_true(dead_gone);
    assert_true(live_kept);
    assert_true(other_kept);
    assert_true(file_contains(d.log, "removed stale shadow"));
    daemon_stop(&d);
}

/* A save that runs out of space fails with IO and leaves the previous file
 * as it was (the state directory is a small tmpfs in a private mount
 * namespace). */
static void test_save_on_a_full_disk_keeps_the_previous_file(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct emac_tensor_spec spec = {"w", "f32", 25000, NULL, 0};
    emac_session *s = NULL;
    char cmd[1024], path[300];
    (void)state;

    if (geteuid() != 0 || system("unshare -m true 2>/dev/null") != 0)
        skip();
    make_dir(&d);
    assert_int_equal(mkdir(d.state, 0700), 0);
    /* About 110 KiB per state file: room for one, not for a second beside it. */
    snprintf(cmd, sizeof(cmd),
             "mount -t tmpfs -o size=160k,mode=0700 tmpfs '%s' && exec '%s' --socket '%s' "
             "--state-dir '%s' --log-file '%s' --log-level debug",
             d.state, emad_bin(), d.sock, d.state, d.log);
    char *argv[] = {"unshare", "-m", "sh", "-c", cmd, NULL};
    d.pid = spawn(argv, NULL, -1, -1);
    assert_true(wait_listening(d.pid, d.sock));
    emac_client *c = client_connect(&d, "test_restart");
    assert_int_equal(emac_segment_create(&spec, 1, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "full", seg_left, NULL, false, &s, &err), 0);
    assert_int_equal(event_at(s, "batch_end", 1).updates, 1);
    assert_int_equal(emac_save(c, "full", "snap", &f, &err), 0);

    /* The file as emad sees it (its tmpfs is in its own namespace). */
    snprintf(path, sizeof(path), "/proc/%ld/root%s/users/0/snap.emastate", (long)d.pid, d.state);
    size_t len1 = 0;
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    static char first[200000], again[200000];
    len1 = fread(first, 1, sizeof(first), fp);
    fclose(fp);
    assert_true(len1 > 100000);

    float *w = emac_segment_tensor(seg_left, 0)->data;
    w[0] = 42.0f;
    assert_int_equal(event_at(s, "batch_end", 2).updates, 2);
    assert_int_equal(emac_save(c, "full", "snap", &f, &err), -EREMOTEIO);
    assert_string_equal(err.code, "IO");
    assert_non_null(strstr(err.message, "No space left on device"));

    fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t len2 = fread(again, 1, sizeof(again), fp);
    fclose(fp);
    assert_int_equal(len1, len2);
    assert_memory_equal(first, again, len1);
    /* No temp file is left behind either. */
    snprintf(cmd, sizeof(cmd), "ls -A /proc/%ld/root%s/users/0 | grep -c tmp", (long)d.pid, d.state);
    FILE *ls = popen(cmd, "r");
    int tmp_files = -1;
    assert_non_null(ls);
    assert_int_equal(fscanf(ls, "%d", &tmp_files), 1);
    pclose(ls);
    assert_int_equal(tmp_files, 0);
    /* And emad still loads the good one. */
    assert_int_equal(emac_load(c, "full", "snap", &f, &err), 0);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* Requests touching a session run in arrival order: a drop pipelined right
 * behind a close with keep, on the same connection, finds the session
 * detached; an event pipelined behind it is no longer the owner's. */
static void test_pipelined_close_keep_then_drop(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct reply r;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    struct msg_hello hello = {1, msg_str_c("pipeline test"), false, 0};
    struct msg_tensor t = {msg_str_c("w"), msg_str_c("f32"), 0, N, false, NULL, 0, false, NULL, 0, false, NULL, 0};
    struct msg_register reg;
    memset(&reg, 0, sizeof(reg));
    reg.session = msg_str_c("piped");
    reg.shm = msg_str_c(emac_segment_name(seg_left));
    reg.tensors = &t;
    reg.ntensors = 1;
    struct msg_close cl = {msg_str_c("piped"), true, true};
    struct msg_event ev = {msg_str_c("piped"), msg_str_c("batch_end"), {.batch = 1}, false, 0};
    struct msg_drop dr = {msg_str_c("piped")};
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 1, "hello");
    msg_encode(&pk, &msg_hello_desc, &hello);
    wire_pack_request_head(&pk, 2, "register");
    msg_encode(&pk, &msg_register_desc, &reg);
    wire_pack_request_head(&pk, 3, "close");
    msg_encode(&pk, &msg_close_desc, &cl);
    wire_pack_request_head(&pk, 4, "event");
    msg_encode(&pk, &msg_event_desc, &ev);
    wire_pack_request_head(&pk, 5, "drop");
    msg_encode(&pk, &msg_drop_desc, &dr);
    int fd = try_connect(d.sock);
    assert_true(fd >= 0);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    char codes[6][32] = {{0}};
    struct wire_decoder dec;
    wire_decoder_init(&dec, 1u << 24, 8);
    for (int i = 0; i < 5; i++) {
        read_reply_dec(fd, &dec, &r);
        assert_false(r.eof);
        assert_true(r.msgid >= 1 && r.msgid <= 5);
        snprintf(codes[r.msgid], sizeof(codes[0]), "%s", r.code);
    }
    wire_decoder_free(&dec);
    assert_string_equal(codes[2], "");     /* register */
    assert_string_equal(codes[3], "");     /* close, keep */
    assert_string_equal(codes[4], "PERM"); /* not the owner any more */
    assert_string_equal(codes[5], "");     /* drop of the now detached session */
    close(fd);
    daemon_stop(&d);
}

/* Pipeline requests on a raw connection (hello first); returns the fd.
 * Replies are read with read_reply_dec. */
static int pipeline(const struct daemon *d, const char *const methods[],
                    const struct msg_desc *const descs[], const void *const reqs[], size_t n)
{
    struct msg_hello hello = {1, msg_str_c("pipeline test"), false, 0};
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 1, "hello");
    msg_encode(&pk, &msg_hello_desc, &hello);
    for (size_t i = 0; i < n; i++) {
        wire_pack_request_head(&pk, (uint32_t)(i + 2), methods[i]);
        msg_encode(&pk, descs[i], reqs[i]);
    }
    int fd = try_connect(d->sock);
    assert_true(fd >= 0);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return fd;
}

/* How many shadow objects emad (pid) has in /dev/shm. */
static int shadows_of(pid_t pid)
{
    char prefix[64];
    struct dirent *e;
    int n = 0;
    DIR *dir = opendir("/dev/shm");

    assert_non_null(dir);
    snprintf(prefix, sizeof(prefix), "emad-shadow-%ld-", (long)pid);
    while ((e = readdir(dir)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(dir);
    return n;
}

/*
 * Once a reply says a session is gone, its shadow is gone: a close (and a
 * drop) pipelined ahead of a save that stalls in a worker answers with the
 * shadow already unlinked, though the session's queue still runs.
 */
static void test_close_and_drop_reply_after_the_shadow_is_gone(void **state)
{
    struct emac_error err;
    (void)state;

    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    struct msg_tensor t[3];
    for (int drop = 0; drop < 2; drop++) {
        struct daemon d;
        struct msg_register reg;
        register_msg(&reg, t, 3, "gone", seg_left);
        struct msg_close keep = {msg_str_c("gone"), true, true};
        struct msg_close plain = {msg_str_c("gone"), false, false};
        struct msg_drop dr = {msg_str_c("gone")};
        struct msg_file sv = {.session = msg_str_c("gone"), .has_name = true,
            .name = msg_str_c("after")};
        const char *m_close[] = {"register", "close", "save"};
        const char *m_drop[] = {"register", "close", "drop", "save"};
        const struct msg_desc *d_close[] = {&msg_register_desc, &msg_close_desc, &msg_file_desc};
        const struct msg_desc *d_drop[] = {&msg_register_desc, &msg_close_desc, &msg_drop_desc,
                                           &msg_file_desc};
        const void *r_close[] = {&reg, &plain, &sv};
        const void *r_drop[] = {&reg, &keep, &dr, &sv};
        char codes[5][32] = {{0}};

        /* register's work is two chunks (journal, tensors); the save's stalls. */
        make_dir(&d);
        daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=2000",
                                              "EMAD_TEST_STALL_AFTER=2", NULL});
        int fd = drop ? pipeline(&d, m_drop, d_drop, r_drop, 4)
                      : pipeline(&d, m_close, d_close, r_close, 3);
        struct wire_decoder dec;
        struct reply r;
        wire_decoder_init(&dec, 1u << 24, 8);
        size_t gone_id = drop ? 4 : 3, save_id = drop ? 5 : 4;
        for (size_t i = 0; i < save_id; i++) {
            read_reply_dec(fd, &dec, &r);
            assert_false(r.eof);
            assert_true(r.msgid >= 1 && r.msgid <= save_id);
            snprintf(codes[r.msgid - 1], 32, "%s", r.code);
            if (r.msgid == gone_id) {
                assert_string_equal(r.code, "");
                /* The save behind it still runs (stalled): the reply came first. */
                assert_int_equal(shadows_of(d.pid), 0);
            }
        }
        wire_decoder_free(&dec);
        assert_string_equal(codes[1], "");
        close(fd);
        daemon_stop(&d);
    }
}

/*
 * A session whose close is queued is closing: a resume from another
 * connection, arriving while the owner's pipelined [batch_end, close] are
 * still running, finds no session, rather than an OK naming a shadow about
 * to be removed; a drop and a load are refused alike.
 */
static void test_resume_of_a_closing_session_is_refused(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_segment *seg2 = NULL;
    emac_session *s = NULL;
    (void)state;

    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    struct msg_tensor t[3];
    struct msg_register reg;
    register_msg(&reg, t, 3, "closing", seg_left);
    reg.has_config = true;
    reg.config.has_half_life = true;
    reg.config.half_life = msg_str_c("1ba");
    struct msg_event ev = {msg_str_c("closing"), msg_str_c("batch_end"), {.batch = 1}, false,
                           0};
    struct msg_close cl = {msg_str_c("closing"), false, false};
    const char *methods[] = {"register", "event", "close"};
    const struct msg_desc *descs[] = {&msg_register_desc, &msg_event_desc, &msg_close_desc};
    const void *reqs[] = {&reg, &ev, &cl};

    make_dir(&d);
    daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=2000", "EMAD_TEST_STALL_AFTER=2",
                                          NULL});
    int fd = pipeline(&d, methods, descs, reqs, 3);
    struct wire_decoder dec;
    struct reply r;
    wire_decoder_init(&dec, 1u << 24, 8);
    read_reply_dec(fd, &dec, &r); /* hello */
    read_reply_dec(fd, &dec, &r); /* register: the event behind it now stalls */
    assert_int_equal(r.msgid, 2);
    assert_string_equal(r.code, "");

    emac_client *c = client_connect(&d, "late resume");
    assert_int_equal(emac_segment_create(specs, 3, &seg2, &err), 0);
    assert_int_equal(emac_register(c, "closing", seg2, NULL, true, &s, &err), -EREMOTEIO);
    assert_string_equal(err.code, "NOSESSION");
    assert_non_null(strstr(err.message, "being closed"));
    assert_int_equal(emac_drop(c, "closing", &err), -EREMOTEIO);
    assert_string_equal(err.code, "NOSESSION");
    struct emac_file f;
    assert_int_equal(emac_load(c, "closing", "nothing", &f, &err), -EREMOTEIO);
    assert_string_equal(err.code, "NOSESSION");

    for (int i = 0; i < 2; i++) {
        read_reply_dec(fd, &dec, &r);
        assert_string_equal(r.code, "");
    }
    wire_decoder_free(&dec);
    close(fd);
    /* Closed: a fresh register of the name is a new session. */
    assert_int_equal(emac_register(c, "closing", seg2, NULL, false, &s, &err), 0);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg2);
    daemon_stop(&d);
}

/* The segment's swap_state. */
static uint32_t swap_state(const emac_segment *seg)
{
    uint32_t st;
    emac_segment_swap_state(seg, &st, NULL);
    return st;
}

/*
 * The crash-safety handshake, phase by phase: a swap is stalled in each of
 * its worker phases (the stash copy, the cast of the shadow into the
 * params, the restore from the stash), the segment's swap_state checked
 * there, and emad killed in it. swap_state says STASHED only once the
 * stash holds the training weights, EMA only once the params hold the EMA
 * weights, TRAIN only once they are back; after the kill in any phase the
 * trainer gets its training weights back from what swap_state says.
 */
static void test_swap_states_hold_in_every_phase_and_after_a_kill(void **state)
{
    /* Chunks: register's journal and initialisation (2), batch 1 (1), then
     * eval_start's stash copy (4th) and cast (5th), eval_end's restore (6th). */
    static const struct {
        const char *after;
        const char *name;
    } phases[] = {{"3", "stash"}, {"4", "cast"}, {"5", "restore"}};
    struct emac_error err;
    (void)state;

    for (size_t p = 0; p < 3; p++) {
        struct daemon d;
        char after[64], shadow[128];
        emac_session *s = NULL;
        emac_ticket ticket;
        snprintf(after, sizeof(after), "EMAD_TEST_STALL_AFTER=%s", phases[p].after);
        make_dir(&d);
        daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=5000", after, NULL});
        emac_client *c = client_connect(&d, "test_restart");
        struct emac_config cfg = {"2ba", false, 0, NULL, NULL};
        assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
        step_params(seg_left, 1);
        assert_int_equal(emac_register(c, "phases", seg_left, &cfg, false, &s, &err), 0);
        snprintf(shadow, sizeof(shadow), "%s", emac_session_state(s)->shadow_shm);
        event_at(s, "batch_end", 1);
        step_params(seg_left, 2); /* training weights now differ from the EMA's */
        const struct seg_header *h = emac_segment_base(seg_left);
        char *base = emac_segment_base(seg_left);
        size_t bytes = h->params_bytes;
        void *train = malloc(bytes);
        assert_non_null(train);
        memcpy(train, base + h->params_offset, bytes);

        struct emac_time t = {.batch = 1};
        uint32_t expect;
        if (p < 2) {
            assert_int_equal(emac_event_send(s, "eval_start", &t, &ticket, &err), 0);
            if (p == 0) {
                sleep_ms(300); /* the request is in; its stash copy stalls */
                expect = SEG_TRAIN;
            } else {
                /* Past the stash: STASHED, never EMA, while the cast stalls. */
                for (int ms = 0; swap_state(seg_left) == SEG_TRAIN && ms < WAIT_MS; ms += 10)
                    sleep_ms(10);
                expect = SEG_STASHED;
                assert_memory_equal(base + h->stash_offset, train, bytes);
            }
        } else {
            event_at(s, "eval_start", 1);
            assert_int_equal(swap_state(seg_left), SEG_EMA);
            assert_int_equal(emac_event_send(s, "eval_end", &t, &ticket, &err), 0);
            sleep_ms(300); /* the request is in; its restore stalls */
            expect = SEG_EMA;
        }
        if (swap_state(seg_left) != expect)
            fail_msg("stalled in the %s phase: swap_state %u, expected %u", phases[p].name,
                     swap_state(seg_left), expect);
        assert_int_equal(kill(d.pid, SIGKILL), 0);
        assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);
        assert_int_equal(swap_state(seg_left), expect);

        /* What the trainer does after losing emad: its training weights. */
        bool restored = false;
        assert_int_equal(emac_segment_restore(seg_left, &restored, &err), 0);
        assert_int_equal(restored, expect != SEG_TRAIN);
        assert_int_equal(swap_state(seg_left), SEG_TRAIN);
        assert_memory_equal(base + h->params_offset, train, bytes);
        free(train);
        emac_session_free(s);
        emac_disconnect(c);
        emac_segment_destroy(seg_left);
        seg_left = NULL;
        /* No emad comes back for the killed one's shadow: remove it. */
        assert_int_equal(shm_unlink(shadow), 0);
        remove_tree(d.dir);
    }
}

/* ---- watchdog ---- */

static int notify_listener(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_true(strlen(path) < sizeof(sa.sun_path));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Receive datagrams until deadline; count WATCHDOG=1 and record the longest
 * gap between two of them. */
static int watch_pings(int fd, double until, double *longest_gap)
{
    char buf[64];
    int count = 0;
    double last = now_s();

    *longest_gap = 0;
    for (;;) {
        double left = until - now_s();
        if (left <= 0)
            break;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)(left * 1000) + 1) != 1)
            continue;
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        if (strcmp(buf, "WATCHDOG=1") != 0)
            continue;
        double t = now_s();
        if (t - last > *longest_gap)
            *longest_gap = t - last;
        last = t;
        count++;
    }
    if (until - last > *longest_gap)
        *longest_gap = until - last;
    return count;
}

/* emad pings WATCHDOG=1 at half of WATCHDOG_USEC while its workers make
 * progress, withholds the pings while a worker is stuck (the test hook
 * EMAD_TEST_STALL_MS stalls the first chunk), and resumes afterwards. */
static void test_watchdog_pings_only_while_workers_progress(void **state)
{
    struct daemon d;
    struct emac_error err;
    char path[200], env_sock[240];
    double gap;
    (void)state;

    make_dir(&d);
    snprintf(path, sizeof(path), "%s/notify", d.dir);
    int nfd = notify_listener(path);
    snprintf(env_sock, sizeof(env_sock), "NOTIFY_SOCKET=%s", path);
    daemon_start_env(&d, NULL, (char *[]){env_sock, "WATCHDOG_USEC=200000",
                                          "EMAD_TEST_STALL_MS=3000", NULL});
    /* Idle: pings every 100 ms. */
    int idle = watch_pings(nfd, now_s() + 1.0, &gap);
    assert_true(idle >= 3);
    assert_true(gap < 0.9);

    /* register's shadow initialisation is the first chunk: it stalls. Send
     * it without waiting, with the raw protocol. */
    assert_int_equal(emac_segment_create(specs, 3, &seg_left, &err), 0);
    int fd = try_connect(d.sock);
    assert_true(fd >= 0);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    struct msg_hello hello = {1, msg_str_c("watchdog test"), false, 0};
    struct msg_tensor t = {msg_str_c("w"), msg_str_c("f32"), 0, N, false, NULL, 0, false, NULL, 0, false, NULL, 0};
    struct msg_register reg;
    memset(&reg, 0, sizeof(reg));
    reg.session = msg_str_c("stalled");
    reg.shm = msg_str_c(emac_segment_name(seg_left));
    reg.tensors = &t;
    reg.ntensors = 1;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 1, "hello");
    msg_encode(&pk, &msg_hello_desc, &hello);
    wire_pack_request_head(&pk, 2, "register");
    msg_encode(&pk, &msg_register_desc, &reg);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);

    /* While the worker is stuck (3 s), no ping for well over a second. */
    double stall_start = now_s();
    watch_pings(nfd, stall_start + 2.2, &gap);
    assert_true(gap > 1.2);
    assert_true(file_contains(d.log, "withholding the watchdog ping"));

    /* The register completes once the worker wakes up, and pings resume. */
    struct reply r;
    read_reply(fd, &r); /* hello */
    read_reply(fd, &r); /* register */
    assert_false(r.eof);
    assert_int_equal(r.msgid, 2);
    assert_string_equal(r.code, "");
    int after = watch_pings(nfd, now_s() + 1.0, &gap);
    assert_true(after >= 3);
    assert_true(file_contains(d.log, "watchdog pings resumed"));
    close(fd);
    close(nfd);
    daemon_stop(&d);
}

/* One emad per state directory: a second one is refused at once, naming
 * the first; once the first is gone (even SIGKILLed) the directory is free. */
static void test_state_directory_is_locked(void **state)
{
    struct daemon d;
    char sock2[160], out[4096];
    (void)state;

    daemon_start(&d, NULL);
    snprintf(sock2, sizeof(sock2), "%s/second.sock", d.dir);
    char *argv[] = {(char *)emad_bin(), "--socket", sock2, "--state-dir", d.state,
                    "--log-file", "/dev/stderr", NULL};
    assert_int_equal(run_capture(argv, NULL, out, sizeof(out)), 1);
    char want[160];
    snprintf(want, sizeof(want), "is in use by another emad (pid %ld)", (long)d.pid);
    assert_non_null(strstr(out, want));
    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_clean_restart_keeps_sessions_detached_with_shadow_and_state,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_sigkill_keeps_sessions_with_shadow_and_counters,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_sigkill_mid_update_is_reported, teardown_seg_left),
        cmocka_unit_test_teardown(test_stop_that_cannot_write_keeps_the_session_for_the_next_start,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_closed_sessions_are_not_resurrected, teardown_seg_left),
        cmocka_unit_test_teardown(test_corrupt_kept_session_is_left_aside, teardown_seg_left),
        cmocka_unit_test_teardown(test_start_removes_shadows_of_dead_emads_only, teardown_seg_left),
        cmocka_unit_test_teardown(test_save_on_a_full_disk_keeps_the_previous_file,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_pipelined_close_keep_then_drop, teardown_seg_left),
        cmocka_unit_test_teardown(test_close_and_drop_reply_after_the_shadow_is_gone,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_resume_of_a_closing_session_is_refused, teardown_seg_left),
        cmocka_unit_test_teardown(test_swap_states_hold_in_every_phase_and_after_a_kill,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_watchdog_pings_only_while_workers_progress,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_state_directory_is_locked, teardown_seg_left),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("restart", tests, NULL, NULL);
}
