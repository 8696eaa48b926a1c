"""Mirror mode on a device, on a fake device whose streams run when the test
says (fakedevice.py): the copies to the host wait for every writer of the
parameters (the current stream, the attached optimizer's step stream,
EMA(streams=...)), batch_end() neither blocks nor tells emad before the
copies are done, the next step waits for the copies on the device only, the
next copy into the host buffer waits for emad, the swap-back copies wait for
the readers queued before them; and page-locking only the host copies, with
a failure that warns and falls back. The CUDA backend's error handling runs
against stand-ins for the CUDA runtime."""

import unittest
import warnings
from unittest import mock

import torch
import torch.nn as nn

import emadtest
from emadtest import ReferenceEMA
from fakedevice import FakeBackend

import emaclient
import emaclient.torch
from emaclient import _device
from emaclient.torch import EMA

DEV = torch.device("cpu")  # the fake device's tensors live on the CPU


class QueuedSGD(torch.optim.Optimizer):
    """Plain SGD whose update is queued on the fake device's current stream,
    as a GPU optimizer's kernels are (the gradients taken when queued)."""

    def __init__(self, params, fake, lr=0.1):
        super().__init__(params, dict(lr=lr))
        self.fake = fake

    def step(self, closure=None):
        work = [(p, p.grad.detach().clone(), g["lr"]) for g in self.param_groups
                for p in g["params"] if p.grad is not None]

        def apply():
            with torch.no_grad():
                for p, grad, lr in work:
                    p.add_(grad, alpha=-lr)

        self.fake.enqueue(self.fake.current_stream(DEV), apply, "step")


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def host_copies(ema):
    return {e.name: e.view.clone() for e in ema._entries}


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class FakeDeviceCase(emadtest.EmadTestCase):

    def make(self, fake, **kw):
        d = self.daemon()
        patch = mock.patch.object(emaclient.torch, "_backend", lambda device: fake)
        patch.start()
        self.addCleanup(patch.stop)
        # the current stream first, so that the fake runs it last (newest first)
        fake.current_stream(DEV)
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        ema = EMA(model, socket=d.sock, session="dev", mode="mirror", half_life="2ba", **kw)
        self.addCleanup(ema.close)
        self.watch = emaclient.Client(d.sock)
        self.addCleanup(self.watch.close)
        self.inputs = torch.Generator().manual_seed(1)
        return model, ema

    def backward(self, model):
        model.zero_grad()
        model(torch.randn(8, 4, generator=self.inputs)).square().sum().backward()

    def updates(self):
        """emad's count, asked on another connection (the EMA's belongs to
        its sender while an event is held back)."""
        return self.watch.session_state("dev")["updates"]


