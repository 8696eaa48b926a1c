"""The in-process PyTorch peers of emad, for tests/bench/run (no assertions).

    peers.py update --sizes 1M,16M --threads 2 [--target 0.3]
        Gelem/s of an in-process EMA update over a model of that many f32
        elements (tensors of 1M elements), three ways:
          composer  Composer's compute_ema: ema.copy_(ema * s + (1 - s) * p) per tensor
          lerp      ema.lerp_(p, 1 - s) per tensor
          foreach   torch._foreach_mul_(E, s); torch._foreach_add_(E, P, alpha=1 - s)
    peers.py train --width 2048 --layers 4 --batch 64 --steps 30 --threads 2 --socket PATH
        A real CPU training loop (MLP, SGD): step time with no EMA, with an
        in-process EMA (Composer's compute_ema after each step) and with
        emaclient.torch.EMA (emad at --socket, mode "shm", attach_optimizer).

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


def rate(fn, params, emas, n, target):
    fn(params, emas, SMOOTHING)                     # warm-up (allocator, first touch)
    t0 = time.perf_counter()
    fn(params, emas, SMOOTHING)
    one = time.perf_counter() - t0
    reps = max(1, int(target / max(one, 1e-9)))
    best = 0.0
    for _ in range(3 if one * reps < 1.0 else 2):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(params, emas, SMOOTHING)
        best = max(best, n * reps / (time.perf_counter() - t0) / 1e9)
    return best


def cmd_update(a):
    for n in [parse_elems(s) for s in a.sizes.split(",")]:
        params, emas = model_tensors(n)
        for name, fn in PEERS.items():
            emit(bench="peer_update", peer=name, elems=n, threads=a.threads,
                 gelem_s=rate(fn, params, emas, n, a.target))
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
    torch.manual_seed(0)
    x = torch.randn(a.batch, a.width)
    y = torch.randn(a.batch, a.width)
    nparams = None
    results = {}
    # Interleave the three variants over several rounds, so that all see the
    # same machine; report the median step time of each.
    variants = ["none", "inprocess", "emad"]
    samples = {v: [] for v in variants}
    setups = {}
    for v in variants:
        torch.manual_seed(0)
        model = make_model(a.width, a.layers)
        nparams = sum(p.numel() for p in model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        hook, ema = None, None
        if v == "inprocess":
            ema_model = [p.detach().clone() for p in model.parameters()]
            params = list(model.parameters())
            hook = lambda params=params, ema_model=ema_model: compute_ema(
                params, ema_model, SMOOTHING)
        elif v == "emad":
            from emaclient.torch import EMA
            ema = EMA(model, half_life="100ba", socket=a.socket, mode="shm",
                      session="bench-train")
            ema.attach_optimizer(opt)
            hook = ema.batch_end
        train_steps(model, opt, x, y, 3, hook)    # warm-up
        setups[v] = (model, opt, hook, ema)
    per_round = max(1, a.steps // 3)
    for _ in range(3):
        for v in variants:
            model, opt, hook, _ = setups[v]
            samples[v] += train_steps(model, opt, x, y, per_round, hook)
    for v in variants:
        ema = setups[v][3]
        if ema is not None:
            ema.wait()
            ema.close()
        results[v] = statistics.median(samples[v])
    base = results["none"]
    for v in variants:
        emit(bench="train", variant=v, params=nparams, width=a.width, layers=a.layers,
             batch=a.batch, threads=a.threads, steps=len(samples[v]),
             step_ms=results[v] * 1e3, no_ema_step_ms=base * 1e3,
             ratio=results[v] / base)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("update")
    u.add_argument("--sizes", required=True)
    u.add_argument("--target", type=float, default=0.3, help="seconds per timed round")
    t = sub.add_parser("train")
    t.add_argument("--width", type=int, default=2048)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--socket", required=True)
    for s in (u, t):
        s.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    {"update": cmd_update, "train": cmd_train}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
