/*
 * bench_profiles.c - `emabench kprofiles`: the update of K EMA profiles in one pass
 * (kernel_multi.h) against K single-profile passes (kernel.h), in process, no emad involved
 * (--socket is required by emabench's parser but not used).
 *
 * For K = 1, 2, 4, 8 and each --sizes (default 16M,64M elements) and --dtypes (default f32):
 * repetitions interleaved A B A B (A: one K-profile pass over K shadows, B: K single passes over
 * the same shadows), each timed alone, one untimed warm-up of each first. Reported: the median
 * of A/B over the repetitions with its min and max, and the goal figure
 * A / (B/K * bytes(K)/bytes(1)), with bytes(K) = param + 2K shadow bytes per element (4 + 8K for
 * f32): 1.0 means the one pass runs exactly at the memory speed of a single pass, which the goal
 * wants <= 1.05 from 16M elements up. With --workers N > 1 the same again with the range split
 * over N threads (created for each timed pass; a few tens of microseconds against milliseconds).
 * Each figure twice: the plain kernels, then the health variants (skip on) on both sides, as
 * emad runs them by default (record field "health"). For K > 4 with health, one more record
 * ("kgroups"): kernel_multi_update_health, which runs such a pass in two groups strip by strip,
 * against the one pass of the implementation's table called directly, interleaved the same way.
 */
#include "bench.h"
#include "kernel.h"
#include "kernel_multi.h"

#include <pthread.h>
#include <string.h>

#define KP_REPS 7

struct kp_run {
    const struct kernel_ops *ops;
    const struct kernel_multi_ops *mops;
    enum dtype dt;
    void *x;
    void *s[KERNEL_MULTI_MAX];
    double sm[KERNEL_MULTI_MAX];
    unsigned k;
    bool multi;        /* one K-profile pass, else K single passes */
    bool onepass;      /* with multi and health: the table's pass itself, not in groups */
    bool health;       /* the health variants (skip on), as emad runs by default */
    uint64_t from, to; /* the slice this thread updates */
};

static void *kp_work(void *arg)
{
    struct kp_run *r = arg;
    size_t xs = dtype_size(r->dt), ss = dtype_size(dtype_shadow(r->dt));
    size_t n = r->to - r->from;
    void *sp[KERNEL_MULTI_MAX];

    for (unsigned p = 0; p < r->k; p++)
        sp[p] = (char *)r->s[p] + r->from * ss;
    const void *x = (const char *)r->x + r->from * xs;
    struct kernel_health h[KERNEL_MULTI_MAX];
    memset(h, 0, sizeof(h));
    if (r->multi && r->health && r->onepass) {
        float w[KERNEL_MULTI_MAX], *sf[KERNEL_MULTI_MAX];
        for (unsigned p = 0; p < r->k; p++) {
            w[p] = kernel_weight_f32(r->sm[p]);
            sf[p] = sp[p];
        }
        if (r->dt == DTYPE_F32)
            r->mops->update_f32_health(sf, r->k, x, n, w, true, h);
        else if (r->dt == DTYPE_BF16)
            r->mops->update_bf16_health(sf, r->k, x, n, w, true, h);
        else
            r->mops->update_f16_health(sf, r->k, x, n, w, true, h);
    } else if (r->multi && r->health) {
        if (kernel_multi_update_health(r->mops, r->dt, sp, r->k, x, n, r->sm, NULL, true, h) < 0)
            die("kernel_multi_update_health failed");
    } else if (r->multi) {
        if (kernel_multi_update(r->mops, r->dt, sp, r->k, x, n, r->sm) < 0)
            die("kernel_multi_update failed");
    } else {
        for (unsigned p = 0; p < r->k; p++)
            if ((r->health ? kernel_update_health(r->ops, r->dt, sp[p], x, n, r->sm[p], NULL,
                                                  true, &h[p])
                           : kernel_update(r->ops, r->dt, sp[p], x, n, r->sm[p])) < 0)
                die("kernel_update failed");
    }
    return NULL;
}

