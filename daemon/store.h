/*
 * store.h - save and load state files in emad's state directory (docs/protocol.md "save", "load").
 *
 * A state file holds two opaque blobs: the metadata (msgpack bytes made by the caller: config,
 * counters, tensor table) and the data (the shadow, possibly many GiB). This module knows nothing
 * of sessions; it makes saving atomic and durable and loading verified:
 *
 *   - store_save() writes a temp file in the target's directory, fsyncs it, renames it over the
 *     target and fsyncs the directory. A reader never sees a partial file; a crash or an error
 *     leaves the previous file as it was.
 *   - store_load() maps the file read-only and returns nothing unless the magic, the version, the
 *     lengths and the checksum over every byte all check out.
 *
 * File format, version 1 (integers little-endian):
 *
 *   offset            size      field
 *   ----------------  --------  ---------------------------------------------------------------
 *   0                 8         magic "EMASTATE" (no NUL)
 *   8                 4         version: 1
 *   12                4         flags: 0 (a reader rejects bits it does not know)
 *   16                8         meta_len
 *   24                8         data_offset = round_up(40 + meta_len, 4096), so the data is
 *                               page-aligned in a mapping of the file
 *   32                8         data_len
 *   40                meta_len  meta: the caller's bytes
 *   40 + meta_len     ...       zero padding up to data_offset
 *   data_offset       data_len  data: the caller's bytes
 *   data_offset       8         end magic "EMASTEND"
 *     + data_len
 *   file size - 8     8         checksum: CRC-32C (Castagnoli, as iSCSI and ext4 use it) of
 *                               every byte before it, zero-extended to 64 bits
 *
 *   file size = data_offset + data_len + 16; the smallest file (both blobs empty) is 4112 bytes.
 *
 * Every version keeps the magic at 0, the version at 8 and this 16-byte trailer at the end, so a
 * reader can tell a newer file (-EPROTONOSUPPORT) from a damaged one (-EBADMSG) without knowing
 * the newer layout.
 *
 * Where a user's files go (store_save_user / store_load_user): a file belongs to the uid that
 * saved it, in a directory of that uid's own, so that no name one user gives can reach a file
 * of another:
 *
 *   <state dir>/                 emad's: owned by emad's uid, not writable by group or others
 *       .lock                    store_lock_dir
 *       users/                   0700, made by emad
 *           <uid>/               0700, made by emad at that uid's first save
 *               <name>.emastate
 *       <name>.emastate          saved by an emad older than users/: loaded only when the uid's
 *                                own directory has no file of that name (see store_load_user)
 *
 * Every directory on the way is opened relative to the one above it, never through a link, and
 * refused unless it belongs to emad's uid and only that uid may write it (store_check_dir); a
 * state file is never opened through a link either.
 *
 * File names, not paths: clients choose names (store_name_valid), and ".emastate" is appended.
 * Temp files are named ".<name>.emastate.tmp-XXXXXX"; a valid name never starts with '.', so a
 * temp file can never be mistaken for a state file, and any left by a crash may be deleted
 * (store_remove_temps).
 *
 * Functions return 0 or a negative errno. Those that take `char *err, size_t errlen` write a
 * message there on failure that names the file and the problem (err may be NULL). Nothing here
 * has global mutable state; every function is thread-safe (two saves to the same name race as
 * renames do: one of the two complete files wins).
 */
#ifndef EMAD_STORE_H
#define EMAD_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STORE_SUFFIX ".emastate"
#define STORE_MAGIC "EMASTATE"     /* 8 bytes at offset 0 */
#define STORE_END_MAGIC "EMASTEND" /* 8 bytes before the checksum */
#define STORE_VERSION 1u
#define STORE_HEADER_BYTES 40u
#define STORE_TRAILER_BYTES 16u
#define STORE_ALIGN 4096u  /* data_offset is a multiple */
#define STORE_NAME_MAX 128 /* longest file name clients may give, without the suffix */
#define STORE_USERS_DIR "users" /* below the state directory: one directory per uid */

/* ---- Names ------------------------------------------------------------------------------- */

/* A file name clients may give: 1..STORE_NAME_MAX chars of [A-Za-z0-9._%-], not starting with
 * '.' (so never ".", "..", or a temp or hidden file). len counts the chars; name needs no NUL. */
bool store_name_valid(const char *name, size_t len);

