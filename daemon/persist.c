/*
 * persist.c - sessions outside emad's memory: the metadata of state files
 * and journals, the sessions kept across a clean restart, the journals
 * that let a restarted emad take back the sessions of one that crashed,
 * and the start-up collection's question of whose a shadow is.
 */
#include "metrics.h"
#include "session_impl.h"

#include "errbuf.h"
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* What the session's files (journal, kept state) are called: its name as
 * a file name, and for a user other than emad's own, "%u<uid>-" before it
 * ('%' is followed by a hex pair in every name store_default_name makes,
 * so these never clash with those of emad's own uid). A name too long for
 * that gets a hash instead. */
static void kept_name(const struct session *s, char *out, size_t outlen)
{
    char base[STORE_NAME_MAX + 1];
    uint64_t h = 1469598103934665603ull;
    int fits = store_default_name(s->name, strlen(s->name), base, sizeof(base)) == 0;

    if (fits && s->uid == geteuid() && snprintf(out, outlen, "%s", base) < (int)outlen)
        return;
    if (fits && snprintf(out, outlen, "%%u%lu-%s", (unsigned long)s->uid, base) <= STORE_NAME_MAX)
        return;
    for (const char *p = s->name; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    snprintf(out, outlen, "%%u%lu-h%016" PRIx64, (unsigned long)s->uid, h);
}

/*
 * The session's metadata as a state file or journal holds it: its table in
 * columns (a million tensors encode in a third of the time a list of maps
 * takes), its config and state. 0, or -ENOMEM (sb is then empty).
 */
int session_meta_encode(struct session *s, msgpack_sbuffer *sb)
{
    struct msg_saved_state m;
    msgpack_packer pk;
    int rc;

    msgpack_sbuffer_init(sb);
    memset(&m, 0, sizeof(m));
    if ((rc = msg_table_init(&m.table, s->ntensors)) < 0)
        return rc;
    m.has_table = true;
    m.format = 1;
    m.session = msg_str_c(s->name);
    for (size_t i = 0; i < s->ntensors; i++)
        msg_table_set(&m.table, i, s->tensors[i].name, dtype_name(s->tensors[i].dtype),
                      s->tensors[i].offset, s->tensors[i].numel);
    if ((rc = session_table_dims(s, &m.table)) < 0) {
        msg_table_release(&m.table);
        return rc;
    }
    session_fill_group(s, &m.has_group, &m.group);
    struct msg_profile pc[PROFILE_MAX];
    struct msg_profile_state ps[PROFILE_MAX];
    if (s->nprof > 0) {
        /* Each profile's settings (the top-level ones are absent with profiles), and state. */
        for (unsigned i = 0; i < s->nprof; i++) {
            profile_settings(&s->prof[i], &pc[i]);
            profile_state(&s->prof[i], (uint64_t)i * s->area_bytes, &ps[i]);
        }
        m.config.has_profiles = true;
        m.config.profiles = pc;
        m.config.nprofiles = s->nprof;
        m.config.has_eval_profile = true;
        m.config.eval_profile = msg_str_c(s->prof[s->eval].name);
        m.has_profiles = true;
        m.profiles = ps;
        m.nprofiles = s->nprof;
    } else if (s->cfg.has_half_life) {
        m.config.has_half_life = true;
        m.config.half_life = msg_str_c(s->half_life);
    } else {
        m.config.has_smoothing = true;
        m.config.smoothing = s->cfg.smoothing;
    }
    if (s->nprof == 0) {
        m.config.has_update_interval = true;
        m.config.update_interval = msg_str_c(s->update_interval);
        m.config.has_ema_start = true;
        m.config.ema_start = msg_str_c(s->ema_start);
    }
    /* The health settings only when not the defaults: a file an older emad can read still. */
    if (!s->health.skip_nonfinite) {
        m.config.has_on_nonfinite = true;
        m.config.on_nonfinite = msg_str_c("apply");
    }
    if (!s->health.enabled) {
        m.config.has_health = true;
        m.config.health = false;
    }
    /* Snapshot settings likewise only when set: a restart keeps taking them. */
    char every[32];
    if (s->snap.every > 0) {
        snprintf(every, sizeof(every), "%lluba", (unsigned long long)s->snap.every);
        m.config.has_snapshot_every = true;
        m.config.snapshot_every = msg_str_c(every);
    }
    if (s->snap.dtype != DTYPE_F32) {
        m.config.has_snapshot_dtype = true;
        m.config.snapshot_dtype = msg_str_c(dtype_name(s->snap.dtype));
    }
    if (s->snap.keep > 0) {
        m.config.has_snapshot_keep = true;
        m.config.snapshot_keep = s->snap.keep;
    }
    m.started = s->st.started;
    m.active = s->st.active;
    m.updates = s->st.updates;
    m.swaps = s->st.swaps;
    m.has_last_time = s->st.has_last_time;
    m.last_time.batch = s->st.last_time.batch;
    m.last_time.epoch = s->st.last_time.epoch;
    m.last_time.has_duration = s->st.last_time.has_duration;
    m.last_time.duration = s->st.last_time.duration;
    m.shadow_bytes = s->shadow_bytes;
    m.has_uid = true;
    m.uid = s->uid;
    m.has_shadow_shm = true;
    m.shadow_shm = msg_str_c(s->shadow_name);
    m.has_seq = true;
    m.seq = s->last_seq;
    /* Room for the usual table at once: growing it by doubling copies a
     * million-tensor journal a dozen times. */
    sb->alloc = 4096 + 32 * s->ntensors;
    if ((sb->data = malloc(sb->alloc)) == NULL)
        sb->alloc = 0;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msg_encode(&pk, &msg_saved_state_desc, &m);
    if (sb->data == NULL)
        rc = -ENOMEM;
    msg_table_release(&m.table);
    return rc;
}

int registry_save_all(struct registry *r, const char *dir)
{
    char name[160], path[PATH_MAX], err[600];
    uint64_t bytes;
    int failures = 0;

    for (struct session *s = r->head; s != NULL; s = s->next) {
        msgpack_sbuffer meta;
        if (!s->ready) {
            failures++;
            continue;
        }
        kept_name(s, name, sizeof(name));
        /* The trainer (if any) restores its own weights from the stash when
         * its connection closes: the session comes back in the TRAIN state. */
        bool active = s->st.active;
        s->st.active = false;
        int rc = session_meta_encode(s, &meta);
        s->st.active = active;
        if (rc < 0) {
            log_error(reg_log(r), "session %s: cannot write its state file: out of memory",
                      s->name);
            failures++;
            continue;
        }
        /* The whole shadow object's head, header page included: its
         * request records answer a client that sends again, after the
         * restart, what it sent before (a clean stop must be as kind as a
         * crash, which keeps them in the shadow). */
        struct shm_guard g;
        shadow_enter(s, &g);
        rc = store_save(dir, name, meta.data, meta.size, s->shadow.base, s->shadow_bytes, path,
                        sizeof(path), &bytes, err, sizeof(err));
        shadow_leave(s, &g);
        if (rc == 0 && shadow_is_broken(s))
            rc = err_set(err, sizeof(err), -EFAULT, "its shadow was resized under emad");
        if (rc < 0) {
            log_error(reg_log(r), "session %s: cannot write its state file: %s", s->name, err);
            failures++;
        } else {
            s->kept = true;
            log_info(reg_log(r), "session %s: kept in %s for the next start", s->name, path);
        }
        msgpack_sbuffer_destroy(&meta);
    }
    return failures ? -EIO : 0;
}

/* A state file or journal, read and decoded: what restore and adopt share. */
struct kept {
    struct store_file f;
    msgpack_unpacked u;
    struct msg_saved_state m;
};

static void kept_free(struct kept *k)
{
    msg_free(&msg_saved_state_desc, &k->m);
    msgpack_unpacked_destroy(&k->u);
    store_file_close(&k->f);
}

static int kept_read(const char *dir, const char *file, struct kept *k, char *err, size_t errlen)
{
    char why[400];
    size_t off = 0;
    int rc;

    memset(k, 0, sizeof(*k));
    msgpack_unpacked_init(&k->u);
    if ((rc = store_load(dir, file, &k->f, err, errlen)) < 0) {
        kept_free(k);
        return rc;
    }
    if (msgpack_unpack_next(&k->u, k->f.meta, k->f.meta_len, &off) != MSGPACK_UNPACK_SUCCESS ||
        msg_decode(&msg_saved_state_desc, &k->u.data, &k->m, why, sizeof(why)) < 0 ||
        msg_saved_state_expand(&k->m, why, sizeof(why)) < 0 || !k->m.has_uid) {
        kept_free(k);
        return err_set(err, errlen, -EBADMSG, "%s: metadata is not a kept session's", file);
    }
    return 0;
}

/* The session a state file or journal describes (name, owner, config,
 * tensors, plan), as register would have built it; not in the registry yet,
 * no shadow. */
static int session_from_kept(struct registry *r, const struct msg_saved_state *m,
                             const char *file, struct session **out, char *err, size_t errlen)
{
    struct msg_register req;
    struct msg_tensor *t;
    struct session *s;
    char why[400] = "";
    int rc = 0;

    *out = NULL;
    if (!names_session_valid(m->session.ptr, m->session.len) ||
        registry_find(r, (uid_t)m->uid, m->session.ptr, m->session.len) != NULL ||
        r->count >= r->ctx->opts->max_sessions)
        return err_set(err, errlen, -EEXIST, "%s: session name invalid, taken, or over the limit",
                       file);
    t = calloc(m->ntensors ? m->ntensors : 1, sizeof(*t));
    s = calloc(1, sizeof(*s));
    if (t == NULL || s == NULL) {
        free(t);
        free(s);
        return -ENOMEM;
    }
    for (size_t i = 0; i < m->ntensors; i++)
        t[i] = (struct msg_tensor){.name = m->tensors[i].name, .dtype = m->tensors[i].dtype,
                                   .offset = m->tensors[i].offset,
                                   .numel = m->tensors[i].numel};
    memset(&req, 0, sizeof(req));
    req.session = m->session;
    req.tensors = t;
    req.ntensors = m->ntensors;
    /* The columns as register sends them: with the shapes and slices of a shard session. */
    if (m->has_table && m->table.has_ndims) {
        req.has_table = true;
        req.table = m->table;
        req.ntensors = 0;
    }
    s->reg = r;
    memcpy(s->name, m->session.ptr, m->session.len);
    s->uid = (uid_t)m->uid;
    snprintf(s->qualified, sizeof(s->qualified), "%lu:%s", (unsigned long)s->uid, s->name);
    s->last_seq = m->has_seq ? m->seq : 0;
    /* emad's own file, but checked like any: a group out of its rules is none. */
    if (m->has_group && msg_group_check(&m->group, why, sizeof(why)) == 0)
        session_group_set(s, &m->group);
    if (session_config_set(s, &m->config, why, sizeof(why)) < 0 ||
        session_build_tensors(s, &req, UINT64_MAX, why, sizeof(why)) < 0 ||
        s->shadow_bytes != m->shadow_bytes)
        rc = err_set(err, errlen, -EBADMSG, "%s: inconsistent session: %s", file, why);
    else if (plan_build(&s->plan, s->tensors, s->ntensors, CHUNK_ELEMS) < 0)
        rc = -ENOMEM;
    else
        redo_layout(s);
    free(t);
    if (rc < 0) {
        session_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

/* The request records of a kept shadow header, those the session's last
 * seq can have made (the file is emad's own, but checked like any file). */
static void restore_records(struct session *s, const void *data)
{
    struct shadow_header kh;
    struct shadow_header *h = shadow_hdr(s);

    memcpy(&kh, data, sizeof(kh));
    if (memcmp(kh.magic, SHADOW_MAGIC, 8) != 0)
        return;
    replica_end_times_in(s, &kh); /* a graceful restart keeps them too */
    for (size_t i = 0; i < SEQ_RECORDS; i++) {
        const struct seq_record *rec = &kh.recent[i];
        if (rec->seq != 0 && rec->seq <= s->last_seq && rec->seq % SEQ_RECORDS == i &&
            rec->action <= EMA_ACTION_SWAP_OUT)
            h->recent[i] = *rec;
    }
}

/* Rebuild one session from a state file written by registry_save_all. */
static int restore_one(struct registry *r, const char *dir, const char *file, char *err,
                       size_t errlen)
{
    struct kept k;
    struct session *s = NULL;
    enum shm_share share;
    char why[400];
    int rc;

    if ((rc = kept_read(dir, file, &k, err, errlen)) < 0)
        return rc;
    if ((rc = session_from_kept(r, &k.m, file, &s, err, errlen)) < 0)
        goto out;
    /* Since the request records are kept the data starts with the shadow's
     * header page; before, it held the tensors only. */
    bool with_header = k.f.data_len == s->shadow_bytes;
    if (!with_header && shadow_data_bytes(s) != k.f.data_len) {
        rc = err_set(err, errlen, -EBADMSG, "%s: its data does not fit its tensor table", file);
        goto out;
    }
    if (shm_shadow_create(s->uid, shadow_object_bytes(s), s->shadow_name, sizeof(s->shadow_name),
                          &s->shadow, &share, why, sizeof(why)) < 0) {
        rc = err_set(err, errlen, -ENOMEM, "%s: %s", file, why);
        goto out;
    }
    registry_share_note(r, share);
    struct shm_guard g;
    shadow_enter(s, &g);
    memcpy(shadow_data(s), (const char *)k.f.data + (with_header ? SHADOW_HEADER_BYTES : 0),
           shadow_data_bytes(s));
    if (with_header)
        restore_records(s, k.f.data);
    shadow_leave(s, &g);
    if (shadow_is_broken(s)) {
        rc = err_set(err, errlen, -EFAULT, "%s: the new shadow %s faulted", file, s->shadow_name);
        goto out;
    }
    session_apply_saved(s, &k.m);
    s->ready = true;
    shadow_sync(s);
    registry_insert(r, s);
    s = NULL;
out:
    if (s != NULL)
        session_free(s);
    kept_free(&k);
    return rc;
}

/* Call one for every state file or journal in dir, with its name less
 * STORE_SUFFIX; what one returns above 0 is counted. The count, or -errno
 * when dir cannot be read (0 if it does not exist). */
static int kept_walk(struct registry *r, const char *dir,
                     int (*one)(struct registry *r, const char *dir, const char *file))
{
    size_t suffix = strlen(STORE_SUFFIX);
    struct dirent *e;
    int count = 0;
    DIR *d = opendir(dir);

    if (d == NULL)
        return errno == ENOENT ? 0 : -errno;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        char file[160];
        if (len <= suffix || strcmp(e->d_name + len - suffix, STORE_SUFFIX) != 0 ||
            len - suffix >= sizeof(file) || e->d_name[0] == '.')
            continue;
        memcpy(file, e->d_name, len - suffix);
        file[len - suffix] = '\0';
        if (one(r, dir, file) > 0)
            count++;
    }
    closedir(d);
    return count;
}

/* One state file of a clean stop: 1 once its session is back. */
static int restore_kept(struct registry *r, const char *dir, const char *file)
{
    char path[PATH_MAX], err[600];

    if (snprintf(path, sizeof(path), "%s/%s%s", dir, file, STORE_SUFFIX) >= (int)sizeof(path))
        return 0;
    if (restore_one(r, dir, file, err, sizeof(err)) < 0) {
        /* Kept aside rather than deleted: it may be all that is left. */
        log_error(reg_log(r), "cannot restore the session kept in %s: %s", path, err);
        return 0;
    }
    /* Restored sessions live in emad again; the next stop keeps them anew. */
    unlink(path);
    journal_write(r->head);
    log_info(reg_log(r), "session %s: restored from %s (detached)", r->head->name, path);
    return 1;
}

int registry_restore_all(struct registry *r, const char *dir)
{
    return kept_walk(r, dir, restore_kept);
}

/* Write s's journal; any thread (it logs nothing). 0 or -errno with err. */
int journal_store(struct session *s, char *err, size_t errlen)
{
    struct registry *r = s->reg;
    char name[160], path[PATH_MAX];
    msgpack_sbuffer meta;
    uint64_t bytes;
    int rc;

    if (r->live_dir[0] == '\0')
        return 0;
    kept_name(s, name, sizeof(name));
    if (session_meta_encode(s, &meta) < 0)
        return err_set(err, errlen, -ENOMEM, "out of memory");
    rc = store_save(r->live_dir, name, meta.data, meta.size, NULL, 0, path, sizeof(path), &bytes,
                    err, errlen);
    msgpack_sbuffer_destroy(&meta);
    return rc;
}

void journal_failed(struct session *s, const char *why)
{
    log_warn(reg_log(s->reg), "session %s: cannot write its journal (it will not survive a "
             "crash of emad): %s", s->name, why);
}

void journal_write(struct session *s)
{
    char err[600];
    int rc = journal_store(s, err, sizeof(err));

    if (rc < 0)
        journal_failed(s, err);
    if (s->reg->live_dir[0] != '\0')
        metrics_file(s->reg->ctx->metrics, METRICS_FILE_JOURNAL, rc == 0, -1);
}

void journal_remove(struct session *s)
{
    struct registry *r = s->reg;
    char name[160], path[PATH_MAX];

    if (r->live_dir[0] == '\0')
        return;
    kept_name(s, name, sizeof(name));
    if (snprintf(path, sizeof(path), "%s/%s%s", r->live_dir, name, STORE_SUFFIX) <
        (int)sizeof(path))
        unlink(path);
}

bool registry_owns_shadow(void *registry, const char *name)
{
    struct registry *r = registry;
    struct shadow_header h;
    ssize_t n;
    int fd;

    for (struct session *s = r->head; s != NULL; s = s->next)
        if (strcmp(s->shadow_name, name) == 0)
            return true;
    /* A dead emad of another state directory left it: that emad's restart
     * takes it back, so it is not ours to remove (emactl gc may). One
     * without a readable header never held a session. */
    fd = shm_open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0); /* leases */
    if (fd < 0)
        return false;
    n = pread(fd, &h, sizeof(h), 0);
    close(fd);
    return n == (ssize_t)sizeof(h) && memcmp(h.magic, SHADOW_MAGIC, 8) == 0 && h.home != r->home;
}

/* A shadow taken back still carries the dead emad's pid in its name, and
 * any emad of this uid starting later would collect it as stale: rename it
 * to ours (shm objects are files in /dev/shm on Linux) and journal the new
 * name. If the rename fails the session keeps working under the old name. */
static void adopt_rename(struct registry *r, struct session *s)
{
    char renamed[sizeof(s->shadow_name)], from[300], to[300];

    if (names_shadow_rename(s->shadow_name, (long)getpid(), renamed, sizeof(renamed)) < 0)
        return;
    snprintf(from, sizeof(from), "/dev/shm%s", s->shadow_name);
    snprintf(to, sizeof(to), "/dev/shm%s", renamed);
    if (rename(from, to) < 0) {
        log_warn(reg_log(r), "session %s: cannot rename shadow %s to %s: %s", s->name,
                 s->shadow_name, renamed, strerror(errno));
        return;
    }
    memcpy(s->shadow_name, renamed, sizeof(renamed));
    journal_write(s);
}

/* The profiles' counters from the shadow's header page (the journal has their settings): each
 * record whose place and name are the profile's. */
static void adopt_profiles(struct session *s)
{
    struct shadow_profiles sp;
    struct shm_guard g;

    if (s->nprof == 0)
        return;
    shadow_enter(s, &g);
    memcpy(&sp, (const char *)s->shadow.base + SHADOW_PROFILES_AT, sizeof(sp));
    shadow_leave(s, &g);
    if (memcmp(sp.magic, SHADOW_PROFILES_MAGIC, 8) != 0 || sp.count != s->nprof)
        return;
    s->st.started = false;
    for (unsigned i = 0; i < s->nprof; i++) {
        struct profile *p = &s->prof[i];
        const struct shadow_profile_rec *r = &sp.p[i];
        if (strnlen(r->name, sizeof(r->name)) == sizeof(r->name) || strcmp(r->name, p->name) != 0)
            continue;
        p->updates = r->updates;
        p->last_batch = r->last_batch;
        p->has_last_decay = r->has_last_decay != 0;
        p->last_decay = r->last_decay;
        p->started = p->kind != PROFILE_COMPOSER || r->started != 0;
        s->st.started |= p->started;
    }
}

/* Take back one journaled session whose shadow object is still there.
 * 0, 1 when the session is already back (restored), or -errno. */
static int adopt_one(struct registry *r, const char *file, char *err, size_t errlen)
{
    struct kept k;
    struct session *s = NULL;
    struct shadow_header hc;
    const struct shadow_header *h = &hc;
    enum shm_share share;
    struct shm_guard g;
    char why[400];
    int rc;

    if ((rc = kept_read(r->live_dir, file, &k, err, errlen)) < 0)
        return rc;
    if (!k.m.has_shadow_shm) {
        rc = err_set(err, errlen, -EBADMSG, "%s: not a session journal", file);
        goto out;
    }
    /* Restored from a state file just before (a clean stop kept it), with
     * this journal written anew: nothing to take back. */
    struct session *same = registry_find(r, (uid_t)k.m.uid, k.m.session.ptr, k.m.session.len);
    if (same != NULL && msg_str_eq(k.m.shadow_shm, same->shadow_name)) {
        rc = 1;
        goto out;
    }
    if ((rc = session_from_kept(r, &k.m, file, &s, err, errlen)) < 0)
        goto out;
    if (msg_str_copy(k.m.shadow_shm, s->shadow_name, sizeof(s->shadow_name)) < 0) {
        rc = err_set(err, errlen, -EBADMSG, "%s: bad shadow name", file);
        goto out;
    }
    /* The shadow must be the one emad made: ours (or given to the owner),
     * the journaled size, with our header. */
    if ((rc = shm_shadow_open(s->shadow_name, s->uid, shadow_object_bytes(s), &s->shadow, &share,
                              why, sizeof(why))) < 0) {
        rc = err_set(err, errlen, rc, "%s: %s", file, why);
        goto out;
    }
    registry_share_note(r, share);
    /* One copy of the header: where its trainer owned the shadow, it is
     * input like any the trainer writes. */
    shadow_enter(s, &g);
    hc = *shadow_hdr(s);
    shadow_leave(s, &g);
    if (shadow_is_broken(s) || memcmp(h->magic, SHADOW_MAGIC, 8) != 0) {
        rc = err_set(err, errlen, -EBADMSG, "%s: shadow has no emad header", file);
        goto out;
    }
    ema_state_init(&s->st);
    s->st.started = h->started;
    s->st.updates = h->updates;
    s->st.swaps = h->swaps;
    s->st.has_last_time = h->has_last_time;
    s->st.last_time.batch = h->last_batch;
    s->st.last_time.epoch = h->last_epoch;
    s->st.last_time.has_duration = h->has_last_duration;
    s->st.last_time.duration = h->last_duration;
    /* The trainer restores its weights from the stash when its connection
     * drops: the session comes back with the training weights in. */
    s->st.active = false;
    bool cut = h->seq_begun != h->seq_done;
    s->interrupted = h->interrupted || cut;
    s->last_seq = h->last_seq;
    replica_end_times_in(s, h);
    adopt_profiles(s);
    /* An event cut short: exact once sent again, if the records tell. The
     * flag stays until then (it clears if this crash alone set it). */
    if ((cut && h->redo_of == h->seq_begun) || (h->redo_pending & 1u)) {
        shadow_enter(s, &g);
        int recovered = redo_recover(s);
        shadow_leave(s, &g);
        if (recovered == 0)
            s->redo_clears = (h->redo_pending & 1u) ? (h->redo_pending & 2u) != 0
                                                    : !h->interrupted;
    }
    if (shadow_is_broken(s)) {
        rc = err_set(err, errlen, -EFAULT, "%s: shadow %s faulted while emad read it", file,
                     s->shadow_name);
        goto out;
    }
    s->ready = true;
    adopt_rename(r, s);
    shadow_sync(s);
    registry_insert(r, s);
    /* A journal of an older emad, named before names were per uid: write it
     * under the current name, and remove the old one. */
    char want[160], old_path[PATH_MAX];
    kept_name(s, want, sizeof(want));
    if (strcmp(want, file) != 0 && journal_store(s, why, sizeof(why)) == 0 &&
        snprintf(old_path, sizeof(old_path), "%s/%s%s", r->live_dir, file, STORE_SUFFIX) <
            (int)sizeof(old_path))
        unlink(old_path);
    s = NULL;
out:
    if (s != NULL) {
        s->shadow_name[0] = '\0'; /* a failed adoption never removes the object */
        session_free(s);
    }
    kept_free(&k);
    return rc;
}

/* One journal: 1 once its session is taken back (not one restored from a
 * state file just before). */
static int adopt_journal(struct registry *r, const char *dir, const char *file)
{
    char err[600];
    int rc = adopt_one(r, file, err, sizeof(err));

    if (rc < 0) {
        log_warn(reg_log(r), "journal %s/%s%s: session not taken back: %s", dir, file,
                 STORE_SUFFIX, err);
        return 0;
    }
    if (rc > 0) /* the journal of a session restored from a state file */
        return 0;
    log_warn(reg_log(r), "session %s: taken back after a crash of emad (detached, %" PRIu64
             " updates)%s", r->head->name, r->head->st.updates,
             r->head->interrupted ? "; an update was cut short by the crash: the shadow "
                                    "may hold part of it" : "");
    return 1;
}

int registry_adopt_all(struct registry *r)
{
    int rc;

    if (r->live_dir[0] == '\0')
        return 0;
    rc = kept_walk(r, r->live_dir, adopt_journal);
    return rc < 0 ? 0 : rc;
}
