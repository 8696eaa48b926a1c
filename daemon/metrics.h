/*
 * metrics.h - the daemon's counters and their rendering in the Prometheus
 * text exposition format 0.0.4 (docs/running.md "Metrics" lists every
 * series).
 *
 * struct metrics holds what only accumulates (counters, histograms). It is
 * owned by the daemon's context and changed on the loop thread alone, where
 * operations complete: the durations the workers' work takes reach the
 * loop with the operation's completion, so no atomics are needed. What the
 * daemon holds at a given moment (sessions, connections, queues) is not
 * counted but read when rendering: a struct metrics_view, filled by
 * metrics_view_fill (observe.c) from the registry and the server.
 */
#ifndef EMAD_METRICS_H
#define EMAD_METRICS_H

#include "names.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct emad;
struct op;

/* Duration histograms: fixed bucket bounds from 10 us to 10 s. */
#define METRICS_BUCKETS 19

struct metrics_hist {
    uint64_t counts[METRICS_BUCKETS + 1]; /* per bucket, not cumulative; the last is +Inf */
    uint64_t count;
    double sum; /* seconds */
};

/* The error codes of docs/protocol.md "Errors", the label values of
 * emad_errors_total, in this order. */
#define METRICS_NERRORS 13
extern const char *const metrics_error_codes[METRICS_NERRORS];

/* State file operations. */
enum metrics_file_op {
    METRICS_FILE_SAVE,    /* save: a state file written */
    METRICS_FILE_LOAD,    /* load: a state file read */
    METRICS_FILE_JOURNAL, /* a running session's journal written */
    METRICS_FILE_OPS,
};

/* What accumulates; zero-initialised at start. */
struct metrics {
    uint64_t updates;      /* EMA updates applied */
    uint64_t update_bytes; /* parameter bytes those updates read */
    struct metrics_hist update_seconds;
    uint64_t swaps_in, swaps_out;        /* swaps completed */
    uint64_t swap_bytes;                 /* parameter bytes those swaps replaced */
    uint64_t registers;                  /* new sessions whose shadow was initialised */
    uint64_t resumes;                    /* registers with resume that re-attached a session */
    uint64_t errors[METRICS_NERRORS];    /* error responses, by code */
    uint64_t files[METRICS_FILE_OPS][2]; /* [op][0: ok, 1: error] */
    struct metrics_hist file_seconds[2]; /* save, load: the whole operation */
    uint64_t jobs[2];                    /* events' data work: [0] on workers, [1] on the loop */
};

/* Sessions by state: the label values of emad_sessions. */
enum metrics_session_state {
    METRICS_SESSION_INITIALISING, /* registered, its shadow being initialised */
    METRICS_SESSION_ATTACHED,     /* a trainer's connection owns it */
    METRICS_SESSION_DETACHED,     /* no trainer: waiting for a resume */
    METRICS_SESSION_STATES,
};

/* A session's profiles and their names' length, as profile.h has them (observe.c checks). */
#define METRICS_PROFILES 8
#define METRICS_PROFILE_NAME 32

/*
 * One session's gauges. The per-session series are the rows of one table
 * in metrics.c (session_series): a new series is a field here, a row
 * there, and a line in observe.c's session_fill that sets the field.
 */
struct metrics_session {
    char label[NAMES_SESSION_MAX + 24]; /* "<uid>:<name>" */
    uid_t uid;
    bool has_update;         /* an update completed since emad started */
    double last_update_time; /* unix seconds */
    uint64_t last_update_batch;
    bool has_event;       /* an event was applied (its clock is known) */
    uint64_t last_batch;  /* the batch of the last event applied */
    uint64_t lag_batches; /* newest batch queued minus last_batch (0 if none newer) */
    uint64_t queued;      /* operations waiting or running */
    uint64_t shadow_bytes;
    /* The health signals (health.h), when the session computes them. */
    bool health;
    uint64_t nonfinite_total;   /* non-finite param elements seen */
    uint64_t nonfinite_updates; /* updates that saw any */
    uint64_t noop_updates;      /* updates that changed no shadow element */
    uint64_t last_nonfinite;    /* those of the last update */
    bool last_noop;             /* the last update changed nothing */
    bool has_distance;          /* health on, and an update had finite float elements */
    double distance;            /* RMS of (shadow - param) at the last update; NaN/Inf: poisoned */
    bool stalled;
    /* With profiles (and health): each profile's own signals, nprof of them. */
    unsigned nprof;
    struct metrics_profile {
        char name[METRICS_PROFILE_NAME + 1];
        uint64_t noop_updates;   /* its updates that changed none of its shadow */
        bool last_noop;
        bool has_distance;
        double distance;
    } prof[METRICS_PROFILES];
};

/* What the daemon holds at render time. */
struct metrics_view {
    double start_time; /* unix seconds */
    unsigned sessions[METRICS_SESSION_STATES];
    unsigned connections;
    uint64_t queued;       /* operations waiting or running, every session */
    uint64_t shadow_bytes; /* every session's */
    struct metrics_session *session_list;
    size_t nsessions;
};

/* A growable text buffer: what a rendering produces. */
struct metrics_text {
    char *data; /* NUL-terminated; malloc'd */
    size_t len;
    size_t cap;
};

/* ---- recording, on the loop thread; m may be NULL (contexts without metrics) ---- */

void metrics_hist_observe(struct metrics_hist *h, double seconds);
void metrics_update(struct metrics *m, uint64_t bytes, double seconds);
void metrics_swap(struct metrics *m, bool in, uint64_t bytes);
/* One phase of an event's data work handed out: here, on the loop thread (--inline-max). */
void metrics_job(struct metrics *m, bool here);
void metrics_register(struct metrics *m, bool resume);
/* An error response with code (one of metrics_error_codes; others count as INTERNAL). */
void metrics_error(struct metrics *m, const char *code);
/* seconds < 0: not measured (journals written beside another operation). */
void metrics_file(struct metrics *m, enum metrics_file_op op, bool ok, double seconds);

/* ---- rendering ---- */

/* The bucket bounds, seconds. */
extern const double metrics_bucket_bounds[METRICS_BUCKETS];

/* Append the exposition of m and v to out: every session's series when
 * all, else those of sessions owned by uid only. 0 or -ENOMEM. */
int metrics_render(const struct metrics *m, const struct metrics_view *v, bool all, uid_t uid,
                   struct metrics_text *out);
/* Label value escaping of the format: \ " and newline. Appends. 0 or -ENOMEM. */
int metrics_text_label(struct metrics_text *t, const char *value);
int metrics_text_printf(struct metrics_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void metrics_text_free(struct metrics_text *t);

/* ---- observe.c: what the sessions and the server tell the metrics ---- */

/* Fill v (session_list malloc'd; metrics_view_free releases it). 0 or -ENOMEM. */
int metrics_view_fill(struct emad *ctx, struct metrics_view *v);
void metrics_view_free(struct metrics_view *v);
/* An operation's phase completed on the workers without a fault (op.c's
 * op_done): count what it did. */
void metrics_op_done(struct metrics *m, struct op *op);
/* Render everything ctx holds, for uid (all: every session). 0 or -ENOMEM. */
int metrics_render_ctx(struct emad *ctx, bool all, uid_t uid, struct metrics_text *out);

#endif
