/*
 * segment.c - the trainer's tensors in shared memory: the specs checked
 * and laid out, segments created, opened, restored from their stash. No
 * I/O to emad: the sessions (session.c) tell emad where a segment is.
 */
#include "emaclient_int.h"

#include "names.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

/* Check the specs and lay them out: spans[i] gets each tensor's place. */
static int specs_layout(const struct emac_tensor_spec *specs, size_t n, const char *what,
                        struct seg_span *spans, enum dtype *dts, struct seg_geometry *g,
                        struct emac_error *err)
{
    if (n == 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: no tensors", what);
    for (size_t i = 0; i < n; i++) {
        const struct emac_tensor_spec *t = &specs[i];
        size_t len;
        uint64_t bytes, prod = 1;
        if (t->name == NULL)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: tensor %zu has no name", what, i);
        len = strnlen(t->name, NAMES_TENSOR_MAX + 1);
        if (len == 0 || len > NAMES_TENSOR_MAX)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor %zu: name is %s bytes long; it must be 1..%d bytes", what,
                           i, len == 0 ? "0" : "more than 1024", NAMES_TENSOR_MAX);
        if (!names_utf8_valid(t->name, len))
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor %zu: name is not valid UTF-8", what, i);
        if (t->dtype == NULL || dtype_from_name(t->dtype, strlen(t->dtype), &dts[i]) < 0)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": dtype \"%s\" is not one of f32, f16, bf16, f64, "
                           "i64, i32, i16, i8, u8, bool",
                           what, t->name, t->dtype ? t->dtype : "(null)");
        if (t->shape == NULL && t->ndim > 0)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": ndim is %zu but shape is NULL", what, t->name,
                           t->ndim);
        for (size_t k = 0; t->shape != NULL && k < t->ndim; k++)
            if (__builtin_mul_overflow(prod, t->shape[k], &prod))
                return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                               "%s: tensor \"%s\": shape overflows 64 bits", what, t->name);
        if (t->shape != NULL && prod != t->numel)
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": shape has %" PRIu64
                           " elements but numel is %" PRIu64,
                           what, t->name, prod, t->numel);
        if (__builtin_mul_overflow(t->numel, (uint64_t)dtype_size(dts[i]), &bytes))
            return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                           "%s: tensor \"%s\": %" PRIu64 " elements of %s overflow 64 bits", what,
                           t->name, t->numel, t->dtype);
        spans[i].bytes = bytes;
    }
    if (seg_layout(spans, n, g) < 0 || g->segment_bytes > (uint64_t)SIZE_MAX)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: the tensors do not fit in memory", what);
    return 0;
}

static void segment_free(emac_segment *seg)
{
    if (seg->base != NULL && seg->base != MAP_FAILED)
        munmap(seg->base, seg->bytes);
    for (size_t i = 0; seg->tensors != NULL && i < seg->n; i++)
        free((char *)seg->tensors[i].name);
    for (size_t i = 0; seg->meta != NULL && i < seg->n; i++)
        free(seg->meta[i].shape), free(seg->meta[i].slice);
    free(seg->tensors);
    free(seg->meta);
    free(seg);
}

/* Build the handle's tables for specs laid out as spans inside a mapping. */
static int segment_fill(emac_segment *seg, const struct emac_tensor_spec *specs, size_t n,
                        const struct seg_span *spans, const enum dtype *dts)
{
    char *params = (char *)seg->base + SEG_HEADER_BYTES;

    seg->n = n;
    seg->tensors = calloc(n, sizeof(*seg->tensors));
    seg->meta = calloc(n, sizeof(*seg->meta));
    if (seg->tensors == NULL || seg->meta == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        struct emac_tensor *t = &seg->tensors[i];
        t->name = strdup(specs[i].name);
        if (t->name == NULL)
            return -ENOMEM;
        t->dtype = dtype_name(dts[i]);
        t->elem_size = dtype_size(dts[i]);
        t->numel = specs[i].numel;
        t->offset = spans[i].offset;
        t->bytes = spans[i].bytes;
        t->data = params + spans[i].offset;
        seg->meta[i].dt = dts[i];
        if (specs[i].shape != NULL) {
            seg->meta[i].ndim = specs[i].ndim;
            seg->meta[i].shape = malloc((specs[i].ndim ? specs[i].ndim : 1) * sizeof(uint64_t));
            if (seg->meta[i].shape == NULL)
                return -ENOMEM;
            if (specs[i].ndim)
                memcpy(seg->meta[i].shape, specs[i].shape, specs[i].ndim * sizeof(uint64_t));
        }
    }
    return 0;
}

