/*
 * test_registry.c - the session layer driven directly, in process, against
 * a fake peer (peer.h): no socket, no daemon. A request goes in through the
 * handlers dispatch calls; the loop and the worker pool run until the pool
 * is idle; the fake peer records what was answered, in order.
 */
#include "pool.h"
#include "segment.h"
#include "session_impl.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#define PARAMS_BYTES 4096u
#define MAX_ANSWERS 16

struct answer {
    uint32_t msgid;
    const struct msg_desc *desc; /* NULL: an error */
    char code[32];
    uint64_t updates;            /* an action's */
};

struct fake_peer {
    struct peer peer;            /* first: the ops get it back */
    struct answer answers[MAX_ANSWERS];
    size_t nanswers;
    unsigned held;               /* operations holding the peer */
    size_t held_bytes;
};

static void fake_reply(struct peer *p, uint32_t msgid, const struct msg_desc *d,
                       const void *result)
{
    struct fake_peer *f = (struct fake_peer *)p;
    struct answer *a = &f->answers[f->nanswers++];

    assert_true(f->nanswers <= MAX_ANSWERS);
    a->msgid = msgid;
    a->desc = d;
    if (d == &msg_action_desc)
        a->updates = ((const struct msg_action *)result)->updates;
}

static void fake_fail(struct peer *p, uint32_t msgid, const char *code, const char *text)
{
    struct fake_peer *f = (struct fake_peer *)p;
    struct answer *a = &f->answers[f->nanswers++];

    (void)text;
    assert_true(f->nanswers <= MAX_ANSWERS);
    a->msgid = msgid;
    snprintf(a->code, sizeof(a->code), "%s", code);
}

static void fake_hold(struct peer *p, size_t bytes)
{
    struct fake_peer *f = (struct fake_peer *)p;

    f->held++;
    f->held_bytes += bytes;
}

static void fake_release(struct peer *p, size_t bytes)
{
    struct fake_peer *f = (struct fake_peer *)p;

    assert_true(f->held > 0 && f->held_bytes >= bytes);
    f->held--;
    f->held_bytes -= bytes;
}

static const struct peer_ops fake_ops = {fake_reply, fake_fail, fake_hold, fake_release};

/* emad's context with one worker, a state directory of its own, and one
 * trainer segment of one f32 tensor. */
struct fixture {
    char dir[64], state_dir[96], sock[96], seg_name[64];
    struct emad_opts opts;
    struct log log;
    uv_loop_t loop;
    struct pool pool;
    struct emad ctx;
    struct registry reg;
    struct fake_peer trainer;
};

