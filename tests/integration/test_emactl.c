/*
 * test_emactl.c - emactl's rules for every command: the same field shows
 * the same way (status and list print one sessions table, in aligned
 * columns without trailing spaces, agreeing with show); every error names
 * the command typed; an unknown command gets the table's list; every
 * command has a manual; every float of --json reads back exactly, in the
 * fewest digits.
 *
 * emad and emactl run under the shared harness (harness.h). Binaries come
 * from $EMAD_BIN and $EMACTL_BIN (default build/emad and build/emactl).
 */
#include "harness.h"

#include "emaclient.h"

#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* emactl's commands, as its table lists them. */
static const char *const commands[] = {
    "status",    "list",    "show",     "save",    "drop",   "top", "gc", "metrics",
    "consolidate", "snapshots", "snapshot", "posthoc", "export", "job", "help"};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

/* ---- what a test made, for the teardown ---- */

static emac_segment *segs[3];
static emac_client *client;

static int teardown(void **state)
{
    kill_leftovers(state);
    if (client != NULL)
        emac_disconnect(client);
    client = NULL;
    for (size_t i = 0; i < sizeof(segs) / sizeof(segs[0]); i++) {
        if (segs[i] != NULL)
            emac_segment_destroy(segs[i]);
        segs[i] = NULL;
    }
    return 0;
}

/* ---- running emactl ---- */

/* Run emactl with the arguments (NULL-terminated); its exit status, its
 * stdout and stderr in out. */
static int ctl(char *out, size_t outlen, ...)
{
    char *argv[16];
    size_t n = 0;
    va_list ap;
    const char *a;

    argv[n++] = (char *)emactl_bin();
    va_start(ap, outlen);
    while ((a = va_arg(ap, const char *)) != NULL && n < 15)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    return run_capture(argv, NULL, out, outlen);
}

/* No line of out ends in a space, none is wider than max columns (0: any). */
static void expect_tidy_lines(const char *out, size_t max)
{
    for (const char *line = out; *line;) {
        size_t n = strcspn(line, "\n");
        if (n > 0 && line[n - 1] == ' ')
            fail_msg("a line ends in a space:\n\"%.*s\"\nin:\n%s", (int)n, line, out);
        if (max > 0 && n > max)
            fail_msg("a line is wider than %zu columns:\n%.*s", max, (int)n, line);
        line += n + (line[n] == '\n');
    }
}

/* ---- tables ---- */

#define MAX_COLS 16

/* The columns of a table, from its header line: where each head starts and
 * ends. A column is right-aligned when its cells end where its head does. */
struct layout {
    size_t n;
    size_t start[MAX_COLS], end[MAX_COLS];
};

static void header_layout(const char *head, struct layout *l)
{
    size_t len = strcspn(head, "\n");

    l->n = 0;
    for (size_t i = 0; i < len;) {
        if (head[i] == ' ') {
            i++;
            continue;
        }
        assert_true(l->n < MAX_COLS);
        l->start[l->n] = i;
        while (i < len && head[i] != ' ')
            i++;
        l->end[l->n++] = i;
    }
}

/* Every row of the table (from its header line to the end of text) has a
 * cell in each column, aligned with the head: starting where a left-aligned
 * head starts, ending where a right-aligned one ends, two spaces apart. */
static void expect_aligned(const char *table, const char *const right[], size_t nright)
{
    struct layout l;
    header_layout(table, &l);
    assert_true(l.n > 1);

    const char *row = strchr(table, '\n');
    assert_non_null(row);
    for (row++; *row; row += strcspn(row, "\n") + (row[strcspn(row, "\n")] == '\n')) {
        size_t len = strcspn(row, "\n");
        for (size_t c = 0; c < l.n; c++) {
            bool is_right = false;
            for (size_t k = 0; k < nright; k++)
                is_right |= strncmp(table + l.start[c], right[k], strlen(right[k])) == 0 &&
                            l.end[c] - l.start[c] == strlen(right[k]);
            if (is_right) {
                if (!(l.end[c] <= len && row[l.end[c] - 1] != ' ' &&
                      (l.end[c] == len || row[l.end[c]] == ' ')))
                    fail_msg("column %zu does not end at %zu in\n%.*s\nof\n%s", c, l.end[c],
                             (int)len, row, table);
            } else if (!(l.start[c] < len && row[l.start[c]] != ' ' &&
                         (c == 0 || (row[l.start[c] - 1] == ' ' && row[l.start[c] - 2] == ' ')))) {
                fail_msg("column %zu does not start at %zu in\n%.*s\nof\n%s", c, l.start[c],
                         (int)len, row, table);
            }
        }
    }
}

