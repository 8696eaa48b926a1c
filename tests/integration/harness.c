/*
 * harness.c - emad as a subprocess of the integration tests, and the raw
 * protocol helpers they share. See harness.h.
 */
#include "harness.h"

#include "msg.h"
#include "names.h"
#include "wire.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <limits.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* ---- selection ---- */

/* EMAD_TEST_FILTER=<glob> runs only the matching tests of a binary: a flaky
 * test is rerun alone, under load, without the rest (docs/testing.md). */
__attribute__((constructor)) static void select_tests(void)
{
    const char *f = getenv("EMAD_TEST_FILTER");

    if (f != NULL && f[0] != '\0')
        cmocka_set_test_filter(f);
}

/* ---- paths ---- */

const char *emad_bin(void)
{
    const char *p = getenv("EMAD_BIN");
    return p ? p : "build/emad";
}

const char *emactl_bin(void)
{
    const char *p = getenv("EMACTL_BIN");
    return p ? p : "build/emactl";
}

void copy_emactl(const char *path)
{
    char cmd[1024];

    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0755 '%s'", emactl_bin(), path, path);
    assert_int_equal(system(cmd), 0);
}

/* ---- time ---- */

void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- files ---- */

void make_dir(struct daemon *d)
{
    snprintf(d->dir, sizeof(d->dir), "/tmp/emad-test-XXXXXX");
    assert_non_null(mkdtemp(d->dir));
    snprintf(d->sock, sizeof(d->sock), "%s/emad.sock", d->dir);
    snprintf(d->log, sizeof(d->log), "%s/emad.log", d->dir);
    snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
}

void remove_tree(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

void *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    struct stat st;

    if (f == NULL)
        fail_msg("%s: %s", path, strerror(errno));
    assert_int_equal(fstat(fileno(f), &st), 0);
    char *buf = malloc((size_t)st.st_size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)st.st_size, f), (size_t)st.st_size);
    fclose(f);
    buf[st.st_size] = '\0';
    *len = (size_t)st.st_size;
    return buf;
}

void expect_same_files(const char *a, const char *b)
{
    size_t la, lb;
    void *x = slurp(a, &la), *y = slurp(b, &lb);

    if (la != lb || memcmp(x, y, la) != 0)
        fail_msg("%s (%zu bytes) and %s (%zu bytes) differ", a, la, b, lb);
    free(x);
    free(y);
}

