/*
 * test_reconnect.c - a trainer goes on through a crash of emad: the library
 * reconnects, resumes its sessions and sends again what was not answered,
 * and an update is never applied twice without notice. emad runs as a
 * subprocess (harness.h); the trainer side is libemaclient, and the raw
 * protocol where the library would hide what is checked.
 */
#include "emaclient.h"
#include "harness.h"
#include "msg.h"
#include "segment.h"
#include "session.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define N 4096

static const struct emac_tensor_spec specs[] = {
    {"w", "f32", N, NULL, 0},
    {"h", "f16", N, NULL, 0},
};

static void step_params(emac_segment *seg, int step)
{
    float *w = emac_segment_tensor(seg, 0)->data;
    uint16_t *h = emac_segment_tensor(seg, 1)->data;

    for (size_t i = 0; i < N; i++) {
        w[i] = (float)i * 0.01f + (float)step;
        h[i] = (uint16_t)(0x3c00 + (i * 7 + (size_t)step * 13) % 512);
    }
}

/* Both tensors' shadows, end to end. */
static void *shadow_copy(const emac_session *s, size_t *bytes)
{
    const struct emac_shadow *first = emac_session_shadow(s, 0), *last = emac_session_shadow(s, 1);
    size_t n = last->offset + last->numel * last->elem_size - first->offset;
    void *copy = malloc(n);

    assert_non_null(copy);
    memcpy(copy, first->data, n);
    *bytes = n;
    return copy;
}

/*
 * The batches 1..8 of one trainer (half-life 2ba, start at 2ba), with emad
 * SIGKILLed and started again after batch `crash_after` (0: never). Returns
 * the shadow at the end and the results of every batch_end.
 */
static void *train(int crash_after, struct emac_result res[9], size_t *bytes,
                   unsigned *reconnects)
{
    struct daemon d;
    struct emac_error err;
    struct emac_config cfg = {"2ba", false, 0, NULL, "2ba"};
    emac_session *s = NULL;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "through", seg_left, &cfg, false, &s, &err), 0);
    const void *mapped = emac_session_shadow(s, 0)->data;
    for (int b = 1; b <= 8; b++) {
        step_params(seg_left, b);
        res[b] = event_at(s, "batch_end", (uint64_t)b);
        assert_false(res[b].replayed);
        assert_false(res[b].interrupted);
        if (b == crash_after) {
            daemon_kill(&d);
            daemon_start_env(&d, NULL, NULL);
        }
    }
    /* The shadow stayed where the trainer had it mapped, and it is the
     * restarted emad's that shows there. */
    assert_ptr_equal(emac_session_shadow(s, 0)->data, mapped);
    void *shadow = shadow_copy(s, bytes);
    struct emac_status *st = NULL;
    assert_int_equal(emac_status(c, "through", &st, &err), 0);
    assert_true(st->session_list[0].attached);
    assert_int_equal(st->session_list[0].owner_pid, (long)getpid());
    assert_int_equal(st->session_list[0].updates, res[8].updates);
    assert_int_equal(st->session_list[0].seq, 8);
    assert_false(st->session_list[0].interrupted);
    assert_string_equal(st->session_list[0].shadow_shm, emac_session_state(s)->shadow_shm);
    emac_status_free(st);
    *reconnects = emac_reconnects(c);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg_left);
    seg_left = NULL;
    daemon_stop(&d);
    return shadow;
}

/* emad dies between two batches and comes back: the trainer's next call
 * goes through, and the run ends bit for bit where one without a crash does. */
static void test_trainer_goes_on_through_a_restart_bit_exact(void **state)
{
    struct emac_result plain[9], crashed[9];
    size_t plain_len, crashed_len;
    unsigned plain_rc, crashed_rc;
    (void)state;

    void *want = train(0, plain, &plain_len, &plain_rc);
    void *got = train(4, crashed, &crashed_len, &crashed_rc);
    assert_int_equal(plain_rc, 0);
    assert_int_equal(crashed_rc, 1);
    for (int b = 1; b <= 8; b++) {
        assert_int_equal(crashed[b].action, plain[b].action);
        assert_int_equal(crashed[b].updates, plain[b].updates);
    }
    assert_int_equal(plain_len, crashed_len);
    assert_memory_equal(want, got, plain_len);
    free(want);
    free(got);
}

struct later_start {
    struct daemon *d;
    int delay_ms;
};

static void *start_later(void *arg)
{
    struct later_start *l = arg;

    sleep_ms(l->delay_ms);
    daemon_start_env(l->d, NULL, NULL);
    return NULL;
}

/*
 * emad stays down past the reconnect timeout: the call fails, naming the
 * attempts, and nothing of it is sent later. When emad is back, the next
 * call reconnects, even while the trainer is already waiting in it.
 */
static void test_backoff_gives_up_then_a_later_call_reconnects(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_reconnect policy;
    emac_session *s = NULL;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    emac_reconnect_defaults(&policy);
    policy.initial_delay_ms = 10;
    policy.max_delay_ms = 40;
    policy.timeout_ms = 300;
    assert_int_equal(emac_set_reconnect(c, &policy, &err), 0);
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "patient", seg_left, NULL, false, &s, &err), 0);
    step_params(seg_left, 1);
    r = event_at(s, "batch_end", 1);
    assert_int_equal(r.updates, 1);

    daemon_kill(&d);
    struct emac_time t = {.batch = 2};
    assert_true(emac_event(s, "batch_end", &t, &r, &err) < 0);
    assert_string_equal(err.code, "DISCONNECTED");
    assert_non_null(strstr(err.message, "gave up after"));
    assert_non_null(strstr(err.message, "attempts"));
    emac_ticket tk;
    assert_true(emac_event_send(s, "batch_end", &t, &tk, &err) < 0);
    assert_string_equal(err.code, "DISCONNECTED");

    /* Bad policies are refused, naming the field. */
    struct emac_reconnect bad = policy;
    bad.initial_delay_ms = 0;
    assert_int_equal(emac_set_reconnect(c, &bad, &err), -EINVAL);
    assert_non_null(strstr(err.message, "initial_delay_ms"));
    bad = policy;
    bad.max_delay_ms = 5;
    assert_int_equal(emac_set_reconnect(c, &bad, &err), -EINVAL);
    assert_non_null(strstr(err.message, "max_delay_ms"));

    /* emad comes back while the call is backing off (a long timeout now). */
    policy.timeout_ms = 60000;
    assert_int_equal(emac_set_reconnect(c, &policy, &err), 0);
    struct later_start l = {&d, 200};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, start_later, &l), 0);
    r = event_at(s, "batch_end", 2);
    assert_int_equal(pthread_join(th, NULL), 0);
    /* Batch 2's failed attempts were never sent: it was applied once. */
    assert_int_equal(r.updates, 2);
    assert_false(r.replayed);
    assert_int_equal(emac_reconnects(c), 1);
    assert_true(file_contains(d.log, "resumed by pid"));
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- an update cut short ---- */