/* The whitespace-separated cells of the row of table that begins with
 * session, into cells (n of them); returns how many there are. */
static size_t row_cells(const char *table, const char *session, char cells[][64], size_t n)
{
    char want[160];
    snprintf(want, sizeof(want), "\n%s ", session);
    const char *row = strstr(table, want);
    if (row == NULL)
        fail_msg("no row for %s in\n%s", session, table);
    row++;
    size_t len = strcspn(row, "\n"), k = 0;
    char line[512];
    snprintf(line, sizeof(line), "%.*s", (int)len, row);
    for (char *save = NULL, *tok = strtok_r(line, " ", &save); tok != NULL && k < n;
         tok = strtok_r(NULL, " ", &save))
        snprintf(cells[k++], 64, "%s", tok);
    return k;
}

/* ---- floats in JSON ---- */

/* The significant digits of a number as text: "0.00120" has 2, "3000.0" 1. */
static int significant_digits(const char *text, size_t len)
{
    int n = 0, zeros = 0;
    bool seen = false;

    for (size_t i = 0; i < len && text[i] != 'e' && text[i] != 'E'; i++) {
        if (text[i] < '0' || text[i] > '9')
            continue;
        if (text[i] == '0') {
            zeros += seen;
            continue;
        }
        n += seen ? zeros + 1 : 1;
        zeros = 0;
        seen = true;
    }
    return n == 0 ? 1 : n;
}

/* Every float of the JSON text json reads back exactly, and no text with a
 * significant digit fewer reads back the same. Returns how many it saw. */
static int expect_shortest_floats(const char *json)
{
    bool in_string = false;
    int floats = 0;

    for (const char *p = json; *p; p++) {
        if (in_string) {
            if (*p == '\\' && p[1] != '\0')
                p++;
            else if (*p == '"')
                in_string = false;
            continue;
        }
        if (*p == '"') {
            in_string = true;
            continue;
        }
        if (!(*p == '-' || (*p >= '0' && *p <= '9')))
            continue;
        size_t len = strspn(p, "-+0123456789.eE");
        if (strcspn(p, ".eE") < len) {
            char text[64], shorter[64], *end;
            snprintf(text, sizeof(text), "%.*s", (int)len, p);
            double d = strtod(text, &end);
            assert_true(*end == '\0');
            int digits = significant_digits(text, len);
            if (digits > 17)
                fail_msg("%s has %d significant digits", text, digits);
            if (digits > 1) {
                snprintf(shorter, sizeof(shorter), "%.*e", digits - 2, d);
                if (strtod(shorter, NULL) == d)
                    fail_msg("%s is not the shortest form: %s reads back the same", text, shorter);
            }
            floats++;
        }
        p += len - 1;
    }
    return floats;
}

/* ---- sessions for the tests ---- */

static const char long_name[] = "a-rather-long-session-name-to-widen-the-table";

/* Two sessions in d's emad, attached to client: "swapped", started and
 * with the EMA weights swapped in (half-life 4ba, updates every 2ba: its
 * smoothing is 0.5^(1/2)), and long_name, waiting for its ema_start, with
 * smoothing 0.1. */
