"""A stand-in for FSDP1's flat parameters (FullyShardedDataParallel with
use_orig_params=False), so that EMA(model, shard="auto") runs its whole path
here (docs/scaleout.md "Python").

Debian's torch 1.13 under Python 3.11 cannot import torch.distributed.fsdp,
and emaclient must not need it: it knows a flat parameter by its metadata.
sharded_model() builds what FSDP1 leaves outside forward and backward: the
wrapper modules (FullyShardedDataParallel's _fsdp_wrapped_module; torch
1.13's FlattenParamsWrapper with its _fpw_module), the original parameters
gone, and per unit one FlatParameter (a Parameter subclass) whose data is
this rank's shard of its parameters flattened and concatenated in order,
padded with zeros to a multiple of the world size and cut in equal chunks
(torch.chunk). Its metadata is computed as FSDP computes it: torch 1.13's
(_prefixed_param_names, _shard_indices, _shard_param_offsets with inclusive
ends, ...) or torch 2.x's (_fqns, _shard_param_infos), as `version` says.

FSDP1 flattens one dtype per unit; make_full's bf16 table sits beside the
f32 parameters in one module, which no real wrapping splits. The stand-in
gives it a unit of its own anyway, nested as FSDP nests units (inside the
outer unit's module, under a wrapper module's name, which the state_dict
names leave out): the names stay make_full's.
"""
import collections

import torch
import torch.nn as nn
import torch.nn.functional as F

import scaleout_worker as W

ShardParamInfo = collections.namedtuple(
    "ShardParamInfo",
    "in_shard offset_in_shard numel_in_shard intra_param_start_idx intra_param_end_idx")

FSDP = "_fsdp_wrapped_module"


class FlatParameter(nn.Parameter):
    pass


def _shard(tensors, rank, world):
    """This rank's chunk of the tensors flattened and concatenated, padded to
    the first chunk's size, and [start, end] (inclusive) of it in the whole."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    chunks = flat.chunk(world)
    each = chunks[0].numel()
    chunk = chunks[rank] if rank < len(chunks) else flat.new_empty(0)
    return F.pad(chunk, [0, each - chunk.numel()]), each * rank, each * (rank + 1) - 1


def flat_param(names, tensors, rank, world, version):
    """The FlatParameter of one unit holding `tensors` (named `names`,
    relative to the unit's module)."""
    local, start, end = _shard(tensors, rank, world)
    p = FlatParameter(local, requires_grad=True)
    numels = [t.numel() for t in tensors]
    p._numels, p._shapes = tuple(numels), tuple(t.shape for t in tensors)
    p._shared_param_infos = ()
    offsets, infos, at = [], [], 0
    for i, n in enumerate(numels):
        ps, pe = at, at + n - 1
        at += n
        if start > pe or end < ps:
            infos.append(ShardParamInfo(False, None, None, None, None))
            continue
        a, b = max(start, ps) - ps, min(end, pe) - ps
        offsets.append((i, (a, b)))
        infos.append(ShardParamInfo(True, ps + a - start, b - a + 1, a, b))
    if version == "1.13":
        p._prefixed_param_names = tuple(names)
        p._shard_param_offsets = tuple(o for _, o in offsets)
        p._shard_indices = (offsets[0][0], offsets[-1][0]) if offsets else (0, 0)
        p._shard_numel_padded = local.numel() - sum(b - a + 1 for _, (a, b) in offsets)
    else:
        p._fqns = tuple(names)
        p._shard_param_infos = tuple(infos)
    return p


#: the units: (its parameters, in flattening order), outer first
UNITS = (("w1", "b1", "w2", "b2"), ("emb",))


def _unit(names, full, rank, world, version):
    """A FullyShardedDataParallel look-alike of one unit; returns (it, the
    module whose parameters it took)."""
    fsdp, inner = nn.Module(), nn.Module()
    fp = flat_param(names, [getattr(full, n) for n in names], rank, world, version)
    if version == "1.13":
        fpw = nn.Module()  # FlattenParamsWrapper: the flat parameter beside the module
        fpw._fpw_module = inner
        fpw.flat_param = fp
        setattr(fsdp, FSDP, fpw)
    else:
        inner._flat_param = fp  # registered on the wrapped module itself
        setattr(fsdp, FSDP, inner)
    return fsdp, inner


def sharded_model(full, rank, world, version="1.13"):
    """full (make_full) as FSDP1 leaves it on this rank, outside forward and
    backward; its buffer whole (FSDP1 does not shard buffers)."""
    root, inner = _unit(UNITS[0], full, rank, world, version)
    nested, _ = _unit(UNITS[1], full, rank, world, version)
    setattr(inner, FSDP, nested)
    inner.register_buffer("seen", full.seen.clone())
    return root


def flat_params(model):
    return [p for p in model.parameters() if isinstance(p, FlatParameter)]


def copy_shards(model, full, rank, world):
    """Each flat parameter's shard of full's current values, as FSDP's
    reshard leaves it after an optimizer step on the shards."""
    with torch.no_grad():
        for fp, names in zip(flat_params(model), UNITS):
            fp.data.copy_(_shard([getattr(full, n) for n in names], rank, world)[0])
        for name, b in model.named_buffers():
            b.copy_(full.seen)


def run(rank, world, port, plan, out):
    """plan: {"socket", "steps", "checkpoint"}: the full model trained
    plan["steps"] steps, the rank's flat shards following it, an
    EMA(shard="auto"), a group checkpoint at the end. Reports what the EMA
    found (its entries' shard metadata, its mode) and whether eval() put the
    EMA weights into the flat shards and the training ones back."""
    W._rank_main(rank, world, port, out,
                 lambda result, held: _body(rank, world, plan, out, result, held))


def _body(rank, world, plan, out, result, held):
    ema, local = W.train_auto(rank, plan, out, result, held,
                              lambda full: sharded_model(full, rank, world),
                              lambda local, full: copy_shards(local, full, rank, world), "fsdp")
    training = [fp.detach().clone() for fp in flat_params(local)]
    shadow = ema.shadow_state_dict()
    with ema.eval():
        inside = [fp.detach().clone() for fp in flat_params(local)]
    want = [t.clone() for t in training]
    for e in ema._entries:
        if e.flat is not None:
            fp = [i for i, p in enumerate(flat_params(local)) if p is e.param][0]
            want[fp][e.flat.start:e.flat.start + e.flat.n] = shadow[e.name].to(want[fp].dtype)
    result["eval_is_ema"] = all(torch.equal(a, b) for a, b in zip(inside, want))
    result["training_back"] = all(torch.equal(p, t) for p, t in zip(flat_params(local), training))
    result["manifest"] = ema.group_checkpoint(plan["checkpoint"], job="fsdp", timeout=30)