#define BIG (3u << 20) /* three chunks of the plan, and the small tensor a fourth */

static const struct emac_tensor_spec big_specs[] = {
    {"w", "f32", BIG, NULL, 0},
    {"h", "f16", N, NULL, 0},
};

static void big_params(emac_segment *seg, int step)
{
    float *w = emac_segment_tensor(seg, 0)->data;
    uint16_t *h = emac_segment_tensor(seg, 1)->data;

    for (size_t i = 0; i < BIG; i++)
        w[i] = (float)(i % 1000) * 0.001f + (float)step;
    for (size_t i = 0; i < N; i++)
        h[i] = (uint16_t)(0x3c00 + (i * 7 + (size_t)step * 13) % 512);
}

/* As a crash would leave it halfway through a block: the first half of
 * the block written (garbage here) with its old values in the record's
 * undo, the second half untouched with undo still unset. */
static void tamper_mid_block(const emac_session *s, size_t *chunk)
{
    const struct emac_session_info *si = emac_session_state(s);
    uint64_t redo_off = (si->shadow_bytes + 63) & ~(uint64_t)63;
    int fd = shm_open(si->shadow_shm, O_RDWR, 0);
    assert_true(fd >= 0);
    size_t len = redo_off + 4 * sizeof(struct redo_rec);
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(base != MAP_FAILED);
    const struct shadow_header *h = (const void *)base;
    struct redo_rec *rec = (void *)(base + redo_off);
    float *w = (float *)(base + emac_session_shadow(s, 0)->offset);

    assert_true(h->seq_begun != h->seq_done); /* cut short */
    *chunk = 3;
    for (size_t c = 0; c < 3; c++) {
        assert_int_equal(rec[c].seq, h->redo_of);
        if (rec[c].done_to < (1u << 20)) {
            assert_int_equal(*chunk, 3); /* one chunk only: the one held back */
            *chunk = c;
        }
    }
    assert_true(*chunk < 3);
    struct redo_rec *r = &rec[*chunk];
    float *block = w + ((size_t)*chunk << 20) + r->done_to;
    const size_t half = REDO_BLOCK_ELEMS / 2;
    memset(r->undo, UNDO_UNSET, REDO_BLOCK_ELEMS * sizeof(float));
    memcpy(r->undo, block, half * sizeof(float));
    r->undo_count = REDO_BLOCK_ELEMS;
    r->undo_at = r->done_to;
    for (size_t i = 0; i < half; i++)
        block[i] = -12345.0f;
    munmap(base, len);
}

/*
 * Batches 1-3 with the update of batch 3 in flight when emad is SIGKILLed
 * (a worker held back by the test hook, the other done with its chunks)
 * when crash, else a run without crash; emad runs with --crash-exact when
 * exact. Returns the shadow of w at the end.
 */
static float *cut_short(bool crash, bool exact, struct emac_result *last)
{
    const char *const flags[] = {exact ? "--crash-exact" : NULL, NULL};
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    emac_ticket tk;

    make_dir(&d);
    /* Chunks: register's journal and four, four per batch; batch 3's
     * second (chunk 1 of w) is held back. */
    daemon_start_env(&d, flags, crash ? (char *[]){"EMAD_TEST_STALL_MS=5000",
                                                   "EMAD_TEST_STALL_AFTER=14", NULL}
                                      : NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(big_specs, 2, &seg_left, &err), 0);
    big_params(seg_left, 0);
    assert_int_equal(emac_register(c, "cut", seg_left, NULL, false, &s, &err), 0);
    big_params(seg_left, 1);
    event_at(s, "batch_end", 1);
    big_params(seg_left, 2);
    event_at(s, "batch_end", 2);
    big_params(seg_left, 3);
    struct emac_time t = {.batch = 3};
    assert_int_equal(emac_event_send(s, "batch_end", &t, &tk, &err), 0);
    if (crash) {
        sleep_ms(500); /* let emad take it up (the stall lasts 5 s) */
        daemon_kill(&d);
        size_t chunk;
        if (exact)
            tamper_mid_block(s, &chunk);
        daemon_start_env(&d, flags, NULL);
        assert_int_equal(emac_status(c, "cut", &st, &err), 0); /* reconnects */
        /* Taken back, flagged until the update comes again. */
        assert_true(st->session_list[0].interrupted);
        emac_status_free(st);
    }
    if (emac_event_wait(s, tk, last, &err) < 0)
        fail_msg("wait: %s: %s", err.code, err.message);
    assert_int_equal(emac_status(c, "cut", &st, &err), 0);
    assert_int_equal(st->session_list[0].interrupted, crash && !exact);
    assert_int_equal(st->session_list[0].seq, 3);
    emac_status_free(st);
    assert_int_equal(emac_reconnects(c), crash ? 1 : 0);
    float *w = malloc(BIG * sizeof(float));
    assert_non_null(w);
    memcpy(w, emac_session_shadow(s, 0)->data, BIG * sizeof(float));
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg_left);
    seg_left = NULL;
    daemon_stop(&d);
    return w;
}

/*
 * emad is SIGKILLed while an update is in flight, one block of it caught
 * halfway: the trainer's wait reconnects, the update is sent again, emad
 * puts the block back and writes what the cut-short run had not, and the
 * shadow ends bit for bit as without the crash, the flag cleared.
 */
