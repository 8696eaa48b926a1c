/*
 * posthoc.c - post-hoc EMA reconstruction from snapshot files (docs/posthoc.md): the
 * coefficients of proto/phema.c applied to safetensors snapshots, streamed chunk by chunk so
 * that memory stays one output chunk and one input chunk whatever the model's size.
 */
#include "emaclient.h"
#include "emaclient_int.h"

#include "durable.h"
#include "errbuf.h"
#include "half.h"
#include "names.h"
#include "phema.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Elements per chunk: 512 KiB of double accumulator, small enough for any machine, large
 * enough that a pread per snapshot per chunk costs little beside the data. */
#define POSTHOC_CHUNK 65536

/* One snapshot file. */
struct snap {
    const char *path;
    struct st_file f;
    bool open;
    double gamma;
    uint64_t batch;
    double coef;
};

int emac_phema_gamma(double sigma_rel, double *gamma)
{
    if (gamma == NULL)
        return -EINVAL;
    return phema_gamma(sigma_rel, gamma);
}

int emac_phema_sigma_rel(double gamma, double *sigma_rel)
{
    if (sigma_rel == NULL)
        return -EINVAL;
    return phema_sigma_rel(gamma, sigma_rel);
}

int emac_phema_coefficients(size_t n, const double *gamma, const double *batch,
                            double target_gamma, double target_batch, double *coef,
                            struct emac_error *err)
{
    char msg[256];
    int rc;

    if (n > 0 && (gamma == NULL || batch == NULL || coef == NULL))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "emac_phema_coefficients: NULL array");
    rc = phema_solve(n, gamma, batch, target_gamma, target_batch, coef, NULL, msg, sizeof(msg));
    if (rc < 0)
        return client_set_err(err, rc, rc == -ENOMEM ? EMAC_E_SYSTEM : EMAC_E_USAGE, "%s", msg);
    return 0;
}

/* A metadata value as a number: the whole string, finite. */
static bool parse_double(const char *s, double *out)
{
    char *end;

    if (s == NULL || *s == '\0')
        return false;
    errno = 0;
    *out = strtod(s, &end);
    return *end == '\0' && errno == 0 && isfinite(*out);
}

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;

    if (s == NULL || *s < '0' || *s > '9')
        return false;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    *out = v;
    return *end == '\0' && errno == 0;
}

/* Open snapshot s and read its gamma and batch. */
static int snap_open(struct snap *s, struct emac_error *err)
{
    char msg[512];
    double sr, g2;
    int rc = st_open(&s->f, s->path, msg, sizeof(msg));

    if (rc < 0)
        return client_set_err(err, rc, rc == -EINVAL ? EMAC_E_BADFILE : EMAC_E_SYSTEM, "%s%s",
                              msg, rc == -EMFILE ? " (one descriptor per snapshot: raise "
                                                   "the open-file limit, ulimit -n)" : "");
    s->open = true;
    const char *b = st_meta_get(&s->f.h, "batch");
    const char *g = st_meta_get(&s->f.h, "gamma");
    const char *r = st_meta_get(&s->f.h, "sigma_rel");
    if (!parse_u64(b, &s->batch) || s->batch == 0)
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: no metadata \"batch\" (a whole number from 1) saying when "
                              "the snapshot was taken; not a snapshot of emad?", s->path);
    if (g == NULL && r == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: no metadata \"gamma\" or \"sigma_rel\": post-hoc EMA needs "
                              "snapshots of power-function (EDM2) profiles", s->path);
    if (g != NULL && (!parse_double(g, &s->gamma) || phema_sigma_rel(s->gamma, &g2) < 0))
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: metadata gamma \"%.40s\" is not a number > 0", s->path, g);
    if (r != NULL && (!parse_double(r, &sr) || phema_gamma(sr, &g2) < 0))
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: metadata sigma_rel \"%.40s\" is not a number in (0, %.5f)",
                              s->path, r, PHEMA_SIGMA_REL_MAX);
    if (g == NULL)
        s->gamma = g2;
    else if (r != NULL && fabs(g2 - s->gamma) > 1e-6 * s->gamma)
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s: metadata gamma %s and sigma_rel %s disagree (sigma_rel %s is "
                              "gamma %.9g)", s->path, g, r, r, g2);
    return 0;
}

static bool same_shape(const struct st_tensor *a, const struct st_tensor *b)
{
    return a->rank == b->rank && memcmp(a->shape, b->shape, a->rank * sizeof(a->shape[0])) == 0;
}

