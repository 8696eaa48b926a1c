/*
 * log.c - one line per message, with a UTC timestamp and the level.
 */
#include "log.h"
#include "names.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
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

/* Write msg with every C0 control and DEL as \xNN: whatever a caller let
 * through from a peer (a tensor name in an error, a file's text), one
 * message stays one line and cannot move the terminal's cursor. */
static void put_line(FILE *fp, const char *msg)
{
    static const char hex[] = "0123456789abcdef";

    for (const unsigned char *p = (const unsigned char *)msg; *p != '\0'; p++) {
        if (*p >= 0x20 && *p != 0x7f) {
            putc_unlocked(*p, fp);
            continue;
        }
        putc_unlocked('\\', fp);
        putc_unlocked('x', fp);
        putc_unlocked(hex[*p >> 4], fp);
        putc_unlocked(hex[*p & 15], fp);
    }
}

void log_msg(struct log *lg, enum log_level level, const char *fmt, ...)
{
    struct timeval tv;
    struct tm tm;
    char stamp[32];
    char buf[LOG_LINE_MAX];
    va_list ap;

    if (lg == NULL || lg->fp == NULL || level > lg->level)
        return;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof(buf))
        memcpy(buf + sizeof(buf) - 4, "...", 4);
    /* The stream is locked for the whole line so that lines from other
     * threads never interleave. */
    flockfile(lg->fp);
    fprintf(lg->fp, "%s.%03ldZ emad[%ld] %s: ", stamp, (long)tv.tv_usec / 1000, (long)getpid(),
            opts_log_level_name(level));
    put_line(lg->fp, n < 0 ? "(unprintable message)" : buf);
    fputc('\n', lg->fp);
    fflush(lg->fp);
    funlockfile(lg->fp);
}

/* Length of the well-formed UTF-8 character at s (at most n bytes), 0 if
 * the bytes there are not one or are a C1 control (U+0080 to U+009F, 0xc2
 * then 0x80..0x9f), which acts on terminals like a C0 one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = names_utf8_char((const char *)s, n);

    if (len == 2 && s[0] == 0xc2 && s[1] <= 0x9f)
        return 0;
    return len;
}

const char *log_escape(const char *s, size_t len, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;

    if (outlen == 0)
        return out;
    while (i < len) {
        size_t n = utf8_len(p + i, len - i);
        bool plain = n > 1 || (n == 1 && p[i] >= 0x20 && p[i] != 0x7f && p[i] != '"' &&
                               p[i] != '\\');
        size_t need = plain ? n : 4;
        /* Keep room for "..." unless this is the last piece. */
        size_t reserve = i + (plain ? n : 1) < len ? 3 : 0;

        if (o + need + reserve >= outlen) {
            if (o + 3 < outlen) {
                memcpy(out + o, "...", 3);
                o += 3;
            }
            break;
        }
        if (plain) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[p[i] >> 4];
            out[o++] = hex[p[i] & 15];
            i++;
        }
    }
    out[o] = '\0';
    return out;
}