/* The default file name for a session (session names are 1..128 chars of [A-Za-z0-9._:/-],
 * docs/protocol.md "Limits"): '/' becomes "%2F", ':' becomes "%3A", a leading '.' becomes "%2E", everything
 * else stays. '%' never occurs in a session name, so the mapping is injective: two sessions never
 * share a default file. Writes a NUL-terminated valid name to out.
 * -EINVAL if session is not a valid session name, -ENAMETOOLONG if the result would be longer
 * than STORE_NAME_MAX (the client must give a name), -ENOBUFS if outlen cannot hold it
 * (STORE_NAME_MAX + 1 always can). */
int store_default_name(const char *session, size_t len, char *out, size_t outlen);

/* ---- Save and load ----------------------------------------------------------------------- */

/*
 * Write <dir>/<name>.emastate atomically and durably. dir is created (mode 0700, parents too)
 * if missing. The file is written to a temp file in dir (O_EXCL, mode 0600), its space reserved
 * first where the filesystem can (so a full disk fails before GiBs are written), fsynced, renamed
 * over the target, and dir is fsynced; the function returns after all of that.
 *
 * meta and data may be NULL when their length is 0. data must not change during the call (the
 * checksum is computed as it is written) and must stay mapped.
 *
 * path_out (path_len bytes, may be NULL with path_len 0) gets the final path; bytes_out (may be
 * NULL) the file's size. -EINVAL for an invalid name, -ENAMETOOLONG if the path does not fit
 * path_out or PATH_MAX (checked before anything is written), else the -errno of the step that
 * failed, with a message such as
 *   "save: writing /var/lib/emad/.x.emastate.tmp-Qx81aZ: No space left on device".
 * On any failure the temp file is removed and a previous file of that name is left intact; the
 * one exception is a failing fsync of dir after the rename, when the new file is in place but
 * may not survive a crash.
 */
int store_save(const char *dir, const char *name, const void *meta, size_t meta_len,
               const void *data, uint64_t data_len, char *path_out, size_t path_len,
               uint64_t *bytes_out, char *err, size_t errlen);

/*
 * What one user's directory may hold (emad's --max-state-files-per-uid and
 * --max-state-bytes-per-uid): no request deletes a state file, so without a bound one user's
 * saves under new names would fill the filesystem that also holds every other user's files, the
 * journals of running sessions and the sessions a stop keeps.
 */
struct store_quota {
    uint64_t max_files; /* state files and temp files of saves in progress */
    uint64_t max_bytes; /* the sum of their sizes */
};

/* What a user's directory holds, as a quota counts it. */
struct store_usage {
    uint64_t files; /* state files and temp files of saves (left by a crash, or in progress) */
    uint64_t bytes; /* the sum of their sizes (st_size) */
};

/*
 * Whether a save of a file of `bytes` bytes named <name>.emastate fits quota, given what the
 * directory holds now: used counts every state file and temp file in it, and replacing counts
 * the size of the file of that name when there is one (a save replaces it, so it is counted
 * back: its file is not a new one and its bytes are freed). 0, or -EDQUOT with a message naming
 * the limit's option, dir, the use and what to do. Pure, for the tests.
 */
int store_quota_check(const struct store_quota *quota, const struct store_usage *used,
                      bool replaces, uint64_t replaced_bytes, uint64_t bytes, const char *dir,
                      char *err, size_t errlen);

/*
 * store_save() into <state_dir>/users/<uid>/, the directory of the user uid's files: made (0700)
 * when missing, as users/ is; the state directory itself must exist. Each of the three is
 * checked as store_check_dir() does, and reached without following a link; a failing check is
 * an -EPERM, -ENOTDIR or -ELOOP with a message naming the directory and the fix. Otherwise as
 * store_save(), paths and messages naming the user's directory.
 *
 * With quota (NULL: none), the directory's state and temp files are summed first and the save
 * is refused with -EDQUOT (store_quota_check) before anything is written when the new file would
 * not fit. The sum, the check, the temp file's creation and the reservation of its full size
 * happen under an exclusive flock of the user's directory, so that concurrent saves of one uid
 * each see the others' temp files at their final size and cannot pass the check together.
 */
int store_save_user(const char *state_dir, uid_t uid, const char *name,
                    const struct store_quota *quota, const void *meta, size_t meta_len,
                    const void *data, uint64_t data_len, char *path_out, size_t path_len,
                    uint64_t *bytes_out, char *err, size_t errlen);

