"""emaclient.torch - keep a PyTorch model's EMA weights in emad.

    from emaclient.torch import EMA
    ema = EMA(model, half_life="1000ba")      # registers every parameter and buffer
    ema.attach_optimizer(optimizer)           # step() waits for emad's update first
    for batch in loader:
        ...; loss.backward(); optimizer.step()
        ema.batch_end()                       # returns at once; emad updates meanwhile
    with ema.eval():                          # the EMA weights are in the model here
        evaluate(model)

The semantics are those of Composer's EMA algorithm (PROTOCOL.md §5): the
update event is batch_end ("ba" intervals) or epoch_end ("ep"); the EMA
starts at `ema_start` (shadow := weights) and is then updated every
`update_interval` with smoothing 2 ** -(interval / half_life), in fp32 (fp64
for fp64 tensors) whatever the parameter dtype; integer tensors are copied.
emad runs the state machine and the arithmetic; this module moves tensors.

Modes
  "shm"     (CPU models) each parameter's storage moves into the shared
            segment: `param.data` becomes a view of it, values preserved, and
            emad reads the live weights in place, with no copy. Buffers
            (BatchNorm statistics, ...) are copied into the segment at each
            update event instead, since the next forward changes them in
            place while emad may still be reading.
  "mirror"  (tensors on another device, e.g. CUDA) the segment holds host
            copies: they are refreshed before any event that may read them
            (an update event that applies, eval_start, checkpoint, swap to
            "ema"), synchronously with the device, and copied back to the
            device after every swap.
  "auto"    shm when every tensor is on the CPU, else mirror.

Overlap: batch_end() returns at once; emad updates the shadow while the
trainer computes its next forward and backward pass. The trainer must not
change its parameters before the update is done: attach_optimizer(opt)
makes opt.step() wait first (or call ema.wait() yourself before the step).
In shm mode do not move the model (.to(), .half(), ...) while an EMA is
attached: that replaces the parameters' storage (an Error says so).
"""

import contextlib
import ctypes
import itertools
import os
import re
import sys
import types
import warnings
import weakref

import torch

from . import Client, Error, Segment

__all__ = ["EMA", "DTYPES"]

#: torch dtype -> wire dtype of the segment
DTYPES = {
    torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "bool",
}
_TORCH = {v: k for k, v in DTYPES.items()}
_LOW_PRECISION = (torch.float16, torch.bfloat16)

_STATE_FORMAT = 1
_names = itertools.count()


class _DefaultHalfLife(str):
    """The default half-life: told apart from an explicit "1000ba", so that
    EMA(model, smoothing=0.99) works without half_life=None."""


_DEFAULT_HALF_LIFE = _DefaultHalfLife("1000ba")


def _default_session():
    base = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    base = re.sub(r"[^A-Za-z0-9._:/-]", "_", base)[:80] or "python"
    n = next(_names)
    return "%s.%d%s" % (base, os.getpid(), ".%d" % n if n else "")


def _file_name(session):
    name = re.sub(r"[^A-Za-z0-9._-]", "_", session)
    if name.startswith("."):
        name = "_" + name[1:]
    return (name + ".torch")[-128:].lstrip(".") or "ema.torch"


def _view(address, nbytes, dtype, shape):
    """A tensor over nbytes of memory at address (no copy)."""
    if not nbytes or address is None:
        return torch.empty(shape, dtype=dtype)
    buf = (ctypes.c_char * nbytes).from_address(address)
    return torch.frombuffer(buf, dtype=dtype).view(shape)


def _parse_time(s):
    m = re.fullmatch(r"(\d+)(ba|ep)", s or "")
    return (int(m.group(1)), m.group(2)) if m else (1, "ba")


class _Entry:
    """One parameter or buffer: where it lives in the model and the segment."""

    __slots__ = ("name", "module", "attr", "param", "dtype", "shape", "device", "view",
                 "shadow", "info")

    def __init__(self, name, module, attr, tensor, is_param):
        self.name = name
        self.module = module
        self.attr = attr
        # Parameters are kept as objects (the optimizer holds the same ones);
        # buffers are looked up each time, since a module may rebind them.
        self.param = tensor if is_param else None
        self.dtype = tensor.dtype
        self.shape = tuple(tensor.shape)
        self.device = tensor.device
        self.view = None
        self.shadow = None
        self.info = None

    def get(self):
        if self.param is not None:
            return self.param
        return self.module._buffers[self.attr]


