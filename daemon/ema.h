/* ema.h - the EMA state machine of one session: pure, no IO, no allocation, no globals.
 *
 * The daemon parses a session's configuration once (ema_config_init), then for every event asks
 * what weight work to do (ema_decide), runs that work on its workers, and applies the state change
 * only once the work has completed (ema_commit). Work that fails is simply not committed, so the
 * same event decided again gives the same answer.
 *
 * Semantics: docs/protocol.md "Time" and "EMA semantics", after Composer's EMA algorithm.
 */
#ifndef EMA_H
#define EMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "names.h"

/* A dur time is held exactly, as a count of 10^-15: at most 15 decimals are accepted, so the
 * count stays below 2^53 and converts to the nearest double with a single rounding. */
#define EMA_DUR_DIGITS 15
#define EMA_DUR_ONE UINT64_C(1000000000000000)

/* Room for any string ema_time_format writes, NUL included. */
#define EMA_TIME_STRLEN 32

/* Defaults of docs/protocol.md "Configuration". */
#define EMA_DEFAULT_HALF_LIFE "1000ba"
#define EMA_DEFAULT_EMA_START "0.0dur"

/* ---- Time ---------------------------------------------------------------------------------- */

enum ema_unit {
    EMA_UNIT_BA,  /* batches (optimizer steps) */
    EMA_UNIT_EP,  /* epochs */
    EMA_UNIT_DUR, /* fraction of the planned training */
    EMA_UNIT_INF, /* "inf": an infinite half-life, the only unitless time */
    EMA_UNIT_SP,  /* samples */
    EMA_UNIT_TOK, /* tokens */
    EMA_UNIT_SEC, /* wall-clock seconds of training; also written "1h30m", "90s" */
    EMA_UNIT_COUNT
};

/* A parsed time string such as "1000ba", "2ep", "0.25dur", "1e6tok", "1h30m" or "inf". */
struct ema_time {
    enum ema_unit unit;
    uint64_t value; /* a count (ba, ep, sp, tok, sec); dur: the fraction in 10^-15; inf: 0 */
};

/* The trainer's clock carried by an event. The counts after duration are optional on the wire
 * (protocol extension): a trainer reports those its ema_start needs. */
struct ema_clock {
    uint64_t batch;    /* optimizer steps completed; the first batch_end carries 1 */
    uint64_t epoch;    /* epochs completed */
    double duration;   /* elapsed fraction of the planned training, in [0, 1] */
    bool has_duration; /* duration was sent (it is optional on the wire) */
    bool has_samples;
    bool has_tokens;
    bool has_seconds;
    uint64_t samples; /* samples trained on so far */
    uint64_t tokens;  /* tokens trained on so far */
    uint64_t seconds; /* whole wall-clock seconds of training so far */
};

/* ---- Configuration --------------------------------------------------------------------------- */

/* register's "config" map as received. A NULL string or a false has_smoothing means absent;
 * strings need not be NUL-terminated. */
struct ema_config_in {
    const char *half_life; /* time string, ba/ep, or "inf" */
    size_t half_life_len;
    bool has_smoothing;
    double smoothing;            /* in [0, 1] */
    const char *update_interval; /* time string, ba/ep, value >= 1 */
    size_t update_interval_len;
    const char *ema_start; /* time string, ba/ep/dur/sp/tok/sec */
    size_t ema_start_len;
};

/* A validated configuration, defaults filled in. */
struct ema_config {
    bool has_half_life;              /* smoothing derives from half_life, else it was given */
    struct ema_time half_life;       /* ba, ep or inf; meaningful when has_half_life */
    struct ema_time update_interval; /* ba or ep, value >= 1; its unit picks the update event */
    struct ema_time ema_start;       /* ba, ep, dur, sp, tok or sec */
    double smoothing; /* shadow = smoothing * shadow + (1 - smoothing) * param, in [0, 1];
                       * the kernels derive their lerp weight (kernel_weight_f32) */
};

/* ---- The state machine --------------------------------------------------------------------- */

/* The events and actions are the contract's (proto/names.h, which also holds their wire names).
 * The state machine and its callers name them ema_*: these are the very enums of names.h, so a
 * value goes from one to the other without a conversion. */
#define ema_event names_event
#define EMA_EVENT_INIT NAMES_EVENT_INIT
#define EMA_EVENT_FIT_START NAMES_EVENT_FIT_START
#define EMA_EVENT_BATCH_START NAMES_EVENT_BATCH_START
#define EMA_EVENT_BATCH_END NAMES_EVENT_BATCH_END
#define EMA_EVENT_EPOCH_END NAMES_EVENT_EPOCH_END
#define EMA_EVENT_EVAL_START NAMES_EVENT_EVAL_START
#define EMA_EVENT_EVAL_END NAMES_EVENT_EVAL_END
#define EMA_EVENT_CHECKPOINT NAMES_EVENT_CHECKPOINT
#define EMA_EVENT_SWAP_EMA NAMES_EVENT_SWAP_EMA     /* the swap method, "to": "ema"; no clock */
#define EMA_EVENT_SWAP_TRAIN NAMES_EVENT_SWAP_TRAIN /* the swap method, "to": "train"; no clock */
#define EMA_EVENT_COUNT NAMES_EVENT_COUNT

