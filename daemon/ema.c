/* ema.c - the EMA state machine: time strings, configuration, events in, actions out. */
#include "ema.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* How much of a client's bad string a message echoes. */
#define QUOTE_MAX 32

static const char *const unit_names[] = {
    [EMA_UNIT_BA] = "ba",
    [EMA_UNIT_EP] = "ep",
    [EMA_UNIT_DUR] = "dur",
    [EMA_UNIT_INF] = "inf",
};

/* ---- Names ----------------------------------------------------------------------------------- */

static bool name_is(const char *s, size_t len, const char *name)
{
    return s != NULL && len == strlen(name) && memcmp(s, name, len) == 0;
}

const char *ema_unit_name(enum ema_unit unit)
{
    return (unsigned)unit <= EMA_UNIT_INF ? unit_names[unit] : NULL;
}

/* ---- Time strings ---------------------------------------------------------------------------- */

/* One or more decimal digits and nothing else; refuses what does not fit in a u64 rather than
 * wrapping, since a wrapped "18446744073709551616ba" would silently mean 0. */
static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (len == 0)
        return -EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Checked on the digits rather than on a double, so that "1.000000000000001dur" is refused
 * instead of being rounded into range. */
static int parse_dur(const char *s, size_t len, uint64_t *out)
{
    const char *dot = memchr(s, '.', len);
    size_t int_len = dot != NULL ? (size_t)(dot - s) : len;
    uint64_t whole, frac = 0;

    if (parse_u64(s, int_len, &whole) < 0 || whole > 1)
        return -EINVAL;
    if (dot != NULL) {
        size_t frac_len = len - int_len - 1;
        if (frac_len > EMA_DUR_DIGITS || parse_u64(dot + 1, frac_len, &frac) < 0)
            return -EINVAL;
        for (size_t i = frac_len; i < EMA_DUR_DIGITS; i++)
            frac *= 10;
    }
    if (whole == 1 && frac != 0)
        return -EINVAL;
    *out = whole * EMA_DUR_ONE + frac;
    return 0;
}

static bool has_suffix(const char *s, size_t len, const char *suffix, size_t *stem)
{
    size_t n = strlen(suffix);

    if (len < n || memcmp(s + len - n, suffix, n) != 0)
        return false;
    *stem = len - n;
    return true;
}

int ema_time_parse(const char *s, size_t len, bool allow_inf, struct ema_time *out)
{
    struct ema_time t = {.unit = EMA_UNIT_INF, .value = 0};
    size_t stem;
    int rc;

    if (s == NULL || out == NULL)
        return -EINVAL;
    if (allow_inf && name_is(s, len, "inf")) {
        *out = t;
        return 0;
    }
    if (has_suffix(s, len, "dur", &stem)) {
        t.unit = EMA_UNIT_DUR;
        rc = parse_dur(s, stem, &t.value);
    } else if (has_suffix(s, len, "ba", &stem)) {
        t.unit = EMA_UNIT_BA;
        rc = parse_u64(s, stem, &t.value);
    } else if (has_suffix(s, len, "ep", &stem)) {
        t.unit = EMA_UNIT_EP;
        rc = parse_u64(s, stem, &t.value);
    } else {
        rc = -EINVAL;
    }
    if (rc < 0)
        return rc;
    *out = t;
    return 0;
}

