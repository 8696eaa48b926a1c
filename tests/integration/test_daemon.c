/*
 * test_daemon.c - emad as a subprocess, driven through libemaclient, emactl
 * and raw sockets: the connection layer, peer checks, limits, signals and
 * the systemd glue.
 *
 * emad runs under the shared harness (harness.h). Binaries come from
 * $EMAD_BIN and $EMACTL_BIN (default build/emad and build/emactl), so the
 * same tests run against the sanitizer build.
 */
#include "harness.h"

#include "emaclient.h"
#include "msg.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* ---- raw protocol helpers ---- */

static void send_empty_request(int fd, uint32_t msgid, const char *method)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, msgid, method);
    msgpack_pack_map(&pk, 0);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

/* A connection that has said hello. */
static int raw_session(const char *sock)
{
    return hello_connect(sock, "raw test", NULL);
}

static void expect_eof(int fd)
{
    char buf[4096];
    struct pollfd p = {fd, POLLIN, 0};
    ssize_t n;

    do {
        assert_int_equal(poll(&p, 1, WAIT_MS), 1);
        n = recv(fd, buf, sizeof(buf), 0);
    } while (n > 0);
    assert_true(n == 0 || errno == ECONNRESET);
}

/* Status through libemaclient works. */
static void expect_status_ok(const char *sock)
{
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_client *c = NULL;

    assert_int_equal(emac_connect(sock, "test", &c, &err), 0);
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    assert_string_equal(st->server, "emad");
    emac_status_free(st);
    emac_disconnect(c);
}

/* ---- tests ---- */

static void test_hello_returns_server_identity(void **state)
{
    struct daemon d;
    struct emac_error err;
    emac_client *c = NULL;
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "3", NULL});
    assert_int_equal(emac_connect(d.sock, "test", &c, &err), 0);
    const struct emac_server *info = emac_server_info(c);
    assert_int_equal(info->pid, d.pid);
    assert_int_equal(info->proto, 1);
    assert_int_equal(info->workers, 3);
    assert_non_null(strstr(info->server, "emad"));
    emac_disconnect(c);
    daemon_stop_unlinked(&d);
}

static void test_status_reports_server_fields(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_client *c = NULL, *c2 = NULL;
    char state_dir[160];
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "2", "--max-connections", "50",
                                           "--max-sessions", "7", "--max-message", "1M", NULL});
    assert_int_equal(emac_connect(d.sock, "test", &c, &err), 0);
    assert_int_equal(emac_connect(d.sock, "test2", &c2, &err), 0);
    assert_int_equal(emac_status(c, NULL, &st, &err), 0);
    snprintf(state_dir, sizeof(state_dir), "%s/state", d.dir);
    assert_string_equal(st->server, "emad");
    assert_int_equal(st->proto, 1);
    assert_int_equal(st->pid, d.pid);
    assert_true(st->uptime_seconds >= 0.0 && st->uptime_seconds < 600.0);
    assert_int_equal(st->workers, 2);
    assert_int_equal(st->connections, 2);
    assert_int_equal(st->sessions, 0);
    assert_int_equal(st->nsessions, 0);
    assert_int_equal(st->max_connections, 50);
    assert_int_equal(st->max_sessions, 7);
    assert_int_equal(st->max_message, 1u << 20);
    assert_string_equal(st->socket, d.sock);
    assert_string_equal(st->state_dir, state_dir);
    emac_status_free(st);
    emac_disconnect(c2);
    emac_disconnect(c);
    daemon_stop_unlinked(&d);
}

static void test_status_of_unknown_session_is_NOSESSION(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_status *st = NULL;
    emac_client *c = NULL;
    (void)state;

    daemon_start(&d, NULL);
    assert_int_equal(emac_connect(d.sock, "test", &c, &err), 0);
    assert_int_equal(emac_status(c, "no-such", &st, &err), -EREMOTEIO);
    assert_null(st);
    assert_string_equal(err.code, "NOSESSION");
    assert_non_null(strstr(err.message, "no-such"));
    emac_disconnect(c);
    daemon_stop_unlinked(&d);
}

