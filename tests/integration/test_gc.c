/*
 * test_gc.c - emactl gc: stale shared-memory objects in /dev/shm are found
 * and removed; live ones, other users' (for a normal user), objects that
 * are not emad's, and segments whose stash holds the training weights are
 * kept; --dry-run removes nothing.
 *
 * Other tests and daemons may run on the machine at the same time, with
 * objects of their own in /dev/shm: every gc run here passes --prefix, and
 * every object a test makes is named /emad-gctest-<pid>-<n>-... (or, for
 * shadows, /emad-shadow-<pid>-<hex unique to this run>), so gc only ever
 * looks at this test's objects, and the assertions only at those. The
 * teardown removes every object a test made, even when it fails.
 *
 * emad and emactl run under the shared harness (harness.h). Binaries come
 * from $EMAD_BIN and $EMACTL_BIN (default build/emad and build/emactl).
 */
#include "harness.h"

#include "emaclient.h"
#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

/* ---- what a test made, for the teardown ---- */

static char made[64][NAME_MAX + 2]; /* objects ("/emad-...") */
static size_t nmade;
static struct {
    void *base;
    size_t len;
} mapped[16];
static size_t nmapped;
static char tmpdir[64];             /* a directory for a copy of emactl, or "" */
static emac_segment *segment;       /* a segment made through libemaclient */
static emac_client *client;

static int teardown(void **state)
{
    kill_leftovers(state);
    for (size_t i = 0; i < nmapped; i++)
        munmap(mapped[i].base, mapped[i].len);
    nmapped = 0;
    if (client != NULL)
        emac_disconnect(client);
    client = NULL;
    if (segment != NULL)
        emac_segment_destroy(segment);
    segment = NULL;
    for (size_t i = 0; i < nmade; i++)
        shm_unlink(made[i]);
    nmade = 0;
    if (tmpdir[0] != '\0') {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "test_gc: cannot remove %s\n", tmpdir);
        tmpdir[0] = '\0';
    }
    return 0;
}

/* ---- objects ---- */

/* This test's prefix, "gctest-<pid>-<n>-": a new one for every test. */
static char prefix[64];

static void new_prefix(void)
{
    static unsigned serial;
    snprintf(prefix, sizeof(prefix), "gctest-%ld-%u-", (long)getpid(), ++serial);
}

/* "/emad-<prefix><suffix>" into name. */
static void obj_name(char *name, size_t len, const char *suffix)
{
    snprintf(name, len, "/emad-%s%s", prefix, suffix);
}

static void remember(const char *name)
{
    assert_true(nmade < sizeof(made) / sizeof(made[0]));
    snprintf(made[nmade++], sizeof(made[0]), "%s", name);
}

/* Create the object name (remembered for the teardown) holding the bytes
 * data[0..len) and zeros up to size; give it to uid unless that is ours. */
static void obj_create_raw(const char *name, const void *data, size_t len, size_t size, uid_t uid)
{
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        fail_msg("shm_open %s: %s", name, strerror(errno));
    remember(name);
    assert_int_equal(ftruncate(fd, (off_t)size), 0);
    if (len > 0)
        assert_int_equal(pwrite(fd, data, len, 0), (ssize_t)len);
    if (uid != geteuid())
        assert_int_equal(fchown(fd, uid, (gid_t)-1), 0);
    close(fd);
}

/* A segment with a valid header (segment.h): params_bytes of params,
 * a stash as large, swap_state as given. Its size is 4096 + 2 * params. */
static size_t segment_create(const char *name, uint64_t params_bytes, uint32_t swap_state,
                             uid_t uid)
{
    struct seg_geometry g = {SEG_HEADER_BYTES, params_bytes, SEG_HEADER_BYTES + params_bytes,
                             SEG_HEADER_BYTES + 2 * params_bytes};
    struct seg_header h;

    seg_header_init(&h, &g);
    h.swap_state = swap_state;
    obj_create_raw(name, &h, sizeof(h), (size_t)g.segment_bytes, uid);
    return (size_t)g.segment_bytes;
}

