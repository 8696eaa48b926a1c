/*
 * soak.c - the soak test of emad (`make soak`; `make soak-quick` inside
 * `make check`).
 *
 * One driver process:
 *   - starts emad (--workers 2) on a temporary socket and state directory,
 *   - forks N trainers (16 full, 4 quick) that each run B batches (1000 full,
 *     100 quick) against their own session "soak-<i>",
 *   - forks a poller that runs `emactl --json status` in a loop,
 *   - SIGKILLs one trainer midway (preferably while the EMA weights are
 *     swapped into its params) and starts a new process for it, which takes
 *     its segment back (emac_segment_open + emac_segment_restore) and
 *     registers with resume,
 *   - SIGKILLs emad midway (preferably while the big trainer has an update in
 *     flight) and restarts it on the same socket and state directory; the
 *     trainers see DISCONNECTED, reconnect and register with resume,
 *   - samples emad's RSS all along, and at the end checks that no shm object
 *     or file descriptor leaked, that no journal is left in <state>/live, and
 *     that emad stops cleanly with SIGTERM.
 *
 * A trainer (pacing each batch by a simulated compute time; the small trainers
 * keep within 8 batches of the big one, trainer 0 with 1.2M f32 elements, so
 * that every trainer is mid-run when emad dies):
 *   - writes the params of batch b (deterministic: any process can recompute
 *     them from (trainer, batch)), sends batch_end(b) and, without waiting,
 *     batch_start(b) or eval_start(b) (split form, claimed out of order),
 *     advances its own reference shadow while emad updates (the EMA formula
 *     of docs/protocol.md "Numerics", integers copied, Composer's start/interval
 *     rules), and checks action/started/updates of each reply against it;
 *   - every eval_every batches: eval_start swaps the EMA weights in (checked
 *     bit for bit against the reference, cast back to the param dtype),
 *     eval_end swaps them out (the training weights must come back bit for
 *     bit);
 *   - every ckpt_every batches: saves the session's state ("soak-<i>-ckpt");
 *   - after a lost connection (or as the restarted process): reconnects
 *     with bounded retries, waits until the session is detached and its
 *     queue drained (a `save` to a scratch name is queued behind every
 *     earlier operation of the session), restores the segment from the
 *     stash if needed, checks that the training weights are intact (no
 *     training weight lost), registers with resume, recomputes the reference
 *     by replaying the batches up to the session's last_batch, and checks the
 *     shadow, the counters and the state against it before going on from
 *     last_batch + 1.
 *     A session that comes back with "interrupted": true (an update cut short
 *     by emad's SIGKILL) has a shadow that is partly the old, partly the new
 *     value: the trainer checks exactly that (every element equals the
 *     reference before or after the cut-short batch), then `load`s its last
 *     checkpoint (and goes on from the checkpoint's batch), or, with no
 *     checkpoint yet, closes the session and registers it afresh from its
 *     current params (a "reseed": its reference starts over from that batch).
 *     Both are counted and printed.
 *   - at the end (after emad's restart, so that every trainer lives through
 *     it): the shadow equals the reference bit for bit, the counters match,
 *     the params are the last batch's; close, destroy the segment.
 *
 * Output: progress and a summary, then "soak: N passed, N failed" (one count
 * per check of the driver; a failing trainer fails the "trainers" check).
 *
 * Usage: soak [--quick] [--trainers N] [--batches B] [--emad PATH]
 *             [--emactl PATH] [--timeout SECONDS] [--compute-us US]
 *             [--checkpoint-every B (0: none, so an interrupted session is
 *             reseeded)] [--rss-slack-mib MIB] [--keep] [--intruder (another
 *             emad of the user starts right after the restart; see README)]
 * emad and emactl default to $EMAD_BIN / $EMACTL_BIN, else build/emad and
 * build/emactl.
 */
#include "emaclient.h"

#include <msgpack.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_TRAINERS 64
#define NT 3 /* tensors per trainer */
#define BIG_NUMEL 1200000 /* trainer 0's f32 tensor: more than one chunk of emad's pool */
#define RECOVER_S 60.0    /* a trainer's recovery gives up after this */
#define GATE_S 300.0      /* a trainer waits this long at most for emad's restart */

/* ---- options ---- */

static struct {
    int trainers;
    uint64_t batches;
    uint64_t eval_every;
    uint64_t ckpt_every;
    unsigned compute_us;
    unsigned eval_us;
    double timeout_s;
    uint64_t rss_slack_mib;
    const char *emad;
    const char *emactl;
    bool keep;
    bool intruder;
} opt;

/* ---- state shared by the driver and its children (an anonymous shared mapping) ---- */

enum phase { PH_IDLE, PH_INFLIGHT, PH_EVAL, PH_RECOVER, PH_DONE };

struct tshared {
    int pid;
    uint64_t progress; /* last batch completed and checked */
    int phase;
    uint64_t origin;    /* the session was registered fresh after this batch */
    int ckpt_valid;     /* a checkpoint of the current origin exists */
    uint64_t ckpt_batch;
    char seg_name[64];
    uint64_t shadow_bytes, seg_bytes;
    /* counters */
    uint64_t recoveries, lib_restored, seg_restored, loads, reseeds, evals, saves,
        interrupted, partial_elems, connect_retries, restarts, lost, lockstep_waits,
        auto_reconnects;
};

struct shared {
    int emad_gen;  /* emad instances started */
    int emad_down; /* emad is being killed and restarted */
    int gate_open; /* trainers may finish */
    int abort;
    int stop_poller;
    uint64_t poll_ok, poll_down, poll_bad;
    struct tshared t[MAX_TRAINERS];
};

