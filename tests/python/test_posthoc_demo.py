"""The post-hoc part of `make demo` (client/python/examples/posthoc_sigma.py): on a tiny
configuration (40 batches, snapshots every 10, 3 widths, 200 validation examples) it trains,
rebuilds the EMA of each width from the snapshots, evaluates them, prints one accuracy in [0, 1]
per sigma_rel and one for the constant-decay profile, and writes a PNG. Also emactl posthoc on
the files the run left (they outlive the session), which must load as a PNG's numbers do not:
a safetensors file of the model's tensors."""

import importlib.util
import json
import os
import re
import subprocess
import tempfile
import unittest

import emadtest
from emaclient import _safetensors

SCRIPT = os.path.join(emadtest.ROOT, "client", "python", "examples", "posthoc_sigma.py")


class PosthocDemo(emadtest.EmadTestCase):

    def test_tiny_run_prints_accuracies_for_every_sigma_and_writes_a_png(self):
        if importlib.util.find_spec("matplotlib") is None:
            self.skipTest("no matplotlib (python3-matplotlib)")
        d = self.daemon()
        with tempfile.TemporaryDirectory(prefix="emad-pytest-phdemo-") as tmp:
            png = os.path.join(tmp, "plot.png")
            env = dict(os.environ,
                       PYTHONPATH=os.path.join(emadtest.ROOT, "client", "python"))
            r = subprocess.run([emadtest.PYTHON, SCRIPT, "--socket", d.sock, "--session", "phd",
                                "--steps", "40", "--every", "10", "--sigmas", "3",
                                "--val", "200", "--out", png],
                               env=env, capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            got = {float(s): float(a) for s, a in
                   re.findall(r"^sigma_rel (\S+) accuracy (\S+)$", r.stdout, re.M)}
            self.assertEqual(sorted(got), [0.02, 0.035, 0.05], r.stdout)
            for s, a in got.items():
                self.assertTrue(0.0 <= a <= 1.0, "sigma_rel %g: accuracy %r" % (s, a))
            const = re.search(r"^constant half-life \S+ accuracy (\S+)$", r.stdout, re.M)
            self.assertIsNotNone(const, r.stdout)
            self.assertTrue(0.0 <= float(const.group(1)) <= 1.0)
            self.assertRegex(r.stdout, r"40 steps, 8 snapshot files")
            with open(png, "rb") as f:
                head = f.read(16)
            self.assertEqual(head[:8], b"\x89PNG\r\n\x1a\n")
            self.assertGreater(os.path.getsize(png), 10000)  # a plot, not an empty image

            # The session is closed; its snapshots remain: emactl posthoc reads them.
            out = os.path.join(tmp, "ema.safetensors")
            r = subprocess.run([emadtest.EMACTL_BIN, "--socket", d.sock, "posthoc", "phd",
                                "--sigma-rel", "0.08", "--out", out, "--json"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(json.loads(r.stdout)["batch"], 40)
            tensors, meta = _safetensors.read(out)
            self.assertEqual(meta["sigma_rel"], "0.080000000000000002")
            self.assertIn("conv1.weight", tensors)


if __name__ == "__main__":
    unittest.main()
