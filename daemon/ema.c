/* ema.c - the EMA state machine: time strings, configuration, events in, actions out. */
#include "ema.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How much of a client's bad string a message echoes. */
#define QUOTE_MAX 32

static const char *const unit_names[] = {
    [EMA_UNIT_BA] = "ba",   [EMA_UNIT_EP] = "ep",   [EMA_UNIT_DUR] = "dur", [EMA_UNIT_INF] = "inf",
    [EMA_UNIT_SP] = "sp",   [EMA_UNIT_TOK] = "tok", [EMA_UNIT_SEC] = "sec",
};

/* Composer's TimeUnit member names, as its messages print them ("TimeUnit.BATCH"). */
static const char *const unit_enum_names[] = {
    [EMA_UNIT_BA] = "BATCH",   [EMA_UNIT_EP] = "EPOCH",  [EMA_UNIT_DUR] = "DURATION",
    [EMA_UNIT_INF] = "INF",    [EMA_UNIT_SP] = "SAMPLE", [EMA_UNIT_TOK] = "TOKEN",
    [EMA_UNIT_SEC] = "SECOND",
};

/* What a count counts, for messages. */
static const char *const unit_long_names[] = {
    [EMA_UNIT_BA] = "the batch count",  [EMA_UNIT_EP] = "the epoch count",
    [EMA_UNIT_DUR] = "the fraction",    [EMA_UNIT_INF] = "inf",
    [EMA_UNIT_SP] = "the sample count", [EMA_UNIT_TOK] = "the token count",
    [EMA_UNIT_SEC] = "the seconds",
};

/* ---- Names ----------------------------------------------------------------------------------- */

static bool name_is(const char *s, size_t len, const char *name)
{
    return s != NULL && len == strlen(name) && memcmp(s, name, len) == 0;
}

const char *ema_unit_name(enum ema_unit unit)
{
    return (unsigned)unit < EMA_UNIT_COUNT ? unit_names[unit] : NULL;
}

/* ---- Time strings ---------------------------------------------------------------------------- */

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

/* Significant digits kept; a number needing more is no u64 count nor a 15-decimal fraction. */
#define SIG_MAX 40
/* Exponents are saturated here: far beyond any that leaves a u64 or a 15-decimal fraction. */
#define EXP_MAX 100000

/* A decimal number as digits * 10^exp, the digits without leading or trailing zeros. */
struct decimal {
    char digits[SIG_MAX];
    size_t n;     /* 0: the number is zero */
    long exp;
    bool inexact; /* a nonzero fraction digit beyond SIG_MAX was dropped */
};

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Python's digitpart, the number syntax Composer's float() reads: digits with single underscores
 * between them. Appends the digits to d (those of a fraction when frac). Returns the bytes read,
 * 0 if they are not a digitpart. */
static size_t digit_part(const char *s, size_t len, struct decimal *d, bool frac)
{
    size_t i = 0;

    if (len == 0 || !is_digit(s[0]))
        return 0;
    for (; i < len; i++) {
        if (s[i] == '_') {
            if (i + 1 >= len || !is_digit(s[i + 1]))
                return 0;
            continue;
        }
        if (!is_digit(s[i]))
            break;
        if (d->n == 0 && s[i] == '0') {
            d->exp -= frac; /* a leading zero only shifts a fraction */
        } else if (d->n < SIG_MAX) {
            d->digits[d->n++] = s[i];
            d->exp -= frac;
        } else if (!frac) {
            d->exp++; /* the number is beyond any count already; only its size matters */
        } else if (s[i] != '0') {
            d->inexact = true;
        }
    }
    return i;
}

/* Reads Python's float syntax without inf and nan (no time is either): [+] digits [. [digits]]
 * or [+] . digits, then [eE [+-] digits]. -EINVAL if s is not exactly that. */
