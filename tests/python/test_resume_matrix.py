"""The resume matrix of issue #12: f32 / bf16 / f16 models, stopped at batch
STOP with a torch.save checkpoint and resumed to batch STEPS, through
  - "same":     emad restarted on its state directory (its state file);
  - "new":      a new emad on a fresh state directory (the checkpoint alone);
  - "new_legacy": the same from emaclient's checkpoint in Composer's legacy
                layout (state_dict(layout="legacy"));
  - "new_mirror": "new" with the EMA in mirror mode (host copies);
  - "current":  a checkpoint written as Composer 0.13+ writes it (by hand);
  - "legacy":   a checkpoint written as Composer < 0.13 writes it (by hand).
The final shadow must be bit-exact: equal to the uninterrupted run's where
the checkpoint holds the exact shadow (emaclient's own, and Composer's for
f32), else (Composer's f16/bf16 EMA, kept in the tensor's dtype) equal to
the fp32 average continued from the checkpoint's values (ReferenceEMA). Only
that last case warns that the shadow restarts from rounded weights.

ResumeCounts: the same resume from the checkpoint alone for an ema_start in
samples, whose marking event must carry the count."""

import os
import shutil
import tempfile
import unittest
import warnings

import torch
import torch.nn as nn

import emadtest
from emadtest import ReferenceEMA, first_difference

from emaclient.torch import EMA

STEPS = 20
STOP = 10
CONFIG = dict(half_life="10ba", ema_start="2ba")
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def make(dtype, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).to(dtype)


def step(model, opt, i):
    """An optimizer step on seeded gradients (torch's CPU matmul has no f16)."""
    g = torch.Generator().manual_seed(500 + i)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
    opt.step()


def run(ema, model, opt, first, last, ref=None, per_batch=None):
    """Batches first..last; per_batch: samples per batch, reported to the EMA."""
    for i in range(first, last):
        ema.batch_start(i)
        step(model, opt, i)
        if per_batch is None:
            ema.batch_end(i + 1)
        else:
            ema.batch_end(i + 1, samples=per_batch * (i + 1))
        if ref is not None:
            ref.batch_end(i + 1, 0)
    ema.wait()


def rounding_warnings(caught):
    return [w for w in caught if "exact fp32 shadow" in str(w.message)]


class ResumeMatrix(emadtest.EmadTestCase):

    def case(self, dtype_name, how):
        dtype = DTYPES[dtype_name]
        mode = "mirror" if how == "new_mirror" else "auto"
        tmp = tempfile.mkdtemp(prefix="emad-pytest-matrix-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = self.daemon(state_dir=os.path.join(tmp, "state"))

        model = make(dtype)
        ema = EMA(model, socket=d.sock, session="full", mode=mode, **CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STEPS)
            full = ema.shadow_state_dict()
        finally:
            ema.close()

        model = make(dtype)
        ema = EMA(model, socket=d.sock, session="part", mode=mode, **CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STOP)
            ck = ema.state_dict(layout="legacy" if how == "new_legacy" else "current")
            ema_weights = ema.ema_state_dict()
            if how == "current":
                ck = {"ema_model": ck["ema_model"], "ema_weights_active": False,
                      "ema_started": True, "repr": "EMA()"}
            elif how == "legacy":
                ck = {"ema_model": ema_weights, "training_model": ema.training_state_dict(),
                      "ema_weights_active": False, "ema_started": True}
            path = os.path.join(tmp, "ckpt.pt")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ck}, path)
        finally:
            ema.close()

        if how == "same":
            d.restart()
        else:
            d.stop()
            d = self.daemon(state_dir=os.path.join(tmp, "fresh"))
        saved = torch.load(path)
        model = make(dtype, seed=1)
        model.load_state_dict(saved["model"])
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        opt.load_state_dict(saved["opt"])
        ema = EMA(model, socket=d.sock, session="part", mode=mode, **CONFIG)
        try:
            ema.attach_optimizer(opt)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ema.load_state_dict(saved["ema"], batch=STOP)
            self.assertTrue(ema.started)
            composer_low = how in ("current", "legacy") and dtype != torch.float32
            self.assertEqual(len(rounding_warnings(caught)), 1 if composer_low else 0,
                             [str(w.message) for w in caught])
            if how.startswith("new") and dtype != torch.float32:
                # built through the temporary session, whose state file stays
                self.assertTrue(os.path.exists(os.path.join(
                    tmp, "fresh", "users", str(os.getuid()), "part%reseed.torch.emastate")))
            ref = None
            if how in ("current", "legacy") and dtype != torch.float32:
                ref = ReferenceEMA(model, **CONFIG)
                ref.started = True
                ref.shadow = {n: t.float().clone() for n, t in ema_weights.items()}
            run(ema, model, opt, STOP, STEPS, ref)
            want = full if ref is None else ref.shadow
            self.assertIsNone(first_difference(ema.shadow_state_dict(), want))
        finally:
            ema.close()


def _add(dtype_name, how):
    def test(self):
        self.case(dtype_name, how)
    test.__name__ = "test_%s_%s" % (dtype_name, how)
    setattr(ResumeMatrix, test.__name__, test)


for _d in DTYPES:
    for _h in ("same", "new", "new_legacy", "new_mirror", "current", "legacy"):
        _add(_d, _h)


