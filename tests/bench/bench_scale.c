/*
 * bench_scale.c - emad with many trainers, many tensors, and its memory:
 *
 *   sessions  1, 2, 8, 32 sessions (one connection and one thread each) updating back to back
 *             for --seconds, the same total model size split among them: their aggregate
 *             throughput against one session's, --reps windows of each in turn first.
 *   memory    emad's resident memory while it holds a session (after updates and a swap),
 *             against the shadow bytes it holds. The trainer's own segment, which emad maps
 *             and reads, is counted apart (smaps): it is the trainer's memory.
 *   register  registering --count tensors of --elems elements: time and emad's memory growth,
 *             against registering one tensor of the same total size; and the first update of
 *             each; --reps repetitions, in turn first.
 */
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

/* ---- sessions ---- */

struct trainer {
    struct bsess b;
    pthread_barrier_t *bar;
    double deadline, end;
    uint64_t updates;
};

static void *trainer_thread(void *arg)
{
    struct trainer *t = arg;
    pthread_barrier_wait(t->bar);
    while (now() < t->deadline) {
        bsess_update(&t->b);
        t->updates++;
    }
    t->end = now();
    return NULL;
}

/* k sessions of n elements each, opened once and timed in as many windows as asked. */
struct group {
    const struct bopts *o;
    uint64_t k, n;
    struct trainer *tr;
};

static void group_open(struct group *g, const struct bopts *o, uint64_t k, uint64_t n,
                       const char *prefix)
{
    char name[64];
    g->o = o;
    g->k = k;
    g->n = n;
    g->tr = calloc(k, sizeof(*g->tr));
    if (g->tr == NULL)
        die("out of memory");
    for (uint64_t i = 0; i < k; i++) {
        snprintf(name, sizeof(name), "%s-%llu", prefix, (unsigned long long)i);
        bsess_open(&g->tr[i].b, o->socket, name, "f32", 1, n);
        bsess_update(&g->tr[i].b); /* start the EMA, touch everything once */
    }
}

static void group_close(struct group *g)
{
    for (uint64_t i = 0; i < g->k; i++)
        bsess_close(&g->tr[i].b);
    free(g->tr);
}

/* One window of --seconds, every session updating back to back: the aggregate Gelem/s. */
static double group_window(struct group *g)
{
    pthread_t *tid = calloc(g->k, sizeof(*tid));
    pthread_barrier_t bar;

    if (tid == NULL)
        die("out of memory");
    pthread_barrier_init(&bar, NULL, (unsigned)g->k + 1);
    double t0 = now();
    for (uint64_t i = 0; i < g->k; i++) {
        g->tr[i].bar = &bar;
        g->tr[i].updates = 0;
        g->tr[i].deadline = t0 + g->o->seconds;
        pthread_create(&tid[i], NULL, trainer_thread, &g->tr[i]);
    }
    pthread_barrier_wait(&bar);
    t0 = now();
    double end = t0;
    uint64_t updates = 0;
    for (uint64_t i = 0; i < g->k; i++) {
        pthread_join(tid[i], NULL);
        updates += g->tr[i].updates;
        if (g->tr[i].end > end)
            end = g->tr[i].end;
    }
    pthread_barrier_destroy(&bar);
    free(tid);
    return (double)updates * (double)g->n / (end - t0) / 1e9;
}

