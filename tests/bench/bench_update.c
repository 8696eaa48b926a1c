/*
 * bench_update - one session's update throughput through emad, against a
 * plain C loop doing the same 3-stream arithmetic over the same bytes with
 * the same number of threads, measured in the same run.
 *
 * Usage: bench_update [--quick] [--emad PATH] [--json FILE]
 * Prints a table (Gelem/s and the ratio emad / plain loop); no assertions.
 */
#include "emaclient.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the baseline: a plain loop, split over threads ---- */

struct slice {
    float *s;
    const void *x;
    size_t n;
    int bf16;
    float w;
    int reps;
};

static void *plain_loop(void *arg)
{
    struct slice *sl = arg;
    for (int r = 0; r < sl->reps; r++) {
        if (sl->bf16) {
            const uint16_t *x = sl->x;
            for (size_t i = 0; i < sl->n; i++) {
                uint32_t u = (uint32_t)x[i] << 16;
                float xf;
                memcpy(&xf, &u, 4);
                sl->s[i] = sl->s[i] + sl->w * (xf - sl->s[i]);
            }
        } else {
            const float *x = sl->x;
            for (size_t i = 0; i < sl->n; i++)
                sl->s[i] = sl->s[i] + sl->w * (x[i] - sl->s[i]);
        }
    }
    return NULL;
}

static double bench_plain(size_t n, int bf16, unsigned threads, int reps)
{
    float *s = aligned_alloc(64, (n * 4 + 63) / 64 * 64);
    void *x = aligned_alloc(64, (n * (bf16 ? 2 : 4) + 63) / 64 * 64);
    pthread_t tid[64];
    struct slice sl[64];
    double best = 0;

    memset(s, 0, n * 4);
    memset(x, 0x3c, n * (bf16 ? 2 : 4));
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        for (unsigned t = 0; t < threads; t++) {
            size_t a = n * t / threads, b = n * (t + 1) / threads;
            sl[t] = (struct slice){s + a, (char *)x + a * (bf16 ? 2 : 4), b - a, bf16, 0.01f,
                                   reps};
            pthread_create(&tid[t], NULL, plain_loop, &sl[t]);
        }
        for (unsigned t = 0; t < threads; t++)
            pthread_join(tid[t], NULL);
        double rate = (double)n * reps / (now() - t0) / 1e9;
        if (rate > best)
            best = rate;
    }
    free(s);
    free(x);
    return best;
}

/* ---- through the daemon ---- */

static pid_t start_emad(const char *bin, const char *sock, unsigned workers)
{
    char w[16];
    snprintf(w, sizeof(w), "%u", workers);
    pid_t pid = fork();
    if (pid == 0) {
        execl(bin, bin, "--socket", sock, "--workers", w, "--log-level", "warn", "--state-dir",
              "/tmp", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        struct stat st;
        if (stat(sock, &st) == 0)
            return pid;
        usleep(10000);
    }
    fprintf(stderr, "bench: emad did not start\n");
    exit(1);
}

static double bench_emad(const char *sock, size_t n, const char *dtype, int reps)
{
    struct emac_error err;
    emac_client *c;
    emac_segment *seg;
    emac_session *s;
    struct emac_tensor_spec spec = {"w", dtype, n, NULL, 0};
    struct emac_config cfg = {"100ba", false, 0, NULL, NULL};
    struct emac_result res;
    double best = 0;

    if (emac_connect(sock, "bench", &c, &err) < 0 || emac_segment_create(&spec, 1, &seg, &err) < 0 ||
        emac_register(c, "bench", seg, &cfg, false, &s, &err) < 0) {
        fprintf(stderr, "bench: %s: %s\n", err.code, err.message);
        exit(1);
    }
    memset(emac_segment_tensor(seg, 0)->data, 0x3c, emac_segment_tensor(seg, 0)->bytes);
    uint64_t batch = 1;
    for (int round = 0; round < 3; round++) {
        double t0 = now();
        for (int r = 0; r < reps; r++) {
            struct emac_time t = {batch++, 0, false, 0};
            if (emac_event(s, "batch_end", &t, &res, &err) < 0) {
                fprintf(stderr, "bench: %s: %s\n", err.code, err.message);
                exit(1);
            }
        }
        double rate = (double)n * reps / (now() - t0) / 1e9;
        if (round > 0 && rate > best) /* round 0 warms up (first touch, start) */
            best = rate;
    }
    emac_close(s, false, &err);
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
    return best;
}

int main(int argc, char **argv)
{
    const char *emad = "build/emad";
    const char *json = NULL;
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--emad") == 0 && i + 1 < argc)
            emad = argv[++i];
        else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc)
            json = argv[++i];
        else {
            printf("Usage: bench_update [--quick] [--emad PATH] [--json FILE]\n"
                   "Update throughput of one session through emad against a plain C loop\n"
                   "(same arithmetic, same bytes, same threads), f32 and bf16 params.\n");
            return strcmp(argv[i], "--help") == 0 ? 0 : 2;
        }
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const size_t sizes_full[] = {1u << 20, 16u << 20, 64u << 20};
    const size_t sizes_quick[] = {1u << 20, 16u << 20};
    const size_t *sizes = quick ? sizes_quick : sizes_full;
    size_t nsizes = quick ? 2 : 3;
    const char *dtypes[] = {"f32", "bf16"};
    FILE *js = json ? fopen(json, "w") : NULL;
    char sock[64];

    snprintf(sock, sizeof(sock), "/tmp/emad-bench-%ld.sock", (long)getpid());
    signal(SIGPIPE, SIG_IGN);
    printf("update throughput, Gelem/s (best of 2 timed rounds), %ld CPUs\n", cpus);
    printf("%-5s %8s %7s %10s %10s %7s\n", "dtype", "elems", "workers", "emad", "plain", "ratio");
    if (js)
        fprintf(js, "[\n");
    /* Worker counts: powers of two up to the CPUs, and the CPUs themselves. */
    long counts[16];
    size_t ncounts = 0;
    for (long w = 1; w < cpus && ncounts < 15; w *= 2)
        counts[ncounts++] = w;
    counts[ncounts++] = cpus;
    int first = 1;
    for (size_t ci = 0; ci < ncounts; ci++) {
        long w = counts[ci];
        pid_t pid = start_emad(emad, sock, (unsigned)w);
        for (size_t d = 0; d < 2; d++) {
            for (size_t k = 0; k < nsizes; k++) {
                size_t n = sizes[k];
                int reps = (int)((quick ? 1u << 26 : 1u << 28) / n);
                if (reps < 2)
                    reps = 2;
                double e = bench_emad(sock, n, dtypes[d], reps);
                double p = bench_plain(n, d == 1, (unsigned)w, reps);
                printf("%-5s %7zuM %7ld %10.3f %10.3f %7.2f\n", dtypes[d], n >> 20, w, e, p,
                       e / p);
                if (js)
                    fprintf(js, "%s  {\"dtype\": \"%s\", \"elems\": %zu, \"workers\": %ld, "
                            "\"emad_gelem_s\": %.4f, \"plain_gelem_s\": %.4f, \"ratio\": %.4f}",
                            first ? "" : ",\n", dtypes[d], n, w, e, p, e / p);
                first = 0;
                fflush(stdout);
            }
        }
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    if (js) {
        fprintf(js, "\n]\n");
        fclose(js);
    }
    printf("goal: ratio >= 0.9 from 16M elements up\n");
    return 0;
}
