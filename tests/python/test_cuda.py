"""Mirror mode on a real CUDA device (issue #17 items 1, 2, 3, 5): skipped,
and listed as skipped, where torch.cuda.is_available() is False. The
ordering logic itself is tested on the CPU with a fake device
(test_device.py)."""

import unittest

import torch

import emadtest
import test_exit

from emaclient import _device
from emaclient.torch import EMA

CUDA = torch.cuda.is_available()
WHY = "no CUDA device (torch.cuda.is_available() is False): run on a machine with a GPU"


@unittest.skipUnless(CUDA, WHY)
class CudaErrors(unittest.TestCase):

    def test_a_failed_register_does_not_break_the_next_kernel(self):
        torch.ones(1, device="cuda").add_(1)
        buf = torch.empty(4096, dtype=torch.uint8)
        backend = _device.CudaBackend()
        # registering a range twice fails (cudaErrorHostMemoryAlreadyRegistered)
        self.assertIsNone(backend.pin(buf.data_ptr(), 4096))
        try:
            why = backend.pin(buf.data_ptr(), 4096)
            self.assertIsNotNone(why)
            self.assertIn("cudaHostRegister", why)
            self.assertIn("already", why)  # the runtime's text, not only the number
            # the launch check of torch's next kernel finds no error left over
            self.assertEqual(torch.ones(4, device="cuda").add_(1).sum().item(), 8.0)
        finally:
            self.assertIsNone(backend.unpin(buf.data_ptr()))
        why = backend.unpin(buf.data_ptr())  # not registered any more
        self.assertIn("cudaHostUnregister", why)
        self.assertIn("registered", why)
        self.assertEqual(torch.ones(4, device="cuda").add_(1).sum().item(), 8.0)


@unittest.skipUnless(CUDA, WHY)
class CudaMirror(emadtest.EmadTestCase):

    def train(self, side_stream):
        """Steps on a side stream (as DeepSpeed, Apex, Megatron do) while a
        long kernel holds the current stream: the shadow still equals a
        lerp of the post-step weights, computed on the CPU as emad does."""
        d = self.daemon()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(),
                                    torch.nn.Linear(512, 10)).cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with EMA(model, socket=d.sock, session="cuda", half_life="2ba") as ema:
            self.assertEqual(ema.mode, "mirror")
            ema.attach_optimizer(opt)
            smoothing = ema.state()["smoothing"]
            shadow = None
            s = torch.cuda.Stream()
            for step in range(8):
                x = torch.randn(64, 256, device="cuda")
                model(x).square().mean().backward()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s if side_stream else torch.cuda.current_stream()):
                    torch.cuda._sleep(50_000_000)  # the step lands late
                    opt.step()
                    opt.zero_grad()
                ema.batch_end()
                # Only now does the next backward wait for the step: had the copies been
                # ordered against the current stream alone, they would have read the
                # weights before the step on the side stream.
                torch.cuda.current_stream().wait_stream(s)
                if step == 0:
                    # batch_end did not wait for the GPU: the step is still queued
                    self.assertFalse((s if side_stream else
                                      torch.cuda.current_stream()).query())
                ema.wait()
                torch.cuda.synchronize()
                weights = {n: p.detach().cpu().float() for n, p in model.named_parameters()}
                if shadow is None:
                    shadow = weights
                else:
                    shadow = {n: shadow[n].lerp(weights[n], 1 - smoothing) for n in shadow}
                got = ema.shadow_state_dict()
                for n in shadow:
                    self.assertTrue(emadtest.bits_equal(got[n], shadow[n]), "%s step %d" %
                                    (n, step))
            training = {n: p.detach().clone() for n, p in model.named_parameters()}
            with ema.eval():
                for n, p in model.named_parameters():
                    self.assertTrue(torch.equal(p.cpu(), shadow[n]), n)
            for n, p in model.named_parameters():
                self.assertTrue(torch.equal(p, training[n]), n)

    def test_steps_on_the_current_stream(self):
        self.train(False)

    def test_steps_on_a_side_stream(self):
        self.train(True)


@unittest.skipUnless(CUDA, WHY)
class CudaExit(test_exit.ExitWithoutClose):

    def test_every_ending_gives_the_training_weights_back(self):
        self.run_cases([("mirror", end, weights, "cuda") for end in test_exit.STATUS
                        for weights in ("out", "in")])

    # test_exit runs these: a CPU script, and the fake device
    test_the_issue_script_exits_0 = None
    test_an_update_held_back_on_a_device_is_finished_first = None


if __name__ == "__main__":
    unittest.main()
