/*
 * shards_shape.c - the shapes a consolidated file gives a group checkpoint's flattened tensors
 * (docs/scaleout.md "Flattened tensors"). The EMA of an FSDP1 flat parameter keeps, for each
 * original parameter, 1-D slices of that parameter flattened; the manifest's
 * config.emaclient.shapes ({"name": [d0, d1, ...]}) records the parameter's real shape, which
 * consolidate writes into the safetensors header. The bytes stay as they are: a row-major
 * tensor and its flattening are the same bytes.
 */
#include "shards_int.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#define BAD(...) client_set_err(err, -EINVAL, EMAC_E_BADFILE, __VA_ARGS__)

int shards_shape_pick(const struct emac_checkpoint *ck, const char *name, const struct tensor *t,
                      unsigned *ndim, uint64_t *shape, struct emac_error *err)
{
    const struct jt_doc *doc = &ck->doc;
    const struct jt_node *cfg = jt_get(doc, &doc->nodes[0], "config");
    const struct jt_node *shapes = jt_get(doc, jt_get(doc, cfg, "emaclient"), "shapes");
    const struct jt_node *s;
    uint64_t dims[NDIM], vol = 1;
    unsigned n = 0;
    char a[DIMS], b[DIMS];

    *ndim = t->ndim;
    memcpy(shape, t->gshape, sizeof(t->gshape));
    if (shapes == NULL)
        return 0;
    if (shapes->type != JT_OBJECT)
        return BAD("%s: config.emaclient.shapes is not an object {name: shape}", ck->path);
    s = jt_get(doc, shapes, name);
    if (s == NULL)
        return 0;
    if (s->type != JT_ARRAY || s->count > NDIM)
        return BAD("%s: config.emaclient.shapes[\"%.100s\"] is not an array of at most %d sizes",
                   ck->path, name, NDIM);
    for (const struct jt_node *d = jt_first(doc, s); d != NULL; d = jt_next(doc, d), n++) {
        if (!jt_u64(doc, d, &dims[n]) || __builtin_mul_overflow(vol, dims[n], &vol))
            return BAD("%s: config.emaclient.shapes[\"%.100s\"][%u] is not a size (a whole "
                       "number from 0, the product of the sizes under 2^64)",
                       ck->path, name, n);
    }
    if (vol != shards_volume(t->gshape, t->ndim))
        return BAD("%s: config.emaclient.shapes[\"%.100s\"] is %s (%" PRIu64 " elements), but "
                   "the tensor's global shape %s holds %" PRIu64,
                   ck->path, name, shards_dims(a, sizeof(a), dims, n), vol,
                   shards_dims(b, sizeof(b), t->gshape, t->ndim),
                   shards_volume(t->gshape, t->ndim));
    *ndim = n;
    memset(shape, 0, sizeof(t->gshape));
    memcpy(shape, dims, n * sizeof(dims[0]));
    return 0;
}
