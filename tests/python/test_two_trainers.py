"""Two trainers, in separate processes, share one emad at the same time; each
one's EMA equals its own in-process reference bit for bit (trainer_proc.py).
Both sessions are registered and attached (distinct owners) before either
starts training, so their events interleave in the daemon."""

import os
import subprocess
import unittest

import emadtest

TRAINERS = [
    # session, seed, extra arguments
    ("alice", 1, ["--half-life", "10ba", "--ema-start", "0.25dur"]),
    ("bob", 2, ["--half-life", "6ba", "--update-interval", "3ba", "--ema-start", "5ba",
                "--mode", "mirror"]),
]


class TwoTrainers(emadtest.EmadTestCase):

    def test_two_trainers_share_one_emad(self):
        d = self.daemon()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(emadtest.ROOT, "client", "python"), emadtest.HERE] +
            ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        procs = []
        try:
            for session, seed, extra in TRAINERS:
                procs.append(subprocess.Popen(
                    [emadtest.PYTHON, os.path.join(emadtest.HERE, "trainer_proc.py"),
                     "--socket", d.sock, "--session", session, "--seed", str(seed),
                     "--steps", "60"] + extra,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    env=env, text=True))
            for p in procs:
                for line in p.stdout:
                    if line.startswith("segment "):
                        self.leftovers.extra_segments.add(line.split()[1])
                    if line.strip() == "registered":
                        break
                else:
                    self.fail("a trainer exited before registering: rc %s" % p.wait())
            with emadtest.emaclient.Client(d.sock) as c:
                sessions = {s["session"]: s for s in c.status()["sessions"]}
            self.assertEqual(sorted(sessions), ["alice", "bob"])
            self.assertTrue(all(s["attached"] for s in sessions.values()))
            self.assertEqual({s["owner_pid"] for s in sessions.values()},
                             {p.pid for p in procs})
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            outputs = []
            for p in procs:
                out, _ = p.communicate(timeout=120)
                outputs.append((p.returncode, out))
            for (session, _, _), (rc, out) in zip(TRAINERS, outputs):
                self.assertEqual(rc, 0, "%s: %s" % (session, out))
                self.assertIn("ok updates=", out)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        with emadtest.emaclient.Client(d.sock) as c:
            self.assertEqual(c.status()["sessions"], [])


if __name__ == "__main__":
    unittest.main()
