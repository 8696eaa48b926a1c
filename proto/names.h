/*
 * names.h - the contract's vocabulary, written once for emad and
 * libemaclient: which session and tensor names are valid, the names of
 * events and actions, and how emad names its shadow objects.
 */
#ifndef EMAD_NAMES_H
#define EMAD_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/* ---- Session and tensor names ---- */

#define NAMES_SESSION_MAX 128  /* bytes of [A-Za-z0-9._:/-] */
#define NAMES_TENSOR_MAX 1024  /* bytes of UTF-8 */

/* Well-formed UTF-8: no overlong forms, no surrogates, nothing past
 * U+10FFFF, no sequence cut short by the end. NUL is a character here. */
bool names_utf8_valid(const char *s, size_t len);
/* The length in bytes (1 to 4) of the well-formed UTF-8 character s starts
 * with, reading at most len bytes; 0 when it starts none (or len is 0). */
size_t names_utf8_char(const char *s, size_t len);
/* 1..NAMES_SESSION_MAX bytes, each of [A-Za-z0-9._:/-]. */
bool names_session_valid(const char *s, size_t len);
/* Whether s has the form "<digits>:...", the form root uses to name
 * another uid's session: a new session may not be called so. */
bool names_session_qualified(const char *s, size_t len);
/* 1..NAMES_TENSOR_MAX bytes of well-formed UTF-8 without NUL. */
bool names_tensor_valid(const char *s, size_t len);

/* ---- Events and actions ---- */

/* What a trainer reports. The swaps are requests of their own ("swap",
 * to "ema" or "train") but go through the same state machine. */
enum names_event {
    NAMES_EVENT_INIT,        /* "init" */
    NAMES_EVENT_FIT_START,   /* "fit_start" */
    NAMES_EVENT_BATCH_START, /* "batch_start" */
    NAMES_EVENT_BATCH_END,   /* "batch_end" */
    NAMES_EVENT_EPOCH_END,   /* "epoch_end" */
    NAMES_EVENT_EVAL_START,  /* "eval_start" */
    NAMES_EVENT_EVAL_END,    /* "eval_end" */
    NAMES_EVENT_CHECKPOINT,  /* "checkpoint" */
    NAMES_EVENT_SWAP_EMA,    /* "swap:ema": swap, to "ema" */
    NAMES_EVENT_SWAP_TRAIN,  /* "swap:train": swap, to "train" */
    NAMES_EVENT_COUNT,
};

/* What emad did; the order is that of enum emac_action (emaclient.h). */
enum names_action {
    NAMES_ACTION_NONE,         /* "none" */
    NAMES_ACTION_START,        /* "start" */
    NAMES_ACTION_UPDATE,       /* "update" */
    NAMES_ACTION_START_UPDATE, /* "start+update" */
    NAMES_ACTION_SWAP_IN,      /* "swap_in" */
    NAMES_ACTION_SWAP_OUT,     /* "swap_out" */
    NAMES_ACTION_COUNT,
};

/* The name of ev or a; NULL outside the enum. */
const char *names_event(enum names_event ev);
const char *names_action(enum names_action a);
/* The event an "event" request names (never a swap). 0 or -EINVAL. */
int names_event_lookup(const char *s, size_t len, enum names_event *out);
/* The swap a "swap" request's "to" names ("ema", "train"). 0 or -EINVAL. */
int names_swap_lookup(const char *s, size_t len, enum names_event *out);
int names_action_lookup(const char *s, size_t len, enum names_action *out);

/* ---- Shadow objects ---- */

/* "/emad-shadow-<pid>-<24 hex digits>": the pid lets a collector tell a
 * dead emad's shadows from a live one's, the random part makes the name
 * unpredictable. The segments of trainers are "/emad-<...>" (SEG_NAME_PREFIX
 * in segment.h), so this prefix also matches that one. */
#define NAMES_SHADOW_PREFIX "/emad-shadow-"
#define NAMES_SHADOW_RANDOM 12 /* bytes of randomness, two hex digits each */

/* Write the shadow name of pid with the random bytes rnd. 0, or
 * -ENAMETOOLONG when it does not fit outlen (with the NUL). */
int names_shadow_format(char *out, size_t outlen, long pid,
                        const unsigned char rnd[NAMES_SHADOW_RANDOM]);
/* The pid in a shadow name, with or without the leading '/'
 * ("emad-shadow-<pid>-<hex>", as /dev/shm lists it); 0 when name does
 * not have that form (pid of 1 or more, no leading zero, some lower-case
 * hex digits after it). */
long names_shadow_pid(const char *name);
/* name (NAMES_SHADOW_PREFIX, then anything up to a '-', then the rest)
 * with what precedes that '-' replaced by pid: what a shadow taken back
 * from a dead emad is renamed to. 0, -EINVAL when name has not that form,
 * -ENAMETOOLONG when the result does not fit outlen. */
int names_shadow_rename(const char *name, long pid, char *out, size_t outlen);

#endif
