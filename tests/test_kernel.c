/*
 * test_kernel.c - the kernels against their scalar references, bit for bit.
 *
 * Every implementation the CPU runs (portable always, avx2 where the CPU has it) is compared with
 * kernel_ops_reference() over lengths 0..130 and one large length, from starts misaligned by 1..3
 * elements, with guard bytes around every destination to catch a write outside the range. The
 * conversions are also checked exhaustively over all 65536 16-bit patterns and on every
 * round-to-nearest-even tie, against expectations the test computes itself.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernel.h"

#define LARGE_N ((1u << 20) + 3)
#define GUARD_BYTES 64
#define GUARD_FILL 0xa5

/* ---- Helpers ----------------------------------------------------------------------------- */

/* splitmix64: small, deterministic, good enough to spread bits. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint64_t f64_bits(double f)
{
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static double f64_from(uint64_t u)
{
    double f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The implementations under test: the portable one always, avx2 when this CPU runs it. */
static size_t impls_under_test(const struct kernel_ops *out[2])
{
    size_t n = 0;
    out[n++] = kernel_ops_portable();
    if (kernel_ops_avx2() != NULL)
        out[n++] = kernel_ops_avx2();
    else
        print_message("avx2 not available on this CPU: testing the portable path only\n");
    return n;
}

/* The same plus the reference, for checks against expectations computed by the test. */
static size_t all_impls(const struct kernel_ops *out[3])
{
    size_t n = impls_under_test(out);
    out[n++] = kernel_ops_reference();
    return n;
}

static const uint32_t special_f32[] = {
    0x00000000, 0x80000000, /* +-0 */
    0x00000001, 0x80000001, /* +-smallest subnormal */
    0x007fffff, 0x807fffff, /* +-largest subnormal */
    0x00800000, 0x80800000, /* +-FLT_MIN */
    0x3f800000, 0xbf800000, /* +-1 */
    0x3f000000, 0x3f7fffff, /* 0.5, 1 - ulp */
    0x7f7fffff, 0xff7fffff, /* +-FLT_MAX */
    0x7e967699, 0xfe967699, /* +-1e38 */
    0x7f800000, 0xff800000, /* +-inf */
    0x7fc00000, 0xffc00000, /* quiet NaNs */
    0x7f800001, 0x7fbfffff, /* signalling NaNs */
    0x477fe000, 0x477ff000, /* 65504 (largest f16), 65520 (its rounding edge) */
    0x33800000, 0x33000000, /* 2^-24 (smallest f16), 2^-25 */
    0x38800000, 0x3f808000, /* 2^-14 (smallest normal f16), 1 + bf16 half ulp */
};

