/*
 * test_store.c - state files (daemon/store.c): names, CRC-32C, save and load.
 *
 * Each save/load test gets a fresh temporary directory (setup/teardown) and checks the files
 * left in it: the mode, that no temp file remains, that a failed save leaves the previous file
 * byte-identical. Damage is made by hand on files written by store_save: truncation at every
 * interesting length, each single bit flipped, a valid file of another version (checksum
 * recomputed, so only the version differs). The checksum is checked against published CRC-32C
 * vectors, a bit-by-bit definition, and the hardware path against the portable one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define ERRLEN 1024

/* ---- Helpers ----------------------------------------------------------------------------- */

/* splitmix64: small, deterministic, good enough to spread bits. */
static uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_random(void *buf, size_t len, uint64_t seed)
{
    unsigned char *p = buf;
    uint64_t s = seed;

    for (size_t i = 0; i < len; i += 8) {
        uint64_t v = rng_next(&s);
        memcpy(p + i, &v, len - i < 8 ? len - i : 8);
    }
}

/* CRC-32C straight from its definition, one bit at a time. */
static uint32_t crc_bitwise(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;

    crc = ~crc;
    for (size_t i = 0; i < len; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    }
    return ~crc;
}

/* The test's own temporary directory; tests save into dir (not yet created) or below it. */
struct fixture {
    char root[PATH_MAX]; /* made by setup, removed with everything in it by teardown */
    char dir[PATH_MAX];  /* root/state: the state directory, created by store_save */
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    const char *tmp = getenv("TMPDIR");

    if (fx == NULL)
        return -1;
    snprintf(fx->root, sizeof(fx->root), "%s/test_store.XXXXXX",
             tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
    if (mkdtemp(fx->root) == NULL) {
        free(fx);
        return -1;
    }
    if (snprintf(fx->dir, sizeof(fx->dir), "%s/state", fx->root) >= (int)sizeof(fx->dir)) {
        rmdir(fx->root);
        free(fx);
        return -1;
    }
    umask(022);
    *state = fx;
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    chmod(path, 0700); /* a test may leave a read-only directory behind */
    return remove(path);
}

static int teardown(void **state)
{
    struct fixture *fx = *state;

    chmod(fx->dir, 0700);
    nftw(fx->root, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

/* snprintf into an array, failing the test if it does not fit. */
#define FORMAT(buf, ...) assert_true(snprintf(buf, sizeof(buf), __VA_ARGS__) < (int)sizeof(buf))

/* dir/name into out (PATH_MAX bytes). */
static char *join(char *out, const char *dir, const char *name)
{
    assert_true(snprintf(out, PATH_MAX, "%s/%s", dir, name) < PATH_MAX);
    return out;
}

/* The whole file in a malloc'ed buffer; NULL if it cannot be read. */
static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;

    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc(n > 0 ? (size_t)n : 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* Entries of dir other than "." and "..", and whether one of them looks like a temp file. */
static int count_entries(const char *dir, bool *temp_seen)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    *temp_seen = false;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        if (strstr(e->d_name, ".tmp-") != NULL)
            *temp_seen = true;
        n++;
    }
    closedir(d);
    return n;
}

static void assert_err_has(const char *err, const char *fragment)
{
    if (strstr(err, fragment) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err, fragment);
}

/* Save and require success; returns the file size. */
static uint64_t save_ok(const char *dir, const char *name, const void *meta, size_t meta_len,
                        const void *data, uint64_t data_len)
{
    char err[ERRLEN] = "", path[PATH_MAX];
    uint64_t bytes = 0;
    int rc = store_save(dir, name, meta, meta_len, data, data_len, path, sizeof(path), &bytes,
                        err, sizeof(err));

    if (rc != 0)
        fail_msg("store_save %s/%s: %d: %s", dir, name, rc, err);
    return bytes;
}

/* Load and require the given error, with a message naming the file; *out must come back
 * zeroed. Returns the message in err. */
static void load_fails(const char *dir, const char *name, int want, char *err)
{
    struct store_file f;
    int rc;

    memset(&f, 0x5a, sizeof(f));
    err[0] = '\0';
    rc = store_load(dir, name, &f, err, ERRLEN);
    if (rc != want)
        fail_msg("store_load %s/%s: expected %d, got %d (%s)", dir, name, want, rc, err);
    assert_null(f.map);
    assert_null(f.meta);
    assert_null(f.data);
    assert_int_equal(f.map_len, 0);
    assert_int_equal(f.meta_len, 0);
    assert_int_equal(f.data_len, 0);
    assert_true(strlen(err) > 0);
    store_file_close(&f);
}

/* Save meta and data, load them back, compare; checks the file's size, mode and alignment. */
static void round_trip(const char *dir, const void *meta, size_t meta_len, const void *data,
                       uint64_t data_len)
{
    char err[ERRLEN] = "", path[PATH_MAX], want_path[PATH_MAX];
    uint64_t bytes = 0, data_offset = (40 + meta_len + 4095) / 4096 * 4096;
    struct store_file f;
    struct stat st;
    int rc;

    rc = store_save(dir, "rt", meta, meta_len, data, data_len, path, sizeof(path), &bytes, err,
                    sizeof(err));
    if (rc != 0)
        fail_msg("store_save: %d: %s", rc, err);
    FORMAT(want_path, "%s/rt.emastate", dir);
    assert_string_equal(path, want_path);
    assert_int_equal(bytes, data_offset + data_len + 16);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, bytes);

    rc = store_load(dir, "rt", &f, err, sizeof(err));
    if (rc != 0)
        fail_msg("store_load: %d: %s", rc, err);
    assert_int_equal(f.map_len, bytes);
    assert_int_equal(f.meta_len, meta_len);
    assert_int_equal(f.data_len, data_len);
    assert_ptr_equal(f.data, (const char *)f.map + data_offset);
    assert_int_equal((uintptr_t)f.data % 4096, 0);
    if (meta_len > 0)
        assert_memory_equal(f.meta, meta, meta_len);
    if (data_len > 0)
        assert_int_equal(memcmp(f.data, data, data_len), 0);
    store_file_close(&f);
    assert_null(f.map);
}

/* ---- CRC-32C ----------------------------------------------------------------------------- */

struct crc_impl {
    const char *name;
    store_crc32c_fn fn;
};

/* Every implementation this machine runs: the dispatcher, portable, and SSE4.2 if present. */
static size_t crc_impls(struct crc_impl *out)
{
    size_t n = 0;

    out[n++] = (struct crc_impl){"best", store_crc32c};
    out[n++] = (struct crc_impl){"portable", store_crc32c_portable};
    if (store_crc32c_hw() != NULL)
        out[n++] = (struct crc_impl){"sse4.2", store_crc32c_hw()};
    return n;
}

static void test_crc32c_matches_published_vectors(void **state)
{
    /* RFC 3720 B.4 (iSCSI) and the "check" value of the CRC catalogue. */
    unsigned char zeros[32] = {0}, ones[32], up[32], down[32];
    struct crc_impl impls[3];
    size_t n = crc_impls(impls);

    (void)state;
    memset(ones, 0xff, sizeof(ones));
    for (int i = 0; i < 32; i++) {
        up[i] = (unsigned char)i;
        down[i] = (unsigned char)(31 - i);
    }
    for (size_t i = 0; i < n; i++) {
        store_crc32c_fn crc = impls[i].fn;
        assert_int_equal(crc(0, "123456789", 9), 0xe3069283u);
        assert_int_equal(crc(0, NULL, 0), 0);
        assert_int_equal(crc(0x12345678u, NULL, 0), 0x12345678u);
        assert_int_equal(crc(0, zeros, 32), 0x8a9136aau);
        assert_int_equal(crc(0, ones, 32), 0x62a8ab43u);
        assert_int_equal(crc(0, up, 32), 0x46dd794eu);
        assert_int_equal(crc(0, down, 32), 0x113fdb5cu);
        assert_int_equal(crc(0, "a", 1), 0xc1d04330u);
    }
}

static void test_crc32c_reports_hw_where_the_cpu_has_sse42(void **state)
{
    (void)state;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        assert_non_null(store_crc32c_hw());
    else
        assert_null(store_crc32c_hw());
#else
    assert_null(store_crc32c_hw());
#endif
}

static void test_crc32c_every_table_entry_matches_bitwise_definition(void **state)
{
    /* One byte v at position k of an 8-byte block, the rest zero, from two starting CRCs:
     * together these index every entry of every slicing table. */
    static const uint32_t starts[] = {0, 0x12345678u};
    struct crc_impl impls[3];
    size_t n = crc_impls(impls);

    (void)state;
    for (size_t s = 0; s < ARRAY_LEN(starts); s++)
        for (int k = 0; k < 8; k++)
            for (int v = 0; v < 256; v++) {
                uint64_t block8[2] = {0, 0}; /* aligned, and 16 bytes for the 9-byte case */
                unsigned char *b = (unsigned char *)block8;
                b[k] = (unsigned char)v;
                uint32_t want8 = crc_bitwise(starts[s], b, 8),
                         want9 = crc_bitwise(starts[s], b, 9);
                for (size_t i = 0; i < n; i++) {
                    if (impls[i].fn(starts[s], b, 8) != want8 ||
                        impls[i].fn(starts[s], b, 9) != want9)
                        fail_msg("%s: byte 0x%02x at %d from 0x%08x", impls[i].name, v, k,
                                 starts[s]);
                }
            }
}

static void test_crc32c_hw_equals_portable_at_every_length_and_alignment(void **state)
{
    enum { MAXLEN = 300, LARGE = (16 << 20) + 13 };
    unsigned char *buf = malloc(LARGE + 64);
    uint64_t rng = 42;
    struct crc_impl impls[3];
    size_t n = crc_impls(impls);

    (void)state;
    assert_non_null(buf);
    fill_random(buf, LARGE + 64, 7);
    for (int round = 0; round < 8; round++) {
        for (size_t len = 0; len <= MAXLEN; len++) {
            size_t off = rng_next(&rng) % 64;
            uint32_t start = (uint32_t)rng_next(&rng);
            uint32_t want = crc_bitwise(start, buf + off, len);
            for (size_t i = 0; i < n; i++)
                if (impls[i].fn(start, buf + off, len) != want)
                    fail_msg("%s: length %zu at offset %zu", impls[i].name, len, off);
        }
    }
    /* Large, from every offset mod 8: the bitwise reference would be slow, portable stands in. */
    for (size_t off = 0; off < 8; off++) {
        uint32_t want = store_crc32c_portable(0, buf + off, LARGE);
        for (size_t i = 0; i < n; i++)
            if (impls[i].fn(0, buf + off, LARGE) != want)
                fail_msg("%s: %d bytes at offset %zu", impls[i].name, LARGE, off);
    }
    assert_int_equal(store_crc32c_portable(0, buf, 1 << 16), crc_bitwise(0, buf, 1 << 16));
    free(buf);
}

static void test_crc32c_chains_across_any_split(void **state)
{
    unsigned char buf[200];
    struct crc_impl impls[3];
    size_t n = crc_impls(impls);

    (void)state;
    fill_random(buf, sizeof(buf), 3);
    for (size_t i = 0; i < n; i++) {
        uint32_t whole = impls[i].fn(0, buf, sizeof(buf));
        for (size_t cut = 0; cut <= sizeof(buf); cut++) {
            uint32_t c = impls[i].fn(0, buf, cut);
            /* Mix implementations: the second half through the dispatcher. */
            assert_int_equal(store_crc32c(c, buf + cut, sizeof(buf) - cut), whole);
        }
    }
}

/* ---- Names ------------------------------------------------------------------------------- */

static void test_name_valid_accepts_and_rejects(void **state)
{
    static const char *const good[] = {
        "a", "run1", "A-b_c.d", "a%2Fb", "x.emastate", "-", "_", "%", "a..b", "0",
    };
    static const char *const bad[] = {
        "", ".", "..", ".hidden", "a/b", "../x", "a b", "a:b", "a\\b", "é", "a\nb", "a*",
        "a?", "~",
    };
    char name[STORE_NAME_MAX + 2];

    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(good); i++)
        if (!store_name_valid(good[i], strlen(good[i])))
            fail_msg("\"%s\" should be valid", good[i]);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        if (store_name_valid(bad[i], strlen(bad[i])))
            fail_msg("\"%s\" should be invalid", bad[i]);