int cmd_sessions(const struct bopts *o)
{
    uint64_t total = o->sizes[0];
    struct group one;
    char buf[32];
    group_open(&one, o, 1, total, "bench-one");
    group_window(&one); /* warm-up */
    /* This machine's throughput drifts by tens of percent within seconds (shared memory
     * bandwidth): each repetition runs k sessions' window and one session's, in turn first.
     * k = 1 compares one session with itself: its spread is the noise floor. */
    for (size_t c = 0; c < o->ncounts; c++) {
        uint64_t k = o->counts[c], n = total / k;
        struct group many;
        struct ab s = {0};
        group_open(&many, o, k, n, "bench-trainer");
        for (unsigned r = 0; r < o->reps; r++) {
            double agg, single;
            if (ab_a_first(r)) {
                agg = group_window(&many);
                single = group_window(&one);
            } else {
                single = group_window(&one);
                agg = group_window(&many);
            }
            ab_add(&s, agg, single, agg / single);
        }
        group_close(&many);
        rec_begin("sessions");
        rec_int("sessions", k);
        rec_int("elems_each", n);
        rec_int("elems", total);
        rec_str("size", fmt_elems(total, buf, sizeof(buf)));
        rec_int("workers", o->workers);
        rec_int("reps", s.n);
        rec_num("aggregate_gelem_s", ab_med_a(&s));
        rec_num("one_session_gelem_s", ab_med_b(&s));
        rec_ab("ratio", &s);
        rec_end();
    }
    group_close(&one);
    return 0;
}

/* ---- memory ---- */

static const char *shm_base(const char *name)
{
    return name[0] == '/' ? name + 1 : name;
}

int cmd_memory(const struct bopts *o)
{
    uint64_t n = o->sizes[0], idle, total, seg_rss, shadow_rss;
    struct emac_error err;
    emac_client *probe;
    struct bsess b;
    char buf[32];

    if (emac_connect(o->socket, "emabench-probe", &probe, &err) < 0)
        die_emac("connect", &err);
    long pid = emac_server_info(probe)->pid;
    proc_rss(pid, NULL, &idle, NULL);
    bsess_open(&b, o->socket, "bench-memory", "f32", 1, n);
    for (int i = 0; i < 5; i++)
        bsess_update(&b);
    bsess_event(&b, "eval_start");
    bsess_event(&b, "eval_end");
    const struct emac_session_info *info = emac_session_state(b.s);
    uint64_t shadow_bytes = info->shadow_bytes;
    proc_rss(pid, shm_base(emac_segment_name(b.seg)), &total, &seg_rss);
    proc_rss(pid, shm_base(info->shadow_shm), &total, &shadow_rss);
    uint64_t own = total - seg_rss;
    rec_begin("memory");
    rec_int("elems", n);
    rec_str("size", fmt_elems(n, buf, sizeof(buf)));
    rec_int("rss_idle_bytes", idle);
    rec_int("rss_bytes", total);
    rec_int("rss_trainer_segment_bytes", seg_rss);
    rec_int("rss_shadow_bytes", shadow_rss);
    rec_int("rss_own_bytes", own);
    rec_int("shadow_bytes", shadow_bytes);
    rec_num("overhead_mib", ((double)own - (double)shadow_bytes) / 1048576.0);
    rec_num("ratio", (double)own / (double)shadow_bytes);
    rec_num("ratio_with_segment", (double)total / (double)shadow_bytes);
    rec_end();
    bsess_close(&b);
    emac_disconnect(probe);
    return 0;
}

/* ---- register ---- */

struct reg_result {
    double register_s, first_update_s, update_s;
    uint64_t rss_growth, shadow_bytes;
};

/* A connection and a segment of ntensors tensors of numel each, made once: what a
 * repetition times is the register request and the updates, not the segment's making. */
struct reg_side {
    emac_client *c;
    emac_segment *seg;
};

static void reg_side_open(struct reg_side *rs, const struct bopts *o, uint64_t ntensors,
                          uint64_t numel)
{
    struct emac_error err;
    struct emac_tensor_spec *specs = calloc(ntensors, sizeof(*specs));
    char *names = malloc(ntensors * 24);

    if (specs == NULL || names == NULL)
        die("out of memory");
    for (uint64_t i = 0; i < ntensors; i++) {
        snprintf(names + i * 24, 24, "t%llu", (unsigned long long)i);
        specs[i] = (struct emac_tensor_spec){names + i * 24, "f32", numel, NULL, 0};
    }
    if (emac_connect(o->socket, "emabench", &rs->c, &err) < 0)
        die_emac("connect", &err);
    rs->seg = bench_segment_create(specs, ntensors);
    for (uint64_t i = 0; i < ntensors; i++) {
        const struct emac_tensor *t = emac_segment_tensor(rs->seg, i);
        memset(t->data, 0x3c, t->bytes);
    }
    free(specs);
    free(names);
}

