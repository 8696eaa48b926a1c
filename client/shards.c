/*
 * shards.c - the group checkpoint in memory (shards_int.h): chunks checked alone as they are
 * added, whether from the API (writing) or from a manifest (opening), then grouped into
 * tensors whose distinct slices must tile each global shape exactly. Every file is hostile
 * input: these checks are what make a manifest's numbers safe to read blocks by.
 */
#include "shards_int.h"

#include "names.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A file name a manifest may list: relative, inside the manifest's directory. */
bool shards_path_ok(const char *p, const char **why)
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

uint64_t shards_volume(const uint64_t *shape, unsigned ndim)
{
    uint64_t v = 1;

    for (unsigned d = 0; d < ndim; d++)
        v *= shape[d];
    return v;
}

/* "[4, 6]" into buf. */
const char *shards_dims(char *buf, size_t len, const uint64_t *v, unsigned n)
{
    size_t o = 0;

    o += (size_t)snprintf(buf, len, "[");
    for (unsigned d = 0; d < n && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%" PRIu64, d ? ", " : "", v[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
    return buf;
}

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
int shards_chunk_add(struct emac_checkpoint *ck, size_t shard, const char *name,
                     enum dtype dt, unsigned ndim, const uint64_t *g, const uint64_t *o,
                     const uint64_t *s, const char *where, struct emac_error *err)
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
                                  name, shards_dims(a, DIMS, g, ndim));
        if (o[d] > g[d] || s[d] > g[d] - o[d])
            return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                  "%s: tensor \"%.200s\": the slice at offsets %s of shape %s "
                                  "passes the global shape %s in dimension %u",
                                  where, name, shards_dims(a, DIMS, o, ndim),
                                  shards_dims(b, DIMS, s, ndim), shards_dims(c, DIMS, g, ndim),
                                  d);
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
    if (shards_volume(a->shape, a->ndim) == 0 || shards_volume(b->shape, b->ndim) == 0)
        return false;
    for (unsigned d = 0; d < a->ndim; d++)
        if (a->off[d] + a->shape[d] <= b->off[d] || b->off[d] + b->shape[d] <= a->off[d])
            return false;
    return true;
}

/*
 * Group the chunks into tensors and check that each tensor's distinct slices tile its global
 * shape: all inside it (shards_chunk_add), no two overlapping, their volumes summing to it. Slices
 * equal in offsets and shape are replicas (DDP, HSDP) and count once. Pairwise: a tensor has
 * at most one chunk per shard file, and a job few enough files for that to be cheap.
 */
int shards_index_tensors(struct emac_checkpoint *ck, struct emac_error *err)
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
                                    shards_dims(a, DIMS, k->gshape, k->ndim), kf,
                                    shards_dims(b, DIMS, r->gshape, r->ndim), rf);
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
                                        shards_dims(a, DIMS, o->off, o->ndim),
                                        shards_dims(b, DIMS, o->shape, o->ndim),
                                        ck->shards[o->shard].file,
                                        shards_dims(c, DIMS, k->off, k->ndim),
                                        shards_dims(e, DIMS, k->shape, k->ndim), kf);
                    goto out;
                }
            }
            if (!replica) {
                t->chunks[t->nchunks++] = ni[j].i;
                covered += shards_volume(k->shape, k->ndim);
            }
        }
        used += t->nchunks;
        uint64_t whole = shards_volume(t->gshape, t->ndim);
        if (covered != whole) {
            rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                "%s: tensor \"%.200s\" of global shape %s: its slices cover "
                                "%" PRIu64 " of its %" PRIu64 " elements (a gap: a shard file "
                                "missing from the manifest?)", ck->path, t->name,
                                shards_dims(a, DIMS, t->gshape, t->ndim), covered, whole);
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

void shards_ck_free(struct emac_checkpoint *ck)
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

struct emac_checkpoint *shards_ck_new(const char *path)
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

int shards_dtype_arg(const char *name, enum dtype *out, const char *what,
                     struct emac_error *err)
{
    if (name == NULL || dtype_from_name(name, strlen(name), out) < 0 ||
        st_dtype_name(*out) == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: dtype \"%.20s\" is unknown",
                              what, name ? name : "(null)");
    return 0;
}
