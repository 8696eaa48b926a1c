/*
 * shards.c - group checkpoints on disk (docs/scaleout.md "Group checkpoints"): write shard
 * files and the manifest; open a checkpoint (every file is hostile input: the manifest is
 * parsed strictly, every shard file's header must agree with it, every tensor's slices must
 * tile its global shape exactly); read any block of a tensor and consolidate full tensors,
 * streaming through fixed buffers.
 */
#include "emacheckpoint.h"
#include "emaclient_int.h"
#include "shards.h"

#include "durable.h"
#include "errbuf.h"
#include "half.h"
#include "jtree.h"
#include "names.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

/* ---- Checks shared by the writers and the reader ---- */

/* A file name a manifest may list: relative, inside the manifest's directory. */
static bool relative_path_ok(const char *p, const char **why)
{
    size_t len = strlen(p);

    *why = NULL;
    if (len == 0)
        *why = "is empty";
    else if (len >= 4096)
        *why = "is longer than 4095 bytes";
    else if (p[0] == '/')
        *why = "is absolute (a manifest names files relative to its own directory)";
    else if (!names_utf8_valid(p, len))
        *why = "is not valid UTF-8";
    else if (p[len - 1] == '/')
        *why = "ends with '/'";
    for (const char *c = p; *why == NULL && *c != '\0';) {
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.')
            *why = "has a \"..\" component (shard files must lie under the manifest's directory)";
        c += n + (c[n] == '/');
    }
    return *why == NULL;
}

static uint64_t volume(const uint64_t *shape, unsigned ndim)
{
    uint64_t v = 1;

    for (unsigned d = 0; d < ndim; d++)
        v *= shape[d];
    return v;
}

/* "[4, 6]" into buf. */
static const char *dims(char *buf, size_t len, const uint64_t *v, unsigned n)
{
    size_t o = 0;

    o += (size_t)snprintf(buf, len, "[");
    for (unsigned d = 0; d < n && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%" PRIu64, d ? ", " : "", v[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
    return buf;
}

#define DIMS 200

static int grow_chunks(struct emac_checkpoint *ck)
{
    if (ck->nchunks < ck->cap)
        return 0;
    size_t c = ck->cap ? ck->cap * 2 : 64;
    struct chunk *p = realloc(ck->chunks, c * sizeof(*p));
    if (p == NULL)
        return -ENOMEM;
    ck->chunks = p;
    ck->cap = c;
    return 0;
}

/* Append a chunk after checking it alone: bounds, sizes. where names it in messages. */
static int add_chunk(struct emac_checkpoint *ck, size_t shard, const char *name, enum dtype dt,
                     unsigned ndim, const uint64_t *g, const uint64_t *o, const uint64_t *s,
                     const char *where, struct emac_error *err)
{
    uint64_t gv = 1, bytes;
    char a[DIMS], b[DIMS], c[DIMS];

    if (name == NULL || name[0] == '\0' || !names_utf8_valid(name, strlen(name)))
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: a tensor's name is empty or not UTF-8", where);
    if (ndim > NDIM)
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: tensor \"%.200s\" has %u dimensions, more than %d", where,
                              name, ndim, NDIM);
    for (unsigned d = 0; d < ndim; d++) {
        if (__builtin_mul_overflow(gv, g[d], &gv))
            return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                  "%s: tensor \"%.200s\": global shape %s overflows", where,
                                  name, dims(a, DIMS, g, ndim));
        if (o[d] > g[d] || s[d] > g[d] - o[d])
            return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                  "%s: tensor \"%.200s\": the slice at offsets %s of shape %s "
                                  "passes the global shape %s in dimension %u",
                                  where, name, dims(a, DIMS, o, ndim), dims(b, DIMS, s, ndim),
                                  dims(c, DIMS, g, ndim), d);
    }
    if (__builtin_mul_overflow(gv, (uint64_t)dtype_size(dt), &bytes))
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: tensor \"%.200s\" is larger than 2^64 bytes", where, name);
    if (grow_chunks(ck) < 0)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    struct chunk *k = &ck->chunks[ck->nchunks++];
    memset(k, 0, sizeof(*k));
    k->shard = shard;
    k->name = name;
    k->dt = dt;
    k->ndim = ndim;
    if (ndim > 0) { /* a scalar's arrays may be NULL */
        memcpy(k->gshape, g, ndim * sizeof(*g));
        memcpy(k->off, o, ndim * sizeof(*o));
        memcpy(k->shape, s, ndim * sizeof(*s));
    }
    return 0;
}

struct name_idx {
    const char *name;
    size_t i;
};

static int cmp_name_idx(const void *a, const void *b)
{
    const struct name_idx *x = a, *y = b;
    int c = strcmp(x->name, y->name);

    return c != 0 ? c : x->i < y->i ? -1 : x->i > y->i;
}

static int cmp_first(const void *a, const void *b)
{
    const struct tensor *x = a, *y = b;

    return x->first < y->first ? -1 : x->first > y->first;
}

static bool same_slice(const struct chunk *a, const struct chunk *b)
{
    size_t n = a->ndim * sizeof(uint64_t);

    return memcmp(a->off, b->off, n) == 0 && memcmp(a->shape, b->shape, n) == 0;
}

/* Do the blocks of a and b share an element? */
static bool overlap(const struct chunk *a, const struct chunk *b)
{
    if (volume(a->shape, a->ndim) == 0 || volume(b->shape, b->ndim) == 0)
        return false;
    for (unsigned d = 0; d < a->ndim; d++)
        if (a->off[d] + a->shape[d] <= b->off[d] || b->off[d] + b->shape[d] <= a->off[d])
            return false;
    return true;
}

/*
 * Group the chunks into tensors and check that each tensor's distinct slices tile its global
 * shape: all inside it (add_chunk), no two overlapping, their volumes summing to it. Slices
 * equal in offsets and shape are replicas (DDP, HSDP) and count once. Pairwise: a tensor has
 * at most one chunk per shard file, and a job few enough files for that to be cheap.
 */
