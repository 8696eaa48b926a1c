"""The ctypes binding: emaclient.Client, Segment and Session over
libemaclient, errors with the contract's codes, and crash safety as seen
from Python."""

import ctypes
import inspect
import os
import unittest
from unittest import mock

import torch

import emadtest
from emadtest import bits_equal, first_difference, make_model, make_optimizer, model_state

import emaclient
import emaclient.torch
from emaclient.torch import EMA, _view

SPECS = [("w", "f32", (3, 5)), ("h", "bf16", (7,)), ("n", "i64", ()), ("e", "f32", (0,))]


def train_four_steps(ema, model):
    """Four steps with the EMA's optimizer hook: the optimizer, and the
    training weights after them."""
    opt = ema.attach_optimizer(make_optimizer(model))
    for step in range(4):
        ema.batch_start(step)
        emadtest.train_step(model, opt, step)
        ema.batch_end()
    ema.wait()
    return opt, model_state(model)


def tensor(seg, i, dtype):
    t = seg.tensors[i]
    return _view(t.address, t.nbytes, dtype, t.shape)


def shadow(session, i, dtype, shape):
    sh = session.shadows[i]
    return _view(sh.address, sh.numel * sh.elem_size, dtype, shape)


class ClientBasics(emadtest.EmadTestCase):

    def test_connect_status_and_socket_path(self):
        d = self.daemon()
        with emaclient.Client(d.sock, name="test") as c:
            self.assertTrue(c.server["server"].startswith("emad "))
            self.assertEqual(c.server["proto"], emaclient.PROTO_VERSION)
            self.assertEqual(c.server["pid"], d.proc.pid)
            self.assertEqual(c.server["workers"], 2)
            st = c.status()
            self.assertEqual(st["server"]["socket"], d.sock)
            self.assertEqual(st["server"]["workers"], 2)
            self.assertEqual(st["server"]["state_dir"], d.state_dir)
            self.assertEqual(st["sessions"], [])
            with self.assertRaises(emaclient.Error) as cm:
                c.status("nope")
            self.assertEqual(cm.exception.code, "NOSESSION")
            self.assertIn("nope", cm.exception.message)
        self.assertTrue(c.closed)
        with self.assertRaises(emaclient.Error) as cm:
            c.status()
        self.assertEqual(cm.exception.code, "USAGE")
        self.assertEqual(emaclient.socket_path(d.sock), d.sock)
        old = os.environ.get("EMAD_SOCKET")
        os.environ["EMAD_SOCKET"] = d.sock
        try:
            self.assertEqual(emaclient.socket_path(), d.sock)
            with emaclient.Client() as c:
                self.assertEqual(c.server["pid"], d.proc.pid)
        finally:
            if old is None:
                del os.environ["EMAD_SOCKET"]
            else:
                os.environ["EMAD_SOCKET"] = old

    def test_metrics(self):
        """Client.metrics(): the Prometheus text, counting the session's
        updates; one label per session, with the owner's uid."""
        d = self.daemon()
        with emaclient.Client(d.sock, name="test") as c:
            text = c.metrics()
            self.assertIn("# TYPE emad_updates_total counter\n", text)
            self.assertIn("\nemad_updates_total 0\n", text)
            seg = emaclient.Segment([("w", "f32", 64)])
            try:
                s = c.register("m", seg, half_life="1ba")
                for b in range(1, 4):
                    s.event("batch_end", batch=b)
                text = c.metrics()
                self.assertIn("\nemad_updates_total 3\n", text)
                self.assertIn('emad_session_last_update_batch{session="%d:m"} 3\n' % os.geteuid(),
                              text)
                s.close()
            finally:
                seg.destroy()
        with self.assertRaises(emaclient.Error) as cm:
            c.metrics()
        self.assertEqual(cm.exception.code, "USAGE")

    def test_connect_error(self):
        d = self.daemon()
        with self.assertRaises(emaclient.Error) as cm:
            emaclient.Client(d.sock + ".missing")
        self.assertEqual(cm.exception.code, "CONNECT")
        self.assertIsInstance(cm.exception.errno, int)
        self.assertLess(cm.exception.errno, 0)

    def test_segment(self):
        with emaclient.Segment(SPECS) as seg:
            self.assertTrue(seg.name.startswith("/emad-"))
            self.assertTrue(emadtest.shm_exists(seg.name))
            self.assertEqual([t.name for t in seg.tensors], ["w", "h", "n", "e"])
            self.assertEqual([t.dtype for t in seg.tensors], ["f32", "bf16", "i64", "f32"])
            self.assertEqual([t.numel for t in seg.tensors], [15, 7, 1, 0])
            self.assertEqual([t.shape for t in seg.tensors], [(3, 5), (7,), (), (0,)])
            for t in seg.tensors:
                self.assertEqual(t.offset % 64, 0)
                self.assertEqual(t.address % 64, 0)
            self.assertEqual(seg.swap_state(), (emaclient.SWAP_TRAIN, 0))
            w = tensor(seg, 0, torch.float32)
            self.assertTrue(torch.equal(w, torch.zeros(3, 5)))
            w.copy_(torch.arange(15.0).view(3, 5))
            self.assertEqual(bytes(seg.buffer(0))[4:8], torch.tensor([1.0]).numpy().tobytes())
            # a second mapping of the same object sees the same memory
            with emaclient.Segment.open(seg.name, SPECS) as again:
                self.assertNotEqual(again.base, seg.base)
                self.assertTrue(torch.equal(tensor(again, 0, torch.float32), w))
                self.assertFalse(again.restore())
            self.assertTrue(emadtest.shm_exists(seg.name))  # open + close keeps it
            with self.assertRaises(emaclient.Error) as cm:
                emaclient.Segment.open(seg.name, SPECS[:2])
            self.assertEqual(cm.exception.code, "USAGE")
            name = seg.name
        self.assertFalse(emadtest.shm_exists(name))
        with self.assertRaises(emaclient.Error) as cm:
            emaclient.Segment.open(name, SPECS)
        self.assertEqual(cm.exception.code, "SHM")
        with self.assertRaises(emaclient.Error) as cm:
            emaclient.Segment([("x", "f8", (2,))])
        self.assertEqual(cm.exception.code, "USAGE")
        self.assertIn("f8", cm.exception.message)

    def test_session_events_swaps_and_errors(self):
        d = self.daemon()
        with emaclient.Client(d.sock) as c, emaclient.Segment(SPECS) as seg:
            w = tensor(seg, 0, torch.float32)
            h = tensor(seg, 1, torch.bfloat16)
            w.copy_(torch.linspace(-1, 1, 15).view(3, 5))
            h.copy_(torch.linspace(2, 3, 7))
            with self.assertRaises(emaclient.Error) as cm:
                c.register("bad", seg, half_life="10xx")
            self.assertEqual(cm.exception.code, "BADARG")
            self.assertIn("half_life", cm.exception.message)
            with self.assertRaises(emaclient.Error) as cm:
                c.register("bad name!", seg)
            self.assertEqual(cm.exception.code, "BADARG")
            with c.register("s1", seg, half_life="4ba", ema_start="2ba") as s:
                self.assertEqual(s.name, "s1")
                st = s.state
                self.assertEqual((st["session"], st["attached"], st["tensors"]), ("s1", True, 4))
                self.assertEqual(st["smoothing"], 2 ** -0.25)
                self.assertEqual(st["shm"], seg.name)
                self.assertEqual([x.dtype for x in s.shadows], ["f32", "f32", "i64", "f32"])
                self.assertIsNone(s.shadows[3].address)
                # the shadow starts as the params (Composer's INIT)
                self.assertTrue(bits_equal(shadow(s, 0, torch.float32, (3, 5)), w))
                self.assertTrue(bits_equal(shadow(s, 1, torch.float32, (7,)), h.float()))
                with self.assertRaises(emaclient.Error) as cm:
                    c.register("s1", seg)
                self.assertEqual(cm.exception.code, "EXISTS")
                self.assertEqual(s.event("batch_end", 1, 0),
                                 emaclient.Result("none", False, False, 0))
                self.assertEqual(s.event("eval_start", 1, 0).action, "none")  # not started
                # the split form; tickets claimed in any order
                t2 = s.send("batch_end", 2, 0)
                t3 = s.send("batch_end", 3, 0)
                self.assertEqual(s.wait(t3), emaclient.Result("update", False, True, 2))
                self.assertEqual(s.wait(t2), emaclient.Result("start+update", False, True, 1))
                with self.assertRaises(emaclient.Error) as cm:
                    s.wait(t2)
                self.assertEqual(cm.exception.code, "USAGE")
                before = w.clone()
                r = s.swap("ema")
                self.assertEqual((r.action, r.active), ("swap_in", True))
                self.assertEqual(seg.swap_state(), (emaclient.SWAP_EMA, 1))
                self.assertTrue(bits_equal(w, shadow(s, 0, torch.float32, (3, 5))))
                self.assertEqual(s.swap("ema").action, "none")
                self.assertEqual(s.event("batch_start", 3, 0).action, "swap_out")
                self.assertTrue(bits_equal(w, before))
                self.assertEqual(seg.swap_state(), (emaclient.SWAP_TRAIN, 2))
                with self.assertRaises(emaclient.Error) as cm:
                    s.event("lunch", 3, 0)
                self.assertEqual(cm.exception.code, "BADARG")
                with self.assertRaises(emaclient.Error) as cm:
                    s.swap("sideways")
                self.assertEqual(cm.exception.code, "BADARG")
                info = c.session_state("s1")
                self.assertEqual((info["updates"], info["swaps"]), (2, 2))
                self.assertEqual(info["last_time"], {"batch": 3, "epoch": 0})
            # the context manager closed the session: emad has no such session
            with self.assertRaises(emaclient.Error) as cm:
                c.status("s1")
            self.assertEqual(cm.exception.code, "NOSESSION")
            with self.assertRaises(emaclient.Error) as cm:
                s.event("batch_end", 4, 0)
            self.assertEqual(cm.exception.code, "USAGE")

    def test_keep_resume_save_load_drop(self):
        d = self.daemon()
        with emaclient.Client(d.sock) as c, emaclient.Segment(SPECS) as seg:
            w = tensor(seg, 0, torch.float32)
            w.fill_(1.0)
            s = c.register("k", seg, smoothing=0.5)
            s.event("batch_end", 1, 0)
            w.fill_(3.0)
            s.event("batch_end", 2, 0)  # shadow 2.0
            saved = c.save("k", "k-at-2")
            self.assertEqual(saved["path"], os.path.join(d.state_dir, "users", str(os.geteuid()),
                                                         "k-at-2.emastate"))
            self.assertGreater(saved["bytes"], 0)
            w.fill_(4.0)
            s.event("batch_end", 3, 0)  # shadow 3.0
            s.close(keep=True)
            s.free()
            info = c.session_state("k")
            self.assertFalse(info["attached"])
            self.assertEqual(info["updates"], 3)
            with emaclient.Segment(SPECS) as seg2:  # a new segment, as after a restart
                with c.register("k", seg2, smoothing=0.5, resume=True) as s2:
                    self.assertEqual(s2.state["updates"], 3)
                    self.assertEqual(s2.state["last_time"], {"batch": 3, "epoch": 0})
                    sh = shadow(s2, 0, torch.float32, (3, 5))
                    self.assertTrue(torch.equal(sh, torch.full((3, 5), 3.0)))
                    c.load("k", "k-at-2")
                    self.assertTrue(torch.equal(sh, torch.full((3, 5), 2.0)))
                    self.assertEqual(c.session_state("k")["updates"], 2)
                    with self.assertRaises(emaclient.Error) as cm:
                        c.load("k", "no-such-file")
                    self.assertIn(cm.exception.code, ("IO", "STATE"))
                    s2.close(keep=True)
            with emaclient.Client(d.sock) as other:
                with self.assertRaises(emaclient.Error) as cm:
                    other.drop("nope")
                self.assertEqual(cm.exception.code, "NOSESSION")
                other.drop("k")
            with self.assertRaises(emaclient.Error) as cm:
                c.status("k")
            self.assertEqual(cm.exception.code, "NOSESSION")


