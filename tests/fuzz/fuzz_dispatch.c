/*
 * fuzz_dispatch.c - libFuzzer target for emad's request handling, in
 * process: the real server (accept with SO_PEERCRED, read, decode, queue
 * replies), dispatch, the session handlers, the worker pool and the state
 * files, all on one libuv loop driven by the harness.
 *
 * Set up once (LLVMFuzzerInitialize): options parsed by opts_parse() with a
 * temporary directory for the socket and --state-dir, small limits so that
 * the limit paths are reached, one worker thread, and one valid trainer
 * segment /emad-fuzz-<pid in hex> (12 KiB, 4 KiB of params). Inputs name it
 * as "/emad-fuzz-XXXXXXXX": the harness writes its own pid over the X's, so
 * seeds stay valid in every process while parallel fuzzers never share it.
 *
 * Input: the bytes clients send, over one or more connections. The pair
 * 0xc1 'n' (0xc1 is never a msgpack type byte) ends what the current
 * connection sends and opens a new one, the previous ones staying open; 0xc1
 * 'c' closes every open connection first. At most MAX_CLIENTS connections
 * per input, one more than --max-connections so that refusal is reachable.
 * Each connection's bytes are written, then the loop runs until everything
 * is quiet: every byte read by emad, every reply read by the client, no job
 * on the pool.
 *
 * The trainer owns its segment and may rewrite it at any moment, the header
 * included (tests/fuzz/README, "Shared memory is input"): 0xc1 'h' OFF LEN
 * DATA, inside a connection's bytes, writes LEN % 8 + 1 bytes of DATA at
 * offset OFF % 64 of the segment's header (magic to swap_generation:
 * params_offset, stash_offset, params_bytes, segment_bytes, swap_state...),
 * between that connection's requests: what came before it is sent and
 * answered first, and the connection goes on with what follows. At most
 * MAX_PATCHES per connection; one cut short by the end of the input writes
 * what there is. At the end every connection is closed and emad stops cleanly
 * (registry_save_all, registry_free; every shadow unlinked), and the segment
 * and the state directory are reset, so that inputs do not depend on each
 * other.
 *
 * What must hold (a violation calls __builtin_trap), besides no sanitizer
 * report and no leak:
 *   - everything emad sends is well-formed msgpack-rpc: responses, or the
 *     "error" notification of a refused connection;
 *   - an error response carries {code, message} strings;
 *   - every request is answered exactly once (the msgids answered are the
 *     msgids asked, as multisets), unless emad closed the connection for a
 *     fault it cannot answer, in which case no msgid is answered that was
 *     not asked; emad closes a connection for no other reason;
 *   - once every connection is closed, no connection, job or session
 *     operation is left.
 *
 * emad's SIGBUS guard (shm_guard_install) is left out: this segment never
 * shrinks, so a SIGBUS is a crash for libFuzzer to report.
 *
 * EMAD_FUZZ_LOG=debug|info|warn|error (default error) sets emad's log level.
 * Run by `make fuzz` / `make fuzz-check` (see tests/fuzz/README).
 */
#include "dispatch.h"
#include "emad.h"
#include "listen.h"
#include "log.h"
#include "msg.h"
#include "opts.h"
#include "pool.h"
#include "segment.h"
#include "server.h"
#include "session.h"
#include "session_impl.h"
#include "wire.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

static void fail(void) __attribute__((noreturn));

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_dispatch: %s:%d: check failed: %s\n", __FILE__, __LINE__, \
                    #cond);                                                              \
            fail();                                                                      \
        }                                                                                \
    } while (0)

#define MAX_CONNECTIONS 3             /* --max-connections */
#define MAX_CLIENTS (MAX_CONNECTIONS + 1)
#define SEG_PLACEHOLDER "/emad-fuzz-XXXXXXXX"
#define PARAMS_BYTES 4096u
#define MAX_IDS 4096                  /* msgids tracked per connection */
#define CLIENT_READ 512               /* bytes a client reads per turn of the loop */
#define HEADER_SPAN 64                /* header bytes a patch may write: magic .. swap_generation */
#define MAX_PATCHES 64                /* header patches per connection */

