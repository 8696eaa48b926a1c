/*
 * bench.h - shared helpers of emabench, the benchmark programs of emad.
 *
 * emabench SUBCOMMAND [options] talks to an emad that tests/bench/run started (it never starts
 * one itself) and prints one JSON object per measurement on stdout, one per line; notes go to
 * stderr. Every record carries emad's figure and a baseline measured in the same process, in
 * the same run. No assertions: a subcommand fails (exit 1) only when it cannot measure.
 */
#ifndef EMAD_BENCH_H
#define EMAD_BENCH_H

#include "emaclient.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define BENCH_MAX_LIST 32

/* Options shared by every subcommand (each reads the ones it needs). */
struct bopts {
    const char *socket;                 /* emad's socket (required) */
    unsigned workers;                   /* emad's --workers: the baselines use as many threads */
    const char *dtypes[BENCH_MAX_LIST]; /* --dtypes f32,bf16 */
    size_t ndtypes;
    uint64_t sizes[BENCH_MAX_LIST];     /* --sizes 1M,16M (elements; K, M, G suffixes) */
    size_t nsizes;
    uint64_t counts[BENCH_MAX_LIST];    /* --counts 1,2,8,32 */
    size_t ncounts;
    double ks[BENCH_MAX_LIST];          /* --ks 0.5,1,2,3 */
    size_t nks;
    uint64_t budget;                    /* --budget: elements updated per timed round */
    double seconds;                     /* --seconds: length of a timed window */
    uint64_t iters;                     /* --iters: round trips per measurement */
    uint64_t count;                     /* --count: tensors */
    uint64_t elems;                     /* --elems: elements per tensor, or a model size */
    unsigned port;                      /* --port: emad's --metrics 127.0.0.1:PORT */
    unsigned reps;                      /* --reps: interleaved repetitions of A and B */
    const char *placements;             /* --placements same,cross,unpinned (rtt) */
};

/* Subcommands (bench_update.c, bench_latency.c, bench_scale.c). */
int cmd_update(const struct bopts *o);
int cmd_small(const struct bopts *o);
int cmd_swap(const struct bopts *o);
int cmd_health(const struct bopts *o);
int cmd_rtt(const struct bopts *o);
int cmd_fairness(const struct bopts *o);
int cmd_overlap(const struct bopts *o);
int cmd_sessions(const struct bopts *o);
int cmd_memory(const struct bopts *o);
int cmd_register(const struct bopts *o);
int cmd_hostile(const struct bopts *o);
int cmd_metrics(const struct bopts *o); /* bench_metrics.c */
int cmd_kprofiles(const struct bopts *o); /* bench_profiles.c: in process, no emad */
int cmd_khealth(const struct bopts *o);   /* bench_khealth.c: in process, no emad */
int cmd_kprof(const struct bopts *o);     /* bench_emad_profiles.c: K profiles through emad */
int cmd_snapwrite(const struct bopts *o); /* bench_emad_profiles.c: updates beside a snapshot */

static inline double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void sleep_s(double s);

/* Print "bench: CONTEXT: CODE: message" and exit 1. */
_Noreturn void die_emac(const char *context, const struct emac_error *err);
_Noreturn void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A trainer segment (emac_segment_create; dies on failure) that die(), die_emac() and a fatal
 * signal (after bench_segment_cleanup_install) unlink; bench_segment_destroy ends it. */
emac_segment *bench_segment_create(const struct emac_tensor_spec *specs, size_t n);
void bench_segment_destroy(emac_segment *seg);
void bench_segment_cleanup_install(void);

/* ---- JSON records: rec_begin("update"); rec_str(...); rec_num(...); rec_end(); ---- */
void rec_begin(const char *bench);
void rec_str(const char *key, const char *value);
void rec_num(const char *key, double value);
void rec_int(const char *key, uint64_t value);
void rec_end(void);

/* ---- statistics ---- */
/* q-quantile (0..1) of v[0..n) (sorts v in place). */
double quantile(double *v, size_t n, double q);

/* ---- interleaved comparisons ----
 * A against its baseline B: --reps repetitions, each measuring A and B once, the order
 * swapped every repetition (A B, B A, A B, ...) so that drift on a shared machine hits both
 * alike and neither always runs first. Each repetition gives the ratio of its own pair; the
 * record carries the median ratio and its spread as the min and max over the repetitions
 * (with 5-9 repetitions the quartiles are the second and second-to-last values: the
 * extremes say more), and the medians of A and B. From 20 repetitions up it also carries a 95 %
 * confidence interval of the median ratio: a figure whose spread is wide (memory bandwidth on
 * a shared virtual machine moves by +-30 % from one pass to the next) is still pinned down to
 * a fraction of a percent by a thousand repetitions of a short pass. */