class Ordering(FakeDeviceCase):

    def test_batch_end_sends_once_the_copies_after_the_step_are_done(self):
        fake = FakeBackend()
        model, ema = self.make(fake)
        opt = ema.attach_optimizer(QueuedSGD(model.parameters(), fake))
        before = params(model)
        self.backward(model)
        opt.step()
        fake.host_waits.clear()
        ema.batch_end()
        self.assertEqual(fake.host_waits, [])  # the training thread did not wait for the device
        side = fake.side_streams()[0]
        fake.run(side)  # the copies wait for the step, queued before them
        self.assertTrue(equal(host_copies(ema), before))
        self.assertEqual(self.updates(), 0)  # emad not told yet
        fake.run(fake.current_stream(DEV))
        after = params(model)
        self.assertFalse(equal(after, before))
        fake.run(side)
        self.assertTrue(equal(host_copies(ema), after))
        self.assertEqual(ema.wait().action, "start+update")
        self.assertTrue(equal(ema.shadow_state_dict(), after))

    def test_a_step_on_another_stream_is_waited_for(self):
        fake = FakeBackend()
        model, ema = self.make(fake)
        opt = ema.attach_optimizer(QueuedSGD(model.parameters(), fake))
        own = fake.new_stream(DEV, "optimizer")
        before = params(model)
        self.backward(model)
        with fake.use(own):  # as torch.cuda.stream(s): opt.step()
            opt.step()
        ema.batch_end()
        fake.run(fake.current_stream(DEV), *fake.side_streams())
        self.assertTrue(equal(host_copies(ema), before))
        self.assertEqual(self.updates(), 0)
        fake.run(own)
        after = params(model)
        fake.run()
        self.assertEqual(ema.wait().action, "start+update")
        self.assertTrue(equal(ema.shadow_state_dict(), after))

    def streams_named(self, streams):
        fake = FakeBackend()
        writer = fake.new_stream(DEV, "writer")
        model, ema = self.make(fake, streams=[writer] if streams == "list" else "device")
        # a parameter written on a stream the EMA cannot know of
        fake.enqueue(writer, lambda: model.weight.data.add_(1.0))
        expect = params(model)
        expect["weight"] += 1.0
        fake.device_waits = 0
        ema.batch_end()
        if streams == "device":  # the host waited for the whole device
            self.assertEqual(fake.device_waits, 1)
        else:
            self.assertEqual(fake.device_waits, 0)
            fake.run(fake.current_stream(DEV), *fake.side_streams())
            self.assertEqual(self.updates(), 0)
            fake.run(writer)
            fake.run()
        self.assertEqual(ema.wait().action, "start+update")
        self.assertTrue(equal(ema.shadow_state_dict(), expect))

    def test_streams_named_by_the_user_are_waited_for(self):
        self.streams_named("list")

    def test_streams_device_waits_for_the_whole_device(self):
        self.streams_named("device")

    def test_the_next_step_waits_on_the_device_for_the_copies(self):
        fake = FakeBackend()
        model, ema = self.make(fake)
        opt = ema.attach_optimizer(QueuedSGD(model.parameters(), fake))
        self.backward(model)
        opt.step()
        ema.batch_end()
        self.backward(model)
        fake.host_waits.clear()
        opt.step()  # the pre-hook: a wait queued on the device, not on the host
        self.assertEqual(fake.host_waits, [])
        self.assertIsNotNone(ema._res.job)  # nor for the sender
        current = fake.current_stream(DEV)
        fake.run(current)  # the first step; the second waits for the copies
        first = params(model)
        fake.run(*fake.side_streams())
        fake.run(current)
        self.assertFalse(equal(params(model), first))
        self.assertTrue(equal(host_copies(ema), first))
        ema.wait()
        self.assertTrue(equal(ema.shadow_state_dict(), first))

    def test_training_matches_the_reference_and_copies_wait_for_emad(self):
        fake = FakeBackend()
        model, ema = self.make(fake)
        model_ref = emadtest.clone_model(model)
        ref = ReferenceEMA(model_ref, half_life="2ba")
        opt = ema.attach_optimizer(QueuedSGD(model.parameters(), fake))
        opt_ref = torch.optim.SGD(model_ref.parameters(), lr=0.1)
        seen = []
        fake.on_copy = lambda: seen.append((list(ema._pending), ema._res.job))
        gen = torch.Generator().manual_seed(2)
        for step in range(6):
            x = torch.randn(8, 4, generator=gen)
            for m, o in ((model, opt), (model_ref, opt_ref)):
                m.zero_grad()
                m(x).square().sum().backward()
                o.step()
            fake.host_waits.clear()
            ema.batch_end()
            self.assertEqual(fake.host_waits, [])
            ref.batch_end(step + 1, 0)
            fake.run()  # the device catches up while the host runs ahead
        ema.wait()
        # every copy into the host buffer came after emad's last update
        self.assertEqual(seen, [([], None)] * 2 * 6)
        self.assertTrue(equal(ema.shadow_state_dict(), ref.shadow))
        self.assertEqual(self.updates(), 6)
        self.assertTrue(equal(params(model), params(model_ref)))

    def test_an_event_that_copies_nothing_does_not_wait_for_emad(self):
        fake = FakeBackend()
        model, ema = self.make(fake, update_interval="2ba")
        opt = ema.attach_optimizer(QueuedSGD(model.parameters(), fake))
        waited = []
        real_wait = ema.wait
        ema.wait = lambda: waited.append(len(ema._pending)) or real_wait()
        for step in range(1, 7):
            self.backward(model)
            opt.step()
            fake.run()
            waited.clear()
            ema.batch_end()
            # once started, odd batches copy nothing: batch_end returns without waiting
            self.assertEqual(waited != [], step == 1 or step % 2 == 0, step)
        ema.wait()
        self.assertEqual(self.updates(), 3)  # batches 2, 4 and 6

    def test_swap_back_waits_for_the_readers(self):
        fake = FakeBackend()
        model, ema = self.make(fake)
        opt = ema.attach_optimizer(QueuedSGD(model.parameters(), fake))
        for _ in range(3):
            self.backward(model)
            opt.step()
            ema.batch_end()
            fake.run()
        ema.wait()
        training = params(model)
        seen = {}
        current = fake.current_stream(DEV)
        ema.eval_start()
        ema_weights = params(model)
        self.assertFalse(equal(ema_weights, training))
        fake.enqueue(current, lambda: seen.setdefault("inside", params(model)), "reader")
        ema.eval_end()  # its copies come after the reader queued before
        fake.enqueue(current, lambda: seen.setdefault("after", params(model)), "reader")
        fake.run()
        self.assertTrue(equal(seen["inside"], ema_weights))
        self.assertTrue(equal(seen["after"], training))


