/*
 * test_hostile.c - peers that misbehave: a trainer that shrinks its segment
 * under emad, a thousand idle connections, half-sent messages, and a peer
 * of another uid looking at sessions that are not its own. emad must
 * survive each, and nobody else may notice. Harness: harness.h.
 */
#include "emaclient.h"
#include "harness.h"
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define N (1u << 20)

static emac_segment *segs[4];

static int teardown(void **state)
{
    kill_leftovers(state);
    for (size_t i = 0; i < 4; i++) {
        emac_segment_destroy(segs[i]);
        segs[i] = NULL;
    }
    return 0;
}

static emac_client *connect_ok(const struct daemon *d)
{
    struct emac_error err;
    emac_client *c = NULL;

    if (emac_connect(d->sock, "test_hostile", &c, &err) < 0)
        fail_msg("connect: %s: %s", err.code, err.message);
    return c;
}

static emac_session *session_ok(emac_client *c, const char *name, emac_segment **seg)
{
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_config cfg = {"1ba", false, 0, NULL, NULL};
    struct emac_error err;
    emac_session *s = NULL;

    assert_int_equal(emac_segment_create(&spec, 1, seg, &err), 0);
    float *w = emac_segment_tensor(*seg, 0)->data;
    for (size_t i = 0; i < N; i++)
        w[i] = (float)i;
    if (emac_register(c, name, *seg, &cfg, false, &s, &err) < 0)
        fail_msg("register %s: %s: %s", name, err.code, err.message);
    return s;
}

static int event(emac_session *s, const char *ev, uint64_t batch, struct emac_error *err)
{
    struct emac_result r;
    struct emac_time t = {batch, 0, false, 0};
    return emac_event(s, ev, &t, &r, err);
}

/* Shrink the object behind a segment, as a buggy or hostile trainer might. */
static void shrink(emac_segment *seg, off_t size)
{
    int fd = shm_open(emac_segment_name(seg), O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, size), 0);
    close(fd);
}

static void test_shrunk_segment_fails_only_its_session(void **state)
{
    struct daemon d;
    struct emac_error err;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_session *victim = session_ok(c, "victim", &segs[0]);
    emac_session *other = session_ok(c, "other", &segs[1]);
    assert_int_equal(event(victim, "batch_end", 1, &err), 0);

    /* The params are gone past the header: the update faults in a worker. */
    shrink(segs[0], 4096);
    assert_int_equal(event(victim, "batch_end", 2, &err), -EREMOTEIO);
    assert_string_equal(err.code, "SHM");
    assert_non_null(strstr(err.message, "SIGBUS"));
    assert_non_null(strstr(err.message, "victim"));

    /* emad lives on, and the other session updates and swaps as before. */
    float *w = emac_segment_tensor(segs[1], 0)->data;
    for (uint64_t b = 1; b <= 3; b++) {
        w[7] = (float)(100 * b);
        assert_int_equal(event(other, "batch_end", b, &err), 0);
    }
    const float *sh = emac_session_shadow(other, 0)->data;
    /* Half-life 1ba: smoothing 0.5; start at 100, then 150, then 225. */
    assert_true(sh[7] == 225.0f);
    assert_int_equal(event(other, "eval_start", 3, &err), 0);
    assert_int_equal(event(other, "eval_end", 3, &err), 0);
    assert_true(w[7] == 300.0f);

    /* The victim is detached; its owner is told so. */
    struct emac_status *st = NULL;
    assert_int_equal(emac_status(c, "victim", &st, &err), 0);
    assert_false(st->session_list[0].attached);
    emac_status_free(st);
    assert_true(file_contains(d.log, "shrank or vanished"));

    /* Truncated to nothing: even the header is gone. */
    shrink(segs[1], 0);
    assert_int_equal(event(other, "eval_start", 4, &err), -EREMOTEIO);
    assert_string_equal(err.code, "SHM");
    emac_session_free(victim);
    emac_session_free(other);
    emac_disconnect(c);
    daemon_stop(&d);
}

