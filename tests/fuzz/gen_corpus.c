/*
 * gen_corpus.c - write the seed corpora of the fuzzers:
 *   DIR/wire/NAME.bin      for fuzz_wire: 2 control bytes, then a byte stream
 *   DIR/dispatch/NAME.bin  for fuzz_dispatch: what clients send, connections
 *                          separated by 0xc1 'n' (new) or 0xc1 'c' (close first),
 *                          the segment's header rewritten between requests by
 *                          0xc1 'h' OFF LEN DATA
 * Every message of msg.h has a seed, with its extensions (the tensor table in
 * columns, compact, existing, seq, replayed, interrupted, shadow_offsets).
 * Messages are built with the project's own encoders (wire.h, msg.h), so
 * they follow the contract. Deterministic: running it again rewrites the
 * same files; files it does not know (regression seeds) are left alone.
 *
 * Usage: gen_corpus DIR     (`make fuzz-corpus` runs it on tests/fuzz/corpus)
 */
#include "msg.h"
#include "segment.h"
#include "wire.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The name fuzz_dispatch replaces with its own segment's. */
#define SEG "/emad-fuzz-XXXXXXXX"

static const char *out_dir;
static msgpack_sbuffer sb;
static msgpack_packer pk;

static void begin(void)
{
    msgpack_sbuffer_clear(&sb);
}

static void raw(const void *p, size_t n)
{
    msgpack_sbuffer_write(&sb, p, n);
}

static void sep(char how)
{
    char s[2] = {(char)0xc1, how};
    raw(s, 2);
}

