"""The ranks of tests/python/test_scaleout.py: one process per rank of a
torch.distributed (gloo, localhost) job, started with torch.multiprocessing's
spawn context.

The "full" model is trained identically in every rank (the same data, one
thread, the same ops) and in the single-process reference; each rank then
copies its row slice of every full tensor into its local model, so that the
sharded and the full training hold identical parameters at every step. The
EMA of the local model (shard= the slices' metadata) must then be, slice for
slice, the EMA of the full model.
"""

import faulthandler
import json
import os
import signal
import sys
import time
import traceback

import torch
import torch.nn as nn

HALF_LIFE = "4ba"
#: seconds after which a rank still running writes every thread's stack to
#: out/stack-N.txt (the test kills it at 120 s: the stack says where it hung)
HANG_REPORT = 100
LR = 0.05


def make_full():
    """A small MLP and a bf16 table, from a fixed seed."""
    g = torch.Generator().manual_seed(14)
    m = nn.Module()
    m.w1 = nn.Parameter(torch.randn(8, 6, generator=g))
    m.b1 = nn.Parameter(torch.randn(8, generator=g))
    m.w2 = nn.Parameter(torch.randn(4, 8, generator=g))
    m.b2 = nn.Parameter(torch.randn(4, generator=g))
    m.emb = nn.Parameter(torch.randn(8, 3, generator=g).to(torch.bfloat16))
    m.register_buffer("seen", torch.zeros(4, dtype=torch.int64))
    return m


def full_step(m, step):
    """One SGD step of the full model on batch `step` (in place: the tensors
    stay where the EMA put them)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(5, 6, generator=g)
    y = torch.randn(5, 4, generator=g)
    h = torch.tanh(x @ m.w1.t() + m.b1 + m.emb.float().sum(1))
    loss = ((h @ m.w2.t() + m.b2 - y) ** 2).mean() + 0.01 * (m.emb.float() ** 2).sum()
    for p in m.parameters():
        p.grad = None
    loss.backward()
    with torch.no_grad():
        for p in m.parameters():
            p.sub_(LR * p.grad)
        m.seen.add_(step % 3)


def rows(n, rank, world):
    each = n // world
    return rank * each, each


def local_model(full, rank, world):
    """The rank's row slices of every tensor of full, as a module of its own,
    and their shard metadata {name: (global_shape, offsets)}."""
    m = nn.Module()
    spec = {}
    for name, t in list(full.named_parameters()) + list(full.named_buffers()):
        off, n = rows(t.shape[0], rank, world)
        block = t.detach()[off:off + n].clone()
        if isinstance(t, nn.Parameter):
            setattr(m, name, nn.Parameter(block))
        else:
            m.register_buffer(name, block)
        spec[name] = (tuple(t.shape), (off,) + (0,) * (t.dim() - 1))
    return m, spec


def copy_slices(local, full, spec):
    with torch.no_grad():
        for name, t in list(local.named_parameters()) + list(local.named_buffers()):
            off = spec[name][1][0]
            t.copy_(getattr(full, name).detach()[off:off + t.shape[0]])


def _rank_main(rank, world, port, out, body):
    """One rank's process: joins the gloo group, runs body(result, held) (which
    puts its EMA in held["ema"] as soon as it has one, for the close), and
    writes out/rank-N.json: result with "ok", or "error", "code" and "trace"."""
    torch.set_num_threads(1)
    hang = open(os.path.join(out, "stack-%d.txt" % rank), "w")
    faulthandler.dump_traceback_later(HANG_REPORT, file=hang)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    import datetime
    import torch.distributed as dist
    result = {"ok": False}
    held = {}
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=60))
        body(result, held)
        held.pop("ema").close()
        dist.destroy_process_group()
        result["ok"] = True
    except BaseException as e:  # reported to the test, which asserts on it
        result["error"] = "%s: %s" % (type(e).__name__, e)
        result["code"] = getattr(e, "code", None)
        result["trace"] = traceback.format_exc()
        if held.get("ema") is not None:
            try:
                held["ema"].close()
            except Exception:
                pass
    with open(os.path.join(out, "rank-%d.json" % rank), "w") as f:
        json.dump(result, f)
    sys.stdout.flush()
    os._exit(0)  # no atexit work: a peer may be gone, leaving gloo's teardown to hang


def run(rank, world, port, plan, out):
    """plan: {"socket": [socket per rank], "job", "start", "steps", "checkpoints":
    {batch: dir}, "resume": dir or None, "kill": {"rank", "batch"} or None,
    "timeout", "profiles": EMA(profiles=) or absent, "eval_profile"}. Writes
    out/rank-N.json: {"ok": ..., "error": ...}."""
    _rank_main(rank, world, port, out,
               lambda result, held: _sharded(rank, world, plan, out, result, held))


def _sharded(rank, world, plan, out, result, held):
    from emaclient import distributed as edist
    from emaclient.torch import EMA
    full = make_full()
    for step in range(plan["start"]):
        full_step(full, step)  # the training weights a trainer's own checkpoint restores
    local, spec = local_model(full, rank, world)
    schedule = {"half_life": HALF_LIFE}
    if plan.get("profiles"):
        schedule = {"profiles": plan["profiles"], "eval_profile": plan.get("eval_profile")}
    ema = held["ema"] = EMA(local, socket=plan["socket"][rank],
                            session="%s.rank%d" % (plan["job"], rank), shard=spec,
                            job=plan["job"], **schedule)
    with open(os.path.join(out, "segment-%d" % rank), "w") as f:
        f.write(ema._res.segment.name)
    if plan.get("resume"):
        result["resumed_at"] = ema.load_group_checkpoint(plan["resume"])
    kill = plan.get("kill")
    for step in range(plan["start"], plan["start"] + plan["steps"]):
        ema.wait()
        full_step(full, step)
        copy_slices(local, full, spec)
        ema.batch_end(batch=step + 1)
        d = plan["checkpoints"].get(str(step + 1))
        if d:
            if kill and kill["rank"] == rank and kill["batch"] == step + 1:
                real = edist._write_shard_file

                def die(*a, **k):
                    real(*a, **k)  # its file is there; the barrier never sees it
                    os.kill(os.getpid(), signal.SIGKILL)
                edist._write_shard_file = die
            result.setdefault("manifests", []).append(
                ema.group_checkpoint(d, job=plan["job"], timeout=plan.get("timeout", 30)))


def train_auto(rank, plan, out, result, held, make_local, copy, job):
    """A rank of the shard="auto" tests (test_dtensor, test_fsdp): the full
    model, the rank's local model make_local(full), EMA(local, shard="auto"),
    plan["steps"] steps of the full model, copy(local, full) after each.
    Reports the EMA's mode and shard metadata; returns (ema, local)."""
    from emaclient.torch import EMA
    full = make_full()
    local = make_local(full)
    ema = held["ema"] = EMA(local, half_life=HALF_LIFE, socket=plan["socket"][rank],
                            session="%s.rank%d" % (job, rank), shard="auto", job=job)
    with open(os.path.join(out, "segment-%d" % rank), "w") as f:
        f.write(ema._res.segment.name)
    result["mode"] = ema.mode
    result["shard"] = {n: [list(g), list(o)] for n, (g, o) in ema._shard.items()}
    for step in range(plan["steps"]):
        ema.wait()
        full_step(full, step)
        copy(local, full)
        ema.batch_end(batch=step + 1)
    return ema, local