/* Scratch for specs_layout. */
struct layout {
    struct seg_span *spans;
    enum dtype *dts;
    struct seg_geometry g;
};

static int layout_alloc(struct layout *l, size_t n, const char *what, struct emac_error *err)
{
    l->spans = calloc(n ? n : 1, sizeof(*l->spans));
    l->dts = calloc(n ? n : 1, sizeof(*l->dts));
    if (l->spans == NULL || l->dts == NULL) {
        free(l->spans);
        free(l->dts);
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    }
    return 0;
}

static void layout_free(struct layout *l)
{
    free(l->spans);
    free(l->dts);
}

/* The layout of specs and an empty segment for it: both, or neither on an
 * error. */
static int segment_prepare(const struct emac_tensor_spec *specs, size_t n, const char *what,
                           struct layout *l, emac_segment **seg, struct emac_error *err)
{
    int rc;

    if ((rc = layout_alloc(l, n, what, err)) < 0)
        return rc;
    if ((rc = specs_layout(specs, n, what, l->spans, l->dts, &l->g, err)) < 0)
        goto err_layout;
    *seg = calloc(1, sizeof(**seg));
    if (*seg == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_layout;
    }
    return 0;

err_layout:
    layout_free(l);
    return rc;
}

int emac_segment_create(const struct emac_tensor_spec *specs, size_t n, emac_segment **out,
                        struct emac_error *err)
{
    const char *what = "emac_segment_create";
    struct layout l;
    emac_segment *seg;
    int fd = -1, rc;

    if (out == NULL || (specs == NULL && n > 0))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: NULL argument", what);
    *out = NULL;
    if ((rc = segment_prepare(specs, n, what, &l, &seg, err)) < 0)
        return rc;
    /* A random name, so that trainers never collide; O_EXCL makes a clash
     * (or someone guessing ahead of us) an error rather than a shared object. */
    for (int tries = 0; fd < 0 && tries < 16; tries++) {
        uint64_t r;
        if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
            rc = client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: getrandom: %s", what, strerror(errno));
            goto err_seg;
        }
        snprintf(seg->name, sizeof(seg->name), SEG_NAME_PREFIX "%016" PRIx64, r);
        fd = shm_open(seg->name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0 && errno != EEXIST) {
            rc = client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: shm_open %s: %s", what, seg->name,
                         strerror(errno));
            goto err_seg;
        }
    }
    if (fd < 0) {
        rc = client_set_err(err, -EEXIST, EMAC_E_SYSTEM, "%s: shm_open: no free name after 16 tries",
                     what);
        goto err_seg;
    }
    if (ftruncate(fd, (off_t)l.g.segment_bytes) < 0) {
        rc = client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: ftruncate %s to %" PRIu64 " bytes: %s", what,
                     seg->name, l.g.segment_bytes, strerror(errno));
        goto err_unlink;
    }
    seg->bytes = l.g.segment_bytes;
    seg->base = mmap(NULL, seg->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (seg->base == MAP_FAILED) {
        rc = client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: mmap %s (%" PRIu64 " bytes): %s", what,
                     seg->name, seg->bytes, strerror(errno));
        goto err_unlink;
    }
    seg_header_init(seg->base, &l.g);
    if (segment_fill(seg, specs, n, l.spans, l.dts) < 0) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_unlink;
    }
    close(fd);
    layout_free(&l);
    *out = seg;
    return 0;

err_unlink:
    shm_unlink(seg->name);
    close(fd);
err_seg:
    segment_free(seg);
    layout_free(&l);
    return rc;
}

