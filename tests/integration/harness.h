/*
 * harness.h - what the integration tests share: emad (and emactl) run as
 * subprocesses of a cmocka test, and the raw protocol as far as more than
 * one test file speaks it. Implemented in harness.c; linked into every
 * tests/integration/test_* binary.
 *
 * Binaries come from $EMAD_BIN and $EMACTL_BIN (default build/emad and
 * build/emactl), so the same tests run against the sanitizer build.
 *
 * Every function reports trouble through cmocka (assert_*, fail_msg), so
 * they may only be called from inside a running test; a failure longjmps
 * out of the test, and the teardown kill_leftovers() then kills whatever
 * was spawned.
 *
 * Contents
 *   paths           emad_bin, emactl_bin, copy_emactl
 *   time            WAIT_MS, sleep_ms
 *   files           make_dir, remove_tree, file_contains, slurp,
 *                   expect_same_files, for_each_line, count_lines, proc_value
 *   processes       spawn, kill_leftovers, wait_exit, run_capture, expect_in,
 *                   expect_no_sanitizer_report
 *   another uid     struct verdict, CHILD_CHECK, run_as_uid
 *   the daemon      struct daemon, daemon_start, daemon_start_env,
 *                   daemon_start_argv, daemon_start_open, daemon_restart_open,
 *                   wait_listening, check_daemon_stderr, daemon_stop,
 *                   daemon_stop_unlinked
 *   raw protocol    try_connect, send_bytes, pack_hello, send_hello,
 *                   hello_connect, register_msg, struct rpc (rpc_open, rpc_call),
 *                   struct reply,
 *                   read_reply_dec, read_reply
 *   libemaclient    seg_left, teardown_seg_left, client_connect, event_at,
 *                   wait_snapshot_files,
 *                   daemon_kill
 */
#ifndef EMAD_TESTS_INTEGRATION_HARNESS_H
#define EMAD_TESTS_INTEGRATION_HARNESS_H

#include "emaclient.h"
#include "msg.h"
#include "wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* How long any wait of the harness lasts before it gives up, in ms:
 * generous, since sanitizer builds on a loaded machine are slow. */
#define WAIT_MS 10000

/* ---- paths ---- */

/* The emad under test: $EMAD_BIN, or build/emad. */
const char *emad_bin(void);

/* The emactl under test: $EMACTL_BIN, or build/emactl. */
const char *emactl_bin(void);

/* Copy emactl_bin() to path, mode 0755: a copy that other uids can run,
 * wherever the build tree lives. */
void copy_emactl(const char *path);

/* ---- time ---- */

/* Sleep ms milliseconds. */
void sleep_ms(int ms);

/* ---- the daemon ---- */

/* One emad started by a test, and the private directory it lives in. */
struct daemon {
    pid_t pid;       /* the emad process (0 until started) */
    char dir[64];    /* private temporary directory of the test */
    char sock[128];  /* dir/emad.sock: the socket emad listens on */
    char log[128];   /* dir/emad.log: its --log-file */
    char state[128]; /* dir/state: its --state-dir */
};

/* ---- files ---- */

/* Create a new private directory /tmp/emad-test-XXXXXX as d->dir and set
 * d->sock, d->log and d->state to their paths inside it (nothing more is
 * created; a test may change d->sock before starting emad). */
void make_dir(struct daemon *d);

/* rm -rf dir; asserts that it succeeds. */
void remove_tree(const char *dir);

/* Whether the first 64 KiB of the file at path contain needle (false if the
 * file cannot be opened). */
bool file_contains(const char *path, const char *needle);

/* The whole file at path, malloc'ed (one byte more, 0), its size in *len; fails the test if it
 * cannot be read. */
void *slurp(const char *path, size_t *len);

/* Fails the test unless the files at a and b hold the same bytes. */
void expect_same_files(const char *a, const char *b);

/* Call fn(line, arg) for every line of the file at path (a line longer than
 * 1023 bytes comes in pieces); false if the file cannot be opened. */
bool for_each_line(const char *path, void (*fn)(const char *line, void *arg), void *arg);

/* How many lines of the file at path contain needle (0 if it cannot be
 * opened): how often emad logged something. */
int count_lines(const char *path, const char *needle);

/* The number that fmt (a sscanf format with one %ld, e.g. "VmRSS: %ld kB")
 * reads from the first line of /proc/PID/file it matches; -1 if none does.
 * Asserts that the file can be opened. */
long proc_value(pid_t pid, const char *file, const char *fmt);

/* ---- processes ---- */