static void two_sessions(const struct daemon *d)
{
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    struct emac_error err;
    struct emac_result r;
    emac_session *a = NULL, *b = NULL;

    client = client_connect(d, "test_emactl");
    struct emac_config ca = {.half_life = "4ba", .update_interval = "2ba"};
    struct emac_config cb = {
        .has_smoothing = true, .smoothing = 0.1, .update_interval = "1ba", .ema_start = "100ba"};
    if (emac_segment_create(&spec, 1, &segs[0], &err) < 0 ||
        emac_segment_create(&spec, 1, &segs[1], &err) < 0 ||
        emac_register(client, "swapped", segs[0], &ca, false, &a, &err) < 0 ||
        emac_register(client, long_name, segs[1], &cb, false, &b, &err) < 0)
        fail_msg("%s: %s", err.code, err.message);
    for (uint64_t batch = 1; batch <= 4; batch++)
        event_at(a, "batch_end", batch);
    event_at(b, "batch_end", 1);
    if (emac_swap(a, "ema", &r, &err) < 0)
        fail_msg("swap: %s: %s", err.code, err.message);
    assert_true(r.active);
    emac_session_free(a);
    emac_session_free(b);
}

/* ---- tests ---- */

static void test_emactl_status_and_list_print_one_aligned_sessions_table(void **state)
{
    static const char *const right[] = {"TENSORS", "PARAMS", "SHADOW", "UPDATES"};
    struct daemon d;
    char list[8192], status[8192], show[8192], cells[16][64], pid[32];
    (void)state;

    daemon_start(&d, NULL);
    two_sessions(&d);
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());

    assert_int_equal(ctl(list, sizeof(list), "--socket", d.sock, "list", NULL), 0);
    assert_int_equal(ctl(status, sizeof(status), "--socket", d.sock, "status", NULL), 0);
    expect_tidy_lines(list, 0);
    expect_tidy_lines(status, 0);
    assert_true(strncmp(list, "SESSION  ", 9) == 0);
    expect_in(list, "  OWNER  ");
    expect_aligned(list, right, sizeof(right) / sizeof(right[0]));

    /* status ends with the very table list prints. */
    const char *table = strstr(status, "\n\nSESSION ");
    assert_non_null(table);
    assert_string_equal(table + 2, list);

    /* The same fields, shown the same way: the swapped-in session is active
     * and started in every command, the other neither. */
    static const char *const heads[] = {"SESSION", "OWNER",   "TENSORS", "PARAMS",
                                        "SHADOW",  "UPDATES", "STARTED", "ACTIVE"};
    char buf[8200];
    snprintf(buf, sizeof(buf), "\n%s", list);
    assert_int_equal(row_cells(buf, "SESSION", cells, 16), 8);
    for (size_t i = 0; i < 8; i++)
        assert_string_equal(cells[i], heads[i]);
    /* SESSION OWNER TENSORS PARAMS MiB SHADOW MiB UPDATES STARTED ACTIVE */
    assert_int_equal(row_cells(buf, "swapped", cells, 16), 10);
    assert_string_equal(cells[1], pid);
    assert_string_equal(cells[2], "1");
    assert_string_equal(cells[4], "MiB");
    assert_string_equal(cells[7], "2");
    assert_string_equal(cells[8], "yes");
    assert_string_equal(cells[9], "yes");
    assert_int_equal(row_cells(buf, long_name, cells, 16), 10);
    assert_string_equal(cells[8], "no");
    assert_string_equal(cells[9], "no");

    assert_int_equal(ctl(show, sizeof(show), "--socket", d.sock, "show", "swapped", NULL), 0);
    expect_tidy_lines(show, 0);
    expect_in(show, "\nowner            %s (", pid);
    expect_in(show, "\nstarted          yes\n");
    expect_in(show, "\nactive           yes (");
    expect_in(show, "\nupdates          2\n");
    expect_in(show, "\ninterrupted      no\n");
    assert_int_equal(ctl(show, sizeof(show), "--socket", d.sock, "show", long_name, NULL), 0);
    expect_in(show, "\nstarted          no (");
    expect_in(show, "\nactive           no (");

    /* Detached: "detached" in the table and in show. */
    emac_disconnect(client);
    client = NULL;
    for (int i = 0; i < 500; i++) {
        assert_int_equal(ctl(list, sizeof(list), "--socket", d.sock, "list", NULL), 0);
        snprintf(buf, sizeof(buf), "\n%s", list);
        row_cells(buf, "swapped", cells, 16);
        if (strcmp(cells[1], "detached") == 0)
            break;
        sleep_ms(10); /* emad notices the disconnect asynchronously */
    }
    assert_string_equal(cells[1], "detached");
    expect_aligned(list, right, sizeof(right) / sizeof(right[0]));
    assert_int_equal(ctl(show, sizeof(show), "--socket", d.sock, "show", "swapped", NULL), 0);
    expect_in(show, "\nowner            detached (");
    daemon_stop(&d);
}

