/*
 * json.c - msgpack to JSON for emactl.
 */
#include "json.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>

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
    case MSGPACK_OBJECT_FLOAT64:
        if (isfinite(o->via.f64))
            fprintf(fp, "%.17g", o->via.f64);
        else
            fputs("null", fp);
        break;
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
