/*
 * test_shards.c - group checkpoints on disk (client/shards.c, docs/scaleout.md): tensors split
 * by rows, columns and blocks over 2 and 4 ranks, written as shard files and a manifest;
 * consolidated bit for bit through buffers smaller than a tensor; blocks read for a job resumed
 * with another world size; and every malformed checkpoint refused with its own message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emacheckpoint.h"
#include "half.h"
#include "safetensors.h"
#include "shards.h"
#include "scratch.h"

/* ---- The model: four tensors, each full in memory, split per rank ---- */

#define NT 4
static const char *const tnames[NT] = {"layer.w", "layer.v", "conv.k", "step"};
static const char *const tdtypes[NT] = {"f32", "bf16", "f32", "i64"};
static const unsigned tndim[NT] = {2, 2, 3, 0};
static const uint64_t tshape[NT][3] = {{7, 10}, {6, 9}, {4, 6, 5}, {0}};
static void *full[NT];

static size_t esize(int t)
{
    return strcmp(tdtypes[t], "bf16") == 0 ? 2 : strcmp(tdtypes[t], "f32") == 0 ? 4 : 8;
}

static uint64_t numel(const uint64_t *s, unsigned n)
{
    uint64_t v = 1;
    for (unsigned d = 0; d < n; d++)
        v *= s[d];
    return v;
}

static void make_full(void)
{
    for (int t = 0; t < NT; t++) {
        uint64_t n = numel(tshape[t], tndim[t]);
        full[t] = malloc(n * esize(t));
        for (uint64_t i = 0; i < n; i++) {
            float f = (float)i * 0.3712f - 5.0f + (float)t / 7.0f;
            if (esize(t) == 4)
                memcpy((char *)full[t] + 4 * i, &f, 4);
            else if (esize(t) == 2) {
                uint16_t h = half_f32_to_bf16(f);
                memcpy((char *)full[t] + 2 * i, &h, 2);
            } else {
                int64_t v = 1234567 + (int64_t)i;
                memcpy((char *)full[t] + 8 * i, &v, 8);
            }
        }
    }
}

/* The block (off, shape) of the row-major tensor src (global shape g) into dst, element by
 * element: the reference the streaming reader is checked against. */
static void extract(const void *src, size_t es, unsigned n, const uint64_t *g,
                    const uint64_t *off, const uint64_t *shape, void *dst)
{
    uint64_t idx[8] = {0}, cnt = numel(shape, n);

    for (uint64_t e = 0; e < cnt; e++) {
        uint64_t at = 0;
        for (unsigned d = 0; d < n; d++)
            at = at * g[d] + off[d] + idx[d];
        memcpy((char *)dst + e * es, (const char *)src + at * es, es);
        for (int d = (int)n - 1; d >= 0; d--) {
            if (++idx[d] < shape[d])
                break;
            idx[d] = 0;
        }
    }
}

/* Part p of q of a dimension of size g: FSDP's split, ceil(g / q) each, the last ones short. */
static void part(uint64_t g, unsigned p, unsigned q, uint64_t *off, uint64_t *len)
{
    uint64_t each = (g + q - 1) / q;
    *off = each * p < g ? each * p : g;
    *len = *off + each <= g ? each : g - *off;
}

/* Rank r's slice of tensor t in a world of w: layer.w by rows, layer.v by columns, conv.k in
 * blocks (2 x 2 over 4 ranks, 2 x 1 over 2), step replicated. */
static void slice_of(int t, unsigned r, unsigned w, uint64_t *off, uint64_t *shape)
{
    for (unsigned d = 0; d < tndim[t]; d++) {
        off[d] = 0;
        shape[d] = tshape[t][d];
    }
    if (t == 0)
        part(tshape[t][0], r, w, &off[0], &shape[0]);
    else if (t == 1)
        part(tshape[t][1], r, w, &off[1], &shape[1]);
    else if (t == 2 && w == 4) {
        part(tshape[t][0], r / 2, 2, &off[0], &shape[0]);
        part(tshape[t][1], r % 2, 2, &off[1], &shape[1]);
    } else if (t == 2) {
        part(tshape[t][0], r, w, &off[0], &shape[0]);
    }
}