static void test_emactl_json_floats_are_the_shortest_that_read_back(void **state)
{
    struct daemon d;
    char out[16384];
    (void)state;

    daemon_start(&d, NULL);
    two_sessions(&d);

    assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, "status", "--json", NULL), 0);
    assert_true(out[0] == '{');
    /* uptime, two smoothings, the update's seconds */
    assert_true(expect_shortest_floats(out) >= 3);
    expect_in(out, "\"smoothing\": 0.1,");
    expect_in(out, "\"smoothing\": 0.7071067811865476,");

    assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, "show", long_name, "--json", NULL),
                     0);
    expect_shortest_floats(out);
    expect_in(out, "\"smoothing\": 0.1,");
    assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, "list", "--json", NULL), 0);
    assert_true(expect_shortest_floats(out) >= 2);
    daemon_stop(&d);
}

static void test_emactl_errors_name_the_command_typed(void **state)
{
    struct daemon d;
    char out[8192];
    const char *gone = "/tmp/emad-test-nonexistent.sock";
    (void)state;

    daemon_start(&d, NULL);
    /* show asks emad for the status of the session: the error still says show. */
    assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, "show", "nosuch", NULL), 1);
    expect_in(out, "emactl: NOSESSION: show: no session named \"nosuch\"\n");
    assert_null(strstr(out, "status"));
    const char *named[] = {"status", "show", "save", "drop"};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
        assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, named[i], "nosuch", NULL), 1);
        expect_in(out, "emactl: NOSESSION: %s: ", named[i]);
        assert_int_equal(ctl(out, sizeof(out), "--socket", gone, named[i], "nosuch", NULL), 1);
        expect_in(out, "emactl: CONNECT: %s: cannot connect to emad at %s", named[i], gone);
    }
    assert_int_equal(ctl(out, sizeof(out), "--socket", gone, "list", NULL), 1);
    expect_in(out, "emactl: CONNECT: list: cannot connect to emad at %s", gone);
    daemon_stop(&d);

    /* Usage errors: too many arguments for every command, too few for those
     * that need one, an option unknown or not the command's. */
    for (size_t i = 0; i < NCOMMANDS; i++) {
        assert_int_equal(ctl(out, sizeof(out), commands[i], "a", "b", "c", NULL), 2);
        expect_in(out, "emactl: USAGE: %s: unexpected argument \"", commands[i]);
        expect_in(out, "\nusage: emactl %s", commands[i]);
        expect_in(out, "\nTry 'emactl %s --help'.\n", commands[i]);
        assert_int_equal(ctl(out, sizeof(out), commands[i], "--frob", NULL), 2);
        expect_in(out, "emactl: USAGE: %s: unknown option --frob\n", commands[i]);
    }
    const char *need[] = {"show", "save", "drop"};
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        assert_int_equal(ctl(out, sizeof(out), need[i], NULL), 2);
        expect_in(out, "emactl: USAGE: %s: missing arguments: expects SESSION", need[i]);
    }
    assert_int_equal(ctl(out, sizeof(out), "show", "x", "--dry-run", NULL), 2);
    expect_in(out, "emactl: USAGE: show: --dry-run applies to gc only\n");
    assert_int_equal(ctl(out, sizeof(out), "help", "--json", NULL), 2);
    expect_in(out, "emactl: USAGE: help: --json applies to status, list, show, save, drop, top, "
                   "gc, metrics, consolidate, snapshots, snapshot, posthoc, export and job only\n");
}