static const uint64_t special_f64[] = {
    0x0000000000000000ull, 0x8000000000000000ull, 0x0000000000000001ull, 0x800fffffffffffffull,
    0x0010000000000000ull, 0x3ff0000000000000ull, 0xbff0000000000000ull, 0x7fefffffffffffffull,
    0xffefffffffffffffull, 0x7ff0000000000000ull, 0xfff0000000000000ull, 0x7ff8000000000000ull,
    0x7ff0000000000001ull, 0x3fe0000000000000ull, 0x47efffffe0000000ull, 0x3ff0000000000001ull,
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* A mix: mostly ordinary magnitudes around 1, some special values, some arbitrary bits. */
static float random_f32(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned cls = r & 15;
    if (cls == 0)
        return f32_from(special_f32[(r >> 8) % ARRAY_LEN(special_f32)]);
    if (cls <= 2)
        return f32_from((uint32_t)(r >> 32));
    uint32_t sign = (uint32_t)(r >> 4) & 1u;
    uint32_t exp = 127 - 20 + (uint32_t)((r >> 5) % 41);
    uint32_t mant = (uint32_t)(r >> 16) & 0x7fffffu;
    return f32_from(sign << 31 | exp << 23 | mant);
}

static double random_f64(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    unsigned cls = r & 15;
    if (cls == 0)
        return f64_from(special_f64[(r >> 8) % ARRAY_LEN(special_f64)]);
    if (cls <= 2)
        return f64_from(rng_next(rng));
    uint64_t sign = (r >> 4) & 1u;
    uint64_t exp = 1023 - 20 + (r >> 5) % 41;
    uint64_t mant = rng_next(rng) & 0xfffffffffffffull;
    return f64_from(sign << 63 | exp << 52 | mant);
}

/* Values near the f16 grid: an f16 value nudged by a few f32 ulps, or exactly half an f16 ulp
 * away, so that ties and near-ties are common. */
static float random_near_f16(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    uint16_t h = (uint16_t)(r & 0x7bff);
    uint32_t u = f32_bits(kernel_ref_f16_to_f32(h)) | (uint32_t)((r >> 16) & 1u) << 31;
    switch ((r >> 20) & 3) {
    case 0:
        return f32_from(u + 0x1000); /* a tie between h and h + 1 (normal h) */
    case 1:
        return f32_from(u + (uint32_t)((r >> 24) & 0x1fff));
    case 2:
        return f32_from(u - (uint32_t)((r >> 24) & 0x3));
    default:
        return random_f32(rng);
    }
}

/* A destination with guard bytes before and after, starting off elements past 64-byte
 * alignment. */
struct guarded {
    unsigned char *base;
    size_t total;
    unsigned char *data;
    size_t bytes;
};

static struct guarded guarded_new(size_t n, size_t elem, size_t off)
{
    struct guarded g;
    g.bytes = n * elem;
    g.total = GUARD_BYTES + off * elem + g.bytes + GUARD_BYTES;
    g.base = aligned_alloc(64, (g.total + 63) / 64 * 64);
    assert_non_null(g.base);
    memset(g.base, GUARD_FILL, g.total);
    g.data = g.base + GUARD_BYTES + off * elem;
    return g;
}

static void guarded_check_and_free(struct guarded *g, const char *what)
{
    for (unsigned char *p = g->base; p < g->data; p++)
        if (*p != GUARD_FILL)
            fail_msg("%s wrote %td bytes before its range", what, g->data - p);
    for (unsigned char *p = g->data + g->bytes; p < g->base + g->total; p++)
        if (*p != GUARD_FILL)
            fail_msg("%s wrote past its range at byte %td", what, p - (g->data + g->bytes));
    free(g->base);
}

/* ---- Kernel families, described once, checked against the reference by one driver ----- */

struct family {
    const char *name;
    size_t dst_size;
    size_t src_size;
    bool reads_dst; /* an update: the destination's old value is an input */
    void (*fill_dst)(void *dst, size_t n, uint64_t *rng);
    void (*fill_src)(void *src, size_t n, uint64_t *rng);
    void (*run)(const struct kernel_ops *ops, void *dst, const void *src, size_t n, double w);
    /* Element i equal; for results that are NaN in both, the payload is not compared. */
    bool (*same)(const void *a, const void *b, size_t i, uint64_t *got, uint64_t *want);
};

static void fill_f32(void *p, size_t n, uint64_t *rng)
{
    float *f = p;
    for (size_t i = 0; i < n; i++)
        f[i] = random_f32(rng);
}

static void fill_near_f16(void *p, size_t n, uint64_t *rng)
{
    float *f = p;
    for (size_t i = 0; i < n; i++)
        f[i] = random_near_f16(rng);
}

static void fill_f64(void *p, size_t n, uint64_t *rng)
{
    double *f = p;
    for (size_t i = 0; i < n; i++)
        f[i] = random_f64(rng);
}

static void fill_u16(void *p, size_t n, uint64_t *rng)
{
    uint16_t *h = p;
    for (size_t i = 0; i < n; i++)
        h[i] = (uint16_t)rng_next(rng);
}

static void run_update_f32(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    o->update_f32(d, s, n, (float)w);
}

static void run_update_bf16(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    o->update_bf16(d, s, n, (float)w);
}

static void run_update_f16(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    o->update_f16(d, s, n, (float)w);
}

static void run_update_f64(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    o->update_f64(d, s, n, w);
}

static void run_bf16_to_f32(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    (void)w;
    o->bf16_to_f32(d, s, n);
}

static void run_f16_to_f32(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    (void)w;
    o->f16_to_f32(d, s, n);
}

static void run_f32_to_bf16(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    (void)w;
    o->f32_to_bf16(d, s, n);
}

static void run_f32_to_f16(const struct kernel_ops *o, void *d, const void *s, size_t n, double w)
{
    (void)w;
    o->f32_to_f16(d, s, n);
}

static bool same_f32(const void *a, const void *b, size_t i, uint64_t *got, uint64_t *want)
{
    float x = ((const float *)a)[i], y = ((const float *)b)[i];
    *got = f32_bits(x);
    *want = f32_bits(y);
    return *got == *want || (isnan(x) && isnan(y));
}

static bool same_f64(const void *a, const void *b, size_t i, uint64_t *got, uint64_t *want)
{
    double x = ((const double *)a)[i], y = ((const double *)b)[i];
    *got = f64_bits(x);
    *want = f64_bits(y);
    return *got == *want || (isnan(x) && isnan(y));
}

/* Narrowed results are compared bit for bit, NaNs included: the NaN rule is part of the API. */
static bool same_u16(const void *a, const void *b, size_t i, uint64_t *got, uint64_t *want)
{
    *got = ((const uint16_t *)a)[i];
    *want = ((const uint16_t *)b)[i];
    return *got == *want;
}

static const struct family fam_update_f32 = {
    .name = "update_f32",
    .dst_size = 4,
    .src_size = 4,
    .reads_dst = true,
    .fill_dst = fill_f32,
    .fill_src = fill_f32,
    .run = run_update_f32,
    .same = same_f32,
};
static const struct family fam_update_bf16 = {
    .name = "update_bf16",
    .dst_size = 4,
    .src_size = 2,
    .reads_dst = true,
    .fill_dst = fill_f32,
    .fill_src = fill_u16,
    .run = run_update_bf16,
    .same = same_f32,
};
static const struct family fam_update_f16 = {
    .name = "update_f16",
    .dst_size = 4,
    .src_size = 2,
    .reads_dst = true,
    .fill_dst = fill_f32,
    .fill_src = fill_u16,
    .run = run_update_f16,
    .same = same_f32,
};
static const struct family fam_update_f64 = {
    .name = "update_f64",
    .dst_size = 8,
    .src_size = 8,
    .reads_dst = true,
    .fill_dst = fill_f64,
    .fill_src = fill_f64,
    .run = run_update_f64,
    .same = same_f64,
};
static const struct family fam_bf16_to_f32 = {
    .name = "bf16_to_f32",
    .dst_size = 4,
    .src_size = 2,
    .reads_dst = false,
    .fill_dst = NULL,
    .fill_src = fill_u16,
    .run = run_bf16_to_f32,
    .same = same_f32,
};
static const struct family fam_f16_to_f32 = {
    .name = "f16_to_f32",
    .dst_size = 4,
    .src_size = 2,
    .reads_dst = false,
    .fill_dst = NULL,
    .fill_src = fill_u16,
    .run = run_f16_to_f32,
    .same = same_f32,
};
static const struct family fam_f32_to_bf16 = {
    .name = "f32_to_bf16",
    .dst_size = 2,
    .src_size = 4,
    .reads_dst = false,
    .fill_dst = NULL,
    .fill_src = fill_f32,
    .run = run_f32_to_bf16,
    .same = same_u16,
};
static const struct family fam_f32_to_f16 = {
    .name = "f32_to_f16",
    .dst_size = 2,
    .src_size = 4,
    .reads_dst = false,
    .fill_dst = NULL,
    .fill_src = fill_near_f16,
    .run = run_f32_to_f16,
    .same = same_u16,
};

/* Both branches of the lerp, the exact ends, a typical EMA weight and a tiny one. */
static const double weights[] = {0.25, 0.5, 0.9, 1e-3, 1.0, 0.0, 1.0 - 0.999};

/* Destination / source misalignments, in elements from a 64-byte boundary. */
static const size_t offsets[][2] = {{0, 0}, {1, 2}, {3, 1}, {2, 3}};

static void check_one(const struct family *f, const struct kernel_ops *ops, size_t n,
                      size_t dst_off, size_t src_off, double w, uint64_t *rng)
{
    struct guarded dst = guarded_new(n, f->dst_size, dst_off);
    struct guarded src = guarded_new(n, f->src_size, src_off);
    void *want = malloc(n * f->dst_size + 1);
    assert_non_null(want);

    f->fill_src(src.data, n, rng);
    if (f->reads_dst)
        f->fill_dst(dst.data, n, rng);
    memcpy(want, dst.data, n * f->dst_size);

    f->run(kernel_ops_reference(), want, src.data, n, w);
    f->run(ops, dst.data, src.data, n, w);

    for (size_t i = 0; i < n; i++) {
        uint64_t got, exp;
        if (!f->same(dst.data, want, i, &got, &exp))
            fail_msg("%s/%s n=%zu offsets %zu/%zu w=%g: element %zu is 0x%llx, reference "
                     "0x%llx",
                     f->name, ops->name, n, dst_off, src_off, w, i, (unsigned long long)got,
                     (unsigned long long)exp);
    }
    char what[64];
    snprintf(what, sizeof what, "%s/%s n=%zu", f->name, ops->name, n);
    guarded_check_and_free(&dst, what);
    guarded_check_and_free(&src, what);
    free(want);
}

static void check_family(const struct family *f, uint64_t seed)
{
    const struct kernel_ops *impls[2];
    size_t nimpl = impls_under_test(impls);
    size_t nw = f->reads_dst ? ARRAY_LEN(weights) : 1;
    uint64_t rng = seed;

    for (size_t k = 0; k < nimpl; k++)
        for (size_t o = 0; o < ARRAY_LEN(offsets); o++)
            for (size_t wi = 0; wi < nw; wi++) {
                for (size_t n = 0; n <= 130; n++)
                    check_one(f, impls[k], n, offsets[o][0], offsets[o][1], weights[wi], &rng);
                /* The large length costs most under sanitizers: both lerp branches suffice. */
                if (wi < 3 && (o == 0 || o == 2))
                    check_one(f, impls[k], LARGE_N, offsets[o][0], offsets[o][1], weights[wi],
                              &rng);
            }
}

static void test_update_f32_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_update_f32, 1);
}

