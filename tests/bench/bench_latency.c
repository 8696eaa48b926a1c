/*
 * bench_latency.c - latencies through emad, each against a baseline from the same run:
 *
 *   rtt       a no-op event (batch_start with the EMA weights not swapped in: action "none")
 *             from the C client, p50/p99/p99.9, against a raw Unix-socket echo server and
 *             client written here, exchanging messages of the same sizes (msgpack-c computes
 *             them); the two alternate in blocks so that both see the same machine.
 *   fairness  a small session's update round trip (p50, p99) while a large session updates
 *             back to back on another connection, against the same with emad idle; and
 *             the large session's throughput meanwhile, against its throughput alone.
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
 * both on another ("cross"), and each is compared with its like. */
struct placement {
    const char *name;
    int client_cpu, server_cpu; /* < 0: not pinned */
};

struct rtt_result {
    double emad[3], echo[3]; /* p50, p99, p99.9, seconds */
};

static void rtt_measure(const struct bopts *o, struct bsess *b, const struct placement *pl,
                        size_t req, size_t rep, uint64_t iters, struct rtt_result *res)
{
    uint64_t blocks = 10, per = iters / blocks, ne = 0, nr = 0;
    double *te = calloc(iters, sizeof(double)), *tr = calloc(iters, sizeof(double));
    char path[128], in[4096], out[4096];
    long emad_pid = emac_server_info(b->c)->pid;

    if (te == NULL || tr == NULL)
        die("out of memory");
    if (pl->client_cpu >= 0 && (pin(0, pl->client_cpu, NULL) < 0 ||
                                pin((pid_t)emad_pid, pl->server_cpu, NULL) < 0))
        die("rtt: cannot pin to CPUs %d and %d: %s", pl->client_cpu, pl->server_cpu,
            strerror(errno));
    snprintf(path, sizeof(path), "%s-echo", o->socket);
    pid_t pid = echo_server(path, req, rep, pl->server_cpu);
    int fd = echo_connect(path);
    memset(out, 0xa5, sizeof(out));
    for (int w = 0; w < 200; w++) { /* warm-up both */
        bsess_event(b, "batch_start");
        if (write_full(fd, out, req) < 0 || read_full(fd, in, rep) < 0)
            die("echo: %s", strerror(errno));
    }
    for (uint64_t blk = 0; blk < blocks; blk++) {
        for (uint64_t i = 0; i < per; i++)
            te[ne++] = bsess_event(b, "batch_start");
        for (uint64_t i = 0; i < per; i++) {
            double t0 = now();
            if (write_full(fd, out, req) < 0 || read_full(fd, in, rep) < 0)
                die("echo: %s", strerror(errno));
            tr[nr++] = now() - t0;
        }
    }
    close(fd);
    waitpid(pid, NULL, 0);
    unlink(path);
    const double qs[3] = {0.5, 0.99, 0.999};
    for (int q = 0; q < 3; q++) {
        res->emad[q] = quantile(te, ne, qs[q]);
        res->echo[q] = quantile(tr, nr, qs[q]);
    }
    free(te);
    free(tr);
}