static void test_emactl_unknown_command_lists_the_commands(void **state)
{
    char out[8192];
    (void)state;

    assert_int_equal(ctl(out, sizeof(out), "frobnicate", NULL), 2);
    assert_string_equal(out, "emactl: USAGE: unknown command \"frobnicate\"; the commands are "
                             "status, list, show, save, drop, top, gc, metrics, consolidate, "
                             "snapshots, snapshot, posthoc, export, job and help\nTry 'emactl "
                             "--help'.\n");
    /* Options parsed before the command is known do not hide it. */
    assert_int_equal(ctl(out, sizeof(out), "--json", "frobnicate", "--dry-run", NULL), 2);
    expect_in(out, "emactl: USAGE: unknown command \"frobnicate\"");
    assert_int_equal(ctl(out, sizeof(out), "help", "frobnicate", NULL), 2);
    expect_in(out, "emactl: USAGE: help: unknown command \"frobnicate\"; the commands are "
                   "status, list, show, save, drop, top, gc, metrics, consolidate, snapshots, "
                   "snapshot, posthoc, export, job and help\n");
    /* No command: the overview, on stderr, and a usage exit. */
    assert_int_equal(ctl(out, sizeof(out), NULL), 2);
    expect_in(out, "Usage: emactl ");
}

static void test_emactl_every_command_has_a_manual(void **state)
{
    char out[16384], again[16384], overview[16384];
    (void)state;

    assert_int_equal(ctl(overview, sizeof(overview), "--help", NULL), 0);
    expect_tidy_lines(overview, 80);
    assert_int_equal(ctl(out, sizeof(out), "help", NULL), 0);
    assert_string_equal(out, overview);
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const char *c = commands[i];
        expect_in(overview, "\n  %s", c);
        assert_int_equal(ctl(out, sizeof(out), c, "--help", NULL), 0);
        expect_tidy_lines(out, 80);
        expect_in(out, "Usage: emactl %s", c);
        expect_in(out, "\nExit status: ");
        expect_in(out, "\nExample");
        expect_in(out, "\nOptions:\n");
        expect_in(out, "\n  -h, --help ");
        if (strcmp(c, "help") != 0) {
            expect_in(out, "\nJSON output: ");
            expect_in(out, "\n  --json ");
        }
        assert_int_equal(ctl(again, sizeof(again), "help", c, NULL), 0);
        assert_string_equal(again, out);
        assert_int_equal(ctl(again, sizeof(again), "-h", c, NULL), 0);
        assert_string_equal(again, out);
    }
}

/* ---- top ---- */

/* The number after "key": in line (a JSON object), or -1 for null; fails
 * the test when the key is missing. */
static double json_field(const char *line, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(line, pat);
    if (p == NULL)
        fail_msg("no %s in %s", key, line);
    p += strlen(pat);
    return strncmp(p, "null", 4) == 0 ? -1 : strtod(p, NULL);
}

/* The object of session in line (a frame of --json), cut at its end. */
static void json_session(const char *line, const char *session, char *out, size_t len)
{
    char pat[160];
    snprintf(pat, sizeof(pat), "{\"session\":\"%s\"", session);
    const char *p = strstr(line, pat);
    if (p == NULL)
        fail_msg("no session %s in %s", session, line);
    size_t n = strcspn(p, "}");
    snprintf(out, len, "%.*s", (int)n, p);
}

/* Frames one after the other: the first without rates, the next with the
 * updates done between them over the time between them, in text and JSON;
 * the states as status has them. */
