/*
 * bench_common.c - what every emabench subcommand shares: JSON records, quantiles, the plain-C
 * baselines (update loop, memcpy) and session helpers.
 */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/*
 * The trainer segments this process made and has not destroyed, by name: a benchmark that dies
 * (die, die_emac) or is interrupted (SIGINT, SIGTERM, SIGHUP) unlinks them, so that no
 * /dev/shm/emad-* object outlives it. The process's only mutable state besides the record
 * writer's; unlink is async-signal-safe, so the handler may walk it.
 */
#define BENCH_MAX_SEGMENTS 64
static char live_segments[BENCH_MAX_SEGMENTS][64];

static void unlink_live_segments(void)
{
    for (size_t i = 0; i < BENCH_MAX_SEGMENTS; i++)
        if (live_segments[i][0] != '\0')
            shm_unlink(live_segments[i]);
}

static void on_fatal_signal(int sig)
{
    unlink_live_segments();
    signal(sig, SIG_DFL);
    raise(sig);
}

void bench_segment_cleanup_install(void)
{
    signal(SIGINT, on_fatal_signal);
    signal(SIGTERM, on_fatal_signal);
    signal(SIGHUP, on_fatal_signal);
}

emac_segment *bench_segment_create(const struct emac_tensor_spec *specs, size_t n)
{
    struct emac_error err;
    emac_segment *seg;

    if (emac_segment_create(specs, n, &seg, &err) < 0)
        die_emac("segment_create", &err);
    for (size_t i = 0; i < BENCH_MAX_SEGMENTS; i++) {
        if (live_segments[i][0] == '\0') {
            snprintf(live_segments[i], sizeof(live_segments[i]), "%s", emac_segment_name(seg));
            return seg;
        }
    }
    emac_segment_destroy(seg);
    die("more than %d segments at once", BENCH_MAX_SEGMENTS);
}

void bench_segment_destroy(emac_segment *seg)
{
    if (seg == NULL)
        return;
    for (size_t i = 0; i < BENCH_MAX_SEGMENTS; i++)
        if (strcmp(live_segments[i], emac_segment_name(seg)) == 0)
            live_segments[i][0] = '\0';
    emac_segment_destroy(seg);
}

_Noreturn void die_emac(const char *context, const struct emac_error *err)
{
    fprintf(stderr, "bench: %s: %s: %s\n", context, err->code, err->message);
    unlink_live_segments();
    exit(1);
}

_Noreturn void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    unlink_live_segments();
    exit(1);
}

/* ---- JSON records ---- */

static int rec_first;

void rec_begin(const char *bench)
{
    printf("{\"bench\": \"%s\"", bench);
    rec_first = 0;
}

void rec_str(const char *key, const char *value)
{
    printf(", \"%s\": \"%s\"", key, value);
}

void rec_num(const char *key, double value)
{
    printf(", \"%s\": %.6g", key, value);
}

void rec_int(const char *key, uint64_t value)
{
    printf(", \"%s\": %llu", key, (unsigned long long)value);
}