static void test_emactl_status_text_and_json(void **state)
{
    struct daemon d;
    char out[8192];
    (void)state;

    daemon_start(&d, (const char *const[]){"--workers", "3", NULL});
    char *text[] = {(char *)emactl_bin(), "--socket", d.sock, "status", NULL};
    assert_int_equal(run_capture(text, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "emad 0.1.0 (protocol 1)"));
    assert_non_null(strstr(out, "workers      3"));
    assert_non_null(strstr(out, d.sock));

    char *json[] = {(char *)emactl_bin(), "status", "--json", "--socket", d.sock, NULL};
    assert_int_equal(run_capture(json, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "\"workers\": 3"));
    assert_non_null(strstr(out, "\"sessions\": []"));
    assert_true(out[0] == '{');

    /* EMAD_SOCKET is honoured when --socket is absent. */
    char env[200];
    snprintf(env, sizeof(env), "EMAD_SOCKET=%s", d.sock);
    char *byenv[] = {(char *)emactl_bin(), "status", NULL};
    assert_int_equal(run_capture(byenv, (char *[]){env, NULL}, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "workers      3"));

    char *missing[] = {(char *)emactl_bin(), "status", "nope", NULL};
    assert_int_equal(run_capture(missing, (char *[]){env, NULL}, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "NOSESSION"));
    daemon_stop_unlinked(&d);
}

static void test_emactl_usage_errors_and_unreachable_daemon(void **state)
{
    char out[8192];
    (void)state;

    char *help[] = {(char *)emactl_bin(), "--help", NULL};
    assert_int_equal(run_capture(help, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "Usage: emactl"));
    assert_non_null(strstr(out, "--json"));
    assert_non_null(strstr(out, "(interrupted)"));

    char *bad[] = {(char *)emactl_bin(), "frobnicate", NULL};
    assert_int_equal(run_capture(bad, NULL, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "unknown command \"frobnicate\""));

    char *nocmd[] = {(char *)emactl_bin(), NULL};
    assert_int_equal(run_capture(nocmd, NULL, out, sizeof(out)), 2);

    char *gone[] = {(char *)emactl_bin(), "--socket", "/tmp/emad-test-nonexistent.sock",
                    "status", NULL};
    assert_int_equal(run_capture(gone, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "CONNECT"));
    assert_non_null(strstr(out, "/tmp/emad-test-nonexistent.sock"));
}

static void test_wrong_proto_gets_VERSION(void **state)
{
    struct daemon d;
    struct reply r;
    (void)state;

    daemon_start(&d, NULL);
    int fd = try_connect(d.sock);
    send_hello(fd, 7, 2, "raw test");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 7);
    assert_string_equal(r.code, "VERSION");
    assert_non_null(strstr(r.message, "protocol 2"));
    /* The connection stays usable for a correct hello. */
    send_hello(fd, 8, 1, "raw test");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 8);
    assert_string_equal(r.code, "");
    close(fd);
    daemon_stop_unlinked(&d);
}

static void test_request_before_hello_gets_NOHELLO(void **state)
{
    struct daemon d;
    struct reply r;
    (void)state;

    daemon_start(&d, NULL);
    int fd = try_connect(d.sock);
    send_empty_request(fd, 3, "status");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 3);
    assert_string_equal(r.code, "NOHELLO");
    assert_non_null(strstr(r.message, "hello"));
    close(fd);
    daemon_stop_unlinked(&d);
}

static void test_unknown_method_gets_NOMETHOD(void **state)
{
    struct daemon d;
    struct reply r;
    (void)state;

    daemon_start(&d, NULL);
    int fd = raw_session(d.sock);
    send_empty_request(fd, 4, "frobnicate");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 4);
    assert_string_equal(r.code, "NOMETHOD");
    assert_non_null(strstr(r.message, "frobnicate"));
    /* A known method with missing arguments is BADARG, naming the field. */
    send_empty_request(fd, 5, "register");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 5);
    assert_string_equal(r.code, "BADARG");
    assert_non_null(strstr(r.message, "session: missing"));
    close(fd);
    daemon_stop_unlinked(&d);
}

static void test_bad_arguments_get_BADARG_naming_the_field(void **state)
{
    struct daemon d;
    struct reply r;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    (void)state;

    daemon_start(&d, NULL);
    int fd = try_connect(d.sock);
    /* hello without "client" */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 9, "hello");
    msgpack_pack_map(&pk, 1);
    wire_pack_str(&pk, "proto");
    msgpack_pack_uint8(&pk, 1);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 9);
    assert_string_equal(r.code, "BADARG");
    assert_non_null(strstr(r.message, "client"));
    /* status with a session that is not a string */
    send_hello(fd, 10, 1, "raw test");
    read_reply(fd, &r);
    assert_string_equal(r.code, "");
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 11, "status");
    msgpack_pack_map(&pk, 1);
    wire_pack_str(&pk, "session");
    msgpack_pack_int8(&pk, -3);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 11);
    assert_string_equal(r.code, "BADARG");
    assert_non_null(strstr(r.message, "session"));
    close(fd);
    daemon_stop_unlinked(&d);
}