static int parse_decimal(const char *s, size_t len, struct decimal *d)
{
    size_t i = 0, k;
    bool any;

    memset(d, 0, sizeof(*d));
    if (i < len && s[i] == '+')
        i++;
    k = digit_part(s + i, len - i, d, false);
    if (k == 0 && i < len && is_digit(s[i]))
        return -EINVAL; /* a misplaced underscore */
    any = k > 0;
    i += k;
    if (i < len && s[i] == '.') {
        i++;
        k = digit_part(s + i, len - i, d, true);
        if (k == 0 && i < len && (is_digit(s[i]) || s[i] == '_'))
            return -EINVAL;
        any = any || k > 0;
        i += k;
    }
    if (!any)
        return -EINVAL;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        struct decimal scratch = {.n = 0};
        bool neg = false;
        long v = 0;
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            neg = s[i++] == '-';
        k = digit_part(s + i, len - i, &scratch, false);
        if (k == 0)
            return -EINVAL;
        for (size_t j = 0; j < k; j++)
            if (is_digit(s[i + j]) && v < EXP_MAX)
                v = v * 10 + (s[i + j] - '0');
        i += k;
        d->exp += neg ? -v : v;
    }
    if (i != len)
        return -EINVAL;
    while (d->n > 0 && d->digits[d->n - 1] == '0') {
        d->n--;
        d->exp++;
    }
    return 0;
}

/* digits * 10^(exp + shift) as a u64: -EDOM if it is not an integer, -ERANGE if too large. */
static int decimal_u64(const struct decimal *d, long shift, uint64_t *out)
{
    long e = d->exp + shift;
    uint64_t v = 0;

    if (d->inexact || (d->n > 0 && e < 0))
        return -EDOM; /* a nonzero digit lies after the point */
    if (d->n == 0) {
        *out = 0;
        return 0;
    }
    if ((long)d->n + e > 20)
        return -ERANGE;
    for (size_t i = 0; i < d->n + (size_t)e; i++) {
        unsigned dig = i < d->n ? (unsigned)(d->digits[i] - '0') : 0;
        if (v > (UINT64_MAX - dig) / 10)
            return -ERANGE;
        v = v * 10 + dig;
    }
    *out = v;
    return 0;
}

/* Python's repr() of the double nearest to s, for Composer's "value 1.5 is not an integer"
 * message: the shortest digits that read back the same, in fixed notation for exponents in
 * [-4, 16), else as "1.5e+20". */
static void py_float_repr(const char *s, size_t len, char *buf, size_t buflen)
{
    char num[96], e[40], dig[24], out[48];
    size_t n = 0, nd = 0, at = 0, k;
    double v;
    int x;

    for (size_t i = 0; i < len && n + 1 < sizeof(num); i++)
        if (s[i] != '_')
            num[n++] = s[i];
    num[n] = '\0';
    v = strtod(num, NULL);
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p - 1, v);
        if (strtod(e, NULL) == v)
            break;
    }
    /* e is "d.ddde+XX": its digits and its exponent. */
    for (k = 0; e[k] != '\0' && e[k] != 'e'; k++)
        if (is_digit(e[k]) && nd + 1 < sizeof(dig))
            dig[nd++] = e[k];
    x = e[k] == 'e' ? atoi(e + k + 1) : 0;
    if (x < -4 || x >= 16) {
        out[at++] = dig[0];
        if (nd > 1)
            out[at++] = '.';
        for (size_t i = 1; i < nd; i++)
            out[at++] = dig[i];
        snprintf(out + at, sizeof(out) - at, "e%c%02d", x < 0 ? '-' : '+', x < 0 ? -x : x);
    } else {
        /* Digit i stands for 10^(x - i); the places from the top one (or 0) down to the last
         * digit's (or -1). */
        long low = x - (long)nd + 1 < -1 ? x - (long)nd + 1 : -1;
        for (long q = x > 0 ? x : 0; q >= low; q--) {
            long i = x - q;
            if (q == -1)
                out[at++] = '.';
            out[at++] = i >= 0 && i < (long)nd ? dig[i] : '0';
        }
        out[at] = '\0';
    }
    snprintf(buf, buflen, "%s", out);
}

/* One part of a wall-clock string: 1 or 2 digits then `unit`, as Composer's strptime("%Hh%Mm%Ss")
 * reads it. Returns the bytes read, 0 if the part is absent; -1 if malformed or above max. */
