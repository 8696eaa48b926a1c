"""emactl consolidate (docs/scaleout.md "Group checkpoints"), checked only against code of this
file: the shard files and the manifest are written here from the format's description with
struct, json and numpy (no libemaclient writer), the consolidated file is read back here by hand
(8-byte length, JSON header, raw little-endian data: no torch.load, no safetensors package), and
compared with the numpy tensors the shards were cut from.

- f32 and bf16 tensors split by rows, columns and 2 x 2 blocks over 4 ranks, a replicated
  scalar: the output equals the full tensors bit for bit, with --dtype bf16 rounded to nearest
  even.
- A manifest whose shard files disagree on the batch exits 1 with BADFILE naming the file.
"""

import json
import os
import struct
import subprocess
import tempfile
import unittest

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
EMACTL = os.environ.get("EMACTL_BIN", os.path.join(ROOT, "build", "emactl"))

ST_NAME = {"f32": "F32", "bf16": "BF16", "i64": "I64"}


def f32_to_bf16_bits(a):
    """Round f32 to bf16 (nearest, ties to even), as uint16 bits; no NaNs in these tests."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path, tensors, meta):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header = {"__metadata__": meta}
    off = 0
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": ST_NAME[dt], "shape": list(shape),
                        "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, _, raw in tensors:
            f.write(raw)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        out[name] = (t["dtype"], tuple(t["shape"]), data[8 + n + b:8 + n + e])
    return out, meta


def split(g, p, q):
    each = -(-g // q)
    off = min(each * p, g)
    return off, min(each, g - off)


class Consolidate(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        rng = np.random.default_rng(14)
        self.full = {
            "enc.w": ("f32", rng.standard_normal((9, 8)).astype(np.float32)),
            "enc.b": ("bf16", f32_to_bf16_bits(rng.standard_normal((5, 11)))),
            "dec.k": ("f32", rng.standard_normal((4, 6, 3)).astype(np.float32)),
            "count": ("i64", np.array(123456789, dtype=np.int64)),
        }

    def tearDown(self):
        self.tmp.cleanup()

    def slice_of(self, name, r, w):
        shape = self.full[name][1].shape
        off, loc = [0] * len(shape), list(shape)
        if name == "enc.w":
            off[0], loc[0] = split(shape[0], r, w)
        elif name == "enc.b":
            off[1], loc[1] = split(shape[1], r, w)
        elif name == "dec.k":
            off[0], loc[0] = split(shape[0], r // 2, 2)
            off[1], loc[1] = split(shape[1], r % 2, 2)
        return off, loc

    def write_checkpoint(self, w=4, batch=300, odd_rank=None, odd_batch=None):
        shards = []
        for r in range(w):
            tensors, entries = [], []
            meta = {"format": "pt", "emad_checkpoint": "1", "job": "mlp",
                    "batch": str(odd_batch if r == odd_rank else batch), "epoch": "2",
                    "world_size": str(w), "rank": str(r), "ranks": json.dumps([r])}
            for name, (dt, arr) in self.full.items():
                off, loc = self.slice_of(name, r, w)
                block = arr[tuple(slice(o, o + n) for o, n in zip(off, loc))]
                tensors.append((name, dt, loc, np.ascontiguousarray(block).tobytes()))
                meta["slice." + name] = json.dumps({"global_shape": list(arr.shape),
                                                    "offsets": off})
                entries.append({"name": name, "dtype": ST_NAME[dt],
                                "global_shape": list(arr.shape), "offsets": off, "shape": loc})
            fname = "shard-%d.safetensors" % r
            write_safetensors(os.path.join(self.dir, fname), tensors, meta)
            shards.append({"file": fname, "ranks": [r], "tensors": entries})
        manifest = {"format": "emad-checkpoint", "version": 1, "job": "mlp", "batch": batch,
                    "epoch": 2, "world_size": w, "config": {"half_life": 500.0},
                    "shards": shards}
        path = os.path.join(self.dir, "emad-checkpoint.json")
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
        return path

    def consolidate(self, manifest, *extra):
        out = os.path.join(self.dir, "full.safetensors")
        p = subprocess.run([EMACTL, "consolidate", manifest, "--out", out, *extra],
                           capture_output=True, text=True)
        return p, out

    def test_consolidated_tensors_equal_the_full_ones_bit_for_bit(self):
        p, out = self.consolidate(self.write_checkpoint())
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("batch 300", p.stdout)
        got, meta = read_safetensors(out)
        self.assertEqual(meta["batch"], "300")
        self.assertEqual(json.loads(meta["emad_config"]), {"half_life": 500.0})
        self.assertEqual(set(got), set(self.full))
        for name, (dt, arr) in self.full.items():
            sdt, shape, raw = got[name]
            self.assertEqual(sdt, ST_NAME[dt], name)
            self.assertEqual(shape, arr.shape, name)
            self.assertEqual(raw, arr.tobytes(), name)

    def test_dtype_bf16_rounds_the_f32_tensors(self):
        p, out = self.consolidate(self.write_checkpoint(), "--dtype", "bf16")
        self.assertEqual(p.returncode, 0, p.stderr)
        got, _ = read_safetensors(out)
        for name, (dt, arr) in self.full.items():
            sdt, shape, raw = got[name]
            want = f32_to_bf16_bits(arr) if dt == "f32" else arr
            self.assertEqual(sdt, "BF16" if dt != "i64" else "I64", name)
            self.assertEqual(raw, want.tobytes(), name)
        # Read back as numbers: bf16 widened by hand is the f32 tensor to within bf16's step.
        wide = (np.frombuffer(got["enc.w"][2], np.uint16).astype(np.uint32) << 16).view(
            np.float32).reshape(9, 8)
        np.testing.assert_allclose(wide, self.full["enc.w"][1], rtol=2 ** -8)

    def test_shards_at_another_batch_are_refused(self):
        p, out = self.consolidate(self.write_checkpoint(odd_rank=3, odd_batch=299))
        self.assertEqual(p.returncode, 1)
        self.assertIn("BADFILE", p.stderr)
        self.assertIn('"shard-3.safetensors" at batch 299', p.stderr)
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
