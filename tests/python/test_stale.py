"""A parameter or module replaced after EMA() was made is not tracked stale
in silence: the next update event and the next swap (in or out) raise a USAGE error
naming the tensor and saying what to do, in shm and mirror mode."""

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

import emadtest
from emadtest import make_model

import emaclient
from emaclient.torch import EMA


class Identity(nn.Module):
    def forward(self, x):
        return x


def reinit_head(model):
    model.fc = nn.Linear(model.fc.in_features, model.fc.out_features)


def assign_parameter(model):
    model.fc.weight = nn.Parameter(model.fc.weight.detach().clone())


def rebind_like_assign(model):
    # what load_state_dict(assign=True) and conversions do
    model.fc._parameters["bias"] = nn.Parameter(model.fc.bias.detach() * 2)


def parametrization(model):
    parametrize.register_parametrization(model.fc, "weight", Identity())


def replace_buffer(model):
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    bn.running_mean = torch.zeros(bn.running_mean.numel() + 1)


CHANGES = {"reinit_head": (reinit_head, "fc.weight"),
           "assign_parameter": (assign_parameter, "fc.weight"),
           "rebind_like_assign": (rebind_like_assign, "fc.bias"),
           "parametrization": (parametrization, "fc.weight"),
           "replace_buffer": (replace_buffer, "running_mean")}


class StaleParameters(emadtest.EmadTestCase):

    def check(self, mode, change, name, when):
        d = self.daemon()
        model = make_model(0)
        with EMA(model, socket=d.sock, session="stale", mode=mode, half_life="2ba") as ema:
            ema.batch_end(1, wait=True)
            seg = ema.session.segment
            lo, hi = seg.base, seg.base + seg.nbytes
            registered = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
            if when in ("swap_out", "eval_end", "swap_train"):
                # the EMA weights are in when the model changes: the swap out is refused
                # before it writes the training weights into a tensor nobody trains
                (ema.eval_start if when == "eval_end" else ema.checkpoint)()
                self.assertTrue(ema.active)
            change(model)
            with self.assertRaises(emaclient.Error) as cm:
                if when == "update":
                    ema.batch_end(2)
                elif when == "swap":
                    ema.eval_start()
                elif when == "swap_out":
                    ema.batch_start()
                elif when == "eval_end":
                    ema.eval_end()
                else:
                    ema.swap("train")
            self.assertEqual(cm.exception.code, "USAGE")
            self.assertIn(name, cm.exception.message)
            self.assertIn("replaced after EMA() was made", cm.exception.message)
            self.assertIn("close() it and make a new one", cm.exception.message)
            # nothing was sent: the weights in the model are where they were
            self.assertEqual(ema.active, when not in ("update", "swap"))
            self.assertEqual(ema.state()["updates"], 1)
        # close() gave the registered parameters their own memory and values back
        for n, (p, value) in registered.items():
            self.assertFalse(lo <= p.data_ptr() < hi, n)
            self.assertTrue(torch.equal(p.detach(), value), n)

    def test_replaced_tensors_are_refused(self):
        for mode in ("shm", "mirror"):
            for what, (change, name) in CHANGES.items():
                for when in ("update", "swap", "swap_out", "eval_end", "swap_train"):
                    with self.subTest(mode=mode, change=what, at=when):
                        self.check(mode, change, name, when)

    def test_the_untouched_model_still_works(self):
        d = self.daemon()
        model = make_model(0)
        with EMA(model, socket=d.sock, session="fine", mode="mirror", half_life="2ba") as ema:
            model.fc.weight.data.mul_(0.5)  # in place: the same Parameter
            self.assertEqual(ema.batch_end(1, wait=True).action, "start+update")
            with ema.eval():
                self.assertTrue(ema.active)


if __name__ == "__main__":
    import unittest
    unittest.main()
