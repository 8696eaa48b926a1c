/*
 * test_opts.c - emad's command line (daemon/opts.c): defaults, every option, every rejected
 * value with a message naming the option, the socket and state directory rules, sizes.
 *
 * opts_parse() is pure: the environment comes in a struct opts_env, so each case states the
 * environment it runs in. getopt permutes argv, so arguments are copied into writable memory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"
#include "wire.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_ARGS 48

/* ---- Helpers ----------------------------------------------------------------------------- */

/* An ordinary user's session: a runtime dir, a home, eight CPUs. */
static struct opts_env user_env(void)
{
    struct opts_env env = {
        .emad_socket = NULL,
        .xdg_runtime_dir = "/run/user/1000",
        .xdg_state_home = NULL,
        .home = "/home/alice",
        .uid = 1000,
        .online_cpus = 8,
    };
    return env;
}

/* Parse argv (NULL-terminated, "emad" prepended) from writable copies. err receives the
 * message; it is cleared first so a stale one cannot satisfy a check. */
static int parse_v(struct emad_opts *o, const struct opts_env *env, char *err, size_t errlen,
                   const char *const *args)
{
    char *argv[MAX_ARGS + 2];
    int argc = 0, rc;

    argv[argc++] = strdup("emad");
    for (; *args != NULL; args++) {
        assert_true(argc <= MAX_ARGS);
        argv[argc++] = strdup(*args);
        assert_non_null(argv[argc - 1]);
    }
    argv[argc] = NULL;
    err[0] = '\0';
    rc = opts_parse(o, argc, argv, env, err, errlen);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    return rc;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

/* Parse and require success. */
static void parse_ok(struct emad_opts *o, const struct opts_env *env, const char *const *args)
{
    char err[512];
    int rc = parse_v(o, env, err, sizeof(err), args);

    if (rc != OPTS_RUN)
        fail_msg("expected the options to parse, got %d: %s", rc, err);
}

/* Parse and require -EINVAL with a message holding every one of the given fragments. */
static void parse_fails(const struct opts_env *env, const char *const *args, const char *frag1,
                        const char *frag2)
{
    struct emad_opts o;
    char err[512];
    int rc = parse_v(&o, env, err, sizeof(err), args);

    if (rc != -EINVAL)
        fail_msg("%s%s%s: expected -EINVAL, got %d", args[0] ? args[0] : "(no arguments)",
                 args[0] && args[1] ? " " : "", args[0] && args[1] ? args[1] : "", rc);
    if (frag1 != NULL && strstr(err, frag1) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", err, frag1);
    if (frag2 != NULL && strstr(err, frag2) == NULL)
        fail_msg("error \"%s\" does not mention \"%s\"", err, frag2);
}

static char *repeat(char *buf, size_t n, char c, const char *prefix)
{
    size_t p = strlen(prefix);
    memcpy(buf, prefix, p);
    memset(buf + p, c, n - p);
    buf[n] = '\0';
    return buf;
}

/* ---- Defaults ----------------------------------------------------------------------------- */

static void test_opts_defaults(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    memset(&o, 0xa5, sizeof(o));
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.socket_path, "/run/user/1000/emad.sock");
    assert_int_equal(o.socket_mode, 0600);
    assert_string_equal(o.allow_group, "");
    assert_int_equal(o.workers, 8);
    assert_int_equal(o.worker_nice, 10);
    assert_int_equal(o.worker_nice, OPTS_DEFAULT_WORKER_NICE);
    assert_false(o.crash_exact);
    assert_string_equal(o.state_dir, "/home/alice/.local/state/emad");
    assert_int_equal(o.log_level, LOG_LVL_INFO);
    assert_string_equal(o.log_file, "");
    assert_int_equal(o.max_message, 16u << 20);
    assert_int_equal(o.max_message, WIRE_DEFAULT_MAX_MESSAGE);
    assert_int_equal(o.max_depth, 8);
    assert_int_equal(o.max_connections, 1024);
    assert_int_equal(o.max_sessions, 1024);
    assert_int_equal(o.max_tensors, 1000000);
    assert_int_equal(o.max_pending, 16u << 20);
    assert_int_equal(o.max_pending_total, 256u << 20);
    assert_int_equal(o.max_input_total, 256u << 20);
    assert_int_equal(o.max_queued_requests, 256);
    assert_int_equal(o.max_connections_per_uid, 64);
    assert_int_equal(o.hello_timeout_s, 10);
}

static void test_opts_default_socket_follows_the_protocol_order(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    env.emad_socket = "/tmp/env.sock";
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.socket_path, "/tmp/env.sock");
    parse_ok(&o, &env, ARGS("--socket", "/tmp/opt.sock"));
    assert_string_equal(o.socket_path, "/tmp/opt.sock");

    env.emad_socket = ""; /* set but empty: skipped */
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.socket_path, "/run/user/1000/emad.sock");

    env.emad_socket = NULL;
    env.xdg_runtime_dir = NULL;
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.socket_path, "/run/emad/emad.sock");
    env.xdg_runtime_dir = "";
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.socket_path, "/run/emad/emad.sock");
}