/* Write the checkpoint of the model at batch over w ranks into tmpdir/dir; rank `odd` (if below
 * w) writes its shard file at batch odd_batch instead. */
static void write_ckpt(const char *dir, unsigned w, uint64_t batch, unsigned odd,
                       uint64_t odd_batch)
{
    struct emac_ckpt_slice sl[4][NT];
    uint64_t offs[4][NT][3], shapes[4][NT][3];
    void *data[4][NT];
    struct emac_ckpt_shard sh[4];
    uint32_t ranks[4];
    char files[4][32], p[512];
    struct emac_error err;

    mkdir(path_in(p, sizeof(p), dir, ""), 0755);
    for (unsigned r = 0; r < w; r++) {
        for (int t = 0; t < NT; t++) {
            slice_of(t, r, w, offs[r][t], shapes[r][t]);
            data[r][t] = malloc(numel(shapes[r][t], tndim[t]) * esize(t) + 1);
            extract(full[t], esize(t), tndim[t], tshape[t], offs[r][t], shapes[r][t],
                    data[r][t]);
            sl[r][t] = (struct emac_ckpt_slice){tnames[t], tdtypes[t], tndim[t], tshape[t],
                                                offs[r][t], shapes[r][t], data[r][t]};
        }
        ranks[r] = r;
        snprintf(files[r], sizeof(files[r]), "rank-%05u.safetensors", r);
        sh[r] = (struct emac_ckpt_shard){files[r], &ranks[r], 1, sl[r], NT};
        struct emac_ckpt_group g = {"llm", r == odd ? odd_batch : batch, 3, w};
        assert_int_equal(emac_checkpoint_write_shard(path_in(p, sizeof(p), dir, files[r]), &g,
                                                     &sh[r], &err), 0);
    }
    struct emac_ckpt_group g = {"llm", batch, 3, w};
    int rc = emac_checkpoint_write_manifest(path_in(p, sizeof(p), dir, EMAC_CKPT_MANIFEST), &g,
                                            "{\"half_life\": 1000, \"dtype\": \"f32\"}", sh, w,
                                            &err);
    if (rc != 0)
        fail_msg("%s", err.message);
    for (unsigned r = 0; r < w; r++)
        for (int t = 0; t < NT; t++)
            free(data[r][t]);
}

/* The consolidated file at path against the full tensors (as out_dtype: NULL, or "bf16"). */
static void check_consolidated(const char *path, const char *out_dtype)
{
    struct st_file f;
    char msg[512];

    assert_int_equal(st_open(&f, path, msg, sizeof(msg)), 0);
    assert_int_equal(f.h.ntensors, NT);
    assert_string_equal(st_meta_get(&f.h, "batch"), "100");
    assert_string_equal(st_meta_get(&f.h, "emad_config"),
                        "{\"half_life\": 1000, \"dtype\": \"f32\"}");
    for (int t = 0; t < NT; t++) {
        const struct st_tensor *st = st_find(&f.h, tnames[t]);
        uint64_t n = numel(tshape[t], tndim[t]);
        assert_non_null(st);
        assert_int_equal(st->rank, tndim[t]);
        for (unsigned d = 0; d < tndim[t]; d++)
            assert_int_equal(st->shape[d], tshape[t][d]);
        void *got = malloc(n * 8), *want = malloc(n * 8);
        size_t es = esize(t);
        memcpy(want, full[t], n * es);
        if (out_dtype != NULL && (t == 0 || t == 2)) {
            for (uint64_t i = 0; i < n; i++) { /* f32 -> bf16, as torch rounds */
                float v;
                memcpy(&v, (char *)full[t] + 4 * i, 4);
                uint16_t h = half_f32_to_bf16(v);
                memcpy((char *)want + 2 * i, &h, 2);
            }
            es = 2;
        }
        assert_int_equal(st->end - st->begin, n * es);
        assert_int_equal(st_read(&f, st, 0, got, n * es, msg, sizeof(msg)), 0);
        assert_memory_equal(got, want, n * es);
        free(got);
        free(want);
    }
    st_close(&f);
}

