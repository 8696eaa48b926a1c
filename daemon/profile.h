/*
 * profile.h - the EMA profiles of one session (docs/protocol.md "Profiles"): each an EMA of the
 * session's tensors with its own schedule, each with its own shadow. Pure: no IO, no allocation,
 * no globals.
 *
 * A session registered without config.profiles has no profile table at all (its one profile,
 * "ema", is the session's own ema_config and ema_state, on the single-profile path of chunk.c,
 * exactly as before profiles existed). A session registered with profiles has 1 to
 * PROFILE_MAX of them:
 * - composer: ema.c decides (ema_decide on the profile's own config, with the profile's started
 *   and the session's active), so start, update_interval and the skip while swapped in are
 *   Composer's; its decay is its smoothing.
 * - warmup, power: schedule.c decides, at batch_end only (their intervals count batches).
 * At an update event, profile_decide says which profiles start (shadow := params) and which
 * update with which decay; chunk.c runs all of them in one pass (kernel_multi.h); once the work
 * is done, profile_commit records it.
 */
#ifndef EMAD_PROFILE_H
#define EMAD_PROFILE_H

#include "ema.h"
#include "kernel_multi.h"
#include "msg.h"
#include "schedule.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROFILE_MAX KERNEL_MULTI_MAX
/* Profile names: 1 to PROFILE_NAME_MAX characters of [A-Za-z0-9_.-]. */
#define PROFILE_NAME_MAX 32
/* The name of a session's one profile when it has no table. */
#define PROFILE_DEFAULT_NAME "ema"

enum profile_kind {
    PROFILE_COMPOSER,
    PROFILE_WARMUP,
    PROFILE_POWER,
};

struct profile {
    char name[PROFILE_NAME_MAX + 1];
    enum profile_kind kind;
    /* composer */
    struct ema_config cfg;
    char half_life[EMA_TIME_STRLEN]; /* "" when configured by smoothing */
    char update_interval[EMA_TIME_STRLEN];
    char ema_start[EMA_TIME_STRLEN];
    /* warmup, power */
    struct schedule sched;
    bool has_sigma_rel; /* power: configured by sigma_rel (gamma derived from it) */
    double sigma_rel;
    /* State. */
    bool started;        /* its shadow was initialised: composer at ema_start, else at register */
    uint64_t updates;    /* completed updates */
    uint64_t last_batch; /* the batch of its last update; 0: none yet */
    bool has_last_decay;
    double last_decay;   /* the decay of its last update */
};

/* What one event does to the profiles (bit p: profile p). */
struct profile_plan {
    uint32_t init;              /* shadow := params first */
    uint32_t due;               /* then the update, with decay[p] */
    double decay[PROFILE_MAX];
    enum ema_action action;     /* the session's: none, start, update or start+update */
};

/* Whether name is a valid profile name. */
bool profile_name_valid(const char *name, size_t len);

/*
 * The profiles of config.profiles into out[] (n of them, 1..PROFILE_MAX; fresh state) and the
 * index of eval_profile (the first when absent) into *eval. The schedule is the "schedule" field
 * or, when absent, inferred: any of decay, min_decay, update_after_step, inv_gamma, power makes
 * a warmup profile, sigma_rel or gamma a power one, else composer. A field of another schedule
 * is refused. -EINVAL with a message naming the field in err.
 */
int profile_config(struct profile *out, const struct msg_profile *in, size_t n, bool has_eval,
                   struct msg_str eval, unsigned *eval_index, char *err, size_t errlen);

/* The settings of p, defaults filled in, as status and state files write them (strings point
 * into p). */
void profile_settings(const struct profile *p, struct msg_profile *out);
const char *profile_kind_name(enum profile_kind kind);
/* Its settings and state, as status and state files write them; shadow_offset: where its shadow
 * lies relative to the offsets register reports. */
void profile_state(const struct profile *p, uint64_t shadow_offset, struct msg_profile_state *o);

/*
 * Which profiles an update event (batch_end, epoch_end) starts and updates; active is the
 * session's (swapped in: nothing updates, as ema.c's). Other events give action none. -EINVAL
 * for a bad argument.
 */
int profile_decide(const struct profile *p, unsigned n, bool active, enum ema_event ev,
                   const struct ema_clock *now, struct profile_plan *out);

/* Record a completed plan: the profiles' state, and the session's st (updates counts the events
 * that updated any profile; started: any profile is; the last time). */
void profile_commit(struct profile *p, unsigned n, const struct profile_plan *plan,
                    const struct ema_clock *now, struct ema_state *st);

/* The index of the profile named name, or -1. */
int profile_find(const struct profile *p, unsigned n, struct msg_str name);

#endif