static int index_tensors(struct emac_checkpoint *ck, struct emac_error *err)
{
    struct name_idx *ni = NULL;
    size_t nt = 0;
    char a[DIMS], b[DIMS], c[DIMS], e[DIMS];
    int rc = 0;

    ni = malloc((ck->nchunks + 1) * sizeof(*ni));
    ck->chunk_idx = malloc((ck->nchunks + 1) * sizeof(*ck->chunk_idx));
    ck->tensors = calloc(ck->nchunks + 1, sizeof(*ck->tensors));
    ck->by_name = malloc((ck->nchunks + 1) * sizeof(*ck->by_name));
    if (ni == NULL || ck->chunk_idx == NULL || ck->tensors == NULL || ck->by_name == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ck->nchunks; i++)
        ni[i] = (struct name_idx){ck->chunks[i].name, i};
    if (ck->nchunks > 1)
        qsort(ni, ck->nchunks, sizeof(*ni), cmp_name_idx);
    size_t used = 0;
    for (size_t i = 0; i < ck->nchunks;) {
        size_t j = i;
        const struct chunk *r = &ck->chunks[ni[i].i];
        struct tensor *t = &ck->tensors[nt++];
        t->name = r->name;
        t->dt = r->dt;
        t->ndim = r->ndim;
        memcpy(t->gshape, r->gshape, sizeof(t->gshape));
        t->first = ni[i].i;
        t->chunks = ck->chunk_idx + used;
        uint64_t covered = 0;
        for (; j < ck->nchunks && strcmp(ni[j].name, r->name) == 0; j++) {
            const struct chunk *k = &ck->chunks[ni[j].i];
            const char *kf = ck->shards[k->shard].file, *rf = ck->shards[r->shard].file;
            if (j > i && k->shard == ck->chunks[ni[j - 1].i].shard) {
                rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                    "%s: tensor \"%.200s\" is listed twice for shard file "
                                    "\"%.200s\"", ck->path, r->name, kf);
                goto out;
            }
            if (k->dt != r->dt) {
                rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                    "%s: tensor \"%.200s\" is %s in \"%.150s\" and %s in "
                                    "\"%.150s\"", ck->path, r->name, st_dtype_name(k->dt), kf,
                                    st_dtype_name(r->dt), rf);
                goto out;
            }
            if (k->ndim != r->ndim ||
                memcmp(k->gshape, r->gshape, r->ndim * sizeof(uint64_t)) != 0) {
                rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                    "%s: tensor \"%.200s\" has global shape %s in \"%.150s\" "
                                    "and %s in \"%.150s\"", ck->path, r->name,
                                    dims(a, DIMS, k->gshape, k->ndim), kf,
                                    dims(b, DIMS, r->gshape, r->ndim), rf);
                goto out;
            }
            bool replica = false;
            for (size_t m = 0; m < t->nchunks && !replica; m++) {
                const struct chunk *o = &ck->chunks[t->chunks[m]];
                if (same_slice(o, k)) {
                    replica = true;
                } else if (overlap(o, k)) {
                    rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                        "%s: tensor \"%.150s\": the slices overlap: offsets %s "
                                        "shape %s in \"%.100s\" and offsets %s shape %s in "
                                        "\"%.100s\"", ck->path, r->name,
                                        dims(a, DIMS, o->off, o->ndim),
                                        dims(b, DIMS, o->shape, o->ndim),
                                        ck->shards[o->shard].file,
                                        dims(c, DIMS, k->off, k->ndim),
                                        dims(e, DIMS, k->shape, k->ndim), kf);
                    goto out;
                }
            }
            if (!replica) {
                t->chunks[t->nchunks++] = ni[j].i;
                covered += volume(k->shape, k->ndim);
            }
        }
        used += t->nchunks;
        uint64_t whole = volume(t->gshape, t->ndim);
        if (covered != whole) {
            rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                "%s: tensor \"%.200s\" of global shape %s: its slices cover "
                                "%" PRIu64 " of its %" PRIu64 " elements (a gap: a shard file "
                                "missing from the manifest?)", ck->path, t->name,
                                dims(a, DIMS, t->gshape, t->ndim), covered, whole);
            goto out;
        }
        i = j;
    }
    /* ni is sorted by name: the tensors are too, until sorted by first appearance. */
    if (nt > 1)
        qsort(ck->tensors, nt, sizeof(*ck->tensors), cmp_first);
    ck->ntensors = nt;
    for (size_t i = 0; i < nt; i++)
        ni[i] = (struct name_idx){ck->tensors[i].name, i};
    if (nt > 1)
        qsort(ni, nt, sizeof(*ni), cmp_name_idx);
    for (size_t i = 0; i < nt; i++)
        ck->by_name[i] = ni[i].i;
out:
    free(ni);
    return rc;
}

static void ck_free(struct emac_checkpoint *ck)
{
    for (size_t i = 0; ck->shards != NULL && i < ck->nshards; i++)
        if (ck->shards[i].open)
            st_close(&ck->shards[i].f);
    if (ck->dirfd >= 0)
        close(ck->dirfd);
    free(ck->shards);
    free(ck->chunks);
    free(ck->tensors);
    free(ck->by_name);
    free(ck->chunk_idx);
    jt_free(&ck->doc);
    free(ck->text);
    free(ck->pathbuf);
    free(ck);
}

static struct emac_checkpoint *ck_new(const char *path)
{
    struct emac_checkpoint *ck = calloc(1, sizeof(*ck));

    if (ck == NULL)
        return NULL;
    ck->dirfd = -1;
    ck->pathbuf = strdup(path);
    if (ck->pathbuf == NULL) {
        free(ck);
        return NULL;
    }
    ck->path = ck->pathbuf;
    return ck;
}

static int dtype_arg(const char *name, enum dtype *out, const char *what, struct emac_error *err)
{
    if (name == NULL || dtype_from_name(name, strlen(name), out) < 0 ||
        st_dtype_name(*out) == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: dtype \"%.20s\" is unknown",
                              what, name ? name : "(null)");
    return 0;
}

/* ---- Writing ---- */

static int cat(char **b, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 1024;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*b, c);
        if (p == NULL)
            return -ENOMEM;
        *b = p;
        *cap = c;
    }
    memcpy(*b + *len, s, n);
    *len += n;
    (*b)[*len] = '\0';
    return 0;
}

static int cats(char **b, size_t *len, size_t *cap, const char *s)
{
    return cat(b, len, cap, s, strlen(s));
}

static int cat_u64s(char **b, size_t *len, size_t *cap, const uint64_t *v, size_t n)
{
    char num[32];
    int rc = cats(b, len, cap, "[");

    for (size_t i = 0; rc == 0 && i < n; i++) {
        snprintf(num, sizeof(num), "%s%" PRIu64, i ? ", " : "", v[i]);
        rc = cats(b, len, cap, num);
    }
    return rc ?: cats(b, len, cap, "]");
}

static int cat_str(char **b, size_t *len, size_t *cap, const char *s)
{
    int rc = cats(b, len, cap, "\"");

    rc = rc ?: st_json_escape(b, len, cap, s, strlen(s));
    return rc ?: cats(b, len, cap, "\"");
}

static int check_group(const struct emac_ckpt_group *g, const char *what, struct emac_error *err)
{
    if (g == NULL || g->job == NULL || g->job[0] == '\0' ||
        !names_utf8_valid(g->job, strlen(g->job)))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: no job name (UTF-8, not empty)",
                              what);
    if (g->world_size == 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: world size 0", what);
    return 0;
}

/* The shard's entries checked and added to ck as chunks of shard index si. */
static int add_api_shard(struct emac_checkpoint *ck, size_t si, const struct emac_ckpt_shard *s,
                         uint32_t world, const char *what, struct emac_error *err)
{
    char where[300];
    const char *why;
    int rc;

    if (s->file == NULL || !relative_path_ok(s->file, &why))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: shard file \"%.200s\" %s", what,
                              s->file ? s->file : "(null)", s->file ? why : "is NULL");
    if (s->nranks == 0 || s->ranks == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: shard \"%.200s\" has no ranks",
                              what, s->file);
    for (size_t r = 0; r < s->nranks; r++)
        if (s->ranks[r] >= world)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                                  "%s: shard \"%.200s\": rank %u of a world of %u", what,
                                  s->file, s->ranks[r], world);
    if (s->nslices > 0 && s->slices == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: shard \"%.200s\": NULL slices",
                              what, s->file);
    snprintf(where, sizeof(where), "%s: shard \"%.200s\"", what, s->file);
    for (size_t i = 0; i < s->nslices; i++) {
        const struct emac_ckpt_slice *sl = &s->slices[i];
        enum dtype dt;
        rc = dtype_arg(sl->dtype, &dt, where, err);
        if (rc < 0)
            return rc;
        if (sl->ndim > 0 && (sl->global_shape == NULL || sl->offsets == NULL || sl->shape == NULL))
            return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: tensor %zu: NULL shape",
                                  where, i);
        rc = add_chunk(ck, si, sl->name, dt, sl->ndim, sl->global_shape, sl->offsets, sl->shape,
                       where, err);
        if (rc < 0) {
            if (err != NULL && rc == -EINVAL)
                snprintf(err->code, sizeof(err->code), "%s", EMAC_E_USAGE);
            return rc;
        }
    }
    return 0;
}

