/*
 * test_limits.c - what hostile or careless peers cannot do to emad's
 * resources: unread replies are bounded per connection and in all, and so
 * are requests sent in part (measured as emad's resident memory), a stop
 * answers what it received and cannot be held by a peer that does not
 * read, and the open-file limit fits --max-connections (every refused peer
 * hears LIMIT and is counted in the log, none is dropped silently).
 *
 * emad runs under the shared harness (harness.h), as in test_daemon.c.
 */
#include "harness.h"

#include "emaclient.h"
#include "msg.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <cmocka.h>

#define KIB 1024L
#define MIB (1024L * 1024L)

/* ---- helpers ---- */

/* A raw connection that has said hello. */
static int raw_hello(const char *sock)
{
    return hello_connect(sock, "test_limits", NULL);
}

/* Close those of the n fds that are open (not -1). */
static void close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

/* count requests of method (empty params), msgids from 100 on. */
static void pack_requests(msgpack_sbuffer *sb, const char *method, uint32_t count)
{
    msgpack_packer pk;

    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    for (uint32_t i = 0; i < count; i++) {
        wire_pack_request_head(&pk, 100 + i, method);
        msgpack_pack_map(&pk, 0);
    }
}

/* emad's resident memory, in bytes. */
static long rss_bytes(pid_t pid)
{
    long kib = proc_value(pid, "status", "VmRSS: %ld kB");

    assert_true(kib > 0);
    return kib * KIB;
}

/* Pipeline the requests in reqs on every fd without reading a reply, until
 * emad has stopped reading each of them ("reading paused" logged n times). */
static void flood_until_paused(const struct daemon *d, const int *fds, int n,
                               const msgpack_sbuffer *reqs)
{
    size_t sent[64] = {0};

    assert_true(n <= 64);
    for (int i = 0; i < n; i++)
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    for (int round = 0;; round++) {
        for (int i = 0; i < n; i++) {
            ssize_t w = send(fds[i], reqs->data + sent[i], reqs->size - sent[i], MSG_NOSIGNAL);
            if (w > 0)
                sent[i] += (size_t)w;
            /* Every byte taken and still not paused: the test sends too little. */
            assert_true(sent[i] < reqs->size);
        }
        if (round % 20 == 19 && count_lines(d->log, "reading paused") >= n)
            break;
        assert_true(round < 6 * WAIT_MS);
        sleep_ms(1);
    }
}

/* ASan keeps freed memory in quarantine (256 MiB by default) on purpose:
 * its RSS would measure that, not emad. Other builds ignore the variable. */
static char asan_env[512];
static char *const *rss_env(void)
{
    static char *envs[2];
    const char *old = getenv("ASAN_OPTIONS");

    snprintf(asan_env, sizeof(asan_env), "ASAN_OPTIONS=%s%squarantine_size_mb=1",
             old ? old : "", old && old[0] ? ":" : "");
    envs[0] = asan_env;
    envs[1] = NULL;
    return envs;
}

/* ---- unread replies ---- */

/* Start emad (make_dir(d)) with the options extra, its memory measured as
 * rss_env() allows; n peers (fds) say hello, then pipeline count requests
 * of method without reading a reply, until emad stops reading each. Assert
 * that emad's resident memory grew by less than bound bytes meanwhile. */
static void flood_and_expect_growth_below(struct daemon *d, const char *const extra[], int *fds,
                                          int n, const char *method, uint32_t count, long bound)
{
    msgpack_sbuffer reqs;

    make_dir(d);
    daemon_start_env(d, extra, rss_env());
    for (int i = 0; i < n; i++)
        fds[i] = raw_hello(d->sock);
    long before = rss_bytes(d->pid);
    pack_requests(&reqs, method, count);
    flood_until_paused(d, fds, n, &reqs);
    long grown = rss_bytes(d->pid) - before;
    print_message("emad grew by %ld KiB with %d peers not reading (bound %ld KiB)\n",
                  grown / KIB, n, bound / KIB);
    assert_true(grown < bound);
    msgpack_sbuffer_destroy(&reqs);
}

/*
 * Peers pipeline tiny requests without reading: what emad allocates for
 * their replies is what --max-pending bounds (it once counted the payload
 * only, and queued each reply in its own 8 KiB buffer: 1.6 GB for one peer
 * at the default 16M). Bound: twice --max-pending per connection (a buffer
 * doubles as it grows), plus its read buffer, plus slack for the allocator.
 */