/* ---- Consolidation ---- */

static void test_consolidate_four_ranks_bit_exact_through_a_small_buffer(void **state)
{
    struct shards_stats st;
    struct emac_error err;
    char m[512], out[512];
    (void)state;

    write_ckpt("w4", 4, 100, 99, 0);
    path_in(m, sizeof(m), "w4", EMAC_CKPT_MANIFEST);
    path_in(out, sizeof(out), "", "w4.safetensors");
    /* 24 bytes: six f32 elements, fewer than one row of layer.w (10): windows inside a row. */
    int rc = shards_consolidate(m, out, NULL, NULL, 24, &st, &err);
    if (rc != 0)
        fail_msg("%s", err.message);
    assert_int_equal(st.buf_bytes, 48);
    assert_true(st.windows > 20);
    check_consolidated(out, NULL);
    /* The same with the default buffer, through the public call. */
    assert_int_equal(emac_checkpoint_consolidate(m, out, NULL, &err), 0);
    check_consolidated(out, NULL);
}

static void test_consolidate_two_ranks_to_bf16(void **state)
{
    struct shards_stats st;
    struct emac_error err;
    char m[512], out[512];
    (void)state;

    write_ckpt("w2", 2, 100, 99, 0);
    path_in(m, sizeof(m), "w2", EMAC_CKPT_MANIFEST);
    path_in(out, sizeof(out), "", "w2.safetensors");
    /* 64 bytes: whole rows of conv.k's last dimension, not of its first. */
    assert_int_equal(shards_consolidate(m, out, "bf16", NULL, 64, &st, &err), 0);
    assert_int_equal(st.buf_bytes, 128);
    check_consolidated(out, "bf16");
}

/* ---- Resharding: the new slices of a job resumed with another world size ---- */

static void check_block(emac_checkpoint *ck, int t, const uint64_t *off, const uint64_t *shape)
{
    size_t es = esize(t);
    uint64_t n = numel(shape, tndim[t]);
    void *got = malloc(n * es + 1), *want = malloc(n * es + 1);
    struct emac_error err;

    extract(full[t], es, tndim[t], tshape[t], off, shape, want);
    int rc = emac_checkpoint_read(ck, tnames[t], tndim[t], off, shape, got, n * es, NULL, &err);
    if (rc != 0)
        fail_msg("%s", err.message);
    assert_memory_equal(got, want, n * es);
    free(got);
    free(want);
}

