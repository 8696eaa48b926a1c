/*
 * test_metrics.c - emad's metrics (docs/running.md "Metrics") as a client,
 * an operator and Prometheus read them: the metrics request counts what
 * was done and shows a peer other than root its own sessions only; the
 * textfile is replaced whole; the HTTP endpoint answers on TCP and on a
 * Unix socket; and a real Prometheus server scrapes it.
 */
#include "emaclient.h"
#include "segment.h"
#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define N 4096

static int teardown(void **state)
{
    return teardown_seg_left(state);
}

/* The value of the sample whose name and labels are series, or -1 when
 * text has no such sample. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);

    for (const char *l = text; l != NULL && *l != '\0';) {
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
        l = strchr(l, '\n');
        if (l != NULL)
            l++;
    }
    return -1;
}

static char *metrics_of(emac_client *c)
{
    struct emac_error err;
    char *text = NULL;

    if (emac_metrics(c, &text, &err) < 0)
        fail_msg("metrics: %s: %s", err.code, err.message);
    assert_non_null(text);
    return text;
}

static emac_session *session_ok(emac_client *c, const char *name, emac_segment **seg)
{
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_config cfg = {"1ba", false, 0, NULL, NULL};
    struct emac_error err;
    emac_session *s = NULL;

    assert_int_equal(emac_segment_create(&spec, 1, seg, &err), 0);
    if (emac_register(c, name, *seg, &cfg, false, &s, &err) < 0)
        fail_msg("register %s: %s: %s", name, err.code, err.message);
    return s;
}

/* Train "where" on emad d for 6 batches (params changing each batch), swap the EMA in and copy
 * the EMA weights to out (N floats); return the metrics text after it. */
static char *train_and_read_ema(struct daemon *d, float *out)
{
    struct emac_error err;
    struct emac_result r;
    emac_segment *seg = NULL;
    emac_client *c = client_connect(d, "where");
    emac_session *s = session_ok(c, "where", &seg);
    float *w = emac_segment_tensor(seg, 0)->data;

    for (uint64_t b = 1; b <= 6; b++) {
        for (size_t i = 0; i < N; i++)
            w[i] = (float)(b * 0.37 + (double)i * 1e-3) * (i % 2 ? -1.0f : 1.0f);
        r = event_at(s, "batch_end", b);
    }
    assert_int_equal(r.updates, 6);
    assert_int_equal(emac_swap(s, "ema", &r, &err), 0);
    memcpy(out, w, N * sizeof(float));
    assert_true(out[1] != -(float)(6 * 0.37 + 1e-3)); /* the EMA, not the last weights */
    assert_int_equal(emac_swap(s, "train", &r, &err), 0);
    char *text = metrics_of(c);
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
    return text;
}

/* The events' data work of a small session runs on the loop thread (within --inline-max, 12M
 * bytes moved by default), with --inline-max 0 on the workers: the counters say where, and both
 * give the same EMA weights, bit for bit. Six events and three swap phases (in: stash and cast;
 * out: restore) in each. */
static void test_metrics_count_where_event_work_ran(void **state)
{
    static float here[N], there[N];
    struct daemon d;
    (void)state;

    daemon_start(&d, NULL);
    char *text = train_and_read_ema(&d, here);
    assert_true(sample(text, "emad_event_jobs_total{thread=\"loop\"}") == 9);
    assert_true(sample(text, "emad_event_jobs_total{thread=\"workers\"}") == 0);
    free(text);
    daemon_stop(&d);

    daemon_start(&d, (const char *[]){"--inline-max", "0", NULL});
    text = train_and_read_ema(&d, there);
    assert_true(sample(text, "emad_event_jobs_total{thread=\"loop\"}") == 0);
    assert_true(sample(text, "emad_event_jobs_total{thread=\"workers\"}") == 9);
    free(text);
    daemon_stop(&d);
    assert_memory_equal(here, there, sizeof(here));
}

