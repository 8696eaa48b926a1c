"""emaclient.distributed - the EMA of a model trained with torch.distributed.

docs/scaleout.md ("Python") is the user's guide; this module holds what
emaclient.torch.EMA calls for it:

  shard metadata   where each local tensor sits in the full one (global shape
                   and offsets, PyTorch distributed checkpoint's chunk): given
                   explicitly (EMA(model, shard={name: (global_shape,
                   offsets)})) or read from DTensor parameters or FSDP1 flat
                   parameters (shard="auto").
  group checkpoint every rank writes its slices of the EMA (one file per
                   distinct shard; every profile's of an EMA with profiles=),
                   a barrier, then rank 0 writes the manifest
                   last: docs/scaleout.md "Group checkpoints" is the format,
                   client/emacheckpoint.h the C functions that write and read
                   it.
  resume           each rank reads its own slice, whatever the world size the
                   checkpoint was written with, and resumes the EMA bit for bit
                   through EMA.load_state_dict.

EMA is elementwise, so the EMA of a slice is the slice of the EMA of the whole:
no communication happens per step; the ranks meet only at a checkpoint, through
a gloo process group of their own (so that the timeout is this module's and the
exchange works whatever the training backend).
"""

import collections
import ctypes
import datetime
import json
import os
import re

import torch

from . import Error, _b, _check, _lib, _safetensors
from ._lib import lib

__all__ = ["MANIFEST", "Checkpoint", "consolidate", "unwrap", "dtensor_shards", "flat_pieces"]

#: the manifest's name in a group checkpoint's directory
MANIFEST = "emad-checkpoint.json"
_FORMAT = 1  # of the "emaclient" entry of the manifest's config
#: an EMA with profiles: the tensors of profile P (but the eval profile's, which
#: have the plain names) are named PROFILE_PREFIX + P + "/" + the state_dict name
#: (docs/scaleout.md "Profiles in a group checkpoint"; no state_dict name starts
#: with ".")
PROFILE_PREFIX = ".profile/"

# The protocol's dtype names are safetensors' in lower case (docs/protocol.md "register").
_WIRE_OF_ST = {st: st.lower() for st in _safetensors._NAMES.values()}
_ST_OF_WIRE = {v: k for k, v in _WIRE_OF_ST.items()}


# ---- models ----

