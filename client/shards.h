/*
 * shards.h - what client/shards*.c (group checkpoints, emacheckpoint.h) show its tests and
 * emactl beyond the public API: its limits, and consolidation with a buffer of a chosen size
 * so that a test can prove that memory stays bounded.
 */
#ifndef EMAD_SHARDS_H
#define EMAD_SHARDS_H

#include "emacheckpoint.h"

#include <stddef.h>
#include <stdint.h>

#define SHARDS_MANIFEST_MAX (64u << 20) /* bytes of manifest a reader accepts */
#define SHARDS_NODES_MAX (4u << 20)     /* JSON values in a manifest */
#define SHARDS_DEPTH_MAX 64             /* nesting of a manifest (its config included) */
#define SHARDS_BUF_DEFAULT (4u << 20)   /* bytes of each of consolidation's two buffers */
#define SHARDS_SLICE_KEY "slice."       /* shard metadata: "slice.NAME" per tensor */

/* What a consolidation used. */
struct shards_stats {
    size_t buf_bytes;   /* bytes allocated for tensor data, both buffers together */
    uint64_t windows;   /* output windows written (each at most one buffer) */
    uint64_t reads;     /* preads of shard data */
};

/* emac_checkpoint_consolidate_profile with buffers of buf_bytes each (at least 8); st may be
 * NULL. */
int shards_consolidate(const char *manifest_path, const char *out_path, const char *out_dtype,
                       const char *profile, size_t buf_bytes, struct shards_stats *st,
                       struct emac_error *err);

#endif
