"""A trainer through repeated clean restarts of emad (issue #10, item 6).

`systemctl restart emad` sends SIGTERM and starts a new emad on the same
socket and state directory. A trainer must not notice: here a PyTorch
trainer (the SmallCNN of emadtest, EMA in shm mode, then in mirror mode, on
the CPU) trains 40 batches with the API's own pipelining (batch_end returns
at once, batch_start is sent without waiting) while the test restarts emad
that way 23 times, at varying points:

  update     right after batch_end: the update is in flight;
  pipelined  right after batch_start: the previous batch_end's update and
             the batch_start are in flight;
  epoch_end  right after epoch_end, which is in flight;
  eval       inside `with ema.eval():`, the EMA weights swapped in;
  idle       after ema.wait(), nothing in flight.

A starred point (in SCHEDULE) starts the new emad only some time after the
old one has exited, so that the trainer's library finds no emad and waits
for one.

So that "in flight" is certain, not a matter of luck, every emad is started
with the test hook EMAD_TEST_STALL_MS (daemon/pool.h): its first chunk of
data work sleeps. When the update in flight at a point is the first data
work since the last start, the test waits (bounded) until an emad worker is
seen in that sleep (/proc/<pid>/task/*/syscall) and only then sends SIGTERM:
emad has received the update and is applying it, its reply not yet sent.

The trainer must never see an error (nor a warning), and at the end the
shadow must equal bit for bit a reference EMA computed in this process with
torch (emadtest.ReferenceEMA: shadow.lerp_(param.float(), 1 - smoothing) per
update, Composer's schedule) on an identical copy of the model trained in
lockstep, the training weights must equal the copy's, and emad's update
count the reference's. No timing is asserted; every wait is bounded.

Seen failing on emad before the fixes (commit 0563027): the update in flight
at a restart was applied, its reply never sent, and when the library sent it
again the next emad answered STATE "... no longer remembers its outcome".
"""

import os
import platform
import threading
import time
import unittest
import warnings

import emadtest
from emadtest import (ReferenceEMA, first_difference, make_model, make_optimizer, model_state,
                      train_step)

import emaclient
from emaclient.torch import EMA

STEPS = 40
PER_EPOCH = 10
EVAL_EVERY = 8
CONFIG = dict(half_life="10ba", update_interval="1ba", ema_start="3ba")
START_BATCH = 3        # ema_start: batch_end(3) starts the EMA, every later one updates it

# step -> the points of that step where emad is restarted ("*": started late)
SCHEDULE = {
    2: ["update"],                # the start event in flight (racy: the stall went to register)
    3: ["idle*"],
    4: ["update"],                # stalled, as every update marked so below
    5: ["update"],                # stalled
    6: ["pipelined"],             # racy: the update was answered by the previous emad
    7: ["pipelined", "eval*"],    # stalled
    9: ["epoch_end"],
    10: ["update"],               # stalled
    12: ["pipelined"],            # stalled
    13: ["pipelined"],            # stalled
    15: ["eval"],
    16: ["update"],               # stalled
    18: ["pipelined"],            # stalled
    19: ["epoch_end*"],
    23: ["eval"],
    24: ["update"],               # stalled
    26: ["pipelined", "update"],  # both stalled
    29: ["epoch_end"],
    31: ["idle*"],
    32: ["update"],               # stalled
    34: ["pipelined"],            # stalled
}
STALLED = 13           # the restarts above with an update certainly in flight
RESTARTS = sum(len(v) for v in SCHEDULE.values())
STALL_MS = 400         # long enough for SIGTERM to land while the worker sleeps
LATE_START_S = 0.3     # a starred restart: emad is down this long
STALL_WAIT_S = 20.0    # bound on waiting for the stalled worker to show
START_WAIT_S = 30.0    # bound on a late start

# The sleep of the stalled worker (nanosleep(2) or clock_nanosleep(2) as the
# C library makes it), as /proc/<pid>/task/<tid>/syscall numbers it.
SLEEP_SYSCALLS = {"x86_64": {"35", "230"}, "aarch64": {"101", "115"}}.get(platform.machine())


