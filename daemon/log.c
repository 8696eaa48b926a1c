/*
 * log.c - one line per message, with a UTC timestamp and the level.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static FILE *open_append(const char *path)
{
    FILE *fp = fopen(path, "ae");
    if (fp != NULL)
        setvbuf(fp, NULL, _IOLBF, 0);
    return fp;
}

int log_open(struct log *lg, const char *path, enum log_level level)
{
    memset(lg, 0, sizeof(*lg));
    lg->level = level;
    lg->fp = stderr;
    if (path == NULL || path[0] == '\0')
        return 0;
    if (strlen(path) >= sizeof(lg->path))
        return -ENAMETOOLONG;
    FILE *fp = open_append(path);
    if (fp == NULL)
        return -errno;
    lg->fp = fp;
    snprintf(lg->path, sizeof(lg->path), "%s", path);
    return 0;
}

int log_reopen(struct log *lg)
{
    if (lg->path[0] == '\0')
        return 0;
    FILE *fp = open_append(lg->path);
    if (fp == NULL) {
        int e = errno;
        log_error(lg, "cannot reopen log file %s: %s; still writing to the old file", lg->path,
                  strerror(e));
        return -e;
    }
    fclose(lg->fp);
    lg->fp = fp;
    return 0;
}

void log_close(struct log *lg)
{
    if (lg->fp != NULL && lg->fp != stderr)
        fclose(lg->fp);
    lg->fp = NULL;
}

void log_msg(struct log *lg, enum log_level level, const char *fmt, ...)
{
    struct timeval tv;
    struct tm tm;
    char stamp[32];
    va_list ap;

    if (lg == NULL || lg->fp == NULL || level > lg->level)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    /* One fprintf per part, but the stream is locked for the whole line so
     * that lines from other threads never interleave. */
    flockfile(lg->fp);
    fprintf(lg->fp, "%s.%03ldZ emad[%ld] %s: ", stamp, (long)tv.tv_usec / 1000, (long)getpid(),
            opts_log_level_name(level));
    va_start(ap, fmt);
    vfprintf(lg->fp, fmt, ap);
    va_end(ap);
    fputc('\n', lg->fp);
    fflush(lg->fp);
    funlockfile(lg->fp);
}
