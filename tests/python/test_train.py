"""A real training loop with emaclient.torch.EMA beside an in-process reference.

A small CNN with BatchNorm, SGD with momentum, synthetic data, 100 steps,
EMA(half_life="10ba", update_interval="2ba", ema_start="5ba"), evaluation
every 20 steps inside `with ema.eval()`. The reference (emadtest.ReferenceEMA,
torch ops on an identical copy of the model) runs in lockstep. A second peer,
torch.optim.swa_utils.AveragedModel with an EMA avg_fn, runs on the same
training. The run is made once (setUpClass) and each test checks one aspect.
"""

import unittest

from torch.optim.swa_utils import AveragedModel

import emadtest
from emadtest import (ReferenceEMA, accuracy, bits_equal, eval_set, first_difference,
                      make_model, make_optimizer, model_state, train_step)

import emaclient
from emaclient.torch import EMA

STEPS = 100
EVAL_EVERY = 20
STEPS_PER_EPOCH = 25
CONFIG = dict(half_life="10ba", update_interval="2ba", ema_start="5ba")


def run_training(cls, mode):
    """Train model (EMA in emad) and model_ref (ReferenceEMA) in lockstep,
    recording every mismatch in cls.*."""
    d = cls.leftovers.daemon()
    data = eval_set()
    model = make_model(0)
    model_ref = emadtest.clone_model(model)
    cls.initial = model_state(model)
    ema = EMA(model, socket=d.sock, session="cnn-%s" % mode, mode=mode, **CONFIG)
    try:
        cls.initial_after_ema = model_state(model)
        seg = ema.session.segment
        cls.params_in_segment = [
            seg.base <= p.data_ptr() < seg.base + seg.nbytes for p in model.parameters()]
        ref = ReferenceEMA(model_ref, **CONFIG)
        opt = ema.attach_optimizer(make_optimizer(model))
        opt_ref = make_optimizer(model_ref)
        swa_fn = (lambda avg, p, n: ref.smoothing * avg + (1.0 - ref.smoothing) * p)
        swa = None
        cls.smoothing = ema.state()["smoothing"]
        cls.ref_smoothing = ref.smoothing
        cls.training_diffs, cls.shadow_diffs, cls.pending_after_step = [], [], []
        cls.eval_diffs, cls.eval_logit_diffs, cls.restore_diffs = [], [], []
        cls.accuracies, cls.swa_errors, cls.swaps_seen = [], [], []
        ema.fit_start()
        for step in range(STEPS):
            epoch = step // STEPS_PER_EPOCH
            ema.batch_start(step, epoch)
            ref.batch_start()
            train_step(model, opt, step)
            # attach_optimizer: step() claimed the update of the previous batch_end
            cls.pending_after_step.append(len(ema._pending))
            train_step(model_ref, opt_ref, step)
            diff = first_difference(model_state(model), model_state(model_ref))
            if diff:
                cls.training_diffs.append((step, diff))
            diff = first_difference(ema.shadow_state_dict(), ref.shadow)
            if diff:
                cls.shadow_diffs.append((step, diff))
            ema.batch_end(step + 1, epoch)
            ref.batch_end(step + 1, epoch)
            if (ref.started and (step + 1) % 2 == 0) or (step + 1) == 5:
                if swa is None:  # at the start, as the EMA: a copy of the weights
                    swa = AveragedModel(model_ref, avg_fn=swa_fn)
                swa.update_parameters(model_ref)
            if (step + 1) % STEPS_PER_EPOCH == 0:
                ema.epoch_end(epoch + 1)
                ref.epoch_end(step + 1, epoch + 1)
            if (step + 1) % EVAL_EVERY == 0:
                before = model_state(model)
                with ema.eval():
                    ref.eval_start()
                    cls.swaps_seen.append((ema.active, ema.session.segment.swap_state()[0]))
                    diff = first_difference(model_state(model), model_state(model_ref))
                    if diff:
                        cls.eval_diffs.append((step + 1, diff))
                    expect = {n: s.to(before[n].dtype) for n, s in ref.shadow.items()}
                    diff = first_difference(model_state(model), expect)
                    if diff:
                        cls.eval_diffs.append((step + 1, "vs shadow: " + diff))
                    acc, logits = accuracy(model, data)
                    acc_ref, logits_ref = accuracy(model_ref, data)
                    if not bits_equal(logits, logits_ref):
                        cls.eval_logit_diffs.append(step + 1)
                ref.eval_end()
                acc_train, _ = accuracy(model, data)
                cls.accuracies.append((step + 1, acc, acc_ref, acc_train))
                diff = first_difference(model_state(model), before)
                if diff:
                    cls.restore_diffs.append((step + 1, diff))
                diff = first_difference(model_state(model), model_state(model_ref))
                if diff:
                    cls.restore_diffs.append((step + 1, "vs reference: " + diff))
        ema.wait()
        cls.final_shadow_diff = first_difference(ema.shadow_state_dict(), ref.shadow)
        cls.final_ema = ema.ema_state_dict()
        cls.final_ref_ema = {n: s.to(t.dtype) for (n, s), t in
                             zip(ref.shadow.items(), model_state(model_ref).values())}
        cls.updates, cls.ref_updates = ema.state()["updates"], ref.updates
        cls.started = ema.started
        cls.swa_params = {n: p.detach().clone() for n, p in swa.module.named_parameters()}
        cls.ema_params = {n: t for n, t in ema.shadow_state_dict().items()
                          if n in cls.swa_params}
        cls.final_training = model_state(model)
    finally:
        ema.close()
    cls.after_close = model_state(model)
    cls.params_own_memory = [
        not (seg.base <= p.data_ptr() < seg.base + seg.nbytes) for p in model.parameters()]


