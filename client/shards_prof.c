/*
 * shards_prof.c - the profiles of a group checkpoint of an EMA with several profiles
 * (docs/scaleout.md "Profiles in a group checkpoint"). The manifest's config.emaclient.profiles
 * lists them ({"name", ...} each, in order) and config.emaclient.eval_profile names the one
 * whose tensors carry the plain state_dict names, so that a reader that knows nothing of
 * profiles still gets the EMA weights people use. Every other profile P's tensors are named
 * EMAC_CKPT_PROFILE_PREFIX "P/" NAME: a state_dict name never starts with ".", its first
 * component being a module or tensor name, never empty and dot-free.
 */
#include "shards_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define PROFILES_MAX 8 /* a session's most (docs/protocol.md "Profiles") */
#define PROFILE_NAME_MAX 32

#define BAD(...) client_set_err(err, -EINVAL, EMAC_E_BADFILE, __VA_ARGS__)

static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > PROFILE_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* The names of config.emaclient.profiles into names (at most PROFILES_MAX; *n = 0 when the
 * config holds none: an EMA without profiles) and config.emaclient.eval_profile into *eval.
 * The config is the trainer's writing: every part is checked. */
static int read_profiles(const struct emac_checkpoint *ck, const char **names, unsigned *n,
                         const char **eval, struct emac_error *err)
{
    const struct jt_doc *doc = &ck->doc;
    const struct jt_node *cfg = jt_get(doc, &doc->nodes[0], "config");
    const struct jt_node *ec = jt_get(doc, cfg, "emaclient");
    const struct jt_node *ps = jt_get(doc, ec, "profiles"), *ev = jt_get(doc, ec, "eval_profile");

    *n = 0;
    *eval = NULL;
    if (ps == NULL)
        return 0;
    if (ps->type != JT_ARRAY || ps->count == 0 || ps->count > PROFILES_MAX)
        return BAD("%s: config.emaclient.profiles is not an array of 1 to %d profiles", ck->path,
                   PROFILES_MAX);
    for (const struct jt_node *p = jt_first(doc, ps); p != NULL; p = jt_next(doc, p)) {
        const struct jt_node *nm = jt_get(doc, p, "name");
        if (nm == NULL || nm->type != JT_STRING || !name_ok(jt_str(doc, nm)))
            return BAD("%s: config.emaclient.profiles[%u] has no \"name\" of 1 to %d characters "
                       "of [A-Za-z0-9_.-]",
                       ck->path, *n, PROFILE_NAME_MAX);
        names[(*n)++] = jt_str(doc, nm);
    }
    for (unsigned i = 0; ev != NULL && ev->type == JT_STRING && i < *n; i++)
        if (strcmp(names[i], jt_str(doc, ev)) == 0)
            *eval = names[i];
    if (*eval == NULL)
        return BAD("%s: config.emaclient.eval_profile does not name one of "
                   "config.emaclient.profiles",
                   ck->path);
    return 0;
}

int shards_profile_pick(const struct emac_checkpoint *ck, const char *profile,
                        struct shards_pick *out, struct emac_error *err)
{
    const char *names[PROFILES_MAX], *eval;
    char list[PROFILES_MAX * (PROFILE_NAME_MAX + 2) + 1] = "";
    unsigned n;
    int rc = read_profiles(ck, names, &n, &eval, err);

    memset(out, 0, sizeof(*out));
    if (rc < 0)
        return rc;
    if (n == 0) {
        if (profile != NULL)
            return client_set_err(err, -ENOENT, EMAC_E_USAGE,
                                  "consolidate: %s holds an EMA without profiles: no profile "
                                  "\"%.40s\" (leave the profile out)",
                                  ck->path, profile);
        return 0;
    }
    out->profiles = true;
    out->name = eval;
    if (profile == NULL)
        return 0;
    for (unsigned i = 0; i < n; i++) {
        if (strcmp(names[i], profile) == 0) {
            out->name = names[i];
            if (names[i] != eval)
                snprintf(out->prefix, sizeof(out->prefix), EMAC_CKPT_PROFILE_PREFIX "%s/",
                         names[i]);
            return 0;
        }
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "", names[i]);
    }
    return client_set_err(err, -ENOENT, EMAC_E_USAGE,
                          "consolidate: %s has no profile \"%.40s\"; its profiles: %s (the eval "
                          "profile: %s)",
                          ck->path, profile, list, eval);
}

const char *shards_pick_name(const struct shards_pick *pick, const char *tensor)
{
    size_t n = strlen(pick->prefix);

    if (!pick->profiles)
        return tensor;
    if (n == 0) /* the eval profile: the plain names */
        return strncmp(tensor, EMAC_CKPT_PROFILE_PREFIX, strlen(EMAC_CKPT_PROFILE_PREFIX)) == 0
                   ? NULL
                   : tensor;
    return strncmp(tensor, pick->prefix, n) == 0 ? tensor + n : NULL;
}
