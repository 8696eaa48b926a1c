/*
 * bench_metrics.c - the cost of being scraped: a trainer's no-op round trips
 * (batch_start) while a scraper GETs emad's --metrics page 10 times a
 * second, against the same round trips unscraped, same run, interleaved in
 * blocks so that drift on the machine hits both alike.
 *
 *   metrics  --port P (emad --metrics 127.0.0.1:P): --reps pairs of blocks of
 *            --seconds, unscraped and scraped, in turn first; p50 and p99 of
 *            each block, the median of their ratios and their spread, and the
 *            scrapes made.
 */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct scraper {
    unsigned port;
    atomic_bool on; /* scrape now */
    atomic_bool quit;
    uint64_t scrapes; /* pages read whole (read after join) */
    uint64_t bytes;   /* the last page's size */
};

/* One GET /metrics; the bytes of the answer (headers included). */
static size_t scrape(unsigned port)
{
    static const char req[] =
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    char buf[65536];
    size_t total = 0;
    ssize_t n;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("scrape 127.0.0.1:%u: %s", port, strerror(errno));
    if (write(fd, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1)
        die("scrape: %s", strerror(errno));
    while ((n = read(fd, buf, sizeof(buf))) > 0)
        total += (size_t)n;
    close(fd);
    if (n < 0 || total == 0)
        die("scrape: no answer");
    return total;
}

static void *scraper_main(void *arg)
{
    struct scraper *s = arg;

    while (!atomic_load(&s->quit)) {
        if (atomic_load(&s->on)) {
            s->bytes = scrape(s->port);
            s->scrapes++;
        }
        sleep_s(0.1);
    }
    return NULL;
}

/* Round trips for `seconds`, appended to v (grown as needed). */
static void round_trips(struct bsess *b, double seconds, double **v, uint64_t *n, uint64_t *cap)
{
    double end = now() + seconds;

    while (now() < end) {
        if (*n == *cap) {
            *cap = *cap ? 2 * *cap : 4096;
            if ((*v = realloc(*v, *cap * sizeof(double))) == NULL)
                die("out of memory");
        }
        (*v)[(*n)++] = bsess_event(b, "batch_start");
    }
}

int cmd_metrics(const struct bopts *o)
{
    /* --reps blocks of --seconds each side, scraped and not, in turn first: a scrape every
     * 100 ms lands in every scraped block. */
    double block = o->seconds < 0.01 ? 0.01 : o->seconds;
    uint64_t nc = 0, ns = 0, cc = 0, cs = 0, tc = 0, ts = 0;
    double *calm = NULL, *scraped = NULL;
    struct scraper s = {.port = o->port};
    struct ab p50 = {0}, p99 = {0};
    struct bsess b;
    pthread_t t;

    if (o->port == 0)
        die("metrics: --port is required (emad --metrics 127.0.0.1:PORT)");
    bsess_open(&b, o->socket, "bench-metrics", "f32", 1, 16);
    scrape(o->port); /* the endpoint answers before anything is timed */
    if (pthread_create(&t, NULL, scraper_main, &s) != 0)
        die("pthread_create failed");
    for (int w = 0; w < 200; w++)
        bsess_event(&b, "batch_start");
    for (unsigned r = 0; r < o->reps; r++) {
        nc = ns = 0;
        for (int side = 0; side < 2; side++) {
            int scraping = (side == 0) == ab_a_first(r);
            atomic_store(&s.on, scraping);
            if (scraping)
                round_trips(&b, block, &scraped, &ns, &cs);
            else
                round_trips(&b, block, &calm, &nc, &cc);
        }
        tc += nc;
        ts += ns;
        double c50 = quantile(calm, nc, 0.5), c99 = quantile(calm, nc, 0.99);
        double s50 = quantile(scraped, ns, 0.5), s99 = quantile(scraped, ns, 0.99);
        ab_add(&p50, s50, c50, s50 / c50);
        ab_add(&p99, s99, c99, s99 / c99);
    }
    atomic_store(&s.quit, true);
    pthread_join(t, NULL);
    bsess_close(&b);

    rec_begin("metrics");
    rec_int("calm_round_trips", tc);
    rec_int("scraped_round_trips", ts);
    rec_num("seconds", 2 * (double)o->reps * block);
    rec_int("reps", o->reps);
    rec_int("scrapes", s.scrapes);
    rec_int("page_bytes", s.bytes);
    rec_num("calm_p50_us", ab_med_b(&p50) * 1e6);
    rec_num("calm_p99_us", ab_med_b(&p99) * 1e6);
    rec_num("scraped_p50_us", ab_med_a(&p50) * 1e6);
    rec_num("scraped_p99_us", ab_med_a(&p99) * 1e6);
    rec_ab("ratio_p50", &p50);
    rec_ab("ratio_p99", &p99);
    rec_end();
    free(calm);
    free(scraped);
    return 0;
}
