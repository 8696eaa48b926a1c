/*
 * safetensors.h - the safetensors file format (docs/posthoc.md "Files"): emad writes snapshots
 * in it, libemaclient writes post-hoc results and exports, and both read it.
 *
 *   8 bytes      N, the header's length, unsigned little-endian
 *   N bytes      a JSON object: per tensor name {"dtype": "F32", "shape": [2, 3],
 *                "data_offsets": [begin, end]}, and optionally "__metadata__": {string: string};
 *                the writer pads it with spaces so that the data starts 8-byte aligned
 *   the rest     the tensors' bytes, little-endian, contiguous, the first at data offset 0
 *
 * The reader treats a file as hostile (another program may have written it): the header is
 * bounded, parsed strictly, and every tensor is checked against the data area before anything
 * is read. Functions return 0 or -errno and write a message naming the problem into err.
 */
#ifndef EMAD_SAFETENSORS_H
#define EMAD_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#define ST_RANK_MAX 8                    /* dimensions of a tensor, as emad's register allows */
#define ST_HEADER_MAX (100u * 1024 * 1024) /* bytes of JSON header a reader accepts */

/* One tensor of a file. */
struct st_tensor {
    const char *name;              /* UTF-8, NUL-terminated, not empty */
    enum dtype dtype;              /* f32, f16, bf16, f64, i64, i32, i16, i8, u8 or bool */
    unsigned rank;                 /* 0 (a scalar) .. ST_RANK_MAX */
    uint64_t shape[ST_RANK_MAX];   /* the first rank entries */
    uint64_t begin, end;           /* byte offsets in the data area (the reader's; the writer
                                      computes them from the table's order) */
};

/* One entry of "__metadata__". */
struct st_meta {
    const char *key;
    const char *value;
};

/* A parsed, validated header. Tensors are in data order (by begin); strings point into pool. */
struct st_header {
    size_t ntensors;
    struct st_tensor *tensors;
    size_t nmeta;
    struct st_meta *meta;
    size_t *by_name;               /* tensor indices sorted by name (st_find) */
    char *pool;
};

/* An open file: its header, and where its data starts. */
struct st_file {
    int fd;
    uint64_t size;                 /* of the whole file */
    uint64_t data_start;           /* 8 + the header's length */
    struct st_header h;
};

/* ---- Names of dtypes ---- */

/* "F32", "BF16", ...; NULL for a dtype the format has no name for. */
const char *st_dtype_name(enum dtype dt);
/* 0 and *out, or -EINVAL for a name emad does not handle (e.g. "F8_E4M3"). */
int st_dtype_from_name(const char *name, enum dtype *out);

/* Elements of a tensor (1 for rank 0); false if the product overflows 64 bits. */
bool st_numel(const struct st_tensor *t, uint64_t *numel);

/* ---- Writing ---- */

/*
 * The whole prefix of a file: the 8-byte length and the JSON header (padded with spaces to a
 * multiple of 8) for tensors t[0..n) stored in that order, and the metadata (nmeta may be 0).
 * Checks names (UTF-8, not empty, no duplicates), dtypes and ranks. *out is malloc'd, *len its
 * size; *data_bytes (may be NULL) the bytes of data that must follow.
 */
int st_header_build(const struct st_tensor *t, size_t n, const struct st_meta *meta,
                    size_t nmeta, char **out, size_t *len, uint64_t *data_bytes, char *err,
                    size_t errlen);

/* Streams a file into a descriptor the caller opened (e.g. durable.h's temp file). */
struct st_writer {
    int fd;
    uint64_t total;    /* data bytes the header announced */
    uint64_t written;  /* data bytes written so far */
};

/* Write the header for t and meta (as st_header_build) to fd. */
int st_writer_begin(struct st_writer *w, int fd, const struct st_tensor *t, size_t n,
                    const struct st_meta *meta, size_t nmeta, char *err, size_t errlen);
/* Append data, in any chunking, in the table's order; never past the announced total. */
int st_writer_write(struct st_writer *w, const void *buf, size_t len, char *err,
                    size_t errlen);
/* -EIO unless exactly the announced bytes were written. */
int st_writer_finish(const struct st_writer *w, char *err, size_t errlen);

/*
 * Escape s (len bytes) as the inside of a JSON string: '"', '\\' and control characters.
 * Appends to *buf (malloc'd, *len used, *cap allocated). 0 or -ENOMEM.
 */
int st_json_escape(char **buf, size_t *len, size_t *cap, const char *s, size_t slen);

/* ---- Reading ---- */

/*
 * Parse and validate a header: json (len bytes, not NUL-terminated) describing a data area of
 * data_size bytes. Pure (no IO): what the fuzzer drives. On success *h holds the result (free it
 * with st_header_free); on failure *h is empty.
 */
int st_header_parse(const char *json, size_t len, uint64_t data_size, struct st_header *h,
                    char *err, size_t errlen);
void st_header_free(struct st_header *h);

/* The tensor named name, or NULL. */
const struct st_tensor *st_find(const struct st_header *h, const char *name);
/* The metadata value of key, or NULL. */
const char *st_meta_get(const struct st_header *h, const char *key);

/* Open path read-only (a regular file) and validate its header; messages start with path. */
int st_open(struct st_file *f, const char *path, char *err, size_t errlen);
/* The same on a descriptor the caller opened; it belongs to f from now on (closed by
 * st_close, or here on failure). label names the file in messages. */
int st_open_fd(struct st_file *f, int fd, const char *label, char *err, size_t errlen);
/* len bytes of tensor t from byte offset off within it (off + len <= its size). */
int st_read(const struct st_file *f, const struct st_tensor *t, uint64_t off, void *buf,
            size_t len, char *err, size_t errlen);
void st_close(struct st_file *f);

#endif
