/*
 * emactl_snap.c - the commands of snapshots (docs/protocol.md "Snapshots"): snapshots lists a
 * session's snapshot files, snapshot has emad write one set now.
 */
#include "emactl.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* The files as JSON (an array of {file, profile, batch, dtype, bytes}, as emad sent them) or as
 * a table. */
static int print_snapshots(const struct ctl *ctl, const struct emac_snapshot *l, size_t n)
{
    if (ctl->json) {
        msgpack_sbuffer sb;
        msgpack_packer pk;
        int rc;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_array(&pk, n);
        for (size_t i = 0; i < n; i++) {
            msgpack_pack_map(&pk, 5);
            pack_str(&pk, "file");
            pack_str(&pk, l[i].file);
            pack_str(&pk, "profile");
            pack_str(&pk, l[i].profile);
            pack_str(&pk, "batch");
            msgpack_pack_uint64(&pk, l[i].batch);
            pack_str(&pk, "dtype");
            pack_str(&pk, l[i].dtype);
            pack_str(&pk, "bytes");
            msgpack_pack_uint64(&pk, l[i].bytes);
        }
        rc = ctl_print_json(ctl, sb.data, sb.size, NULL, -1);
        msgpack_sbuffer_destroy(&sb);
        return rc;
    }
    static const struct ctl_column cols[] = {
        {"PROFILE", false}, {"BATCH", true}, {"DTYPE", false}, {"BYTES", true}, {"FILE", false},
    };
    struct ctl_table t;
    int rc = 0;

    ctl_table_init(&t, cols, sizeof(cols) / sizeof(cols[0]));
    for (size_t i = 0; i < n && rc == 0; i++) {
        char batch[24], bytes[24];
        snprintf(batch, sizeof(batch), "%" PRIu64, l[i].batch);
        snprintf(bytes, sizeof(bytes), "%" PRIu64, l[i].bytes);
        const char *cells[] = {l[i].profile, batch, l[i].dtype, bytes, l[i].file};
        rc = ctl_table_add(&t, cells);
    }
    if (rc == 0)
        ctl_table_print(&t, stdout);
    ctl_table_free(&t);
    if (rc < 0)
        ctl_error(ctl, "SYSTEM", "out of memory");
    return rc;
}

static int run_snapshots(struct ctl *ctl, const char *session, bool take)
{
    struct emac_error err = {{0}, {0}};
    struct emac_snapshot *l = NULL;
    size_t n = 0;
    emac_client *c;
    int rc;

    if ((c = ctl_connect(ctl)) == NULL)
        return -ECONNREFUSED;
    rc = take ? emac_snapshot_session(c, session, &l, &n, &err)
              : emac_snapshots(c, session, &l, &n, &err);
    emac_disconnect(c);
    if (rc < 0)
        return ctl_remote_error(ctl, take ? "snapshot" : "snapshots", &err);
    rc = print_snapshots(ctl, l, n);
    emac_snapshots_free(l);
    return rc;
}

static int cmd_snapshots(struct ctl *ctl, int argc, char **argv)
{
    (void)argc;
    return run_snapshots(ctl, argv[0], false);
}

static int cmd_snapshot(struct ctl *ctl, int argc, char **argv)
{
    (void)argc;
    return run_snapshots(ctl, argv[0], true);
}

#define SNAP_JSON                                                                                  \
    "JSON output: an array of {\"file\": PATH, \"profile\": NAME, \"batch\": N,\n"                 \
    "\"dtype\": DTYPE, \"bytes\": SIZE}.\n"

const struct ctl_cmd ctl_cmd_snapshots = {
    .name = "snapshots",
    .args = "SESSION",
    .summary = "list the snapshot files of the session's power\n"
               "profiles (post-hoc EMA), by profile then batch",
    .help = "List the snapshot files emad wrote of the power profiles of SESSION\n"
            "(register's snapshot_every, or 'emactl snapshot'), by profile then batch:\n"
            "profile, batch, dtype, size and path, one file a line. The files outlive the\n"
            "session: a closed session's are listed too. They are the input of post-hoc\n"
            "EMA (emac_posthoc_files in emaclient.h, EMA.posthoc in Python).\n"
            "\n" SNAP_JSON "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Example:\n"
            "  emactl snapshots trainer-1\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_snapshots,
};

const struct ctl_cmd ctl_cmd_snapshot = {
    .name = "snapshot",
    .args = "SESSION",
    .summary = "have emad snapshot every power profile of the\n"
               "session now; lists the files written",
    .help = "Have emad write a snapshot of every power profile of SESSION now, after\n"
            "the events queued before, and list the files written as 'emactl\n"
            "snapshots' does. STATE when no power profile has updated yet; IO when a\n"
            "file cannot be written (the older ones stay).\n"
            "\n" SNAP_JSON "\n" CTL_DAEMON_EXIT_STATUS "\n"
            "Example:\n"
            "  emactl snapshot trainer-1\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_SOCKET | CTL_OPT_JSON,
    .run = cmd_snapshot,
};