    memset(name, 'n', sizeof(name));
    assert_true(store_name_valid(name, STORE_NAME_MAX));
    assert_false(store_name_valid(name, STORE_NAME_MAX + 1));
    /* len is what counts, not a NUL: an embedded NUL is an invalid char. */
    assert_true(store_name_valid("abc", 2));
    assert_false(store_name_valid("a\0b", 3));
    assert_false(store_name_valid(NULL, 0));
}

static void test_default_name_maps_session_names(void **state)
{
    static const struct {
        const char *session, *file;
    } cases[] = {
        {"run1", "run1"},
        {"a/b", "a%2Fb"},
        {"a:b", "a%3Ab"},
        {"team/exp:3/seed-1", "team%2Fexp%3A3%2Fseed-1"},
        {".x", "%2Ex"},
        {"..", "%2E."},
        {"x.", "x."},
        {"/", "%2F"},
        {"A_b-c.9", "A_b-c.9"},
    };
    char out[STORE_NAME_MAX + 1];

    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        int rc = store_default_name(cases[i].session, strlen(cases[i].session), out, sizeof(out));
        if (rc != 0)
            fail_msg("\"%s\": %d", cases[i].session, rc);
        assert_string_equal(out, cases[i].file);
        assert_true(store_name_valid(out, strlen(out)));
    }
}

static void test_default_name_rejects_bad_sessions_and_long_results(void **state)
{
    static const char *const bad[] = {"", "a b", "a%b", "a\\b", "é", "a\nb"};
    char session[200], out[STORE_NAME_MAX + 1], small[4];

    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(bad); i++)
        assert_int_equal(store_default_name(bad[i], strlen(bad[i]), out, sizeof(out)), -EINVAL);

    memset(session, 'a', sizeof(session));
    assert_int_equal(store_default_name(session, 128, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), 128);
    assert_int_equal(store_default_name(session, 129, out, sizeof(out)), -EINVAL);

    /* Escapes count three chars each: 42 '/' fit (126), 43 do not (129). */
    memset(session, '/', 43);
    assert_int_equal(store_default_name(session, 42, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), 126);
    assert_true(store_name_valid(out, strlen(out)));
    assert_int_equal(store_default_name(session, 43, out, sizeof(out)), -ENAMETOOLONG);
    memset(session, 'a', 127);
    session[127] = ':';
    assert_int_equal(store_default_name(session, 128, out, sizeof(out)), -ENAMETOOLONG);

    assert_int_equal(store_default_name("abcd", 4, small, sizeof(small)), -ENOBUFS);
    assert_int_equal(store_default_name("abc", 3, small, sizeof(small)), 0);
    assert_string_equal(small, "abc");
}

static void test_default_name_is_injective(void **state)
{
    /* Every session name of up to 4 chars over an alphabet holding each kind of char (plain,
     * '.', '/', ':', '-'): 780 names, all of whose files must be valid and distinct. */
    static const char alphabet[] = "a./:-";
    enum { K = 5, MAXN = 5 + 25 + 125 + 625 };
    char (*files)[STORE_NAME_MAX + 1] = calloc(MAXN, sizeof(*files));
    char session[4];
    size_t count = 0;

    (void)state;
    assert_non_null(files);
    for (size_t len = 1; len <= 4; len++) {
        size_t total = 1;
        for (size_t i = 0; i < len; i++)
            total *= K;
        for (size_t idx = 0; idx < total; idx++) {
            size_t v = idx;
            for (size_t i = 0; i < len; i++, v /= K)
                session[i] = alphabet[v % K];
            assert_int_equal(store_default_name(session, len, files[count], STORE_NAME_MAX + 1),
                             0);
            assert_true(store_name_valid(files[count], strlen(files[count])));
            count++;
        }
    }
    assert_int_equal(count, MAXN);
    for (size_t i = 0; i < count; i++)
        for (size_t j = i + 1; j < count; j++)
            if (strcmp(files[i], files[j]) == 0)
                fail_msg("two sessions map to \"%s\"", files[i]);
    free(files);

    /* The pairs a reader worries about. */
    char x[STORE_NAME_MAX + 1], y[STORE_NAME_MAX + 1];
    assert_int_equal(store_default_name("a/b", 3, x, sizeof(x)), 0);
    assert_int_equal(store_default_name("a:b", 3, y, sizeof(y)), 0);
    assert_string_not_equal(x, y);
    /* "a%2Fb" cannot be a session name, so "a/b" owns "a%2Fb". */
    assert_int_equal(store_default_name("a%2Fb", 5, y, sizeof(y)), -EINVAL);
}

/* ---- Save and load ----------------------------------------------------------------------- */

static void test_round_trip_empty_meta_and_data(void **state)
{
    struct fixture *fx = *state;

    round_trip(fx->dir, NULL, 0, NULL, 0);
    round_trip(fx->dir, "", 0, "", 0);
}

static void test_round_trip_small(void **state)
{
    struct fixture *fx = *state;
    const char meta[] = "\x82\xa4name\xa3run\xa7updates\xcd\x01\x00";
    unsigned char data[1000];

    fill_random(data, sizeof(data), 1);
    round_trip(fx->dir, meta, sizeof(meta) - 1, data, sizeof(data));
    round_trip(fx->dir, meta, sizeof(meta) - 1, NULL, 0);
    round_trip(fx->dir, NULL, 0, data, 1);
    /* Meta sizes around the page boundary that moves data_offset from 4096 to 8192. */
    for (size_t m = 4096 - 40 - 2; m <= 4096 - 40 + 2; m++) {
        unsigned char *meta2 = malloc(m);
        assert_non_null(meta2);
        fill_random(meta2, m, m);
        round_trip(fx->dir, meta2, m, data, 17);
        free(meta2);
    }
}

