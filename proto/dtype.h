/*
 * dtype.h - the element types of tensors, as named on the wire (docs/protocol.md
 * "register"). Shared by emad (kernels, sessions) and libemaclient.
 */
#ifndef EMAD_DTYPE_H
#define EMAD_DTYPE_H

#include <stdbool.h>
#include <stddef.h>

/* dtype of a tensor as named on the wire ("f32", "bf16", ...). */
enum dtype {
    DTYPE_F32,  /* "f32"  IEEE binary32 */
    DTYPE_F16,  /* "f16"  IEEE binary16 */
    DTYPE_BF16, /* "bf16" bfloat16: the top half of a binary32 */
    DTYPE_F64,  /* "f64"  IEEE binary64 */
    DTYPE_I64,  /* "i64" */
    DTYPE_I32,  /* "i32" */
    DTYPE_I16,  /* "i16" */
    DTYPE_I8,   /* "i8" */
    DTYPE_U8,   /* "u8" */
    DTYPE_BOOL, /* "bool" one byte, 0 or 1 */
    DTYPE_COUNT
};

/* true for a value inside the enum (e.g. one read off the wire). */
bool dtype_valid(enum dtype dt);

/* Bytes per element; 0 for a value outside the enum. */
size_t dtype_size(enum dtype dt);

/* Wire name ("f32", ...); NULL for a value outside the enum. */
const char *dtype_name(enum dtype dt);

/* Parses the len bytes at name (no NUL needed): 0 and *out set, or -EINVAL if it is no dtype. */
int dtype_from_name(const char *name, size_t len, enum dtype *out);

/* true for f32, f16, bf16 and f64: the dtypes that are averaged rather than copied. */
bool dtype_is_float(enum dtype dt);

/*
 * dtype of the shadow kept for a parameter of dtype dt: f32 for f16/bf16/f32 (the average is
 * computed in fp32 whatever the parameter's precision), dt itself otherwise;
 * DTYPE_COUNT for a value outside the enum.
 */
enum dtype dtype_shadow(enum dtype dt);

#endif
