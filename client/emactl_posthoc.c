/*
 * emactl_posthoc.c - the commands that write EMA weights to a file the user names
 * (docs/posthoc.md): posthoc reconstructs an EMA of any width from the session's snapshots,
 * export writes one profile's shadow. emactl writes the file itself, as the user; emad never
 * writes where a client says (docs/running.md "State directory").
 */
#include "emactl.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_dtype(const struct ctl *ctl)
{
    if (ctl->dtype != NULL && strcmp(ctl->dtype, "f32") != 0 && strcmp(ctl->dtype, "bf16") != 0 &&
        strcmp(ctl->dtype, "f16") != 0)
        return ctl_usage_error(ctl, "--dtype \"%s\" is not f32, bf16 or f16", ctl->dtype);
    return 0;
}

/* The options of posthoc: *sigma_rel and *batch (0: the latest snapshot's). */
static int posthoc_options(const struct ctl *ctl, double *sigma_rel, uint64_t *batch)
{
    double gamma;
    char *end;

    if (ctl->sigma_rel == NULL)
        return ctl_usage_error(ctl, "--sigma-rel X is required");
    if (ctl->out == NULL)
        return ctl_usage_error(ctl, "--out FILE is required");
    errno = 0;
    *sigma_rel = strtod(ctl->sigma_rel, &end);
    if (*ctl->sigma_rel == '\0' || *end != '\0' || errno != 0 || !isfinite(*sigma_rel))
        return ctl_usage_error(ctl, "--sigma-rel \"%s\" is not a number", ctl->sigma_rel);
    if (emac_phema_gamma(*sigma_rel, &gamma) < 0)
        return ctl_usage_error(ctl,
                               "--sigma-rel %s is outside (0, 0.28867...): EDM2's power EMA "
                               "has no profile that wide (or that narrow)",
                               ctl->sigma_rel);
    *batch = 0;
    if (ctl->batch != NULL) {
        errno = 0;
        unsigned long long b = strtoull(ctl->batch, &end, 10);
        if (*ctl->batch < '0' || *ctl->batch > '9' || *end != '\0' || errno != 0 || b == 0)
            return ctl_usage_error(ctl, "--batch \"%s\" is not a batch number (1 or more)",
                                   ctl->batch);
        *batch = b;
    }
    return check_dtype(ctl);
}