static void test_malformed_request_with_msgid_gets_EPROTO(void **state)
{
    struct daemon d;
    struct reply r;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    (void)state;

    daemon_start(&d, NULL);
    int fd = raw_session(d.sock);
    /* params is a bare map, not an array holding one map */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, 12);
    wire_pack_str(&pk, "status");
    msgpack_pack_map(&pk, 0);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 12);
    assert_string_equal(r.code, "EPROTO");
    /* the connection goes on */
    send_empty_request(fd, 13, "status");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 13);
    assert_string_equal(r.code, "");
    close(fd);
    daemon_stop_unlinked(&d);
}

static void test_oversized_request_gets_LIMIT_and_connection_survives(void **state)
{
    struct daemon d;
    struct reply r;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    static char filler[20000];
    (void)state;

    daemon_start(&d, (const char *const[]){"--max-message", "4K", NULL});
    int fd = raw_session(d.sock);
    memset(filler, 'x', sizeof(filler));
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, 21, "status");
    msgpack_pack_map(&pk, 1);
    wire_pack_str(&pk, "session");
    msgpack_pack_str(&pk, sizeof(filler));
    msgpack_pack_str_body(&pk, filler, sizeof(filler));
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 21);
    assert_string_equal(r.code, "LIMIT");
    send_empty_request(fd, 22, "status");
    read_reply(fd, &r);
    assert_int_equal(r.msgid, 22);
    assert_string_equal(r.code, "");
    close(fd);
    daemon_stop_unlinked(&d);
}

static void test_garbage_closes_only_that_connection(void **state)
{
    struct daemon d;
    struct reply r;
    static const unsigned char garbage[] = {0x94, 0x00, 0x01, 0xc1, 0xff, 0x00};
    (void)state;

    daemon_start(&d, NULL);
    int good = raw_session(d.sock);
    int bad = raw_session(d.sock);
    send_bytes(bad, garbage, sizeof(garbage));
    expect_eof(bad);
    close(bad);
    /* A message that is valid msgpack but no request and has no msgid. */
    int bad2 = try_connect(d.sock);
    static const unsigned char scalar[] = {0x2a};
    send_bytes(bad2, scalar, sizeof(scalar));
    expect_eof(bad2);
    close(bad2);
    send_empty_request(good, 30, "status");
    read_reply(good, &r);
    assert_int_equal(r.msgid, 30);
    assert_string_equal(r.code, "");
    close(good);
    assert_true(file_contains(d.log, "not valid msgpack"));
    daemon_stop_unlinked(&d);
}

static void test_too_deep_nesting_closes_connection(void **state)
{
    struct daemon d;
    unsigned char deep[64];
    (void)state;

    daemon_start(&d, NULL);
    int fd = raw_session(d.sock);
    int good = raw_session(d.sock);
    /* [0, 1, "x", [[[[[[[[[ ... ]]]]]]]]] ]: depth well beyond 8 */
    size_t n = 0;
    deep[n++] = 0x94;
    deep[n++] = 0x00;
    deep[n++] = 0x01;
    deep[n++] = 0xa1;
    deep[n++] = 'x';
    for (int i = 0; i < 12; i++)
        deep[n++] = 0x91;
    deep[n++] = 0x80;
    send_bytes(fd, deep, n);
    expect_eof(fd);
    close(fd);
    expect_status_ok(d.sock);
    close(good);
    assert_true(file_contains(d.log, "deeper than 8"));
    daemon_stop_unlinked(&d);
}