static void test_round_trip_large(void **state)
{
    struct fixture *fx = *state;
    const size_t data_len = (64u << 20) + 3, meta_len = 5000;
    unsigned char *data = malloc(data_len), *meta = malloc(meta_len);

    assert_non_null(data);
    assert_non_null(meta);
    fill_random(data, data_len, 11);
    fill_random(meta, meta_len, 12);
    round_trip(fx->dir, meta, meta_len, data, data_len);
    free(data);
    free(meta);
}

static void test_save_makes_mode_0600_file_and_leaves_no_temp(void **state)
{
    struct fixture *fx = *state;
    char path[PATH_MAX];
    struct stat st;
    bool temp;

    umask(0); /* the temp file's mode must not depend on a permissive umask */
    save_ok(fx->dir, "m", "meta", 4, "data", 4);
    umask(022);
    assert_int_equal(stat(join(path, fx->dir, "m.emastate"), &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(count_entries(fx->dir, &temp), 1);
    assert_false(temp);
}

static void test_save_creates_missing_directories_0700(void **state)
{
    struct fixture *fx = *state;
    char dir[PATH_MAX], mid[PATH_MAX];
    struct stat st;

    FORMAT(mid, "%s/a", fx->root);
    FORMAT(dir, "%s/a//b/c/", fx->root);
    save_ok(dir, "x", NULL, 0, "d", 1);
    assert_int_equal(stat(mid, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_int_equal(stat(dir, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(st.st_mode & 0777, 0700);
    /* And once more into the now existing directory. */
    save_ok(dir, "y", NULL, 0, "d", 1);
}

static void test_save_replaces_existing_file_and_old_mapping_stays(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "";
    unsigned char a[5000], b[7000];
    struct store_file old, cur;
    bool temp;

    fill_random(a, sizeof(a), 21);
    fill_random(b, sizeof(b), 22);
    save_ok(fx->dir, "same", "A", 1, a, sizeof(a));
    assert_int_equal(store_load(fx->dir, "same", &old, err, sizeof(err)), 0);
    save_ok(fx->dir, "same", "BB", 2, b, sizeof(b));

    assert_int_equal(store_load(fx->dir, "same", &cur, err, sizeof(err)), 0);
    assert_int_equal(cur.meta_len, 2);
    assert_memory_equal(cur.meta, "BB", 2);
    assert_int_equal(cur.data_len, sizeof(b));
    assert_memory_equal(cur.data, b, sizeof(b));
    /* rename() swapped the name; a reader of the old file still sees all of it. */
    assert_int_equal(old.data_len, sizeof(a));
    assert_memory_equal(old.data, a, sizeof(a));
    store_file_close(&old);
    store_file_close(&cur);
    assert_int_equal(count_entries(fx->dir, &temp), 1);
    assert_false(temp);
}

static void test_save_failure_leaves_previous_file_intact(void **state)
{
    /* A file size limit makes the new file fail to grow past 1 MiB (EFBIG), after the temp file
     * exists: the temp file must go and the old file stay byte for byte. */
    struct fixture *fx = *state;
    char err[ERRLEN] = "", path[PATH_MAX] = "untouched", file[PATH_MAX];
    unsigned char small[3000], *before, *after, *big;
    size_t before_len, after_len, big_len = 4u << 20;
    uint64_t bytes = 12345;
    struct rlimit saved, limit;
    void (*saved_sig)(int);
    bool temp;
    int rc;

    fill_random(small, sizeof(small), 31);
    save_ok(fx->dir, "keep", "old", 3, small, sizeof(small));
    before = read_file(join(file, fx->dir, "keep.emastate"), &before_len);
    assert_non_null(before);
    big = malloc(big_len);
    assert_non_null(big);
    fill_random(big, big_len, 32);

    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    limit = saved;
    limit.rlim_cur = 1u << 20;
    saved_sig = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &limit), 0);
    rc = store_save(fx->dir, "keep", "new", 3, big, big_len, path, sizeof(path), &bytes, err,
                    sizeof(err));
    setrlimit(RLIMIT_FSIZE, &saved);
    signal(SIGXFSZ, saved_sig);

    assert_int_equal(rc, -EFBIG);
    assert_err_has(err, "save: ");
    assert_err_has(err, "/.keep.emastate.tmp-");
    assert_err_has(err, strerror(EFBIG));
    assert_string_equal(path, "untouched");
    assert_int_equal(bytes, 12345);
    after = read_file(file, &after_len);
    assert_non_null(after);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);
    assert_int_equal(count_entries(fx->dir, &temp), 1);
    assert_false(temp);
    free(before);
    free(after);
    free(big);
}

/* A save killed midway (by SIGXFSZ, whose default action ends the process, at the first write
 * past a file size limit) leaves its temp file beside the previous file, which is intact;
 * store_remove_temps() removes the temp file and nothing else. */
static void test_save_killed_midway_leaves_a_temp_that_remove_temps_removes(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", file[PATH_MAX];
    unsigned char small[3000], *before, *after, *big;
    size_t before_len, after_len, big_len = 4u << 20;
    struct store_file f;
    bool temp;
    int status;
    pid_t pid;

    fill_random(small, sizeof(small), 41);
    save_ok(fx->dir, "keep", "old", 3, small, sizeof(small));
    before = read_file(join(file, fx->dir, "keep.emastate"), &before_len);
    assert_non_null(before);
    big = malloc(big_len);
    assert_non_null(big);
    fill_random(big, big_len, 42);

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct rlimit fsize = {1u << 20, 1u << 20}, core = {0, 0};

        signal(SIGXFSZ, SIG_DFL);
        setrlimit(RLIMIT_CORE, &core);
        setrlimit(RLIMIT_FSIZE, &fsize);
        store_save(fx->dir, "keep", "new", 3, big, big_len, NULL, 0, NULL, NULL, 0);
        _exit(0); /* not reached: SIGXFSZ ends the process */
    }
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGXFSZ);
    assert_int_equal(count_entries(fx->dir, &temp), 2);
    assert_true(temp);
    after = read_file(file, &after_len);
    assert_non_null(after);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);

    assert_int_equal(store_remove_temps(fx->dir, err, sizeof(err)), 1);
    assert_int_equal(count_entries(fx->dir, &temp), 1);
    assert_false(temp);
    assert_int_equal(store_load(fx->dir, "keep", &f, err, sizeof(err)), 0);
    assert_int_equal(f.meta_len, 3);
    assert_memory_equal(f.meta, "old", 3);
    store_file_close(&f);
    free(before);
    free(after);
    free(big);
}

/* Only ".<valid name>.emastate.tmp-" and six letters or digits, and never a directory. */
static void test_remove_temps_removes_only_temp_files_of_saves(void **state)
{
    static const char *const temps[] = {".a.emastate.tmp-Ab12Cz", ".x.y-z_%.emastate.tmp-000000"};
    static const char *const others[] = {
        ".a.emastate.tmp-Ab12C",       /* five characters, not six */
        ".a.emastate.tmp-Ab12C!",      /* not a letter or digit */
        ".a.emastate.tmp-Ab12Cz.old",  /* something after */
        "a.emastate.tmp-Ab12Cz",       /* no leading '.' */
        "..emastate.tmp-Ab12Cz",       /* no name */
        ".a b.emastate.tmp-Ab12Cz",    /* not a valid name */
        ".a.emastat.tmp-Ab12Cz",       /* another suffix */
        ".hidden",
    };
    struct fixture *fx = *state;
    char err[ERRLEN] = "", path[PATH_MAX];
    struct store_file f;
    struct stat st;

    save_ok(fx->dir, "a", "m", 1, "d", 1);
    for (size_t i = 0; i < ARRAY_LEN(temps); i++)
        write_file(join(path, fx->dir, temps[i]), "t", 1);
    for (size_t i = 0; i < ARRAY_LEN(others); i++)
        write_file(join(path, fx->dir, others[i]), "o", 1);
    assert_int_equal(mkdir(join(path, fx->dir, ".d.emastate.tmp-Ab12Cz"), 0700), 0);

    assert_int_equal(store_remove_temps(fx->dir, err, sizeof(err)), (int)ARRAY_LEN(temps));
    for (size_t i = 0; i < ARRAY_LEN(temps); i++)
        assert_int_equal(lstat(join(path, fx->dir, temps[i]), &st), -1);
    for (size_t i = 0; i < ARRAY_LEN(others); i++)
        assert_int_equal(lstat(join(path, fx->dir, others[i]), &st), 0);
    assert_int_equal(lstat(join(path, fx->dir, ".d.emastate.tmp-Ab12Cz"), &st), 0);
    assert_int_equal(store_load(fx->dir, "a", &f, err, sizeof(err)), 0);
    store_file_close(&f);
    assert_int_equal(store_remove_temps(fx->dir, err, sizeof(err)), 0);
}

