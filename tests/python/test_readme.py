"""README.md says what a newcomer types; these tests hold it to that.

- The quick start gets make and git the way it says, then holds exactly the
  two commands: `make demo` runs emad, the demo trainer and `emactl status`
  and leaves nothing behind; `make check` builds the plain, ASan+UBSan and
  TSan variants and runs every test in each.
- Every ```python example runs as a new user would paste it (emad running,
  the package on PYTHONPATH as the README says) and exits 0 without a word
  on stderr."""

import os
import re
import subprocess
import tempfile

import emadtest

import emaclient


def readme():
    with open(os.path.join(emadtest.ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def examples():
    return re.findall(r"^```python\n(.*?)^```$", readme(), re.S | re.M)


def quick_start():
    """The shell blocks of the Quick start section, as lists of commands."""
    text = readme()
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    blocks = re.findall(r"^```sh\n(.*?)^```$", section, re.S | re.M)
    return [[re.sub(r"\s+#.*$", "", line).strip() for line in b.splitlines() if line.strip()]
            for b in blocks]


def makefile_rule(target):
    """(prerequisites, recipe lines) of a Makefile target."""
    with open(os.path.join(emadtest.ROOT, "Makefile"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"^%s:([^\n]*)\n((?:\t[^\n]*\n)*)" % re.escape(target), text, re.M)
    assert m is not None, "Makefile has no rule for %s" % target
    return m.group(1).split(), [line.strip().lstrip("@") for line in m.group(2).splitlines()]


class QuickStart(emadtest.EmadTestCase):

    def test_make_and_git_come_first_then_the_two_commands(self):
        blocks = quick_start()
        self.assertEqual(len(blocks), 2, blocks)
        self.assertIn("apt-get update && apt-get install -y make git", blocks[0])
        self.assertEqual(blocks[1], ["make demo", "make check"])

    def test_make_check_builds_three_variants_and_runs_every_test(self):
        prereqs, recipe = makefile_rule("check")
        self.assertIn("deps", prereqs)
        self.assertTrue(any("check-run" in line for line in recipe), recipe)
        prereqs, recipe = makefile_rule("check-run")
        self.assertEqual((prereqs, recipe), (["tests"], ["tests/run"]))
        prereqs, _ = makefile_rule("tests")
        for built in ("all", "build/asan/emad", "build/tsan/emad"):
            self.assertIn(built, prereqs)
        with open(os.path.join(emadtest.ROOT, "tests", "run"), encoding="utf-8") as f:
            run = f.read()
        self.assertEqual(run.count("for variant in build build/asan build/tsan; do"), 3, run)
        self.assertIn("ASan+UBSan and TSan", readme())

    def test_make_demo_runs_emad_the_trainer_and_emactl_status_and_leaves_nothing(self):
        prereqs, recipe = makefile_rule("demo")
        self.assertIn("deps", prereqs)
        self.assertIn("client/demo.sh build", recipe)
        # demo.sh against this run's emad and emactl (the build under test),
        # with the plain build's library and toy trainer.
        with tempfile.TemporaryDirectory(prefix="emad-pytest-demo-") as build:
            for name, target in (("emad", emadtest.EMAD_BIN), ("emactl", emadtest.EMACTL_BIN),
                                 ("libemaclient.so",
                                  os.path.join(emadtest.ROOT, "build", "libemaclient.so")),
                                 ("toy_trainer",
                                  os.path.join(emadtest.ROOT, "build", "toy_trainer"))):
                os.symlink(os.path.abspath(target), os.path.join(build, name))
            r = subprocess.run([os.path.join(emadtest.ROOT, "client", "demo.sh"), build],
                               env=dict(os.environ, PYTHON=emadtest.PYTHON,
                                        DEMO_POSTHOC_ARGS="--steps 40 --every 10 --sigmas 2 "
                                                          "--val 200"),
                               capture_output=True, text=True, timeout=600)
        out = r.stdout
        self.assertEqual(r.returncode, 0, out + r.stderr)
        self.assertIn("EMA weights", out)             # the trainer's per-epoch accuracy
        self.assertIn("== emactl status", out)
        self.assertRegex(out, r"emad \S+ \(protocol 1\), pid \d+")
        self.assertRegex(out, r"\ndemo-cnn +detached ")
        self.assertIn("emad exited with status 0; socket removed: yes", out)
        tmp = re.search(r"^removing (/tmp/emad-demo-\S+)", out, re.M)
        self.assertIsNotNone(tmp, out)
        self.assertFalse(os.path.exists(tmp.group(1)), "demo left its directory")
        shadow = re.search(r"shadow (/emad-shadow-\S+)", out).group(1)
        segment = re.search(r"segment (/emad-[0-9a-f]+)", out).group(1)
        left = [n for n in (shadow, segment) if emadtest.shm_exists(n)]
        self.assertEqual(left, [], "demo left shared-memory objects")


class Readme(emadtest.EmadTestCase):

    def test_there_are_examples(self):
        self.assertGreaterEqual(len(examples()), 1)

    def test_every_python_example_runs(self):
        d = self.daemon()
        env = dict(os.environ)
        env["EMAD_SOCKET"] = d.sock
        env["PYTHONPATH"] = os.path.join(emadtest.ROOT, "client", "python")
        for i, code in enumerate(examples()):
            with self.subTest(example=i, first_line=code.splitlines()[0]):
                with tempfile.TemporaryDirectory(prefix="emad-pytest-readme-") as tmp:
                    path = os.path.join(tmp, "example.py")
                    with open(path, "w") as f:
                        f.write(code)
                    r = subprocess.run([emadtest.PYTHON, path], cwd=tmp, env=env,
                                       capture_output=True, text=True, timeout=300)
                self.assertEqual((r.returncode, r.stderr), (0, ""), r.stdout)
                with emaclient.Client(d.sock) as c:  # the example closed its session
                    self.assertEqual(c.status()["sessions"], [])


if __name__ == "__main__":
    import unittest
    unittest.main()