static void test_connection_limit_refuses_with_LIMIT(void **state)
{
    struct daemon d;
    struct reply r;
    struct emac_error err;
    emac_client *c = NULL;
    (void)state;

    daemon_start(&d, (const char *const[]){"--max-connections", "2", NULL});
    int a = raw_session(d.sock);
    int b = raw_session(d.sock);
    int extra = try_connect(d.sock);
    assert_true(extra >= 0);
    read_reply(extra, &r);
    assert_false(r.eof);
    assert_int_equal(r.kind, WIRE_NOTIFY);
    assert_string_equal(r.code, "LIMIT");
    expect_eof(extra);
    close(extra);
    assert_int_equal(emac_connect(d.sock, "test", &c, &err), -EREMOTEIO);
    assert_string_equal(err.code, "LIMIT");
    assert_non_null(strstr(err.message, "--max-connections"));
    /* Once one closes, a new connection is admitted. */
    close(b);
    int ok = 0;
    for (int i = 0; i < 500 && !ok; i++) {
        if (emac_connect(d.sock, "test", &c, &err) == 0) {
            ok = 1;
            emac_disconnect(c);
        } else {
            sleep_ms(10);
        }
    }
    assert_true(ok);
    close(a);
    daemon_stop_unlinked(&d);
}

/* A peer of another uid: run emactl as nobody (65534). */
static int run_as_nobody(const char *sock, bool keep_group, char *out, size_t outlen)
{
    char bin[160];

    snprintf(bin, sizeof(bin), "%s.emactl", sock);
    copy_emactl(bin);
    char *argv[] = {"setpriv", "--reuid=65534", keep_group ? "--regid=65534" : "--regid=65533",
                    "--clear-groups", bin, "--socket", (char *)sock, "status", NULL};
    return run_capture(argv, NULL, out, outlen);
}

static void test_peer_of_another_uid_is_refused_with_PERM(void **state)
{
    struct daemon d;
    char out[4096];
    (void)state;

    if (geteuid() != 0)
        skip();
    daemon_start_open(&d, NULL);
    assert_int_equal(run_as_nobody(d.sock, true, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "PERM"));
    assert_non_null(strstr(out, "uid 65534 is not allowed"));
    assert_true(file_contains(d.log, "refused connection"));
    daemon_stop_unlinked(&d);
}

static void test_allow_group_admits_its_members_only(void **state)
{
    struct daemon d;
    char out[4096];
    (void)state;

    if (geteuid() != 0)
        skip();
    /* gid 65534 is "nogroup" on Debian */
    daemon_start_open(&d, "nogroup");
    assert_int_equal(run_as_nobody(d.sock, true, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "emad 0.1.0"));
    assert_int_equal(run_as_nobody(d.sock, false, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "PERM"));
    daemon_stop_unlinked(&d);
}

/* The pause and resume points in emad's log: paused above max_pending reply
 * bytes queued, resumed at half of it or less (the hysteresis that keeps a
 * slow reader from being paused after every write), at least once each. */
static void expect_hysteresis(const char *log, unsigned long max_pending)
{
    char line[1024];
    unsigned long queued, total;
    int paused = 0, resumed = 0;
    FILE *fp = fopen(log, "r");

    assert_non_null(fp);
    while (fgets(line, sizeof(line), fp) != NULL) {
        const char *p = strstr(line, ": connection ");
        p = p != NULL ? strchr(p + 2, ':') : NULL;
        if (p == NULL || sscanf(p + 1, " %lu reply bytes queued (%lu", &queued, &total) != 2)
            continue;
        if (strstr(line, "reading paused (--max-pending)") != NULL) {
            if (queued <= max_pending)
                fail_msg("paused at %lu bytes queued, not above %lu: %s", queued, max_pending,
                         line);
            paused++;
        } else if (strstr(line, "reading resumed") != NULL) {
            if (queued > max_pending / 2)
                fail_msg("resumed at %lu bytes queued, above half of %lu: %s", queued,
                         max_pending, line);
            resumed++;
        }
    }
    fclose(fp);
    assert_true(paused >= 1);
    assert_int_equal(resumed, paused);
}

/* A peer pipelines count status requests without reading, then reads every
 * reply: it is paused, others are served meanwhile, its replies arrive in
 * order, and the pause and resume points keep to the hysteresis. */