/* Every used snapshot holds the reference's tensors, same shapes, float where it is float. */
static int check_same_tensors(const struct snap *ref, const struct snap *s,
                              struct emac_error *err)
{
    if (s->f.h.ntensors != ref->f.h.ntensors)
        return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                              "%s has %zu tensors, %s has %zu: snapshots of different models?",
                              s->path, s->f.h.ntensors, ref->path, ref->f.h.ntensors);
    for (size_t k = 0; k < ref->f.h.ntensors; k++) {
        const struct st_tensor *r = &ref->f.h.tensors[k];
        const struct st_tensor *t = st_find(&s->f.h, r->name);
        if (t == NULL)
            return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                  "%s has no tensor \"%.200s\" (%s has)", s->path, r->name,
                                  ref->path);
        if (!same_shape(r, t))
            return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                  "tensor \"%.200s\" has another shape in %s than in %s",
                                  r->name, s->path, ref->path);
        if (dtype_is_float(r->dtype) != dtype_is_float(t->dtype) ||
            (!dtype_is_float(r->dtype) && r->dtype != t->dtype))
            return client_set_err(err, -EINVAL, EMAC_E_BADFILE,
                                  "tensor \"%.200s\" is %s in %s and %s in %s", r->name,
                                  st_dtype_name(t->dtype), s->path, st_dtype_name(r->dtype),
                                  ref->path);
    }
    return 0;
}

/* Widen n elements of dtype dt at in to double and add coef times them to acc. */
static void accumulate(double *acc, const void *in, enum dtype dt, size_t n, double coef)
{
    const unsigned char *p = in;

    for (size_t i = 0; i < n; i++) {
        double v;
        uint16_t h;
        float f;
        switch (dt) {
        case DTYPE_F64:
            memcpy(&v, p + 8 * i, 8);
            break;
        case DTYPE_F32:
            memcpy(&f, p + 4 * i, 4);
            v = f;
            break;
        case DTYPE_BF16:
            memcpy(&h, p + 2 * i, 2);
            v = half_bf16_to_f32(h);
            break;
        default: /* DTYPE_F16: the only float left (check_same_tensors) */
            memcpy(&h, p + 2 * i, 2);
            v = half_f16_to_f32(h);
            break;
        }
        acc[i] += coef * v;
    }
}

/* Round acc to dt (f32, bf16 or f16) into out. The 16-bit formats go through f32, as torch's
 * .to() of a float64 tensor does, so that a reader comparing with torch sees the same bits. */
static void round_out(void *out, const double *acc, enum dtype dt, size_t n)
{
    unsigned char *p = out;

    for (size_t i = 0; i < n; i++) {
        float f = (float)acc[i];
        uint16_t h;
        if (dt == DTYPE_F32) {
            memcpy(p + 4 * i, &f, 4);
            continue;
        }
        h = dt == DTYPE_BF16 ? half_f32_to_bf16(f) : half_f32_to_f16(f);
        memcpy(p + 2 * i, &h, 2);
    }
}

/* Append text to a growing, NUL-terminated buffer. */
static int cat(char **b, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);

    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*b, c);
        if (p == NULL)
            return -ENOMEM;
        *b = p;
        *cap = c;
    }
    memcpy(*b + *len, s, n + 1);
    *len += n;
    return 0;
}

/* The output's metadata values that list the snapshots: JSON arrays, as strings. */
static int list_snapshots(struct snap *used, size_t n, char **names, char **batches,
                          char **coefs)
{
    size_t l1 = 0, c1 = 0, l2 = 0, c2 = 0, l3 = 0, c3 = 0;
    char num[64];
    int rc = 0;

    rc = rc ?: cat(names, &l1, &c1, "[");
    rc = rc ?: cat(batches, &l2, &c2, "[");
    rc = rc ?: cat(coefs, &l3, &c3, "[");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        const char *base = strrchr(used[i].path, '/');
        base = base ? base + 1 : used[i].path;
        /* A name that is not UTF-8 cannot go into a JSON string: its bytes become '?'. */
        char *clean = strdup(base);
        if (clean == NULL)
            return -ENOMEM;
        for (size_t k = 0; clean[k] != '\0';) {
            size_t c = names_utf8_char(clean + k, strlen(clean + k));
            if (c == 0) {
                clean[k++] = '?';
                continue;
            }
            k += c;
        }
        rc = cat(names, &l1, &c1, i ? ", \"" : "\"");
        /* A JSON string inside the array: quotes and backslashes of the name escaped. */
        rc = rc ?: st_json_escape(names, &l1, &c1, clean, strlen(clean));
        free(clean);
        rc = rc ?: cat(names, &l1, &c1, "\"");
        snprintf(num, sizeof(num), "%s%" PRIu64, i ? ", " : "", used[i].batch);
        rc = rc ?: cat(batches, &l2, &c2, num);
        snprintf(num, sizeof(num), "%s%.17g", i ? ", " : "", used[i].coef);
        rc = rc ?: cat(coefs, &l3, &c3, num);
    }
    rc = rc ?: cat(names, &l1, &c1, "]");
    rc = rc ?: cat(batches, &l2, &c2, "]");
    rc = rc ?: cat(coefs, &l3, &c3, "]");
    return rc;
}