static void test_opts_workers_default_to_online_cpus(void **state)
{
    static const struct {
        long cpus;
        unsigned workers;
    } cases[] = {{1, 1}, {3, 3}, {64, 64}, {0, 1}, {-1, 1}};
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct opts_env env = user_env();
        struct emad_opts o;
        env.online_cpus = cases[i].cpus;
        parse_ok(&o, &env, ARGS(NULL));
        assert_int_equal(o.workers, cases[i].workers);
    }
}

/* ---- Every option ------------------------------------------------------------------------- */

static void test_opts_every_option_is_parsed(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env,
             ARGS("--socket", "/tmp/e.sock", "--socket-mode", "0660", "--allow-group", "trainers",
                  "--workers", "3", "--worker-nice", "7", "--crash-exact", "--state-dir", "/srv/emad",
                  "--log-level", "debug",
                  "--log-file", "/var/log/emad.log", "--max-message", "1M", "--max-depth", "12",
                  "--max-connections", "10", "--max-sessions", "20", "--max-tensors", "300",
                  "--max-pending", "64K", "--max-pending-total", "3M", "--max-input-total",
                  "5M"));
    assert_string_equal(o.socket_path, "/tmp/e.sock");
    assert_int_equal(o.socket_mode, 0660);
    assert_string_equal(o.allow_group, "trainers");
    assert_int_equal(o.workers, 3);
    assert_int_equal(o.worker_nice, 7);
    assert_true(o.crash_exact);
    assert_string_equal(o.state_dir, "/srv/emad");
    assert_int_equal(o.log_level, LOG_LVL_DEBUG);
    assert_string_equal(o.log_file, "/var/log/emad.log");
    assert_int_equal(o.max_message, 1u << 20);
    assert_int_equal(o.max_depth, 12);
    assert_int_equal(o.max_connections, 10);
    assert_int_equal(o.max_sessions, 20);
    assert_int_equal(o.max_tensors, 300);
    assert_int_equal(o.max_pending, 64u << 10);
    assert_int_equal(o.max_pending_total, 3u << 20);
    assert_int_equal(o.max_input_total, 5u << 20);

    /* --opt=value spelling, and the last occurrence wins. */
    parse_ok(&o, &env,
             ARGS("--workers=2", "--socket-mode=640", "--max-message=2048", "--workers", "5",
                  "--log-level=error"));
    assert_int_equal(o.workers, 5);
    assert_int_equal(o.socket_mode, 0640);
    assert_int_equal(o.max_message, 2048);
    assert_int_equal(o.log_level, LOG_LVL_ERROR);
}

static void test_opts_help_and_version_stop_parsing(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    char err[256];
    (void)state;

    assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("--help")), OPTS_HELP);
    assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("-h")), OPTS_HELP);
    assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("--version")), OPTS_VERSION);
    assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("-V")), OPTS_VERSION);
    assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("--workers", "2", "--help")),
                     OPTS_HELP);
    /* Help is answered even where nothing else could be resolved. */
    env.home = NULL;
    env.xdg_state_home = NULL;
    assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("-h")), OPTS_HELP);
}

static void test_opts_usage_describes_every_option(void **state)
{
    static const char *const names[] = {
        "--socket",          "--socket-mode",  "--allow-group", "--workers",
        "--worker-nice",     "--stall-factor",    "--state-dir",       "--log-level",    "--log-file",    "--max-message",
        "--max-depth",       "--max-connections", "--max-sessions", "--max-tensors",
        "--max-pending",     "--max-pending-total", "--max-input-total", "--help",         "--version",     "EMAD_SOCKET",
        "--metrics", "--metrics-textfile", "--metrics-interval", "--inline-max",
        "XDG_RUNTIME_DIR",   "XDG_STATE_HOME", "/run/emad/emad.sock",
    };
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    (void)state;

    assert_non_null(fp);
    opts_usage(fp, "emad-test");
    assert_int_equal(fclose(fp), 0);
    assert_non_null(strstr(text, "Usage: emad-test"));
    for (size_t i = 0; i < ARRAY_LEN(names); i++)
        if (strstr(text, names[i]) == NULL)
            fail_msg("--help does not mention %s", names[i]);
    assert_non_null(strstr(text, "107 bytes"));
    free(text);
}

static void test_opts_log_levels(void **state)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    static const enum log_level levels[] = {LOG_LVL_ERROR, LOG_LVL_WARN, LOG_LVL_INFO,
                                            LOG_LVL_DEBUG};
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(names); i++) {
        parse_ok(&o, &env, ARGS("--log-level", names[i]));
        assert_int_equal(o.log_level, levels[i]);
        assert_string_equal(opts_log_level_name(levels[i]), names[i]);
    }
    assert_string_equal(opts_log_level_name((enum log_level)7), "?");
    parse_fails(&env, ARGS("--log-level", "verbose"), "--log-level", "verbose");
    parse_fails(&env, ARGS("--log-level", "INFO"), "--log-level", "INFO");
    parse_fails(&env, ARGS("--log-level", ""), "--log-level", NULL);
    parse_fails(&env, ARGS("--log-level", "warning"), "--log-level", "warning");
}

/* ---- Rejected values ---------------------------------------------------------------------- */