static void test_remove_temps_missing_dir_is_zero_and_a_file_an_error(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", file[PATH_MAX];

    assert_int_equal(store_remove_temps(fx->dir, err, sizeof(err)), 0); /* not made yet */
    write_file(join(file, fx->root, "plain"), "x", 1);
    assert_int_equal(store_remove_temps(file, err, sizeof(err)), -ENOTDIR);
    assert_err_has(err, file);
    assert_err_has(err, strerror(ENOTDIR));
    assert_int_equal(store_remove_temps("", err, sizeof(err)), -EINVAL);
    assert_int_equal(store_remove_temps(NULL, NULL, 0), -EINVAL);
}

static void test_save_fails_when_dir_is_under_a_regular_file(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", file[PATH_MAX], dir[PATH_MAX];
    int rc;

    write_file(join(file, fx->root, "plain"), "x", 1);
    FORMAT(dir, "%s/sub", file);
    rc = store_save(dir, "x", NULL, 0, "d", 1, NULL, 0, NULL, err, sizeof(err));
    assert_int_equal(rc, -ENOTDIR);
    assert_err_has(err, "save: creating directory ");
    assert_err_has(err, dir);
    assert_err_has(err, strerror(ENOTDIR));

    /* The state directory itself a regular file: it cannot be opened as a directory. */
    rc = store_save(file, "x", NULL, 0, "d", 1, NULL, 0, NULL, err, sizeof(err));
    assert_int_equal(rc, -ENOTDIR);
    assert_err_has(err, "save: opening directory ");
    assert_err_has(err, file);
}

static void test_save_fails_when_a_directory_occupies_the_target(void **state)
{
    /* rename() of a file over a directory fails (EISDIR): the last step, after writing. */
    struct fixture *fx = *state;
    char err[ERRLEN] = "", target[PATH_MAX];
    struct stat st;
    bool temp;
    int rc;

    assert_int_equal(mkdir(fx->dir, 0700), 0);
    assert_int_equal(mkdir(join(target, fx->dir, "busy.emastate"), 0700), 0);
    rc = store_save(fx->dir, "busy", "m", 1, "d", 1, NULL, 0, NULL, err, sizeof(err));
    assert_int_equal(rc, -EISDIR);
    assert_err_has(err, "save: renaming ");
    assert_err_has(err, target);
    assert_int_equal(stat(target, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(count_entries(fx->dir, &temp), 1);
    assert_false(temp);

    load_fails(fx->dir, "busy", -EINVAL, err);
    assert_err_has(err, "not a regular file");
}

/* The uid and gid a root test drops to: Debian's "nobody" and "nogroup". */
#define NOBODY 65534

/* A save into a directory its user may not write fails with EACCES, names the step, and leaves
 * the previous file as it was. Root writes into read-only directories, so as root (as the suite
 * runs) the save runs in a child that has become nobody, in a directory given to nobody. */
static void test_save_into_read_only_directory_fails(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", file[PATH_MAX];
    unsigned char *before, *after;
    size_t before_len, after_len;
    bool temp;
    int rc = 0, status, fds[2];
    ssize_t n;
    pid_t pid;

    save_ok(fx->dir, "ro", "m", 1, "old", 3);
    before = read_file(join(file, fx->dir, "ro.emastate"), &before_len);
    assert_non_null(before);
    if (geteuid() == 0) {
        assert_int_equal(chown(fx->root, NOBODY, NOBODY), 0);
        assert_int_equal(chown(fx->dir, NOBODY, NOBODY), 0);
    }
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (geteuid() == 0 &&
            (setgroups(0, NULL) != 0 || setgid(NOBODY) != 0 || setuid(NOBODY) != 0))
            _exit(2);
        if (geteuid() == 0 || chmod(fx->dir, 0500) != 0)
            _exit(3);
        rc = store_save(fx->dir, "ro", "m", 1, "new", 3, NULL, 0, NULL, err, sizeof(err));
        if (write(fds[1], &rc, sizeof(rc)) != (ssize_t)sizeof(rc) ||
            write(fds[1], err, strlen(err) + 1) < 0)
            _exit(4);
        _exit(0);
    }
    close(fds[1]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the child that saves as uid %d failed before saving (status 0x%x): it must "
                 "be able to drop root and reach %s", NOBODY, status, fx->dir);
    assert_int_equal(read(fds[0], &rc, sizeof(rc)), (ssize_t)sizeof(rc));
    n = read(fds[0], err, sizeof(err) - 1);
    close(fds[0]);
    err[n > 0 ? n : 0] = '\0';
    chmod(fx->dir, 0700);
    assert_int_equal(rc, -EACCES);
    assert_err_has(err, "save: creating a temp file in ");
    assert_err_has(err, fx->dir);
    after = read_file(file, &after_len);
    assert_non_null(after);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);
    assert_int_equal(count_entries(fx->dir, &temp), 1);
    assert_false(temp);
    free(before);
    free(after);
}