static void test_update_cut_short_is_redone_exactly(void **state)
{
    struct emac_result plain, crashed;
    (void)state;

    float *want = cut_short(false, true, &plain);
    float *got = cut_short(true, true, &crashed);
    assert_int_equal(crashed.action, EMAC_ACTION_UPDATE);
    assert_int_equal(crashed.updates, plain.updates);
    assert_false(crashed.replayed);
    assert_false(crashed.interrupted);
    assert_memory_equal(want, got, BIG * sizeof(float));
    free(want);
    free(got);
}

/*
 * The same without --crash-exact (the default): the update sent again is
 * applied over what the cut-short run had written (the chunks a worker had
 * finished take it twice), counted once, and never silently: the result
 * and the status say interrupted.
 */
static void test_update_cut_short_is_redone_with_notice_by_default(void **state)
{
    struct emac_result plain, crashed;
    (void)state;

    float *want = cut_short(false, false, &plain);
    float *got = cut_short(true, false, &crashed);
    assert_int_equal(crashed.action, EMAC_ACTION_UPDATE);
    assert_int_equal(crashed.updates, plain.updates);
    assert_true(crashed.interrupted);
    /* Of w's three chunks, the one held back took the update once (as
     * without a crash); the two a worker had finished took it twice. */
    int once = 0;
    for (size_t c = 0; c < 3; c++)
        once += memcmp(want + (c << 20), got + (c << 20), (1u << 20) * sizeof(float)) == 0;
    assert_int_equal(once, 1);
    free(want);
    free(got);
}

/* ---- an update of three profiles cut short (--crash-exact) ---- */

#define KP 3

/* A composer profile that starts at batch 3 (its update every 2 batches), a timm warm-up and an
 * EDM2 power profile every 3 batches: batch 3 starts one profile and updates two. */
static void three_profiles(struct emac_profile prof[KP])
{
    memset(prof, 0, KP * sizeof(*prof));
    prof[0] = (struct emac_profile){.name = "fast", .has_smoothing = true, .smoothing = 0.75,
                                    .update_interval = "2ba", .ema_start = "3ba"};
    prof[1] = (struct emac_profile){.name = "warm", .has_decay = true, .decay = 0.999,
                                    .has_min_decay = true, .min_decay = 0.1,
                                    .has_inv_gamma = true, .inv_gamma = 1.0, .has_power = true,
                                    .power = 0.75};
    prof[2] = (struct emac_profile){.name = "p", .schedule = "power", .has_gamma = true,
                                    .gamma = 6.94, .update_interval = "3ba"};
}

/* As a crash would leave a block of the held chunk of a K-profile session: the record marks it
 * begun with every written profile's old block in undo, the first half of each written. */
static void tamper_profiles_block(const emac_session *s, size_t *chunk)
{
    const struct emac_session_info *si = emac_session_state(s);
    const struct emac_profile_info *pi;
    uint64_t redo_off = (si->shadow_bytes + 63) & ~(uint64_t)63;
    int fd = shm_open(si->shadow_shm, O_RDWR, 0);
    assert_true(fd >= 0);
    size_t len = redo_off + 4 * sizeof(struct redo_rec);
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(base != MAP_FAILED);
    const struct shadow_header *h = (const void *)base;
    struct redo_rec *rec = (void *)(base + redo_off);
    assert_int_equal(emac_session_profiles(s, &pi), KP);

    assert_true(h->seq_begun != h->seq_done); /* cut short */
    *chunk = 4;
    for (size_t c = 0; c < 4; c++) {
        assert_int_equal(rec[c].seq, h->redo_of);
        if (rec[c].done_to < (c < 3 ? (1u << 20) : N)) {
            assert_int_equal(*chunk, 4); /* one chunk only: the one held back */
            *chunk = c;
        }
    }
    assert_true(*chunk < 4);
    struct redo_rec *r = &rec[*chunk];
    const size_t n = REDO_BLOCK_ELEMS / KP, esz = 4; /* f32 shadows, the f16 tensor's too */
    const uint64_t at = *chunk < 3 ? emac_session_shadow(s, 0)->offset + ((uint64_t)*chunk << 22)
                                   : emac_session_shadow(s, 1)->offset;
    for (size_t p = 0; p < KP; p++) {
        char *block = base + at + pi[p].shadow_offset + r->done_to * esz;
        memcpy(r->undo + p * n * esz, block, n * esz);
        memset(block, 0x5a, n / 2 * esz);
    }
    r->undo_count = n;
    r->undo_profiles = (1u << KP) - 1;
    r->undo_at = r->done_to;
    munmap(base, len);
}

/* Batches 1-3 of three profiles, batch 3 held back at chunk run `stall` and emad SIGKILLed when
 * crash (then started again, the block caught halfway when tamper), batches 4-6 after. Returns
 * every profile's shadows, end to end. */