static void reshard(const char *dir, unsigned from, unsigned to)
{
    emac_checkpoint *ck;
    struct emac_error err;
    char m[512];
    uint64_t off[3], shape[3];

    write_ckpt(dir, from, 100, 99, 0);
    assert_int_equal(emac_checkpoint_open(path_in(m, sizeof(m), dir, EMAC_CKPT_MANIFEST), &ck,
                                          &err), 0);
    assert_int_equal(emac_checkpoint_group(ck)->world_size, from);
    assert_int_equal(emac_checkpoint_group(ck)->batch, 100);
    for (unsigned r = 0; r < to; r++)
        for (int t = 0; t < NT; t++) {
            slice_of(t, r, to, off, shape);
            check_block(ck, t, off, shape);
        }
    /* Arbitrary rectangles of the 2-D tensors (rows split, columns split). */
    for (int t = 0; t < 2; t++)
        for (uint64_t a = 0; a < tshape[t][0]; a++)
            for (uint64_t b = a + 1; b <= tshape[t][0]; b++)
                for (uint64_t c = 0; c < tshape[t][1]; c += 2)
                    for (uint64_t e = c + 1; e <= tshape[t][1]; e += 3) {
                        uint64_t o2[2] = {a, c}, s2[2] = {b - a, e - c};
                        check_block(ck, t, o2, s2);
                    }
    uint64_t o3[3] = {1, 2, 1}, s3[3] = {3, 3, 4};
    check_block(ck, 2, o3, s3);
    check_block(ck, 3, NULL, NULL);
    /* Read as another float dtype: f32 -> bf16 rounds as torch does. */
    uint64_t o[2] = {1, 3}, s[2] = {4, 5};
    uint16_t got[20];
    float want[20];
    assert_int_equal(emac_checkpoint_read(ck, "layer.w", 2, o, s, got, sizeof(got), "bf16",
                                          &err), 0);
    extract(full[0], 4, 2, tshape[0], o, s, want);
    for (int i = 0; i < 20; i++)
        assert_int_equal(got[i], half_f32_to_bf16(want[i]));
    /* Refused: a block past the tensor, an integer tensor as a float, a dst too small. */
    uint64_t bad[2] = {5, 0}, bs[2] = {3, 1};
    assert_int_equal(emac_checkpoint_read(ck, "layer.w", 2, bad, bs, got, sizeof(got), NULL,
                                          &err), -EINVAL);
    assert_non_null(strstr(err.message, "passes its shape [7, 10]"));
    assert_int_equal(emac_checkpoint_read(ck, "step", 0, NULL, NULL, got, 8, "f32", &err),
                     -EINVAL);
    assert_int_equal(emac_checkpoint_read(ck, "layer.w", 2, o, s, got, 10, NULL, &err),
                     -EINVAL);
    assert_int_equal(emac_checkpoint_read(ck, "nope", 0, NULL, NULL, got, 8, NULL, &err),
                     -ENOENT);
    emac_checkpoint_close(ck);
}

static void test_reshard_four_ranks_to_two(void **state)
{
    (void)state;
    reshard("r42", 4, 2);
}

static void test_reshard_two_ranks_to_four(void **state)
{
    (void)state;
    reshard("r24", 2, 4);
}

static void test_read_slice_opens_reads_and_closes(void **state)
{
    struct emac_error err;
    char m[512];
    uint64_t o[3] = {0, 1, 2}, s[3] = {4, 5, 3};
    float got[60], want[60];
    (void)state;

    write_ckpt("rs", 4, 100, 99, 0);
    path_in(m, sizeof(m), "rs", EMAC_CKPT_MANIFEST);
    assert_int_equal(emac_checkpoint_read_slice(m, "conv.k", 3, o, s, got, sizeof(got), NULL,
                                                &err), 0);
    extract(full[2], 4, 3, tshape[2], o, s, want);
    assert_memory_equal(got, want, sizeof(got));
}

/* ---- Malformed checkpoints, each refused with its own message ---- */

static void test_shards_at_different_batches_are_refused(void **state)
{
    emac_checkpoint *ck = NULL;
    struct emac_error err;
    char m[512], out[512];
    (void)state;

    write_ckpt("mixed", 4, 100, 2, 90);
    path_in(m, sizeof(m), "mixed", EMAC_CKPT_MANIFEST);
    assert_int_equal(emac_checkpoint_open(m, &ck, &err), -EINVAL);
    assert_null(ck);
    assert_string_equal(err.code, EMAC_E_BADFILE);
    assert_non_null(strstr(err.message, "checkpoint at batch 100, but 1 of its 4 shard files"));
    assert_non_null(strstr(err.message, "\"rank-00002.safetensors\" at batch 90"));
    path_in(out, sizeof(out), "", "mixed.safetensors");
    assert_int_equal(emac_checkpoint_consolidate(m, out, NULL, &err), -EINVAL);
    assert_int_equal(access(out, F_OK), -1);
}

