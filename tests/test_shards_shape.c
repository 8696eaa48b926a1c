/*
 * test_shards_shape.c - consolidating flattened tensors with their real shapes
 * (client/shards_shape.c, docs/scaleout.md "Flattened tensors"): a 1-D tensor sliced unevenly
 * over two shard files is written with the shape config.emaclient.shapes gives it (the same
 * bytes); a tensor it does not name keeps its global shape; a shape of another element count
 * or a malformed entry is refused (BADFILE, naming it) and no file is written.
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
#include "safetensors.h"
#include "scratch.h"
#include "ckpt_files.h"

/* In tmpdir/dir: w = 0..11 flattened, rank 0 holding [0, 7) and rank 1 [7, 12) (as a flat
 * parameter's shards cut a parameter anywhere), and b = 5, 6 whole on rank 0; config given. */
static void write_flat(const char *dir, const char *config)
{
    float w[12], b[2] = {5, 6};
    uint64_t g[1] = {12}, o[2][1] = {{0}, {7}}, s[2][1] = {{7}, {5}}, gb[1] = {2}, ob[1] = {0};
    char file[2][32];
    struct emac_ckpt_slice sl[2][2];
    struct emac_ckpt_shard sh[2];
    uint32_t ranks[2] = {0, 1};
    struct emac_ckpt_group grp = {"job", 3, 0, 2};

    for (int i = 0; i < 12; i++)
        w[i] = (float)i;
    for (int r = 0; r < 2; r++) {
        sl[r][0] = (struct emac_ckpt_slice){"w", "f32", 1, g, o[r], s[r], w + o[r][0]};
        sl[r][1] = (struct emac_ckpt_slice){"b", "f32", 1, gb, ob, gb, b};
        snprintf(file[r], sizeof(file[r]), "rank-%05d.safetensors", r);
        sh[r] = (struct emac_ckpt_shard){file[r], &ranks[r], 1, sl[r], r == 0 ? 2 : 1};
    }
    write_ckpt(dir, &grp, config, sh, 2);
}

static int consolidate(const char *dir, const char *out, struct emac_error *err)
{
    char m[512], o[512];
    return emac_checkpoint_consolidate(path_in(m, sizeof(m), dir, EMAC_CKPT_MANIFEST),
                                       path_in(o, sizeof(o), "", out), NULL, err);
}

static void test_a_flattened_tensor_is_written_with_its_recorded_shape(void **state)
{
    struct emac_error err;
    struct st_file f;
    char msg[512], p[512];
    float w[12], b[2];
    (void)state;

    write_flat("ok", "{\"emaclient\": {\"format\": 1, \"shapes\": {\"w\": [3, 4]}}}");
    assert_int_equal(consolidate("ok", "ok.safetensors", &err), 0);
    assert_int_equal(st_open(&f, path_in(p, sizeof(p), "", "ok.safetensors"), msg, sizeof(msg)), 0);
    const struct st_tensor *tw = st_find(&f.h, "w"), *tb = st_find(&f.h, "b");
    assert_non_null(tw);
    assert_non_null(tb);
    assert_int_equal(tw->rank, 2);
    assert_int_equal(tw->shape[0], 3);
    assert_int_equal(tw->shape[1], 4);
    assert_int_equal(tb->rank, 1);
    assert_int_equal(tb->shape[0], 2);
    assert_int_equal(st_read(&f, tw, 0, w, sizeof(w), msg, sizeof(msg)), 0);
    assert_int_equal(st_read(&f, tb, 0, b, sizeof(b), msg, sizeof(msg)), 0);
    for (int i = 0; i < 12; i++)
        assert_true(w[i] == (float)i);
    assert_true(b[0] == 5 && b[1] == 6);
    st_close(&f);
}

static void test_a_shape_of_another_count_or_malformed_is_refused(void **state)
{
    static const struct {
        const char *config, *says;
    } bad[] = {
        {"{\"emaclient\": {\"shapes\": {\"w\": [5, 3]}}}", "[5, 3] (15 elements)"},
        {"{\"emaclient\": {\"shapes\": {\"w\": [3, \"4\"]}}}", "shapes[\"w\"][1] is not a size"},
        {"{\"emaclient\": {\"shapes\": {\"w\": 12}}}", "shapes[\"w\"] is not an array"},
        {"{\"emaclient\": {\"shapes\": [[3, 4]]}}", "shapes is not an object"},
        {"{\"emaclient\": {\"shapes\": {\"w\": [1, 1, 1, 1, 1, 1, 1, 1, 12]}}}", "at most 8 sizes"},
    };
    char dir[16], p[512];
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct emac_error err;
        snprintf(dir, sizeof(dir), "bad%zu", i);
        write_flat(dir, bad[i].config);
        assert_int_equal(consolidate(dir, "bad.safetensors", &err), -EINVAL);
        assert_string_equal(err.code, EMAC_E_BADFILE);
        if (strstr(err.message, bad[i].says) == NULL)
            fail_msg("case %zu: %s", i, err.message);
        assert_int_equal(access(path_in(p, sizeof(p), "", "bad.safetensors"), F_OK), -1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_flattened_tensor_is_written_with_its_recorded_shape),
        cmocka_unit_test(test_a_shape_of_another_count_or_malformed_is_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
