/*
 * toy_trainer - a synthetic trainer that keeps its EMA in emad (`make demo`).
 *
 * It owns eight tensors (about 10.5M parameters of f32, bf16, f16 and f64,
 * and an i64 batch counter) in a segment, pulls them towards a fixed target
 * with noisy pseudo-gradients, and drives emad as a real trainer would:
 * batch_end after each optimizer step in the split form, so that emad's
 * update runs while the next step's gradients are computed; eval_start /
 * eval_end every --eval-every batches, checking that the EMA weights were
 * swapped in and that the training weights come back bit for bit; one
 * checkpoint (swap in, save the state file, swap out at the next
 * batch_start). The EMA of noisy weights sits closer to the target than the
 * weights themselves: the evaluation prints both losses.
 */
#include "emaclient.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NTENSORS 8
#define LOSS_SAMPLE 65536 /* elements per tensor the loss looks at */

struct opts {
    const char *socket;
    const char *session;
    const char *half_life;
    unsigned batches;
    unsigned eval_every;
    unsigned checkpoint_at;
    unsigned batches_per_epoch;
    bool resume;
};

/* The trainer: its segment, session and gradient buffers. */
struct trainer {
    const struct opts *o;
    emac_client *c;
    emac_segment *seg;
    emac_session *s;
    void *grad[NTENSORS];  /* f32 gradients (f64 for the f64 tensor) */
    void *snapshot;        /* a copy of the params, to compare after a swap out */
    double compute_s;      /* time spent computing gradients */
    double wait_s;         /* time spent waiting for emad's updates */
    unsigned waits;
};

static const uint64_t shape_embed[] = {8192, 512};
static const uint64_t shape_attn[] = {1024, 2048};
static const uint64_t shape_mlp[] = {2048, 1024};
static const uint64_t shape_head[] = {512, 4096};

static const struct emac_tensor_spec specs[NTENSORS] = {
    {"embed.weight", "f32", 8192 * 512, shape_embed, 2},
    {"block.0.attn.weight", "bf16", 1024 * 2048, shape_attn, 2},
    {"block.0.attn.bias", "bf16", 2048, NULL, 0},
    {"block.0.mlp.weight", "f16", 2048 * 1024, shape_mlp, 2},
    {"block.0.mlp.bias", "f32", 1024, NULL, 0},
    {"norm.weight", "f32", 512, NULL, 0},
    {"head.weight", "f64", 512 * 4096, shape_head, 2},
    {"num_batches_tracked", "i64", 1, NULL, 0},
};

static void usage(FILE *fp)
{
    fputs(
"Usage: toy_trainer [OPTIONS]\n"
"A synthetic trainer that keeps its EMA weights in emad: 8 tensors, about\n"
"10.5M parameters (f32, bf16, f16, f64 and an i64 counter), noisy optimizer\n"
"steps, the update overlapped with the next step, evaluation with the EMA\n"
"weights swapped in, one checkpoint. The session is closed with keep, so it\n"
"stays in emad (detached) for `emactl show`.\n"
"\n"
"Options:\n"
"  --socket PATH          emad's socket (default: $EMAD_SOCKET, else\n"
"                         $XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock)\n"
"  --session NAME         the session's name (default: toy)\n"
"  --resume               re-attach to a kept session of that name\n"
"  --batches N            optimizer steps (default: 300)\n"
"  --half-life TIME       the EMA's half-life (default: 50ba)\n"
"  --eval-every N         evaluate every N batches (default: 50; 0: never)\n"
"  --checkpoint-at N      checkpoint after batch N (default: 120; 0: never)\n"
"  --batches-per-epoch N  batches per epoch (default: 100)\n"
"  -h, --help             show this help and exit\n"
"\n"
"Exit status: 0 when training ran and every check passed, 1 when emad\n"
"reported an error or a check failed, 2 on a usage error.\n",
        fp);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail_emad(const char *what, const struct emac_error *e)
{
    fprintf(stderr, "toy_trainer: %s: %s: %s\n", what, e->code, e->message);
    return 1;
}

/* ---- the model ---- */

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); /* round to nearest even */
}

