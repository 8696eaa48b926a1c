"""The in-process PyTorch peers of emad, for tests/bench/run (no assertions).

    peers.py update --sizes 1M,16M --threads 2 [--target 0.3] [--reps 7] [--socket PATH]
        Gelem/s of an in-process EMA update over a model of that many f32
        elements (tensors of 1M elements), three ways (and emad through the
        Python binding with --socket), rounds interleaved --reps times:
          composer  Composer's compute_ema: ema.copy_(ema * s + (1 - s) * p) per tensor
          lerp      ema.lerp_(p, 1 - s) per tensor
          foreach   torch._foreach_mul_(E, s); torch._foreach_add_(E, P, alpha=1 - s)
    peers.py train --widths 512,2048 --layers 4 --batch 8 --steps 10 --reps 7 --threads 2
                   --socket PATH
        A real CPU training loop (MLP, SGD): step time with no EMA, with the
        fastest in-process EMA (_foreach_mul_ + _foreach_add_ after each step),
        with Composer's compute_ema, and with emaclient.torch.EMA (emad at
        --socket, mode "shm", attach_optimizer); --reps repetitions of --steps
        steps of each variant, interleaved, the ratios per repetition.

One JSON record per line on stdout, as emabench prints them.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

SMOOTHING = 0.99
TENSOR = 1 << 20


def parse_elems(s):
    mul = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:].upper(), 1)
    return int(float(s[:-1] if mul > 1 else s) * mul)


def emit(**rec):
    print(json.dumps(rec), flush=True)


def model_tensors(n):
    sizes = [TENSOR] * (n // TENSOR) + ([n % TENSOR] if n % TENSOR else [])
    params = [torch.full((k,), 0.0115, dtype=torch.float32) for k in sizes]
    emas = [torch.zeros(k, dtype=torch.float32) for k in sizes]
    return params, emas


def compute_ema(params, emas, smoothing):
    # Composer's compute_ema (composer/algorithms/ema/ema.py), over tensors
    # rather than modules.
    with torch.no_grad():
        for ema_param, model_param in zip(emas, params):
            model_param = model_param.detach()
            ema_param.copy_(ema_param * smoothing + (1. - smoothing) * model_param)


def lerp_ema(params, emas, smoothing):
    with torch.no_grad():
        for e, p in zip(emas, params):
            e.lerp_(p, 1. - smoothing)


def foreach_ema(params, emas, smoothing):
    with torch.no_grad():
        torch._foreach_mul_(emas, smoothing)
        torch._foreach_add_(emas, params, alpha=1. - smoothing)


PEERS = {"composer": compute_ema, "lerp": lerp_ema, "foreach": foreach_ema}


def median(v):
    return statistics.median(v)


def spread(ratios):
    """median, min, max of the per-repetition ratios."""
    return median(ratios), min(ratios), max(ratios)


def ab_fields(key, ratios):
    m, lo, hi = spread(ratios)
    return {key: m, key + "_median": m, key + "_min": lo, key + "_max": hi}


def order(names, rep):
    """The order of repetition `rep`: rotated by one each time and reversed every other
    time, so that every variant runs first, last and beside every other one."""
    k = rep % len(names)
    o = names[k:] + names[:k]
    return o[::-1] if rep % 2 else o


class EmadPeer:
    """emad through the Python binding, as a trainer calls it: batch_end and wait for the
    update (emaclient.torch.EMA, mode "shm": the params live in shared memory)."""

    def __init__(self, params, socket):
        from emaclient.torch import EMA
        self.model = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False)
                                             for p in params])
        self.ema = EMA(self.model, half_life="100ba", socket=socket, mode="shm",
                       session="bench-peer-update", include_frozen=True)
        self.ema.batch_end(wait=True)  # start the EMA: from here every batch_end updates

    def __call__(self, params, emas, smoothing):
        self.ema.batch_end(wait=True)

    def close(self):
        self.ema.close()


def cmd_update(a):
    """Every peer's rounds interleaved, --reps of them, the order changed each time; each
    round long enough (--target seconds) to time. With --socket, emad too (through the
    Python binding, in this process), and the ratio of emad to each peer per repetition."""
    for n in [parse_elems(s) for s in a.sizes.split(",")]:
        params, emas = model_tensors(n)
        fns = dict(PEERS)
        emad = None
        if a.socket:
            emad = EmadPeer(params, a.socket)
            fns["emad"] = emad
        reps = {}
        for name, fn in fns.items():
            fn(params, emas, SMOOTHING)  # warm-up (allocator, first touch)
            t0 = time.perf_counter()
            fn(params, emas, SMOOTHING)
            reps[name] = max(1, int(a.target / max(time.perf_counter() - t0, 1e-9)))
        rates = {name: [] for name in fns}
        for r in range(a.reps):
            for name in order(list(fns), r):
                fn = fns[name]
                t0 = time.perf_counter()
                for _ in range(reps[name]):
                    fn(params, emas, SMOOTHING)
                rates[name].append(n * reps[name] / (time.perf_counter() - t0) / 1e9)
        if emad is not None:
            emad.close()
        for name in fns:
            rec = dict(bench="peer_update", peer=name, elems=n, threads=a.threads, reps=a.reps,
                       gelem_s=median(rates[name]))
            if emad is not None and name != "emad":
                rec.update(ab_fields("emad_ratio", [e / p for e, p in
                                                    zip(rates["emad"], rates[name])]))
            emit(**rec)
        del params, emas


def make_model(width, layers):
    mods = []
    for _ in range(layers):
        mods += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    return torch.nn.Sequential(*mods[:-1])


def train_steps(model, opt, x, y, steps, after_step=None):
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step()
        times.append(time.perf_counter() - t0)
    return times


def cmd_train(a):
    """Step times of the same training loop with no EMA, Composer's compute_ema, the
    fastest in-process EMA (_foreach_mul_ + _foreach_add_) and emaclient.torch.EMA:
    --reps repetitions of --steps steps of each, the order changed each time; each
    repetition's median step time of a variant against that repetition's no-EMA one."""
    for width in [int(w) for w in str(a.widths).split(",")]:
        train_one(a, width)


def train_one(a, width):
    torch.manual_seed(0)
    x = torch.randn(a.batch, width)
    y = torch.randn(a.batch, width)
    nparams = None
    variants = ["none", "foreach", "inprocess", "emad"]
    setups = {}
    for v in variants:
        torch.manual_seed(0)
        model = make_model(width, a.layers)
        nparams = sum(p.numel() for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        hook, ema = None, None
        params = list(model.parameters())
        if v == "inprocess":
            ema_model = [p.detach().clone() for p in params]
            hook = lambda params=params, ema_model=ema_model: compute_ema(
                params, ema_model, SMOOTHING)
        elif v == "foreach":
            ema_model = [p.detach().clone() for p in params]
            detached = [p.detach() for p in params]
            hook = lambda params=detached, ema_model=ema_model: foreach_ema(
                params, ema_model, SMOOTHING)
        elif v == "emad":
            from emaclient.torch import EMA
            ema = EMA(model, half_life="100ba", socket=a.socket, mode="shm",
                      session="bench-train-%d" % width)
            ema.attach_optimizer(opt)
            hook = ema.batch_end
        train_steps(model, opt, x, y, 3, hook)    # warm-up
        setups[v] = (model, opt, hook, ema)
    med = {v: [] for v in variants}
    for r in range(a.reps):
        for v in order(variants, r):
            model, opt, hook, ema = setups[v]
            med[v].append(median(train_steps(model, opt, x, y, a.steps, hook)))
            if ema is not None:
                ema.wait()  # its last update is part of its own steps, not the next variant's
    for v in variants:
        ema = setups[v][3]
        if ema is not None:
            ema.close()
    for v in variants:
        rec = dict(bench="train", variant=v, params=nparams, width=width, layers=a.layers,
                   batch=a.batch, threads=a.threads, steps=a.steps, reps=a.reps,
                   step_ms=median(med[v]) * 1e3, no_ema_step_ms=median(med["none"]) * 1e3)
        rec.update(ab_fields("ratio", [t / b for t, b in zip(med[v], med["none"])]))
        if v != "foreach":
            rec.update(ab_fields("ratio_to_foreach",
                                 [t / f for t, f in zip(med[v], med["foreach"])]))
        emit(**rec)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("update")
    u.add_argument("--sizes", required=True)
    u.add_argument("--target", type=float, default=0.3, help="seconds per timed round")
    u.add_argument("--socket", help="emad's socket: measure emad too, in this process")
    t = sub.add_parser("train")
    t.add_argument("--widths", default="512,2048", help="MLP widths, one model each")
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--steps", type=int, default=10, help="steps per variant and repetition")
    t.add_argument("--socket", required=True)
    for s in (u, t):
        s.add_argument("--threads", type=int, default=os.cpu_count())
        s.add_argument("--reps", type=int, default=7, help="interleaved repetitions")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    {"update": cmd_update, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
