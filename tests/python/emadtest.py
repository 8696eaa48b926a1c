"""Shared pieces of the Python tests: emad as a subprocess, leftover checks,
a small CNN with synthetic data, and the in-process reference EMA.

Every test starts its own emad (from $EMAD_BIN, default build/emad) on a
socket in a private temporary directory, with --workers 2, and stops it
with SIGTERM (exit status 0 expected). The leftover check then asserts that
the emad process is gone, the directory removed, and that no shared-memory
object this test made (segments, recorded as they are created; shadows,
named in emad's log) is left in /dev/shm.
"""

import copy
import gc
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import emaclient  # noqa: E402

torch.set_num_threads(1)  # deterministic kernels; emad's 2 workers get the other core

EMAD_BIN = os.environ.get("EMAD_BIN") or os.path.join(ROOT, "build", "emad")
EMACTL_BIN = os.environ.get("EMACTL_BIN") or os.path.join(ROOT, "build", "emactl")
PYTHON = sys.executable
START_TIMEOUT = 15.0

# Every segment made in this process, by name (to check none is left behind).
SEGMENTS = set()
_segment_init = emaclient.Segment.__init__


def _recording_init(self, *args, **kwargs):
    _segment_init(self, *args, **kwargs)
    SEGMENTS.add(self.name)


emaclient.Segment.__init__ = _recording_init


def shm_exists(name):
    return os.path.exists("/dev/shm/" + name.lstrip("/"))