#define BENCH_MAX_REPS 2001
struct ab {
    unsigned n;
    double a[BENCH_MAX_REPS], b[BENCH_MAX_REPS], r[BENCH_MAX_REPS];
};
/* Whether repetition `rep` measures A first (even repetitions) or B first. */
static inline int ab_a_first(unsigned rep)
{
    return rep % 2 == 0;
}
/* Add one repetition: A's and B's figures and the ratio the record reports for them (a / b,
 * or another function of the pair: health reports off / on - 1). */
void ab_add(struct ab *s, double a, double b, double ratio);
double ab_med_a(const struct ab *s);
double ab_med_b(const struct ab *s);
double ab_med_r(const struct ab *s);
/* The smallest and the largest ratio of the repetitions. */
void ab_range(const struct ab *s, double *lo, double *hi);
/* The distribution-free 95 % interval of the median of v[0..n) (n of 20 or more). */
void median_ci(const double *v, size_t n, double *lo, double *hi);
/* KEY: the median ratio; KEY_median, KEY_min, KEY_max: it and its spread; KEY_ci_lo,
 * KEY_ci_hi (20 repetitions or more): the 95 % confidence interval of the median. */
void rec_ab(const char *key, const struct ab *s);
/* Median of v[0..n) (the mean of the two middle values when n is even; v is not changed). */
double median(const double *v, size_t n);

/* Wait until emad (pid) has settled after what ran before: its open descriptors back to at
 * most `fds` (< 0: not checked; a previous benchmark's connections closed) and its threads
 * using under 5 % of a CPU over 50 ms, for at most `max_s` seconds. Returns the seconds
 * waited; a note goes to stderr when it gave up. */
double bench_settle(long pid, long fds, double max_s);
/* emad's open descriptors now (from /proc/PID/fd), or -1. */
long proc_fds(long pid);

/* ---- baselines ---- */
/* Plain C loop: shadow := shadow + w * (param - shadow) over n elements of `dtype` params
 * (f32 shadow, f64 for f64), split over `threads` threads (created for each round, each
 * doing reps passes over its slice); plain_round returns the round's Gelem/s. */
struct plain {
    uint64_t n;
    const char *dtype;
    unsigned threads;
    size_t ssize, xsize;
    void *s, *x;
};
void plain_init(struct plain *p, uint64_t n, const char *dtype, unsigned threads);
double plain_round(struct plain *p, uint64_t reps);
void plain_free(struct plain *p);
/* Threaded memcpy: `copies` copies of `bytes` bytes each (distinct buffers, made and first
 * touched by mcpy_init), split over `threads`; mcpy_round returns one round's seconds. */
struct mcpy {
    uint64_t bytes;
    unsigned copies, threads;
    char *dst[8], *src[8];
};
void mcpy_init(struct mcpy *m, uint64_t bytes, unsigned copies, unsigned threads);
double mcpy_round(struct mcpy *m);
void mcpy_free(struct mcpy *m);

/* ---- sessions ---- */
struct bsess {
    emac_client *c;
    emac_segment *seg;
    emac_session *s;
    uint64_t batch; /* the clock of the next event */
};
/* Connect, create a segment of n tensors (`numel` each, dtype), fill it with 0x3c bytes,
 * register `name` with half_life 100ba (ema_start: 0). */
void bsess_open(struct bsess *b, const char *socket, const char *name, const char *dtype,
                uint64_t ntensors, uint64_t numel);
void bsess_open_specs(struct bsess *b, const char *socket, const char *name,
                      const struct emac_tensor_spec *specs, size_t n);
/* The same with register's health option (bench health: on against off). */
void bsess_open_health(struct bsess *b, const char *socket, const char *name, const char *dtype,
                       uint64_t ntensors, uint64_t numel, bool health);
void bsess_open_specs_health(struct bsess *b, const char *socket, const char *name,
                             const struct emac_tensor_spec *specs, size_t n, bool health);
void bsess_close(struct bsess *b);
/* Fill every tensor of the session with `byte` bytes: after the EMA has started from the 0x3c
 * fill, params that differ from the shadow make every update move it, as in training (an
 * update whose shadow already equals its params changes nothing, which is not what a
 * benchmark of updates should time). A shadow reaches constant params within a few thousand
 * updates, so the benchmarks change the fill before each round. */
void bsess_fill(struct bsess *b, int byte);
/* One blocking batch_end (the update); returns its seconds. */
double bsess_update(struct bsess *b);
/* Send / wait halves. */
emac_ticket bsess_send(struct bsess *b, const char *event);
void bsess_wait(struct bsess *b, emac_ticket t);
/* A blocking event, any kind; returns its seconds. */
double bsess_event(struct bsess *b, const char *event);

size_t bench_dtype_size(const char *dtype);
/* "16M" for 16 << 20, "100K", else the number. */
const char *fmt_elems(uint64_t n, char *buf, size_t len);

/* Resident memory of a process from /proc/PID/smaps: total Rss, and the part mapped from
 * shared-memory objects whose name contains `shm_name` (NULL: none). Bytes. */
void proc_rss(long pid, const char *shm_name, uint64_t *total, uint64_t *of_shm);

#endif