int ema_time_format(const struct ema_time *t, char *buf, size_t len)
{
    char frac[24];
    size_t frac_len = EMA_DUR_DIGITS;
    int n;

    if (t == NULL || (buf == NULL && len > 0))
        return -EINVAL;
    switch (t->unit) {
    case EMA_UNIT_BA:
    case EMA_UNIT_EP:
        n = snprintf(buf, len, "%" PRIu64 "%s", t->value, unit_names[t->unit]);
        break;
    case EMA_UNIT_DUR:
        if (t->value > EMA_DUR_ONE)
            return -EINVAL;
        /* Always with a point and at least one decimal, like the default "0.0dur". */
        snprintf(frac, sizeof(frac), "%0*" PRIu64, EMA_DUR_DIGITS, t->value % EMA_DUR_ONE);
        while (frac_len > 1 && frac[frac_len - 1] == '0')
            frac_len--;
        n = snprintf(buf, len, "%" PRIu64 ".%.*sdur", t->value / EMA_DUR_ONE, (int)frac_len, frac);
        break;
    case EMA_UNIT_INF:
        n = snprintf(buf, len, "inf");
        break;
    default:
        return -EINVAL;
    }
    return n >= 0 && (size_t)n < len ? 0 : -ENOSPC;
}

/* ---- Configuration --------------------------------------------------------------------------- */

/* Echoes a client's string into a message, bounded, with the bytes that could break the quoting
 * or forge a log line replaced by '?'. */
static const char *quote(const char *s, size_t len, char buf[QUOTE_MAX + 4])
{
    size_t n = len < QUOTE_MAX ? len : QUOTE_MAX;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = c < 0x20 || c >= 0x7f || c == '"' || c == '\\' ? '?' : (char)c;
    }
    strcpy(buf + n, len > QUOTE_MAX ? "..." : "");
    return buf;
}

/* Parses one optional field, its default when absent; refuses units outside `allowed`. */
static int parse_field(const char *field, const char *s, size_t len, const char *dflt,
                       unsigned allowed, const char *expect, struct ema_time *out, char *err,
                       size_t errlen)
{
    char q[QUOTE_MAX + 4];

    if (s == NULL) {
        s = dflt;
        len = strlen(dflt);
    }
    if (ema_time_parse(s, len, allowed & (1u << EMA_UNIT_INF), out) < 0)
        return err_set(err, errlen, -EINVAL, "config.%s: \"%s\" is not a valid time string; expected %s", field,
                    quote(s, len, q), expect);
    if (!(allowed & (1u << out->unit)))
        return err_set(err, errlen, -EINVAL, "config.%s: unit \"%s\" is not allowed here; expected %s", field,
                    unit_names[out->unit], expect);
    return 0;
}

