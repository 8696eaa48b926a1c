/*
 * segment.c - geometry and checks of the trainer's segment.
 */
#include "segment.h"
#include "errbuf.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct seg_header) == 64, "seg_header layout");
_Static_assert(offsetof(struct seg_header, swap_state) == 48, "swap_state offset");
_Static_assert(offsetof(struct seg_header, swap_generation) == 56, "swap_generation offset");

static bool add_ok(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

static bool align_up(uint64_t v, uint64_t a, uint64_t *out)
{
    uint64_t t;
    if (!add_ok(v, a - 1, &t))
        return false;
    *out = t & ~(a - 1);
    return true;
}

int seg_layout(struct seg_span *spans, size_t n, struct seg_geometry *g)
{
    uint64_t at = 0;

    for (size_t i = 0; i < n; i++) {
        if (!align_up(at, SEG_TENSOR_ALIGN, &at))
            return -EOVERFLOW;
        spans[i].offset = at;
        if (!add_ok(at, spans[i].bytes, &at))
            return -EOVERFLOW;
    }
    g->params_offset = SEG_HEADER_BYTES;
    g->params_bytes = at;
    if (!add_ok(g->params_offset, at, &g->stash_offset) ||
        !align_up(g->stash_offset, SEG_PAGE, &g->stash_offset) ||
        !add_ok(g->stash_offset, at, &g->segment_bytes))
        return -EOVERFLOW;
    return 0;
}

void seg_header_init(struct seg_header *h, const struct seg_geometry *g)
{
    memset(h, 0, sizeof(*h));
    memcpy(h->magic, SEG_MAGIC, 8);
    h->version = SEG_VERSION;
    h->header_bytes = SEG_HEADER_BYTES;
    h->segment_bytes = g->segment_bytes;
    h->params_offset = g->params_offset;
    h->params_bytes = g->params_bytes;
    h->stash_offset = g->stash_offset;
    h->swap_state = SEG_TRAIN;
}

int seg_header_check(const struct seg_header *h, uint64_t actual_size, char *err, size_t errlen)
{
    uint64_t end;

    if (actual_size < SEG_HEADER_BYTES)
        return err_set(err, errlen, -EINVAL, "segment is %" PRIu64 " bytes, smaller than its %u-byte header",
                    actual_size, SEG_HEADER_BYTES);
    if (memcmp(h->magic, SEG_MAGIC, 8) != 0)
        return err_set(err, errlen, -EINVAL, "magic is not \"" SEG_MAGIC "\"");
    if (h->version != SEG_VERSION)
        return err_set(err, errlen, -EINVAL, "version %" PRIu32 " is not supported (expected %u)", h->version,
                    SEG_VERSION);
    if (h->header_bytes != SEG_HEADER_BYTES)
        return err_set(err, errlen, -EINVAL, "header_bytes is %" PRIu32 ", expected %u", h->header_bytes,
                    SEG_HEADER_BYTES);
    if (h->segment_bytes != actual_size)
        return err_set(err, errlen, -EINVAL,
                    "segment_bytes says %" PRIu64 " but the object is %" PRIu64 " bytes",
                    h->segment_bytes, actual_size);
    if (h->params_offset % SEG_PAGE != 0 || h->params_offset < SEG_HEADER_BYTES)
        return err_set(err, errlen, -EINVAL, "params_offset %" PRIu64 " is not a multiple of %u after the header",
                    h->params_offset, SEG_PAGE);
    if (h->stash_offset % SEG_PAGE != 0)
        return err_set(err, errlen, -EINVAL, "stash_offset %" PRIu64 " is not a multiple of %u",
                    h->stash_offset, SEG_PAGE);
    if (!add_ok(h->params_offset, h->params_bytes, &end) || end > h->stash_offset)
        return err_set(err, errlen, -EINVAL, "params area (offset %" PRIu64 ", %" PRIu64
                    " bytes) runs into the stash at %" PRIu64, h->params_offset,
                    h->params_bytes, h->stash_offset);
    if (!add_ok(h->stash_offset, h->params_bytes, &end) || end > actual_size)
        return err_set(err, errlen, -EINVAL, "stash (offset %" PRIu64 ", %" PRIu64
                    " bytes) ends past the segment (%" PRIu64 " bytes)", h->stash_offset,
                    h->params_bytes, actual_size);
    if (h->swap_state > SEG_EMA)
        return err_set(err, errlen, -EINVAL, "swap_state %" PRIu32 " is not 0, 1 or 2", h->swap_state);
    return 0;
}

struct order {
    uint64_t offset;
    size_t index;
};

static int cmp_order(const void *a, const void *b)
{
    const struct order *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

#define LABEL(names, i) ((names) && (names)[i] ? (names)[i] : "?")

int seg_spans_check(const struct seg_span *spans, const char *const *names, size_t n,
                    uint64_t params_bytes, char *err, size_t errlen)
{
    struct order *ord;
    uint64_t end;
    int rc = 0;

    for (size_t i = 0; i < n; i++) {
        if (spans[i].offset % SEG_TENSOR_ALIGN != 0)
            return err_set(err, errlen, -EINVAL, "tensor \"%s\" (index %zu): offset %" PRIu64
                        " is not a multiple of %u", LABEL(names, i), i, spans[i].offset,
                        SEG_TENSOR_ALIGN);
        if (!add_ok(spans[i].offset, spans[i].bytes, &end) || end > params_bytes)
            return err_set(err, errlen, -EINVAL, "tensor \"%s\" (offset %" PRIu64 ", %" PRIu64
                        " bytes) ends past the params area (%" PRIu64 " bytes)",
                        LABEL(names, i), spans[i].offset, spans[i].bytes, params_bytes);
    }
    if (n < 2)
        return 0;
    ord = malloc(n * sizeof(*ord));
    if (ord == NULL)
        return -ENOMEM;
    bool sorted = true;
    for (size_t i = 0; i < n; i++) {
        ord[i].offset = spans[i].offset;
        ord[i].index = i;
        sorted = sorted && (i == 0 || spans[i - 1].offset <= spans[i].offset);
    }
    /* Trainers lay their tensors out in order: then there is nothing to sort. */
    if (!sorted)
        qsort(ord, n, sizeof(*ord), cmp_order);
    /* Against the furthest end so far: an empty tensor between two others
     * must not hide their overlap. */
    size_t last = n; /* the non-empty span ending furthest, n: none yet */
    uint64_t last_end = 0;
    for (size_t k = 0; k < n && rc == 0; k++) {
        const struct seg_span *b = &spans[ord[k].index];
        if (b->bytes == 0) /* empty tensors occupy no bytes and overlap nothing */
            continue;
        if (last < n && last_end > b->offset)
            rc = err_set(err, errlen, -EINVAL, "tensors \"%s\" and \"%s\" overlap (offsets %" PRIu64
                      " and %" PRIu64 ")", LABEL(names, last), LABEL(names, ord[k].index),
                      spans[last].offset, b->offset);
        if (last == n || b->offset + b->bytes > last_end) {
            last = ord[k].index;
            last_end = b->offset + b->bytes;
        }
    }
    free(ord);
    return rc;
}

uint32_t seg_swap_state_load(const struct seg_header *h)
{
    return __atomic_load_n(&h->swap_state, __ATOMIC_ACQUIRE);
}

void seg_swap_state_store(struct seg_header *h, uint32_t state)
{
    __atomic_store_n(&h->swap_state, state, __ATOMIC_RELEASE);
}

void seg_swap_generation_bump(struct seg_header *h)
{
    __atomic_fetch_add(&h->swap_generation, 1, __ATOMIC_RELEASE);
}

bool seg_restore_training_weights(void *base)
{
    struct seg_header *h = base;

    if (seg_swap_state_load(h) == SEG_TRAIN)
        return false;
    memcpy((char *)base + h->params_offset, (char *)base + h->stash_offset, h->params_bytes);
    seg_swap_state_store(h, SEG_TRAIN);
    return true;
}