static void test_opts_socket_mode_must_be_octal_bits(void **state)
{
    static const char *const good[] = {"0", "600", "0600", "0660", "777", "0777", "00644"};
    static const unsigned want[] = {0, 0600, 0600, 0660, 0777, 0777, 0644};
    static const char *const bad[] = {"0800", "8",  "abc", "",   "1000", "0o600",
                                      "0x1ff", "-0", "+600", " 600", "600 ", "-1"};
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        parse_ok(&o, &env, ARGS("--socket-mode", good[i]));
        assert_int_equal(o.socket_mode, want[i]);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        parse_fails(&env, ARGS("--socket-mode", bad[i]), "--socket-mode", bad[i]);
}

static void test_opts_workers_out_of_range_or_not_a_number(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--workers", "1"));
    assert_int_equal(o.workers, 1);
    parse_ok(&o, &env, ARGS("--workers", "1024"));
    assert_int_equal(o.workers, 1024);
    parse_fails(&env, ARGS("--workers", "0"), "--workers 0", "1 to 1024");
    parse_fails(&env, ARGS("--workers", "1025"), "--workers 1025", "1 to 1024");
    parse_fails(&env, ARGS("--workers", "99999999999999999999999"), "--workers", "1 to 1024");
    parse_fails(&env, ARGS("--workers", "-1"), "--workers -1", NULL);
    parse_fails(&env, ARGS("--workers", "+2"), "--workers +2", NULL);
    parse_fails(&env, ARGS("--workers", "two"), "--workers two", NULL);
    parse_fails(&env, ARGS("--workers", "2x"), "--workers 2x", NULL);
    parse_fails(&env, ARGS("--workers", "4K"), "--workers 4K", NULL); /* not a size */
    parse_fails(&env, ARGS("--workers", ""), "--workers", NULL);
}

static void test_opts_worker_nice_stays_within_0_to_19(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--worker-nice", "0"));
    assert_int_equal(o.worker_nice, 0);
    parse_ok(&o, &env, ARGS("--worker-nice", "19"));
    assert_int_equal(o.worker_nice, 19);
    parse_ok(&o, &env, ARGS("--worker-nice=10"));
    assert_int_equal(o.worker_nice, 10);
    parse_fails(&env, ARGS("--worker-nice", "20"), "--worker-nice 20", "0 to 19");
    parse_fails(&env, ARGS("--worker-nice", "-5"), "--worker-nice -5", NULL);
    parse_fails(&env, ARGS("--worker-nice", "low"), "--worker-nice low", NULL);
    parse_fails(&env, ARGS("--worker-nice", ""), "--worker-nice", NULL);
    parse_fails(&env, ARGS("--worker-nice"), "--worker-nice", "needs an argument");
}

static void test_opts_stall_factor_is_0_or_2_and_up(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--workers", "1"));
    assert_int_equal(o.stall_factor, OPTS_DEFAULT_STALL_FACTOR);
    parse_ok(&o, &env, ARGS("--stall-factor", "0"));
    assert_int_equal(o.stall_factor, 0);
    parse_ok(&o, &env, ARGS("--stall-factor=2"));
    assert_int_equal(o.stall_factor, 2);
    parse_fails(&env, ARGS("--stall-factor", "1"), "--stall-factor 1", "2 or more");
    parse_fails(&env, ARGS("--stall-factor", "1000001"), "--stall-factor 1000001", NULL);
    parse_fails(&env, ARGS("--stall-factor", "often"), "--stall-factor often", NULL);
}

/* --inline-max takes byte counts with K, M, G suffixes, 0 (never on the loop) to 1G. */
static void test_opts_inline_max_is_a_size_up_to_1g(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--workers", "1"));
    assert_int_equal(o.inline_max, OPTS_DEFAULT_INLINE_MAX);
    assert_int_equal(o.inline_max, 12u << 20);
    parse_ok(&o, &env, ARGS("--inline-max", "0"));
    assert_int_equal(o.inline_max, 0);
    parse_ok(&o, &env, ARGS("--inline-max=256K"));
    assert_int_equal(o.inline_max, 256u << 10);
    parse_ok(&o, &env, ARGS("--inline-max", "1G"));
    assert_int_equal(o.inline_max, 1u << 30);
    parse_fails(&env, ARGS("--inline-max", "2G"), "--inline-max 2G", "out of range");
    parse_fails(&env, ARGS("--inline-max", "lots"), "--inline-max lots", "size");
    parse_fails(&env, ARGS("--inline-max"), "--inline-max", "needs an argument");
}

/* The size option opt, parsed into the size_t at offset in struct emad_opts, takes 4K to 1024G:
 * both ends parse, one past either is out of range. */
static void expect_size_4k_to_1024g(const struct opts_env *env, const char *opt, size_t offset)
{
    struct emad_opts o;

    parse_ok(&o, env, ARGS(opt, "4K"));
    assert_int_equal(*(const size_t *)((const char *)&o + offset), 4096);
    parse_ok(&o, env, ARGS(opt, "1024G"));
    assert_int_equal(*(const size_t *)((const char *)&o + offset), 1ull << 40);
    parse_fails(env, ARGS(opt, "4095"), opt, "out of range");
    parse_fails(env, ARGS(opt, "1025G"), opt, "out of range");
}

