/*
 * test_shards_prof.c - consolidating one profile of a group checkpoint of an EMA with profiles
 * (client/shards_prof.c, docs/scaleout.md "Profiles in a group checkpoint"): the eval profile's
 * tensors under the plain names by default, another's (named ".profile/P/NAME" in the shards)
 * renamed to the plain names, an unknown profile refused naming those there, a checkpoint
 * without profiles unchanged, malformed profile lists refused.
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
#include "shards.h"
#include "scratch.h"
#include "ckpt_files.h"

#define PROFILES "{\"name\": \"fast\", \"started\": true}, {\"name\": \"p10\"}"

/* The tensors of profiles "fast" (w = 1..8 over two ranks, b = 100) and "p10" (w = -1..-8,
 * b = -100) in tmpdir/dir, over two shard files, with config; the eval profile's under the
 * plain names and the other's as ".profile/<other>/w", ".profile/<other>/b". */
static void write_profiles(const char *dir, const char *config, const char *eval)
{
    const char *other = strcmp(eval, "fast") == 0 ? "p10" : "fast";
    float plain[2][4], pref[2][4], pb = strcmp(eval, "fast") == 0 ? 100 : -100, ob = -pb;
    uint64_t g[2] = {4, 2}, s[2] = {2, 2}, o[2][2] = {{0, 0}, {2, 0}}, none[1] = {0};
    char wn[64], bn[64], file[2][32];
    struct emac_ckpt_slice sl[2][4];
    struct emac_ckpt_shard sh[2];
    uint32_t ranks[2] = {0, 1};
    struct emac_ckpt_group grp = {"job", 5, 0, 2};

    snprintf(wn, sizeof(wn), EMAC_CKPT_PROFILE_PREFIX "%s/w", other);
    snprintf(bn, sizeof(bn), EMAC_CKPT_PROFILE_PREFIX "%s/b", other);
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 4; i++) {
            float v = (float)(r * 4 + i + 1);
            plain[r][i] = strcmp(eval, "fast") == 0 ? v : -v;
            pref[r][i] = -plain[r][i];
        }
        /* b (a scalar, replicated) is written by rank 0 alone: tiling needs it once. */
        sl[r][0] = (struct emac_ckpt_slice){"w", "f32", 2, g, o[r], s, plain[r]};
        sl[r][1] = (struct emac_ckpt_slice){wn, "f32", 2, g, o[r], s, pref[r]};
        sl[r][2] = (struct emac_ckpt_slice){"b", "f32", 0, none, none, none, &pb};
        sl[r][3] = (struct emac_ckpt_slice){bn, "f32", 0, none, none, none, &ob};
        snprintf(file[r], sizeof(file[r]), "rank-%05d.safetensors", r);
        sh[r] = (struct emac_ckpt_shard){file[r], &ranks[r], 1, sl[r], r == 0 ? 4 : 2};
    }
    write_ckpt(dir, &grp, config, sh, 2);
}

/* Consolidate tmpdir/dir's profile into out; 0 or the error. */
static int consolidate(const char *dir, const char *profile, const char *out,
                       struct emac_error *err)
{
    char m[512], o[512];
    return emac_checkpoint_consolidate_profile(path_in(m, sizeof(m), dir, EMAC_CKPT_MANIFEST),
                                               path_in(o, sizeof(o), "", out), NULL, profile, err);
}

/* out holds exactly w and b with the values of sign (1: "fast"'s, -1: "p10"'s), and its
 * "profile" metadata is profile (NULL: none). */
static void check_out(const char *out, float sign, const char *profile)
{
    struct st_file f;
    char msg[512], p[512];
    float w[8], b;

    assert_int_equal(st_open(&f, path_in(p, sizeof(p), "", out), msg, sizeof(msg)), 0);
    assert_int_equal(f.h.ntensors, 2);
    const struct st_tensor *tw = st_find(&f.h, "w"), *tb = st_find(&f.h, "b");
    assert_non_null(tw);
    assert_non_null(tb);
    assert_int_equal(st_read(&f, tw, 0, w, sizeof(w), msg, sizeof(msg)), 0);
    assert_int_equal(st_read(&f, tb, 0, &b, sizeof(b), msg, sizeof(msg)), 0);
    for (int i = 0; i < 8; i++)
        assert_true(w[i] == sign * (float)(i + 1));
    assert_true(b == sign * 100);
    if (profile == NULL)
        assert_null(st_meta_get(&f.h, "profile"));
    else
        assert_string_equal(st_meta_get(&f.h, "profile"), profile);
    st_close(&f);
}

