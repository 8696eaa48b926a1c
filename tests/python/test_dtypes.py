"""Low-precision and mixed-dtype models.

- A model of bf16, f16, f32 and f64 parameters with int64/int32/int16/int8/
  uint8/bool buffers, a 0-dim and an empty tensor: the fp32 (fp64) shadows
  equal the reference computed with torch ops from the params converted
  exactly to fp32, bit for bit, after every step, in shm and mirror modes;
  integer tensors are copied; swap-in writes the shadow rounded to nearest
  even (checked against torch's cast and against the bit formula of docs/protocol.md "Numerics"
  for bf16, numpy's for f16); the training weights come back bit for bit.
- Exact ties: a smoothing of 0.5 makes shadows that lie exactly halfway
  between two bf16 (f16) values; swap-in must round them to the even one.
"""

import unittest

import numpy as np
import torch
import torch.nn as nn

import emadtest
from emadtest import ReferenceEMA, bits, bits_equal, first_difference, model_state

import emaclient
from emaclient.torch import EMA


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w_bf16 = nn.Parameter(torch.randn(257, generator=g).to(torch.bfloat16))
        self.w_f16 = nn.Parameter(torch.randn(33, 3, generator=g).to(torch.float16))
        self.w_f32 = nn.Parameter(torch.randn(5, 7, generator=g))
        self.w_f64 = nn.Parameter(torch.randn(17, generator=g, dtype=torch.float64))
        self.scalar_bf16 = nn.Parameter(torch.tensor(1.5, dtype=torch.bfloat16))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.register_buffer("i32", torch.arange(4, dtype=torch.int32))
        self.register_buffer("i16", torch.arange(3, dtype=torch.int16))
        self.register_buffer("i8", torch.arange(5, dtype=torch.int8))
        self.register_buffer("u8", torch.arange(6, dtype=torch.uint8))
        self.register_buffer("flags", torch.tensor([True, False, True]))
        self.register_buffer("empty", torch.zeros(0))


def perturb(model, step):
    """One "optimizer step": noise in each tensor's own dtype, counters."""
    g = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype))
        model.count.add_(1)
        model.i32.mul_(-1).add_(step)
        model.i16.add_(step % 7)
        model.i8.sub_(1)
        model.u8.add_(3)
        model.flags.logical_not_()


def bf16_rne(f32):
    """docs/protocol.md "Numerics": f32 -> bf16 round to nearest even, on the bits."""
    u = f32.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
    return r.to(torch.int32).to(torch.int16)  # two's complement wrap via int32


def f16_rne(f32):
    return torch.from_numpy(f32.numpy().astype(np.float16).view(np.int16).copy())