static int wct_part(const char *s, size_t len, char unit, unsigned max, unsigned *out)
{
    size_t n = 0;
    unsigned v = 0;

    while (n < len && n < 3 && is_digit(s[n]))
        v = v * 10 + (unsigned)(s[n++] - '0');
    if (n == 0 || n >= len || s[n] != unit)
        return 0;
    if (n > 2 || v > max)
        return -1;
    *out = v;
    return (int)n + 1;
}

/* Composer tries a wall-clock "1h30m" before the number-and-unit grammar. -EINVAL if s is not one
 * (the caller then reads it as a number and a unit). */
static int parse_wct(const char *s, size_t len, uint64_t *seconds)
{
    static const struct {
        char unit;
        unsigned max, scale;
    } parts[] = {{'h', 23, 3600}, {'m', 59, 60}, {'s', 59, 1}};
    size_t i = 0;
    uint64_t total = 0;
    bool any = false;

    for (size_t p = 0; p < 3; p++) {
        unsigned v = 0;
        int n = wct_part(s + i, len - i, parts[p].unit, parts[p].max, &v);
        if (n < 0)
            return -EINVAL;
        if (n > 0) {
            any = true;
            i += (size_t)n;
            total += (uint64_t)v * parts[p].scale;
        }
    }
    if (!any || i != len)
        return -EINVAL;
    *seconds = total;
    return 0;
}

static bool has_suffix_nocase(const char *s, size_t len, const char *suffix, size_t *stem)
{
    size_t n = strlen(suffix);

    if (len <= n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[len - n + i];
        if ((c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c) != suffix[i])
            return false;
    }
    *stem = len - n;
    return true;
}

int ema_time_parse(const char *s, size_t len, bool allow_inf, struct ema_time *out, char *err,
                   size_t errlen)
{
    /* Composer's units in the order its messages would list them; "iter" is recognised only to
     * be refused by name (emad has no iteration count). */
    static const enum ema_unit units[] = {EMA_UNIT_EP,  EMA_UNIT_BA,  EMA_UNIT_SP,
                                          EMA_UNIT_TOK, EMA_UNIT_DUR, EMA_UNIT_SEC};
    struct ema_time t = {.unit = EMA_UNIT_INF, .value = 0};
    char q[QUOTE_MAX + 4], repr[48];
    struct decimal d;
    size_t stem = 0;
    bool found = false;
    int rc;

    if (s == NULL || out == NULL)
        return err_set(err, errlen, -EINVAL, "missing");
    if (allow_inf && name_is(s, len, "inf")) {
        *out = t;
        return 0;
    }
    if (parse_wct(s, len, &t.value) == 0) {
        t.unit = EMA_UNIT_SEC;
        *out = t;
        return 0;
    }
    if (has_suffix_nocase(s, len, "iter", &stem))
        return err_set(err, errlen, -EINVAL,
                       "\"%s\": unit \"iter\" (iterations) is not supported: emad has no "
                       "iteration count", quote(s, len, q));
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && !found; i++) {
        found = has_suffix_nocase(s, len, unit_names[units[i]], &stem);
        t.unit = units[i];
    }
    if (!found)
        return err_set(err, errlen, -EINVAL, "Invalid time string: \"%s\"", quote(s, len, q));
    if (parse_decimal(s, stem, &d) < 0)
        return err_set(err, errlen, -EINVAL, "Invalid time string: \"%s\"", quote(s, len, q));
    if (t.unit == EMA_UNIT_DUR) {
        /* Checked on the digits rather than on a double, so that "1.000000000000001dur" is
         * refused instead of being rounded into range. */
        if (d.inexact || (d.n > 0 && d.exp < -EMA_DUR_DIGITS))
            return err_set(err, errlen, -EINVAL, "\"%s\": a dur time has at most %d decimals",
                           quote(s, len, q), EMA_DUR_DIGITS);
        if (decimal_u64(&d, EMA_DUR_DIGITS, &t.value) < 0 || t.value > EMA_DUR_ONE)
            return err_set(err, errlen, -EINVAL, "\"%s\": a dur time is a fraction in [0, 1]",
                           quote(s, len, q));
    } else {
        rc = decimal_u64(&d, 0, &t.value);
        if (rc == -EDOM) {
            py_float_repr(s, stem, repr, sizeof(repr));
            return err_set(err, errlen, -EINVAL,
                           "\"%s\": value %s is not an integer. Units TimeUnit.%s require "
                           "integer values.", quote(s, len, q), repr, unit_enum_names[t.unit]);
        }
        if (rc < 0)
            return err_set(err, errlen, -EINVAL, "\"%s\": %s does not fit in 64 bits",
                           quote(s, len, q), unit_long_names[t.unit]);
    }
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
    case EMA_UNIT_SP:
    case EMA_UNIT_TOK:
    case EMA_UNIT_SEC:
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