static void test_thousand_idle_connections_and_half_sent_messages(void **state)
{
    struct daemon d;
    struct emac_error err;
    static int fds[900];
    (void)state;

    daemon_start(&d, NULL);
    for (size_t i = 0; i < 900; i++) {
        fds[i] = try_connect(d.sock);
        assert_true(fds[i] >= 0);
    }
    /* Some of them stop in the middle of a message. */
    static const unsigned char half[] = {0x94, 0x00, 0x07, 0xa5, 'h', 'e'};
    for (size_t i = 0; i < 900; i += 10)
        send_bytes(fds[i], half, sizeof(half));

    emac_client *c = connect_ok(&d);
    emac_session *s = session_ok(c, "busy", &segs[2]);
    /* Each batch_end does what it should among the idle crowd: the first
     * starts the EMA at the params (start+update), each next one halves the
     * shadow towards 0 (half-life one batch; powers of two are exact). */
    float *w = emac_segment_tensor(segs[2], 0)->data;
    const float *sh = emac_session_shadow(s, 0)->data;
    for (uint64_t b = 1; b <= 20; b++) {
        struct emac_result r;
        struct emac_time t = {b, 0, false, 0};
        w[5] = b == 1 ? 64.0f : 0.0f;
        assert_int_equal(emac_event(s, "batch_end", &t, &r, &err), 0);
        assert_int_equal(r.action, b == 1 ? EMAC_ACTION_START_UPDATE : EMAC_ACTION_UPDATE);
        assert_int_equal(r.updates, b);
        assert_true(sh[5] == ldexpf(64.0f, -(int)(b - 1)));
        assert_true(sh[6] == 6.0f);
    }
    struct emac_status *st = NULL;
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    assert_true(st->connections >= 901);
    emac_status_free(st);

    for (size_t i = 0; i < 900; i++)
        close(fds[i]);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A peer of another uid, admitted by --allow-group, sees none of root's
 * sessions and can touch none. */
static void test_other_uid_cannot_see_or_touch_sessions(void **state)
{
    struct daemon d;
    struct emac_error err;
    char bin[200], cmd[600], out[8192];
    (void)state;

    if (geteuid() != 0)
        skip();
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    daemon_start_env(&d, (const char *const[]){"--socket-mode", "0666", "--allow-group",
                                               "nogroup", NULL},
                     NULL);
    emac_client *c = connect_ok(&d);
    emac_session *s = session_ok(c, "roots", &segs[3]);
    emac_session_free(s);
    emac_disconnect(c); /* detached: drop would be allowed to its owner */

    snprintf(bin, sizeof(bin), "%s/emactl", d.dir);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0755 '%s'", emactl_bin(), bin, bin);
    assert_int_equal(system(cmd), 0);
    char *list[] = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin,
                    "--socket", d.sock, "list", NULL};
    assert_int_equal(run_capture(list, NULL, out, sizeof(out)), 0);
    assert_null(strstr(out, "roots"));
    char *show[] = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin,
                    "--socket", d.sock, "show", "roots", NULL};
    assert_int_equal(run_capture(show, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "NOSESSION"));
    char *drop[] = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin,
                    "--socket", d.sock, "drop", "roots", NULL};
    assert_int_equal(run_capture(drop, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "NOSESSION"));

    /* Root still has it. */
    c = connect_ok(&d);
    struct emac_status *st = NULL;
    assert_int_equal(emac_status(c, "roots", &st, &err), 0);
    assert_int_equal(st->nsessions, 1);
    emac_status_free(st);
    assert_int_equal(emac_drop(c, "roots", &err), 0);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* --allow-group admits a member through a supplementary group and through
 * the primary one; a peer of another uid in neither is refused, told why. */