static inline float f32_of(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline uint32_t bits_of(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

/* binary16 -> binary32, exact: the bits moved into place and rescaled by
 * 2^112 (which also normalises subnormals); infinities and NaNs apart. */
static inline float f16_to_f32(uint16_t h)
{
    uint32_t em = h & 0x7fffu, sign = (uint32_t)(h & 0x8000u) << 16;
    if (em >= 0x7c00u)
        return f32_of(sign | 0x7f800000u | (em & 0x3ffu) << 13);
    return f32_of(sign | bits_of(f32_of(em << 13) * 0x1p112f));
}

/* binary32 -> binary16 with round to nearest even (F. Giesen's method). */
static inline uint16_t f32_to_f16(float f)
{
    uint32_t u = bits_of(f), sign = u & 0x80000000u, o;

    u ^= sign;
    if (u >= 143u << 23) {                      /* overflow, inf, NaN */
        o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (u < 113u << 23) {                /* subnormal or zero: let the FPU round */
        o = bits_of(f32_of(u) + f32_of(126u << 23)) - (126u << 23);
    } else {
        u += ((uint32_t)(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1);
        o = u >> 13;
    }
    return (uint16_t)(o | sign >> 16);
}

/* What element i of a tensor is pulled towards. */
static inline float target(size_t i)
{
    return (float)((i * 7919u) & 1023u) / 1024.0f - 0.5f;
}

/* A cheap generator of uniform noise in [-1, 1): one xorshift stream per
 * tensor and batch. */
static inline float noise(uint32_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return (float)(int32_t)*x * (1.0f / 2147483648.0f);
}

static double param_at(const struct emac_tensor *t, size_t i)
{
    switch (t->dtype[1]) {
    case '3': return ((const float *)t->data)[i];                  /* f32 */
    case 'f': return bf16_to_f32(((const uint16_t *)t->data)[i]);  /* bf16 */
    case '1': return f16_to_f32(((const uint16_t *)t->data)[i]);   /* f16 */
    case '6': return ((const double *)t->data)[i];                 /* f64 */
    default: return 0;
    }
}

/* The "forward and backward pass": gradients of 0.5 (p - target)^2 plus
 * noise. Only reads the params, so it may overlap emad's update. */
static void compute_gradients(struct trainer *tr, unsigned b)
{
    for (size_t k = 0; k < NTENSORS; k++) {
        const struct emac_tensor *t = emac_segment_tensor(tr->seg, k);
        uint32_t x = 0x9E3779B9u * (uint32_t)(b * NTENSORS + k + 1);
        float *g = tr->grad[k];
        if (strcmp(t->dtype, "f32") == 0) {
            const float *p = t->data;
            for (size_t i = 0; i < t->numel; i++)
                g[i] = p[i] - target(i) + noise(&x);
        } else if (strcmp(t->dtype, "bf16") == 0) {
            const uint16_t *p = t->data;
            for (size_t i = 0; i < t->numel; i++)
                g[i] = bf16_to_f32(p[i]) - target(i) + noise(&x);
        } else if (strcmp(t->dtype, "f16") == 0) {
            const uint16_t *p = t->data;
            for (size_t i = 0; i < t->numel; i++)
                g[i] = f16_to_f32(p[i]) - target(i) + noise(&x);
        } else if (strcmp(t->dtype, "f64") == 0) {
            const double *p = t->data;
            double *gd = tr->grad[k];
            for (size_t i = 0; i < t->numel; i++)
                gd[i] = p[i] - target(i) + noise(&x);
        }
    }
}

/* The optimizer step: p -= lr * g, in each tensor's own precision. */
static void optimizer_step(struct trainer *tr, float lr)
{
    for (size_t k = 0; k < NTENSORS; k++) {
        const struct emac_tensor *t = emac_segment_tensor(tr->seg, k);
        const float *g = tr->grad[k];
        if (strcmp(t->dtype, "f32") == 0) {
            float *p = t->data;
            for (size_t i = 0; i < t->numel; i++)
                p[i] -= lr * g[i];
        } else if (strcmp(t->dtype, "bf16") == 0) {
            uint16_t *p = t->data;
            for (size_t i = 0; i < t->numel; i++)
                p[i] = f32_to_bf16(bf16_to_f32(p[i]) - lr * g[i]);
        } else if (strcmp(t->dtype, "f16") == 0) {
            uint16_t *p = t->data;
            for (size_t i = 0; i < t->numel; i++)
                p[i] = f32_to_f16(f16_to_f32(p[i]) - lr * g[i]);
        } else if (strcmp(t->dtype, "f64") == 0) {
            double *p = t->data;
            const double *gd = tr->grad[k];
            for (size_t i = 0; i < t->numel; i++)
                p[i] -= lr * gd[i];
        } else {
            ((int64_t *)t->data)[0]++; /* num_batches_tracked */
        }
    }
}

/* Mean squared distance to the target over a sample of every float tensor:
 * the "validation loss" of whatever weights the params hold now. */
static double loss(const struct trainer *tr)
{
    double sum = 0;
    size_t n = 0;

    for (size_t k = 0; k < NTENSORS; k++) {
        const struct emac_tensor *t = emac_segment_tensor(tr->seg, k);
        if (strcmp(t->dtype, "i64") == 0)
            continue;
        for (size_t i = 0; i < t->numel && i < LOSS_SAMPLE; i++, n++) {
            double d = param_at(t, i) - target(i);
            sum += d * d;
        }
    }
    return sum / (double)n;
}

/* ---- talking to emad ---- */

static struct emac_time clock_at(const struct trainer *tr, unsigned batch)
{
    struct emac_time t = {batch, batch / tr->o->batches_per_epoch, true,
                          (double)batch / tr->o->batches};
    return t;
}

static void *params_area(const struct trainer *tr, uint64_t *bytes)
{
    const struct emac_tensor *first = emac_segment_tensor(tr->seg, 0);
    const struct emac_tensor *last = emac_segment_tensor(tr->seg, NTENSORS - 1);
    *bytes = last->offset + last->bytes;
    return (char *)first->data - first->offset;
}

static void take_snapshot(struct trainer *tr)
{
    uint64_t bytes;
    void *p = params_area(tr, &bytes);
    memcpy(tr->snapshot, p, bytes);
}

static bool same_as_snapshot(const struct trainer *tr)
{
    uint64_t bytes;
    void *p = params_area(tr, &bytes);
    return memcmp(tr->snapshot, p, bytes) == 0;
}

/* With the EMA weights swapped in, the f32 tensor holds its shadow exactly. */
static bool ema_is_swapped_in(const struct trainer *tr)
{
    const struct emac_tensor *t = emac_segment_tensor(tr->seg, 0);
    const struct emac_shadow *sh = emac_session_shadow(tr->s, 0);
    return memcmp(t->data, sh->data, t->bytes) == 0 && !same_as_snapshot(tr);
}

static int evaluate(struct trainer *tr, unsigned b)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = clock_at(tr, b);
    double train_loss = loss(tr), ema_loss;
    uint32_t state;

    take_snapshot(tr);
    if (emac_event(tr->s, "eval_start", &t, &r, &err) < 0)
        return fail_emad("eval_start", &err);
    if (r.action != EMAC_ACTION_SWAP_IN) {
        printf("batch %4u  eval: the EMA has not started (action %s)\n", b,
               emac_action_name(r.action));
        return 0;
    }
    emac_segment_swap_state(tr->seg, &state, NULL);
    if (state != EMAC_SWAP_EMA || !ema_is_swapped_in(tr)) {
        fprintf(stderr, "toy_trainer: eval_start: the params do not hold the EMA weights\n");
        return 1;
    }
    ema_loss = loss(tr);
    if (emac_event(tr->s, "eval_end", &t, &r, &err) < 0)
        return fail_emad("eval_end", &err);
    if (r.action != EMAC_ACTION_SWAP_OUT || !same_as_snapshot(tr)) {
        fprintf(stderr, "toy_trainer: eval_end: the training weights did not come back bit "
                        "for bit\n");
        return 1;
    }
    printf("batch %4u  updates %4" PRIu64 "  loss: training weights %.5f, EMA weights %.5f"
           "  (swapped in and out; training weights restored bitwise)\n",
           b, r.updates, train_loss, ema_loss);
    printf("            compute %.1f ms/batch, waiting for emad's update %.3f ms/batch\n",
           tr->compute_s * 1e3 / b, tr->waits ? tr->wait_s * 1e3 / tr->waits : 0.0);
    return 0;
}

static int checkpoint(struct trainer *tr, unsigned b, bool *swapped_in)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_file f;
    struct emac_time t = clock_at(tr, b);
    char name[64];

    take_snapshot(tr);
    if (emac_event(tr->s, "checkpoint", &t, &r, &err) < 0)
        return fail_emad("checkpoint", &err);
    *swapped_in = r.action == EMAC_ACTION_SWAP_IN;
    /* A real trainer writes its checkpoint here, with the EMA weights in
     * its tensors; we save emad's own state file beside it. */
    snprintf(name, sizeof(name), "%s-batch-%u", tr->o->session, b);
    if (emac_save(tr->c, tr->o->session, name, &f, &err) < 0)
        return fail_emad("save", &err);
    printf("batch %4u  checkpoint: EMA weights %s; emad saved its state to %s (%" PRIu64
           " bytes)\n", b, r.action == EMAC_ACTION_SWAP_IN ? "swapped in" : "not started yet",
           f.path, f.bytes);
    return 0;
}

static int train(struct trainer *tr)
{
    const struct opts *o = tr->o;
    struct emac_error err;
    struct emac_result r;
    emac_ticket pending = 0, start;
    bool have_pending = false, active = false;
    struct emac_time t0 = clock_at(tr, 0);

    if (emac_event(tr->s, "init", &t0, &r, &err) < 0 ||
        emac_event(tr->s, "fit_start", &t0, &r, &err) < 0)
        return fail_emad("init", &err);
    for (unsigned b = 1; b <= o->batches; b++) {
        struct emac_time before = clock_at(tr, b - 1), after = clock_at(tr, b);
        bool restoring = active;
        double t;

        /* batch_start swaps the training weights back after a checkpoint:
         * then the gradients must wait for it. Otherwise it is a no-op that
         * may travel with the pending update. */
        if (emac_event_send(tr->s, "batch_start", &before, &start, &err) < 0)
            return fail_emad("batch_start", &err);
        if (restoring) {
            if (emac_event_wait(tr->s, start, &r, &err) < 0)
                return fail_emad("batch_start", &err);
            if (r.action != EMAC_ACTION_SWAP_OUT || !same_as_snapshot(tr)) {
                fprintf(stderr, "toy_trainer: batch_start after the checkpoint did not restore "
                                "the training weights bit for bit\n");
                return 1;
            }
            printf("batch %4u  batch_start: training weights back after the checkpoint "
                   "(bitwise)\n", b);
            active = false;
        }
        t = now_s();
        compute_gradients(tr, b);
        tr->compute_s += now_s() - t;
        /* The previous update must be done before the params change. */
        if (have_pending) {
            t = now_s();
            if (emac_event_wait(tr->s, pending, &r, &err) < 0)
                return fail_emad("batch_end", &err);
            tr->wait_s += now_s() - t;
            tr->waits++;
            have_pending = false;
        }
        if (!restoring && emac_event_wait(tr->s, start, &r, &err) < 0)
            return fail_emad("batch_start", &err);
        optimizer_step(tr, 0.05f);
        if (emac_event_send(tr->s, "batch_end", &after, &pending, &err) < 0)
            return fail_emad("batch_end", &err);
        have_pending = true;
        if (b % o->batches_per_epoch == 0) {
            if (emac_event(tr->s, "epoch_end", &after, &r, &err) < 0)
                return fail_emad("epoch_end", &err);
        }
        if ((o->eval_every && b % o->eval_every == 0) || b == o->checkpoint_at) {
            if (emac_event_wait(tr->s, pending, &r, &err) < 0)
                return fail_emad("batch_end", &err);
            have_pending = false;
        }
        if (o->eval_every && b % o->eval_every == 0 && evaluate(tr, b) != 0)
            return 1;
        if (b == o->checkpoint_at && checkpoint(tr, b, &active) != 0)
            return 1;
    }
    if (have_pending && emac_event_wait(tr->s, pending, &r, &err) < 0)
        return fail_emad("batch_end", &err);
    printf("done: %u batches, %" PRIu64 " updates; num_batches_tracked %" PRId64
           " (its shadow copy %" PRId64 ")\n", o->batches, r.updates,
           *(const int64_t *)emac_segment_tensor(tr->seg, NTENSORS - 1)->data,
           *(const int64_t *)emac_session_shadow(tr->s, NTENSORS - 1)->data);
    return 0;
}

static int parse_uint(const char *opt, const char *s, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v > 1000000000ul || s[0] == '-') {
        fprintf(stderr, "toy_trainer: %s: \"%s\" is not a count\n", opt, s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int parse_opts(struct opts *o, int argc, char **argv)
{
    static const struct option longs[] = {
        {"socket", required_argument, NULL, 's'},
        {"session", required_argument, NULL, 'n'},
        {"resume", no_argument, NULL, 'r'},
        {"batches", required_argument, NULL, 'b'},
        {"half-life", required_argument, NULL, 'l'},
        {"eval-every", required_argument, NULL, 'e'},
        {"checkpoint-at", required_argument, NULL, 'c'},
        {"batches-per-epoch", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;

    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        int rc = 0;
        switch (ch) {
        case 's': o->socket = optarg; break;
        case 'n': o->session = optarg; break;
        case 'r': o->resume = true; break;
        case 'l': o->half_life = optarg; break;
        case 'b': rc = parse_uint("--batches", optarg, &o->batches); break;
        case 'e': rc = parse_uint("--eval-every", optarg, &o->eval_every); break;
        case 'c': rc = parse_uint("--checkpoint-at", optarg, &o->checkpoint_at); break;
        case 'p': rc = parse_uint("--batches-per-epoch", optarg, &o->batches_per_epoch); break;
        case 'h': usage(stdout); return 0;
        case ':':
            fprintf(stderr, "toy_trainer: option %s needs an argument\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "toy_trainer: unknown option %s\nTry 'toy_trainer --help'.\n",
                    argv[optind - 1]);
            return 2;
        }
        if (rc < 0)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "toy_trainer: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if (o->batches == 0 || o->batches_per_epoch == 0) {
        fprintf(stderr, "toy_trainer: --batches and --batches-per-epoch must be at least 1\n");
        return 2;
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct opts o = {NULL, "toy", "50ba", 300, 50, 120, 100, false};
    struct trainer tr;
    struct emac_error err;
    struct emac_config cfg = {0};
    const struct emac_session_info *st;
    uint64_t params = 0, bytes;
    int rc = 1;

    if ((rc = parse_opts(&o, argc, argv)) >= 0)
        return rc;
    rc = 1;
    memset(&tr, 0, sizeof(tr));
    tr.o = &o;
    if (emac_connect(o.socket, "toy_trainer", &tr.c, &err) < 0)
        return fail_emad("connect", &err);
    if (emac_segment_create(specs, NTENSORS, &tr.seg, &err) < 0) {
        fail_emad("segment", &err);
        goto out_client;
    }
    for (size_t k = 0; k < NTENSORS; k++) {
        const struct emac_tensor *t = emac_segment_tensor(tr.seg, k);
        params += t->numel;
        tr.grad[k] = malloc(t->numel * (strcmp(t->dtype, "f64") == 0 ? 8 : 4));
        if (tr.grad[k] == NULL)
            goto out_segment;
    }
    params_area(&tr, &bytes);
    if ((tr.snapshot = malloc(bytes)) == NULL)
        goto out_segment;
    cfg.half_life = o.half_life;
    if (emac_register(tr.c, o.session, tr.seg, &cfg, o.resume, &tr.s, &err) < 0) {
        fail_emad("register", &err);
        goto out_segment;
    }
    st = emac_session_state(tr.s);
    printf("registered session \"%s\" with emad (pid %ld): %d tensors, %.1fM params, "
           "%.1f MiB in %s;\n  shadow %.1f MiB in %s; smoothing %.6f (half-life %s)\n",
           o.session, emac_server_info(tr.c)->pid, NTENSORS, (double)params / 1e6,
           (double)bytes / 1048576.0, emac_segment_name(tr.seg),
           (double)st->shadow_bytes / 1048576.0, st->shadow_shm, st->smoothing,
           st->half_life ? st->half_life : "-");
    if (train(&tr) != 0)
        goto out_session;
    if (emac_close(tr.s, true, &err) < 0) {
        fail_emad("close", &err);
        goto out_session;
    }
    printf("closed with keep: session \"%s\" stays in emad, detached (emactl show %s)\n",
           o.session, o.session);
    rc = 0;

out_session:
    emac_session_free(tr.s);
out_segment:
    emac_segment_destroy(tr.seg);
    for (size_t k = 0; k < NTENSORS; k++)
        free(tr.grad[k]);
    free(tr.snapshot);
out_client:
    emac_disconnect(tr.c);
    return rc;
}
