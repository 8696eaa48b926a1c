/*
 * loadprof.c - load of one profile's shadow (docs/protocol.md "load", profile): how a client
 * resumes a session of several profiles from its own checkpoint, with no state file of emad's.
 * Each profile's exact shadow goes through a temporary session of one shadow whose params hold
 * it (register copies them into its shadow, exactly), saved to a file; this load puts that
 * file's shadow into one profile of the session and gives the profile the state the request
 * carries (its counters and schedule state, as the checkpoint has them). The other profiles,
 * the session's config and its counters stay as they are.
 */
#include "session_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int loadprof_args(const struct session *s, const struct msg_file *req, struct op_file *f,
                  char *err, size_t errlen)
{
    if (req->has_profile_state && !req->has_profile) {
        snprintf(err, errlen, "profile_state: only with profile");
        return -EINVAL;
    }
    if (!req->has_profile)
        return 0;
    int at = s->nprof > 0 ? profile_find(s->prof, s->nprof, req->profile)
                          : msg_str_eq(req->profile, PROFILE_DEFAULT_NAME) ? 0 : -1;
    if (at < 0) {
        snprintf(err, errlen, "profile: session %s has no profile \"%.*s\"", s->name,
                 (int)(req->profile.len > 40 ? 40 : req->profile.len), req->profile.ptr);
        return -EINVAL;
    }
    f->one_profile = true;
    f->prof = (unsigned)at;
    f->has_set = req->has_profile_state;
    f->set = req->profile_state;
    return 0;
}

/* The file (its metadata in f->loaded) holds one shadow laid out as one profile of s: the same
 * tensors, names, numel and shadow dtypes, data no larger than a profile's area. */
static int check_one(const struct session *s, const struct msg_saved_state *m,
                     uint64_t data_len, char *err, size_t errlen)
{
    if (saved_shadows(m) != 1) {
        snprintf(err, errlen, "the file holds %zu EMA profiles; a load of one profile takes a "
                 "file of one", saved_shadows(m));
        return -EINVAL;
    }
    int rc = session_check_table(s, m, err, errlen);
    if (rc < 0)
        return rc;
    /* Laid out alike, the one shadow's data is the area before its rounding up to the
     * alignment of the profiles' areas. */
    if (data_len > s->area_bytes || data_len + SEG_TENSOR_ALIGN <= s->area_bytes ||
        m->shadow_bytes != data_len + SHADOW_HEADER_BYTES) {
        snprintf(err, errlen, "the file's shadow is %" PRIu64 " bytes, a profile's %" PRIu64,
                 data_len, s->area_bytes);
        return -EINVAL;
    }
    return 0;
}

int loadprof_copy(struct session *s, const struct op_file *f, const void *data,
                  uint64_t data_len, char *err, size_t errlen)
{
    int rc = check_one(s, &f->loaded, data_len, err, errlen);

    if (rc < 0)
        return rc;
    memcpy((char *)shadow_data(s) + (uint64_t)f->prof * s->area_bytes, data, data_len);
    return 0;
}

void loadprof_apply(struct session *s, const struct op_file *f)
{
    if (f->has_set && s->nprof > 0) {
        struct profile *p = &s->prof[f->prof];
        p->started = f->set.started;
        p->updates = f->set.updates;
        p->last_batch = f->set.has_last_batch ? f->set.last_batch : 0;
        p->has_last_decay = f->set.has_last_decay;
        p->last_decay = f->set.last_decay;
    } else if (f->has_set) {
        /* The one profile "ema" of a session without profiles: its state is the session's. */
        s->st.started = f->set.started;
    }
    if (s->nprof > 0) {
        bool any = false;
        for (unsigned i = 0; i < s->nprof; i++)
            any |= s->prof[i].started;
        s->st.started = any;
    }
}
