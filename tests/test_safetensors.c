/*
 * test_safetensors.c - the safetensors files (proto/safetensors.c), the durable writer
 * (proto/durable.c) and the 16-bit float conversions (proto/half.c), the latter against the
 * kernels' references (daemon/kernel.c).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "durable.h"
#include "half.h"
#include "kernel.h"
#include "safetensors.h"
#include "scratch.h"

/* Entries of tmpdir whose name starts with '.' (temp files left behind). */
static int hidden_entries(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    int n = 0;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] == '.' && strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void write_file(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    fclose(f);
}

static void test_a_written_file_reads_back_with_names_shapes_metadata_and_data(void **state)
{
    (void)state;
    /* Names that need escaping, a multi-byte character, a scalar and an empty tensor. */
    struct st_tensor t[] = {
        {.name = "w\"q\\uote\n", .dtype = DTYPE_F32, .rank = 2, .shape = {2, 3}},
        {.name = "caf\xc3\xa9.bias", .dtype = DTYPE_BF16, .rank = 1, .shape = {3}},
        {.name = "step", .dtype = DTYPE_I64, .rank = 0},
        {.name = "empty", .dtype = DTYPE_F16, .rank = 2, .shape = {0, 4}},
    };
    struct st_meta meta[] = {{"gamma", "6.94"}, {"note", "tab\there \"q\" \x01"}};
    float w[6] = {1, 2, 3, 4, 5, -6.5f};
    uint16_t b[3] = {0x3f80, 0x4000, 0xc040};
    int64_t step = 42;
    char path[512], err[256];
    struct durable d;
    struct st_writer wr;
    struct st_file f;

    path_in(path, sizeof(path), "", "rt.safetensors");
    assert_int_equal(durable_open(&d, AT_FDCWD, path, 0640, err, sizeof(err)), 0);
    assert_int_equal(st_writer_begin(&wr, d.fd, t, 4, meta, 2, err, sizeof(err)), 0);
    /* Any chunking: the f32 tensor in two pieces, the next two in one. */
    assert_int_equal(st_writer_write(&wr, w, 10, err, sizeof(err)), 0);
    assert_int_equal(st_writer_write(&wr, (char *)w + 10, 14, err, sizeof(err)), 0);
    char tail[14];
    memcpy(tail, b, 6);
    memcpy(tail + 6, &step, 8);
    assert_int_equal(st_writer_write(&wr, tail, 14, err, sizeof(err)), 0);
    assert_int_equal(st_writer_write(&wr, "x", 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "would pass the 38"));
    assert_int_equal(st_writer_finish(&wr, err, sizeof(err)), 0);
    assert_int_equal(durable_commit(&d, err, sizeof(err)), 0);
    assert_int_equal(hidden_entries(), 0);

    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);

    assert_int_equal(st_open(&f, path, err, sizeof(err)), 0);
    assert_int_equal(f.data_start % 8, 0);
    assert_int_equal(f.size, f.data_start + 38);
    assert_int_equal(f.h.ntensors, 4);
    const struct st_tensor *x = st_find(&f.h, "w\"q\\uote\n");
    assert_non_null(x);
    assert_int_equal(x->dtype, DTYPE_F32);
    assert_int_equal(x->rank, 2);
    assert_int_equal(x->shape[0], 2);
    assert_int_equal(x->shape[1], 3);
    assert_int_equal(x->begin, 0);
    assert_int_equal(x->end, 24);
    float wr_back[6];
    assert_int_equal(st_read(&f, x, 0, wr_back, 24, err, sizeof(err)), 0);
    assert_memory_equal(wr_back, w, 24);
    assert_int_equal(st_read(&f, x, 20, wr_back, 8, err, sizeof(err)), -EINVAL);
    x = st_find(&f.h, "caf\xc3\xa9.bias");
    assert_non_null(x);
    assert_int_equal(x->dtype, DTYPE_BF16);
    uint16_t bb[3];
    assert_int_equal(st_read(&f, x, 0, bb, 6, err, sizeof(err)), 0);
    assert_memory_equal(bb, b, 6);
    x = st_find(&f.h, "step");
    assert_non_null(x);
    assert_int_equal(x->rank, 0);
    int64_t s;
    assert_int_equal(st_read(&f, x, 0, &s, 8, err, sizeof(err)), 0);
    assert_int_equal(s, 42);
    x = st_find(&f.h, "empty");
    assert_non_null(x);
    assert_int_equal(x->begin, x->end);
    assert_null(st_find(&f.h, "nope"));
    assert_string_equal(st_meta_get(&f.h, "gamma"), "6.94");
    assert_string_equal(st_meta_get(&f.h, "note"), "tab\there \"q\" \x01");
    assert_null(st_meta_get(&f.h, "batch"));
    /* Data order is the table's order. */
    assert_string_equal(f.h.tensors[0].name, "w\"q\\uote\n");
    assert_string_equal(f.h.tensors[2].name, "step");
    st_close(&f);
}

