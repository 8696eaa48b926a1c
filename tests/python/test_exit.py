"""An EMA never closed: whatever way the interpreter ends (a normal exit, an
uncaught exception, sys.exit, SIGTERM handled by Python), the EMA releases
what it made, in order, and the model holds its training weights at the
end, in shm and mirror mode, with the EMA weights in or out. Each case runs
as a script in a subprocess, as a user would run it."""

import os
import signal
import subprocess
import textwrap

import emadtest

SCRIPT = textwrap.dedent('''
    import os, signal, sys, time, weakref
    import torch
    from emaclient.torch import EMA

    mode, end, weights = sys.argv[1:4]
    device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
    if device == "fake":  # mirror mode's device path on tests/python/fakedevice.py
        import emaclient.torch, fakedevice
        fake = fakedevice.FakeBackend()
        emaclient.torch._backend = lambda d: fake
        device = "cpu"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3),
                                torch.nn.Linear(3, 2)).to(device)
    expected = {}

    def check(model, expected):
        # weakref.finalize runs the finalizers left at exit newest first: this
        # one, made before the EMA, runs after the EMA's own.
        same = all(torch.equal(t, expected[n]) for n, t in model.state_dict().items())
        print("training weights back" if same else "training weights NOT back", flush=True)
        if weights == "out":  # the update sent last reaches emad
            import emaclient
            with emaclient.Client() as c:
                for _ in range(600):  # emad applies it after the script let go
                    n = c.session_state(session)["updates"]
                    if n == 5:
                        break
                    time.sleep(0.05)
            print("updates", n, flush=True)

    class Witness:
        pass

    witness = Witness()
    weakref.finalize(witness, check, model, expected)
    ema = EMA(model, half_life="2ba", mode=mode)
    session = ema.session_name
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ema.attach_optimizer(opt)
    for i in range(4):
        x = torch.randn(8, 4, device=device)
        model(x).sum().backward(); opt.step(); opt.zero_grad(); ema.batch_end()
    ema.wait()
    expected.update({n: t.clone() for n, t in model.state_dict().items()})
    print("segment", ema.session.segment.name, flush=True)
    if weights == "out":
        ema.batch_end()  # an update in flight at the end
    if weights == "in":
        ema.eval_start()
        assert not all(torch.equal(t, expected[n]) for n, t in model.state_dict().items())
    if end == "exception":
        raise RuntimeError("the script fails")
    if end == "exit":
        sys.exit(3)
    if end == "sigterm":
        signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    print("end of script", flush=True)
''')

# The issue's script, verbatim: no close(), emad running.
NEW_USER = textwrap.dedent('''
    import torch
    from emaclient.torch import EMA
    m = torch.nn.Linear(4, 2); ema = EMA(m, half_life="10ba")
    opt = torch.optim.SGD(m.parameters(), lr=0.1); ema.attach_optimizer(opt)
    for i in range(3):
        m(torch.randn(2, 4)).sum().backward(); opt.step(); opt.zero_grad(); ema.batch_end()
    print("done")
''')

STATUS = {"normal": 0, "exception": 1, "exit": 3, "sigterm": 128 + signal.SIGTERM}


def env_for(d):
    env = dict(os.environ)
    env["EMAD_SOCKET"] = d.sock
    env["PYTHONPATH"] = os.path.join(emadtest.ROOT, "client", "python") + ":" + emadtest.HERE
    return env


class ExitWithoutClose(emadtest.EmadTestCase):

    def test_every_ending_gives_the_training_weights_back(self):
        self.run_cases([(mode, end, weights) for mode in ("shm", "mirror") for end in STATUS
                        for weights in ("out", "in")])

    def test_an_update_held_back_on_a_device_is_finished_first(self):
        """The device path of mirror mode (on the fake device): the update
        event held back until its copies are done is sent and claimed
        before the segment goes."""
        self.run_cases([("mirror", end, weights, "fake") for end in STATUS
                        for weights in ("out", "in")])

    def run_cases(self, cases):
        """Run SCRIPT with each case's arguments (mode, ending, EMA weights
        in or out[, device]) and check how each ended."""
        d = self.daemon()
        procs = []
        for case in cases:  # two at a time: the machine may have two cores
            procs.append((case, subprocess.Popen(
                [emadtest.PYTHON, "-c", SCRIPT] + list(case), env=env_for(d),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
            if len(procs) >= 2:
                self.finish(*procs.pop(0))
        while procs:
            self.finish(*procs.pop(0))

    def finish(self, case, proc):
        out, err = proc.communicate(timeout=120)
        with self.subTest(case=" ".join(case)):
            lines = out.splitlines()
            segs = [ln.split()[1] for ln in lines if ln.startswith("segment ")]
            self.leftovers.extra_segments.update(segs)
            self.assertEqual(proc.returncode, STATUS[case[1]], "stdout: %s\nstderr: %s" %
                             (out, err))
            self.assertIn("training weights back", lines, "stderr: %s" % err)
            if case[2] == "out":
                self.assertIn("updates 5", lines, "stderr: %s" % err)
            self.assertEqual(len(segs), 1, out)
            self.assertFalse(emadtest.shm_exists(segs[0]), "segment %s left" % segs[0])
            if case[1] == "exception":
                self.assertIn("RuntimeError: the script fails", err)
            else:
                self.assertNotIn("Traceback", err)

    def test_the_issue_script_exits_0(self):
        d = self.daemon()
        r = subprocess.run([emadtest.PYTHON, "-c", NEW_USER], env=env_for(d),
                           capture_output=True, text=True, timeout=120)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, "done\n", ""))


if __name__ == "__main__":
    import unittest
    unittest.main()