static int setup(void **state)
{
    struct fixture *F = calloc(1, sizeof(*F));
    struct opts_env env = {.uid = geteuid(), .online_cpus = 1};
    struct seg_span span = {0, PARAMS_BYTES};
    struct seg_geometry g;
    char err[256];

    assert_non_null(F);
    snprintf(F->dir, sizeof(F->dir), "/tmp/emad-test-registry.XXXXXX");
    assert_non_null(mkdtemp(F->dir));
    snprintf(F->state_dir, sizeof(F->state_dir), "%s/state", F->dir);
    snprintf(F->sock, sizeof(F->sock), "%s/emad.sock", F->dir);
    char *args[] = {"emad", "--socket", F->sock, "--state-dir", F->state_dir,
                    "--workers", "1", "--log-level", "error", NULL};
    assert_int_equal(opts_parse(&F->opts, 9, args, &env, err, sizeof(err)), OPTS_RUN);
    assert_int_equal(log_open(&F->log, NULL, F->opts.log_level), 0);
    assert_int_equal(uv_loop_init(&F->loop), 0);
    assert_int_equal(pool_init(&F->pool, &F->loop, 1), 0);
    F->ctx = (struct emad){.loop = &F->loop, .opts = &F->opts, .log = &F->log,
                           .sessions = &F->reg, .pool = &F->pool};
    registry_init(&F->reg, &F->ctx);
    F->reg.live_dir[0] = '\0'; /* no journals: the state directory is not made */

    snprintf(F->seg_name, sizeof(F->seg_name), "/emad-test-registry-%ld", (long)getpid());
    assert_int_equal(seg_layout(&span, 1, &g), 0);
    int fd = shm_open(F->seg_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)g.segment_bytes), 0);
    void *seg = mmap(NULL, g.segment_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(seg != MAP_FAILED);
    seg_header_init(seg, &g);
    munmap(seg, g.segment_bytes);

    F->trainer.peer = (struct peer){.ops = &fake_ops, .id = 1, .uid = geteuid(),
                                    .gid = getegid(), .pid = getpid(), .hello = true};
    *state = F;
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    struct fixture *F = *state;

    /* registry_free leaves the shadows of sessions no state file keeps for
     * the next start (as after a crash): not wanted here. */
    for (struct session *s = F->reg.head; s != NULL; s = s->next)
        if (s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
    registry_free(&F->reg);
    pool_destroy(&F->pool);
    uv_run(&F->loop, UV_RUN_NOWAIT);
    uv_loop_close(&F->loop);
    shm_unlink(F->seg_name);
    nftw(F->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(F);
    return 0;
}

/* Run the loop until no job is on the pool. */
static void settle(struct fixture *F)
{
    uv_run(&F->loop, UV_RUN_NOWAIT);
    while (pool_in_flight(&F->pool) > 0)
        uv_run(&F->loop, UV_RUN_ONCE);
    uv_run(&F->loop, UV_RUN_NOWAIT);
}

static void do_register(struct fixture *F, uint32_t msgid)
{
    struct msg_tensor t = {msg_str_c("w"), msg_str_c("f32"), 0, PARAMS_BYTES / 4, false, NULL, 0, false, NULL, 0, false, NULL, 0};
    struct msg_register req = {.session = msg_str_c("run"), .shm = msg_str_c(F->seg_name),
                               .tensors = &t, .ntensors = 1};

    session_register(&F->reg, &F->trainer.peer, msgid, &req);
}

static void do_event(struct fixture *F, uint32_t msgid, const char *ev, uint64_t batch)
{
    struct msg_event req = {.session = msg_str_c("run"), .event = msg_str_c(ev),
                            .time = {.batch = batch}};

    session_event(&F->reg, &F->trainer.peer, msgid, &req);
}

static void test_register_answers_once_the_shadow_is_made(void **state)
{
    struct fixture *F = *state;

    do_register(F, 7);
    assert_int_equal(F->reg.count, 1);
    settle(F);
    assert_int_equal(F->trainer.nanswers, 1);
    assert_int_equal(F->trainer.answers[0].msgid, 7);
    assert_ptr_equal(F->trainer.answers[0].desc, &msg_register_reply_desc);
    assert_true(F->reg.head->ready);
    assert_ptr_equal(F->reg.head->owner, &F->trainer.peer);
    assert_int_equal(F->trainer.held, 0);
    assert_int_equal(F->trainer.held_bytes, 0);
}

/* Pipelined requests of one session are answered in arrival order, each
 * holding the peer until it is answered. */
static void test_events_are_answered_in_arrival_order(void **state)
{
    struct fixture *F = *state;

    do_register(F, 1);
    do_event(F, 2, "batch_end", 1);
    do_event(F, 3, "batch_end", 2);
    do_event(F, 4, "batch_end", 3);
    assert_int_equal(F->trainer.held, 4);
    settle(F);
    assert_int_equal(F->trainer.nanswers, 4);
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(F->trainer.answers[i].msgid, i + 1);
    for (size_t i = 1; i < 4; i++) {
        assert_ptr_equal(F->trainer.answers[i].desc, &msg_action_desc);
        assert_int_equal(F->trainer.answers[i].updates, i);
    }
    assert_int_equal(F->trainer.held, 0);
}

/* An event holds only what an event needs: no file or segment buffers. */
static void test_an_event_holds_less_than_a_save(void **state)
{
    struct fixture *F = *state;
    struct msg_file save = {.session = msg_str_c("run")};
    size_t event_bytes;

    do_register(F, 1);
    settle(F);
    do_event(F, 2, "batch_end", 1);
    event_bytes = F->trainer.held_bytes;
    settle(F);
    assert_true(event_bytes > 0 && event_bytes < 1024);
    session_save(&F->reg, &F->trainer.peer, 3, &save);
    assert_true(F->trainer.held_bytes > 4 * event_bytes);
    settle(F);
    assert_int_equal(F->trainer.held_bytes, 0);
}

static void test_closed_peer_detaches_and_close_removes(void **state)
{
    struct fixture *F = *state;
    struct msg_close close = {.session = msg_str_c("run")};
    struct fake_peer other = {.peer = F->trainer.peer};

    do_register(F, 1);
    settle(F);
    registry_peer_closed(&F->reg, &F->trainer.peer);
    assert_null(F->reg.head->owner);
    /* Detached: an event is refused with PERM, not queued. */
    do_event(F, 2, "batch_end", 1);
    assert_int_equal(F->trainer.nanswers, 2);
    assert_string_equal(F->trainer.answers[1].code, MSG_E_PERM);
    /* Another connection of the same uid resumes it, then closes it. */
    struct msg_tensor t = {msg_str_c("w"), msg_str_c("f32"), 0, PARAMS_BYTES / 4, false, NULL, 0, false, NULL, 0, false, NULL, 0};
    struct msg_register req = {.session = msg_str_c("run"), .shm = msg_str_c(F->seg_name),
                               .tensors = &t, .ntensors = 1, .has_resume = true,
                               .resume = true};
    other.peer.id = 2;
    session_register(&F->reg, &other.peer, 3, &req);
    session_close(&F->reg, &other.peer, 4, &close);
    settle(F);
    assert_int_equal(other.nanswers, 2);
    assert_ptr_equal(other.answers[0].desc, &msg_register_reply_desc);
    assert_ptr_equal(other.answers[1].desc, &msg_empty_desc);
    assert_int_equal(F->reg.count, 0);
    assert_int_equal(other.held, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_register_answers_once_the_shadow_is_made, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_events_are_answered_in_arrival_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_an_event_holds_less_than_a_save, setup, teardown),
        cmocka_unit_test_setup_teardown(test_closed_peer_detaches_and_close_removes, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("registry", tests, NULL, NULL);
}