void rec_end(void)
{
    printf("}\n");
    fflush(stdout);
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double quantile(double *v, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

/* v[0..n) sorted into tmp, n capped at BENCH_MAX_REPS; returns n. */
static size_t sorted_copy(const double *v, size_t n, double *tmp)
{
    if (n > BENCH_MAX_REPS)
        n = BENCH_MAX_REPS;
    memcpy(tmp, v, n * sizeof(*v));
    qsort(tmp, n, sizeof(*tmp), cmp_double);
    return n;
}

double median(const double *v, size_t n)
{
    double tmp[BENCH_MAX_REPS];
    if (n == 0)
        return 0;
    n = sorted_copy(v, n, tmp);
    return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

/*
 * The distribution-free 95 % interval of a median: the j-th and k-th smallest of n values,
 * with j and k at n/2 -+ 1.96 sqrt(n)/2 (the normal approximation of the binomial count of
 * values below the true median; good from about 20 values).
 */
void median_ci(const double *v, size_t n, double *lo, double *hi)
{
    double tmp[BENCH_MAX_REPS];
    n = sorted_copy(v, n, tmp);
    double half = 0.98 * sqrt((double)n);
    long j = (long)floor((double)n / 2 - half), k = (long)ceil((double)n / 2 + half);
    if (j < 0)
        j = 0;
    if (k > (long)n - 1)
        k = (long)n - 1;
    *lo = tmp[j];
    *hi = tmp[k];
}

/* ---- interleaved comparisons ---- */

void ab_add(struct ab *s, double a, double b, double ratio)
{
    if (s->n >= BENCH_MAX_REPS)
        return;
    s->a[s->n] = a;
    s->b[s->n] = b;
    s->r[s->n] = ratio;
    s->n++;
}

double ab_med_a(const struct ab *s)
{
    return median(s->a, s->n);
}

double ab_med_b(const struct ab *s)
{
    return median(s->b, s->n);
}

double ab_med_r(const struct ab *s)
{
    return median(s->r, s->n);
}

void ab_range(const struct ab *s, double *lo, double *hi)
{
    *lo = *hi = s->n ? s->r[0] : 0;
    for (unsigned i = 1; i < s->n; i++) {
        if (s->r[i] < *lo)
            *lo = s->r[i];
        if (s->r[i] > *hi)
            *hi = s->r[i];
    }
}

void rec_ab(const char *key, const struct ab *s)
{
    char k[64];
    double lo, hi;

    ab_range(s, &lo, &hi);
    rec_num(key, ab_med_r(s));
    snprintf(k, sizeof(k), "%s_median", key);
    rec_num(k, ab_med_r(s));
    snprintf(k, sizeof(k), "%s_min", key);
    rec_num(k, lo);
    snprintf(k, sizeof(k), "%s_max", key);
    rec_num(k, hi);
    if (s->n >= 20) {
        median_ci(s->r, s->n, &lo, &hi);
        snprintf(k, sizeof(k), "%s_ci_lo", key);
        rec_num(k, lo);
        snprintf(k, sizeof(k), "%s_ci_hi", key);
        rec_num(k, hi);
    }
}

/* ---- settling ---- */

long proc_fds(long pid)
{
    char path[64];
    long n = 0;
    struct dirent *e;
    snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* CPU seconds of every thread of pid: the first field of each /proc/PID/task/TID/schedstat
 * (nanoseconds on a CPU; /proc/PID/stat's ticks are too coarse for 50 ms windows). */
static double proc_cpu_s(long pid)
{
    char path[64], file[128];
    unsigned long long ns, total = 0;
    struct dirent *e;
    snprintf(path, sizeof(path), "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(file, sizeof(file), "%s/%.32s/schedstat", path, e->d_name);
        FILE *f = fopen(file, "r");
        if (f == NULL)
            continue; /* the thread ended meanwhile */
        if (fscanf(f, "%llu", &ns) == 1)
            total += ns;
        fclose(f);
    }
    closedir(d);
    return (double)total / 1e9;
}

double bench_settle(long pid, long fds, double max_s)
{
    double t0 = now();
    int quiet = 0;
    /* Two windows of 50 ms in a row with emad's threads on a CPU under 5 % of the time and
     * its descriptors back: what the previous benchmark left (closing connections, sessions
     * being torn down, a worker finishing a job) is done. */
    while (now() - t0 < max_s) {
        double c0 = proc_cpu_s(pid), w0 = now();
        sleep_s(0.05);
        double c1 = proc_cpu_s(pid), w1 = now();
        long nfd = fds >= 0 ? proc_fds(pid) : -1;
        if (c0 < 0 || c1 < 0)
            return now() - t0; /* not a process we can watch: nothing to wait for */
        quiet = c1 - c0 <= 0.05 * (w1 - w0) && nfd <= fds ? quiet + 1 : 0;
        if (quiet >= 2)
            return now() - t0;
    }
    fprintf(stderr, "bench: emad (pid %ld) still busy or holding %ld descriptors (want <= %ld) "
                    "after %.1f s; measuring anyway\n",
            pid, proc_fds(pid), fds, max_s);
    return now() - t0;
}

/* ---- the plain update loop ----
 * The same 3-stream arithmetic as emad's kernels (read shadow, read params, write shadow),
 * written plainly and compiled twice: for the baseline x86-64 and for AVX2 (+F16C for f16),
 * picked at run time like emad picks its kernels, so that the baseline is as fast as the
 * compiler can make it on this CPU. */

#define PLAIN_BODIES(SUFFIX, ATTR)                                                             \
    ATTR static void loop_f32_##SUFFIX(float *restrict s, const float *restrict x, size_t n,   \
                                       float w)                                                \
    {                                                                                          \
        for (size_t i = 0; i < n; i++)                                                         \
            s[i] = s[i] + w * (x[i] - s[i]);                                                   \
    }                                                                                          \
    ATTR static void loop_f64_##SUFFIX(double *restrict s, const double *restrict x, size_t n, \
                                       double w)                                               \
    {                                                                                          \
        for (size_t i = 0; i < n; i++)                                                         \
            s[i] = s[i] + w * (x[i] - s[i]);                                                   \
    }                                                                                          \
    ATTR static void loop_bf16_##SUFFIX(float *restrict s, const uint16_t *restrict x,         \
                                        size_t n, float w)                                     \
    {                                                                                          \
        for (size_t i = 0; i < n; i++) {                                                       \
            uint32_t u = (uint32_t)x[i] << 16;                                                 \
            float xf;                                                                          \
            memcpy(&xf, &u, 4);                                                                \
            s[i] = s[i] + w * (xf - s[i]);                                                     \
        }                                                                                      \
    }

PLAIN_BODIES(generic, )
PLAIN_BODIES(avx2, __attribute__((target("avx2,fma"))))

static void loop_f16_generic(float *restrict s, const uint16_t *restrict x, size_t n, float w)
{
    for (size_t i = 0; i < n; i++) {
        _Float16 h;
        memcpy(&h, &x[i], 2);
        float xf = (float)h;
        s[i] = s[i] + w * (xf - s[i]);
    }
}

__attribute__((target("avx2,f16c"))) static void loop_f16_avx2(float *restrict s,
                                                                const uint16_t *restrict x,
                                                                size_t n, float w)
{
    size_t i = 0;
    __m256 vw = _mm256_set1_ps(w);
    for (; i + 8 <= n; i += 8) {
        __m256 xf = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i)));
        __m256 sv = _mm256_loadu_ps(s + i);
        _mm256_storeu_ps(s + i, _mm256_add_ps(sv, _mm256_mul_ps(vw, _mm256_sub_ps(xf, sv))));
    }
    loop_f16_generic(s + i, x + i, n - i, w);
}