int emac_checkpoint_write_shard(const char *path, const struct emac_ckpt_group *group,
                                const struct emac_ckpt_shard *shard, struct emac_error *err)
{
    struct emac_checkpoint *ck = NULL;
    struct st_tensor *table = NULL;
    struct st_meta *meta = NULL;
    char **vals = NULL;
    size_t nmeta = 0, n;
    char batch[32], epoch[32], world[32], rank[32], msg[512];
    char *ranks = NULL;
    size_t rl = 0, rcap = 0;
    struct durable d;
    struct st_writer w;
    int rc;

    if (err != NULL)
        err->code[0] = '\0';
    if (path == NULL || shard == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "write_shard: NULL path or shard");
    rc = check_group(group, "write_shard", err);
    if (rc < 0)
        return rc;
    ck = ck_new(path);
    if (ck == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    /* The shard's own file name is checked as a manifest would list it; any path may be
     * written to. */
    struct emac_ckpt_shard named = *shard;
    named.file = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    struct emac_ckpt_shard *one = &named;
    ck->shards = calloc(1, sizeof(*ck->shards));
    if (ck->shards == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    ck->nshards = 1;
    ck->shards[0].file = one->file;
    rc = add_api_shard(ck, 0, one, group->world_size, "write_shard", err);
    if (rc < 0)
        goto out;
    n = ck->nchunks;
    table = calloc(n + 1, sizeof(*table));
    meta = calloc(n + 8, sizeof(*meta));
    vals = calloc(n + 1, sizeof(*vals));
    if (table == NULL || meta == NULL || vals == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    snprintf(batch, sizeof(batch), "%" PRIu64, group->batch);
    snprintf(epoch, sizeof(epoch), "%" PRIu64, group->epoch);
    snprintf(world, sizeof(world), "%" PRIu32, group->world_size);
    uint32_t low = UINT32_MAX;
    rc = cats(&ranks, &rl, &rcap, "[");
    for (size_t r = 0; rc == 0 && r < shard->nranks; r++) {
        char num[16];
        low = shard->ranks[r] < low ? shard->ranks[r] : low;
        snprintf(num, sizeof(num), "%s%" PRIu32, r ? "," : "", shard->ranks[r]);
        rc = cats(&ranks, &rl, &rcap, num);
    }
    rc = rc ?: cats(&ranks, &rl, &rcap, "]");
    snprintf(rank, sizeof(rank), "%" PRIu32, low);
    meta[nmeta++] = (struct st_meta){"format", "pt"};
    meta[nmeta++] = (struct st_meta){"emad_checkpoint", "1"};
    meta[nmeta++] = (struct st_meta){"job", group->job};
    meta[nmeta++] = (struct st_meta){"batch", batch};
    meta[nmeta++] = (struct st_meta){"epoch", epoch};
    meta[nmeta++] = (struct st_meta){"world_size", world};
    meta[nmeta++] = (struct st_meta){"rank", rank};
    meta[nmeta++] = (struct st_meta){"ranks", ranks};
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const struct chunk *k = &ck->chunks[i];
        size_t l = 0, cap = 0;
        table[i] = (struct st_tensor){.name = k->name, .dtype = k->dt, .rank = k->ndim};
        memcpy(table[i].shape, k->shape, sizeof(k->shape));
        rc = cats(&vals[i], &l, &cap, SHARDS_SLICE_KEY);
        rc = rc ?: cats(&vals[i], &l, &cap, k->name);
        rc = rc ?: cat(&vals[i], &l, &cap, "", 1); /* the key, NUL, then the value */
        rc = rc ?: cats(&vals[i], &l, &cap, "{\"global_shape\":");
        rc = rc ?: cat_u64s(&vals[i], &l, &cap, k->gshape, k->ndim);
        rc = rc ?: cats(&vals[i], &l, &cap, ",\"offsets\":");
        rc = rc ?: cat_u64s(&vals[i], &l, &cap, k->off, k->ndim);
        rc = rc ?: cats(&vals[i], &l, &cap, "}");
        if (rc == 0)
            meta[nmeta++] = (struct st_meta){vals[i], vals[i] + strlen(vals[i]) + 1};
        if (rc == 0 && volume(k->shape, k->ndim) > 0 &&
            shard->slices[i].data == NULL)
            rc = client_set_err(err, -EINVAL, EMAC_E_USAGE,
                                "write_shard: tensor \"%.200s\" has no data", k->name);
    }
    if (rc < 0) {
        if (err == NULL || err->code[0] == '\0')
            client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    rc = durable_open(&d, AT_FDCWD, path, 0644, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
        goto out;
    }
    rc = st_writer_begin(&w, d.fd, table, n, meta, nmeta, msg, sizeof(msg));
    for (size_t i = 0; rc == 0 && i < n; i++) {
        uint64_t bytes = volume(table[i].shape, table[i].rank) * dtype_size(table[i].dtype);
        if (bytes > 0)
            rc = st_writer_write(&w, shard->slices[i].data, bytes, msg, sizeof(msg));
    }
    rc = rc ?: st_writer_finish(&w, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, rc == -EINVAL ? EMAC_E_USAGE : EMAC_E_SYSTEM, "%s: %s", path,
                       msg);
        durable_abort(&d);
        goto out;
    }
    rc = durable_commit(&d, msg, sizeof(msg));
    if (rc < 0)
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
out:
    for (size_t i = 0; vals != NULL && i < ck->nchunks; i++)
        free(vals[i]);
    free(vals);
    free(table);
    free(meta);
    free(ranks);
    ck_free(ck);
    return rc;
}

int emac_checkpoint_write_manifest(const char *path, const struct emac_ckpt_group *group,
                                   const char *config, const struct emac_ckpt_shard *shards,
                                   size_t n, struct emac_error *err)
{
    struct emac_checkpoint *ck = NULL;
    struct jt_doc doc;
    char *b = NULL, msg[512], num[64];
    size_t l = 0, cap = 0;
    struct durable d;
    int rc;

    if (err != NULL)
        err->code[0] = '\0';
    if (path == NULL || (n > 0 && shards == NULL) || n == 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "write_manifest: NULL path, or no shards");
    rc = check_group(group, "write_manifest", err);
    if (rc < 0)
        return rc;
    if (config == NULL)
        config = "{}";
    rc = jt_parse(config, strlen(config), SHARDS_NODES_MAX, SHARDS_DEPTH_MAX, &doc, msg,
                  sizeof(msg));
    if (rc == 0 && doc.nodes[0].type != JT_OBJECT)
        rc = err_set(msg, sizeof(msg), -EINVAL, "not a JSON object");
    jt_free(&doc);
    if (rc < 0)
        return client_set_err(err, rc, rc == -ENOMEM ? EMAC_E_SYSTEM : EMAC_E_USAGE,
                              "write_manifest: config: %s", msg);
    ck = ck_new(path);
    if (ck == NULL || (ck->shards = calloc(n, sizeof(*ck->shards))) == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    ck->nshards = n;
    for (size_t i = 0; i < n; i++) {
        ck->shards[i].file = shards[i].file;
        rc = add_api_shard(ck, i, &shards[i], group->world_size, "write_manifest", err);
        if (rc < 0)
            goto out;
        for (size_t j = 0; j < i; j++)
            if (strcmp(shards[j].file, shards[i].file) == 0) {
                rc = client_set_err(err, -EINVAL, EMAC_E_USAGE,
                                    "write_manifest: shard file \"%.200s\" is listed twice",
                                    shards[i].file);
                goto out;
            }
    }
    rc = index_tensors(ck, err);
    if (rc < 0) {
        if (err != NULL && rc == -EINVAL)
            snprintf(err->code, sizeof(err->code), "%s", EMAC_E_USAGE);
        goto out;
    }
    rc = cats(&b, &l, &cap, "{\n  \"format\": \"" FORMAT_NAME "\",\n  \"version\": 1,\n  \"job\": ");
    rc = rc ?: cat_str(&b, &l, &cap, group->job);
    snprintf(num, sizeof(num), ",\n  \"batch\": %" PRIu64 ",\n  \"epoch\": %" PRIu64, group->batch,
             group->epoch);
    rc = rc ?: cats(&b, &l, &cap, num);
    snprintf(num, sizeof(num), ",\n  \"world_size\": %" PRIu32 ",\n  \"config\": ",
             group->world_size);
    rc = rc ?: cats(&b, &l, &cap, num);
    rc = rc ?: cats(&b, &l, &cap, config);
    rc = rc ?: cats(&b, &l, &cap, ",\n  \"shards\": [");
    for (size_t i = 0, c = 0; rc == 0 && i < n; i++) {
        rc = cats(&b, &l, &cap, i ? ",\n    {\"file\": " : "\n    {\"file\": ");
        rc = rc ?: cat_str(&b, &l, &cap, shards[i].file);
        rc = rc ?: cats(&b, &l, &cap, ", \"ranks\": [");
        for (size_t r = 0; rc == 0 && r < shards[i].nranks; r++) {
            snprintf(num, sizeof(num), "%s%" PRIu32, r ? ", " : "", shards[i].ranks[r]);
            rc = cats(&b, &l, &cap, num);
        }
        rc = rc ?: cats(&b, &l, &cap, "], \"tensors\": [");
        for (size_t t = 0; rc == 0 && t < shards[i].nslices; t++, c++) {
            const struct chunk *k = &ck->chunks[c];
            rc = cats(&b, &l, &cap, t ? ",\n      {\"name\": " : "\n      {\"name\": ");
            rc = rc ?: cat_str(&b, &l, &cap, k->name);
            rc = rc ?: cats(&b, &l, &cap, ", \"dtype\": \"");
            rc = rc ?: cats(&b, &l, &cap, st_dtype_name(k->dt));
            rc = rc ?: cats(&b, &l, &cap, "\", \"global_shape\": ");
            rc = rc ?: cat_u64s(&b, &l, &cap, k->gshape, k->ndim);
            rc = rc ?: cats(&b, &l, &cap, ", \"offsets\": ");
            rc = rc ?: cat_u64s(&b, &l, &cap, k->off, k->ndim);
            rc = rc ?: cats(&b, &l, &cap, ", \"shape\": ");
            rc = rc ?: cat_u64s(&b, &l, &cap, k->shape, k->ndim);
            rc = rc ?: cats(&b, &l, &cap, "}");
        }
        rc = rc ?: cats(&b, &l, &cap, "]}");
    }
    rc = rc ?: cats(&b, &l, &cap, "\n  ]\n}\n");
    if (rc == 0 && l > SHARDS_MANIFEST_MAX)
        rc = client_set_err(err, -E2BIG, EMAC_E_USAGE,
                            "write_manifest: %zu bytes, more than readers accept (%u)", l,
                            SHARDS_MANIFEST_MAX);
    if (rc < 0) {
        if (err == NULL || err->code[0] == '\0')
            client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    rc = durable_open(&d, AT_FDCWD, path, 0644, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
        goto out;
    }
    rc = durable_write_all(d.fd, b, l);
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s: write failed: %s", path, strerror(-rc));
        durable_abort(&d);
        goto out;
    }
    rc = durable_commit(&d, msg, sizeof(msg));
    if (rc < 0)
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
out:
    free(b);
    if (ck != NULL)
        ck_free(ck);
    return rc;
}

/* ---- Reading the manifest ---- */

#define BAD(...) client_set_err(err, -EINVAL, EMAC_E_BADFILE, __VA_ARGS__)

/* The array node v of at most max whole numbers into out. */
static bool u64_array(const struct jt_doc *doc, const struct jt_node *v, uint64_t *out,
                      unsigned max, unsigned *n)
{
    if (v == NULL || v->type != JT_ARRAY || v->count > max)
        return false;
    *n = 0;
    for (const struct jt_node *e = jt_first(doc, v); e != NULL; e = jt_next(doc, e))
        if (!jt_u64(doc, e, &out[(*n)++]))
            return false;
    return true;
}

/* Every key of object o is one of keys (NULL-terminated): a reader of version 1 refuses what
 * it does not know rather than misread a newer file. */
static int known_keys(const struct jt_doc *doc, const struct jt_node *o, const char *const *keys,
                      const char *where, const char *path, struct emac_error *err)
{
    for (const struct jt_node *k = jt_first(doc, o); k != NULL; k = jt_next(doc, jt_next(doc, k))) {
        size_t i = 0;
        while (keys[i] != NULL && strcmp(keys[i], jt_str(doc, k)) != 0)
            i++;
        if (keys[i] == NULL)
            return BAD("%s: %s: unknown key \"%.100s\"", path, where, jt_str(doc, k));
    }
    return 0;
}

static int parse_tensor(struct emac_checkpoint *ck, size_t si, const struct jt_node *o,
                        struct emac_error *err)
{
    static const char *const keys[] = {"name", "dtype", "global_shape", "offsets", "shape",
                                       NULL};
    const struct jt_doc *doc = &ck->doc;
    const struct jt_node *name = jt_get(doc, o, "name"), *dt = jt_get(doc, o, "dtype");
    uint64_t g[NDIM], off[NDIM], s[NDIM];
    unsigned ng, no, ns;
    char where[300];
    enum dtype dtype;
    int rc;

    snprintf(where, sizeof(where), "shard \"%.200s\"", ck->shards[si].file);
    if (o->type != JT_OBJECT)
        return BAD("%s: %s: a tensor entry is not an object", ck->path, where);
    rc = known_keys(doc, o, keys, where, ck->path, err);
    if (rc < 0)
        return rc;
    if (name == NULL || name->type != JT_STRING)
        return BAD("%s: %s: a tensor entry has no \"name\" string", ck->path, where);
    const char *nm = jt_str(doc, name);
    if (dt == NULL || dt->type != JT_STRING || st_dtype_from_name(jt_str(doc, dt), &dtype) < 0)
        return BAD("%s: %s: tensor \"%.200s\": \"dtype\" is missing or not one of F64, F32, "
                   "F16, BF16, I64, I32, I16, I8, U8, BOOL", ck->path, where, nm);
    if (!u64_array(doc, jt_get(doc, o, "global_shape"), g, NDIM, &ng) ||
        !u64_array(doc, jt_get(doc, o, "offsets"), off, NDIM, &no) ||
        !u64_array(doc, jt_get(doc, o, "shape"), s, NDIM, &ns))
        return BAD("%s: %s: tensor \"%.200s\": global_shape, offsets and shape must be arrays "
                   "of at most %d whole numbers", ck->path, where, nm, NDIM);
    if (ng != no || ng != ns)
        return BAD("%s: %s: tensor \"%.200s\": global_shape, offsets and shape have %u, %u and "
                   "%u dimensions", ck->path, where, nm, ng, no, ns);
    snprintf(where, sizeof(where), "%s: shard \"%.200s\"", ck->path, ck->shards[si].file);
    return add_chunk(ck, si, nm, dtype, ng, g, off, s, where, err);
}

static int parse_manifest(struct emac_checkpoint *ck, struct emac_error *err)
{
    static const char *const top_keys[] = {"format", "version", "job",    "batch", "epoch",
                                           "world_size", "config", "shards", NULL};
    static const char *const shard_keys[] = {"file", "ranks", "tensors", NULL};
    const struct jt_doc *doc = &ck->doc;
    const struct jt_node *root = &doc->nodes[0], *v;
    uint64_t u;
    int rc;

    if (root->type != JT_OBJECT)
        return BAD("%s: not a JSON object", ck->path);
    v = jt_get(doc, root, "format");
    if (v == NULL || v->type != JT_STRING || strcmp(jt_str(doc, v), FORMAT_NAME) != 0)
        return BAD("%s: no \"format\": \"" FORMAT_NAME "\"; not a group checkpoint manifest",
                   ck->path);
    if (!jt_u64(doc, jt_get(doc, root, "version"), &u) || u == 0)
        return BAD("%s: no \"version\" (a whole number from 1)", ck->path);
    if (u > EMAC_CKPT_VERSION)
        return BAD("%s: format version %" PRIu64 ", this libemaclient reads version %d: "
                   "written by a newer emad", ck->path, u, EMAC_CKPT_VERSION);
    rc = known_keys(doc, root, top_keys, "the manifest", ck->path, err);
    if (rc < 0)
        return rc;
    v = jt_get(doc, root, "job");
    if (v == NULL || v->type != JT_STRING || jt_str(doc, v)[0] == '\0')
        return BAD("%s: no \"job\" (a string, not empty)", ck->path);
    ck->group.job = jt_str(doc, v);
    if (!jt_u64(doc, jt_get(doc, root, "batch"), &ck->group.batch))
        return BAD("%s: no \"batch\" (a whole number)", ck->path);
    if (!jt_u64(doc, jt_get(doc, root, "epoch"), &ck->group.epoch))
        return BAD("%s: no \"epoch\" (a whole number)", ck->path);
    if (!jt_u64(doc, jt_get(doc, root, "world_size"), &u) || u == 0 || u > UINT32_MAX)
        return BAD("%s: no \"world_size\" (a whole number from 1 to 2^32 - 1)", ck->path);
    ck->group.world_size = (uint32_t)u;
    v = jt_get(doc, root, "config");
    if (v == NULL || v->type != JT_OBJECT)
        return BAD("%s: no \"config\" object", ck->path);
    ck->config = doc->src + v->begin;
    ck->config_len = v->end - v->begin;
    v = jt_get(doc, root, "shards");
    if (v == NULL || v->type != JT_ARRAY || v->count == 0)
        return BAD("%s: no \"shards\" (an array, not empty)", ck->path);
    ck->shards = calloc(v->count, sizeof(*ck->shards));
    if (ck->shards == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    size_t si = 0;
    for (const struct jt_node *s = jt_first(doc, v); s != NULL; s = jt_next(doc, s), si++) {
        const struct jt_node *f = jt_get(doc, s, "file"), *r = jt_get(doc, s, "ranks"),
                             *t = jt_get(doc, s, "tensors");
        const char *why;
        if (s->type != JT_OBJECT)
            return BAD("%s: shard entry %zu is not an object", ck->path, si);
        if (f == NULL || f->type != JT_STRING)
            return BAD("%s: shard entry %zu has no \"file\" string", ck->path, si);
        ck->shards[si].file = jt_str(doc, f);
        ck->nshards = si + 1;
        if (!relative_path_ok(ck->shards[si].file, &why))
            return BAD("%s: shard file \"%.200s\" %s", ck->path, ck->shards[si].file, why);
        rc = known_keys(doc, s, shard_keys, "a shard entry", ck->path, err);
        if (rc < 0)
            return rc;
        for (size_t j = 0; j < si; j++)
            if (strcmp(ck->shards[j].file, ck->shards[si].file) == 0)
                return BAD("%s: shard file \"%.200s\" is listed twice", ck->path,
                           ck->shards[si].file);
        if (r == NULL || r->type != JT_ARRAY || r->count == 0)
            return BAD("%s: shard \"%.200s\": no \"ranks\" (an array, not empty)", ck->path,
                       ck->shards[si].file);
        for (const struct jt_node *e = jt_first(doc, r); e != NULL; e = jt_next(doc, e))
            if (!jt_u64(doc, e, &u) || u >= ck->group.world_size)
                return BAD("%s: shard \"%.200s\": a rank is not a whole number below the world "
                           "size %" PRIu32, ck->path, ck->shards[si].file,
                           ck->group.world_size);
        if (t == NULL || t->type != JT_ARRAY)
            return BAD("%s: shard \"%.200s\": no \"tensors\" array", ck->path,
                       ck->shards[si].file);
        for (const struct jt_node *e = jt_first(doc, t); e != NULL; e = jt_next(doc, e)) {
            rc = parse_tensor(ck, si, e, err);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

static int read_manifest(struct emac_checkpoint *ck, struct emac_error *err)
{
    char msg[512];
    struct stat st;
    int fd, rc;

    fd = open(ck->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: cannot open: %s", ck->path,
                              strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return BAD("%s: not a regular file", ck->path);
    }
    if ((uint64_t)st.st_size > SHARDS_MANIFEST_MAX) {
        close(fd);
        return BAD("%s: %jd bytes, more than a manifest may have (%u)", ck->path,
                   (intmax_t)st.st_size, SHARDS_MANIFEST_MAX);
    }
    size_t len = (size_t)st.st_size, got = 0;
    ck->text = malloc(len + 1);
    if (ck->text == NULL) {
        close(fd);
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    }
    while (got < len) {
        ssize_t r = read(fd, ck->text + got, len - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = r < 0 ? -errno : -EIO;
            close(fd);
            return client_set_err(err, rc, EMAC_E_SYSTEM, "%s: read failed: %s", ck->path,
                                  strerror(-rc));
        }
        got += (size_t)r;
    }
    close(fd);
    rc = jt_parse(ck->text, len, SHARDS_NODES_MAX, SHARDS_DEPTH_MAX, &ck->doc, msg, sizeof(msg));
    if (rc < 0)
        return client_set_err(err, rc, rc == -ENOMEM ? EMAC_E_SYSTEM : EMAC_E_BADFILE,
                              "%s: not valid JSON: %s", ck->path, msg);
    return parse_manifest(ck, err);
}

/* ---- The shard files against the manifest ---- */

static bool meta_u64(const struct st_header *h, const char *key, uint64_t *out)
{
    const char *s = st_meta_get(h, key);
    char *end;

    if (s == NULL || *s < '0' || *s > '9')
        return false;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return *end == '\0' && errno == 0;
}

static int open_shards(struct emac_checkpoint *ck, struct emac_error *err)
{
    char msg[512];
    int rc;

    /* The directory the manifest names its files against: opened once, so that the files are
     * those beside this manifest even if the working directory changes. */
    const char *slash = strrchr(ck->path, '/');
    if (slash == NULL) {
        ck->dirfd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else {
        char *dir = strndup(ck->path, (size_t)(slash - ck->path) + 1);
        if (dir == NULL)
            return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        ck->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        free(dir);
    }
    if (ck->dirfd < 0)
        return client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: cannot open its directory: %s",
                              ck->path, strerror(errno));
    for (size_t i = 0; i < ck->nshards; i++) {
        struct shard *s = &ck->shards[i];
        /* O_NOFOLLOW: a link in the last component is refused, not followed. */
        int fd = openat(ck->dirfd, s->file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW);
        if (fd < 0) {
            rc = -errno;
            return client_set_err(err, rc, rc == -ENOENT ? EMAC_E_BADFILE : EMAC_E_SYSTEM,
                                  "%s: shard file \"%.200s\" cannot be opened: %s%s", ck->path,
                                  s->file, strerror(-rc),
                                  rc == -ENOENT ? " (a checkpoint copied without all its "
                                                  "files?)"
                                  : rc == -EMFILE ? " (one descriptor per shard file: raise "
                                                    "ulimit -n)"
                                  : rc == -ELOOP ? " (shard files may not be symbolic links)"
                                                 : "");
        }
        rc = st_open_fd(&s->f, fd, s->file, msg, sizeof(msg));
        if (rc < 0)
            return client_set_err(err, rc, rc == -EINVAL ? EMAC_E_BADFILE : EMAC_E_SYSTEM,
                                  "%s: shard %s", ck->path, msg);
        s->open = true;
        const char *job = st_meta_get(&s->f.h, "job");
        if (st_meta_get(&s->f.h, "emad_checkpoint") == NULL || job == NULL ||
            !meta_u64(&s->f.h, "batch", &s->batch))
            return BAD("%s: shard file \"%.200s\" lacks the metadata emad_checkpoint, job and "
                       "batch: not a shard of a group checkpoint", ck->path, s->file);
        if (strcmp(job, ck->group.job) != 0)
            return BAD("%s: shard file \"%.200s\" belongs to job \"%.100s\", the manifest to "
                       "\"%.100s\"", ck->path, s->file, job, ck->group.job);
    }
    /* Every file at the manifest's batch, else name them all: files of two checkpoints mixed
     * in one directory must not be consolidated into an EMA that never existed. */
    size_t bad = 0, o = 0;
    char list[400] = "";
    for (size_t i = 0; i < ck->nshards; i++) {
        if (ck->shards[i].batch == ck->group.batch)
            continue;
        if (bad++ < 6 && o < sizeof(list))
            o += (size_t)snprintf(list + o, sizeof(list) - o, "%s\"%.60s\" at batch %" PRIu64,
                                  o ? ", " : "", ck->shards[i].file, ck->shards[i].batch);
    }
    if (bad > 0)
        return BAD("%s: checkpoint at batch %" PRIu64 ", but %zu of its %zu shard files are "
                   "not: %s%s; refusing to mix checkpoints", ck->path, ck->group.batch, bad,
                   ck->nshards, list, bad > 6 ? ", ..." : "");
    /* Each file's header against the manifest's entries for it. */
    size_t *count = calloc(ck->nshards, sizeof(*count));
    if (count == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    rc = 0;
    for (size_t i = 0; rc == 0 && i < ck->nchunks; i++) {
        struct chunk *k = &ck->chunks[i];
        struct shard *s = &ck->shards[k->shard];
        char key[600], a[DIMS], b[DIMS];
        count[k->shard]++;
        k->st = st_find(&s->f.h, k->name);
        if (k->st == NULL) {
            rc = BAD("%s: shard file \"%.200s\" has no tensor \"%.200s\" (the manifest says it "
                     "has)", ck->path, s->file, k->name);
            break;
        }
        if (k->st->dtype != k->dt || k->st->rank != k->ndim ||
            memcmp(k->st->shape, k->shape, k->ndim * sizeof(uint64_t)) != 0) {
            rc = BAD("%s: shard file \"%.200s\": tensor \"%.150s\" is %s %s there, %s %s in "
                     "the manifest", ck->path, s->file, k->name, st_dtype_name(k->st->dtype),
                     dims(a, DIMS, k->st->shape, k->st->rank), st_dtype_name(k->dt),
                     dims(b, DIMS, k->shape, k->ndim));
            break;
        }
        snprintf(key, sizeof(key), SHARDS_SLICE_KEY "%s", k->name);
        const char *sv = st_meta_get(&s->f.h, key);
        struct jt_doc d;
        uint64_t g[NDIM], off[NDIM];
        unsigned ng = 0, no = 0;
        bool ok = sv != NULL && jt_parse(sv, strlen(sv), 64, 4, &d, msg, sizeof(msg)) == 0;
        if (ok) {
            ok = d.nodes[0].type == JT_OBJECT && d.nodes[0].count == 2 &&
                 u64_array(&d, jt_get(&d, &d.nodes[0], "global_shape"), g, NDIM, &ng) &&
                 u64_array(&d, jt_get(&d, &d.nodes[0], "offsets"), off, NDIM, &no);
            jt_free(&d);
        }
        if (!ok)
            rc = BAD("%s: shard file \"%.200s\": tensor \"%.150s\" has no valid metadata "
                     "\"%s...\" ({\"global_shape\": [...], \"offsets\": [...]})", ck->path,
                     s->file, k->name, SHARDS_SLICE_KEY);
        else if (ng != k->ndim || no != k->ndim ||
                 memcmp(g, k->gshape, ng * sizeof(uint64_t)) != 0 ||
                 memcmp(off, k->off, no * sizeof(uint64_t)) != 0)
            rc = BAD("%s: shard file \"%.200s\": tensor \"%.150s\" sits at offsets %s of %s by "
                     "its metadata, the manifest says otherwise", ck->path, s->file, k->name,
                     dims(a, DIMS, off, no), dims(b, DIMS, g, ng));
    }
    for (size_t i = 0; rc == 0 && i < ck->nshards; i++)
        if (count[i] != ck->shards[i].f.h.ntensors)
            rc = BAD("%s: shard file \"%.200s\" holds %zu tensors, the manifest lists %zu",
                     ck->path, ck->shards[i].file, ck->shards[i].f.h.ntensors, count[i]);
    free(count);
    return rc;
}

int emac_checkpoint_open(const char *manifest_path, emac_checkpoint **out,
                         struct emac_error *err)
{
    struct emac_checkpoint *ck;
    int rc;

    if (err != NULL)
        err->code[0] = '\0';
    if (out == NULL || manifest_path == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "checkpoint_open: NULL argument");
    *out = NULL;
    ck = ck_new(manifest_path);
    if (ck == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    rc = read_manifest(ck, err);
    /* The tiling is checked before the files are opened: a manifest that cannot describe a
     * whole model is refused without touching its files. */
    rc = rc ?: index_tensors(ck, err);
    rc = rc ?: open_shards(ck, err);
    if (rc < 0) {
        ck_free(ck);
        return rc;
    }
    *out = ck;
    return 0;
}

const struct emac_ckpt_group *emac_checkpoint_group(const emac_checkpoint *ck)
{
    return ck != NULL ? &ck->group : NULL;
}

void emac_checkpoint_close(emac_checkpoint *ck)
{
    if (ck != NULL)
        ck_free(ck);
}

/* ---- Reading blocks ---- */

static const struct tensor *find_tensor(const struct emac_checkpoint *ck, const char *name)
{
    size_t lo = 0, hi = ck->ntensors;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct tensor *t = &ck->tensors[ck->by_name[mid]];
        int c = strcmp(name, t->name);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* n elements of float dtype sdt at src into ddt at dst. The 16-bit formats and f64 go through
 * f32, as torch's .to() rounds (round to nearest even). */
static void convert(void *dst, enum dtype ddt, const void *src, enum dtype sdt, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d = dst;

    for (size_t i = 0; i < n; i++) {
        float f = 0;
        double v;
        uint16_t h;
        switch (sdt) {
        case DTYPE_F64:
            memcpy(&v, s + 8 * i, 8);
            f = (float)v;
            break;
        case DTYPE_F32:
            memcpy(&f, s + 4 * i, 4);
            break;
        case DTYPE_BF16:
            memcpy(&h, s + 2 * i, 2);
            f = half_bf16_to_f32(h);
            break;
        default: /* DTYPE_F16 */
            memcpy(&h, s + 2 * i, 2);
            f = half_f16_to_f32(h);
            break;
        }
        switch (ddt) {
        case DTYPE_F64:
            if (sdt == DTYPE_F64)
                memcpy(d + 8 * i, s + 8 * i, 8);
            else {
                v = f;
                memcpy(d + 8 * i, &v, 8);
            }
            break;
        case DTYPE_F32:
            memcpy(d + 4 * i, &f, 4);
            break;
        case DTYPE_BF16:
            h = half_f32_to_bf16(f);
            memcpy(d + 2 * i, &h, 2);
            break;
        default: /* DTYPE_F16 */
            h = half_f32_to_f16(f);
            memcpy(d + 2 * i, &h, 2);
            break;
        }
    }
}

/* Buffers and counters of one read or consolidation. */
struct reader {
    struct emac_checkpoint *ck;
    unsigned char *stage;      /* for conversions */
    size_t stage_len;
    struct shards_stats *st;
    struct emac_error *err;
};

/* Copy n elements from chunk k (starting at its element se) into dst (as ddt). */
static int read_run(struct reader *r, const struct chunk *k, uint64_t se, uint64_t n,
                    unsigned char *dst, enum dtype ddt)
{
    const struct shard *s = &r->ck->shards[k->shard];
    size_t ses = dtype_size(k->dt), des = dtype_size(ddt);
    char msg[512];
    int rc = 0;

    if (ddt == k->dt) {
        rc = st_read(&s->f, k->st, se * ses, dst, n * ses, msg, sizeof(msg));
        if (r->st != NULL)
            r->st->reads++;
    } else {
        size_t per = r->stage_len / ses;
        for (uint64_t done = 0; rc == 0 && done < n; done += per) {
            size_t m = n - done < per ? (size_t)(n - done) : per;
            rc = st_read(&s->f, k->st, (se + done) * ses, r->stage, m * ses, msg, sizeof(msg));
            if (rc == 0)
                convert(dst + done * des, ddt, r->stage, k->dt, m);
            if (r->st != NULL)
                r->st->reads++;
        }
    }
    if (rc < 0)
        return client_set_err(r->err, rc, rc == -EINVAL ? EMAC_E_BADFILE : EMAC_E_SYSTEM,
                              "%s: shard file \"%.200s\": %s", r->ck->path, s->file, msg);
    return 0;
}

/*
 * Fill dst (row-major, dtype ddt) with the block [bo, bo + bs) of tensor t, from every distinct
 * chunk that meets it. Within the intersection of a chunk and the block, elements are copied in
 * runs as long as both sides are contiguous: the last dimension, widened over the dimensions
 * before it while the intersection spans the chunk and the block whole in those after.
 */
static int read_box(struct reader *r, const struct tensor *t, const uint64_t *bo,
                    const uint64_t *bs, unsigned char *dst, enum dtype ddt)
{
    const unsigned n = t->ndim;
    const size_t des = dtype_size(ddt);
    int rc;

    if (n == 0) {
        const struct chunk *k = &r->ck->chunks[t->chunks[0]];
        return read_run(r, k, 0, 1, dst, ddt);
    }
    for (size_t c = 0; c < t->nchunks; c++) {
        const struct chunk *k = &r->ck->chunks[t->chunks[c]];
        uint64_t lo[NDIM], ext[NDIM], idx[NDIM] = {0};
        bool empty = false;
        for (unsigned d = 0; d < n; d++) {
            uint64_t a = bo[d] > k->off[d] ? bo[d] : k->off[d];
            uint64_t be = bo[d] + bs[d], ke = k->off[d] + k->shape[d];
            uint64_t b = be < ke ? be : ke;
            if (a >= b) {
                empty = true;
                break;
            }
            lo[d] = a;
            ext[d] = b - a;
        }
        if (empty)
            continue;
        unsigned top = n - 1; /* the outermost dimension inside one run */
        uint64_t len = ext[n - 1];
        while (top > 0 && ext[top] == k->shape[top] && ext[top] == bs[top]) {
            top--;
            len *= ext[top];
        }
        for (;;) {
            /* Element indices of the run's start in the chunk and in the block. */
            uint64_t se = 0, de = 0;
            for (unsigned d = 0; d < n; d++) {
                uint64_t g = lo[d] + (d < top ? idx[d] : 0);
                se = se * k->shape[d] + (g - k->off[d]);
                de = de * bs[d] + (g - bo[d]);
            }
            rc = read_run(r, k, se, len, dst + de * des, ddt);
            if (rc < 0)
                return rc;
            /* The next run: an odometer over the dimensions before top. */
            int d = (int)top - 1;
            while (d >= 0 && ++idx[d] == ext[d])
                idx[d--] = 0;
            if (d < 0)
                break;
        }
    }
    return 0;
}

/* dst_dtype for a tensor of dtype dt: its own, or a float one for a float tensor. */
static int target_dtype(const struct tensor *t, const char *name, enum dtype *out,
                        struct emac_error *err)
{
    if (name == NULL) {
        *out = t->dt;
        return 0;
    }
    int rc = dtype_arg(name, out, "read", err);
    if (rc < 0)
        return rc;
    if (*out != t->dt && (!dtype_is_float(*out) || !dtype_is_float(t->dt)))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                               "read: tensor \"%.200s\" is %s: it can be read as %s only if "
                               "both are float dtypes", t->name, dtype_name(t->dt),
                               dtype_name(*out));
    return 0;
}

int emac_checkpoint_read(emac_checkpoint *ck, const char *name, unsigned ndim,
                         const uint64_t *offsets, const uint64_t *shape, void *dst,
                         size_t dst_len, const char *dst_dtype, struct emac_error *err)
{
    struct reader r = {.ck = ck, .err = err};
    const struct tensor *t;
    enum dtype ddt;
    char a[DIMS], b[DIMS], c[DIMS];
    int rc;

    if (err != NULL)
        err->code[0] = '\0';
    if (ck == NULL || name == NULL || (ndim > 0 && (offsets == NULL || shape == NULL)))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "read: NULL argument");
    if ((t = find_tensor(ck, name)) == NULL)
        return client_set_err(err, -ENOENT, EMAC_E_USAGE,
                              "read: %s has no tensor \"%.200s\"", ck->path, name);
    if (ndim != t->ndim)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "read: tensor \"%.200s\" has %u dimensions, not %u", name,
                              t->ndim, ndim);
    for (unsigned d = 0; d < ndim; d++)
        if (offsets[d] > t->gshape[d] || shape[d] > t->gshape[d] - offsets[d])
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                                  "read: tensor \"%.200s\": the block at %s of shape %s passes "
                                  "its shape %s", name, dims(a, DIMS, offsets, ndim),
                                  dims(b, DIMS, shape, ndim), dims(c, DIMS, t->gshape, ndim));
    rc = target_dtype(t, dst_dtype, &ddt, err);
    if (rc < 0)
        return rc;
    uint64_t bytes = volume(shape, ndim) * dtype_size(ddt); /* <= the tensor's: no overflow */
    if (dst == NULL || dst_len < bytes)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "read: tensor \"%.200s\": the block needs %" PRIu64 " bytes, dst "
                              "has %zu", name, bytes, dst == NULL ? 0 : dst_len);
    if (bytes == 0)
        return 0;
    if (ddt != t->dt) {
        r.stage_len = SHARDS_BUF_DEFAULT;
        r.stage = malloc(r.stage_len);
        if (r.stage == NULL)
            return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    }
    rc = read_box(&r, t, offsets, shape, dst, ddt);
    free(r.stage);
    return rc;
}

int emac_checkpoint_read_slice(const char *manifest_path, const char *name, unsigned ndim,
                               const uint64_t *offsets, const uint64_t *shape, void *dst,
                               size_t dst_len, const char *dst_dtype, struct emac_error *err)
{
    emac_checkpoint *ck;
    int rc = emac_checkpoint_open(manifest_path, &ck, err);

    if (rc < 0)
        return rc;
    rc = emac_checkpoint_read(ck, name, ndim, offsets, shape, dst, dst_len, dst_dtype, err);
    emac_checkpoint_close(ck);
    return rc;
}

/* ---- Consolidation ---- */

/*
 * Tensor t into w in windows: each a block of whole rows of some dimension d (fixed indices
 * before d, a range of d, everything after) of at most win elements, so that the windows, in
 * order, are the tensor in row-major order.
 */
static int consolidate_tensor(struct reader *r, const struct tensor *t, enum dtype odt,
                              unsigned char *win, size_t win_elems, struct st_writer *w)
{
    const unsigned n = t->ndim;
    uint64_t inner = 1, bo[NDIM] = {0}, bs[NDIM] = {0};
    char msg[512] = "";
    unsigned d;
    int rc;

    if (volume(t->gshape, n) == 0)
        return 0;
    if (n == 0) {
        rc = read_box(r, t, bo, bs, win, odt);
        rc = rc ?: st_writer_write(w, win, dtype_size(odt), msg, sizeof(msg));
        goto done;
    }
    /* The outermost d whose rows (the dimensions after it) fit the window. */
    for (d = n - 1; d > 0 && inner * t->gshape[d] <= win_elems; d--)
        inner *= t->gshape[d];
    uint64_t step = win_elems / inner; /* >= 1: inner <= win_elems */
    for (unsigned e = 0; e < n; e++)
        bs[e] = e > d ? t->gshape[e] : 1;
    for (;;) {
        for (uint64_t at = 0; at < t->gshape[d]; at += step) {
            bo[d] = at;
            bs[d] = t->gshape[d] - at < step ? t->gshape[d] - at : step;
            rc = read_box(r, t, bo, bs, win, odt);
            rc = rc ?: st_writer_write(w, win, volume(bs, n) * dtype_size(odt), msg, sizeof(msg));
            if (rc < 0)
                goto done;
            if (r->st != NULL)
                r->st->windows++;
        }
        int e = (int)d - 1;
        while (e >= 0 && ++bo[e] == t->gshape[e])
            bo[e--] = 0;
        if (e < 0)
            break;
    }
    rc = 0;
done:
    if (rc < 0 && (r->err == NULL || r->err->code[0] == '\0'))
        client_set_err(r->err, rc, EMAC_E_SYSTEM, "consolidate: %s", msg);
    return rc;
}

int shards_consolidate(const char *manifest_path, const char *out_path, const char *out_dtype,
                       size_t buf_bytes, struct shards_stats *st, struct emac_error *err)
{
    emac_checkpoint *ck = NULL;
    struct reader r = {.st = st, .err = err};
    struct st_tensor *table = NULL;
    unsigned char *win = NULL;
    enum dtype odt = DTYPE_COUNT;
    char *config = NULL, msg[512], batch[32], epoch[32], world[32];
    struct st_writer w;
    struct durable d;
    int rc;

    if (err != NULL)
        err->code[0] = '\0';
    if (st != NULL)
        memset(st, 0, sizeof(*st));
    if (manifest_path == NULL || out_path == NULL || buf_bytes < 8)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "consolidate: NULL path, or a buffer under 8 bytes");
    if (out_dtype != NULL &&
        (dtype_from_name(out_dtype, strlen(out_dtype), &odt) < 0 ||
         (odt != DTYPE_F32 && odt != DTYPE_BF16 && odt != DTYPE_F16)))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "consolidate: output dtype \"%.20s\" is not f32, bf16 or f16",
                              out_dtype);
    rc = emac_checkpoint_open(manifest_path, &ck, err);
    if (rc < 0)
        return rc;
    r.ck = ck;
    table = calloc(ck->ntensors + 1, sizeof(*table));
    win = malloc(buf_bytes);
    r.stage = malloc(buf_bytes);
    r.stage_len = buf_bytes;
    config = strndup(ck->config, ck->config_len);
    if (table == NULL || win == NULL || r.stage == NULL || config == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    if (st != NULL)
        st->buf_bytes = 2 * buf_bytes;
    for (size_t i = 0; i < ck->ntensors; i++) {
        const struct tensor *t = &ck->tensors[i];
        table[i] = (struct st_tensor){.name = t->name, .rank = t->ndim, .dtype = t->dt};
        if (odt != DTYPE_COUNT && dtype_is_float(t->dt))
            table[i].dtype = odt;
        memcpy(table[i].shape, t->gshape, sizeof(t->gshape));
    }
    snprintf(batch, sizeof(batch), "%" PRIu64, ck->group.batch);
    snprintf(epoch, sizeof(epoch), "%" PRIu64, ck->group.epoch);
    snprintf(world, sizeof(world), "%" PRIu32, ck->group.world_size);
    const struct st_meta meta[] = {
        {"format", "pt"},         {"job", ck->group.job}, {"batch", batch},
        {"epoch", epoch},         {"world_size", world},  {"emad_config", config},
        {"consolidated", "emad"},
    };
    rc = durable_open(&d, AT_FDCWD, out_path, 0644, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
        goto out;
    }
    rc = st_writer_begin(&w, d.fd, table, ck->ntensors, meta, sizeof(meta) / sizeof(meta[0]),
                         msg, sizeof(msg));
    if (rc < 0)
        client_set_err(err, rc, EMAC_E_BADFILE, "%s: %s", out_path, msg);
    for (size_t i = 0; rc == 0 && i < ck->ntensors; i++)
        rc = consolidate_tensor(&r, &ck->tensors[i], table[i].dtype, win,
                                buf_bytes / dtype_size(table[i].dtype), &w);
    if (rc == 0) {
        rc = st_writer_finish(&w, msg, sizeof(msg));
        if (rc < 0)
            client_set_err(err, rc, EMAC_E_SYSTEM, "%s: %s", out_path, msg);
    }
    if (rc < 0) {
        durable_abort(&d);
        goto out;
    }
    rc = durable_commit(&d, msg, sizeof(msg));
    if (rc < 0)
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
out:
    free(table);
    free(win);
    free(r.stage);
    free(config);
    emac_checkpoint_close(ck);
    return rc;
}

int emac_checkpoint_consolidate(const char *manifest_path, const char *out_path,
                                const char *out_dtype, struct emac_error *err)
{
    return shards_consolidate(manifest_path, out_path, out_dtype, SHARDS_BUF_DEFAULT, NULL, err);
}