static void test_save_rejects_bad_arguments_before_touching_disk(void **state)
{
    struct fixture *fx = *state;
    static const char *const bad[] = {"", ".x", "..", "a/b", "../x", "a b", "a:b"};
    char err[ERRLEN], path[8], longname[STORE_NAME_MAX + 2], hugename[600];
    struct stat st;

    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        assert_int_equal(store_save(fx->dir, bad[i], NULL, 0, NULL, 0, NULL, 0, NULL, err,
                                    sizeof(err)),
                         -EINVAL);
        assert_err_has(err, "invalid file name");
    }
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(store_save(fx->dir, longname, NULL, 0, NULL, 0, NULL, 0, NULL, err,
                                sizeof(err)),
                     -EINVAL);
    /* The message quotes the name, but never a control char (no forged log lines) and never
     * more than a name's worth. */
    assert_int_equal(store_save(fx->dir, "a\nb\x01\xc3\xa9", NULL, 0, NULL, 0, NULL, 0, NULL,
                                err, sizeof(err)),
                     -EINVAL);
    assert_err_has(err, "\"a?b???\"");
    assert_null(strchr(err, '\n'));
    memset(hugename, 'h', sizeof(hugename) - 1);
    hugename[sizeof(hugename) - 1] = '\0';
    assert_int_equal(store_save(fx->dir, hugename, NULL, 0, NULL, 0, NULL, 0, NULL, err,
                                sizeof(err)),
                     -EINVAL);
    assert_err_has(err, "hhh...\"");
    assert_true(strlen(err) < STORE_NAME_MAX + 200);
    assert_int_equal(store_save(fx->dir, NULL, NULL, 0, NULL, 0, NULL, 0, NULL, err,
                                sizeof(err)),
                     -EINVAL);
    assert_int_equal(store_save("", "x", NULL, 0, NULL, 0, NULL, 0, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(store_save(fx->dir, "x", NULL, 3, NULL, 0, NULL, 0, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(store_save(fx->dir, "x", NULL, 0, NULL, 3, NULL, 0, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(store_save(fx->dir, "x", NULL, 0, "d", UINT64_MAX - 100, NULL, 0, NULL, err,
                                sizeof(err)),
                     -EFBIG);
    /* path_out too small is found before anything is written. */
    assert_int_equal(store_save(fx->dir, "x", NULL, 0, "d", 1, path, sizeof(path), NULL, err,
                                sizeof(err)),
                     -ENAMETOOLONG);
    assert_err_has(err, "does not fit");
    /* err may be NULL. */
    assert_int_equal(store_save(fx->dir, ".x", NULL, 0, NULL, 0, NULL, 0, NULL, NULL, 0),
                     -EINVAL);
    assert_int_equal(stat(fx->dir, &st), -1);
    assert_int_equal(errno, ENOENT);
}

static void test_load_missing_file_is_enoent(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN];

    load_fails(fx->dir, "nothing", -ENOENT, err); /* directory missing too */
    save_ok(fx->dir, "other", NULL, 0, NULL, 0);
    load_fails(fx->dir, "nothing", -ENOENT, err);
    assert_err_has(err, "no state file ");
    assert_err_has(err, "/nothing.emastate");
}

static void test_load_rejects_bad_names(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN];

    load_fails(fx->dir, "../etc/passwd", -EINVAL, err);
    assert_err_has(err, "invalid file name");
    load_fails(fx->dir, "", -EINVAL, err);
    load_fails(fx->dir, ".x", -EINVAL, err);
    load_fails(fx->dir, NULL, -EINVAL, err);
    load_fails("", "x", -EINVAL, err);
}

/* A small valid file to damage: returns its bytes (malloc'ed) and size. */
static unsigned char *make_small_file(const char *dir, const char *name, size_t *len,
                                      size_t meta_len, size_t data_len)
{
    char path[PATH_MAX];
    unsigned char *meta = malloc(meta_len + 1), *data = malloc(data_len + 1), *bytes;

    assert_non_null(meta);
    assert_non_null(data);
    fill_random(meta, meta_len, 41);
    fill_random(data, data_len, 42);
    save_ok(dir, name, meta, meta_len, data, data_len);
    FORMAT(path, "%s/%s.emastate", dir, name);
    bytes = read_file(path, len);
    assert_non_null(bytes);
    free(meta);
    free(data);
    return bytes;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Make a damaged file self-consistent again: the checksum over the new bytes. */
static void reseal(unsigned char *bytes, size_t len)
{
    put_le64(bytes + len - 8, store_crc32c(0, bytes, len - 8));
}

static void test_load_truncated_files_are_ebadmsg(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];
    size_t len, meta_len = 100, data_len = 5000;
    unsigned char *bytes = make_small_file(fx->dir, "t", &len, meta_len, data_len);
    const size_t data_offset = 4096;
    const size_t lengths[] = {
        0, 1, STORE_HEADER_BYTES - 1, STORE_HEADER_BYTES, STORE_HEADER_BYTES + 1,
        STORE_HEADER_BYTES + meta_len / 2, STORE_HEADER_BYTES + meta_len, data_offset - 1,
        data_offset, data_offset + data_len / 2, len - STORE_TRAILER_BYTES - 1,
        len - STORE_TRAILER_BYTES, len - 9, len - 8, len - 1,
    };

    assert_int_equal(len, data_offset + data_len + STORE_TRAILER_BYTES);
    FORMAT(path, "%s/t.emastate", fx->dir);
    for (size_t i = 0; i < ARRAY_LEN(lengths); i++) {
        write_file(path, bytes, lengths[i]);
        load_fails(fx->dir, "t", -EBADMSG, err);
        assert_err_has(err, path);
    }
    /* And every 61st length, for good measure. */
    for (size_t l = 0; l < len; l += 61) {
        write_file(path, bytes, l);
        load_fails(fx->dir, "t", -EBADMSG, err);
    }
    write_file(path, bytes, len - 1);
    load_fails(fx->dir, "t", -EBADMSG, err);
    assert_err_has(err, "truncated");

    /* One byte too many is as wrong as one too few. */
    bytes = realloc(bytes, len + 1);
    assert_non_null(bytes);
    bytes[len] = 0;
    write_file(path, bytes, len + 1);
    load_fails(fx->dir, "t", -EBADMSG, err);
    write_file(path, bytes, len);
    struct store_file f;
    assert_int_equal(store_load(fx->dir, "t", &f, err, sizeof(err)), 0);
    store_file_close(&f);
    free(bytes);
}

static void test_load_every_flipped_bit_is_rejected(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];
    size_t len;
    unsigned char *bytes = make_small_file(fx->dir, "bits", &len, 13, 64);
    int fd;

    FORMAT(path, "%s/bits.emastate", fx->dir);
    fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    for (size_t i = 0; i < len; i++) {
        for (int b = 0; b < 8; b++) {
            unsigned char flipped = bytes[i] ^ (unsigned char)(1u << b);
            assert_int_equal(pwrite(fd, &flipped, 1, (off_t)i), 1);
            load_fails(fx->dir, "bits", -EBADMSG, err);
            assert_int_equal(pwrite(fd, &bytes[i], 1, (off_t)i), 1);
        }
    }
    close(fd);
    struct store_file f;
    assert_int_equal(store_load(fx->dir, "bits", &f, err, sizeof(err)), 0);
    store_file_close(&f);
    free(bytes);
}

static void test_load_bad_magic_is_ebadmsg(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];
    size_t len;
    unsigned char *bytes = make_small_file(fx->dir, "mg", &len, 10, 10);

    FORMAT(path, "%s/mg.emastate", fx->dir);
    memcpy(bytes, "EMASEG01", 8);
    reseal(bytes, len); /* even with a matching checksum */
    write_file(path, bytes, len);
    load_fails(fx->dir, "mg", -EBADMSG, err);
    assert_err_has(err, "not an emad state file");

    /* Some other file that happens to carry the name. */
    memset(bytes, 'x', len);
    write_file(path, bytes, len);
    load_fails(fx->dir, "mg", -EBADMSG, err);
    assert_err_has(err, "not an emad state file");
    free(bytes);
}

static void test_load_other_version_is_eprotonosupport(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];
    size_t len;
    unsigned char *bytes = make_small_file(fx->dir, "v", &len, 10, 10);

    FORMAT(path, "%s/v.emastate", fx->dir);
    put_le32(bytes + 8, 2);
    reseal(bytes, len);
    write_file(path, bytes, len);
    load_fails(fx->dir, "v", -EPROTONOSUPPORT, err);
    assert_err_has(err, "version 2");
    assert_err_has(err, path);

    /* A newer version may lay out its header differently: only the trailer counts. */
    put_le64(bytes + 16, 999999);
    reseal(bytes, len);
    write_file(path, bytes, len);
    load_fails(fx->dir, "v", -EPROTONOSUPPORT, err);

    /* The same version field without a matching checksum is damage, not a newer file. */
    put_le64(bytes + len - 8, 0);
    write_file(path, bytes, len);
    load_fails(fx->dir, "v", -EBADMSG, err);
    assert_err_has(err, "damaged");
    free(bytes);
}

static void test_load_unknown_flags_are_eprotonosupport(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];
    size_t len;
    unsigned char *bytes = make_small_file(fx->dir, "fl", &len, 10, 10);

    FORMAT(path, "%s/fl.emastate", fx->dir);
    put_le32(bytes + 12, 1);
    reseal(bytes, len);
    write_file(path, bytes, len);
    load_fails(fx->dir, "fl", -EPROTONOSUPPORT, err);
    assert_err_has(err, "flags 0x1");
    free(bytes);
}

static void test_load_inconsistent_header_is_ebadmsg_even_when_sealed(void **state)
{
    /* A writer bug rather than damage: the checksum matches, the lengths do not. */
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];
    size_t len;
    unsigned char *bytes = make_small_file(fx->dir, "h", &len, 10, 8192), *copy;

    FORMAT(path, "%s/h.emastate", fx->dir);
    copy = malloc(len);
    assert_non_null(copy);

    /* data_offset a page later, data_len a page shorter: same file size. */
    memcpy(copy, bytes, len);
    put_le64(copy + 24, 8192);
    put_le64(copy + 32, 4096);
    reseal(copy, len);
    write_file(path, copy, len);
    load_fails(fx->dir, "h", -EBADMSG, err);
    assert_err_has(err, "data_offset");

    /* Lengths that overflow. */
    memcpy(copy, bytes, len);
    put_le64(copy + 16, UINT64_MAX - 10);
    reseal(copy, len);
    write_file(path, copy, len);
    load_fails(fx->dir, "h", -EBADMSG, err);
    memcpy(copy, bytes, len);
    put_le64(copy + 32, UINT64_MAX);
    reseal(copy, len);
    write_file(path, copy, len);
    load_fails(fx->dir, "h", -EBADMSG, err);

    /* No end marker. */
    memcpy(copy, bytes, len);
    memcpy(copy + len - 16, "EMASTENX", 8);
    reseal(copy, len);
    write_file(path, copy, len);
    load_fails(fx->dir, "h", -EBADMSG, err);
    assert_err_has(err, "end marker");

    /* The checksum's upper half is not part of a CRC-32. */
    memcpy(copy, bytes, len);
    copy[len - 1] ^= 0x80;
    write_file(path, copy, len);
    load_fails(fx->dir, "h", -EBADMSG, err);
    assert_err_has(err, "checksum");
    free(copy);
    free(bytes);
}

static void test_load_fifo_does_not_hang(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN], path[PATH_MAX];

    assert_int_equal(mkdir(fx->dir, 0700), 0);
    assert_int_equal(mkfifo(join(path, fx->dir, "p.emastate"), 0600), 0);
    load_fails(fx->dir, "p", -EINVAL, err);
    assert_err_has(err, "not a regular file");
}

/* ---- Files per user ---------------------------------------------------------------------- */

/* store_save_user and require success; returns the path. */
static void save_user_ok(const char *dir, uid_t uid, const char *name, const char *meta,
                         const char *data, char *path)
{
    char err[ERRLEN] = "";
    int rc = store_save_user(dir, uid, name, NULL, meta, strlen(meta), data, strlen(data),
                             path, PATH_MAX, NULL, err, sizeof(err));

    if (rc != 0)
        fail_msg("store_save_user %s uid %lu %s: %d: %s", dir, (unsigned long)uid, name, rc, err);
}

/* store_load_user and require the file holding meta and data, from path want_path. */
static void load_user_expect(const char *dir, uid_t uid, const char *name, const char *meta,
                             const char *data, const char *want_path)
{
    char err[ERRLEN] = "", path[PATH_MAX] = "";
    struct store_file f;
    int rc = store_load_user(dir, uid, name, &f, path, sizeof(path), err, sizeof(err));

    if (rc != 0)
        fail_msg("store_load_user %s uid %lu %s: %d: %s", dir, (unsigned long)uid, name, rc, err);
    assert_string_equal(path, want_path);
    assert_int_equal(f.meta_len, strlen(meta));
    assert_memory_equal(f.meta, meta, f.meta_len);
    assert_int_equal(f.data_len, strlen(data));
    assert_memory_equal(f.data, data, f.data_len);
    store_file_close(&f);
}