class Arguments(unittest.TestCase):

    def test_streams_is_streams_or_device(self):
        with self.assertRaises(ValueError) as cm:
            EMA(nn.Linear(2, 2), socket="/nonexistent", streams="all")
        self.assertIn("'device'", str(cm.exception))


class Pinning(FakeDeviceCase):

    def test_only_the_host_copies_are_pinned_and_unpinned_before_unmapping(self):
        fake = FakeBackend()
        model, ema = self.make(fake)
        seg = ema.session.segment
        lo = seg.tensors[0].address
        hi = max(t.address + t.nbytes for t in seg.tensors)
        self.assertEqual(fake.pins, [(lo, hi - lo)])
        self.assertLess(hi - lo, seg.nbytes // 2)  # not the header, not the stash
        ema.batch_end()
        self.assertEqual({nb for _, nb in fake.copies}, {True})
        fake.unpin_check = lambda: (emadtest.shm_exists(seg.name),
                                    [s.name for s in fake.streams if s.ops])
        ema.close()
        self.assertEqual(fake.unpins, [(lo, (True, []))])

    def test_a_failed_pin_warns_and_copies_synchronously(self):
        fake = FakeBackend(pin_error="cudaHostRegister: error 2 (out of memory)")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model, ema = self.make(fake)
        msgs = [str(x.message) for x in w]
        self.assertEqual(len(msgs), 1, msgs)
        self.assertRegex(msgs[0], r"could not page-lock the \d+ bytes of host copies .*"
                         r"error 2 \(out of memory\).* slower")
        ema.batch_end()
        fake.run()
        self.assertEqual(ema.wait().action, "start+update")
        self.assertEqual({nb for _, nb in fake.copies}, {False})
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ema.close()
        self.assertEqual(w, [])
        self.assertEqual(fake.unpins, [])  # nothing was pinned

    def test_a_failed_unpin_warns(self):
        fake = FakeBackend(unpin_error="cudaHostUnregister: error 1 (invalid argument)")
        model, ema = self.make(fake)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            ema.close()
        self.assertEqual(len(w), 1)
        self.assertIn("could not unpin", str(w[0].message))
        self.assertIn("error 1 (invalid argument)", str(w[0].message))


class StandInCudart:
    """torch.cuda.cudart()'s calls over a per-thread last-error slot, as the
    CUDA runtime keeps it."""

    def __init__(self, register_rc=0, unregister_rc=0):
        self.register_rc = register_rc
        self.unregister_rc = unregister_rc
        self.last_error = 0
        self.calls = []

    def cudaHostRegister(self, ptr, size, flags):
        self.calls.append(("register", ptr, size, flags))
        if self.register_rc:
            self.last_error = self.register_rc
        return self.register_rc

    def cudaHostUnregister(self, ptr):
        self.calls.append(("unregister", ptr))
        if self.unregister_rc:
            self.last_error = self.unregister_rc
        return self.unregister_rc

    def cudaGetErrorString(self, rc):
        return {2: "out of memory", 1: "invalid argument"}.get(rc, "unknown")


class StandInRuntime:
    def __init__(self, cudart):
        self.cudart = cudart
        self.calls = 0

    def cudaGetLastError(self):
        self.calls += 1
        rc, self.cudart.last_error = self.cudart.last_error, 0
        return rc


class CudaBackendErrors(unittest.TestCase):

    def test_a_failed_register_clears_the_last_error(self):
        rt = StandInCudart(register_rc=2)
        runtime = StandInRuntime(rt)
        b = _device.CudaBackend(cudart=rt, runtime=runtime)
        why = b.pin(4096, 8192)
        self.assertEqual(why, "cudaHostRegister: error 2 (out of memory)")
        self.assertEqual(rt.calls, [("register", 4096, 8192, 0)])
        self.assertEqual(rt.last_error, 0)  # the next launch check in torch sees no error
        self.assertEqual(runtime.calls, 1)

    def test_a_failed_unregister_is_reported_and_cleared(self):
        rt = StandInCudart(unregister_rc=1)
        runtime = StandInRuntime(rt)
        b = _device.CudaBackend(cudart=rt, runtime=runtime)
        self.assertIsNone(b.pin(4096, 8192))
        self.assertEqual(b.unpin(4096), "cudaHostUnregister: error 1 (invalid argument)")
        self.assertEqual(rt.last_error, 0)

    def test_success_leaves_the_error_state_alone(self):
        rt = StandInCudart()
        runtime = StandInRuntime(rt)
        b = _device.CudaBackend(cudart=rt, runtime=runtime)
        self.assertIsNone(b.pin(4096, 8192))
        self.assertIsNone(b.unpin(4096))
        self.assertEqual(runtime.calls, 0)

    def test_the_error_text_comes_from_the_runtime(self):
        # torch's binding refuses a plain int where it takes its cudaError enum
        class EnumOnly(StandInCudart):
            def cudaGetErrorString(self, rc):
                raise TypeError("incompatible function arguments")

        class Runtime(StandInRuntime):
            def cudaGetErrorString(self, rc):
                return {712: b"part or all of the requested memory range is already "
                        b"mapped"}.get(rc)

        rt = EnumOnly(register_rc=712)
        b = _device.CudaBackend(cudart=rt, runtime=Runtime(rt))
        self.assertEqual(b.pin(4096, 8192), "cudaHostRegister: error 712 (part or all of the "
                         "requested memory range is already mapped)")
        # neither knows the text: the number alone
        rt = EnumOnly(register_rc=999)
        b = _device.CudaBackend(cudart=rt, runtime=StandInRuntime(rt))
        self.assertEqual(b.pin(4096, 8192), "cudaHostRegister: error 999")

    def test_the_runtime_is_the_one_torch_loaded(self):
        lib = _device._loaded_cudart()
        if torch.version.cuda is None:
            self.assertIsNone(lib)  # a CPU build of torch maps none
        elif torch.cuda.is_available():
            self.assertIsNotNone(lib, "torch uses CUDA, but no libcudart is mapped")
            self.assertIn(b"no error", lib.cudaGetErrorString(0))


if __name__ == "__main__":
    unittest.main()
