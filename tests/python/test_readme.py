"""Every ```python example of README.md runs as a new user would paste it
(emad running, the package on PYTHONPATH as the README says) and exits 0
without a word on stderr."""

import os
import re
import subprocess
import tempfile

import emadtest

import emaclient


def examples():
    with open(os.path.join(emadtest.ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```$", text, re.S | re.M)


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
