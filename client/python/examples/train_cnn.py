#!/usr/bin/python3
"""Train a small CNN with its EMA kept by emad (the `make demo` trainer).

A synthetic 4-class image task (noisy class templates), a small CNN with
BatchNorm, SGD with momentum and a learning rate high enough that the
training weights keep jittering: the EMA of the weights generalises better.
After each epoch it evaluates the training weights, then the EMA weights
(swapped into the model by emad inside `with ema.eval()`).

The integration is three lines:

    ema = EMA(model, half_life="20ba")     # the model's tensors move to shared memory
    ema.attach_optimizer(opt)              # opt.step() waits for emad's update
    ema.batch_end()                        # after each step; emad updates meanwhile

plus `with ema.eval():` around evaluation. Run it against a running emad:

    PYTHONPATH=client/python /usr/bin/python3 client/python/examples/train_cnn.py --socket PATH
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from emaclient.torch import EMA  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Task:
    """Noisy copies of four random 3x12x12 templates."""

    def __init__(self, seed=0, noise=4.5):
        g = torch.Generator().manual_seed(seed)
        self.templates = torch.randn(4, 3, 12, 12, generator=g)
        self.noise = noise
        self.seed = seed

    def batch(self, index, size=64):
        g = torch.Generator().manual_seed(self.seed * 1000003 + index)
        y = torch.randint(0, 4, (size,), generator=g)
        x = self.templates[y] + self.noise * torch.randn(size, *self.templates.shape[1:],
                                                         generator=g)
        return x, y


def accuracy(model, data):
    x, y = data
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return acc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="emad's socket (default: $EMAD_SOCKET, ...)")
    ap.add_argument("--session", default="demo-cnn", help="the session's name in emad")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50, help="optimizer steps per epoch")
    ap.add_argument("--half-life", default="20ba")
    ap.add_argument("--lr", type=float, default=0.2)
    ap.add_argument("--mode", default="auto", choices=["auto", "shm", "mirror"])
    ap.add_argument("--keep", action="store_true",
                    help="leave the session in emad (detached) at the end, for emactl show")
    a = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    task = Task()
    val = task.batch(10 ** 6, size=2000)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)

    ema = EMA(model, half_life=a.half_life, socket=a.socket, session=a.session, mode=a.mode)
    ema.attach_optimizer(opt)
    st = ema.state()
    n = sum(p.numel() for p in model.parameters())
    print("session %s: %d tensors, %d parameters, mode %s; emad pid %d; segment %s, shadow %s"
          % (ema.session_name, st["tensors"], n, ema.mode, ema.client.server["pid"],
             st["shm"], st["shadow_shm"]))
    print("smoothing %.6f per update (half-life %s, every %s)" % (
        st["smoothing"], st["half_life"], st["update_interval"]))
    ema.fit_start()
    batch = 0
    t_start = time.monotonic()
    for epoch in range(a.epochs):
        losses = []
        for step in range(a.steps):
            ema.batch_start(batch, epoch)
            x, y = task.batch(batch)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()                # waits for the previous update first
            batch += 1
            ema.batch_end(batch, epoch, duration=batch / (a.epochs * a.steps))
            losses.append(loss.item())
            if (step + 1) % 10 == 0:
                print("  epoch %d  step %3d/%d  loss %.3f" % (
                    epoch + 1, step + 1, a.steps, sum(losses[-10:]) / 10), flush=True)
        ema.epoch_end(epoch + 1)
        acc_train = accuracy(model, val)
        with ema.eval():              # the EMA weights are in the model here
            acc_ema = accuracy(model, val)
        print("epoch %d: validation accuracy  training weights %.1f%%  EMA weights %.1f%%  "
              "(%d updates by emad)" % (epoch + 1, 100 * acc_train, 100 * acc_ema, ema.updates),
              flush=True)
    ema.wait()
    print("done: %d steps in %.1f s" % (batch, time.monotonic() - t_start))
    ema.close(keep=a.keep)
    if a.keep:
        print("session %s left in emad, detached (emactl show %s; emactl drop %s)" % (
            a.session, a.session, a.session))


if __name__ == "__main__":
    main()