class Finalized(emadtest.EmadTestCase):

    def test_objects_whose_finalizer_ran_say_so(self):
        """At the interpreter's exit a finalizer may run without close(): the
        object then says it is closed and refuses calls (USAGE) instead of
        using the memory the finalizer freed."""
        d = self.daemon()
        c = emaclient.Client(d.sock)
        seg = emaclient.Segment(SPECS)
        s = c.register("fin", seg)
        name = seg.name
        for obj, closed in ((s, "freed"), (seg, "closed"), (c, "closed")):
            obj._fin()
            self.assertTrue(getattr(obj, closed), obj)
        with self.assertRaises(emaclient.Error) as cm:
            seg.swap_state()
        self.assertEqual(cm.exception.code, "USAGE")
        with self.assertRaises(emaclient.Error) as cm:
            s.send("batch_end", 1, 0)
        self.assertEqual(cm.exception.code, "USAGE")
        with self.assertRaises(emaclient.Error) as cm:
            c.status()
        self.assertEqual(cm.exception.code, "USAGE")
        self.assertFalse(emadtest.shm_exists(name))
        seg.destroy()  # idempotent after the finalizer
        s.free()
        c.close()


class CrashSafety(emadtest.EmadTestCase):

    def crash_during_eval(self, mode):
        d = self.daemon()
        model = make_model(0)
        # the loss itself is the subject: no reconnecting (test_resume has that)
        ema = EMA(model, socket=d.sock, session="crash", mode=mode, half_life="2ba",
                  reconnect=False)
        try:
            _, training = train_four_steps(ema, model)
            with self.assertRaises(emaclient.Error) as cm:
                with ema.eval():
                    self.assertIsNotNone(first_difference(model_state(model), training))
                    d.kill()
            self.assertEqual(cm.exception.code, "DISCONNECTED")
            self.assertTrue(ema.session.restored)
            self.assertFalse(ema.active)
            # every tensor, buffers included, holds the training weights again
            self.assertIsNone(first_difference(model_state(model), training))
        finally:
            ema.close()
        self.assertIsNone(first_difference(model_state(model), training))

    def test_emad_crash_during_eval_shm(self):
        self.crash_during_eval("shm")

    def test_emad_crash_during_eval_mirror(self):
        self.crash_during_eval("mirror")

    def restart_during_eval(self, mode):
        """emad dies and comes back while the EMA weights are in: leaving
        eval() reconnects; the model holds the training weights after it,
        and training and evaluation go on."""
        d = self.daemon()
        model = make_model(0)
        ema = EMA(model, socket=d.sock, session="crash", mode=mode, half_life="2ba")
        try:
            opt, training = train_four_steps(ema, model)
            with ema.eval():
                self.assertIsNone(first_difference(model_state(model), ema.ema_state_dict()))
                d.kill(keep_shadows=True)
                d.start()
            self.assertFalse(ema.active)
            self.assertIsNone(first_difference(model_state(model), training))
            self.assertEqual(ema._res.client.reconnects, 1)
            for step in range(4, 6):
                ema.batch_start(step)
                emadtest.train_step(model, opt, step)
                ema.batch_end()
            ema.wait()
            self.assertEqual(ema.state()["updates"], 6)
            training = model_state(model)
            with ema.eval():
                self.assertTrue(ema.active)
                self.assertIsNone(first_difference(model_state(model), ema.ema_state_dict()))
            self.assertIsNone(first_difference(model_state(model), training))
        finally:
            ema.close()

    def test_emad_restart_during_eval_shm(self):
        self.restart_during_eval("shm")

    def test_emad_restart_during_eval_mirror(self):
        self.restart_during_eval("mirror")


