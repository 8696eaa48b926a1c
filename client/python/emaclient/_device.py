"""How emaclient.torch moves tensors between an accelerator and the segment.

emaclient.torch.EMA orders its host copies through a Backend and never calls
CUDA itself, so that the ordering logic (side stream, events, deferred
batch_end, waits before reusing the host buffer) is the same code whether the
device is a GPU or a test's fake device whose streams run when the test says.

A Backend has these methods (streams and events are opaque to EMA):
    current_stream(device)      the stream the caller's work goes to now
    new_stream(device)          a side stream for the copies
    record(stream)              an event that completes once the work queued
                                on stream so far is done
    wait(stream, event)         later work on stream waits for event (the
                                host does not block)
    synchronize(event)          block until event completes (the GIL released)
    synchronize_device(device)  block until all work on the device is done
    copy(stream, dst, src, non_blocking)   dst.copy_(src) queued on stream
    pin(address, nbytes)        page-lock host memory: None, or why it failed
    unpin(address)              undo pin: None, or why it failed
"""

import ctypes
import os

import torch

__all__ = ["CudaBackend", "cuda_backend"]


def _code(rc):
    """A cudaError_t as torch's binding returns it (an enum or an int)."""
    return int(getattr(rc, "value", rc))


def _loaded_cudart():
    """The CUDA runtime library that torch loaded, opened again (the dynamic
    loader hands back the same copy, so its per-thread error state is the one
    torch's calls set), or None when torch linked it statically."""
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(None, 5) for line in f]
        paths = {x[5].strip() for x in fields if len(x) == 6}
    except OSError:
        return None
    for p in sorted(paths):
        base = os.path.basename(p)
        # libcudart.so.12 (the nvidia-cuda-runtime wheel, a system CUDA) or
        # libcudart-<hash>.so.11.0 (bundled in torch/lib by older wheels)
        if base.startswith(("libcudart.so", "libcudart-")) and ".so" in base:
            try:
                lib = ctypes.CDLL(p)
                lib.cudaGetLastError.restype = ctypes.c_int
                lib.cudaGetLastError.argtypes = []
                lib.cudaGetErrorString.restype = ctypes.c_char_p
                lib.cudaGetErrorString.argtypes = [ctypes.c_int]
                return lib
            except (OSError, AttributeError):
                continue
    return None


class CudaBackend:
    """The Backend of CUDA devices, on torch's streams and events.

    cudart: torch.cuda.cudart() (cudaHostRegister, cudaHostUnregister,
    cudaGetErrorString); runtime: an object with cudaGetLastError(), by
    default the libcudart torch loaded. Tests pass stand-ins for both."""

    def __init__(self, cudart=None, runtime=None):
        self._cudart = cudart
        self._runtime = runtime

    def _rt(self):
        if self._cudart is None:
            self._cudart = torch.cuda.cudart()
        return self._cudart

    def current_stream(self, device):
        return torch.cuda.current_stream(device)

    def new_stream(self, device):
        return torch.cuda.Stream(device)

    def record(self, stream):
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def wait(self, stream, event):
        stream.wait_event(event)

    def synchronize(self, event):
        event.synchronize()

    def synchronize_device(self, device):
        torch.cuda.synchronize(device)

    def copy(self, stream, dst, src, non_blocking):
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=non_blocking)
        # The caching allocator must not reuse the device tensor's memory
        # while the copy on the side stream may still use it.
        for t in (dst, src):
            if t.device.type == "cuda":
                t.record_stream(stream)

    def _describe(self, rc):
        # torch's binding of cudaGetErrorString takes its cudaError enum, not the plain int
        # that cudaHostRegister returns: ask the loaded runtime first, the binding after.
        if self._runtime is None:
            self._runtime = _loaded_cudart() or False
        msg = None
        for src in (self._runtime, self._rt()):
            try:
                msg = src.cudaGetErrorString(rc)
            except Exception:
                continue
            if isinstance(msg, bytes):
                msg = msg.decode("utf-8", "replace")
            if msg:
                break
        return "error %d%s" % (rc, " (%s)" % msg if msg else "")

    def clear_error(self):
        """Clear the calling thread's last CUDA error. cudaHostRegister and
        cudaHostUnregister leave their failure there (torch's binding does
        not take it), and the next kernel launch check in torch would report
        it as its own, unrelated failure."""
        if self._runtime is None:
            self._runtime = _loaded_cudart() or False
        if self._runtime:
            self._runtime.cudaGetLastError()
            return
        # A statically linked runtime: a kernel launch makes torch itself
        # read (and so clear) the error, which it reports as an exception.
        try:
            torch.zeros(1, device="cuda").add_(1)
        except Exception:
            pass

    def pin(self, address, nbytes):
        try:
            rc = _code(self._rt().cudaHostRegister(address, nbytes, 0))
        except Exception as e:  # a torch without the binding
            return str(e)
        if rc == 0:
            return None
        self.clear_error()
        return "cudaHostRegister: " + self._describe(rc)

    def unpin(self, address):
        try:
            rc = _code(self._rt().cudaHostUnregister(address))
        except Exception as e:
            return str(e)
        if rc == 0:
            return None
        self.clear_error()
        return "cudaHostUnregister: " + self._describe(rc)


_CUDA = []


def cuda_backend():
    """The process's CudaBackend."""
    if not _CUDA:
        _CUDA.append(CudaBackend())
    return _CUDA[0]
