/*
 * bench_update.c - throughput through emad (request sent, reply received), each figure
 * against a plain-C baseline of the same bytes with the same threads, in the same run:
 *
 *   update   one session's update, per dtype and model size, against a plain C loop doing
 *            the same 3-stream arithmetic (bench_common.c) with --workers threads.
 *   small    --count tensors of --elems elements against one tensor of the same total size.
 *   swap     swap in (eval_start) and swap out (eval_end) against a threaded memcpy of the
 *            same bytes (in: params -> stash and shadow -> params, two copies; out: one).
 *   health   one session's update with the health signals (the default) against a session of
 *            the same size registered with health false, each registered first in one of
 *            two phases.
 *
 * Every comparison runs --reps interleaved repetitions after one warm-up of each side
 * (bench.h, "interleaved comparisons").
 */
#include "bench.h"

#include <math.h>
#include <string.h>

/* One round of `reps` blocking updates; its Gelem/s. */
static double emad_round(struct bsess *b, uint64_t n, uint64_t reps)
{
    double t0 = now();
    for (uint64_t r = 0; r < reps; r++)
        bsess_update(b);
    return (double)n * (double)reps / (now() - t0) / 1e9;
}

static uint64_t reps_for(const struct bopts *o, uint64_t n)
{
    uint64_t reps = o->budget / n;
    return reps < 2 ? 2 : reps;
}

int cmd_update(const struct bopts *o)
{
    char buf[32];
    for (size_t d = 0; d < o->ndtypes; d++) {
        for (size_t k = 0; k < o->nsizes; k++) {
            uint64_t n = o->sizes[k], reps = reps_for(o, n);
            struct bsess b;
            struct plain pl;
            struct ab s = {0};
            bsess_open(&b, o->socket, "bench-update", o->dtypes[d], 1, n);
            plain_init(&pl, n, o->dtypes[d], o->workers);
            bsess_update(&b); /* the start */
            bsess_fill(&b, 0x3e);
            emad_round(&b, n, reps); /* warm-up: first touch, the workers' first wake-up */
            plain_round(&pl, reps);
            for (unsigned r = 0; r < o->reps; r++) {
                double e, p;
                bsess_fill(&b, r & 1 ? 0x3d : 0x3e); /* the shadow never catches up */
                if (ab_a_first(r)) {
                    e = emad_round(&b, n, reps);
                    p = plain_round(&pl, reps);
                } else {
                    p = plain_round(&pl, reps);
                    e = emad_round(&b, n, reps);
                }
                ab_add(&s, e, p, e / p);
            }
            bsess_close(&b);
            plain_free(&pl);
            rec_begin("update");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_int("reps", s.n);
            rec_num("emad_gelem_s", ab_med_a(&s));
            rec_num("plain_gelem_s", ab_med_b(&s));
            rec_ab("ratio", &s);
            rec_end();
        }
    }
    return 0;
}

/*
 * One phase of `health`: the two sessions registered in the order given, then o->reps
 * interleaved rounds, each round's cost (off / on - 1) into *s.
 */
static void health_phase(const struct bopts *o, size_t d, uint64_t n, bool on_first,
                         struct ab *s)
{
    uint64_t per = reps_for(o, n);
    struct bsess on, off;

    if (on_first)
        bsess_open_health(&on, o->socket, "bench-health-on", o->dtypes[d], 1, n, true);
    bsess_open_health(&off, o->socket, "bench-health-off", o->dtypes[d], 1, n, false);
    if (!on_first)
        bsess_open_health(&on, o->socket, "bench-health-on", o->dtypes[d], 1, n, true);
    bsess_update(&on); /* start both EMAs: from here every batch_end is an update */
    bsess_update(&off);
    bsess_fill(&on, 0x3e);
    bsess_fill(&off, 0x3e);
    emad_round(&on, n, per); /* warm-up */
    emad_round(&off, n, per);
    for (unsigned r = 0; r < o->reps; r++) {
        double a, b;
        bsess_fill(&on, r & 1 ? 0x3d : 0x3e); /* the shadows never catch up */
        bsess_fill(&off, r & 1 ? 0x3d : 0x3e);
        if (ab_a_first(r)) {
            a = emad_round(&on, n, per);
            b = emad_round(&off, n, per);
        } else {
            b = emad_round(&off, n, per);
            a = emad_round(&on, n, per);
        }
        ab_add(s, a, b, b / a - 1);
    }
    bsess_close(&on);
    bsess_close(&off);
}

/* (1 + x)(1 + y) = (1 + z)^2: two costs measured with opposite biases, combined. */
static double geo_cost(double x, double y)
{
    return sqrt((1 + x) * (1 + y)) - 1;
}

/*
 * The update with the signals against without, measured twice: with the session with signals
 * registered first, then second. The session registered first ran 4-5 % slower here whichever
 * it was (measured with the signals on in both), so one order alone reports the cost 4-5 % too
 * high or too low. The record's cost combines the two orders' medians (and their confidence
 * bounds) as a geometric mean, which cancels a bias of the same size either way; each order's
 * own figures are there too.
 */