static void test_opts_sizes_take_suffixes_and_reject_bad_values(void **state)
{
    static const struct {
        const char *arg;
        size_t want;
    } good[] = {
        {"64", 64},          {"1K", 1024},         {"1k", 1024},          {"3M", 3u << 20},
        {"3m", 3u << 20},    {"1G", 1u << 30},     {"1g", 1u << 30},      {"1048576", 1u << 20},
        {"1024M", 1u << 30}, {"0001K", 1024},
    };
    static const char *const bad_format[] = {"", "K", "1KB", "1.5M", "1T", "-1", "+1",
                                             " 1", "1 ", "1KK", "0x10"};
    static const char *const out_of_range[] = {"63", "0", "2G", "1025M", "1073741825",
                                               "99999999999999999999999"};
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        parse_ok(&o, &env, ARGS("--max-message", good[i].arg));
        assert_int_equal(o.max_message, good[i].want);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad_format); i++)
        parse_fails(&env, ARGS("--max-message", bad_format[i]), "--max-message", "size");
    for (size_t i = 0; i < ARRAY_LEN(out_of_range); i++)
        parse_fails(&env, ARGS("--max-message", out_of_range[i]), "--max-message",
                    "out of range");

    parse_ok(&o, &env, ARGS("--max-pending", "4K"));
    assert_int_equal(o.max_pending, 4096);
    parse_ok(&o, &env, ARGS("--max-pending", "16G"));
    assert_int_equal(o.max_pending, 16ull << 30);
    parse_fails(&env, ARGS("--max-pending", "4095"), "--max-pending", "out of range");
    parse_fails(&env, ARGS("--max-pending", "17G"), "--max-pending", "out of range");
    parse_fails(&env, ARGS("--max-pending", "lots"), "--max-pending", "lots");
    expect_size_4k_to_1024g(&env, "--max-pending-total",
                            offsetof(struct emad_opts, max_pending_total));
    expect_size_4k_to_1024g(&env, "--max-input-total", offsetof(struct emad_opts, max_input_total));
    parse_fails(&env, ARGS("--max-input-total", "lots"), "--max-input-total", "lots");
}

/* The bounds a peer's own connections, queue and hello are held to. */
static void test_opts_peer_limits_have_bounds(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--max-queued-requests", "2", "--max-connections-per-uid", "1",
                            "--hello-timeout", "1"));
    assert_int_equal(o.max_queued_requests, 2);
    assert_int_equal(o.max_connections_per_uid, 1);
    assert_int_equal(o.hello_timeout_s, 1);
    parse_ok(&o, &env, ARGS("--max-queued-requests=1048576", "--max-connections-per-uid=1048576",
                            "--hello-timeout=3600"));
    assert_int_equal(o.max_queued_requests, 1u << 20);
    assert_int_equal(o.max_connections_per_uid, 1u << 20);
    assert_int_equal(o.hello_timeout_s, 3600);
    /* One queued request would stop reading at once and resume at 0: no pipelining. */
    parse_fails(&env, ARGS("--max-queued-requests", "1"), "--max-queued-requests 1",
                "out of range");
    parse_fails(&env, ARGS("--max-queued-requests", "1048577"), "--max-queued-requests",
                "out of range");
    parse_fails(&env, ARGS("--max-connections-per-uid", "0"), "--max-connections-per-uid 0",
                "out of range");
    parse_fails(&env, ARGS("--hello-timeout", "0"), "--hello-timeout 0", "out of range");
    parse_fails(&env, ARGS("--hello-timeout", "3601"), "--hello-timeout 3601", "out of range");
    parse_fails(&env, ARGS("--hello-timeout", "1s"), "--hello-timeout 1s", "number");
    parse_fails(&env, ARGS("--max-queued-requests"), "--max-queued-requests",
                "needs an argument");
}

static void test_opts_max_depth_stays_within_4_to_31(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--max-depth", "4"));
    assert_int_equal(o.max_depth, 4);
    parse_ok(&o, &env, ARGS("--max-depth", "31"));
    assert_int_equal(o.max_depth, 31);
    /* The decoder accepts what the option accepts. */
    struct wire_decoder d;
    assert_int_equal(wire_decoder_init(&d, o.max_message, o.max_depth), 0);
    wire_decoder_free(&d);
    parse_fails(&env, ARGS("--max-depth", "3"), "--max-depth 3", "4 to 31");
    parse_fails(&env, ARGS("--max-depth", "32"), "--max-depth 32", "4 to 31");
    parse_fails(&env, ARGS("--max-depth", "0"), "--max-depth", "4 to 31");
    parse_fails(&env, ARGS("--max-depth", "deep"), "--max-depth", "deep");
}

