/*
 * snapshot.c - the snapshot and snapshots methods (docs/protocol.md "Snapshots"): ask emad to
 * write the power profiles' shadows now, and list the files it has written.
 */
#include "emaclient_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The reply's entries copied into one block: the array, then its strings, so that one free()
 * releases everything. */
static int snapshots_copy(const struct msg_snapshots_reply *rep, struct emac_snapshot **list,
                          size_t *n)
{
    size_t strings = 0;
    struct arena a;
    struct emac_snapshot *out;

    if (rep->nsnapshots == 0)
        return 0;
    for (size_t i = 0; i < rep->nsnapshots; i++) {
        const struct msg_snapshot_entry *e = &rep->snapshots[i];
        strings += e->file.len + e->profile.len + e->dtype.len + 3;
    }
    out = malloc(rep->nsnapshots * sizeof(*out) + strings);
    if (out == NULL)
        return -ENOMEM;
    a.buf = (char *)(out + rep->nsnapshots);
    a.used = 0;
    a.cap = strings;
    for (size_t i = 0; i < rep->nsnapshots; i++) {
        const struct msg_snapshot_entry *e = &rep->snapshots[i];
        out[i].file = client_arena_str(&a, e->file);
        out[i].profile = client_arena_str(&a, e->profile);
        out[i].batch = e->batch;
        out[i].dtype = client_arena_str(&a, e->dtype);
        out[i].bytes = e->bytes;
    }
    *list = out;
    *n = rep->nsnapshots;
    return 0;
}

static int snapshot_call(emac_client *c, const char *method, const char *session, bool replay,
                         struct emac_snapshot **list, size_t *n, struct emac_error *err)
{
    struct msg_snapshot req = {.has_export = false};
    struct msg_snapshots_reply rep;
    char what[200];
    int rc;

    if (list != NULL)
        *list = NULL;
    if (n != NULL)
        *n = 0;
    if (c == NULL || session == NULL || list == NULL || n == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_%s: NULL argument", method);
    snprintf(what, sizeof(what), "%s of session \"%.128s\"", method, session);
    req.session = msg_str_c(session);
    rc = client_call(c, method, &msg_snapshot_desc, &req, &msg_snapshots_reply_desc, &rep, NULL,
                     NULL, replay, LOSS_RECONNECTS, what, err);
    if (rc < 0)
        return rc;
    rc = snapshots_copy(&rep, list, n);
    msg_free(&msg_snapshots_reply_desc, &rep);
    if (rc < 0)
        return client_set_err(err, rc, EMAC_E_SYSTEM, "%s: out of memory", what);
    return 0;
}

int emac_snapshot(emac_session *s, struct emac_snapshot **list, size_t *n,
                  struct emac_error *err)
{
    if (s == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_snapshot: NULL argument");
    if (s->closed)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "snapshot: session \"%s\" was closed",
                              s->name);
    if (s->c == NULL || s->gone)
        return client_set_err(err, -ENOTCONN, EMAC_E_DISCONNECTED,
                              "snapshot: the connection of session \"%s\" was lost", s->name);
    return emac_snapshot_session(s->c, s->name, list, n, err);
}

int emac_snapshot_session(emac_client *c, const char *session, struct emac_snapshot **list,
                          size_t *n, struct emac_error *err)
{
    /* Not sent again after a reconnect: the caller learns that the connection broke and
     * decides whether another set of files is wanted. */
    return snapshot_call(c, "snapshot", session, false, list, n, err);
}

int emac_snapshots(emac_client *c, const char *session, struct emac_snapshot **list, size_t *n,
                   struct emac_error *err)
{
    return snapshot_call(c, "snapshots", session, true, list, n, err);
}

void emac_snapshots_free(struct emac_snapshot *list)
{
    free(list);
}