static void *cut_short_profiles(bool crash, const char *stall, bool tamper, size_t *bytes)
{
    const char *const flags[] = {"--crash-exact", NULL};
    struct emac_profile prof[KP];
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    struct emac_result last;
    emac_session *s = NULL;
    emac_ticket tk;

    make_dir(&d);
    three_profiles(prof);
    daemon_start_env(&d, flags, crash ? (char *[]){"EMAD_TEST_STALL_MS=5000", (char *)stall,
                                                   NULL}
                                      : NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(big_specs, 2, &seg_left, &err), 0);
    big_params(seg_left, 0);
    if (emac_register_profiles(c, "cutk", seg_left, prof, KP, NULL, NULL, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    big_params(seg_left, 1);
    event_at(s, "batch_end", 1);
    big_params(seg_left, 2);
    event_at(s, "batch_end", 2);
    big_params(seg_left, 3);
    struct emac_time t = {.batch = 3};
    assert_int_equal(emac_event_send(s, "batch_end", &t, &tk, &err), 0);
    if (crash) {
        sleep_ms(500); /* let emad take it up (the stall lasts 5 s) */
        daemon_kill(&d);
        size_t chunk;
        if (tamper)
            tamper_profiles_block(s, &chunk);
        daemon_start_env(&d, flags, NULL);
        assert_int_equal(emac_status(c, "cutk", &st, &err), 0); /* reconnects */
        assert_true(st->session_list[0].interrupted);
        emac_status_free(st);
    }
    if (emac_event_wait(s, tk, &last, &err) < 0)
        fail_msg("wait: %s: %s", err.code, err.message);
    assert_false(last.interrupted);
    for (int b = 4; b <= 6; b++) {
        big_params(seg_left, b);
        event_at(s, "batch_end", (uint64_t)b);
    }
    assert_int_equal(emac_status(c, "cutk", &st, &err), 0);
    assert_false(st->session_list[0].interrupted);
    const struct emac_profile_info *pi;
    assert_int_equal(emac_status_profiles(st, 0, &pi), KP);
    assert_int_equal(pi[0].updates, 2); /* 4, 6 (started at 3) */
    assert_int_equal(pi[1].updates, 6);
    assert_int_equal(pi[2].updates, 2); /* 3, 6 */
    emac_status_free(st);
    assert_int_equal(emac_reconnects(c), crash ? 1 : 0);
    *bytes = KP * ((size_t)BIG + N) * sizeof(float);
    float *out = malloc(*bytes), *at = out;
    assert_non_null(out);
    for (size_t p = 0; p < KP; p++) {
        memcpy(at, emac_session_profile_data(s, p, 0), BIG * sizeof(float));
        at += BIG;
        memcpy(at, emac_session_profile_data(s, p, 1), N * sizeof(float));
        at += N;
    }
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg_left);
    seg_left = NULL;
    daemon_stop(&d);
    return out;
}

/*
 * --crash-exact with three profiles of mixed schedules: emad SIGKILLed in the update of batch
 * 3 (which starts one profile and updates two) before its first chunk, with a block of its
 * second chunk caught halfway, and before its last (the f16 tensor): every profile ends bit for
 * bit as without the crash, through three more batches.
 */
static void test_update_of_three_profiles_cut_short_is_redone_exactly(void **state)
{
    static const struct {
        const char *after;
        bool tamper;
    } cuts[] = {
        {"EMAD_TEST_STALL_AFTER=13", false}, /* batch 3's first chunk */
        {"EMAD_TEST_STALL_AFTER=14", true},  /* its second, a block caught halfway */
        {"EMAD_TEST_STALL_AFTER=16", true},  /* its last, the f16 tensor */
    };
    size_t n, m;
    (void)state;

    void *want = cut_short_profiles(false, NULL, false, &n);
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        void *got = cut_short_profiles(true, cuts[i].after, cuts[i].tamper, &m);
        assert_int_equal(n, m);
        if (memcmp(want, got, n) != 0)
            fail_msg("cut at %s: the shadows differ from a run without the crash", cuts[i].after);
        free(got);
    }
    free(want);
}

/*
 * emad dies with the EMA weights in the params: the library puts the
 * training weights back, reconnects, and eval_end (sent after the crash)
 * finds nothing to swap out; eval_start then swaps in again.
 */
static void test_swapped_in_at_the_crash_comes_back_training(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    uint32_t swap_state;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "evaluating", seg_left, NULL, false, &s, &err), 0);
    step_params(seg_left, 1);
    event_at(s, "batch_end", 1);
    step_params(seg_left, 2);
    event_at(s, "batch_end", 2);
    const struct emac_tensor *w = emac_segment_tensor(seg_left, 0);
    float *train_w = malloc(w->bytes);
    assert_non_null(train_w);
    memcpy(train_w, w->data, w->bytes);
    struct emac_result r = event_at(s, "eval_start", 2);
    assert_true(r.active);
    assert_memory_not_equal(train_w, w->data, w->bytes);

    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    r = event_at(s, "eval_end", 2);
    assert_false(r.active);
    assert_true(emac_session_restored(s));
    assert_memory_equal(train_w, w->data, w->bytes);
    emac_segment_swap_state(seg_left, &swap_state, NULL);
    assert_int_equal(swap_state, EMAC_SWAP_TRAIN);
    r = event_at(s, "eval_start", 2);
    assert_int_equal(r.action, EMAC_ACTION_SWAP_IN);
    assert_true(r.active);
    /* The EMA weights in the params are the shadow's, cast. */
    assert_memory_equal(emac_session_shadow(s, 0)->data, w->data, w->bytes);
    r = event_at(s, "eval_end", 2);
    assert_memory_equal(train_w, w->data, w->bytes);
    free(train_w);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/*
 * A session the restarted emad does not know (its state directory was
 * lost) cannot be resumed: its calls fail, saying so; the client itself is
 * connected again and its other sessions go on.
 */
static void test_session_unknown_after_restart_fails_clearly(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    emac_session *keep = NULL, *lost = NULL;
    emac_segment *other = NULL;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    assert_int_equal(emac_segment_create(specs, 2, &other, &err), 0);
    step_params(seg_left, 0);
    step_params(other, 0);
    assert_int_equal(emac_register(c, "kept", seg_left, NULL, false, &keep, &err), 0);
    assert_int_equal(emac_register(c, "dropped", other, NULL, false, &lost, &err), 0);
    event_at(keep, "batch_end", 1);
    event_at(lost, "batch_end", 1);

    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    /* Someone drops "dropped" before the trainer is back. */
    emac_client *admin = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_drop(admin, "dropped", &err), 0);
    emac_disconnect(admin);

    r = event_at(keep, "batch_end", 2);
    assert_int_equal(r.updates, 2);
    struct emac_time t = {.batch = 2};
    assert_true(emac_event(lost, "batch_end", &t, &r, &err) < 0);
    assert_string_equal(err.code, "DISCONNECTED");
    assert_non_null(strstr(err.message, "could not be resumed"));
    assert_non_null(strstr(err.message, "NOSESSION"));
    emac_session_free(keep);
    emac_session_free(lost);
    emac_disconnect(c);
    emac_segment_destroy(other);
    daemon_stop(&d);
}

/*
 * While emad is down, another emad (another state directory) starts and
 * collects the shadows of dead emads: it must spare ours, which our emad's
 * restart takes back, and the trainer goes on.
 */
static void test_another_emad_starting_spares_our_shadows(void **state)
{
    struct daemon d, other;
    struct emac_error err;
    emac_session *s = NULL;
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "spared", seg_left, NULL, false, &s, &err), 0);
    event_at(s, "batch_end", 1);
    daemon_kill(&d);

    daemon_start(&other, NULL);
    daemon_stop(&other);

    daemon_start_env(&d, NULL, NULL);
    struct emac_result r = event_at(s, "batch_end", 2);
    assert_int_equal(r.updates, 2);
    assert_false(r.interrupted);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* The documented defaults, and EMAD_RECONNECT_TIMEOUT (seconds; 0: off)
 * read by clients connected after it is set. */
