/*
 * peer.c - the formatted error response (peer.h).
 */
#include "peer.h"

#include <stdarg.h>
#include <stdio.h>

void peer_fail(struct peer *p, uint32_t msgid, const char *code, const char *fmt, ...)
{
    char text[PEER_TEXT_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    p->ops->fail(p, msgid, code, text);
}
