/*
 * export.c - emac_export: one profile's EMA weights, consistent, in a file the caller names
 * (docs/posthoc.md "Export").
 *
 * The caller is not the trainer, which may be updating the shadow at this moment: a read of the
 * shadow object could mix two batches. emad therefore copies the profile's shadow between two
 * operations of the session (snapshot with export, docs/protocol.md "snapshot") into a file of
 * its own snapshot directory, and this library copies that file to out_path as the caller: emad
 * never writes where a client says (docs/running.md "State directory").
 */
#include "emaclient.h"
#include "emaclient_int.h"

#include "durable.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes copied at a time: memory stays this, whatever the model's size. */
#define EXPORT_CHUNK (4u << 20)

/* The profile eval_start swaps in, as status names it; "ema" for a session without profiles. */
static int eval_profile(emac_client *c, const char *session, char *name, size_t len,
                        struct emac_error *err)
{
    struct emac_status *st = NULL;
    const struct emac_profile_info *p;
    int rc = emac_status(c, session, &st, err);

    if (rc < 0)
        return rc;
    snprintf(name, len, "ema");
    size_t n = st->nsessions > 0 ? emac_status_profiles(st, 0, &p) : 0;
    for (size_t i = 0; i < n; i++)
        if (p[i].eval)
            snprintf(name, len, "%s", p[i].name);
    emac_status_free(st);
    return 0;
}

/* Ask emad for the export file: its path into path. */
static int export_call(emac_client *c, const char *session, const char *profile,
                       const char *dtype, char *path, size_t len, uint64_t *batch,
                       struct emac_error *err)
{
    struct msg_snapshot req = {msg_str_c(session), true, msg_str_c(profile), true,
                               msg_str_c(dtype)};
    struct msg_snapshots_reply rep;
    char what[320];
    int rc;

    snprintf(what, sizeof(what), "export of profile \"%.64s\" of session \"%.128s\"", profile,
             session);
    /* Not sent again after a reconnect, as emac_snapshot_session. */
    rc = client_call(c, "snapshot", &msg_snapshot_desc, &req, &msg_snapshots_reply_desc, &rep,
                     NULL, NULL, false, LOSS_RECONNECTS, what, err);
    if (rc < 0)
        return rc;
    /* An emad without the extension ignores export (a request's unknown fields are ignored)
     * and snapshots the power profiles: its files are no export. */
    char suffix[80];
    snprintf(suffix, sizeof(suffix), "/%.40s.export.%.8s.safetensors", profile, dtype);
    size_t sl = strlen(suffix);
    if (rep.nsnapshots != 1 || rep.snapshots[0].file.len >= len ||
        rep.snapshots[0].file.len < sl ||
        memcmp(rep.snapshots[0].file.ptr + rep.snapshots[0].file.len - sl, suffix, sl) != 0)
        rc = client_set_err(err, -EPROTONOSUPPORT, EMAC_E_BADREPLY,
                            "%s: emad answered with %zu snapshot files, not an export: this "
                            "emad cannot export (no feature \"export\"); upgrade it",
                            what, rep.nsnapshots);
    else {
        snprintf(path, len, "%.*s", (int)rep.snapshots[0].file.len, rep.snapshots[0].file.ptr);
        *batch = rep.snapshots[0].batch;
    }
    msg_free(&msg_snapshots_reply_desc, &rep);
    return rc;
}

/* Copy the export file in to out_path (durably), its tensors as they are, its metadata but a
 * "gamma" of 0 (emad writes one for every profile; only a power profile's means something). */
static int copy_out(const char *in, const char *out_path, struct emac_error *err)
{
    struct st_file f;
    struct st_meta *meta = NULL;
    struct st_writer w;
    struct durable d;
    unsigned char *buf = NULL;
    size_t nmeta = 0;
    char msg[512];
    int rc;

    if ((rc = st_open(&f, in, msg, sizeof(msg))) < 0)
        return client_set_err(err, rc, rc == -EINVAL ? EMAC_E_BADFILE : EMAC_E_SYSTEM, "%s",
                              msg);
    meta = calloc(f.h.nmeta + 1, sizeof(*meta));
    buf = malloc(EXPORT_CHUNK);
    if (meta == NULL || buf == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < f.h.nmeta; i++)
        if (strcmp(f.h.meta[i].key, "gamma") != 0 || strcmp(f.h.meta[i].value, "0") != 0)
            meta[nmeta++] = f.h.meta[i];
    if ((rc = durable_open(&d, AT_FDCWD, out_path, 0644, msg, sizeof(msg))) < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
        goto out;
    }
    rc = st_writer_begin(&w, d.fd, f.h.tensors, f.h.ntensors, meta, nmeta, msg, sizeof(msg));
    for (size_t k = 0; rc == 0 && k < f.h.ntensors; k++) {
        const struct st_tensor *t = &f.h.tensors[k];
        for (uint64_t off = 0; rc == 0 && off < t->end - t->begin; off += EXPORT_CHUNK) {
            size_t cnt = t->end - t->begin - off < EXPORT_CHUNK ? (size_t)(t->end - t->begin - off)
                                                                : EXPORT_CHUNK;
            rc = st_read(&f, t, off, buf, cnt, msg, sizeof(msg));
            rc = rc ?: st_writer_write(&w, buf, cnt, msg, sizeof(msg));
        }
    }
    rc = rc ?: st_writer_finish(&w, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s: %s", out_path, msg);
        durable_abort(&d);
        goto out;
    }
    if ((rc = durable_commit(&d, msg, sizeof(msg))) < 0)
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
out:
    free(meta);
    free(buf);
    st_close(&f);
    return rc;
}

int emac_export(emac_client *c, const char *session, const char *profile, const char *dtype,
                const char *out_path, uint64_t *batch, struct emac_error *err)
{
    char prof[64], path[4096];
    int rc;

    if (err != NULL)
        err->code[0] = '\0';
    if (c == NULL || session == NULL || out_path == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_export: NULL argument");
    if (dtype == NULL)
        dtype = "f32";
    if (strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0 && strcmp(dtype, "f16") != 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "export: dtype \"%.20s\" is not f32, bf16 or f16", dtype);
    if (profile == NULL) {
        if ((rc = eval_profile(c, session, prof, sizeof(prof), err)) < 0)
            return rc;
        profile = prof;
    }
    uint64_t b = 0;
    if ((rc = export_call(c, session, profile, dtype, path, sizeof(path), &b, err)) < 0)
        return rc;
    if ((rc = copy_out(path, out_path, err)) < 0)
        return rc;
    if (batch != NULL)
        *batch = b;
    return 0;
}