static void test_reconnect_defaults_and_environment(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_reconnect def;
    emac_session *s = NULL;
    (void)state;

    emac_reconnect_defaults(&def);
    assert_true(def.enabled);
    assert_int_equal(def.initial_delay_ms, 50);
    assert_int_equal(def.max_delay_ms, 2000);
    assert_int_equal(def.timeout_ms, 30000);

    static const char *const values[] = {"0", "0.2"};
    for (size_t v = 0; v < 2; v++) {
        daemon_start(&d, NULL);
        assert_int_equal(setenv("EMAD_RECONNECT_TIMEOUT", values[v], 1), 0);
        emac_client *c = client_connect(&d, "test_reconnect");
        assert_int_equal(unsetenv("EMAD_RECONNECT_TIMEOUT"), 0);
        assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
        assert_int_equal(emac_register(c, "env", seg_left, NULL, false, &s, &err), 0);
        daemon_kill(&d);
        struct emac_time t = {.batch = 1};
        struct emac_result r;
        assert_true(emac_event(s, "batch_end", &t, &r, &err) < 0);
        assert_string_equal(err.code, "DISCONNECTED");
        /* "0": no attempt at all; "0.2": attempts, then giving up. */
        assert_int_equal(strstr(err.message, "gave up after") != NULL, v == 1);
        assert_int_equal(emac_reconnects(c), 0);
        /* No emad of this state directory comes back for the killed one's
         * shadow: remove it, leaving /dev/shm as the test found it. */
        assert_int_equal(shm_unlink(emac_session_state(s)->shadow_shm), 0);
        emac_session_free(s);
        emac_disconnect(c);
        emac_segment_destroy(seg_left);
        seg_left = NULL;
        remove_tree(d.dir);
    }
}

/* A shadow of our own state directory that no journal claims any more is
 * a leftover: the next emad removes it. */
static void test_unclaimed_shadow_of_our_directory_is_removed(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    char shadow[128], journal[300];
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "orphan", seg_left, NULL, false, &s, &err), 0);
    snprintf(shadow, sizeof(shadow), "/dev/shm%s", emac_session_state(s)->shadow_shm);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_kill(&d);
    snprintf(journal, sizeof(journal), "%s/live/orphan.emastate", d.state);
    assert_int_equal(unlink(journal), 0);
    assert_int_equal(access(shadow, F_OK), 0);
    daemon_start_env(&d, NULL, NULL);
    /* emad answers only once its start-up (the collection included) is over. */
    emac_disconnect(client_connect(&d, "test_reconnect"));
    assert_int_equal(access(shadow, F_OK), -1);
    assert_true(file_contains(d.log, "stale shadows"));
    daemon_stop(&d);
}

/* A request that cannot be sent twice (a save) in flight when emad dies:
 * it fails saying it may or may not have been done; the client is
 * connected again for the next call. */
static void *kill_later(void *arg)
{
    struct later_start *l = arg;

    sleep_ms(l->delay_ms);
    daemon_kill(l->d);
    daemon_start_env(l->d, NULL, NULL);
    return NULL;
}

static void test_save_in_flight_fails_clearly_and_the_client_goes_on(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    (void)state;

    make_dir(&d);
    /* Chunks: register's journal and one; the save's (the third) stalls. */
    daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=5000", "EMAD_TEST_STALL_AFTER=2",
                                           NULL});
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "saving", seg_left, NULL, false, &s, &err), 0);
    struct later_start l = {&d, 300};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, kill_later, &l), 0);
    assert_true(emac_save(c, "saving", "snap", &f, &err) < 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_string_equal(err.code, "DISCONNECTED");
    assert_non_null(strstr(err.message, "may or may not have been carried out"));
    assert_int_equal(emac_reconnects(c), 1);
    assert_int_equal(emac_status(c, "saving", &st, &err), 0);
    assert_true(st->session_list[0].attached);
    emac_status_free(st);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

struct later_close {
    emac_client *c;
    int delay_ms;
};

static void *close_later(void *arg)
{
    struct later_close *l = arg;

    sleep_ms(l->delay_ms);
    emac_disconnect(l->c);
    return NULL;
}

/*
 * The restarted emad is full (--max-connections) and refuses the client's
 * first attempts, saying why: the client keeps trying until a place frees,
 * and a refusal in one outage does not stop it reconnecting in the next.
 */
static void test_refused_while_full_then_reconnects_again(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_session *s = NULL;
    const char *const args[] = {"--max-connections", "2", NULL};
    (void)state;

    make_dir(&d);
    daemon_start_env(&d, args, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "crowded", seg_left, NULL, false, &s, &err), 0);
    event_at(s, "batch_end", 1);

    daemon_kill(&d);
    daemon_start_env(&d, args, NULL);
    emac_client *a = client_connect(&d, "occupant"), *b = client_connect(&d, "occupant");
    emac_client *probe = NULL; /* the third is refused: emad is full */
    assert_true(emac_connect(d.sock, "probe", &probe, &err) < 0);
    assert_string_equal(err.code, "LIMIT");
    struct later_close l = {a, 300};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, close_later, &l), 0);
    struct emac_result r = event_at(s, "batch_end", 2);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(r.updates, 2);
    assert_int_equal(emac_reconnects(c), 1);
    emac_disconnect(b);

    daemon_kill(&d);
    daemon_start_env(&d, args, NULL);
    r = event_at(s, "batch_end", 3);
    assert_int_equal(r.updates, 3);
    assert_int_equal(emac_reconnects(c), 2);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A load rewrites the session's journal (on a worker) before its reply:
 * emad SIGKILLed right after comes back with the loaded config. */
static void test_load_is_journaled_before_its_reply(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_file f;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    struct emac_config four = {"4ba", false, 0, NULL, NULL}, nine = {"9ba", false, 0, NULL, NULL};
    (void)state;

    daemon_start(&d, NULL);
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "loaded", seg_left, &four, false, &s, &err), 0);
    event_at(s, "batch_end", 1);
    assert_int_equal(emac_save(c, "loaded", "four", &f, &err), 0);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    assert_int_equal(emac_register(c, "loaded", seg_left, &nine, false, &s, &err), 0);
    assert_int_equal(emac_load(c, "loaded", "four", &f, &err), 0);
    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    emac_client *c2 = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_status(c2, "loaded", &st, &err), 0);
    assert_string_equal(st->session_list[0].half_life, "4ba");
    assert_int_equal(st->session_list[0].updates, 1);
    emac_status_free(st);
    emac_disconnect(c2);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- the raw protocol: what the library relies on ---- */

