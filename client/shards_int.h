/*
 * shards_int.h - what the files of group checkpoints share (docs/scaleout.md "Group
 * checkpoints"), beside the public emacheckpoint.h and the tests' shards.h:
 *
 *   shards.c        the checkpoint in memory: chunks checked alone, grouped into tensors whose
 *                   slices must tile their global shape
 *   shards_write.c  shard files and the manifest written durably
 *   shards_open.c   a manifest parsed strictly, every shard file checked against it
 *   shards_read.c   blocks of a tensor read, whole tensors consolidated, through fixed buffers
 *   shards_prof.c   the profiles of an EMA with several: which tensors are one profile's
 *   shards_shape.c  the real shapes of flattened tensors (FSDP1 flat parameters)
 */
#ifndef EMAD_SHARDS_INT_H
#define EMAD_SHARDS_INT_H

#include "emacheckpoint.h"
#include "emaclient_int.h"
#include "shards.h"

#include "jtree.h"
#include "safetensors.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NDIM EMAC_CKPT_NDIM_MAX
#define FORMAT_NAME "emad-checkpoint"

/* One tensor's slice in one shard file (a chunk, in PyTorch's words). */
struct chunk {
    size_t shard;
    const char *name;
    enum dtype dt;
    unsigned ndim;
    uint64_t gshape[NDIM], off[NDIM], shape[NDIM];
    const struct st_tensor *st; /* in the open shard file */
};

struct shard {
    const char *file;          /* as the manifest names it */
    struct st_file f;
    bool open;
    uint64_t batch;            /* from its metadata */
};

/* A tensor of the checkpoint: its distinct chunks (replicas counted once). */
struct tensor {
    const char *name;
    enum dtype dt;
    unsigned ndim;
    uint64_t gshape[NDIM];
    size_t first;              /* the lowest chunk index: the order of first appearance */
    size_t *chunks;
    size_t nchunks;
};

struct emac_checkpoint {
    const char *path;          /* the manifest's, for messages */
    char *pathbuf;
    int dirfd;
    char *text;
    struct jt_doc doc;
    struct emac_ckpt_group group;
    const char *config;        /* the raw JSON text of the config object */
    size_t config_len;
    struct shard *shards;
    size_t nshards;
    struct chunk *chunks;
    size_t nchunks, cap;
    struct tensor *tensors;    /* in order of first appearance */
    size_t ntensors;
    size_t *by_name;           /* tensor indices sorted by name */
    size_t *chunk_idx;         /* the storage of every tensor's chunks */
};

#define DIMS 200 /* bytes of a shards_dims() buffer */

/* A new, empty checkpoint named by path (copied), or NULL when out of memory. */
struct emac_checkpoint *shards_ck_new(const char *path);
/* Close its files and free it all. */
void shards_ck_free(struct emac_checkpoint *ck);

/* A file name a manifest may list: relative, inside the manifest's directory; else false and
 * *why the reason, in words. */
bool shards_path_ok(const char *p, const char **why);
/* The elements of a block of that shape (the caller knows that it does not overflow). */
uint64_t shards_volume(const uint64_t *shape, unsigned ndim);
/* "[4, 6]" into buf (DIMS bytes), for messages; returns buf. */
const char *shards_dims(char *buf, size_t len, const uint64_t *v, unsigned n);
/* The wire dtype name as an argument of the API (USAGE when unknown); what names the caller. */
int shards_dtype_arg(const char *name, enum dtype *out, const char *what,
                     struct emac_error *err);

/* Append a chunk of shard index shard after checking it alone: bounds, sizes. where names it
 * in messages (BADFILE). */
int shards_chunk_add(struct emac_checkpoint *ck, size_t shard, const char *name,
                     enum dtype dt, unsigned ndim, const uint64_t *g, const uint64_t *o,
                     const uint64_t *s, const char *where, struct emac_error *err);
/* Group ck's chunks into tensors (ck->tensors, ck->by_name) and check that each one's distinct
 * slices tile its global shape (BADFILE). */
int shards_index_tensors(struct emac_checkpoint *ck, struct emac_error *err);

/* The tensors of one profile of a checkpoint (shards_prof.c). */
struct shards_pick {
    bool profiles;    /* the checkpoint is of an EMA with profiles */
    const char *name; /* the profile picked (in ck's manifest), or NULL without profiles */
    char prefix[64];  /* its tensors' name prefix; "" for the eval profile (the plain names) */
};

/* The tensors of profile (NULL: the eval profile) of ck: BADFILE where the manifest's profiles
 * are malformed, USAGE (naming the profiles there) where it has no such profile. */
int shards_profile_pick(const struct emac_checkpoint *ck, const char *profile,
                        struct shards_pick *out, struct emac_error *err);
/* The state_dict name of checkpoint tensor `tensor` if it is the picked profile's (a pointer
 * into tensor), else NULL. */
const char *shards_pick_name(const struct shards_pick *pick, const char *tensor);

/* The shape consolidate writes tensor t (named name in the output) with (shards_shape.c): the
 * one config.emaclient.shapes gives it (a flattened parameter's real shape), else its global
 * shape. BADFILE where that entry is malformed or its elements are not the tensor's. */
int shards_shape_pick(const struct emac_checkpoint *ck, const char *name, const struct tensor *t,
                      unsigned *ndim, uint64_t *shape, struct emac_error *err);

#endif
