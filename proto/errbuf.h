/*
 * errbuf.h - the one way emad's modules report a failure in words: a
 * message written into the caller's buffer, and an error code returned.
 */
#ifndef EMAD_ERRBUF_H
#define EMAD_ERRBUF_H

#include <stddef.h>

/* Format the message into err (when err is not NULL and errlen > 0) and
 * return rc, so that a failing path reads `return err_set(err, errlen,
 * -EINVAL, "field: ...", ...);`. */
int err_set(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