/* Two shard files of a [4, 4] f32 tensor "w" (rows 0-1 and 2-3), and a manifest written by
 * hand with the tensors entries given. */
static void hand_ckpt(const char *dir, const char *t0, const char *t1, const char *file1)
{
    char p[512];
    float d[8] = {0};
    uint64_t g[2] = {4, 4}, s[2] = {2, 4}, o0[2] = {0, 0}, o1[2] = {2, 0};
    uint32_t r0 = 0, r1 = 1;
    struct emac_ckpt_slice a = {"w", "f32", 2, g, o0, s, d}, b = {"w", "f32", 2, g, o1, s, d};
    struct emac_ckpt_shard s0 = {"a.safetensors", &r0, 1, &a, 1};
    struct emac_ckpt_shard s1 = {"b.safetensors", &r1, 1, &b, 1};
    struct emac_ckpt_group grp = {"job", 7, 0, 2};
    struct emac_error err;

    mkdir(path_in(p, sizeof(p), dir, ""), 0755);
    assert_int_equal(emac_checkpoint_write_shard(path_in(p, sizeof(p), dir, "a.safetensors"),
                                                 &grp, &s0, &err), 0);
    assert_int_equal(emac_checkpoint_write_shard(path_in(p, sizeof(p), dir, "b.safetensors"),
                                                 &grp, &s1, &err), 0);
    FILE *f = fopen(path_in(p, sizeof(p), dir, EMAC_CKPT_MANIFEST), "w");
    assert_non_null(f);
    fprintf(f,
            "{\"format\": \"emad-checkpoint\", \"version\": 1, \"job\": \"job\", \"batch\": 7, "
            "\"epoch\": 0, \"world_size\": 2, \"config\": {}, \"shards\": ["
            "{\"file\": \"a.safetensors\", \"ranks\": [0], \"tensors\": [%s]},"
            "{\"file\": \"%s\", \"ranks\": [1], \"tensors\": [%s]}]}",
            t0, file1, t1);
    fclose(f);
}

#define W(o, s, dt)                                                                                \
    "{\"name\": \"w\", \"dtype\": \"" dt "\", \"global_shape\": [4, 4], \"offsets\": " o        \
    ", \"shape\": " s "}"

/* The error of opening tmpdir/dir's manifest. */
static const char *open_error(const char *dir, struct emac_error *err)
{
    emac_checkpoint *ck = NULL;
    char m[512];

    assert_int_equal(emac_checkpoint_open(path_in(m, sizeof(m), dir, EMAC_CKPT_MANIFEST), &ck,
                                          err) < 0, 1);
    assert_null(ck);
    return err->message;
}

static void test_hand_manifest_that_agrees_opens(void **state)
{
    emac_checkpoint *ck = NULL;
    struct emac_error err;
    char m[512];
    (void)state;

    hand_ckpt("ok", W("[0, 0]", "[2, 4]", "F32"), W("[2, 0]", "[2, 4]", "F32"), "b.safetensors");
    int rc = emac_checkpoint_open(path_in(m, sizeof(m), "ok", EMAC_CKPT_MANIFEST), &ck, &err);
    if (rc != 0)
        fail_msg("%s", err.message);
    emac_checkpoint_close(ck);
}

static void test_gap_is_refused(void **state)
{
    struct emac_error err;
    (void)state;

    hand_ckpt("gap", W("[0, 0]", "[2, 4]", "F32"), W("[3, 0]", "[1, 4]", "F32"),
              "b.safetensors");
    assert_non_null(strstr(open_error("gap", &err), "its slices cover 12 of its 16 elements"));
}

static void test_overlap_is_refused(void **state)
{
    struct emac_error err;
    (void)state;

    hand_ckpt("ovl", W("[0, 0]", "[3, 4]", "F32"), W("[2, 0]", "[2, 4]", "F32"),
              "b.safetensors");
    assert_non_null(strstr(open_error("ovl", &err), "the slices overlap: offsets [0, 0] shape "
                                                    "[3, 4] in \"a.safetensors\""));
}