static void test_unread_replies_memory_is_bounded_per_connection(void **state)
{
    struct daemon d;
    enum { NCONN = 16 };
    const long max_pending = 64 * KIB;
    int fds[NCONN];
    (void)state;

    /* Unknown methods: the smallest replies (NOMETHOD), the most of them. */
    flood_and_expect_growth_below(&d, (const char *const[]){"--max-pending", "64K", NULL}, fds,
                                  NCONN, "x", 400000,
                                  NCONN * (2 * max_pending + 256 * KIB) + 24 * MIB);
    close_all(fds, NCONN);
    daemon_stop_unlinked(&d);
}

/*
 * Many peers, each under its own --max-pending (the default 16M), together
 * reach --max-pending-total: the heaviest stop being read, and emad's memory
 * stays near the total; a peer that reads is still served.
 */
static void test_unread_replies_memory_is_bounded_across_connections(void **state)
{
    struct daemon d;
    enum { NCONN = 32 };
    const long total = 1 * MIB;
    int fds[NCONN];
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    (void)state;

    flood_and_expect_growth_below(&d, (const char *const[]){"--max-pending-total", "1M", NULL},
                                  fds, NCONN, "status", 200000,
                                  2 * total + NCONN * 256 * KIB + 24 * MIB);
    assert_true(file_contains(d.log, "reading paused (--max-pending-total)"));
    /* A peer that reads its replies holds none: it is served. */
    assert_int_equal(emac_connect(d.sock, "reader", &c, &err), 0);
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    emac_status_free(st);
    emac_disconnect(c);
    close_all(fds, NCONN);
    daemon_stop_unlinked(&d);
}

/* ---- stopping ---- */

#define NT 4096
static const struct emac_tensor_spec specs[] = {
    {"w", "f32", NT, NULL, 0},
};

/*
 * A trainer pipelines 8 numbered batch_end, then emad gets SIGTERM while
 * the updates run (a worker chunk stalls): every update received before the
 * stop is applied AND answered before the connection closes (it used to be
 * applied and its reply dropped).
 */
static void test_stop_answers_the_requests_received_before_it(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_reconnect rc;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    emac_ticket tickets[8];
    (void)state;

    make_dir(&d);
    /* Register takes two chunks; the first update's stalls. */
    daemon_start_env(&d, NULL, (char *[]){"EMAD_TEST_STALL_MS=3000", "EMAD_TEST_STALL_AFTER=2",
                                           NULL});
    emac_client *c = client_connect(&d, "test_limits");
    emac_reconnect_defaults(&rc);
    rc.enabled = false;
    assert_int_equal(emac_set_reconnect(c, &rc, &err), 0);
    assert_int_equal(emac_segment_create(specs, 1, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "stopping", seg_left, NULL, false, &s, &err), 0);
    for (int i = 0; i < 8; i++) {
        struct emac_time t = {(uint64_t)i + 1, 0, false, 0};
        assert_int_equal(emac_event_send(s, "batch_end", &t, &tickets[i], &err), 0);
    }
    /* Status is answered at once, after emad has read the 8 events before it. */
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    emac_status_free(st);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    for (int i = 0; i < 8; i++) {
        struct emac_result r;
        if (emac_event_wait(s, tickets[i], &r, &err) < 0)
            fail_msg("batch_end %d: %s: %s", i + 1, err.code, err.message);
        assert_int_equal(r.updates, i + 1);
    }
    check_daemon_stderr(&d, wait_exit(d.pid));
    assert_true(file_contains(d.log, "stopped"));
    emac_session_free(s);
    emac_disconnect(c);
    remove_tree(d.dir);
}

/*
 * A peer that pipelines requests and never reads cannot hold the stop: its
 * connection is closed SERVER_FLUSH_TIMEOUT_MS (5 s) after the work ended,
 * with a log line, and emad exits 0.
 */
static void test_stop_does_not_wait_for_a_peer_that_does_not_read(void **state)
{
    struct daemon d;
    msgpack_sbuffer reqs;
    int fd;
    (void)state;

    daemon_start(&d, (const char *const[]){"--max-pending", "64K", NULL});
    fd = raw_hello(d.sock);
    pack_requests(&reqs, "status", 100000);
    flood_until_paused(&d, &fd, 1, &reqs);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    check_daemon_stderr(&d, wait_exit(d.pid));
    assert_true(file_contains(d.log, "did not read"));
    msgpack_sbuffer_destroy(&reqs);
    close(fd);
    remove_tree(d.dir);
}

/* ---- requests queued on a session ---- */

/* Requests of the flood behind the stalled update. */
#define FLOOD 20000

/*
 * While its session is busy with a long update (a worker chunk stalls), a
 * peer pipelines thousands of cheap events and reads every reply. Each
 * becomes a queued operation many times the size of the request (it used
 * to be 75 times, without bound: 20000 events took over 100 MB); now at
 * --max-queued-requests emad stops reading the connection, and resumes at
 * half. Bound on emad's peak growth: --max-pending (16M by default), which
 * the queued operations also count against. Every reply comes, in order.
 */
