/*
 * jtree.h - a strict JSON reader (RFC 8259) into a flat tree of nodes, for the documents emad
 * reads from files others wrote (the group checkpoint manifest, docs/scaleout.md). Bounded:
 * the caller gives the most nodes and the deepest nesting it accepts; duplicate keys in an
 * object, a NUL (\u0000) in a string, lone surrogates and invalid UTF-8 are refused. Numbers
 * are checked against the grammar and kept as their text (jt_u64 reads whole numbers).
 *
 * Objects hold their members as pairs of nodes, the key (a string) then its value:
 *
 *   for (uint32_t k = n->first, i = 0; i < n->count; i++, k = d->nodes[d->nodes[k].next].next)
 *       key = &d->nodes[k], value = &d->nodes[key->next];
 */
#ifndef EMAD_JTREE_H
#define EMAD_JTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum jt_type { JT_NULL, JT_FALSE, JT_TRUE, JT_NUMBER, JT_STRING, JT_ARRAY, JT_OBJECT };

/* One value (or an object's key). Indices are into jt_doc.nodes; node 0 is the root. */
struct jt_node {
    uint8_t type;    /* enum jt_type */
    uint32_t count;  /* ARRAY: elements; OBJECT: members */
    uint32_t first;  /* ARRAY, OBJECT: the first child (0: none) */
    uint32_t next;   /* the next sibling (0: none; the root is nobody's sibling) */
    uint32_t begin;  /* the value's text: bytes [begin, end) of the source */
    uint32_t end;
    uint32_t str;    /* STRING: offset of the decoded, NUL-terminated text in jt_doc.pool */
};

struct jt_doc {
    const char *src;       /* the source (not owned; must outlive the doc) */
    struct jt_node *nodes;
    uint32_t n, cap;
    char *pool;            /* decoded strings */
};

/* Parse len bytes (at most 2^31) into d; whitespace only around the one value. At most
 * max_nodes nodes and max_depth levels of nesting. 0, or -EINVAL / -E2BIG / -ENOMEM with a
 * message naming the byte offset; d is then empty. */
int jt_parse(const char *src, size_t len, uint32_t max_nodes, unsigned max_depth,
             struct jt_doc *d, char *err, size_t errlen);
void jt_free(struct jt_doc *d);

/* The decoded text of a STRING node. */
const char *jt_str(const struct jt_doc *d, const struct jt_node *n);
/* The value of key in OBJECT node obj, or NULL. */
const struct jt_node *jt_get(const struct jt_doc *d, const struct jt_node *obj, const char *key);
/* The sibling after n, or NULL. */
const struct jt_node *jt_next(const struct jt_doc *d, const struct jt_node *n);
/* The first child of n (an array's first element, an object's first key), or NULL. */
const struct jt_node *jt_first(const struct jt_doc *d, const struct jt_node *n);
/* true and *out for a NUMBER that is a whole number from 0 to 2^64 - 1 written without sign,
 * fraction or exponent. */
bool jt_u64(const struct jt_doc *d, const struct jt_node *n, uint64_t *out);

#endif
