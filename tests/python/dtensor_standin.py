"""A stand-in for torch's DTensor, so that EMA(model, shard="auto") runs its
whole path here (docs/scaleout.md "Python").

Debian's torch 1.13 has no DTensor (it arrived in torch 2.x as
torch.distributed._tensor, public as torch.distributed.tensor from 2.4).
install() puts a module torch.distributed.tensor in sys.modules holding
DTensor (a Parameter whose data has the global shape, its rank's block in
_local_tensor, with device_mesh and placements) and
_utils.compute_local_shape_and_global_offset for Shard(d) placements on a
one-dimensional mesh, computed as torch does there (torch.chunk's split:
blocks of ceil(n / world) rows, the last ones shorter or empty). emaclient
finds both where it finds torch's own: what is tested is everything but
torch's arithmetic of the offsets.
"""
import sys
import types

import torch
import torch.nn as nn

import scaleout_worker as W


class Shard:
    def __init__(self, dim):
        self.dim = dim


class Mesh:
    """A one-dimensional device mesh: this rank's place among world."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def get_coordinate(self):
        return [self.rank]

    def size(self):
        return self.world


class DTensor(nn.Parameter):
    pass


def compute_local_shape_and_global_offset(global_shape, mesh, placements):
    shape, offsets = list(global_shape), [0] * len(global_shape)
    for p in placements:
        if isinstance(p, Shard):
            n = global_shape[p.dim]
            each = -(-n // mesh.world)
            start = min(mesh.rank * each, n)
            shape[p.dim] = min(start + each, n) - start
            offsets[p.dim] = start
    return tuple(shape), tuple(offsets)


def install():
    pkg = types.ModuleType("torch.distributed.tensor")
    utils = types.ModuleType("torch.distributed.tensor._utils")
    utils.compute_local_shape_and_global_offset = compute_local_shape_and_global_offset
    pkg.DTensor, pkg.Shard, pkg._utils = DTensor, Shard, utils
    sys.modules["torch.distributed.tensor"] = pkg
    sys.modules["torch.distributed.tensor._utils"] = utils


def dtensor(full_tensor, rank, world):
    """A DTensor of full_tensor's global shape, rows sharded over world."""
    t = DTensor(torch.zeros_like(full_tensor), requires_grad=full_tensor.requires_grad)
    t.device_mesh, t.placements = Mesh(rank, world), (Shard(0),)
    shape, off = compute_local_shape_and_global_offset(tuple(full_tensor.shape), t.device_mesh,
                                                       t.placements)
    t._local_tensor = full_tensor.detach()[off[0]:off[0] + shape[0]].clone()
    return t


def sharded_model(full, rank, world):
    """full's parameters as DTensors (their rows sharded), as FSDP2's
    fully_shard leaves them; no buffers (FSDP2 does not shard them)."""
    m = nn.Module()
    for name, p in full.named_parameters():
        setattr(m, name, dtensor(p, rank, world))
    return m


def copy_blocks(local, full):
    with torch.no_grad():
        for name, t in local.named_parameters():
            off = compute_local_shape_and_global_offset(
                tuple(t.shape), t.device_mesh, t.placements)[1][0]
            t._local_tensor.copy_(getattr(full, name).detach()[off:off + t._local_tensor.shape[0]])


def run(rank, world, port, plan, out):
    """plan: {"socket", "steps", "checkpoint"}: the full model trained
    plan["steps"] steps, the rank's DTensor blocks following it, an
    EMA(shard="auto"), a group checkpoint at the end. Reports what the EMA
    found (its shard metadata, its mode) and whether eval() put the EMA
    weights into the DTensors' local blocks and the training ones back."""
    W._rank_main(rank, world, port, out,
                 lambda result, held: _body(rank, world, plan, out, result, held))


def _body(rank, world, plan, out, result, held):
    install()
    ema, local = W.train_auto(rank, plan, out, result, held,
                              lambda full: sharded_model(full, rank, world), copy_blocks, "dt")
    training = {n: p._local_tensor.clone() for n, p in local.named_parameters()}
    shadow = ema.shadow_state_dict()
    with ema.eval():
        inside = {n: p._local_tensor.clone() for n, p in local.named_parameters()}
    result["eval_is_ema"] = all(torch.equal(inside[n], shadow[n].to(inside[n].dtype))
                                for n in inside)
    result["training_back"] = all(torch.equal(p._local_tensor, training[n])
                                  for n, p in local.named_parameters())
    result["manifest"] = ema.group_checkpoint(plan["checkpoint"], job="dt", timeout=30)