static void test_opts_other_limits_have_bounds(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env,
             ARGS("--max-connections", "1", "--max-sessions", "1048576", "--max-tensors",
                  "4294967296"));
    assert_int_equal(o.max_connections, 1);
    assert_int_equal(o.max_sessions, 1u << 20);
    assert_int_equal(o.max_tensors, 1ull << 32);
    parse_fails(&env, ARGS("--max-connections", "0"), "--max-connections", "out of range");
    parse_fails(&env, ARGS("--max-connections", "1048577"), "--max-connections",
                "out of range");
    parse_fails(&env, ARGS("--max-sessions", "0"), "--max-sessions", "out of range");
    parse_fails(&env, ARGS("--max-tensors", "0"), "--max-tensors", "out of range");
    parse_fails(&env, ARGS("--max-tensors", "4294967297"), "--max-tensors", "out of range");
    parse_fails(&env, ARGS("--max-tensors", "1M"), "--max-tensors", "1M");
}

/* --metrics serves every user's session names: loopback or a Unix socket only. */
static void test_opts_metrics_address_is_loopback_or_a_path(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    char path[160];
    (void)state;

    parse_ok(&o, &env, ARGS("--state-dir", "/s"));
    assert_string_equal(o.metrics_path, "");
    assert_int_equal(o.metrics_port, 0);
    assert_string_equal(o.metrics_textfile, "");
    assert_int_equal(o.metrics_interval_s, OPTS_DEFAULT_METRICS_INTERVAL);
    parse_ok(&o, &env, ARGS("--metrics", "127.0.0.1:9469"));
    assert_string_equal(o.metrics_host, "127.0.0.1");
    assert_int_equal(o.metrics_port, 9469);
    assert_string_equal(o.metrics_path, "");
    parse_ok(&o, &env, ARGS("--metrics", "localhost:1"));
    assert_string_equal(o.metrics_host, "127.0.0.1");
    assert_int_equal(o.metrics_port, 1);
    parse_ok(&o, &env, ARGS("--metrics", "127.8.9.10:65535"));
    assert_string_equal(o.metrics_host, "127.8.9.10");
    parse_ok(&o, &env, ARGS("--metrics", "[::1]:9469"));
    assert_string_equal(o.metrics_host, "::1");
    /* The last one given counts: a path after an address turns the address off. */
    parse_ok(&o, &env, ARGS("--metrics", "127.0.0.1:9469", "--metrics", "/run/emad/metrics.sock"));
    assert_string_equal(o.metrics_path, "/run/emad/metrics.sock");
    assert_int_equal(o.metrics_port, 0);
    parse_ok(&o, &env, ARGS("--metrics", "./m.sock"));
    assert_string_equal(o.metrics_path, "./m.sock");

    parse_fails(&env, ARGS("--metrics", "0.0.0.0:9469"), "--metrics 0.0.0.0:9469",
                "not a loopback address");
    parse_fails(&env, ARGS("--metrics", "192.168.1.2:9469"), "192.168.1.2", "loopback");
    parse_fails(&env, ARGS("--metrics", "[::]:9469"), "[::]:9469", "loopback");
    parse_fails(&env, ARGS("--metrics", "example.com:9469"), "example.com", "HOST must be");
    parse_fails(&env, ARGS("--metrics", "127.0.0.1"), "127.0.0.1", "HOST:PORT");
    parse_fails(&env, ARGS("--metrics", ":9469"), ":9469", "HOST:PORT");
    parse_fails(&env, ARGS("--metrics", "127.0.0.1:0"), "127.0.0.1:0", "1 to 65535");
    parse_fails(&env, ARGS("--metrics", "127.0.0.1:65536"), "65536", "1 to 65535");
    parse_fails(&env, ARGS("--metrics", "127.0.0.1:http"), "http", "1 to 65535");
    parse_fails(&env, ARGS("--metrics", "[::1:9469"), "[::1", "HOST must be");
    parse_fails(&env, ARGS("--metrics", "[zz]:9469"), "[zz]", "IPv6");
    parse_fails(&env, ARGS("--metrics", repeat(path, 108, 'm', "/")), "--metrics",
                "at most 107 bytes");
}

static void test_opts_metrics_textfile_and_interval(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env,
             ARGS("--metrics-textfile", "/var/lib/node_exporter/emad.prom", "--metrics-interval",
                  "1"));
    assert_string_equal(o.metrics_textfile, "/var/lib/node_exporter/emad.prom");
    assert_int_equal(o.metrics_interval_s, 1);
    parse_ok(&o, &env, ARGS("--metrics-interval", "3600"));
    assert_int_equal(o.metrics_interval_s, 3600);
    parse_fails(&env, ARGS("--metrics-interval", "0"), "--metrics-interval", "out of range");
    parse_fails(&env, ARGS("--metrics-interval", "3601"), "--metrics-interval", "out of range");
    parse_fails(&env, ARGS("--metrics-interval", "1.5"), "--metrics-interval", "1.5");
    parse_fails(&env, ARGS("--metrics-interval", "-1"), "--metrics-interval", "-1");
    parse_fails(&env, ARGS("--metrics-textfile", ""), "--metrics-textfile", "empty");
}