class Api(emadtest.EmadTestCase):

    def test_config_errors_and_defaults(self):
        d = self.daemon()
        model = make_model(0)
        with self.assertRaises(ValueError):
            EMA(model, socket=d.sock, half_life="10ba", smoothing=0.9)
        with self.assertRaises(ValueError):
            EMA(model, socket=d.sock, half_life=None)
        with self.assertRaises(ValueError):
            EMA(model, socket=d.sock, mode="gpu")
        with self.assertRaises(emaclient.Error) as cm:
            EMA(model, socket=d.sock, half_life="10ba", update_interval="1ep")
        self.assertEqual(cm.exception.code, "BADARG")
        # failed constructions leave the model's parameters in their own memory
        for p in model.parameters():
            p.data.add_(0)
        with EMA(model, socket=d.sock, smoothing=0.9) as ema:
            st = ema.state()
            self.assertEqual((st["smoothing"], st["half_life"], st["update_interval"]),
                             (0.9, None, "1ba"))
            self.assertIn(".%d" % os.getpid(), ema.session_name)
        with EMA(model, socket=d.sock, session="defaults") as ema:
            st = ema.state()
            self.assertEqual((st["half_life"], st["update_interval"], st["ema_start"]),
                             ("1000ba", "1ba", "0.0dur"))
            self.assertEqual(ema.mode, "shm")
            with self.assertRaises(emaclient.Error) as cm:
                EMA(model, socket=d.sock, session="defaults")
            self.assertEqual(cm.exception.code, "EXISTS")
        with emaclient.Client(d.sock) as c:
            self.assertEqual(c.status()["sessions"], [])

    def test_moved_parameter_is_refused(self):
        d = self.daemon()
        model = make_model(0)
        with EMA(model, socket=d.sock, session="moved") as ema:
            model.fc.weight.data = model.fc.weight.data.clone()
            with self.assertRaises(emaclient.Error) as cm:
                ema.batch_end(1)
            self.assertEqual(cm.exception.code, "USAGE")
            self.assertIn("fc.weight", cm.exception.message)

    def test_forked_child_leaves_the_segment_alone(self):
        """A forked child (a DataLoader worker, say) that runs the finalizers
        at its exit neither removes the segment nor touches the parameters."""
        d = self.daemon()
        model = make_model(0)
        with EMA(model, socket=d.sock, session="fork") as ema:
            seg = ema.session.segment
            pid = os.fork()
            if pid == 0:  # what the child's exit would run
                try:
                    ema._finalizer()
                    seg._fin()
                    ema.session._fin()
                    ema.client._fin()
                finally:
                    os._exit(0)
            self.assertEqual(os.waitpid(pid, 0)[1], 0)
            self.assertTrue(emadtest.shm_exists(seg.name))
            p = next(model.parameters())
            self.assertTrue(seg.base <= p.data_ptr() < seg.base + seg.nbytes)
            self.assertEqual(ema.batch_end(1, wait=True).action, "start+update")

    def test_optimizer_hook_and_scheduler(self):
        d = self.daemon()
        model = make_model(0)
        opt = make_optimizer(model)
        with EMA(model, socket=d.sock, session="sched") as ema:
            ema.attach_optimizer(opt)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            ema.batch_start(0)
            emadtest.train_step(model, opt, 0)
            sched.step()
            ema.batch_end()
            self.assertEqual(len(ema._pending), 1)
            emadtest.train_step(model, opt, 1)  # the step waited first
            self.assertEqual(ema._pending, [])
            self.assertEqual(opt.param_groups[0]["lr"], 0.025)
        # after close the hook does nothing (the scheduler wrapped it: it stays)
        emadtest.train_step(model, opt, 2)
        self.assertEqual(opt._step_count, 3)