struct slice {
    void *s;
    const void *x;
    size_t n;
    const char *dtype;
    uint64_t reps;
    int avx2;
};

static void *plain_thread(void *arg)
{
    struct slice *sl = arg;
    for (uint64_t r = 0; r < sl->reps; r++) {
        if (strcmp(sl->dtype, "f64") == 0)
            (sl->avx2 ? loop_f64_avx2 : loop_f64_generic)(sl->s, sl->x, sl->n, 0.01);
        else if (strcmp(sl->dtype, "bf16") == 0)
            (sl->avx2 ? loop_bf16_avx2 : loop_bf16_generic)(sl->s, sl->x, sl->n, 0.01f);
        else if (strcmp(sl->dtype, "f16") == 0)
            (sl->avx2 ? loop_f16_avx2 : loop_f16_generic)(sl->s, sl->x, sl->n, 0.01f);
        else
            (sl->avx2 ? loop_f32_avx2 : loop_f32_generic)(sl->s, sl->x, sl->n, 0.01f);
    }
    return NULL;
}

size_t bench_dtype_size(const char *dtype)
{
    if (strcmp(dtype, "f64") == 0 || strcmp(dtype, "i64") == 0)
        return 8;
    if (strcmp(dtype, "bf16") == 0 || strcmp(dtype, "f16") == 0 || strcmp(dtype, "i16") == 0)
        return 2;
    if (strcmp(dtype, "i8") == 0 || strcmp(dtype, "u8") == 0 || strcmp(dtype, "bool") == 0)
        return 1;
    return 4;
}

static void *xalloc(size_t bytes)
{
    void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p == NULL)
        die("out of memory (%zu bytes)", bytes);
    return p;
}

