/*
 * shards_write.c - writing a group checkpoint (docs/scaleout.md): one safetensors shard file
 * per distinct shard, its slices described in its metadata, and the manifest naming them all,
 * each written durably (temp file, fsync, rename) so that a checkpoint exists whole or not at
 * all. What the caller passes is checked as a reader would check the files.
 */
#include "shards_int.h"

#include "durable.h"
#include "errbuf.h"
#include "names.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

    if (s->file == NULL || !shards_path_ok(s->file, &why))
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
        rc = shards_dtype_arg(sl->dtype, &dt, where, err);
        if (rc < 0)
            return rc;
        if (sl->ndim > 0 && (sl->global_shape == NULL || sl->offsets == NULL || sl->shape == NULL))
            return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: tensor %zu: NULL shape",
                                  where, i);
        rc = shards_chunk_add(ck, si, sl->name, dt, sl->ndim, sl->global_shape, sl->offsets,
                              sl->shape, where, err);
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
    ck = shards_ck_new(path);
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
        if (rc == 0 && shards_volume(k->shape, k->ndim) > 0 &&
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
        uint64_t bytes = shards_volume(table[i].shape, table[i].rank) * dtype_size(table[i].dtype);
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
    shards_ck_free(ck);
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
    ck = shards_ck_new(path);
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
    rc = shards_index_tensors(ck, err);
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
        shards_ck_free(ck);
    return rc;
}
