#!/usr/bin/python3
"""Choose the EMA width after training: post-hoc EMA (the `make demo` plot).

One training run of the demo's CNN (train_cnn.py's task and model) with three profiles kept by
emad: two EDM2 power EMAs (sigma_rel 0.05 and 0.10) snapshotted every --every batches, and a
constant-decay (Composer) EMA of half-life --half-life for comparison. After training, the EMA
of each of several widths sigma_rel is reconstructed from the snapshots (EMA.posthoc,
docs/posthoc.md), loaded into the model and evaluated on a validation set; the plot shows
validation accuracy against sigma_rel, with the constant-decay EMA's accuracy as a line.

    ema = EMA(model, profiles={"p05": {"sigma_rel": 0.05}, "p10": {"sigma_rel": 0.10}},
              snapshot_every="20ba")
    ...train...
    model.load_state_dict(ema.posthoc(sigma_rel=0.08))

Prints one line per width, "sigma_rel 0.0800 accuracy 0.8125", then "constant ... accuracy ...",
and writes the PNG to --out. Run it against a running emad:

    PYTHONPATH=client/python /usr/bin/python3 client/python/examples/posthoc_sigma.py \\
        --socket PATH --out posthoc-sigma.png
"""

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from emaclient.torch import EMA  # noqa: E402
from train_cnn import Net, Task, accuracy  # noqa: E402

# The widths to reconstruct: from narrower than the narrowest stored profile to wider than the
# widest (EDM2's useful range).
SIGMAS = (0.02, 0.035, 0.05, 0.065, 0.08, 0.10, 0.13, 0.17)


def plot(path, sigmas, accs, const_acc, half_life, train_acc):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(sigmas, accs, "o-", color="C0", label="post-hoc power EMA (from snapshots)")
    for s, a in zip(sigmas, accs):
        if s in (0.05, 0.10):
            ax.plot([s], [a], "s", color="C0", markersize=9, markerfacecolor="none")
    ax.axhline(const_acc, color="C1", linestyle="--",
               label="constant decay, half-life %s" % half_life)
    ax.axhline(train_acc, color="0.5", linestyle=":", label="training weights")
    ax.set_xlabel("sigma_rel (EMA width relative to training length)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("One training run, EMA width chosen afterwards (squares: stored profiles)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="emad's socket (default: $EMAD_SOCKET, ...)")
    ap.add_argument("--session", default="demo-posthoc")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps")
    ap.add_argument("--every", type=int, default=20, help="snapshot every N batches")
    ap.add_argument("--half-life", default="40ba", help="the constant-decay profile's")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--val", type=int, default=2000, help="validation examples")
    ap.add_argument("--sigmas", type=int, default=len(SIGMAS),
                    help="how many of the widths to reconstruct (the first N)")
    ap.add_argument("--out", default="posthoc-sigma.png", help="the PNG to write")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    task = Task()
    val = task.batch(10 ** 6, size=a.val)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    profiles = {"p05": {"sigma_rel": 0.05}, "p10": {"sigma_rel": 0.10},
                "const": {"half_life": a.half_life}}
    t0 = time.monotonic()
    with EMA(model, socket=a.socket, session=a.session, profiles=profiles, eval_profile="const",
             snapshot_every="%dba" % a.every) as ema:
        ema.attach_optimizer(opt)
        for b in range(a.steps):
            x, y = task.batch(b)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            # wait: a snapshot is written between batches (emad skips one that would queue
            # behind two on a slow disk); this small model trains faster than a disk syncs.
            ema.batch_end(batch=b + 1, wait=(b + 1) % a.every == 0)
            if (b + 1) % a.every == 0:
                want = 2 * ((b + 1) // a.every)
                deadline = time.monotonic() + 20
                while len(ema.snapshots()) < want and time.monotonic() < deadline:
                    time.sleep(0.005)
        ema.wait()
        train_acc = accuracy(model, val)
        with ema.eval(profile="const"):
            const_acc = accuracy(model, val)
        nsnap = len(ema.snapshots())
        trained = copy.deepcopy(model.state_dict())
        accs = []
        sigmas = SIGMAS[:a.sigmas]
        for s in sigmas:
            model.load_state_dict(ema.posthoc(sigma_rel=s), strict=False)
            accs.append(accuracy(model, val))
            model.load_state_dict(trained)
    print("%d steps, %d snapshot files, %.1f s" % (a.steps, nsnap, time.monotonic() - t0))
    for s, acc in zip(sigmas, accs):
        print("sigma_rel %.4f accuracy %.4f" % (s, acc))
    print("constant half-life %s accuracy %.4f" % (a.half_life, const_acc))
    print("training weights accuracy %.4f" % train_acc)
    plot(a.out, sigmas, accs, const_acc, a.half_life, train_acc)
    print("plot: %s" % a.out)


if __name__ == "__main__":
    main()