static struct shared *sh;
static char dir[64], sock_path[128], state_dir[128], log_path[128], err_path[128];

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_us(unsigned us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ---- deterministic params ---- */

static uint32_t mix32(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static uint32_t seed_of(int trainer, uint64_t batch, int tensor)
{
    return mix32(mix32((uint32_t)trainer * 0x9E3779B9u + (uint32_t)tensor * 0x632BE5ABu) ^
                 mix32((uint32_t)batch * 0x85EBCA6Bu + (uint32_t)(batch >> 32)));
}

/* An f32 in (-8, 8), exact (a 24-bit integer times 2^-20), never -0. */
static float f32_of(uint32_t u)
{
    int32_t q = (int32_t)(u >> 8) - (1 << 23);
    return (float)q * 0x1p-20f;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static uint16_t f32_to_bf16(float f) /* round to nearest even; our values are never NaN */
{
    uint32_t u = f32_bits(f);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* docs/protocol.md "Numerics": shadow.lerp_(param, w), w = (float)(1 - smoothing). */
static float lerp(float s, float x, float w)
{
    float d = x - s;
    return w < 0.5f ? fmaf(w, d, s) : fmaf(-(1.0f - w), d, x);
}

/* ---- a trainer ---- */

struct params {
    float *w;     /* f32 */
    uint16_t *bh; /* bf16 */
    int64_t *st;  /* i64 */
};

struct ref {
    bool started;
    uint64_t updates;
    float *s0, *s1;
    int64_t *s2;
};

struct trainer {
    int idx;
    struct tshared *me;
    char sname[32], cname[32], ckpt[48], barrier[48];
    uint64_t n[NT];
    struct emac_tensor_spec specs[NT];
    struct emac_config cfg;
    uint64_t iv, start_ba; /* update interval and ema_start, in batches */
    float w;
    bool have_w;
    emac_client *c;
    emac_segment *seg;
    emac_session *s;
    struct params cur, other; /* cur: the params last written (gen(cur_b)) */
    uint64_t cur_b;
    bool cur_valid;
    /* The reference at batch ref_b of origin ref_origin; prev: at the batch before (the
     * reference is advanced while the update is in flight); ck: at the last checkpoint. */
    struct ref ref, tmp, prev, ck;
    uint64_t ref_b, ref_origin, prev_b, prev_origin, ck_b, ck_origin;
    bool prev_valid, ck_valid;
};

static void tfail(const struct trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void tfail(const struct trainer *t, const char *fmt, ...)
{
    char buf[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "soak: trainer %d (pid %ld): FAILED: %s\n", t->idx, (long)getpid(), buf);
    fflush(stderr);
    _exit(1);
}

static void gen_params(const struct trainer *t, uint64_t b, struct params *p)
{
    uint32_t s0 = seed_of(t->idx, b, 0), s1 = seed_of(t->idx, b, 1), s2 = seed_of(t->idx, b, 2);
    for (uint64_t i = 0; i < t->n[0]; i++)
        p->w[i] = f32_of(mix32(s0 ^ ((uint32_t)i * 0xC2B2AE35u)));
    for (uint64_t i = 0; i < t->n[1]; i++)
        p->bh[i] = (uint16_t)(f32_bits(f32_of(mix32(s1 ^ ((uint32_t)i * 0xC2B2AE35u)))) >> 16);
    for (uint64_t i = 0; i < t->n[2]; i++)
        p->st[i] = (int64_t)mix32(s2 ^ (uint32_t)i) * 1000003 - (int64_t)b;
}

static void alloc_params(struct trainer *t, struct params *p)
{
    p->w = calloc(t->n[0] ? t->n[0] : 1, 4);
    p->bh = calloc(t->n[1] ? t->n[1] : 1, 2);
    p->st = calloc(t->n[2] ? t->n[2] : 1, 8);
    if (!p->w || !p->bh || !p->st)
        tfail(t, "out of memory");
}

static void alloc_ref(struct trainer *t, struct ref *r)
{
    r->s0 = calloc(t->n[0] ? t->n[0] : 1, 4);
    r->s1 = calloc(t->n[1] ? t->n[1] : 1, 4);
    r->s2 = calloc(t->n[2] ? t->n[2] : 1, 8);
    if (!r->s0 || !r->s1 || !r->s2)
        tfail(t, "out of memory");
}

static void copy_ref(const struct trainer *t, struct ref *dst, const struct ref *src)
{
    dst->started = src->started;
    dst->updates = src->updates;
    memcpy(dst->s0, src->s0, t->n[0] * 4);
    memcpy(dst->s1, src->s1, t->n[1] * 4);
    memcpy(dst->s2, src->s2, t->n[2] * 8);
}

/* What emad does at batch_end(b) (daemon/ema.c decide_update, Composer's rules), applied to
 * the reference; returns the action the reply must carry. */
static enum emac_action ref_step(const struct trainer *t, struct ref *r, uint64_t b,
                                 const struct params *p)
{
    bool start = !r->started && b >= t->start_ba;
    bool update = b % t->iv == 0;

    if (!r->started && !start)
        return EMAC_ACTION_NONE;
    if (start) {
        for (uint64_t i = 0; i < t->n[0]; i++)
            r->s0[i] = p->w[i];
        for (uint64_t i = 0; i < t->n[1]; i++)
            r->s1[i] = bf16_to_f32(p->bh[i]);
        memcpy(r->s2, p->st, t->n[2] * 8);
        r->started = true;
        r->updates += update;
        return update ? EMAC_ACTION_START_UPDATE : EMAC_ACTION_START;
    }
    if (!update)
        return EMAC_ACTION_NONE;
    for (uint64_t i = 0; i < t->n[0]; i++)
        r->s0[i] = lerp(r->s0[i], p->w[i], t->w);
    for (uint64_t i = 0; i < t->n[1]; i++)
        r->s1[i] = lerp(r->s1[i], bf16_to_f32(p->bh[i]), t->w);
    memcpy(r->s2, p->st, t->n[2] * 8);
    r->updates++;
    return EMAC_ACTION_UPDATE;
}

/* Set the reference to that of a session registered fresh after batch `origin`, at batch L:
 * from a copy kept at that batch, else replayed from the origin (exact either way: the same
 * arithmetic on the same deterministic params). */
static void replay(struct trainer *t, uint64_t origin, uint64_t L)
{
    if (t->ref_origin == origin && t->ref_b == L)
        return;
    if (t->prev_valid && t->prev_origin == origin && t->prev_b == L) {
        copy_ref(t, &t->ref, &t->prev);
    } else if (t->ck_valid && t->ck_origin == origin && t->ck_b == L) {
        copy_ref(t, &t->ref, &t->ck);
    } else {
        t->ref.started = false;
        t->ref.updates = 0;
        for (uint64_t b = origin + 1; b <= L; b++) {
            gen_params(t, b, &t->other);
            ref_step(t, &t->ref, b, &t->other);
        }
    }
    t->ref_origin = origin;
    t->ref_b = L;
}

static void *tensor_data(const struct trainer *t, int k)
{
    return emac_segment_tensor(t->seg, (size_t)k)->data;
}

static void write_params(struct trainer *t, const struct params *p)
{
    memcpy(tensor_data(t, 0), p->w, t->n[0] * 4);
    memcpy(tensor_data(t, 1), p->bh, t->n[1] * 2);
    memcpy(tensor_data(t, 2), p->st, t->n[2] * 8);
}

static bool params_equal(const struct trainer *t, const struct params *p)
{
    return memcmp(tensor_data(t, 0), p->w, t->n[0] * 4) == 0 &&
           memcmp(tensor_data(t, 1), p->bh, t->n[1] * 2) == 0 &&
           memcmp(tensor_data(t, 2), p->st, t->n[2] * 8) == 0;
}

/* The params hold the EMA weights of the reference, cast to the params' dtypes. */
static void check_ema_in_params(const struct trainer *t, uint64_t b)
{
    const uint32_t *w = tensor_data(t, 0);
    const uint16_t *bh = tensor_data(t, 1);
    const int64_t *st = tensor_data(t, 2);
    for (uint64_t i = 0; i < t->n[0]; i++)
        if (w[i] != f32_bits(t->ref.s0[i]))
            tfail(t, "eval at batch %llu: f32 param %llu is %08x with the EMA weights in, the "
                  "reference shadow %08x", (unsigned long long)b, (unsigned long long)i, w[i],
                  f32_bits(t->ref.s0[i]));
    for (uint64_t i = 0; i < t->n[1]; i++)
        if (bh[i] != f32_to_bf16(t->ref.s1[i]))
            tfail(t, "eval at batch %llu: bf16 param %llu is %04x with the EMA weights in, "
                  "expected %04x", (unsigned long long)b, (unsigned long long)i, bh[i],
                  f32_to_bf16(t->ref.s1[i]));
    if (memcmp(st, t->ref.s2, t->n[2] * 8) != 0)
        tfail(t, "eval at batch %llu: i64 params differ from the reference shadow",
              (unsigned long long)b);
}

/* The shadow emad holds equals the reference, bit for bit. */
static void check_shadow(const struct trainer *t, const char *when)
{
    const char *dt[NT] = {"f32", "f32", "i64"};
    for (int k = 0; k < NT; k++) {
        const struct emac_shadow *sw = emac_session_shadow(t->s, (size_t)k);
        if (sw == NULL || strcmp(sw->dtype, dt[k]) != 0 || sw->numel != t->n[k])
            tfail(t, "%s: shadow %d: not the expected %s[%llu]", when, k, dt[k],
                  (unsigned long long)t->n[k]);
    }
    const uint32_t *a = emac_session_shadow(t->s, 0)->data;
    const uint32_t *bb = emac_session_shadow(t->s, 1)->data;
    for (uint64_t i = 0; i < t->n[0]; i++)
        if (a[i] != f32_bits(t->ref.s0[i]))
            tfail(t, "%s: shadow of the f32 tensor, element %llu: %08x (%.9g), reference %08x "
                  "(%.9g)", when, (unsigned long long)i, a[i], (double)bits_f32(a[i]),
                  f32_bits(t->ref.s0[i]), (double)t->ref.s0[i]);
    for (uint64_t i = 0; i < t->n[1]; i++)
        if (bb[i] != f32_bits(t->ref.s1[i]))
            tfail(t, "%s: shadow of the bf16 tensor, element %llu: %08x, reference %08x", when,
                  (unsigned long long)i, bb[i], f32_bits(t->ref.s1[i]));
    if (memcmp(emac_session_shadow(t->s, 2)->data, t->ref.s2, t->n[2] * 8) != 0)
        tfail(t, "%s: shadow of the i64 tensor differs from the params copied", when);
}

static bool retryable(const struct emac_error *e)
{
    return strcmp(e->code, EMAC_E_DISCONNECTED) == 0 || strcmp(e->code, EMAC_E_CONNECT) == 0;
}

/* "interrupted" is in the raw status only (an extension of the contract). */
static bool raw_interrupted(const struct emac_status *st, const char *session)
{
    const void *data;
    size_t len;
    bool found = false;
    msgpack_unpacked u;

    emac_status_raw(st, &data, &len);
    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, data, len, NULL) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&u);
        return false;
    }
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR || kv->key.via.str.size != 8 ||
            memcmp(kv->key.via.str.ptr, "sessions", 8) != 0 || kv->val.type != MSGPACK_OBJECT_ARRAY)
            continue;
        for (uint32_t j = 0; j < kv->val.via.array.size; j++) {
            const msgpack_object *m = &kv->val.via.array.ptr[j];
            bool mine = false, intr = false;
            if (m->type != MSGPACK_OBJECT_MAP)
                continue;
            for (uint32_t f = 0; f < m->via.map.size; f++) {
                const msgpack_object_kv *e = &m->via.map.ptr[f];
                if (e->key.type != MSGPACK_OBJECT_STR)
                    continue;
                if (e->key.via.str.size == 7 && memcmp(e->key.via.str.ptr, "session", 7) == 0 &&
                    e->val.type == MSGPACK_OBJECT_STR && e->val.via.str.size == strlen(session) &&
                    memcmp(e->val.via.str.ptr, session, strlen(session)) == 0)
                    mine = true;
                if (e->key.via.str.size == 11 &&
                    memcmp(e->key.via.str.ptr, "interrupted", 11) == 0 &&
                    e->val.type == MSGPACK_OBJECT_BOOLEAN)
                    intr = e->val.via.boolean;
            }
            if (mine)
                found = intr;
        }
    }
    msgpack_unpacked_destroy(&u);
    return found;
}

