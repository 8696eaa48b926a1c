/*
 * bench_latency.c - latencies through emad, each against a baseline from the same run:
 *
 *   rtt       a no-op event (batch_start with the EMA weights not swapped in: action "none")
 *             from the C client, p50/p99/p99.9, against a raw Unix-socket echo server and
 *             client written here, exchanging messages of the same sizes (msgpack-c computes
 *             them); the two alternate in blocks (--reps of them each) so that both see the
 *             same machine.
 *   fairness  a small session's update round trip (p50, p99) while a large session updates
 *             back to back on another connection, against the same with emad idle; and
 *             the large session's throughput meanwhile, against its throughput alone.
 *
 * Each comparison runs --reps repetitions, the order of its two sides swapped each time
 * (bench.h, "interleaved comparisons").
 *   overlap   a trainer sends batch_end, "computes" (sleeps: no CPU used) k times the update
 *             time, then waits: the stall of that wait, against the blocking update time.
 */
#include "bench.h"

#include <errno.h>
#include <msgpack.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- rtt ---- */

/* The sizes of the request emac_event sends for a no-op event and of emad's reply. */
static void message_sizes(const char *session, size_t *req, size_t *rep)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int(&pk, 0);
    msgpack_pack_uint32(&pk, 1000);
    msgpack_pack_str_with_body(&pk, "event", 5);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 3);
    msgpack_pack_str_with_body(&pk, "session", 7);
    msgpack_pack_str_with_body(&pk, session, strlen(session));
    msgpack_pack_str_with_body(&pk, "event", 5);
    msgpack_pack_str_with_body(&pk, "batch_start", 11);
    msgpack_pack_str_with_body(&pk, "time", 4);
    msgpack_pack_map(&pk, 2);
    msgpack_pack_str_with_body(&pk, "batch", 5);
    msgpack_pack_uint64(&pk, 1000);
    msgpack_pack_str_with_body(&pk, "epoch", 5);
    msgpack_pack_uint64(&pk, 0);
    *req = sb.size;
    msgpack_sbuffer_clear(&sb);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_int(&pk, 1);
    msgpack_pack_uint32(&pk, 1000);
    msgpack_pack_nil(&pk);
    msgpack_pack_map(&pk, 4);
    msgpack_pack_str_with_body(&pk, "action", 6);
    msgpack_pack_str_with_body(&pk, "none", 4);
    msgpack_pack_str_with_body(&pk, "active", 6);
    msgpack_pack_false(&pk);
    msgpack_pack_str_with_body(&pk, "started", 7);
    msgpack_pack_true(&pk);
    msgpack_pack_str_with_body(&pk, "updates", 7);
    msgpack_pack_uint64(&pk, 1000);
    *rep = sb.size;
    msgpack_sbuffer_destroy(&sb);
}

static int read_full(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const char *buf, size_t n)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, buf + put, n - put);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        put += (size_t)r;
    }
    return 0;
}

/* Pin a thread (tid; 0: the caller) to one CPU, or (cpu < 0) to the set in *mask. */
static int pin(pid_t tid, int cpu, const cpu_set_t *mask)
{
    cpu_set_t one;

    if (cpu >= 0) {
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        mask = &one;
    }
    return sched_setaffinity(tid, sizeof(*mask), mask) < 0 ? -errno : 0;
}

/* The raw echo server, in a child process on `cpu` (< 0: anywhere): accept one client,
 * answer each req-byte message with rep bytes until EOF. */
static pid_t echo_server(const char *path, size_t req, size_t rep, int cpu)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (strlen(path) >= sizeof(sa.sun_path))
        die("%s: path too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    unlink(path);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 4) < 0)
        die("echo server: %s: %s", path, strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        char in[4096], out[4096];
        memset(out, 0x5a, sizeof(out));
        if (cpu >= 0 && pin(0, cpu, NULL) < 0)
            _exit(1);
        int fd = accept(ls, NULL, NULL);
        if (fd < 0)
            _exit(1);
        while (read_full(fd, in, req) == 0 && write_full(fd, out, rep) == 0)
            ;
        _exit(0);
    }
    close(ls);
    return pid;
}