static double jobs(emac_client *c, const char *thread)
{
    char series[64];
    snprintf(series, sizeof(series), "emad_event_jobs_total{thread=\"%s\"}", thread);
    char *text = metrics_of(c);
    double v = sample(text, series);
    free(text);
    return v;
}

/* --inline-max weighs the bytes a phase moves, not the session's elements: with 8 profiles an
 * update of N f32 elements moves 4N + 2 x 8 x 4N bytes and goes to the workers under a limit
 * that its swaps (8N bytes each phase) fit in; and a trainer that declares a params area far
 * larger than its tensors (the stash copies move the whole area) gets its swaps done on the
 * workers, so that it cannot hold the loop, and every other client, for the time of a copy of
 * its choosing. */
static void test_metrics_inline_max_weighs_the_bytes_moved(void **state)
{
    static const char *const limit[] = {"--inline-max", "64K", NULL};
    struct emac_profile prof[8];
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_error err;
    struct emac_result r;
    struct daemon d;
    emac_session *s = NULL;
    char names[8][4];
    (void)state;

    daemon_start(&d, (const char *const *)limit);
    emac_client *c = client_connect(&d, "weigh");
    memset(prof, 0, sizeof(prof));
    for (int p = 0; p < 8; p++) {
        snprintf(names[p], sizeof(names[p]), "p%d", p);
        prof[p].name = names[p];
        prof[p].half_life = "1ba";
    }
    assert_int_equal(emac_segment_create(&spec, 1, &seg_left, &err), 0);
    if (emac_register_profiles(c, "weigh", seg_left, prof, 8, NULL, NULL, false, &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    for (uint64_t b = 1; b <= 3; b++)
        r = event_at(s, "batch_end", b);
    assert_true(jobs(c, "workers") == 3); /* 16K + 2 x 8 x 16K > 64K */
    assert_true(jobs(c, "loop") == 0);
    assert_int_equal(emac_swap(s, "ema", &r, &err), 0);
    assert_int_equal(emac_swap(s, "train", &r, &err), 0);
    assert_true(jobs(c, "loop") == 3); /* stash 2 x 16K, cast 16K + 16K, restore 2 x 16K */
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_segment_destroy(seg_left);
    seg_left = NULL;

    /* One float in a params area of 32 MiB: its updates on the loop, its swaps on the workers. */
    struct emac_tensor_spec one = {"w", "f32", 1, NULL, 0};
    emac_segment *seg = NULL;
    assert_int_equal(emac_segment_create(&one, 1, &seg, &err), 0);
    struct seg_header *h = emac_segment_base(seg);
    uint64_t area = 32u << 20;
    int fd = shm_open(emac_segment_name(seg), O_RDWR, 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)(h->params_offset + 2 * area)), 0);
    close(fd);
    h->params_bytes = area;
    h->stash_offset = h->params_offset + area;
    h->segment_bytes = h->params_offset + 2 * area;
    if (emac_register(c, "wide", seg, &(struct emac_config){"1ba", false, 0, NULL, NULL}, false,
                      &s, &err) < 0)
        fail_msg("register: %s: %s", err.code, err.message);
    double loop0 = jobs(c, "loop"), workers0 = jobs(c, "workers");
    r = event_at(s, "batch_end", 1);
    r = event_at(s, "batch_end", 2);
    assert_true(jobs(c, "loop") == loop0 + 2);
    assert_int_equal(emac_swap(s, "ema", &r, &err), 0);
    assert_int_equal(emac_swap(s, "train", &r, &err), 0);
    assert_true(jobs(c, "workers") == workers0 + 2); /* stash and restore: 64 MiB each */
    assert_true(jobs(c, "loop") == loop0 + 3);       /* the cast: 8 bytes */
    assert_int_equal(emac_close(s, false, &err), 0);
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* ---- a tiny HTTP client: one request, the connection closed after ---- */

struct http_reply {
    int status;      /* 0: no answer */
    char head[2048]; /* the status line and headers */
    char *body;      /* malloc'd, NUL-terminated */
};

/* A loopback port nothing listens on now (the kernel's pick). */
static unsigned free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Send "METHOD target" to 127.0.0.1:port (unix_path NULL) or to the Unix
 * socket unix_path; read the whole answer (up to WAIT_MS per read). false
 * when nothing listens there. */
static bool http(const char *unix_path, unsigned port, const char *method, const char *target,
                 struct http_reply *r)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char req[1024];
    size_t used = 0, cap = 1 << 16;
    char *buf;
    int fd;

    memset(r, 0, sizeof(*r));
    memset(&ss, 0, sizeof(ss));
    if (unix_path != NULL) {
        struct sockaddr_un *sa = (struct sockaddr_un *)&ss;
        sa->sun_family = AF_UNIX;
        snprintf(sa->sun_path, sizeof(sa->sun_path), "%s", unix_path);
        len = sizeof(*sa);
    } else {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
        sa->sin_family = AF_INET;
        sa->sin_port = htons((uint16_t)port);
        sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(*sa);
    }
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
        close(fd);
        return false;
    }
    snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
             method, target);
    send_bytes(fd, req, strlen(req));
    assert_non_null(buf = malloc(cap));
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, WAIT_MS) <= 0)
            fail_msg("HTTP %s %s: no answer within %d ms", method, target, WAIT_MS);
        if (used + 4096 > cap)
            assert_non_null(buf = realloc(buf, cap *= 2));
        ssize_t n = read(fd, buf + used, cap - used - 1);
        assert_true(n >= 0);
        if (n == 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    buf[used] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    assert_non_null(end);
    snprintf(r->head, sizeof(r->head), "%.*s", (int)(end - buf), buf);
    assert_int_equal(sscanf(buf, "HTTP/1.%*d %d", &r->status), 1);
    r->body = strdup(end + 4);
    free(buf);
    return true;
}