/* One timed pass over [0, n), split over `threads`. */
static double kp_pass(const struct kp_run *base, uint64_t n, unsigned threads, bool multi)
{
    struct kp_run runs[64];
    pthread_t tid[64];

    if (threads > 64)
        threads = 64;
    double t0 = now();
    for (unsigned t = 0; t < threads; t++) {
        runs[t] = *base;
        runs[t].multi = multi;
        runs[t].from = n * t / threads;
        runs[t].to = n * (t + 1) / threads;
        if (threads == 1)
            kp_work(&runs[t]);
        else if (pthread_create(&tid[t], NULL, kp_work, &runs[t]) != 0)
            die("pthread_create failed");
    }
    if (threads > 1)
        for (unsigned t = 0; t < threads; t++)
            pthread_join(tid[t], NULL);
    return now() - t0;
}

static void kp_measure(enum dtype dt, const char *dtname, uint64_t n, unsigned k,
                       unsigned threads, bool health, void *x, void *const *s)
{
    static const double smoothings[KERNEL_MULTI_MAX] = {0.999, 0.9999, 0.99, 0.5,
                                                        0.3, 0.9, 0.0,    0.99999};
    struct kp_run r = {.ops = kernel_ops_best(), .mops = kernel_multi_ops_best(), .dt = dt,
                       .x = x, .k = k, .health = health};
    double a[KP_REPS], b[KP_REPS], ratio[KP_REPS], goal[KP_REPS];
    double xs = (double)dtype_size(dt), ss = (double)dtype_size(dtype_shadow(dt));
    double bytes_k = xs + 2 * ss * k, bytes_1 = xs + 2 * ss;
    char buf[32];

    for (unsigned p = 0; p < k; p++) {
        r.s[p] = s[p];
        r.sm[p] = smoothings[p];
    }
    kp_pass(&r, n, threads, true); /* warm-up: caches, page tables, frequency */
    kp_pass(&r, n, threads, false);
    for (int i = 0; i < KP_REPS; i++) {
        /* A B, then B A: neither always runs on the caches and page state the other left. */
        if (i % 2 == 0) {
            a[i] = kp_pass(&r, n, threads, true);
            b[i] = kp_pass(&r, n, threads, false);
        } else {
            b[i] = kp_pass(&r, n, threads, false);
            a[i] = kp_pass(&r, n, threads, true);
        }
        ratio[i] = a[i] / b[i];
        goal[i] = a[i] / (b[i] / k * bytes_k / bytes_1);
    }
    double a_med = quantile(a, KP_REPS, 0.5), b_med = quantile(b, KP_REPS, 0.5);
    double r_med = quantile(ratio, KP_REPS, 0.5), g_med = quantile(goal, KP_REPS, 0.5);
    rec_begin("kprofiles");
    rec_str("dtype", dtname);
    rec_int("elems", n);
    rec_int("k", k);
    rec_int("threads", threads);
    rec_int("health", health);
    rec_int("reps", KP_REPS);
    rec_str("impl", r.mops->name);
    rec_num("multi_s", a_med);
    rec_num("singles_s", b_med);
    rec_num("multi_gbps", (double)n * bytes_k / a_med / 1e9);
    rec_num("singles_gbps", (double)n * bytes_1 * k / b_med / 1e9);
    rec_num("ratio_median", r_med);
    rec_num("ratio_min", ratio[0]); /* quantile sorted the array */
    rec_num("ratio_max", ratio[KP_REPS - 1]);
    rec_num("goal_median", g_med);
    rec_num("goal_min", goal[0]);
    rec_num("goal_max", goal[KP_REPS - 1]);
    rec_end();
    fprintf(stderr,
            "kprofiles %s %s K=%u threads=%u%s: multi %.1f ms, %u singles %.1f ms, ratio %.3f "
            "[%.3f, %.3f], goal %.3f [%.3f, %.3f] (<= 1.05 wanted)\n",
            dtname, fmt_elems(n, buf, sizeof(buf)), k, threads, health ? " health" : "",
            a_med * 1e3, k, b_med * 1e3,
            r_med, ratio[0], ratio[KP_REPS - 1], g_med, goal[0], goal[KP_REPS - 1]);
}