def state_of(model):
    """{name: clone} of the model's state_dict."""
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def digest(sd):
    import hashlib
    h = hashlib.sha256()
    for name in sorted(sd):
        h.update(name.encode())
        h.update(sd[name].detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_ddp(rank, world, port, plan, out):
    """DDP: every rank holds the whole model; EMA(ddp_model, job=,
    replicas=world) averages the module it wraps, the ranks sharing one
    session and shadow. Reports digests of what the model holds in and after
    eval(), whether they are the EMA and the training weights bit for bit, what
    emad's status says of the session, and (out/ddp-weights-N.pt) the training
    weights after each step, from which the test makes a single-process EMA."""
    _rank_main(rank, world, port, out,
               lambda result, held: _ddp(rank, world, plan, out, result, held))


class _DDPRank:
    """One rank of the DDP tests: the model (the same initial weights on
    every rank), its DDP wrapper and optimizer, the training weights after
    each step, and the EMAs it makes (its segment's name in
    out/segment-N, for the test's clean-up)."""

    def __init__(self, rank, world, plan, out, held):
        from torch.nn.parallel import DistributedDataParallel as DDP
        torch.manual_seed(3)
        self.rank, self.world, self.plan, self.out, self.held = rank, world, plan, out, held
        self.model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
        self.ddp = DDP(self.model)
        self.opt = torch.optim.SGD(self.ddp.parameters(), lr=LR)
        self.weights = []

    def ema(self, session=None):
        from emaclient.torch import EMA
        schedule = {"half_life": HALF_LIFE} if not self.plan.get("profiles") else \
            {"profiles": self.plan["profiles"], "eval_profile": self.plan.get("eval_profile")}
        ema = self.held["ema"] = EMA(self.ddp, socket=self.plan["socket"][self.rank], job="ddp",
                                     replicas=self.world, session=session, **schedule)
        with open(os.path.join(self.out, "segment-%d" % self.rank), "w") as f:
            f.write(ema._res.segment.name)
        ema.attach_optimizer(self.opt)
        return ema

    def train(self, ema, first, count, leader_lags=False):
        """Steps first .. first + count - 1, each rank its own data. With
        leader_lags, the session's leader sends the last batch_end a second
        late: the other replicas' calls after theirs must wait for its update."""
        leader = ema.state()["replicas"]["ranks"][0]
        for step in range(first, first + count):
            g = torch.Generator().manual_seed(1000 + step * self.world + self.rank)
            x, y = torch.randn(5, 6, generator=g), torch.randn(5, 4, generator=g)
            self.opt.zero_grad()
            ((self.ddp(x) - y) ** 2).mean().backward()
            self.opt.step()
            self.weights.append(state_of(self.model))
            if leader_lags and step == first + count - 1 and self.rank == leader:
                time.sleep(1.0)
            ema.batch_end(batch=step + 1)

    def save_weights(self):
        torch.save(self.weights, os.path.join(self.out, "ddp-weights-%d.pt" % self.rank))


def _ddp(rank, world, plan, out, result, held):
    import torch.distributed as dist
    r = _DDPRank(rank, world, plan, out, held)
    model = r.model
    ema = r.ema()
    r.train(ema, 0, plan["steps"])
    r.save_weights()
    training = state_of(model)
    ema_w = ema.ema_state_dict()
    result["names"] = sorted(ema_w)
    with ema.eval():
        inside = state_of(model)
    after = state_of(model)
    result["eval_is_ema"] = digest(inside) == digest(ema_w)
    result["eval_differs_from_training"] = digest(inside) != digest(training)
    result["training_back"] = digest(after) == digest(training)
    result["eval_digest"] = digest(inside)
    result["training_digest"] = digest(training)
    result["ema_digest"] = digest(ema_w)
    st = ema.state()
    result["status"] = {k: st[k] for k in ("session", "shadow_shm", "shadow_bytes",
                                            "params_bytes", "replicas", "group", "updates")}
    dist.barrier()  # both have read the status before either changes it
    result["manifest"] = ema.group_checkpoint(plan["checkpoint"], job="ddp", timeout=30)
    # Rank 1 one batch ahead: every rank refuses, nothing is written.
    if rank == 1:
        ema.batch_end(batch=plan["steps"] + 1)
    try:
        ema.group_checkpoint(plan["checkpoint"] + "-odd", job="ddp", timeout=30)
    except Exception as e:
        result["odd"] = [getattr(e, "code", None), str(e)]


def run_ddp_resume(rank, world, port, plan, out):
    """DDP replicas that stop and resume: plan["steps"] steps with one
    EMA(ddp, replicas=world), its state_dict() on every rank, the EMA closed
    (the last replica's close drops the session), then a new EMA with
    replicas=world that every rank load_state_dict()s (plan["keep_file"]:
    whether emad's state file is kept for it, else the shadow comes back
    from the checkpoint alone) and plan["more"] steps after. Reports the
    digests of the resumed EMA on each rank, what status says of the session,
    and out/ddp-weights-N.pt (every step's training weights)."""
    _rank_main(rank, world, port, out,
               lambda result, held: _ddp_resume(rank, world, plan, out, result, held))


def _ddp_resume(rank, world, plan, out, result, held):
    import torch.distributed as dist
    r = _DDPRank(rank, world, plan, out, held)
    name = "ddp-" + plan["via"]  # each job its own sessions on the test's emad
    ema = r.ema(name)
    r.train(ema, 0, plan["steps"], leader_lags=True)
    if plan["via"] == "group":
        ema.group_checkpoint(plan["checkpoint"], job="ddp", timeout=30)
    else:
        sd = ema.state_dict(save_in_emad=plan["via"] == "state_file")
        result["checkpoint_time"] = [sd["emad"]["last_time"]["batch"], sd["emad"]["updates"]]
    result["before"] = digest(ema.ema_state_dict())
    dist.barrier()  # both have their state_dict before the session goes
    held.pop("ema").close()
    # Another session: the last replica's close drops the first once the other has
    # detached, which a register of the same name could race.
    ema = r.ema(name + "-resumed")
    if plan["via"] == "group":
        ema.load_group_checkpoint(plan["checkpoint"])
    elif plan["via"] == "bad" and rank == 1:
        # this rank alone fails (a tensor of another shape), the leader loads
        params = sd["ema_model"]["named_parameters_dict"]  # Composer's layout
        result["dropped"] = sorted(params)[0]
        params[result["dropped"]] = torch.zeros(1)
        ema.load_state_dict(sd)
    else:
        ema.load_state_dict(sd)
    result["loaded"] = digest(ema.ema_state_dict())
    r.train(ema, plan["steps"], plan["more"])
    r.save_weights()
    ema_w = ema.ema_state_dict()
    with ema.eval():
        inside = state_of(r.model)
    result["ema_digest"] = digest(ema_w)
    result["eval_is_ema"] = digest(inside) == digest(ema_w)
    result["profile_digests"] = {p: digest(ema.shadow_state_dict(profile=p))
                                 for p in plan.get("profiles") or ()}
    st = ema.state()
    result["status"] = {k: st[k] for k in ("session", "shadow_shm", "replicas", "started")}
    dist.barrier()  # both have read the status before either closes