/* Drop the connection and the session handle (counting a stash restore by the library). */
static void drop_connection(struct trainer *t)
{
    if (t->s != NULL) {
        if (emac_session_restored(t->s))
            t->me->lib_restored++;
        emac_session_free(t->s);
        t->s = NULL;
    }
    t->me->auto_reconnects += emac_reconnects(t->c);
    emac_disconnect(t->c);
    t->c = NULL;
}

static void configure(struct trainer *t, int idx, bool quick)
{
    memset(t, 0, sizeof(*t));
    t->idx = idx;
    t->me = &sh->t[idx];
    snprintf(t->sname, sizeof(t->sname), "soak-%d", idx);
    snprintf(t->cname, sizeof(t->cname), "soak trainer %d", idx);
    snprintf(t->ckpt, sizeof(t->ckpt), "soak-%d-ckpt", idx);
    snprintf(t->barrier, sizeof(t->barrier), "soak-%d-barrier", idx);
    t->n[0] = idx == 0 ? BIG_NUMEL : 3000 + 97 * (uint64_t)idx;
    t->n[1] = 2000 + 31 * (uint64_t)idx;
    t->n[2] = 5 + (uint64_t)idx;
    (void)quick;
    static const char *names[NT] = {"layer.weight", "layer.bias_bf16", "step_counter"};
    static const char *dtypes[NT] = {"f32", "bf16", "i64"};
    for (int k = 0; k < NT; k++)
        t->specs[k] = (struct emac_tensor_spec){names[k], dtypes[k], t->n[k], NULL, 0};
    /* Four configurations: both branches of the lerp, intervals 1..3, starts 0..10. */
    switch (idx % 4) {
    case 0:
        t->cfg = (struct emac_config){NULL, true, 0.9, "1ba", "0ba"};
        t->iv = 1, t->start_ba = 0;
        break;
    case 1:
        t->cfg = (struct emac_config){NULL, true, 0.25, "2ba", "3ba"};
        t->iv = 2, t->start_ba = 3;
        break;
    case 2:
        t->cfg = (struct emac_config){"20ba", false, 0, "1ba", "10ba"};
        t->iv = 1, t->start_ba = 10;
        break;
    default:
        t->cfg = (struct emac_config){"7ba", false, 0, "3ba", NULL}; /* ema_start 0.0dur */
        t->iv = 3, t->start_ba = 0;
        break;
    }
    alloc_params(t, &t->cur);
    alloc_params(t, &t->other);
    alloc_ref(t, &t->ref);
    alloc_ref(t, &t->tmp);
    alloc_ref(t, &t->prev);
    alloc_ref(t, &t->ck);
    t->ref_b = UINT64_MAX; /* nothing yet */
}

static void take_weight(struct trainer *t)
{
    double sm = emac_session_state(t->s)->smoothing;
    float w = (float)(1.0 - sm);
    if (t->have_w && f32_bits(w) != f32_bits(t->w))
        tfail(t, "smoothing changed across registers: %.17g", sm);
    if (t->cfg.has_smoothing && sm != t->cfg.smoothing)
        tfail(t, "smoothing %.17g reported, %.17g configured", sm, t->cfg.smoothing);
    t->w = w;
    t->have_w = true;
}

static int do_register(struct trainer *t, bool resume, struct emac_error *err)
{
    int rc = emac_register(t->c, t->sname, t->seg, &t->cfg, resume, &t->s, err);
    if (rc == 0) {
        take_weight(t);
        STORE(t->me->shadow_bytes, emac_session_state(t->s)->shadow_bytes);
    }
    return rc;
}

/* Status of our own session. 1: found, 0: NOSESSION, -1: retry (connection lost). */
static int my_status(struct trainer *t, struct emac_status **st, struct emac_error *err)
{
    *st = NULL;
    if (emac_status(t->c, t->sname, st, err) == 0) {
        if ((*st)->nsessions != 1)
            tfail(t, "status of %s lists %zu sessions", t->sname, (*st)->nsessions);
        return 1;
    }
    if (strcmp(err->code, "NOSESSION") == 0)
        return 0;
    if (retryable(err))
        return -1;
    tfail(t, "status: %s: %s", err->code, err->message);
}

/* Each element of the params is that of gen(L) or of gen(L + 1) (a process killed while it
 * wrote the params of batch L + 1 leaves a mix of both: its own writes, not a loss). */
static void check_params_either(struct trainer *t, uint64_t L)
{
    gen_params(t, L, &t->cur);
    gen_params(t, L + 1, &t->other);
    const float *w = tensor_data(t, 0);
    const uint16_t *bh = tensor_data(t, 1);
    const int64_t *st = tensor_data(t, 2);
    for (uint64_t i = 0; i < t->n[0]; i++)
        if (f32_bits(w[i]) != f32_bits(t->cur.w[i]) && f32_bits(w[i]) != f32_bits(t->other.w[i]))
            tfail(t, "training weights lost: f32 param %llu is neither batch %llu's nor the "
                  "next's", (unsigned long long)i, (unsigned long long)L);
    for (uint64_t i = 0; i < t->n[1]; i++)
        if (bh[i] != t->cur.bh[i] && bh[i] != t->other.bh[i])
            tfail(t, "training weights lost: bf16 param %llu is neither batch %llu's nor the "
                  "next's", (unsigned long long)i, (unsigned long long)L);
    for (uint64_t i = 0; i < t->n[2]; i++)
        if (st[i] != t->cur.st[i] && st[i] != t->other.st[i])
            tfail(t, "training weights lost: i64 param %llu", (unsigned long long)i);
}

/* A shadow cut short during the update of batch L + 1: every element is the reference's at L
 * or at L + 1. Counts the elements already updated. */
static void check_partial_shadow(struct trainer *t, uint64_t L)
{
    copy_ref(t, &t->tmp, &t->ref);
    gen_params(t, L + 1, &t->other);
    ref_step(t, &t->tmp, L + 1, &t->other);
    if (!t->ref.started && !t->tmp.started)
        return; /* nothing known about a shadow that never started */
    const uint32_t *a = emac_session_shadow(t->s, 0)->data;
    const uint32_t *bb = emac_session_shadow(t->s, 1)->data;
    uint64_t newer = 0;
    for (uint64_t i = 0; i < t->n[0]; i++) {
        bool old_ok = t->ref.started && a[i] == f32_bits(t->ref.s0[i]);
        bool new_ok = a[i] == f32_bits(t->tmp.s0[i]);
        if (!old_ok && !new_ok)
            tfail(t, "interrupted shadow: f32 element %llu is neither batch %llu's nor %llu's",
                  (unsigned long long)i, (unsigned long long)L, (unsigned long long)L + 1);
        newer += new_ok && !old_ok;
    }
    for (uint64_t i = 0; i < t->n[1]; i++) {
        bool old_ok = t->ref.started && bb[i] == f32_bits(t->ref.s1[i]);
        bool new_ok = bb[i] == f32_bits(t->tmp.s1[i]);
        if (!old_ok && !new_ok)
            tfail(t, "interrupted shadow: bf16 element %llu is neither batch %llu's nor %llu's",
                  (unsigned long long)i, (unsigned long long)L, (unsigned long long)L + 1);
        newer += new_ok && !old_ok;
    }
    t->me->partial_elems += newer;
}

static uint64_t last_batch_of(const struct emac_session_info *si)
{
    return si->has_last_time ? si->last_batch : 0;
}

/* Check the session's status against the reference at batch L. */
static void check_state(struct trainer *t, const struct emac_session_info *si, const char *when)
{
    if (si->started != t->ref.started || si->updates != t->ref.updates || si->active)
        tfail(t, "%s: session started=%d updates=%llu active=%d, reference started=%d "
              "updates=%llu", when, si->started, (unsigned long long)si->updates, si->active,
              t->ref.started, (unsigned long long)t->ref.updates);
    if (t->ref.started)
        check_shadow(t, when);
}

