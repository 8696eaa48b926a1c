/*
 * names.c - valid names, event and action names, shadow object names.
 */
#include "names.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const event_names[NAMES_EVENT_COUNT] = {
    [NAMES_EVENT_INIT] = "init",
    [NAMES_EVENT_FIT_START] = "fit_start",
    [NAMES_EVENT_BATCH_START] = "batch_start",
    [NAMES_EVENT_BATCH_END] = "batch_end",
    [NAMES_EVENT_EPOCH_END] = "epoch_end",
    [NAMES_EVENT_EVAL_START] = "eval_start",
    [NAMES_EVENT_EVAL_END] = "eval_end",
    [NAMES_EVENT_CHECKPOINT] = "checkpoint",
    [NAMES_EVENT_SWAP_EMA] = "swap:ema",
    [NAMES_EVENT_SWAP_TRAIN] = "swap:train",
};

static const char *const action_names[NAMES_ACTION_COUNT] = {
    [NAMES_ACTION_NONE] = "none",       [NAMES_ACTION_START] = "start",
    [NAMES_ACTION_UPDATE] = "update",   [NAMES_ACTION_START_UPDATE] = "start+update",
    [NAMES_ACTION_SWAP_IN] = "swap_in", [NAMES_ACTION_SWAP_OUT] = "swap_out",
};

/* ---- session and tensor names ---- */

size_t names_utf8_char(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n;
    uint32_t cp;

    if (s == NULL || len == 0)
        return 0;
    if (s[0] < 0x80)
        return 1;
    /* 0xc0, 0xc1 and 0xf5.. can only start overlong or too large forms. */
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        n = 2, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        n = 3, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        n = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (len < n)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((s[k] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[k] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

bool names_utf8_valid(const char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        size_t n = names_utf8_char(s + i, len - i);
        if (n == 0)
            return false;
        i += n;
    }
    return true;
}

bool names_session_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > NAMES_SESSION_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        bool ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
                  ch == '/' || ch == '-';
        if (!ok)
            return false;
    }
    return true;
}

bool names_session_qualified(const char *s, size_t len)
{
    size_t i = 0;

    if (s == NULL)
        return false;
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++;
    return i > 0 && i < len && s[i] == ':';
}

bool names_tensor_valid(const char *s, size_t len)
{
    /* A NUL would cut the name short for every C reader of it. */
    return s != NULL && len > 0 && len <= NAMES_TENSOR_MAX && memchr(s, '\0', len) == NULL &&
           names_utf8_valid(s, len);
}

/* ---- events and actions ---- */

static int lookup(const char *const *names, size_t count, const char *s, size_t len)
{
    if (s == NULL)
        return -EINVAL;
    for (size_t i = 0; i < count; i++)
        if (len == strlen(names[i]) && memcmp(s, names[i], len) == 0)
            return (int)i;
    return -EINVAL;
}

const char *names_event(enum names_event ev)
{
    return (unsigned)ev < NAMES_EVENT_COUNT ? event_names[ev] : NULL;
}

const char *names_action(enum names_action a)
{
    return (unsigned)a < NAMES_ACTION_COUNT ? action_names[a] : NULL;
}

int names_event_lookup(const char *s, size_t len, enum names_event *out)
{
    /* Only the events an "event" request may carry: the swaps have their
     * own method, and "swap:ema" sent as an event is not one. */
    int i = lookup(event_names, NAMES_EVENT_SWAP_EMA, s, len);

    if (i < 0 || out == NULL)
        return -EINVAL;
    *out = (enum names_event)i;
    return 0;
}

int names_swap_lookup(const char *s, size_t len, enum names_event *out)
{
    static const char *const to[] = {"ema", "train"};
    int i = lookup(to, 2, s, len);

    if (i < 0 || out == NULL)
        return -EINVAL;
    *out = i == 0 ? NAMES_EVENT_SWAP_EMA : NAMES_EVENT_SWAP_TRAIN;
    return 0;
}

int names_action_lookup(const char *s, size_t len, enum names_action *out)
{
    int i = lookup(action_names, NAMES_ACTION_COUNT, s, len);

    if (i < 0 || out == NULL)
        return -EINVAL;
    *out = (enum names_action)i;
    return 0;
}

/* ---- shadow objects ---- */

int names_shadow_format(char *out, size_t outlen, long pid,
                        const unsigned char rnd[NAMES_SHADOW_RANDOM])
{
    char hex[2 * NAMES_SHADOW_RANDOM + 1];
    int n;

    for (size_t i = 0; i < NAMES_SHADOW_RANDOM; i++)
        snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
    n = snprintf(out, outlen, NAMES_SHADOW_PREFIX "%ld-%s", pid, hex);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

long names_shadow_pid(const char *name)
{
    const char *prefix = &NAMES_SHADOW_PREFIX[1], *p; /* as /dev/shm lists it */
    char *end;
    long pid;

    if (name == NULL)
        return 0;
    if (name[0] == '/')
        name++;
    if (strncmp(name, prefix, strlen(prefix)) != 0)
        return 0;
    p = name + strlen(prefix);
    if (*p < '1' || *p > '9')
        return 0;
    errno = 0;
    pid = strtol(p, &end, 10);
    if (errno != 0 || pid <= 0 || pid > INT_MAX || *end != '-' || end[1] == '\0')
        return 0;
    for (p = end + 1; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return pid;
}

int names_shadow_rename(const char *name, long pid, char *out, size_t outlen)
{
    const size_t plen = strlen(NAMES_SHADOW_PREFIX);
    const char *rest;
    int n;

    if (name == NULL || strncmp(name, NAMES_SHADOW_PREFIX, plen) != 0)
        return -EINVAL;
    if ((rest = strchr(name + plen, '-')) == NULL)
        return -EINVAL;
    n = snprintf(out, outlen, NAMES_SHADOW_PREFIX "%ld%s", pid, rest);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}