def worker_sleeping(pid):
    """Whether a thread of process pid is in a sleep system call now."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return False
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/syscall" % (pid, tid)) as f:
                if f.read().split(" ", 1)[0] in SLEEP_SYSCALLS:
                    return True
        except OSError:
            pass
    return False


class Restarter:
    """Restarts emad at the trainer's points, as systemctl restart would."""

    def __init__(self, test, daemon):
        self.test = test
        self.d = daemon
        self.count = 0
        self.caught_in_flight = 0   # restarts made while a stalled update was in flight
        self.log = []
        self.late = None            # (thread, [exception]) of a late start
        # Whether data work was sent since emad's last start (the stall hits
        # the first), and whether that first was the update now in flight.
        self.work_since_start = True  # register's, on the first emad

        self.first_work_in_flight = False

    def sent_work(self, in_flight):
        """The trainer sent an event that makes emad work on the tensors;
        in_flight: it stays in flight (not waited for) for now."""
        self.first_work_in_flight = in_flight and not self.work_since_start
        self.work_since_start = True

    def waited(self):
        self.first_work_in_flight = False

    def join_late_start(self):
        if self.late is None:
            return
        thread, error = self.late
        thread.join(START_WAIT_S)
        self.late = None
        if thread.is_alive():
            self.test.fail("emad was not started again within %g s" % START_WAIT_S)
        if error:
            raise error[0]

    def restart(self, step, point, stalled_update):
        self.join_late_start()
        late = point.endswith("*")
        where = "restart %d (step %d, %s)" % (self.count + 1, step, point)
        if stalled_update and self.first_work_in_flight:
            deadline = time.monotonic() + STALL_WAIT_S
            while not worker_sleeping(self.d.proc.pid):
                if time.monotonic() > deadline:
                    self.test.fail("%s: emad (started with EMAD_TEST_STALL_MS) was not seen "
                                   "applying the update in flight within %g s; this test's "
                                   "premise that the first data work after a start stalls no "
                                   "longer holds" % (where, STALL_WAIT_S))
                time.sleep(0.001)
            self.caught_in_flight += 1
            where += ", update in flight"
        self.log.append(where)
        rc = self.d.stop()
        self.test.assertEqual(rc, 0, "%s: emad's exit status after SIGTERM" % where)
        self.count += 1
        self.work_since_start = False
        self.first_work_in_flight = False
        if not late:
            self.d.start()
            return
        error = []

        def start_later():
            try:
                time.sleep(LATE_START_S)
                self.d.start()
            except BaseException as e:  # raised in the trainer's thread at the join
                error.append(e)

        thread = threading.Thread(target=start_later, name="late-emad-start", daemon=True)
        thread.start()
        self.late = (thread, error)


@unittest.skipIf(SLEEP_SYSCALLS is None, "no system call numbers known for %s" %
                 platform.machine())