/* Connection lost, or a new process for this trainer: get the session back and return the
 * batch it is at (the reference is set to it). */
static uint64_t recover(struct trainer *t)
{
    double deadline = now_s() + RECOVER_S;
    struct emac_error err;
    struct emac_status *st = NULL;

    memset(&err, 0, sizeof(err));

    STORE(t->me->phase, PH_RECOVER);
    t->me->recoveries++;
    for (int attempt = 0;; attempt++) {
        if (attempt > 0)
            sleep_us(50000);
        if (LOAD(sh->abort))
            _exit(3);
        if (now_s() > deadline)
            tfail(t, "no recovery within %.0f s (last error %s: %s)", RECOVER_S, err.code,
                  err.message);
        emac_status_free(st);
        st = NULL;
        drop_connection(t);
        if (emac_connect(sock_path, t->cname, &t->c, &err) < 0) {
            if (!retryable(&err))
                tfail(t, "connect: %s: %s", err.code, err.message);
            t->me->connect_retries++;
            continue;
        }
        if (t->idx % 2 == 0) {
            /* Even trainers recover by hand (this function); odd ones let
             * the library reconnect, resume and send again. */
            struct emac_reconnect policy;
            emac_reconnect_defaults(&policy);
            policy.enabled = false;
            emac_set_reconnect(t->c, &policy, NULL);
        }
        int found = my_status(t, &st, &err);
        if (found < 0)
            continue;
        uint64_t L = 0;
        if (found) {
            const struct emac_session_info *si = &st->session_list[0];
            if (si->attached) /* emad has not yet reaped the connection of a dead process */
                continue;
            /* Barrier: a save is queued behind every earlier operation of the session. */
            struct emac_file f;
            if (emac_save(t->c, t->sname, t->barrier, &f, &err) < 0) {
                if (retryable(&err))
                    continue;
                tfail(t, "barrier save: %s: %s", err.code, err.message);
            }
            emac_status_free(st);
            if ((found = my_status(t, &st, &err)) <= 0) {
                if (found < 0)
                    continue;
                tfail(t, "session %s vanished", t->sname);
            }
            si = &st->session_list[0];
            L = last_batch_of(si);
            if (t->seg == NULL) {
                if (emac_segment_open(si->shm, t->specs, NT, &t->seg, &err) < 0)
                    tfail(t, "segment_open %s: %s: %s", si->shm, err.code, err.message);
            }
        } else if (t->seg == NULL) {
            if (emac_segment_create(t->specs, NT, &t->seg, &err) < 0)
                tfail(t, "segment_create: %s: %s", err.code, err.message);
            snprintf(t->me->seg_name, sizeof(t->me->seg_name), "%s", emac_segment_name(t->seg));
        }
        if (t->seg != NULL && t->me->seg_name[0] == '\0')
            snprintf(t->me->seg_name, sizeof(t->me->seg_name), "%s", emac_segment_name(t->seg));
        STORE(t->me->seg_bytes, emac_segment_bytes(t->seg));
        bool restored = false;
        if (emac_segment_restore(t->seg, &restored, &err) < 0)
            tfail(t, "segment_restore: %s: %s", err.code, err.message);
        t->me->seg_restored += restored;
        /* No training weight lost. */
        if (t->cur_valid) {
            if (!params_equal(t, &t->cur))
                tfail(t, "training weights lost: the params are not batch %llu's after the "
                      "connection was lost", (unsigned long long)t->cur_b);
        } else if (found) {
            check_params_either(t, L);
        }
        if (!found) {
            /* Never registered (or dropped by a reseed cut short): register fresh. */
            uint64_t origin = LOAD(t->me->origin);
            gen_params(t, origin, &t->cur);
            write_params(t, &t->cur);
            t->cur_b = origin, t->cur_valid = true;
            if (do_register(t, false, &err) < 0) {
                if (retryable(&err))
                    continue;
                tfail(t, "register: %s: %s", err.code, err.message);
            }
            replay(t, origin, origin);
            emac_status_free(st);
            STORE(t->me->phase, PH_IDLE);
            return origin;
        }
        if (do_register(t, true, &err) < 0) {
            if (retryable(&err) || strcmp(err.code, "EXISTS") == 0)
                continue;
            tfail(t, "register with resume: %s: %s", err.code, err.message);
        }
        emac_status_free(st);
        if ((found = my_status(t, &st, &err)) <= 0) {
            if (found < 0)
                continue;
            tfail(t, "session %s vanished after resume", t->sname);
        }
        const struct emac_session_info *si = &st->session_list[0];
        L = last_batch_of(si);
        uint64_t origin = LOAD(t->me->origin);
        if (L < origin)
            tfail(t, "session at batch %llu, registered after batch %llu", (unsigned long long)L,
                  (unsigned long long)origin);
        replay(t, origin, L);
        if (raw_interrupted(st, t->sname)) {
            t->me->interrupted++;
            /* The update of L + 1 was cut short: the shadow is part old, part new. */
            if (si->updates != t->ref.updates)
                tfail(t, "interrupted session: updates %llu, expected those of batch %llu: %llu",
                      (unsigned long long)si->updates, (unsigned long long)L,
                      (unsigned long long)t->ref.updates);
            check_partial_shadow(t, L);
            struct emac_file f;
            if (LOAD(t->me->ckpt_valid)) {
                if (emac_load(t->c, t->sname, t->ckpt, &f, &err) < 0) {
                    if (retryable(&err))
                        continue;
                    tfail(t, "load %s: %s: %s", t->ckpt, err.code, err.message);
                }
                t->me->loads++;
                emac_status_free(st);
                if ((found = my_status(t, &st, &err)) <= 0) {
                    if (found < 0)
                        continue;
                    tfail(t, "session %s vanished after load", t->sname);
                }
                si = &st->session_list[0];
                L = last_batch_of(si);
                if (raw_interrupted(st, t->sname))
                    tfail(t, "still interrupted after load");
                replay(t, origin, L);
            } else {
                /* Reseed: close the session, register it afresh from the params of L. */
                STORE(t->me->origin, L);
                if (emac_close(t->s, false, &err) < 0) {
                    if (retryable(&err))
                        continue;
                    tfail(t, "close for reseed: %s: %s", err.code, err.message);
                }
                emac_session_free(t->s);
                t->s = NULL;
                t->me->reseeds++;
                emac_status_free(st);
                st = NULL;
                continue; /* the next attempt registers fresh (NOSESSION) */
            }
        }
        check_state(t, si, "after recovery");
        emac_status_free(st);
        STORE(t->me->phase, PH_IDLE);
        return L;
    }
}

/* The small trainers keep within LOCKSTEP batches of the big one (trainer 0), as the ranks of
 * a data-parallel job do, so that every trainer is mid-run when emad is killed. */
#define LOCKSTEP 8
static void pace(struct trainer *t, uint64_t b)
{
    double deadline = 0;
    if (t->idx == 0)
        return;
    while (b > LOAD(sh->t[0].progress) + LOCKSTEP) {
        if (LOAD(sh->abort))
            _exit(3);
        if (deadline == 0) {
            deadline = now_s() + RECOVER_S;
            t->me->lockstep_waits++;
        } else if (now_s() > deadline) {
            tfail(t, "trainer 0 made no progress for %.0f s", RECOVER_S);
        }
        sleep_us(500);
    }
}

