/*
 * errbuf.c - error messages into caller buffers.
 */
#include "errbuf.h"

#include <stdarg.h>
#include <stdio.h>

int err_set(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return rc;
}