/* Write the output: tensors of ref's table, each chunk summed over the used snapshots. */
static int write_output(struct snap *used, size_t nused, const struct snap *ref,
                        enum dtype out_dt, const struct st_meta *meta, size_t nmeta,
                        const char *out_path, struct emac_error *err)
{
    const struct st_header *rh = &ref->f.h;
    struct st_tensor *table = NULL;
    double *acc = NULL;
    unsigned char *in = NULL, *out = NULL;
    struct st_writer w;
    struct durable d;
    char msg[512];
    int rc;

    table = calloc(rh->ntensors + 1, sizeof(*table));
    acc = malloc(POSTHOC_CHUNK * sizeof(*acc));
    in = malloc(POSTHOC_CHUNK * 8);
    out = malloc(POSTHOC_CHUNK * 8);
    if (table == NULL || acc == NULL || in == NULL || out == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    for (size_t k = 0; k < rh->ntensors; k++) {
        table[k] = rh->tensors[k];
        if (dtype_is_float(table[k].dtype))
            table[k].dtype = out_dt;
    }
    rc = durable_open(&d, AT_FDCWD, out_path, 0644, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
        goto out;
    }
    rc = st_writer_begin(&w, d.fd, table, rh->ntensors, meta, nmeta, msg, sizeof(msg));
    for (size_t k = 0; rc == 0 && k < rh->ntensors; k++) {
        const struct st_tensor *rt = &rh->tensors[k];
        uint64_t numel;
        st_numel(rt, &numel);
        for (uint64_t off = 0; rc == 0 && off < numel; off += POSTHOC_CHUNK) {
            size_t cnt = numel - off < POSTHOC_CHUNK ? (size_t)(numel - off) : POSTHOC_CHUNK;
            if (!dtype_is_float(rt->dtype)) {
                /* Integer tensors are copied, not averaged (as emad's shadows do): from the
                 * latest snapshot. */
                size_t es = dtype_size(rt->dtype);
                rc = st_read(&ref->f, rt, off * es, in, cnt * es, msg, sizeof(msg));
                rc = rc ?: st_writer_write(&w, in, cnt * es, msg, sizeof(msg));
                continue;
            }
            memset(acc, 0, cnt * sizeof(*acc));
            for (size_t i = 0; rc == 0 && i < nused; i++) {
                if (used[i].coef == 0.0) /* dropped as dependent: nothing to read */
                    continue;
                const struct st_tensor *t = st_find(&used[i].f.h, rt->name);
                size_t es = dtype_size(t->dtype);
                rc = st_read(&used[i].f, t, off * es, in, cnt * es, msg, sizeof(msg));
                if (rc == 0)
                    accumulate(acc, in, t->dtype, cnt, used[i].coef);
                else
                    rc = client_set_err(err, rc, EMAC_E_SYSTEM, "%s: %s", used[i].path, msg);
            }
            if (rc < 0)
                break;
            round_out(out, acc, out_dt, cnt);
            rc = st_writer_write(&w, out, cnt * dtype_size(out_dt), msg, sizeof(msg));
        }
    }
    rc = rc ?: st_writer_finish(&w, msg, sizeof(msg));
    if (rc < 0) {
        if (err == NULL || err->code[0] == '\0')
            client_set_err(err, rc, EMAC_E_SYSTEM, "%s: %s", out_path, msg);
        durable_abort(&d);
        goto out;
    }
    rc = durable_commit(&d, msg, sizeof(msg));
    if (rc < 0)
        client_set_err(err, rc, EMAC_E_SYSTEM, "%s", msg);
out:
    free(table);
    free(acc);
    free(in);
    free(out);
    return rc;
}

int emac_posthoc_files(const char *const *paths, size_t n, double sigma_rel, uint64_t batch,
                       const char *out_path, const char *out_dtype, struct emac_error *err)
{
    struct snap *s = NULL, *used = NULL;
    double *g = NULL, *t = NULL, *x = NULL, gamma;
    char *names = NULL, *batches = NULL, *coefs = NULL;
    enum dtype out_dt = DTYPE_F32;
    struct phema_fit fit;
    size_t nused = 0, ref = 0;
    char msg[512];
    int rc = 0;

    if (err != NULL)
        err->code[0] = '\0';
    if (paths == NULL || n == 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "posthoc: no snapshot files given");
    if (n > PHEMA_SNAPSHOTS_MAX)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "posthoc: %zu snapshot files, more than %d", n,
                              PHEMA_SNAPSHOTS_MAX);
    if (out_path == NULL)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE, "posthoc: no output path");
    if (out_dtype != NULL &&
        (dtype_from_name(out_dtype, strlen(out_dtype), &out_dt) < 0 ||
         (out_dt != DTYPE_F32 && out_dt != DTYPE_BF16 && out_dt != DTYPE_F16)))
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "posthoc: output dtype \"%.20s\" is not f32, bf16 or f16",
                              out_dtype);
    if (phema_gamma(sigma_rel, &gamma) < 0)
        return client_set_err(err, -EINVAL, EMAC_E_USAGE,
                              "posthoc: sigma_rel %g is outside (0, %.5f)", sigma_rel,
                              PHEMA_SIGMA_REL_MAX);
    s = calloc(n, sizeof(*s));
    used = calloc(n, sizeof(*used));
    g = calloc(n, sizeof(*g));
    t = calloc(n, sizeof(*t));
    x = calloc(n, sizeof(*x));
    if (s == NULL || used == NULL || g == NULL || t == NULL || x == NULL) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    uint64_t latest = 0, earliest = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        if (paths[i] == NULL) {
            rc = client_set_err(err, -EINVAL, EMAC_E_USAGE, "posthoc: path %zu is NULL", i);
            goto out;
        }
        s[i].path = paths[i];
        rc = snap_open(&s[i], err);
        if (rc < 0)
            goto out;
        if (batch != 0 && s[i].batch > batch) { /* after the target: not needed */
            st_close(&s[i].f);
            s[i].open = false;
        }
        latest = s[i].batch > latest ? s[i].batch : latest;
        earliest = s[i].batch < earliest ? s[i].batch : earliest;
    }
    if (batch == 0)
        batch = latest;
    for (size_t i = 0; i < n; i++)
        if (s[i].batch <= batch) {
            if (nused == 0 || s[i].batch > used[ref].batch)
                ref = nused;
            used[nused++] = s[i];
        }
    if (nused == 0) {
        rc = client_set_err(err, -EINVAL, EMAC_E_USAGE,
                            "posthoc: no snapshot at batch %" PRIu64 " or before (the earliest "
                            "is at batch %" PRIu64 ")", batch, earliest);
        goto out;
    }
    for (size_t i = 0; i < nused; i++) {
        rc = check_same_tensors(&used[ref], &used[i], err);
        if (rc < 0)
            goto out;
        g[i] = used[i].gamma;
        t[i] = (double)used[i].batch;
    }
    rc = phema_solve(nused, g, t, gamma, (double)batch, x, &fit, msg, sizeof(msg));
    if (rc < 0) {
        client_set_err(err, rc, rc == -ENOMEM ? EMAC_E_SYSTEM : EMAC_E_USAGE, "posthoc: %s",
                       msg);
        goto out;
    }
    for (size_t i = 0; i < nused; i++)
        used[i].coef = x[i];
    if (list_snapshots(used, nused, &names, &batches, &coefs) < 0) {
        rc = client_set_err(err, -ENOMEM, EMAC_E_SYSTEM, "out of memory");
        goto out;
    }
    char v_sigma[32], v_gamma[32], v_batch[32], v_res[32], v_kept[32];
    snprintf(v_sigma, sizeof(v_sigma), "%.17g", sigma_rel);
    snprintf(v_gamma, sizeof(v_gamma), "%.17g", gamma);
    snprintf(v_batch, sizeof(v_batch), "%" PRIu64, batch);
    snprintf(v_res, sizeof(v_res), "%.6g", fit.residual);
    snprintf(v_kept, sizeof(v_kept), "%zu", fit.kept);
    const struct st_meta meta[] = {
        {"format", "pt"},
        {"posthoc", "emad"},
        {"sigma_rel", v_sigma},
        {"gamma", v_gamma},
        {"batch", v_batch},
        {"snapshots", names},
        {"snapshot_batches", batches},
        {"coefficients", coefs},
        {"snapshots_kept", v_kept},
        {"residual", v_res},
    };
    rc = write_output(used, nused, &used[ref], out_dt, meta, sizeof(meta) / sizeof(meta[0]),
                      out_path, err);
out:
    for (size_t i = 0; s != NULL && i < n; i++)
        if (s[i].open)
            st_close(&s[i].f);
    free(s);
    free(used);
    free(g);
    free(t);
    free(x);
    free(names);
    free(batches);
    free(coefs);
    return rc;
}