static void test_replicas_count_once_but_must_be_identical(void **state)
{
    struct emac_error err;
    (void)state;

    /* The same rows in both files: a replica, and rows 2-3 then missing: a gap, not an
     * overlap. */
    hand_ckpt("rep", W("[0, 0]", "[2, 4]", "F32"), W("[0, 0]", "[2, 4]", "F32"),
              "b.safetensors");
    assert_non_null(strstr(open_error("rep", &err), "cover 8 of its 16"));
}

static void test_missing_shard_file_is_refused(void **state)
{
    struct emac_error err;
    (void)state;

    hand_ckpt("miss", W("[0, 0]", "[2, 4]", "F32"), W("[2, 0]", "[2, 4]", "F32"),
              "c.safetensors");
    assert_non_null(strstr(open_error("miss", &err), "shard file \"c.safetensors\" cannot be "
                                                     "opened: No such file"));
    assert_string_equal(err.code, EMAC_E_BADFILE);
}

static void test_paths_leaving_the_directory_are_refused(void **state)
{
    struct emac_error err;
    (void)state;

    hand_ckpt("dots", W("[0, 0]", "[2, 4]", "F32"), W("[2, 0]", "[2, 4]", "F32"),
              "../dots/b.safetensors");
    assert_non_null(strstr(open_error("dots", &err), "has a \"..\" component"));
    hand_ckpt("abs", W("[0, 0]", "[2, 4]", "F32"), W("[2, 0]", "[2, 4]", "F32"),
              "/etc/passwd");
    assert_non_null(strstr(open_error("abs", &err), "is absolute"));
}

static void test_header_disagreeing_with_the_manifest_is_refused(void **state)
{
    struct emac_error err;
    (void)state;

    /* The manifest says BF16, the files hold F32. */
    hand_ckpt("hdt", W("[0, 0]", "[2, 4]", "BF16"), W("[2, 0]", "[2, 4]", "BF16"),
              "b.safetensors");
    assert_non_null(strstr(open_error("hdt", &err), "shard file \"a.safetensors\": tensor \"w\" "
                                                    "is F32 [2, 4] there, BF16 [2, 4] in the "
                                                    "manifest"));
    /* The manifest's entries disagree among themselves. */
    hand_ckpt("hdt2", W("[0, 0]", "[2, 4]", "F32"), W("[2, 0]", "[2, 4]", "BF16"),
              "b.safetensors");
    assert_non_null(strstr(open_error("hdt2", &err), "tensor \"w\" is BF16 in \"b.safetensors\" "
                                                     "and F32 in \"a.safetensors\""));
    /* Both entries swapped: the tiling holds, each file's metadata and the manifest differ. */
    hand_ckpt("hoff", W("[2, 0]", "[2, 4]", "F32"), W("[0, 0]", "[2, 4]", "F32"),
              "b.safetensors");
    assert_non_null(strstr(open_error("hoff", &err), "sits at offsets [0, 0] of [4, 4] by its "
                                                     "metadata, the manifest says otherwise"));
    /* A shape the file does not have. */
    hand_ckpt("hsh", W("[0, 0]", "[1, 4]", "F32"), W("[1, 0]", "[3, 4]", "F32"),
              "b.safetensors");
    assert_non_null(strstr(open_error("hsh", &err), "is F32 [2, 4] there, F32 [1, 4] in the "
                                                    "manifest"));
}