/* K > 4 profiles with health, f32/bf16/f16 shadows: the grouped pass against the one pass. */
static void kp_groups(enum dtype dt, const char *dtname, uint64_t n, unsigned k, void *x,
                      void *const *s)
{
    static const double smoothings[KERNEL_MULTI_MAX] = {0.999, 0.9999, 0.99, 0.5,
                                                        0.3, 0.9, 0.0,    0.99999};
    struct kp_run g = {.ops = kernel_ops_best(), .mops = kernel_multi_ops_best(), .dt = dt,
                       .x = x, .k = k, .health = true};
    double a[KP_REPS], b[KP_REPS], ratio[KP_REPS];
    char buf[32];

    for (unsigned p = 0; p < k; p++) {
        g.s[p] = s[p];
        g.sm[p] = smoothings[p];
    }
    struct kp_run one = g;
    one.onepass = true;
    kp_pass(&g, n, 1, true); /* warm-up */
    kp_pass(&one, n, 1, true);
    for (int i = 0; i < KP_REPS; i++) {
        if (i % 2 == 0) {
            a[i] = kp_pass(&g, n, 1, true);
            b[i] = kp_pass(&one, n, 1, true);
        } else {
            b[i] = kp_pass(&one, n, 1, true);
            a[i] = kp_pass(&g, n, 1, true);
        }
        ratio[i] = a[i] / b[i];
    }
    double a_med = quantile(a, KP_REPS, 0.5), b_med = quantile(b, KP_REPS, 0.5);
    double r_med = quantile(ratio, KP_REPS, 0.5);
    rec_begin("kgroups");
    rec_str("dtype", dtname);
    rec_int("elems", n);
    rec_int("k", k);
    rec_int("reps", KP_REPS);
    rec_str("impl", g.mops->name);
    rec_num("grouped_s", a_med);
    rec_num("onepass_s", b_med);
    rec_num("ratio_median", r_med);
    rec_num("ratio_min", ratio[0]); /* quantile sorted the array */
    rec_num("ratio_max", ratio[KP_REPS - 1]);
    rec_end();
    fprintf(stderr,
            "kgroups %s %s K=%u health: two groups %.1f ms, one pass %.1f ms, ratio %.3f "
            "[%.3f, %.3f]\n",
            dtname, fmt_elems(n, buf, sizeof(buf)), k, a_med * 1e3, b_med * 1e3, r_med, ratio[0],
            ratio[KP_REPS - 1]);
}

int cmd_kprofiles(const struct bopts *o)
{
    static const unsigned ks[] = {1, 2, 4, 8};
    uint64_t sizes[BENCH_MAX_LIST];
    size_t nsizes = o->nsizes;

    memcpy(sizes, o->sizes, sizeof(sizes));
    if (nsizes == 1 && sizes[0] == (16u << 20)) { /* emabench's default: not chosen */
        sizes[1] = 64u << 20;
        nsizes = 2;
    }
    for (size_t d = 0; d < o->ndtypes; d++) {
        enum dtype dt;
        if (dtype_from_name(o->dtypes[d], strlen(o->dtypes[d]), &dt) < 0 || !dtype_is_float(dt))
            die("kprofiles: --dtypes: \"%s\" is not f32, bf16, f16 or f64", o->dtypes[d]);
        size_t xs = dtype_size(dt), ss = dtype_size(dtype_shadow(dt));
        for (size_t z = 0; z < nsizes; z++) {
            uint64_t n = sizes[z];
            void *x = malloc(n * xs), *s[KERNEL_MULTI_MAX];
            if (x == NULL)
                die("kprofiles: out of memory for %llu elements", (unsigned long long)n);
            memset(x, 0x3c, n * xs);
            for (unsigned p = 0; p < KERNEL_MULTI_MAX; p++) {
                s[p] = malloc(n * ss);
                if (s[p] == NULL)
                    die("kprofiles: out of memory for the shadows");
                memset(s[p], 0x3d + p, n * ss);
            }
            for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
                for (int health = 0; health < 2; health++) {
                    kp_measure(dt, o->dtypes[d], n, ks[i], 1, health, x, s);
                    if (health && ks[i] > 4 && dt != DTYPE_F64)
                        kp_groups(dt, o->dtypes[d], n, ks[i], x, s);
                    if (o->workers > 1)
                        kp_measure(dt, o->dtypes[d], n, ks[i], o->workers, health, x, s);
                }
            }
            free(x);
            for (unsigned p = 0; p < KERNEL_MULTI_MAX; p++)
                free(s[p]);
        }
    }
    return 0;
}
