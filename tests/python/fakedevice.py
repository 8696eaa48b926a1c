"""A fake device for emaclient.torch's mirror mode (the Backend interface of
emaclient/_device.py), so that the ordering of the copies is tested without
a GPU. Its tensors are CPU tensors; what a test queues on a stream (an
optimizer step, a reader), and the copies EMA queues, run only when the test
says (run). An event completes when its stream reaches it.

synchronize() from a thread other than the test's (EMA's sender) waits until
the test has run the streams; from the test's own thread (a host wait of the
training thread) it runs the streams itself, newest first (so that a copy
not ordered after older work would overtake it), and notes in host_waits
the events not yet done: a test asserts where the training thread must not
block."""

import contextlib
import threading

import torch

TIMEOUT = 30.0


class FakeEvent:
    def __init__(self, name):
        self.name = name
        self.flag = threading.Event()

    @property
    def done(self):
        return self.flag.is_set()

    def __repr__(self):
        return "<FakeEvent %s%s>" % (self.name, " done" if self.done else "")


class FakeStream:
    def __init__(self, name, device):
        self.name = name
        self.device = device
        self.ops = []  # ("record", event) | ("wait", event) | ("call", fn, what)

    def __repr__(self):
        return "<FakeStream %s, %d queued>" % (self.name, len(self.ops))


class FakeBackend:

    def __init__(self, pin_error=None, unpin_error=None):
        self.streams = []
        self.current = {}        # device -> stream
        self.events = 0
        self.pin_error = pin_error
        self.unpin_error = unpin_error
        self.pins = []           # (address, nbytes)
        self.unpins = []         # (address, what unpin_check() returned)
        self.unpin_check = None  # called at unpin, its result noted
        self.copies = []         # (stream name, non_blocking)
        self.on_copy = None      # called at each copy queued
        self.host_waits = []     # events the test's thread waited for
        self.device_waits = 0
        self.main = threading.current_thread()

    # ---- the Backend interface ----

    def current_stream(self, device):
        s = self.current.get(device)
        if s is None:
            s = self.current[device] = self.new_stream(device, "current")
        return s

    def new_stream(self, device, name=None):
        s = FakeStream(name or "side%d" % len(self.streams), device)
        self.streams.append(s)
        return s

    def record(self, stream):
        self.events += 1
        ev = FakeEvent("%s#%d" % (stream.name, self.events))
        stream.ops.append(("record", ev))
        return ev

    def wait(self, stream, event):
        stream.ops.append(("wait", event))

    def copy(self, stream, dst, src, non_blocking):
        self.copies.append((stream.name, non_blocking))
        if self.on_copy is not None:
            self.on_copy()
        def run():
            with torch.no_grad():
                dst.copy_(src)

        stream.ops.append(("call", run, "copy"))

    def synchronize(self, event):
        if threading.current_thread() is self.main:
            if not event.done:
                self.host_waits.append(event)
            self.run()
            if not event.done:
                raise RuntimeError("fake device: %r can never complete" % event)
            return
        if not event.flag.wait(TIMEOUT):
            raise RuntimeError("fake device: %r did not complete: the test did not run "
                               "its stream" % event)

    def synchronize_device(self, device):
        self.device_waits += 1
        self.run()

    def pin(self, address, nbytes):
        if self.pin_error:
            return self.pin_error
        self.pins.append((address, nbytes))
        return None

    def unpin(self, address):
        self.unpins.append((address, self.unpin_check() if self.unpin_check else None))
        return self.unpin_error

    # ---- the test's controls ----

    @contextlib.contextmanager
    def use(self, stream):
        """As torch.cuda.stream(stream): the current stream of its device."""
        old = self.current.get(stream.device)
        self.current[stream.device] = stream
        try:
            yield stream
        finally:
            self.current[stream.device] = old

    def enqueue(self, stream, fn, what="work"):
        stream.ops.append(("call", fn, what))

    def step(self, stream):
        """Run the ops of stream until one waits for an event not done;
        returns how many ran."""
        n = 0
        while stream.ops:
            op = stream.ops[0]
            if op[0] == "wait" and not op[1].done:
                break
            stream.ops.pop(0)
            if op[0] == "record":
                op[1].flag.set()
            elif op[0] == "call":
                op[1]()
            n += 1
        return n

    def run(self, *streams):
        """Run the given streams (default: all, newest first) as far as they
        can go."""
        streams = streams or tuple(reversed(self.streams))
        while sum(self.step(s) for s in streams):
            pass

    def side_streams(self):
        return [s for s in self.streams if s.name.startswith("side")]