class MixedDtypes(emadtest.EmadTestCase):

    def run_mixed(self, mode):
        d = self.daemon()
        model = Mixed()
        ref_model = emadtest.clone_model(model)
        ema = EMA(model, socket=d.sock, session="mixed", mode=mode, half_life="3ba")
        try:
            seg = ema.session.segment
            self.assertEqual([t.dtype for t in seg.tensors],
                             ["bf16", "f16", "f32", "f64", "bf16", "i64", "i32", "i16", "i8",
                              "u8", "bool", "f32"])
            self.assertEqual([s.dtype for s in ema.session.shadows],
                             ["f32", "f32", "f32", "f64", "f32", "i64", "i32", "i16", "i8",
                              "u8", "bool", "f32"])
            in_seg = seg.base <= model.w_bf16.data_ptr() < seg.base + seg.nbytes
            self.assertEqual(in_seg, mode == "shm")
            ref = ReferenceEMA(ref_model, half_life="3ba")
            for step in range(30):
                ema.batch_start(step)
                ref.batch_start()
                perturb(model, step)
                perturb(ref_model, step)
                ema.wait()  # no optimizer here: wait before the next change
                ema.batch_end(step + 1, wait=(step % 2 == 0))
                ref.batch_end(step + 1, 0)
                ema.wait()
                self.assertIsNone(first_difference(ema.shadow_state_dict(), ref.shadow),
                                  "after step %d" % (step + 1))
                if (step + 1) % 10 == 0:
                    before = model_state(model)
                    with ema.eval():
                        ref.eval_start()
                        inside = model_state(model)
                        self.assertIsNone(first_difference(inside, model_state(ref_model)))
                        self.assertIsNone(first_difference(inside, ema.ema_state_dict()))
                        sh = ema.shadow_state_dict()
                        for n in ("w_bf16", "scalar_bf16"):
                            self.assertTrue(torch.equal(bits(inside[n]), bf16_rne(sh[n])), n)
                        self.assertTrue(torch.equal(bits(inside["w_f16"]).flatten(),
                                                    f16_rne(sh["w_f16"]).flatten()))
                    ref.eval_end()
                    self.assertIsNone(first_difference(model_state(model), before))
            self.assertEqual(ema.state()["updates"], 30)
            # integers are copies of the latest values
            self.assertEqual(ema.shadow_state_dict()["count"].item(), 30)
        finally:
            ema.close()
        self.assertIsNone(first_difference(model_state(model), model_state(ref_model)))

    def test_mixed_dtypes_shm(self):
        self.run_mixed("shm")

    def test_mixed_dtypes_mirror(self):
        self.run_mixed("mirror")


class Ties(emadtest.EmadTestCase):

    def test_swap_in_rounds_ties_to_even(self):
        one = 1.0
        # pairs (first params, second params): the shadow becomes their midpoint
        bf = [(one, one + 2 ** -7), (one + 2 ** -7, one + 2 ** -6), (-one, -(one + 2 ** -7)),
              (one, one + 2 ** -6), (2.0, 2.0)]
        bf_expect = [one, one + 2 ** -6, -one, one + 2 ** -7, 2.0]
        hf = [(one, one + 2 ** -10), (one + 2 ** -10, one + 2 ** -9), (-one, -(one + 2 ** -10)),
              (one, one + 2 ** -9)]
        hf_expect = [one, one + 2 ** -9, -one, one + 2 ** -10]

        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.b = nn.Parameter(torch.tensor([a for a, _ in bf], dtype=torch.bfloat16))
                self.h = nn.Parameter(torch.tensor([a for a, _ in hf], dtype=torch.float16))

        d = self.daemon()
        model = Two()
        # smoothing 0.5: lerp weight 0.5, the shadow is the exact midpoint
        ema = EMA(model, socket=d.sock, session="ties", half_life="1ba", ema_start="1ba")
        try:
            self.assertEqual(ema.state()["smoothing"], 0.5)
            self.assertEqual(ema.batch_end(1, wait=True).action, "start+update")
            with torch.no_grad():
                model.b.copy_(torch.tensor([b for _, b in bf], dtype=torch.bfloat16))
                model.h.copy_(torch.tensor([b for _, b in hf], dtype=torch.float16))
            self.assertEqual(ema.batch_end(2, wait=True).action, "update")
            sh = ema.shadow_state_dict()
            self.assertTrue(bits_equal(sh["b"], torch.tensor([(a + b) / 2 for a, b in bf])))
            self.assertTrue(bits_equal(sh["h"], torch.tensor([(a + b) / 2 for a, b in hf])))
            with ema.eval():
                self.assertTrue(bits_equal(model.b.detach(),
                                           torch.tensor(bf_expect, dtype=torch.bfloat16)))
                self.assertTrue(bits_equal(model.h.detach(),
                                           torch.tensor(hf_expect, dtype=torch.float16)))
                self.assertEqual(ema.session.segment.swap_state()[0], emaclient.SWAP_EMA)
            self.assertTrue(bits_equal(model.b.detach(),
                                       torch.tensor([b for _, b in bf], dtype=torch.bfloat16)))
        finally:
            ema.close()


if __name__ == "__main__":
    unittest.main()