class TrainShm(emadtest.EmadClassTestCase):
    mode = "shm"

    @classmethod
    def run_once(cls):
        run_training(cls, cls.mode)

    def test_params_live_in_the_segment(self):
        """shm mode: every parameter's storage is the segment's, values kept."""
        if self.mode == "shm":
            self.assertTrue(all(self.params_in_segment))
        else:
            self.assertFalse(any(self.params_in_segment))
        self.assertIsNone(first_difference(self.initial, self.initial_after_ema))

    def test_smoothing_as_python_computes_it(self):
        self.assertEqual(self.smoothing, self.ref_smoothing)
        self.assertEqual(self.smoothing, 2 ** (-(2 / 10)))

    def test_training_identical_to_reference(self):
        """The EMA model trains exactly as its untouched copy (every step)."""
        self.assertEqual(self.training_diffs, [])

    def test_shadows_bit_identical_every_step(self):
        """emad's fp32 shadows (and the copied int64 num_batches_tracked) equal
        the reference's lerp_ bit for bit after every step."""
        self.assertEqual(self.shadow_diffs, [])
        self.assertIsNone(self.final_shadow_diff)
        self.assertIsNone(first_difference(self.final_ema, self.final_ref_ema))

    def test_updates_counted(self):
        self.assertTrue(self.started)
        self.assertEqual(self.updates, self.ref_updates)
        self.assertEqual(self.updates, 48)  # batches 6, 8, ..., 100 (5: start only)

    def test_attach_optimizer_waits_before_step(self):
        """shm: step() claimed the update of the previous batch_end first (emad
        reads the live weights). mirror: step() did not wait for emad, which
        reads the host copies (and the shadows are still exact: see
        test_shadows_bit_identical_every_step)."""
        if self.mode == "shm":
            self.assertEqual(set(self.pending_after_step), {0})
        else:
            self.assertNotIn(0, self.pending_after_step[1:])

    def test_eval_sees_the_ema_weights(self):
        """Inside ema.eval() the model holds exactly the reference's swapped-in
        weights (shadow cast to each dtype), logits equal bit for bit."""
        self.assertEqual(len(self.swaps_seen), STEPS // EVAL_EVERY)
        self.assertEqual(set(self.swaps_seen), {(True, emaclient.SWAP_EMA)})
        self.assertEqual(self.eval_diffs, [])
        self.assertEqual(self.eval_logit_diffs, [])

    def test_training_weights_restored_bitwise(self):
        self.assertEqual(self.restore_diffs, [])

    def test_eval_accuracy_identical(self):
        for step, acc, acc_ref, acc_train in self.accuracies:
            self.assertEqual(acc, acc_ref, "eval after step %d" % step)
        # The task is learnable: the EMA weights are good at the end.
        self.assertGreater(self.accuracies[-1][1], 0.5)

    def test_averaged_model_peer(self):
        """AveragedModel with an EMA avg_fn agrees within 1e-6 relative."""
        self.assertEqual(set(self.swa_params), set(self.ema_params))
        for n, p in self.swa_params.items():
            e = self.ema_params[n]
            scale = p.abs().max().item()
            err = (e - p).abs().max().item()
            self.assertLessEqual(err, 1e-6 * scale, "%s: max error %g, scale %g" % (n, err, scale))

    def test_close_gives_the_params_their_memory_back(self):
        self.assertTrue(all(self.params_own_memory))
        self.assertIsNone(first_difference(self.after_close, self.final_training))


class TrainMirror(TrainShm):
    """The same run with mode="mirror" forced on the CPU: the segment holds
    copies, refreshed before every event that reads them."""
    mode = "mirror"


if __name__ == "__main__":
    unittest.main()
