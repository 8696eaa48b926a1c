/*
 * ckpt_files.h - a group checkpoint in scratch.h's tmpdir/dir, for the unit tests of its
 * readers: each shard's file, then the manifest (as the writers of docs/scaleout.md "Group
 * checkpoints" do). Include after scratch.h.
 */
#ifndef EMAD_TESTS_CKPT_FILES_H
#define EMAD_TESTS_CKPT_FILES_H

#include <sys/stat.h>

#include "emacheckpoint.h"

/* The shards sh[0..n) of group grp, each in its own file (sh[r].file), and the manifest with
 * config; a failure fails the test. */
static void write_ckpt(const char *dir, const struct emac_ckpt_group *grp, const char *config,
                       const struct emac_ckpt_shard *sh, size_t n)
{
    struct emac_error err;
    char p[512];

    mkdir(path_in(p, sizeof(p), dir, ""), 0755);
    for (size_t r = 0; r < n; r++)
        if (emac_checkpoint_write_shard(path_in(p, sizeof(p), dir, sh[r].file), grp, &sh[r],
                                        &err) != 0)
            fail_msg("shard %s: %s", sh[r].file, err.message);
    if (emac_checkpoint_write_manifest(path_in(p, sizeof(p), dir, EMAC_CKPT_MANIFEST), grp,
                                       config, sh, n, &err) != 0)
        fail_msg("%s", err.message);
}

#endif