static void slow_reader(const char *max_pending, unsigned long max_bytes, uint32_t count)
{
    struct daemon d;
    struct reply r;
    struct wire_decoder dec;
    msgpack_sbuffer sb;
    msgpack_packer pk;

    daemon_start(&d, (const char *const[]){"--max-pending", max_pending, NULL});
    int slow = raw_session(d.sock);
    /* Pipeline many requests without reading a single reply. */
    int fl = fcntl(slow, F_GETFL);
    fcntl(slow, F_SETFL, fl | O_NONBLOCK);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (uint32_t i = 0; i < count; i++) {
        wire_pack_request_head(&pk, 100 + i, "status");
        msgpack_pack_map(&pk, 0);
    }
    size_t sent = 0;
    for (int tries = 0; sent < sb.size && tries < 2000; tries++) {
        ssize_t w = send(slow, sb.data + sent, sb.size - sent, MSG_NOSIGNAL);
        if (w > 0)
            sent += (size_t)w;
        else
            sleep_ms(1);
    }
    fcntl(slow, F_SETFL, fl);
    /* The daemon stays responsive to others meanwhile. */
    expect_status_ok(d.sock);
    /* All the slow reader's replies arrive, in order, once it reads. */
    wire_decoder_init(&dec, 1u << 24, 8);
    uint32_t got = 0;
    while (got < count) {
        if (sent < sb.size) {
            ssize_t w = send(slow, sb.data + sent, sb.size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0)
                sent += (size_t)w;
        }
        read_reply_dec(slow, &dec, &r);
        assert_false(r.eof);
        assert_int_equal(r.msgid, 100 + got);
        assert_string_equal(r.code, "");
        got++;
    }
    wire_decoder_free(&dec);
    msgpack_sbuffer_destroy(&sb);
    assert_true(file_contains(d.log, "reading paused"));
    expect_hysteresis(d.log, max_bytes);
    close(slow);
    daemon_stop_unlinked(&d);
}

static void test_slow_reader_is_paused_and_others_proceed(void **state)
{
    (void)state;
    slow_reader("8K", 8192, 3000);
}

/* With --max-pending above the socket's buffer, a reply buffer is still
 * queued when the one before it is written: resuming there (rather than at
 * half of --max-pending) would show in the log. */
static void test_paused_reader_resumes_at_half_max_pending(void **state)
{
    (void)state;
    slow_reader("1M", 1u << 20, 30000);
}

/* What a peer names (its client string, a method) reaches the log escaped: a
 * newline in it cannot forge a log line. */
static void test_peer_strings_cannot_forge_log_lines(void **state)
{
    struct daemon d;
    struct reply r;
    (void)state;

    daemon_start(&d, NULL);
    int fd = try_connect(d.sock);
    assert_true(fd >= 0);
    send_hello(fd, 1, 1, "evil\nFORGED-HELLO error: x");
    read_reply(fd, &r);
    assert_string_equal(r.code, "");
    send_empty_request(fd, 2, "m\nFORGED-METHOD \"\x1b[2J");
    read_reply(fd, &r);
    assert_string_equal(r.code, "NOMETHOD");
    close(fd);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    check_daemon_stderr(&d, wait_exit(d.pid));
    assert_false(file_contains(d.log, "\nFORGED"));
    assert_false(file_contains(d.log, "\x1b"));
    assert_true(file_contains(d.log, "hello from \"evil\\x0aFORGED-HELLO error: x\""));
    assert_true(file_contains(d.log, "m\\x0aFORGED-METHOD \\x22\\x1b[2J"));
    remove_tree(d.dir);
}