int cmd_health(const struct bopts *o)
{
    static struct ab s1, s2;
    char buf[32];

    for (size_t d = 0; d < o->ndtypes; d++) {
        for (size_t k = 0; k < o->nsizes; k++) {
            uint64_t n = o->sizes[k];
            double lo1, hi1, lo2, hi2;
            memset(&s1, 0, sizeof(s1));
            memset(&s2, 0, sizeof(s2));
            health_phase(o, d, n, true, &s1);
            health_phase(o, d, n, false, &s2);
            rec_begin("health");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_int("reps", s1.n + s2.n);
            rec_num("on_gelem_s", sqrt(ab_med_a(&s1) * ab_med_a(&s2)));
            rec_num("off_gelem_s", sqrt(ab_med_b(&s1) * ab_med_b(&s2)));
            double cost = geo_cost(ab_med_r(&s1), ab_med_r(&s2));
            rec_num("cost", cost);
            rec_num("cost_median", cost);
            ab_range(&s1, &lo1, &hi1);
            ab_range(&s2, &lo2, &hi2);
            rec_num("cost_min", geo_cost(lo1, lo2));
            rec_num("cost_max", geo_cost(hi1, hi2));
            if (s1.n >= 20 && s2.n >= 20) {
                median_ci(s1.r, s1.n, &lo1, &hi1);
                median_ci(s2.r, s2.n, &lo2, &hi2);
                rec_num("cost_ci_lo", geo_cost(lo1, lo2));
                rec_num("cost_ci_hi", geo_cost(hi1, hi2));
            }
            rec_ab("cost_on_first", &s1);
            rec_ab("cost_on_second", &s2);
            rec_end();
        }
    }
    return 0;
}

int cmd_small(const struct bopts *o)
{
    uint64_t count = o->count, elems = o->elems, total = count * elems;
    uint64_t reps = reps_for(o, total);
    struct bsess small, big;
    struct ab s = {0};
    double t0 = now();
    bsess_open(&small, o->socket, "bench-small", "f32", count, elems);
    double reg_small = now() - t0;
    t0 = now();
    bsess_open(&big, o->socket, "bench-big", "f32", 1, total);
    double reg_big = now() - t0;
    emad_round(&small, total, reps); /* warm-up */
    emad_round(&big, total, reps);
    for (unsigned r = 0; r < o->reps; r++) {
        double a, b;
        if (ab_a_first(r)) {
            a = emad_round(&small, total, reps);
            b = emad_round(&big, total, reps);
        } else {
            b = emad_round(&big, total, reps);
            a = emad_round(&small, total, reps);
        }
        ab_add(&s, a, b, a / b);
    }
    bsess_close(&small);
    bsess_close(&big);
    rec_begin("small_tensors");
    rec_int("tensors", count);
    rec_int("elems_each", elems);
    rec_int("elems", total);
    rec_int("workers", o->workers);
    rec_int("reps", s.n);
    rec_num("small_gelem_s", ab_med_a(&s));
    rec_num("big_gelem_s", ab_med_b(&s));
    rec_ab("ratio", &s);
    rec_num("register_small_s", reg_small);
    rec_num("register_big_s", reg_big);
    rec_end();
    return 0;
}

int cmd_swap(const struct bopts *o)
{
    char buf[32];
    for (size_t d = 0; d < o->ndtypes; d++) {
        for (size_t k = 0; k < o->nsizes; k++) {
            uint64_t n = o->sizes[k], bytes = n * bench_dtype_size(o->dtypes[d]);
            struct bsess b;
            struct mcpy m_in, m_out;
            struct ab s_in = {0}, s_out = {0};
            bsess_open(&b, o->socket, "bench-swap", o->dtypes[d], 1, n);
            bsess_update(&b); /* start the EMA: there is something to swap in */
            mcpy_init(&m_in, bytes, 2, o->workers);
            mcpy_init(&m_out, bytes, 1, o->workers);
            bsess_event(&b, "eval_start"); /* warm-up: the stash's first touch */
            bsess_event(&b, "eval_end");
            mcpy_round(&m_in);
            mcpy_round(&m_out);
            for (unsigned r = 0; r < o->reps; r++) {
                double tin, tout, min, mout;
                if (ab_a_first(r)) {
                    tin = bsess_event(&b, "eval_start");
                    tout = bsess_event(&b, "eval_end");
                    min = mcpy_round(&m_in);
                    mout = mcpy_round(&m_out);
                } else {
                    min = mcpy_round(&m_in);
                    mout = mcpy_round(&m_out);
                    tin = bsess_event(&b, "eval_start");
                    tout = bsess_event(&b, "eval_end");
                }
                ab_add(&s_in, tin, min, tin / min);
                ab_add(&s_out, tout, mout, tout / mout);
            }
            bsess_close(&b);
            mcpy_free(&m_in);
            mcpy_free(&m_out);
            rec_begin("swap");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_int("reps", s_in.n);
            rec_num("swap_in_s", ab_med_a(&s_in));
            rec_num("memcpy_in_s", ab_med_b(&s_in));
            rec_ab("ratio_in", &s_in);
            rec_num("swap_out_s", ab_med_a(&s_out));
            rec_num("memcpy_out_s", ab_med_b(&s_out));
            rec_ab("ratio_out", &s_out);
            rec_end();
        }
    }
    return 0;
}
