/*
 * plan.c - tensors in chunks: the units of data work handed to the pool.
 */
#include "session_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void plan_free(struct plan *p)
{
    free(p->pieces);
    free(p->first);
    memset(p, 0, sizeof(*p));
}

int plan_build(struct plan *p, const struct tensor *t, size_t n, uint64_t chunk_elems)
{
    size_t cap_p = n + 16, cap_c = 16;

    memset(p, 0, sizeof(*p));
    p->pieces = malloc(cap_p * sizeof(*p->pieces));
    p->first = malloc(cap_c * sizeof(*p->first));
    if (p->pieces == NULL || p->first == NULL)
        goto err_nomem;
    uint64_t fill = chunk_elems; /* forces a new chunk at the first piece */
    for (size_t i = 0; i < n; i++) {
        uint64_t start = 0;
        while (start < t[i].numel) {
            if (fill >= chunk_elems) {
                if (p->nchunks + 2 > cap_c) {
                    size_t *nf = realloc(p->first, 2 * cap_c * sizeof(*nf));
                    if (nf == NULL)
                        goto err_nomem;
                    p->first = nf;
                    cap_c *= 2;
                }
                p->first[p->nchunks++] = p->npieces;
                fill = 0;
            }
            uint64_t count = t[i].numel - start;
            if (count > chunk_elems - fill)
                count = chunk_elems - fill;
            if (p->npieces == cap_p) {
                struct piece *np = realloc(p->pieces, 2 * cap_p * sizeof(*np));
                if (np == NULL)
                    goto err_nomem;
                p->pieces = np;
                cap_p *= 2;
            }
            p->pieces[p->npieces++] = (struct piece){(uint32_t)i, start, count};
            p->param_bytes += count * dtype_size(t[i].dtype);
            p->shadow_bytes += count * dtype_size(t[i].shadow_dtype);
            start += count;
            /* Each tensor costs at least a little, so a million empty or tiny
             * tensors still spread over several chunks. */
            fill += count > 64 ? count : 64;
        }
    }
    p->first[p->nchunks] = p->npieces;
    return 0;

err_nomem:
    plan_free(p);
    return -ENOMEM;
}