static void test_update_bf16_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_update_bf16, 2);
}

static void test_update_f16_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_update_f16, 3);
}

static void test_update_f64_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_update_f64, 4);
}

static void test_bf16_to_f32_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_bf16_to_f32, 5);
}

static void test_f16_to_f32_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_f16_to_f32, 6);
}

static void test_f32_to_bf16_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_f32_to_bf16, 7);
}

static void test_f32_to_f16_matches_reference_at_every_length_and_alignment(void **state)
{
    (void)state;
    check_family(&fam_f32_to_f16, 8);
}

/* ---- The update is PyTorch's lerp, bit for bit ------------------------------------------ */

/* ATen's lerp as the test writes it (Debian's torch 1.13, CPU): from the nearer end, one
 * rounding (a fused multiply-add); the far branch is end - (end - self) * (1 - w), fused. */
static float torch_lerp(float s, float x, float w)
{
    return fabsf(w) < 0.5f ? fmaf(w, x - s, s) : fmaf(-(1.0f - w), x - s, x);
}

static void expect_f32_bits(const char *what, size_t i, float got, float want)
{
    if (f32_bits(got) == f32_bits(want) || (isnan(got) && isnan(want)))
        return;
    fail_msg("%s: element %zu is %a (0x%08x), expected %a (0x%08x)", what, i, (double)got,
             f32_bits(got), (double)want, f32_bits(want));
}

static void test_update_f32_is_torch_lerp_on_every_pair_of_special_values(void **state)
{
    (void)state;
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    const size_t ns = ARRAY_LEN(special_f32);
    float shadow[ARRAY_LEN(special_f32) * ARRAY_LEN(special_f32)];
    float param[ARRAY_LEN(special_f32) * ARRAY_LEN(special_f32)];

    for (size_t wi = 0; wi < ARRAY_LEN(weights); wi++) {
        const float w = (float)weights[wi];
        for (size_t k = 0; k < nimpl; k++) {
            for (size_t i = 0; i < ns * ns; i++) {
                shadow[i] = f32_from(special_f32[i / ns]);
                param[i] = f32_from(special_f32[i % ns]);
            }
            impls[k]->update_f32(shadow, param, ns * ns, w);
            for (size_t i = 0; i < ns * ns; i++) {
                float want =
                    torch_lerp(f32_from(special_f32[i / ns]), f32_from(special_f32[i % ns]), w);
                char what[64];
                snprintf(what, sizeof what, "update_f32/%s w=%g", impls[k]->name, (double)w);
                expect_f32_bits(what, i, shadow[i], want);
            }
        }
    }
}

/*
 * With w = 1e-3 (the |w| < 0.5 branch) and w = 0.9 (the other), pairs whose product c * d is as
 * large as the base often round differently when the product is rounded before the add: those
 * pairs prove that the kernels fuse.
 */
static void test_update_f32_fuses_the_multiply_add_in_both_branches(void **state)
{
    (void)state;
    enum { N = 4096 };
    static float s0[N], x[N], s[N], want[N];
    const float ws[] = {1e-3f, 0.9f};
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    uint64_t rng = 42;

    for (size_t wi = 0; wi < ARRAY_LEN(ws); wi++) {
        const float w = ws[wi];
        const bool small = fabsf(w) < 0.5f;
        const float c = small ? w : -(1.0f - w);
        size_t discriminating = 0;
        for (size_t i = 0; i < N; i++) {
            float b = (float)((double)(rng_next(&rng) >> 11) * 0x1p-53 * 4.0 - 2.0);
            float e = (float)((double)(rng_next(&rng) >> 11) * 0x1p-53 * 4.0 - 2.0) / fabsf(c);
            s0[i] = small ? b : b - e;
            x[i] = small ? b + e : b;
            float d = x[i] - s0[i];
            float base = small ? s0[i] : x[i];
            float product = c * d; /* rounded: -ffp-contract=off keeps it apart */
            want[i] = fmaf(c, d, base);
            discriminating += base + product != want[i];
        }
        assert_true(discriminating > N / 10);
        for (size_t k = 0; k < nimpl; k++) {
            memcpy(s, s0, sizeof s);
            impls[k]->update_f32(s, x, N, w);
            char what[64];
            snprintf(what, sizeof what, "update_f32/%s w=%g", impls[k]->name, (double)w);
            for (size_t i = 0; i < N; i++)
                expect_f32_bits(what, i, s[i], want[i]);
        }
    }
}

static void test_update_f32_hits_the_ends_exactly(void **state)
{
    (void)state;
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);

    for (size_t k = 0; k < nimpl; k++) {
        float s[4] = {1.0f, -3.5f, 1e30f, 0x1p-140f};
        const float x[4] = {3.0f, 2.25f, -1e-30f, 7.0f};
        impls[k]->update_f32(s, x, 4, 1.0f); /* w = 1 (smoothing 0): the shadow copies */
        for (size_t i = 0; i < 4; i++)
            expect_f32_bits("w=1 copies the param", i, s[i], x[i]);

        float t[4] = {1.0f, -3.5f, 1e30f, 0x1p-140f};
        const float t0[4] = {1.0f, -3.5f, 1e30f, 0x1p-140f};
        impls[k]->update_f32(t, x, 4, 0.0f); /* w = 0 (smoothing 1): no change */
        for (size_t i = 0; i < 4; i++)
            expect_f32_bits("w=0 keeps the shadow", i, t[i], t0[i]);

        float u[2] = {0.0f, 1.0f};
        const float y[2] = {1.0f, 3.0f};
        impls[k]->update_f32(u, y, 2, 0.25f);
        expect_f32_bits("w=0.25", 0, u[0], 0.25f);
        expect_f32_bits("w=0.25", 1, u[1], 1.5f);
        impls[k]->update_f32(u, y, 2, 0.5f); /* the far branch: 3 + (-0.5) * 1.5 */
        expect_f32_bits("w=0.5", 0, u[0], 0.625f);
        expect_f32_bits("w=0.5", 1, u[1], 2.25f);

        /* At w = 1 the coefficient is -(1 - w) = -0, not w - 1 = +0: the sign of a zero
         * result is torch 1.13's (torch.tensor([1., -1., 0., -0.]).lerp_(
         * torch.tensor([-0., -0., -0., 0.]), 1.0) gives [0., -0., 0., 0.]). */
        float z[4] = {1.0f, -1.0f, 0.0f, -0.0f};
        const float zx[4] = {-0.0f, -0.0f, -0.0f, 0.0f};
        const float want[4] = {0.0f, -0.0f, 0.0f, 0.0f};
        impls[k]->update_f32(z, zx, 4, 1.0f);
        for (size_t i = 0; i < 4; i++)
            expect_f32_bits("w=1 zero signs as torch", i, z[i], want[i]);
    }
}