/* Open name and map it whole after checking its header. */
static int segment_map(const char *name, int flags, void **base, uint64_t *bytes,
                       const char *what, struct emac_error *err)
{
    struct stat st;
    char why[256];
    int fd, rc;

    fd = shm_open(name, flags | O_CLOEXEC, 0);
    if (fd < 0)
        return client_set_err(err, -errno, errno == ENOENT ? MSG_E_SHM : EMAC_E_SYSTEM,
                       "%s: shm_open %s: %s", what, name, strerror(errno));
    if (fstat(fd, &st) < 0) {
        rc = client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: fstat %s: %s", what, name, strerror(errno));
        goto err_close;
    }
    if ((uint64_t)st.st_size < SEG_HEADER_BYTES) {
        rc = client_set_err(err, -EINVAL, MSG_E_SHM, "%s: %s is %lld bytes, too small for a segment",
                     what, name, (long long)st.st_size);
        goto err_close;
    }
    *bytes = (uint64_t)st.st_size;
    *base = mmap(NULL, *bytes, PROT_READ | ((flags & O_RDWR) ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    if (*base == MAP_FAILED) {
        rc = client_set_err(err, -errno, EMAC_E_SYSTEM, "%s: mmap %s: %s", what, name, strerror(errno));
        goto err_close;
    }
    close(fd);
    if (seg_header_check(*base, *bytes, why, sizeof(why)) < 0) {
        munmap(*base, *bytes);
        return client_set_err(err, -EINVAL, MSG_E_SHM, "%s: %s is not a valid segment: %s", what, name,
                       why);
    }
    return 0;

err_close:
    close(fd);
    return rc;
}

int emac_segment_open(const char *name, const struct emac_tensor_spec *specs, size_t n,
                      emac_segment **out, struct emac_error *err)
{
    const char *what = "emac_segment_open";
    const struct seg_header *h;
    struct layout l;
    emac_segment *seg;
    int rc;

    if (name == NULL || out == NULL || (specs == NULL && n > 0))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: NULL argument", what);
    *out = NULL;
    if (strlen(name) >= SEG_NAME_LEN ||
        strncmp(name, SEG_NAME_PREFIX, strlen(SEG_NAME_PREFIX)) != 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                       "%s: \"%s\" is not a segment name (\"" SEG_NAME_PREFIX "...\")", what, name);
    if ((rc = segment_prepare(specs, n, what, &l, &seg, err)) < 0)
        return rc;
    snprintf(seg->name, sizeof(seg->name), "%s", name);
    if ((rc = segment_map(name, O_RDWR, &seg->base, &seg->bytes, what, err)) < 0) {
        seg->base = NULL;
        goto err_seg;
    }
    h = seg->base;
    if (h->params_offset != l.g.params_offset || h->params_bytes != l.g.params_bytes ||
        h->stash_offset != l.g.stash_offset || h->segment_bytes != l.g.segment_bytes) {
        rc = client_set_err(err, -EINVAL, EMAC_E_USAGE,
                     "%s: %s was not made for these tensors: its params area is %" PRIu64
                     " bytes at %" PRIu64 ", the specs need %" PRIu64 " bytes at %" PRIu64,
                     what, name, h->params_bytes, h->params_offset, l.g.params_bytes,
                     l.g.params_offset);
        goto err_seg;
    }
    if (segment_fill(seg, specs, n, l.spans, l.dts) < 0) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
        goto err_seg;
    }
    layout_free(&l);
    *out = seg;
    return 0;

err_seg:
    segment_free(seg);
    layout_free(&l);
    return rc;
}

void emac_segment_close(emac_segment *seg)
{
    if (seg != NULL)
        segment_free(seg);
}

void emac_segment_destroy(emac_segment *seg)
{
    if (seg == NULL)
        return;
    shm_unlink(seg->name);
    segment_free(seg);
}

const char *emac_segment_name(const emac_segment *seg)
{
    return seg ? seg->name : NULL;
}

size_t emac_segment_ntensors(const emac_segment *seg)
{
    return seg ? seg->n : 0;
}

const struct emac_tensor *emac_segment_tensor(const emac_segment *seg, size_t i)
{
    return seg != NULL && i < seg->n ? &seg->tensors[i] : NULL;
}

void *emac_segment_base(const emac_segment *seg)
{
    return seg ? seg->base : NULL;
}

uint64_t emac_segment_bytes(const emac_segment *seg)
{
    return seg ? seg->bytes : 0;
}

void *emac_segment_stash(const emac_segment *seg)
{
    const struct seg_header *h;
    char why[160];

    if (seg == NULL)
        return NULL;
    /* The offset is read from the shared header, which someone else may
     * have spoilt: never hand out a pointer outside the mapping. */
    h = seg->base;
    if (seg_header_check(h, seg->bytes, why, sizeof(why)) < 0)
        return NULL;
    return (char *)seg->base + h->stash_offset;
}

void emac_segment_swap_state(const emac_segment *seg, uint32_t *state, uint64_t *generation)
{
    struct seg_header *h = seg->base;

    if (state != NULL)
        *state = seg_swap_state_load(h);
    if (generation != NULL)
        *generation = __atomic_load_n(&h->swap_generation, __ATOMIC_ACQUIRE);
}

/* The header is checked first: seg_restore_training_weights trusts its
 * offsets, and a header spoilt by someone else must not make us copy
 * outside the mapping. */
int client_restore_mapping(void *base, uint64_t bytes, char *why, size_t whylen)
{
    if (seg_header_check(base, bytes, why, whylen) < 0)
        return -EINVAL;
    return seg_restore_training_weights(base) ? 1 : 0;
}

int emac_segment_restore(emac_segment *seg, bool *restored, struct emac_error *err)
{
    char why[256];
    int rc;

    if (seg == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_segment_restore: seg is NULL");
    if ((rc = client_restore_mapping(seg->base, seg->bytes, why, sizeof(why))) < 0)
        return client_set_err(err, rc, MSG_E_SHM, "emac_segment_restore: %s: bad header: %s",
                       seg->name, why);
    if (restored != NULL)
        *restored = rc == 1;
    return 0;
}

int emac_segment_recover(const char *name, bool *restored, struct emac_error *err)
{
    void *base;
    uint64_t bytes;
    bool done;
    int rc;

    if (name == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_segment_recover: name is NULL");
    /* segment_map checked the header. */
    if ((rc = segment_map(name, O_RDWR, &base, &bytes, "emac_segment_recover", err)) < 0)
        return rc;
    done = seg_restore_training_weights(base);
    munmap(base, bytes);
    if (restored != NULL)
        *restored = done;
    return 0;
}

/* ---- shard metadata sent with register (docs/protocol.md "Shard sessions") ---- */

int emac_segment_set_slice(emac_segment *seg, size_t i, const uint64_t *global_shape,
                           const uint64_t *offsets, size_t ndim, struct emac_error *err)
{
    const char *what = "emac_segment_set_slice";
    char why[256];

    if (seg == NULL || i >= seg->n)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: no tensor %zu", what, i);
    struct seg_tensor *m = &seg->meta[i];
    if (global_shape == NULL) {
        free(m->slice);
        m->slice = NULL;
        return 0;
    }
    if (offsets == NULL || m->shape == NULL || ndim != m->ndim)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: tensor \"%s\": give offsets, and "
                              "as many dimensions (%zu) as its spec's shape, which it needs "
                              "(%zu)", what, seg->tensors[i].name, ndim, m->ndim);
    struct msg_tensor t = {.numel = seg->tensors[i].numel, .has_shape = true, .shape = m->shape,
                           .nshape = m->ndim, .has_global_shape = true,
                           .global_shape = (uint64_t *)global_shape, .nglobal_shape = ndim,
                           .has_offsets = true, .offsets = (uint64_t *)offsets, .noffsets = ndim};
    if (msg_tensor_check_shape(&t, i, why, sizeof(why)) < 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "%s: tensor \"%s\": %s", what,
                              seg->tensors[i].name, why);
    uint64_t *s = malloc((ndim ? 2 * ndim : 1) * sizeof(*s));
    if (s == NULL)
        return client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "%s: out of memory", what);
    if (ndim) {
        memcpy(s, global_shape, ndim * sizeof(*s));
        memcpy(s + ndim, offsets, ndim * sizeof(*s));
    }
    free(m->slice);
    m->slice = s;
    return 0;
}

int emac_segment_set_group(emac_segment *seg, const struct emac_group *g,
                           struct emac_error *err)
{
    char why[256];

    if (seg == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_segment_set_group: seg is NULL");
    if (g == NULL) {
        seg->has_group = false;
        return 0;
    }
    struct msg_group m = {msg_str_c(g->job), g->rank, g->world, g->replicas > 1, g->replicas};
    if (g->job == NULL || msg_group_check(&m, why, sizeof(why)) < 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "emac_segment_set_group: %s",
                              g->job == NULL ? "job is NULL" : why);
    snprintf(seg->group_job, sizeof(seg->group_job), "%s", g->job);
    seg->group_rank = g->rank;
    seg->group_world = g->world;
    seg->group_replicas = g->replicas > 1 ? g->replicas : 1;
    seg->has_group = true;
    return 0;
}