/* Map the object name into this process and close the descriptor: only
 * /proc/self/maps shows that it is in use. */
static void map_here(const char *name)
{
    struct stat st;
    int fd = shm_open(name, O_RDWR, 0);

    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    close(fd);
    assert_true(nmapped < sizeof(mapped) / sizeof(mapped[0]));
    mapped[nmapped].base = p;
    mapped[nmapped++].len = (size_t)st.st_size;
}

static void unmap_all(void)
{
    for (size_t i = 0; i < nmapped; i++)
        munmap(mapped[i].base, mapped[i].len);
    nmapped = 0;
}

static bool obj_exists(const char *name)
{
    char path[NAME_MAX + 16];
    struct stat st;
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    return lstat(path, &st) == 0;
}

/* Start `sleep` holding the object open on its descriptor 3 (not mapped);
 * returns once it does. */
static pid_t hold_open(const char *name)
{
    char script[NAME_MAX + 64], path[64], comm[32] = "", link[NAME_MAX + 16];
    snprintf(script, sizeof(script), "exec 3</dev/shm%s && exec sleep 60", name);
    char *argv[] = {"sh", "-c", script, NULL};
    pid_t pid = spawn(argv, NULL, -1, -1);

    for (int waited = 0; waited < WAIT_MS; waited += 5) {
        FILE *fp;
        snprintf(path, sizeof(path), "/proc/%ld/comm", (long)pid);
        if ((fp = fopen(path, "r")) != NULL) {
            if (fgets(comm, sizeof(comm), fp) == NULL)
                comm[0] = '\0';
            fclose(fp);
        }
        snprintf(path, sizeof(path), "/proc/%ld/fd/3", (long)pid);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (strcmp(comm, "sleep\n") == 0 && n > 0)
            return pid;
        sleep_ms(5);
    }
    fail_msg("sleep holding %s did not start", name);
    return -1;
}

/* A pid that no process has (one of ours, exited and reaped). */
static pid_t dead_pid(void)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_int_equal(kill(pid, 0), -1);
    assert_int_equal(errno, ESRCH);
    return pid;
}

/* ---- running gc ---- */

/* Run emactl (bin, or the one under test when NULL) with "gc --prefix
 * <prefix>" and the extra arguments (NULL-terminated); returns its exit
 * status, the output in out. */
static int gc_run(const char *bin, const char *pfx, char *out, size_t outlen, ...)
{
    char *argv[16];
    size_t n = 0;
    va_list ap;
    const char *a;

    argv[n++] = (char *)(bin ? bin : emactl_bin());
    argv[n++] = "gc";
    argv[n++] = "--prefix";
    argv[n++] = (char *)pfx;
    va_start(ap, outlen);
    while ((a = va_arg(ap, const char *)) != NULL && n < 15)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    return run_capture(argv, NULL, out, outlen);
}

/* out must not contain s. */
static void expect_not_in(const char *out, const char *s)
{
    if (strstr(out, s) != NULL)
        fail_msg("emactl gc output mentions \"%s\":\n%s", s, out);
}

/* ---- tests ---- */