static void test_opts_allow_group_must_be_a_group_name(void **state)
{
    static const char *const good[] = {"wheel", "emad-users", "ml_team", "a.b", "machine$"};
    static const char *const bad[] = {"", "two words", "x/y", "a:b", "caf\xc3\xa9"};
    struct opts_env env = user_env();
    struct emad_opts o;
    char name[80];
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        parse_ok(&o, &env, ARGS("--allow-group", good[i]));
        assert_string_equal(o.allow_group, good[i]);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        parse_fails(&env, ARGS("--allow-group", bad[i]), "--allow-group", NULL);
    parse_ok(&o, &env, ARGS("--allow-group", repeat(name, 63, 'g', "")));
    assert_int_equal(strlen(o.allow_group), 63);
    parse_fails(&env, ARGS("--allow-group", repeat(name, 64, 'g', "")), "--allow-group", NULL);
}

static void test_opts_log_file_and_state_dir_must_not_be_empty(void **state)
{
    struct opts_env env = user_env();
    char *long_path = malloc(PATH_MAX + 16);
    (void)state;

    assert_non_null(long_path);
    parse_fails(&env, ARGS("--log-file", ""), "--log-file", NULL);
    parse_fails(&env, ARGS("--log-file", repeat(long_path, PATH_MAX, 'l', "/")), "--log-file",
                NULL);
    parse_fails(&env, ARGS("--state-dir", ""), "--state-dir", NULL);
    parse_fails(&env, ARGS("--state-dir", repeat(long_path, PATH_MAX, 's', "/")), "--state-dir",
                NULL);
    free(long_path);
}

static void test_opts_unknown_option_is_named(void **state)
{
    struct opts_env env = user_env();
    (void)state;

    parse_fails(&env, ARGS("--bogus"), "unknown option", "--bogus");
    parse_fails(&env, ARGS("--workers", "2", "--bogus=1"), "unknown option", "--bogus");
    parse_fails(&env, ARGS("-x"), "unknown option", "-x");
    /* A short option grouped with others: the message names it, not a neighbour. */
    parse_fails(&env, ARGS("-xq"), "unknown option", "-x");
    parse_fails(&env, ARGS("--workers", "2", "-qh"), "unknown option", "-q");
    parse_fails(&env, ARGS("--socket-mod", "0600", "--sock", "/x"), "--sock", NULL);
    /* Options that take no argument, given one. */
    parse_fails(&env, ARGS("-xq", "--help=x"), "-x", NULL);
    parse_fails(&env, ARGS("--help=x"), "--help=x", NULL);
    parse_fails(&env, ARGS("--version=1"), "--version=1", NULL);
}

static void test_opts_missing_argument_is_named(void **state)
{
    struct opts_env env = user_env();
    (void)state;

    parse_fails(&env, ARGS("--socket"), "--socket", "argument");
    parse_fails(&env, ARGS("--workers", "2", "--max-depth"), "--max-depth", "argument");
    parse_fails(&env, ARGS("--log-level"), "--log-level", "argument");
    parse_fails(&env, ARGS("--max-message"), "--max-message", "argument");
}

static void test_opts_stray_positional_argument_is_rejected(void **state)
{
    struct opts_env env = user_env();
    (void)state;

    parse_fails(&env, ARGS("start"), "\"start\"", "options only");
    parse_fails(&env, ARGS("--workers", "2", "extra"), "\"extra\"", NULL);
    /* getopt moves it behind the options; it is still found. */
    parse_fails(&env, ARGS("first", "--workers", "2"), "\"first\"", NULL);
    /* After "--" everything is positional. */
    parse_fails(&env, ARGS("--", "--workers"), "\"--workers\"", NULL);
}

/* ---- Paths -------------------------------------------------------------------------------- */

static void test_opts_socket_path_longer_than_107_bytes_is_rejected(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    char path[200], dir[200];
    (void)state;

    parse_ok(&o, &env, ARGS("--socket", repeat(path, 107, 's', "/tmp/")));
    assert_int_equal(strlen(o.socket_path), 107);
    assert_string_equal(o.socket_path, path);
    parse_fails(&env, ARGS("--socket", repeat(path, 108, 's', "/tmp/")), "107", "--socket");

    env.emad_socket = repeat(path, 108, 'e', "/tmp/");
    parse_fails(&env, ARGS(NULL), "107", NULL);
    env.emad_socket = NULL;
    env.xdg_runtime_dir = repeat(dir, 98, 'd', "/run/");
    parse_fails(&env, ARGS(NULL), "107", NULL);
    env.xdg_runtime_dir = repeat(dir, 97, 'd', "/run/");
    parse_ok(&o, &env, ARGS(NULL));
    assert_int_equal(strlen(o.socket_path), 107);

    parse_fails(&env, ARGS("--socket", ""), "--socket", "empty");
}

