"""Post-hoc EMA from snapshot files (emac_posthoc_files, docs/posthoc.md), through ctypes on
build/libemaclient.so, checked only against code of this file: a safetensors writer and reader
written here with struct and json, the EDM2 solver written here from the paper with numpy
(np.roots for gamma, np.linalg.solve on the closed-form Gram matrix), and power-function EMAs
simulated here with numpy.

- The output's tensors, names, shapes and metadata; its values equal the numpy sum of the
  coefficients times the snapshots, and the coefficients equal numpy's.
- The reconstruction approximates the EMA of the target width actually run over the training.
- Asking for a stored profile's own sigma_rel at one of its snapshot batches gives that
  snapshot back, to within rounding.
- bf16 and f16 snapshots are widened exactly; bf16 and f16 outputs are rounded to nearest even.
- Malformed or mismatched snapshots, bad arguments and unwritable outputs fail with their error
  code, and leave an existing output file as it was.
"""

import ctypes
import json
import os
import struct
import tempfile
import unittest

import numpy as np

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


class EmacError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_char * 16), ("message", ctypes.c_char * 512)]


def load():
    path = os.environ.get("EMACLIENT_LIB") or os.path.join(ROOT, "build", "libemaclient.so")
    lib = ctypes.CDLL(path)
    d, dp = ctypes.c_double, ctypes.POINTER(ctypes.c_double)
    lib.emac_phema_gamma.argtypes = [d, dp]
    lib.emac_phema_sigma_rel.argtypes = [d, dp]
    lib.emac_phema_coefficients.argtypes = [ctypes.c_size_t, dp, dp, d, d, dp,
                                            ctypes.POINTER(EmacError)]
    lib.emac_posthoc_files.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t, d,
                                       ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p,
                                       ctypes.POINTER(EmacError)]
    return lib


# ---- safetensors, written and read independently of proto/safetensors.c ----

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
             "BF16": np.uint16}