static void reg_side_close(struct reg_side *rs)
{
    bench_segment_destroy(rs->seg);
    emac_disconnect(rs->c);
}

static void register_one(struct reg_side *rs, long pid, const char *name,
                         struct reg_result *res)
{
    struct emac_error err;
    emac_session *s;
    struct emac_config cfg = {.half_life = "100ba"};
    uint64_t before, after, seg_rss;

    proc_rss(pid, NULL, &before, NULL);
    double t0 = now();
    if (emac_register(rs->c, name, rs->seg, &cfg, false, &s, &err) < 0)
        die_emac("register", &err);
    res->register_s = now() - t0;
    struct emac_time tm = {1, 0, false, 0};
    struct emac_result r;
    t0 = now();
    if (emac_event(s, "batch_end", &tm, &r, &err) < 0)
        die_emac("batch_end", &err);
    res->first_update_s = now() - t0;
    tm.batch = 2;
    t0 = now();
    if (emac_event(s, "batch_end", &tm, &r, &err) < 0)
        die_emac("batch_end", &err);
    res->update_s = now() - t0;
    proc_rss(pid, shm_base(emac_segment_name(rs->seg)), &after, &seg_rss);
    res->rss_growth = after - seg_rss > before ? after - seg_rss - before : 0;
    res->shadow_bytes = emac_session_state(s)->shadow_bytes;
    if (emac_close(s, false, &err) < 0)
        die_emac("close", &err);
    emac_session_free(s);
}

int cmd_register(const struct bopts *o)
{
    struct emac_error err;
    emac_client *probe;
    struct reg_result many, one, first_many = {0}, first_one = {0};
    struct ab reg = {0}, upd = {0}, first = {0};
    uint64_t count = o->count, elems = o->elems;

    if (emac_connect(o->socket, "emabench-probe", &probe, &err) < 0)
        die_emac("connect", &err);
    long pid = emac_server_info(probe)->pid;
    struct reg_side rs_many, rs_one;
    reg_side_open(&rs_many, o, count, elems);
    reg_side_open(&rs_one, o, 1, count * elems);
    /* Each repetition registers the many tensors and the one, in turn first. The memory
     * figures are the first repetition's: emad's allocator keeps what a closed session
     * freed, so later ones grow less. */
    for (unsigned r = 0; r < o->reps; r++) {
        if (ab_a_first(r)) {
            register_one(&rs_many, pid, "bench-many", &many);
            register_one(&rs_one, pid, "bench-one", &one);
        } else {
            register_one(&rs_one, pid, "bench-one", &one);
            register_one(&rs_many, pid, "bench-many", &many);
        }
        if (r == 0) {
            first_many = many;
            first_one = one;
        }
        ab_add(&reg, many.register_s, one.register_s, many.register_s / one.register_s);
        ab_add(&upd, many.update_s, one.update_s, many.update_s / one.update_s);
        ab_add(&first, many.first_update_s, one.first_update_s, 0);
    }
    reg_side_close(&rs_many);
    reg_side_close(&rs_one);
    emac_disconnect(probe);
    rec_begin("register");
    rec_int("tensors", count);
    rec_int("elems_each", elems);
    rec_int("elems", count * elems);
    rec_int("reps", reg.n);
    rec_num("register_s", ab_med_a(&reg));
    rec_num("one_tensor_register_s", ab_med_b(&reg));
    rec_ab("ratio", &reg);
    rec_int("rss_growth_bytes", first_many.rss_growth);
    rec_int("one_tensor_rss_growth_bytes", first_one.rss_growth);
    rec_int("shadow_bytes", first_many.shadow_bytes);
    rec_num("bytes_per_tensor",
            ((double)first_many.rss_growth - (double)first_one.rss_growth) / (double)count);
    rec_num("first_update_s", ab_med_a(&first));
    rec_num("update_s", ab_med_a(&upd));
    rec_num("one_tensor_update_s", ab_med_b(&upd));
    rec_ab("ratio_update", &upd);
    rec_end();
    return 0;
}