static void test_the_header_is_the_documented_json_padded_with_spaces(void **state)
{
    struct st_tensor t[] = {{.name = "a", .dtype = DTYPE_F32, .rank = 1, .shape = {2}}};
    struct st_meta m[] = {{"k", "v"}};
    char *hdr, err[256];
    size_t len;
    uint64_t data;
    (void)state;

    assert_int_equal(st_header_build(t, 1, m, 1, &hdr, &len, &data, err, sizeof(err)), 0);
    assert_int_equal(len % 8, 0);
    assert_int_equal(data, 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | (unsigned char)hdr[i];
    assert_int_equal(n, len - 8);
    const char *want = "{\"__metadata__\":{\"k\":\"v\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],"
                       "\"data_offsets\":[0,8]}}";
    assert_memory_equal(hdr + 8, want, strlen(want));
    for (size_t i = 8 + strlen(want); i < len; i++)
        assert_int_equal(hdr[i], ' ');
    free(hdr);
}

static void test_the_writer_refuses_bad_tables(void **state)
{
    char *hdr, err[256];
    size_t len;
    (void)state;

    struct st_tensor dup[] = {{.name = "a", .dtype = DTYPE_F32, .rank = 0},
                              {.name = "a", .dtype = DTYPE_F32, .rank = 0}};
    assert_int_equal(st_header_build(dup, 2, NULL, 0, &hdr, &len, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "tensor \"a\" appears twice");
    struct st_tensor bad_utf8[] = {{.name = "a\xff", .dtype = DTYPE_F32, .rank = 0}};
    assert_int_equal(st_header_build(bad_utf8, 1, NULL, 0, &hdr, &len, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "not valid UTF-8"));
    struct st_tensor rank9[] = {{.name = "r", .dtype = DTYPE_F32, .rank = 9}};
    assert_int_equal(st_header_build(rank9, 1, NULL, 0, &hdr, &len, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "rank 9 is more than 8"));
    struct st_tensor empty[] = {{.name = "", .dtype = DTYPE_F32, .rank = 0}};
    assert_int_equal(st_header_build(empty, 1, NULL, 0, &hdr, &len, NULL, err, sizeof(err)),
                     -EINVAL);
    struct st_tensor meta_name[] = {{.name = "__metadata__", .dtype = DTYPE_F32, .rank = 0}};
    assert_int_equal(st_header_build(meta_name, 1, NULL, 0, &hdr, &len, NULL, err, sizeof(err)),
                     -EINVAL);
    struct st_tensor huge[] = {
        {.name = "h", .dtype = DTYPE_F32, .rank = 2, .shape = {1ull << 40, 1ull << 30}}};
    assert_int_equal(st_header_build(huge, 1, NULL, 0, &hdr, &len, NULL, err, sizeof(err)),
                     -EOVERFLOW);
    struct st_meta dupm[] = {{"k", "1"}, {"k", "2"}};
    struct st_tensor ok[] = {{.name = "a", .dtype = DTYPE_F32, .rank = 0}};
    assert_int_equal(st_header_build(ok, 1, dupm, 2, &hdr, &len, NULL, err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "metadata key \"k\" appears twice");
}

/* Each hostile header, the data size it claims to describe, and a piece of its message. */
static const struct {
    const char *json;
    uint64_t data;
    const char *msg;
} bad_headers[] = {
    {"", 0, "must start with '{'"},
    {" {}", 0, "must start with '{'"},
    {"[]", 0, "must start with '{'"},
    {"{", 0, "expected a string, found the end"},
    {"{}x", 0, "only spaces may follow"},
    {"{} {}", 0, "only spaces may follow"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4, "expected a string"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "expected ',' or '}'"},
    {"{\"a\" {}}", 0, "expected ':'"},
    {"{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1,
     "dtype \"F8_E4M3\" is not one emad handles"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
     "expected a non-negative integer, found '-'"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4,
     "not a fraction or exponent"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, "leading zero"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}", 4,
     "2^64 or more"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
     "more than 8 entries in a shape"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     "tensor \"a\": data_offsets [0, 4] hold 4 bytes, its shape and dtype F32 need 8"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4,
     "end before they begin"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
     "data_offsets has 1 entries, not 2"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4,
     "more than 2 entries in data_offsets"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor \"a\": no data_offsets"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor \"a\": no dtype"},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "key \"dtype\" is unknown or repeated"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
     "key \"x\" is unknown or repeated"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     "tensor \"a\": its data begins at 4, the previous tensor's ends at 0 (a gap)"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "(they overlap)"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
     "the tensors hold 4 bytes of data, the file has 8 after the header"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
     "tensor \"a\" appears twice"},
    {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "empty name"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "metadata values are strings"},
    {"{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, "metadata key \"k\" appears twice"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ appears twice"},
    {"{\"__metadata__\":[]}", 0, "expected '{' (the __metadata__ map)"},
    {"{\"a\\u0000b\":{}}", 0, "NUL character"},
    {"{\"a\\ud800\":{}}", 0, "without its low half"},
    {"{\"a\\udc00\":{}}", 0, "lone low surrogate"},
    {"{\"a\\x\":{}}", 0, "unknown escape"},
    {"{\"a\\u12g4\":{}}", 0, "four hex digits"},
    {"{\"a\tb\":{}}", 0, "control character"},
    {"{\"\xc3\x28\":{}}", 0, "not valid UTF-8"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
     "\"data_offsets\":[0,4]}}", 4, "overflows 64 bits"},
};

static void test_every_malformed_header_is_refused_with_its_reason(void **state)
{
    char err[512];
    struct st_header h;
    (void)state;

    for (size_t i = 0; i < sizeof(bad_headers) / sizeof(bad_headers[0]); i++) {
        err[0] = '\0';
        int rc = st_header_parse(bad_headers[i].json, strlen(bad_headers[i].json),
                                 bad_headers[i].data, &h, err, sizeof(err));
        if (rc == 0 || strstr(err, bad_headers[i].msg) == NULL)
            fail_msg("header %zu (%s): rc %d, message \"%s\", wanted \"%s\"", i,
                     bad_headers[i].json, rc, err, bad_headers[i].msg);
        assert_null(h.tensors);
        assert_null(h.pool);
    }
}

static void test_valid_headers_from_other_writers_are_accepted(void **state)
{
    char err[512];
    struct st_header h;
    (void)state;

    /* Whitespace as other writers print it, escapes, tensors out of data order, no padding. */
    const char *json = "{ \"b\" : { \"dtype\" : \"F16\", \"shape\" : [ ], \"data_offsets\" : "
                       "[ 4 , 6 ] } ,\n\t\"\\u00e9\\ud83d\\ude00\\/\" : {\"data_offsets\":[0,4],"
                       "\"shape\":[1],\"dtype\":\"I32\"}, \"__metadata__\": {\"format\": \"pt\"}"
                       "}   ";
    assert_int_equal(st_header_parse(json, strlen(json), 6, &h, err, sizeof(err)), 0);
    assert_int_equal(h.ntensors, 2);
    assert_string_equal(h.tensors[0].name, "\xc3\xa9\xf0\x9f\x98\x80/");
    assert_int_equal(h.tensors[0].dtype, DTYPE_I32);
    assert_string_equal(h.tensors[1].name, "b");
    assert_int_equal(h.tensors[1].rank, 0);
    assert_string_equal(st_meta_get(&h, "format"), "pt");
    st_header_free(&h);
    assert_int_equal(st_header_parse("{}", 2, 0, &h, err, sizeof(err)), 0);
    assert_int_equal(h.ntensors, 0);
    st_header_free(&h);
}

static void test_files_too_short_or_with_an_impossible_length_are_refused(void **state)
{
    char path[512], err[512];
    struct st_file f;
    unsigned char buf[16] = {0};
    (void)state;

    path_in(path, sizeof(path), "", "short.safetensors");
    write_file(path, buf, 5);
    assert_int_equal(st_open(&f, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "too short"));
    buf[0] = 200; /* header length 200 in a 16-byte file */
    write_file(path, buf, 16);
    assert_int_equal(st_open(&f, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "past the end of the file"));
    memset(buf, 0xff, 8); /* 2^64 - 1 */
    write_file(path, buf, 16);
    assert_int_equal(st_open(&f, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "header length 18446744073709551615"));
    assert_int_equal(st_open(&f, tmpdir, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a regular file"));
    path_in(path, sizeof(path), "", "missing");
    assert_int_equal(st_open(&f, path, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "cannot open"));
    /* A valid header whose data the file lacks. */
    const char hdr[] = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    unsigned char file[8 + sizeof(hdr)] = {sizeof(hdr) - 1};
    memcpy(file + 8, hdr, sizeof(hdr) - 1);
    path_in(path, sizeof(path), "", "nodata.safetensors");
    write_file(path, file, 8 + sizeof(hdr) - 1);
    assert_int_equal(st_open(&f, path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "nodata.safetensors: the tensors hold 4 bytes of data, the "
                               "file has 0 after the header"));
}

static void test_a_full_disk_fails_the_write_and_leaves_the_old_file(void **state)
{
    struct st_tensor t[] = {{.name = "a", .dtype = DTYPE_F32, .rank = 1, .shape = {1 << 20}}};
    char path[512], err[256];
    struct st_writer w;
    struct durable d;
    (void)state;

    /* /dev/full answers every write with ENOSPC. */
    int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        assert_int_equal(st_writer_begin(&w, fd, t, 1, NULL, 0, err, sizeof(err)), -ENOSPC);
        assert_non_null(strstr(err, "writing the header failed"));
        close(fd);
    }
    path_in(path, sizeof(path), "", "keep.safetensors");
    write_file(path, "old", 3);
    assert_int_equal(durable_open(&d, AT_FDCWD, path, 0600, err, sizeof(err)), 0);
    assert_int_equal(hidden_entries(), 1);
    assert_int_equal(st_writer_begin(&w, d.fd, t, 1, NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(st_writer_finish(&w, err, sizeof(err)), -EIO);
    assert_non_null(strstr(err, "0 data bytes written, the header announced 4194304"));
    durable_abort(&d);
    assert_int_equal(hidden_entries(), 0);
    char back[8] = {0};
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(back, 1, sizeof(back), f), 3);
    fclose(f);
    assert_string_equal(back, "old");
    /* A directory that does not exist. */
    /* A target that is no regular file is not replaced (rename would). */
    path_in(path, sizeof(path), "", "fifo");
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(durable_open(&d, AT_FDCWD, path, 0600, err, sizeof(err)), -EEXIST);
    assert_non_null(strstr(err, "not a regular file"));
    assert_int_equal(hidden_entries(), 0);
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));
    path_in(path, sizeof(path), "", "no/such/dir/x.safetensors");
    assert_int_equal(durable_open(&d, AT_FDCWD, path, 0600, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "cannot open its directory"));
}

/* A bare name is relative to the caller's directory descriptor, which the caller keeps: commit
 * and abort close only the descriptor durable opened for itself. */
static void test_a_bare_name_leaves_the_callers_directory_open(void **state)
{
    struct durable d;
    char err[256];
    (void)state;

    int dfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    assert_true(dfd >= 0);
    for (int round = 0; round < 2; round++) {
        assert_int_equal(durable_open(&d, dfd, "bare.bin", 0600, err, sizeof(err)), 0);
        assert_int_equal(durable_write_all(d.fd, "abc", 3), 0);
        if (round == 0)
            assert_int_equal(durable_commit(&d, err, sizeof(err)), 0);
        else
            durable_abort(&d);
        assert_int_equal(fcntl(dfd, F_GETFD), FD_CLOEXEC); /* still open, still ours */
    }
    struct stat st;
    assert_int_equal(fstatat(dfd, "bare.bin", &st, 0), 0);
    assert_int_equal(st.st_size, 3);
    assert_int_equal(hidden_entries(), 0);
    close(dfd);
}

/* ---- 16-bit floats --------------------------------------------------------------------------- */

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_f32(uint32_t u)
{
    float f = from_bits(u);
    if (half_f32_to_bf16(f) != kernel_ref_f32_to_bf16(f))
        fail_msg("bf16 of 0x%08x: 0x%04x, reference 0x%04x", u, half_f32_to_bf16(f),
                 kernel_ref_f32_to_bf16(f));
    if (half_f32_to_f16(f) != kernel_ref_f32_to_f16(f))
        fail_msg("f16 of 0x%08x: 0x%04x, reference 0x%04x", u, half_f32_to_f16(f),
                 kernel_ref_f32_to_f16(f));
}

static void test_half_conversions_match_the_kernels_references(void **state)
{
    (void)state;

    for (uint32_t h = 0; h < 65536; h++) {
        assert_int_equal(bits(half_bf16_to_f32((uint16_t)h)),
                         bits(kernel_ref_bf16_to_f32((uint16_t)h)));
        if (bits(half_f16_to_f32((uint16_t)h)) != bits(kernel_ref_f16_to_f32((uint16_t)h)))
            fail_msg("f16 0x%04x: 0x%08x, reference 0x%08x", h,
                     bits(half_f16_to_f32((uint16_t)h)), bits(kernel_ref_f16_to_f32((uint16_t)h)));
        /* Every rounding boundary: the midpoint between h and the next 16-bit value, and its
         * neighbours, for both formats (and both signs, through h's sign bit). */
        uint32_t mid_bf16 = ((uint32_t)h << 16) | 0x8000u;
        for (int k = -1; k <= 1; k++)
            check_f32(mid_bf16 + (uint32_t)k);
        float lo = kernel_ref_f16_to_f32((uint16_t)h);
        float hi = kernel_ref_f16_to_f32((uint16_t)(h + 1));
        if (isfinite(lo) && isfinite(hi) && (h & 0x7fff) != 0x7bff) {
            double mid = ((double)lo + (double)hi) / 2;
            uint32_t m = bits((float)mid);
            for (int k = -2; k <= 2; k++)
                check_f32(m + (uint32_t)k);
        }
    }
    /* A stride through every binary32 pattern, NaNs and infinities included. */
    for (uint64_t u = 0; u < (1ull << 32); u += 4093)
        check_f32((uint32_t)u);
    assert_int_equal(half_f32_to_f16(65519.99f), 0x7bff);
    assert_int_equal(half_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(half_f32_to_bf16(NAN), 0x7fc0);
    assert_true(isnan(half_f16_to_f32(half_f32_to_f16(-NAN))));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_written_file_reads_back_with_names_shapes_metadata_and_data),
        cmocka_unit_test(test_the_header_is_the_documented_json_padded_with_spaces),
        cmocka_unit_test(test_the_writer_refuses_bad_tables),
        cmocka_unit_test(test_every_malformed_header_is_refused_with_its_reason),
        cmocka_unit_test(test_valid_headers_from_other_writers_are_accepted),
        cmocka_unit_test(test_files_too_short_or_with_an_impossible_length_are_refused),
        cmocka_unit_test(test_a_full_disk_fails_the_write_and_leaves_the_old_file),
        cmocka_unit_test(test_a_bare_name_leaves_the_callers_directory_open),
        cmocka_unit_test(test_half_conversions_match_the_kernels_references),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