/* The weight the update kernels get: 1 - smoothing in double, rounded to float once for an f32
 * shadow, as torch's lerp_(param, 1 - smoothing) has it; the double itself for an f64 shadow.
 * For these smoothings rounding the smoothing to float first, or subtracting in float, gives
 * another weight. */
static void test_kernel_weight_is_one_minus_smoothing_in_double_rounded_once(void **state)
{
    static const double smoothings[] = {0.999, 0.9999, 0.99, 0.1, 1.0 / 3.0, 0.7};
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(smoothings); i++) {
        const double sm = smoothings[i];
        const float want = (float)(1.0 - sm);
        if (kernel_weight_f32(sm) != want)
            fail_msg("smoothing %a: weight %a, expected %a", sm, (double)kernel_weight_f32(sm),
                     (double)want);
        assert_true(kernel_weight_f64(sm) == 1.0 - sm);
    }
    assert_true(kernel_weight_f32(0.999) != 1.0f - (float)0.999);
    assert_true(kernel_weight_f32(0.999) == 0x1.0624dep-10f);
    assert_true(kernel_weight_f32(0.9999) != (float)(1.0f - 0.9999f));
    assert_true(kernel_weight_f32(0.0) == 1.0f);
    assert_true(kernel_weight_f32(1.0) == 0.0f);
    assert_true(kernel_weight_f64(1.0) == 0.0);
}

/* Torch computes 1 - smoothing in double and rounds it once: (float)(1 - 0.999) is 0x1.0624dep-10,
 * while 1.0f - (float)0.999 would be 0x1.0624p-10. */
static void test_update_weight_is_one_minus_smoothing_rounded_once(void **state)
{
    (void)state;
    enum { N = 257 };
    const double smoothing = 0.999;
    const float w = (float)(1.0 - smoothing);
    assert_true(w != 1.0f - (float)smoothing);

    const struct kernel_ops *ops = kernel_ops_best();
    uint64_t rng = 7;
    static float s[N], s_want[N], x[N];
    static uint16_t h[N];
    static double sd[N], sd_want[N], xd[N];
    fill_f32(s, N, &rng);
    fill_f32(x, N, &rng);
    fill_u16(h, N, &rng);
    fill_f64(sd, N, &rng);
    fill_f64(xd, N, &rng);

    memcpy(s_want, s, sizeof s);
    kernel_ref_update_f32(s_want, x, N, w);
    assert_int_equal(kernel_update(ops, DTYPE_F32, s, x, N, smoothing), 0);
    for (size_t i = 0; i < N; i++)
        expect_f32_bits("kernel_update f32", i, s[i], s_want[i]);

    kernel_ref_update_bf16(s_want, h, N, w);
    assert_int_equal(kernel_update(ops, DTYPE_BF16, s, h, N, smoothing), 0);
    for (size_t i = 0; i < N; i++)
        expect_f32_bits("kernel_update bf16", i, s[i], s_want[i]);

    kernel_ref_update_f16(s_want, h, N, w);
    assert_int_equal(kernel_update(ops, DTYPE_F16, s, h, N, smoothing), 0);
    for (size_t i = 0; i < N; i++)
        expect_f32_bits("kernel_update f16", i, s[i], s_want[i]);

    memcpy(sd_want, sd, sizeof sd);
    kernel_ref_update_f64(sd_want, xd, N, 1.0 - smoothing);
    assert_int_equal(kernel_update(ops, DTYPE_F64, sd, xd, N, smoothing), 0);
    for (size_t i = 0; i < N; i++) {
        uint64_t got, want;
        if (!same_f64(sd, sd_want, i, &got, &want))
            fail_msg("kernel_update f64: element %zu is 0x%llx, expected 0x%llx", i,
                     (unsigned long long)got, (unsigned long long)want);
    }
}

/* The pool cuts tensors anywhere: chunk by chunk must equal all at once. */
static void test_update_in_chunks_equals_update_in_one_call(void **state)
{
    (void)state;
    enum { N = 5000 };
    static const enum dtype dts[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F16,
                                            DTYPE_F64, DTYPE_I64,  DTYPE_BOOL};
    const struct kernel_ops *ops = kernel_ops_best();
    static unsigned char whole[N * 8], chunked[N * 8], param[N * 8];
    uint64_t rng = 99;

    for (size_t t = 0; t < ARRAY_LEN(dts); t++) {
        enum dtype dt = dts[t];
        size_t shadow_size = dtype_size(dtype_shadow(dt));
        if (shadow_size == 4)
            fill_f32(whole, N, &rng);
        else
            fill_f64(whole, N, &rng);
        memcpy(chunked, whole, sizeof whole);
        for (size_t i = 0; i < sizeof param; i++)
            param[i] = (unsigned char)rng_next(&rng);

        assert_int_equal(kernel_update(ops, dt, whole, param, N, 0.99), 0);
        for (size_t i = 0; i < N;) {
            size_t len = 1 + rng_next(&rng) % 77;
            if (len > N - i)
                len = N - i;
            assert_int_equal(kernel_update(ops, dt, chunked + i * shadow_size,
                                           param + i * dtype_size(dt), len, 0.99),
                             0);
            i += len;
        }
        assert_memory_equal(whole, chunked, N * shadow_size);
    }
}

/* ---- Conversions: exhaustive over the 16-bit patterns, and every tie --------------------- */

static uint16_t all_patterns[65536];

static void fill_all_patterns(void)
{
    for (uint32_t i = 0; i < 65536; i++)
        all_patterns[i] = (uint16_t)i;
}

