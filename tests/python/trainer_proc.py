"""A trainer process for test_two_trainers.py: trains a SmallCNN with its EMA
in emad beside an in-process reference, checking bit-for-bit equality after
every step and inside every evaluation.

Protocol with the parent, one line each on stdout: "segment NAME" and
"registered" once the session exists; then it waits for "go" on stdin;
at the end "ok updates=N" (exit 0) or "MISMATCH ..." (exit 1).
"""

import argparse
import sys

import emadtest
from emadtest import (ReferenceEMA, accuracy, eval_set, first_difference, make_model,
                      make_optimizer, model_state, train_step)

from emaclient.torch import EMA


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--session", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--half-life", default="10ba")
    ap.add_argument("--update-interval", default="1ba")
    ap.add_argument("--ema-start", default="0.0dur")
    a = ap.parse_args()
    cfg = dict(half_life=a.half_life, update_interval=a.update_interval, ema_start=a.ema_start)

    model = make_model(a.seed)
    model_ref = emadtest.clone_model(model)
    ema = EMA(model, socket=a.socket, session=a.session, mode=a.mode, **cfg)
    try:
        print("segment", ema.session.segment.name, flush=True)
        print("registered", flush=True)
        if sys.stdin.readline().strip() != "go":
            print("MISMATCH no go", flush=True)
            return 1
        ref = ReferenceEMA(model_ref, **cfg)
        opt = ema.attach_optimizer(make_optimizer(model))
        opt_ref = make_optimizer(model_ref)
        data = eval_set(a.seed)
        for step in range(a.steps):
            duration = step / a.steps
            ema.batch_start(step, 0, duration)
            ref.batch_start()
            train_step(model, opt, step, seed=a.seed)
            train_step(model_ref, opt_ref, step, seed=a.seed)
            for what, x, y in (("training", model_state(model), model_state(model_ref)),
                               ("shadow", ema.shadow_state_dict(), ref.shadow)):
                diff = first_difference(x, y)
                if diff:
                    print("MISMATCH %s after step %d: %s" % (what, step, diff), flush=True)
                    return 1
            ema.batch_end(step + 1, 0, (step + 1) / a.steps)
            ref.batch_end(step + 1, 0, (step + 1) / a.steps)
            if (step + 1) % 15 == 0:
                with ema.eval():
                    ref.eval_start()
                    diff = first_difference(model_state(model), model_state(model_ref))
                    acc, acc_ref = accuracy(model, data)[0], accuracy(model_ref, data)[0]
                ref.eval_end()
                if diff or acc != acc_ref:
                    print("MISMATCH eval at %d: %s, accuracy %r vs %r" %
                          (step + 1, diff, acc, acc_ref), flush=True)
                    return 1
        ema.wait()
        diff = first_difference(ema.shadow_state_dict(), ref.shadow)
        if diff or ema.state()["updates"] != ref.updates:
            print("MISMATCH final: %s, updates %d vs %d" %
                  (diff, ema.state()["updates"], ref.updates), flush=True)
            return 1
        print("ok updates=%d" % ref.updates, flush=True)
        return 0
    finally:
        ema.close()


if __name__ == "__main__":
    sys.exit(main())