static void test_gc_removes_stale_objects_and_keeps_the_others(void **state)
{
    char out[16384];
    char stale[NAME_MAX + 2], big[NAME_MAX + 2], mine[NAME_MAX + 2], held[NAME_MAX + 2],
        garbage[NAME_MAX + 2], empty[NAME_MAX + 2], swapped[NAME_MAX + 2], link[NAME_MAX + 2];
    uid_t me = geteuid();
    (void)state;

    new_prefix();
    obj_name(stale, sizeof(stale), "stale");
    obj_name(big, sizeof(big), "big");
    obj_name(mine, sizeof(mine), "mapped-here");
    obj_name(held, sizeof(held), "held-open");
    obj_name(garbage, sizeof(garbage), "garbage");
    obj_name(empty, sizeof(empty), "empty");
    obj_name(swapped, sizeof(swapped), "swapped-in");
    obj_name(link, sizeof(link), "link");

    /* Stale: segments nobody maps (a crashed trainer's). */
    assert_int_equal(segment_create(stale, 4096, SEG_TRAIN, me), 12288);
    assert_int_equal(segment_create(big, 20 << 20, SEG_TRAIN, me), 4096 + (40 << 20));
    /* Live: mapped by this process (descriptor closed), held open by another. */
    segment_create(mine, 4096, SEG_TRAIN, me);
    map_here(mine);
    segment_create(held, 4096, SEG_TRAIN, me);
    pid_t holder = hold_open(held);
    /* Not emad's: other content, no content, not a regular file. */
    static const char text[] = "this is not a segment header";
    obj_create_raw(garbage, text, sizeof(text) - 1, sizeof(text) - 1, me);
    obj_create_raw(empty, NULL, 0, 0, me);
    char target[NAME_MAX + 16], path[NAME_MAX + 16];
    snprintf(target, sizeof(target), "/dev/shm%s", stale);
    snprintf(path, sizeof(path), "/dev/shm%s", link);
    assert_int_equal(symlink(target, path), 0);
    remember(link);
    /* A crashed trainer's segment with the EMA weights swapped in: the stash
     * holds the only copy of its training weights. */
    segment_create(swapped, 4096, SEG_EMA, me);

    /* --dry-run: says what it would do, removes nothing. */
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), "--dry-run", NULL), 0);
    expect_in(out, "would remove %s (owner uid %ld, 12.0 KiB, trainer segment, not mapped or "
                   "open by any process)\n", stale, (long)me);
    expect_in(out, "would remove %s (owner uid %ld, 40.0 MiB, trainer segment, not mapped or "
                   "open by any process)\n", big, (long)me);
    expect_in(out, "kept %s: mapped by pid %ld (", mine, (long)getpid());
    expect_in(out, "kept %s: open by pid %ld (sleep)\n", held, (long)holder);
    expect_in(out, "kept %s: not an emad segment (no EMASEG01 header)", garbage);
    expect_in(out, "kept %s: not an emad segment (no EMASEG01 header)", empty);
    expect_in(out, "kept %s: not a regular file", link);
    expect_in(out, "kept %s: its stash holds the training weights (swap_state EMA)", swapped);
    expect_in(out, "gc (dry run): 2 would be removed (40.0 MiB), 6 kept; nothing was removed\n");
    expect_not_in(out, "removed /");
    const char *all[] = {stale, big, mine, held, garbage, empty, swapped, link};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        assert_true(obj_exists(all[i]));

    /* The same as JSON, one object per entry. */
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), "--dry-run", "--json", NULL), 0);
    assert_true(out[0] == '[');
    expect_in(out, "{\n    \"name\": \"%s\",\n    \"uid\": %ld,\n    \"bytes\": 12288,\n"
                   "    \"kind\": \"segment\",\n    \"action\": \"would remove\",\n"
                   "    \"reason\": \"not mapped or open by any process\"\n  }", stale, (long)me);
    expect_in(out, "\"name\": \"%s\",\n    \"uid\": %ld,\n    \"bytes\": 28,\n"
                   "    \"kind\": \"unknown\",\n    \"action\": \"kept\",\n"
                   "    \"reason\": \"not an emad segment", garbage, (long)me);
    expect_in(out, "\"name\": \"%s\",\n    \"uid\": %ld,\n    \"bytes\": 12288,\n"
                   "    \"kind\": \"segment\",\n    \"action\": \"kept\",\n"
                   "    \"reason\": \"open by pid %ld (sleep)\"", held, (long)me, (long)holder);
    expect_not_in(out, "gc (dry run)");
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        assert_true(obj_exists(all[i]));

    /* For real (the prefix also in its /emad-NAME form): exactly the stale
     * ones go. */
    char full[NAME_MAX + 2];
    snprintf(full, sizeof(full), "/emad-%s", prefix);
    assert_int_equal(gc_run(NULL, full, out, sizeof(out), NULL), 0);
    expect_in(out, "removed %s (owner uid %ld, 12.0 KiB, trainer segment, not mapped or open "
                   "by any process)\n", stale, (long)me);
    expect_in(out, "removed %s (owner uid %ld, 40.0 MiB, trainer segment, ", big, (long)me);
    expect_in(out, "kept %s: mapped by pid %ld (", mine, (long)getpid());
    expect_in(out, "kept %s: open by pid %ld (sleep)\n", held, (long)holder);
    expect_in(out, "gc: 2 removed (40.0 MiB freed), 6 kept\n");
    assert_false(obj_exists(stale));
    assert_false(obj_exists(big));
    const char *kept[] = {mine, held, garbage, empty, swapped, link};
    for (size_t i = 0; i < sizeof(kept) / sizeof(kept[0]); i++)
        assert_true(obj_exists(kept[i]));

    /* Again: nothing left to do. */
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), NULL), 0);
    expect_in(out, "gc: 0 removed (0 bytes freed), 6 kept\n");

    /* Once their users let go, the live ones are stale too. */
    unmap_all();
    kill_leftovers(NULL);
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), "--json", NULL), 0);
    expect_in(out, "\"name\": \"%s\",\n    \"uid\": %ld,\n    \"bytes\": 12288,\n"
                   "    \"kind\": \"segment\",\n    \"action\": \"removed\"", mine, (long)me);
    expect_in(out, "\"name\": \"%s\",\n    \"uid\": %ld,\n    \"bytes\": 12288,\n"
                   "    \"kind\": \"segment\",\n    \"action\": \"removed\"", held, (long)me);
    assert_false(obj_exists(mine));
    assert_false(obj_exists(held));
    const char *left[] = {garbage, empty, swapped, link};
    for (size_t i = 0; i < sizeof(left) / sizeof(left[0]); i++)
        assert_true(obj_exists(left[i]));
}