static int echo_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (strlen(path) >= sizeof(sa.sun_path))
        die("%s: path too long", path);
    memcpy(sa.sun_path, path, strlen(path) + 1);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("echo client: %s: %s", path, strerror(errno));
    return fd;
}

/* Where the two ends of a round trip run decides its cost on a virtual machine (waking
 * another vCPU is an interrupt through the hypervisor, several times a same-CPU wake-up),
 * and a forked echo server would otherwise sit where its parent does while emad's loop
 * thread sits wherever the scheduler put it. So, with two CPUs or more, emad's loop
 * thread and the echo server are pinned alike: both on the client's CPU ("same"), then
 * both on another ("cross"), and each is compared with its like. "unpinned" (only on
 * request, --placements) leaves all three to the scheduler: what made this figure swing
 * between runs (docs/performance.md). */
struct placement {
    const char *name;
    int client_cpu, server_cpu; /* < 0: not pinned */
};

struct rtt_result {
    struct ab q[3]; /* p50, p99, p99.9 of each repetition, seconds: emad (A), echo (B) */
};

static void rtt_measure(const struct bopts *o, struct bsess *b, const struct placement *pl,
                        const cpu_set_t *mine, const cpu_set_t *emads, size_t req, size_t rep,
                        uint64_t iters, struct rtt_result *res)
{
    uint64_t per = iters / o->reps < 20 ? 20 : iters / o->reps;
    double *te = calloc(per, sizeof(double)), *tr = calloc(per, sizeof(double));
    char path[128], in[4096], out[4096];
    long emad_pid = emac_server_info(b->c)->pid;
    const double qs[3] = {0.5, 0.99, 0.999};

    if (te == NULL || tr == NULL)
        die("out of memory");
    memset(res, 0, sizeof(*res));
    if (pl->client_cpu >= 0 && (pin(0, pl->client_cpu, NULL) < 0 ||
                                pin((pid_t)emad_pid, pl->server_cpu, NULL) < 0))
        die("rtt: cannot pin to CPUs %d and %d: %s", pl->client_cpu, pl->server_cpu,
            strerror(errno));
    if (pl->client_cpu < 0) { /* unpinned: both as they were at the start */
        pin(0, -1, mine);
        pin((pid_t)emad_pid, -1, emads);
    }
    snprintf(path, sizeof(path), "%s-echo", o->socket);
    pid_t pid = echo_server(path, req, rep, pl->server_cpu);
    int fd = echo_connect(path);
    memset(out, 0xa5, sizeof(out));
    for (int w = 0; w < 200; w++) { /* warm-up both */
        bsess_event(b, "batch_start");
        if (write_full(fd, out, req) < 0 || read_full(fd, in, rep) < 0)
            die("echo: %s", strerror(errno));
    }
    for (unsigned r = 0; r < o->reps; r++) {
        for (int side = 0; side < 2; side++) {
            if ((side == 0) == ab_a_first(r)) {
                for (uint64_t i = 0; i < per; i++)
                    te[i] = bsess_event(b, "batch_start");
            } else {
                for (uint64_t i = 0; i < per; i++) {
                    double t0 = now();
                    if (write_full(fd, out, req) < 0 || read_full(fd, in, rep) < 0)
                        die("echo: %s", strerror(errno));
                    tr[i] = now() - t0;
                }
            }
        }
        for (int q = 0; q < 3; q++) {
            double e = quantile(te, per, qs[q]), x = quantile(tr, per, qs[q]);
            ab_add(&res->q[q], e, x, e / x);
        }
    }
    close(fd);
    waitpid(pid, NULL, 0);
    unlink(path);
    free(te);
    free(tr);
}