static void test_malformed_manifests_are_refused(void **state)
{
    static const struct {
        const char *text, *msg;
    } cases[] = {
        {"{\"format\": \"emad-checkpoint\", \"format\": 1}", "appears twice"},
        {"[]", "not a JSON object"},
        {"{\"format\": \"other\"}", "not a group checkpoint manifest"},
        {"{\"format\": \"emad-checkpoint\", \"version\": 2}", "written by a newer emad"},
        {"{\"format\": \"emad-checkpoint\", \"version\": 1, \"extra\": 0}", "unknown key"},
        {"{\"format\": \"emad-checkpoint\", \"version\": 1,}", "byte 43"},
        {"{\"format\": \"emad-checkpoint\", \"version\": 01}", "leading zero"},
    };
    struct emac_error err;
    char p[512];
    (void)state;

    mkdir(path_in(p, sizeof(p), "bad", ""), 0755);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        FILE *f = fopen(path_in(p, sizeof(p), "bad", EMAC_CKPT_MANIFEST), "w");
        fputs(cases[i].text, f);
        fclose(f);
        const char *m = open_error("bad", &err);
        if (strstr(m, cases[i].msg) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, m, cases[i].msg);
    }
}

static void test_write_manifest_refuses_what_does_not_tile(void **state)
{
    float d[8] = {0};
    uint64_t g[2] = {4, 4}, s[2] = {2, 4}, o0[2] = {0, 0}, o1[2] = {1, 0};
    uint32_t r0 = 0, r1 = 1;
    struct emac_ckpt_slice a = {"w", "f32", 2, g, o0, s, d}, b = {"w", "f32", 2, g, o1, s, d};
    struct emac_ckpt_shard sh[2] = {{"a.safetensors", &r0, 1, &a, 1},
                                    {"b.safetensors", &r1, 1, &b, 1}};
    struct emac_ckpt_group grp = {"job", 7, 0, 2};
    struct emac_error err;
    char p[512];
    (void)state;

    path_in(p, sizeof(p), "", "refused.json");
    assert_int_equal(emac_checkpoint_write_manifest(p, &grp, NULL, sh, 2, &err), -EINVAL);
    assert_string_equal(err.code, EMAC_E_USAGE);
    assert_non_null(strstr(err.message, "overlap"));
    assert_int_equal(access(p, F_OK), -1);
    o1[0] = 2;
    assert_int_equal(emac_checkpoint_write_manifest(p, &grp, "[1]", sh, 2, &err), -EINVAL);
    assert_non_null(strstr(err.message, "config: not a JSON object"));
    sh[1].file = "../b.safetensors";
    assert_int_equal(emac_checkpoint_write_manifest(p, &grp, NULL, sh, 2, &err), -EINVAL);
    assert_non_null(strstr(err.message, "\"..\""));
    sh[1].file = "b.safetensors";
    r1 = 2;
    assert_int_equal(emac_checkpoint_write_manifest(p, &grp, NULL, sh, 2, &err), -EINVAL);
    assert_non_null(strstr(err.message, "rank 2 of a world of 2"));
    r1 = 1;
    assert_int_equal(emac_checkpoint_write_manifest(p, &grp, NULL, sh, 2, &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consolidate_four_ranks_bit_exact_through_a_small_buffer),
        cmocka_unit_test(test_consolidate_two_ranks_to_bf16),
        cmocka_unit_test(test_reshard_four_ranks_to_two),
        cmocka_unit_test(test_reshard_two_ranks_to_four),
        cmocka_unit_test(test_read_slice_opens_reads_and_closes),
        cmocka_unit_test(test_shards_at_different_batches_are_refused),
        cmocka_unit_test(test_hand_manifest_that_agrees_opens),
        cmocka_unit_test(test_gap_is_refused),
        cmocka_unit_test(test_overlap_is_refused),
        cmocka_unit_test(test_replicas_count_once_but_must_be_identical),
        cmocka_unit_test(test_missing_shard_file_is_refused),
        cmocka_unit_test(test_paths_leaving_the_directory_are_refused),
        cmocka_unit_test(test_header_disagreeing_with_the_manifest_is_refused),
        cmocka_unit_test(test_malformed_manifests_are_refused),
        cmocka_unit_test(test_write_manifest_refuses_what_does_not_tile),
    };

    make_full();
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    for (int t = 0; t < NT; t++)
        free(full[t]);
    return rc;
}
