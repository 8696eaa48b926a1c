"""EMA(model, shard="auto") on FSDP1 flat parameters (FullyShardedDataParallel,
use_orig_params=False), through the stand-in of fsdp_standin.py: torch 1.13
under Python 3.11 cannot import torch.distributed.fsdp. Each rank's flat
shards cut the flattened parameters anywhere: the EMA keeps one entry per
piece (a 1-D slice of the parameter flattened, under its state_dict name),
swaps into the shards for eval, and its group checkpoint consolidates, bit
for bit and with the model's shapes, into the single-process EMA of the full
model, and resumes at another world size."""
import os
import shutil
import tempfile

import torch

import emadtest
import fsdp_standin as D
import scaleout_worker as W
import test_scaleout as S
from emaclient import _safetensors, distributed
from emaclient.torch import EMA


class FsdpAuto(emadtest.EmadTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="emad-fsdp-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_flat_pieces_tile_each_parameter_in_both_torch_layouts(self):
        """torch 1.13's metadata and torch 2.x's name the same pieces; over
        the ranks they cover each parameter once, at any world size (one
        that leaves ranks with padding only, too)."""
        full = W.make_full()
        params = dict(full.named_parameters())
        for version in ("1.13", "2"):
            for world in (1, 2, 3, 7, 32):
                covered = {n: torch.zeros(p.numel(), dtype=torch.int32) for n, p in params.items()}
                for rank in range(world):
                    local = D.sharded_model(full, rank, world, version)
                    for name, fp in local.named_parameters():
                        for piece in distributed.flat_pieces(name, fp):
                            p = params[piece.name]
                            self.assertEqual(piece.shape, tuple(p.shape))
                            self.assertEqual(piece.numel, p.numel())
                            got = fp.data[piece.start:piece.start + piece.n]
                            want = p.detach().reshape(-1)[piece.offset:piece.offset + piece.n]
                            self.assertTrue(torch.equal(got, want), (version, world, piece))
                            covered[piece.name][piece.offset:piece.offset + piece.n] += 1
                for n, c in covered.items():
                    self.assertTrue(bool((c == 1).all()), (version, world, n, c))

    def test_shard_auto_reads_flat_shards_consolidates_and_resumes_bit_exact(self):
        node = self.daemon()
        ref = S.reference(node.sock, {3, 4})
        ckpt = os.path.join(self.tmp, "fsdp-3")
        job = S.Job(self, D.run, 2, {"socket": [node.sock] * 2, "steps": 3,
                                     "checkpoint": ckpt})
        job.check_ok(self)
        full = W.make_full()
        for rank, r in enumerate(job.results):
            self.assertEqual(r["mode"], "mirror", r)
            want = {}
            for name, fp in D.sharded_model(full, rank, 2).named_parameters():
                for piece in distributed.flat_pieces(name, fp):
                    want[piece.name] = [[piece.numel], [piece.offset]]
            want["seen"] = [[4], [0]]
            self.assertEqual(r["shard"], want, r)
            self.assertTrue(r["eval_is_ema"], r)
            self.assertTrue(r["training_back"], r)
        # the model's names and shapes, bit for bit the full model's EMA
        manifest = job.results[0]["manifest"]
        diff = emadtest.first_difference(S.consolidated(manifest), ref[3])
        self.assertIsNone(diff, "emactl: %s" % diff)
        out = os.path.join(self.tmp, "py.safetensors")
        distributed.consolidate(manifest, out)
        diff = emadtest.first_difference(_safetensors.read(out)[0], ref[3])
        self.assertIsNone(diff, "consolidate(): %s" % diff)

        # world 2 -> 1, the stand-in in torch 2.x's layout this time
        for step in range(3):
            W.full_step(full, step)
        local = D.sharded_model(full, 0, 1, version="2")
        ema = EMA(local, half_life=W.HALF_LIFE, socket=node.sock, session="fsdp.resume",
                  shard="auto")
        try:
            self.assertEqual(ema.load_group_checkpoint(ckpt), 3)
            for batch in (3, 4):
                if batch == 4:
                    ema.wait()
                    W.full_step(full, 3)
                    D.copy_shards(local, full, 0, 1)
                    ema.batch_end(batch=4)
                flat = {n: t.reshape(-1) for n, t in ref[batch].items()}
                diff = emadtest.first_difference(ema.shadow_state_dict(), flat)
                self.assertIsNone(diff, "batch %d: %s" % (batch, diff))
        finally:
            ema.close()