class ResumeCounts(emadtest.EmadTestCase):
    """ema_start="30sp": emad refuses an update event without samples, so the
    event that marks the resumed session started carries the clock's count:
    the checkpoint's own (emaclient's "emad" entry) or load_state_dict's
    samples= (Composer's)."""

    CONFIG = dict(half_life="10ba", ema_start="30sp")
    PER_BATCH = 8  # the EMA starts at batch 4

    def checkpoint(self, d, dtype):
        model = make(dtype)
        ema = EMA(model, socket=d.sock, session="full", **self.CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STEPS, per_batch=self.PER_BATCH)
            full = ema.shadow_state_dict()
        finally:
            ema.close()
        model = make(dtype)
        ema = EMA(model, socket=d.sock, session="part", **self.CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STOP, per_batch=self.PER_BATCH)
            self.assertTrue(ema.started)
            # (copies: in shm mode the params live in the segment that close() removes)
            saved = {"model": {n: t.clone() for n, t in model.state_dict().items()},
                     "opt": opt.state_dict(),
                     "ema": ema.state_dict(save_in_emad=False)}
        finally:
            ema.close()
        return full, saved

    def resume(self, d, dtype, saved, ck, **kwargs):
        model = make(dtype, seed=1)
        model.load_state_dict(saved["model"])
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        opt.load_state_dict(saved["opt"])
        ema = EMA(model, socket=d.sock, session="part", **self.CONFIG)
        ema.attach_optimizer(opt)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ema.load_state_dict(ck, **kwargs)
        return ema, model, opt, [str(w.message) for w in caught]

    def test_exact_from_the_checkpoint_alone(self):
        for dtype in (torch.float32, torch.bfloat16):
            with self.subTest(dtype=dtype):
                d = self.daemon()
                full, saved = self.checkpoint(d, dtype)
                ema, model, opt, caught = self.resume(d, dtype, saved, saved["ema"])
                try:
                    self.assertEqual(caught, [])
                    self.assertTrue(ema.started)
                    run(ema, model, opt, STOP, STEPS, per_batch=self.PER_BATCH)
                    self.assertIsNone(first_difference(ema.shadow_state_dict(), full))
                finally:
                    ema.close()
                d.stop()

    def test_composer_checkpoint_with_and_without_the_count(self):
        d = self.daemon()
        _, saved = self.checkpoint(d, torch.float32)
        ck = {"ema_model": saved["ema"]["ema_model"], "ema_weights_active": False,
              "ema_started": True}
        ema, _, _, caught = self.resume(d, torch.float32, saved, ck, batch=STOP,
                                        samples=self.PER_BATCH * STOP)
        try:
            self.assertEqual(caught, [])
            self.assertTrue(ema.started)
        finally:
            ema.close()
        # Without it emad cannot start the session: a warning says how to fix it.
        ema, _, _, caught = self.resume(d, torch.float32, saved, ck, batch=STOP)
        try:
            self.assertFalse(ema.started)
            self.assertEqual(len(caught), 1, caught)
            self.assertIn("samples=", caught[0])
            self.assertIn("time.samples: missing", caught[0])
        finally:
            ema.close()


if __name__ == "__main__":
    unittest.main()


class ReseedLeavesOthersAlone(emadtest.EmadTestCase):
    """The temporary session and state file of an exact resume are out of
    the way of the user's own: a kept session named "part.reseed", and the
    state file it saved, come through a resume of "part" untouched."""

    def test_a_session_named_like_the_old_temporary_one_survives(self):
        tmp = tempfile.mkdtemp(prefix="emad-pytest-reseed-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = self.daemon(state_dir=os.path.join(tmp, "state"))
        other = make(torch.bfloat16, seed=3)
        bystander = EMA(other, socket=d.sock, session="part.reseed", **CONFIG)
        opt = bystander.attach_optimizer(torch.optim.SGD(other.parameters(), lr=0.05))
        run(bystander, other, opt, 0, 4)
        kept = bystander.state_dict()  # saves "part.reseed.torch" in emad
        kept_shadow = bystander.shadow_state_dict()
        bystander.close(keep=True)
        files = os.path.join(tmp, "state", "users", str(os.getuid()))
        before = open(os.path.join(files, "part.reseed.torch.emastate"), "rb").read()

        model = make(torch.bfloat16)
        ema = EMA(model, socket=d.sock, session="part", **CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STOP)
            ck = ema.state_dict(save_in_emad=False)  # no state file: the exact reseed
            saved = {n: t.clone() for n, t in model.state_dict().items()}
        finally:
            ema.close()
        model = make(torch.bfloat16, seed=1)
        model.load_state_dict(saved)
        ema = EMA(model, socket=d.sock, session="part", **CONFIG)
        try:
            ema.load_state_dict(ck, batch=STOP)
            self.assertTrue(ema.started)
        finally:
            ema.close()
        self.assertEqual(open(os.path.join(files, "part.reseed.torch.emastate"), "rb").read(),
                         before)
        other = make(torch.bfloat16, seed=3)
        back = EMA(other, socket=d.sock, session="part.reseed", resume=True, **CONFIG)
        try:
            self.assertIsNone(first_difference(back.shadow_state_dict(), kept_shadow))
            self.assertEqual(back.state()["updates"], kept["emad"]["updates"])
        finally:
            back.close()
