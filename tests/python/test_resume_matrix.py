"""The resume matrix of issue #12: f32 / bf16 / f16 models, stopped at batch
STOP with a torch.save checkpoint and resumed to batch STEPS, through
  - "same":     emad restarted on its state directory (its state file);
  - "new":      a new emad on a fresh state directory (the checkpoint alone);
  - "current":  a checkpoint written as Composer 0.13+ writes it (by hand);
  - "legacy":   a checkpoint written as Composer < 0.13 writes it (by hand).
The final shadow must be bit-exact: equal to the uninterrupted run's where
the checkpoint holds the exact shadow (emaclient's own, and Composer's for
f32), else (Composer's f16/bf16 EMA, kept in the tensor's dtype) equal to
the fp32 average continued from the checkpoint's values (ReferenceEMA)."""

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


def run(ema, model, opt, first, last, ref=None):
    for i in range(first, last):
        ema.batch_start(i)
        step(model, opt, i)
        ema.batch_end(i + 1)
        if ref is not None:
            ref.batch_end(i + 1, 0)
    ema.wait()


class ResumeMatrix(emadtest.EmadTestCase):

    def case(self, dtype_name, how):
        dtype = DTYPES[dtype_name]
        tmp = tempfile.mkdtemp(prefix="emad-pytest-matrix-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = self.daemon(state_dir=os.path.join(tmp, "state"))

        model = make(dtype)
        ema = EMA(model, socket=d.sock, session="full", **CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STEPS)
            full = ema.shadow_state_dict()
        finally:
            ema.close()

        model = make(dtype)
        ema = EMA(model, socket=d.sock, session="part", **CONFIG)
        try:
            opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.05))
            run(ema, model, opt, 0, STOP)
            ck = ema.state_dict()
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
        ema = EMA(model, socket=d.sock, session="part", **CONFIG)
        try:
            ema.attach_optimizer(opt)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ema.load_state_dict(saved["ema"], batch=STOP)
            self.assertTrue(ema.started)
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
    if dtype_name != "f32" and how == "new":
        # issue #12 item 5, not done: without emad's state file the f16/bf16
        # shadow restarts from the checkpoint's rounded EMA weights, although
        # the checkpoint's "emad" entry holds the exact fp32 shadow.
        test = unittest.expectedFailure(test)
    setattr(ResumeMatrix, test.__name__, test)


for _d in DTYPES:
    for _h in ("same", "new", "current", "legacy"):
        _add(_d, _h)


if __name__ == "__main__":
    unittest.main()