#define ema_action names_action
#define EMA_ACTION_NONE NAMES_ACTION_NONE   /* the event does not apply in this state */
#define EMA_ACTION_START NAMES_ACTION_START /* shadow := params */
/* shadow := smoothing * shadow + (1 - smoothing) * params */
#define EMA_ACTION_UPDATE NAMES_ACTION_UPDATE
/* start, then update (which leaves the shadow equal to params) */
#define EMA_ACTION_START_UPDATE NAMES_ACTION_START_UPDATE
#define EMA_ACTION_SWAP_IN NAMES_ACTION_SWAP_IN   /* params -> stash, shadow -> params */
#define EMA_ACTION_SWAP_OUT NAMES_ACTION_SWAP_OUT /* stash -> params */
#define EMA_ACTION_COUNT NAMES_ACTION_COUNT

/* One session's state; ema_state_init gives the state of a fresh session. */
struct ema_state {
    bool started;       /* the shadow was initialised from the params at ema_start */
    bool active;        /* the EMA weights are in the params, the training weights stashed */
    uint64_t updates;   /* completed updates; a start alone is not one */
    uint64_t swaps;     /* completed swaps, in and out */
    bool has_last_time; /* an event has been committed */
    struct ema_clock last_time; /* the clock of the last committed event */
};

/* ---- Prototypes: all return 0 or a negative errno; results go through out-parameters. ------ */

/* Time strings, Composer's grammar (docs/protocol.md "Time"): a decimal number (optional "+",
 * "_" between digits, fraction, exponent) then a unit matched without regard to case; counts
 * (ba, ep, sp, tok, sec) must be integral and fit a u64, a dur must lie in [0, 1] with at most 15
 * decimals; or a wall-clock "[H]h[M]m[S]s" (lowercase, at least one part, H < 24, M and S < 60)
 * in seconds; "inf" only when allow_inf. -EINVAL, *out untouched, with a message in err (which
 * may be NULL) quoting the string, Composer's own where it has one. */
int ema_time_parse(const char *s, size_t len, bool allow_inf, struct ema_time *out, char *err,
                   size_t errlen);
/* The canonical form ("1000ba", "0.25dur", "1.0dur", "5400sec", "inf") that parses back to *t.
 * -ENOSPC when buf is too small (EMA_TIME_STRLEN always suffices), -EINVAL for an invalid *t. */
int ema_time_format(const struct ema_time *t, char *buf, size_t len);
/* "ba", "ep", "dur", "inf", "sp", "tok", "sec"; NULL if invalid */
const char *ema_unit_name(enum ema_unit unit);

/* Validates and fills *cfg (untouched on failure). On -EINVAL, err receives a message naming the
 * field, e.g. `config.update_interval: unit "ep" does not match half_life's unit "ba"`. */
int ema_config_init(struct ema_config *cfg, const struct ema_config_in *in, char *err,
                    size_t errlen);

/* Checks an event's clock: duration, when present, in [0, 1]. Message names "time.duration". */
int ema_clock_check(const struct ema_clock *now, char *err, size_t errlen);
/* Checks that an update event (ev, for cfg's interval) carries the count that cfg's ema_start
 * is in (samples, tokens or seconds), unless that start is 0: without it the start could never
 * be reached. -EINVAL with a message naming the missing "time.<count>"; 0 for other events. */
int ema_clock_check_start(const struct ema_config *cfg, enum ema_event ev,
                          const struct ema_clock *now, char *err, size_t errlen);
void ema_state_init(struct ema_state *st);
/* The action event ev calls for; mutates nothing. now may be NULL only for the swap events.
 * -EINVAL for a bad argument, an invalid clock or a configuration not from ema_config_init. */
int ema_decide(const struct ema_config *cfg, const struct ema_state *st, enum ema_event ev,
               const struct ema_clock *now, enum ema_action *out);
/* Applies a completed action and records now (when not NULL) as the last time. -EINVAL, state
 * untouched, if the action is impossible in this state (it was not decided on this state). */
int ema_commit(struct ema_state *st, enum ema_action action, const struct ema_clock *now);

/* The names of events and actions, for logs and replies (those of proto/names.h); NULL for an
 * invalid value. A request's names are read with names_event_lookup and names_swap_lookup. */
static inline const char *ema_event_name(enum ema_event ev)
{
    return names_event(ev);
}

static inline const char *ema_action_name(enum ema_action action)
{
    return names_action(action);
}

#endif
