/*
 * emactl_top.c - emactl top: a live view of emad's sessions, refreshed
 * every --interval seconds, one line per session with the rates computed
 * between two status replies; q quits.
 *
 * On a terminal it draws on the alternate screen with the keyboard in
 * non-canonical mode (keys arrive one by one, unechoed; Ctrl-C and Ctrl-D
 * arrive as keys too, so that every way out restores the terminal). Not on
 * a terminal, or with --iterations, it prints frames one after the other
 * (as top -b does), for logs and scripts.
 */
#include "emactl.h"
#include "json.h"
#include "version.h"

#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* What the previous frame saw of a session, for its rates. */
struct seen {
    char *session;
    uint64_t updates;
};

struct top {
    const struct ctl *ctl;
    double interval;     /* seconds between frames */
    uint64_t iterations; /* frames to draw; 0: until q */
    bool screen;         /* drawing on a terminal */
    struct termios saved;
    emac_client *c; /* NULL until connected, and after a lost connection */
    struct seen *seen;
    size_t nseen;
    double seen_at; /* CLOCK_MONOTONIC seconds of the frame they came from */
};

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_options(struct top *t)
{
    const struct ctl *ctl = t->ctl;
    char *end;

    t->interval = 1.0;
    if (ctl->interval != NULL) {
        t->interval = strtod(ctl->interval, &end);
        if (end == ctl->interval || *end != '\0' || !(t->interval >= 0.1) || t->interval > 3600)
            return ctl_usage_error(ctl, "--interval \"%s\": expects seconds from 0.1 to 3600",
                                   ctl->interval);
    }
    if (ctl->iterations != NULL) {
        unsigned long long n = strtoull(ctl->iterations, &end, 10);
        if (end == ctl->iterations || *end != '\0' || ctl->iterations[0] == '-' || n == 0)
            return ctl_usage_error(ctl, "--iterations \"%s\": expects a count of 1 or more",
                                   ctl->iterations);
        t->iterations = n;
    }
    return 0;
}

/* ---- the terminal ---- */

static int screen_enter(struct top *t)
{
    struct termios raw;

    if (tcgetattr(STDIN_FILENO, &t->saved) < 0)
        return -errno;
    raw = t->saved;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO | ISIG);
    raw.c_cc[VMIN] = 0;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) < 0)
        return -errno;
    fputs("\033[?1049h\033[?25l", stdout); /* the alternate screen, no cursor */
    return 0;
}

static void screen_leave(struct top *t)
{
    fputs("\033[?25h\033[?1049l", stdout);
    fflush(stdout);
    tcsetattr(STDIN_FILENO, TCSANOW, &t->saved);
}