def unwrap(model):
    """The module a DistributedDataParallel (or DataParallel) wraps; model itself
    otherwise. The EMA's names are then the inner module's state_dict names."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def _dtensor_types():
    types = []
    for mod in ("torch.distributed.tensor", "torch.distributed._tensor"):
        try:
            m = __import__(mod, fromlist=["DTensor"])
        except Exception:  # absent, or unimportable (torch 1.13 under Python 3.11)
            continue
        if hasattr(m, "DTensor"):
            types.append(m.DTensor)
    return tuple(types)


def is_dtensor(t):
    types = _dtensor_types()
    return bool(types) and isinstance(t, types)


def _dtensor_slice(name, t):
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    except ImportError:
        try:
            from torch.distributed._tensor._utils import compute_local_shape_and_global_offset
        except ImportError:
            raise TypeError("%s: this torch (%s) has DTensors but not "
                            "compute_local_shape_and_global_offset; pass shard= explicitly" %
                            (name, torch.__version__)) from None
    shape, offsets = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(int(d) for d in t.shape), tuple(int(o) for o in offsets)


def dtensor_shards(model):
    """{name: (global_shape, offsets)} of the model's DTensor parameters and
    buffers (FSDP2's fully_shard, tensor parallel): what shard="auto" uses.
    Empty where torch has no DTensor (torch 1.13)."""
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if is_dtensor(t):
            out[name] = _dtensor_slice(name, t)
    return out


# ---- FSDP1 flat parameters ----

#: the module names FSDP1 puts between a model's modules; FSDP's own state_dict
#: names leave them out, and so do the EMA's
_WRAPPERS = ("_fsdp_wrapped_module.", "_fpw_module.", "_checkpoint_wrapped_module.")


#: One original parameter's piece of this rank's shard of an FSDP1 flat
#: parameter: elements [start, start + n) of the flat parameter's data are
#: elements [offset, offset + n) of the parameter (shape `shape`, numel
#: elements) flattened. local: the shard's numel (padding included).
FlatPiece = collections.namedtuple("FlatPiece", "name start n numel offset shape local")


def clean_name(name):
    """name without FSDP1's wrapper modules: the model's state_dict name."""
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def is_flat_param(t):
    """An FSDP1 FlatParameter (use_orig_params=False), known by its metadata:
    torch.distributed.fsdp may not even import (torch 1.13 under Python 3.11)."""
    return isinstance(t, torch.nn.Parameter) and hasattr(t, "_numels") and \
        hasattr(t, "_shapes") and (hasattr(t, "_fqns") or hasattr(t, "_prefixed_param_names"))


def flat_pieces(name, t):
    """[FlatPiece] of flat parameter t, registered under `name`: the pieces of
    the original parameters its shard holds (padding is none), named with their
    state_dict names. Read from torch 2.x's metadata (_fqns, _shard_param_infos)
    or torch 1.13's (_prefixed_param_names, _shard_indices, _shard_param_offsets
    with inclusive ends); without shard metadata (NO_SHARD) every parameter whole.
    Shared parameters are not in them: their piece is the first name's."""
    owner = name.rpartition(".")[0]
    names = t._fqns if hasattr(t, "_fqns") else t._prefixed_param_names
    shapes, numels = list(t._shapes), [int(n) for n in t._numels]
    local = int(t.data.numel())
    spans = []  # (index of the parameter, start in the shard, n, offset in the parameter)
    if hasattr(t, "_shard_param_infos"):
        for i, info in enumerate(t._shard_param_infos):
            if info.in_shard:
                spans.append((i, int(info.offset_in_shard), int(info.numel_in_shard),
                              int(info.intra_param_start_idx)))
    elif hasattr(t, "_shard_param_offsets"):
        at, first = 0, int(t._shard_indices[0]) if t._shard_param_offsets else 0
        for k, (a, b) in enumerate(t._shard_param_offsets):
            spans.append((first + k, at, int(b) - int(a) + 1, int(a)))
            at += int(b) - int(a) + 1
    else:
        at = 0
        for i, n in enumerate(numels):
            spans.append((i, at, n, 0))
            at += n
    out = []
    for i, start, n, off in spans:
        full = clean_name(owner + "." + names[i] if owner else names[i])
        shape = tuple(int(d) for d in shapes[i])
        if not (0 <= i < len(numels)) or n < 0 or off < 0 or off + n > numels[i] or \
                start < 0 or start + n > local or _numel(shape) != numels[i]:
            raise ValueError("%s: the FSDP flat parameter's metadata does not fit: %s's piece "
                             "[%d, %d) of its shard (%d elements) as [%d, %d) of %d elements %s"
                             % (name, full, start, start + n, local, off, off + n,
                                numels[i] if 0 <= i < len(numels) else -1, list(shape)))
        out.append(FlatPiece(full, start, n, numels[i], off, shape, local))
    return out


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def flat_shards(entries):
    """{name: (global_shape, offsets)} of the entries that are pieces of FSDP1
    flat parameters: 1-D slices of the parameter flattened."""
    return {e.name: ((e.flat.numel,), (e.flat.offset,)) for e in entries
            if getattr(e, "flat", None) is not None}


