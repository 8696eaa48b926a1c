/*
 * profile.c - a session's EMA profiles: their configuration from the contract, and what an
 * event does to each (profile.h). Pure.
 */
#include "profile.h"

#include "errbuf.h"
#include "phema.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

bool profile_name_valid(const char *name, size_t len)
{
    if (name == NULL || len == 0 || len > PROFILE_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

const char *profile_kind_name(enum profile_kind kind)
{
    switch (kind) {
    case PROFILE_COMPOSER:
        return "composer";
    case PROFILE_WARMUP:
        return "warmup";
    case PROFILE_POWER:
        return "power";
    }
    return NULL;
}

int profile_find(const struct profile *p, unsigned n, struct msg_str name)
{
    for (unsigned i = 0; i < n; i++)
        if (msg_str_eq(name, p[i].name))
            return (int)i;
    return -1;
}

/* The settings each schedule takes, to refuse the others by name. */
struct setting {
    const char *key;
    size_t has_offset;
    unsigned kinds; /* bit per enum profile_kind */
};

#define K_C (1u << PROFILE_COMPOSER)
#define K_W (1u << PROFILE_WARMUP)
#define K_P (1u << PROFILE_POWER)
#define SET(k, m, kinds) {k, offsetof(struct msg_profile, has_##m), kinds}
static const struct setting settings[] = {
    SET("half_life", half_life, K_C),
    SET("smoothing", smoothing, K_C),
    SET("ema_start", ema_start, K_C),
    SET("update_interval", update_interval, K_C | K_W | K_P),
    SET("decay", decay, K_W),
    SET("min_decay", min_decay, K_W),
    SET("update_after_step", update_after_step, K_W),
    SET("inv_gamma", inv_gamma, K_W),
    SET("power", power, K_W),
    SET("sigma_rel", sigma_rel, K_P),
    SET("gamma", gamma, K_P),
};

static bool has(const struct msg_profile *in, const struct setting *s)
{
    return *(const bool *)((const char *)in + s->has_offset);
}

/* Rewrite a message of ema.c or schedule.c ("config.half_life: ...", "warmup.power: ...") to
 * name the profile's field: "config.profiles.fast.half_life: ...". */
static int reword(char *err, size_t errlen, const char *name, const char *prefix)
{
    char why[400];
    size_t plen = strlen(prefix);

    if (err == NULL || errlen == 0)
        return -EINVAL;
    snprintf(why, sizeof(why), "%s", strncmp(err, prefix, plen) == 0 ? err + plen : err);
    return err_set(err, errlen, -EINVAL, "config.profiles.%s.%s", name, why);
}

/* An update_interval in batches (warmup, power); 1 when absent. */
static int batch_interval(const struct msg_profile *in, const char *name, uint64_t *out,
                          char *err, size_t errlen)
{
    struct ema_time t;
    char why[256];

    *out = 1;
    if (!in->has_update_interval)
        return 0;
    if (ema_time_parse(in->update_interval.ptr, in->update_interval.len, false, &t, why,
                       sizeof(why)) < 0)
        return err_set(err, errlen, -EINVAL, "config.profiles.%s.update_interval: %s", name,
                       why);
    if (t.unit != EMA_UNIT_BA || t.value == 0)
        return err_set(err, errlen, -EINVAL, "config.profiles.%s.update_interval: \"%.*s\": "
                       "warmup and power profiles update every N batches (\"Nba\", N >= 1)",
                       name, (int)(in->update_interval.len > 32 ? 32 : in->update_interval.len),
                       in->update_interval.ptr);
    *out = t.value;
    return 0;
}

static int composer_config(struct profile *p, const struct msg_profile *in, char *err,
                           size_t errlen)
{
    struct ema_config_in c;

    memset(&c, 0, sizeof(c));
    if (in->has_half_life) {
        c.half_life = in->half_life.ptr;
        c.half_life_len = in->half_life.len;
    }
    c.has_smoothing = in->has_smoothing;
    c.smoothing = in->smoothing;
    if (in->has_update_interval) {
        c.update_interval = in->update_interval.ptr;
        c.update_interval_len = in->update_interval.len;
    }
    if (in->has_ema_start) {
        c.ema_start = in->ema_start.ptr;
        c.ema_start_len = in->ema_start.len;
    }
    if (ema_config_init(&p->cfg, &c, err, errlen) < 0)
        return reword(err, errlen, p->name, "config.");
    if (p->cfg.has_half_life)
        ema_time_format(&p->cfg.half_life, p->half_life, sizeof(p->half_life));
    else
        p->half_life[0] = '\0';
    ema_time_format(&p->cfg.update_interval, p->update_interval, sizeof(p->update_interval));
    ema_time_format(&p->cfg.ema_start, p->ema_start, sizeof(p->ema_start));
    return 0;
}

static int warmup_config(struct profile *p, const struct msg_profile *in, char *err,
                         size_t errlen)
{
    uint64_t every;

    if (batch_interval(in, p->name, &every, err, errlen) < 0)
        return -EINVAL;
    if (schedule_warmup_init(
            &p->sched, in->has_decay ? in->decay : SCHEDULE_WARMUP_DEFAULT_DECAY,
            in->has_min_decay ? in->min_decay : SCHEDULE_WARMUP_DEFAULT_MIN_DECAY,
            in->has_update_after_step ? in->update_after_step
                                      : SCHEDULE_WARMUP_DEFAULT_UPDATE_AFTER_STEP,
            in->has_inv_gamma ? in->inv_gamma : SCHEDULE_WARMUP_DEFAULT_INV_GAMMA,
            in->has_power ? in->power : SCHEDULE_WARMUP_DEFAULT_POWER, every, err, errlen) < 0)
        return reword(err, errlen, p->name, "warmup.");
    snprintf(p->update_interval, sizeof(p->update_interval), "%" PRIu64 "ba", every);
    return 0;
}

static int power_config(struct profile *p, const struct msg_profile *in, char *err,
                        size_t errlen)
{
    uint64_t every;
    double gamma;

    if (in->has_sigma_rel && in->has_gamma)
        return err_set(err, errlen, -EINVAL, "config.profiles.%s.gamma: given together with "
                       "sigma_rel; give one of them", p->name);
    if (!in->has_sigma_rel && !in->has_gamma)
        return err_set(err, errlen, -EINVAL, "config.profiles.%s: a power profile needs "
                       "sigma_rel or gamma", p->name);
    if (batch_interval(in, p->name, &every, err, errlen) < 0)
        return -EINVAL;
    if (in->has_sigma_rel) {
        if (phema_gamma(in->sigma_rel, &gamma) < 0)
            return err_set(err, errlen, -EINVAL, "config.profiles.%s.sigma_rel: %g is not in "
                           "(0, %.17g)", p->name, in->sigma_rel, PHEMA_SIGMA_REL_MAX);
        p->has_sigma_rel = true;
        p->sigma_rel = in->sigma_rel;
    } else {
        gamma = in->gamma;
    }
    if (schedule_power_init(&p->sched, gamma, every, err, errlen) < 0)
        return reword(err, errlen, p->name, "power.");
    snprintf(p->update_interval, sizeof(p->update_interval), "%" PRIu64 "ba", every);
    return 0;
}

static int kind_of(const struct msg_profile *in, const char *name, enum profile_kind *out,
                   char *err, size_t errlen)
{
    if (in->has_schedule) {
        for (int k = PROFILE_COMPOSER; k <= PROFILE_POWER; k++)
            if (msg_str_eq(in->schedule, profile_kind_name((enum profile_kind)k))) {
                *out = (enum profile_kind)k;
                return 0;
            }
        return err_set(err, errlen, -EINVAL, "config.profiles.%s.schedule: \"%.*s\" is not one "
                       "of composer, warmup, power", name,
                       (int)(in->schedule.len > 32 ? 32 : in->schedule.len), in->schedule.ptr);
    }
    /* Inferred: the first setting that belongs to one schedule alone decides. */
    *out = PROFILE_COMPOSER;
    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        if (!has(in, &settings[i]))
            continue;
        if (settings[i].kinds == K_W) {
            *out = PROFILE_WARMUP;
            return 0;
        }
        if (settings[i].kinds == K_P) {
            *out = PROFILE_POWER;
            return 0;
        }
    }
    return 0;
}

int profile_config(struct profile *out, const struct msg_profile *in, size_t n, bool has_eval,
                   struct msg_str eval, unsigned *eval_index, char *err, size_t errlen)
{
    if (out == NULL || (in == NULL && n > 0) || eval_index == NULL)
        return -EINVAL;
    if (n == 0 || n > PROFILE_MAX)
        return err_set(err, errlen, -EINVAL, "config.profiles: %zu profiles; a session holds "
                       "1 to %d", n, PROFILE_MAX);
    for (size_t i = 0; i < n; i++) {
        struct profile *p = &out[i];
        int shown = (int)(in[i].name.len > 40 ? 40 : in[i].name.len);
        memset(p, 0, sizeof(*p));
        if (!profile_name_valid(in[i].name.ptr, in[i].name.len))
            return err_set(err, errlen, -EINVAL, "config.profiles: \"%.*s\": a profile name is "
                           "1 to %d characters of [A-Za-z0-9_.-]", shown, in[i].name.ptr,
                           PROFILE_NAME_MAX);
        memcpy(p->name, in[i].name.ptr, in[i].name.len);
        for (size_t j = 0; j < i; j++)
            if (strcmp(out[j].name, p->name) == 0)
                return err_set(err, errlen, -EINVAL, "config.profiles: \"%s\" is given twice",
                               p->name);
        if (kind_of(&in[i], p->name, &p->kind, err, errlen) < 0)
            return -EINVAL;
        for (size_t s = 0; s < sizeof(settings) / sizeof(settings[0]); s++)
            if (has(&in[i], &settings[s]) && !(settings[s].kinds & (1u << p->kind)))
                return err_set(err, errlen, -EINVAL, "config.profiles.%s.%s: not a setting of "
                               "a %s profile", p->name, settings[s].key,
                               profile_kind_name(p->kind));
        int rc = p->kind == PROFILE_COMPOSER ? composer_config(p, &in[i], err, errlen)
                 : p->kind == PROFILE_WARMUP ? warmup_config(p, &in[i], err, errlen)
                                             : power_config(p, &in[i], err, errlen);
        if (rc < 0)
            return rc;
        /* Warm-up and power profiles hold an EMA from the start (register copies the params
         * into every shadow); a composer one starts at its ema_start. */
        p->started = p->kind != PROFILE_COMPOSER;
    }
    *eval_index = 0;
    if (has_eval) {
        int at = profile_find(out, (unsigned)n, eval);
        if (at < 0)
            return err_set(err, errlen, -EINVAL, "config.eval_profile: \"%.*s\" names none of "
                           "the profiles", (int)(eval.len > 40 ? 40 : eval.len), eval.ptr);
        *eval_index = (unsigned)at;
    }
    return 0;
}

void profile_settings(const struct profile *p, struct msg_profile *o)
{
    memset(o, 0, sizeof(*o));
    o->name = msg_str_c(p->name);
    o->has_schedule = true;
    o->schedule = msg_str_c(profile_kind_name(p->kind));
    switch (p->kind) {
    case PROFILE_COMPOSER:
        if (p->cfg.has_half_life) {
            o->has_half_life = true;
            o->half_life = msg_str_c(p->half_life);
        } else {
            o->has_smoothing = true;
            o->smoothing = p->cfg.smoothing;
        }
        o->has_update_interval = true;
        o->update_interval = msg_str_c(p->update_interval);
        o->has_ema_start = true;
        o->ema_start = msg_str_c(p->ema_start);
        return;
    case PROFILE_WARMUP:
        o->has_decay = o->has_min_decay = o->has_update_after_step = true;
        o->has_inv_gamma = o->has_power = true;
        o->decay = p->sched.u.warmup.decay;
        o->min_decay = p->sched.u.warmup.min_decay;
        o->update_after_step = p->sched.u.warmup.update_after_step;
        o->inv_gamma = p->sched.u.warmup.inv_gamma;
        o->power = p->sched.u.warmup.power;
        break;
    case PROFILE_POWER:
        /* sigma_rel as given (a state file then derives the very same gamma), else gamma. */
        o->has_sigma_rel = p->has_sigma_rel;
        o->sigma_rel = p->sigma_rel;
        o->has_gamma = !p->has_sigma_rel;
        o->gamma = p->sched.u.power.gamma;
        break;
    }
    /* Canonical "Nba": the update_interval strings live in the profile. */
    o->has_update_interval = true;
    o->update_interval = msg_str_c(p->update_interval);
}

void profile_state(const struct profile *p, uint64_t shadow_offset, struct msg_profile_state *o)
{
    memset(o, 0, sizeof(*o));
    o->name = msg_str_c(p->name);
    o->schedule = msg_str_c(profile_kind_name(p->kind));
    profile_settings(p, &o->config);
    o->started = p->started;
    o->updates = p->updates;
    o->has_last_batch = p->updates > 0;
    o->last_batch = p->last_batch;
    o->has_last_decay = p->has_last_decay;
    o->last_decay = p->last_decay;
    o->shadow_offset = shadow_offset;
}

int profile_decide(const struct profile *p, unsigned n, bool active, enum ema_event ev,
                   const struct ema_clock *now, struct profile_plan *out)
{
    if (p == NULL || out == NULL || n == 0 || n > PROFILE_MAX)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->action = EMA_ACTION_NONE;
    if (ev != EMA_EVENT_BATCH_END && ev != EMA_EVENT_EPOCH_END)
        return 0;
    if (now == NULL)
        return -EINVAL;
    for (unsigned i = 0; i < n && !active; i++) {
        if (p[i].kind == PROFILE_COMPOSER) {
            struct ema_state st;
            enum ema_action a;
            ema_state_init(&st);
            st.started = p[i].started;
            if (ema_decide(&p[i].cfg, &st, ev, now, &a) < 0)
                return -EINVAL;
            if (a == EMA_ACTION_START || a == EMA_ACTION_START_UPDATE)
                out->init |= 1u << i;
            if (a == EMA_ACTION_UPDATE || a == EMA_ACTION_START_UPDATE) {
                out->due |= 1u << i;
                out->decay[i] = p[i].cfg.smoothing;
            }
            continue;
        }
        if (ev != EMA_EVENT_BATCH_END)
            continue;
        struct schedule_state ss = {p[i].last_batch, p[i].updates};
        struct schedule_step step;
        if (schedule_decide(&p[i].sched, &ss, now->batch, &step) < 0)
            return -EINVAL;
        if (step.due) {
            out->due |= 1u << i;
            out->decay[i] = step.decay;
        }
    }
    if (out->init && out->due)
        out->action = EMA_ACTION_START_UPDATE;
    else if (out->init)
        out->action = EMA_ACTION_START;
    else if (out->due)
        out->action = EMA_ACTION_UPDATE;
    return 0;
}

void profile_commit(struct profile *p, unsigned n, const struct profile_plan *plan,
                    const struct ema_clock *now, struct ema_state *st)
{
    bool any_started = false;

    for (unsigned i = 0; i < n; i++) {
        if (plan->init & (1u << i))
            p[i].started = true;
        if (plan->due & (1u << i)) {
            p[i].updates++;
            p[i].last_batch = now != NULL ? now->batch : p[i].last_batch;
            p[i].has_last_decay = true;
            p[i].last_decay = plan->decay[i];
        }
        any_started |= p[i].started;
    }
    st->started = any_started;
    st->updates += plan->due != 0;
    if (now != NULL) {
        st->last_time = *now;
        st->has_last_time = true;
    }
}