/* A write into the segment's header, between two of a connection's requests. */
struct patch {
    size_t at;                        /* after this many of the connection's bytes */
    uint8_t off, len;                 /* where in the header, how many bytes (1..8) */
    uint8_t bytes[8];
};

_Static_assert(HEADER_SPAN == sizeof(struct seg_header), "a patch reaches every header field");

struct client {
    int fd;
    const uint8_t *out;               /* bytes still to send */
    size_t out_len;
    bool eof;                         /* emad closed the connection (all read) */
    bool fatal;                       /* the bytes hold a fault emad closes on */
    bool refused;                     /* emad refused the connection */
    struct wire_decoder dec;          /* what emad sends back */
    uint32_t *asked, *answered;
    size_t nasked, nanswered;
};

static struct {
    char dir[PATH_MAX];               /* temporary: socket and state */
    char state_dir[PATH_MAX];
    char kept_dir[PATH_MAX];          /* where a clean stop keeps sessions */
    char sock[108];
    struct emad_opts opts;
    struct log log;
    uv_loop_t loop;
    struct emad ctx;
    struct server srv;
    struct registry reg;
    struct pool pool;
    char seg_name[32];
    void *seg;                        /* our mapping of the segment */
    void *seg_pristine;               /* its content, restored before each input */
    size_t seg_len;
    uint64_t connects;                /* clients connected, to wait for their accept */
    uint64_t tuned;                   /* connections whose send buffer is shrunk */
} F;

static void fail_setup(const char *what, const char *why)
{
    fprintf(stderr, "fuzz_dispatch: %s: %s\n", what, why);
    exit(1);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    if (ftw->level > 0)
        remove(path);
    return 0;
}