def resolve_shards(model, entries, shard):
    """{name: (global_shape, offsets)} for every entry: shard's, DTensors' (with
    "auto"), the whole tensor (replicated) for the others. ValueError on a
    slice that names no tensor or does not fit its global shape."""
    if shard is None or shard == "auto":
        given = dict(dtensor_shards(model), **flat_shards(entries)) if shard == "auto" else {}
    elif isinstance(shard, dict):
        given = {}
        for name, spec in shard.items():
            if isinstance(spec, dict):
                spec = (spec.get("global_shape"), spec.get("offsets"))
            try:
                g, o = spec
                given[name] = (tuple(int(d) for d in g), tuple(int(d) for d in o))
            except (TypeError, ValueError):
                raise ValueError("shard[%r] must be (global_shape, offsets) or {\"global_shape\","
                                 " \"offsets\"}, not %r" % (name, spec)) from None
    else:
        raise ValueError("shard must be None, 'auto' or {name: (global_shape, offsets)}, not %r"
                         % (shard,))
    names = {e.name for e in entries}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ValueError("shard names tensors the model does not have: %s" % ", ".join(unknown))
    out = {}
    for e in entries:
        g, o = given.get(e.name, (e.shape, (0,) * len(e.shape)))
        if len(g) != len(e.shape) or len(o) != len(e.shape):
            raise ValueError("shard[%r]: global shape %s and offsets %s must have as many "
                             "dimensions as the local tensor %s" % (e.name, g, o, e.shape))
        if len(g) > 8:
            raise ValueError("shard[%r]: at most 8 dimensions" % e.name)
        for d, (gd, od, ld) in enumerate(zip(g, o, e.shape)):
            if od < 0 or od + ld > gd:
                raise ValueError("shard[%r]: dimension %d: the local slice [%d, %d) is not "
                                 "inside the global size %d" % (e.name, d, od, od + ld, gd))
        out[e.name] = (g, o)
    return out


def declare(segment, entries, shards, job=None, replicas=0):
    """Have the segment's register tell emad where each sliced tensor sits
    and, with job under torch.distributed, the rank's group (docs/protocol.md
    "Shard sessions"): emad keeps them with the session and shows a job's ranks
    together. The EMA itself needs neither. replicas > 1: this rank is one of
    that many on this node holding the same weights, sharing one session
    (docs/protocol.md "Replicas")."""
    for i, e in enumerate(entries):
        g, o = shards[e.name]
        if tuple(g) == tuple(e.shape):
            continue  # whole
        err = _lib.EmacError()
        _check(lib.emac_segment_set_slice(segment._handle(), i, _u64s(g), _u64s(o), len(g),
                                          ctypes.byref(err)), err)
    if job is None:
        return
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    g = _lib.EmacGroup(_b(job, "job"), rank, world, int(replicas or 0))
    err = _lib.EmacError()
    _check(lib.emac_segment_set_group(segment._handle(), ctypes.byref(g), ctypes.byref(err)), err)


# ---- the C functions (client/emacheckpoint.h) ----

def _u64s(xs):
    return (ctypes.c_uint64 * max(1, len(xs)))(*[int(x) for x in xs])


def _group(job, batch, epoch, world_size):
    return _lib.EmacCkptGroup(_b(job, "job"), int(batch), int(epoch), int(world_size))


def _shard_struct(file, ranks, slices, keep):
    """slices: [(name, wire dtype, global_shape, offsets, shape, tensor or None)]."""
    arr = (_lib.EmacCkptSlice * max(1, len(slices)))()
    for i, (name, dtype, g, o, shape, t) in enumerate(slices):
        bufs = [_b(name, "name"), _b(dtype, "dtype"), _u64s(g), _u64s(o), _u64s(shape)]
        keep += bufs
        arr[i] = _lib.EmacCkptSlice(bufs[0], bufs[1], len(g), bufs[2], bufs[3], bufs[4],
                                    None if t is None else t.data_ptr())
    rk = (ctypes.c_uint32 * max(1, len(ranks)))(*ranks)
    fb = _b(file, "file")
    keep += [arr, rk, fb]
    return _lib.EmacCkptShard(fb, rk, len(ranks), arr, len(slices))