class Daemon:
    """emad on a private socket. state_dir: keep it across restarts."""

    def __init__(self, state_dir=None):
        self.dir = tempfile.mkdtemp(prefix="emad-pytest-")
        self.sock = os.path.join(self.dir, "emad.sock")
        self.state_dir = state_dir or os.path.join(self.dir, "state")
        self.log = os.path.join(self.dir, "emad.log")
        self.proc = None
        self.shadows = set()  # shadow objects emad reported, from its logs
        self.pids = []        # every emad started, whose shadows are /emad-shadow-<pid>-*
        self.before = set()   # /dev/shm names from before each start: a pid may be reused
        self.exit_codes = []

    def start(self):
        self.before |= set(os.listdir("/dev/shm"))
        err = open(os.path.join(self.dir, "emad.stderr"), "ab")
        try:
            self.proc = subprocess.Popen(
                [EMAD_BIN, "--socket", self.sock, "--state-dir", self.state_dir,
                 "--workers", "2", "--log-file", self.log, "--log-level", "info"]
                # EMAD_TEST_ARGS: options for every emad a test starts, as the C
                # harness takes them (e.g. --inline-max 0 to keep every update on the
                # workers when rerunning a test by hand).
                + os.environ.get("EMAD_TEST_ARGS", "").split(),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            self.pids.append(self.proc.pid)
        finally:
            err.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.sock)
                return self
            except OSError:
                pass
            finally:
                s.close()
            if self.proc.poll() is not None:
                raise RuntimeError("emad exited during startup with status %d: %s" %
                                   (self.proc.returncode, self.stderr()))
            if time.monotonic() > deadline:
                raise RuntimeError("emad did not listen on %s in time" % self.sock)
            time.sleep(0.01)

    def stderr(self):
        if getattr(self, "_stderr", None) is not None:
            return self._stderr
        try:
            with open(os.path.join(self.dir, "emad.stderr"), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _collect_shadows(self):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                self.shadows |= set(re.findall(r"(/emad-shadow-[0-9A-Za-z-]+)", f.read()))
        except OSError:
            pass
        # emad does not log every shadow's name, but names them after its pid
        # (daemon/shm.c): a killed emad's are found here, not only in the log.
        for pid in self.pids:
            prefix = "emad-shadow-%d-" % pid
            self.shadows |= {"/" + n for n in os.listdir("/dev/shm")
                             if n.startswith(prefix) and n not in self.before}

    def stop(self):
        """SIGTERM; returns emad's exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "killed after SIGTERM timed out"
        self.proc = None
        self._collect_shadows()
        self.exit_codes.append(rc)
        return rc

    def kill(self, keep_shadows=False):
        """SIGKILL, as a crash: emad cannot remove its shadow objects then, so
        remove them here (an administrator's job after a crash), unless
        keep_shadows (for a restart that takes them back)."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self._collect_shadows()
        if keep_shadows:
            return
        for n in self.shadows:
            try:
                os.unlink("/dev/shm/" + n.lstrip("/"))
            except OSError:
                pass

    def restart(self):
        self.stop()
        return self.start()

    def cleanup(self):
        self.stop()
        self._stderr = self.stderr()
        shutil.rmtree(self.dir, ignore_errors=True)


class LeftoverChecker:
    """Daemons of a test and what they must not leave behind."""

    def __init__(self):
        self.daemons = []
        self.segments_before = set(SEGMENTS)
        self.extra_segments = set()  # named by subprocesses

    def daemon(self, state_dir=None):
        d = Daemon(state_dir)
        self.daemons.append(d)
        return d.start()

    def finish(self):
        problems = []
        for d in self.daemons:
            d.cleanup()
            err = d.stderr()
            if any(rc != 0 for rc in d.exit_codes):
                problems.append("emad exited with %r (stderr: %s)" % (d.exit_codes, err))
            elif re.search(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                           r"WARNING: ThreadSanitizer", err):
                problems.append("sanitizer report from emad: %s" % err[:4000])
            if os.path.exists(d.dir):
                problems.append("temporary directory %s left" % d.dir)
        gc.collect()
        names = (SEGMENTS - self.segments_before) | self.extra_segments
        for d in self.daemons:
            names |= d.shadows
        left = sorted(n for n in names if shm_exists(n))
        if left:
            problems.append("shared-memory objects left in /dev/shm: %s" % ", ".join(left))
        for n in left:  # do not let one failure cascade into the next tests
            try:
                os.unlink("/dev/shm/" + n.lstrip("/"))
            except OSError:
                pass
        return problems


class EmadTestCase(unittest.TestCase):
    """A test with its own emad daemons and a leftover check after it."""

    def setUp(self):
        self.leftovers = LeftoverChecker()
        self.addCleanup(self._check_leftovers)

    def _check_leftovers(self):
        problems = self.leftovers.finish()
        if problems:
            self.fail("; ".join(problems))

    def daemon(self, state_dir=None):
        return self.leftovers.daemon(state_dir)


class EmadClassTestCase(unittest.TestCase):
    """Tests sharing one run made in setUpClass (cls.run_once)."""

    @classmethod
    def setUpClass(cls):
        cls.leftovers = LeftoverChecker()
        try:
            cls.run_once()
        except BaseException:
            cls.problems = cls.leftovers.finish()
            raise
        cls.problems = cls.leftovers.finish()

    def test_zz_nothing_left_behind(self):
        """emad stopped with status 0; no segment, shadow or temp dir left."""
        self.assertEqual(self.problems, [])


# ---- bits ----

INT_OF = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
          torch.float16: torch.int16}


def bits(t):
    """The raw bits of a tensor (floats reinterpreted as integers)."""
    t = t.detach().contiguous()
    return t.view(INT_OF[t.dtype]) if t.dtype in INT_OF else t


def bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def first_difference(a, b):
    """None when a and b (dicts of tensors) are equal bit for bit, else a
    message naming the first tensor that differs."""
    if set(a) != set(b):
        return "keys differ: %s" % sorted(set(a) ^ set(b))
    for k in a:
        if not bits_equal(a[k], b[k]):
            if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape:
                return "%s: %s%s vs %s%s" % (k, a[k].dtype, tuple(a[k].shape), b[k].dtype,
                                             tuple(b[k].shape))
            diff = (bits(a[k]) != bits(b[k])).nonzero()
            i = tuple(diff[0].tolist())
            return "%s: %d elements differ, first at %s: %r vs %r" % (
                k, len(diff), i, a[k][i].item(), b[k][i].item())
    return None


def model_state(model):
    """{name: clone} of every parameter and buffer."""
    out = {n: p.detach().clone() for n, p in model.named_parameters()}
    out.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return out


# ---- the reference ----

def parse_time(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ba|ep|dur)", s)
    return (float(m.group(1)) if m.group(2) == "dur" else int(m.group(1))), m.group(2)


class ReferenceEMA:
    """Composer's EMA semantics (docs/protocol.md "EMA semantics"), written with torch ops on the
    model in this process: the shadow is fp32 (fp64 for f64) and is updated
    with shadow.lerp_(param_as_float, 1 - smoothing), the weight a Python
    float that torch rounds once to float32 for f32 tensors; integer tensors
    are copied; swap-in casts the shadow to the param's dtype."""

    def __init__(self, model, half_life="1000ba", smoothing=None, update_interval=None,
                 ema_start="0.0dur"):
        if smoothing is not None:
            self.interval, self.unit = parse_time(update_interval or "1ba")
            self.smoothing = smoothing
        else:
            hl, hl_unit = parse_time(half_life)
            self.interval, self.unit = parse_time(update_interval or "1" + hl_unit)
            self.smoothing = 2 ** (-(self.interval / hl)) if hl else 0.0
        self.w = 1.0 - self.smoothing
        self.start_value, self.start_unit = parse_time(ema_start)
        self.model = model
        self.started = False
        self.active = False
        self.updates = 0
        self.stash = None
        self.shadow = {n: self._widen(t) for n, t in self._tensors()}

    def _tensors(self):
        yield from self.model.named_parameters()
        yield from self.model.named_buffers()

    @staticmethod
    def _widen(t):
        t = t.detach()
        if t.dtype in (torch.float16, torch.bfloat16, torch.float32):
            return t.float().clone()
        return t.clone()

    def _reached(self, batch, epoch, duration):
        if self.start_unit == "ba":
            return batch >= self.start_value
        if self.start_unit == "ep":
            return epoch >= self.start_value
        if duration is None:
            return self.start_value == 0
        return duration >= self.start_value

    def _update_event(self, unit, batch, epoch, duration):
        if unit != self.unit:
            return
        if not self.started and self._reached(batch, epoch, duration):
            self.shadow = {n: self._widen(t) for n, t in self._tensors()}
            self.started = True
        now = batch if unit == "ba" else epoch
        if self.started and now % self.interval == 0:
            with torch.no_grad():
                for n, t in self._tensors():
                    s = self.shadow[n]
                    if s.dtype.is_floating_point:
                        s.lerp_(t.detach().to(s.dtype), self.w)
                    else:
                        s.copy_(t.detach())
            self.updates += 1

    def batch_end(self, batch, epoch, duration=None):
        self._update_event("ba", batch, epoch, duration)

    def epoch_end(self, batch, epoch, duration=None):
        self._update_event("ep", batch, epoch, duration)

    def eval_start(self):
        if self.started and not self.active:
            self.stash = {n: t.detach().clone() for n, t in self._tensors()}
            with torch.no_grad():
                for n, t in self._tensors():
                    t.copy_(self.shadow[n].to(t.dtype))
            self.active = True

    checkpoint = eval_start

    def eval_end(self):
        if self.active:
            with torch.no_grad():
                for n, t in self._tensors():
                    t.copy_(self.stash[n])
            self.stash = None
            self.active = False

    batch_start = eval_end


# ---- a small CNN on synthetic data ----

class SmallCNN(nn.Module):
    """Two convolutions with BatchNorm (so the buffers include the int64
    num_batches_tracked) and a linear head; 4 classes of 3x8x8 images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def make_model(seed=0):
    torch.manual_seed(seed)
    return SmallCNN()


_TEMPLATES = {}


def _templates(seed):
    if seed not in _TEMPLATES:
        g = torch.Generator().manual_seed(seed)
        _TEMPLATES[seed] = torch.randn(4, 3, 8, 8, generator=g)
    return _TEMPLATES[seed]


def make_batch(step, size=32, seed=0, noise=1.5):
    """Batch `step` of the synthetic task: a class template plus noise."""
    g = torch.Generator().manual_seed(100003 * (seed + 1) + step)
    y = torch.randint(0, 4, (size,), generator=g)
    x = _templates(seed)[y] + noise * torch.randn(size, 3, 8, 8, generator=g)
    return x, y


def eval_set(seed=0):
    return make_batch(10 ** 6, size=256, seed=seed)


def accuracy(model, data):
    x, y = data
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train(was)
    return (logits.argmax(dim=1) == y).float().mean().item(), logits


def train_step(model, opt, step, seed=0):
    x, y = make_batch(step, seed=seed)
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def make_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def clone_model(model):
    return copy.deepcopy(model)
