"""emad's update kernels against torch's own lerp_, element for element.

Through the raw binding (emaclient.Client / Segment / Session): random f32,
f64, bf16 and f16 tensors of awkward sizes (vector tails), special values
(signed zeros, subnormals, huge values, infinities, NaN), and smoothing
values on both sides of the lerp weight 0.5 where torch switches formulas
(w = 1 - smoothing: fma(w, d, s) when |w| < 0.5, else fma(-(1 - w), d, x)).
The reference is shadow.lerp_(param.to(shadow dtype), 1.0 - smoothing) with
the weight a Python float: torch rounds it once to float32 for f32 shadows,
as emad does.

Smoothing 0 (lerp weight exactly 1): Debian's torch 1.13 computes the
w >= 0.5 branch as end - (end - self) * (1 - w), which GCC fuses into
fma(-(1 - w), d, end); with w - 1 instead the coefficient would be +0.0
rather than -0.0 at w == 1, and the sign of a zero result would differ.
emad uses -(1 - w); the strict signed-zero comparison pins it.
"""

import math
import unittest

import torch

import emadtest
from emadtest import bits, first_difference

import emaclient

TORCH = {"f32": torch.float32, "f64": torch.float64, "bf16": torch.bfloat16,
         "f16": torch.float16}
SHAPES = [("f32", 1), ("f32", 7), ("f32", 8), ("f32", 9), ("f32", 31), ("f32", 33),
          ("f32", 1000), ("f32", 4099), ("f64", 3), ("f64", 1001), ("bf16", 5), ("bf16", 1003),
          ("f16", 6), ("f16", 1005), ("f32", 64)]
SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -3e-39, 3e38, -3e38, math.inf, -math.inf,
           math.nan, 1.0, -1.0, 0.5]


def as_np_view(seg, i, dtype):
    t = seg.tensors[i]
    return emaclient.torch._view(t.address, t.nbytes, dtype, t.shape)


class Numerics(emadtest.EmadTestCase):

    def values(self, g, dtype, n, special):
        x = torch.randn(n, generator=g, dtype=torch.float64) * 4
        if special:  # the last tensor: special values against special values
            x = torch.tensor((SPECIAL * (n // len(SPECIAL) + 1))[:n], dtype=torch.float64)
            x = x[torch.randperm(n, generator=g)]
        return x.to(dtype)

    def run_smoothing(self, client, smoothing, session, signed_zeros=True):
        import emaclient.torch  # noqa: F401  (the tensor view helper)
        specs = [("t%d" % i, dt, (n,)) for i, (dt, n) in enumerate(SHAPES)]
        g = torch.Generator().manual_seed(int(smoothing * 1000) + 7)
        with emaclient.Segment(specs) as seg:
            views = [as_np_view(seg, i, TORCH[dt]) for i, (dt, _) in enumerate(SHAPES)]
            last = len(SHAPES) - 1

            def fill():
                for i, v in enumerate(views):
                    v.copy_(self.values(g, v.dtype, v.numel(), i == last))

            fill()
            # The values include NaN and Inf params: torch's lerp_ averages them in, as emad's
            # on_nonfinite "apply" does; the default, skip, keeps those shadow elements as they
            # were (test_health.py).
            with client.register(session, seg, smoothing=smoothing, on_nonfinite="apply") as s:
                self.assertEqual(s.state["smoothing"], smoothing)
                shadows = [emaclient.torch._view(sh.address, sh.numel * sh.elem_size,
                                                 TORCH[sh.dtype], (sh.numel,))
                           for sh in s.shadows]
                ref = None
                for batch in range(1, 6):
                    if batch > 1:
                        fill()
                    r = s.event("batch_end", batch, 0)
                    if ref is None:  # start: shadow := params, then the first update
                        self.assertEqual(r.action, "start+update")
                        ref = [v.to(torch.float64 if v.dtype == torch.float64
                                    else torch.float32, copy=True) for v in views]
                    else:
                        self.assertEqual(r.action, "update")
                    for rs, v in zip(ref, views):
                        rs.lerp_(v.to(rs.dtype), 1.0 - smoothing)
                    got = {str(i): sh.clone() for i, sh in enumerate(shadows)}
                    want = {str(i): rs for i, rs in enumerate(ref)}
                    if not signed_zeros:  # -0.0 -> +0.0 on both sides (x + 0.0 does it)
                        got = {k: v + 0.0 for k, v in got.items()}
                        want = {k: v + 0.0 for k, v in want.items()}
                    self.assertIsNone(first_difference(got, want),
                                      "smoothing %r, update %d" % (smoothing, batch))
                # swap-in: each dtype's own rounding of the shadow
                self.assertEqual(s.swap("ema").action, "swap_in")
                for i, (v, rs) in enumerate(zip(views, ref)):
                    want = rs.to(v.dtype)
                    if not signed_zeros:
                        v, want = v + 0.0, want + 0.0
                    self.assertTrue(torch.equal(bits(v), bits(want)),
                                    "swap-in of tensor %d (%s)" % (i, v.dtype))
                self.assertEqual(s.swap("train").action, "swap_out")

    def test_update_matches_torch_lerp(self):
        d = self.daemon()
        with emaclient.Client(d.sock) as c:
            for k, smoothing in enumerate([2 ** (-(2 / 10)), 0.3, 0.5, 0.9, 0.999, 1.0,
                                           0.5000001, 0.4999999, 1e-7]):
                self.run_smoothing(c, smoothing, "num%d" % k)
            # f32 weight exactly 1 (smoothing 0, or below 2**-25): equal up to the
            # sign of zero results
            self.run_smoothing(c, 0.0, "num-zero", signed_zeros=False)
            self.run_smoothing(c, 1e-9, "num-tiny", signed_zeros=False)

    def test_torch_lerp_is_fused_here(self):
        """The premise of every bit-exact comparison: this torch's CPU lerp_
        rounds once (fma), as its AVX2 kernels do (GCC contracts Lerp.h's
        formula there); with ATEN_CPU_CAPABILITY=default, or on a CPU without
        AVX2, torch 1.13 rounds twice and no fused implementation can match."""
        s = torch.tensor([-1080852342], dtype=torch.int32).view(torch.float32)
        x = torch.tensor([1066184431], dtype=torch.int32).view(torch.float32)
        got = s.clone().lerp_(x, 1.0 - 0.3).view(torch.int32).item()
        self.assertEqual(got, 1054402859, "torch's lerp_ is not fused on this machine "
                         "(unfused result: bits 1054402860)")

    def test_weight_one_signed_zeros_match_torch(self):
        """smoothing 0 (lerp weight 1): the sign of zero results as torch 1.13
        gives them: emad's far branch is fma(-(1 - w), d, x), as torch's."""
        d = self.daemon()
        with emaclient.Client(d.sock) as c:
            self.run_smoothing(c, 0.0, "num-zero")


if __name__ == "__main__":
    unittest.main()
