/*
 * json.c - msgpack to JSON for emactl.
 */
#include "json.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Append ".0" to text that reads as an integer ("7", "-0"), so that it
 * stays a float for a typed reader; buf holds n characters. */
static int keep_float(char *buf, size_t len, int n)
{
    if (strspn(buf, "-0123456789") != (size_t)n)
        return n;
    if ((size_t)n + 3 > len)
        return -ENOSPC;
    memcpy(buf + n, ".0", 3);
    return n + 2;
}

/* The fewest significant digits (at most max_digits, which tell every value
 * of the type apart) that read back as d (as a float when single), then the
 * notation a reader expects: positional while the decimal exponent is in
 * [-4, 16), as Python's repr() does, so that 3000.0 does not become 3e+03;
 * otherwise an exponent. Rounding to the same number of digits at the same
 * position gives the same digits in either notation. */
static int format_shortest(double d, int max_digits, bool single, char *buf, size_t len)
{
    char tmp[JSON_NUMBER_MAX]; /* the longest, -0.00012345678901234567, has 23 */
    int digits, n;

    if (!isfinite(d))
        return -EINVAL;
    for (digits = 1; digits < max_digits; digits++) {
        snprintf(tmp, sizeof(tmp), "%.*e", digits - 1, d);
        if (single ? strtof(tmp, NULL) == (float)d : strtod(tmp, NULL) == d)
            break;
    }
    n = snprintf(tmp, sizeof(tmp), "%.*e", digits - 1, d);
    int exp10 = atoi(strchr(tmp, 'e') + 1);
    if (exp10 >= -4 && exp10 < 16) {
        int frac = digits - 1 - exp10;
        n = snprintf(tmp, sizeof(tmp), "%.*f", frac > 0 ? frac : 0, d);
    }
    if (n < 0 || (size_t)n >= len)
        return -ENOSPC;
    memcpy(buf, tmp, (size_t)n + 1);
    return keep_float(buf, len, n);
}

int json_format_double(double d, char *buf, size_t len)
{
    return format_shortest(d, 17, false, buf, len);
}

int json_format_float(float f, char *buf, size_t len)
{
    return format_shortest((double)f, 9, true, buf, len);
}

static void json_string(FILE *fp, const char *s, size_t n)
{
    fputc('"', fp);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"': fputs("\\\"", fp); break;
        case '\\': fputs("\\\\", fp); break;
        case '\n': fputs("\\n", fp); break;
        case '\r': fputs("\\r", fp); break;
        case '\t': fputs("\\t", fp); break;
        default:
            if (ch < 0x20 || ch == 0x7f)
                fprintf(fp, "\\u%04x", ch);
            else
                fputc(ch, fp);
        }
    }
    fputc('"', fp);
}

static void newline(FILE *fp, int indent)
{
    if (indent < 0)
        return;
    fputc('\n', fp);
    for (int i = 0; i < indent; i++)
        fputs("  ", fp);
}

void json_print(FILE *fp, const msgpack_object *o, int indent)
{
    int inner = indent < 0 ? -1 : indent + 1;

    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        fputs("null", fp);
        break;
    case MSGPACK_OBJECT_BOOLEAN:
        fputs(o->via.boolean ? "true" : "false", fp);
        break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        fprintf(fp, "%" PRIu64, o->via.u64);
        break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        fprintf(fp, "%" PRId64, o->via.i64);
        break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        /* msgpack-c widens a float32 to via.f64 exactly: narrowing it back
         * is lossless, and its shortest text is a float's, not a double's. */
        char num[JSON_NUMBER_MAX];
        int n = o->type == MSGPACK_OBJECT_FLOAT32
                    ? json_format_float((float)o->via.f64, num, sizeof(num))
                    : json_format_double(o->via.f64, num, sizeof(num));
        fputs(n < 0 ? "null" : num, fp);
        break;
    }
    case MSGPACK_OBJECT_STR:
        json_string(fp, o->via.str.ptr, o->via.str.size);
        break;
    case MSGPACK_OBJECT_BIN:
        fputc('"', fp);
        for (uint32_t i = 0; i < o->via.bin.size; i++)
            fprintf(fp, "%02x", (unsigned char)o->via.bin.ptr[i]);
        fputc('"', fp);
        break;
    case MSGPACK_OBJECT_ARRAY:
        if (o->via.array.size == 0) {
            fputs("[]", fp);
            break;
        }
        fputc('[', fp);
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            newline(fp, inner);
            json_print(fp, &o->via.array.ptr[i], inner);
            if (i + 1 < o->via.array.size)
                fputc(',', fp);
        }
        newline(fp, indent);
        fputc(']', fp);
        break;
    case MSGPACK_OBJECT_MAP:
        if (o->via.map.size == 0) {
            fputs("{}", fp);
            break;
        }
        fputc('{', fp);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            newline(fp, inner);
            if (k->type == MSGPACK_OBJECT_STR)
                json_string(fp, k->via.str.ptr, k->via.str.size);
            else {
                /* JSON keys are strings: render other keys as their JSON text. */
                char *buf = NULL;
                size_t len = 0;
                FILE *mem = open_memstream(&buf, &len);
                if (mem != NULL) {
                    json_print(mem, k, -1);
                    fclose(mem);
                    json_string(fp, buf, len);
                    free(buf);
                }
            }
            fputs(indent < 0 ? ":" : ": ", fp);
            json_print(fp, &o->via.map.ptr[i].val, inner);
            if (i + 1 < o->via.map.size)
                fputc(',', fp);
        }
        newline(fp, indent);
        fputc('}', fp);
        break;
    default:
        fputs("null", fp);
        break;
    }
}