void plain_init(struct plain *p, uint64_t n, const char *dtype, unsigned threads)
{
    p->n = n;
    p->dtype = dtype;
    p->threads = threads > 64 ? 64 : threads;
    p->ssize = strcmp(dtype, "f64") == 0 ? 8 : 4;
    p->xsize = bench_dtype_size(dtype);
    p->s = xalloc(n * p->ssize);
    p->x = xalloc(n * p->xsize);
    memset(p->s, 0, n * p->ssize);
    memset(p->x, 0x3c, n * p->xsize);
}

double plain_round(struct plain *p, uint64_t reps)
{
    pthread_t tid[64];
    struct slice sl[64];
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    double t0 = now();
    for (unsigned t = 0; t < p->threads; t++) {
        size_t a = p->n * t / p->threads, b = p->n * (t + 1) / p->threads;
        sl[t] = (struct slice){(char *)p->s + a * p->ssize, (char *)p->x + a * p->xsize, b - a,
                               p->dtype, reps, avx2};
        pthread_create(&tid[t], NULL, plain_thread, &sl[t]);
    }
    for (unsigned t = 0; t < p->threads; t++)
        pthread_join(tid[t], NULL);
    return (double)p->n * (double)reps / (now() - t0) / 1e9;
}

void plain_free(struct plain *p)
{
    free(p->s);
    free(p->x);
}

/* ---- the plain memcpy ---- */

struct copy_slice {
    char **dst, **src;
    unsigned copies;
    size_t a, b;
};

static void *copy_thread(void *arg)
{
    struct copy_slice *c = arg;
    for (unsigned k = 0; k < c->copies; k++)
        memcpy(c->dst[k] + c->a, c->src[k] + c->a, c->b - c->a);
    return NULL;
}

void mcpy_init(struct mcpy *m, uint64_t bytes, unsigned copies, unsigned threads)
{
    memset(m, 0, sizeof(*m));
    m->bytes = bytes;
    m->copies = copies > 8 ? 8 : copies;
    m->threads = threads > 64 ? 64 : threads;
    for (unsigned k = 0; k < m->copies; k++) {
        m->dst[k] = xalloc(bytes);
        m->src[k] = xalloc(bytes);
        memset(m->src[k], 0x3c, bytes);
        memset(m->dst[k], 0, bytes);
    }
}

double mcpy_round(struct mcpy *m)
{
    pthread_t tid[64];
    struct copy_slice cs[64];
    double t0 = now();
    for (unsigned t = 0; t < m->threads; t++) {
        /* 64-byte aligned slices, as a worker pool would cut them */
        size_t a = m->bytes * t / m->threads / 64 * 64;
        size_t b = m->bytes * (t + 1) / m->threads / 64 * 64;
        if (t + 1 == m->threads)
            b = m->bytes;
        cs[t] = (struct copy_slice){m->dst, m->src, m->copies, a, b};
        pthread_create(&tid[t], NULL, copy_thread, &cs[t]);
    }
    for (unsigned t = 0; t < m->threads; t++)
        pthread_join(tid[t], NULL);
    return now() - t0;
}

void mcpy_free(struct mcpy *m)
{
    for (unsigned k = 0; k < m->copies; k++) {
        free(m->dst[k]);
        free(m->src[k]);
    }
    memset(m, 0, sizeof(*m));
}

/* ---- sessions ---- */

void bsess_open_specs(struct bsess *b, const char *socket, const char *name,
                      const struct emac_tensor_spec *specs, size_t n)
{
    bsess_open_specs_health(b, socket, name, specs, n, true);
}

void bsess_open_specs_health(struct bsess *b, const char *socket, const char *name,
                             const struct emac_tensor_spec *specs, size_t n, bool health)
{
    struct emac_error err;
    struct emac_config cfg = {.half_life = "100ba"};
    struct emac_health_config hcfg = {NULL, true, health};

    memset(b, 0, sizeof(*b));
    b->batch = 1;
    if (emac_connect(socket, "emabench", &b->c, &err) < 0)
        die_emac("connect", &err);
    b->seg = bench_segment_create(specs, n);
    for (size_t i = 0; i < n; i++) {
        const struct emac_tensor *t = emac_segment_tensor(b->seg, i);
        memset(t->data, 0x3c, t->bytes);
    }
    if (emac_register_health(b->c, name, b->seg, &cfg, &hcfg, false, &b->s, &err) < 0)
        die_emac("register", &err);
}