def write_shard(path, job, batch, epoch, world_size, ranks, slices):
    """One shard file (emac_checkpoint_write_shard). slices: [(name, wire
    dtype, global_shape, offsets, shape, contiguous CPU tensor)]."""
    keep = []
    for s in slices:
        t = s[5]
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("write_shard: %s must be a contiguous CPU tensor" % s[0])
    shard = _shard_struct(os.path.basename(path), ranks, slices, keep)
    g = _group(job, batch, epoch, world_size)
    err = _lib.EmacError()
    _check(lib.emac_checkpoint_write_shard(os.fsencode(path), ctypes.byref(g),
                                           ctypes.byref(shard), ctypes.byref(err)), err)


def write_manifest(path, job, batch, epoch, world_size, config, shards):
    """The manifest (emac_checkpoint_write_manifest): shards [(file, ranks,
    slices without data)]; config a JSON-able dict."""
    keep = []
    arr = (_lib.EmacCkptShard * max(1, len(shards)))()
    for i, (file, ranks, slices) in enumerate(shards):
        arr[i] = _shard_struct(file, ranks, [s[:5] + (None,) for s in slices], keep)
    g = _group(job, batch, epoch, world_size)
    err = _lib.EmacError()
    _check(lib.emac_checkpoint_write_manifest(
        os.fsencode(path), ctypes.byref(g), json.dumps(config).encode(), arr, len(shards),
        ctypes.byref(err)), err)


def consolidate(manifest, out, dtype=None, profile=None):
    """The full tensors of a group checkpoint into one safetensors file
    (emac_checkpoint_consolidate_profile; `emactl consolidate`). manifest: its
    path or the checkpoint's directory; dtype None (bytes copied), "f32",
    "bf16" or "f16"; profile: of a checkpoint of an EMA with profiles, the
    profile whose tensors to write, under the plain names (None: the eval
    profile; one it lacks: USAGE, naming those it has)."""
    err = _lib.EmacError()
    _check(lib.emac_checkpoint_consolidate_profile(
        os.fsencode(_manifest_path(manifest)), os.fsencode(out), _b(dtype, "dtype"),
        _b(profile, "profile"), ctypes.byref(err)), err)


def _manifest_path(path):
    return os.path.join(path, MANIFEST) if os.path.isdir(path) else path