static void test_gc_shadows_of_a_running_emad_stay_those_of_a_dead_one_go(void **state)
{
    struct daemon d;
    struct emac_error err;
    char out[16384], fake_dead[NAME_MAX + 2], fake_live[NAME_MAX + 2], pfx_dead[64],
        shadow[NAME_MAX + 2], seg[NAME_MAX + 2];
    (void)state;

    /* A shadow named after an emad that is gone, and one named after a
     * running emad but mapped by nobody: the hex part is unique to this run
     * so that --prefix selects these and nothing else. */
    pid_t gone = dead_pid();
    snprintf(pfx_dead, sizeof(pfx_dead), "shadow-%ld-%08lx", (long)gone, (long)getpid());
    snprintf(fake_dead, sizeof(fake_dead), "/emad-%sabc", pfx_dead);

    daemon_start(&d, NULL);
    snprintf(fake_live, sizeof(fake_live), "/emad-shadow-%ld-%08lxabc", (long)d.pid,
             (long)getpid());
    obj_create_raw(fake_live, NULL, 0, 8192, geteuid());

    /* A real session: emad maps its shadow and the trainer's segment. */
    struct emac_tensor_spec spec = {"w", "f32", 1024, NULL, 0};
    emac_session *s = NULL;
    if (emac_connect(d.sock, "gc test", &client, &err) < 0 ||
        emac_segment_create(&spec, 1, &segment, &err) < 0 ||
        emac_register(client, "gc-session", segment, NULL, false, &s, &err) < 0)
        fail_msg("%s: %s", err.code, err.message);
    snprintf(shadow, sizeof(shadow), "%s", emac_session_state(s)->shadow_shm);
    snprintf(seg, sizeof(seg), "%s", emac_segment_name(segment));
    remember(shadow);
    emac_session_free(s); /* this process no longer maps the shadow; emad does */
    /* Only now: emad removes dead emads' shadows itself while it starts, and
     * it has answered, so its start-up is over. */
    obj_create_raw(fake_dead, NULL, 0, 8192, geteuid());

    /* Each run names one object: an older emad with the same pid may have
     * left shadows of its own, which are not this test's business. */
    assert_int_equal(gc_run(NULL, pfx_dead, out, sizeof(out), "--dry-run", NULL), 0);
    expect_in(out, "would remove %s (owner uid %ld, 8.0 KiB, shadow, its emad (pid %ld) is gone; "
                   "not mapped or open by any process)\n", fake_dead, (long)geteuid(), (long)gone);
    expect_in(out, "gc (dry run): 1 would be removed (8.0 KiB), 0 kept; nothing was removed\n");
    assert_int_equal(gc_run(NULL, fake_live + 6, out, sizeof(out), NULL), 0);
    expect_in(out, "kept %s: its emad (pid %ld) is running\n", fake_live, (long)d.pid);
    expect_in(out, "gc: 0 removed (0 bytes freed), 1 kept\n");
    assert_int_equal(gc_run(NULL, shadow + 6, out, sizeof(out), NULL), 0);
    expect_in(out, "kept %s: mapped by pid %ld (emad)\n", shadow, (long)d.pid);
    expect_in(out, "gc: 0 removed (0 bytes freed), 1 kept\n");
    assert_int_equal(gc_run(NULL, seg + 6, out, sizeof(out), "--json", NULL), 0);
    expect_in(out, "\"name\": \"%s\",\n    \"uid\": %ld,\n    \"bytes\": %lu,\n"
                   "    \"kind\": \"segment\",\n    \"action\": \"kept\",\n    \"reason\": "
                   "\"mapped by pid ", seg, (long)geteuid(), (unsigned long)emac_segment_bytes(segment));
    assert_true(obj_exists(fake_dead) && obj_exists(fake_live) && obj_exists(shadow) &&
                obj_exists(seg));

    /* emad dies (SIGKILL, not yet reaped: a zombie named emad holds
     * nothing): its shadows are stale; the segment, still mapped here, is not. */
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    char stat_path[64], buf[512] = "";
    snprintf(stat_path, sizeof(stat_path), "/proc/%ld/stat", (long)d.pid);
    for (int waited = 0; waited < WAIT_MS; waited += 5) {
        FILE *fp = fopen(stat_path, "r");
        assert_non_null(fp);
        if (fgets(buf, sizeof(buf), fp) == NULL)
            buf[0] = '\0';
        fclose(fp);
        if (strstr(buf, ") Z ") != NULL)
            break;
        sleep_ms(5);
    }
    assert_non_null(strstr(buf, ") Z "));
    assert_int_equal(gc_run(NULL, fake_live + 6, out, sizeof(out), NULL), 0);
    expect_in(out, "removed %s (owner uid %ld, 8.0 KiB, shadow, its emad (pid %ld) is gone; "
                   "not mapped or open by any process)\n", fake_live, (long)geteuid(), (long)d.pid);
    assert_int_equal(gc_run(NULL, shadow + 6, out, sizeof(out), NULL), 0);
    /* emad's header page, the tensor's shadow (8 KiB) and one chunk's redo record. */
    expect_in(out, "removed %s (owner uid %ld, 24.1 KiB, shadow, its emad (pid %ld) is gone; ",
              shadow, (long)geteuid(), (long)d.pid);
    expect_in(out, "gc: 1 removed (24.1 KiB freed), 0 kept\n");
    assert_false(obj_exists(fake_live));
    assert_false(obj_exists(shadow));
    assert_int_equal(wait_exit(d.pid), 128 + SIGKILL);
    check_daemon_stderr(&d, -1);
    remove_tree(d.dir);

    assert_int_equal(gc_run(NULL, pfx_dead, out, sizeof(out), NULL), 0);
    expect_in(out, "removed %s (", fake_dead);
    assert_false(obj_exists(fake_dead));

    assert_int_equal(gc_run(NULL, seg + 6, out, sizeof(out), NULL), 0);
    expect_in(out, "kept %s: mapped by pid %ld (", seg, (long)getpid());
    assert_true(obj_exists(seg));
    /* The trainer goes (unmaps its segment, leaving the object): stale. */
    emac_disconnect(client);
    client = NULL;
    emac_segment_close(segment);
    segment = NULL;
    remember(seg);
    assert_int_equal(gc_run(NULL, seg + 6, out, sizeof(out), NULL), 0);
    expect_in(out, "removed %s (owner uid %ld, ", seg, (long)geteuid());
    assert_false(obj_exists(seg));
}