void bsess_open(struct bsess *b, const char *socket, const char *name, const char *dtype,
                uint64_t ntensors, uint64_t numel)
{
    bsess_open_health(b, socket, name, dtype, ntensors, numel, true);
}

void bsess_open_health(struct bsess *b, const char *socket, const char *name, const char *dtype,
                       uint64_t ntensors, uint64_t numel, bool health)
{
    struct emac_tensor_spec *specs = calloc(ntensors, sizeof(*specs));
    char *names = malloc(ntensors * 24);
    if (specs == NULL || names == NULL)
        die("out of memory");
    for (uint64_t i = 0; i < ntensors; i++) {
        snprintf(names + i * 24, 24, "t%llu", (unsigned long long)i);
        specs[i] = (struct emac_tensor_spec){names + i * 24, dtype, numel, NULL, 0};
    }
    bsess_open_specs_health(b, socket, name, specs, ntensors, health);
    free(specs);
    free(names);
}

void bsess_fill(struct bsess *b, int byte)
{
    for (size_t i = 0; i < emac_segment_ntensors(b->seg); i++) {
        const struct emac_tensor *t = emac_segment_tensor(b->seg, i);
        memset(t->data, byte, t->bytes);
    }
}

void bsess_close(struct bsess *b)
{
    struct emac_error err;
    if (emac_close(b->s, false, &err) < 0)
        die_emac("close", &err);
    emac_session_free(b->s);
    bench_segment_destroy(b->seg);
    emac_disconnect(b->c);
    memset(b, 0, sizeof(*b));
}

emac_ticket bsess_send(struct bsess *b, const char *event)
{
    struct emac_error err;
    struct emac_time t = {b->batch, 0, false, 0};
    emac_ticket k;
    if (strcmp(event, "batch_end") == 0)
        b->batch++;
    if (emac_event_send(b->s, event, &t, &k, &err) < 0)
        die_emac(event, &err);
    return k;
}

void bsess_wait(struct bsess *b, emac_ticket t)
{
    struct emac_error err;
    struct emac_result r;
    if (emac_event_wait(b->s, t, &r, &err) < 0)
        die_emac("wait", &err);
}

double bsess_event(struct bsess *b, const char *event)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {b->batch, 0, false, 0};
    if (strcmp(event, "batch_end") == 0)
        b->batch++;
    double t0 = now();
    if (emac_event(b->s, event, &t, &r, &err) < 0)
        die_emac(event, &err);
    return now() - t0;
}

double bsess_update(struct bsess *b)
{
    return bsess_event(b, "batch_end");
}

const char *fmt_elems(uint64_t n, char *buf, size_t len)
{
    if (n >= (1u << 20) && n % (1u << 20) == 0)
        snprintf(buf, len, "%lluM", (unsigned long long)(n >> 20));
    else if (n >= 1024 && n % 1024 == 0)
        snprintf(buf, len, "%lluK", (unsigned long long)(n >> 10));
    else
        snprintf(buf, len, "%llu", (unsigned long long)n);
    return buf;
}

void proc_rss(long pid, const char *shm_name, uint64_t *total, uint64_t *of_shm)
{
    char path[64], line[512];
    int in_shm = 0;
    uint64_t tot = 0, shm = 0;

    snprintf(path, sizeof(path), "/proc/%ld/smaps", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        die("%s: %s", path, strerror(errno));
    while (fgets(line, sizeof(line), f)) {
        unsigned long long kb;
        /* A mapping's header line: "start-end perms offset dev inode   path" */
        if (strchr(line, '-') && strchr(line, '-') < strchr(line, ' ') &&
            line[0] != ' ' && strncmp(line, "Rss", 3) != 0) {
            in_shm = shm_name && strstr(line, "/dev/shm/") && strstr(line, shm_name);
        } else if (sscanf(line, "Rss: %llu kB", &kb) == 1) {
            tot += kb * 1024;
            if (in_shm)
                shm += kb * 1024;
        }
    }
    fclose(f);
    *total = tot;
    if (of_shm)
        *of_shm = shm;
}
