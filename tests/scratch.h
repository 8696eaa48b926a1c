/*
 * scratch.h - a scratch directory for one unit-test program: cmocka's group setup makes it
 * (setup), its teardown removes it with whatever the tests left there (teardown), and path_in
 * names a file in it. Header-only, for the test programs that are one file each.
 */
#ifndef EMAD_TESTS_SCRATCH_H
#define EMAD_TESTS_SCRATCH_H

#include <stdio.h>
#include <stdlib.h>

static char tmpdir[] = "/tmp/emad-test.XXXXXX";

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    char cmd[256];
    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd);
}

/* tmpdir/dir/name (tmpdir/name when dir is ""), in out. */
static const char *path_in(char *out, size_t len, const char *dir, const char *name)
{
    snprintf(out, len, "%s/%s%s%s", tmpdir, dir, dir[0] ? "/" : "", name);
    return out;
}

#endif
