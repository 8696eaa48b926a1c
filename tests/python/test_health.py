"""The health signals from Python: EMA.health() and Session.health() after updates with NaN
params (docs/running.md "Health"), and the on_nonfinite and health options of register."""

import math
import unittest

import torch

import emadtest

import emaclient
from emaclient.torch import EMA


class Health(emadtest.EmadTestCase):

    def test_ema_health_reports_nonfinite_params_and_keeps_the_shadow(self):
        d = self.daemon()
        model = torch.nn.Linear(4, 3)
        with EMA(model, socket=d.sock, session="health", smoothing=0.5) as ema:
            ema.batch_end(wait=True)  # the start: shadow := params
            with torch.no_grad():
                model.weight.add_(0.5)
            ema.batch_end(wait=True)
            h = ema.health()
            self.assertTrue(h["enabled"])
            self.assertEqual(h["on_nonfinite"], "skip")
            self.assertEqual(h["updates_checked"], 1)
            self.assertEqual(h["alarms"], [])
            self.assertIsNone(h["last_nonfinite"])
            self.assertGreater(h["distance"], 0)

            before = ema.shadow_state_dict()
            with torch.no_grad():
                model.weight[1, 2] = float("nan")
                model.bias.add_(1.0)
            ema.batch_end(wait=True)
            h = ema.health()
            self.assertEqual(h["alarms"], ["nonfinite"])
            self.assertEqual(h["nonfinite_total"], 1)
            self.assertEqual(h["last_nonfinite"]["count"], 1)
            self.assertEqual(h["last_nonfinite"]["tensor"], "weight")
            self.assertTrue(math.isfinite(h["distance"]))
            after = ema.shadow_state_dict()
            # The NaN's shadow element keeps its bits; the others moved.
            self.assertEqual(after["weight"][1, 2].view(torch.int32).item(),
                             before["weight"][1, 2].view(torch.int32).item())
            self.assertFalse(torch.isnan(after["weight"]).any())
            self.assertFalse(torch.equal(after["bias"], before["bias"]))
            self.assertEqual(ema.session.nonfinite(), (1, "weight"))
            self.assertEqual(ema.session.health(), h)

    def test_apply_policy_and_health_off(self):
        d = self.daemon()
        model = torch.nn.Linear(2, 2)
        with EMA(model, socket=d.sock, session="apply", smoothing=0.5,
                 on_nonfinite="apply") as ema:
            ema.batch_end(wait=True)
            with torch.no_grad():
                model.weight[0, 0] = float("inf")
            ema.batch_end(wait=True)
            # inf - 0.5 * (inf - s) is NaN: poisoned either way
            self.assertFalse(torch.isfinite(ema.shadow_state_dict()["weight"][0, 0]))
            h = ema.health()
            self.assertEqual(h["on_nonfinite"], "apply")
            self.assertEqual(h["alarms"], ["nonfinite"])
        with EMA(torch.nn.Linear(2, 2), socket=d.sock, session="off", smoothing=0.5,
                 health=False) as ema:
            ema.batch_end(wait=True)
            ema.batch_end(wait=True)
            h = ema.health()
            self.assertFalse(h["enabled"])
            self.assertEqual(h["updates_checked"], 0)
            self.assertIsNone(h["distance"])
        with self.assertRaises(emaclient.Error) as cm:
            EMA(torch.nn.Linear(2, 2), socket=d.sock, session="bad", on_nonfinite="zero")
        self.assertEqual(cm.exception.code, "BADARG")


if __name__ == "__main__":
    unittest.main()