static void screen_size(unsigned *rows, unsigned *cols)
{
    struct winsize ws;

    *rows = 24;
    *cols = 80;
    if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

/* Wait until the next frame is due or a key quits (q, Q, Ctrl-C, Ctrl-D):
 * true to quit. */
static bool wait_keys(const struct top *t, double until)
{
    for (;;) {
        double left = until - monotonic();
        if (left <= 0)
            return false;
        struct pollfd pfd = {t->screen ? STDIN_FILENO : -1, POLLIN, 0};
        int rc = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (rc <= 0 || !(pfd.revents & POLLIN)) {
            if (rc < 0 && errno != EINTR)
                return false;
            continue;
        }
        char keys[32];
        ssize_t n = read(STDIN_FILENO, keys, sizeof(keys));
        if (n <= 0)
            return n == 0; /* the terminal went away */
        for (ssize_t i = 0; i < n; i++)
            if (keys[i] == 'q' || keys[i] == 'Q' || keys[i] == 3 || keys[i] == 4)
                return true;
    }
}

/* ---- one frame ---- */

static const struct ctl_column top_cols[] = {
    {"SESSION", false}, {"OWNER", false},  {"UPD/S", true},  {"MB/S", true}, {"BATCH", true},
    {"LAST", true},     {"UPDATES", true}, {"STATE", false}, {"DIST", true}, {"ALARMS", false},
};
#define NTOP_COLS (sizeof(top_cols) / sizeof(top_cols[0]))

static const struct seen *seen_find(const struct top *t, const char *session)
{
    for (size_t i = 0; i < t->nseen; i++)
        if (strcmp(t->seen[i].session, session) == 0)
            return &t->seen[i];
    return NULL;
}

static void seen_free(struct top *t)
{
    for (size_t i = 0; i < t->nseen; i++)
        free(t->seen[i].session);
    free(t->seen);
    t->seen = NULL;
    t->nseen = 0;
}

/* Keep what this frame saw, for the next one's rates. */
static void seen_keep(struct top *t, const struct emac_status *st, double now)
{
    seen_free(t);
    t->seen = calloc(st->nsessions ? st->nsessions : 1, sizeof(*t->seen));
    for (size_t i = 0; t->seen != NULL && i < st->nsessions; i++) {
        t->seen[i].session = strdup(st->session_list[i].session);
        t->seen[i].updates = st->session_list[i].updates;
        t->nseen += t->seen[i].session != NULL;
    }
    t->seen_at = now;
}

/* The health cells: the distance (3 significant digits) and the alarms, '-' without them. */
static void health_cells(const struct emac_health *h, char *dist, char *alarms, size_t len)
{
    snprintf(dist, len, "-");
    snprintf(alarms, len, "-");
    if (h == NULL || !h->enabled)
        return;
    if (h->has_distance)
        snprintf(dist, len, "%.3g", h->distance); /* "nan", "inf" */
    size_t n = 0;
    for (size_t i = 0; i < h->nalarms && n < len; i++)
        n += (size_t)snprintf(alarms + n, len - n, "%s%s", i ? "," : "", h->alarms[i]);
}

static void session_row(const struct top *t, const struct emac_session_info *s,
                        const struct emac_health *h, double now, char cells[NTOP_COLS][48])
{
    const struct seen *prev = seen_find(t, s->session);
    double dt = now - t->seen_at;

    snprintf(cells[0], 48, "%s", s->session);
    if (s->attached)
        snprintf(cells[1], 48, "%ld", s->owner_pid);
    else
        snprintf(cells[1], 48, "detached");
    if (prev != NULL && dt > 0 && s->updates >= prev->updates) {
        double ups = (double)(s->updates - prev->updates) / dt;
        snprintf(cells[2], 48, "%.1f", ups);
        snprintf(cells[3], 48, "%.1f", ups * (double)s->params_bytes / (1024.0 * 1024.0));
    } else { /* first seen in this frame: no rate yet */
        snprintf(cells[2], 48, "-");
        snprintf(cells[3], 48, "-");
    }
    if (s->has_last_time)
        snprintf(cells[4], 48, "%" PRIu64, s->last_batch);
    else
        snprintf(cells[4], 48, "-");
    if (s->updates > 0)
        snprintf(cells[5], 48, "%.2fms", s->last_update_seconds * 1e3);
    else
        snprintf(cells[5], 48, "-");
    snprintf(cells[6], 48, "%" PRIu64, s->updates);
    snprintf(cells[7], 48, "%s%s%s",
             !s->started ? "waiting"
             : s->active ? "ema-in"
                         : "train",
             s->interrupted ? ",interrupted" : "", "");
    health_cells(h, cells[8], cells[9], 48);
}

static void json_number(FILE *fp, const char *key, bool has, double v)
{
    char num[40];

    if (has && json_format_double(v, num, sizeof(num)) >= 0)
        fprintf(fp, ",\"%s\":%s", key, num);
    else
        fprintf(fp, ",\"%s\":null", key);
}

/* The frame as one line of JSON (--json): the rates as numbers, null where
 * the text shows '-'. */
static char *render_json(struct top *t, const struct emac_status *st, double now)
{
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    struct timespec wall;
    double dt = now - t->seen_at;

    if (fp == NULL)
        return NULL;
    clock_gettime(CLOCK_REALTIME, &wall);
    fprintf(fp, "{\"time\":%lld.%03ld,\"pid\":%ld,\"sessions\":[", (long long)wall.tv_sec,
            wall.tv_nsec / 1000000, st->pid);
    for (size_t i = 0; i < st->nsessions; i++) {
        const struct emac_session_info *s = &st->session_list[i];
        const struct seen *prev = seen_find(t, s->session);
        bool rate = prev != NULL && dt > 0 && s->updates >= prev->updates;
        double ups = rate ? (double)(s->updates - prev->updates) / dt : 0;
        fprintf(fp, "%s{\"session\":\"", i ? "," : "");
        for (const char *c = s->session; *c; c++) /* names are [A-Za-z0-9._:/-]: to be safe */
            fprintf(fp, *c == '"' || *c == '\\' ? "\\%c" : "%c", *c);
        fputs("\"", fp);
        if (s->attached)
            fprintf(fp, ",\"owner_pid\":%ld", s->owner_pid);
        else
            fputs(",\"owner_pid\":null", fp);
        json_number(fp, "seconds", rate, dt);
        json_number(fp, "updates_per_second", rate, ups);
        json_number(fp, "mib_per_second", rate, ups * (double)s->params_bytes / 1048576.0);
        if (s->has_last_time)
            fprintf(fp, ",\"batch\":%" PRIu64, s->last_batch);
        else
            fputs(",\"batch\":null", fp);
        json_number(fp, "last_update_seconds", s->updates > 0, s->last_update_seconds);
        fprintf(fp, ",\"updates\":%" PRIu64 ",\"state\":\"%s\",\"interrupted\":%s", s->updates,
                !s->started ? "waiting"
                : s->active ? "ema-in"
                            : "train",
                s->interrupted ? "true" : "false");
        const struct emac_health *h = emac_status_health(st, i);
        bool dist = h != NULL && h->enabled && h->has_distance && isfinite(h->distance);
        json_number(fp, "distance", dist, dist ? h->distance : 0);
        fputs(",\"alarms\":[", fp);
        for (size_t k = 0; h != NULL && h->enabled && k < h->nalarms; k++)
            fprintf(fp, "%s\"%s\"", k ? "," : "", h->alarms[k]);
        fputs("]}", fp);
    }
    fputs("]}", fp);
    fclose(fp);
    return text;
}

/* The frame as text: a summary line, a blank line, the table. */
static char *render(struct top *t, const struct emac_status *st, const char *error, double now)
{
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    time_t wall = time(NULL);
    struct tm tm;
    char clock[16];

    if (fp == NULL)
        return NULL;
    localtime_r(&wall, &tm);
    strftime(clock, sizeof(clock), "%H:%M:%S", &tm);
    if (st == NULL) {
        fprintf(fp, "emactl top - %s - emad: %s\n", clock, error);
        fclose(fp);
        return text;
    }
    unsigned long up = (unsigned long)st->uptime_seconds;
    fprintf(fp,
            "emactl top - %s - emad %s pid %ld, up %luh%02lum, %u workers, sessions %u/%u, "
            "connections %u/%u\n\n",
            clock, st->version, st->pid, up / 3600, up / 60 % 60, st->workers, st->sessions,
            st->max_sessions, st->connections, st->max_connections);
    struct ctl_table tab;
    ctl_table_init(&tab, top_cols, NTOP_COLS);
    for (size_t i = 0; i < st->nsessions; i++) {
        char cells[NTOP_COLS][48];
        const char *row[NTOP_COLS];
        session_row(t, &st->session_list[i], emac_status_health(st, i), now, cells);
        for (size_t k = 0; k < NTOP_COLS; k++)
            row[k] = cells[k];
        ctl_table_add(&tab, row);
    }
    ctl_table_print(&tab, fp);
    ctl_table_free(&tab);
    if (st->nsessions == 0)
        fputs("(no sessions)\n", fp);
    fclose(fp);
    return text;
}

/* Print text, on a terminal from its top left corner, each line cut to the
 * width and the lines to the height. */
static void show(const struct top *t, const char *text)
{
    unsigned rows, cols, row = 0;

    if (!t->screen) {
        fputs(text, stdout);
        fputc('\n', stdout); /* a JSON line's end, or the blank line after a frame's table */
        fflush(stdout);
        return;
    }
    screen_size(&rows, &cols);
    fputs("\033[H\033[2J", stdout);
    for (const char *line = text; *line && row < rows; row++) {
        size_t n = strcspn(line, "\n");
        fprintf(stdout, "%s%.*s", row ? "\r\n" : "", (int)(n < cols ? n : cols), line);
        line += n + (line[n] == '\n');
    }
    fflush(stdout);
}

/* One frame: ask emad, draw. 0, or a negative errno once reported, when
 * not on a terminal (a terminal shows the error and tries again). */
static int frame(struct top *t)
{
    struct emac_error err = {{0}, {0}};
    struct emac_status *st = NULL;
    char why[640] = "";
    double now = monotonic();
    int rc = 0;

    if (t->c == NULL &&
        (rc = emac_connect(t->ctl->socket, "emactl " EMAD_VERSION, &t->c, &err)) < 0) {
        t->c = NULL;
        snprintf(why, sizeof(why), "%s: %s", err.code, err.message);
        if (!t->screen)
            return ctl_remote_error(t->ctl, "connect", &err);
    } else if ((rc = emac_status(t->c, NULL, &st, &err)) < 0) {
        emac_disconnect(t->c); /* connect again at the next frame */
        t->c = NULL;
        snprintf(why, sizeof(why), "%s: %s", err.code, err.message);
        if (!t->screen)
            return ctl_remote_error(t->ctl, "status", &err);
    }
    char *text = t->ctl->json && st != NULL ? render_json(t, st, now) : render(t, st, why, now);
    if (text != NULL)
        show(t, text);
    free(text);
    if (st != NULL) {
        seen_keep(t, st, now);
        emac_status_free(st);
    }
    return 0;
}

static int cmd_top(struct ctl *ctl, int argc, char **argv)
{
    struct top t = {.ctl = ctl};
    int rc;
    (void)argc;
    (void)argv;

    if ((rc = parse_options(&t)) < 0)
        return rc;
    t.screen = t.iterations == 0 && !ctl->json && isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    if (!t.screen && t.iterations == 0)
        t.iterations = 1; /* not on a terminal: one frame, unless asked for more */
    if (t.screen && (rc = screen_enter(&t)) < 0) {
        ctl_error(ctl, "SYSTEM", "the terminal: %s", strerror(-rc));
        return rc;
    }
    double next = monotonic();
    for (uint64_t n = 0; t.iterations == 0 || n < t.iterations; n++) {
        if ((rc = frame(&t)) < 0)
            break;
        next += t.interval;
        if (t.iterations != 0 && n + 1 == t.iterations)
            break;
        if (wait_keys(&t, next))
            break;
    }
    if (t.screen)
        screen_leave(&t);
    seen_free(&t);
    if (t.c != NULL)
        emac_disconnect(t.c);
    return rc < 0 ? rc : 0;
}

const struct ctl_cmd ctl_cmd_top = {
    .name = "top",
    .args = "",
    .summary = "a live view of the sessions, refreshed every\n"
               "second: updates and megabytes per second, batch,\n"
               "the last update's duration; q quits",
    .help = "Show emad and its sessions, refreshed every --interval seconds (default 1),\n"
            "until q (or Ctrl-C) is pressed. The first line is emad's: version, pid,\n"
            "uptime, workers, sessions and connections beside their limits. Then one row\n"
            "per session that you may see:\n"
            "  SESSION   its name (another user's as <uid>:<name>, for root)\n"
            "  OWNER     the pid of the trainer attached to it, or 'detached'\n"
            "  UPD/S     updates per second since the previous frame ('-' in the first\n"
            "            frame that shows the session)\n"
            "  MB/S      parameter bytes read by those updates per second, in MiB\n"
            "  BATCH     the batch of the last event the trainer sent\n"
            "  LAST      how long the last update took\n"
            "  UPDATES   how many updates were done\n"
            "  STATE     'waiting' before the EMA starts, 'train' while the training\n"
            "            weights are in, 'ema-in' while the EMA weights are; ',interrupted'\n"
            "            when a crash of emad cut an update short\n"
            "  DIST      the health signals' distance: the RMS of shadow - params at the\n"
            "            last update ('nan' or 'inf' once the shadow holds such values:\n"
            "            the poisoned alarm)\n"
            "  ALARMS    the session's health alarms (nonfinite, poisoned, noop,\n"
            "            stalled; see 'emactl show --help'), '-' when none\n"
            "Lines are cut to the terminal's width and height. When emad cannot be reached\n"
            "the first line says why and top tries again at the next frame.\n"
            "\n"
            "Not on a terminal, or with --iterations N, it prints N frames (default 1)\n"
            "one after the other, each followed by a blank line, without moving the\n"
            "cursor, as 'top -b' does; an error then ends it with exit status 1.\n"
            "\n"
            "JSON output: one line per frame, never drawn on the screen: {\"time\": unix\n"
            "seconds, \"pid\": emad's, \"sessions\": [{\"session\", \"owner_pid\" (null while\n"
            "detached), \"seconds\" since the previous frame, \"updates_per_second\",\n"
            "\"mib_per_second\" (these three null in the first frame that shows the\n"
            "session), \"batch\" (null before an event), \"last_update_seconds\" (null\n"
            "before an update), \"updates\", \"state\", \"interrupted\", \"distance\" (null\n"
            "when not known or not finite), \"alarms\" (a list)}]}.\n"
            "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Examples:\n"
            "  emactl top\n"
            "  emactl top --interval 0.5\n"
            "  emactl top --iterations 3 --interval 2 > top.log\n"
            "  emactl top --json --iterations 60 > top.jsonl\n",
    .min_args = 0,
    .max_args = 0,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON | CTL_OPT_INTERVAL | CTL_OPT_ITERATIONS,
    .run = cmd_top,
};