class SigtermRestarts(emadtest.EmadTestCase):

    def setUp(self):
        super().setUp()
        saved = {k: os.environ.get(k) for k in ("EMAD_TEST_STALL_MS", "EMAD_TEST_STALL_AFTER")}

        def restore():
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

        self.addCleanup(restore)
        # Every emad this test starts inherits them (emadtest.Daemon.start).
        os.environ["EMAD_TEST_STALL_MS"] = str(STALL_MS)
        os.environ["EMAD_TEST_STALL_AFTER"] = "0"

    def train_through_restarts(self, mode):
        d = self.daemon()
        self.addCleanup(lambda: r.join_late_start())
        r = Restarter(self, d)
        model = make_model(0)
        model_ref = emadtest.clone_model(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ema = EMA(model, socket=d.sock, session="restarted-%s" % mode, mode=mode, **CONFIG)
            try:
                self.train(ema, model, model_ref, r)
                r.join_late_start()
                ema.wait()
                final_shadow = ema.shadow_state_dict()
                final_ema = ema.ema_state_dict()
                final_training = model_state(model)
                st = ema.state()
                reconnects = ema.client.reconnects
            finally:
                r.join_late_start()
                ema.close()
        ref = self.ref
        self.assertEqual(r.count, RESTARTS)
        # Every restart was seen by the library as one lost connection, taken back.
        self.assertEqual(reconnects, RESTARTS, "\n".join(r.log))
        # The premise held: updates were in flight, emad working on them, at
        # SIGTERM (see SCHEDULE; counted in Restarter.restart).
        self.assertEqual(r.caught_in_flight, STALLED, "\n".join(r.log))
        self.assertEqual([str(w.message) for w in caught], [])
        self.assertEqual(self.eval_diffs, [])
        self.assertEqual(self.restore_diffs, [])
        self.assertEqual(self.training_diffs, [])
        self.assertIsNone(first_difference(final_shadow, ref.shadow))
        expect = {n: s.to(final_training[n].dtype) for n, s in ref.shadow.items()}
        self.assertIsNone(first_difference(final_ema, expect))
        self.assertIsNone(first_difference(final_training, model_state(model_ref)))
        self.assertIsNone(first_difference(model_state(model), model_state(model_ref)))
        self.assertTrue(st["started"])
        self.assertFalse(st["interrupted"])
        self.assertEqual(st["updates"], ref.updates)
        self.assertEqual(ref.updates, STEPS - START_BATCH + 1)
        return r

    def train(self, ema, model, model_ref, r):
        """The training loop (as test_train.py's), with restart points."""
        ref = self.ref = ReferenceEMA(model_ref, **CONFIG)
        opt = ema.attach_optimizer(make_optimizer(model))
        opt_ref = make_optimizer(model_ref)
        self.eval_diffs, self.restore_diffs, self.training_diffs = [], [], []

        def point(step, name, stalled_update=False):
            for p in SCHEDULE.get(step, []):
                if p.rstrip("*") == name:
                    try:
                        r.restart(step, p, stalled_update)
                    except emaclient.Error as e:
                        self.fail("restart %d: %s" % (r.count, e))

        def trainer_call(what, fn, *args):
            try:
                return fn(*args)
            except emaclient.Error as e:
                self.fail("the trainer saw an error at %s after %d restarts (the last: %s): %s" %
                          (what, r.count, r.log[-1] if r.log else "-", e))

        trainer_call("fit_start", ema.fit_start)
        for step in range(STEPS):
            epoch = step // PER_EPOCH
            trainer_call("batch_start %d" % step, ema.batch_start, step, epoch)
            ref.batch_start()
            point(step, "pipelined", stalled_update=True)
            # shm: the optimizer's step waits for the update (attach_optimizer)
            trainer_call("training step %d" % step, train_step, model, opt, step)
            if ema.mode == "shm":
                r.waited()
            train_step(model_ref, opt_ref, step)
            diff = first_difference(model_state(model), model_state(model_ref))
            if diff:
                self.training_diffs.append((step, diff))
            trainer_call("batch_end %d" % (step + 1), ema.batch_end, step + 1, epoch)
            ref.batch_end(step + 1, epoch)
            if step + 1 >= START_BATCH:
                r.sent_work(in_flight=True)
            point(step, "update", stalled_update=True)
            if (step + 1) % PER_EPOCH == 0:
                trainer_call("epoch_end %d" % (epoch + 1), ema.epoch_end, epoch + 1)
                r.waited()
                ref.epoch_end(step + 1, epoch + 1)
                point(step, "epoch_end")
            if (step + 1) % EVAL_EVERY == 0:
                self.evaluate(ema, model, model_ref, ref, r, step, point, trainer_call)
            if any(p.rstrip("*") == "idle" for p in SCHEDULE.get(step, [])):
                trainer_call("wait %d" % step, ema.wait)
                r.waited()
                point(step, "idle")

    def evaluate(self, ema, model, model_ref, ref, r, step, point, trainer_call):
        before = model_state(model)
        r.waited()

        def inside():
            with ema.eval():
                r.sent_work(in_flight=False)
                ref.eval_start()
                ema_weights = model_state(model_ref)
                diff = first_difference(model_state(model), ema_weights)
                if diff:
                    self.eval_diffs.append((step + 1, diff))
                point(step, "eval")
                # After a restart here the model still holds the EMA weights,
                # whole: the library learns of the lost connection at its next
                # call (eval_end), and then puts the training weights back.
                diff = first_difference(model_state(model), ema_weights)
                if diff:
                    self.eval_diffs.append((step + 1, "after the restart point: " + diff))

        restarts = r.count
        trainer_call("the evaluation after batch %d" % (step + 1), inside)
        # eval_end's swap is data work for emad, unless emad was restarted
        # inside the block: the library then finds the connection lost and
        # copies the stash back itself, and the new emad has nothing to swap.
        if r.count == restarts:
            r.sent_work(in_flight=False)
        ref.eval_end()
        diff = first_difference(model_state(model), before)
        if diff:
            self.restore_diffs.append((step + 1, diff))

    def test_shm_trainer_through_sigterm_restarts(self):
        self.train_through_restarts("shm")

    def test_mirror_trainer_through_sigterm_restarts(self):
        self.train_through_restarts("mirror")


if __name__ == "__main__":
    unittest.main()