static void trainer_main(int idx, bool restarted, bool quick)
{
    struct trainer tr, *t = &tr;
    struct emac_error err;
    const uint64_t B = opt.batches;

    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() == 1)
        _exit(4);
    configure(t, idx, quick);
    STORE(t->me->pid, (int)getpid());
    if (restarted)
        t->me->restarts++;
    memset(&err, 0, sizeof(err));

    uint64_t b = recover(t) + 1;
    if (restarted)
        fprintf(stderr, "soak: trainer %d restarted (pid %ld): resumed at batch %llu\n", idx,
                (long)getpid(), (unsigned long long)b);
    for (;;) {
        while (b <= B) {
            struct emac_time tm = {b, 0, false, 0};
            struct emac_result r1, r2, r3;
            emac_ticket t1, t2;
            bool eval = b % opt.eval_every == 0;

            if (LOAD(sh->abort))
                _exit(3);
            pace(t, b);
            gen_params(t, b, &t->cur);
            write_params(t, &t->cur);
            t->cur_b = b, t->cur_valid = true;
            STORE(t->me->phase, PH_INFLIGHT);
            if (emac_event_send(t->s, "batch_end", &tm, &t1, &err) < 0)
                goto lost;
            if (emac_event_send(t->s, eval ? "eval_start" : "batch_start", &tm, &t2, &err) < 0)
                goto lost;
            /* While emad updates: the reference, and the next step's "compute". */
            if (t->ref_b != b - 1)
                tfail(t, "internal: reference at batch %llu before batch %llu",
                      (unsigned long long)t->ref_b, (unsigned long long)b);
            copy_ref(t, &t->prev, &t->ref);
            t->prev_b = t->ref_b, t->prev_origin = t->ref_origin, t->prev_valid = true;
            enum emac_action expect = ref_step(t, &t->ref, b, &t->cur);
            t->ref_b = b;
            sleep_us(opt.compute_us);
            if (emac_event_wait(t->s, t2, &r2, &err) < 0) /* out of order */
                goto lost;
            if (emac_event_wait(t->s, t1, &r1, &err) < 0)
                goto lost;
            STORE(t->me->phase, PH_IDLE);
            if (r1.interrupted || r2.interrupted) {
                /* The library reconnected and emad redid an update it had
                 * been cut short in: the shadow holds part of it twice.
                 * Recover as the even trainers do (checkpoint or reseed). */
                snprintf(err.code, sizeof(err.code), "%s", EMAC_E_DISCONNECTED);
                snprintf(err.message, sizeof(err.message), "update redone after a crash");
                t->me->lost++;
                drop_connection(t);
                b = recover(t) + 1;
                continue;
            }
            if (r1.action != expect || r1.updates != t->ref.updates ||
                r1.started != t->ref.started || r1.active)
                tfail(t, "batch_end %llu: action %s updates %llu started %d active %d; expected "
                      "%s updates %llu started %d", (unsigned long long)b,
                      emac_action_name(r1.action), (unsigned long long)r1.updates, r1.started,
                      r1.active, emac_action_name(expect), (unsigned long long)t->ref.updates,
                      t->ref.started);
            if (!eval) {
                if (r2.action != EMAC_ACTION_NONE || r2.active)
                    tfail(t, "batch_start %llu: action %s", (unsigned long long)b,
                          emac_action_name(r2.action));
            } else if (!t->ref.started) {
                if (r2.action != EMAC_ACTION_NONE)
                    tfail(t, "eval_start %llu before the start: action %s", (unsigned long long)b,
                          emac_action_name(r2.action));
            } else {
                uint32_t ss;
                if (r2.action != EMAC_ACTION_SWAP_IN || !r2.active)
                    tfail(t, "eval_start %llu: action %s active %d", (unsigned long long)b,
                          emac_action_name(r2.action), r2.active);
                STORE(t->me->phase, PH_EVAL);
                emac_segment_swap_state(t->seg, &ss, NULL);
                if (ss != EMAC_SWAP_EMA)
                    tfail(t, "eval_start %llu: swap_state %u", (unsigned long long)b, ss);
                check_ema_in_params(t, b);
                sleep_us(opt.eval_us); /* "evaluation" */
                if (emac_event(t->s, "eval_end", &tm, &r3, &err) < 0)
                    goto lost;
                STORE(t->me->phase, PH_IDLE);
                /* After a reconnect the library has put the training
                 * weights back itself: nothing was left to swap out. */
                bool put_back = emac_session_restored(t->s) && r3.action == EMAC_ACTION_NONE;
                if ((r3.action != EMAC_ACTION_SWAP_OUT && !put_back) || r3.active)
                    tfail(t, "eval_end %llu: action %s active %d", (unsigned long long)b,
                          emac_action_name(r3.action), r3.active);
                emac_segment_swap_state(t->seg, &ss, NULL);
                if (ss != EMAC_SWAP_TRAIN)
                    tfail(t, "eval_end %llu: swap_state %u", (unsigned long long)b, ss);
                if (!params_equal(t, &t->cur))
                    tfail(t, "eval_end %llu: the training weights did not come back bit for bit",
                          (unsigned long long)b);
                t->me->evals++;
            }
            if (opt.ckpt_every && b % opt.ckpt_every == opt.ckpt_every / 2) {
                struct emac_file f;
                if (emac_save(t->c, t->sname, t->ckpt, &f, &err) < 0)
                    goto lost;
                copy_ref(t, &t->ck, &t->ref);
                t->ck_b = b, t->ck_origin = t->ref_origin, t->ck_valid = true;
                STORE(t->me->ckpt_batch, b);
                STORE(t->me->ckpt_valid, 1);
                t->me->saves++;
            }
            STORE(t->me->progress, b);
            b++;
            continue;
        lost:
            t->me->lost++;
            if (!retryable(&err))
                tfail(t, "batch %llu: %s: %s", (unsigned long long)b, err.code, err.message);
            b = recover(t) + 1;
        }

        /* Done: wait until emad has been killed and restarted, so that every trainer lives
         * through it, then check the end state. */
        STORE(t->me->progress, B);
        STORE(t->me->phase, PH_DONE);
        double gate_deadline = now_s() + GATE_S;
        while (!LOAD(sh->gate_open)) {
            if (LOAD(sh->abort))
                _exit(3);
            if (now_s() > gate_deadline)
                tfail(t, "the driver never restarted emad");
            sleep_us(10000);
        }
        struct emac_status *st = NULL;
        int found = my_status(t, &st, &err);
        if (found < 0) {
            t->me->lost++;
            b = recover(t) + 1;
            continue; /* back to training if the session went back (a checkpoint, a reseed) */
        }
        if (found == 0)
            tfail(t, "session %s missing at the end", t->sname);
        const struct emac_session_info *si = &st->session_list[0];
        if (last_batch_of(si) != B || !si->attached || si->owner_pid != (long)getpid() ||
            raw_interrupted(st, t->sname))
            tfail(t, "end: session at batch %llu attached %d owner %ld", (unsigned long long)last_batch_of(si),
                  si->attached, si->owner_pid);
        check_state(t, si, "at the end");
        emac_status_free(st);
        break;
    }
    /* The params are the last batch's. */
    gen_params(t, B, &t->other);
    if (!params_equal(t, &t->other))
        tfail(t, "end: the params are not batch %llu's", (unsigned long long)B);
    if (emac_close(t->s, false, &err) < 0)
        tfail(t, "close: %s: %s", err.code, err.message);
    emac_session_free(t->s);
    emac_segment_destroy(t->seg);
    t->me->auto_reconnects += emac_reconnects(t->c);
    emac_disconnect(t->c);
    _exit(0);
}

/* ---- the status poller ---- */

static void poller_main(void)
{
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int reported = 0;
    while (!LOAD(sh->stop_poller) && !LOAD(sh->abort)) {
        int gen0 = LOAD(sh->emad_gen), down0 = LOAD(sh->emad_down);
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
            _exit(1);
        pid_t pid = fork();
        if (pid == 0) {
            dup2(p[1], 1);
            dup2(p[1], 2);
            execl(opt.emactl, opt.emactl, "--socket", sock_path, "--json", "status", (char *)NULL);
            _exit(127);
        }
        close(p[1]);
        static char out[1 << 20];
        size_t n = 0;
        ssize_t k;
        while ((k = read(p[0], out + n, sizeof(out) - 1 - n)) > 0 || (k < 0 && errno == EINTR))
            if (k > 0)
                n += (size_t)k;
        out[n] = '\0';
        close(p[0]);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0 && strstr(out, "\"sessions\"") &&
                  !strstr(out, "Sanitizer") && !strstr(out, "runtime error");
        bool down = down0 || LOAD(sh->emad_down) || LOAD(sh->emad_gen) != gen0;
        if (ok)
            __atomic_add_fetch(&sh->poll_ok, 1, __ATOMIC_RELAXED);
        else if (down && WIFEXITED(status) && WEXITSTATUS(status) == 1 &&
                 !strstr(out, "Sanitizer") && !strstr(out, "runtime error"))
            __atomic_add_fetch(&sh->poll_down, 1, __ATOMIC_RELAXED);
        else {
            __atomic_add_fetch(&sh->poll_bad, 1, __ATOMIC_RELAXED);
            if (reported++ < 3)
                fprintf(stderr, "soak: poller: emactl status failed (status 0x%x):\n%.2000s\n",
                        status, out);
        }
        sleep_us(20000);
    }
    _exit(0);
}

/* ---- the driver ---- */

static pid_t emad_pid, poller_pid;
static pid_t trainer_pid[MAX_TRAINERS];
static int checks_passed, checks_failed;

static void check(bool ok, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void check(bool ok, const char *name, const char *fmt, ...)
{
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    printf("check %-22s %s  %s\n", name, ok ? "ok    " : "FAILED", buf);
    fflush(stdout);
    if (ok)
        checks_passed++;
    else
        checks_failed++;
}

static long proc_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    long v = -1;
    size_t kl = strlen(key);
    snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof(line), fp))
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    fclose(fp);
    return v;
}