static void test_allow_group_admits_supplementary_members_only(void **state)
{
    struct daemon d;
    char bin[200], cmd[600], out[8192];
    (void)state;

    if (geteuid() != 0)
        skip();
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    /* "audio" (gid 29, from Debian's base-passwd): nobody's primary group. */
    daemon_start_env(&d, (const char *const[]){"--socket-mode", "0666", "--allow-group", "audio",
                                               NULL},
                     NULL);
    snprintf(bin, sizeof(bin), "%s/emactl", d.dir);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0755 '%s'", emactl_bin(), bin, bin);
    assert_int_equal(system(cmd), 0);
    char *member[] = {"setpriv", "--reuid=65534", "--regid=65534", "--groups=29", bin,
                      "--socket", d.sock, "list", NULL};
    assert_int_equal(run_capture(member, NULL, out, sizeof(out)), 0);
    char *primary[] = {"setpriv", "--reuid=65534", "--regid=29", "--clear-groups", bin,
                       "--socket", d.sock, "list", NULL};
    assert_int_equal(run_capture(primary, NULL, out, sizeof(out)), 0);
    char *stranger[] = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin,
                        "--socket", d.sock, "list", NULL};
    assert_int_not_equal(run_capture(stranger, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "uid 65534 is not allowed"));
    assert_non_null(strstr(out, "audio"));
    daemon_stop(&d);
}

/*
 * The trainer rewrites its segment's header after register: offsets far
 * out of its mapping (into another user's, or unmapped), sizes past its
 * end. emad reads its geometry once, at register: the swaps and updates
 * that follow use the checked copy, land where they belong, and the other
 * session's shadow is untouched.
 */
