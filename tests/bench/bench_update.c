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
 *            the same size registered with health false, rounds interleaved.
 */
#include "bench.h"

#include <string.h>

/* One round of `reps` blocking updates; its Gelem/s. */
static double emad_round(struct bsess *b, uint64_t n, uint64_t reps)
{
    double t0 = now();
    for (uint64_t r = 0; r < reps; r++)
        bsess_update(b);
    return (double)n * (double)reps / (now() - t0) / 1e9;
}

/* Timed rounds of `reps` blocking updates; the best Gelem/s of rounds 1.. (round 0 warms up:
 * first touch of the stash-free shadow, the workers' first wake-up). */
static double emad_rate(struct bsess *b, uint64_t n, uint64_t reps, int rounds)
{
    double best = 0;
    for (int round = 0; round <= rounds; round++) {
        double t0 = now();
        for (uint64_t r = 0; r < reps; r++)
            bsess_update(b);
        double rate = (double)n * (double)reps / (now() - t0) / 1e9;
        if (round > 0 && rate > best)
            best = rate;
    }
    return best;
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
            double e = 0, p = 0;
            bsess_open(&b, o->socket, "bench-update", o->dtypes[d], 1, n);
            plain_init(&pl, n, o->dtypes[d], o->workers);
            /* Alternate emad's rounds and the baseline's, so that both see the same machine
             * (it may be shared); the best round of each after one warm-up round each. */
            for (int round = 0; round < 4; round++) {
                double er = emad_round(&b, n, reps), pr = plain_round(&pl, reps);
                if (round > 0 && er > e)
                    e = er;
                if (round > 0 && pr > p)
                    p = pr;
            }
            bsess_close(&b);
            plain_free(&pl);
            rec_begin("update");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_num("emad_gelem_s", e);
            rec_num("plain_gelem_s", p);
            rec_num("ratio", e / p);
            rec_end();
        }
    }
    return 0;
}

int cmd_health(const struct bopts *o)
{
    char buf[32];
    for (size_t d = 0; d < o->ndtypes; d++) {
        for (size_t k = 0; k < o->nsizes; k++) {
            uint64_t n = o->sizes[k], reps = reps_for(o, n);
            struct bsess on, off;
            double e_on = 0, e_off = 0;
            bsess_open_health(&on, o->socket, "bench-health-on", o->dtypes[d], 1, n, true);
            bsess_open_health(&off, o->socket, "bench-health-off", o->dtypes[d], 1, n, false);
            bsess_update(&on); /* start both EMAs: from here every batch_end is an update */
            bsess_update(&off);
            /* Interleaved rounds, the order swapped each time, so that both see the same
             * machine and neither always runs first; the best of each after a warm-up. */
            for (int round = 0; round < 9; round++) {
                double a, b;
                if (round % 2) {
                    b = emad_round(&off, n, reps);
                    a = emad_round(&on, n, reps);
                } else {
                    a = emad_round(&on, n, reps);
                    b = emad_round(&off, n, reps);
                }
                if (round > 0 && a > e_on)
                    e_on = a;
                if (round > 0 && b > e_off)
                    e_off = b;
            }
            bsess_close(&on);
            bsess_close(&off);
            rec_begin("health");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_num("on_gelem_s", e_on);
            rec_num("off_gelem_s", e_off);
            rec_num("cost", e_off / e_on - 1); /* extra time of an update with health */
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
    double t0 = now();
    bsess_open(&small, o->socket, "bench-small", "f32", count, elems);
    double reg_small = now() - t0;
    t0 = now();
    bsess_open(&big, o->socket, "bench-big", "f32", 1, total);
    double reg_big = now() - t0;
    /* Alternate the two, so that both see the same machine. */
    double best_small = 0, best_big = 0;
    for (int round = 0; round < 3; round++) {
        double s = emad_rate(&small, total, reps, 1), g = emad_rate(&big, total, reps, 1);
        if (s > best_small)
            best_small = s;
        if (g > best_big)
            best_big = g;
    }
    bsess_close(&small);
    bsess_close(&big);
    rec_begin("small_tensors");
    rec_int("tensors", count);
    rec_int("elems_each", elems);
    rec_int("elems", total);
    rec_int("workers", o->workers);
    rec_num("small_gelem_s", best_small);
    rec_num("big_gelem_s", best_big);
    rec_num("ratio", best_small / best_big);
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
            int rounds = bytes >= (256u << 20) ? 3 : 5;
            struct bsess b;
            double best_in = 1e30, best_out = 1e30;
            bsess_open(&b, o->socket, "bench-swap", o->dtypes[d], 1, n);
            bsess_update(&b); /* start the EMA: there is something to swap in */
            for (int r = 0; r <= rounds; r++) {
                double tin = bsess_event(&b, "eval_start");
                double tout = bsess_event(&b, "eval_end");
                if (r == 0) /* warm-up: the stash's first touch */
                    continue;
                if (tin < best_in)
                    best_in = tin;
                if (tout < best_out)
                    best_out = tout;
            }
            bsess_close(&b);
            double m_in = plain_memcpy(bytes, 2, o->workers, rounds);
            double m_out = plain_memcpy(bytes, 1, o->workers, rounds);
            rec_begin("swap");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_num("swap_in_s", best_in);
            rec_num("memcpy_in_s", m_in);
            rec_num("ratio_in", best_in / m_in);
            rec_num("swap_out_s", best_out);
            rec_num("memcpy_out_s", m_out);
            rec_num("ratio_out", best_out / m_out);
            rec_end();
        }
    }
    return 0;
}
