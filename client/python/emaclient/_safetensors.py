"""A small safetensors reader and writer (8-byte little-endian header length, JSON header
padded with spaces to a multiple of 8, then the raw little-endian data), enough for the files
of post-hoc EMA and export (docs/posthoc.md). torch only: no other package is needed."""

import json
import os
import struct

import torch

# safetensors' dtype names.
_NAMES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}
_DTYPES = {v: k for k, v in _NAMES.items()}

# Refuse a header larger than this: a hostile file must not make us allocate at will.
_MAX_HEADER = 100 << 20


def read(path):
    """{name: 1-D or shaped tensor (CPU, a copy)}, metadata dict) of the file at path."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: not a safetensors file (%d bytes)" % (path, len(raw)))
    (n,) = struct.unpack("<Q", raw[:8])
    if n > _MAX_HEADER or 8 + n > len(raw):
        raise ValueError("%s: header of %d bytes does not fit the file (%d bytes)"
                         % (path, n, len(raw)))
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, h in header.items():
        dt = _DTYPES.get(h.get("dtype"))
        if dt is None:
            raise ValueError("%s: tensor %r has dtype %r, not one of %s"
                             % (path, name, h.get("dtype"), ", ".join(_DTYPES)))
        begin, end = h["data_offsets"]
        shape = [int(d) for d in h["shape"]]
        numel = 1
        for d in shape:
            numel *= d
        size = torch.empty((), dtype=dt).element_size()
        if not 0 <= begin <= end <= len(data) or end - begin != numel * size:
            raise ValueError("%s: tensor %r: data_offsets [%d, %d] do not hold %s of %s"
                             % (path, name, begin, end, shape, h["dtype"]))
        flat = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8)
        out[name] = flat.view(dt).reshape(shape) if numel else torch.empty(shape, dtype=dt)
    return out, meta


def write(path, tensors, metadata=None):
    """Write {name: tensor} (in order) to path, durably: a temp file beside it, fsync, rename,
    fsync of the directory, so that a crash leaves the old file or the new one."""
    header = {}
    blobs = []
    at = 0
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        if t.dtype not in _NAMES:
            raise TypeError("safetensors: tensor %r has dtype %s" % (name, t.dtype))
        b = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