/* Fork and exec argv (NULL-terminated; argv[0] looked up in $PATH) with
 * extra environment "K=V" entries (NULL-terminated, may be NULL), stdout
 * on out_fd and stderr on err_fd (-1: /dev/null; never the test's own).
 * The pid is remembered for kill_leftovers(). Returns the pid. */
pid_t spawn(char *const argv[], char *const envs[], int out_fd, int err_fd);

/* cmocka teardown: SIGKILL and reap every process spawn() made that is
 * still there, so that a failed test leaves nothing running behind; then
 * forget them all. Returns 0. A test file with more to clean up calls it
 * from its own teardown. */
int kill_leftovers(void **state);

/* Wait up to WAIT_MS for pid to exit; returns its exit status, or 128 plus
 * the signal that killed it. Past WAIT_MS: SIGKILL it and fail the test. */
int wait_exit(pid_t pid);

/* Run argv (as spawn(), with envs) to its end, with stdout and stderr both
 * captured into out (at most outlen - 1 bytes, NUL-terminated); fails the
 * test if the output holds a sanitizer report. Returns the exit status as
 * wait_exit() does. */
int run_capture(char *const argv[], char *const envs[], char *out, size_t outlen);

/* Fail the test unless out (a command's captured output) contains the text
 * built from fmt; the failure shows out. */
void expect_in(const char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Fail the test, naming who and showing text, if text holds a sanitizer
 * report ("Sanitizer" or "runtime error"). */
void expect_no_sanitizer_report(const char *text, const char *who);

/* ---- another uid ---- */

/* What a child run by run_as_uid() tells the test: line 0, or the line of
 * the first check that failed and why. */
struct verdict {
    int line;
    char why[16384];
};

/* In such a child, where cmocka cannot run: a failed check records itself
 * in the verdict v and goes to the function's `out`, which frees what the
 * child made (its segment above all: nothing of another uid's may be left
 * in /dev/shm). */
#define CHILD_CHECK(v, cond, ...)                                                            \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            (v)->line = __LINE__;                                                            \
            snprintf((v)->why, sizeof((v)->why), __VA_ARGS__);                               \
            goto out;                                                                        \
        }                                                                                    \
    } while (0)

/* Run fn(arg, &verdict) in a child that is uid and gid (no supplementary
 * groups); fail the test with the child's verdict unless every check of fn
 * held. Needs root. */
void run_as_uid(uid_t uid, gid_t gid, void (*fn)(const void *arg, struct verdict *v),
                const void *arg);

/* ---- starting and stopping emad ---- */

/* Wait up to WAIT_MS until the socket at sock accepts a connection or the
 * child pid exits; returns true if it is up. */
bool wait_listening(pid_t pid, const char *sock);

/* Start emad in the directory make_dir() made (d->dir, which may be reused
 * once an earlier emad there has exited): --socket d->sock, --state-dir
 * d->state, --log-file d->log, --log-level debug, then the extra arguments
 * (NULL-terminated, may be NULL), with extra environment entries envs (as
 * spawn()). emad's stderr goes to d->dir/emad.stderr. Sets d->pid; asserts
 * that emad comes to listen on d->sock. */
void daemon_start_env(struct daemon *d, const char *const extra[], char *const envs[]);

/* daemon_start_env() with emad run through prefix (a NULL-terminated argv
 * that ends by exec'ing what follows it, e.g. bash -c '... && exec "$@"' bash;
 * NULL: none). */
void daemon_start_argv(struct daemon *d, const char *const prefix[], const char *const extra[],
                       char *const envs[]);

/* The test shim (eio_shim.c) preloaded into emad: LD_PRELOAD=<its absolute
 * path> into preload and, for an ASan emad, ASAN_OPTIONS that accept it,
 * into asan ($EMAD_TEST_EIO_SHIM overrides build/tests/integration/eio_shim.so). */
#define SHIM_PRELOAD_MAX 4200
#define SHIM_ASAN_MAX 1024
void shim_preload(char preload[SHIM_PRELOAD_MAX], char asan[SHIM_ASAN_MAX]);

/* make_dir(d), then daemon_start_env(d, extra, NULL). */
void daemon_start(struct daemon *d, const char *const extra[]);

/* An emad that peers of other uids can reach, in the directory make_dir()
 * made (may be reused): d->dir mode 0755, --socket-mode 0666, and with
 * group (not NULL) --allow-group group. */
void daemon_restart_open(struct daemon *d, const char *group);