/* Expected f16 -> f32 from the IEEE definition, computed here rather than by the library. */
static uint32_t expected_f16_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 31)
        return sign | 0x7f800000u | (m ? 0x00400000u | m << 13 : 0); /* NaNs come out quiet */
    float v = e == 0 ? (float)m * 0x1p-24f : (float)(m + 1024) * ldexpf(1.0f, (int)e - 25);
    return sign | f32_bits(v);
}

static void test_f16_to_f32_is_exact_for_all_65536_patterns(void **state)
{
    (void)state;
    static float out[65536];
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    fill_all_patterns();

    for (size_t k = 0; k < nimpl; k++) {
        memset(out, 0, sizeof out);
        impls[k]->f16_to_f32(out, all_patterns, 65536);
        for (uint32_t h = 0; h < 65536; h++)
            if (f32_bits(out[h]) != expected_f16_to_f32_bits((uint16_t)h))
                fail_msg("f16_to_f32/%s: 0x%04x gives 0x%08x, expected 0x%08x", impls[k]->name, h,
                         f32_bits(out[h]), expected_f16_to_f32_bits((uint16_t)h));
    }
    assert_true(out[0x3c00] == 1.0f);
    assert_true(out[0x0001] == 0x1p-24f);
    assert_true(out[0x7bff] == 65504.0f);
    assert_true(out[0xfc00] == -INFINITY);
    assert_true(f32_bits(out[0x8000]) == 0x80000000u);
#ifdef __FLT16_MAX__
    /* The compiler's own _Float16, as a third opinion on every non-NaN pattern. */
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 v;
        uint16_t bits = (uint16_t)h;
        memcpy(&v, &bits, sizeof v);
        if (!isnan(out[h]))
            assert_true(f32_bits((float)v) == f32_bits(out[h]));
    }
#endif
}

static void test_bf16_to_f32_is_a_16_bit_shift_for_all_65536_patterns(void **state)
{
    (void)state;
    static float out[65536];
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    fill_all_patterns();

    for (size_t k = 0; k < nimpl; k++) {
        impls[k]->bf16_to_f32(out, all_patterns, 65536);
        for (uint32_t h = 0; h < 65536; h++)
            if (f32_bits(out[h]) != h << 16)
                fail_msg("bf16_to_f32/%s: 0x%04x gives 0x%08x", impls[k]->name, h,
                         f32_bits(out[h]));
    }
}

/* f16 -> f32 -> f16 gives back every pattern; a signalling NaN comes back quiet. */
static void test_f32_to_f16_round_trips_all_65536_patterns(void **state)
{
    (void)state;
    static float wide[65536];
    static uint16_t back[65536];
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    fill_all_patterns();
    for (uint32_t h = 0; h < 65536; h++)
        wide[h] = f32_from(expected_f16_to_f32_bits((uint16_t)h));

    for (size_t k = 0; k < nimpl; k++) {
        impls[k]->f32_to_f16(back, wide, 65536);
        for (uint32_t h = 0; h < 65536; h++) {
            bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
            uint16_t want = (uint16_t)(nan ? h | 0x200 : h);
            if (back[h] != want)
                fail_msg("f32_to_f16/%s: 0x%04x comes back as 0x%04x, expected 0x%04x",
                         impls[k]->name, h, back[h], want);
        }
    }
}

/* bf16 -> f32 -> bf16 gives back every pattern except NaNs, which all become 0x7fc0. */
static void test_f32_to_bf16_round_trips_all_65536_patterns(void **state)
{
    (void)state;
    static float wide[65536];
    static uint16_t back[65536];
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    for (uint32_t h = 0; h < 65536; h++)
        wide[h] = f32_from(h << 16);

    for (size_t k = 0; k < nimpl; k++) {
        impls[k]->f32_to_bf16(back, wide, 65536);
        for (uint32_t h = 0; h < 65536; h++) {
            bool nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0;
            uint16_t want = (uint16_t)(nan ? 0x7fc0 : h);
            if (back[h] != want)
                fail_msg("f32_to_bf16/%s: 0x%04x comes back as 0x%04x, expected 0x%04x",
                         impls[k]->name, h, back[h], want);
        }
    }
}

/* A list of inputs with their expected outputs, run through every implementation. */
struct cases {
    float *in;
    uint16_t *want;
    uint16_t *got;
    size_t n;
    size_t cap;
};

static void cases_add(struct cases *c, float in, uint16_t want)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->in = realloc(c->in, c->cap * sizeof *c->in);
        c->want = realloc(c->want, c->cap * sizeof *c->want);
        c->got = realloc(c->got, c->cap * sizeof *c->got);
        assert_non_null(c->in);
        assert_non_null(c->want);
        assert_non_null(c->got);
    }
    c->in[c->n] = in;
    c->want[c->n] = want;
    c->n++;
}

/* Adds a case and its negation (the sign only flips the top bit). */
static void cases_add_both_signs(struct cases *c, float in, uint16_t want)
{
    cases_add(c, in, want);
    cases_add(c, -in, (uint16_t)(want ^ 0x8000));
}

static void cases_run(struct cases *c, bool f16)
{
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    for (size_t k = 0; k < nimpl; k++) {
        if (f16)
            impls[k]->f32_to_f16(c->got, c->in, c->n);
        else
            impls[k]->f32_to_bf16(c->got, c->in, c->n);
        for (size_t i = 0; i < c->n; i++)
            if (c->got[i] != c->want[i])
                fail_msg("%s/%s: %a (0x%08x) gives 0x%04x, expected 0x%04x",
                         f16 ? "f32_to_f16" : "f32_to_bf16", impls[k]->name, (double)c->in[i],
                         f32_bits(c->in[i]), c->got[i], c->want[i]);
    }
    free(c->in);
    free(c->want);
    free(c->got);
}

/*
 * Between every two adjacent positive finite f16 values lo and lo + 1, the midpoint (exact in
 * f32) goes to the even one, and one f32 ulp either side to the nearer one.
 */