static int cmd_posthoc(struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    struct emac_snapshot *l = NULL;
    const char **paths = NULL;
    uint64_t batch = 0, first = UINT64_MAX, last = 0;
    double sigma_rel = 0;
    size_t n = 0;
    emac_client *c;
    int rc;

    (void)argc;
    if ((rc = posthoc_options(ctl, &sigma_rel, &batch)) < 0)
        return rc;
    if ((c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    rc = emac_snapshots(c, argv[0], &l, &n, &err);
    emac_disconnect(c);
    if (rc < 0)
        return ctl_remote_error(ctl, "snapshots", &err);
    if (n == 0) {
        ctl_error(ctl, "STATE",
                  "session %s has no snapshot files: register it with power profiles and "
                  "snapshot_every, or run 'emactl snapshot %s' during training",
                  argv[0], argv[0]);
        return -ENOENT;
    }
    for (size_t i = 0; i < n; i++) {
        first = l[i].batch < first ? l[i].batch : first;
        last = l[i].batch > last ? l[i].batch : last;
    }
    if (batch != 0 && batch < first) {
        rc = ctl_usage_error(ctl,
                             "--batch %" PRIu64 " is before the first snapshot of session %s "
                             "(batch %" PRIu64 "; the last is at batch %" PRIu64 ")",
                             batch, argv[0], first, last);
        goto out;
    }
    if ((paths = calloc(n, sizeof(*paths))) == NULL) {
        ctl_error(ctl, "SYSTEM", "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        paths[i] = l[i].file;
    rc = emac_posthoc_files(paths, n, sigma_rel, batch, ctl->out, ctl->dtype, &err);
    if (rc < 0) {
        rc = ctl_library_error(ctl, &err, rc);
        goto out;
    }
    if (batch == 0)
        batch = last;
    if (ctl->json) {
        printf("{\"sigma_rel\": %.17g, \"batch\": %" PRIu64 ", \"snapshots\": %zu, "
               "\"dtype\": \"%s\"}\n",
               sigma_rel, batch, n, ctl->dtype ? ctl->dtype : "f32");
    } else {
        printf("posthoc EMA of session ");
        ctl_put_clean(stdout, argv[0]);
        printf(", sigma_rel %g at batch %" PRIu64 " (from %zu snapshot files), %s, into ",
               sigma_rel, batch, n, ctl->dtype ? ctl->dtype : "f32");
        ctl_put_clean(stdout, ctl->out);
        printf("\n");
    }
out:
    free(paths);
    emac_snapshots_free(l);
    return rc;
}

static int cmd_export(struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {{0}, {0}};
    uint64_t batch = 0;
    emac_client *c;
    int rc;

    (void)argc;
    if (ctl->out == NULL)
        return ctl_usage_error(ctl, "--out FILE is required");
    if ((rc = check_dtype(ctl)) < 0)
        return rc;
    if ((c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    rc = emac_export(c, argv[0], ctl->profile, ctl->dtype, ctl->out, &batch, &err);
    emac_disconnect(c);
    if (rc < 0) {
        /* emad's errors name the request ("snapshot"): say export, as the user typed. */
        if (strcmp(err.code, EMAC_E_SYSTEM) == 0 || strcmp(err.code, EMAC_E_BADFILE) == 0 ||
            strcmp(err.code, EMAC_E_USAGE) == 0)
            return ctl_library_error(ctl, &err, rc);
        return ctl_remote_error(ctl, "snapshot", &err);
    }
    if (ctl->json) {
        printf("{\"batch\": %" PRIu64 ", \"dtype\": \"%s\"}\n", batch,
               ctl->dtype ? ctl->dtype : "f32");
        return 0;
    }
    printf("exported ");
    if (ctl->profile != NULL) {
        printf("profile ");
        ctl_put_clean(stdout, ctl->profile);
    } else {
        printf("the eval profile");
    }
    printf(" of session ");
    ctl_put_clean(stdout, argv[0]);
    printf(" at batch %" PRIu64 ", %s, into ", batch, ctl->dtype ? ctl->dtype : "f32");
    ctl_put_clean(stdout, ctl->out);
    printf("\n");
    return 0;
}

const struct ctl_cmd ctl_cmd_posthoc = {
    .name = "posthoc",
    .args = "SESSION --sigma-rel X --out FILE [--batch B] [--dtype D]",
    .summary = "reconstruct the EMA of width X from the session's\n"
               "snapshots (post-hoc EMA) into a safetensors file",
    .help =
        "Reconstruct the power-function EMA of width X (sigma_rel, in (0, 0.28867)) at\n"
        "batch B (default: the latest snapshot's) from the snapshot files of SESSION's\n"
        "power profiles ('emactl snapshots' lists them), as EDM2 does: the snapshots\n"
        "at or before B, combined by least squares (docs/posthoc.md). The session may\n"
        "be running or closed. emactl reads the files and writes FILE itself, as you:\n"
        "safetensors with the session's tensor names (and the shapes the snapshots\n"
        "carry), floats in D (f32, bf16 or f16, rounded to nearest even; default f32),\n"
        "metadata sigma_rel, gamma, batch and the snapshots used. FILE is written\n"
        "through a temp file, fsynced and renamed: an existing FILE is replaced once\n"
        "the new one is whole, never before. Memory: one chunk of output and of one\n"
        "snapshot at a time.\n"
        "\n"
        "Output: one line naming the session, sigma_rel, batch and file.\n"
        "JSON output: {sigma_rel, batch, snapshots (files listed), dtype}.\n"
        "\n"
        "Exit status: 0 on success; 1 when emad reports an error or cannot be reached,\n"
        "when the session has no snapshot files (STATE), when a snapshot is malformed\n"
        "(BADFILE) or FILE cannot be written (SYSTEM); 2 on a usage error: X outside\n"
        "(0, 0.28867), B before the first snapshot, a width the snapshots cannot\n"
        "represent.\n"
        "\n"
        "Example:\n"
        "  emactl posthoc trainer-1 --sigma-rel 0.08 --out ema-0.08.safetensors\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON | CTL_OPT_OUT | CTL_OPT_DTYPE | CTL_OPT_SIGMA_REL |
            CTL_OPT_BATCH,
    .run = cmd_posthoc,
};

const struct ctl_cmd ctl_cmd_export = {
    .name = "export",
    .args = "SESSION --out FILE [--profile NAME] [--dtype DTYPE]",
    .summary = "write the EMA weights of a profile of the session\n"
               "(default: its eval profile) as safetensors",
    .help =
        "Write the EMA weights of profile NAME of SESSION (default: the eval profile,\n"
        "the one eval swaps in; \"ema\" without profiles) to FILE as safetensors with\n"
        "the session's tensor names: the form people publish, without the optimizer\n"
        "or the training weights. Floats in DTYPE (default f32, the shadow's own;\n"
        "bf16 and f16 rounded to nearest even); f64 and integer tensors as the shadow\n"
        "holds them; the shapes as emad's snapshot files carry them.\n"
        "\n"
        "The trainer may be updating at this moment: emad copies the profile's\n"
        "shadow between two operations of the session, after those queued before, so\n"
        "the file holds one batch, never part of an update. It writes that copy to\n"
        "its own snapshot directory (<profile>.export.<dtype>.safetensors, replaced\n"
        "by the next export; 'emactl snapshots' and post-hoc EMA ignore it), and\n"
        "emactl copies it to FILE as you: emad never writes a path a client names.\n"
        "FILE is written through a temp file, fsynced and renamed over an old FILE.\n"
        "The session must be running (attached or detached).\n"
        "\n"
        "Output: one line naming the profile, session, batch and file.\n"
        "JSON output: {batch, dtype}.\n"
        "\n" CTL_DAEMON_EXIT_STATUS "\n"
        "Example:\n"
        "  emactl export trainer-1 --profile fast --dtype bf16 --out ema.safetensors\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON | CTL_OPT_OUT | CTL_OPT_DTYPE | CTL_OPT_PROFILE,
    .run = cmd_export,
};
