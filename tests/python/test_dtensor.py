"""EMA(model, shard="auto") on DTensor parameters (FSDP2's fully_shard,
tensor parallel), through the stand-in of dtensor_standin.py: torch 1.13
has no DTensor. Two ranks, each holding the row blocks of every parameter:
the EMA finds the global shapes and offsets itself, keeps the EMA of the
local blocks (mirror mode), swaps into them for eval, and its group
checkpoint consolidates, bit for bit, into the single-process EMA of the
full model."""
import os
import shutil
import tempfile

import emadtest
import dtensor_standin as D
import scaleout_worker as W
import test_scaleout as S


class DTensorAuto(emadtest.EmadTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="emad-dtensor-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.node = self.daemon()

    def test_shard_auto_reads_dtensor_blocks_and_consolidates_bit_exact(self):
        ref = S.reference(self.node.sock, {3})[3]
        ckpt = os.path.join(self.tmp, "dt-3")
        job = S.Job(self, D.run, 2, {"socket": [self.node.sock] * 2, "steps": 3,
                                     "checkpoint": ckpt})
        job.check_ok(self)
        full = W.make_full()
        for rank, r in enumerate(job.results):
            self.assertEqual(r["mode"], "mirror", r)
            want = {}
            for name, p in full.named_parameters():
                rows = p.shape[0] // 2
                want[name] = [list(p.shape), [rank * rows] + [0] * (p.dim() - 1)]
            self.assertEqual(r["shard"], want, r)
            self.assertTrue(r["eval_is_ema"], r)
            self.assertTrue(r["training_back"], r)
        got = S.consolidated(job.results[0]["manifest"])
        params = {n for n, _ in full.named_parameters()}
        diff = emadtest.first_difference(got, {n: t for n, t in ref.items() if n in params})
        self.assertIsNone(diff, diff)
