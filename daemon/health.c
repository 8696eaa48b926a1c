/*
 * health.c - a session's health signals, on the loop thread (see health.h).
 */
#include "health.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int health_prepare(struct health *h, size_t nchunks)
{
    if (h->nparts != nchunks) {
        struct health_part *p = calloc(nchunks ? nchunks : 1, sizeof(*p));
        if (p == NULL)
            return -ENOMEM;
        free(h->parts);
        h->parts = p;
        h->nparts = nchunks;
    }
    for (size_t i = 0; i < nchunks; i++) {
        memset(&h->parts[i], 0, sizeof(h->parts[i]));
        h->parts[i].first_nonfinite = SIZE_MAX;
    }
    return 0;
}

void health_free(struct health *h)
{
    free(h->parts);
    h->parts = NULL;
    h->nparts = 0;
}

/* The time since the last update feeds the usual interval, unless it was a stall: a pause is
 * not how often the trainer updates, and counting it would hide the next one. */
static void note_interval(struct health *h, uint64_t now_ns)
{
    if (h->last_update_ns != 0 && now_ns > h->last_update_ns && !h->stalled && !h->fresh_clock) {
        double dt = (double)(now_ns - h->last_update_ns) / 1e9;
        h->interval = h->interval == 0
                          ? dt
                          : (1 - HEALTH_INTERVAL_ALPHA) * h->interval + HEALTH_INTERVAL_ALPHA * dt;
    }
    h->last_update_ns = now_ns;
    h->stalled = false;
    h->fresh_clock = false;
}

/* The distance and no-op of one shadow's update from its summed parts. No float element at all
 * (integer tensors only): nothing can be said. */
static void finish_one(struct health_profile *o, const struct kernel_health *t)
{
    o->checked_updates++;
    o->last_noop = t->elems > 0 && !t->changed;
    if (o->last_noop)
        o->noop_updates++;
    o->has_distance = t->elems > t->nonfinite;
    o->distance = o->has_distance ? sqrt(t->sumsq / (double)(t->elems - t->nonfinite)) : 0;
}

uint64_t health_finish(struct health *h, uint64_t update, uint64_t now_ns, size_t *first)
{
    struct kernel_health t = {0};

    *first = SIZE_MAX;
    for (size_t i = 0; i < h->nparts; i++) {
        const struct health_part *p = &h->parts[i];
        kernel_health_add(&t, &p->k);
        if (p->first_nonfinite < *first)
            *first = p->first_nonfinite;
    }
    note_interval(h, now_ns);
    finish_one(&h->own, &t);
    h->last_count = t.nonfinite;
    if (t.nonfinite > 0) {
        h->nonfinite_total += t.nonfinite;
        h->nonfinite_updates++;
        h->has_last_nonfinite = true;
        h->last_nonfinite_update = update;
        h->last_nonfinite_count = t.nonfinite;
        h->last_nonfinite_tensor = *first;
    }
    return t.nonfinite;
}

void health_finish_profiles(struct health *h, uint32_t mask)
{
    for (unsigned p = 0; p < HEALTH_PROFILES; p++) {
        if (!(mask & (1u << p)))
            continue;
        struct kernel_health t = {0};
        for (size_t i = 0; i < h->nparts; i++)
            kernel_health_add(&t, &h->parts[i].prof[p]);
        finish_one(&h->prof[p], &t);
        h->prof_seen |= 1u << p;
    }
}

bool health_check_stall(struct health *h, bool attached, uint64_t now_ns, double factor)
{
    if (!attached && h->last_update_ns != 0) {
        /* Detached: the clock starts again when a trainer attaches, which takes its time. */
        h->last_update_ns = now_ns;
        h->fresh_clock = true;
    }
    if (!attached || factor <= 0 || h->interval <= 0 || h->last_update_ns == 0) {
        h->stalled = false;
        return false;
    }
    if (h->stalled)
        return false;
    double limit = factor * h->interval;
    if (limit < HEALTH_STALL_MIN_SECONDS)
        limit = HEALTH_STALL_MIN_SECONDS;
    if (now_ns <= h->last_update_ns || (double)(now_ns - h->last_update_ns) / 1e9 < limit)
        return false;
    h->stalled = true;
    return true;
}

static bool poisoned(bool has, double d)
{
    return has && !isfinite(d);
}

size_t health_alarms(const struct health *h, const char *out[HEALTH_ALARMS_MAX])
{
    bool poison = poisoned(h->own.has_distance, h->own.distance), noop = h->own.last_noop;
    size_t n = 0;

    /* A poisoned or idle profile is the session's alarm too, whichever one its own fields
     * describe: one look at the session must show it. */
    for (unsigned p = 0; p < HEALTH_PROFILES; p++) {
        if (!(h->prof_seen & (1u << p)))
            continue;
        poison |= poisoned(h->prof[p].has_distance, h->prof[p].distance);
        noop |= h->prof[p].last_noop;
    }
    if (h->last_count > 0)
        out[n++] = HEALTH_ALARM_NONFINITE;
    if (poison)
        out[n++] = HEALTH_ALARM_POISONED;
    if (noop)
        out[n++] = HEALTH_ALARM_NOOP;
    if (h->stalled)
        out[n++] = HEALTH_ALARM_STALLED;
    return n;
}

size_t health_profile_alarms(const struct health *h, unsigned p, const char *out[2])
{
    size_t n = 0;

    if (p >= HEALTH_PROFILES || !(h->prof_seen & (1u << p)))
        return 0;
    if (poisoned(h->prof[p].has_distance, h->prof[p].distance))
        out[n++] = HEALTH_ALARM_POISONED;
    if (h->prof[p].last_noop)
        out[n++] = HEALTH_ALARM_NOOP;
    return n;
}

void health_profile_state(const struct health *h, unsigned p, struct msg_profile_health *o)
{
    const char *alarms[2];

    memset(o, 0, sizeof(*o));
    if (p >= HEALTH_PROFILES)
        return;
    o->updates_checked = h->prof[p].checked_updates;
    o->has_distance = h->prof[p].has_distance;
    o->distance = h->prof[p].distance;
    o->noop_updates = h->prof[p].noop_updates;
    o->last_update_noop = h->prof[p].last_noop;
    o->nalarms = health_profile_alarms(h, p, alarms);
    for (size_t i = 0; i < o->nalarms; i++)
        o->alarm_buf[i] = msg_str_c(alarms[i]);
    o->alarms = o->alarm_buf;
}