struct raw {
    int fd;
    struct wire_decoder dec;
    uint32_t next_id;
};

static void raw_send(struct raw *r, const char *method, const struct msg_desc *desc,
                     const void *req)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, r->next_id++, method);
    msg_encode(&pk, desc, req);
    send_bytes(r->fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* The next reply: code "" and *out decoded by desc (views into the decoder,
 * valid until the next read), or the error's code. */
static void raw_read(struct raw *r, char code[32], const struct msg_desc *desc, void *out)
{
    struct wire_msg m;
    struct wire_fault f;
    char why[128];

    for (;;) {
        int rc = wire_decoder_next(&r->dec, &m, &f);
        assert_true(rc >= 0);
        if (rc > 0)
            break;
        size_t room;
        char *p = wire_decoder_reserve(&r->dec, 1u << 16, &room);
        assert_non_null(p);
        ssize_t n = recv(r->fd, p, room, 0);
        assert_true(n > 0);
        wire_decoder_commit(&r->dec, (size_t)n);
    }
    assert_int_equal(m.kind, WIRE_RESPONSE);
    code[0] = '\0';
    if (m.error->type != MSGPACK_OBJECT_NIL) {
        struct msg_error e;
        assert_int_equal(msg_decode(&msg_error_desc, m.error, &e, why, sizeof(why)), 0);
        snprintf(code, 32, "%.*s", (int)e.code.len, e.code.ptr);
        return;
    }
    if (msg_decode(desc, m.result, out, why, sizeof(why)) < 0)
        fail_msg("bad reply: %s", why);
}

/* Connect, hello, and take the detached session over with resume; returns
 * its shadow, mapped read-only. */
/* Connect and hello. */
static void raw_open(struct raw *r, const struct daemon *d)
{
    struct msg_hello h = {EMAC_PROTO_VERSION, msg_str_c("raw"), false, 0};
    struct msg_hello_reply hr;
    char code[32];

    r->fd = try_connect(d->sock);
    assert_true(r->fd >= 0);
    r->next_id = 1;
    wire_decoder_init(&r->dec, 1u << 20, WIRE_DEFAULT_MAX_DEPTH);
    raw_send(r, "hello", &msg_hello_desc, &h);
    raw_read(r, code, &msg_hello_reply_desc, &hr);
    assert_string_equal(code, "");
    msg_free(&msg_hello_reply_desc, &hr);
}

static const float *raw_attach(struct raw *r, const struct daemon *d, const char *session,
                               emac_segment *seg, size_t *map_len)
{
    struct msg_register reg;
    struct msg_register_reply rr;
    struct msg_tensor t[2];
    char code[32], shadow[128];

    raw_open(r, d);
    register_msg(&reg, t, 2, session, seg);
    reg.has_resume = true;
    reg.resume = true;
    raw_send(r, "register", &msg_register_desc, &reg);
    raw_read(r, code, &msg_register_reply_desc, &rr);
    assert_string_equal(code, "");
    snprintf(shadow, sizeof(shadow), "%.*s", (int)rr.shadow_shm.len, rr.shadow_shm.ptr);
    *map_len = rr.shadow_bytes;
    msg_free(&msg_register_reply_desc, &rr);
    int fd = shm_open(shadow, O_RDONLY, 0);
    assert_true(fd >= 0);
    void *p = mmap(NULL, *map_len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(p != MAP_FAILED);
    return p;
}

static void raw_close(struct raw *r, const float *map, size_t len)
{
    munmap((void *)map, len);
    close(r->fd);
    wire_decoder_free(&r->dec);
}

/* batch_end with seq; the reply decoded into *a, its action into action. */
static void raw_event(struct raw *r, uint64_t batch, uint64_t seq, char code[32],
                      struct msg_action *a, char action[16])
{
    struct msg_event e = {msg_str_c("numbered"), msg_str_c("batch_end"), {.batch = batch},
                          true, seq};

    memset(a, 0, sizeof(*a));
    raw_send(r, "event", &msg_event_desc, &e);
    raw_read(r, code, &msg_action_desc, a);
    snprintf(action, 16, "%.*s", (int)a->action.len, a->action.ptr);
}

/* The first tensor's shadow, after emad's header page. */
static float *shadow_w(const float *map)
{
    float *copy = malloc(N * sizeof(float));

    assert_non_null(copy);
    memcpy(copy, (const char *)map + 4096, N * sizeof(float));
    return copy;
}

/* Start emad, register "numbered" (half-life 2ba, the params of step 0 in
 * seg_left) and close it kept; then take it up again on the raw connection
 * r. Returns raw_attach()'s mapping of its shadow (*len bytes). */
static const float *start_numbered(struct daemon *d, struct raw *r, size_t *len)
{
    struct emac_config cfg = {"2ba", false, 0, NULL, NULL};
    struct emac_error err;
    emac_session *s = NULL;

    daemon_start(d, NULL);
    emac_client *c = client_connect(d, "test_reconnect");
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    step_params(seg_left, 0);
    assert_int_equal(emac_register(c, "numbered", seg_left, &cfg, false, &s, &err), 0);
    assert_int_equal(emac_close(s, true, &err), 0);
    emac_session_free(s);
    emac_disconnect(c);
    return raw_attach(r, d, "numbered", seg_left, len);
}

/*
 * A seq sent again is answered from the record, never applied twice, also
 * by an emad started after a SIGKILL; a swap sent again runs against the
 * weights as they are; seq 0 is refused; a seq older than the record is
 * refused, not guessed.
 */
static void test_seq_sent_again_is_answered_not_applied(void **state)
{
    struct daemon d;
    struct msg_action a;
    struct raw r;
    char code[32], action[16];
    size_t len;
    (void)state;

    const float *map = start_numbered(&d, &r, &len);
    step_params(seg_left, 1);
    raw_event(&r, 1, 1, code, &a, action);
    assert_string_equal(code, "");
    uint64_t u1 = a.updates;
    step_params(seg_left, 2);
    raw_event(&r, 2, 2, code, &a, action);
    assert_string_equal(action, "update");
    assert_false(a.replayed);
    uint64_t u2 = a.updates;
    assert_int_equal(u2, u1 + 1);
    float *s2 = shadow_w(map);

    /* Sent again (the params have moved on meanwhile): the record answers. */
    step_params(seg_left, 3);
    raw_event(&r, 2, 2, code, &a, action);
    assert_string_equal(code, "");
    assert_true(a.has_replayed && a.replayed);
    assert_string_equal(action, "update");
    assert_int_equal(a.updates, u2);
    float *again = shadow_w(map);
    assert_memory_equal(s2, again, N * sizeof(float));
    free(again);
    raw_event(&r, 1, 1, code, &a, action);
    assert_true(a.replayed);
    assert_int_equal(a.updates, u1);
    raw_event(&r, 3, 0, code, &a, action);
    assert_string_equal(code, "BADARG");
    raw_close(&r, map, len);

    /* The record outlives emad. */
    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    map = raw_attach(&r, &d, "numbered", seg_left, &len);
    raw_event(&r, 2, 2, code, &a, action);
    assert_string_equal(code, "");
    assert_true(a.replayed);
    assert_int_equal(a.updates, u2);
    again = shadow_w(map);
    assert_memory_equal(s2, again, N * sizeof(float));
    free(again);
    raw_event(&r, 3, 3, code, &a, action);
    assert_false(a.replayed);
    assert_int_equal(a.updates, u2 + 1);

    /* emad keeps the last 16: seq 3's slot is taken by 19. */
    for (uint64_t q = 4; q <= 19; q++) {
        raw_event(&r, q, q, code, &a, action);
        assert_string_equal(code, "");
    }
    raw_event(&r, 3, 3, code, &a, action);
    assert_string_equal(code, "STATE");

    /* A swap sent again runs again, against the state as it is. */
    struct msg_swap sw = {.session = msg_str_c("numbered"), .to = msg_str_c("ema"),
                          .has_seq = true, .seq = 20};
    raw_send(&r, "swap", &msg_swap_desc, &sw);
    raw_read(&r, code, &msg_action_desc, &a);
    assert_string_equal(code, "");
    assert_true(a.active);
    raw_send(&r, "swap", &msg_swap_desc, &sw);
    raw_read(&r, code, &msg_action_desc, &a);
    assert_string_equal(code, "");
    assert_true(a.active);
    assert_false(a.has_replayed && a.replayed);
    assert_true(msg_str_eq(a.action, "none")); /* already in: nothing to do */
    raw_close(&r, map, len);
    free(s2);
    daemon_stop(&d);
}

/*
 * A clean stop is as kind as a crash: the request records survive it.
 * Eight numbered batch_end pipelined, SIGTERM, and after the restart seq
 * 3..8 sent again are answered from the record, not refused nor applied
 * twice; the restart logs no journal warning for the restored session.
 */
static void test_clean_restart_keeps_the_request_record(void **state)
{
    struct daemon d;
    struct msg_action a;
    struct raw r;
    char code[32], action[16], actions[9][16];
    uint64_t updates[9];
    size_t len;
    (void)state;

    const float *map = start_numbered(&d, &r, &len);
    for (uint64_t q = 1; q <= 8; q++) {
        struct msg_event e = {msg_str_c("numbered"), msg_str_c("batch_end"), {.batch = q},
                              true, q};
        raw_send(&r, "event", &msg_event_desc, &e);
    }
    for (uint64_t q = 1; q <= 8; q++) {
        raw_read(&r, code, &msg_action_desc, &a);
        assert_string_equal(code, "");
        updates[q] = a.updates;
        snprintf(actions[q], sizeof(actions[q]), "%.*s", (int)a.action.len, a.action.ptr);
    }
    float *s8 = shadow_w(map);
    raw_close(&r, map, len);

    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    daemon_start_env(&d, NULL, NULL);
    map = raw_attach(&r, &d, "numbered", seg_left, &len);
    step_params(seg_left, 5); /* the params moved on: a replay must not read them */
    for (uint64_t q = 3; q <= 8; q++) {
        raw_event(&r, q, q, code, &a, action);
        if (code[0] != '\0')
            fail_msg("seq %llu sent again after a clean restart: %s",
                     (unsigned long long)q, code);
        assert_true(a.has_replayed && a.replayed);
        assert_int_equal(a.updates, updates[q]);
        assert_string_equal(action, actions[q]);
    }
    float *again = shadow_w(map);
    assert_memory_equal(s8, again, N * sizeof(float));
    free(again);
    raw_event(&r, 9, 9, code, &a, action);
    assert_string_equal(code, "");
    assert_false(a.has_replayed && a.replayed);
    assert_int_equal(a.updates, updates[8] + 1);
    assert_false(file_contains(d.log, "not taken back"));
    raw_close(&r, map, len);
    free(s8);
    daemon_stop(&d);
}

/*
 * The same tensors registered as a table with compact, and as a list of
 * maps without: the compact reply's shadow_offsets are the list reply's
 * offsets, in the request's order (here not the segment's), its tensors
 * list empty.
 */
static void test_table_and_compact_reply_match_the_list(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct raw r;
    struct msg_register reg;
    struct msg_register_reply rr;
    struct msg_tensor t[2];
    struct msg_table table;
    char code[32];
    uint64_t compact[2];
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_segment_create(specs, 2, &seg_left, &err), 0);
    raw_open(&r, &d);
    assert_int_equal(msg_table_init(&table, 2), 0);
    for (size_t i = 0; i < 2; i++) { /* h first, then w */
        const struct emac_tensor *et = emac_segment_tensor(seg_left, 1 - i);
        msg_table_set(&table, i, et->name, et->dtype, et->offset, et->numel);
        t[i] = (struct msg_tensor){msg_str_c(et->name), msg_str_c(et->dtype), et->offset,
                                   et->numel, false, NULL, 0, false, NULL, 0, false, NULL, 0};
    }
    memset(&reg, 0, sizeof(reg));
    reg.session = msg_str_c("columns");
    reg.shm = msg_str_c(emac_segment_name(seg_left));
    reg.has_table = true;
    reg.table = table;
    reg.has_compact = true;
    reg.compact = true;
    raw_send(&r, "register", &msg_register_desc, &reg);
    raw_read(&r, code, &msg_register_reply_desc, &rr);
    assert_string_equal(code, "");
    assert_int_equal(rr.ntensors, 0);
    assert_true(rr.has_shadow_offsets);
    assert_int_equal(rr.nshadow_offsets, 2);
    memcpy(compact, rr.shadow_offsets, sizeof(compact));
    msg_free(&msg_register_reply_desc, &rr);
    msg_table_release(&table);

    memset(&reg, 0, sizeof(reg));
    reg.session = msg_str_c("maps");
    reg.shm = msg_str_c(emac_segment_name(seg_left));
    reg.tensors = t;
    reg.ntensors = 2;
    raw_send(&r, "register", &msg_register_desc, &reg);
    raw_read(&r, code, &msg_register_reply_desc, &rr);
    assert_string_equal(code, "");
    assert_false(rr.has_shadow_offsets);
    assert_int_equal(rr.ntensors, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_true(msg_str_eq(rr.tensors[i].name, emac_segment_tensor(seg_left, 1 - i)->name));
        assert_int_equal(rr.tensors[i].shadow_offset, compact[i]);
    }
    assert_true(compact[0] < compact[1]); /* h was laid out first: the request's order */
    msg_free(&msg_register_reply_desc, &rr);
    close(r.fd);
    wire_decoder_free(&r.dec);
    daemon_stop(&d);
}

/*
 * Without --crash-exact an update of three profiles cut short by a crash leaves the session
 * interrupted (its shadows may be half updated). Loading the profiles back one by one from the
 * trainer's own files (load with profile, as the Python client resumes) clears the flag only once
 * every profile is the file's again.
 */
static void test_interrupted_clears_once_every_profile_is_loaded(void **state)
{
    struct emac_profile prof[KP];
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    struct emac_result last;
    struct emac_file f;
    emac_session *s = NULL, *one = NULL;
    emac_segment *seg_one = NULL;
    emac_ticket tk;
    (void)state;

    make_dir(&d);
    three_profiles(prof);
    daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=5000",
                                          "EMAD_TEST_STALL_AFTER=13", NULL});
    emac_client *c = client_connect(&d, "test_reconnect");
    assert_int_equal(emac_segment_create(big_specs, 2, &seg_left, &err), 0);
    big_params(seg_left, 0);
    if (emac_register_profiles(c, "cutk", seg_left, prof, KP, NULL, NULL, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    for (int b = 1; b <= 2; b++) {
        big_params(seg_left, b);
        event_at(s, "batch_end", (uint64_t)b);
    }
    big_params(seg_left, 3);
    struct emac_time t = {.batch = 3};
    assert_int_equal(emac_event_send(s, "batch_end", &t, &tk, &err), 0);
    sleep_ms(500); /* let emad take it up (the stall lasts 5 s) */
    daemon_kill(&d);
    daemon_start_env(&d, NULL, NULL);
    (void)emac_event_wait(s, tk, &last, &err); /* answered or failed: either way flagged */
    assert_int_equal(emac_status(c, "cutk", &st, &err), 0);
    assert_true(st->session_list[0].interrupted);
    emac_status_free(st);

    /* The trainer's copy of one shadow, as a session of one profile saves it. */
    assert_int_equal(emac_segment_create(big_specs, 2, &seg_one, &err), 0);
    big_params(seg_one, 7);
    if (emac_register(c, "one", seg_one, NULL, false, &one, &err) < 0)
        fail_msg("register one: %s: %s", err.code, err.message);
    event_at(one, "batch_end", 1);
    if (emac_save(c, "one", "one.state", &f, &err) < 0)
        fail_msg("save: %s: %s", err.code, err.message);
    for (size_t p = 0; p < KP; p++) {
        if (emac_load_profile(c, "cutk", "one.state", prof[p].name, NULL, &f, &err) < 0)
            fail_msg("load %s: %s: %s", prof[p].name, err.code, err.message);
        assert_int_equal(emac_status(c, "cutk", &st, &err), 0);
        assert_int_equal(st->session_list[0].interrupted, p + 1 < KP);
        emac_status_free(st);
    }
    /* Each profile holds the file's shadow: the params of batch 7 (one update from them). */
    assert_memory_equal(emac_session_profile_data(s, 0, 0), emac_session_shadow(one, 0)->data,
                        BIG * sizeof(float));
    assert_memory_equal(emac_session_profile_data(s, 2, 1), emac_session_shadow(one, 1)->data,
                        N * sizeof(float));
    emac_session_free(one);
    emac_session_free(s);
    emac_disconnect(c);
    emac_segment_destroy(seg_one);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_trainer_goes_on_through_a_restart_bit_exact,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_backoff_gives_up_then_a_later_call_reconnects,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_seq_sent_again_is_answered_not_applied, teardown_seg_left),
        cmocka_unit_test_teardown(test_clean_restart_keeps_the_request_record, teardown_seg_left),
        cmocka_unit_test_teardown(test_table_and_compact_reply_match_the_list, teardown_seg_left),
        cmocka_unit_test_teardown(test_update_cut_short_is_redone_exactly, teardown_seg_left),
        cmocka_unit_test_teardown(test_update_cut_short_is_redone_with_notice_by_default,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_update_of_three_profiles_cut_short_is_redone_exactly,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_swapped_in_at_the_crash_comes_back_training,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_session_unknown_after_restart_fails_clearly,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_another_emad_starting_spares_our_shadows, teardown_seg_left),
        cmocka_unit_test_teardown(test_refused_while_full_then_reconnects_again, teardown_seg_left),
        cmocka_unit_test_teardown(test_reconnect_defaults_and_environment, teardown_seg_left),
        cmocka_unit_test_teardown(test_unclaimed_shadow_of_our_directory_is_removed,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_save_in_flight_fails_clearly_and_the_client_goes_on,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_load_is_journaled_before_its_reply, teardown_seg_left),
        cmocka_unit_test_teardown(test_interrupted_clears_once_every_profile_is_loaded,
                                  teardown_seg_left),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