int cmd_rtt(const struct bopts *o)
{
    const char *session = "bench-rtt";
    const char *names[3] = {"p50", "p99", "p99_9"};
    size_t req, rep;
    uint64_t iters = o->iters < 100 ? 100 : o->iters;
    struct placement pls[3];
    struct rtt_result res[3];
    cpu_set_t mine, emads;
    size_t npl = 0;
    struct bsess b;
    char list[64] = "";

    message_sizes(session, &req, &rep);
    bsess_open(&b, o->socket, session, "f32", 1, 16);
    long emad_pid = emac_server_info(b.c)->pid;
    /* What ran before (another benchmark's sessions going away) is not this one's figure. */
    bench_settle(emad_pid, -1, 3);
    /* Two CPUs the bench may use, and leave to emad's loop thread as they were. */
    int cpus[2], ncpu = 0;
    if (sched_getaffinity(0, sizeof(mine), &mine) == 0 &&
        sched_getaffinity((pid_t)emad_pid, sizeof(emads), &emads) == 0 && CPU_COUNT(&mine) >= 2 &&
        pin((pid_t)emad_pid, -1, &emads) == 0) {
        for (int c = 0; c < CPU_SETSIZE && ncpu < 2; c++)
            if (CPU_ISSET(c, &mine))
                cpus[ncpu++] = c;
    }
    const char *want = o->placements ? o->placements : ncpu == 2 ? "same,cross" : "unpinned";
    if (strstr(want, "same") && ncpu == 2)
        pls[npl++] = (struct placement){"same", cpus[0], cpus[0]};
    if (strstr(want, "cross") && ncpu == 2)
        pls[npl++] = (struct placement){"cross", cpus[0], cpus[1]};
    if (strstr(want, "unpinned") || npl == 0)
        pls[npl++] = (struct placement){"unpinned", -1, -1};
    for (size_t i = 0; i < npl; i++) {
        rtt_measure(o, &b, &pls[i], &mine, &emads, req, rep, iters, &res[i]);
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? "," : "",
                 pls[i].name);
    }
    if (ncpu == 2) {
        pin(0, -1, &mine);
        pin((pid_t)emad_pid, -1, &emads);
    }
    bsess_close(&b);
    /* The goal holds in every placement: the worse median ratio is the one reported. Each
     * figure is the median over the repetitions of that repetition's quantile. */
    rec_begin("rtt");
    rec_int("iters", iters);
    rec_int("reps", o->reps);
    rec_int("request_bytes", req);
    rec_int("reply_bytes", rep);
    rec_str("placements", list);
    for (int q = 0; q < 3; q++) {
        char k[48];
        size_t worst = 0;
        for (size_t i = 0; i < npl; i++) {
            if (ab_med_r(&res[i].q[q]) > ab_med_r(&res[worst].q[q]))
                worst = i;
            snprintf(k, sizeof(k), "%s_emad_%s_us", pls[i].name, names[q]);
            rec_num(k, ab_med_a(&res[i].q[q]) * 1e6);
            snprintf(k, sizeof(k), "%s_echo_%s_us", pls[i].name, names[q]);
            rec_num(k, ab_med_b(&res[i].q[q]) * 1e6);
            snprintf(k, sizeof(k), "%s_ratio_%s", pls[i].name, names[q]);
            rec_ab(k, &res[i].q[q]);
        }
        snprintf(k, sizeof(k), "emad_%s_us", names[q]);
        rec_num(k, ab_med_a(&res[worst].q[q]) * 1e6);
        snprintf(k, sizeof(k), "echo_%s_us", names[q]);
        rec_num(k, ab_med_b(&res[worst].q[q]) * 1e6);
        snprintf(k, sizeof(k), "ratio_%s", names[q]);
        rec_ab(k, &res[worst].q[q]);
        snprintf(k, sizeof(k), "worst_%s", names[q]);
        rec_str(k, pls[worst].name);
    }
    rec_end();
    return 0;
}

/* ---- fairness ---- */

enum { LARGE_PAUSE, LARGE_RUN, LARGE_STOP };

struct large_arg {
    const char *socket;
    uint64_t n;
    atomic_int cmd;     /* what the large session does now */
    atomic_int ready;   /* its session is open and its EMA started */
    atomic_int busy;    /* an update of it is in flight */
    atomic_ullong updates;
};