int ema_config_init(struct ema_config *cfg, const struct ema_config_in *in, char *err,
                    size_t errlen)
{
    const unsigned ba_ep = 1u << EMA_UNIT_BA | 1u << EMA_UNIT_EP;
    struct ema_config c = {0};
    char q[QUOTE_MAX + 4];
    int rc;

    if (cfg == NULL || in == NULL)
        return err_set(err, errlen, -EINVAL, "config: missing");
    if (in->half_life != NULL && in->has_smoothing)
        return err_set(err, errlen, -EINVAL,
                    "config.smoothing: given together with config.half_life; "
                    "give only one of them");

    if (in->has_smoothing) {
        /* Written so that NaN fails too. */
        if (!(in->smoothing >= 0.0 && in->smoothing <= 1.0))
            return err_set(err, errlen, -EINVAL, "config.smoothing: %g is not a number in [0, 1]",
                        in->smoothing);
        c.smoothing = in->smoothing;
    } else {
        rc = parse_field("half_life", in->half_life, in->half_life_len, EMA_DEFAULT_HALF_LIFE,
                         ba_ep | 1u << EMA_UNIT_INF,
                         "an integer followed by \"ba\" or \"ep\" (e.g. \"1000ba\"), or \"inf\"",
                         &c.half_life, err, errlen);
        if (rc < 0)
            return rc;
        c.has_half_life = true;
    }

    /* The default interval is 1 in half_life's unit; "inf" has no unit, so like smoothing it
     * takes "1ba" (Composer's code would crash on the smoothing case; this is its documented
     * intent). */
    c.update_interval.unit = EMA_UNIT_BA;
    c.update_interval.value = 1;
    if (c.has_half_life && c.half_life.unit != EMA_UNIT_INF)
        c.update_interval.unit = c.half_life.unit;
    if (in->update_interval != NULL) {
        rc = parse_field("update_interval", in->update_interval, in->update_interval_len, NULL,
                         ba_ep, "an integer >= 1 followed by \"ba\" or \"ep\" (e.g. \"1ba\")",
                         &c.update_interval, err, errlen);
        if (rc < 0)
            return rc;
        /* Updates fire when the clock is a multiple of the interval: 0 has no multiples. */
        if (c.update_interval.value == 0)
            return err_set(err, errlen, -EINVAL,
                        "config.update_interval: \"%s\" is zero; it must be at least 1",
                        quote(in->update_interval, in->update_interval_len, q));
    }
    if (c.has_half_life && c.half_life.unit != EMA_UNIT_INF &&
        c.half_life.unit != c.update_interval.unit)
        return err_set(err, errlen, -EINVAL,
                    "config.update_interval: unit \"%s\" does not match half_life's "
                    "unit \"%s\"%s",
                    unit_names[c.update_interval.unit], unit_names[c.half_life.unit],
                    in->half_life == NULL ? " (the default half_life \"" EMA_DEFAULT_HALF_LIFE
                                            "\"; give half_life or smoothing too)"
                                          : "");

    rc = parse_field("ema_start", in->ema_start, in->ema_start_len, EMA_DEFAULT_EMA_START,
                     ba_ep | 1u << EMA_UNIT_DUR,
                     "an integer followed by \"ba\" or \"ep\", or a decimal in [0, 1] with at most "
                     "15 decimals followed by \"dur\" (e.g. \"0.25dur\")",
                     &c.ema_start, err, errlen);
    if (rc < 0)
        return rc;

    if (c.has_half_life) {
        /* The two limits are set, not computed: 2^-(x/0) would divide by zero and x/inf has no
         * value to divide by. */
        if (c.half_life.unit == EMA_UNIT_INF)
            c.smoothing = 1.0;
        else if (c.half_life.value == 0)
            c.smoothing = 0.0;
        else
            c.smoothing = pow(2.0, -((double)c.update_interval.value / (double)c.half_life.value));
    }
    *cfg = c;
    return 0;
}

/* ---- State machine --------------------------------------------------------------------------- */

void ema_state_init(struct ema_state *st)
{
    if (st != NULL)
        memset(st, 0, sizeof(*st));
}

int ema_clock_check(const struct ema_clock *now, char *err, size_t errlen)
{
    if (now == NULL)
        return err_set(err, errlen, -EINVAL, "time: missing");
    /* A NaN would compare false with every start and silently never start the EMA. */
    if (now->has_duration && !(now->duration >= 0.0 && now->duration <= 1.0))
        return err_set(err, errlen, -EINVAL, "time.duration: %g is not a number in [0, 1]", now->duration);
    return 0;
}

static bool start_reached(const struct ema_time *start, const struct ema_clock *now)
{
    switch (start->unit) {
    case EMA_UNIT_BA:
        return now->batch >= start->value;
    case EMA_UNIT_EP:
        return now->epoch >= start->value;
    case EMA_UNIT_DUR:
        /* A trainer that does not report its progress can only be known to have reached the
         * very beginning. */
        if (!now->has_duration)
            return start->value == 0;
        /* Both operands are exact doubles, so the quotient is the nearest double to the decimal
         * the user wrote, the same value the trainer's 0.25 or 0.1 holds. */
        return now->duration >= (double)start->value / (double)EMA_DUR_ONE;
    default:
        return false;
    }
}