/* Parses one optional field, its default when absent; refuses units outside `allowed`. */
/* Parses one optional field, its default when absent; refuses units outside `allowed` with
 * Composer's message for update_interval, which reads as well for the other fields. */
static int parse_field(const char *field, const char *s, size_t len, const char *dflt,
                       unsigned allowed, const char *expect, struct ema_time *out, char *err,
                       size_t errlen)
{
    char why[160];

    if (s == NULL) {
        s = dflt;
        len = strlen(dflt);
    }
    if (ema_time_parse(s, len, allowed & (1u << EMA_UNIT_INF), out, why, sizeof(why)) < 0)
        return err_set(err, errlen, -EINVAL, "config.%s: %s; expected %s", field, why, expect);
    if (!(allowed & (1u << out->unit)))
        return err_set(err, errlen, -EINVAL,
                       "config.%s: Invalid time unit for parameter %s: TimeUnit.%s (unit \"%s\" "
                       "is not allowed here; expected %s)",
                       field, field, unit_enum_names[out->unit], unit_names[out->unit], expect);
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
                     ba_ep | 1u << EMA_UNIT_DUR | 1u << EMA_UNIT_SP | 1u << EMA_UNIT_TOK |
                         1u << EMA_UNIT_SEC,
                     "an integer followed by \"ba\", \"ep\", \"sp\", \"tok\" or \"sec\", a "
                     "wall-clock time such as \"1h30m\", or a fraction in [0, 1] followed by "
                     "\"dur\" (e.g. \"0.25dur\")",
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

int ema_clock_check_start(const struct ema_config *cfg, enum ema_event ev,
                          const struct ema_clock *now, char *err, size_t errlen)
{
    const struct ema_time *start;
    enum ema_event update_event;
    const char *count;
    bool has;
    char s[EMA_TIME_STRLEN];

    if (cfg == NULL || now == NULL)
        return err_set(err, errlen, -EINVAL, "time: missing");
    start = &cfg->ema_start;
    update_event =
        cfg->update_interval.unit == EMA_UNIT_EP ? EMA_EVENT_EPOCH_END : EMA_EVENT_BATCH_END;
    if (ev != update_event || start->value == 0)
        return 0;
    switch (start->unit) {
    case EMA_UNIT_SP:
        count = "samples";
        has = now->has_samples;
        break;
    case EMA_UNIT_TOK:
        count = "tokens";
        has = now->has_tokens;
        break;
    case EMA_UNIT_SEC:
        count = "seconds";
        has = now->has_seconds;
        break;
    default:
        return 0;
    }
    if (has)
        return 0;
    /* Refused rather than left to never start: the trainer learns of it at its first update. */
    ema_time_format(start, s, sizeof(s));
    return err_set(err, errlen, -EINVAL,
                   "time.%s: missing; the session's ema_start \"%s\" counts %s, so every %s "
                   "must carry time.%s",
                   count, s, count, names_event(update_event), count);
}

static bool start_reached(const struct ema_time *start, const struct ema_clock *now)
{
    switch (start->unit) {
    case EMA_UNIT_BA:
        return now->batch >= start->value;
    case EMA_UNIT_EP:
        return now->epoch >= start->value;
    /* A count not reported can only be known to have reached 0; ema_clock_check_start refuses
     * such an event before it gets here. */
    case EMA_UNIT_SP:
        return start->value == 0 || (now->has_samples && now->samples >= start->value);
    case EMA_UNIT_TOK:
        return start->value == 0 || (now->has_tokens && now->tokens >= start->value);
    case EMA_UNIT_SEC:
        return start->value == 0 || (now->has_seconds && now->seconds >= start->value);
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
