/*
 * shards_read.c - reading an open group checkpoint: any block of a tensor gathered from the
 * chunks that meet it, converted between float dtypes as torch's .to() rounds, and whole
 * tensors consolidated into one safetensors file through two buffers of a fixed size.
 */
#include "shards_int.h"

#include "durable.h"
#include "half.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    int rc = shards_dtype_arg(name, out, "read", err);
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
                                  "its shape %s", name, shards_dims(a, DIMS, offsets, ndim),
                                  shards_dims(b, DIMS, shape, ndim),
                                  shards_dims(c, DIMS, t->gshape, ndim));
    rc = target_dtype(t, dst_dtype, &ddt, err);
    if (rc < 0)
        return rc;
    /* At most the tensor's bytes: no overflow. */
    uint64_t bytes = shards_volume(shape, ndim) * dtype_size(ddt);
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

    if (shards_volume(t->gshape, n) == 0)
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
            rc = rc ?: st_writer_write(w, win, shards_volume(bs, n) * dtype_size(odt), msg,
                                       sizeof(msg));
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
                       const char *profile, size_t buf_bytes, struct shards_stats *st,
                       struct emac_error *err)
{
    emac_checkpoint *ck = NULL;
    struct reader r = {.st = st, .err = err};
    struct st_tensor *table = NULL;
    const struct tensor **picked = NULL;
    struct shards_pick pick;
    size_t n = 0;
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
    rc = shards_profile_pick(ck, profile, &pick, err);
    if (rc < 0)
        goto out;
    table = calloc(ck->ntensors + 1, sizeof(*table));
    picked = calloc(ck->ntensors + 1, sizeof(*picked));
    win = malloc(buf_bytes);
    r.stage = malloc(buf_bytes);
    r.stage_len = buf_bytes;
    /* The config is a slice of the manifest's text, not a C string: copy it by its length. */
    config = malloc(ck->config_len + 1);
    if (config != NULL) {
        memcpy(config, ck->config, ck->config_len);
        config[ck->config_len] = '\0';
    }
    if (table == NULL || picked == NULL || win == NULL || r.stage == NULL || config == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    if (st != NULL)
        st->buf_bytes = 2 * buf_bytes;
    for (size_t i = 0; i < ck->ntensors; i++) {
        const struct tensor *t = &ck->tensors[i];
        const char *name = shards_pick_name(&pick, t->name);
        if (name == NULL)
            continue; /* another profile's */
        picked[n] = t;
        table[n] = (struct st_tensor){.name = name, .dtype = t->dt};
        if (odt != DTYPE_COUNT && dtype_is_float(t->dt))
            table[n].dtype = odt;
        /* Read as its global shape (1-D for a flattened parameter), written with its own. */
        rc = shards_shape_pick(ck, name, t, &table[n].rank, table[n].shape, err);
        if (rc < 0)
            goto out;
        n++;
    }
    if (n == 0 && pick.profiles) {
        rc = client_set_err(err, -EINVAL, EMAC_E_BADFILE, "consolidate: %s holds no tensor of profile \"%s\"", ck->path,
                      pick.name);
        goto out;
    }
    snprintf(batch, sizeof(batch), "%" PRIu64, ck->group.batch);
    snprintf(epoch, sizeof(epoch), "%" PRIu64, ck->group.epoch);
    snprintf(world, sizeof(world), "%" PRIu32, ck->group.world_size);
    const struct st_meta meta[] = {
        {"format", "pt"},         {"job", ck->group.job}, {"batch", batch},
        {"epoch", epoch},         {"world_size", world},  {"emad_config", config},
        {"consolidated", "emad"}, {"profile", pick.name},
    };
    /* The profile's entry only for a checkpoint of profiles: without, the output is as ever. */
    size_t nmeta = sizeof(meta) / sizeof(meta[0]) - (pick.profiles ? 0 : 1);
    rc = durable_open(&d, AT_FDCWD, out_path, 0644, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
        goto out;
    }
    rc = st_writer_begin(&w, d.fd, table, n, meta, nmeta, msg, sizeof(msg));
    if (rc < 0)
        client_set_err(err, rc, EMAC_E_BADFILE, "%s: %s", out_path, msg);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = consolidate_tensor(&r, picked[i], table[i].dtype, win,
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
    free(picked);
    free(win);
    free(r.stage);
    free(config);
    emac_checkpoint_close(ck);
    return rc;
}

int emac_checkpoint_consolidate(const char *manifest_path, const char *out_path,
                                const char *out_dtype, struct emac_error *err)
{
    return shards_consolidate(manifest_path, out_path, out_dtype, NULL, SHARDS_BUF_DEFAULT, NULL,
                              err);
}

int emac_checkpoint_consolidate_profile(const char *manifest_path, const char *out_path,
                                        const char *out_dtype, const char *profile,
                                        struct emac_error *err)
{
    return shards_consolidate(manifest_path, out_path, out_dtype, profile, SHARDS_BUF_DEFAULT,
                              NULL, err);
}