static void test_emactl_top_prints_frames_with_rates(void **state)
{
    struct daemon d;
    struct emac_error err;
    struct emac_tensor_spec spec = {"big", "f32", 1 << 20, NULL, 0};
    emac_session *s = NULL;
    char out[16384], path[200], sess[512];
    (void)state;

    daemon_start(&d, NULL);
    two_sessions(&d);
    assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, "top", "--iterations", "2",
                         "--interval", "0.2", NULL),
                     0);
    expect_tidy_lines(out, 0);
    const char *second = strstr(out + 1, "\n\nemactl top - ");
    assert_non_null(second);
    assert_int_equal(strncmp(out, "emactl top - ", 13), 0);
    expect_in(out, " pid %ld, up ", (long)d.pid);
    expect_in(out, "\nSESSION  ");
    char cells[12][64];
    assert_int_equal(row_cells(out, "swapped", cells, 12), 10);
    assert_string_equal(cells[2], "-"); /* first frame: no rate yet */
    assert_string_equal(cells[7], "ema-in");
    assert_int_equal(row_cells(second, "swapped", cells, 12), 10);
    assert_string_equal(cells[2], "0.0"); /* nothing happened in between */
    assert_string_equal(cells[4], "4");   /* the batch of its last event */
    assert_true(strtod(cells[8], NULL) >= 0 && strcmp(cells[8], "-") != 0); /* a distance */
    assert_string_equal(cells[9], "noop"); /* its params never moved: updates change nothing */
    assert_int_equal(row_cells(second, long_name, cells, 12), 10);
    assert_string_equal(cells[7], "waiting");
    assert_string_equal(cells[8], "-"); /* no update yet: no distance */

    /* Updates between two frames of --json. */
    if (emac_segment_create(&spec, 1, &segs[2], &err) < 0 ||
        emac_register(client, "big", segs[2], NULL, false, &s, &err) < 0)
        fail_msg("%s: %s", err.code, err.message);
    snprintf(path, sizeof(path), "%s/top.jsonl", d.dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    char *argv[] = {(char *)emactl_bin(), "--socket", d.sock,       "top", "--json",
                    "--iterations",       "2",        "--interval", "1",   NULL};
    pid_t pid = spawn(argv, NULL, fd, -1);
    close(fd);
    for (int i = 0; i < 500 && count_lines(path, "\"sessions\"") < 1; i++)
        sleep_ms(10);
    assert_int_equal(count_lines(path, "\"sessions\""), 1);
    for (uint64_t batch = 1; batch <= 10; batch++)
        event_at(s, "batch_end", batch);
    assert_int_equal(wait_exit(pid), 0);
    FILE *fp = fopen(path, "r");
    char first[4096], next[4096];
    assert_non_null(fgets(first, sizeof(first), fp));
    assert_non_null(fgets(next, sizeof(next), fp));
    fclose(fp);
    json_session(first, "big", sess, sizeof(sess));
    assert_true(json_field(sess, "updates_per_second") == -1);
    assert_true(json_field(sess, "seconds") == -1);
    double before = json_field(sess, "updates");
    json_session(next, "big", sess, sizeof(sess));
    double dt = json_field(sess, "seconds"), ups = json_field(sess, "updates_per_second");
    assert_true(dt > 0);
    assert_true(json_field(sess, "updates") - before == 10);
    assert_true(fabs(ups * dt - 10) < 1e-6);
    assert_true(fabs(json_field(sess, "mib_per_second") - ups * 4) < 1e-6 * ups);
    assert_true(json_field(sess, "batch") == 10);
    assert_true(json_field(sess, "distance") >= 0);
    expect_in(sess, "\"alarms\":[");
    json_session(next, "swapped", sess, sizeof(sess));
    expect_in(sess, "\"state\":\"ema-in\"");
    emac_session_free(s);

    /* Usage errors and an emad that cannot be reached. */
    assert_int_equal(ctl(out, sizeof(out), "top", "--interval", "0", NULL), 2);
    expect_in(out, "emactl: USAGE: top: --interval \"0\": expects seconds from 0.1 to 3600\n");
    assert_int_equal(ctl(out, sizeof(out), "top", "--iterations", "-1", NULL), 2);
    expect_in(out, "emactl: USAGE: top: --iterations \"-1\": expects a count of 1 or more\n");
    daemon_stop(&d);
    assert_int_equal(ctl(out, sizeof(out), "--socket", d.sock, "top", NULL), 1);
    expect_in(out, "emactl: CONNECT: top: cannot connect to emad at %s", d.sock);
}