/* make_dir(d), then daemon_restart_open(d, group). */
void daemon_start_open(struct daemon *d, const char *group);

/* emad logs to its file, so its stderr (d->dir/emad.stderr) can only carry
 * sanitizer reports: fail the test if it does, or if status (an exit status
 * from wait_exit(); negative: not checked) is not 0, showing that stderr. */
void check_daemon_stderr(const struct daemon *d, int status);

/* SIGTERM emad; expect it to exit 0 with a clean stderr
 * (check_daemon_stderr()); remove d->dir. */
void daemon_stop(struct daemon *d);

/* daemon_stop(), also expecting d->sock to be gone (emad unlinks the socket
 * it bound) before d->dir is removed. */
void daemon_stop_unlinked(struct daemon *d);

/* ---- raw protocol ---- */

/* Connect a stream socket to the Unix socket at path; returns the fd (close-
 * on-exec), or -1 if connect() fails. */
int try_connect(const char *path);

/* Send all n bytes at p on fd (MSG_NOSIGNAL); asserts that each send()
 * makes progress. */
void send_bytes(int fd, const void *p, size_t n);

/* Initialise sb to hold one request: hello {proto, client} with msgid.
 * The caller destroys sb. */
void pack_hello(msgpack_sbuffer *sb, uint32_t msgid, uint64_t proto, const char *client);

/* Send that hello on fd (send_bytes()). */
void send_hello(int fd, uint32_t msgid, uint64_t proto, const char *client);

/* One message read back from emad. */
struct reply {
    bool eof;            /* the connection closed instead */
    enum wire_kind kind;
    uint32_t msgid;
    char code[32];       /* error code, "" on success; notifications: their code */
    char message[512];
};

/* Read the next message from fd into r, decoding with dec (which keeps
 * what was received beyond that message for the next call); waits up to
 * WAIT_MS for each piece of data. Asserts that what arrives is well formed. */
void read_reply_dec(int fd, struct wire_decoder *dec, struct reply *r);

/* read_reply_dec() with a decoder of its own, for a connection on which
 * nothing more than this message is in flight. */
void read_reply(int fd, struct reply *r);

/* Connect to the socket at sock and say hello (msgid 1, protocol 1) as
 * client; assert that it is accepted (a reply to msgid 1 without an error).
 * The reply is read with dec (initialised by the caller, kept for what
 * follows), or with a decoder of its own if dec is NULL. Returns the fd. */
int hello_connect(const char *sock, const char *client, struct wire_decoder *dec);

/* Fill reg with the register request for session of seg's first n tensors,
 * as libemaclient describes them, into t (room for n); nothing optional set. */
void register_msg(struct msg_register *reg, struct msg_tensor *t, size_t n, const char *session,
                  emac_segment *seg);

/* A raw protocol connection that says hello as client, then calls one method at a time. */
struct rpc {
    int fd;
    struct wire_decoder dec;
    uint32_t next;
    char code[32];
    char message[1024];
};
void rpc_open(struct rpc *c, const struct daemon *d, const char *client);
void rpc_close(struct rpc *c);
/* Send method with req (described by d); wait for its response. Returns the result object (valid
 * until the next call), or NULL with c->code and c->message set. */
const msgpack_object *rpc_call(struct rpc *c, const char *method, const struct msg_desc *d,
                               const void *req);
/* Send method with req and return at once: its response is not read (a test that kills emad
 * while the request is in flight, then closes c); returns its msgid. */
uint32_t rpc_send(struct rpc *c, const char *method, const struct msg_desc *d, const void *req);

/* ---- libemaclient ---- */

/* A segment a test made: teardown_seg_left() destroys it, even after a
 * failure left it behind. */
extern emac_segment *seg_left;

/* cmocka teardown: kill_leftovers(), then destroy seg_left. Returns 0. */
int teardown_seg_left(void **state);

/* Connect to d's emad as name; fails the test, with the library's words,
 * if it cannot. */
emac_client *client_connect(const struct daemon *d, const char *name);

/* Send event at the given batch (epoch 0) and wait for it; fails the test
 * if the library or emad says no. */
struct emac_result event_at(emac_session *s, const char *event, uint64_t batch);

/* Wait (up to WAIT_MS) until session's snapshot list holds `want` files of batch b (snapshots
 * are written after the event's reply); fails the test otherwise. */
void wait_snapshot_files(emac_client *c, const char *session, uint64_t b, size_t want);

/* SIGKILL d's emad and reap it (a crash, not a stop). */
void daemon_kill(struct daemon *d);

#endif