/*
 * Whether dir may be emad's state directory: a directory, not reached through a link in its
 * last component, owned by emad's effective uid and not writable by group or others (whoever
 * can write it could plant links or replace files). 0, or -ENOENT, -ENOTDIR, -ELOOP or -EPERM
 * with a message naming the directory, its owner or mode, and the fix. store_lock_dir() checks
 * it too, so emad refuses such a directory at its start.
 */
int store_check_dir(const char *dir, char *err, size_t errlen);

/*
 * Remove the temp files of saves that never finished (emad killed or the machine down midway)
 * from dir: entries ".<name>.emastate.tmp-XXXXXX" for a valid name, never a state file, never a
 * directory; also in each <dir>/users/<uid>/ (never through a link). Only while no save
 * writes into dir (a save in flight has a temp file too), such as
 * at emad's start, before it serves. Returns how many were removed (0 when dir does not exist;
 * an entry that cannot be removed is skipped), or the -errno of reading dir with a message.
 */
int store_remove_temps(const char *dir, char *err, size_t errlen);

/*
 * Claim dir (made if missing, mode 0700) for this process: an exclusive flock on dir/.lock,
 * which holds the owner's pid. dir must pass store_check_dir() (its error and message if
 * not). The kernel lets go of the lock when the process dies, however it dies. Returns the
 * lock's fd (keep it open), -EBUSY with a message naming the other owner's pid when another
 * process holds it, or another -errno with a message.
 */
int store_lock_dir(const char *dir, char *err, size_t errlen);

/* A verified, read-only, private mapping of a state file. meta and data point into it. */
struct store_file {
    void *map;        /* the whole file; NULL when nothing is loaded */
    size_t map_len;   /* the file's size */
    const void *meta; /* meta_len bytes */
    size_t meta_len;
    const void *data; /* data_len bytes, page-aligned */
    uint64_t data_len;
};

/*
 * Map and verify <dir>/<name>.emastate. On success *out holds the mapping; release it with
 * store_file_close(). On failure *out is zeroed (closing it is harmless) and the result is
 *   -EINVAL           invalid name, or not a regular file
 *   -ENOENT           no such file
 *   -ELOOP            <dir>/<name>.emastate is a symbolic link (never followed)
 *   -EBADMSG          not a state file, truncated, inconsistent lengths or checksum mismatch
 *   -EPROTONOSUPPORT  an intact file of another version, or with flags this reader lacks
 *   other -errno      opening or mapping failed
 * with a message naming the path and which check failed. Verification reads the whole file.
 * The file must not be truncated while mapped (a read past the new end raises SIGBUS); emad owns
 * its state directory and only ever replaces files by rename, which cannot do that.
 */
int store_load(const char *dir, const char *name, struct store_file *out, char *err,
               size_t errlen);

/*
 * store_load() of the user uid's file <name>.emastate: from <state_dir>/users/<uid>/, checked
 * and reached as store_save_user() does; or, when that directory has no file of that name, from
 * the state directory itself, where emads before users/ saved every user's files. Such a file
 * must belong to emad's uid, and whose it is only its metadata tells: every failure to load it
 * gets one message that shows nothing of it, and the caller must compare the uid its metadata
 * records before it shows or uses anything else of it. The path the file was loaded from goes
 * to path_out (path_len bytes, may be NULL). Results as store_load(); -ENOENT's message names
 * the path in the user's directory.
 */
int store_load_user(const char *state_dir, uid_t uid, const char *name, struct store_file *out,
                    char *path_out, size_t path_len, char *err, size_t errlen);

/* Unmap and zero f. Accepts a zeroed struct, and f == NULL. */
void store_file_close(struct store_file *f);

/* ---- Checksum ---------------------------------------------------------------------------- */

/* CRC-32C, zlib-style chaining: crc is 0 to start, or the result over the preceding bytes, so
 * store_crc32c(store_crc32c(0, a, n), b, m) is the CRC of a followed by b. "123456789" gives
 * 0xe3069283. buf may be NULL when len is 0. */
typedef uint32_t (*store_crc32c_fn)(uint32_t crc, const void *buf, size_t len);

/* The fastest implementation this CPU runs (SSE4.2 crc32 when present, several GB/s). */
uint32_t store_crc32c(uint32_t crc, const void *buf, size_t len);
/* Portable slicing-by-8 over a constant table; any CPU. */
uint32_t store_crc32c_portable(uint32_t crc, const void *buf, size_t len);
/* The SSE4.2 implementation; NULL when this CPU or this build (not x86-64) lacks it. */
store_crc32c_fn store_crc32c_hw(void);

#endif