/* Copy emactl where nobody (65534) may run it and run "gc --prefix pfx"
 * as nobody, as test_daemon.c's run_as_nobody does for status. */
static int gc_as_nobody(const char *pfx, char *out, size_t outlen)
{
    char bin[128], cmd[512];

    if (tmpdir[0] == '\0') {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/emad-test-XXXXXX");
        assert_non_null(mkdtemp(tmpdir));
        assert_int_equal(chmod(tmpdir, 0755), 0);
    }
    snprintf(bin, sizeof(bin), "%s/emactl", tmpdir);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && chmod 0755 '%s'", emactl_bin(), bin, bin);
    assert_int_equal(system(cmd), 0);
    char *argv[] = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    bin, "gc", "--prefix", (char *)pfx, NULL};
    return run_capture(argv, NULL, out, outlen);
}

static void test_gc_of_a_user_leaves_other_users_alone_root_collects_all(void **state)
{
    char out[16384], rootobj[NAME_MAX + 2], theirs[NAME_MAX + 2], theirs_live[NAME_MAX + 2],
        theirs_later[NAME_MAX + 2];
    (void)state;

    if (geteuid() != 0)
        skip();
    new_prefix();
    obj_name(rootobj, sizeof(rootobj), "root-stale");
    obj_name(theirs, sizeof(theirs), "nobody-stale");
    obj_name(theirs_live, sizeof(theirs_live), "nobody-live");
    obj_name(theirs_later, sizeof(theirs_later), "nobody-stale-2");
    segment_create(rootobj, 4096, SEG_TRAIN, 0);
    segment_create(theirs, 4096, SEG_TRAIN, 65534);
    /* nobody's, mapped by this (root) process: nobody may not read our
     * /proc/PID/maps, so only the kernel's lease can tell it is in use. */
    segment_create(theirs_live, 4096, SEG_TRAIN, 65534);
    map_here(theirs_live);

    assert_int_equal(gc_as_nobody(prefix, out, sizeof(out)), 0);
    expect_not_in(out, rootobj);
    expect_in(out, "removed %s (owner uid 65534, 12.0 KiB, trainer segment, not mapped or open "
                   "by any process)\n", theirs);
    expect_in(out, "kept %s: in use: open or mapped by a process that emactl may not inspect "
                   "(emactl may not read the mappings of ", theirs_live);
    expect_in(out, "gc: 1 removed (12.0 KiB freed), 1 kept; 1 object of other users not "
                   "examined (only root collects them)\n");
    assert_true(obj_exists(rootobj));
    assert_false(obj_exists(theirs));
    assert_true(obj_exists(theirs_live));

    /* root's gc: every user's stale objects, never a live one. */
    segment_create(theirs_later, 4096, SEG_TRAIN, 65534);
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), NULL), 0);
    expect_in(out, "removed %s (owner uid 0, 12.0 KiB, trainer segment, ", rootobj);
    expect_in(out, "removed %s (owner uid 65534, 12.0 KiB, trainer segment, ", theirs_later);
    expect_in(out, "kept %s: mapped by pid %ld (", theirs_live, (long)getpid());
    expect_in(out, "gc: 2 removed (24.0 KiB freed), 1 kept\n");
    expect_not_in(out, "other users");
    assert_false(obj_exists(rootobj));
    assert_false(obj_exists(theirs_later));
    assert_true(obj_exists(theirs_live));
}