static int count_fds(pid_t pid, bool print)
{
    char path[64], lpath[600], target[512];
    snprintf(path, sizeof(path), "/proc/%ld/fd", (long)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        n++;
        if (print) {
            snprintf(lpath, sizeof(lpath), "%s/%s", path, e->d_name);
            ssize_t k = readlink(lpath, target, sizeof(target) - 1);
            target[k > 0 ? k : 0] = '\0';
            printf("    fd %s -> %s\n", e->d_name, target);
        }
    }
    closedir(d);
    return n;
}

static int count_shm_maps(pid_t pid)
{
    char path[64], line[1024];
    int n = 0;
    snprintf(path, sizeof(path), "/proc/%ld/maps", (long)pid);
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return -1;
    while (fgets(line, sizeof(line), fp))
        if (strstr(line, "/dev/shm/emad-"))
            n++;
    fclose(fp);
    return n;
}

/* Names of /dev/shm/emad-* objects, newline-separated (caller frees). */
static char *list_shm(void)
{
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    DIR *d = opendir("/dev/shm");
    s[0] = '\0';
    if (d == NULL)
        return s;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "emad-", 5) != 0)
            continue;
        size_t n = strlen(e->d_name);
        if (len + n + 2 > cap) {
            cap = 2 * (len + n + 2);
            s = realloc(s, cap);
        }
        memcpy(s + len, e->d_name, n);
        len += n;
        s[len++] = '\n';
        s[len] = '\0';
    }
    closedir(d);
    return s;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether name is one of list's (a list_shm() result; /dev/shm may hold thousands of names:
 * the list is indexed once, sorted). */
static bool in_list(const char *list, const char *name)
{
    static const char *indexed;
    static char *copy, **v;
    static size_t n;

    if (indexed != list) {
        free(copy);
        free(v);
        copy = strdup(list);
        n = 0;
        for (const char *p = list; *p; p++)
            n += *p == '\n';
        v = malloc((n ? n : 1) * sizeof(*v));
        size_t k = 0;
        for (char *p = copy, *nl; *p; p = nl + 1) {
            nl = strchr(p, '\n');
            *nl = '\0';
            v[k++] = p;
        }
        qsort(v, n, sizeof(*v), cmp_str);
        indexed = list;
    }
    return bsearch(&name, v, n, sizeof(*v), cmp_str) != NULL;
}

static int count_dir_entries(const char *path)
{
    DIR *d = opendir(path);
    int n = 0;
    if (d == NULL)
        return errno == ENOENT ? 0 : -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void kill_all(void)
{
    STORE(sh->abort, 1);
    for (int i = 0; i < opt.trainers; i++)
        if (trainer_pid[i] > 0) {
            kill(trainer_pid[i], SIGKILL);
            waitpid(trainer_pid[i], NULL, 0);
            trainer_pid[i] = 0;
        }
    if (poller_pid > 0) {
        kill(poller_pid, SIGKILL);
        waitpid(poller_pid, NULL, 0);
        poller_pid = 0;
    }
    if (emad_pid > 0) {
        kill(emad_pid, SIGKILL);
        waitpid(emad_pid, NULL, 0);
        emad_pid = 0;
    }
}

static void show_file_tail(const char *path, size_t max)
{
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        return;
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    if (size > (long)max)
        fseek(fp, size - (long)max, SEEK_SET);
    else
        fseek(fp, 0, SEEK_SET);
    char buf[4096];
    size_t n;
    printf("---- %s (last %zu bytes) ----\n", path, max);
    while ((n = fread(buf, 1, sizeof(buf), fp)) > 0)
        fwrite(buf, 1, n, stdout);
    printf("---- end of %s ----\n", path);
    fclose(fp);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* Whether /dev/shm/<name> is this run's: a trainer's segment or a shadow of one of our emads
 * (other processes of the machine, e.g. tests running beside this one, create emad-* objects
 * too: those are left alone). */
static bool ours(const char *name, int gens, const pid_t *emads)
{
    for (int i = 0; i < opt.trainers; i++)
        if (sh->t[i].seg_name[0] && strcmp(name, sh->t[i].seg_name + 1) == 0)
            return true;
    for (int g = 0; g < gens; g++) {
        char pre[64];
        snprintf(pre, sizeof(pre), "emad-shadow-%ld-", (long)emads[g]);
        if (strncmp(name, pre, strlen(pre)) == 0)
            return true;
    }
    return false;
}

/* Remove every shm object this run may have left (after a failure). */
static void cleanup_shm(const char *before, int gens, const pid_t *emads)
{
    char *after = list_shm();
    for (char *p = after, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        *nl = '\0';
        if (ours(p, gens, emads) && !in_list(before, p)) {
            char name[300];
            snprintf(name, sizeof(name), "/%s", p);
            shm_unlink(name);
        }
    }
    free(after);
}

static void die(const char *before, int gens, const pid_t *emads, const char *fmt, ...) __attribute__((format(printf, 4, 5), noreturn));
static void die(const char *before, int gens, const pid_t *emads, const char *fmt, ...)
{
    char buf[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    check(false, "run", "%s", buf);
    kill_all();
    show_file_tail(log_path, 6000);
    show_file_tail(err_path, 6000);
    cleanup_shm(before, gens, emads);
    if (!opt.keep)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        printf("soak: kept %s\n", dir);
    printf("soak: %d passed, %d failed\n", checks_passed, checks_failed);
    exit(1);
}

static bool try_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        return false;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

/* Start emad; returns its pid once it listens, or -1. */
static pid_t start_emad_at(const char *sock_path, const char *state_dir, const char *log_path)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int nul = open("/dev/null", O_RDWR);
        int e = open(err_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (nul < 0 || e < 0)
            _exit(126);
        dup2(nul, 0);
        dup2(e, 1);
        dup2(e, 2);
        /* Under ASan, the quarantine of freed memory (256 MiB by default) would be all of
         * emad's RSS growth: keep it small so that the RSS bound means the same in every
         * build (a no-op for an uninstrumented emad). */
        const char *ao = getenv("ASAN_OPTIONS");
        if (ao == NULL || strstr(ao, "quarantine_size_mb") == NULL) {
            static char buf[2048];
            snprintf(buf, sizeof(buf), "%s%squarantine_size_mb=16", ao ? ao : "",
                     ao && *ao ? ":" : "");
            setenv("ASAN_OPTIONS", buf, 1);
        }
        /* Nothing else of ours (or of whoever started us) leaks into emad. */
        for (int fd = 3; fd < 4096; fd++)
            close(fd);
        execl(opt.emad, opt.emad, "--socket", sock_path, "--state-dir", state_dir, "--log-file",
              log_path, "--log-level", "info", "--workers", "2", (char *)NULL);
        _exit(127);
    }
    double deadline = now_s() + 20;
    while (now_s() < deadline) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "soak: emad exited at start (status 0x%x)\n", status);
            return -1;
        }
        if (try_connect(sock_path))
            return pid;
        sleep_us(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static pid_t start_emad(void)
{
    return start_emad_at(sock_path, state_dir, log_path);
}

/* --intruder: another emad of the same user, with its own socket and state directory,
 * starts (and stops) right after the restart, as a second instance or a test would. */
static void run_intruder(void)
{
    char isock[160], istate[160], ilog[160];
    snprintf(isock, sizeof(isock), "%s/intruder.sock", dir);
    snprintf(istate, sizeof(istate), "%s/intruder-state", dir);
    snprintf(ilog, sizeof(ilog), "%s/intruder.log", dir);
    pid_t pid = start_emad_at(isock, istate, ilog);
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    printf("soak: --intruder: another emad (pid %ld, state %s) started and stopped\n",
           (long)pid, istate);
    show_file_tail(ilog, 2000);
}

static pid_t spawn_trainer(int idx, bool restarted, bool quick)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0)
        trainer_main(idx, restarted, quick);
    return pid;
}