static enum ema_action decide_update(const struct ema_config *cfg, const struct ema_state *st,
                                     const struct ema_clock *now)
{
    const struct ema_time *iv = &cfg->update_interval;
    bool start;
    bool update;

    /* While the EMA weights are in the params, an update would average the shadow with itself
     * (Composer does exactly that, a silent no-op, since its params alias the EMA model), and a
     * start cannot happen since active implies started. A trainer sends batch_start, which swaps
     * out, before the next batch_end; the case left is an epoch_end after a batch checkpoint:
     * that update is skipped, as in Composer, and the reply says "none". */
    if (st->active)
        return EMA_ACTION_NONE;
    start = !st->started && start_reached(&cfg->ema_start, now);
    if (!st->started && !start)
        return EMA_ACTION_NONE;
    update = (iv->unit == EMA_UNIT_BA ? now->batch : now->epoch) % iv->value == 0;
    if (start)
        return update ? EMA_ACTION_START_UPDATE : EMA_ACTION_START;
    return update ? EMA_ACTION_UPDATE : EMA_ACTION_NONE;
}

int ema_decide(const struct ema_config *cfg, const struct ema_state *st, enum ema_event ev,
               const struct ema_clock *now, enum ema_action *out)
{
    enum ema_event update_event;
    enum ema_action action = EMA_ACTION_NONE;
    bool swap_request = ev == EMA_EVENT_SWAP_EMA || ev == EMA_EVENT_SWAP_TRAIN;

    if (cfg == NULL || st == NULL || out == NULL)
        return -EINVAL;
    if ((unsigned)ev >= EMA_EVENT_COUNT)
        return -EINVAL;
    if (!swap_request && ema_clock_check(now, NULL, 0) < 0)
        return -EINVAL;
    /* A zero interval would divide by zero below; ema_config_init never makes one. */
    if (cfg->update_interval.value == 0 ||
        (cfg->update_interval.unit != EMA_UNIT_BA && cfg->update_interval.unit != EMA_UNIT_EP))
        return -EINVAL;
    update_event =
        cfg->update_interval.unit == EMA_UNIT_BA ? EMA_EVENT_BATCH_END : EMA_EVENT_EPOCH_END;

    switch (ev) {
    case EMA_EVENT_BATCH_END:
    case EMA_EVENT_EPOCH_END:
        if (ev == update_event)
            action = decide_update(cfg, st, now);
        break;
    case EMA_EVENT_EVAL_START:
    case EMA_EVENT_CHECKPOINT: /* stays in until the next batch_start or eval_end */
    case EMA_EVENT_SWAP_EMA:
        if (st->started && !st->active)
            action = EMA_ACTION_SWAP_IN;
        break;
    case EMA_EVENT_BATCH_START:
    case EMA_EVENT_EVAL_END:
    case EMA_EVENT_SWAP_TRAIN:
        if (st->active)
            action = EMA_ACTION_SWAP_OUT;
        break;
    default: /* init, fit_start: Composer only places its models on a device there */
        break;
    }
    *out = action;
    return 0;
}

int ema_commit(struct ema_state *st, enum ema_action action, const struct ema_clock *now)
{
    struct ema_state next;

    if (st == NULL)
        return -EINVAL;
    next = *st;
    switch (action) {
    case EMA_ACTION_NONE:
        break;
    case EMA_ACTION_START:
    case EMA_ACTION_START_UPDATE:
        if (st->started || st->active)
            return -EINVAL;
        next.started = true;
        next.updates += action == EMA_ACTION_START_UPDATE;
        break;
    case EMA_ACTION_UPDATE:
        if (!st->started || st->active)
            return -EINVAL;
        next.updates++;
        break;
    case EMA_ACTION_SWAP_IN:
        if (!st->started || st->active)
            return -EINVAL;
        next.active = true;
        next.swaps++;
        break;
    case EMA_ACTION_SWAP_OUT:
        if (!st->active)
            return -EINVAL;
        next.active = false;
        next.swaps++;
        break;
    default:
        return -EINVAL;
    }
    if (now != NULL) {
        next.last_time = *now;
        next.has_last_time = true;
    }
    *st = next;
    return 0;
}
