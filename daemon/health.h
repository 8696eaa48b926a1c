/*
 * health.h - a session's health signals (docs/running.md "Health"): what its updates saw of the
 * params (non-finite values, the distance between the shadow and the params, updates that
 * changed nothing) and whether its trainer stopped sending them (stalled).
 *
 * The update kernels gather the data (kernel_update_health), one struct health_part per chunk,
 * each written by the thread that runs the chunk (a worker, or the loop for a session within
 * --inline-max). Everything else here runs on the loop thread:
 * the parts are summed once the pool reports the job complete (its lock orders the workers'
 * writes before), and struct health is read there by status and by anything else that reports
 * on sessions (a metrics renderer). No I/O, no logging: the caller says what happened.
 */
#ifndef EMAD_HEALTH_H
#define EMAD_HEALTH_H

#include "kernel.h"
#include "msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A session is never stalled before this many seconds without an update, however fast its
 * updates came: the check runs once a second, and a pause of a second is no news. */
#define HEALTH_STALL_MIN_SECONDS 2.0
/* The weight of the newest interval in the usual interval (an exponential moving average). */
#define HEALTH_INTERVAL_ALPHA 0.2

/* The alarms status lists (docs/running.md "Health"), at most HEALTH_ALARMS_MAX of them. */
#define HEALTH_ALARM_NONFINITE "nonfinite"
#define HEALTH_ALARM_NOOP "noop"
#define HEALTH_ALARM_POISONED "poisoned"
#define HEALTH_ALARM_STALLED "stalled"
#define HEALTH_ALARMS_MAX 4

/* The most profiles a session holds (PROFILE_MAX, profile.h; checked there). */
#define HEALTH_PROFILES 8

/* One chunk's share of one update. */
struct health_part {
    struct kernel_health k;
    size_t first_nonfinite; /* lowest tensor index with a non-finite param; SIZE_MAX: none */
    /* With profiles: each updating profile's share (k is then the session's health profile's,
     * copied from one of these). */
    struct kernel_health prof[HEALTH_PROFILES];
};

/* What a shadow's updates saw of it: the session's (struct health's own) and, with profiles,
 * each profile's of its own shadow (docs/protocol.md "Health"). The non-finite count and the
 * stall are the params' and the trainer's, one for the session. */
struct health_profile {
    uint64_t checked_updates; /* its updates these signals cover */
    uint64_t noop_updates;    /* its updates that changed none of its shadow */
    bool last_noop;
    bool has_distance;        /* an update had finite float elements */
    double distance;          /* RMS of (shadow before - param) over them */
};

struct health {
    /* Configuration (register's config, kept with the session's). */
    bool enabled;        /* computed at all ("health": false turns it off) */
    bool skip_nonfinite; /* on_nonfinite "skip" (else "apply") */

    /* Per chunk, for the update in flight (allocated once, nparts = the plan's chunks). */
    struct health_part *parts;
    size_t nparts;

    /* Since the session was registered (or restored: none of this is saved). */
    uint64_t nonfinite_total;   /* non-finite param elements seen */
    uint64_t nonfinite_updates; /* updates that saw any */

    /* The last update with non-finite params. */
    bool has_last_nonfinite;
    uint64_t last_nonfinite_update; /* its number (the session's updates after it) */
    uint64_t last_nonfinite_count;
    size_t last_nonfinite_tensor; /* the lowest tensor index that had one */

    /* The updates it covers, and the last one's no-op and distance (RMS of (shadow before -
     * param) over the finite elements; none before the first update, or when it had no finite
     * float element): of the whole session, as each profile's of its own shadow. */
    struct health_profile own;
    uint64_t last_count; /* the last update's non-finite params (0: none) */

    /* Stalls. */
    uint64_t last_update_ns; /* uv_hrtime() of the last update; 0: none yet */
    double interval;         /* usual seconds between updates; 0: not known yet */
    bool stalled;
    bool fresh_clock; /* last_update_ns restarted at a detach: the next update's
                         interval is not a real one */

    /* With profiles, each profile's (index as the session's profiles); bit p of prof_seen:
     * profile p has had an update checked. */
    struct health_profile prof[HEALTH_PROFILES];
    uint32_t prof_seen;
};

/* Make room for nchunks parts and clear them, before an update's chunks run. 0 or -ENOMEM
 * (the update then runs without health). */
int health_prepare(struct health *h, size_t nchunks);
void health_free(struct health *h);

/* The update whose parts are filled is complete (update is the session's count after it):
 * sums the parts into the signals, and clears a stall. Returns the update's non-finite count
 * (its lowest tensor in *first). */
uint64_t health_finish(struct health *h, uint64_t update, uint64_t now_ns, size_t *first);

/* The once-a-second check: whether an attached session has gone factor usual intervals (and at
 * least HEALTH_STALL_MIN_SECONDS) without an update. factor 0 turns the check off. true when
 * the session has just become stalled (for the caller to log). */
/* With profiles, before health_finish: the profiles in mask (bit p: profile p) updated from a
 * shadow they had before (not started at this update); sums their parts into h->prof. */
void health_finish_profiles(struct health *h, uint32_t mask);

bool health_check_stall(struct health *h, bool attached, uint64_t now_ns, double factor);

/* The current alarms, in a fixed order; returns how many (<= HEALTH_ALARMS_MAX). With profiles
 * "poisoned" and "noop" hold when they hold for any profile. */
size_t health_alarms(const struct health *h, const char *out[HEALTH_ALARMS_MAX]);
/* Profile p's: "poisoned" and "noop" (its own shadow), at most 2. */
size_t health_profile_alarms(const struct health *h, unsigned p, const char *out[2]);
/* Profile p's signals as status reports them (o's alarms point into o itself). */
void health_profile_state(const struct health *h, unsigned p, struct msg_profile_health *o);

#endif