static void test_requests_queued_on_a_session_are_bounded(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct msg_hello hello = {1, msg_str_c("test_limits"), false, 0};
    struct msg_tensor t[1];
    struct msg_register reg;
    struct msg_event end = {msg_str_c("queued"), msg_str_c("batch_end"), {.batch = 1},
                            false, 0};
    struct msg_event start = {msg_str_c("queued"), msg_str_c("batch_start"), {.batch = 1},
                              false, 0};
    struct wire_decoder dec;
    struct reply r;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char *envs[4];
    (void)state;

    make_dir(&d);
    envs[0] = rss_env()[0];
    envs[1] = "EMAD_TEST_STALL_MS=3000"; /* register is two chunks; the update's stalls */
    envs[2] = "EMAD_TEST_STALL_AFTER=2";
    envs[3] = NULL;
    daemon_start_env(&d, (const char *const[]){"--max-queued-requests", "64", NULL}, envs);
    assert_int_equal(emac_segment_create(specs, 1, &seg_left, &err), 0);
    register_msg(&reg, t, 1, "queued", seg_left);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 1, "hello");
    msg_encode(&pk, &msg_hello_desc, &hello);
    wire_pack_request_head(&pk, 2, "register");
    msg_encode(&pk, &msg_register_desc, &reg);
    int fd = try_connect(d.sock);
    assert_true(fd >= 0);
    send_bytes(fd, sb.data, sb.size);
    wire_decoder_init(&dec, 1u << 24, 8);
    for (uint32_t id = 1; id <= 2; id++) {
        read_reply_dec(fd, &dec, &r);
        assert_false(r.eof);
        assert_int_equal(r.msgid, id);
        assert_string_equal(r.code, "");
    }
    long before = rss_bytes(d.pid);

    /* The update that stalls, then the flood: msgids 3, 4 ... */
    sb.size = 0;
    wire_pack_request_head(&pk, 3, "event");
    msg_encode(&pk, &msg_event_desc, &end);
    for (uint32_t i = 0; i < FLOOD; i++) {
        wire_pack_request_head(&pk, 4 + i, "event");
        msg_encode(&pk, &msg_event_desc, &start);
    }
    size_t sent = 0;
    uint32_t next = 3;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    while (next < 4 + FLOOD) {
        struct pollfd p = {fd, POLLIN | (sent < sb.size ? POLLOUT : 0), 0};
        assert_true(poll(&p, 1, WAIT_MS) > 0);
        if (sent < sb.size && (p.revents & POLLOUT)) {
            ssize_t w = send(fd, sb.data + sent, sb.size - sent, MSG_NOSIGNAL);
            assert_true(w > 0 || errno == EAGAIN);
            if (w > 0)
                sent += (size_t)w;
        }
        if (!(p.revents & (POLLIN | POLLHUP)))
            continue;
        /* One reply, then those the decoder already holds (or has begun:
         * emad writes the rest of a reply it began, whatever the peer sends). */
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        do {
            read_reply_dec(fd, &dec, &r);
            assert_false(r.eof);
            assert_int_equal(r.kind, WIRE_RESPONSE);
            if (r.msgid != next || r.code[0] != '\0')
                fail_msg("reply %u (expected %u): %s %s", r.msgid, next, r.code, r.message);
            next++;
        } while (next < 4 + FLOOD && wire_decoder_pending(&dec) > 0);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    }
    long peak = proc_value(d.pid, "status", "VmHWM: %ld kB") * KIB;
    print_message("emad's peak grew by %ld KiB over %d queued events (bound %ld KiB)\n",
                  (peak - before) / KIB, FLOOD, 16 * MIB / KIB);
    assert_true(peak - before < 16 * MIB);
    assert_true(file_contains(d.log, "reading paused (--max-queued-requests)"));
    wire_decoder_free(&dec);
    msgpack_sbuffer_destroy(&sb);
    close(fd);
    daemon_stop(&d);
}

/* ---- connections of one uid, and without hello ---- */

/* Which connections a hog of another uid makes: ok of them are admitted,
 * the next is refused with LIMIT and a message holding refused_for. */
struct hog {
    const char *sock;
    int ok;
    const char *refused_for;
};

/* As uid 65534 (in a child of fork()): make hog's connections, write 0 to
 * done (or the line of the failed check), then hold them until hold is
 * closed. */