static void assert_mode(const char *path, mode_t mode)
{
    struct stat st;

    assert_int_equal(lstat(path, &st), 0);
    if ((st.st_mode & 07777) != mode)
        fail_msg("%s: mode %04o, expected %04o", path, (unsigned)(st.st_mode & 07777),
                 (unsigned)mode);
}

/* One name, two uids, two files, each in its uid's own 0700 directory; a third uid finds
 * nothing, and its message names only its own directory. */
static void test_save_user_keeps_each_uid_in_its_own_directory(void **state)
{
    struct fixture *fx = *state;
    char a[PATH_MAX], b[PATH_MAX], want[PATH_MAX], err[ERRLEN] = "";
    struct store_file f;

    save_user_ok(fx->dir, 1000, "same", "meta-a", "data-a", a);
    save_user_ok(fx->dir, 2000, "same", "meta-b", "data-b", b);
    FORMAT(want, "%s/users/1000/same.emastate", fx->dir);
    assert_string_equal(a, want);
    FORMAT(want, "%s/users/2000/same.emastate", fx->dir);
    assert_string_equal(b, want);
    FORMAT(want, "%s/users", fx->dir);
    assert_mode(want, 0700);
    FORMAT(want, "%s/users/1000", fx->dir);
    assert_mode(want, 0700);
    assert_mode(a, 0600);
    load_user_expect(fx->dir, 1000, "same", "meta-a", "data-a", a);
    load_user_expect(fx->dir, 2000, "same", "meta-b", "data-b", b);

    assert_int_equal(store_load_user(fx->dir, 3000, "same", &f, NULL, 0, err, sizeof(err)),
                     -ENOENT);
    FORMAT(want, "%s/users/3000/same.emastate", fx->dir);
    assert_err_has(err, want);
    assert_null(strstr(err, "1000"));
    assert_null(f.map);
}

/* A state directory that others may write, or that is not emad's, is refused by every entry
 * point, with a message naming it, what is wrong and the fix; 0755 is fine. */
static void test_state_dir_writable_by_others_or_foreign_is_refused(void **state)
{
    struct fixture *fx = *state;
    static const mode_t bad[] = {01777, 0777, 0770, 0720, 0702};
    char err[ERRLEN] = "", mode[16];
    struct store_file f;

    assert_int_equal(mkdir(fx->dir, 0700), 0);
    for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
        assert_int_equal(chmod(fx->dir, bad[i]), 0);
        FORMAT(mode, "mode %04o", (unsigned)bad[i]);
        assert_int_equal(store_check_dir(fx->dir, err, sizeof(err)), -EPERM);
        assert_err_has(err, fx->dir);
        assert_err_has(err, mode);
        assert_err_has(err, "chmod go-w");
        assert_int_equal(store_lock_dir(fx->dir, err, sizeof(err)), -EPERM);
        assert_err_has(err, "writable by group or others");
        assert_int_equal(store_save_user(fx->dir, 5, "x", NULL, NULL, 0, "d", 1, NULL, 0, NULL,
                                         err, sizeof(err)),
                         -EPERM);
        assert_err_has(err, "writable by group or others");
        assert_int_equal(store_load_user(fx->dir, 5, "x", &f, NULL, 0, err, sizeof(err)),
                         -EPERM);
        assert_err_has(err, "writable by group or others");
    }
    assert_int_equal(chmod(fx->dir, 0755), 0);
    assert_int_equal(store_check_dir(fx->dir, err, sizeof(err)), 0);
    int fd = store_lock_dir(fx->dir, err, sizeof(err));
    assert_true(fd >= 0);
    close(fd);

    /* A user's directory that others may write is refused the same way. */
    char users[PATH_MAX], mine[PATH_MAX];
    save_user_ok(fx->dir, 5, "x", "m", "d", mine);
    FORMAT(users, "%s/users/5", fx->dir);
    assert_int_equal(chmod(users, 0777), 0);
    assert_int_equal(store_load_user(fx->dir, 5, "x", &f, NULL, 0, err, sizeof(err)), -EPERM);
    assert_err_has(err, users);
    assert_int_equal(chmod(users, 0700), 0);

    if (geteuid() == 0) {
        assert_int_equal(chown(fx->dir, NOBODY, NOBODY), 0);
        assert_int_equal(store_check_dir(fx->dir, err, sizeof(err)), -EPERM);
        assert_err_has(err, "belongs to uid 65534, not to emad's uid 0");
        assert_int_equal(store_save_user(fx->dir, 5, "x", NULL, NULL, 0, "d", 1, NULL, 0, NULL,
                                         err, sizeof(err)),
                         -EPERM);
        assert_int_equal(chown(fx->dir, 0, 0), 0);
    }
}

/* A link is never followed: not the state directory's last component, not users/ or a user's
 * directory, not a state file (where the name is a link, a save replaces the link itself). */
static void test_links_in_the_state_directory_are_never_followed(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", link[PATH_MAX], target[PATH_MAX], path[PATH_MAX], other[PATH_MAX];
    unsigned char *before, *after;
    size_t before_len, after_len;
    struct store_file f;
    struct stat st;

    /* Another directory of emad's, with a valid state file in it. */
    FORMAT(other, "%s/other", fx->root);
    save_ok(other, "t", "theirs", 6, "their data", 10);
    join(target, other, "t.emastate");
    before = read_file(target, &before_len);
    assert_non_null(before);

    /* The state directory itself a link. */
    FORMAT(link, "%s/link", fx->root);
    assert_int_equal(symlink(other, link), 0);
    assert_int_equal(store_check_dir(link, err, sizeof(err)), -ELOOP);
    assert_err_has(err, link);
    assert_err_has(err, "symbolic link");
    assert_int_equal(store_lock_dir(link, err, sizeof(err)), -ELOOP);

    /* A user's file a link to that file: load refuses, save replaces the link. */
    save_user_ok(fx->dir, 7, "mine", "m", "d", path);
    FORMAT(link, "%s/users/7/t.emastate", fx->dir);
    assert_int_equal(symlink(target, link), 0);
    assert_int_equal(store_load_user(fx->dir, 7, "t", &f, NULL, 0, err, sizeof(err)), -ELOOP);
    assert_err_has(err, "symbolic link");
    assert_null(strstr(err, "theirs"));
    FORMAT(path, "%s/users/7", fx->dir);
    assert_int_equal(store_load(path, "t", &f, err, sizeof(err)), -ELOOP);
    save_user_ok(fx->dir, 7, "t", "new", "new data", path);
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    after = read_file(target, &after_len);
    assert_non_null(after);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len);

    /* A user's directory a link to another directory: neither save nor load goes there. */
    FORMAT(link, "%s/users/8", fx->dir);
    assert_int_equal(symlink(other, link), 0);
    assert_int_equal(store_load_user(fx->dir, 8, "t", &f, NULL, 0, err, sizeof(err)), -ELOOP);
    assert_err_has(err, link);
    assert_int_equal(store_save_user(fx->dir, 8, "t", NULL, NULL, 0, "x", 1, NULL, 0, NULL,
                                     err, sizeof(err)),
                     -ELOOP);
    free(after);
    after = read_file(target, &after_len);
    assert_non_null(after);
    assert_memory_equal(after, before, before_len);

    /* A link in the state directory itself, where files of older emads are looked for. */
    FORMAT(link, "%s/t.emastate", fx->dir);
    assert_int_equal(symlink(target, link), 0);
    assert_int_equal(store_load_user(fx->dir, 9, "t", &f, NULL, 0, err, sizeof(err)), -ELOOP);
    assert_null(f.map);
    free(before);
    free(after);
}

/* A file an older emad saved in the state directory itself is found when the user's directory
 * has none of that name; the user's own file wins; a damaged one gets a message that shows
 * nothing of it (whose it is is not known yet). */