class Checkpoint:
    """A group checkpoint opened for reading (emac_checkpoint_open: the whole
    checkpoint is validated first, docs/scaleout.md "What a reader checks").
    path: the manifest or its directory."""

    def __init__(self, path):
        self.path = _manifest_path(path)
        h = ctypes.c_void_p()
        err = _lib.EmacError()
        _check(lib.emac_checkpoint_open(os.fsencode(self.path), ctypes.byref(h),
                                        ctypes.byref(err)), err)
        self._h = h
        try:
            g = lib.emac_checkpoint_group(h).contents
            self.job = g.job.decode("utf-8", "replace")
            self.batch, self.epoch, self.world_size = int(g.batch), int(g.epoch), int(g.world_size)
            # Validated by the C reader above; read again here for what the C API
            # does not return (the config, each tensor's dtype and global shape).
            with open(self.path, "rb") as f:
                m = json.loads(f.read().decode("utf-8"))
            self.config = m.get("config") or {}
            self.tensors = {}
            for shard in m["shards"]:
                for t in shard["tensors"]:
                    self.tensors.setdefault(t["name"], (_WIRE_OF_ST[t["dtype"]],
                                                        tuple(t["global_shape"])))
        except BaseException:
            self.close()
            raise

    def read(self, name, offsets, shape, dtype=None):
        """The block [offsets, offsets + shape) of tensor name, as a new CPU
        tensor of torch dtype `dtype` (None: the checkpoint's; a float tensor
        may be read as another float dtype, rounded to nearest even)."""
        from .torch import DTYPES, _TORCH
        if name not in self.tensors:
            raise Error("BADFILE", "%s: the checkpoint has no tensor %r" % (self.path, name))
        wire = self.tensors[name][0] if dtype is None else DTYPES[dtype]
        out = torch.empty(tuple(shape), dtype=_TORCH[wire])
        err = _lib.EmacError()
        _check(lib.emac_checkpoint_read(
            self._h, _b(name, "name"), len(shape), _u64s(offsets), _u64s(shape),
            out.data_ptr() if out.numel() else None, out.numel() * out.element_size(),
            None if dtype is None else wire.encode(), ctypes.byref(err)), err)
        return out

    def close(self):
        if self._h:
            lib.emac_checkpoint_close(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_h", None):
            self.close()


# ---- group checkpoints of an EMA ----

class _Comm:
    """The ranks' meeting points at a checkpoint (or a resume of replicas): a
    gloo group of their own (made collectively: once per EMA at its first group
    checkpoint; at each load_state_dict of replicas), with a timeout, whatever
    backend the job's own group uses (NCCL cannot reduce host tensors). A
    single process without torch.distributed is a world of one."""

    def __init__(self, group, timeout, purpose="group checkpoint"):
        import torch.distributed as dist
        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.timeout = float(timeout)
        self.purpose = purpose  # what the errors name
        if self.dist is None:
            self.rank, self.world, self.pg = 0, 1, None
            return
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        ranks = None
        if group is not None:
            if hasattr(dist, "get_process_group_ranks"):
                ranks = dist.get_process_group_ranks(group)
            else:  # torch 1.13
                ranks = sorted(dist.distributed_c10d._pg_group_ranks[group])
        self.pg = dist.new_group(ranks=ranks, backend="gloo",
                                 timeout=datetime.timedelta(seconds=self.timeout))

    def gather(self, obj, what):
        """Every rank's obj, by rank."""
        if self.dist is None:
            return [obj]
        out = [None] * self.world
        try:
            self.dist.all_gather_object(out, obj, group=self.pg)
        except RuntimeError as e:
            raise self._failed(what, "a rank is gone or did not arrive", e) from None
        return out

    def barrier(self, what):
        """A barrier that, on rank 0, names the ranks that did not reach it."""
        if self.dist is None:
            return
        try:
            self.dist.monitored_barrier(group=self.pg,
                                        timeout=datetime.timedelta(seconds=self.timeout),
                                        wait_all_ranks=True)
        except RuntimeError as e:
            msg = str(e)
            m = re.search(r"Ranks? ([0-9, ]+) failed to pass monitoredBarrier", msg)
            if self.rank == 0 and m:
                who = "ranks %s" % m.group(1).strip() if "," in m.group(1) else \
                    "rank %s" % m.group(1).strip()
                why = "%s did not reach the barrier %s within %g s (dead or stuck)" % (
                    who, what, self.timeout)
            else:
                why = "the barrier %s failed on rank %d: a rank is gone or did not arrive " \
                    "within %g s (%s)" % (what, self.rank, self.timeout, _first_line(e))
            raise Error("TIMEOUT", "%s: %s" % (self.purpose, why)) from None

    def broadcast(self, obj, what):
        """Rank 0's obj on every rank."""
        if self.dist is None:
            return obj
        box = [obj]
        try:
            self.dist.broadcast_object_list(box, src=self._global(0), group=self.pg)
        except RuntimeError as e:
            raise self._failed(what, "rank 0 is gone or did not answer", e) from None
        return box[0]

    def _failed(self, what, why, e):
        return Error("TIMEOUT", "%s: rank %d: %s failed: %s within %g s (%s)" % (
            self.purpose, self.rank, what, why, self.timeout, _first_line(e)))

    def _global(self, r):
        if hasattr(self.dist, "get_global_rank"):
            return self.dist.get_global_rank(self.pg, r)
        return self.dist.distributed_c10d._get_global_rank(self.pg, r)


def _first_line(e):
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _eval_profile(ema):
    return ema._eval_profile or ema.profiles[0]


def _profile_name(profile, name):
    return PROFILE_PREFIX + profile + "/" + name


def _layout(ema):
    """[(name, wire dtype of the shadow, global_shape, offsets, shape, shadow)]:
    the eval profile's under the plain names, then each other profile's."""
    from .torch import DTYPES
    out = []
    ev = _eval_profile(ema)
    for p in [ev] + [p for p in ema.profiles if p != ev]:
        for e, sh in zip(ema._entries, ema._shadows_of(p)):
            g, o = ema._shard[e.name]
            out.append((e.name if p == ev else _profile_name(p, e.name), DTYPES[sh.dtype],
                        list(g), list(o), list(e.shape), sh.reshape(e.shape)))
    return out


def group_checkpoint(ema, directory, job="emaclient", timeout=600.0, group=None):
    """Write the EMA's group checkpoint into `directory` (docs/scaleout.md):
    collective, every rank of `group` (default: the whole job) calls it at the
    same batch. Returns the manifest's path once it exists, on every rank."""
    if ema._closed:
        raise Error("USAGE", "group_checkpoint: the EMA is closed")
    comm = getattr(ema, "_group_comm", None)
    if comm is None or comm.timeout != float(timeout):
        comm = ema._group_comm = _Comm(group, timeout)
    directory = os.path.abspath(directory)
    manifest = os.path.join(directory, MANIFEST)
    ema.wait()
    batch, epoch = ema._batch, ema._epoch
    layout = _layout(ema)
    problem = None
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.lexists(manifest):
            problem = "%s exists: a checkpoint is there already (use one directory per " \
                "checkpoint)" % manifest
    except OSError as e:
        problem = "cannot make %s: %s" % (directory, e)
    # Pieces of FSDP flat parameters are 1-D slices of the parameters flattened: the
    # manifest records their shapes, which consolidate gives them back (from every
    # rank: rank 0 may hold no piece of some parameter).
    shapes = {e.name: list(e.flat.shape) for e in ema._entries if e.flat is not None}
    mine = {"rank": comm.rank, "batch": batch, "epoch": epoch, "problem": problem,
            "layout": [s[:5] for s in layout], "shapes": shapes}
    infos = comm.gather(mine, "exchanging the shard layouts")
    bad = ["rank %d: %s" % (i["rank"], i["problem"]) for i in infos if i["problem"]]
    if bad:
        raise Error("USAGE", "group checkpoint in %s: %s" % (directory, "; ".join(bad)))
    if len({(i["batch"], i["epoch"]) for i in infos}) > 1:
        raise Error("STATE", "group checkpoint in %s: the ranks are at different times (%s): "
                    "call it at the same batch on every rank; nothing was written" % (
                        directory, ", ".join("rank %d at batch %d epoch %d" % (
                            i["rank"], i["batch"], i["epoch"]) for i in infos)))
    # A replica's shadow moves with its leader's events: wait for the leader's at
    # this batch (every rank is at it now, the leader too: it sent it).
    ema._await_leader()
    st = ema.state()
    # Replicas (the same slices on several ranks: DDP, HSDP) are written once, by
    # the lowest rank holding them, and the file lists them all.
    holders = {}
    for i in infos:
        holders.setdefault(json.dumps(i["layout"]), []).append(i["rank"])
    shards = [("rank-%05d.safetensors" % ranks[0], ranks, infos[ranks[0]]["layout"])
              for ranks in holders.values()]
    ranks = holders[json.dumps(mine["layout"])]
    status = None
    if comm.rank == ranks[0]:
        try:
            _write_shard_file(os.path.join(directory, "rank-%05d.safetensors" % comm.rank),
                              job, batch, epoch, comm.world, ranks, layout)
        except (Error, OSError, ValueError) as e:
            status = "rank %d could not write its shard file: %s" % (comm.rank, e)
    comm.barrier("after writing the shard files (in %s); no manifest was written" % directory)
    statuses = comm.gather(status, "collecting the writers' results")
    result = None
    if comm.rank == 0:
        failed = [s for s in statuses if s]
        if failed:
            result = "; ".join(failed)
        else:
            config = {"ema": ema._config_reported(st),
                      "emaclient": {"format": _FORMAT, "started": st["started"],
                                    "updates": st["updates"], "last_time": st["last_time"],
                                    "counts": dict(zip(("samples", "tokens", "seconds"),
                                                       ema._now()[3:]))}}
            for i in infos:
                shapes.update(i["shapes"])
            if shapes:
                config["emaclient"]["shapes"] = shapes
            if ema._profiles is not None:
                # Rank 0's counters: every rank's profiles see the same events.
                config["emaclient"]["eval_profile"] = _eval_profile(ema)
                config["emaclient"]["profiles"] = [
                    {k: p[k] for k in ("name", "started", "updates", "last_batch",
                                       "last_decay")} for p in st.get("profiles", [])]
            try:
                write_manifest(manifest, job, batch, epoch, comm.world, config, shards)
            except Error as e:
                result = "rank 0 could not write the manifest: %s" % e
    result = comm.broadcast(result, "waiting for rank 0's manifest")
    if result is not None:
        raise Error("STATE", "group checkpoint in %s at batch %d: %s; no manifest was written"
                    % (directory, batch, result))
    return manifest


def _write_shard_file(path, job, batch, epoch, world, ranks, layout):
    """(A function of its own so that a test can stop a rank right here.)"""
    write_shard(path, job, batch, epoch, world, ranks,
                [s[:5] + (s[5].contiguous(),) for s in layout])


def load_group_checkpoint(ema, path, strict=True):
    """Resume the EMA from a group checkpoint (path: the manifest or its
    directory), reading this rank's slices whatever the world size it was
    written with. strict: the checkpoint's tensors must be the EMA's, no more
    and no fewer (BADFILE naming them, nothing loaded); else a warning names
    them, the checkpoint's extra tensors are not read and the EMA of the
    tensors it lacks restarts from the current weights (as load_state_dict's).
    An EMA with profiles gets every profile back with its counters; the
    checkpoint's profiles and their settings must be the EMA's (else
    BADFILE, nothing loaded)."""
    from .torch import _LOW_PRECISION
    with Checkpoint(path) as ck:
        cfg = ck.config.get("emaclient") or {}
        if cfg.get("format") != _FORMAT:
            raise Error("BADFILE", "%s: not a checkpoint emaclient wrote (config.emaclient."
                        "format %r)" % (ck.path, cfg.get("format")))
        others = _check_profiles(ema, ck, cfg)
        # Every name the checkpoint should hold: the eval profile's plain, the others'
        # prefixed (none without profiles).
        wanted = {e.name: e for e in ema._entries}
        for p in others or []:
            wanted.update((_profile_name(p, e.name), e) for e in ema._entries)
        missing = [n for n in wanted if n not in ck.tensors]
        unexpected = sorted(set(ck.tensors) - set(wanted))
        if (missing or unexpected) and strict:
            raise Error("BADFILE", "%s: %s (strict=False loads the others)" % (ck.path, "; ".join(
                x for x in ("the checkpoint lacks %s" % ", ".join(missing) if missing else "",
                            "the model has no %s" % ", ".join(unexpected) if unexpected else "")
                if x)))
        for n, e in wanted.items():
            g = tuple(ema._shard[e.name][0])
            if n in ck.tensors and ck.tensors[n][1] != g:
                raise Error("BADFILE", "%s: tensor %r has global shape %s there, %s in this "
                            "model" % (ck.path, n, list(ck.tensors[n][1]), list(g)))
        params, buffers, shadow = {}, {}, {}
        for e in ema._entries:
            if e.name not in ck.tensors:
                continue
            t = ck.read(e.name, ema._shard[e.name][1], e.shape, dtype=e.shadow.dtype)
            shadow[e.name] = t
            (params if e.param is not None else buffers)[e.name] = \
                t.to(e.dtype) if e.dtype in _LOW_PRECISION else t
        meta = {"format": 1, "session": ema.session_name,
                "config": (ck.config.get("ema") or {}), "started": bool(cfg.get("started")),
                "updates": cfg.get("updates"), "last_time": cfg.get("last_time"),
                "counts": cfg.get("counts") or {},
                "shadow": {n: t for n, t in shadow.items()
                           if wanted[n].dtype in _LOW_PRECISION},
                "excluded": [], "state_file": None}
        if others is not None:
            meta["profiles"] = _profiles_meta(ema, ck, cfg, shadow, others)
        # The flat layout, not Composer's {named_parameters_dict, ...}: there a parameter
        # absent is one Composer left out of the EMA (frozen), and would stay out of it. Here
        # it is missing: load_state_dict warns, naming it, and its EMA restarts from the
        # current weights. The extra names get empty placeholders so that the same warning
        # names them too; they are not read.
        flat = dict(params)
        flat.update(buffers)
        flat.update((n, torch.empty(0)) for n in unexpected)
        state = {"ema_weights_active": False, "ema_started": bool(cfg.get("started")),
                 "emad": meta, "ema_model": flat}
        ema.load_state_dict(state, strict=False)
        return ck.batch


def _check_profiles(ema, ck, cfg):
    """The names of the checkpoint's profiles other than the eval one (None
    without profiles), once they are the EMA's with the same settings: else
    BADFILE, before anything is loaded."""
    saved = cfg.get("profiles")
    if saved is None and ema._profiles is None:
        return None
    if saved is None or ema._profiles is None:
        raise Error("BADFILE", "%s: %s; nothing was loaded" % (ck.path, (
            "the checkpoint is of an EMA with profiles (%s), this EMA has none" % ", ".join(
                str(p.get("name")) for p in saved if isinstance(p, dict))
            if saved is not None else
            "this EMA has profiles (%s), the checkpoint none" % ", ".join(ema.profiles))))
    names = [p.get("name") for p in saved if isinstance(p, dict)] \
        if isinstance(saved, list) else []
    if names != ema.profiles or ck.config.get("ema") != ema._config_reported(ema.state()):
        raise Error("BADFILE", "%s: the checkpoint's profiles (%s, settings %s) are not this "
                    "EMA's (%s, settings %s); nothing was loaded" % (
                        ck.path, ", ".join(str(n) for n in names),
                        json.dumps(ck.config.get("ema")), ", ".join(ema.profiles),
                        json.dumps(ema._config_reported(ema.state()))))
    ev = cfg.get("eval_profile")
    if ev != _eval_profile(ema):
        raise Error("BADFILE", "%s: config.emaclient.eval_profile %r is not this EMA's eval "
                    "profile %r; nothing was loaded" % (ck.path, ev, _eval_profile(ema)))
    return [n for n in names if n != ev]


def _profiles_meta(ema, ck, cfg, eval_shadow, others):
    """state_dict()'s meta["profiles"] from the checkpoint: each profile's
    slices of this rank (the eval profile's already read: eval_shadow) and its
    counters. A tensor the checkpoint lacks (strict=False) restarts from the
    current weights in that profile."""
    out = {}
    for p in cfg["profiles"]:
        name = p["name"]
        sh = {}
        for e in ema._entries:
            n = e.name if name not in others else _profile_name(name, e.name)
            if n not in ck.tensors:
                sh[e.name] = e.get().detach().to("cpu")
            elif name not in others:
                sh[e.name] = eval_shadow[e.name]
            else:
                sh[e.name] = ck.read(n, ema._shard[e.name][1], e.shape, dtype=e.shadow.dtype)
        out[name] = {"shadow": sh, "started": p.get("started"), "updates": p.get("updates"),
                     "last_batch": p.get("last_batch"), "last_decay": p.get("last_decay")}
    return out
