"""Composer parity of emaclient.torch.EMA (docs/composer.md): checkpoints in
both of Composer's layouts, written by hand as Composer writes them (Composer
is not installed here), strict loading, ema_start in "dur" and "ep",
parameters frozen at the start, get_ema_model / get_training_model, a model
moved after EMA(), and the table of deliberate differences."""

import os
import unittest
import warnings

import torch
import torch.nn as nn

import emadtest
from emadtest import ROOT, first_difference, model_state

import emaclient
from emaclient.torch import EMA


def small_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)).to(dtype)


def step(model, opt, i):
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(16, 4, generator=g).to(next(model.parameters()).dtype)
    opt.zero_grad()
    model(x).float().pow(2).mean().backward()
    opt.step()




class Composer(emadtest.EmadTestCase):

    def setUp(self):
        super().setUp()
        self.d = self.daemon()

    def ema(self, model, **kw):
        kw.setdefault("half_life", "4ba")
        e = EMA(model, socket=self.d.sock, **kw)
        self.addCleanup(e.close)
        return e

    def trained(self, steps=6, **kw):
        """A model, its optimizer and an EMA after `steps` batches."""
        model = small_model()
        ema = self.ema(model, **kw)
        opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        for i in range(steps):
            step(model, opt, i)
            ema.batch_end()
        ema.wait()
        return model, opt, ema

    # ---- item 2: Composer's checkpoint layouts ----

    def composer_current(self, model, ema_weights, training, active, started=True):
        """A Composer >= 0.13 EMA state dict: ema_model holds the weights that
        are not in the model (the EMA's, or the training ones while swapped)."""
        held = training if active else ema_weights
        return {"repr": "EMA(half_life=4ba)",
                "ema_model": {"named_parameters_dict": {n: held[n].clone() for n, p in
                                                        model.named_parameters()
                                                        if p.requires_grad},
                              "named_buffers_dict": {n: held[n].clone() for n, _ in
                                                     model.named_buffers()}},
                "ema_weights_active": active, "ema_started": started}

    def load_current(self, active):
        model, _, ema = self.trained()
        ema_weights, training = ema.ema_state_dict(), model_state(model)
        ck = self.composer_current(model, ema_weights, training, active)
        model2 = small_model(seed=1)
        model2.load_state_dict(ema_weights if active else training)  # the model's checkpoint
        ema2 = self.ema(model2)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ema2.load_state_dict(ck, batch=6)
        self.assertEqual([str(x.message) for x in w], [])
        self.assertTrue(ema2.started)
        self.assertFalse(ema2.active)
        self.assertEqual(ema2.state()["last_time"]["batch"], 6)
        self.assertIsNone(first_difference(ema2.ema_state_dict(), ema_weights))
        self.assertIsNone(first_difference(model_state(model2), training))

    def test_current_composer_layout_loads(self):
        self.load_current(active=False)

    def test_current_composer_layout_taken_with_the_ema_weights_in_loads(self):
        self.load_current(active=True)

    def test_legacy_composer_layout_ignores_a_stale_training_model(self):
        model, _, ema = self.trained()
        ema_weights, training = ema.ema_state_dict(), model_state(model)
        stale = {n: torch.zeros_like(t) for n, t in training.items()}
        ck = {"ema_model": ema_weights, "training_model": stale,
              "ema_weights_active": False, "ema_started": True}
        model2 = small_model(seed=1)
        model2.load_state_dict(training)
        ema2 = self.ema(model2)
        ema2.load_state_dict(ck, batch=6)
        self.assertIsNone(first_difference(ema2.ema_state_dict(), ema_weights))
        self.assertIsNone(first_difference(model_state(model2), training))

    def test_state_dict_writes_the_current_layout_by_default_and_the_legacy_on_request(self):
        model, _, ema = self.trained()
        sd = ema.state_dict()
        self.assertNotIn("training_model", sd)
        self.assertEqual(set(sd["ema_model"]), {"named_parameters_dict", "named_buffers_dict"})
        self.assertEqual(set(sd["ema_model"]["named_buffers_dict"]),
                         {n for n, _ in model.named_buffers()})
        legacy = ema.state_dict(layout="legacy")
        self.assertEqual(set(legacy["ema_model"]), set(model.state_dict()))
        self.assertIsNone(first_difference(legacy["training_model"], model.state_dict()))
        with self.assertRaises(ValueError):
            ema.state_dict(layout="0.12")

    def test_a_partial_checkpoint_raises_with_strict_and_warns_without(self):
        model, _, ema = self.trained()
        ck = ema.state_dict()
        del ck["ema_model"]["named_buffers_dict"]["1.running_mean"]
        ck["ema_model"]["named_parameters_dict"]["9.weight"] = torch.zeros(1)
        model2 = small_model()
        ema2 = self.ema(model2)
        with self.assertRaisesRegex(KeyError, r"1\.running_mean.*9\.weight"):
            ema2.load_state_dict(ck, strict=True)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ema2.load_state_dict(ck)  # Composer's default: strict=False
        self.assertTrue(any("1.running_mean" in str(x.message) for x in w), w)
        self.assertTrue(ema2.started)

    def test_no_ema_weights_in_any_layout_is_an_error(self):
        ema = self.ema(small_model())
        for bad in ({"ema_started": True}, {"ema_model": {"weights": [1, 2]}}):
            with self.assertRaisesRegex(ValueError, "neither of Composer's layouts"):
                ema.load_state_dict(bad)

    # ---- item 3: ema_start in dur / ep ----

    def test_dur_start_without_a_duration_warns_at_the_first_update(self):
        ema = self.ema(small_model(), half_life="10ba", ema_start="0.5dur")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            for _ in range(10):
                ema.batch_end()
            ema.wait()
        self.assertFalse(ema.started)
        msgs = [str(x.message) for x in w if "has not started" in str(x.message)]
        self.assertEqual(len(msgs), 1, [str(x.message) for x in w])
        self.assertIn("max_duration", msgs[0])

    def test_dur_start_with_max_duration_starts_halfway(self):
        ema = self.ema(small_model(), half_life="10ba", ema_start="0.5dur", max_duration="10ba")
        for b in range(1, 11):
            r = ema.batch_end(wait=True)
            self.assertEqual(r.started, b >= 5, b)
        self.assertEqual(ema.state()["last_time"]["duration"], 1.0)

    def test_ep_start_without_epochs_warns_at_eval(self):
        ema = self.ema(small_model(), half_life="10ba", ema_start="1ep")
        for _ in range(10):
            ema.batch_end()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with ema.eval():
                pass
        self.assertFalse(ema.started)
        self.assertTrue(any("epoch_end()" in str(x.message) for x in w), w)

    def test_ep_start_with_epoch_end_starts(self):
        ema = self.ema(small_model(), half_life="10ba", ema_start="1ep")
        for _ in range(5):
            ema.batch_end()
        ema.epoch_end()
        r = ema.batch_end(wait=True)
        self.assertTrue(r.started)

    # ---- item 4: parameters frozen at the start ----

    def frozen_run(self, include_frozen):
        model = small_model()
        for p in model[2].parameters():
            p.requires_grad_(False)
        ema = self.ema(model, include_frozen=include_frozen)
        opt = ema.attach_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        for i in range(3):
            step(model, opt, i)
            ema.batch_end()
        for p in model[2].parameters():  # a gradual unfreeze
            p.requires_grad_(True)
        for i in range(3, 8):
            step(model, opt, i)
            ema.batch_end()
        ema.wait()
        live = model_state(model)
        shadow = ema.shadow_state_dict()
        with ema.eval():
            inside = model_state(model)
        self.assertIsNone(first_difference(model_state(model), live))
        return ema, live, shadow, inside

    def test_frozen_at_the_start_keeps_its_live_weights_in_eval(self):
        ema, live, shadow, inside = self.frozen_run(include_frozen=False)
        for n in ("2.weight", "2.bias"):
            self.assertTrue(torch.equal(inside[n], live[n]), n)
        self.assertTrue(torch.equal(inside["0.weight"], shadow["0.weight"]))
        self.assertFalse(torch.equal(inside["0.weight"], live["0.weight"]))
        sd = ema.state_dict()
        self.assertEqual(set(sd["ema_model"]["named_parameters_dict"]), {"0.weight", "0.bias",
                                                                         "1.weight", "1.bias"})
        self.assertEqual(sd["emad"]["excluded"], ["2.bias", "2.weight"])
        self.assertTrue(torch.equal(ema.ema_state_dict()["2.weight"], live["2.weight"]))

    def test_include_frozen_averages_them_too(self):
        ema, live, shadow, inside = self.frozen_run(include_frozen=True)
        self.assertTrue(torch.equal(inside["2.weight"], shadow["2.weight"]))
        self.assertFalse(torch.equal(inside["2.weight"], live["2.weight"]))
        self.assertEqual(len(ema.state_dict()["ema_model"]["named_parameters_dict"]), 6)

    def test_frozen_set_survives_a_checkpoint(self):
        ema, live, _, _ = self.frozen_run(include_frozen=False)
        ck = ema.state_dict(save_in_emad=False)
        model2 = small_model(seed=3)
        model2.load_state_dict(live)
        ema2 = self.ema(model2)
        ema2.load_state_dict(ck)
        with ema2.eval():
            self.assertTrue(torch.equal(model2[2].weight, live["2.weight"]))

    # ---- get_ema_model / get_training_model ----

    def test_get_ema_model_and_get_training_model(self):
        model, _, ema = self.trained()
        other = small_model(seed=5)
        self.assertIs(ema.get_ema_model(other), other)
        self.assertIsNone(first_difference(model_state(other), ema.ema_state_dict()))
        with self.assertRaises(ValueError):
            ema.get_training_model(other)
        training = model_state(model)
        ema.checkpoint()
        with self.assertRaises(ValueError):
            ema.get_ema_model()
        ema.get_training_model(other)
        self.assertIsNone(first_difference(model_state(other), training))
        ema.batch_start()
        self.assertIsNone(first_difference(model_state(model), training))

    # ---- the model moved after EMA() ----

    def test_model_converted_after_ema_says_what_to_do(self):
        model, _, ema = self.trained(steps=2)
        model.double()
        with self.assertRaises(emaclient.Error) as cm:
            ema.batch_end()
        self.assertEqual(cm.exception.code, "USAGE")
        self.assertIn("close()", cm.exception.message)
        self.assertIn("load_state_dict", cm.exception.message)

    # ---- the table of deliberate differences ----

    def test_half_life_0ba_means_no_averaging(self):
        model, _, ema = self.trained(steps=3, half_life="0ba")
        self.assertEqual(ema.state()["smoothing"], 0.0)
        self.assertIsNone(first_difference(ema.ema_state_dict(), model_state(model)))

    def test_integer_buffers_are_copied(self):
        model, _, ema = self.trained(steps=3)
        self.assertEqual(ema.ema_state_dict()["1.num_batches_tracked"].item(), 3)

    def test_differences_from_composer_are_documented(self):
        with open(os.path.join(ROOT, "docs", "composer.md"), encoding="utf-8") as f:
            doc = f.read()
        rows = [line for line in doc.splitlines() if line.startswith("| ")]
        for needle in ("lerp", "integer", "half_life='0ba'", "smoothing", "swapped in",
                       "frozen", "strict", "max_duration"):
            self.assertTrue(any(needle in r for r in rows), "no table row mentions %r" % needle)
        with open(os.path.join(ROOT, "docs", "clients.md"), encoding="utf-8") as f:
            self.assertIn("composer.md", f.read())


if __name__ == "__main__":
    unittest.main()
