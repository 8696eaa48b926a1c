/*
 * emactl_ckpt.c - emactl consolidate: the full tensors of a group checkpoint (docs/scaleout.md)
 * in one safetensors file. Reads files only: emad need not run.
 */
#include "emacheckpoint.h"
#include "emactl.h"

#include <stdio.h>
#include <string.h>

static int cmd_consolidate(struct ctl *ctl, int argc, char **argv)
{
    struct emac_error err = {"", ""};
    emac_checkpoint *ck;
    int rc;

    (void)argc;
    if (ctl->out == NULL)
        return ctl_usage_error(ctl, "--out FILE is required");
    /* Opened once for the summary below; consolidation opens and checks it again, which costs
     * a read of each header, nothing of the data. */
    rc = emac_checkpoint_open(argv[0], &ck, &err);
    if (rc == 0) {
        const struct emac_ckpt_group *g = emac_checkpoint_group(ck);
        rc = emac_checkpoint_consolidate_profile(argv[0], ctl->out, ctl->dtype, ctl->profile,
                                                 &err);
        if (rc == 0 && !ctl->json) {
            printf("consolidated job ");
            ctl_put_clean(stdout, g->job);
            printf(" at batch %llu (world size %u) into ", (unsigned long long)g->batch,
                   g->world_size);
            ctl_put_clean(stdout, ctl->out);
            if (ctl->profile != NULL) {
                printf(" (profile ");
                ctl_put_clean(stdout, ctl->profile);
                printf(")");
            }
            printf("\n");
        } else if (rc == 0) {
            printf("{\"batch\": %llu, \"world_size\": %u}\n", (unsigned long long)g->batch,
                   g->world_size);
        }
        emac_checkpoint_close(ck);
    }
    if (rc < 0)
        return ctl_library_error(ctl, &err, rc);
    return 0;
}

const struct ctl_cmd ctl_cmd_consolidate = {
    .name = "consolidate",
    .args = "MANIFEST --out FILE [--dtype DTYPE] [--profile NAME]",
    .summary = "assemble the full tensors of a group checkpoint\n"
               "(its manifest, emad-checkpoint.json) into one\n"
               "safetensors file; emad need not run",
    .help =
        "Assemble the full tensors of the group checkpoint whose manifest is MANIFEST\n"
        "(docs/scaleout.md) into one safetensors file FILE, with the state_dict names.\n"
        "\n"
        "The checkpoint is checked first: every shard file the manifest names exists\n"
        "beside it (relative paths, no \"..\"), its header agrees with the manifest,\n"
        "all are at the manifest's batch, and every tensor's slices tile its global\n"
        "shape exactly (no gap, no overlap; replicas count once). FILE is written\n"
        "through a temp file, fsynced and renamed: an old FILE stays until the new\n"
        "one is whole. Memory: two buffers of 4 MiB, whatever the model's size.\n"
        "--dtype converts the float tensors (round to nearest even); without it\n"
        "every byte is copied as the shards hold it.\n"
        "\n"
        "A checkpoint of an EMA with profiles holds every profile's tensors: FILE gets\n"
        "one profile's, with the plain state_dict names: --profile NAME's, by default\n"
        "the eval profile's (what a reader that knows nothing of profiles reads). A\n"
        "name the checkpoint lacks is a usage error listing the profiles it has.\n"
        "\n"
        "Output: one line naming the job, batch and world size.\n"
        "JSON output: {batch, world_size}.\n"
        "\n"
        "Exit status: 0 on success; 1 when a file is malformed or disagrees with the\n"
        "others (emactl: BADFILE: consolidate: message) or cannot be read or written\n"
        "(SYSTEM); 2 on a usage error.\n"
        "\n"
        "Example:\n"
        "  emactl consolidate /ckpt/step-1200/emad-checkpoint.json --out ema.safetensors\n"
        "  emactl consolidate /ckpt/step-1200/emad-checkpoint.json --profile p10 \\\n"
        "      --out ema-p10.safetensors\n",
    .min_args = 1,
    .max_args = 1,
    .opts = CTL_OPT_JSON | CTL_OPT_OUT | CTL_OPT_DTYPE | CTL_OPT_PROFILE,
    .run = cmd_consolidate,
};