static void usage(void)
{
    fprintf(stderr, "usage: soak [--quick] [--trainers N] [--batches B] [--emad PATH] "
                    "[--emactl PATH] [--timeout S] [--compute-us US] [--checkpoint-every B "
                    "(0: none)] [--rss-slack-mib MIB] [--keep] [--intruder]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    bool quick = false;
    long trainers = -1, batches = -1, ckpt = -1;

    opt.compute_us = 1000;
    opt.eval_us = 2000;
    opt.timeout_s = 0;
    opt.rss_slack_mib = 64;
    opt.emad = getenv("EMAD_BIN") ? getenv("EMAD_BIN") : "build/emad";
    opt.emactl = getenv("EMACTL_BIN") ? getenv("EMACTL_BIN") : "build/emactl";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0)
            quick = true;
        else if (strcmp(a, "--keep") == 0)
            opt.keep = true;
        else if (strcmp(a, "--intruder") == 0)
            opt.intruder = true;
        else if (v == NULL)
            usage();
        else if (strcmp(a, "--trainers") == 0)
            trainers = atol(v), i++;
        else if (strcmp(a, "--batches") == 0)
            batches = atol(v), i++;
        else if (strcmp(a, "--emad") == 0)
            opt.emad = v, i++;
        else if (strcmp(a, "--emactl") == 0)
            opt.emactl = v, i++;
        else if (strcmp(a, "--timeout") == 0)
            opt.timeout_s = atof(v), i++;
        else if (strcmp(a, "--compute-us") == 0)
            opt.compute_us = (unsigned)atol(v), i++;
        else if (strcmp(a, "--checkpoint-every") == 0)
            ckpt = atol(v), i++;
        else if (strcmp(a, "--rss-slack-mib") == 0)
            opt.rss_slack_mib = (uint64_t)atol(v), i++;
        else
            usage();
    }
    opt.trainers = trainers > 0 ? (int)trainers : quick ? 4 : 16;
    opt.batches = batches > 0 ? (uint64_t)batches : quick ? 100 : 1000;
    if (opt.trainers < 2 || opt.trainers > MAX_TRAINERS || opt.batches < 20)
        usage();
    opt.eval_every = opt.batches >= 500 ? 50 : opt.batches / 10;
    opt.ckpt_every = ckpt >= 0 ? (uint64_t)ckpt : opt.batches / 5;
    if (opt.timeout_s <= 0)
        opt.timeout_s = quick ? 120 : 900;
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(sh, 0, sizeof(*sh));
    snprintf(dir, sizeof(dir), "/tmp/emad-soak-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(sock_path, sizeof(sock_path), "%s/emad.sock", dir);
    snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
    snprintf(log_path, sizeof(log_path), "%s/emad.log", dir);
    snprintf(err_path, sizeof(err_path), "%s/emad.stderr", dir);

    printf("soak: %d trainers x %llu batches (eval every %llu, checkpoint every %llu), emad %s, "
           "emactl %s, dir %s\n", opt.trainers, (unsigned long long)opt.batches,
           (unsigned long long)opt.eval_every, (unsigned long long)opt.ckpt_every, opt.emad,
           opt.emactl, dir);
    double t0 = now_s();
    char *shm_before = list_shm();
    pid_t emads[2] = {0, 0};
    int gens = 0;

    emad_pid = start_emad();
    if (emad_pid < 0)
        die(shm_before, gens, emads, "emad did not start");
    emads[gens++] = emad_pid;
    STORE(sh->emad_gen, 1);
    /* The baseline: after one client came and went (whatever emad opens lazily is open). */
    {
        emac_client *c = NULL;
        struct emac_error err;
        struct emac_status *st = NULL;
        if (emac_connect(sock_path, "soak driver", &c, &err) < 0 ||
            emac_status(c, NULL, &st, &err) < 0)
            die(shm_before, gens, emads, "status at start: %s: %s", err.code, err.message);
        emac_status_free(st);
        emac_disconnect(c);
        sleep_us(100000);
    }
    int fd0 = count_fds(emad_pid, getenv("SOAK_DEBUG_FDS") != NULL);
    long rss_base[2] = {proc_kb(emad_pid, "VmRSS"), 0};
    long anon_base[2] = {proc_kb(emad_pid, "RssAnon"), 0};
    long rss_peak[2] = {rss_base[0], 0}, anon_peak[2] = {anon_base[0], 0};
    printf("soak: emad pid %ld: %d fds, VmRSS %ld kB (RssAnon %ld kB) at start\n", (long)emad_pid,
           fd0, rss_base[0], anon_base[0]);

    fflush(stdout);
    poller_pid = fork();
    if (poller_pid == 0)
        poller_main();
    for (int i = 0; i < opt.trainers; i++) {
        trainer_pid[i] = spawn_trainer(i, false, quick);
        if (trainer_pid[i] < 0)
            die(shm_before, gens, emads, "fork: %s", strerror(errno));
    }

    const int K = opt.trainers - 1; /* the trainer to kill */
    bool tkill_done = false, ekill_done = false;
    double tkill_since = 0, ekill_since = 0, last_sample = 0, last_report = now_s();
    int done = 0, killed_phase = -1, ekill_phase = -1, ekill_in_eval = 0;
    uint64_t tkill_at = 0, ekill_at = 0;
    double emad_down_s = 0;
    while (done < opt.trainers) {
        double t = now_s();
        if (t - t0 > opt.timeout_s)
            die(shm_before, gens, emads, "timeout after %.0f s (%d trainers done)", opt.timeout_s,
                done);
        /* Children. */
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            if (pid == emad_pid)
                die(shm_before, gens, emads, "emad exited on its own (status 0x%x)", status);
            if (pid == poller_pid) {
                poller_pid = 0;
                die(shm_before, gens, emads, "the poller exited early (status 0x%x)", status);
            }
            for (int i = 0; i < opt.trainers; i++)
                if (trainer_pid[i] == pid) {
                    trainer_pid[i] = 0;
                    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                        die(shm_before, gens, emads, "trainer %d failed (status 0x%x)", i, status);
                    done++;
                }
        }
        /* RSS. */
        if (t - last_sample > 0.02) {
            int g = gens - 1;
            long rss = proc_kb(emad_pid, "VmRSS"), anon = proc_kb(emad_pid, "RssAnon");
            if (rss > rss_peak[g])
                rss_peak[g] = rss;
            if (anon > anon_peak[g])
                anon_peak[g] = anon;
            last_sample = t;
        }
        if (t - last_report > 2.0) {
            printf("soak: %.1f s: progress", t - t0);
            for (int i = 0; i < opt.trainers; i++)
                printf(" %llu", (unsigned long long)LOAD(sh->t[i].progress));
            printf("\n");
            last_report = t;
        }
        /* Kill trainer K midway, preferably with the EMA weights swapped in. */
        if (!tkill_done && trainer_pid[K] > 0 && LOAD(sh->t[K].progress) >= opt.batches * 2 / 5) {
            if (tkill_since == 0)
                tkill_since = t;
            int ph = LOAD(sh->t[K].phase);
            if (ph == PH_EVAL || t - tkill_since > 3.0) {
                killed_phase = ph;
                tkill_at = LOAD(sh->t[K].progress);
                kill(trainer_pid[K], SIGKILL);
                waitpid(trainer_pid[K], &status, 0);
                if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
                    die(shm_before, gens, emads, "trainer %d ended before its SIGKILL (0x%x)", K,
                        status);
                printf("soak: %.1f s: SIGKILLed trainer %d at batch %llu (%s)\n", t - t0, K,
                       (unsigned long long)tkill_at,
                       ph == PH_EVAL ? "EMA weights swapped in" : ph == PH_INFLIGHT ? "update in flight" : "between events");
                trainer_pid[K] = spawn_trainer(K, true, quick);
                tkill_done = true;
            }
        }
        /* Kill emad midway, preferably with the big trainer's update in flight. */
        if (!ekill_done && tkill_done && LOAD(sh->t[0].progress) >= opt.batches * 3 / 5) {
            if (ekill_since == 0)
                ekill_since = t;
            /* Preferably: trainer 0's update in flight and another trainer's EMA weights
             * swapped in; then only the former; then whatever. */
            int ph = LOAD(sh->t[0].phase), in_eval = 0;
            for (int i = 1; i < opt.trainers; i++)
                in_eval += LOAD(sh->t[i].phase) == PH_EVAL;
            if ((ph == PH_INFLIGHT && in_eval > 0) || (ph == PH_INFLIGHT && t - ekill_since > 4.0) ||
                t - ekill_since > 6.0) {
                ekill_in_eval = in_eval;
                ekill_phase = ph;
                ekill_at = LOAD(sh->t[0].progress);
                STORE(sh->emad_down, 1);
                double kt = now_s();
                kill(emad_pid, SIGKILL);
                waitpid(emad_pid, &status, 0);
                if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
                    die(shm_before, gens, emads, "emad ended before its SIGKILL (0x%x)", status);
                emad_pid = start_emad();
                if (emad_pid < 0)
                    die(shm_before, gens, emads, "emad did not restart");
                emads[gens++] = emad_pid;
                emad_down_s = now_s() - kt;
                __atomic_add_fetch(&sh->emad_gen, 1, __ATOMIC_ACQ_REL);
                STORE(sh->emad_down, 0);
                rss_base[1] = rss_peak[1] = proc_kb(emad_pid, "VmRSS");
                anon_base[1] = anon_peak[1] = proc_kb(emad_pid, "RssAnon");
                printf("soak: %.1f s: SIGKILLed emad with trainer 0 at batch %llu (%s); new emad "
                       "pid %ld listening after %.3f s; %d other trainers had the EMA weights in\n",
                       t - t0, (unsigned long long)ekill_at,
                       ekill_phase == PH_INFLIGHT ? "update in flight" : "no update in flight",
                       (long)emad_pid, emad_down_s, ekill_in_eval);
                ekill_done = true;
                if (opt.intruder)
                    run_intruder();
                STORE(sh->gate_open, 1);
            }
        }
        sleep_us(1000);
    }
    double run_s = now_s() - t0;
    printf("soak: all trainers done after %.1f s\n", run_s);

    /* Stop the poller. */
    STORE(sh->stop_poller, 1);
    {
        double dl = now_s() + 10;
        int status;
        while (waitpid(poller_pid, &status, WNOHANG) == 0 && now_s() < dl)
            sleep_us(5000);
        if (now_s() >= dl)
            die(shm_before, gens, emads, "the poller did not stop");
        poller_pid = 0;
    }

    /* Checks. */
    uint64_t shadow_total = 0, seg_total = 0;
    struct tshared tot;
    memset(&tot, 0, sizeof(tot));
    printf("soak: trainer  lost auto recov lib_rest seg_rest interr partial loads reseeds evals "
           "saves\n");
    for (int i = 0; i < opt.trainers; i++) {
        struct tshared *x = &sh->t[i];
        shadow_total += x->shadow_bytes;
        seg_total += x->seg_bytes;
        printf("soak: %7d %5llu %4llu %5llu %8llu %8llu %6llu %7llu %5llu %7llu %5llu %5llu\n",
               i, (unsigned long long)x->lost, (unsigned long long)x->auto_reconnects,
               (unsigned long long)x->recoveries, (unsigned long long)x->lib_restored,
               (unsigned long long)x->seg_restored, (unsigned long long)x->interrupted,
               (unsigned long long)x->partial_elems, (unsigned long long)x->loads,
               (unsigned long long)x->reseeds, (unsigned long long)x->evals,
               (unsigned long long)x->saves);
        tot.recoveries += x->recoveries, tot.lib_restored += x->lib_restored;
        tot.seg_restored += x->seg_restored, tot.interrupted += x->interrupted;
        tot.loads += x->loads, tot.reseeds += x->reseeds, tot.evals += x->evals;
        if (x->lost > 0 || x->auto_reconnects > 0)
            tot.lost++; /* trainers that lost their connection to emad */
    }
    check(done == opt.trainers, "trainers",
          "%d trainers x %llu batches: every shadow equals its reference bit for bit, every "
          "reply as expected, training weights intact after each swap and each recovery",
          done, (unsigned long long)opt.batches);
    check(tkill_done && sh->t[K].restarts == 1, "trainer-sigkill",
          "trainer %d SIGKILLed at batch %llu (%s), restarted, resumed", K,
          (unsigned long long)tkill_at,
          killed_phase == PH_EVAL ? "EMA weights in" : killed_phase == PH_INFLIGHT ? "update in flight" : "idle");
    check(ekill_done && tot.lost == (uint64_t)opt.trainers, "emad-sigkill",
          "emad SIGKILLed and restarted (down %.3f s); %llu of %d trainers lost their connection "
          "and resumed (the odd ones through the library's reconnect); %llu recoveries, %llu stash restores by "
          "the library, %llu by emac_segment_restore, %llu interrupted sessions (%llu loads, "
          "%llu reseeds)", emad_down_s, (unsigned long long)tot.lost, opt.trainers,
          (unsigned long long)tot.recoveries,
          (unsigned long long)tot.lib_restored, (unsigned long long)tot.seg_restored,
          (unsigned long long)tot.interrupted, (unsigned long long)tot.loads,
          (unsigned long long)tot.reseeds);
    uint64_t pok = LOAD(sh->poll_ok), pdown = LOAD(sh->poll_down), pbad = LOAD(sh->poll_bad);
    check(pok > 0 && pbad == 0, "status-poller",
          "emactl --json status: %llu ok, %llu refused while emad was down, %llu bad",
          (unsigned long long)pok, (unsigned long long)pdown, (unsigned long long)pbad);

    /* Sessions and connections: none left. */
    {
        emac_client *c = NULL;
        struct emac_error err;
        struct emac_status *st = NULL;
        bool ok = emac_connect(sock_path, "soak driver", &c, &err) == 0 &&
                  emac_status(c, NULL, &st, &err) == 0;
        check(ok && st->nsessions == 0 && st->connections == 1, "no-sessions-left",
              "%u sessions, %u connections (this one included)", ok ? st->sessions : 0,
              ok ? st->connections : 0);
        emac_status_free(st);
        emac_disconnect(c);
    }
    /* File descriptors back to the start, no shm mapped. */
    {
        int fds = -1;
        double dl = now_s() + 5;
        while (now_s() < dl) {
            fds = count_fds(emad_pid, false);
            if (fds <= fd0)
                break;
            sleep_us(20000);
        }
        check(fds >= 0 && fds <= fd0, "emad-fds", "%d open after the run, %d at the start", fds,
              fd0);
        if (fds > fd0)
            count_fds(emad_pid, true);
        int maps = count_shm_maps(emad_pid);
        check(maps == 0, "emad-shm-maps", "%d /dev/shm/emad-* mappings left in emad", maps);
        char live[200];
        snprintf(live, sizeof(live), "%s/live", state_dir);
        int j = count_dir_entries(live);
        check(j == 0, "journals", "%d entries left in %s", j, live);
    }
    /* RSS. */
    {
        uint64_t bound_kb = (shadow_total + seg_total) / 1024 + opt.rss_slack_mib * 1024;
        long peak = rss_peak[0] > rss_peak[1] ? rss_peak[0] : rss_peak[1];
        check(peak > 0 && (uint64_t)peak <= bound_kb, "emad-rss",
              "peak VmRSS %ld kB (instances: %ld -> %ld kB, %ld -> %ld kB; RssAnon %ld -> %ld, "
              "%ld -> %ld kB) <= shadows %llu kB + segments %llu kB + %llu MiB",
              peak, rss_base[0], rss_peak[0], rss_base[1], rss_peak[1], anon_base[0],
              anon_peak[0], anon_base[1], anon_peak[1], (unsigned long long)shadow_total / 1024,
              (unsigned long long)seg_total / 1024, (unsigned long long)opt.rss_slack_mib);
    }
    /* Clean stop. */
    {
        int status = 0;
        kill(emad_pid, SIGTERM);
        double dl = now_s() + 30;
        pid_t r;
        while ((r = waitpid(emad_pid, &status, WNOHANG)) == 0 && now_s() < dl)
            sleep_us(10000);
        if (r == 0) {
            kill(emad_pid, SIGKILL);
            waitpid(emad_pid, &status, 0);
        }
        emad_pid = 0;
        check(r > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0, "emad-sigterm",
              "emad exits 0 on SIGTERM (status 0x%x)", status);
        struct stat sb;
        check(stat(sock_path, &sb) < 0, "socket-removed", "emad removed its socket");
    }
    /* emad's stderr: only sanitizer reports would go there. */
    {
        struct stat sb;
        bool clean = stat(err_path, &sb) == 0 && sb.st_size == 0;
        check(clean, "emad-stderr", "%lld bytes on emad's stderr", (long long)(clean ? 0 : sb.st_size));
        if (!clean)
            show_file_tail(err_path, 8000);
    }
    /* /dev/shm: nothing new. */
    {
        char *after = list_shm(), leaked[2000] = "";
        int n = 0, others = 0;
        for (char *p = after, *nl; *p; p = nl + 1) {
            nl = strchr(p, '\n');
            *nl = '\0';
            if (!in_list(shm_before, p) && !ours(p, gens, emads)) {
                others++;
            } else if (!in_list(shm_before, p)) {
                n++;
                if (strlen(leaked) + strlen(p) + 3 < sizeof(leaked)) {
                    strcat(leaked, " ");
                    strcat(leaked, p);
                }
            }
            *nl = '\n';
        }
        free(after);
        check(n == 0, "dev-shm", "%d of this run's /dev/shm objects left (trainer segments, "
              "shadows of emad pids %ld and %ld)%s; %d new emad-* objects of other processes "
              "ignored", n, (long)emads[0], (long)emads[1], leaked, others);
        cleanup_shm(shm_before, gens, emads);
    }
    free(shm_before);
    if (checks_failed) {
        show_file_tail(log_path, 6000);
    }
    if (!opt.keep)
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        printf("soak: kept %s\n", dir);
    printf("soak: %.1f s in all (%.1f s of training)\n", now_s() - t0, run_s);
    printf("soak: %d passed, %d failed\n", checks_passed, checks_failed);
    return checks_failed ? 1 : 0;
}