class _Resources:
    """What must be released when the EMA goes: shared with its finalizer, so
    that a forgotten close() (or the interpreter's exit) still gives the
    parameters their own memory back and removes the segment. emad is not
    told: the session stays there, detached, as after a crash."""

    def __init__(self):
        self.pid = os.getpid()
        self.client = None
        self.segment = None
        self.session = None
        self.inplace = []   # entries whose parameter storage is the segment
        self.mirrored = []
        self.pinned = False
        self.hooks = []
        self.done = False


def _release(res):
    if res.done or res.pid != os.getpid():  # nothing to do in a forked child
        return
    res.done = True
    for h in res.hooks:
        try:
            h()
        except Exception:
            pass
    seg = res.segment
    try:
        if seg is not None and not seg.closed:
            if seg.swap_state()[0] != 0:
                # The EMA weights were in the params (or a swap was cut short):
                # the stash holds the training weights.
                seg.restore()
                with torch.no_grad():
                    for e in res.mirrored:
                        e.get().copy_(e.view)
            for e in res.inplace:
                p = e.param
                if p.data_ptr() == e.view.data_ptr():
                    p.data = e.view.clone()
    finally:
        for e in res.inplace + res.mirrored:
            e.view = None
            e.shadow = None
        if res.session is not None:
            res.session.free()
        if res.pinned and seg is not None:
            try:
                torch.cuda.cudart().cudaHostUnregister(seg.base)
            except Exception:
                pass
        if seg is not None:
            seg.destroy()
        if res.client is not None:
            res.client.close()