static void *large_thread(void *arg)
{
    struct large_arg *a = arg;
    struct bsess b;
    bsess_open(&b, a->socket, "bench-large", "f32", 1, a->n);
    bsess_update(&b); /* start the EMA */
    bsess_update(&b);
    atomic_store(&a->ready, 1);
    for (;;) {
        int cmd = atomic_load(&a->cmd);
        if (cmd == LARGE_STOP)
            break;
        if (cmd == LARGE_PAUSE) {
            sleep_s(0.0001);
            continue;
        }
        atomic_store(&a->busy, 1);
        bsess_update(&b);
        atomic_fetch_add(&a->updates, 1);
        atomic_store(&a->busy, 0);
    }
    bsess_close(&b);
    return NULL;
}

/* Pause the large session and wait for its update in flight to return. */
static void large_pause(struct large_arg *a)
{
    atomic_store(&a->cmd, LARGE_PAUSE);
    while (atomic_load(&a->busy))
        sleep_s(0.0001);
}

/* Let the large session update alone for >= 5 updates and >= 0.1 s; its Gelem/s. */
static double large_alone(struct large_arg *a)
{
    unsigned long long u0 = atomic_load(&a->updates);
    double t0 = now();
    atomic_store(&a->cmd, LARGE_RUN);
    while (atomic_load(&a->updates) < u0 + 5 || now() - t0 < 0.1)
        sleep_s(0.001);
    double el = now() - t0;
    unsigned long long u1 = atomic_load(&a->updates);
    large_pause(a);
    return (double)a->n * (double)(u1 - u0) / el / 1e9;
}

static void small_round_trips(struct bsess *b, double *v, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        v[i] = bsess_update(b);
}

int cmd_fairness(const struct bopts *o)
{
    uint64_t iters = o->iters < 20 ? 20 : o->iters, small_n = o->elems ? o->elems : 4096;
    double *idle = calloc(iters < 50 ? 50 : iters, sizeof(double));
    double *busy = calloc(iters, sizeof(double));
    struct bsess b;
    struct large_arg la = {.socket = o->socket, .n = o->sizes[0], .cmd = LARGE_PAUSE};
    struct ab p50 = {0}, p99 = {0}, share = {0}, bound = {0}, chunk = {0};
    unsigned long long busy_updates = 0;
    pthread_t tid;
    char buf[32];

    if (idle == NULL || busy == NULL)
        die("out of memory");
    bsess_open(&b, o->socket, "bench-small", "f32", 1, small_n);
    small_round_trips(&b, idle, 50); /* warm-up */
    pthread_create(&tid, NULL, large_thread, &la);
    while (!atomic_load(&la.ready))
        sleep_s(0.001);
    large_alone(&la); /* warm-up */
    /* Each repetition: the baseline (the small session's round trips with emad idle, then
     * the large session alone) and the small session's round trips while the large one
     * updates back to back, in turn first. The bound on p99 takes the repetition's own chunk
     * time: one chunk (2^20 elements, emad's CHUNK_ELEMS) on one worker at the large
     * session's rate alone, i.e. with emad's workers sharing the machine only with each
     * other. */
    for (unsigned r = 0; r < o->reps; r++) {
        double alone = 0, rate = 0;
        for (int side = 0; side < 2; side++) {
            if ((side == 0) == ab_a_first(r)) {
                unsigned long long u0 = atomic_load(&la.updates);
                atomic_store(&la.cmd, LARGE_RUN);
                while (atomic_load(&la.updates) == u0) /* it is in its stride */
                    sleep_s(0.0001);
                u0 = atomic_load(&la.updates);
                double t0 = now();
                small_round_trips(&b, busy, iters);
                double el = now() - t0;
                unsigned long long u1 = atomic_load(&la.updates);
                large_pause(&la);
                busy_updates += u1 - u0;
                rate = (double)la.n * (double)(u1 - u0) / el / 1e9;
            } else {
                small_round_trips(&b, idle, iters);
                alone = large_alone(&la);
            }
        }
        double i50 = quantile(idle, iters, 0.5), i99 = quantile(idle, iters, 0.99);
        double b50 = quantile(busy, iters, 0.5), b99 = quantile(busy, iters, 0.99);
        double chunk_s = (double)(1u << 20) * o->workers / (alone * 1e9);
        ab_add(&p50, b50, i50, b50 / i50);
        ab_add(&p99, b99, i99, b99 / i99);
        ab_add(&share, rate, alone, rate / alone);
        ab_add(&bound, b99, 2 * i99 + chunk_s, b99 / (2 * i99 + chunk_s));
        ab_add(&chunk, chunk_s, chunk_s, 1);
    }
    atomic_store(&la.cmd, LARGE_STOP);
    pthread_join(tid, NULL);
    bsess_close(&b);

    rec_begin("fairness");
    rec_int("small_elems", small_n);
    rec_int("large_elems", la.n);
    rec_str("large_size", fmt_elems(la.n, buf, sizeof(buf)));
    rec_int("workers", o->workers);
    rec_int("iters", iters);
    rec_int("reps", o->reps);
    rec_num("large_gelem_s", ab_med_a(&share));
    rec_int("large_updates", busy_updates);
    rec_num("large_alone_gelem_s", ab_med_b(&share));
    rec_ab("large_share", &share);
    rec_num("idle_p50_us", ab_med_b(&p50) * 1e6);
    rec_num("idle_p99_us", ab_med_b(&p99) * 1e6);
    rec_num("busy_p50_us", ab_med_a(&p50) * 1e6);
    rec_num("busy_p99_us", ab_med_a(&p99) * 1e6);
    rec_ab("ratio_p50", &p50);
    rec_ab("ratio_p99", &p99);
    rec_num("chunk_us", ab_med_a(&chunk) * 1e6);
    rec_num("bound_p99_us", ab_med_b(&bound) * 1e6);
    rec_ab("ratio_to_bound", &bound);
    rec_end();
    free(idle);
    free(busy);
    return 0;
}