static void test_load_user_falls_back_to_files_of_older_emads_and_says_nothing_of_them(
    void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", legacy[PATH_MAX], mine[PATH_MAX];
    unsigned char *bytes;
    size_t len;
    struct store_file f;

    save_ok(fx->dir, "old", "old-meta", 8, "old-data", 8);
    join(legacy, fx->dir, "old.emastate");
    load_user_expect(fx->dir, 42, "old", "old-meta", "old-data", legacy);

    save_user_ok(fx->dir, 42, "old", "my-meta", "my-data", mine);
    load_user_expect(fx->dir, 42, "old", "my-meta", "my-data", mine);
    load_user_expect(fx->dir, 43, "old", "old-meta", "old-data", legacy);

    /* Damaged: the checksum no longer matches. */
    bytes = read_file(legacy, &len);
    assert_non_null(bytes);
    bytes[41] ^= 1;
    write_file(legacy, bytes, len);
    assert_int_equal(store_load_user(fx->dir, 43, "old", &f, NULL, 0, err, sizeof(err)),
                     -EBADMSG);
    assert_err_has(err, legacy);
    assert_err_has(err, "saved by an older emad");
    assert_null(strstr(err, "checksum"));
    assert_null(strstr(err, "bytes"));
    assert_null(f.map);
    /* Truncated: its header's lengths are not shown either. */
    write_file(legacy, bytes, len - 100);
    assert_int_equal(store_load_user(fx->dir, 43, "old", &f, NULL, 0, err, sizeof(err)),
                     -EBADMSG);
    assert_null(strstr(err, "bytes"));
    assert_null(strstr(err, "metadata"));
    free(bytes);

    if (geteuid() == 0) {
        /* Intact but not emad's: someone else put it there. */
        save_ok(fx->dir, "planted", "m", 1, "d", 1);
        join(legacy, fx->dir, "planted.emastate");
        assert_int_equal(chown(legacy, NOBODY, NOBODY), 0);
        assert_int_equal(store_load_user(fx->dir, 43, "planted", &f, NULL, 0, err, sizeof(err)),
                         -EPERM);
        assert_err_has(err, "not emad's");
    }
}

/* Temp files of users' saves cut short are removed from every users/<uid>/ (and nothing else
 * is: a state file, a directory not named by a uid, what a link points to). */
static void test_remove_temps_removes_them_from_users_directories(void **state)
{
    struct fixture *fx = *state;
    char err[ERRLEN] = "", path[PATH_MAX], dir[PATH_MAX], other[PATH_MAX];
    struct stat st;
    bool temp;

    save_user_ok(fx->dir, 11, "a", "m", "d", path);
    save_user_ok(fx->dir, 12, "b", "m", "d", path);
    FORMAT(path, "%s/users/11/.a.emastate.tmp-Qx81aZ", fx->dir);
    write_file(path, "x", 1);
    FORMAT(path, "%s/users/12/.b.emastate.tmp-000000", fx->dir);
    write_file(path, "x", 1);
    FORMAT(dir, "%s/users/notauid", fx->dir);
    assert_int_equal(mkdir(dir, 0700), 0);
    FORMAT(path, "%s/.c.emastate.tmp-abcdef", dir);
    write_file(path, "x", 1);
    FORMAT(other, "%s/elsewhere", fx->root);
    assert_int_equal(mkdir(other, 0700), 0);
    FORMAT(path, "%s/.d.emastate.tmp-abcdef", other);
    write_file(path, "x", 1);
    FORMAT(dir, "%s/users/13", fx->dir);
    assert_int_equal(symlink(other, dir), 0);

    assert_int_equal(store_remove_temps(fx->dir, err, sizeof(err)), 2);
    FORMAT(dir, "%s/users/11", fx->dir);
    assert_int_equal(count_entries(dir, &temp), 1);
    assert_false(temp);
    FORMAT(dir, "%s/users/12", fx->dir);
    assert_int_equal(count_entries(dir, &temp), 1);
    assert_false(temp);
    FORMAT(dir, "%s/users/notauid", fx->dir);
    assert_int_equal(count_entries(dir, &temp), 1);
    assert_int_equal(stat(path, &st), 0);
}

/* ---- Quotas per user ---------------------------------------------------------------------- */

/* The check alone: one more file than allowed, one byte more than allowed, each refused with
 * -EDQUOT and a message naming the option, the directory, the use and what to do; the file a
 * save replaces counted back, as a file and as bytes; exactly at the limits is allowed. */
static void test_quota_check_counts_files_and_bytes_and_the_replaced_file_back(void **state)
{
    const struct store_quota q = {2, 10000};
    const char *dir = "/s/users/1000";
    char err[ERRLEN] = "";
    (void)state;

    /* Files. */
    struct store_usage used = {1, 5000};
    assert_int_equal(store_quota_check(&q, &used, false, 0, 5000, dir, err, sizeof(err)), 0);
    used = (struct store_usage){2, 5000};
    assert_int_equal(store_quota_check(&q, &used, false, 0, 100, dir, err, sizeof(err)),
                     -EDQUOT);
    assert_err_has(err, "--max-state-files-per-uid");
    assert_err_has(err, "/s/users/1000 holds 2 state files");
    assert_err_has(err, "allows 2 per user");
    assert_err_has(err, "no request deletes a state file");
    assert_int_equal(store_quota_check(&q, &used, true, 100, 100, dir, err, sizeof(err)), 0);
    used = (struct store_usage){5, 5000}; /* the limit lowered since */
    assert_int_equal(store_quota_check(&q, &used, true, 100, 100, dir, err, sizeof(err)),
                     -EDQUOT);
    assert_err_has(err, "holds 5 state files");

    /* Bytes. */
    used = (struct store_usage){1, 6000};
    assert_int_equal(store_quota_check(&q, &used, false, 0, 4001, dir, err, sizeof(err)),
                     -EDQUOT);
    assert_err_has(err, "--max-state-bytes-per-uid");
    assert_err_has(err, "a file of 4001 bytes would bring the state files in /s/users/1000");
    assert_err_has(err, "to 10001 bytes");
    assert_err_has(err, "allows 10000 per user");
    assert_err_has(err, "no request deletes a state file");
    assert_int_equal(store_quota_check(&q, &used, false, 0, 4000, dir, err, sizeof(err)), 0);
    /* Replacing 6000 bytes with 9000 leaves 9000. */
    assert_int_equal(store_quota_check(&q, &used, true, 6000, 9000, dir, err, sizeof(err)), 0);
    assert_int_equal(store_quota_check(&q, &used, true, 6000, 10001, dir, err, sizeof(err)),
                     -EDQUOT);
    assert_err_has(err, "to 10001 bytes");

    /* No wrap-around. */
    used = (struct store_usage){0, UINT64_MAX - 1};
    assert_int_equal(store_quota_check(&q, &used, false, 0, 10, dir, err, sizeof(err)),
                     -EDQUOT);
    used = (struct store_usage){0, 0};
    assert_int_equal(store_quota_check(&q, &used, false, 0, UINT64_MAX, dir, err, sizeof(err)),
                     -EDQUOT);
}

/* store_save_user with "m" and data bytes of 'd' under quota q, expecting rc. */
static void save_quota(const char *dir, uid_t uid, const char *name, size_t data_len,
                       const struct store_quota *q, int want, char *err)
{
    char data[256];
    int rc;

    assert_true(data_len <= sizeof(data));
    memset(data, 'd', data_len);
    err[0] = '\0';
    rc = store_save_user(dir, uid, name, q, "m", 1, data, data_len, NULL, 0, NULL, err, ERRLEN);
    if (rc != want)
        fail_msg("store_save_user uid %lu %s: %d, expected %d: %s", (unsigned long)uid, name, rc,
                 want, err);
}

/* A file of meta "m" and n bytes of data has 4096 + n + 16 bytes (store.h's layout). */
#define SMALL_FILE(n) (STORE_ALIGN + (n) + STORE_TRAILER_BYTES)

/*
 * Through store_save_user: a save over the count or the bytes is refused before anything is
 * written (the user's files byte-identical, no temp file left); a save that replaces a file of
 * the same name counts without it; a temp file of a save (here one a crash left) counts; another
 * uid's directory is not counted; no quota, no limit.
 */
