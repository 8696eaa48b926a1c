/* schedule.c - warm-up (timm) and power-function (EDM2) decay schedules: pure arithmetic. */
#include "schedule.h"
#include "errbuf.h"

#include <errno.h>
#include <math.h>
#include <string.h>

static bool in_unit(double v)
{
    return v >= 0.0 && v <= 1.0; /* false for NaN */
}

static bool positive_finite(double v)
{
    return v > 0.0 && v < INFINITY; /* false for NaN */
}

int schedule_warmup_init(struct schedule *out, double decay, double min_decay,
                         uint64_t update_after_step, double inv_gamma, double power,
                         uint64_t update_interval, char *err, size_t errlen)
{
    struct schedule s = {.kind = SCHEDULE_WARMUP};

    if (out == NULL)
        return err_set(err, errlen, -EINVAL, "warmup: missing");
    if (!in_unit(decay))
        return err_set(err, errlen, -EINVAL, "warmup.decay: %g is not a number in [0, 1]", decay);
    if (!in_unit(min_decay))
        return err_set(err, errlen, -EINVAL, "warmup.min_decay: %g is not a number in [0, 1]",
                       min_decay);
    if (!positive_finite(inv_gamma))
        return err_set(err, errlen, -EINVAL, "warmup.inv_gamma: %g is not a finite number > 0",
                       inv_gamma);
    if (!positive_finite(power))
        return err_set(err, errlen, -EINVAL, "warmup.power: %g is not a finite number > 0",
                       power);
    if (update_interval == 0)
        return err_set(err, errlen, -EINVAL,
                       "warmup.update_interval: 0 batches; it must be at least 1");
    s.update_interval = update_interval;
    s.u.warmup.decay = decay;
    s.u.warmup.min_decay = min_decay;
    s.u.warmup.update_after_step = update_after_step;
    s.u.warmup.inv_gamma = inv_gamma;
    s.u.warmup.power = power;
    *out = s;
    return 0;
}

int schedule_power_init(struct schedule *out, double gamma, uint64_t update_interval, char *err,
                        size_t errlen)
{
    struct schedule s = {.kind = SCHEDULE_POWER};

    if (out == NULL)
        return err_set(err, errlen, -EINVAL, "power: missing");
    /* gamma = 0 would be the plain running mean, but EDM2's profiles (proto/phema.h: sigma_rel,
     * the post-hoc solver) are defined for gamma > 0 only; below 0 the weights would grow into
     * the past. */
    if (!(gamma > 0.0 && gamma < INFINITY))
        return err_set(err, errlen, -EINVAL, "power.gamma: %g is not a finite number > 0",
                       gamma);
    if (update_interval == 0)
        return err_set(err, errlen, -EINVAL,
                       "power.update_interval: 0 batches; it must be at least 1");
    s.update_interval = update_interval;
    s.u.power.gamma = gamma;
    *out = s;
    return 0;
}

void schedule_state_init(struct schedule_state *st)
{
    if (st != NULL)
        memset(st, 0, sizeof(*st));
}

/*
 * timm's get_decay, operation for operation: Python's k / inv_gamma is a double division, its
 * ** is C's pow, and min/max compare doubles. k fits a double exactly below 2^53 batches.
 */
double schedule_warmup_decay(const struct schedule *s, uint64_t batch)
{
    uint64_t after = s->u.warmup.update_after_step;

    if (batch <= after || batch - after - 1 == 0)
        return 0.0;
    double k = (double)(batch - after - 1);
    double d = 1.0 - pow(1.0 + k / s->u.warmup.inv_gamma, -s->u.warmup.power);
    d = fmin(d, s->u.warmup.decay);
    return fmax(d, s->u.warmup.min_decay);
}

/* EDM2's power_function_beta with times in batches: only the ratio d / batch enters. */
double schedule_power_beta(double gamma, uint64_t batch, uint64_t d)
{
    if (batch == 0 || d == 0)
        return 1.0; /* no time has passed: nothing to average in */
    if (d >= batch)
        return 0.0; /* the first update (or everything since the start): a copy */
    return pow(1.0 - (double)d / (double)batch, gamma + 1.0);
}

int schedule_decide(const struct schedule *s, const struct schedule_state *st, uint64_t batch,
                    struct schedule_step *out)
{
    if (s == NULL || st == NULL || out == NULL)
        return -EINVAL;
    if (s->update_interval == 0 || (s->kind != SCHEDULE_WARMUP && s->kind != SCHEDULE_POWER))
        return -EINVAL;
    out->due = false;
    out->decay = 1.0;
    if (batch == 0 || batch <= st->last_batch || batch % s->update_interval != 0)
        return 0;
    out->due = true;
    if (s->kind == SCHEDULE_WARMUP)
        out->decay = schedule_warmup_decay(s, batch);
    else
        out->decay = schedule_power_beta(s->u.power.gamma, batch, batch - st->last_batch);
    return 0;
}

int schedule_commit(struct schedule_state *st, uint64_t batch)
{
    if (st == NULL || batch == 0 || batch <= st->last_batch)
        return -EINVAL;
    st->last_batch = batch;
    st->updates++;
    return 0;
}

const char *schedule_kind_name(enum schedule_kind kind)
{
    switch (kind) {
    case SCHEDULE_WARMUP:
        return "warmup";
    case SCHEDULE_POWER:
        return "power";
    default:
        return NULL;
    }
}