static void test_f32_to_f16_rounds_every_tie_to_even(void **state)
{
    (void)state;
    struct cases c = {0};
    for (uint16_t lo = 0; lo < 0x7bff; lo++) {
        float a = f32_from(expected_f16_to_f32_bits(lo));
        float b = f32_from(expected_f16_to_f32_bits((uint16_t)(lo + 1)));
        float mid = (a + b) / 2; /* 12 significant bits at most: exact */
        uint16_t even = (lo & 1) ? (uint16_t)(lo + 1) : lo;
        cases_add_both_signs(&c, mid, even);
        cases_add_both_signs(&c, nextafterf(mid, 0.0f), lo);
        cases_add_both_signs(&c, nextafterf(mid, INFINITY), (uint16_t)(lo + 1));
    }
    /* The edges: overflow (65520 ties away from the odd 65504), underflow and NaNs. */
    cases_add_both_signs(&c, 65520.0f, 0x7c00);
    cases_add_both_signs(&c, nextafterf(65520.0f, 0.0f), 0x7bff);
    cases_add_both_signs(&c, 65536.0f, 0x7c00);
    cases_add_both_signs(&c, FLT_MAX, 0x7c00);
    cases_add_both_signs(&c, INFINITY, 0x7c00);
    cases_add_both_signs(&c, 0x1p-25f, 0x0000);
    cases_add_both_signs(&c, nextafterf(0x1p-25f, 1.0f), 0x0001);
    cases_add_both_signs(&c, 0x1p-26f, 0x0000);
    cases_add_both_signs(&c, FLT_TRUE_MIN, 0x0000);
    cases_add_both_signs(&c, 0.0f, 0x0000);
    cases_add(&c, f32_from(0x7fc00000), 0x7e00);
    cases_add(&c, f32_from(0x7f800001), 0x7e00); /* payload below f16's: still a NaN */
    cases_add(&c, f32_from(0xffffffff), 0xffff);
    cases_add(&c, f32_from(0x7fa02000), 0x7f01); /* signalling: quiet bit set, payload kept */
    cases_run(&c, true);
}

static void test_f32_to_bf16_rounds_every_tie_to_even(void **state)
{
    (void)state;
    struct cases c = {0};
    for (uint32_t lo = 0; lo < 0x7f7f; lo++) {
        uint32_t mid = lo << 16 | 0x8000;
        uint16_t even = (lo & 1) ? (uint16_t)(lo + 1) : (uint16_t)lo;
        cases_add_both_signs(&c, f32_from(mid), even);
        cases_add_both_signs(&c, f32_from(mid - 1), (uint16_t)lo);
        cases_add_both_signs(&c, f32_from(mid + 1), (uint16_t)(lo + 1));
    }
    /* 0x7f7f is odd: its upper tie and FLT_MAX round to inf, as torch's formula does. */
    cases_add_both_signs(&c, f32_from(0x7f7f8000), 0x7f80);
    cases_add_both_signs(&c, f32_from(0x7f7f7fff), 0x7f7f);
    cases_add_both_signs(&c, FLT_MAX, 0x7f80);
    cases_add_both_signs(&c, INFINITY, 0x7f80);
    cases_add_both_signs(&c, FLT_TRUE_MIN, 0x0000);
    /* NaNs: the carry must not turn them into inf or -0; torch writes 0x7fc0 for all. */
    cases_add(&c, f32_from(0x7f800001), 0x7fc0);
    cases_add(&c, f32_from(0x7fffffff), 0x7fc0);
    cases_add(&c, f32_from(0xffffffff), 0x7fc0);
    cases_add(&c, f32_from(0xff800001), 0x7fc0);
    cases_add(&c, f32_from(0xffc00000), 0x7fc0);
    cases_add(&c, f32_from(0x7fc00000), 0x7fc0);
    cases_run(&c, false);
}

