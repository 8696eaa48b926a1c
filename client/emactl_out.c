/*
 * emactl_out.c - what emactl prints, the same way for every command: its
 * errors, sizes, JSON and tables.
 */
#include "emactl.h"
#include "json.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static void verror(const struct ctl *ctl, const char *code, const char *fmt, va_list ap)
{
    char msg[4096];

    vsnprintf(msg, sizeof(msg), fmt, ap);
    fprintf(stderr, "emactl: %s: ", code);
    /* The command's name, unless the message (the library's, or emad's) names it already. */
    if (ctl != NULL && ctl->cmd != NULL) {
        size_t n = strlen(ctl->cmd->name);
        if (!(strncmp(msg, ctl->cmd->name, n) == 0 && msg[n] == ':' && msg[n + 1] == ' '))
            fprintf(stderr, "%s: ", ctl->cmd->name);
    }
    fputs(msg, stderr);
    fputc('\n', stderr);
}

void ctl_error(const struct ctl *ctl, const char *code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror(ctl, code, fmt, ap);
    va_end(ap);
}

int ctl_usage_error(const struct ctl *ctl, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verror(ctl, "USAGE", fmt, ap);
    va_end(ap);
    if (ctl != NULL && ctl->cmd != NULL)
        fprintf(stderr, "usage: emactl %s%s%s\nTry 'emactl %s --help'.\n", ctl->cmd->name,
                ctl->cmd->args[0] ? " " : "", ctl->cmd->args, ctl->cmd->name);
    else
        fputs("Try 'emactl --help'.\n", stderr);
    return CTL_EUSAGE;
}

int ctl_remote_error(const struct ctl *ctl, const char *method, const struct emac_error *e)
{
    const char *msg = e->message;
    size_t n = strlen(method);

    /* emad and libemaclient begin a request's errors with the request's
     * name; the user typed a command, which verror() names instead. */
    if (strncmp(msg, method, n) == 0 && msg[n] == ':' && msg[n + 1] == ' ')
        msg += n + 2;
    ctl_error(ctl, e->code[0] ? e->code : "ERROR", "%s", msg);
    return -EREMOTEIO;
}

int ctl_library_error(const struct ctl *ctl, const struct emac_error *err, int rc)
{
    ctl_error(ctl, err->code, "%s", err->message);
    if (strcmp(err->code, EMAC_E_USAGE) == 0)
        return CTL_EUSAGE;
    return rc == CTL_EUSAGE ? -EBADMSG : rc;
}

void ctl_put_clean(FILE *fp, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f)
            fprintf(fp, "\\x%02x", ch);
        else
            fputc(ch, fp);
    }
}

void ctl_mib(uint64_t bytes, char *buf, size_t len)
{
    snprintf(buf, len, "%.1f MiB", (double)bytes / (1024.0 * 1024.0));
}

/* The value under key in the map o, or NULL. */
static const msgpack_object *map_get(const msgpack_object *o, const char *key)
{
    size_t n = strlen(key);

    if (o->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &o->via.map.ptr[i].val;
    }
    return NULL;
}

static int print_json(const struct ctl *ctl, const void *data, size_t len, const char *key,
                      long index, int indent)
{
    msgpack_unpacked u;
    const msgpack_object *o = NULL;
    size_t off = 0;
    int rc = 0;

    msgpack_unpacked_init(&u);
    if (msgpack_unpack_next(&u, data, len, &off) == MSGPACK_UNPACK_SUCCESS) {
        o = key != NULL ? map_get(&u.data, key) : &u.data;
        if (o != NULL && index >= 0)
            o = o->type == MSGPACK_OBJECT_ARRAY && (uint64_t)index < o->via.array.size
                    ? &o->via.array.ptr[index]
                    : NULL;
    }
    if (o == NULL) {
        ctl_error(ctl, "BADREPLY", "cannot decode emad's reply");
        rc = -EBADMSG;
    } else {
        json_print(stdout, o, indent);
        fputc('\n', stdout);
    }
    msgpack_unpacked_destroy(&u);
    return rc;
}

int ctl_print_json(const struct ctl *ctl, const void *data, size_t len, const char *key, long index)
{
    return print_json(ctl, data, len, key, index, 0);
}

int ctl_print_json_line(const struct ctl *ctl, const void *data, size_t len, const char *key,
                        long index)
{
    return print_json(ctl, data, len, key, index, -1);
}

/* ---- tables ---- */

void ctl_table_init(struct ctl_table *t, const struct ctl_column *cols, size_t ncols)
{
    memset(t, 0, sizeof(*t));
    t->cols = cols;
    t->ncols = ncols;
}

/* s with control characters escaped, as ctl_put_clean() prints it. */
static char *clean_dup(const char *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);

    if (mem == NULL)
        return NULL;
    ctl_put_clean(mem, s);
    if (fclose(mem) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

int ctl_table_add(struct ctl_table *t, const char *const cells[])
{
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 8;
        char **v = realloc(t->cells, cap * t->ncols * sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        t->cells = v;
        t->cap = cap;
    }
    char **row = t->cells + t->nrows * t->ncols;
    for (size_t i = 0; i < t->ncols; i++) {
        if ((row[i] = clean_dup(cells[i])) == NULL) {
            while (i-- > 0)
                free(row[i]);
            return -ENOMEM;
        }
    }
    t->nrows++;
    return 0;
}

static void print_row(const struct ctl_table *t, const size_t *width, const char *const *cells,
                      FILE *fp)
{
    for (size_t i = 0; i < t->ncols; i++) {
        size_t n = strlen(cells[i]);
        bool last = i + 1 == t->ncols;
        if (i > 0)
            fputs("  ", fp);
        if (t->cols[i].right)
            fprintf(fp, "%*s", (int)width[i], cells[i]);
        else if (last)
            fputs(cells[i], fp); /* padding here would only trail */
        else
            fprintf(fp, "%s%*s", cells[i], (int)(width[i] - n), "");
    }
    fputc('\n', fp);
}

void ctl_table_print(const struct ctl_table *t, FILE *fp)
{
    size_t width[CTL_TABLE_MAX_COLS];
    const char *heads[CTL_TABLE_MAX_COLS];

    if (t->ncols > CTL_TABLE_MAX_COLS)
        return;
    for (size_t i = 0; i < t->ncols; i++) {
        heads[i] = t->cols[i].head;
        width[i] = strlen(heads[i]);
        for (size_t r = 0; r < t->nrows; r++) {
            size_t n = strlen(t->cells[r * t->ncols + i]);
            if (n > width[i])
                width[i] = n;
        }
    }
    print_row(t, width, heads, fp);
    for (size_t r = 0; r < t->nrows; r++)
        print_row(t, width, (const char *const *)t->cells + r * t->ncols, fp);
}

void ctl_table_free(struct ctl_table *t)
{
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof(*t));
}
