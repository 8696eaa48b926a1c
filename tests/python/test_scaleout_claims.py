"""What emaclient.distributed and emaclient.torch claim of group checkpoints (docs/scaleout.md
"Python", "Consolidation and resharding") beyond tests/python/test_scaleout.py. One group
checkpoint of 2 ranks (scaleout_worker.run: gloo on localhost, every tensor split by rows) is
made once for the class; each test reads it, or a copy it edits.

- distributed.consolidate(): the output holds the full tensors under the model's state_dict
  names, in the order the manifest first lists them, each bit for bit the shard files' slices
  put together; dtype="bf16"/"f16" rounds the float tensors as torch's .to() does and copies the
  i64 buffer; dtype="f32" (the shadows' dtype) changes nothing; another dtype is USAGE. The
  metadata carries the job, batch, epoch, world size and config. `emactl consolidate` on the
  same manifest writes the same bytes, with and without --dtype.
- load_group_checkpoint(strict=True) refuses (BADFILE, naming them) a checkpoint that lacks a
  tensor of the model or holds one the model lacks, and loads nothing; strict=False warns,
  naming them, loads the others bit for bit, and the EMA of a tensor the checkpoint lacks
  restarts from the current weights and goes on averaging.
- Shard files at another batch: consolidate() and Checkpoint() refuse them (BADFILE naming the
  file and both batches) and write nothing (load_group_checkpoint and emactl are tested in
  test_scaleout.py and test_consolidate.py). A directory without a manifest is no checkpoint:
  load_group_checkpoint, consolidate and emactl refuse it, naming the manifest.
- shard="auto" on a torch without DTensor (1.13): no DTensor is found, every tensor is whole
  (replicated), as with shard=None; a group checkpoint says so.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest
import warnings

import emadtest
import scaleout_worker as W
import test_scaleout as T

import torch
import torch.multiprocessing as mp

from emaclient import Error, _safetensors
from emaclient import distributed as edist
from emaclient.torch import EMA

STEPS = 3
TORCH_OF = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def make_group_checkpoint(sock, directory, out):
    """A 2-rank job of scaleout_worker.run trained STEPS batches, checkpointed at the last."""
    plan = {"socket": [sock, sock], "job": "mlp", "start": 0, "steps": STEPS,
            "checkpoints": {str(STEPS): directory}, "resume": None, "kill": None}
    ctx = mp.get_context("spawn")
    port = T.free_port()
    procs = [ctx.Process(target=W.run, args=(r, 2, port, plan, out)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(T.SPAWN_TIMEOUT)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    for r in range(2):
        with open(os.path.join(out, "rank-%d.json" % r)) as f:
            res = json.load(f)
        if not res.get("ok"):
            raise AssertionError("rank %d: %s" % (r, res.get("trace") or res))


def assemble(directory):
    """{name: full tensor} put together from the shard files alone, placing each slice at the
    offsets the manifest gives; and the names in the order the manifest first lists them."""
    with open(os.path.join(directory, edist.MANIFEST)) as f:
        m = json.load(f)
    full, order = {}, []
    for shard in m["shards"]:
        tensors, _ = _safetensors.read(os.path.join(directory, shard["file"]))
        for t in shard["tensors"]:
            name = t["name"]
            if name not in full:
                order.append(name)
                full[name] = torch.zeros(t["global_shape"], dtype=tensors[name].dtype)
            where = tuple(slice(o, o + n) for o, n in zip(t["offsets"], t["shape"]))
            full[name][where] = tensors[name]
    return full, order


class ScaleOutClaims(emadtest.EmadTestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="emad-claims-")
        cls.ckpt = os.path.join(cls.tmp, "ckpt")
        leftovers = emadtest.LeftoverChecker()
        try:
            d = leftovers.daemon()
            make_group_checkpoint(d.sock, cls.ckpt, cls.tmp)
        finally:
            problems = leftovers.finish()
        if problems:
            raise AssertionError("making the group checkpoint: %s" % "; ".join(problems))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, True)

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp(prefix="emad-claims-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def copy(self):
        d = os.path.join(self.dir, "copy")
        shutil.copytree(self.ckpt, d)
        return d

    def emactl(self, *args):
        return subprocess.run([emadtest.EMACTL_BIN] + list(args), capture_output=True, text=True)

    # ---- consolidation ----

    def test_consolidate_puts_the_slices_together_bit_for_bit(self):
        want, order = assemble(self.ckpt)
        names = list(W.make_full().state_dict())
        self.assertEqual(sorted(order), sorted(names))
        out = os.path.join(self.dir, "full.safetensors")
        edist.consolidate(self.ckpt, out)  # the directory, as the docstring allows
        got, meta = _safetensors.read(out)
        self.assertEqual(list(got), order)  # the manifest's order
        self.assertIsNone(emadtest.first_difference(got, want))
        self.assertEqual(got["emb"].dtype, torch.float32)  # a bf16 param's exact f32 shadow
        self.assertEqual(got["seen"].dtype, torch.int64)
        with open(os.path.join(self.ckpt, edist.MANIFEST)) as f:
            m = json.load(f)
        self.assertEqual((meta["job"], meta["batch"], meta["epoch"], meta["world_size"]),
                         ("mlp", str(STEPS), "0", "2"))
        self.assertEqual(json.loads(meta["emad_config"]), m["config"])
        # emactl consolidate: the same function, the same bytes.
        manifest = os.path.join(self.ckpt, edist.MANIFEST)
        cli = os.path.join(self.dir, "cli.safetensors")
        p = self.emactl("consolidate", manifest, "--out", cli)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("at batch %d (world size 2)" % STEPS, p.stdout)
        with open(out, "rb") as a, open(cli, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_consolidate_with_a_dtype_rounds_the_floats_as_torch_does(self):
        want, _ = assemble(self.ckpt)
        manifest = os.path.join(self.ckpt, edist.MANIFEST)
        for dtype in ("bf16", "f16", "f32"):
            out = os.path.join(self.dir, "full-%s.safetensors" % dtype)
            edist.consolidate(manifest, out, dtype=dtype)
            got, _ = _safetensors.read(out)
            for name, t in want.items():
                expect = t if t.dtype == torch.int64 else t.to(TORCH_OF[dtype])
                self.assertTrue(emadtest.bits_equal(got[name], expect),
                                "%s as %s: %s vs %s" % (name, dtype, got[name], expect))
            cli = os.path.join(self.dir, "cli-%s.safetensors" % dtype)
            p = self.emactl("consolidate", manifest, "--out", cli, "--dtype", dtype)
            self.assertEqual(p.returncode, 0, p.stderr)
            with open(out, "rb") as a, open(cli, "rb") as b:
                self.assertEqual(a.read(), b.read(), dtype)
        # Rounding happened: bf16 differs from the f32 shadow somewhere (else the test is empty).
        got, _ = _safetensors.read(os.path.join(self.dir, "full-bf16.safetensors"))
        self.assertFalse(torch.equal(got["w1"].float(), want["w1"]))
        for bad in ("f8", "i64"):
            out = os.path.join(self.dir, "bad-%s.safetensors" % bad)
            with self.assertRaises(Error) as cm:
                edist.consolidate(manifest, out, dtype=bad)
            self.assertEqual(cm.exception.code, "USAGE")
            self.assertIn('"%s"' % bad, str(cm.exception))
            self.assertFalse(os.path.exists(out))

    # ---- load_group_checkpoint(strict=) ----

    def rank1(self, sock, session, edit):
        """Rank 1's local model (the slices of a 2-rank job at batch STEPS), edited, and its EMA."""
        full = W.make_full()
        for step in range(STEPS):
            W.full_step(full, step)
        local, spec = W.local_model(full, 1, 2)
        edit(local, spec)
        return local, EMA(local, half_life=W.HALF_LIFE, socket=sock, session=session,
                          shard=spec)

    def shard_file_of_rank1(self):
        tensors, _ = _safetensors.read(os.path.join(self.ckpt, "rank-00001.safetensors"))
        return tensors

    def test_strict_refuses_a_tensor_missing_from_the_checkpoint(self):
        d = self.daemon()

        def add(local, spec):
            local.extra = torch.nn.Parameter(torch.ones(3))
        local, ema = self.rank1(d.sock, "extra", add)
        try:
            with self.assertRaises(Error) as cm:
                ema.load_group_checkpoint(self.ckpt)  # strict by default
            self.assertEqual(cm.exception.code, "BADFILE")
            self.assertIn("lacks extra", str(cm.exception))
            self.assertFalse(ema.state()["started"])  # nothing was loaded
        finally:
            ema.close()
        local, ema = self.rank1(d.sock, "extra2", add)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.assertEqual(ema.load_group_checkpoint(self.ckpt, strict=False), STEPS)
            said = [str(w.message) for w in caught]
            self.assertTrue(any("extra" in s for s in said), said)
            st = ema.state()
            self.assertTrue(st["started"])
            shadow = ema.shadow_state_dict()
            ref = self.shard_file_of_rank1()
            for name, t in ref.items():
                self.assertTrue(emadtest.bits_equal(shadow[name], t), name)
            # The tensor the checkpoint lacks restarts from the current weights...
            self.assertTrue(emadtest.bits_equal(ema.ema_state_dict()["extra"], torch.ones(3)))
            # ...and is averaged from then on (not left out of the EMA).
            ema.wait()
            with torch.no_grad():
                local.extra.fill_(2.0)
            ema.batch_end(batch=STEPS + 1)
            smoothing = json.loads(_safetensors.read(self.consolidated())[1]["emad_config"])[
                "ema"]["smoothing"]
            expect = torch.ones(3).lerp_(torch.full((3,), 2.0), 1 - smoothing)
            got = ema.ema_state_dict()["extra"]
            self.assertTrue(emadtest.bits_equal(got, expect), "%s vs %s" % (got, expect))
            with ema.eval():
                self.assertTrue(emadtest.bits_equal(local.extra.detach(), expect))
        finally:
            ema.close()

    def consolidated(self):
        out = os.path.join(self.dir, "c.safetensors")
        if not os.path.exists(out):
            edist.consolidate(self.ckpt, out)
        return out

    def test_strict_refuses_a_tensor_the_model_lacks(self):
        d = self.daemon()

        def drop(local, spec):
            del local.b2
            del spec["b2"]
        local, ema = self.rank1(d.sock, "lacks", drop)
        try:
            with self.assertRaises(Error) as cm:
                ema.load_group_checkpoint(self.ckpt, strict=True)
            self.assertEqual(cm.exception.code, "BADFILE")
            self.assertIn("b2", str(cm.exception))
            self.assertFalse(ema.state()["started"])
        finally:
            ema.close()
        local, ema = self.rank1(d.sock, "lacks2", drop)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self.assertEqual(ema.load_group_checkpoint(self.ckpt, strict=False), STEPS)
            said = [str(w.message) for w in caught]
            self.assertTrue(any("b2" in s for s in said), said)
            shadow = ema.shadow_state_dict()
            ref = self.shard_file_of_rank1()
            del ref["b2"]
            self.assertIsNone(emadtest.first_difference(shadow, ref))
        finally:
            ema.close()

    # ---- checkpoints refused ----

    def test_shards_at_another_batch_refused_by_consolidate(self):
        d = self.copy()
        path = os.path.join(d, "rank-00001.safetensors")
        tensors, _ = _safetensors.read(path)
        with open(os.path.join(d, edist.MANIFEST)) as f:
            m = json.load(f)
        slices = [(t["name"], edist._WIRE_OF_ST[t["dtype"]], t["global_shape"], t["offsets"],
                   t["shape"], tensors[t["name"]].contiguous()) for t in m["shards"][1]["tensors"]]
        edist.write_shard(path, "mlp", STEPS - 1, 0, 2, [1], slices)
        out = os.path.join(self.dir, "mixed.safetensors")
        for call in (lambda: edist.consolidate(d, out), lambda: edist.Checkpoint(d)):
            with self.assertRaises(Error) as cm:
                call()
            self.assertEqual(cm.exception.code, "BADFILE")
            msg = str(cm.exception)
            self.assertIn('"rank-00001.safetensors" at batch %d' % (STEPS - 1), msg)
            self.assertIn("batch %d" % STEPS, msg)
        self.assertFalse(os.path.exists(out))
        self.assertEqual(sorted(os.listdir(self.dir)), ["copy"])  # no temp file left either

    def test_a_directory_without_a_manifest_is_no_checkpoint(self):
        d = self.copy()
        os.unlink(os.path.join(d, edist.MANIFEST))
        manifest = os.path.join(d, edist.MANIFEST)
        out = os.path.join(self.dir, "none.safetensors")
        with self.assertRaises(Error) as cm:
            edist.consolidate(d, out)
        self.assertEqual(cm.exception.code, "SYSTEM")
        self.assertIn(manifest, str(cm.exception))
        self.assertFalse(os.path.exists(out))
        p = self.emactl("consolidate", manifest, "--out", out)
        self.assertEqual(p.returncode, 1)
        self.assertIn(manifest, p.stderr)
        self.assertFalse(os.path.exists(out))
        daemon = self.daemon()
        local, ema = self.rank1(daemon.sock, "nomanifest", lambda local, spec: None)
        try:
            with self.assertRaises(Error) as cm:
                ema.load_group_checkpoint(d)
            self.assertEqual(cm.exception.code, "SYSTEM")
            self.assertIn(manifest, str(cm.exception))
            self.assertFalse(ema.state()["started"])
        finally:
            ema.close()

    # ---- shard="auto" without DTensor ----

    def test_shard_auto_without_dtensor_keeps_every_tensor_whole(self):
        self.assertFalse(edist._dtensor_types(), "this test is for a torch without DTensor")
        full = W.make_full()
        self.assertEqual(edist.dtensor_shards(full), {})
        d = self.daemon()
        ema = EMA(full, half_life=W.HALF_LIFE, socket=d.sock, session="auto", shard="auto")
        try:
            self.assertEqual(ema._shard, {n: (tuple(t.shape), (0,) * t.dim())
                                          for n, t in full.state_dict().items()})
            ema.batch_end(batch=1)
            manifest = ema.group_checkpoint(os.path.join(self.dir, "auto"), job="auto")
        finally:
            ema.close()
        with open(manifest) as f:
            m = json.load(f)
        self.assertEqual(m["world_size"], 1)
        (shard,) = m["shards"]
        for t in shard["tensors"]:
            self.assertEqual(t["global_shape"], t["shape"], t)
            self.assertEqual(t["offsets"], [0] * len(t["shape"]), t)


if __name__ == "__main__":
    unittest.main()
