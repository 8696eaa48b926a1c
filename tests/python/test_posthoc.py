"""Snapshots, post-hoc EMA and export from Python (docs/posthoc.md, docs/protocol.md
"Snapshots"): a small real training of an MLP with two EDM2 power profiles (sigma_rel 0.05 and
0.10) snapshotted every 5 batches.

- EMA.snapshots() lists the files (by profile then batch), EMA.snapshot() takes one on request.
- EMA.posthoc at a stored profile's own sigma_rel at one of its snapshot batches gives that
  profile's shadow at that batch back (within f32 rounding), with the model's shapes.
- EMA.posthoc at another width gives finite weights that load into the model.
- EMA.export writes the EMA weights with the model's names and shapes, read back here with a
  reader of this file's own (struct, json, numpy): f32 bit-exact, bf16 and f16 rounded to
  nearest even as torch does.
"""

import json
import os
import struct
import tempfile
import time
import unittest

import numpy as np
import torch

import emadtest

import emaclient
from emaclient.torch import EMA

PROFILES = {"p05": {"sigma_rel": 0.05}, "p10": {"sigma_rel": 0.10}}


def read_safetensors(path):
    """{name: (dtype name, shape, raw bytes)}, metadata: an independent reader."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, "header length %d is not padded to 8" % n
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    data = raw[8 + n:]
    out = {}
    end = 0
    for name, h in header.items():
        a, b = h["data_offsets"]
        out[name] = (h["dtype"], h["shape"], data[a:b])
        end = max(end, b)
    assert end == len(data), "data past the last tensor"
    return out, meta


def as_uint16(t):
    return t.contiguous().view(torch.int16).numpy().astype(np.uint16).tobytes()


class PostHoc(emadtest.EmadTestCase):

    def train(self, ema, model, batches, keep=None, every=None):
        torch.manual_seed(0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        kept = {}
        for b in range(1, batches + 1):
            x = torch.randn(16, 6)
            y = torch.randn(16, 2)
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ema.batch_end(batch=b, wait=True)
            if every and b % every == 0:
                # A slow disk makes emad skip a snapshot (the test would then lack it): let
                # each one be written before the next.
                self.wait_files(ema, len(PROFILES) * (b // every))
            if keep and b in keep:
                kept[b] = {p: ema.shadow_state_dict(profile=p) for p in PROFILES}
        return kept

    def wait_files(self, ema, want):
        deadline = time.monotonic() + 20
        while True:
            files = ema.snapshots()
            if len(files) >= want or time.monotonic() > deadline:
                return files
            time.sleep(0.01)

    def test_posthoc_at_a_stored_width_gives_its_shadow_back(self):
        d = self.daemon()
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        with EMA(model, socket=d.sock, session="posthoc", profiles=PROFILES,
                 snapshot_every="5ba") as ema:
            kept = self.train(ema, model, 40, keep=(20, 40), every=5)
            files = self.wait_files(ema, 16)
            self.assertEqual([(f["profile"], f["batch"]) for f in files],
                             [(p, b) for p in PROFILES for b in range(5, 41, 5)])
            for f in files:
                self.assertEqual(f["dtype"], "f32")
                self.assertEqual(os.path.getsize(f["file"]), f["bytes"])

            for batch in (20, 40):
                for p, sigma in (("p05", 0.05), ("p10", 0.10)):
                    got = ema.posthoc(sigma, batch=batch)
                    self.assertEqual(list(got), [k for k, _ in model.named_parameters()])
                    for k, want in kept[batch][p].items():
                        self.assertEqual(got[k].dtype, torch.float32)
                        self.assertEqual(got[k].shape, want.shape)
                        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-6,
                                                   msg="%s at %d: %s" % (p, batch, k))
            # The default batch is the last snapshot's.
            last = ema.posthoc(0.10)
            for k, want in kept[40]["p10"].items():
                torch.testing.assert_close(last[k], want, rtol=1e-5, atol=1e-6)

            between = ema.posthoc(0.07)
            for k, t in between.items():
                self.assertTrue(torch.isfinite(t).all(), k)
                # Between the two stored widths: not either of them.
                self.assertFalse(torch.equal(t, kept[40]["p05"][k]), k)
            model.load_state_dict(between)
            self.assertTrue(torch.equal(model[0].weight.detach(), between["0.weight"]))

            with self.assertRaises(emaclient.Error) as cm:
                ema.posthoc(0.5)
            self.assertEqual(cm.exception.code, "USAGE")

            # On request, at the session's batch.
            ema.batch_end(batch=41, wait=True)
            taken = ema.snapshot()
            self.assertEqual(sorted((f["profile"], f["batch"]) for f in taken),
                             [("p05", 41), ("p10", 41)])

    def test_posthoc_without_snapshots_says_so(self):
        d = self.daemon()
        model = torch.nn.Linear(3, 2)
        with EMA(model, socket=d.sock, session="nosnap", profiles=PROFILES) as ema:
            self.assertEqual(ema.snapshots(), [])
            with self.assertRaises(emaclient.Error) as cm:
                ema.posthoc(0.05)
            self.assertEqual(cm.exception.code, "STATE")
            with self.assertRaises(emaclient.Error) as cm:
                ema.snapshot()  # nothing has updated yet
            self.assertEqual(cm.exception.code, "STATE")
        with self.assertRaises(ValueError):
            EMA(model, socket=d.sock, session="x", snapshot_every="5ba")

    def test_export_round_trip(self):
        d = self.daemon()
        torch.manual_seed(2)
        model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2))
        with EMA(model, socket=d.sock, session="export", profiles=PROFILES,
                 eval_profile="p10") as ema:
            self.train(ema, model, 7)
            tmp = tempfile.mkdtemp(prefix="emad-export-")
            shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
            for profile, dtype, name, conv in (
                    (None, None, "F32", lambda t: t.numpy().tobytes()),
                    ("p05", "f32", "F32", lambda t: t.numpy().tobytes()),
                    ("p05", "bf16", "BF16", lambda t: as_uint16(t.to(torch.bfloat16))),
                    ("p10", torch.float16, "F16", lambda t: as_uint16(t.to(torch.float16)))):
                path = os.path.join(tmp, "ema-%s-%s.safetensors" % (profile, name))
                ema.export(path, profile=profile, dtype=dtype)
                got, meta = read_safetensors(path)
                self.assertEqual(meta["format"], "pt")
                self.assertEqual(list(got), list(shapes))
                shadow = ema.shadow_state_dict(profile=profile or "p10")
                for k, (dt, shape, raw) in got.items():
                    self.assertEqual((dt, shape), (name, shapes[k]), k)
                    self.assertEqual(raw, conv(shadow[k].reshape(shapes[k])), (profile, name, k))
            # f32 read back into the model: the EMA weights of the eval profile.
            got, _ = read_safetensors(os.path.join(tmp, "ema-None-F32.safetensors"))
            w = np.frombuffer(got["0.weight"][2], dtype="<f4").reshape(got["0.weight"][1])
            with ema.eval():
                self.assertTrue(np.array_equal(w, model[0].weight.detach().numpy()))
            with self.assertRaises(ValueError):
                ema.export(os.path.join(tmp, "x"), dtype="f64")
            with self.assertRaises(KeyError):
                ema.export(os.path.join(tmp, "x"), profile="nope")


if __name__ == "__main__":
    unittest.main()