static void test_save_user_over_quota_is_refused_and_leaves_the_files_intact(void **state)
{
    struct fixture *fx = *state;
    const struct store_quota files2 = {2, 1u << 20};
    char err[ERRLEN], udir[PATH_MAX], a[PATH_MAX], b[PATH_MAX], tmp[PATH_MAX];
    unsigned char *a_before, *b_before, *after;
    size_t a_len, b_len, len;
    bool temp;

    FORMAT(udir, "%s/users/1000", fx->dir);
    FORMAT(a, "%s/a.emastate", udir);
    FORMAT(b, "%s/b.emastate", udir);
    assert_int_equal(mkdir(fx->dir, 0700), 0);
    save_quota(fx->dir, 1000, "a", 10, &files2, 0, err);
    save_quota(fx->dir, 1000, "b", 10, &files2, 0, err);
    a_before = read_file(a, &a_len);
    b_before = read_file(b, &b_len);
    assert_non_null(a_before);
    assert_non_null(b_before);

    /* A third file: refused, nothing written. */
    save_quota(fx->dir, 1000, "c", 10, &files2, -EDQUOT, err);
    assert_err_has(err, "--max-state-files-per-uid");
    assert_err_has(err, udir);
    assert_int_equal(count_entries(udir, &temp), 2);
    assert_false(temp);
    after = read_file(a, &len);
    assert_non_null(after);
    assert_int_equal(len, a_len);
    assert_memory_equal(after, a_before, len);
    free(after);
    after = read_file(b, &len);
    assert_non_null(after);
    assert_int_equal(len, b_len);
    assert_memory_equal(after, b_before, len);
    free(after);

    /* Replacing one is no new file; another uid has its own count; no quota, no limit. */
    save_quota(fx->dir, 1000, "a", 20, &files2, 0, err);
    save_quota(fx->dir, 2000, "c", 10, &files2, 0, err);
    save_quota(fx->dir, 1000, "c", 10, NULL, 0, err);
    FORMAT(tmp, "%s/c.emastate", udir);
    assert_int_equal(unlink(tmp), 0);

    /* A temp file left by a save cut short counts, as a file and as bytes. */
    FORMAT(tmp, "%s/.z.emastate.tmp-Qx81aZ", udir);
    write_file(tmp, "x", 1);
    save_quota(fx->dir, 1000, "a", 10, &files2, -EDQUOT, err);
    assert_err_has(err, "holds 3 state files");
    assert_int_equal(unlink(tmp), 0);

    /* Bytes: a holds SMALL_FILE(20), b SMALL_FILE(10). Replacing a with a file 100 bytes
     * bigger needs room for 100 more; the old a is counted back. */
    const uint64_t now = SMALL_FILE(20) + SMALL_FILE(10);
    const struct store_quota bytes = {100, now + 99};
    save_quota(fx->dir, 1000, "a", 120, &bytes, -EDQUOT, err);
    assert_err_has(err, "--max-state-bytes-per-uid");
    char want[128];
    FORMAT(want, "a file of %u bytes", (unsigned)SMALL_FILE(120));
    assert_err_has(err, want);
    FORMAT(want, "to %" PRIu64 " bytes", now + 100);
    assert_err_has(err, want);
    assert_int_equal(count_entries(udir, &temp), 2);
    assert_false(temp);
    save_quota(fx->dir, 1000, "a", 119, &bytes, 0, err);
    /* And a new name needs its whole size free. */
    save_quota(fx->dir, 1000, "n", 0, &bytes, -EDQUOT, err);
    free(a_before);
    free(b_before);
}

/* One of the concurrent savers of the next test. */
struct racer {
    const char *dir;
    const struct store_quota *quota;
    pthread_barrier_t *start;
    char name[16];
    int rc;
    char err[ERRLEN];
};

static void *race_save(void *arg)
{
    static const char data[64 << 10];
    struct racer *r = arg;

    pthread_barrier_wait(r->start);
    r->rc = store_save_user(r->dir, 1000, r->name, r->quota, "m", 1, data, sizeof(data), NULL, 0,
                            NULL, r->err, sizeof(r->err));
    return NULL;
}

/* Saves of one uid at once, as emad's workers run them: exactly as many as the quota allows go
 * through, the others are refused; none passes the check while another's temp file is not yet
 * counted. */
static void test_concurrent_saves_of_one_uid_stop_at_the_quota(void **state)
{
    struct fixture *fx = *state;
    enum { RACERS = 8, ROUNDS = 20 };
    const struct store_quota q = {3, 1u << 30};
    struct racer r[RACERS];
    pthread_t th[RACERS];
    pthread_barrier_t start;
    char udir[PATH_MAX];
    bool temp;

    assert_int_equal(mkdir(fx->dir, 0700), 0);
    FORMAT(udir, "%s/users/1000", fx->dir);
    for (int round = 0; round < ROUNDS; round++) {
        int ok = 0, refused = 0;

        assert_int_equal(pthread_barrier_init(&start, NULL, RACERS), 0);
        for (int i = 0; i < RACERS; i++) {
            r[i] = (struct racer){.dir = fx->dir, .quota = &q, .start = &start};
            FORMAT(r[i].name, "r%d-%d", round, i);
            assert_int_equal(pthread_create(&th[i], NULL, race_save, &r[i]), 0);
        }
        for (int i = 0; i < RACERS; i++) {
            assert_int_equal(pthread_join(th[i], NULL), 0);
            if (r[i].rc == 0)
                ok++;
            else if (r[i].rc == -EDQUOT)
                refused++;
            else
                fail_msg("save %s: %d: %s", r[i].name, r[i].rc, r[i].err);
        }
        pthread_barrier_destroy(&start);
        if (ok != 3 || refused != RACERS - 3)
            fail_msg("round %d: %d saves went through and %d were refused; the quota allows 3",
                     round, ok, refused);
        assert_int_equal(count_entries(udir, &temp), 3);
        assert_false(temp);
        for (int i = 0; i < RACERS; i++) {
            char path[PATH_MAX];
            FORMAT(path, "%s/%s.emastate", udir, r[i].name);
            if (r[i].rc == 0)
                assert_int_equal(unlink(path), 0);
        }
    }
}

/* Closing unmaps the file and zeroes the struct; a zeroed struct and NULL are accepted. */
static void test_file_close_unmaps_zeroes_and_accepts_null_and_zeroed(void **state)
{
    struct fixture *fx = *state;
    static const struct store_file zero;
    char err[ERRLEN] = "";
    unsigned char vec[4];
    struct store_file f;
    void *map;
    size_t len;

    save_ok(fx->dir, "c", "meta", 4, "data", 4);
    assert_int_equal(store_load(fx->dir, "c", &f, err, sizeof(err)), 0);
    map = f.map;
    len = f.map_len;
    assert_int_equal(mincore(map, len, vec), 0); /* mapped */
    store_file_close(&f);
    assert_memory_equal(&f, &zero, sizeof(f));
    /* Gone from the address space: mincore() fails with ENOMEM on an unmapped range. */
    assert_int_equal(mincore(map, len, vec), -1);
    assert_int_equal(errno, ENOMEM);
    store_file_close(&f);
    assert_memory_equal(&f, &zero, sizeof(f));
    store_file_close(NULL);
}

#define STORE_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_matches_published_vectors),
        cmocka_unit_test(test_crc32c_reports_hw_where_the_cpu_has_sse42),
        cmocka_unit_test(test_crc32c_every_table_entry_matches_bitwise_definition),
        cmocka_unit_test(test_crc32c_hw_equals_portable_at_every_length_and_alignment),
        cmocka_unit_test(test_crc32c_chains_across_any_split),
        cmocka_unit_test(test_name_valid_accepts_and_rejects),
        cmocka_unit_test(test_default_name_maps_session_names),
        cmocka_unit_test(test_default_name_rejects_bad_sessions_and_long_results),
        cmocka_unit_test(test_default_name_is_injective),
        STORE_TEST(test_round_trip_empty_meta_and_data),
        STORE_TEST(test_round_trip_small),
        STORE_TEST(test_round_trip_large),
        STORE_TEST(test_save_makes_mode_0600_file_and_leaves_no_temp),
        STORE_TEST(test_save_creates_missing_directories_0700),
        STORE_TEST(test_save_replaces_existing_file_and_old_mapping_stays),
        STORE_TEST(test_save_failure_leaves_previous_file_intact),
        STORE_TEST(test_save_killed_midway_leaves_a_temp_that_remove_temps_removes),
        STORE_TEST(test_remove_temps_removes_only_temp_files_of_saves),
        STORE_TEST(test_remove_temps_missing_dir_is_zero_and_a_file_an_error),
        STORE_TEST(test_save_fails_when_dir_is_under_a_regular_file),
        STORE_TEST(test_save_fails_when_a_directory_occupies_the_target),
        STORE_TEST(test_save_into_read_only_directory_fails),
        STORE_TEST(test_save_rejects_bad_arguments_before_touching_disk),
        STORE_TEST(test_load_missing_file_is_enoent),
        STORE_TEST(test_load_rejects_bad_names),
        STORE_TEST(test_load_truncated_files_are_ebadmsg),
        STORE_TEST(test_load_every_flipped_bit_is_rejected),
        STORE_TEST(test_load_bad_magic_is_ebadmsg),
        STORE_TEST(test_load_other_version_is_eprotonosupport),
        STORE_TEST(test_load_unknown_flags_are_eprotonosupport),
        STORE_TEST(test_load_inconsistent_header_is_ebadmsg_even_when_sealed),
        STORE_TEST(test_load_fifo_does_not_hang),
        STORE_TEST(test_save_user_keeps_each_uid_in_its_own_directory),
        STORE_TEST(test_state_dir_writable_by_others_or_foreign_is_refused),
        STORE_TEST(test_links_in_the_state_directory_are_never_followed),
        STORE_TEST(test_load_user_falls_back_to_files_of_older_emads_and_says_nothing_of_them),
        STORE_TEST(test_remove_temps_removes_them_from_users_directories),
        STORE_TEST(test_file_close_unmaps_zeroes_and_accepts_null_and_zeroed),
        cmocka_unit_test(test_quota_check_counts_files_and_bytes_and_the_replaced_file_back),
        STORE_TEST(test_save_user_over_quota_is_refused_and_leaves_the_files_intact),
        STORE_TEST(test_concurrent_saves_of_one_uid_stop_at_the_quota),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