/* Run a tmux command on the test's own server (socket in dir); its status. */
static int tmux(const char *dir, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tmux(const char *dir, const char *fmt, ...)
{
    char cmd[2048], args[1536];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "tmux -S '%s/tmux.sock' %s", dir, args);
    return system(cmd);
}

/* The pane's text (capture-pane) into out. */
static void pane(const char *dir, char *out, size_t len)
{
    char path[200];
    snprintf(path, sizeof(path), "%s/pane.txt", dir);
    assert_int_equal(tmux(dir, "capture-pane -p -t top > '%s'", path), 0);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(out, 1, len - 1, fp);
    out[n] = '\0';
    fclose(fp);
}

/* Wait until the pane shows needle (up to 10 s); the pane in out. */
static bool pane_shows(const char *dir, const char *needle, char *out, size_t len)
{
    for (int i = 0; i < 200; i++) {
        pane(dir, out, len);
        if (strstr(out, needle) != NULL)
            return true;
        sleep_ms(50);
    }
    return false;
}

/* The exit status top wrote into dir/top.exit once it ended (up to 10 s). */
static int top_exit(const char *dir)
{
    char path[200], text[64] = "";
    snprintf(path, sizeof(path), "%s/top.exit", dir);
    for (int i = 0; i < 200; i++) {
        FILE *fp = fopen(path, "r");
        if (fp != NULL) {
            bool got = fgets(text, sizeof(text), fp) != NULL;
            fclose(fp);
            if (got && strchr(text, '\n') != NULL)
                return atoi(text);
        }
        sleep_ms(50);
    }
    fail_msg("top did not end");
    return -1;
}

/* In a real terminal (tmux): top draws its frame, refreshes it, cuts its
 * lines to the window's width, and q or Ctrl-C end it with status 0. */
static void test_emactl_top_in_a_terminal(void **state)
{
    struct daemon d;
    char out[16384], path[200];
    (void)state;

    if (system("command -v tmux >/dev/null") != 0)
        skip(); /* make check installs it */
    daemon_start(&d, NULL);
    two_sessions(&d);
    snprintf(path, sizeof(path), "%s/top.exit", d.dir);
    const char *keys[] = {"q", "C-c"};
    for (size_t k = 0; k < 2; k++) {
        unlink(path);
        assert_int_equal(tmux(d.dir,
                              "new-session -d -s top -x 100 -y 12 "
                              "\"'%s' --socket '%s' top --interval 0.2; echo \\$? > '%s'\"",
                              emactl_bin(), d.sock, path),
                         0);
        if (!pane_shows(d.dir, "SESSION", out, sizeof(out)))
            fail_msg("no frame on the screen: %s", out);
        expect_in(out, "emactl top - ");
        expect_in(out, "swapped");
        expect_in(out, "ema-in");
        expect_in(out, "waiting");
        /* the next frame's rates */
        if (!pane_shows(d.dir, "0.0", out, sizeof(out)))
            fail_msg("the frame was not refreshed: %s", out);
        if (k == 0) {
            assert_int_equal(tmux(d.dir, "resize-window -t top -x 40"), 0);
            sleep_ms(600);
            pane(d.dir, out, sizeof(out));
            expect_tidy_lines(out, 40);
            expect_in(out, "emactl top - ");
        }
        assert_int_equal(tmux(d.dir, "send-keys -t top %s", keys[k]), 0);
        assert_int_equal(top_exit(d.dir), 0);
        tmux(d.dir, "kill-server 2>/dev/null");
    }
    daemon_stop(&d);
}

int main(void)
{
#define TEST(f) cmocka_unit_test_teardown(f, teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_emactl_status_and_list_print_one_aligned_sessions_table),
        TEST(test_emactl_json_floats_are_the_shortest_that_read_back),
        TEST(test_emactl_errors_name_the_command_typed),
        TEST(test_emactl_unknown_command_lists_the_commands),
        TEST(test_emactl_every_command_has_a_manual),
        TEST(test_emactl_top_prints_frames_with_rates),
        TEST(test_emactl_top_in_a_terminal),
    };
#undef TEST
    return cmocka_run_group_tests_name("emactl", tests, NULL, NULL);
}