class EMA:
    """The EMA of `model`'s parameters and buffers, kept by emad.

    half_life / smoothing / update_interval / ema_start: as Composer's EMA
        (time strings "1000ba", "2ep", "0.25dur"); give half_life or
        smoothing (smoothing alone works: the default half_life gives way).
    session: emad's name for it (1..128 of [A-Za-z0-9._:/-]); default
        "<script>.<pid>".
    socket:  emad's socket (default: $EMAD_SOCKET, $XDG_RUNTIME_DIR/emad.sock,
        /run/emad/emad.sock).
    mode:    "auto", "shm" or "mirror" (see the module's documentation).
    reconnect: after losing emad (a crash, a restart), reconnect, resume
        the session and send again the unanswered events (default True;
        see emaclient.Client); reconnect_timeout: give up after this many
        seconds (default 30, or $EMAD_RECONNECT_TIMEOUT).
    resume:  re-attach to a detached session of that name kept by emad (its
        shadow and state kept) instead of registering a new one.

    Errors from emad or the library raise emaclient.Error (with `code`).
    Usable as a context manager: close() on exit (with keep=True when the
    block raised, so that emad keeps the shadow for a resume).
    """

    def __init__(self, model, *, half_life=_DEFAULT_HALF_LIFE, smoothing=None,
                 ema_start="0.0dur", update_interval=None, session=None, socket=None,
                 mode="auto", resume=False, reconnect=None, reconnect_timeout=None):
        if mode not in ("auto", "shm", "mirror"):
            raise ValueError("mode must be 'auto', 'shm' or 'mirror', not %r" % (mode,))
        if smoothing is not None:
            if half_life is not None and not isinstance(half_life, _DefaultHalfLife):
                raise ValueError("Only one of half_life or smoothing can be specified")
            half_life = None
        elif half_life is None:
            raise ValueError("Either half_life or smoothing must be specified")
        self.model = model
        self._config = {"half_life": None if half_life is None else str(half_life),
                        "smoothing": smoothing, "update_interval": update_interval,
                        "ema_start": ema_start}
        self._entries = self._collect(model)
        if not self._entries:
            raise ValueError("the model has no parameters or buffers")
        on_cpu = all(e.device.type == "cpu" for e in self._entries)
        if mode == "auto":
            mode = "shm" if on_cpu else "mirror"
        elif mode == "shm" and not on_cpu:
            raise ValueError("mode='shm' needs every tensor on the CPU (found %s); use "
                             "mode='mirror'" % sorted({str(e.device) for e in self._entries}))
        self.mode = mode
        self.session_name = session if session is not None else _default_session()
        self._state_file = _file_name(self.session_name)
        self._pending = []          # (event, ticket) sent and not yet claimed
        self._batch = 0
        self._epoch = 0
        self._duration = None
        self._started = False
        self._active = False
        self._updates = 0
        self._restore_training = None
        self._closed = False

        res = self._res = _Resources()
        self._finalizer = weakref.finalize(self, _release, res)
        for e in self._entries:
            (res.inplace if mode == "shm" and e.param is not None else res.mirrored).append(e)
        try:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
            res.client = Client(socket, name="emaclient.torch:%s" % prog, reconnect=reconnect,
                                reconnect_timeout=reconnect_timeout)
            res.segment = Segment([(e.name, DTYPES[e.dtype], e.shape) for e in self._entries])
            for e, info in zip(self._entries, res.segment.tensors):
                e.info = info
                e.view = _view(info.address, info.nbytes, e.dtype, e.shape)
            if any(e.device.type == "cuda" for e in self._entries):
                res.pinned = self._pin(res.segment)
            self._push(self._entries)
            for e in res.inplace:
                e.param.data = e.view
            self._register(resume)
        except BaseException:
            self._finalizer()
            raise

    # ---- setup ----

    @staticmethod
    def _collect(model):
        entries = []
        modules = dict(model.named_modules(remove_duplicate=False))
        for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
            for name, t in items:
                prefix, _, attr = name.rpartition(".")
                if t.dtype not in DTYPES:
                    raise TypeError("%s %s: dtype %s is not supported (supported: %s)" % (
                        kind, name, t.dtype, ", ".join(str(d) for d in DTYPES)))
                if t.layout != torch.strided:
                    raise TypeError("%s %s: only dense (strided) tensors are supported" %
                                    (kind, name))
                entries.append(_Entry(name, modules[prefix], attr, t, kind == "param"))
        return entries

    @staticmethod
    def _pin(segment):
        try:
            rc = torch.cuda.cudart().cudaHostRegister(segment.base, segment.nbytes, 0)
            return int(getattr(rc, "value", rc)) == 0
        except Exception:
            return False

    def _register(self, resume=False):
        res = self._res
        c = self._config
        session = res.client.register(
            self.session_name, res.segment, half_life=c["half_life"],
            smoothing=c["smoothing"], update_interval=c["update_interval"],
            ema_start=c["ema_start"], resume=resume)
        res.session = session
        for e, sh in zip(self._entries, session.shadows):
            nbytes = sh.numel * sh.elem_size
            e.shadow = _view(sh.address, nbytes, _TORCH[sh.dtype], e.shape)
        st = session.state
        self._interval, self._unit = _parse_time(st["update_interval"])
        self._started = st["started"]
        self._active = st["active"]
        self._updates = st["updates"]
        if st["last_time"] is not None:
            self._set_clock(st["last_time"])
        if self._active:
            self._pull(res.mirrored)

    def _set_clock(self, t):
        self._batch = int(t["batch"])
        self._epoch = int(t["epoch"])
        self._duration = t.get("duration")

    # ---- moving tensors ----

    def _push(self, entries):
        """Copy live tensors into the segment (done when this returns)."""
        devices = set()
        with torch.no_grad():
            for e in entries:
                t = e.get()
                if t.device.type == "cuda":
                    e.view.copy_(t, non_blocking=self._res.pinned)
                    devices.add(t.device)
                else:
                    e.view.copy_(t)
        for d in devices:
            torch.cuda.current_stream(d).synchronize()

    def _pull(self, entries):
        """Copy the segment into the live tensors."""
        with torch.no_grad():
            for e in entries:
                e.get().copy_(e.view)

    def _check_inplace(self):
        for e in self._res.inplace:
            if e.param.data_ptr() != e.view.data_ptr() or e.param.dtype != e.dtype:
                raise Error("USAGE", "parameter %s no longer lives in the EMA's segment (was the "
                            "model moved or converted after EMA() was made?)" % e.name)

    def _may_read(self, event):
        """Whether emad may read the params for this event (PROTOCOL.md §5):
        only the update event of the interval's unit, and once started only
        when the time is a multiple of the interval."""
        if event not in ("batch_end", "epoch_end"):
            return True
        if (event == "batch_end") != (self._unit == "ba"):
            return False
        if self._started:
            now = self._batch if self._unit == "ba" else self._epoch
            return now % self._interval == 0
        return True

    # ---- talking to emad ----

    def _session(self):
        if self._closed:
            raise Error("USAGE", "the EMA was closed")
        return self._res.session

    def _note(self, r):
        # After a reconnect the library may have put the training weights
        # back itself (the reply then says "none"): follow the segment.
        changed = r.active != self._active
        self._started = r.started
        self._active = r.active
        self._updates = r.updates
        if r.action in ("swap_in", "swap_out") or changed:
            self._pull(self._res.mirrored)
        return r

    @contextlib.contextmanager
    def _talking(self):
        """Around every request: if the connection to emad is lost while the
        EMA weights are in, libemaclient copies the stash back into the
        segment; bring the mirrored tensors back from it too."""
        try:
            yield
        except Error:
            s = self._res.session
            try:
                if s is not None and not s.freed and s.restored and self._active:
                    self._active = False
                    self._pull(self._res.mirrored)
            except Exception:
                pass
            raise

    def _send(self, event):
        s = self._session()
        with self._talking():
            ticket = s.send(event, self._batch, self._epoch, self._duration)
        self._pending.append((event, ticket))

    def _call(self, event):
        self.wait()
        s = self._session()
        with self._talking():
            return self._note(s.event(event, self._batch, self._epoch, self._duration))

    def _clock(self, batch, epoch, duration):
        if batch is not None:
            self._batch = int(batch)
        if epoch is not None:
            self._epoch = int(epoch)
        if duration is not None:
            self._duration = float(duration)

    def wait(self):
        """Wait until every event sent is done (emad has finished reading the
        params): call before changing the params, if attach_optimizer is not
        used. Returns the Result of the last update event claimed, or None."""
        last = None
        while self._pending:
            event, ticket = self._pending[0]
            with self._talking():
                try:
                    r = self._note(self._session().wait(ticket))
                finally:
                    self._pending.pop(0)
            if event in ("batch_end", "epoch_end"):
                last = r
        return last

    def fit_start(self, batch=None, epoch=None, duration=None):
        """The fit_start event (no weight change)."""
        self._clock(batch, epoch, duration)
        return self._call("fit_start")

    def batch_start(self, batch=None, epoch=None, duration=None):
        """Before a batch's forward pass: `batch` = optimizer steps completed so
        far (default: unchanged), `epoch` = epochs completed. If the EMA weights
        are in (after checkpoint()), the training weights come back first."""
        self._clock(batch, epoch, duration)
        if self._active:
            r = self._call("batch_start")
        else:
            # A no-op in emad: sent without waiting (it would wait behind the
            # update of the previous batch_end).
            self._send("batch_start")
            r = None
        if self._restore_training is not None:
            self.wait()
            self._load_training(self._restore_training)
            self._restore_training = None
        return r

    def batch_end(self, batch=None, epoch=None, duration=None, wait=False):
        """After the optimizer step: `batch` = optimizer steps completed, the
        first batch_end carries 1 (default: one more than the last), `epoch` =
        epochs completed, `duration` = elapsed fraction of the training in
        [0, 1] (optional). Returns at once (the update overlaps the next
        forward/backward), or with wait=True once it is done, with its Result."""
        self.wait()
        self._clock(self._batch + 1 if batch is None else batch, epoch, duration)
        return self._update_event("batch_end", wait)

    def epoch_end(self, epoch=None, batch=None, duration=None, wait=False):
        """At the end of an epoch: `epoch` = epochs completed (default: one more
        than the last). The update event when update_interval is in "ep"."""
        self.wait()
        self._clock(batch, self._epoch + 1 if epoch is None else epoch, duration)
        return self._update_event("epoch_end", wait)

    def _update_event(self, event, wait):
        if self._may_read(event):
            self._check_inplace()
            self._push(self._res.mirrored)
        self._send(event)
        return self.wait() if wait else None

    def _before_swap_in(self):
        self.wait()
        if not self._active:
            self._check_inplace()
            self._push(self._res.mirrored)

    def eval_start(self, batch=None, epoch=None, duration=None):
        """Swap the EMA weights in (once the EMA has started). The clock
        arguments, optional everywhere but in batch_end/epoch_end, update the
        time the next events carry."""
        self._clock(batch, epoch, duration)
        self._before_swap_in()
        return self._call("eval_start")

    def eval_end(self):
        """Swap the training weights back."""
        r = self._call("eval_end")
        if self._restore_training is not None:
            self._load_training(self._restore_training)
        return r

    @contextlib.contextmanager
    def eval(self, batch=None, epoch=None, duration=None):
        """with ema.eval(): the model holds the EMA weights inside the block
        (eval_start / eval_end), once the EMA has started; its training
        weights come back bit for bit after. (It does not call model.eval().)"""
        self.eval_start(batch, epoch, duration)
        try:
            yield self
        finally:
            self.eval_end()

    def checkpoint(self, batch=None, epoch=None, duration=None):
        """Before saving a checkpoint: swap the EMA weights in (once started);
        they stay in until the next batch_start or eval_end."""
        self._clock(batch, epoch, duration)
        self._before_swap_in()
        return self._call("checkpoint")

    def swap(self, to):
        """Swap to "ema" or "train" on request (as eval_start / eval_end)."""
        if to not in ("ema", "train"):
            raise ValueError("swap: to must be 'ema' or 'train', not %r" % (to,))
        if to == "ema":
            self._before_swap_in()
        else:
            self.wait()
        with self._talking():
            return self._note(self._session().swap(to))

    # ---- optimizer ----

    def attach_optimizer(self, optimizer):
        """Make optimizer.step() wait for emad's pending update first (a step
        pre-hook on torch 2.x, a wrapped step on 1.13). Returns optimizer."""
        ref = weakref.ref(self)

        def before_step():
            ema = ref()
            if ema is not None and not ema._closed:
                ema.wait()

        if hasattr(optimizer, "register_step_pre_hook"):
            handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: before_step())
            self._res.hooks.append(handle.remove)
        else:
            original = optimizer.step

            def step(opt, *args, **kwargs):
                before_step()
                return original(*args, **kwargs)

            # A bound method, as LR schedulers expect (they wrap step.__func__).
            bound = types.MethodType(step, optimizer)
            optimizer.step = bound

            def unhook():
                if optimizer.__dict__.get("step") is bound:
                    optimizer.step = original

            self._res.hooks.append(unhook)
        return optimizer

    # ---- reading the EMA ----

    @property
    def started(self):
        """The EMA has begun (as of the last event claimed)."""
        return self._started

    @property
    def active(self):
        """The EMA weights are in the model now."""
        return self._active

    @property
    def updates(self):
        """Updates done (as of the last event claimed)."""
        return self._updates

    @property
    def session(self):
        """The emaclient.Session (segment, shadows, raw events)."""
        return self._session()

    @property
    def client(self):
        """The emaclient.Client of this EMA's connection."""
        return self._res.client

    def state(self):
        """emad's current state of the session (a dict, as in status)."""
        return self._res.client.session_state(self.session_name)

    def shadow_state_dict(self):
        """{name: tensor}: copies of the shadow exactly as emad keeps it (fp32 for
        f32/f16/bf16 tensors, fp64 for f64, the tensor's dtype for integers),
        on the CPU."""
        self.wait()
        self._session()
        return {e.name: e.shadow.clone() for e in self._entries}

    def ema_state_dict(self):
        """{name: tensor}: the EMA weights in the model's dtypes (read from the
        shadow, rounded to nearest even as a swap-in does), on the model's
        devices."""
        self.wait()
        self._session()
        return {e.name: e.shadow.to(device=e.device, dtype=e.dtype, copy=True)
                for e in self._entries}

    def _stash_views(self):
        """The training weights while the EMA weights are swapped in: the
        segment's stash (PROTOCOL.md §3: stash_offset + each tensor's offset)."""
        seg = self._res.segment
        head = bytes((ctypes.c_char * 64).from_address(seg.base))
        if head[:8] != b"EMASEG01":
            raise Error("SHM", "segment %s: bad header" % seg.name)
        stash = int.from_bytes(head[40:48], "little")
        return {e.name: _view(seg.base + stash + e.info.offset if e.info.nbytes else None,
                              e.info.nbytes, e.dtype, e.shape) for e in self._entries}

    def training_state_dict(self):
        """{name: tensor}: copies of the training weights, wherever they are
        now (the model, or the stash while the EMA weights are in)."""
        self.wait()
        self._session()
        if self._res.segment.swap_state()[0] == 2:
            stash = self._stash_views()
            return {e.name: stash[e.name].to(device=e.device, copy=True) for e in self._entries}
        return {e.name: e.get().detach().clone() for e in self._entries}

    # ---- checkpoints ----

    def _config_reported(self, st):
        return {k: st[k] for k in ("half_life", "smoothing", "update_interval", "ema_start")}

    def state_dict(self, save_in_emad=True):
        """A checkpoint of the EMA with Composer's keys: "ema_model" (the EMA
        weights, model dtypes), "training_model" (the training weights),
        "ema_weights_active", "ema_started"; and "emad": what an exact resume
        needs (the shadow of f16/bf16 tensors in fp32, the counters, the clock
        and, with save_in_emad, the name of the state file emad wrote in its
        state directory, from which load_state_dict restores the shadow
        bit for bit when that emad's state directory still has it)."""
        self.wait()
        st = self.state()
        meta = {
            "format": _STATE_FORMAT,
            "session": self.session_name,
            "config": self._config_reported(st),
            "started": st["started"],
            "updates": st["updates"],
            "last_time": st["last_time"],
            "shadow": {e.name: e.shadow.clone() for e in self._entries
                       if e.dtype in _LOW_PRECISION},
            "state_file": None,
        }
        if save_in_emad:
            try:
                self._res.client.save(self.session_name, self._state_file)
                meta["state_file"] = self._state_file
            except Error as err:
                warnings.warn("emad could not save the session's state (%s); the checkpoint "
                              "still resumes, exactly for f32/f64 tensors" % err)
        return {
            "ema_model": self.ema_state_dict(),
            "training_model": self.training_state_dict(),
            "ema_weights_active": bool(self._active),
            "ema_started": bool(st["started"]),
            "emad": meta,
        }

    def _load_training(self, weights):
        with torch.no_grad():
            for e in self._entries:
                if e.name in weights:
                    e.get().copy_(weights[e.name])

    def load_state_dict(self, state, strict=True):
        """Resume from state_dict()'s output (or a Composer EMA state dict).
        Load the model's own state dict first. The shadow and the started flag
        come back exactly: from emad's state file when the checkpoint names one
        that emad still has and that matches it bit for bit, else by
        registering the session anew from "ema_model" (exact for f32, f64 and
        integer tensors; f16/bf16 shadows are then rounded to their dtype, with
        a warning) and marking it started with an update event at the
        checkpoint's time, sent while the segment holds the EMA weights (the
        start copies them into the shadow, an update with the weights equal to
        the shadow leaves it unchanged for finite values; emad's update counter
        restarts). If the checkpoint was taken with the EMA weights in
        (checkpoint()), the training weights are put back in the model now and
        again at the next batch_start."""
        self.wait()
        if self._active:
            self.swap("train")
        names = [e.name for e in self._entries]
        ema_model = state.get("ema_model")
        training = state.get("training_model")
        started = bool(state.get("ema_started", False))
        meta = state.get("emad") or {}
        if strict:
            persistent = set(self.model.state_dict().keys())
            for what, d in (("ema_model", ema_model), ("training_model", training)):
                if d is None:
                    raise KeyError("load_state_dict: %s is missing" % what)
                missing = [n for n in names if n in persistent and n not in d]
                if missing:
                    raise KeyError("load_state_dict: %s lacks %s" % (what, ", ".join(missing)))
        if state.get("ema_weights_active") and training is not None:
            self._load_training(training)
            self._restore_training = training
        if meta.get("last_time") is not None:
            self._set_clock(meta["last_time"])
        if not (meta.get("state_file") and self._load_from_emad(meta, ema_model)):
            self._reseed(ema_model or {}, meta, started)

    def _load_from_emad(self, meta, ema_model):
        st = self.state()
        if meta.get("config") != self._config_reported(st):
            return False
        try:
            self._res.client.load(self.session_name, meta["state_file"])
        except Error:
            return False
        st = self.state()
        if (st["started"] != meta.get("started") or st["updates"] != meta.get("updates") or
                st["last_time"] != meta.get("last_time")):
            return False
        shadows = meta.get("shadow") or {}
        for e in self._entries:
            want = shadows.get(e.name)
            if want is None:
                if ema_model is None or e.name not in ema_model:
                    continue
                want = ema_model[e.name]
                if want.dtype != e.shadow.dtype:
                    return False
            if not _bits_equal(e.shadow, want.detach().to("cpu").reshape(e.shape)):
                return False
        self._started = st["started"]
        self._updates = st["updates"]
        return True

    def _reseed(self, ema_model, meta, started):
        """Register the session anew with the shadow initialised from the
        checkpoint's EMA weights, then mark it started at its time."""
        res = self._res
        if any(e.dtype in _LOW_PRECISION and e.name in ema_model for e in self._entries):
            warnings.warn("resuming the EMA of f16/bf16 tensors without emad's state file: "
                          "their fp32 shadow restarts from the checkpoint's rounded EMA weights")
        self._push(res.mirrored)
        training = [e.view.clone() for e in self._entries]
        with torch.no_grad():
            for e in self._entries:
                if e.name in ema_model:
                    e.view.copy_(ema_model[e.name].detach().reshape(e.shape))
                else:
                    e.view.copy_(e.shadow.to(e.dtype))
        s = self._session()
        s.close()
        s.free()
        res.session = None
        try:
            self._register()
            if started:
                event = "batch_end" if self._unit == "ba" else "epoch_end"
                r = self._note(res.session.event(event, self._batch, self._epoch,
                                                 self._duration))
                if not r.started:
                    warnings.warn("could not mark the resumed EMA as started at batch %d, "
                                  "epoch %d: it will start again at ema_start" %
                                  (self._batch, self._epoch))
        finally:
            with torch.no_grad():
                for e, t in zip(self._entries, training):
                    e.view.copy_(t)

    # ---- the end ----

    def close(self, keep=False):
        """End the session (with keep, emad keeps it detached for a later
        EMA(..., resume=True)), give the parameters their own memory back
        (the training weights) and remove the segment. Idempotent."""
        if self._closed:
            return
        try:
            s = self._res.session
            if s is not None and not s.freed:
                try:
                    try:
                        self.wait()
                        if self._active:
                            self.swap("train")
                    finally:
                        self._pending = []
                        s.close(keep)
                except Error as err:
                    # emad is gone: nothing to close there (the training
                    # weights are back, see _talking and _release)
                    if err.code not in ("DISCONNECTED", "CONNECT"):
                        raise
        finally:
            self._closed = True
            self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            try:
                self.close(keep=True)
            except Exception:
                pass

    def __repr__(self):
        return "<emaclient.torch.EMA session %s, mode %s, %d tensors%s>" % (
            self.session_name, self.mode, len(self._entries), " closed" if self._closed else "")


def _bits_equal(a, b):
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))
    return torch.equal(a, b)