int cmd_rtt(const struct bopts *o)
{
    const char *session = "bench-rtt";
    const char *names[3] = {"p50", "p99", "p99_9"};
    size_t req, rep;
    uint64_t iters = o->iters < 100 ? 100 : o->iters;
    struct placement pls[2] = {{"unpinned", -1, -1}, {NULL, -1, -1}};
    struct rtt_result res[2];
    cpu_set_t mine, emads;
    size_t npl = 1;
    struct bsess b;

    message_sizes(session, &req, &rep);
    bsess_open(&b, o->socket, session, "f32", 1, 16);
    long emad_pid = emac_server_info(b.c)->pid;
    /* Two CPUs the bench may use, and leave to emad's loop thread as they were. */
    if (sched_getaffinity(0, sizeof(mine), &mine) == 0 &&
        sched_getaffinity((pid_t)emad_pid, sizeof(emads), &emads) == 0 && CPU_COUNT(&mine) >= 2 &&
        pin((pid_t)emad_pid, -1, &emads) == 0) {
        int cpus[2], n = 0;
        for (int c = 0; c < CPU_SETSIZE && n < 2; c++)
            if (CPU_ISSET(c, &mine))
                cpus[n++] = c;
        pls[0] = (struct placement){"same", cpus[0], cpus[0]};
        pls[1] = (struct placement){"cross", cpus[0], cpus[1]};
        npl = 2;
    }
    for (size_t i = 0; i < npl; i++)
        rtt_measure(o, &b, &pls[i], req, rep, iters, &res[i]);
    if (npl == 2) {
        pin(0, -1, &mine);
        pin((pid_t)emad_pid, -1, &emads);
    }
    bsess_close(&b);
    /* The goal holds in every placement: the worse ratio is the one reported. */
    rec_begin("rtt");
    rec_int("iters", iters);
    rec_int("request_bytes", req);
    rec_int("reply_bytes", rep);
    rec_str("placements", npl == 2 ? "same,cross" : "unpinned");
    for (int q = 0; q < 3; q++) {
        char k[48];
        size_t worst = 0;
        for (size_t i = 0; i < npl; i++) {
            if (res[i].emad[q] / res[i].echo[q] > res[worst].emad[q] / res[worst].echo[q])
                worst = i;
            snprintf(k, sizeof(k), "%s_emad_%s_us", pls[i].name, names[q]);
            rec_num(k, res[i].emad[q] * 1e6);
            snprintf(k, sizeof(k), "%s_echo_%s_us", pls[i].name, names[q]);
            rec_num(k, res[i].echo[q] * 1e6);
            snprintf(k, sizeof(k), "%s_ratio_%s", pls[i].name, names[q]);
            rec_num(k, res[i].emad[q] / res[i].echo[q]);
        }
        snprintf(k, sizeof(k), "emad_%s_us", names[q]);
        rec_num(k, res[worst].emad[q] * 1e6);
        snprintf(k, sizeof(k), "echo_%s_us", names[q]);
        rec_num(k, res[worst].echo[q] * 1e6);
        snprintf(k, sizeof(k), "ratio_%s", names[q]);
        rec_num(k, res[worst].emad[q] / res[worst].echo[q]);
        snprintf(k, sizeof(k), "worst_%s", names[q]);
        rec_str(k, pls[worst].name);
    }
    rec_end();
    return 0;
}

/* ---- fairness ---- */

struct large_arg {
    const char *socket;
    uint64_t n;
    atomic_int stop, warm, go;
    double alone_seconds;   /* updates with emad otherwise idle */
    uint64_t alone_updates;
    double seconds;         /* updates while the small session runs */
    uint64_t updates;
};