static void test_rewritten_header_is_not_read_again(void **state)
{
    static const uint64_t evil[] = {1ull << 44, (1ull << 44) + 4096, UINT64_MAX - 4095, 4096};
    struct daemon d;
    struct emac_error err;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_session *att = session_ok(c, "attacker", &segs[0]);
    emac_session *oth = session_ok(c, "other", &segs[1]);
    assert_int_equal(event(att, "batch_end", 1, &err), 0);
    assert_int_equal(event(oth, "batch_end", 1, &err), 0);
    float *before = malloc(N * sizeof(float));
    assert_non_null(before);
    memcpy(before, emac_session_shadow(oth, 0)->data, N * sizeof(float));

    struct seg_header *h = emac_segment_base(segs[0]);
    const struct seg_header saved = *h;
    float *w = emac_segment_tensor(segs[0], 0)->data;
    const float *sh = emac_session_shadow(att, 0)->data;
    uint64_t batch = 2;
    for (size_t field = 0; field < 4; field++) {
        for (size_t v = 0; v < sizeof(evil) / sizeof(evil[0]); v++, batch++) {
            uint64_t *f = field == 0   ? &h->params_offset
                          : field == 1 ? &h->params_bytes
                          : field == 2 ? &h->stash_offset
                                       : &h->segment_bytes;
            *f = evil[v];
            float train = (float)(1000 + batch);
            w[7] = train;
            /* The swap in and out move the params the header said at register. */
            if (event(att, "eval_start", batch, &err) < 0)
                fail_msg("eval_start with field %zu = %llu: %s: %s", field,
                         (unsigned long long)evil[v], err.code, err.message);
            assert_true(w[7] == sh[7]);
            assert_int_equal(event(att, "eval_end", batch, &err), 0);
            assert_true(w[7] == train);
            float expect = sh[7] * 0.5f + train * 0.5f;
            assert_int_equal(event(att, "batch_end", batch, &err), 0);
            assert_true(sh[7] == expect);
            h->params_offset = saved.params_offset;
            h->params_bytes = saved.params_bytes;
            h->stash_offset = saved.stash_offset;
            h->segment_bytes = saved.segment_bytes;
        }
    }
    /* emad lives, and the other session's shadow is as it was. */
    assert_memory_equal(before, emac_session_shadow(oth, 0)->data, N * sizeof(float));
    assert_int_equal(event(oth, "batch_end", 2, &err), 0);
    free(before);
    emac_session_free(att);
    emac_session_free(oth);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A segment others can write is refused at register, saying which mode it
 * has and what to do; one that others may only read is accepted. */
static void test_segment_others_can_write_is_refused(void **state)
{
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    assert_int_equal(emac_segment_create(&spec, 1, &segs[0], &err), 0);
    int fd = shm_open(emac_segment_name(segs[0]), O_RDWR, 0);
    assert_true(fd >= 0);
    static const mode_t refused[] = {0666, 0620, 0602};
    for (size_t i = 0; i < 3; i++) {
        char mode[16];
        assert_int_equal(fchmod(fd, refused[i]), 0);
        assert_int_equal(emac_register(c, "open", segs[0], NULL, false, &s, &err), -EREMOTEIO);
        assert_string_equal(err.code, "SHM");
        snprintf(mode, sizeof(mode), "mode 0%o", (unsigned)refused[i]);
        assert_non_null(strstr(err.message, mode));
        assert_non_null(strstr(err.message, emac_segment_name(segs[0])));
        assert_non_null(strstr(err.message, "0600"));
    }
    assert_int_equal(fchmod(fd, 0640), 0);
    close(fd);
    if (emac_register(c, "open", segs[0], NULL, false, &s, &err) < 0)
        fail_msg("register with mode 0640: %s: %s", err.code, err.message);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A trainer of emad's own uid resizes its shadow (it may: same uid): the
 * next update faults on the shadow; that session alone fails and is
 * removed, emad and the other session go on. */
static void test_shrunk_shadow_fails_only_its_session(void **state)
{
    struct daemon d;
    struct emac_error err;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = connect_ok(&d);
    emac_session *victim = session_ok(c, "victim", &segs[0]);
    emac_session *other = session_ok(c, "other", &segs[1]);
    assert_int_equal(event(victim, "batch_end", 1, &err), 0);
    char shadow[128];
    snprintf(shadow, sizeof(shadow), "%s", emac_session_state(victim)->shadow_shm);
    int fd = shm_open(shadow, O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    close(fd);
    assert_int_equal(event(victim, "batch_end", 2, &err), -EREMOTEIO);
    assert_string_equal(err.code, "SHM");
    assert_non_null(strstr(err.message, "shadow"));
    assert_non_null(strstr(err.message, "victim"));
    assert_int_equal(event(victim, "batch_end", 3, &err), -EREMOTEIO);
    assert_string_equal(err.code, "NOSESSION");
    assert_true(file_contains(d.log, "was resized or removed"));
    /* Gone: its shadow with it. */
    assert_true(shm_open(shadow, O_RDONLY, 0) < 0);

    float *w = emac_segment_tensor(segs[1], 0)->data;
    w[7] = 300.0f;
    assert_int_equal(event(other, "batch_end", 1, &err), 0);
    assert_int_equal(event(other, "eval_start", 1, &err), 0);
    assert_int_equal(event(other, "eval_end", 1, &err), 0);
    assert_true(w[7] == 300.0f);
    assert_true(emac_session_shadow(other, 0)->data != NULL);
    assert_true(((const float *)emac_session_shadow(other, 0)->data)[7] == 300.0f);
    emac_session_free(victim);
    emac_session_free(other);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* What the trainer of another uid did with its shadow, step by step: the
 * exit status of as_trainer's child is the first step that went wrong. */
enum trainer_step {
    TR_OK = 0,
    TR_SETUID,
    TR_CONNECT,
    TR_SEGMENT,
    TR_REGISTER,
    TR_EVENT,
    TR_READ,        /* cannot open its shadow read-only */
    TR_CHMOD,       /* chmod of the shadow succeeded */
    TR_WRITE,       /* opening the shadow for writing succeeded */
    TR_TRUNCATE,    /* ftruncate of the shadow succeeded */
    TR_AFTER,       /* an update after the attempts failed */
    TR_SHADOW,      /* the shadow does not hold what it should */
};

static int trainer_other_uid(const char *sock)
{
    struct emac_tensor_spec spec = {"w", "f32", 4096, NULL, 0};
    struct emac_config cfg = {"1ba", false, 0, NULL, NULL};
    struct emac_error err;
    emac_client *c = NULL;
    emac_session *s = NULL;
    emac_segment *seg = NULL;
    struct emac_result r;
    int rc = TR_OK;

    if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
        setresuid(65534, 65534, 65534) < 0)
        return TR_SETUID;
    if (emac_connect(sock, "other uid", &c, &err) < 0)
        return TR_CONNECT;
    if (emac_segment_create(&spec, 1, &seg, &err) < 0) {
        rc = TR_SEGMENT;
        goto out;
    }
    float *w = emac_segment_tensor(seg, 0)->data;
    w[3] = 8.0f;
    if (emac_register(c, "theirs", seg, &cfg, false, &s, &err) < 0) {
        rc = TR_REGISTER;
        goto out;
    }
    struct emac_time t = {1, 0, false, 0};
    if (emac_event(s, "batch_end", &t, &r, &err) < 0) {
        rc = TR_EVENT;
        goto out;
    }
    const char *shadow = emac_session_state(s)->shadow_shm;
    char path[200];
    snprintf(path, sizeof(path), "/dev/shm%s", shadow);
    int fd = shm_open(shadow, O_RDONLY, 0);
    if (fd < 0) {
        rc = TR_READ;
        goto out;
    }
    if (fchmod(fd, 0666) == 0 || chmod(path, 0666) == 0)
        rc = TR_CHMOD;
    else if (ftruncate(fd, 4096) == 0)
        rc = TR_TRUNCATE;
    close(fd);
    if (rc != TR_OK)
        goto out;
    if ((fd = shm_open(shadow, O_RDWR, 0)) >= 0) {
        if (ftruncate(fd, 4096) == 0)
            rc = TR_TRUNCATE;
        else
            rc = TR_WRITE;
        close(fd);
        goto out;
    }
    w[3] = 16.0f;
    t.batch = 2;
    if (emac_event(s, "batch_end", &t, &r, &err) < 0) {
        rc = TR_AFTER;
        goto out;
    }
    if (((const float *)emac_session_shadow(s, 0)->data)[3] != 12.0f)
        rc = TR_SHADOW;
    else if (emac_close(s, false, &err) < 0)
        rc = TR_AFTER;
out:
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
    return rc;
}

/* A trainer of another uid can read its shadow, and map it, but cannot
 * chmod, write or resize it: the shadow is emad's. */
static void test_trainer_of_another_uid_cannot_change_its_shadow(void **state)
{
    struct daemon d;
    int status;
    (void)state;

    if (geteuid() != 0)
        skip();
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    daemon_start_env(&d, (const char *const[]){"--socket-mode", "0666", "--allow-group",
                                               "nogroup", NULL},
                     NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(trainer_other_uid(d.sock));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != TR_OK)
        fail_msg("the trainer of uid 65534 failed at step %d (see enum trainer_step)",
                 WEXITSTATUS(status));
    daemon_stop(&d);
}

/* As uid (gid 65534, nogroup): register "shared", one update, then go
 * away leaving it detached. The exit status is a trainer_step. */
static int trainer_leaves_shared(const char *sock, uid_t uid)
{
    struct emac_tensor_spec spec = {"w", "f32", 4096, NULL, 0};
    struct emac_error err;
    emac_client *c = NULL;
    emac_session *s = NULL;
    emac_segment *seg = NULL;
    struct emac_result r;
    struct emac_time t = {1, 0, false, 0};
    int rc = TR_OK;

    if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
        setresuid(uid, uid, uid) < 0)
        return TR_SETUID;
    if (emac_connect(sock, "shared name", &c, &err) < 0)
        return TR_CONNECT;
    if (emac_segment_create(&spec, 1, &seg, &err) < 0)
        rc = TR_SEGMENT;
    else if (emac_register(c, "shared", seg, NULL, false, &s, &err) < 0)
        rc = TR_REGISTER;
    else if (emac_event(s, "batch_end", &t, &r, &err) < 0)
        rc = TR_EVENT;
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
    return rc;
}

static void run_as(const char *sock, uid_t uid)
{
    int status;
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0)
        _exit(trainer_leaves_shared(sock, uid));
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    if (WEXITSTATUS(status) != TR_OK)
        fail_msg("the trainer of uid %ld failed at step %d (see enum trainer_step)", (long)uid,
                 WEXITSTATUS(status));
}

/* The session names listed by root's status, sorted, joined by spaces. */
static void listed(emac_client *c, const char *session, char *out, size_t outlen)
{
    struct emac_error err;
    struct emac_status *st = NULL;

    out[0] = '\0';
    assert_int_equal(emac_status(c, session, &st, &err), 0);
    for (size_t i = 0; i < st->nsessions; i++) {
        size_t n = strlen(out);
        snprintf(out + n, outlen - n, "%s%s", n ? " " : "", st->session_list[i].session);
    }
    emac_status_free(st);
}

static bool has_word(const char *list, const char *word)
{
    size_t n = strlen(word);

    for (const char *p = strstr(list, word); p != NULL; p = strstr(p + 1, word))
        if ((p == list || p[-1] == ' ') && (p[n] == '\0' || p[n] == ' '))
            return true;
    return false;
}

/*
 * Names are per uid: a user cannot squat another's session name. Two
 * users and root each hold a session "shared"; each has its own journal,
 * all three come back after a crash of emad, and root names the others'
 * as <uid>:<name> (how its status shows them), or by the bare name when
 * only one user has it.
 */
static void test_session_names_are_per_uid(void **state)
{
    struct daemon d;
    struct emac_error err;
    char names[1024], path[300];
    (void)state;

    if (geteuid() != 0)
        skip();
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    const char *const args[] = {"--socket-mode", "0666", "--allow-group", "nogroup", NULL};
    daemon_start_env(&d, args, NULL);
    emac_client *c = connect_ok(&d);
    emac_session *mine = session_ok(c, "shared", &segs[0]);
    emac_session_free(mine);
    emac_disconnect(c); /* detached */
    run_as(d.sock, 65534);
    run_as(d.sock, 65533);

    snprintf(path, sizeof(path), "%s/live/shared.emastate", d.state);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof(path), "%s/live/%%u65534-shared.emastate", d.state);
    assert_int_equal(access(path, F_OK), 0);

    daemon_kill(&d);
    daemon_start_env(&d, args, NULL);
    assert_false(file_contains(d.log, "not taken back"));
    c = connect_ok(&d);
    listed(c, NULL, names, sizeof(names));
    assert_true(has_word(names, "shared"));
    assert_true(has_word(names, "65534:shared"));
    assert_true(has_word(names, "65533:shared"));
    listed(c, "shared", names, sizeof(names)); /* root's own first */
    assert_string_equal(names, "shared");
    assert_int_equal(emac_drop(c, "shared", &err), 0);

    /* Two users' of that name: status lists both, a drop must say which. */
    listed(c, "shared", names, sizeof(names));
    assert_true(has_word(names, "65534:shared") && has_word(names, "65533:shared"));
    assert_int_equal(emac_drop(c, "shared", &err), -EREMOTEIO);
    assert_string_equal(err.code, "BADARG");
    assert_non_null(strstr(err.message, "<uid>:<name>"));
    assert_int_equal(emac_drop(c, "65534:shared", &err), 0);
    assert_int_equal(emac_drop(c, "shared", &err), 0); /* the only one left: 65533's */
    listed(c, NULL, names, sizeof(names));
    assert_string_equal(names, "");
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_shrunk_segment_fails_only_its_session, teardown),
        cmocka_unit_test_teardown(test_thousand_idle_connections_and_half_sent_messages,
                                  teardown),
        cmocka_unit_test_teardown(test_other_uid_cannot_see_or_touch_sessions, teardown),
        cmocka_unit_test_teardown(test_allow_group_admits_supplementary_members_only, teardown),
        cmocka_unit_test_teardown(test_rewritten_header_is_not_read_again, teardown),
        cmocka_unit_test_teardown(test_segment_others_can_write_is_refused, teardown),
        cmocka_unit_test_teardown(test_shrunk_shadow_fails_only_its_session, teardown),
        cmocka_unit_test_teardown(test_trainer_of_another_uid_cannot_change_its_shadow, teardown),
        cmocka_unit_test_teardown(test_session_names_are_per_uid, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("hostile", tests, NULL, NULL);
}