/* ---- overlap ---- */

int cmd_overlap(const struct bopts *o)
{
    uint64_t n = o->sizes[0], iters = o->iters < 5 ? 5 : o->iters;
    double t[5], *stall = calloc(iters, sizeof(double));
    struct bsess b;
    char buf[32];

    if (stall == NULL)
        die("out of memory");
    bsess_open(&b, o->socket, "bench-overlap", "f32", 1, n);
    for (int i = 0; i < 3; i++)
        bsess_update(&b);
    for (size_t ki = 0; ki < o->nks; ki++) {
        double k = o->ks[ki];
        struct ab of_update = {0}, of_step = {0}, p50 = {0};
        /* Each repetition measures the blocking update (the baseline, median of 5) and then
         * --iters stalls with k times that time of "compute". */
        for (unsigned r = 0; r < o->reps; r++) {
            double sum = 0;
            for (int i = 0; i < 5; i++)
                t[i] = bsess_update(&b);
            double T = quantile(t, 5, 0.5);
            for (uint64_t i = 0; i < iters; i++) {
                emac_ticket tk = bsess_send(&b, "batch_end");
                sleep_s(k * T);
                double t0 = now();
                bsess_wait(&b, tk);
                stall[i] = now() - t0;
                sum += stall[i];
            }
            double mean = sum / (double)iters;
            ab_add(&of_update, mean, T, mean / T);
            ab_add(&of_step, mean, k * T + mean, mean / (k * T + mean));
            ab_add(&p50, quantile(stall, iters, 0.5), T, 0);
        }
        double T = ab_med_b(&of_update);
        rec_begin("overlap");
        rec_int("elems", n);
        rec_str("size", fmt_elems(n, buf, sizeof(buf)));
        rec_int("workers", o->workers);
        rec_int("reps", o->reps);
        rec_num("k", k);
        rec_num("update_ms", T * 1e3);
        rec_num("compute_ms", k * T * 1e3);
        rec_num("stall_p50_ms", ab_med_a(&p50) * 1e3);
        rec_num("stall_mean_ms", ab_med_a(&of_update) * 1e3);
        rec_ab("stall_of_update", &of_update); /* against the blocking update */
        rec_ab("stall_of_step", &of_step);     /* share of the trainer's step */
        rec_end();
    }
    bsess_close(&b);
    free(stall);
    return 0;
}