static void test_sigint_stops_cleanly(void **state)
{
    struct daemon d;
    struct stat st;
    (void)state;

    daemon_start(&d, NULL);
    int fd = raw_session(d.sock);
    assert_int_equal(kill(d.pid, SIGINT), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    expect_eof(fd);
    close(fd);
    assert_int_equal(lstat(d.sock, &st), -1);
    assert_true(file_contains(d.log, "SIGINT: stopping"));
    remove_tree(d.dir);
}

static void test_stale_socket_is_replaced(void **state)
{
    struct daemon d;
    struct sockaddr_un sa;
    (void)state;

    make_dir(&d);
    /* A socket file nobody listens on, as a killed emad leaves behind. */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%.107s", d.sock);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    daemon_start_env(&d, NULL, NULL);
    expect_status_ok(d.sock);
    assert_true(file_contains(d.log, "removed stale socket"));
    daemon_stop_unlinked(&d);
}

static void test_live_socket_and_regular_file_refuse_start(void **state)
{
    struct daemon d;
    char out[4096];
    char path[160];
    (void)state;

    daemon_start(&d, NULL);
    char *second[] = {(char *)emad_bin(), "--socket", d.sock, NULL};
    assert_int_equal(run_capture(second, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "live socket"));
    expect_status_ok(d.sock); /* the first one is untouched */

    snprintf(path, sizeof(path), "%s/plain-file", d.dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    char *onfile[] = {(char *)emad_bin(), "--socket", path, NULL};
    assert_int_equal(run_capture(onfile, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "is not a socket"));
    daemon_stop_unlinked(&d);
}

static void test_bad_command_lines_exit_2_with_a_message(void **state)
{
    char out[16384]; /* --help is longer than 8 KiB */
    char longpath[200];
    (void)state;

    memset(longpath, 'a', sizeof(longpath));
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    char *toolong[] = {(char *)emad_bin(), "--socket", longpath, NULL};
    assert_int_equal(run_capture(toolong, NULL, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "longer than 107 bytes"));

    char *badopt[] = {(char *)emad_bin(), "--workers", "0", NULL};
    assert_int_equal(run_capture(badopt, NULL, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "--workers"));

    char *remote[] = {(char *)emad_bin(), "--metrics", "0.0.0.0:9469", NULL};
    assert_int_equal(run_capture(remote, NULL, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "--metrics 0.0.0.0:9469: not a loopback address"));
    char *interval[] = {(char *)emad_bin(), "--metrics-interval", "0", NULL};
    assert_int_equal(run_capture(interval, NULL, out, sizeof(out)), 2);
    assert_non_null(strstr(out, "--metrics-interval 0: out of range (1 to 3600)"));

    char *help[] = {(char *)emad_bin(), "--help", NULL};
    assert_int_equal(run_capture(help, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "--socket PATH"));
    assert_non_null(strstr(out, "NOTIFY_SOCKET"));
    assert_non_null(strstr(out, "--crash-exact"));
    assert_non_null(strstr(out, "one emad per directory"));
    assert_non_null(strstr(out, "--metrics ADDRESS"));
    assert_non_null(strstr(out, "--metrics-textfile PATH"));

    char *version[] = {(char *)emad_bin(), "--version", NULL};
    assert_int_equal(run_capture(version, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "emad 0.1.0"));

    char *nogroup[] = {(char *)emad_bin(), "--socket", "/tmp/emad-test-x.sock", "--allow-group",
                       "no-such-group-xyz", NULL};
    assert_int_equal(run_capture(nogroup, NULL, out, sizeof(out)), 1);
    assert_non_null(strstr(out, "no such group"));
}

static void test_runtime_dir_is_created_private_and_socket_mode_applied(void **state)
{
    struct daemon d;
    struct stat st;
    char dir[160];
    (void)state;

    make_dir(&d);
    snprintf(dir, sizeof(dir), "%s/run", d.dir);
    snprintf(d.sock, sizeof(d.sock), "%s/run/emad.sock", d.dir);
    daemon_start_env(&d, NULL, NULL);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(d.sock, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);

    daemon_start_env(&d, (const char *const[]){"--socket-mode", "0660", NULL}, NULL);
    assert_int_equal(stat(d.sock, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    daemon_stop_unlinked(&d);
}

static void test_sighup_reopens_the_log_file(void **state)
{
    struct daemon d;
    char rotated[160];
    (void)state;

    daemon_start(&d, NULL);
    snprintf(rotated, sizeof(rotated), "%s.1", d.log);
    assert_int_equal(rename(d.log, rotated), 0);
    assert_int_equal(kill(d.pid, SIGHUP), 0);
    bool reopened = false;
    for (int i = 0; i < WAIT_MS / 10 && !reopened; i++) {
        reopened = file_contains(d.log, "SIGHUP");
        if (!reopened)
            sleep_ms(10);
    }
    assert_true(reopened);
    expect_status_ok(d.sock);
    assert_true(file_contains(d.log, "hello from"));
    assert_true(file_contains(rotated, "listening on"));
    daemon_stop_unlinked(&d);
}

/* A datagram socket of the test's own stands in for systemd. */
static int notify_listener(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* On a timeout the failure shows emad's stderr and log: a sanitizer report
 * (emad halts on the first) is the usual reason a datagram never comes. */
static void expect_datagram(const struct daemon *d, int fd, const char *text)
{
    char buf[256];
    struct pollfd p = {fd, POLLIN, 0};

    if (poll(&p, 1, WAIT_MS) != 1) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "cat '%s/emad.stderr' '%s' >&2", d->dir, d->log);
        if (system(cmd) != 0)
            fprintf(stderr, "(cannot show emad's stderr and log)\n");
        fail_msg("no \"%s\" datagram within %d ms", text, WAIT_MS);
    }
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_string_equal(buf, text);
}

static void test_notify_socket_gets_ready_and_stopping(void **state)
{
    struct daemon d;
    char path[160], env[200];
    (void)state;

    make_dir(&d);
    snprintf(path, sizeof(path), "%s/notify", d.dir);
    int nfd = notify_listener(path);
    snprintf(env, sizeof(env), "NOTIFY_SOCKET=%s", path);
    daemon_start_env(&d, NULL, (char *[]){env, NULL});
    expect_datagram(&d, nfd, "READY=1");
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    expect_datagram(&d, nfd, "STOPPING=1");
    assert_int_equal(wait_exit(d.pid), 0);
    close(nfd);
    remove_tree(d.dir);
}

static void test_socket_activation_serves_the_inherited_socket(void **state)
{
    struct daemon d;
    struct stat st;
    char out[8192];
    char path[160], env[200];
    (void)state;

    if (system("command -v systemd-socket-activate >/dev/null") != 0)
        skip();
    make_dir(&d);
    snprintf(path, sizeof(path), "%s/notify", d.dir);
    int nfd = notify_listener(path);
    snprintf(env, sizeof(env), "NOTIFY_SOCKET=%s", path);
    /* --socket names another path: the inherited socket must win. */
    char other[160];
    snprintf(other, sizeof(other), "%s/not-this.sock", d.dir);
    /* systemd-socket-activate passes only the environment named by -E. */
    char *argv[] = {"systemd-socket-activate", "-l", d.sock, "-E", env, (char *)emad_bin(),
                    "--socket", other, "--log-file", d.log, "--state-dir", d.dir, NULL};
    d.pid = spawn(argv, NULL, -1, -1);
    assert_true(wait_listening(d.pid, d.sock));
    /* systemd-socket-activate accepts on emad's behalf only when asked to
     * (-a); without it emad is exec'd on the first connection. */
    char *ctl[] = {(char *)emactl_bin(), "--socket", d.sock, "status", NULL};
    assert_int_equal(run_capture(ctl, NULL, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "emad 0.1.0"));
    expect_datagram(&d, nfd, "READY=1");
    assert_true(file_contains(d.log, "(from systemd)"));
    assert_int_equal(lstat(other, &st), -1);
    assert_int_equal(kill(d.pid, SIGTERM), 0);
    assert_int_equal(wait_exit(d.pid), 0);
    /* systemd owns the path: emad must leave it. */
    assert_int_equal(lstat(d.sock, &st), 0);
    close(nfd);
    remove_tree(d.dir);
}

/* systemd-analyze verify accepts the units, with ExecStart pointing at the
 * binary under test and the system unit's user root (make install's default). */
static void verify_units(const char *dir, const char *service, const char *socket, bool user)
{
    char cmd[3 * PATH_MAX], out[8192], bin[PATH_MAX];

    /* ExecStart= must name an existing executable by its absolute path. */
    assert_non_null(realpath(emad_bin(), bin));
    snprintf(cmd, sizeof(cmd),
             "set -e; cd '%s'; mkdir -p u; "
             "sed -e 's|@BINDIR@/emad|%s|' -e 's|@EMAD_USER@|root|g' '%s' > u/emad.service; "
             "cp '%s' u/emad.socket; "
             "%s systemd-analyze %s verify --man=no u/emad.service u/emad.socket > out 2>&1",
             dir, bin, service, socket,
             user ? "XDG_RUNTIME_DIR=$(pwd)" : "", user ? "--user" : "");
    int rc = system(cmd);
    snprintf(cmd, sizeof(cmd), "%s/out", dir);
    FILE *fp = fopen(cmd, "r");
    size_t n = fp ? fread(out, 1, sizeof(out) - 1, fp) : 0;
    if (fp)
        fclose(fp);
    out[n] = '\0';
    if (rc != 0 || n != 0)
        fail_msg("systemd-analyze verify %s: rc %d: %s", service, rc, out);
}

/* The value of KEY= in a unit file, or -1 without one. */
static long unit_number(const char *path, const char *key)
{
    char line[512];
    long v = -1;
    size_t n = strlen(key);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    while (fgets(line, sizeof(line), fp) != NULL)
        if (strncmp(line, key, n) == 0 && line[n] == '=')
            v = strtol(line + n + 1, NULL, 10);
    fclose(fp);
    return v;
}

/* Both services raise the descriptor limit (systemd's soft default, 1024, is below
 * --max-connections and its room for files and shadows) and the system one keeps its
 * state directory to itself. */
static void test_systemd_units_raise_the_fd_limit(void **state)
{
    (void)state;
    assert_true(unit_number("systemd/emad.service", "LimitNOFILE") >= 16384);
    assert_true(unit_number("systemd/emad-user.service", "LimitNOFILE") >= 16384);
    assert_int_equal(unit_number("systemd/emad.service", "StateDirectoryMode"), 700);
}

static void test_systemd_units_pass_verify(void **state)
{
    char dir[] = "/tmp/emad-test-units-XXXXXX";
    char cwd[512], svc[600], sock[600];
    (void)state;

    if (system("command -v systemd-analyze >/dev/null") != 0)
        skip();
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_non_null(mkdtemp(dir));
    snprintf(svc, sizeof(svc), "%s/systemd/emad.service", cwd);
    snprintf(sock, sizeof(sock), "%s/systemd/emad.socket", cwd);
    verify_units(dir, svc, sock, false);
    snprintf(svc, sizeof(svc), "%s/systemd/emad-user.service", cwd);
    snprintf(sock, sizeof(sock), "%s/systemd/emad-user.socket", cwd);
    verify_units(dir, svc, sock, true);
    remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_hello_returns_server_identity, kill_leftovers),
        cmocka_unit_test_teardown(test_status_reports_server_fields, kill_leftovers),
        cmocka_unit_test_teardown(test_status_of_unknown_session_is_NOSESSION, kill_leftovers),
        cmocka_unit_test_teardown(test_emactl_status_text_and_json, kill_leftovers),
        cmocka_unit_test_teardown(test_emactl_usage_errors_and_unreachable_daemon, kill_leftovers),
        cmocka_unit_test_teardown(test_wrong_proto_gets_VERSION, kill_leftovers),
        cmocka_unit_test_teardown(test_request_before_hello_gets_NOHELLO, kill_leftovers),
        cmocka_unit_test_teardown(test_unknown_method_gets_NOMETHOD, kill_leftovers),
        cmocka_unit_test_teardown(test_bad_arguments_get_BADARG_naming_the_field, kill_leftovers),
        cmocka_unit_test_teardown(test_malformed_request_with_msgid_gets_EPROTO, kill_leftovers),
        cmocka_unit_test_teardown(test_oversized_request_gets_LIMIT_and_connection_survives, kill_leftovers),
        cmocka_unit_test_teardown(test_garbage_closes_only_that_connection, kill_leftovers),
        cmocka_unit_test_teardown(test_too_deep_nesting_closes_connection, kill_leftovers),
        cmocka_unit_test_teardown(test_connection_limit_refuses_with_LIMIT, kill_leftovers),
        cmocka_unit_test_teardown(test_peer_of_another_uid_is_refused_with_PERM, kill_leftovers),
        cmocka_unit_test_teardown(test_allow_group_admits_its_members_only, kill_leftovers),
        cmocka_unit_test_teardown(test_slow_reader_is_paused_and_others_proceed, kill_leftovers),
        cmocka_unit_test_teardown(test_paused_reader_resumes_at_half_max_pending, kill_leftovers),
        cmocka_unit_test_teardown(test_peer_strings_cannot_forge_log_lines, kill_leftovers),
        cmocka_unit_test_teardown(test_sigint_stops_cleanly, kill_leftovers),
        cmocka_unit_test_teardown(test_stale_socket_is_replaced, kill_leftovers),
        cmocka_unit_test_teardown(test_live_socket_and_regular_file_refuse_start, kill_leftovers),
        cmocka_unit_test_teardown(test_bad_command_lines_exit_2_with_a_message, kill_leftovers),
        cmocka_unit_test_teardown(test_runtime_dir_is_created_private_and_socket_mode_applied, kill_leftovers),
        cmocka_unit_test_teardown(test_sighup_reopens_the_log_file, kill_leftovers),
        cmocka_unit_test_teardown(test_notify_socket_gets_ready_and_stopping, kill_leftovers),
        cmocka_unit_test_teardown(test_socket_activation_serves_the_inherited_socket, kill_leftovers),
        cmocka_unit_test_teardown(test_systemd_units_pass_verify, kill_leftovers),
        cmocka_unit_test(test_systemd_units_raise_the_fd_limit),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("daemon", tests, NULL, NULL);
}