bool file_contains(const char *path, const char *needle)
{
    char buf[65536];
    FILE *fp = fopen(path, "r");
    size_t n;

    if (fp == NULL)
        return false;
    n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

bool for_each_line(const char *path, void (*fn)(const char *line, void *arg), void *arg)
{
    char line[1024];
    FILE *fp = fopen(path, "r");

    if (fp == NULL)
        return false;
    while (fgets(line, sizeof(line), fp) != NULL)
        fn(line, arg);
    fclose(fp);
    return true;
}

struct count_lines {
    const char *needle;
    int n;
};

static void count_line(const char *line, void *arg)
{
    struct count_lines *c = arg;

    if (strstr(line, c->needle) != NULL)
        c->n++;
}

int count_lines(const char *path, const char *needle)
{
    struct count_lines c = {needle, 0};

    for_each_line(path, count_line, &c);
    return c.n;
}

struct proc_value {
    const char *fmt;
    long value;
    bool found;
};

static void proc_value_line(const char *line, void *arg)
{
    struct proc_value *p = arg;

    if (!p->found && sscanf(line, p->fmt, &p->value) == 1)
        p->found = true;
}

long proc_value(pid_t pid, const char *file, const char *fmt)
{
    char path[128];
    struct proc_value p = {fmt, -1, false};

    snprintf(path, sizeof(path), "/proc/%ld/%s", (long)pid, file);
    assert_true(for_each_line(path, proc_value_line, &p));
    return p.found ? p.value : -1;
}

/* ---- processes ---- */

/* Every process spawned, so that a failed test (cmocka longjmps out of it)
 * leaves nothing running behind. */
static pid_t spawned[64];
static size_t nspawned;

pid_t spawn(char *const argv[], char *const envs[], int out_fd, int err_fd)
{
    pid_t pid = fork();

    assert_true(pid >= 0);
    if (pid == 0) {
        for (size_t i = 0; envs && envs[i]; i++)
            putenv(envs[i]);
        /* Never the test's own stdout: a daemon left running would hold
         * the pipe of whoever reads the test's output. */
        int null_fd = open("/dev/null", O_WRONLY);
        dup2(out_fd >= 0 ? out_fd : null_fd, 1);
        dup2(err_fd >= 0 ? err_fd : null_fd, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    if (nspawned < sizeof(spawned) / sizeof(spawned[0]))
        spawned[nspawned++] = pid;
    return pid;
}

/* Remove the shadow objects named after pid (an emad of the test, gone now): an emad killed
 * by a failed test's teardown, or stopped with sessions kept, leaves them for a successor that
 * the test will not start. */
static void remove_shadows_of(pid_t pid)
{
    DIR *dir = opendir("/dev/shm");
    struct dirent *e;
    char name[300];

    if (dir == NULL)
        return;
    while ((e = readdir(dir)) != NULL) {
        if (names_shadow_pid(e->d_name) != (long)pid)
            continue;
        snprintf(name, sizeof(name), "/%s", e->d_name);
        shm_unlink(name);
    }
    closedir(dir);
}

int kill_leftovers(void **state)
{
    (void)state;
    for (size_t i = 0; i < nspawned; i++) {
        if (spawned[i] > 0 && kill(spawned[i], SIGKILL) == 0)
            waitpid(spawned[i], NULL, 0);
        if (spawned[i] > 0)
            remove_shadows_of(spawned[i]);
    }
    nspawned = 0;
    return 0;
}

int wait_exit(pid_t pid)
{
    int status = 0;
    for (int waited = 0; waited < WAIT_MS; waited += 5) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        sleep_ms(5);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("process %ld did not exit in time", (long)pid);
    return -1;
}

void expect_in(const char *out, const char *fmt, ...)
{
    char want[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(want, sizeof(want), fmt, ap);
    va_end(ap);
    if (strstr(out, want) == NULL)
        fail_msg("the output lacks \"%s\":\n%s", want, out);
}

int run_capture(char *const argv[], char *const envs[], char *out, size_t outlen)
{
    char path[] = "/tmp/emad-test-out-XXXXXX";
    int fd = mkstemp(path);
    pid_t pid;
    int rc;
    ssize_t n;

    assert_true(fd >= 0);
    unlink(path);
    pid = spawn(argv, envs, fd, fd);
    rc = wait_exit(pid);
    lseek(fd, 0, SEEK_SET);
    n = read(fd, out, outlen - 1);
    out[n > 0 ? n : 0] = '\0';
    close(fd);
    expect_no_sanitizer_report(out, argv[0]);
    return rc;
}

void expect_no_sanitizer_report(const char *text, const char *who)
{
    if (strstr(text, "Sanitizer") != NULL || strstr(text, "runtime error") != NULL)
        fail_msg("%s: sanitizer report:\n%s", who, text);
}

/* ---- another uid ---- */

void run_as_uid(uid_t uid, gid_t gid, void (*fn)(const void *arg, struct verdict *v),
                const void *arg)
{
    struct verdict v = {0, ""};
    int fds[2], status;
    pid_t pid;

    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
            setresuid(uid, uid, uid) != 0) {
            v.line = __LINE__;
            snprintf(v.why, sizeof(v.why), "cannot become uid %ld, gid %ld: %s", (long)uid,
                     (long)gid, strerror(errno));
        } else {
            fn(arg, &v);
        }
        _exit(write(fds[1], &v, sizeof(v)) == (ssize_t)sizeof(v) ? 0 : 1);
    }
    close(fds[1]);
    ssize_t n = read(fds[0], &v, sizeof(v));
    close(fds[0]);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (n != (ssize_t)sizeof(v) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the child playing uid %ld died (status 0x%x)", (long)uid, status);
    if (v.line != 0)
        fail_msg("as uid %ld, line %d: %s", (long)uid, v.line, v.why);
}

/* ---- starting and stopping emad ---- */

bool wait_listening(pid_t pid, const char *sock)
{
    for (int waited = 0; waited < WAIT_MS; waited += 10) {
        int status;
        int fd = try_connect(sock);
        if (fd >= 0) {
            close(fd);
            return true;
        }
        if (waitpid(pid, &status, WNOHANG) == pid)
            return false;
        sleep_ms(10);
    }
    return false;
}

void daemon_start_argv(struct daemon *d, const char *const prefix[], const char *const extra[],
                       char *const envs[])
{
    const char *argv[48];
    char err_path[160];
    size_t n = 0;

    for (size_t i = 0; prefix && prefix[i] && n < 8; i++)
        argv[n++] = prefix[i];
    argv[n++] = emad_bin();
    argv[n++] = "--socket";
    argv[n++] = d->sock;
    argv[n++] = "--state-dir";
    argv[n++] = d->state;
    argv[n++] = "--log-file";
    argv[n++] = d->log;
    argv[n++] = "--log-level";
    argv[n++] = "debug";
    /* EMAD_TEST_ARGS: options for every emad of the run (tests/run reruns some binaries with
     * --inline-max 0, so that the workers' path meets the same assertions); words split at
     * spaces, the test's own options after them. */
    char test_args[256];
    const char *env_args = getenv("EMAD_TEST_ARGS");
    snprintf(test_args, sizeof(test_args), "%s", env_args ? env_args : "");
    for (char *save = NULL, *w = strtok_r(test_args, " ", &save); w != NULL && n < 40;
         w = strtok_r(NULL, " ", &save))
        argv[n++] = w;
    for (size_t i = 0; extra && extra[i] && n < 47; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    /* emad logs to its file; its stderr can only carry sanitizer reports,
     * which check_daemon_stderr() looks for. */
    snprintf(err_path, sizeof(err_path), "%s/emad.stderr", d->dir);
    int err_fd = open(err_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    assert_true(err_fd >= 0);
    d->pid = spawn((char *const *)argv, envs, -1, err_fd);
    close(err_fd);
    assert_true(wait_listening(d->pid, d->sock));
}

void daemon_start_env(struct daemon *d, const char *const extra[], char *const envs[])
{
    daemon_start_argv(d, NULL, extra, envs);
}

void daemon_start(struct daemon *d, const char *const extra[])
{
    make_dir(d);
    daemon_start_env(d, extra, NULL);
}

void daemon_restart_open(struct daemon *d, const char *group)
{
    const char *extra[] = {"--socket-mode", "0666", group ? "--allow-group" : NULL, group, NULL};

    assert_int_equal(chmod(d->dir, 0755), 0);
    daemon_start_env(d, extra, NULL);
}

void daemon_start_open(struct daemon *d, const char *group)
{
    make_dir(d);
    daemon_restart_open(d, group);
}

void check_daemon_stderr(const struct daemon *d, int status)
{
    char path[160], text[16384] = "";
    snprintf(path, sizeof(path), "%s/emad.stderr", d->dir);
    FILE *fp = fopen(path, "r");
    if (fp != NULL) {
        size_t n = fread(text, 1, sizeof(text) - 1, fp);
        text[n] = '\0';
        fclose(fp);
    }
    expect_no_sanitizer_report(text, "emad");
    if (status >= 0 && status != 0)
        fail_msg("emad exited with status %d; its stderr:\n%s", status, text);
}

/* SIGTERM, expect exit 0 and a clean stderr, and with socket_gone the
 * socket unlinked; remove the directory. */
static void stop(struct daemon *d, bool socket_gone)
{
    struct stat st;

    assert_int_equal(kill(d->pid, SIGTERM), 0);
    check_daemon_stderr(d, wait_exit(d->pid));
    if (socket_gone)
        assert_int_equal(lstat(d->sock, &st), -1);
    remove_tree(d->dir);
}

void daemon_stop(struct daemon *d)
{
    stop(d, false);
}

void daemon_stop_unlinked(struct daemon *d)
{
    stop(d, true);
}

/* ---- raw protocol ---- */

int try_connect(const char *path)
{
    struct sockaddr_un sa;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void send_bytes(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        c += w;
        n -= (size_t)w;
    }
}

void pack_hello(msgpack_sbuffer *sb, uint32_t msgid, uint64_t proto, const char *client)
{
    struct msg_hello h = {proto, msg_str_c(client), false, 0};
    msgpack_packer pk;

    msgpack_sbuffer_init(sb);
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, msgid, "hello");
    msg_encode(&pk, &msg_hello_desc, &h);
}

void send_hello(int fd, uint32_t msgid, uint64_t proto, const char *client)
{
    msgpack_sbuffer sb;

    pack_hello(&sb, msgid, proto, client);
    send_bytes(fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
}

void read_reply_dec(int fd, struct wire_decoder *dec, struct reply *r)
{
    struct wire_msg m;
    struct wire_fault f;

    memset(r, 0, sizeof(*r));
    for (;;) {
        int rc = wire_decoder_next(dec, &m, &f);
        assert_true(rc >= 0);
        if (rc > 0) {
            const msgpack_object *errmap = m.kind == WIRE_RESPONSE ? m.error : m.params;
            r->kind = m.kind;
            r->msgid = m.msgid;
            if (errmap->type == MSGPACK_OBJECT_MAP) {
                struct msg_error e;
                char why[128];
                assert_int_equal(msg_decode(&msg_error_desc, errmap, &e, why, sizeof(why)), 0);
                snprintf(r->code, sizeof(r->code), "%.*s", (int)e.code.len, e.code.ptr);
                snprintf(r->message, sizeof(r->message), "%.*s", (int)e.message.len,
                         e.message.ptr);
            }
            return;
        }
        struct pollfd p = {fd, POLLIN, 0};
        assert_int_equal(poll(&p, 1, WAIT_MS), 1);
        size_t room;
        char *buf = wire_decoder_reserve(dec, 65536, &room);
        assert_non_null(buf);
        ssize_t n = recv(fd, buf, room, 0);
        if (n <= 0) {
            r->eof = true;
            return;
        }
        wire_decoder_commit(dec, (size_t)n);
    }
}

void read_reply(int fd, struct reply *r)
{
    struct wire_decoder dec;
    wire_decoder_init(&dec, 1u << 24, 8);
    read_reply_dec(fd, &dec, r);
    wire_decoder_free(&dec);
}

int hello_connect(const char *sock, const char *client, struct wire_decoder *dec)
{
    struct reply r;
    int fd = try_connect(sock);

    assert_true(fd >= 0);
    send_hello(fd, 1, 1, client);
    if (dec != NULL)
        read_reply_dec(fd, dec, &r);
    else
        read_reply(fd, &r);
    assert_false(r.eof);
    assert_int_equal(r.msgid, 1);
    assert_string_equal(r.code, "");
    return fd;
}

void register_msg(struct msg_register *reg, struct msg_tensor *t, size_t n, const char *session,
                  emac_segment *seg)
{
    memset(reg, 0, sizeof(*reg));
    reg->session = msg_str_c(session);
    reg->shm = msg_str_c(emac_segment_name(seg));
    for (size_t i = 0; i < n; i++) {
        const struct emac_tensor *et = emac_segment_tensor(seg, i);
        t[i] = (struct msg_tensor){.name = msg_str_c(et->name), .dtype = msg_str_c(et->dtype),
                                   .offset = et->offset, .numel = et->numel};
    }
    reg->tensors = t;
    reg->ntensors = n;
}

/* ---- libemaclient ---- */

emac_segment *seg_left;

int teardown_seg_left(void **state)
{
    kill_leftovers(state);
    emac_segment_destroy(seg_left);
    seg_left = NULL;
    return 0;
}

emac_client *client_connect(const struct daemon *d, const char *name)
{
    struct emac_error err;
    emac_client *c = NULL;

    if (emac_connect(d->sock, name, &c, &err) < 0)
        fail_msg("connect: %s: %s", err.code, err.message);
    return c;
}

struct emac_result event_at(emac_session *s, const char *event, uint64_t batch)
{
    struct emac_error err;
    struct emac_result r;
    struct emac_time t = {batch, 0, false, 0};

    if (emac_event(s, event, &t, &r, &err) < 0)
        fail_msg("%s at batch %llu: %s: %s", event, (unsigned long long)batch, err.code,
                 err.message);
    return r;
}

void wait_snapshot_files(emac_client *c, const char *session, uint64_t b, size_t want)
{
    struct emac_snapshot *l;
    struct emac_error err;
    size_t n, at = 0;

    for (int ms = 0; ms < WAIT_MS && at < want; ms += 10) {
        if (emac_snapshots(c, session, &l, &n, &err) < 0)
            fail_msg("snapshots: %s: %s", err.code, err.message);
        at = 0;
        for (size_t i = 0; i < n; i++)
            at += l[i].batch == b;
        emac_snapshots_free(l);
        if (at < want)
            sleep_ms(10);
    }
    if (at < want)
        fail_msg("no %zu snapshot files of batch %llu after %d ms", want, (unsigned long long)b,
                 WAIT_MS);
}

void daemon_kill(struct daemon *d)
{
    assert_int_equal(kill(d->pid, SIGKILL), 0);
    assert_int_equal(wait_exit(d->pid), 128 + SIGKILL);
}

void shim_preload(char preload[SHIM_PRELOAD_MAX], char asan[SHIM_ASAN_MAX])
{
    const char *shim = getenv("EMAD_TEST_EIO_SHIM");
    const char *opts = getenv("ASAN_OPTIONS");
    char path[PATH_MAX];

    /* Built plain by `make tests` and preloaded into every variant of emad; absolute, since
     * emad resolves it. */
    if (shim == NULL)
        shim = "build/tests/integration/eio_shim.so";
    if (realpath(shim, path) == NULL)
        fail_msg("the test shim %s: %s (make tests builds it; EMAD_TEST_EIO_SHIM overrides)", shim,
                 strerror(errno));
    snprintf(preload, SHIM_PRELOAD_MAX, "LD_PRELOAD=%s", path);
    /* ASan wants its runtime first among the preloaded libraries; the shim only forwards
     * to whatever comes next (ASan's interceptors included), so the order is harmless.
     * Other builds ignore the variable. */
    snprintf(asan, SHIM_ASAN_MAX, "ASAN_OPTIONS=%s%sverify_asan_link_order=0",
             opts != NULL ? opts : "", opts != NULL && opts[0] != '\0' ? ":" : "");
}

/* ---- raw protocol calls ---- */

void rpc_open(struct rpc *c, const struct daemon *d, const char *client)
{
    memset(c, 0, sizeof(*c));
    wire_decoder_init(&c->dec, 1u << 24, 8);
    c->fd = hello_connect(d->sock, client, &c->dec);
    c->next = 2;
}

void rpc_close(struct rpc *c)
{
    close(c->fd);
    wire_decoder_free(&c->dec);
}

uint32_t rpc_send(struct rpc *c, const char *method, const struct msg_desc *d, const void *req)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    uint32_t id = c->next++;

    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    wire_pack_request_head(&pk, id, method);
    msg_encode(&pk, d, req);
    send_bytes(c->fd, sb.data, sb.size);
    msgpack_sbuffer_destroy(&sb);
    return id;
}

const msgpack_object *rpc_call(struct rpc *c, const char *method, const struct msg_desc *d,
                               const void *req)
{
    uint32_t id = rpc_send(c, method, d, req);

    c->code[0] = c->message[0] = '\0';
    for (;;) {
        struct wire_msg m;
        struct wire_fault f;
        int rc = wire_decoder_next(&c->dec, &m, &f);
        assert_true(rc >= 0);
        if (rc > 0) {
            assert_int_equal(m.kind, WIRE_RESPONSE);
            assert_int_equal(m.msgid, id);
            if (m.error->type == MSGPACK_OBJECT_MAP) {
                struct msg_error e;
                char why[128];
                assert_int_equal(msg_decode(&msg_error_desc, m.error, &e, why, sizeof(why)), 0);
                snprintf(c->code, sizeof(c->code), "%.*s", (int)e.code.len, e.code.ptr);
                snprintf(c->message, sizeof(c->message), "%.*s", (int)e.message.len,
                         e.message.ptr);
                return NULL;
            }
            return m.result;
        }
        struct pollfd p = {c->fd, POLLIN, 0};
        assert_int_equal(poll(&p, 1, WAIT_MS), 1);
        size_t room;
        char *buf = wire_decoder_reserve(&c->dec, 65536, &room);
        assert_non_null(buf);
        ssize_t n = recv(c->fd, buf, room, 0);
        assert_true(n > 0);
        wire_decoder_commit(&c->dec, (size_t)n);
    }
}