static void *large_thread(void *arg)
{
    struct large_arg *a = arg;
    struct bsess b;
    bsess_open(&b, a->socket, "bench-large", "f32", 1, a->n);
    bsess_update(&b); /* start the EMA */
    /* Alone first: the chunk time the bound allows is that of emad's workers
     * sharing the machine only with each other, not the (longer) one they
     * get while the small session's round trips take CPU time too. */
    double t0 = now();
    do {
        bsess_update(&b);
        a->alone_updates++;
    } while (a->alone_updates < 5 || now() - t0 < 0.3);
    a->alone_seconds = now() - t0;
    atomic_store(&a->warm, 1);
    while (!atomic_load(&a->go))
        sleep_s(0.0001);
    t0 = now();
    while (!atomic_load(&a->stop)) {
        bsess_update(&b);
        a->updates++;
    }
    a->seconds = now() - t0;
    bsess_close(&b);
    return NULL;
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
    struct large_arg la = {.socket = o->socket, .n = o->sizes[0]};
    pthread_t tid;
    char buf[32];

    if (idle == NULL || busy == NULL)
        die("out of memory");
    bsess_open(&b, o->socket, "bench-small", "f32", 1, small_n);
    small_round_trips(&b, idle, 50); /* warm-up */
    small_round_trips(&b, idle, iters);
    pthread_create(&tid, NULL, large_thread, &la);
    while (!atomic_load(&la.warm))
        sleep_s(0.001);
    atomic_store(&la.go, 1);
    small_round_trips(&b, busy, iters);
    atomic_store(&la.stop, 1);
    pthread_join(tid, NULL);
    bsess_close(&b);

    double large_rate = (double)la.n * (double)la.updates / la.seconds / 1e9;
    double alone_rate = (double)la.n * (double)la.alone_updates / la.alone_seconds / 1e9;
    /* one chunk (2^20 elements, emad's CHUNK_ELEMS) on one worker, at the rate of the large
     * session alone */
    double chunk_s = (double)(1u << 20) * o->workers / (alone_rate * 1e9);
    double i50 = quantile(idle, iters, 0.5), i99 = quantile(idle, iters, 0.99);
    double b50 = quantile(busy, iters, 0.5), b99 = quantile(busy, iters, 0.99);
    rec_begin("fairness");
    rec_int("small_elems", small_n);
    rec_int("large_elems", la.n);
    rec_str("large_size", fmt_elems(la.n, buf, sizeof(buf)));
    rec_int("workers", o->workers);
    rec_int("iters", iters);
    rec_num("large_gelem_s", large_rate);
    rec_int("large_updates", la.updates);
    rec_num("large_alone_gelem_s", alone_rate);
    rec_num("large_share", large_rate / alone_rate);
    rec_num("idle_p50_us", i50 * 1e6);
    rec_num("idle_p99_us", i99 * 1e6);
    rec_num("busy_p50_us", b50 * 1e6);
    rec_num("busy_p99_us", b99 * 1e6);
    rec_num("ratio_p50", b50 / i50);
    rec_num("ratio_p99", b99 / i99);
    rec_num("chunk_us", chunk_s * 1e6);
    rec_num("bound_p99_us", (2 * i99 + chunk_s) * 1e6);
    rec_num("ratio_to_bound", b99 / (2 * i99 + chunk_s));
    rec_end();
    free(idle);
    free(busy);
    return 0;
}

/* ---- overlap ---- */

int cmd_overlap(const struct bopts *o)
{
    uint64_t n = o->sizes[0], iters = o->iters < 5 ? 5 : o->iters;
    double t[15], *stall = calloc(iters, sizeof(double));
    struct bsess b;
    char buf[32];

    if (stall == NULL)
        die("out of memory");
    bsess_open(&b, o->socket, "bench-overlap", "f32", 1, n);
    for (int i = 0; i < 3; i++)
        bsess_update(&b);
    for (int i = 0; i < 15; i++)
        t[i] = bsess_update(&b);
    double T = quantile(t, 15, 0.5);
    for (size_t ki = 0; ki < o->nks; ki++) {
        double k = o->ks[ki], sum = 0;
        for (uint64_t i = 0; i < iters; i++) {
            emac_ticket tk = bsess_send(&b, "batch_end");
            sleep_s(k * T);
            double t0 = now();
            bsess_wait(&b, tk);
            stall[i] = now() - t0;
            sum += stall[i];
        }
        double med = quantile(stall, iters, 0.5), mean = sum / (double)iters;
        rec_begin("overlap");
        rec_int("elems", n);
        rec_str("size", fmt_elems(n, buf, sizeof(buf)));
        rec_int("workers", o->workers);
        rec_num("k", k);
        rec_num("update_ms", T * 1e3);
        rec_num("compute_ms", k * T * 1e3);
        rec_num("stall_p50_ms", med * 1e3);
        rec_num("stall_mean_ms", mean * 1e3);
        rec_num("stall_of_update", mean / T);       /* against the blocking update */
        rec_num("stall_of_step", mean / (k * T + mean)); /* share of the trainer's step */
        rec_end();
    }
    bsess_close(&b);
    free(stall);
    return 0;
}
