/*
 * shards_open.c - opening a group checkpoint (docs/scaleout.md "What a reader checks"): the
 * manifest parsed strictly (jtree, unknown keys refused), the tiling of every tensor checked
 * before any shard file is opened, then every shard file's header and metadata held against
 * the manifest. Every file is hostile input.
 */
#include "shards_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    return shards_chunk_add(ck, si, nm, dtype, ng, g, off, s, where, err);
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
        if (!shards_path_ok(ck->shards[si].file, &why))
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
    ck->text[len] = '\0'; /* what is read as a string ends at the text's end at the latest */
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
                     shards_dims(a, DIMS, k->st->shape, k->st->rank), st_dtype_name(k->dt),
                     shards_dims(b, DIMS, k->shape, k->ndim));
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
                     shards_dims(a, DIMS, off, no), shards_dims(b, DIMS, g, ng));
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
    ck = shards_ck_new(manifest_path);
    if (ck == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
    rc = read_manifest(ck, err);
    /* The tiling is checked before the files are opened: a manifest that cannot describe a
     * whole model is refused without touching its files. */
    rc = rc ?: shards_index_tensors(ck, err);
    rc = rc ?: open_shards(ck, err);
    if (rc < 0) {
        shards_ck_free(ck);
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
        shards_ck_free(ck);
}