static void save(const char *sub, const char *name)
{
    char path[4096];
    FILE *fp;

    snprintf(path, sizeof(path), "%s/%s/%s.bin", out_dir, sub, name);
    fp = fopen(path, "wb");
    if (fp == NULL || fwrite(sb.data, 1, sb.size, fp) != sb.size || fclose(fp) != 0) {
        fprintf(stderr, "gen_corpus: %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

/* fuzz_dispatch: write len bytes of v (little-endian) at off in the segment's header, between
 * the requests around it. */
static void patch(size_t off, uint64_t v, size_t len)
{
    unsigned char p[4 + 8] = {0xc1, 'h', (unsigned char)off, (unsigned char)(len - 1)};

    for (size_t i = 0; i < len; i++)
        p[4 + i] = (unsigned char)(v >> (8 * i));
    raw(p, 4 + len);
}

static void req(uint32_t id, const char *method, const struct msg_desc *d, const void *params)
{
    wire_pack_request_head(&pk, id, method);
    msg_encode(&pk, d, params);
}

static void hello(uint32_t id)
{
    struct msg_hello h = {1, msg_str_c("gen_corpus"), true, 4242};
    req(id, "hello", &msg_hello_desc, &h);
}

static void status(uint32_t id, const char *session)
{
    struct msg_status s = {session != NULL, msg_str_c(session), false, false};
    req(id, "status", &msg_status_desc, &s);
}

/* Tensors that fit the 4 KiB params area of fuzz_dispatch's segment. */
static uint64_t shape_w[] = {16, 16};
static struct msg_tensor tensors[] = {
    {{"w", 1}, {"f32", 3}, 0, 256, true, shape_w, 2, false, NULL, 0, false, NULL, 0},
    {{"b", 1}, {"bf16", 4}, 1024, 64, false, NULL, 0, false, NULL, 0, false, NULL, 0},
    {{"h", 1}, {"f16", 3}, 1152, 32, false, NULL, 0, false, NULL, 0, false, NULL, 0},
    {{"d", 1}, {"f64", 3}, 1280, 16, false, NULL, 0, false, NULL, 0, false, NULL, 0},
    {{"steps", 5}, {"i64", 3}, 1408, 1, false, NULL, 0, false, NULL, 0, false, NULL, 0},
};

static void reg(uint32_t id, const char *session, const char *shm, size_t ntensors,
                const char *half_life, bool resume)
{
    struct msg_register r;

    memset(&r, 0, sizeof(r));
    r.session = msg_str_c(session);
    r.shm = msg_str_c(shm);
    r.tensors = tensors;
    r.ntensors = ntensors;
    if (half_life != NULL) {
        r.has_config = true;
        r.config.has_half_life = true;
        r.config.half_life = msg_str_c(half_life);
        r.config.has_update_interval = true;
        r.config.update_interval = msg_str_c("1ba");
        r.config.has_ema_start = true;
        r.config.ema_start = msg_str_c("0ba");
    }
    r.has_resume = resume;
    r.resume = resume;
    req(id, "register", &msg_register_desc, &r);
}

static void reg_smoothing(uint32_t id, const char *session, double smoothing)
{
    struct msg_register r;

    memset(&r, 0, sizeof(r));
    r.session = msg_str_c(session);
    r.shm = msg_str_c(SEG);
    r.tensors = tensors;
    r.ntensors = 2;
    r.has_config = true;
    r.config.has_smoothing = true;
    r.config.smoothing = smoothing;
    req(id, "register", &msg_register_desc, &r);
}

/* Three profiles, one of each schedule (docs/protocol.md "Profiles"). */
static void reg_profiles(uint32_t id, const char *session)
{
    struct msg_register r;
    struct msg_profile p[3];

    memset(&r, 0, sizeof(r));
    memset(p, 0, sizeof(p));
    p[0].name = msg_str_c("fast");
    p[0].has_half_life = true;
    p[0].half_life = msg_str_c("4ba");
    p[1].name = msg_str_c("warm");
    p[1].has_decay = true;
    p[1].decay = 0.999;
    p[1].has_update_after_step = true;
    p[1].update_after_step = 1;
    p[2].name = msg_str_c("p05");
    p[2].has_schedule = true;
    p[2].schedule = msg_str_c("power");
    p[2].has_sigma_rel = true;
    p[2].sigma_rel = 0.05;
    r.session = msg_str_c(session);
    r.shm = msg_str_c(SEG);
    r.tensors = tensors;
    r.ntensors = 2;
    r.has_config = true;
    r.config.has_profiles = true;
    r.config.profiles = p;
    r.config.nprofiles = 3;
    r.config.has_eval_profile = true;
    r.config.eval_profile = msg_str_c("warm");
    req(id, "register", &msg_register_desc, &r);
}

static void event(uint32_t id, const char *session, const char *ev, uint64_t batch, uint64_t epoch)
{
    struct msg_event e = {msg_str_c(session), msg_str_c(ev), {.batch = batch, .epoch = epoch, .has_duration = true, .duration = 0.5}, true, batch + 1};
    req(id, "event", &msg_event_desc, &e);
}

static void swap(uint32_t id, const char *session, const char *to)
{
    struct msg_swap s = {.session = msg_str_c(session), .to = msg_str_c(to)};
    req(id, "swap", &msg_swap_desc, &s);
}

static void file(uint32_t id, const char *method, const char *session, const char *name)
{
    struct msg_file f = {.session = msg_str_c(session), .has_name = name != NULL,
        .name = msg_str_c(name)};
    req(id, method, &msg_file_desc, &f);
}

static void close_(uint32_t id, const char *session, bool keep)
{
    struct msg_close c = {msg_str_c(session), true, keep};
    req(id, "close", &msg_close_desc, &c);
}

static void drop(uint32_t id, const char *session)
{
    struct msg_drop d = {msg_str_c(session)};
    req(id, "drop", &msg_drop_desc, &d);
}

/* The extensions of register: the table in columns, a compact reply, resume of an existing
 * session only. */
static struct msg_str table_names[] = {{"w", 1}, {"b", 1}};
static struct msg_str table_dtypes[] = {{"f32", 3}, {"bf16", 4}};
static uint64_t table_offsets[] = {0, 1024};
static uint64_t table_numels[] = {256, 64};

/* A shard session (docs/protocol.md "Shard sessions"): the table with shapes and slices, and a
 * group; bad is 0 for a valid one, else which field to spoil. */
static uint64_t shard_ndims[] = {2, 1};
static uint64_t shard_shapes[] = {16, 16, 64};
static uint64_t shard_global[] = {32, 16, 128};
static uint64_t shard_offsets[] = {16, 0, 64};

static void reg_shard(uint32_t id, const char *session, int bad)
{
    struct msg_register r;
    uint64_t ndims[2], shapes[3], global[3], offs[3];

    memcpy(ndims, shard_ndims, sizeof(ndims));
    memcpy(shapes, shard_shapes, sizeof(shapes));
    memcpy(global, shard_global, sizeof(global));
    memcpy(offs, shard_offsets, sizeof(offs));
    memset(&r, 0, sizeof(r));
    r.session = msg_str_c(session);
    r.shm = msg_str_c(SEG);
    r.has_table = true;
    r.table = (struct msg_table){.names = table_names, .nnames = 2, .dtypes = table_dtypes,
                                 .ndtypes = 2, .offsets = table_offsets, .noffsets = 2,
                                 .numels = table_numels, .nnumels = 2,
                                 .has_ndims = true, .ndims = ndims, .nndims = 2,
                                 .has_shapes = true, .shapes = shapes, .nshapes = 3,
                                 .has_global_shapes = true, .global_shapes = global,
                                 .nglobal_shapes = 3, .has_slice_offsets = true,
                                 .slice_offsets = offs, .nslice_offsets = 3};
    r.has_group = true;
    r.group = (struct msg_group){msg_str_c("job-1"), 1, 2, true, 1};
    switch (bad) {
    case 1: offs[2] = 65; break;                 /* past the global shape */
    case 2: offs[0] = UINT64_MAX; break;         /* an end that overflows */
    case 3: ndims[0] = 9; break;                 /* too many dimensions */
    case 4: r.table.nshapes = 2; break;          /* a column too short */
    case 5: shapes[0] = 15; break;               /* not numel */
    case 6: r.group.rank = 2; break;             /* not below world */
    case 7: r.group.world = 0; break;
    case 8: r.group.replicas = 65; break;
    case 9: r.group.job = msg_str_c("no spaces"); break;
    case 10: r.table.has_slice_offsets = false; break; /* global shapes alone */
    default: break;
    }
    req(id, "register", &msg_register_desc, &r);
}

/* A replica of session "rep" (docs/protocol.md "Replicas"): two of job-r's ranks. */
static void reg_replica(uint32_t id, uint64_t rank, bool resume)
{
    struct msg_register r;

    memset(&r, 0, sizeof(r));
    r.session = msg_str_c("rep");
    r.shm = msg_str_c(SEG);
    r.has_table = true;
    r.table = (struct msg_table){.names = table_names, .nnames = 2, .dtypes = table_dtypes,
                                 .ndtypes = 2, .offsets = table_offsets, .noffsets = 2,
                                 .numels = table_numels, .nnumels = 2};
    r.has_group = true;
    r.group = (struct msg_group){msg_str_c("job-r"), rank, 2, true, 2};
    r.has_resume = resume;
    r.resume = resume;
    req(id, "register", &msg_register_desc, &r);
}

static void status_tensors(uint32_t id)
{
    struct msg_status s = {false, msg_str_c(NULL), true, true};
    req(id, "status", &msg_status_desc, &s);
}

static void reg_table(uint32_t id, const char *session, bool compact, bool resume, bool existing)
{
    struct msg_register r;

    memset(&r, 0, sizeof(r));
    r.session = msg_str_c(session);
    r.shm = msg_str_c(SEG);
    r.has_table = true;
    r.table = (struct msg_table){.names = table_names, .nnames = 2, .dtypes = table_dtypes,
                                 .ndtypes = 2, .offsets = table_offsets, .noffsets = 2,
                                 .numels = table_numels, .nnumels = 2};
    r.has_compact = compact;
    r.compact = compact;
    r.has_resume = resume;
    r.resume = resume;
    r.has_existing = existing;
    r.existing = existing;
    req(id, "register", &msg_register_desc, &r);
}

static void event_seq(uint32_t id, const char *session, const char *ev, uint64_t batch,
                      bool has_seq, uint64_t seq)
{
    struct msg_event e = {msg_str_c(session), msg_str_c(ev), {.batch = batch}, has_seq, seq};
    req(id, "event", &msg_event_desc, &e);
}

/* A register whose ema_start counts samples, tokens or seconds, and events carrying those
 * counts (or lacking them: refused, naming the field). */
static void reg_start(uint32_t id, const char *session, const char *ema_start)
{
    struct msg_register r;

    memset(&r, 0, sizeof(r));
    r.session = msg_str_c(session);
    r.shm = msg_str_c(SEG);
    r.tensors = tensors;
    r.ntensors = 2;
    r.has_config = true;
    r.config.has_ema_start = true;
    r.config.ema_start = msg_str_c(ema_start);
    req(id, "register", &msg_register_desc, &r);
}

static void event_counts(uint32_t id, const char *session, uint64_t batch, int which,
                         uint64_t count)
{
    struct msg_event e = {msg_str_c(session), msg_str_c("batch_end"), {.batch = batch}, false, 0};
    e.time.has_samples = which == 0;
    e.time.samples = count;
    e.time.has_tokens = which == 1;
    e.time.tokens = count;
    e.time.has_seconds = which == 2;
    e.time.seconds = count;
    req(id, "event", &msg_event_desc, &e);
}

static void swap_seq(uint32_t id, const char *session, const char *to, uint64_t seq)
{
    struct msg_swap s = {.session = msg_str_c(session), .to = msg_str_c(to), .has_seq = true,
                         .seq = seq};
    req(id, "swap", &msg_swap_desc, &s);
}

/* A request whose params are some other message (replies, state files): the
 * wire fuzzer decodes params with every descriptor. */
static void wrapped(uint32_t id, const struct msg_desc *d, const void *obj)
{
    req(id, d->name, d, obj);
}

static void oversized(uint32_t id, size_t bytes)
{
    char *big = malloc(bytes);
    memset(big, 'x', bytes);
    wire_pack_request_head(&pk, id, "status");
    msgpack_pack_map(&pk, 1);
    wire_pack_str(&pk, "session");
    msgpack_pack_str(&pk, bytes);
    msgpack_pack_str_body(&pk, big, bytes);
    free(big);
}

static void deep(uint32_t id, unsigned levels)
{
    wire_pack_request_head(&pk, id, "status");
    msgpack_pack_map(&pk, 1);
    wire_pack_str(&pk, "session");
    for (unsigned i = 0; i < levels; i++)
        msgpack_pack_array(&pk, 1);
    msgpack_pack_nil(&pk);
}

static void ctl(unsigned char chunk, unsigned char limits)
{
    unsigned char c[2] = {chunk, limits};
    begin();
    raw(c, 2);
}

/* limits byte of fuzz_wire: max_message index | depth index << 2 */
#define L4096_D8 (2 | 2 << 2)
#define L64_D8 (0 | 2 << 2)
#define L256_D4 (1 | 0 << 2)

static void gen_wire(void)
{
    ctl(0, L4096_D8);
    hello(1);
    save("wire", "hello");

    ctl(0, L4096_D8);
    status(2, NULL);
    status(3, "run-1");
    save("wire", "status");

    ctl(0, L4096_D8);
    reg(4, "run-1", SEG, 5, "10ba", false);
    save("wire", "register");

    ctl(7, L4096_D8);
    reg_smoothing(5, "run-2", 0.999);
    save("wire", "register_chunked");

    ctl(0, L4096_D8);
    event(6, "run-1", "batch_end", 10, 1);
    swap(7, "run-1", "ema");
    save("wire", "event_swap");

    ctl(0x80 | 3, L4096_D8); /* reserve/commit, 3-byte chunks */
    file(8, "save", "run-1", "snap");
    file(9, "load", "run-1", NULL);
    close_(10, "run-1", true);
    drop(11, "run-1");
    save("wire", "file_close_drop");

    ctl(1, L4096_D8);
    hello(12);
    status(13, NULL);
    event(14, "a", "eval_start", 1, 0);
    save("wire", "pipeline_bytewise");

    /* Replies and state files as params: every descriptor gets a seed. */
    ctl(0, 3 | 3 << 2);
    {
        struct msg_str feats[] = {{"status", 6}, {"save", 4}};
        struct msg_hello_reply hr = {1, {"emad 0.1.0", 10}, 77, 2, feats, 2};
        wrapped(20, &msg_hello_reply_desc, &hr);
        struct msg_shadow_tensor st[] = {{{"w", 1}, 0, {"f32", 3}}};
        struct msg_register_reply rr;
        memset(&rr, 0, sizeof(rr));
        rr.session = msg_str_c("run-1");
        rr.shadow_shm = msg_str_c("/emad-shadow-1-00");
        rr.shadow_bytes = 1024;
        rr.tensors = st;
        rr.ntensors = 1;
        rr.state.session = msg_str_c("run-1");
        rr.state.has_half_life = true;
        rr.state.half_life = msg_str_c("10ba");
        rr.state.update_interval = msg_str_c("1ba");
        rr.state.ema_start = msg_str_c("0ba");
        rr.state.has_last_time = true;
        rr.state.last_time.batch = 3;
        rr.state.shm = msg_str_c(SEG);
        rr.state.shadow_shm = rr.shadow_shm;
        wrapped(21, &msg_register_reply_desc, &rr);
        struct msg_status_reply sr;
        memset(&sr, 0, sizeof(sr));
        sr.server.server = msg_str_c("emad");
        sr.server.version = msg_str_c("0.1.0");
        sr.server.socket = msg_str_c("/run/emad/emad.sock");
        sr.server.state_dir = msg_str_c("/var/lib/emad");
        sr.sessions = &rr.state;
        sr.nsessions = 1;
        wrapped(22, &msg_status_reply_desc, &sr);
        struct msg_action a = {.action = {"update", 6}, .started = true, .updates = 3};
        wrapped(23, &msg_action_desc, &a);
        struct msg_file_reply fr = {{"/var/lib/emad/x.ema", 19}, 4096};
        wrapped(24, &msg_file_reply_desc, &fr);
        struct msg_saved_tensor svt[] = {{{"w", 1}, {"f32", 3}, 256, true, 0}};
        struct msg_saved_state ss;
        memset(&ss, 0, sizeof(ss));
        ss.format = 1;
        ss.session = msg_str_c("run-1");
        ss.tensors = svt;
        ss.ntensors = 1;
        ss.config.has_smoothing = true;
        ss.config.smoothing = 0.5;
        ss.has_uid = true;
        wrapped(25, &msg_saved_state_desc, &ss);
    }
    save("wire", "reply_shapes");

    /* The extensions of the requests, and the remaining descriptors as params. */
    ctl(0, 3 | 3 << 2);
    reg_table(80, "run-t", true, false, false);
    reg_table(81, "run-t", false, true, true);
    event_seq(82, "run-t", "batch_end", 1, true, 1);
    event_seq(83, "run-t", "batch_end", 1, true, 1);
    swap_seq(84, "run-t", "ema", 2);
    {
        struct msg_error e = {msg_str_c(MSG_E_PERM), msg_str_c("load: not yours")};
        wrapped(85, &msg_error_desc, &e);
        struct msg_empty em = {0};
        wrapped(86, &msg_empty_desc, &em);
        struct msg_action a = {.action = {"update", 6}, .started = true, .updates = 3,
                               .has_replayed = true, .replayed = true,
                               .has_interrupted = true, .interrupted = true};
        wrapped(87, &msg_action_desc, &a);
        uint64_t offs[] = {0, 1024};
        struct msg_register_reply rr;
        memset(&rr, 0, sizeof(rr));
        rr.session = msg_str_c("run-t");
        rr.shadow_shm = msg_str_c("/emad-shadow-1-00");
        rr.shadow_bytes = 2048;
        rr.state.session = msg_str_c("run-t");
        rr.state.smoothing = 0.5;
        rr.state.update_interval = msg_str_c("1ba");
        rr.state.ema_start = msg_str_c("0ba");
        rr.state.shm = msg_str_c(SEG);
        rr.state.shadow_shm = rr.shadow_shm;
        rr.state.has_interrupted = true;
        rr.state.interrupted = true;
        rr.state.has_seq = true;
        rr.state.seq = 9;
        rr.has_shadow_offsets = true;
        rr.shadow_offsets = offs;
        rr.nshadow_offsets = 2;
        wrapped(88, &msg_register_reply_desc, &rr);
        struct msg_saved_tensor svt[] = {{{"w", 1}, {"f32", 3}, 256, true, 0}};
        struct msg_saved_state ss;
        memset(&ss, 0, sizeof(ss));
        ss.format = 1;
        ss.session = msg_str_c("run-t");
        ss.tensors = svt;
        ss.ntensors = 1;
        ss.config.has_half_life = true;
        ss.config.half_life = msg_str_c("10ba");
        ss.has_last_time = true;
        ss.last_time = (struct msg_time){.batch = 3, .epoch = 1, .has_duration = true,
                                         .duration = 0.25, .has_samples = true, .samples = 96,
                                         .has_tokens = true, .tokens = 4096,
                                         .has_seconds = true, .seconds = 12};
        ss.has_uid = true;
        ss.uid = 1000;
        ss.has_shadow_shm = true;
        ss.shadow_shm = msg_str_c("/emad-shadow-1-00");
        ss.has_seq = true;
        ss.seq = 9;
        wrapped(89, &msg_saved_state_desc, &ss);
        ss.tensors = NULL;
        ss.ntensors = 0;
        ss.has_table = true;
        ss.table = (struct msg_table){.names = table_names, .nnames = 2, .dtypes = table_dtypes,
                                 .ndtypes = 2, .offsets = table_offsets, .noffsets = 2,
                                      .numels = table_numels, .nnumels = 2};
        wrapped(90, &msg_saved_state_desc, &ss);
    }
    save("wire", "extended_messages");

    /* A response and a notification, as a client receives them. */
    ctl(0, L4096_D8);
    wire_pack_response_error(&pk, 30, MSG_E_BADARG, "register: tensors[0].dtype: expected a string");
    wire_pack_response_head(&pk, 31);
    msgpack_pack_map(&pk, 0);
    wire_pack_notify_head(&pk, MSG_NOTIFY_ERROR);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "code");
    wire_pack_str(&pk, MSG_E_LIMIT);
    wire_pack_str(&pk, "message");
    wire_pack_str(&pk, "too many connections");
    save("wire", "response_notify");

    ctl(5, L64_D8);
    oversized(40, 200); /* skipped with LIMIT, then the next one is read */
    hello(41);
    save("wire", "oversized_request");

    ctl(0, L64_D8);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint8(&pk, 1);
    msgpack_pack_str(&pk, 300);
    for (int i = 0; i < 300; i++)
        msgpack_pack_str_body(&pk, "y", 1);
    save("wire", "oversized_response");

    ctl(0, L256_D4);
    deep(50, 6);
    save("wire", "too_deep");

    /* Answerable shape faults, then one that is not. */
    ctl(0, L4096_D8);
    msgpack_pack_array(&pk, 4); /* method not a string */
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, 60);
    msgpack_pack_int(&pk, 7);
    msgpack_pack_array(&pk, 0);
    msgpack_pack_array(&pk, 4); /* params not [map] */
    msgpack_pack_uint8(&pk, 0);
    msgpack_pack_uint32(&pk, 61);
    wire_pack_str(&pk, "hello");
    msgpack_pack_map(&pk, 0);
    msgpack_pack_array(&pk, 3); /* no msgid to answer */
    msgpack_pack_uint8(&pk, 0);
    wire_pack_str(&pk, "x");
    msgpack_pack_nil(&pk);
    save("wire", "bad_shapes");

    ctl(0, L4096_D8);
    hello(70);
    raw("\xc1\x00", 2); /* not msgpack */
    save("wire", "not_msgpack");

    /* Header split across feeds: uint64 msgid and str32. */
    ctl(2, 3 | 2 << 2);
    msgpack_pack_array(&pk, 4);
    msgpack_pack_uint8(&pk, 0);
    raw("\xcf\x00\x00\x00\x00\x00\x00\x00\x63", 9);
    raw("\xdb\x00\x00\x00\x05hello", 10);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 2);
    wire_pack_str(&pk, "proto");
    raw("\xd3\x00\x00\x00\x00\x00\x00\x00\x01", 9);
    wire_pack_str(&pk, "client");
    raw("\xc4\x01z", 3); /* bin, not str: BADARG */
    save("wire", "wide_headers");
}

