/*
 * segment.h - the trainer's shared-memory segment (docs/protocol.md "Segment header"): header
 * layout, geometry, checks, and the swap_state handshake. Shared by emad,
 * which verifies and writes segments, and libemaclient, which creates them.
 */
#ifndef EMAD_SEGMENT_H
#define EMAD_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEG_MAGIC "EMASEG01"   /* 8 bytes, no NUL */
#define SEG_VERSION 1u
#define SEG_HEADER_BYTES 4096u
#define SEG_PAGE 4096u         /* params_offset and stash_offset are multiples */
#define SEG_TENSOR_ALIGN 64u   /* every tensor's offset is a multiple */
#define SEG_NAME_PREFIX "/emad-"

/* swap_state values. */
enum seg_swap_state {
    SEG_TRAIN = 0,   /* params hold the training weights */
    SEG_STASHED = 1, /* the stash holds the training weights; params may be partly EMA */
    SEG_EMA = 2,     /* params hold the EMA weights, the stash the training weights */
};

/* The header at offset 0, little-endian (x86-64 and aarch64 are). The
 * fields sit at their natural alignment, so swap_state and swap_generation
 * can be accessed atomically in place. */
struct seg_header {
    char magic[8];            /* SEG_MAGIC */
    uint32_t version;         /* SEG_VERSION */
    uint32_t header_bytes;    /* SEG_HEADER_BYTES */
    uint64_t segment_bytes;   /* size of the whole object */
    uint64_t params_offset;   /* multiple of SEG_PAGE */
    uint64_t params_bytes;
    uint64_t stash_offset;    /* multiple of SEG_PAGE, after the params */
    uint32_t swap_state;      /* enum seg_swap_state; written with release ordering */
    uint32_t reserved;        /* 0 */
    uint64_t swap_generation; /* incremented by emad on every completed swap */
};

/* Where things are in a segment. */
struct seg_geometry {
    uint64_t params_offset;
    uint64_t params_bytes;
    uint64_t stash_offset;
    uint64_t segment_bytes;
};

/* One tensor's place inside the params area. */
struct seg_span {
    uint64_t offset; /* relative to params_offset */
    uint64_t bytes;
};

/* Lay out n tensors of the given sizes back to back, each at a multiple of
 * SEG_TENSOR_ALIGN: fills spans[i].offset and the geometry. -EOVERFLOW if
 * the sizes do not fit in 64 bits. */
int seg_layout(struct seg_span *spans, size_t n, struct seg_geometry *g);
/* Fill a header for g, swap_state TRAIN, generation 0. */
void seg_header_init(struct seg_header *h, const struct seg_geometry *g);
/* Check a header read from an object of actual_size bytes. 0, or -EINVAL
 * with a message naming the field in err. */
int seg_header_check(const struct seg_header *h, uint64_t actual_size, char *err, size_t errlen);
/* Check that every span lies inside params_bytes, is aligned, and overlaps
 * no other. names (may be NULL) label the message. 0 or -EINVAL. */
int seg_spans_check(const struct seg_span *spans, const char *const *names, size_t n,
                    uint64_t params_bytes, char *err, size_t errlen);

/* swap_state with the ordering of §3. */
uint32_t seg_swap_state_load(const struct seg_header *h);
void seg_swap_state_store(struct seg_header *h, uint32_t state);
void seg_swap_generation_bump(struct seg_header *h);
/* If the EMA weights are (partly) in the params, copy the stash back and
 * set TRAIN. base is the mapped segment. Returns true if it restored. */
bool seg_restore_training_weights(void *base);

#endif