static void hog_connections(const struct hog *h, int done, int hold)
{
    emac_client *c[16] = {NULL};
    struct emac_error err;
    int line = 0;
    char b;

    if (setgroups(0, NULL) != 0 || setresgid(65534, 65534, 65534) != 0 ||
        setresuid(65534, 65534, 65534) != 0)
        line = __LINE__;
    for (int i = 0; line == 0 && i < h->ok; i++)
        if (emac_connect(h->sock, "hog", &c[i], &err) != 0) {
            fprintf(stderr, "hog: connection %d: %s: %s\n", i + 1, err.code, err.message);
            line = __LINE__;
        }
    if (line == 0) {
        int rc = emac_connect(h->sock, "hog", &c[h->ok], &err);
        if (rc != -EREMOTEIO || strcmp(err.code, "LIMIT") != 0 ||
            !strstr(err.message, h->refused_for)) {
            fprintf(stderr, "hog: connection %d: %d %s: %s\n", h->ok + 1, rc,
                    rc < 0 ? err.code : "", rc < 0 ? err.message : "admitted");
            line = __LINE__;
        }
    }
    if (write(done, &line, sizeof(line)) != (ssize_t)sizeof(line))
        _exit(1);
    while (read(hold, &b, 1) > 0)
        ;
    for (int i = 0; i < 16; i++)
        if (c[i] != NULL)
            emac_disconnect(c[i]);
    _exit(0);
}

/* Start emad (open to uid 65534, of group nogroup) with extra (at most 7
 * arguments); uid 65534 takes what hog says; root still connects and says
 * hello meanwhile. */
