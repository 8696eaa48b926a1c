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
static char raw_name[64]; /* a segment made by hand, unlinked by teardown */

static int teardown(void **state)
{
    kill_leftovers(state);
    if (raw_name[0] != '\0')
        shm_unlink(raw_name);
    raw_name[0] = '\0';
    for (size_t i = 0; i < 4; i++) {
        emac_segment_destroy(segs[i]);
        segs[i] = NULL;
    }
    return 0;
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

/* Start emad with one client (*c) and two sessions of it: "victim" (in
 * segs[0]), updated once, and "other" (in segs[1]). */
static void start_victim_and_other(struct daemon *d, emac_client **c, emac_session **victim,
                                   emac_session **other)
{
    struct emac_error err;

    daemon_start(d, NULL);
    *c = client_connect(d, "test_hostile");
    *victim = session_ok(*c, "victim", &segs[0]);
    *other = session_ok(*c, "other", &segs[1]);
    assert_int_equal(event(*victim, "batch_end", 1, &err), 0);
}

static void test_shrunk_segment_fails_only_its_session(void **state)
{
    struct daemon d;
    struct emac_error err;
    (void)state;

    emac_client *c;
    emac_session *victim, *other;
    start_victim_and_other(&d, &c, &victim, &other);

    /* The params are gone past the header: the update faults (on the loop thread for this small
     * session; tests/run reruns this file with --inline-max 0, where it faults in a worker). */
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

    emac_client *c = client_connect(&d, "test_hostile");
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

/* Run d's copy of emactl (d->dir/emactl) as uid 65534, with setpriv's
 * options regid and groups: emactl --socket d->sock cmd [arg], its output
 * into out (outlen bytes). Returns its exit status, as run_capture(). */
static int emactl_as_65534(const struct daemon *d, const char *regid, const char *groups,
                           const char *cmd, const char *arg, char *out, size_t outlen)
{
    char bin[200];

    snprintf(bin, sizeof(bin), "%s/emactl", d->dir);
    char *argv[] = {"setpriv",  "--reuid=65534", (char *)regid, (char *)groups, bin,
                    "--socket", (char *)d->sock, (char *)cmd,   (char *)arg,    NULL};
    return run_capture(argv, NULL, out, outlen);
}

/* As root: start emad open to the group nogroup (daemon_start_open()), and
 * leave in it a session of root's, name, detached (its segment in *seg). */
static void start_open_with_roots(struct daemon *d, const char *name, emac_segment **seg)
{
    daemon_start_open(d, "nogroup");
    emac_client *c = client_connect(d, "test_hostile");
    emac_session *s = session_ok(c, name, seg);
    emac_session_free(s);
    emac_disconnect(c); /* detached: drop would be allowed to its owner */
}

/* A peer of another uid, admitted by --allow-group, sees none of root's
 * sessions and can touch none. */
static void test_other_uid_cannot_see_or_touch_sessions(void **state)
{
    struct daemon d;
    struct emac_error err;
    char bin[200], out[8192];
    (void)state;

    if (geteuid() != 0)
        skip();
    start_open_with_roots(&d, "roots", &segs[3]);

    snprintf(bin, sizeof(bin), "%s/emactl", d.dir);
    copy_emactl(bin); /* for emactl_as_65534() */
    assert_int_equal(
        emactl_as_65534(&d, "--regid=65534", "--clear-groups", "list", NULL, out, sizeof(out)), 0);
    assert_null(strstr(out, "roots"));
    assert_int_equal(
        emactl_as_65534(&d, "--regid=65534", "--clear-groups", "show", "roots", out, sizeof(out)),
        1);
    assert_non_null(strstr(out, "NOSESSION"));
    assert_int_equal(
        emactl_as_65534(&d, "--regid=65534", "--clear-groups", "drop", "roots", out, sizeof(out)),
        1);
    assert_non_null(strstr(out, "NOSESSION"));

    /* Root still has it. */
    emac_client *c = client_connect(&d, "test_hostile");
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
    char bin[200], out[8192];
    (void)state;

    if (geteuid() != 0)
        skip();
    /* "audio" (gid 29, from Debian's base-passwd): nobody's primary group. */
    daemon_start_open(&d, "audio");
    snprintf(bin, sizeof(bin), "%s/emactl", d.dir);
    copy_emactl(bin); /* for emactl_as_65534() */
    assert_int_equal(
        emactl_as_65534(&d, "--regid=65534", "--groups=29", "list", NULL, out, sizeof(out)), 0);
    assert_int_equal(
        emactl_as_65534(&d, "--regid=29", "--clear-groups", "list", NULL, out, sizeof(out)), 0);
    assert_int_not_equal(
        emactl_as_65534(&d, "--regid=65534", "--clear-groups", "list", NULL, out, sizeof(out)), 0);
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
    emac_client *c = client_connect(&d, "test_hostile");
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

/* Start emad, connect, and make segs[0]: one f32 tensor of 1024. */
static emac_client *start_with_segment(struct daemon *d)
{
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    struct emac_error err;

    daemon_start(d, NULL);
    emac_client *c = client_connect(d, "test_hostile");
    assert_int_equal(emac_segment_create(&spec, 1, &segs[0], &err), 0);
    return c;
}

/* register name on segs[0] must succeed; then close it, disconnect, stop. */
static void register_close_stop(struct daemon *d, emac_client *c, const char *name)
{
    struct emac_error err;
    emac_session *s = NULL;

    if (emac_register(c, name, segs[0], NULL, false, &s, &err) < 0)
        fail_msg("register %s: %s: %s", name, err.code, err.message);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(d);
}

/* A segment others can write is refused at register, saying which mode it
 * has and what to do; one that others may only read is accepted. */
static void test_segment_others_can_write_is_refused(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    (void)state;

    emac_client *c = start_with_segment(&d);
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
    assert_int_equal(fchmod(fd, 0640), 0); /* others may read it: accepted */
    close(fd);
    register_close_stop(&d, c, "open");
}

/* A user cannot call a session "<uid>:<name>": root's status shows another
 * user's session so, and root's drop of that name would reach the impostor. */
static void test_session_named_like_another_users_is_refused(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    (void)state;

    emac_client *c = start_with_segment(&d);
    assert_int_equal(emac_register(c, "1000:run-1", segs[0], NULL, false, &s, &err), -EREMOTEIO);
    assert_string_equal(err.code, "BADARG");
    assert_non_null(strstr(err.message, "<uid>:<name>"));
    register_close_stop(&d, c, "run:1000");
}

/* A segment of one f32 tensor of n elements made by hand, as a hostile
 * trainer would, with no mapping left open (a read lease needs that). */
static void raw_segment(const char *name, uint64_t n)
{
    struct seg_span span = {0, n * 4};
    struct seg_geometry g;
    struct seg_header h;

    assert_int_equal(seg_layout(&span, 1, &g), 0);
    seg_header_init(&h, &g);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)g.segment_bytes), 0);
    assert_int_equal(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
    close(fd);
}

/* Send register {session, shm, tensors: [w f32 n at 0]} as msgid on fd
 * and read its reply. */
static void raw_register(int fd, struct wire_decoder *dec, uint32_t msgid, const char *session,
                         const char *shm, uint64_t n, struct reply *r)
{
    struct msg_tensor t = {msg_str_c("w"), msg_str_c("f32"), 0, n, false, NULL, 0, false, NULL, 0, false, NULL, 0};
    struct msg_register reg;
    msgpack_sbuffer sb;
    msgpack_packer pk;

    memset(&reg, 0, sizeof(reg));
    reg.session = msg_str_c(session);
    reg.shm = msg_str_c(shm);
    reg.tensors = &t;
    reg.ntensors = 1;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, msgid, "register");
    msg_encode(&pk, &msg_register_desc, &reg);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    read_reply_dec(fd, dec, r);
}