def write_st(path, tensors, metadata, pad=True):
    """tensors: list of (name, "F32"|..., array); BF16 arrays are uint16 bit patterns."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, arr in tensors:
        raw = np.ascontiguousarray(arr, dtype=ST_DTYPES[dt]).astype("<" + np.dtype(
            ST_DTYPES[dt]).str[1:]).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_st(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode())
    meta = header.pop("__metadata__", {})
    out, base = {}, 8 + n
    for name, e in header.items():
        b, end = e["data_offsets"]
        arr = np.frombuffer(data[base + b:base + end], dtype="<" + np.dtype(
            ST_DTYPES[e["dtype"]]).str[1:])
        out[name] = (e["dtype"], arr.reshape(e["shape"]))
    return out, meta, n


def bf16_bits(x32):
    """float32 -> bf16 bits, round to nearest even (NaN not needed here)."""
    u = np.asarray(x32, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_value(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


# ---- EDM2's mathematics, from the paper ----

def std_to_exp(s):
    t = s ** -2
    return max(r.real for r in np.roots([1, 7, 16 - t, 12 - t]) if abs(r.imag) < 1e-9)


def p_dot_p(ta, ga, tb, gb):
    # integral over [0, min] of (ga+1) x^ga / ta^(ga+1) * (gb+1) x^gb / tb^(gb+1)
    m = min(ta, tb)
    return (ga + 1) * (gb + 1) * m ** (ga + gb + 1) / ((ga + gb + 1) * ta ** (ga + 1)
                                                       * tb ** (gb + 1))


def solve(snaps, t_out, g_out):
    A = np.array([[p_dot_p(ta, ga, tb, gb) for (tb, gb) in snaps] for (ta, ga) in snaps])
    b = np.array([p_dot_p(ta, ga, t_out, g_out) for (ta, ga) in snaps])
    x = np.linalg.solve(A, b)
    return x / x.sum()


def power_ema_run(thetas, gamma):
    """EMA over the trajectory thetas[0..B) (batch b = index + 1); returns the shadow after
    each batch. beta = (1 - 1/b)^(gamma+1), the first update copies."""
    shadow, out = None, []
    for b, th in enumerate(thetas, start=1):
        beta = (1 - 1 / b) ** (gamma + 1)
        shadow = th.copy() if shadow is None else beta * shadow + (1 - beta) * th
        out.append(shadow.copy())
    return out


class PosthocFiles(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.lib = load()
        cls.tmp = tempfile.TemporaryDirectory(prefix="test_posthoc_")
        cls.dir = cls.tmp.name
        rng = np.random.default_rng(7)
        # A trajectory: a drift plus noise, so that EMAs of different widths differ.
        B = 400
        steps = rng.normal(size=(B, 17)) * 0.1 + 0.01
        cls.thetas = list(np.cumsum(steps, axis=0))
        cls.gammas = {0.05: std_to_exp(0.05), 0.10: std_to_exp(0.10)}
        cls.runs = {s: power_ema_run(cls.thetas, g) for s, g in cls.gammas.items()}
        cls.every, cls.B = 40, B

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def snapshot_files(self, tag, dtype="F32", meta_key="gamma"):
        paths = []
        for sigma, g in self.gammas.items():
            for b in range(self.every, self.B + 1, self.every):
                v = self.runs[sigma][b - 1].astype(np.float32)
                w, bias = v[:12].reshape(3, 4), v[12:]
                if dtype == "BF16":
                    w, bias = bf16_bits(w), bf16_bits(bias)
                elif dtype == "F16":
                    w, bias = w.astype(np.float16), bias.astype(np.float16)
                meta = {"batch": str(b), "profile": "p%02d" % round(sigma * 100)}
                meta[meta_key] = repr(g) if meta_key == "gamma" else repr(sigma)
                p = os.path.join(self.dir, "%s-s%03d-%06d.safetensors" % (tag, sigma * 100, b))
                write_st(p, [("layer.w", dtype, w), ("layer.bias", dtype, bias),
                             ("steps", "I64", np.array(b, dtype=np.int64))], meta,
                         pad=(b % 80 == 0))
                paths.append((p, b, g))
        return paths

    def posthoc(self, paths, sigma, batch, out, dtype=None):
        arr = (ctypes.c_char_p * len(paths))(*[p.encode() for p in paths])
        err = EmacError()
        rc = self.lib.emac_posthoc_files(arr, len(paths), sigma, batch, out.encode(),
                                         dtype.encode() if dtype else None, ctypes.byref(err))
        return rc, err.code.decode(), err.message.decode()

    def expected(self, snaps, sigma, batch):
        """numpy's coefficients and sum, over the snapshots at batch <= batch."""
        used = [(p, b, g) for (p, b, g) in snaps if b <= batch]
        x = solve([(b, g) for (_, b, g) in used], batch, std_to_exp(sigma))
        acc = {"layer.w": np.zeros((3, 4)), "layer.bias": np.zeros(5)}
        for coef, (p, b, g) in zip(x, used):
            tensors, _, _ = read_st(p)
            for name in acc:
                dt, arr = tensors[name]
                v = bf16_value(arr) if dt == "BF16" else arr.astype(np.float64)
                acc[name] += coef * v.astype(np.float64)
        return used, x, acc

    def test_output_is_the_numpy_combination_with_numpys_coefficients(self):
        snaps = self.snapshot_files("f32")
        out = os.path.join(self.dir, "out.safetensors")
        for sigma, batch in ((0.07, 400), (0.15, 400), (0.03, 360), (0.08, 0)):
            rc, code, msg = self.posthoc([p for p, _, _ in snaps], sigma, batch, out)
            self.assertEqual(rc, 0, msg)
            tensors, meta, hlen = read_st(out)
            self.assertEqual(hlen % 8, 0)
            target = batch or self.B
            used, x, acc = self.expected(snaps, sigma, target)
            self.assertEqual(meta["batch"], str(target))
            self.assertEqual(float(meta["sigma_rel"]), sigma)
            self.assertAlmostEqual(float(meta["gamma"]), std_to_exp(sigma), delta=1e-9)
            self.assertEqual(json.loads(meta["snapshot_batches"]), [b for _, b, _ in used])
            self.assertEqual(json.loads(meta["snapshots"]),
                             [os.path.basename(p) for p, _, _ in used])
            coefs = np.array(json.loads(meta["coefficients"]))
            np.testing.assert_allclose(coefs, x, rtol=0, atol=1e-7 * np.abs(x).max())
            self.assertEqual(sorted(tensors), ["layer.bias", "layer.w", "steps"])
            for name, want in acc.items():
                dt, got = tensors[name]
                self.assertEqual(dt, "F32")
                self.assertEqual(got.shape, want.shape)
                np.testing.assert_allclose(got, want.astype(np.float32), rtol=2e-6, atol=1e-6)
            # The integer buffer comes from the latest snapshot used.
            self.assertEqual(int(tensors["steps"][1]), max(b for _, b, _ in used))

    def test_the_reconstruction_approaches_the_ema_actually_run(self):
        snaps = self.snapshot_files("run")
        out = os.path.join(self.dir, "run.safetensors")
        g07 = std_to_exp(0.07)
        truth = power_ema_run(self.thetas, g07)[self.B - 1]
        rc, code, msg = self.posthoc([p for p, _, _ in snaps], 0.07, self.B, out)
        self.assertEqual(rc, 0, msg)
        tensors, meta, _ = read_st(out)
        got = np.concatenate([tensors["layer.w"][1].ravel(), tensors["layer.bias"][1]])
        spread = np.linalg.norm(self.runs[0.05][-1] - self.runs[0.10][-1])
        # Within a small part of the distance between the two stored profiles' EMAs.
        self.assertLess(np.linalg.norm(got - truth), 0.05 * spread)
        self.assertLess(float(meta["residual"]), 0.05)

    def test_a_stored_profile_gives_back_its_snapshot(self):
        snaps = self.snapshot_files("self", meta_key="sigma_rel")
        out = os.path.join(self.dir, "self.safetensors")
        for sigma in (0.05, 0.10):
            for batch in (120, 400):
                rc, code, msg = self.posthoc([p for p, _, _ in snaps], sigma, batch, out)
                self.assertEqual(rc, 0, msg)
                tensors, _, _ = read_st(out)
                want, _, _ = read_st([p for p, b, g in snaps
                                      if b == batch and g == self.gammas[sigma]][0])
                for name in ("layer.w", "layer.bias"):
                    np.testing.assert_allclose(tensors[name][1], want[name][1], rtol=1e-6,
                                               atol=1e-7)

    def test_bf16_and_f16_snapshots_and_outputs(self):
        for dt, out_dt in (("BF16", "bf16"), ("F16", "f16"), ("F16", None)):
            snaps = self.snapshot_files("h" + dt, dtype=dt)
            out = os.path.join(self.dir, "h.safetensors")
            rc, code, msg = self.posthoc([p for p, _, _ in snaps], 0.07, 400, out, out_dt)
            self.assertEqual(rc, 0, msg)
            tensors, _, _ = read_st(out)
            _, _, acc = self.expected(snaps, 0.07, 400)
            for name, want in acc.items():
                got_dt, got = tensors[name]
                w32 = want.astype(np.float32)
                if out_dt == "bf16":
                    self.assertEqual(got_dt, "BF16")
                    # Round to nearest even from f32; one bf16 step at most where the two
                    # solvers' coefficients put the sum on the other side of a tie.
                    diff = np.abs(got.astype(np.int32) - bf16_bits(w32).astype(np.int32))
                    self.assertLessEqual(int(diff.max()), 1)
                    self.assertGreater(np.mean(diff == 0), 0.9)
                elif out_dt == "f16":
                    self.assertEqual(got_dt, "F16")
                    np.testing.assert_allclose(got.astype(np.float32),
                                               w32.astype(np.float16).astype(np.float32),
                                               rtol=1e-3, atol=1e-4)
                else:
                    self.assertEqual(got_dt, "F32")
                    np.testing.assert_allclose(got, w32, rtol=2e-6, atol=1e-6)

    def test_coefficients_through_the_c_api(self):
        d = ctypes.c_double()
        self.assertEqual(self.lib.emac_phema_gamma(0.05, ctypes.byref(d)), 0)
        self.assertAlmostEqual(d.value, std_to_exp(0.05), delta=1e-9)
        self.assertEqual(self.lib.emac_phema_gamma(0.3, ctypes.byref(d)), -22)
        self.assertEqual(self.lib.emac_phema_sigma_rel(std_to_exp(0.1), ctypes.byref(d)), 0)
        self.assertAlmostEqual(d.value, 0.1, delta=1e-12)
        snaps = [(b, g) for g in self.gammas.values() for b in range(40, 401, 40)]
        n = len(snaps)
        G = (ctypes.c_double * n)(*[g for _, g in snaps])
        T = (ctypes.c_double * n)(*[float(b) for b, _ in snaps])
        X = (ctypes.c_double * n)()
        err = EmacError()
        self.assertEqual(self.lib.emac_phema_coefficients(n, G, T, std_to_exp(0.07), 400.0, X,
                                                          ctypes.byref(err)), 0)
        x = solve(snaps, 400, std_to_exp(0.07))
        np.testing.assert_allclose(np.array(X[:]), x, rtol=0, atol=1e-7 * np.abs(x).max())

    def test_bad_inputs_fail_with_their_code_and_keep_the_old_output(self):
        snaps = [p for p, _, _ in self.snapshot_files("bad")]
        out = os.path.join(self.dir, "keep.safetensors")
        with open(out, "wb") as f:
            f.write(b"old")

        def check(paths, code, words, sigma=0.07, batch=400, dtype=None, path=out):
            rc, got, msg = self.posthoc(paths, sigma, batch, path, dtype)
            self.assertLess(rc, 0)
            self.assertEqual(got, code, msg)
            self.assertIn(words, msg)
            with open(out, "rb") as f:
                self.assertEqual(f.read(), b"old")
            self.assertEqual([e for e in os.listdir(self.dir) if e.startswith(".")], [])

        check(snaps, "USAGE", "sigma_rel 0.3 is outside", sigma=0.3)
        check(snaps, "USAGE", "not f32, bf16 or f16", dtype="i8")
        check(snaps, "USAGE", "no snapshot at batch 39 or before (the earliest is at batch 40)",
              batch=39)
        check([], "USAGE", "no snapshot files")
        nometa = os.path.join(self.dir, "nometa.safetensors")
        write_st(nometa, [("layer.w", "F32", np.zeros((3, 4))),
                          ("layer.bias", "F32", np.zeros(5)),
                          ("steps", "I64", np.array(1))], {"batch": "40"})
        check(snaps + [nometa], "BADFILE", "no metadata \"gamma\" or \"sigma_rel\"")
        shape = os.path.join(self.dir, "shape.safetensors")
        write_st(shape, [("layer.w", "F32", np.zeros((4, 3))),
                         ("layer.bias", "F32", np.zeros(5)),
                         ("steps", "I64", np.array(1))], {"batch": "40", "gamma": "7"})
        check(snaps + [shape], "BADFILE", "tensor \"layer.w\" has another shape")
        trunc = os.path.join(self.dir, "trunc.safetensors")
        with open(snaps[0], "rb") as f:
            data = f.read()
        with open(trunc, "wb") as f:
            f.write(data[:-4])
        check(snaps + [trunc], "BADFILE", "the file has")
        garbage = os.path.join(self.dir, "garbage.safetensors")
        with open(garbage, "wb") as f:
            f.write(struct.pack("<Q", 5) + b"{\"a\":")
        check(snaps + [garbage], "BADFILE", "garbage.safetensors: header")
        check(snaps + [os.path.join(self.dir, "missing")], "SYSTEM", "cannot open")
        rc, code, msg = self.posthoc(snaps, 0.07, 400,
                                     os.path.join(self.dir, "no", "dir", "x.safetensors"))
        self.assertEqual(code, "SYSTEM", msg)
        self.assertIn("cannot open its directory", msg)
        # An existing target that is no regular file (a device, a directory) is not replaced.
        rc, code, msg = self.posthoc(snaps, 0.07, 400, self.dir)
        self.assertEqual(code, "SYSTEM", msg)
        self.assertIn("not a regular file", msg)


if __name__ == "__main__":
    unittest.main()