static void root_connects_while_uid_hogs(const char *const extra[], struct hog *h)
{
    struct daemon d;
    int done[2], hold[2], line = -1, status;
    const char *args[12] = {"--socket-mode", "0666", "--allow-group", "nogroup"};
    int n = 4;

    for (int i = 0; extra[i] != NULL; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    make_dir(&d);
    assert_int_equal(chmod(d.dir, 0755), 0);
    daemon_start_env(&d, args, NULL);
    h->sock = d.sock;
    assert_int_equal(pipe(done), 0);
    assert_int_equal(pipe(hold), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(done[0]);
        close(hold[1]);
        hog_connections(h, done[1], hold[0]);
    }
    close(done[1]);
    close(hold[0]);
    assert_int_equal(read(done[0], &line, sizeof(line)), sizeof(line));
    close(done[0]);
    if (line != 0) {
        close(hold[1]);
        waitpid(pid, &status, 0);
        fail_msg("as uid 65534: the check at line %d failed", line);
    }
    int fd = raw_hello(d.sock); /* asserts that hello is answered */
    assert_int_equal(count_lines(d.log, "refused connection from pid"), 1);
    assert_true(file_contains(d.log, h->refused_for));
    close(fd);
    close(hold[1]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    daemon_stop(&d);
}

/*
 * One uid cannot take every connection: its own are bounded by
 * --max-connections-per-uid, and other users together leave 1/16 of
 * --max-connections (at least one) to root and emad's own uid. Either
 * way root still gets in (with --max-connections 8, uid 65534 used to
 * hold all 8, and root got LIMIT).
 */
static void test_one_uid_cannot_take_every_connection(void **state)
{
    struct hog per_uid = {NULL, 2, "--max-connections-per-uid"};
    struct hog all = {NULL, 3, "kept for root"};
    (void)state;

    if (geteuid() != 0)
        skip();
    root_connects_while_uid_hogs(
        (const char *const[]){"--max-connections", "8", "--max-connections-per-uid", "2", NULL},
        &per_uid);
    root_connects_while_uid_hogs((const char *const[]){"--max-connections", "4", NULL}, &all);
}

/*
 * A peer that connects and never says hello is closed after --hello-timeout
 * with a LIMIT notification saying why, and a log line; a peer that said
 * hello is not.
 */
static void test_a_connection_without_hello_is_closed(void **state)
{
    struct daemon d;
    struct reply r;
    msgpack_sbuffer reqs;
    (void)state;

    daemon_start(&d, (const char *const[]){"--hello-timeout", "1", NULL});
    int good = raw_hello(d.sock);
    int mute = try_connect(d.sock);
    assert_true(mute >= 0);
    read_reply(mute, &r); /* waits up to WAIT_MS */
    assert_false(r.eof);
    assert_int_equal(r.kind, WIRE_NOTIFY);
    assert_string_equal(r.code, "LIMIT");
    assert_non_null(strstr(r.message, "--hello-timeout"));
    read_reply(mute, &r);
    assert_true(r.eof);
    assert_true(file_contains(d.log, "closed with LIMIT: no hello within 1 s"));
    /* The one that said hello, long enough ago, is still served. */
    pack_requests(&reqs, "status", 1);
    send_bytes(good, reqs.data, reqs.size);
    read_reply(good, &r);
    assert_false(r.eof);
    assert_int_equal(r.msgid, 100);
    assert_string_equal(r.code, "");
    msgpack_sbuffer_destroy(&reqs);
    close(mute);
    close(good);
    daemon_stop(&d);
}

/* ---- requests not yet complete ---- */

/* A request of method "status" whose params are a bin of size zero bytes
 * (emad answers it with an error, once it is complete); *len: its length. */
static char *big_request(uint32_t msgid, size_t size, size_t *len)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    char *buf;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, msgid, "status");
    msgpack_pack_bin(&pk, size);
    *len = sb.size + size;
    buf = calloc(1, *len);
    assert_non_null(buf);
    memcpy(buf, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return buf;
}

/* Send buf[*sent, end) on fd as far as the socket takes it without
 * waiting. false: emad closed the connection. */
static bool send_some(int fd, const char *buf, size_t end, size_t *sent)
{
    while (*sent < end) {
        ssize_t w = send(fd, buf + *sent, end - *sent, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            return false;
        assert_true(w > 0);
        *sent += (size_t)w;
    }
    return true;
}

/* Bytes sent on fd that emad has not read yet. */
static int unread_by_emad(int fd)
{
    int n = -1;

    assert_int_equal(ioctl(fd, SIOCOUTQ, &n), 0);
    return n;
}

/* Wait until emad has read everything sent on fd. */
static void wait_read_by_emad(int fd)
{
    for (int i = 0; unread_by_emad(fd) > 0; i++) {
        assert_true(i < WAIT_MS);
        sleep_ms(1);
    }
}

#define INPUT_BLOCKED "needs more than --max-input-total"

enum { MAXID = 512 };

/* For input_states(): the last word of the log on each connection id. */
static void input_state_line(const char *line, void *arg)
{
    char *state = arg;
    const char *p = strstr(line, "connection ");
    unsigned long id = p ? strtoul(p + 11, NULL, 10) : 0;

    if (id == 0 || id >= MAXID)
        return;
    if (strstr(line, INPUT_BLOCKED))
        state[id] = 'b';
    else if (strstr(line, "fits --max-input-total"))
        state[id] = 'r';
    else if (strstr(line, "closed with LIMIT"))
        state[id] = 'c';
}

/* From emad's log: how many connections are stopped for --max-input-total
 * now (*blocked), and how many were closed for it (*closed). */
static void input_states(const char *log, int *blocked, int *closed)
{
    char state[MAXID] = {0};

    *blocked = *closed = 0;
    assert_true(for_each_line(log, input_state_line, state));
    for (int i = 0; i < MAXID; i++) {
        *blocked += state[i] == 'b';
        *closed += state[i] == 'c';
    }
}

/* Send the rest of req (len bytes, *sent of them sent) on fd as fast as emad
 * reads it; asserts that emad keeps the connection open. */
static void send_rest(int fd, const char *req, size_t len, size_t *sent)
{
    for (int i = 0; *sent < len; i++) {
        struct pollfd p = {fd, POLLOUT, 0};
        assert_true(i < WAIT_MS);
        assert_int_equal(poll(&p, 1, WAIT_MS), 1);
        assert_true(send_some(fd, req, len, sent));
    }
}

/* Read the next message on fd: a notification with code LIMIT, into r. */
static void expect_limit_notice(int fd, struct reply *r)
{
    read_reply(fd, r);
    assert_false(r->eof);
    assert_int_equal(r->kind, WIRE_NOTIFY);
    assert_string_equal(r->code, "LIMIT");
}

/* Read the next message on fd: the response to big_request(7, ...). */
static void expect_answer_to_7(int fd)
{
    struct reply r;

    read_reply(fd, &r);
    assert_false(r.eof);
    assert_int_equal(r.kind, WIRE_RESPONSE);
    assert_int_equal(r.msgid, 7);
}

/* An emad whose --max-input-total (5M) cannot hold two requests of 3.5 MiB
 * (--max-message 4M), and two peers that have said hello. */
static void start_two_peers(struct daemon *d, int *a, int *b)
{
    daemon_start(d, (const char *const[]){"--max-message", "4M", "--max-input-total", "5M",
                                          NULL});
    *a = raw_hello(d->sock);
    *b = raw_hello(d->sock);
}

/*
 * Many peers each send most of a large request and never finish it: emad
 * once buffered every one of them (up to --max-message each, so 1,024
 * peers could make it hold 16 GB). --max-input-total bounds them together:
 * emad stops reading the peers whose requests need more, and its memory
 * stays near the bound; a trainer on another connection is still served.
 * Bound: --max-input-total, plus the SERVER_INPUT_FREE (128 KiB) every
 * connection may hold, times 6 for the shadow memory of the sanitizer
 * builds (ThreadSanitizer's: 68 MB measured), plus slack for the allocator.
 * The old code grew by 233 MB.
 */
static void test_partial_requests_memory_is_bounded_across_connections(void **state)
{
    struct daemon d;
    enum { NCONN = 64 };
    const long total = 8 * MIB;
    int fds[NCONN];
    size_t sent[NCONN] = {0}, len;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_session *s = NULL;
    (void)state;

    make_dir(&d);
    daemon_start_env(&d, (const char *const[]){"--max-message", "4M", "--max-input-total", "8M",
                                               NULL},
                     rss_env());
    for (int i = 0; i < NCONN; i++) {
        fds[i] = raw_hello(d.sock);
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    }
    long before = rss_bytes(d.pid);
    /* 3.5 MiB of a request, short of its last KiB. */
    char *req = big_request(7, 3584 * KIB, &len);
    size_t part = len - KIB;
    int closed = 0, blocked = 0, gone = 0;
    for (int round = 0;; round++) {
        int read_all = 0;
        gone = 0;
        for (int i = 0; i < NCONN; i++) {
            if (fds[i] < 0 || !send_some(fds[i], req, part, &sent[i])) {
                /* Closed by emad: it said why first. */
                if (fds[i] >= 0) {
                    struct reply r;
                    read_reply(fds[i], &r);
                    assert_false(r.eof);
                    assert_string_equal(r.code, "LIMIT");
                    close(fds[i]);
                    fds[i] = -1;
                }
                gone++;
            } else if (sent[i] == part && unread_by_emad(fds[i]) == 0) {
                read_all++;
            }
        }
        /* Each peer is read in full, stopped, or closed for its request. */
        if (round % 20 == 19) {
            input_states(d.log, &blocked, &closed);
            if (read_all + blocked + closed >= NCONN)
                break;
        }
        assert_true(round < 6 * WAIT_MS);
        sleep_ms(1);
    }
    long grown = rss_bytes(d.pid) - before;
    long bound = 6 * (total + NCONN * 128 * KIB) + 24 * MIB;
    print_message("emad grew by %ld KiB with %d peers sending requests they do not finish "
                  "(bound %ld KiB); %d stopped, %d closed\n",
                  grown / KIB, NCONN, bound / KIB, blocked, closed);
    assert_true(gone <= closed);
    assert_true(grown < bound);
    /* A trainer sends small requests: it is served all the same. */
    emac_client *c = client_connect(&d, "trainer");
    assert_int_equal(emac_segment_create(specs, 1, &seg_left, &err), 0);
    assert_int_equal(emac_register(c, "beside", seg_left, NULL, false, &s, &err), 0);
    for (uint64_t b = 1; b <= 5; b++)
        assert_int_equal(event_at(s, "batch_end", b).updates, b);
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    emac_status_free(st);
    emac_session_free(s);
    emac_disconnect(c);
    free(req);
    close_all(fds, NCONN);
    daemon_stop_unlinked(&d);
}

/*
 * Two peers send large requests that do not both fit --max-input-total:
 * with half of each read, each needs more than the bound leaves, and
 * neither can finish. emad closes the one holding the most (the newest,
 * among equals) with LIMIT and says so in the log; the other completes and
 * is answered (it once held both, and answered both).
 */
static void test_peers_stuck_on_input_total_the_largest_is_closed_with_LIMIT(void **state)
{
    struct daemon d;
    struct reply r;
    char needle[128];
    size_t len, sent_a = 0, sent_b = 0;
    int a, b;
    (void)state;

    start_two_peers(&d, &a, &b);
    char *req = big_request(7, 3584 * KIB, &len);
    size_t half = 1900 * KIB;
    /* Each holds a buffer of 2 MiB (4 MiB of the bound). */
    send_bytes(a, req, half);
    wait_read_by_emad(a);
    send_bytes(b, req, half);
    wait_read_by_emad(b);
    sent_a = sent_b = half;
    /* To finish, each needs 4 MiB: the other's 2 MiB leave 3. */
    send_some(a, req, len, &sent_a);
    for (int i = 0; count_lines(d.log, INPUT_BLOCKED) < 1; i++) {
        assert_true(i < WAIT_MS);
        sleep_ms(1);
    }
    send_some(b, req, len, &sent_b);
    expect_limit_notice(b, &r);
    assert_non_null(strstr(r.message, "--max-input-total"));
    snprintf(needle, sizeof(needle), "(pid %ld, uid %ld): closed with LIMIT: its request holds",
             (long)getpid(), (long)getuid());
    assert_true(file_contains(d.log, needle));
    /* a goes on, and is answered. */
    send_rest(a, req, len, &sent_a);
    expect_answer_to_7(a);
    free(req);
    close(a);
    close(b);
    daemon_stop_unlinked(&d);
}

/*
 * A peer sends most of a large request and stops, holding most of
 * --max-input-total; another's request needs more than is left. The first
 * is closed with LIMIT (INPUT_STALL_MS, 5 s, after it last sent), and the
 * other completes and is answered (it used to be stopped for as long as
 * the first peer stayed, had that been bounded at all: the old code held
 * both requests whole).
 */
static void test_a_peer_that_stops_sending_cannot_hold_input_total(void **state)
{
    struct daemon d;
    struct reply r;
    size_t len, sent_b = 0;
    int a, b;
    (void)state;

    start_two_peers(&d, &a, &b);
    char *req = big_request(7, 3584 * KIB, &len);
    /* a holds a buffer of 4 MiB, and sends no more. */
    send_bytes(a, req, 3 * MIB);
    wait_read_by_emad(a);
    /* b can take 1 MiB of the 5, then waits; until a hears LIMIT. */
    for (int i = 0;; i++) {
        struct pollfd p[2] = {{a, POLLIN, 0}, {b, POLLOUT, 0}};
        assert_true(i < 3 * WAIT_MS);
        assert_true(poll(p, sent_b < len ? 2 : 1, 3 * WAIT_MS) > 0);
        if (p[0].revents != 0)
            break;
        assert_true(send_some(b, req, len, &sent_b));
        sleep_ms(1);
    }
    expect_limit_notice(a, &r);
    assert_true(file_contains(d.log, INPUT_BLOCKED));
    assert_true(file_contains(d.log, "its peer sent nothing for 5 s"));
    send_rest(b, req, len, &sent_b);
    expect_answer_to_7(b);
    free(req);
    close(a);
    close(b);
    daemon_stop_unlinked(&d);
}

/* ---- the open-file limit ---- */

/* make_dir(d), then start emad as daemon_start_env() does, with ulimit_cmd
 * (a bash command: ulimit, redirections) run before it. */
static void start_with_ulimit(struct daemon *d, const char *ulimit_cmd, const char *const extra[])
{
    char script[256];

    make_dir(d);
    snprintf(script, sizeof(script), "%s && exec \"$@\"", ulimit_cmd);
    daemon_start_argv(d, (const char *const[]){"bash", "-c", script, "bash", NULL}, extra, NULL);
}

/* The soft open-file limit of pid, from /proc/PID/limits. */
static long soft_nofile(pid_t pid)
{
    return proc_value(pid, "limits", "Max open files %ld");
}

/* Connect and say hello: 1 if served, 0 if refused with LIMIT; fails the
 * test on anything else (a connection dropped without a word). */
static int hello_or_limit(const char *sock, int *fd_out)
{
    struct reply r;
    msgpack_sbuffer sb;
    int fd = try_connect(sock);

    assert_true(fd >= 0);
    pack_hello(&sb, 1, 1, "test_limits");
    /* A refused peer may be closed before its hello arrives. */
    (void)send(fd, sb.data, sb.size, MSG_NOSIGNAL);
    msgpack_sbuffer_destroy(&sb);
    read_reply(fd, &r);
    if (r.eof)
        fail_msg("connection closed without a reply or a LIMIT notification");
    if (r.kind == WIRE_NOTIFY) {
        assert_string_equal(r.code, "LIMIT");
        close(fd);
        *fd_out = -1;
        return 0;
    }
    assert_string_equal(r.code, "");
    *fd_out = fd;
    return 1;
}

/* n peers connect and say hello, one after the other: how many were
 * served and how many refused with LIMIT (hello_or_limit()). */
static void hello_all(const char *sock, int *fds, int n, int *served, int *refused)
{
    for (int i = 0; i < n; i++) {
        if (hello_or_limit(sock, &fds[i]))
            (*served)++;
        else
            (*refused)++;
    }
}

/* systemd starts services with a soft limit of 1024 open files, below the
 * default --max-connections: emad raises its soft limit to fit. */
static void test_soft_fd_limit_is_raised_to_fit_max_connections(void **state)
{
    struct daemon d;
    enum { NCONN = 200 };
    int fds[NCONN];
    (void)state;

    start_with_ulimit(&d, "ulimit -Sn 64",
                      (const char *const[]){"--max-connections", "200", "--workers", "2", NULL});
    /* 200 connections and 64 + 2 per worker for files. */
    assert_true(soft_nofile(d.pid) >= 200 + 68);
    for (int i = 0; i < NCONN; i++)
        assert_int_equal(hello_or_limit(d.sock, &fds[i]), 1);
    assert_true(file_contains(d.log, "open-file limit raised from 64"));
    close_all(fds, NCONN);
    daemon_stop_unlinked(&d);
}

/* A hard limit too low for --max-connections: emad lowers it (and says so),
 * and every peer over it hears LIMIT; none is dropped without a word. */
static void test_hard_fd_limit_lowers_max_connections_and_peers_hear_LIMIT(void **state)
{
    struct daemon d;
    enum { NCONN = 150 };
    int fds[NCONN], served = 0, refused = 0;
    (void)state;

    start_with_ulimit(&d, "ulimit -n 128",
                      (const char *const[]){"--max-connections", "200", "--workers", "2", NULL});
    hello_all(d.sock, fds, NCONN, &served, &refused);
    /* 128 - (64 + 2 per worker) */
    assert_int_equal(served, 60);
    assert_int_equal(refused, NCONN - 60);
    assert_true(file_contains(d.log, "serving at most 60 connections"));
    assert_true(file_contains(d.log, "refused connection from pid"));
    close_all(fds, NCONN);
    daemon_stop_unlinked(&d);
}

/* For logged_fd_refusals(): add the count of line, if it says so. */
static void fd_refusals_line(const char *line, void *arg)
{
    long *sum = arg, n = 0;
    const char *p = strstr(line, "refused ");

    if (p != NULL && strstr(p, "connections with LIMIT: no file descriptor left") != NULL &&
        sscanf(p, "refused %ld connections", &n) == 1)
        *sum += n;
}

/* The peers the log says were refused for lack of descriptors, in all. */
static long logged_fd_refusals(const char *log)
{
    long sum = 0;

    assert_true(for_each_line(log, fd_refusals_line, &sum));
    return sum;
}

/* Descriptors run out below --max-connections (here: emad inherits 80 open
 * files, more than its reserve): accept() fails with EMFILE. Each peer it
 * cannot take hears LIMIT all the same, and the log says why; none is
 * dropped without a word (libuv's way). */
static void test_out_of_descriptors_peers_hear_LIMIT_and_the_log_says_so(void **state)
{
    struct daemon d;
    enum { NCONN = 100 };
    int fds[NCONN], served = 0, refused = 0;
    (void)state;

    start_with_ulimit(&d, "ulimit -n 128 && for i in $(seq 20 99); do eval \"exec $i</dev/null\"; "
                          "done",
                      (const char *const[]){"--max-connections", "200", "--workers", "2", NULL});
    hello_all(d.sock, fds, NCONN, &served, &refused);
    assert_true(served >= 1);
    assert_true(served < 60);
    assert_int_equal(served + refused, NCONN);
    assert_true(file_contains(d.log, "no file descriptor left"));
    /* The log says so at most every 10 s, with the count of the peers
     * refused meanwhile; those of the last 10 s are counted all the same,
     * though no refusal follows (they once were never logged). */
    for (int i = 0; logged_fd_refusals(d.log) < refused; i++) {
        assert_true(i < 3 * WAIT_MS / 10);
        sleep_ms(10);
    }
    assert_int_equal(logged_fd_refusals(d.log), refused);
    /* Once peers leave, new ones are served again. */
    close_all(fds, NCONN);
    int fd = -1;
    for (int i = 0; i < 500 && fd < 0; i++) {
        if (!hello_or_limit(d.sock, &fd))
            sleep_ms(10);
    }
    assert_true(fd >= 0);
    close(fd);
    daemon_stop_unlinked(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_unread_replies_memory_is_bounded_per_connection,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_unread_replies_memory_is_bounded_across_connections,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_stop_answers_the_requests_received_before_it,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_stop_does_not_wait_for_a_peer_that_does_not_read,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_requests_queued_on_a_session_are_bounded,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_one_uid_cannot_take_every_connection, kill_leftovers),
        cmocka_unit_test_teardown(test_a_connection_without_hello_is_closed, kill_leftovers),
        cmocka_unit_test_teardown(test_partial_requests_memory_is_bounded_across_connections,
                                  teardown_seg_left),
        cmocka_unit_test_teardown(test_peers_stuck_on_input_total_the_largest_is_closed_with_LIMIT,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_a_peer_that_stops_sending_cannot_hold_input_total,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_soft_fd_limit_is_raised_to_fit_max_connections,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_hard_fd_limit_lowers_max_connections_and_peers_hear_LIMIT,
                                  kill_leftovers),
        cmocka_unit_test_teardown(test_out_of_descriptors_peers_hear_LIMIT_and_the_log_says_so,
                                  kill_leftovers),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("limits", tests, NULL, NULL);
}
