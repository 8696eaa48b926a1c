/*
 * dtype.c - names, sizes and shadow types of tensor element types.
 */
#include "dtype.h"

#include <errno.h>
#include <string.h>

static const struct {
    const char *name;
    size_t size;
    enum dtype shadow;
} dtype_info[DTYPE_COUNT] = {
    [DTYPE_F32] = {"f32", 4, DTYPE_F32},   [DTYPE_F16] = {"f16", 2, DTYPE_F32},
    [DTYPE_BF16] = {"bf16", 2, DTYPE_F32}, [DTYPE_F64] = {"f64", 8, DTYPE_F64},
    [DTYPE_I64] = {"i64", 8, DTYPE_I64},   [DTYPE_I32] = {"i32", 4, DTYPE_I32},
    [DTYPE_I16] = {"i16", 2, DTYPE_I16},   [DTYPE_I8] = {"i8", 1, DTYPE_I8},
    [DTYPE_U8] = {"u8", 1, DTYPE_U8},      [DTYPE_BOOL] = {"bool", 1, DTYPE_BOOL},
};

/* The enum's underlying type is implementation-defined: compare as unsigned so that a negative
 * value read off the wire is rejected too. */
bool dtype_valid(enum dtype dt)
{
    return (unsigned)dt < DTYPE_COUNT;
}

size_t dtype_size(enum dtype dt)
{
    return dtype_valid(dt) ? dtype_info[dt].size : 0;
}

const char *dtype_name(enum dtype dt)
{
    return dtype_valid(dt) ? dtype_info[dt].name : NULL;
}

int dtype_from_name(const char *name, size_t len, enum dtype *out)
{
    if (name == NULL || out == NULL)
        return -EINVAL;
    for (unsigned i = 0; i < DTYPE_COUNT; i++) {
        const char *cand = dtype_info[i].name;
        if (strlen(cand) == len && memcmp(cand, name, len) == 0) {
            *out = (enum dtype)i;
            return 0;
        }
    }
    return -EINVAL;
}

bool dtype_is_float(enum dtype dt)
{
    return dt == DTYPE_F32 || dt == DTYPE_F16 || dt == DTYPE_BF16 || dt == DTYPE_F64;
}

enum dtype dtype_shadow(enum dtype dt)
{
    return dtype_valid(dt) ? dtype_info[dt].shadow : DTYPE_COUNT;
}