/* GET /metrics until sample `series` of the page is want: emad starts
 * serving just after its socket listens (until then: nothing listens, or
 * 503), and an operation's count reaches the page within a second. No
 * timing is asserted, only an outer bound. */
static void http_wait_for(const char *unix_path, unsigned port, const char *series, double want)
{
    struct http_reply r;
    double got = -1;
    int status = 0;

    for (int waited = 0; waited < 3 * WAIT_MS; waited += 50) {
        if (http(unix_path, port, "GET", "/metrics", &r)) {
            status = r.status;
            assert_true(status == 200 || status == 503);
            got = status == 200 ? sample(r.body, series) : -1;
            free(r.body);
            if (got == want)
                return;
        }
        sleep_ms(50);
    }
    fail_msg("%s stayed %g on the HTTP page (status %d), expected %g", series, got, status, want);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    char *text;
    size_t n;

    if (f == NULL)
        return NULL;
    assert_non_null(text = malloc(1 << 20));
    n = fread(text, 1, (1 << 20) - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

/* Register "m" and apply updates events (batch_end at 1..updates, half-life
 * 1ba: each an update). */
static emac_session *updated_session(emac_client *c, int updates)
{
    emac_session *s = session_ok(c, "m", &seg_left);
    struct emac_result r = {0};

    for (int b = 1; b <= updates; b++)
        r = event_at(s, "batch_end", (uint64_t)b);
    assert_int_equal(r.updates, (uint64_t)updates);
    return s;
}

/* promtool (Debian's prometheus package) agrees that text is a valid
 * exposition; skipped where it is not installed. */
static void promtool_accepts(const struct daemon *d, const char *text)
{
    char path[200], out[8192];
    FILE *f;

    if (access("/usr/bin/promtool", X_OK) != 0) {
        print_message("promtool not installed (apt-get install prometheus): format not checked "
                      "by it\n");
        return;
    }
    snprintf(path, sizeof(path), "%s/metrics.txt", d->dir);
    assert_non_null(f = fopen(path, "w"));
    fputs(text, f);
    fclose(f);
    char *argv[] = {"sh", "-c", "exec promtool check metrics < \"$0\"", path, NULL};
    int status = run_capture(argv, NULL, out, sizeof(out));
    if (status != 0)
        fail_msg("promtool check metrics failed (%d):\n%s", status, out);
}

/* Updates, swaps, saves and errors are counted as they happen. */
static void test_metrics_count_what_was_done(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    struct emac_file file;
    struct emac_status *st;
    char series[256];
    (void)state;

    daemon_start(&d, NULL);
    /* The hello reply lists the feature. */
    int fd = try_connect(d.sock);
    assert_true(fd >= 0);
    send_hello(fd, 1, 1, "test_metrics");
    char hello[4096];
    size_t got = 0;
    while (got < sizeof(hello) && memmem(hello, got, "\xa7metrics", 8) == NULL) {
        struct pollfd p = {fd, POLLIN, 0};
        assert_true(poll(&p, 1, WAIT_MS) == 1);
        ssize_t n = read(fd, hello + got, sizeof(hello) - got);
        assert_true(n > 0); /* the reply ends before the feature: it is missing */
        got += (size_t)n;
    }
    assert_non_null(memmem(hello, got, "\xa7metrics", 8));
    close(fd);

    emac_client *c = client_connect(&d, "test_metrics");
    char *text = metrics_of(c);
    assert_true(sample(text, "emad_updates_total") == 0);
    assert_true(sample(text, "emad_errors_total{code=\"NOSESSION\"}") == 0);
    assert_true(sample(text, "emad_connections") == 1);
    assert_non_null(strstr(text, "emad_build_info{version=\""));
    double started = sample(text, "emad_start_time_seconds");
    assert_true(started > 1e9);
    free(text);

    emac_session *s = session_ok(c, "counted", &seg_left);
    for (uint64_t b = 1; b <= 5; b++)
        r = event_at(s, "batch_end", b);
    assert_true(r.updates > 0);
    assert_int_equal(emac_swap(s, "ema", &r, &err), 0);
    assert_int_equal(emac_swap(s, "train", &r, &err), 0);
    assert_int_equal(emac_save(c, "counted", "m1", &file, &err), 0);
    /* Errors: two NOSESSION, one STATE (drop of an attached session). */
    assert_int_equal(emac_status(c, "nosuch", &st, &err), -EREMOTEIO);
    assert_int_equal(emac_drop(c, "nosuch", &err), -EREMOTEIO);
    assert_int_equal(emac_drop(c, "counted", &err), -EREMOTEIO);
    assert_string_equal(err.code, "STATE");

    text = metrics_of(c);
    /* The same start time, to the bit, at every scrape: changes() would fire otherwise. */
    assert_true(sample(text, "emad_start_time_seconds") == started);
    assert_true(sample(text, "emad_updates_total") == (double)r.updates);
    assert_true(sample(text, "emad_update_duration_seconds_count") == (double)r.updates);
    assert_true(sample(text, "emad_update_duration_seconds_bucket{le=\"+Inf\"}") ==
                (double)r.updates);
    assert_true(sample(text, "emad_update_bytes_total") == (double)r.updates * N * 4);
    assert_true(sample(text, "emad_swaps_total{direction=\"in\"}") == 1);
    assert_true(sample(text, "emad_swaps_total{direction=\"out\"}") == 1);
    assert_true(sample(text, "emad_registers_total") == 1);
    assert_true(sample(text, "emad_errors_total{code=\"NOSESSION\"}") == 2);
    assert_true(sample(text, "emad_errors_total{code=\"STATE\"}") == 1);
    assert_true(sample(text, "emad_errors_total{code=\"BADARG\"}") == 0);
    assert_true(
        sample(text, "emad_state_file_operations_total{operation=\"save\",result=\"ok\"}") == 1);
    assert_true(sample(text, "emad_state_file_duration_seconds_count{operation=\"save\"}") == 1);
    assert_true(sample(text, "emad_sessions{state=\"attached\"}") == 1);
    snprintf(series, sizeof(series), "emad_session_last_update_batch{session=\"%u:counted\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 5);
    snprintf(series, sizeof(series), "emad_session_lag_batches{session=\"%u:counted\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 0);
    snprintf(series, sizeof(series), "emad_session_shadow_bytes{session=\"%u:counted\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == (double)emac_session_state(s)->shadow_bytes);
    promtool_accepts(&d, text);
    free(text);

    /* A resume is counted as one. */
    assert_int_equal(emac_close(s, true, &err), 0);
    emac_session_free(s);
    struct emac_config cfg = {"1ba", false, 0, NULL, NULL};
    assert_int_equal(emac_register(c, "counted", seg_left, &cfg, true, &s, &err), 0);
    text = metrics_of(c);
    assert_true(sample(text, "emad_resumes_total") == 1);
    assert_true(sample(text, "emad_registers_total") == 1);
    free(text);

    /* emactl metrics prints the same text; with --json, inside {"text": ...}. */
    char out[65536];
    char *plain[] = {(char *)emactl_bin(), "--socket", d.sock, "metrics", NULL};
    assert_int_equal(run_capture(plain, NULL, out, sizeof(out)), 0);
    assert_true(sample(out, "emad_resumes_total") == 1);
    assert_non_null(strstr(out, "# TYPE emad_errors_total counter\n"));
    char *json[] = {(char *)emactl_bin(), "--socket", d.sock, "metrics", "--json", NULL};
    assert_int_equal(run_capture(json, NULL, out, sizeof(out)), 0);
    expect_in(out, "\"text\": \"# HELP emad_build_info ");
    expect_in(out, "\\nemad_resumes_total 1\\n");
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* Events sent while the workers are held (the test hook stalls the first
 * update's chunk for 5 s: register is two chunks) show as queued
 * operations and as the session's lag; once applied, they do not. */
static void test_metrics_show_the_queue_and_the_lag(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_result r;
    emac_ticket tickets[3];
    char series[128];
    (void)state;

    make_dir(&d);
    daemon_start_env(&d, NULL,
                     (char *[]){"EMAD_TEST_STALL_MS=5000", "EMAD_TEST_STALL_AFTER=2", NULL});
    emac_client *c = client_connect(&d, "trainer");
    emac_client *watcher = client_connect(&d, "watcher");
    emac_session *s = session_ok(c, "lagging", &seg_left);
    for (uint64_t b = 1; b <= 3; b++) {
        struct emac_time t = {b, 0, false, 0};
        assert_int_equal(emac_event_send(s, "batch_end", &t, &tickets[b - 1], &err), 0);
    }
    /* Until emad has read the three (the watcher's connection may be read
     * first), while the first stalls. */
    snprintf(series, sizeof(series), "emad_session_lag_batches{session=\"%u:lagging\"}",
             (unsigned)geteuid());
    char *text = metrics_of(watcher);
    for (int i = 0; i < 20 && sample(text, series) != 3; i++) {
        free(text);
        sleep_ms(50);
        text = metrics_of(watcher);
    }
    if (sample(text, series) != 3)
        fail_msg("lag %g, expected 3:\n%s", sample(text, series), text);
    snprintf(series, sizeof(series), "emad_session_queued_operations{session=\"%u:lagging\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 3);
    assert_true(sample(text, "emad_queued_operations") == 3);
    assert_true(sample(text, "emad_updates_total") == 0);
    free(text);
    for (int i = 0; i < 3; i++)
        assert_int_equal(emac_event_wait(s, tickets[i], &r, &err), 0);
    text = metrics_of(watcher);
    assert_true(sample(text, series) == 0);
    assert_true(sample(text, "emad_queued_operations") == 0);
    snprintf(series, sizeof(series), "emad_session_lag_batches{session=\"%u:lagging\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 0);
    snprintf(series, sizeof(series), "emad_session_batch{session=\"%u:lagging\"}",
             (unsigned)geteuid());
    assert_true(sample(text, series) == 3);
    assert_true(sample(text, "emad_updates_total") == (double)r.updates);
    free(text);
    emac_session_free(s);
    emac_disconnect(watcher);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* As another uid (run_as_uid()): register "theirs", ask for the metrics:
 * its own session's series, none of root's. */
static void other_uid_metrics(const void *sock, struct verdict *v)
{
    struct emac_tensor_spec spec = {"w", "f32", N, NULL, 0};
    struct emac_error err;
    emac_client *c = NULL;
    emac_segment *seg = NULL;
    emac_session *s = NULL;
    char *text = NULL;

    CHILD_CHECK(v, emac_connect(sock, "other uid", &c, &err) == 0, "connect: %s", err.message);
    CHILD_CHECK(v, emac_segment_create(&spec, 1, &seg, &err) == 0, "segment: %s", err.message);
    CHILD_CHECK(v, emac_register(c, "theirs", seg, NULL, false, &s, &err) == 0, "register: %s: %s",
                err.code, err.message);
    CHILD_CHECK(v, emac_metrics(c, &text, &err) == 0, "metrics: %s: %s", err.code, err.message);
    CHILD_CHECK(v, strstr(text, "session=\"65534:theirs\"") != NULL,
                "its own session's series are missing:\n%.4000s", text);
    CHILD_CHECK(v, strstr(text, "roots-secret") == NULL, "root's session is shown to it:\n%.4000s",
                text);
    CHILD_CHECK(v, sample(text, "emad_sessions{state=\"attached\"}") == 2,
                "the global series do not count every session:\n%.4000s", text);
    CHILD_CHECK(v, emac_close(s, false, &err) == 0, "close: %s", err.message);
out:
    free(text);
    emac_session_free(s);
    emac_segment_destroy(seg);
    emac_disconnect(c);
}

/* Session names are their owners' data: through the socket, a peer other
 * than root sees the per-session series of its own sessions only; root
 * sees every session's. */
static void test_metrics_show_other_uids_their_own_sessions_only(void **state)
{
    struct daemon d;
    (void)state;

    if (geteuid() != 0)
        skip();
    daemon_start_open(&d, "nogroup");
    emac_client *c = client_connect(&d, "test_metrics");
    emac_session *s = session_ok(c, "roots-secret", &seg_left);
    run_as_uid(65534, 65534, other_uid_metrics, d.sock);
    char *text = metrics_of(c);
    assert_true(sample(text, "emad_session_shadow_bytes{session=\"0:roots-secret\"}") ==
                (double)emac_session_state(s)->shadow_bytes);
    /* theirs was closed: gone from root's view too. */
    assert_null(strstr(text, "65534:theirs"));
    free(text);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* --metrics-textfile: written at start and every --metrics-interval, whole
 * each time (renamed into place), mode 0644, no temporary file left. */
static void test_metrics_textfile_is_replaced_whole(void **state)
{
    struct daemon d;
    char path[200], opt[220];
    struct stat st;
    double got = -1;
    (void)state;

    make_dir(&d);
    snprintf(path, sizeof(path), "%s/emad.prom", d.dir);
    snprintf(opt, sizeof(opt), "--metrics-textfile=%s", path);
    const char *const extra[] = {opt, "--metrics-interval", "1", NULL};
    daemon_start_env(&d, extra, NULL);
    /* The first write is at start, just after the socket listens. */
    char *text = NULL;
    for (int waited = 0; waited < WAIT_MS && (text = read_file(path)) == NULL; waited += 20)
        sleep_ms(20);
    assert_non_null(text);
    assert_true(sample(text, "emad_updates_total") == 0);
    free(text);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);

    emac_client *c = client_connect(&d, "test_metrics");
    emac_session *s = updated_session(c, 3);
    /* Each read finds a whole exposition (its last family included), never
     * a file cut short, until the interval's write shows the updates. */
    for (int waited = 0; waited < 3 * WAIT_MS && got != 3; waited += 50) {
        assert_non_null(text = read_file(path));
        assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
        assert_non_null(strstr(text, "# TYPE emad_session_shadow_bytes gauge\n"));
        got = sample(text, "emad_updates_total");
        if (got != 3)
            free(text);
        sleep_ms(50);
    }
    if (got != 3)
        fail_msg("emad_updates_total in %s stayed at %g, expected 3", path, got);
    promtool_accepts(&d, text);
    free(text);
    DIR *dir = opendir(d.dir);
    assert_non_null(dir);
    for (struct dirent *e = readdir(dir); e != NULL; e = readdir(dir))
        if (strstr(e->d_name, ".tmp") != NULL)
            fail_msg("a temporary file is left beside the textfile: %s", e->d_name);
    closedir(dir);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

/* A textfile emad cannot write does not stop it: one warning, and the
 * socket still serves. */
static void test_metrics_textfile_unwritable_is_logged_once(void **state)
{
    struct daemon d;
    (void)state;

    const char *const extra[] = {"--metrics-textfile=/nonexistent-dir/emad.prom",
                                 "--metrics-interval=1", NULL};
    daemon_start(&d, extra);
    emac_client *c = client_connect(&d, "test_metrics");
    char *text = metrics_of(c);
    free(text);
    emac_disconnect(c);
    assert_int_equal(count_lines(d.log, "--metrics-textfile /nonexistent-dir/emad.prom: cannot "
                                        "write it: No such file or directory"),
                     1);
    daemon_stop(&d);
}

/* GET /metrics on a loopback port: the page, its content type, and the
 * counts as they change; 404 elsewhere, 405 for other methods. */
static void test_metrics_http_on_tcp(void **state)
{
    struct daemon d;
    struct http_reply r;
    char opt[64];
    unsigned port = free_port();
    (void)state;

    snprintf(opt, sizeof(opt), "--metrics=127.0.0.1:%u", port);
    const char *const extra[] = {opt, NULL};
    daemon_start(&d, extra);
    http_wait_for(NULL, port, "emad_updates_total", 0);
    assert_true(http(NULL, port, "GET", "/metrics", &r));
    assert_int_equal(r.status, 200);
    if (strstr(r.head, "Content-Type: text/plain; version=0.0.4; charset=utf-8") == NULL)
        fail_msg("wrong content type:\n%s", r.head);
    assert_true(sample(r.body, "emad_updates_total") == 0);
    promtool_accepts(&d, r.body);
    free(r.body);
    assert_true(http(NULL, port, "GET", "/", &r));
    assert_int_equal(r.status, 404);
    free(r.body);
    assert_true(http(NULL, port, "GET", "/metricsx", &r));
    assert_int_equal(r.status, 404);
    free(r.body);
    assert_true(http(NULL, port, "POST", "/metrics", &r));
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head, "Allow: GET, HEAD"));
    free(r.body);

    emac_client *c = client_connect(&d, "test_metrics");
    emac_session *s = updated_session(c, 4);
    char series[128];
    snprintf(series, sizeof(series), "emad_session_last_update_batch{session=\"%u:m\"}",
             (unsigned)geteuid());
    http_wait_for(NULL, port, "emad_updates_total", 4);
    http_wait_for(NULL, port, series, 4);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
    /* Stopped with emad: nothing listens there any more. */
    assert_false(http(NULL, port, "GET", "/metrics", &r));
}

/* --metrics PATH: a Unix socket, 0600, removed at exit. */
static void test_metrics_http_on_a_unix_socket(void **state)
{
    struct daemon d;
    struct http_reply r;
    char path[200], opt[220];
    struct stat st;
    (void)state;

    make_dir(&d);
    snprintf(path, sizeof(path), "%s/metrics.sock", d.dir);
    snprintf(opt, sizeof(opt), "--metrics=%s", path);
    const char *const extra[] = {opt, NULL};
    daemon_start_env(&d, extra, NULL);
    http_wait_for(path, 0, "emad_updates_total", 0);
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(http(path, 0, "GET", "/metrics", &r));
    assert_int_equal(r.status, 200);
    assert_true(sample(r.body, "emad_updates_total") == 0);
    free(r.body);
    emac_client *c = client_connect(&d, "test_metrics");
    emac_session *s = updated_session(c, 2);
    http_wait_for(path, 0, "emad_updates_total", 2);
    emac_session_free(s);
    emac_disconnect(c);
    kill(d.pid, SIGTERM);
    check_daemon_stderr(&d, wait_exit(d.pid));
    d.pid = 0;
    assert_int_equal(lstat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    remove_tree(d.dir);
}

/* The real thing: Debian's Prometheus server scrapes emad --metrics every
 * second, and its query API returns the updates the test made. */
static void test_metrics_prometheus_scrapes_emad(void **state)
{
    struct daemon d;
    struct http_reply r;
    char opt[64], conf[200], tsdb[200], listen[64], logpath[200], want[64], query[256];
    unsigned port = free_port(), prom_port;
    (void)state;

    if (access("/usr/bin/prometheus", X_OK) != 0) {
        print_message("prometheus not installed (apt-get install prometheus)\n");
        skip();
    }
    snprintf(opt, sizeof(opt), "--metrics=127.0.0.1:%u", port);
    const char *const extra[] = {opt, NULL};
    daemon_start(&d, extra);
    emac_client *c = client_connect(&d, "test_metrics");
    emac_session *s = updated_session(c, 7);

    snprintf(conf, sizeof(conf), "%s/prometheus.yml", d.dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: emad\n    static_configs:\n"
            "      - targets: ['127.0.0.1:%u']\n",
            port);
    fclose(f);
    snprintf(tsdb, sizeof(tsdb), "--storage.tsdb.path=%s/tsdb", d.dir);
    do
        prom_port = free_port();
    while (prom_port == port);
    snprintf(listen, sizeof(listen), "--web.listen-address=127.0.0.1:%u", prom_port);
    char cfg_opt[240];
    snprintf(cfg_opt, sizeof(cfg_opt), "--config.file=%s", conf);
    snprintf(logpath, sizeof(logpath), "%s/prometheus.log", d.dir);
    int log_fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(log_fd >= 0);
    char *argv[] = {"/usr/bin/prometheus", cfg_opt, tsdb, listen, NULL};
    pid_t prom = spawn(argv, NULL, log_fd, log_fd);
    close(log_fd);

    /* Up to a minute: the server starts, scrapes, and the sample becomes
     * queryable; on a loaded machine each step takes a while. */
    snprintf(want, sizeof(want), "\"7\"]");
    snprintf(query, sizeof(query), "/api/v1/query?query=emad_updates_total");
    bool found = false;
    char last[512] = "(no answer)";
    for (int waited = 0; waited < 6 * WAIT_MS && !found; waited += 250) {
        if (http(NULL, prom_port, "GET", query, &r)) {
            snprintf(last, sizeof(last), "%.500s", r.body);
            found = r.status == 200 && strstr(r.body, "\"job\":\"emad\"") != NULL &&
                    strstr(r.body, want) != NULL;
            free(r.body);
        }
        if (!found)
            sleep_ms(250);
    }
    kill(prom, SIGTERM);
    wait_exit(prom);
    if (!found)
        fail_msg("Prometheus never returned emad_updates_total 7; its last answer: %s (its log: "
                 "%s)",
                 last, logpath);
    emac_session_free(s);
    emac_disconnect(c);
    daemon_stop(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_metrics_count_what_was_done, teardown),
        cmocka_unit_test_teardown(test_metrics_show_other_uids_their_own_sessions_only, teardown),
        cmocka_unit_test_teardown(test_metrics_show_the_queue_and_the_lag, teardown),
        cmocka_unit_test_teardown(test_metrics_count_where_event_work_ran, teardown),
        cmocka_unit_test_teardown(test_metrics_inline_max_weighs_the_bytes_moved, teardown),
        cmocka_unit_test_teardown(test_metrics_textfile_is_replaced_whole, teardown),
        cmocka_unit_test_teardown(test_metrics_textfile_unwritable_is_logged_once, teardown),
        cmocka_unit_test_teardown(test_metrics_http_on_tcp, teardown),
        cmocka_unit_test_teardown(test_metrics_http_on_a_unix_socket, teardown),
        cmocka_unit_test_teardown(test_metrics_prometheus_scrapes_emad, teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