static void test_consolidate_picks_each_profile_under_the_plain_names(void **state)
{
    struct emac_error err;
    (void)state;

    write_profiles("evalfast",
                   "{\"emaclient\": {\"profiles\": [" PROFILES "], "
                   "\"eval_profile\": \"fast\"}}",
                   "fast");
    assert_int_equal(consolidate("evalfast", NULL, "d.st", &err), 0);
    check_out("d.st", 1, "fast");
    assert_int_equal(consolidate("evalfast", "fast", "f.st", &err), 0);
    check_out("f.st", 1, "fast");
    assert_int_equal(consolidate("evalfast", "p10", "p.st", &err), 0);
    check_out("p.st", -1, "p10");
    /* The eval profile second: its tensors are the plain ones, fast's prefixed. */
    write_profiles("evalp10",
                   "{\"emaclient\": {\"profiles\": [" PROFILES "], "
                   "\"eval_profile\": \"p10\"}}",
                   "p10");
    assert_int_equal(consolidate("evalp10", NULL, "d2.st", &err), 0);
    check_out("d2.st", -1, "p10");
    assert_int_equal(consolidate("evalp10", "fast", "f2.st", &err), 0);
    check_out("f2.st", 1, "fast");
}

static void test_an_unknown_profile_is_refused_naming_those_there(void **state)
{
    struct emac_error err;
    char p[512];
    (void)state;

    write_profiles("unknown",
                   "{\"emaclient\": {\"profiles\": [" PROFILES "], "
                   "\"eval_profile\": \"fast\"}}",
                   "fast");
    assert_int_equal(consolidate("unknown", "slow", "u.st", &err), -ENOENT);
    assert_string_equal(err.code, EMAC_E_USAGE);
    assert_non_null(strstr(err.message, "no profile \"slow\"; its profiles: fast, p10 (the eval "
                                        "profile: fast)"));
    assert_int_equal(access(path_in(p, sizeof(p), "", "u.st"), F_OK), -1);
}

static void test_without_profiles_every_tensor_as_ever_and_a_profile_refused(void **state)
{
    struct emac_error err;
    char m[512], o[512];
    (void)state;

    /* The same names, but no profiles in the config: nothing is picked or renamed. */
    write_profiles("plain", "{\"ema\": {\"half_life\": \"4ba\"}}", "fast");
    assert_int_equal(emac_checkpoint_consolidate(path_in(m, sizeof(m), "plain", EMAC_CKPT_MANIFEST),
                                                 path_in(o, sizeof(o), "", "plain.st"), NULL, &err),
                     0);
    struct st_file f;
    char msg[512];
    assert_int_equal(st_open(&f, o, msg, sizeof(msg)), 0);
    assert_int_equal(f.h.ntensors, 4);
    assert_non_null(st_find(&f.h, EMAC_CKPT_PROFILE_PREFIX "p10/w"));
    assert_null(st_meta_get(&f.h, "profile"));
    st_close(&f);
    assert_int_equal(consolidate("plain", "fast", "x.st", &err), -ENOENT);
    assert_string_equal(err.code, EMAC_E_USAGE);
    assert_non_null(strstr(err.message, "holds an EMA without profiles"));
}

static void test_malformed_profile_lists_are_refused(void **state)
{
    static const struct {
        const char *config, *msg;
    } cases[] = {
        {"{\"emaclient\": {\"profiles\": {}, \"eval_profile\": \"fast\"}}",
         "config.emaclient.profiles is not an array"},
        {"{\"emaclient\": {\"profiles\": [], \"eval_profile\": \"fast\"}}",
         "config.emaclient.profiles is not an array"},
        {"{\"emaclient\": {\"profiles\": [{\"name\": \"a/b\"}], \"eval_profile\": \"a/b\"}}",
         "config.emaclient.profiles[0] has no \"name\""},
        {"{\"emaclient\": {\"profiles\": [{\"name\": 3}], \"eval_profile\": \"fast\"}}",
         "config.emaclient.profiles[0] has no \"name\""},
        {"{\"emaclient\": {\"profiles\": [" PROFILES "]}}",
         "config.emaclient.eval_profile does not name"},
        {"{\"emaclient\": {\"profiles\": [" PROFILES "], \"eval_profile\": \"slow\"}}",
         "config.emaclient.eval_profile does not name"},
    };
    struct emac_error err;
    char dir[32];
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(dir, sizeof(dir), "bad%zu", i);
        write_profiles(dir, cases[i].config, "fast");
        assert_int_equal(consolidate(dir, NULL, "bad.st", &err), -EINVAL);
        assert_string_equal(err.code, EMAC_E_BADFILE);
        if (strstr(err.message, cases[i].msg) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err.message, cases[i].msg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_consolidate_picks_each_profile_under_the_plain_names),
        cmocka_unit_test(test_an_unknown_profile_is_refused_naming_those_there),
        cmocka_unit_test(test_without_profiles_every_tensor_as_ever_and_a_profile_refused),
        cmocka_unit_test(test_malformed_profile_lists_are_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