class Stash(emadtest.EmadTestCase):
    """The stash is found by libemaclient (emac_segment_stash), which checks
    the segment's header: the binding never reads header bytes itself."""

    def test_segment_stash_is_found_and_checked_by_the_library(self):
        with emaclient.Segment(SPECS) as seg:
            # The test, not the binding, reads the header: stash_offset at 40.
            head = ctypes.string_at(seg.base, 48)
            self.assertEqual(seg.stash(), seg.base + int.from_bytes(head[40:48], "little"))
            magic = (ctypes.c_char * 8).from_address(seg.base)
            magic[0] = b"X"
            try:
                with self.assertRaises(emaclient.Error) as cm:
                    seg.stash()
                self.assertEqual(cm.exception.code, "SHM")
                self.assertIn(seg.name, cm.exception.message)
            finally:
                magic[0] = b"E"
            self.assertEqual(seg.stash(), seg.base + int.from_bytes(head[40:48], "little"))

    def test_torch_module_leaves_the_header_to_the_library(self):
        src = inspect.getsource(emaclient.torch)
        self.assertNotIn("EMASEG01", src)
        self.assertNotIn("from_bytes", src)

    def test_training_state_dict_reads_the_stash_through_the_library(self):
        d = self.daemon()
        model = make_model(0)
        ema = EMA(model, socket=d.sock, session="stash", mode="shm", half_life="2ba")
        calls = []
        real = emaclient.Segment.stash

        def spy(seg):
            calls.append(seg.name)
            return real(seg)

        try:
            _, training = train_four_steps(ema, model)
            with mock.patch.object(emaclient.Segment, "stash", spy):
                with ema.eval():
                    self.assertEqual(ema._res.segment.swap_state()[0], emaclient.SWAP_EMA)
                    got = ema.training_state_dict()
            self.assertEqual(calls, [ema._res.segment.name])
            self.assertTrue(got)
            self.assertIsNone(first_difference(got, {n: training[n] for n in got}))
        finally:
            ema.close()


if __name__ == "__main__":
    unittest.main()
