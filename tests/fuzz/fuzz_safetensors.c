/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header reader
 * (proto/safetensors.c), the part of a file another program may have written.
 *
 * Input: a file image (8-byte little-endian header length, header, data).
 *
 * What must hold (a violation calls __builtin_trap):
 *   - st_header_parse never crashes, leaks or reads outside the header;
 *   - an accepted header describes the data area exactly: tensors in data order, each of
 *     shape * element size bytes, contiguous from 0 to the data's end; names unique and
 *     found by st_find; every metadata key found by st_meta_get;
 *   - the writer, given the accepted table and metadata, builds a header that parses again
 *     to the same names, dtypes, shapes, offsets and metadata.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

#define CHECK(c)                                                                              \
    do {                                                                                      \
        if (!(c))                                                                             \
            __builtin_trap();                                                                 \
    } while (0)

static void check_same(const struct st_header *a, const struct st_header *b)
{
    CHECK(a->ntensors == b->ntensors && a->nmeta == b->nmeta);
    for (size_t i = 0; i < a->ntensors; i++) {
        const struct st_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        CHECK(strcmp(x->name, y->name) == 0 && x->dtype == y->dtype && x->rank == y->rank);
        CHECK(memcmp(x->shape, y->shape, x->rank * sizeof(x->shape[0])) == 0);
        CHECK(x->begin == y->begin && x->end == y->end);
    }
    for (size_t i = 0; i < a->nmeta; i++) {
        const char *v = st_meta_get(b, a->meta[i].key);
        CHECK(v != NULL && strcmp(v, a->meta[i].value) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct st_header h, h2;
    char err[512], *built;
    size_t blen;
    uint64_t n = 0, bytes;

    if (size < 8)
        return 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | data[i];
    if (n > size - 8)
        return 0;
    /* A copy of exactly the header, so that ASan sees any read past it. */
    char *json = malloc(n ? n : 1);
    memcpy(json, data + 8, n);
    uint64_t data_size = size - 8 - n;
    if (st_header_parse(json, n, data_size, &h, err, sizeof(err)) != 0) {
        CHECK(err[0] != '\0' && h.tensors == NULL && h.pool == NULL);
        free(json);
        return 0;
    }
    uint64_t at = 0;
    for (size_t i = 0; i < h.ntensors; i++) {
        const struct st_tensor *t = &h.tensors[i];
        uint64_t numel;
        CHECK(st_numel(t, &numel));
        CHECK(!__builtin_mul_overflow(numel, dtype_size(t->dtype), &bytes));
        CHECK(t->begin == at && t->end - t->begin == bytes);
        CHECK(st_find(&h, t->name) == t);
        at = t->end;
    }
    CHECK(at == data_size);
    for (size_t i = 0; i < h.nmeta; i++)
        CHECK(st_meta_get(&h, h.meta[i].key) != NULL);
    CHECK(st_header_build(h.tensors, h.ntensors, h.meta, h.nmeta, &built, &blen, &bytes, err,
                          sizeof(err)) == 0);
    CHECK(bytes == data_size && blen % 8 == 0);
    CHECK(st_header_parse(built + 8, blen - 8, data_size, &h2, err, sizeof(err)) == 0);
    check_same(&h, &h2);
    st_header_free(&h2);
    free(built);
    st_header_free(&h);
    free(json);
    return 0;
}
