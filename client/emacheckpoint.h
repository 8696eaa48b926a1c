/*
 * emacheckpoint.h - group checkpoints on disk (docs/scaleout.md "Group checkpoints"): the EMA
 * of a model sharded over the ranks of a torch.distributed job, as one safetensors shard file
 * per distinct shard and a manifest (emad-checkpoint.json) naming them. Part of libemaclient;
 * no connection to emad is needed.
 *
 *   write   emac_checkpoint_write_shard for each distinct shard, then (rank 0, after a
 *           barrier) emac_checkpoint_write_manifest: the manifest is written last and durably,
 *           so a checkpoint exists whole or not at all.
 *   read    emac_checkpoint_consolidate: full tensors into one safetensors file;
 *           emac_checkpoint_read_slice: any hyper-rectangle of a tensor (the slice of a job
 *           resumed with another world size). Both validate the whole checkpoint first and
 *           stream with bounded memory.
 *
 * Dtypes are named as on the wire: "f32", "bf16", "f16", "f64", "i64", ... Errors as in
 * emaclient.h: USAGE (arguments), BADFILE (a manifest or shard file is malformed or they
 * disagree), SYSTEM (open, read, write).
 */
#ifndef EMACHECKPOINT_H
#define EMACHECKPOINT_H

#include "emaclient.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EMAC_CKPT_MANIFEST "emad-checkpoint.json" /* the manifest's usual name */
#define EMAC_CKPT_VERSION 1                        /* the format version written */
#define EMAC_CKPT_NDIM_MAX 8                       /* dimensions of a tensor */
/* An EMA with profiles: profile P's tensors, but the eval profile's, are named this, P, "/",
 * then the state_dict name (docs/scaleout.md "Profiles in a group checkpoint"). */
#define EMAC_CKPT_PROFILE_PREFIX ".profile/"

/* The group a checkpoint belongs to. */
struct emac_ckpt_group {
    const char *job;     /* the job's name: UTF-8, not empty */
    uint64_t batch;      /* batches applied when it was taken */
    uint64_t epoch;
    uint32_t world_size; /* ranks of the job */
};

/* One tensor's local slice (PyTorch distributed checkpoint's chunk): the local tensor is the
 * block [offsets[d], offsets[d] + shape[d]) of every dimension d of the global tensor. */
struct emac_ckpt_slice {
    const char *name;            /* the state_dict name */
    const char *dtype;           /* "f32", "bf16", ... */
    unsigned ndim;               /* 0 (a scalar) .. EMAC_CKPT_NDIM_MAX */
    const uint64_t *global_shape;
    const uint64_t *offsets;
    const uint64_t *shape;       /* the local shape */
    const void *data;            /* the local slice, row-major; ignored by write_manifest */
};

/* One shard file as the manifest lists it. */
struct emac_ckpt_shard {
    const char *file;                     /* relative to the manifest's directory, no ".." */
    const uint32_t *ranks;                /* the ranks holding it (replicas: several) */
    size_t nranks;
    const struct emac_ckpt_slice *slices; /* its tensors */
    size_t nslices;
};

/*
 * Write one shard file at path (durably, mode 0644): the slices' data, and in the safetensors
 * metadata the group, the ranks and each tensor's global shape and offsets.
 */
int emac_checkpoint_write_shard(const char *path, const struct emac_ckpt_group *group,
                                const struct emac_ckpt_shard *shard, struct emac_error *err);

/*
 * Write the manifest at path (durably, mode 0644) listing shards[0..n), with config (a JSON
 * object, e.g. the EMA's configuration; NULL for {}) kept as given. Refuses a set of slices that
 * does not tile every tensor exactly (a gap, an overlap, dtypes or global shapes that differ).
 * The shard files are not read: write them first.
 */
int emac_checkpoint_write_manifest(const char *path, const struct emac_ckpt_group *group,
                                   const char *config, const struct emac_ckpt_shard *shards,
                                   size_t n, struct emac_error *err);

/*
 * Validate the checkpoint of manifest_path and write its full tensors (the state_dict names, in
 * the manifest's order of first appearance) to out_path as one safetensors file, durably (mode
 * 0644). out_dtype NULL keeps each tensor's dtype (the bytes are copied exactly); "f32",
 * "bf16" or "f16" converts the float tensors (round to nearest even), other tensors are copied.
 * Memory: a fixed buffer (a few MiB), never a whole tensor.
 */
int emac_checkpoint_consolidate(const char *manifest_path, const char *out_path,
                                const char *out_dtype, struct emac_error *err);

/*
 * The same for a checkpoint of an EMA with profiles: only profile's tensors, under the plain
 * state_dict names (profile NULL: the eval profile; on a checkpoint without profiles, every
 * tensor, as emac_checkpoint_consolidate). A profile the checkpoint lacks: USAGE, naming those
 * it has.
 */
int emac_checkpoint_consolidate_profile(const char *manifest_path, const char *out_path,
                                        const char *out_dtype, const char *profile,
                                        struct emac_error *err);

/*
 * Validate the checkpoint of manifest_path and read the block [offsets[d], offsets[d] +
 * shape[d]) of tensor `name` (ndim dimensions, as its global shape) into dst, row-major, as
 * dst_dtype (NULL: the tensor's own, bytes copied exactly; a float tensor may be read as another
 * float dtype). dst_len: dst's size in bytes, at least the block's.
 */
int emac_checkpoint_read_slice(const char *manifest_path, const char *name, unsigned ndim,
                               const uint64_t *offsets, const uint64_t *shape, void *dst,
                               size_t dst_len, const char *dst_dtype, struct emac_error *err);

/*
 * The same reads on a checkpoint opened once (validated once, one descriptor per shard file
 * held until close): what a resumed job loading many tensors calls.
 */
typedef struct emac_checkpoint emac_checkpoint;

int emac_checkpoint_open(const char *manifest_path, emac_checkpoint **out,
                         struct emac_error *err);
/* The group of an open checkpoint (its strings live as long as ck). */
const struct emac_ckpt_group *emac_checkpoint_group(const emac_checkpoint *ck);
int emac_checkpoint_read(emac_checkpoint *ck, const char *name, unsigned ndim,
                         const uint64_t *offsets, const uint64_t *shape, void *dst,
                         size_t dst_len, const char *dst_dtype, struct emac_error *err);
void emac_checkpoint_close(emac_checkpoint *ck);

#ifdef __cplusplus
}
#endif

#endif
