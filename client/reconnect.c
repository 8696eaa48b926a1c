/*
 * reconnect.c - after a lost connection: the policy, the jittered backoff,
 * and one attempt (connect, hello, the resume hook, what was outstanding
 * sent again). Everything it sends fails on a loss instead of reconnecting
 * again (LOSS_FAILS): the loop here is the only one that retries.
 */
#include "emaclient_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the policy ---- */

void emac_reconnect_defaults(struct emac_reconnect *r)
{
    r->enabled = true;
    r->initial_delay_ms = 50;
    r->max_delay_ms = 2000;
    r->timeout_ms = 30000;
}

int emac_set_reconnect(emac_client *c, const struct emac_reconnect *r, struct emac_error *err)
{
    if (c == NULL || r == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_set_reconnect: NULL argument");
    if (r->initial_delay_ms == 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                       "emac_set_reconnect: initial_delay_ms must be at least 1");
    if (r->max_delay_ms < r->initial_delay_ms)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                       "emac_set_reconnect: max_delay_ms (%u) is below initial_delay_ms (%u)",
                       r->max_delay_ms, r->initial_delay_ms);
    c->rc = *r;
    return 0;
}

unsigned emac_reconnects(const emac_client *c)
{
    return c ? c->reconnects : 0;
}

void client_reconnect_policy_from_env(struct emac_reconnect *r)
{
    const char *env = getenv("EMAD_RECONNECT_TIMEOUT");
    char *end;

    emac_reconnect_defaults(r);
    if (env == NULL || *env == '\0')
        return;
    errno = 0;
    double sec = strtod(env, &end);
    if (errno != 0 || *end != '\0' || !(sec >= 0) || sec > 86400.0)
        return; /* unusable: keep the default rather than fail every connect */
    if (sec == 0)
        r->enabled = false;
    else
        r->timeout_ms = (unsigned)(sec * 1000.0);
}

/* ---- one attempt, and the backoff ---- */

uint64_t client_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int by_msgid(const void *a, const void *b)
{
    uint32_t x = ((const struct outstanding *)a)->msgid, y = ((const struct outstanding *)b)->msgid;
    return x < y ? -1 : x > y;
}

/* Abandon the requests that cannot be sent again: sent whole, and not
 * safe to repeat. (Those of sessions that could not be resumed the resume
 * hook abandoned already.) */
static void abandon_unsendable(emac_client *c)
{
    for (size_t i = 0; i < c->nouts; i++) {
        struct outstanding *o = &c->outs[i];
        if (o->abandoned == KEPT && o->req == NULL)
            o->abandoned = NOT_REPEATABLE;
    }
}

/* One attempt: connect, hello, resume every session, send again what is
 * outstanding. 0, or a negative code with why filled. */
static int reconnect_once(emac_client *c, char *why, size_t whylen)
{
    struct emac_error e = {"", ""};
    int fd, rc;

    if ((rc = client_socket_connect(c->path, &fd)) < 0) {
        snprintf(why, whylen, "cannot connect to %s: %s", c->path, strerror(-rc));
        return rc;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = fd;
    c->lost = false;
    c->refused = false; /* a refusal (too many connections) is this attempt's alone */
    wire_decoder_free(&c->dec);
    wire_decoder_init(&c->dec, CLIENT_MAX_REPLY, WIRE_DEFAULT_MAX_DEPTH);
    if ((rc = client_hello(c, LOSS_FAILS, &e)) < 0)
        goto fail;
    if (c->hooks != NULL && (rc = c->hooks->resume(c, &e)) < 0)
        goto fail;
    abandon_unsendable(c);
    qsort(c->outs, c->nouts, sizeof(*c->outs), by_msgid);
    for (size_t i = 0; i < c->nouts; i++) {
        if (c->outs[i].abandoned != KEPT)
            continue;
        if ((rc = client_send_all(c->fd, c->outs[i].req, c->outs[i].req_len)) < 0) {
            snprintf(e.message, sizeof(e.message), "sending again: %s", strerror(-rc));
            goto fail;
        }
        if (!c->outs[i].replay) {
            free(c->outs[i].req);
            c->outs[i].req = NULL;
        }
    }
    return 0;

fail:
    snprintf(why, whylen, "%.300s", e.message);
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->lost = true;
    return rc < 0 ? rc : -ENOTCONN;
}

int client_reconnect(emac_client *c, const char *what, struct emac_error *err)
{
    char first[sizeof(c->lost_why)], why[384] = "";
    uint64_t t0 = client_now_ms();
    unsigned delay = c->rc.initial_delay_ms, attempts = 0;

    snprintf(first, sizeof(first), "%s", c->lost_why);
    for (;;) {
        attempts++;
        if (reconnect_once(c, why, sizeof(why)) == 0) {
            c->reconnects++;
            return 0;
        }
        uint64_t elapsed = client_now_ms() - t0;
        if (elapsed >= c->rc.timeout_ms)
            break;
        /* Jitter: trainers that lost the same emad do not all knock at once. */
        unsigned d = delay / 2 + (unsigned)(rand_r(&c->seed) % (delay / 2 + 1));
        if (d > c->rc.timeout_ms - elapsed)
            d = (unsigned)(c->rc.timeout_ms - elapsed);
        sleep_ms(d);
        delay = delay > c->rc.max_delay_ms / 2 ? c->rc.max_delay_ms : delay * 2;
    }
    c->lost = true;
    /* Whoever waits for what was in flight is told it failed, and nothing
     * of it is sent later behind the caller's back. */
    for (size_t i = 0; i < c->nouts; i++) {
        if (c->outs[i].abandoned == KEPT)
            c->outs[i].abandoned = GAVE_UP;
        free(c->outs[i].req);
        c->outs[i].req = NULL;
    }
    snprintf(c->lost_why, sizeof(c->lost_why),
             "%.160s; reconnecting gave up after %u attempt%s in %.1f s: %.160s", first, attempts,
             attempts == 1 ? "" : "s", (double)(client_now_ms() - t0) / 1000.0, why);
    return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED, "%s: %s", what, c->lost_why);
}