static void test_opts_state_dir_defaults(void **state)
{
    struct opts_env env = user_env();
    char out[PATH_MAX];
    (void)state;

    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/home/alice/.local/state/emad");

    env.xdg_state_home = "/home/alice/.state";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/home/alice/.state/emad");

    /* XDG: a relative or empty XDG_STATE_HOME is ignored. */
    env.xdg_state_home = "relative/state";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/home/alice/.local/state/emad");
    env.xdg_state_home = "";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/home/alice/.local/state/emad");

    /* root: /var/lib/emad, whatever HOME says; XDG_STATE_HOME still first. */
    env.uid = 0;
    env.xdg_state_home = NULL;
    env.home = "/root";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/var/lib/emad");
    env.home = NULL;
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/var/lib/emad");
    env.xdg_state_home = "/srv/state";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), 0);
    assert_string_equal(out, "/srv/state/emad");

    /* Nobody: no XDG_STATE_HOME, not root, no usable HOME. */
    env = user_env();
    env.home = NULL;
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), -ENOENT);
    env.home = "";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), -ENOENT);
    env.home = "home/alice";
    assert_int_equal(opts_default_state_dir(&env, out, sizeof(out)), -ENOENT);

    /* The caller's buffer is respected. */
    env = user_env();
    assert_int_equal(opts_default_state_dir(&env, out, 10), -ENAMETOOLONG);
    assert_int_equal(opts_default_state_dir(&env, out, strlen("/home/alice/.local/state/emad")),
                     -ENAMETOOLONG);
    assert_int_equal(
        opts_default_state_dir(&env, out, strlen("/home/alice/.local/state/emad") + 1), 0);
}

static void test_opts_parse_needs_a_state_dir(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    env.home = NULL;
    parse_fails(&env, ARGS(NULL), "state directory", "--state-dir");
    parse_ok(&o, &env, ARGS("--state-dir", "/srv/emad"));
    assert_string_equal(o.state_dir, "/srv/emad");
    env.uid = 0;
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.state_dir, "/var/lib/emad");
    env.xdg_state_home = "/xdg";
    parse_ok(&o, &env, ARGS(NULL));
    assert_string_equal(o.state_dir, "/xdg/emad");
}

/* ---- Sizes and repeated parsing ----------------------------------------------------------- */

static void test_opts_parse_size(void **state)
{
    static const struct {
        const char *s;
        uint64_t want;
    } good[] = {
        {"0", 0},
        {"1", 1},
        {"1K", 1024},
        {"1k", 1024},
        {"5M", 5ull << 20},
        {"5m", 5ull << 20},
        {"7G", 7ull << 30},
        {"7g", 7ull << 30},
        {"16777215G", 16777215ull << 30},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183G", 17179869183ull << 30},
    };
    static const struct {
        const char *s;
        int rc;
    } bad[] = {
        {"", -EINVAL},
        {"K", -EINVAL},
        {"-1", -EINVAL},
        {"+1", -EINVAL},
        {" 1", -EINVAL},
        {"1 ", -EINVAL},
        {"1KB", -EINVAL},
        {"1T", -EINVAL},
        {"1.0", -EINVAL},
        {"0x10", -EINVAL},
        {"18446744073709551616", -ERANGE},
        {"17179869184G", -ERANGE},
        {"18014398509481984M", -ERANGE},
    };
    uint64_t v;
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(good); i++) {
        v = 12345;
        if (opts_parse_size(good[i].s, 0, UINT64_MAX, &v) != 0)
            fail_msg("\"%s\" rejected", good[i].s);
        if (v != good[i].want)
            fail_msg("\"%s\" read as %llu", good[i].s, (unsigned long long)v);
    }
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        v = 12345;
        int rc = opts_parse_size(bad[i].s, 0, UINT64_MAX, &v);
        if (rc != bad[i].rc)
            fail_msg("\"%s\": %d, expected %d", bad[i].s, rc, bad[i].rc);
        assert_int_equal(v, 12345); /* untouched on error */
    }
    assert_int_equal(opts_parse_size(NULL, 0, 10, &v), -EINVAL);

    /* Bounds are inclusive and apply after the suffix. */
    assert_int_equal(opts_parse_size("1K", 1024, 1024, &v), 0);
    assert_int_equal(v, 1024);
    assert_int_equal(opts_parse_size("1023", 1024, 2048, &v), -ERANGE);
    assert_int_equal(opts_parse_size("2049", 1024, 2048, &v), -ERANGE);
    assert_int_equal(opts_parse_size("3K", 1024, 2048, &v), -ERANGE);
}

/* opts_parse() resets getopt, so parses do not leak into each other, even after an error or
 * after --help stopped one halfway. */
static void test_opts_parse_can_be_called_repeatedly(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    char err[256];
    (void)state;

    for (int i = 0; i < 3; i++) {
        parse_ok(&o, &env, ARGS("--workers", "7", "--log-level", "warn"));
        assert_int_equal(o.workers, 7);
        assert_int_equal(o.log_level, LOG_LVL_WARN);
        assert_int_equal(parse_v(&o, &env, err, sizeof(err), ARGS("-h", "--workers", "2")),
                         OPTS_HELP);
        parse_fails(&env, ARGS("--workers", "0"), "--workers", NULL);
        parse_fails(&env, ARGS("-xq"), "-x", NULL);
        parse_ok(&o, &env, ARGS(NULL));
        assert_int_equal(o.workers, 8);
        assert_int_equal(o.log_level, LOG_LVL_INFO);
    }
}

