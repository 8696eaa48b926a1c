/*
 * bench_hostile.c - a trainer's round trips while emad is held by peers that
 * misbehave, against the same trainer with emad otherwise idle, same run:
 *
 *   hostile  --count idle connections, each stopped halfway through a request,
 *            and one client that pipelines status requests and never reads
 *            its replies (emad stops reading it once --max-pending bytes of
 *            replies are queued); a small session's update round trip (p50,
 *            p99) with emad otherwise idle and while they are there, --reps
 *            repetitions in turn first (bench.h, "interleaved comparisons").
 */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int raw_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        die("socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("connect %s: %s", path, strerror(errno));
    return fd;
}

/* [0, msgid, "status", [{}]]: a request whose reply is emad's whole status. */
static const unsigned char status_req[] = {0x94, 0x00, 0x01, 0xa6, 's', 't', 'a',
                                           't',  'u',  's',  0x91, 0x80};
/* [0, 1, "hello", [{proto: 1, client: "x"}]], of which only the start is sent. */
static const unsigned char hello_head[] = {0x94, 0x00, 0x01, 0xa5, 'h', 'e', 'l', 'l', 'o', 0x91};

/* The client that never reads: hello (its reply read), then status requests
 * until the socket takes no more without blocking. Returns the bytes sent. */
static size_t flood(int fd)
{
    static const unsigned char hello[] = {0x94, 0x00, 0x00, 0xa5, 'h',  'e',  'l',  'l',
                                          'o',  0x91, 0x82, 0xa5, 'p',  'r',  'o',  't',
                                          'o',  0x01, 0xa6, 'c',  'l',  'i',  'e',  'n',
                                          't',  0xa5, 'f',  'l',  'o',  'o',  'd'};
    char buf[512];
    size_t sent = 0;

    if (write(fd, hello, sizeof(hello)) != (ssize_t)sizeof(hello) || read(fd, buf, sizeof(buf)) <= 0)
        die("flood: hello: %s", strerror(errno));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    /* Pipelined: emad answers until its queue for us is full, then stops
     * reading us; our socket then fills up too. */
    for (int idle_rounds = 0; idle_rounds < 50;) {
        ssize_t n = write(fd, status_req, sizeof(status_req));
        if (n > 0) {
            sent += (size_t)n;
            idle_rounds = 0;
            continue;
        }
        if (n < 0 && errno != EAGAIN)
            die("flood: %s", strerror(errno));
        idle_rounds++;
        sleep_s(0.002);
    }
    return sent;
}

int cmd_hostile(const struct bopts *o)
{
    uint64_t iters = o->iters < 20 ? 20 : o->iters, conns = o->count ? o->count : 1000;
    double *calm = calloc(iters, sizeof(double)), *held = calloc(iters, sizeof(double));
    int *fds = calloc(conns, sizeof(int));
    struct ab p50 = {0}, p99 = {0};
    size_t flooded = 0;
    struct rlimit rl;
    struct bsess b;

    if (calm == NULL || held == NULL || fds == NULL)
        die("out of memory");
    /* Room for the idle connections beside the benchmark's own files. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < conns + 64) {
        rl.rlim_cur = rl.rlim_max < conns + 64 ? rl.rlim_max : conns + 64;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    bsess_open(&b, o->socket, "bench-calm", "f32", 1, 4096);
    long pid = emac_server_info(b.c)->pid;
    long fds_calm = proc_fds(pid);
    for (int w = 0; w < 50; w++)
        bsess_update(&b);
    /* Each repetition: the round trips with emad otherwise idle, and with the hostile peers
     * there (connected, then closed), in turn first. Once they are closed, emad is given
     * time to drop them (its descriptors back to the calm count, its threads idle) so that
     * a calm block never measures the teardown of a held one. */
    for (unsigned r = 0; r < o->reps; r++) {
        for (int side = 0; side < 2; side++) {
            if ((side == 0) != ab_a_first(r)) {
                for (uint64_t i = 0; i < iters; i++)
                    calm[i] = bsess_update(&b);
                continue;
            }
            for (uint64_t i = 0; i < conns; i++) {
                fds[i] = raw_connect(o->socket);
                if (write(fds[i], hello_head, sizeof(hello_head)) !=
                    (ssize_t)sizeof(hello_head))
                    die("half-sent request: %s", strerror(errno));
            }
            int flooder = raw_connect(o->socket);
            flooded = flood(flooder);
            for (int w = 0; w < 50; w++)
                bsess_update(&b);
            for (uint64_t i = 0; i < iters; i++)
                held[i] = bsess_update(&b);
            close(flooder);
            for (uint64_t i = 0; i < conns; i++)
                close(fds[i]);
            bench_settle(pid, fds_calm, 5);
        }
        double c50 = quantile(calm, iters, 0.5), c99 = quantile(calm, iters, 0.99);
        double h50 = quantile(held, iters, 0.5), h99 = quantile(held, iters, 0.99);
        ab_add(&p50, h50, c50, h50 / c50);
        ab_add(&p99, h99, c99, h99 / c99);
    }
    bsess_close(&b);

    rec_begin("hostile");
    rec_int("idle_connections", conns);
    rec_int("flood_bytes", flooded);
    rec_int("iters", iters);
    rec_int("reps", o->reps);
    rec_num("calm_p50_us", ab_med_b(&p50) * 1e6);
    rec_num("calm_p99_us", ab_med_b(&p99) * 1e6);
    rec_num("held_p50_us", ab_med_a(&p50) * 1e6);
    rec_num("held_p99_us", ab_med_a(&p99) * 1e6);
    rec_ab("ratio_p50", &p50);
    rec_ab("ratio_p99", &p99);
    rec_end();
    free(calm);
    free(held);
    free(fds);
    return 0;
}
