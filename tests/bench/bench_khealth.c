/*
 * bench_khealth.c - `emabench khealth`: the update kernel with the health signals against the
 * plain one, in process, no emad involved (--socket is required by emabench's parser but not
 * used). What `emabench health` measures through emad, without the round trips, wake-ups and
 * scheduling that make a difference of 2 % invisible there on a shared machine.
 *
 * Params and shadow live in shared memory (memfd, 4 KiB pages), as emad's do; --workers threads
 * each update their slice in chunks of 1M elements, as emad's workers take them. Repetitions
 * interleaved (struct ab), one untimed pass of each first. The params differ from the shadow, so
 * every pass changes it, as in training. Reported: the cost, the median over the repetitions of
 * (health time / plain time - 1), with its spread, in wall time and in the threads' CPU time. The
 * CPU time leaves out the time a thread waited for a core, which on a shared machine is most of
 * the spread; what memory contention costs stays in both.
 */
#include "bench.h"
#include "kernel.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KH_CHUNK (1u << 20)

struct kh_run {
    const struct kernel_ops *ops;
    enum dtype dt;
    void *x, *s;
    bool health;
    uint64_t from, to;
    double cpu; /* seconds this thread ran the pass */
};

static double thread_cpu(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *kh_work(void *arg)
{
    struct kh_run *r = arg;
    size_t xs = dtype_size(r->dt), ss = dtype_size(dtype_shadow(r->dt));
    struct kernel_health h = {0};
    double c0 = thread_cpu();

    for (uint64_t i = r->from; i < r->to; i += KH_CHUNK) {
        uint64_t n = r->to - i < KH_CHUNK ? r->to - i : KH_CHUNK;
        void *s = (char *)r->s + i * ss;
        const void *x = (const char *)r->x + i * xs;
        int rc = r->health ? kernel_update_health(r->ops, r->dt, s, x, n, 0.99, NULL, true, &h)
                           : kernel_update(r->ops, r->dt, s, x, n, 0.99);
        if (rc < 0)
            die("khealth: the kernel failed");
    }
    r->cpu = thread_cpu() - c0;
    return NULL;
}

/* The pass's wall time; *cpu gets the sum of its threads' CPU times. */
static double kh_pass(const struct kh_run *base, uint64_t n, unsigned threads, bool health,
                      double *cpu)
{
    struct kh_run runs[64];
    pthread_t tid[64];

    if (threads > 64)
        threads = 64;
    double t0 = now();
    for (unsigned t = 0; t < threads; t++) {
        runs[t] = *base;
        runs[t].health = health;
        runs[t].from = n * t / threads;
        runs[t].to = n * (t + 1) / threads;
        if (threads == 1)
            kh_work(&runs[t]);
        else if (pthread_create(&tid[t], NULL, kh_work, &runs[t]) != 0)
            die("khealth: pthread_create failed");
    }
    if (threads > 1)
        for (unsigned t = 0; t < threads; t++)
            pthread_join(tid[t], NULL);
    double wall = now() - t0;
    *cpu = 0;
    for (unsigned t = 0; t < threads; t++)
        *cpu += runs[t].cpu;
    return wall;
}

static void *shared_bytes(size_t bytes, int fill)
{
    int fd = memfd_create("emabench-khealth", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0)
        die("khealth: memfd of %zu bytes: %s", bytes, strerror(errno));
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        die("khealth: mmap of %zu bytes: %s", bytes, strerror(errno));
    memset(p, fill, bytes);
    return p;
}

int cmd_khealth(const struct bopts *o)
{
    char buf[32];

    for (size_t d = 0; d < o->ndtypes; d++) {
        enum dtype dt;
        if (dtype_from_name(o->dtypes[d], strlen(o->dtypes[d]), &dt) < 0 || !dtype_is_float(dt))
            die("khealth: --dtypes: \"%s\" is not f32, bf16, f16 or f64", o->dtypes[d]);
        size_t xs = dtype_size(dt), ss = dtype_size(dtype_shadow(dt));
        for (size_t z = 0; z < o->nsizes; z++) {
            uint64_t n = o->sizes[z];
            struct kh_run r = {.ops = kernel_ops_best(), .dt = dt};
            struct ab s = {0}, c = {0};
            double ca, cb;
            r.x = shared_bytes(n * xs, 0x3e);
            r.s = shared_bytes(n * ss, 0x3c);
            kh_pass(&r, n, o->workers, true, &ca); /* warm-up: page tables, caches */
            kh_pass(&r, n, o->workers, false, &cb);
            for (unsigned i = 0; i < o->reps; i++) {
                double a, b;
                if (ab_a_first(i)) {
                    a = kh_pass(&r, n, o->workers, true, &ca);
                    b = kh_pass(&r, n, o->workers, false, &cb);
                } else {
                    b = kh_pass(&r, n, o->workers, false, &cb);
                    a = kh_pass(&r, n, o->workers, true, &ca);
                }
                ab_add(&s, (double)n / a / 1e9, (double)n / b / 1e9, a / b - 1);
                ab_add(&c, (double)n / ca / 1e9, (double)n / cb / 1e9, ca / cb - 1);
            }
            munmap(r.x, n * xs);
            munmap(r.s, n * ss);
            rec_begin("khealth");
            rec_str("dtype", o->dtypes[d]);
            rec_int("elems", n);
            rec_str("size", fmt_elems(n, buf, sizeof(buf)));
            rec_int("workers", o->workers);
            rec_int("reps", s.n);
            rec_str("impl", r.ops->name);
            rec_num("on_gelem_s", ab_med_a(&s));
            rec_num("off_gelem_s", ab_med_b(&s));
            rec_ab("cost", &s);
            rec_ab("cpu_cost", &c);
            rec_end();
        }
    }
    return 0;
}