/* Per-uid limits (session.c): defaults, values with suffixes, ranges. */
static void test_opts_per_uid_limits(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    (void)state;

    parse_ok(&o, &env, ARGS("--socket", "/tmp/e.sock"));
    assert_int_equal(o.max_sessions_per_uid, 64);
    assert_int_equal(o.max_tensors_per_uid, 4000000);
    assert_int_equal(o.max_shadow_bytes_per_uid, 64ull << 30);
    parse_ok(&o, &env, ARGS("--max-sessions-per-uid", "3", "--max-tensors-per-uid", "500",
                            "--max-shadow-bytes-per-uid", "2G"));
    assert_int_equal(o.max_sessions_per_uid, 3);
    assert_int_equal(o.max_tensors_per_uid, 500);
    assert_int_equal(o.max_shadow_bytes_per_uid, 2ull << 30);
    parse_fails(&env, ARGS("--max-sessions-per-uid", "0"), "--max-sessions-per-uid",
                "out of range");
    parse_fails(&env, ARGS("--max-tensors-per-uid", "0"), "--max-tensors-per-uid",
                "out of range");
    parse_fails(&env, ARGS("--max-shadow-bytes-per-uid", "1K"), "--max-shadow-bytes-per-uid",
                "out of range");
}

/* Quotas on each uid's state files (store.h): defaults, suffixes, ranges, and --help. */
static void test_opts_state_quotas_per_uid(void **state)
{
    struct opts_env env = user_env();
    struct emad_opts o;
    char *text = NULL;
    size_t len = 0;
    FILE *fp;
    (void)state;

    parse_ok(&o, &env, ARGS("--socket", "/tmp/e.sock"));
    assert_int_equal(o.max_state_files_per_uid, 64);
    assert_int_equal(o.max_state_bytes_per_uid, 256ull << 30);
    parse_ok(&o, &env, ARGS("--max-state-files-per-uid", "3", "--max-state-bytes-per-uid", "48K"));
    assert_int_equal(o.max_state_files_per_uid, 3);
    assert_int_equal(o.max_state_bytes_per_uid, 48u << 10);
    parse_ok(&o, &env, ARGS("--max-state-bytes-per-uid", "2G"));
    assert_int_equal(o.max_state_bytes_per_uid, 2ull << 30);
    parse_fails(&env, ARGS("--max-state-files-per-uid", "0"), "--max-state-files-per-uid",
                "out of range");
    parse_fails(&env, ARGS("--max-state-files-per-uid", "1K"), "--max-state-files-per-uid", NULL);
    parse_fails(&env, ARGS("--max-state-bytes-per-uid", "1K"), "--max-state-bytes-per-uid",
                "out of range");
    parse_fails(&env, ARGS("--max-state-bytes-per-uid", "x"), "--max-state-bytes-per-uid", NULL);

    fp = open_memstream(&text, &len);
    assert_non_null(fp);
    opts_usage(fp, "emad-test");
    assert_int_equal(fclose(fp), 0);
    assert_non_null(strstr(text, "--max-state-files-per-uid N"));
    assert_non_null(strstr(text, "--max-state-bytes-per-uid BYTES"));
    assert_non_null(strstr(text, "No request deletes a state file"));
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts_defaults),
        cmocka_unit_test(test_opts_metrics_address_is_loopback_or_a_path),
        cmocka_unit_test(test_opts_metrics_textfile_and_interval),
        cmocka_unit_test(test_opts_stall_factor_is_0_or_2_and_up),
        cmocka_unit_test(test_opts_inline_max_is_a_size_up_to_1g),
        cmocka_unit_test(test_opts_default_socket_follows_the_protocol_order),
        cmocka_unit_test(test_opts_workers_default_to_online_cpus),
        cmocka_unit_test(test_opts_every_option_is_parsed),
        cmocka_unit_test(test_opts_help_and_version_stop_parsing),
        cmocka_unit_test(test_opts_usage_describes_every_option),
        cmocka_unit_test(test_opts_log_levels),
        cmocka_unit_test(test_opts_socket_mode_must_be_octal_bits),
        cmocka_unit_test(test_opts_workers_out_of_range_or_not_a_number),
        cmocka_unit_test(test_opts_worker_nice_stays_within_0_to_19),
        cmocka_unit_test(test_opts_sizes_take_suffixes_and_reject_bad_values),
        cmocka_unit_test(test_opts_max_depth_stays_within_4_to_31),
        cmocka_unit_test(test_opts_peer_limits_have_bounds),
        cmocka_unit_test(test_opts_other_limits_have_bounds),
        cmocka_unit_test(test_opts_allow_group_must_be_a_group_name),
        cmocka_unit_test(test_opts_log_file_and_state_dir_must_not_be_empty),
        cmocka_unit_test(test_opts_unknown_option_is_named),
        cmocka_unit_test(test_opts_missing_argument_is_named),
        cmocka_unit_test(test_opts_stray_positional_argument_is_rejected),
        cmocka_unit_test(test_opts_socket_path_longer_than_107_bytes_is_rejected),
        cmocka_unit_test(test_opts_state_dir_defaults),
        cmocka_unit_test(test_opts_parse_needs_a_state_dir),
        cmocka_unit_test(test_opts_parse_size),
        cmocka_unit_test(test_opts_parse_can_be_called_repeatedly),
        cmocka_unit_test(test_opts_per_uid_limits),
        cmocka_unit_test(test_opts_state_quotas_per_uid),
    };

    return cmocka_run_group_tests_name("opts", tests, NULL, NULL);
}