static void gen_dispatch(void)
{
    begin();
    hello(1);
    status(2, NULL);
    save("dispatch", "hello_status");

    begin();
    status(1, NULL);
    hello(2);
    save("dispatch", "nohello");

    begin();
    {
        struct msg_hello h = {2, msg_str_c("future"), false, 0};
        req(1, "hello", &msg_hello_desc, &h);
    }
    wire_pack_request_head(&pk, 2, "nosuchmethod");
    msgpack_pack_map(&pk, 0);
    save("dispatch", "version_nomethod");

    begin();
    hello(1);
    reg(2, "run-1", SEG, 5, "10ba", false);
    event(3, "run-1", "fit_start", 0, 0);
    event(4, "run-1", "batch_end", 1, 0);
    event(5, "run-1", "batch_end", 2, 0);
    event(6, "run-1", "eval_start", 2, 0);
    event(7, "run-1", "eval_end", 2, 0);
    event(8, "run-1", "checkpoint", 2, 0);
    event(9, "run-1", "batch_start", 2, 0);
    status(10, "run-1");
    save("dispatch", "register_events");

    begin();
    hello(1);
    reg_smoothing(2, "run-2", 0.5);
    event(3, "run-2", "batch_end", 1, 0);
    swap(4, "run-2", "ema");
    swap(5, "run-2", "train");
    file(6, "save", "run-2", "snap");
    file(7, "load", "run-2", "snap");
    file(8, "save", "run-2", NULL);
    file(9, "load", "run-2", "missing");
    close_(10, "run-2", false);
    status(11, NULL);
    save("dispatch", "swap_save_load_close");

    begin();
    hello(1);
    reg_profiles(2, "prof");
    event(3, "prof", "batch_end", 1, 0);
    event(4, "prof", "batch_end", 2, 0);
    {
        struct msg_swap sw = {.session = msg_str_c("prof"), .to = msg_str_c("ema"),
                              .has_profile = true, .profile = msg_str_c("p05")};
        req(5, "swap", &msg_swap_desc, &sw);
    }
    swap(6, "prof", "train");
    event(7, "prof", "eval_start", 2, 0);
    event(8, "prof", "eval_end", 2, 0);
    file(9, "save", "prof", "snap");
    file(10, "load", "prof", "snap");
    status(11, "prof");
    save("dispatch", "profiles");

    begin();
    hello(1);
    reg(2, "a", SEG, 1, NULL, false);
    sep('n');
    hello(3);
    event(4, "a", "batch_end", 1, 0); /* PERM: owned by the first */
    file(5, "save", "a", "x");
    file(6, "load", "a", "x");
    drop(7, "a");
    status(8, NULL);
    sep('c');
    hello(9);
    reg(10, "a", SEG, 1, NULL, true); /* resume the detached session */
    event(11, "a", "batch_end", 1, 0);
    close_(12, "a", true);
    drop(13, "a");
    save("dispatch", "two_connections_resume_drop");

    begin();
    hello(1);
    reg(2, "bad name", SEG, 1, NULL, false);
    reg(3, "x", "/emad-nope-0", 1, NULL, false);
    reg(4, "x", "/etc/passwd", 1, NULL, false);
    {
        struct msg_tensor t[2] = {tensors[0], tensors[0]};
        struct msg_register r;
        memset(&r, 0, sizeof(r));
        r.session = msg_str_c("overlap");
        r.shm = msg_str_c(SEG);
        r.tensors = t;
        r.ntensors = 2; /* the same offset twice */
        req(5, "register", &msg_register_desc, &r);
        t[0].dtype = msg_str_c("f8");
        r.ntensors = 1;
        req(6, "register", &msg_register_desc, &r);
        t[0].dtype = msg_str_c("f32");
        t[0].numel = 100000; /* beyond the params */
        req(7, "register", &msg_register_desc, &r);
        r.config.has_half_life = true;
        r.config.half_life = msg_str_c("3ep");
        r.config.has_smoothing = true;
        r.config.smoothing = 0.9;
        r.has_config = true;
        req(8, "register", &msg_register_desc, &r);
    }
    reg(9, "dup", SEG, 1, NULL, false);
    reg(10, "dup", SEG, 1, NULL, false); /* EXISTS */
    event(11, "dup", "lunch", 1, 0);
    swap(12, "dup", "sideways");
    file(13, "save", "dup", "../etc");
    save("dispatch", "register_errors");

    begin();
    hello(1);
    wire_pack_request_head(&pk, 2, "register");
    msgpack_pack_map(&pk, 3);
    wire_pack_str(&pk, "session");
    msgpack_pack_int(&pk, 5);
    wire_pack_str(&pk, "shm");
    wire_pack_str(&pk, SEG);
    wire_pack_str(&pk, "tensors");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_nil(&pk);
    oversized(3, 5000); /* LIMIT, then the connection goes on */
    wire_pack_response_head(&pk, 4);   /* a response from the client: ignored */
    msgpack_pack_map(&pk, 0);
    wire_pack_notify_head(&pk, "note"); /* a notification: ignored */
    msgpack_pack_map(&pk, 0);
    status(5, NULL);
    deep(6, 10); /* too deep: the connection is closed */
    status(7, NULL);
    save("dispatch", "malformed_limits");

    begin();
    hello(1);
    for (int i = 0; i < 9; i++) { /* the 9th exceeds --max-sessions 8 */
        char name[16];
        snprintf(name, sizeof(name), "s%d", i);
        reg_smoothing((uint32_t)(2 + i), name, 0.9);
    }
    status(20, NULL);
    save("dispatch", "many_sessions");

    begin();
    hello(1);
    sep('n');
    hello(2);
    sep('n');
    hello(3);
    sep('n');
    hello(4); /* one more than --max-connections: refused */
    save("dispatch", "refused");

    /* The extensions: the table in columns, compact, existing, seq (a replay answered from
     * the record), swap with seq; then resume of a detached session. */
    begin();
    hello(1);
    reg_table(2, "ext", true, false, false);
    reg_table(3, "nosuch", false, true, true); /* NOSESSION: existing only */
    event_seq(4, "ext", "batch_end", 1, true, 1);
    event_seq(5, "ext", "batch_end", 1, true, 1); /* the same seq again: replayed */
    event_seq(6, "ext", "batch_end", 2, true, 2);
    swap_seq(7, "ext", "ema", 3);
    swap_seq(8, "ext", "train", 4);
    event_seq(9, "ext", "batch_end", 3, true, 0); /* seq 0: BADARG */
    status(10, "ext");
    close_(11, "ext", true);
    sep('n');
    hello(12);
    reg_table(13, "ext", false, true, true);
    event_seq(14, "ext", "batch_end", 3, true, 5);
    status(15, NULL);
    save("dispatch", "extended_requests");

    /* Shard sessions: every spoiled field refused, then a valid one, resumed, shown. */
    begin();
    hello(1);
    for (int bad = 1; bad <= 10; bad++)
        reg_shard((uint32_t)(1 + bad), "shard", bad);
    reg_shard(12, "shard", 0);
    event_seq(13, "shard", "batch_end", 1, true, 1);
    status_tensors(14);
    close_(15, "shard", true);
    sep('n');
    hello(16);
    reg_shard(17, "shard", 0);
    reg_shard(18, "shard", 5); /* a resume whose shapes differ */
    status_tensors(19);
    save("dispatch", "shard_sessions");

    /* Replicas: a leader, a replica joining, each one's events and swaps, the replica's close,
     * a third that finds no seat, the leader gone, the replica leading. */
    begin();
    hello(1);
    reg_replica(2, 0, false);
    event_seq(3, "rep", "batch_end", 1, true, 1);
    sep('n');
    hello(4);
    reg_replica(5, 1, false);
    event_seq(6, "rep", "batch_end", 1, true, 1);
    event_seq(7, "rep", "eval_start", 1, false, 0);
    event_seq(8, "rep", "eval_end", 1, false, 0);
    status(9, "rep");
    sep('n');
    hello(10);
    reg_replica(11, 1, true);
    sep('n');
    hello(12);
    reg_replica(13, 1, true); /* every seat taken: EXISTS */
    close_(14, "rep", true);
    sep('c');
    hello(15);
    reg_replica(16, 0, true);
    event_seq(17, "rep", "batch_end", 2, true, 2);
    status(18, "rep");
    save("dispatch", "replicas");

    /* ema_start in samples, tokens and seconds: events with the count, without it (refused),
     * with the count of another unit. */
    begin();
    hello(1);
    reg_start(2, "sp", "64sp");
    reg_start(3, "tok", "1e3tok");
    reg_start(4, "sec", "1h30m");
    event_counts(5, "sp", 1, 0, 32);
    event_counts(6, "sp", 2, 0, 64); /* starts */
    event_counts(7, "tok", 1, 3, 0); /* no count: refused */
    event_counts(8, "tok", 2, 1, 5000);
    event_counts(9, "sec", 1, 0, 10); /* samples where seconds are counted: refused */
    event_counts(10, "sec", 2, 2, 5400);
    status(11, NULL);
    save("dispatch", "time_counts");

    /* The trainer rewrites fields of its segment's header that emad does not use for its
     * data (magic, version, sizes, swap_state, the generation) between requests. */
    begin();
    hello(1);
    reg(2, "hdr", SEG, 5, "10ba", false);
    event_seq(3, "hdr", "batch_end", 1, false, 0);
    patch(offsetof(struct seg_header, swap_generation), 0xffffffffffffffffull, 8);
    event_seq(4, "hdr", "batch_end", 2, false, 0);
    patch(offsetof(struct seg_header, magic), 0x5858585858585858ull, 8);
    patch(offsetof(struct seg_header, version), 7, 4);
    event_seq(5, "hdr", "eval_start", 2, false, 0);
    patch(offsetof(struct seg_header, swap_state), 9, 4);
    event_seq(6, "hdr", "eval_end", 2, false, 0);
    patch(offsetof(struct seg_header, segment_bytes), 1, 8);
    patch(offsetof(struct seg_header, reserved), 0xdeadbeef, 4);
    swap(7, "hdr", "ema");
    status(8, "hdr");
    file(9, "save", "hdr", "h");
    save("dispatch", "header_rewritten");

    /* The fields emad's data work depends on, rewritten with the values they hold (the
     * harness's segment: 4 KiB of params at 4096, the stash at 8192): a mutation away from
     * offsets that point anywhere, between an update and a swap. */
    begin();
    hello(1);
    reg(2, "off", SEG, 5, "10ba", false);
    event_seq(3, "off", "batch_end", 1, false, 0);
    patch(offsetof(struct seg_header, params_offset), 4096, 8);
    event_seq(4, "off", "batch_end", 2, false, 0);
    patch(offsetof(struct seg_header, stash_offset), 8192, 8);
    patch(offsetof(struct seg_header, params_bytes), 4096, 8);
    swap(5, "off", "ema");
    swap(6, "off", "train");
    save("dispatch", "header_offsets_rewritten");

    /* A header rewritten before register is checked there: SHM, then valid again. */
    begin();
    hello(1);
    patch(offsetof(struct seg_header, params_offset), 4097, 8);
    reg(2, "late", SEG, 1, NULL, false);
    patch(offsetof(struct seg_header, params_offset), 4096, 8);
    patch(offsetof(struct seg_header, params_bytes), 1ull << 40, 8);
    reg(3, "late", SEG, 1, NULL, false);
    patch(offsetof(struct seg_header, params_bytes), 4096, 8);
    patch(offsetof(struct seg_header, stash_offset), 3, 8);
    reg(4, "late", SEG, 1, NULL, false);
    save("dispatch", "header_checked_at_register");
}

int main(int argc, char **argv)
{
    char path[4096];

    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    out_dir = argv[1];
    mkdir(out_dir, 0755);
    snprintf(path, sizeof(path), "%s/wire", out_dir);
    mkdir(path, 0755);
    snprintf(path, sizeof(path), "%s/dispatch", out_dir);
    mkdir(path, 0755);
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    gen_wire();
    gen_dispatch();
    msgpack_sbuffer_destroy(&sb);
    return 0;
}
