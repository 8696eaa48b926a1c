/*
 * schedule.h - the decay schedules of EMA profiles beside Composer's: when an update is due at
 * the trainer's batch b, and with which decay. Pure functions, no IO, no allocation.
 *
 * A session may hold several profiles (docs/protocol.md, issue 13 "Profiles"), each an EMA of
 * the same tensors with its own schedule:
 * - composer: today's half_life/smoothing, ema_start, update_interval. Not here: ema.c's state
 *   machine decides those (start, update, swap) and its decay is struct ema_config's smoothing,
 *   constant. A session puts that smoothing beside the decays below when it updates its due
 *   profiles in one pass (kernel_multi.h).
 * - warmup (timm's ModelEmaV3): with k = b - update_after_step - 1, decay 0 (the shadow copies
 *   the params) while k <= 0, then max(min(1 - (1 + k/inv_gamma)^-power, decay), min_decay).
 * - power (EDM2's power-function EMA): beta = (1 - D/b)^(gamma + 1), with D the batches since
 *   this profile's previous update (D = b at the first, so the first update copies).
 *
 * Batches count from 1 (the first batch_end carries 1). A profile's update is due at the batches
 * that are multiples of its update_interval (as Composer's, ema.c), and only after the batch of
 * its previous update: a batch 0, or one repeated or gone back, is not due (it would divide by
 * zero, or update twice at one batch).
 *
 * Every decay is computed in double. The update is then exactly today's: the kernels lerp the
 * shadow towards the param with w = (float)(1 - decay) (kernel_weight_f32: f32 shadows) or
 * 1 - decay (f64 shadows), as torch's shadow.lerp_(param, 1 - decay).
 */
#ifndef EMAD_SCHEDULE_H
#define EMAD_SCHEDULE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* timm ModelEmaV3's defaults (decay, min_decay, update_after_step, warmup_gamma, warmup_power). */
#define SCHEDULE_WARMUP_DEFAULT_DECAY 0.9999
#define SCHEDULE_WARMUP_DEFAULT_MIN_DECAY 0.0
#define SCHEDULE_WARMUP_DEFAULT_UPDATE_AFTER_STEP 0
#define SCHEDULE_WARMUP_DEFAULT_INV_GAMMA 1.0
#define SCHEDULE_WARMUP_DEFAULT_POWER (2.0 / 3.0)

enum schedule_kind {
    SCHEDULE_WARMUP, /* timm ModelEmaV3 */
    SCHEDULE_POWER,  /* EDM2 power function */
};

/* A validated schedule (schedule_warmup_init, schedule_power_init). */
struct schedule {
    enum schedule_kind kind;
    uint64_t update_interval; /* batches, >= 1: due at its multiples */
    union {
        struct {
            double decay;               /* the target (timm's decay), in [0, 1] */
            double min_decay;           /* the floor, in [0, 1] */
            uint64_t update_after_step; /* batches of copying before the warm-up */
            double inv_gamma;           /* > 0, finite */
            double power;               /* > 0, finite */
        } warmup;
        struct {
            double gamma; /* >= 0, finite: proto/phema computes it from sigma_rel */
        } power;
    } u;
};

/* What a profile keeps between updates: its only memory is when it last updated. */
struct schedule_state {
    uint64_t last_batch; /* the batch of the previous update; 0: none yet */
    uint64_t updates;    /* completed updates */
};

/* The decision for one batch. */
struct schedule_step {
    bool due;     /* update this profile at this batch */
    double decay; /* shadow := decay * shadow + (1 - decay) * param; meaningful when due */
};

/* ---- Prototypes: 0 or a negative errno; results through out-parameters. ---------------------- */

/*
 * A warm-up schedule from its parameters (the SCHEDULE_WARMUP_DEFAULT_* for those a client leaves
 * out). -EINVAL, *out untouched, with a message naming the field in err (may be NULL), e.g.
 * `warmup.inv_gamma: 0 is not a finite number > 0`, for decay or min_decay outside [0, 1],
 * inv_gamma or power not finite and > 0, or an update_interval of 0.
 */
int schedule_warmup_init(struct schedule *out, double decay, double min_decay,
                         uint64_t update_after_step, double inv_gamma, double power,
                         uint64_t update_interval, char *err, size_t errlen);

/* A power-function schedule: gamma finite and >= 0, update_interval >= 1. -EINVAL as above. */
int schedule_power_init(struct schedule *out, double gamma, uint64_t update_interval, char *err,
                        size_t errlen);

void schedule_state_init(struct schedule_state *st);

/* Whether the profile updates at batch b and with which decay; mutates nothing. -EINVAL for a
 * NULL argument or a schedule not from the inits. */
int schedule_decide(const struct schedule *s, const struct schedule_state *st, uint64_t batch,
                    struct schedule_step *out);

/* Records a completed update at batch b. -EINVAL, state untouched, if b is not after the
 * previous update (it was not decided due on this state). */
int schedule_commit(struct schedule_state *st, uint64_t batch);

/* The formulas alone, for tests and for status: the warm-up decay at batch b (no interval), and
 * EDM2's beta for an update at batch b, d batches after the previous one (0 < d <= b). */
double schedule_warmup_decay(const struct schedule *s, uint64_t batch);
double schedule_power_beta(double gamma, uint64_t batch, uint64_t d);

/* "warmup", "power"; NULL if invalid. */
const char *schedule_kind_name(enum schedule_kind kind);

#endif
