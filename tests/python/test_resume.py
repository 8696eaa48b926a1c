"""Checkpoint and resume: stop at step 50 (torch.save of the model, the
optimizer and ema.state_dict(); close everything; restart emad), resume to
step 100: the final EMA equals the uninterrupted run's, bit for bit.

Two ways back:
  - emad restarted on the same state directory, the checkpoint taken with
    the EMA weights swapped in (ema.checkpoint(), Composer's way): the
    shadow comes back from emad's own state file (ema_weights_active, the
    training weights restored from "training_model");
  - emad restarted on a fresh state directory (no state file): the session
    is registered anew from "ema_model" and marked started.
"""

import os
import tempfile
import unittest
import warnings

import torch

import emadtest
from emadtest import first_difference, make_model, make_optimizer, model_state, train_step

from emaclient.torch import EMA

STEPS = 100
STOP = 50
PER_EPOCH = 25
CONFIG = dict(half_life="10ba", update_interval="2ba", ema_start="5ba")


def train(ema, model, opt, first, last):
    for step in range(first, last):
        epoch = step // PER_EPOCH
        ema.batch_start(step, epoch)
        train_step(model, opt, step)
        ema.batch_end(step + 1, epoch)
        if (step + 1) % PER_EPOCH == 0:
            ema.epoch_end(epoch + 1)
        if (step + 1) % 20 == 0:
            with ema.eval():
                pass
    ema.wait()


class Resume(emadtest.EmadTestCase):

    def uninterrupted(self, d):
        model = make_model(0)
        ema = EMA(model, socket=d.sock, session="full", **CONFIG)
        try:
            opt = ema.attach_optimizer(make_optimizer(model))
            ema.fit_start()
            train(ema, model, opt, 0, STEPS)
            st = ema.state()
            self.full_seq = st["seq"]
            return ema.shadow_state_dict(), model_state(model), st["updates"]
        finally:
            ema.close()

    def interrupted(self, same_state_dir, swap_in_for_checkpoint):
        tmp = tempfile.mkdtemp(prefix="emad-pytest-ckpt-")
        self.addCleanup(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
        d = self.daemon(state_dir=os.path.join(tmp, "state") if same_state_dir else None)
        full_shadow, full_model, full_updates = self.uninterrupted(d)

        path = os.path.join(tmp, "ckpt.pt")
        model = make_model(0)
        ema = EMA(model, socket=d.sock, session="part", **CONFIG)
        try:
            opt = ema.attach_optimizer(make_optimizer(model))
            ema.fit_start()
            train(ema, model, opt, 0, STOP)
            training_weights = model_state(model)
            if swap_in_for_checkpoint:
                self.assertEqual(ema.checkpoint().action, "swap_in")
                # Composer's checkpoint: the model holds the EMA weights now
                self.assertIsNone(first_difference(model_state(model), ema.ema_state_dict()))
            state = ema.state_dict()
            self.assertEqual(state["ema_weights_active"], swap_in_for_checkpoint)
            self.assertTrue(state["ema_started"])
            self.assertIsNone(first_difference(ema.training_state_dict(), training_weights))
            if swap_in_for_checkpoint:  # Composer's layout: the weights not in the model
                held = dict(state["ema_model"]["named_parameters_dict"])
                held.update(state["ema_model"]["named_buffers_dict"])
                self.assertIsNone(first_difference(held, training_weights))
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                        "ema": state, "step": STOP}, path)
            updates_at_stop = ema.state()["updates"]
        finally:
            ema.close()
        del model, opt, ema, state

        # A new emad (the old one's sessions are gone) and a new process's objects.
        if same_state_dir:
            d.restart()
        else:
            d.stop()
            d = self.daemon()
        ck = torch.load(path)
        model = make_model(1)  # different init: everything comes from the checkpoint
        model.load_state_dict(ck["model"])
        opt = make_optimizer(model)
        opt.load_state_dict(ck["optimizer"])
        ema = EMA(model, socket=d.sock, session="part", **CONFIG)
        try:
            ema.attach_optimizer(opt)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ema.load_state_dict(ck["ema"])
            self.assertEqual([str(w.message) for w in caught], [])
            self.assertTrue(ema.started)
            self.assertFalse(ema.active)
            # the training weights are back, whatever the model's checkpoint held
            self.assertIsNone(first_difference(model_state(model), training_weights))
            st = ema.state()
            self.assertEqual(st["last_time"], {"batch": STOP, "epoch": STOP // PER_EPOCH})
            # from the state file: the counter too; registered anew: emad's counter
            # restarts with the start+update that marked the session started
            self.assertEqual(st["updates"], updates_at_stop if same_state_dir else 1)
            ema.fit_start()
            train(ema, model, opt, ck["step"], STEPS)
            self.assertIsNone(first_difference(ema.shadow_state_dict(), full_shadow))
            self.assertIsNone(first_difference(model_state(model), full_model))
            if same_state_dir:
                self.assertEqual(ema.state()["updates"], full_updates)
        finally:
            ema.close()

    def through_a_crash(self, mode):
        d = self.daemon()
        full_shadow, full_model, full_updates = self.uninterrupted(d)
        model = make_model(0)
        ema = EMA(model, socket=d.sock, session="crashing", mode=mode, **CONFIG)
        try:
            opt = ema.attach_optimizer(make_optimizer(model))
            ema.fit_start()
            train(ema, model, opt, 0, STOP)
            # emad dies between two steps (nothing in flight) and comes back
            # on the same state directory; the library reconnects on the next
            # call and the run goes on
            d.kill(keep_shadows=True)
            d.start()
            train(ema, model, opt, STOP, STEPS)
            self.assertEqual(ema._res.client.reconnects, 1)
            self.assertIsNone(first_difference(ema.shadow_state_dict(), full_shadow))
            self.assertIsNone(first_difference(model_state(model), full_model))
            st = ema.state()
            self.assertEqual(st["updates"], full_updates)
            self.assertFalse(st["interrupted"])
            # every event and swap applied once: as many as without the crash
            self.assertEqual(st["seq"], self.full_seq)
        finally:
            ema.close()

    def test_emad_sigkill_between_steps_library_reconnects_shm(self):
        self.through_a_crash("shm")

    def test_emad_sigkill_between_steps_library_reconnects_mirror(self):
        self.through_a_crash("mirror")

    def test_resume_from_emad_state_file_with_ema_swapped_in(self):
        self.interrupted(same_state_dir=True, swap_in_for_checkpoint=True)

    def test_resume_on_a_fresh_emad(self):
        self.interrupted(same_state_dir=False, swap_in_for_checkpoint=False)

    def test_resume_on_a_fresh_emad_with_ema_swapped_in(self):
        self.interrupted(same_state_dir=False, swap_in_for_checkpoint=True)


if __name__ == "__main__":
    unittest.main()