static void test_gc_failed_removal_exits_1(void **state)
{
    char out[16384], name[NAME_MAX + 2], script[1024];
    (void)state;

    /* A private mount namespace whose /dev/shm is read-only: unlinking
     * fails there, and nowhere else. */
    if (geteuid() != 0 || system("unshare -m true 2>/dev/null") != 0)
        skip();
    new_prefix();
    obj_name(name, sizeof(name), "stale");
    segment_create(name, 4096, SEG_TRAIN, 0);
    snprintf(script, sizeof(script),
             "mount --bind /dev/shm /dev/shm && mount -o remount,bind,ro /dev/shm || exit 77; "
             "exec '%s' gc --prefix '%s'", emactl_bin(), prefix);
    char *argv[] = {"unshare", "-m", "sh", "-c", script, NULL};
    int rc = run_capture(argv, NULL, out, sizeof(out));
    if (rc == 77)
        skip();
    if (rc != 1)
        fail_msg("gc exited %d, expected 1:\n%s", rc, out);
    expect_in(out, "emactl: SYSTEM: gc: cannot remove %s: Read-only file system\n", name);
    expect_in(out, "kept %s: cannot remove it: Read-only file system\n", name);
    expect_in(out, "gc: 0 removed (0 bytes freed), 1 kept\n");
    assert_true(obj_exists(name));
}