/* A trainer that holds a lease on its segment: opening it for writing
 * would sleep until the lease breaks (fs.lease-break-time, 45 s by
 * default) on emad's loop thread, freezing every session. register fails
 * at once with SHM instead, and works once the lease is gone. */
static void test_leased_segment_is_refused_without_waiting(void **state)
{
    char *name = raw_name;
    struct daemon d;
    struct wire_decoder dec;
    struct reply r;
    (void)state;

    snprintf(raw_name, sizeof(raw_name), "/emad-test-lease-%ld", (long)getpid());
    shm_unlink(name);
    raw_segment(name, 1024);
    daemon_start(&d, NULL);
    assert_int_equal(wire_decoder_init(&dec, 1 << 20, 8), 0);
    int c = hello_connect(d.sock, "leaser", &dec);
    int fd = shm_open(name, O_RDONLY, 0);
    assert_true(fd >= 0);
    /* The lease holder is told by SIGIO when someone wants it broken. */
    void (*old)(int) = signal(SIGIO, SIG_IGN);
    if (fcntl(fd, F_SETLEASE, F_RDLCK) < 0)
        fail_msg("F_SETLEASE on the segment: %s", strerror(errno));
    raw_register(c, &dec, 2, "leased", name, 1024, &r);
    assert_int_equal(fcntl(fd, F_SETLEASE, F_UNLCK), 0);
    signal(SIGIO, old);
    close(fd);
    assert_string_equal(r.code, "SHM");
    assert_non_null(strstr(r.message, "leased"));
    raw_register(c, &dec, 3, "leased", name, 1024, &r);
    if (r.code[0] != '\0')
        fail_msg("register once the lease is gone: %s: %s", r.code, r.message);
    close(c);
    wire_decoder_free(&dec);
    shm_unlink(name);
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

    emac_client *c;
    emac_session *victim, *other;
    start_victim_and_other(&d, &c, &victim, &other);
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

/* A trainer run as another uid (run_as_uid()): its connection, its segment
 * of one f32 tensor "w" of 4096, its session. */
struct child_trainer {
    emac_client *c;
    emac_segment *seg;
    emac_session *s;
};

static const struct emac_config one_ba = {"1ba", false, 0, NULL, NULL};

/* Connect to sock as client, make the segment (w[3] := w3), register
 * session with cfg (NULL: emad's defaults) and send batch_end at batch 1.
 * false, with v filled, when a step fails; child_end() cleans up either way. */
static bool child_start(struct child_trainer *t, const char *sock, const char *client,
                        const char *session, const struct emac_config *cfg, float w3,
                        struct verdict *v)
{
    struct emac_tensor_spec spec = {"w", "f32", 4096, NULL, 0};
    struct emac_time time = {1, 0, false, 0};
    struct emac_error err;
    struct emac_result r;

    memset(t, 0, sizeof(*t));
    CHILD_CHECK(v, emac_connect(sock, client, &t->c, &err) == 0, "connect: %s: %s", err.code,
                err.message);
    CHILD_CHECK(v, emac_segment_create(&spec, 1, &t->seg, &err) == 0, "segment: %s", err.message);
    ((float *)emac_segment_tensor(t->seg, 0)->data)[3] = w3;
    CHILD_CHECK(v, emac_register(t->c, session, t->seg, cfg, false, &t->s, &err) == 0,
                "register: %s: %s", err.code, err.message);
    CHILD_CHECK(v, emac_event(t->s, "batch_end", &time, &r, &err) == 0, "batch_end: %s: %s",
                err.code, err.message);
    return true;
out:
    return false;
}

static void child_end(struct child_trainer *t)
{
    emac_session_free(t->s);
    emac_segment_destroy(t->seg);
    emac_disconnect(t->c);
}

/* As the other uid (run_as_uid()): register "theirs" on sock, one update;
 * its shadow then opens read-only, but cannot be chmodded, opened for
 * writing or resized; the next update still works, and the shadow holds
 * what it should. */
static void trainer_other_uid(const void *sock, struct verdict *v)
{
    struct child_trainer tr;
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {1, 0, false, 0};
    char path[200];
    int fd = -1;

    if (!child_start(&tr, sock, "other uid", "theirs", &one_ba, 8.0f, v))
        goto out;
    emac_session *s = tr.s;
    float *w = emac_segment_tensor(tr.seg, 0)->data;
    const char *shadow = emac_session_state(s)->shadow_shm;
    snprintf(path, sizeof(path), "/dev/shm%s", shadow);
    fd = shm_open(shadow, O_RDONLY, 0);
    CHILD_CHECK(v, fd >= 0, "cannot open its shadow read-only: %s", strerror(errno));
    CHILD_CHECK(v, fchmod(fd, 0666) != 0 && chmod(path, 0666) != 0,
                "chmod of its shadow succeeded");
    CHILD_CHECK(v, ftruncate(fd, 4096) != 0, "ftruncate of its shadow succeeded");
    close(fd);
    fd = shm_open(shadow, O_RDWR, 0);
    CHILD_CHECK(v, fd < 0 || ftruncate(fd, 4096) != 0, "ftruncate of its shadow succeeded");
    CHILD_CHECK(v, fd < 0, "opening its shadow for writing succeeded");
    w[3] = 16.0f;
    t.batch = 2;
    CHILD_CHECK(v, emac_event(s, "batch_end", &t, &r, &err) == 0,
                "an update after the attempts: %s: %s", err.code, err.message);
    const float got = ((const float *)emac_session_shadow(s, 0)->data)[3];
    CHILD_CHECK(v, got == 12.0f, "the shadow holds %g, not 12", (double)got);
    CHILD_CHECK(v, emac_close(s, false, &err) == 0, "close: %s: %s", err.code, err.message);
out:
    if (fd >= 0)
        close(fd);
    child_end(&tr);
}

/* A trainer of another uid can read its shadow, and map it, but cannot
 * chmod, write or resize it: the shadow is emad's. */
static void test_trainer_of_another_uid_cannot_change_its_shadow(void **state)
{
    struct daemon d;
    (void)state;

    if (geteuid() != 0)
        skip();
    daemon_start_open(&d, "nogroup");
    run_as_uid(65534, 65534, trainer_other_uid, d.sock);
    daemon_stop(&d);
}

/* As another uid, against an emad whose /dev/shm refuses ACLs: the shadow
 * is the trainer's own (0400), so it can resize it; its next update fails
 * with SHM, and only its session. */
static void trainer_resizes_its_shadow(const void *sock, struct verdict *v)
{
    struct child_trainer tr;
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {1, 0, false, 0};
    struct stat st;
    char path[200];
    int fd = -1;

    if (!child_start(&tr, sock, "resizer", "theirs", &one_ba, 0.0f, v))
        goto out;
    emac_session *s = tr.s;
    snprintf(path, sizeof(path), "/dev/shm%s", emac_session_state(s)->shadow_shm);
    CHILD_CHECK(v, stat(path, &st) == 0 && st.st_uid == getuid() && (st.st_mode & 0777) == 0400,
                "without ACLs the shadow should be the trainer's, 0400");
    CHILD_CHECK(v, chmod(path, 0600) == 0, "chmod of its own shadow: %s", strerror(errno));
    fd = open(path, O_RDWR | O_CLOEXEC);
    CHILD_CHECK(v, fd >= 0 && ftruncate(fd, 4096) == 0, "resizing its shadow: %s", strerror(errno));
    t.batch = 2;
    CHILD_CHECK(v, emac_event(s, "batch_end", &t, &r, &err) != 0 && strcmp(err.code, "SHM") == 0,
                "an update into a resized shadow should fail with SHM, got %s: %s", err.code,
                err.message);
out:
    if (fd >= 0)
        close(fd);
    child_end(&tr);
}

/* Where /dev/shm has no ACLs, emad gives shadows to their trainers (and
 * says so once): a trainer that resizes its own shadow fails its own
 * session, never emad or another session. */
static void test_without_acls_a_resized_shadow_fails_only_its_session(void **state)
{
    const char *extra[] = {"--socket-mode", "0666", "--allow-group", "nogroup", NULL};
    char preload[SHIM_PRELOAD_MAX], asan[SHIM_ASAN_MAX], no_acl[] = "EMAD_TEST_NO_ACL=1";
    char *envs[] = {preload, asan, no_acl, NULL};
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {1, 0, false, 0};
    emac_client *c;
    struct daemon d;
    (void)state;

    if (geteuid() != 0)
        skip();
    shim_preload(preload, asan);
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    daemon_start_env(&d, extra, envs);
    assert_int_equal(emac_connect(d.sock, "root", &c, &err), 0);
    emac_session *mine = session_ok(c, "mine", &segs[0]);
    assert_int_equal(emac_event(mine, "batch_end", &t, &r, &err), 0);

    run_as_uid(65534, 65534, trainer_resizes_its_shadow, d.sock);

    t.batch = 2;
    assert_int_equal(emac_event(mine, "batch_end", &t, &r, &err), 0);
    assert_int_equal(r.action, EMAC_ACTION_UPDATE);
    assert_int_equal(r.updates, 2);
    assert_int_equal(count_lines(d.log, "/dev/shm refuses POSIX ACLs"), 1);
    assert_true(file_contains(d.log, "was resized or removed while emad used it"));
    assert_int_equal(emac_close(mine, false, &err), 0);
    emac_session_free(mine);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* As another uid (run_as_uid()): register "shared" on sock, one update,
 * then go away leaving it detached. */
static void trainer_leaves_shared(const void *sock, struct verdict *v)
{
    struct child_trainer tr;

    child_start(&tr, sock, "shared name", "shared", NULL, 0.0f, v);
    child_end(&tr);
}

/* Run trainer_leaves_shared() as uid (gid 65534, nogroup). */
static void run_as(const char *sock, uid_t uid)
{
    run_as_uid(uid, 65534, trainer_leaves_shared, sock);
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
    start_open_with_roots(&d, "shared", &segs[0]);
    run_as(d.sock, 65534);
    run_as(d.sock, 65533);

    snprintf(path, sizeof(path), "%s/live/shared.emastate", d.state);
    assert_int_equal(access(path, F_OK), 0);
    snprintf(path, sizeof(path), "%s/live/%%u65534-shared.emastate", d.state);
    assert_int_equal(access(path, F_OK), 0);

    daemon_kill(&d);
    daemon_restart_open(&d, "nogroup");
    assert_false(file_contains(d.log, "not taken back"));
    emac_client *c = client_connect(&d, "test_hostile");
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

/* As another uid: register "a" and "b", then "c" beyond --max-sessions-per-uid 2 (LIMIT,
 * naming the uid and the option), and leave "a" and "b" detached. */
static void trainer_fills_its_quota(const void *sock, struct verdict *v)
{
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    emac_segment *seg[3] = {NULL, NULL, NULL};
    emac_session *s[3] = {NULL, NULL, NULL};
    const char *names[3] = {"a", "b", "c"};
    struct emac_error err;
    emac_client *c = NULL;
    char uid[32];

    snprintf(uid, sizeof(uid), "uid %ld holds 2 sessions", (long)getuid());
    CHILD_CHECK(v, emac_connect(sock, "quota", &c, &err) == 0, "connect: %s", err.message);
    for (int i = 0; i < 3; i++) {
        CHILD_CHECK(v, emac_segment_create(&spec, 1, &seg[i], &err) == 0, "segment: %s",
                    err.message);
        int rc = emac_register(c, names[i], seg[i], NULL, false, &s[i], &err);
        if (i < 2)
            CHILD_CHECK(v, rc == 0, "register %s: %s: %s", names[i], err.code, err.message);
        else
            CHILD_CHECK(v,
                        rc != 0 && strcmp(err.code, "LIMIT") == 0 &&
                            strstr(err.message, uid) != NULL &&
                            strstr(err.message, "--max-sessions-per-uid") != NULL,
                        "register c: rc %d, %s: %s", rc, err.code, err.message);
    }
out:
    for (int i = 0; i < 3; i++) {
        emac_session_free(s[i]);
        emac_segment_destroy(seg[i]);
    }
    emac_disconnect(c);
}

/* As a second uid: its own quota is whole while the first uid's is used up. */
static void trainer_of_another_uid_registers(const void *sock, struct verdict *v)
{
    struct child_trainer tr;

    child_start(&tr, sock, "second uid", "a", &one_ba, 1.0f, v);
    child_end(&tr);
}

/* The per-uid session limit is per uid: one user at its limit neither blocks another user
 * nor root. */
static void test_one_uid_at_its_limit_leaves_the_others_theirs(void **state)
{
    struct daemon d;
    struct emac_error err;
    char names[1024];
    const char *extra[] = {
        "--socket-mode", "0666", "--allow-group", "nogroup", "--max-sessions-per-uid", "2", NULL};
    (void)state;

    if (geteuid() != 0)
        skip();
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    daemon_start_env(&d, extra, NULL);
    run_as_uid(65534, 65534, trainer_fills_its_quota, d.sock);
    run_as_uid(65533, 65534, trainer_of_another_uid_registers, d.sock);
    emac_client *c = client_connect(&d, "test_hostile");
    emac_session *s = session_ok(c, "roots", &segs[0]);
    listed(c, NULL, names, sizeof(names));
    assert_true(has_word(names, "65534:a") && has_word(names, "65534:b"));
    assert_false(has_word(names, "65534:c"));
    assert_true(has_word(names, "65533:a"));
    assert_true(has_word(names, "roots"));
    emac_session_free(s);
    emac_disconnect(c); /* "roots" detached: root may drop it with the others */
    c = client_connect(&d, "test_hostile");
    const char *drop[] = {"65534:a", "65534:b", "65533:a", "roots"};
    for (size_t i = 0; i < 4; i++)
        if (emac_drop(c, drop[i], &err) != 0)
            fail_msg("drop %s: %s: %s", drop[i], err.code, err.message);
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_shrunk_segment_fails_only_its_session, teardown),
        cmocka_unit_test_teardown(test_thousand_idle_connections_and_half_sent_messages, teardown),
        cmocka_unit_test_teardown(test_other_uid_cannot_see_or_touch_sessions, teardown),
        cmocka_unit_test_teardown(test_allow_group_admits_supplementary_members_only, teardown),
        cmocka_unit_test_teardown(test_rewritten_header_is_not_read_again, teardown),
        cmocka_unit_test_teardown(test_segment_others_can_write_is_refused, teardown),
        cmocka_unit_test_teardown(test_shrunk_shadow_fails_only_its_session, teardown),
        cmocka_unit_test_teardown(test_trainer_of_another_uid_cannot_change_its_shadow, teardown),
        cmocka_unit_test_teardown(test_session_names_are_per_uid, teardown),
        cmocka_unit_test_teardown(test_leased_segment_is_refused_without_waiting, teardown),
        cmocka_unit_test_teardown(test_session_named_like_another_users_is_refused, teardown),
        cmocka_unit_test_teardown(test_without_acls_a_resized_shadow_fails_only_its_session,
                                  teardown),
        cmocka_unit_test_teardown(test_one_uid_at_its_limit_leaves_the_others_theirs, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("hostile", tests, NULL, NULL);
}
