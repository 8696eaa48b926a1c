"""The ctypes declarations (emaclient/_lib.py) against client/emaclient.h:
every struct's size and every field's offset, as the C compiler lays them
out, and every declared function exported by the library. Catches a header
that changed without the binding."""

import ctypes
import os
import shutil
import subprocess
import tempfile
import unittest

import emadtest

from emaclient import _lib

STRUCTS = {
    "emac_error": _lib.EmacError, "emac_server": _lib.EmacServer,
    "emac_tensor_spec": _lib.EmacTensorSpec, "emac_tensor": _lib.EmacTensor,
    "emac_config": _lib.EmacConfig, "emac_session_info": _lib.EmacSessionInfo,
    "emac_shadow": _lib.EmacShadow, "emac_time": _lib.EmacTime,
    "emac_time_counts": _lib.EmacTimeCounts,
    "emac_result": _lib.EmacResult, "emac_file": _lib.EmacFile,
    "emac_status": _lib.EmacStatus,
    "emac_health_config": _lib.EmacHealthConfig, "emac_health": _lib.EmacHealth,
    "emac_profile": _lib.EmacProfile, "emac_profile_info": _lib.EmacProfileInfo,
    "emac_profile_health": _lib.EmacProfileHealth,
    "emac_profile_state": _lib.EmacProfileState,
    "emac_ckpt_group": _lib.EmacCkptGroup, "emac_ckpt_slice": _lib.EmacCkptSlice,
    "emac_ckpt_shard": _lib.EmacCkptShard,
    "emac_group": _lib.EmacGroup,
}


class Abi(unittest.TestCase):

    def test_struct_layouts_match_the_header(self):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        # Not a skip: the suite's dependencies include a C compiler, and
        # without it this check of the binding would vanish unnoticed.
        self.assertTrue(cc, "no C compiler to check the ctypes layouts against emaclient.h: "
                        "install gcc (make deps) or set CC")
        lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "emaclient.h"',
                 '#include "emacheckpoint.h"',
                 "int main(void) {"]
        expect = []
        for name, cls in STRUCTS.items():
            lines.append('printf("%%zu\\n", sizeof(struct %s));' % name)
            expect.append(("sizeof(%s)" % name, ctypes.sizeof(cls)))
            for field, _ in cls._fields_:
                lines.append('printf("%%zu\\n", offsetof(struct %s, %s));' % (name, field))
                expect.append(("%s.%s" % (name, field), getattr(cls, field).offset))
        lines += ["return 0;", "}"]
        with tempfile.TemporaryDirectory(prefix="emad-pytest-abi-") as tmp:
            src, exe = os.path.join(tmp, "abi.c"), os.path.join(tmp, "abi")
            with open(src, "w") as f:
                f.write("\n".join(lines) + "\n")
            subprocess.run([cc, "-I", os.path.join(emadtest.ROOT, "client"), src, "-o", exe],
                           check=True)
            got = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
        got = [int(x) for x in got.split()]
        self.assertEqual(len(got), len(expect))
        wrong = ["%s: C %d, ctypes %d" % (what, g, e) for (what, e), g in zip(expect, got)
                 if g != e]
        self.assertEqual(wrong, [])

    def test_every_function_is_exported(self):
        for name in _lib._PROTOTYPES:
            self.assertTrue(hasattr(_lib.lib, name), name)
        header = ""
        for h in ("emaclient.h", "emacheckpoint.h"):  # the public headers
            with open(os.path.join(emadtest.ROOT, "client", h)) as f:
                header += f.read()
        for name in _lib._PROTOTYPES:
            self.assertIn(name + "(", header)


if __name__ == "__main__":
    unittest.main()