static void test_gc_usage_and_nothing_to_do(void **state)
{
    char out[16384];
    char *ctl = (char *)emactl_bin();
    (void)state;

    new_prefix();
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), NULL), 0);
    expect_in(out, "gc: 0 removed (0 bytes freed), 0 kept\n");
    assert_int_equal(gc_run(NULL, prefix, out, sizeof(out), "--json", NULL), 0);
    assert_string_equal(out, "[]\n");

    char *extra[] = {ctl, "gc", "now", NULL};
    assert_int_equal(run_capture(extra, NULL, out, sizeof(out)), 2);
    expect_in(out, "emactl: USAGE: gc: unexpected argument \"now\"\n");
    expect_in(out, "usage: emactl gc [--dry-run] [--prefix NAME]");
    char *slash[] = {ctl, "gc", "--prefix", "a/b", NULL};
    assert_int_equal(run_capture(slash, NULL, out, sizeof(out)), 2);
    expect_in(out, "emactl: USAGE: gc: --prefix a/b: a name after /emad-, without '/'\n");
    char *noarg[] = {ctl, "gc", "--prefix", NULL};
    assert_int_equal(run_capture(noarg, NULL, out, sizeof(out)), 2);
    expect_in(out, "emactl: USAGE: gc: option --prefix needs an argument\n");
    char *other[] = {ctl, "--socket", "/tmp/emad-test-nonexistent.sock", "status", "--dry-run",
                     NULL};
    assert_int_equal(run_capture(other, NULL, out, sizeof(out)), 2);
    expect_in(out, "emactl: USAGE: status: --dry-run applies to gc only\n");
    char *prefix_elsewhere[] = {ctl, "list", "--prefix", "x", NULL};
    assert_int_equal(run_capture(prefix_elsewhere, NULL, out, sizeof(out)), 2);
    expect_in(out, "emactl: USAGE: list: --prefix applies to gc only\n");
    /* The overview names gc; its manual says what it removes and why. */
    char *help[] = {ctl, "--help", NULL};
    assert_int_equal(run_capture(help, NULL, out, sizeof(out)), 0);
    expect_in(out, "gc [--dry-run] [--prefix NAME]");
    expect_in(out, "emad need not run");
    char *gc_help[] = {ctl, "gc", "--help", NULL};
    assert_int_equal(run_capture(gc_help, NULL, out, sizeof(out)), 0);
    expect_in(out, "Usage: emactl gc [--dry-run] [--prefix NAME]\n");
    expect_in(out, "--prefix NAME");
    expect_in(out, "--dry-run");
    expect_in(out, "/emad-shadow-PID-HEX");
    expect_in(out, "emad need not run");
    expect_in(out, "JSON output: an array of {name, uid, bytes, kind, action, reason}");
    expect_in(out, "Exit status: 0 once gc is done");
}

int main(void)
{
#define TEST(f) cmocka_unit_test_teardown(f, teardown)
    const struct CMUnitTest tests[] = {
        TEST(test_gc_removes_stale_objects_and_keeps_the_others),
        TEST(test_gc_shadows_of_a_running_emad_stay_those_of_a_dead_one_go),
        TEST(test_gc_of_a_user_leaves_other_users_alone_root_collects_all),
        TEST(test_gc_failed_removal_exits_1),
        TEST(test_gc_usage_and_nothing_to_do),
    };
#undef TEST
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests_name("gc", tests, NULL, NULL);
}
