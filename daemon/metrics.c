/*
 * metrics.c - counters and the Prometheus text exposition format 0.0.4
 * (metrics.h; the series are listed in docs/running.md "Metrics").
 */
#include "metrics.h"

#include "msg.h"
#include "version.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* From an update of a small model (tens of microseconds) to a save of a
 * large one (seconds), at 1-2.5-5 steps. */
const double metrics_bucket_bounds[METRICS_BUCKETS] = {
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025,   0.05,     0.1,     0.25,   0.5,     1,      2.5,   5,      10,
};

const char *const metrics_error_codes[METRICS_NERRORS] = {
    MSG_E_EPROTO,    MSG_E_VERSION, MSG_E_NOHELLO,  MSG_E_NOMETHOD, MSG_E_BADARG,
    MSG_E_NOSESSION, MSG_E_EXISTS,  MSG_E_PERM,     MSG_E_SHM,      MSG_E_STATE,
    MSG_E_LIMIT,     MSG_E_IO,      MSG_E_INTERNAL,
};

static const char *const session_states[METRICS_SESSION_STATES] = {
    "initialising",
    "attached",
    "detached",
};

static const char *const file_ops[METRICS_FILE_OPS] = {"save", "load", "journal"};

/* ---- recording ---- */

void metrics_hist_observe(struct metrics_hist *h, double seconds)
{
    size_t i = 0;

    if (!(seconds >= 0))
        seconds = 0;
    while (i < METRICS_BUCKETS && seconds > metrics_bucket_bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += seconds;
}

void metrics_update(struct metrics *m, uint64_t bytes, double seconds)
{
    if (m == NULL)
        return;
    m->updates++;
    m->update_bytes += bytes;
    metrics_hist_observe(&m->update_seconds, seconds);
}

void metrics_job(struct metrics *m, bool here)
{
    if (m != NULL)
        m->jobs[here ? 1 : 0]++;
}

void metrics_swap(struct metrics *m, bool in, uint64_t bytes)
{
    if (m == NULL)
        return;
    if (in)
        m->swaps_in++;
    else
        m->swaps_out++;
    m->swap_bytes += bytes;
}

void metrics_register(struct metrics *m, bool resume)
{
    if (m == NULL)
        return;
    if (resume)
        m->resumes++;
    else
        m->registers++;
}

void metrics_error(struct metrics *m, const char *code)
{
    size_t i;

    if (m == NULL)
        return;
    for (i = 0; i < METRICS_NERRORS - 1; i++)
        if (strcmp(code, metrics_error_codes[i]) == 0)
            break;
    /* The last code is INTERNAL: a code outside the contract is a bug. */
    m->errors[i]++;
}

void metrics_file(struct metrics *m, enum metrics_file_op op, bool ok, double seconds)
{
    if (m == NULL)
        return;
    m->files[op][ok ? 0 : 1]++;
    if (seconds >= 0 && op != METRICS_FILE_JOURNAL)
        metrics_hist_observe(&m->file_seconds[op], seconds);
}

/* ---- text ---- */

static int text_reserve(struct metrics_text *t, size_t more)
{
    size_t cap = t->cap ? t->cap : 4096;
    char *p;

    if (t->len + more + 1 <= t->cap)
        return 0;
    while (cap < t->len + more + 1)
        cap *= 2;
    if ((p = realloc(t->data, cap)) == NULL)
        return -ENOMEM;
    t->data = p;
    t->cap = cap;
    return 0;
}

static int text_vprintf(struct metrics_text *t, const char *fmt, va_list ap)
{
    va_list again;
    int n;

    if (text_reserve(t, 256) < 0)
        return -ENOMEM;
    va_copy(again, ap);
    n = vsnprintf(t->data + t->len, t->cap - t->len, fmt, ap);
    if (n >= 0 && (size_t)n >= t->cap - t->len) {
        if (text_reserve(t, (size_t)n) < 0) {
            va_end(again);
            return -ENOMEM;
        }
        vsnprintf(t->data + t->len, t->cap - t->len, fmt, again);
    }
    va_end(again);
    if (n < 0)
        return -EINVAL;
    t->len += (size_t)n;
    return 0;
}

int metrics_text_printf(struct metrics_text *t, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = text_vprintf(t, fmt, ap);
    va_end(ap);
    return rc;
}

int metrics_text_label(struct metrics_text *t, const char *value)
{
    size_t n = strlen(value);

    if (text_reserve(t, 2 * n) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        char c = value[i];
        if (c == '\\' || c == '"') {
            t->data[t->len++] = '\\';
            t->data[t->len++] = c;
        } else if (c == '\n') {
            t->data[t->len++] = '\\';
            t->data[t->len++] = 'n';
        } else {
            t->data[t->len++] = c;
        }
    }
    t->data[t->len] = '\0';
    return 0;
}

void metrics_text_free(struct metrics_text *t)
{
    free(t->data);
    t->data = NULL;
    t->len = t->cap = 0;
}

/* A float as the format writes it: Go's ParseFloat reads it back exactly. */
static void fmt_double(double v, char *buf, size_t len)
{
    if (isnan(v))
        snprintf(buf, len, "NaN");
    else if (isinf(v))
        snprintf(buf, len, v > 0 ? "+Inf" : "-Inf");
    else if (fabs(v) < 9007199254740992.0 && v == (double)(long long)v)
        snprintf(buf, len, "%lld", (long long)v); /* counts: most values, and the cheapest */
    else {
        /* The shortest of the two that reads back exactly: le="0.001", not
         * le="0.0010000000000000000208". */
        snprintf(buf, len, "%.15g", v);
        if (strtod(buf, NULL) != v)
            snprintf(buf, len, "%.17g", v);
    }
}

/* Every call below appends; rc collects the first failure. */
struct out {
    struct metrics_text *t;
    int rc;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    va_list ap;

    if (o->rc < 0)
        return;
    va_start(ap, fmt);
    o->rc = text_vprintf(o->t, fmt, ap);
    va_end(ap);
}

static void head(struct out *o, const char *name, const char *type, const char *help)
{
    put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void sample_u(struct out *o, const char *name, uint64_t v)
{
    put(o, "%s %" PRIu64 "\n", name, v);
}

static void sample_d(struct out *o, const char *name, double v)
{
    char num[64];

    fmt_double(v, num, sizeof(num));
    put(o, "%s %s\n", name, num);
}

/* name{key="value"} v, the value escaped. */
static void sample_label(struct out *o, const char *name, const char *key, const char *value,
                         const char *num)
{
    put(o, "%s{%s=\"", name, key);
    if (o->rc == 0)
        o->rc = metrics_text_label(o->t, value);
    put(o, "\"} %s\n", num);
}

static void sample_label_u(struct out *o, const char *name, const char *key, const char *value,
                           uint64_t v)
{
    char num[32];

    snprintf(num, sizeof(num), "%" PRIu64, v);
    sample_label(o, name, key, value, num);
}

/* A histogram's series; labels ("operation=\"save\",") prefix le, or "". */
static void hist(struct out *o, const char *name, const char *labels, const struct metrics_hist *h)
{
    char le[64];
    uint64_t cum = 0;

    for (size_t i = 0; i < METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        fmt_double(metrics_bucket_bounds[i], le, sizeof(le));
        put(o, "%s_bucket{%sle=\"%s\"} %" PRIu64 "\n", name, labels, le, cum);
    }
    cum += h->counts[METRICS_BUCKETS];
    put(o, "%s_bucket{%sle=\"+Inf\"} %" PRIu64 "\n", name, labels, cum);
    fmt_double(h->sum, le, sizeof(le));
    if (labels[0] != '\0') {
        /* "operation=\"save\"," without its comma, in braces */
        int n = (int)strlen(labels) - 1;
        put(o, "%s_sum{%.*s} %s\n", name, n, labels, le);
        put(o, "%s_count{%.*s} %" PRIu64 "\n", name, n, labels, h->count);
    } else {
        put(o, "%s_sum %s\n", name, le);
        put(o, "%s_count %" PRIu64 "\n", name, h->count);
    }
}

/*
 * The per-session series: one row each, naming the field of struct
 * metrics_session it shows and the flag that says the session has a value
 * (no update yet, no health signals): without it the sample is left out.
 */
enum series_kind { SERIES_U64, SERIES_DOUBLE, SERIES_BOOL };

struct session_series {
    const char *name;
    const char *type;
    const char *help;
    size_t field; /* offsetof(struct metrics_session, ...) */
    enum series_kind kind;
    ptrdiff_t when; /* offsetof a bool that must be true; -1: always */
};

#define SF(f, kind) offsetof(struct metrics_session, f), kind
#define WHEN(f) (ptrdiff_t) offsetof(struct metrics_session, f)

static bool series_value(const struct session_series *r, const struct metrics_session *s, double *v)
{
    const char *base = (const char *)s;

    if (r->when >= 0 && !*(const bool *)(base + r->when))
        return false;
    switch (r->kind) {
    case SERIES_U64:
        *v = (double)*(const uint64_t *)(base + r->field);
        break;
    case SERIES_DOUBLE:
        *v = *(const double *)(base + r->field);
        break;
    case SERIES_BOOL:
        *v = *(const bool *)(base + r->field) ? 1 : 0;
        break;
    }
    return true;
}

static const struct session_series session_series[] = {
    {"emad_session_last_update_timestamp_seconds", "gauge",
     "When the session's last EMA update completed (unix time); absent before its first update "
     "since emad started.",
     SF(last_update_time, SERIES_DOUBLE), WHEN(has_update)},
    {"emad_session_last_update_batch", "gauge",
     "The trainer's batch count of the session's last EMA update.",
     SF(last_update_batch, SERIES_U64), WHEN(has_update)},
    {"emad_session_batch", "gauge",
     "The trainer's batch count of the last event applied to the session (an update or not).",
     SF(last_batch, SERIES_U64), WHEN(has_event)},
    {"emad_session_lag_batches", "gauge",
     "Batches by which the session's shadow trails the events received: the newest batch among "
     "the events queued or running minus the batch of the last event applied (0 when none is "
     "newer).",
     SF(lag_batches, SERIES_U64), -1},
    {"emad_session_queued_operations", "gauge",
     "Operations of the session waiting or running (events, swaps, saves, ...).",
     SF(queued, SERIES_U64), -1},
    {"emad_session_shadow_bytes", "gauge", "Bytes of the session's shadow (the EMA weights).",
     SF(shadow_bytes, SERIES_U64), -1},
    /* The health signals: only for a session that computes them. */
    {"emad_session_nonfinite_params_total", "counter",
     "NaN or infinite param elements the session's updates found (health signals).",
     SF(nonfinite_total, SERIES_U64), WHEN(health)},
    {"emad_session_nonfinite_updates_total", "counter",
     "Updates of the session that found NaN or infinite param elements.",
     SF(nonfinite_updates, SERIES_U64), WHEN(health)},
    {"emad_session_last_update_nonfinite_params", "gauge",
     "NaN or infinite param elements the session's last update found (the nonfinite alarm "
     "while above 0).",
     SF(last_nonfinite, SERIES_U64), WHEN(health)},
    {"emad_session_noop_updates_total", "counter",
     "Updates of the session that changed no shadow element.", SF(noop_updates, SERIES_U64),
     WHEN(health)},
    {"emad_session_last_update_noop", "gauge",
     "1 when the session's last update changed no shadow element (the noop alarm), else 0.",
     SF(last_noop, SERIES_BOOL), WHEN(health)},
    {"emad_session_distance", "gauge",
     "Root mean square of (shadow - param) over the finite elements at the session's last "
     "update; NaN or +Inf when the shadow holds non-finite values (the poisoned alarm).",
     SF(distance, SERIES_DOUBLE), WHEN(has_distance)},
    {"emad_session_stalled", "gauge",
     "1 when the session's trainer is attached and has sent no update for --stall-factor times "
     "its usual interval (the stalled alarm), else 0.",
     SF(stalled, SERIES_BOOL), WHEN(health)},
};

static void render_sessions(struct out *o, const struct metrics_view *v, bool all, uid_t uid)
{
    char num[64];
    double x = 0;

    for (size_t r = 0; r < sizeof(session_series) / sizeof(session_series[0]); r++) {
        const struct session_series *row = &session_series[r];
        head(o, row->name, row->type, row->help);
        for (size_t i = 0; i < v->nsessions; i++) {
            const struct metrics_session *s = &v->session_list[i];
            if ((!all && s->uid != uid) || !series_value(row, s, &x))
                continue;
            fmt_double(x, num, sizeof(num));
            sample_label(o, row->name, "session", s->label, num);
        }
    }
}

/* Each profile's own health signals, labelled by session and profile (at most 8 profiles a
 * session, so the label stays bounded). */
static void render_profiles(struct out *o, const struct metrics_view *v, bool all, uid_t uid)
{
    static const struct {
        const char *name, *type, *help;
    } rows[3] = {
        {"emad_session_profile_noop_updates_total", "counter",
         "Updates of the profile that changed none of its shadow (sessions with profiles)."},
        {"emad_session_profile_last_update_noop", "gauge",
         "1 when the profile's last update changed none of its shadow, else 0."},
        {"emad_session_profile_distance", "gauge",
         "Root mean square of (the profile's shadow - param) over the finite elements at its "
         "last update; NaN or +Inf when its shadow holds non-finite values."},
    };
    char num[64];

    for (int r = 0; r < 3; r++) {
        head(o, rows[r].name, rows[r].type, rows[r].help);
        for (size_t i = 0; i < v->nsessions; i++) {
            const struct metrics_session *s = &v->session_list[i];
            if (!all && s->uid != uid)
                continue;
            for (unsigned p = 0; p < s->nprof; p++) {
                const struct metrics_profile *mp = &s->prof[p];
                if (r == 2 && !mp->has_distance)
                    continue;
                if (r == 0)
                    snprintf(num, sizeof(num), "%" PRIu64, mp->noop_updates);
                else if (r == 1)
                    snprintf(num, sizeof(num), "%d", mp->last_noop ? 1 : 0);
                else
                    fmt_double(mp->distance, num, sizeof(num));
                put(o, "%s{session=\"", rows[r].name);
                if (o->rc == 0)
                    o->rc = metrics_text_label(o->t, s->label);
                put(o, "\",profile=\"");
                if (o->rc == 0)
                    o->rc = metrics_text_label(o->t, mp->name);
                put(o, "\"} %s\n", num);
            }
        }
    }
}

int metrics_render(const struct metrics *m, const struct metrics_view *v, bool all, uid_t uid,
                   struct metrics_text *t)
{
    struct out o = {t, 0};
    char labels[64];

    if (text_reserve(t, 0) < 0)
        return -ENOMEM;
    head(&o, "emad_build_info", "gauge", "Always 1; the label version is emad's.");
    sample_label(&o, "emad_build_info", "version", EMAD_VERSION, "1");
    head(&o, "emad_start_time_seconds", "gauge", "When emad started (unix time).");
    sample_d(&o, "emad_start_time_seconds", v->start_time);
    head(&o, "emad_sessions", "gauge", "Sessions by state.");
    for (int i = 0; i < METRICS_SESSION_STATES; i++)
        sample_label_u(&o, "emad_sessions", "state", session_states[i], v->sessions[i]);
    head(&o, "emad_connections", "gauge", "Open client connections.");
    sample_u(&o, "emad_connections", v->connections);
    head(&o, "emad_queued_operations", "gauge", "Operations of every session waiting or running.");
    sample_u(&o, "emad_queued_operations", v->queued);
    head(&o, "emad_shadow_bytes", "gauge", "Bytes of every session's shadow.");
    sample_u(&o, "emad_shadow_bytes", v->shadow_bytes);

    head(&o, "emad_updates_total", "counter", "EMA updates applied.");
    sample_u(&o, "emad_updates_total", m->updates);
    head(&o, "emad_update_bytes_total", "counter", "Parameter bytes read by EMA updates.");
    sample_u(&o, "emad_update_bytes_total", m->update_bytes);
    head(&o, "emad_update_duration_seconds", "histogram",
         "Time from an update's hand-off to the workers (its wait in their queue included) to its "
         "completion.");
    hist(&o, "emad_update_duration_seconds", "", &m->update_seconds);
    head(&o, "emad_swaps_total", "counter",
         "Swaps completed; direction in puts the EMA weights into the parameters, out puts "
         "the training weights back.");
    sample_label_u(&o, "emad_swaps_total", "direction", "in", m->swaps_in);
    sample_label_u(&o, "emad_swaps_total", "direction", "out", m->swaps_out);
    head(&o, "emad_swap_bytes_total", "counter", "Parameter bytes replaced by swaps.");
    sample_u(&o, "emad_swap_bytes_total", m->swap_bytes);
    head(&o, "emad_event_jobs_total", "counter",
         "Phases of updates and swaps by the thread that did their data work: the event loop's "
         "(sessions within --inline-max) or the workers.");
    sample_label_u(&o, "emad_event_jobs_total", "thread", "loop", m->jobs[1]);
    sample_label_u(&o, "emad_event_jobs_total", "thread", "workers", m->jobs[0]);
    head(&o, "emad_registers_total", "counter", "New sessions registered (shadow initialised).");
    sample_u(&o, "emad_registers_total", m->registers);
    head(&o, "emad_resumes_total", "counter",
         "Registers with resume that attached a trainer to an existing session.");
    sample_u(&o, "emad_resumes_total", m->resumes);
    head(&o, "emad_errors_total", "counter", "Error responses sent, by error code.");
    for (int i = 0; i < METRICS_NERRORS; i++)
        sample_label_u(&o, "emad_errors_total", "code", metrics_error_codes[i], m->errors[i]);
    head(&o, "emad_state_file_operations_total", "counter",
         "State file operations by operation (save, load, journal) and result (ok, error).");
    for (int i = 0; i < METRICS_FILE_OPS; i++)
        for (int r = 0; r < 2; r++)
            put(&o,
                "emad_state_file_operations_total{operation=\"%s\",result=\"%s\"} %" PRIu64 "\n",
                file_ops[i], r ? "error" : "ok", m->files[i][r]);
    head(&o, "emad_state_file_duration_seconds", "histogram",
         "Time a save or load took, from its start on a worker to its completion.");
    for (int i = 0; i < 2; i++) {
        snprintf(labels, sizeof(labels), "operation=\"%s\",", file_ops[i]);
        hist(&o, "emad_state_file_duration_seconds", labels, &m->file_seconds[i]);
    }
    render_sessions(&o, v, all, uid);
    render_profiles(&o, v, all, uid);
    return o.rc;
}