/* Random bits follow c10::BFloat16's round_to_nearest_even: NaN -> 0x7fc0, else the carry. */
static void test_f32_to_bf16_is_torch_formula_on_random_bits(void **state)
{
    (void)state;
    enum { N = 1 << 16 };
    static float in[N];
    static uint16_t out[N];
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    uint64_t rng = 5;
    for (size_t i = 0; i < N; i++)
        in[i] = f32_from((uint32_t)rng_next(&rng));
    for (size_t k = 0; k < nimpl; k++) {
        impls[k]->f32_to_bf16(out, in, N);
        for (size_t i = 0; i < N; i++) {
            uint32_t u = f32_bits(in[i]);
            uint16_t want =
                isnan(in[i]) ? 0x7fc0 : (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            assert_int_equal(out[i], want);
        }
    }
}

/* ---- Dtypes, dispatch and copies -------------------------------------------------------- */

static void test_dtype_names_parse_and_round_trip(void **state)
{
    (void)state;
    static const char *names[] = {"f32", "f16", "bf16", "f64", "i64",
                                  "i32", "i16", "i8",   "u8",  "bool"};
    assert_int_equal(ARRAY_LEN(names), DTYPE_COUNT);
    for (unsigned i = 0; i < DTYPE_COUNT; i++) {
        enum dtype dt;
        assert_int_equal(dtype_from_name(names[i], strlen(names[i]), &dt), 0);
        assert_int_equal(dt, i);
        assert_string_equal(dtype_name(dt), names[i]);
    }
    enum dtype dt = DTYPE_BOOL;
    /* The length bounds the name: no NUL needed, and a prefix or an extension is no match. */
    assert_int_equal(dtype_from_name("f32garbage", 3, &dt), 0);
    assert_int_equal(dt, DTYPE_F32);
    assert_int_equal(dtype_from_name("f32garbage", 4, &dt), -EINVAL);
    assert_int_equal(dtype_from_name("bf16", 3, &dt), -EINVAL);
    assert_int_equal(dtype_from_name("", 0, &dt), -EINVAL);
    assert_int_equal(dtype_from_name("F32", 3, &dt), -EINVAL);
    assert_int_equal(dtype_from_name("float32", 7, &dt), -EINVAL);
    assert_int_equal(dtype_from_name(NULL, 0, &dt), -EINVAL);
    assert_int_equal(dt, DTYPE_F32); /* untouched on failure */
    assert_null(dtype_name(DTYPE_COUNT));
    assert_null(dtype_name((enum dtype)(-1)));
}

static void test_dtype_sizes_and_shadow_types(void **state)
{
    (void)state;
    static const size_t sizes[] = {4, 2, 2, 8, 8, 4, 2, 1, 1, 1};
    for (unsigned i = 0; i < DTYPE_COUNT; i++)
        assert_int_equal(dtype_size((enum dtype)i), sizes[i]);
    assert_int_equal(dtype_size(DTYPE_COUNT), 0);

    assert_int_equal(dtype_shadow(DTYPE_F32), DTYPE_F32);
    assert_int_equal(dtype_shadow(DTYPE_F16), DTYPE_F32);
    assert_int_equal(dtype_shadow(DTYPE_BF16), DTYPE_F32);
    assert_int_equal(dtype_shadow(DTYPE_F64), DTYPE_F64);
    assert_int_equal(dtype_shadow(DTYPE_I64), DTYPE_I64);
    assert_int_equal(dtype_shadow(DTYPE_BOOL), DTYPE_BOOL);
    assert_int_equal(dtype_shadow((enum dtype)42), DTYPE_COUNT);

    assert_true(dtype_is_float(DTYPE_F32));
    assert_true(dtype_is_float(DTYPE_F16));
    assert_true(dtype_is_float(DTYPE_BF16));
    assert_true(dtype_is_float(DTYPE_F64));
    assert_false(dtype_is_float(DTYPE_I32));
    assert_false(dtype_is_float(DTYPE_BOOL));
}

static void test_ops_best_is_avx2_when_the_cpu_has_it(void **state)
{
    (void)state;
    const struct kernel_ops *best = kernel_ops_best();
    assert_non_null(best);
    assert_non_null(best->name);
    if (kernel_ops_avx2() != NULL)
        assert_ptr_equal(best, kernel_ops_avx2());
    else
        assert_ptr_equal(best, kernel_ops_portable());
    print_message("kernel implementation: %s\n", best->name);
}

/* Integer and bool tensors are copied by update, shadow init and swap in alike. */
static void test_dispatch_copies_integer_tensors(void **state)
{
    (void)state;
    static const enum dtype dts[] = {DTYPE_I64, DTYPE_I32, DTYPE_I16,
                                            DTYPE_I8,  DTYPE_U8,  DTYPE_BOOL};
    const struct kernel_ops *ops = kernel_ops_best();
    uint64_t rng = 11;

    for (size_t t = 0; t < ARRAY_LEN(dts); t++) {
        size_t size = dtype_size(dts[t]);
        for (size_t n = 0; n <= 70; n += 7) {
            struct guarded dst = guarded_new(n, size, 1);
            unsigned char *src = malloc(n * size + 1);
            assert_non_null(src);
            for (size_t i = 0; i < n * size; i++)
                src[i] = (unsigned char)rng_next(&rng);

            assert_int_equal(kernel_update(ops, dts[t], dst.data, src, n, 0.5), 0);
            assert_memory_equal(dst.data, src, n * size);
            memset(dst.data, 0, n * size);
            assert_int_equal(kernel_shadow_init(ops, dts[t], dst.data, src, n), 0);
            assert_memory_equal(dst.data, src, n * size);
            memset(dst.data, 0, n * size);
            assert_int_equal(kernel_swap_in(ops, dts[t], dst.data, src, n), 0);
            assert_memory_equal(dst.data, src, n * size);

            guarded_check_and_free(&dst, dtype_name(dts[t]));
            free(src);
        }
    }
}

/* kernel_update_save writes what kernel_update writes, and leaves the shadow's values from
 * before in old: every table, every dtype, lengths around the vector width, both branches of
 * the weight, old values at misaligned addresses. */
static void test_update_save_matches_update_and_keeps_the_old_values(void **state)
{
    (void)state;
    static const enum dtype dts[] = {DTYPE_F32, DTYPE_BF16, DTYPE_F16, DTYPE_F64, DTYPE_I32,
                                     DTYPE_U8};
    static const double smoothings[] = {0.9, 0.3};
    const struct kernel_ops *impls[3];
    size_t nimpl = all_impls(impls);
    uint64_t rng = 23;

    for (size_t k = 0; k < nimpl; k++)
        for (size_t t = 0; t < ARRAY_LEN(dts); t++)
            for (size_t m = 0; m < ARRAY_LEN(smoothings); m++)
                for (size_t n = 0; n <= 37; n += (n < 20 ? 1 : 17)) {
                    size_t psz = dtype_size(dts[t]), ssz = dtype_size(dtype_shadow(dts[t]));
                    unsigned char *param = malloc(n * psz + 1), *want = malloc(n * ssz + 1);
                    struct guarded got = guarded_new(n, ssz, 0);
                    struct guarded old = guarded_new(n, ssz, 3);
                    assert_non_null(param);
                    assert_non_null(want);
                    for (size_t i = 0; i < n * psz; i++)
                        param[i] = (unsigned char)(rng_next(&rng) & 0x3f);
                    for (size_t i = 0; i < n * ssz; i++)
                        want[i] = got.data[i] = (unsigned char)(rng_next(&rng) & 0x3f);
                    unsigned char *before = malloc(n * ssz + 1);
                    assert_non_null(before);
                    memcpy(before, want, n * ssz);

                    assert_int_equal(kernel_update(impls[k], dts[t], want, param, n,
                                                   smoothings[m]), 0);
                    assert_int_equal(kernel_update_save(impls[k], dts[t], got.data, param, n,
                                                        smoothings[m], old.data), 0);
                    assert_memory_equal(got.data, want, n * ssz);
                    assert_memory_equal(old.data, before, n * ssz);
                    guarded_check_and_free(&got, impls[k]->name);
                    guarded_check_and_free(&old, impls[k]->name);
                    free(param);
                    free(want);
                    free(before);
                }
    /* No place for the old values is a caller's error. */
    float s1 = 1.0f, p1 = 2.0f;
    assert_int_equal(kernel_update_save(kernel_ops_best(), DTYPE_F32, &s1, &p1, 1, 0.5, NULL),
                     -EINVAL);
    assert_true(s1 == 1.0f);
}

/* Shadow init widens exactly, swap in narrows with RNE; f32 and f64 are plain copies. */
static void test_dispatch_casts_float_tensors(void **state)
{
    (void)state;
    enum { N = 333 };
    const struct kernel_ops *ops = kernel_ops_best();
    static float f[N], f_want[N];
    static uint16_t h[N], h_want[N];
    static double d[N], d_src[N];
    uint64_t rng = 13;

    fill_u16(h, N, &rng);
    assert_int_equal(kernel_shadow_init(ops, DTYPE_BF16, f, h, N), 0);
    kernel_ref_bf16_to_f32_n(f_want, h, N);
    assert_memory_equal(f, f_want, sizeof f);
    assert_int_equal(kernel_shadow_init(ops, DTYPE_F16, f, h, N), 0);
    kernel_ref_f16_to_f32_n(f_want, h, N);
    assert_memory_equal(f, f_want, sizeof f);

    fill_f32(f, N, &rng);
    assert_int_equal(kernel_swap_in(ops, DTYPE_BF16, h, f, N), 0);
    kernel_ref_f32_to_bf16_n(h_want, f, N);
    assert_memory_equal(h, h_want, sizeof h);
    assert_int_equal(kernel_swap_in(ops, DTYPE_F16, h, f, N), 0);
    kernel_ref_f32_to_f16_n(h_want, f, N);
    assert_memory_equal(h, h_want, sizeof h);

    assert_int_equal(kernel_swap_in(ops, DTYPE_F32, f_want, f, N), 0);
    assert_memory_equal(f_want, f, sizeof f);
    memset(f_want, 0, sizeof f_want);
    assert_int_equal(kernel_shadow_init(ops, DTYPE_F32, f_want, f, N), 0);
    assert_memory_equal(f_want, f, sizeof f);

    fill_f64(d_src, N, &rng);
    assert_int_equal(kernel_shadow_init(ops, DTYPE_F64, d, d_src, N), 0);
    assert_memory_equal(d, d_src, sizeof d);
    memset(d, 0, sizeof d);
    assert_int_equal(kernel_swap_in(ops, DTYPE_F64, d, d_src, N), 0);
    assert_memory_equal(d, d_src, sizeof d);
}

static void test_dispatch_rejects_bad_arguments(void **state)
{
    (void)state;
    const struct kernel_ops *ops = kernel_ops_best();
    float s[4] = {0};
    const float x[4] = {1, 2, 3, 4};

    assert_int_equal(kernel_update(ops, DTYPE_COUNT, s, x, 4, 0.5), -EINVAL);
    assert_int_equal(kernel_update(ops, (enum dtype)(-1), s, x, 4, 0.5), -EINVAL);
    assert_int_equal(kernel_update(NULL, DTYPE_F32, s, x, 4, 0.5), -EINVAL);
    assert_int_equal(kernel_update(ops, DTYPE_F32, NULL, x, 4, 0.5), -EINVAL);
    assert_int_equal(kernel_update(ops, DTYPE_F32, s, NULL, 4, 0.5), -EINVAL);
    assert_int_equal(kernel_update(ops, DTYPE_I64, s, x, SIZE_MAX / 4, 0.5), -EINVAL);
    assert_int_equal(kernel_shadow_init(ops, (enum dtype)77, s, x, 4), -EINVAL);
    assert_int_equal(kernel_shadow_init(ops, DTYPE_F16, NULL, x, 4), -EINVAL);
    assert_int_equal(kernel_swap_in(ops, (enum dtype)77, s, x, 4), -EINVAL);
    assert_int_equal(kernel_swap_in(ops, DTYPE_BF16, s, NULL, 4), -EINVAL);
    /* Nothing was written by a rejected call. */
    for (size_t i = 0; i < 4; i++)
        assert_true(s[i] == 0.0f);

    /* An empty chunk is fine, even without buffers. */
    for (unsigned i = 0; i < DTYPE_COUNT; i++) {
        assert_int_equal(kernel_update(ops, (enum dtype)i, NULL, NULL, 0, 0.5), 0);
        assert_int_equal(kernel_shadow_init(ops, (enum dtype)i, NULL, NULL, 0), 0);
        assert_int_equal(kernel_swap_in(ops, (enum dtype)i, NULL, NULL, 0), 0);
    }
}

static void test_copy_kernels_copy_exact_bytes_at_any_offset(void **state)
{
    (void)state;
    typedef void copy_fn(void *restrict, const void *restrict, size_t);
    copy_fn *const copies[] = {kernel_copy, kernel_stash_copy, kernel_stash_restore};
    uint64_t rng = 17;

    for (size_t c = 0; c < ARRAY_LEN(copies); c++)
        for (size_t off = 0; off < 4; off++)
            for (size_t n = 0; n <= 131; n = n < 130 ? n + 1 : LARGE_N) {
                struct guarded dst = guarded_new(n, 1, off);
                struct guarded src = guarded_new(n, 1, 3 - off);
                for (size_t i = 0; i < n; i++)
                    src.data[i] = (unsigned char)rng_next(&rng);
                copies[c](dst.data, src.data, n);
                assert_memory_equal(dst.data, src.data, n);
                guarded_check_and_free(&dst, "copy");
                guarded_check_and_free(&src, "copy source");
                if (n == LARGE_N)
                    break;
            }
    /* Past 1 MiB the stash copies stream (non-temporal stores, aligned after a
     * head): every head and tail length, guarded on both sides. */
    for (size_t c = 1; c < ARRAY_LEN(copies); c++)
        for (size_t off = 0; off < 16; off++) {
            size_t n = (1u << 20) + (off * 23) % 64; /* every head, sixteen tails */
            struct guarded dst = guarded_new(n, 1, off);
            struct guarded src = guarded_new(n, 1, 7);
            for (size_t i = 0; i < n; i++)
                src.data[i] = (unsigned char)rng_next(&rng);
            copies[c](dst.data, src.data, n);
            assert_memory_equal(dst.data, src.data, n);
            guarded_check_and_free(&dst, "streamed copy");
            guarded_check_and_free(&src, "streamed copy source");
        }
    /* Zero bytes with no buffers: defined here, unlike memcpy. */
    kernel_copy(NULL, NULL, 0);
    kernel_stash_copy(NULL, NULL, 0);
    kernel_stash_restore(NULL, NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_names_parse_and_round_trip),
        cmocka_unit_test(test_dtype_sizes_and_shadow_types),
        cmocka_unit_test(test_ops_best_is_avx2_when_the_cpu_has_it),
        cmocka_unit_test(test_update_f32_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_update_bf16_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_update_f16_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_update_f64_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_bf16_to_f32_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_f16_to_f32_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_f32_to_bf16_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_f32_to_f16_matches_reference_at_every_length_and_alignment),
        cmocka_unit_test(test_update_f32_is_torch_lerp_on_every_pair_of_special_values),
        cmocka_unit_test(test_update_f32_fuses_the_multiply_add_in_both_branches),
        cmocka_unit_test(test_update_f32_hits_the_ends_exactly),
        cmocka_unit_test(test_kernel_weight_is_one_minus_smoothing_in_double_rounded_once),
        cmocka_unit_test(test_update_weight_is_one_minus_smoothing_rounded_once),
        cmocka_unit_test(test_update_in_chunks_equals_update_in_one_call),
        cmocka_unit_test(test_f16_to_f32_is_exact_for_all_65536_patterns),
        cmocka_unit_test(test_bf16_to_f32_is_a_16_bit_shift_for_all_65536_patterns),
        cmocka_unit_test(test_f32_to_f16_round_trips_all_65536_patterns),
        cmocka_unit_test(test_f32_to_bf16_round_trips_all_65536_patterns),
        cmocka_unit_test(test_f32_to_f16_rounds_every_tie_to_even),
        cmocka_unit_test(test_f32_to_bf16_rounds_every_tie_to_even),
        cmocka_unit_test(test_f32_to_bf16_is_torch_formula_on_random_bits),
        cmocka_unit_test(test_dispatch_copies_integer_tensors),
        cmocka_unit_test(test_update_save_matches_update_and_keeps_the_old_values),
        cmocka_unit_test(test_dispatch_casts_float_tensors),
        cmocka_unit_test(test_dispatch_rejects_bad_arguments),
        cmocka_unit_test(test_copy_kernels_copy_exact_bytes_at_any_offset),
    };
    return cmocka_run_group_tests_name("kernel", tests, NULL, NULL);
}