/* Empty the state directory (state files, and whatever emad keeps below). */
static void clear_state_dir(void)
{
    nftw(F.state_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void cleanup(void)
{
    if (F.seg_name[0] != '\0')
        shm_unlink(F.seg_name);
    clear_state_dir();
    rmdir(F.state_dir);
    unlink(F.sock);
    rmdir(F.dir);
}

/* A check failed: remove what we made (best effort: exit handlers do not
 * run after a crash), then crash for libFuzzer to save the input. */
static void fail(void)
{
    for (struct session *s = F.reg.head; s != NULL; s = s->next)
        if (s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
    cleanup();
    __builtin_trap();
}

/* A valid segment of one 4 KiB params area, owned by us. */
static void make_segment(void)
{
    struct seg_span span = {0, PARAMS_BYTES};
    struct seg_geometry g;
    int fd;

    snprintf(F.seg_name, sizeof(F.seg_name), "/emad-fuzz-%08x", (unsigned)getpid());
    CHECK(seg_layout(&span, 1, &g) == 0);
    fd = shm_open(F.seg_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        fail_setup(F.seg_name, strerror(errno));
    F.seg_len = g.segment_bytes;
    if (ftruncate(fd, (off_t)F.seg_len) < 0)
        fail_setup("ftruncate", strerror(errno));
    F.seg = mmap(NULL, F.seg_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (F.seg == MAP_FAILED)
        fail_setup("mmap", strerror(errno));
    seg_header_init(F.seg, &g);
    /* Params: small floats whatever the dtype the input reads them as. */
    float *p = (float *)((char *)F.seg + g.params_offset);
    for (size_t i = 0; i < PARAMS_BYTES / sizeof(float); i++)
        p[i] = 0.25f * (float)(i % 17) - 1.0f;
    F.seg_pristine = malloc(F.seg_len);
    CHECK(F.seg_pristine != NULL);
    memcpy(F.seg_pristine, F.seg, F.seg_len);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = getenv("TMPDIR"), *level = getenv("EMAD_FUZZ_LOG");
    struct listen_socket ls;
    struct opts_env env;
    char err[512], conns[16];
    int rc;

    (void)argc;
    (void)argv;
    /* As emad: a peer that vanishes mid-reply must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (snprintf(F.dir, sizeof(F.dir), "%s/emad-fuzz.XXXXXX", tmp && *tmp ? tmp : "/tmp") >=
            (int)sizeof(F.dir) ||
        mkdtemp(F.dir) == NULL)
        fail_setup("mkdtemp", strerror(errno));
    snprintf(F.state_dir, sizeof(F.state_dir), "%s/state", F.dir);
    snprintf(F.kept_dir, sizeof(F.kept_dir), "%s/state/sessions", F.dir);
    if (snprintf(F.sock, sizeof(F.sock), "%s/emad.sock", F.dir) >= (int)sizeof(F.sock))
        fail_setup(F.dir, "too long for a socket path; set TMPDIR to a shorter directory");
    atexit(cleanup);

    snprintf(conns, sizeof(conns), "%d", MAX_CONNECTIONS);
    /* Small limits, so that LIMIT, refusal and pausing are within reach. */
    char *args[] = {
        "emad",
        "--socket", F.sock,
        "--state-dir", F.state_dir,
        "--workers", "1",
        "--log-level", level && *level ? (char *)level : "error",
        "--max-message", "4096",
        "--max-depth", "8",
        "--max-connections", conns,
        "--max-sessions", "8",
        "--max-tensors", "16",
        "--max-pending", "16384", /* a few queued operations (each counts), then a pause */
        NULL,
    };
    memset(&env, 0, sizeof(env));
    env.uid = geteuid();
    env.online_cpus = 1;
    rc = opts_parse(&F.opts, (int)(sizeof(args) / sizeof(args[0])) - 1, args, &env, err,
                    sizeof(err));
    if (rc != OPTS_RUN)
        fail_setup("options", err);
    if (log_open(&F.log, NULL, F.opts.log_level) < 0)
        fail_setup("log", "cannot open");
    if ((rc = uv_loop_init(&F.loop)) < 0)
        fail_setup("uv_loop_init", uv_strerror(rc));
    F.ctx.loop = &F.loop;
    F.ctx.opts = &F.opts;
    F.ctx.log = &F.log;
    F.ctx.started_ns = uv_hrtime();
    F.ctx.sessions = &F.reg;
    F.ctx.pool = &F.pool;
    registry_init(&F.reg, &F.ctx);
    if ((rc = pool_init(&F.pool, &F.loop, F.opts.workers)) < 0)
        fail_setup("pool_init", strerror(-rc));
    if (listen_socket_open(&ls, &F.opts, NULL, NULL, &F.log, err, sizeof(err)) < 0)
        fail_setup("listen", err);
    const struct server_handlers up = {dispatch_request, dispatch_closed, &F.ctx};
    if ((rc = server_start(&F.srv, &F.ctx, &ls, &up)) < 0)
        fail_setup("server_start", uv_strerror(rc));
    make_segment();
    return 0;
}

/* ---- clients ---- */

static void note_id(uint32_t **ids, size_t *n, uint32_t id)
{
    if (*n < MAX_IDS)
        (*ids)[(*n)++] = id;
}

/* What emad must answer on this connection: the requests (and answerable
 * faults) its decoder, with emad's limits, finds in the bytes. */
static void expect(struct client *c, const uint8_t *p, size_t n)
{
    struct wire_decoder d;
    struct wire_msg m;
    struct wire_fault f;
    int rc;

    if (n == 0)
        return;
    CHECK(wire_decoder_init(&d, F.opts.max_message, F.opts.max_depth) == 0);
    CHECK(wire_decoder_feed(&d, p, n) == 0);
    while ((rc = wire_decoder_next(&d, &m, &f)) != 0) {
        if (rc == 1) {
            if (m.kind == WIRE_REQUEST)
                note_id(&c->asked, &c->nasked, m.msgid);
        } else if (f.has_msgid) {
            note_id(&c->asked, &c->nasked, f.msgid);
        } else {
            c->fatal = true;
            break;
        }
    }
    wire_decoder_free(&d);
}

static void client_open(struct client *c, const uint8_t *p, size_t n)
{
    struct sockaddr_un sa;

    memset(c, 0, sizeof(*c));
    c->asked = calloc(MAX_IDS, sizeof(uint32_t));
    c->answered = calloc(MAX_IDS, sizeof(uint32_t));
    CHECK(c->asked != NULL && c->answered != NULL);
    CHECK(wire_decoder_init(&c->dec, 1u << 20, WIRE_HARD_MAX_DEPTH - 1) == 0);
    expect(c, p, n);
    c->out = p;
    c->out_len = n;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(c->fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, F.sock, strlen(F.sock));
    /* The backlog (128) always has room: the connect completes at once. */
    CHECK(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    F.connects++;
}

/* What emad sent: well-formed responses (or the refusal notification). */
static void client_take(struct client *c)
{
    struct wire_msg m;
    struct wire_fault f;
    int rc;

    while ((rc = wire_decoder_next(&c->dec, &m, &f)) != 0) {
        if (rc < 0)
            fprintf(stderr, "fuzz_dispatch: emad sent something malformed: %s\n", f.detail);
        CHECK(rc == 1);
        if (m.kind == WIRE_NOTIFY) {
            CHECK(m.method_len == strlen(MSG_NOTIFY_ERROR) &&
                  memcmp(m.method, MSG_NOTIFY_ERROR, m.method_len) == 0);
            c->refused = true;
            continue;
        }
        CHECK(m.kind == WIRE_RESPONSE);
        if (m.error->type != MSGPACK_OBJECT_NIL) {
            struct msg_error e;
            char err[256];
            CHECK(msg_decode(&msg_error_desc, m.error, &e, err, sizeof(err)) == 0);
            CHECK(e.code.len > 0);
            CHECK(m.result->type == MSGPACK_OBJECT_NIL);
        } else {
            CHECK(m.result->type == MSGPACK_OBJECT_MAP);
        }
        note_id(&c->answered, &c->nanswered, m.msgid);
    }
}

/* Send what we can and read what there is; true if anything moved. */
static bool client_pump(struct client *c)
{
    bool moved = false;

    if (c->fd < 0)
        return false;
    while (c->out_len > 0 && !c->eof) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            /* emad closed it: what it sent before is still to be read. */
            if (errno == EPIPE || errno == ECONNRESET)
                c->out_len = 0;
            break;
        }
        c->out += n;
        c->out_len -= (size_t)n;
        moved = true;
    }
    /* A slow reader: a little per turn, so that replies back up in emad. */
    if (!c->eof) {
        size_t room = 0;
        char *p = wire_decoder_reserve(&c->dec, CLIENT_READ, &room);
        CHECK(p != NULL && room > 0);
        ssize_t n = recv(c->fd, p, room < CLIENT_READ ? room : CLIENT_READ, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) {
            c->eof = true;
            moved = true;
        } else if (n > 0) {
            wire_decoder_commit(&c->dec, (size_t)n);
            client_take(c);
            moved = true;
        }
    }
    if (!moved && c->out_len == 0 && !c->eof) {
        int queued = 0;
        /* Bytes sent but not yet read by emad. */
        if (ioctl(c->fd, SIOCOUTQ, &queued) == 0 && queued > 0)
            moved = true;
    }
    return moved;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Every request answered once; with a fatal fault, none answered unasked. */
static void client_check(struct client *c)
{
    size_t i = 0, k = 0;

    if (c->refused)
        return;
    /* emad closes a connection only on a fault it cannot answer. */
    if (c->eof && !c->fatal) {
        fprintf(stderr, "fuzz_dispatch: emad closed a connection without a fatal fault\n");
        fail();
    }
    if (c->nasked >= MAX_IDS || c->nanswered >= MAX_IDS)
        return;
    qsort(c->asked, c->nasked, sizeof(uint32_t), cmp_u32);
    qsort(c->answered, c->nanswered, sizeof(uint32_t), cmp_u32);
    /* answered must be a sub-multiset of asked. */
    while (k < c->nanswered) {
        while (i < c->nasked && c->asked[i] < c->answered[k])
            i++;
        if (i == c->nasked || c->asked[i] != c->answered[k]) {
            fprintf(stderr, "fuzz_dispatch: msgid %u answered but not asked (or twice)\n",
                    c->answered[k]);
            fail();
        }
        i++;
        k++;
    }
    if (!c->fatal && c->nanswered != c->nasked) {
        fprintf(stderr, "fuzz_dispatch: %zu requests, %zu answers\n", c->nasked, c->nanswered);
        fail();
    }
}

static void client_close(struct client *c)
{
    if (c->fd < 0)
        return;
    client_check(c);
    close(c->fd);
    c->fd = -1;
    wire_decoder_free(&c->dec);
    free(c->asked);
    free(c->answered);
    c->asked = c->answered = NULL;
}

/* ---- the loop ---- */

/* Give emad's side of each new connection the smallest send buffer, so that
 * its replies queue up (and it pauses reading) with a slow reader. Done in
 * the turn that accepted it, before anything is read. */
static void shrink_send_buffers(void)
{
    for (struct conn *c = F.srv.conns; c != NULL && c->peer.id > F.tuned; c = c->next) {
        uv_os_fd_t fd;
        int small = 1; /* the kernel rounds it up to its minimum */
        if (!c->closing && uv_fileno((uv_handle_t *)&c->pipe, &fd) == 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    }
    F.tuned = F.srv.next_id;
}

/* Run emad and the clients until nothing moves: every client's bytes read
 * by emad, every reply read, every connection accepted, no job in flight,
 * and (once every client is closed) every connection gone. */
static void settle(struct client *cl, int ncl, bool all_closed)
{
    for (int quiet = 0; quiet < 2;) {
        bool busy = false;

        if (pool_in_flight(&F.pool) > 0) {
            /* Blocks until a job completes (or something else happens). */
            uv_run(&F.loop, UV_RUN_ONCE);
            busy = true;
        } else {
            uv_run(&F.loop, UV_RUN_NOWAIT);
        }
        shrink_send_buffers();
        for (int i = 0; i < ncl; i++)
            busy |= client_pump(&cl[i]);
        if (F.srv.next_id < F.connects || pool_in_flight(&F.pool) > 0)
            busy = true;
        if (all_closed && F.srv.nconns > 0)
            busy = true;
        for (struct conn *c = F.srv.conns; c != NULL; c = c->next)
            if (!c->closing && uv_stream_get_write_queue_size((uv_stream_t *)&c->pipe) > 0)
                busy = true;
        quiet = busy ? 0 : quiet + 1;
    }
}

/*
 * One connection's bytes, from buf[start] up to the next 0xc1 'n' or 'c' (the
 * end of the input if last: the last connection takes every byte left), into
 * own (size bytes at most), and the header patches among them into patches.
 * Returns where it stopped: the 0xc1 of the separator, or size.
 */
static size_t take_connection(const uint8_t *buf, size_t size, size_t start, bool last,
                              uint8_t *own, size_t *own_len, struct patch *patches,
                              size_t *npatches)
{
    size_t i = start;

    *own_len = 0;
    *npatches = 0;
    while (i < size) {
        if (buf[i] == 0xc1 && i + 1 < size) {
            uint8_t k = buf[i + 1];
            if (!last && (k == 'n' || k == 'c'))
                return i;
            if (k == 'h' && i + 3 < size && *npatches < MAX_PATCHES) {
                struct patch *p = &patches[(*npatches)++];
                size_t avail;
                p->at = *own_len;
                p->off = buf[i + 2] % HEADER_SPAN;
                p->len = (uint8_t)(buf[i + 3] % 8 + 1);
                if (p->off + p->len > HEADER_SPAN)
                    p->len = (uint8_t)(HEADER_SPAN - p->off);
                avail = size - (i + 4);
                if (avail < p->len)
                    p->len = (uint8_t)avail;
                memcpy(p->bytes, buf + i + 4, p->len);
                i += 4 + (size_t)p->len;
                continue;
            }
        }
        own[(*own_len)++] = buf[i++];
    }
    return size;
}

/* Send the connection c its bytes (own_len in all, from c->out) a piece at a
 * time: up to each patch, then let emad answer everything, then write the
 * patch into the header, as a trainer may between two requests. */
static void send_with_patches(struct client *cl, int ncl, struct client *c, size_t own_len,
                              const struct patch *patches, size_t npatches)
{
    const uint8_t *base = c->out;
    size_t sent = 0;

    for (size_t k = 0; k <= npatches; k++) {
        size_t upto = k < npatches ? patches[k].at : own_len;
        c->out = base + sent;
        c->out_len = upto - sent;
        settle(cl, ncl, false);
        sent = upto;
        if (k < npatches)
            memcpy((uint8_t *)F.seg + patches[k].off, patches[k].bytes, patches[k].len);
    }
}

/* Write our segment's name over the placeholder. */
static void name_segment(uint8_t *p, size_t n)
{
    const size_t len = strlen(SEG_PLACEHOLDER);
    uint8_t *at = p;

    while ((at = memmem(at, n - (size_t)(at - p), SEG_PLACEHOLDER, len)) != NULL) {
        memcpy(at, F.seg_name, len);
        at += len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct patch patches[MAX_PATCHES];
    struct client cl[MAX_CLIENTS];
    uint8_t *own[MAX_CLIENTS] = {NULL};
    uint8_t *buf = malloc(size ? size : 1);
    size_t start = 0, own_len, npatches;
    int ncl = 0;
    bool close_first = false;

    CHECK(buf != NULL);
    memcpy(buf, data, size);
    name_segment(buf, size);
    memcpy(F.seg, F.seg_pristine, F.seg_len);
    clear_state_dir();

    for (;;) {
        own[ncl] = malloc(size ? size : 1);
        CHECK(own[ncl] != NULL);
        size_t end = take_connection(buf, size, start, ncl == MAX_CLIENTS - 1, own[ncl], &own_len,
                                     patches, &npatches);
        if (close_first) {
            for (int i = 0; i < ncl; i++)
                client_close(&cl[i]);
            settle(cl, ncl, true);
        }
        client_open(&cl[ncl], own[ncl], own_len);
        ncl++;
        send_with_patches(cl, ncl, &cl[ncl - 1], own_len, patches, npatches);
        if (end >= size)
            break;
        close_first = buf[end + 1] == 'c';
        start = end + 2;
    }
    for (int i = 0; i < ncl; i++)
        client_close(&cl[i]);
    settle(cl, ncl, true);
    CHECK(F.srv.conns == NULL && F.srv.nconns == 0);
    CHECK(pool_in_flight(&F.pool) == 0);
    for (struct session *s = F.reg.head; s != NULL; s = s->next)
        CHECK(s->q_head == NULL && s->owner == NULL);
    /* A clean stop of emad (as main.c's): keep the sessions in state files,
     * then free them. Shadows registry_free leaves for a next start (those
     * that could not be kept) are removed here. */
    registry_save_all(&F.reg, F.kept_dir);
    for (struct session *s = F.reg.head; s != NULL; s = s->next)
        if (!s->kept && s->shadow_name[0] != '\0')
            shm_unlink(s->shadow_name);
    registry_free(&F.reg);
    registry_init(&F.reg, &F.ctx);
    for (int i = 0; i < ncl; i++)
        free(own[i]);
    free(buf);
    return 0;
}
