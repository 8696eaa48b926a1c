"""emaclient.torch - keep a PyTorch model's EMA weights in emad.

    from emaclient.torch import EMA
    ema = EMA(model, half_life="1000ba")      # registers every parameter and buffer
    ema.attach_optimizer(optimizer)           # step() waits for emad's update first
    for batch in loader:
        ...; loss.backward(); optimizer.step()
        ema.batch_end()                       # returns at once; emad updates meanwhile
    with ema.eval():                          # the EMA weights are in the model here
        evaluate(model)

The semantics are those of Composer's EMA algorithm (docs/protocol.md "EMA semantics"): the
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
            "ema") and copied back to the device after every swap. On CUDA
            the copies of an update event run on a side stream, after the
            work queued on the current stream, on the stream of the attached
            optimizer's last step and on `streams`; batch_end() returns at
            once and a thread sends the event to emad once the copies are
            done. The next copy into the host buffer waits for emad's
            update; the next optimizer step (attach_optimizer, or
            ema.wait()) waits on the GPU for the copies, not for emad.
  "auto"    shm when every tensor is on the CPU, else mirror.

Overlap: batch_end() returns at once; emad updates the shadow while the
trainer computes its next forward and backward pass. The trainer must not
change its parameters before emad (shm) or the copy (mirror) has read them:
attach_optimizer(opt) makes opt.step() wait first (or call ema.wait()
yourself before the step).
Do not replace a parameter (re-initialising a layer by assignment,
load_state_dict(assign=True), parametrizations) after EMA() is made: the
next update event or swap raises a USAGE Error saying so.
In shm mode do not move the model (.to(), .half(), ...) while an EMA is
attached: that replaces the parameters' storage (an Error says so).
"""

import contextlib
import ctypes
import hashlib
import itertools
import os
import re
import sys
import tempfile
import threading
import time
import types
import warnings
import weakref

import torch

from . import Client, Error, Segment, _device, _released_by_owner, _safetensors, posthoc_files
from . import distributed as _distributed

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


#: seconds a replica waits for the leader's event at its batch (_await_leader)
REPLICA_WAIT = 120.0


def _replica_count(replicas, job):
    if replicas is None:
        return 0
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError("replicas must be a number of ranks (>= 1), not %r" % (replicas,))
    if replicas > 1 and job is None:
        raise ValueError("replicas= needs job=: the replicas are declared with the group")
    return replicas


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


@contextlib.contextmanager
def _temp_session(client, name, specs, values, **config):
    """A temporary session `name` whose params are `values` (tensors laid out as
    specs, a Segment's [(name, dtype, shape)]), registered with config: one a
    resume that did not finish left detached is dropped first. Closed and its
    segment destroyed on the way out; a failing close is raised only when
    nothing else was."""
    seg = Segment(specs)
    session = None
    done = False
    try:
        with torch.no_grad():
            for info, w in zip(seg.tensors, values):
                _view(info.address, info.nbytes, w.dtype, w.shape).copy_(w)
        try:
            session = client.register(name, seg, **config)
        except Error as err:
            if err.code != "EXISTS":
                raise
            client.drop(name)
            session = client.register(name, seg, **config)
        yield session
        done = True
    finally:
        try:
            if session is not None:
                try:
                    session.close()
                except Error:
                    if done:
                        raise
                finally:
                    session.free()
        finally:
            seg.destroy()


def _reseed_name(session):
    """The temporary session through which _reseed builds an exact shadow: one
    name per session, so that a retry replaces what a failed one left, and
    out of the way of the names people give sessions ("<session>/emad-reseed";
    a hash of the session past emad's 128-character limit)."""
    name = session + "/emad-reseed"
    if len(name) > 128:
        name = "emad-reseed/%s" % hashlib.sha256(session.encode()).hexdigest()[:40]
    return name


def _reseed_file(session):
    """That session's state file: "%reseed" is never in a name _file_name or
    emad's default names make (they give "_" for what a file name cannot
    hold, emad "%2F", "%3A" or "%2E"), so no session's own file is replaced."""
    base = _file_name(session)[:-len(".torch")]
    return base[:128 - len("%reseed.torch")] + "%reseed.torch"


def _view(address, nbytes, dtype, shape):
    """A tensor over nbytes of memory at address (no copy)."""
    if not nbytes or address is None:
        return torch.empty(shape, dtype=dtype)
    buf = (ctypes.c_char * nbytes).from_address(address)
    return torch.frombuffer(buf, dtype=dtype).view(shape)


def _backend(device):
    """The Backend (emaclient._device) that moves the tensors of `device` in
    mirror mode, or None for plain synchronous copies (CPU tensors)."""
    if device.type == "cuda":
        return _device.cuda_backend()
    return None


def _parse_max_duration(d):
    """max_duration ("100ba", "5ep" or None) -> (value, unit) or None."""
    if d is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*(ba|ep)\s*", str(d))
    if not m or int(m.group(1)) <= 0:
        raise ValueError("max_duration must be a positive whole number of batches or epochs "
                         "('100ba', '5ep'), not %r" % (d,))
    return int(m.group(1)), m.group(2)


def _start_need(ema_start):
    """What an update event must carry to reach ema_start: "duration",
    "epoch", or None (a batch count, or a start at 0, which every event
    reaches)."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(ba|ep|dur)\s*", str(ema_start or ""))
    if not m:
        return None  # emad judges the string and says what is wrong with it
    try:
        value = float(m.group(1))
    except ValueError:
        return None
    if value <= 0 or m.group(2) == "ba":
        return None
    return "duration" if m.group(2) == "dur" else "epoch"


def _parse_time(s):
    """(count, unit) of an update_interval in Composer's grammar ("10ba", "1e1BA", "2.0ep");
    (1, "ba") for anything else (emad has refused it already)."""
    m = re.fullmatch(r"(\+?[0-9_.]+(?:e[+-]?[0-9_]+)?)(ba|ep)", s or "", re.IGNORECASE)
    try:
        v = float(m.group(1)) if m else 0.0
    except ValueError:
        v = 0.0
    if v >= 1 and v == int(v):
        return int(v), m.group(2).lower()
    return 1, "ba"


class _Entry:
    """One parameter or buffer: where it lives in the model and the segment."""

    __slots__ = ("name", "prefix", "module", "attr", "param", "dtype", "shape", "device", "view",
                 "shadow", "info", "backend", "dtensor", "flat")

    def __init__(self, name, prefix, module, attr, tensor, is_param, flat=None):
        self.name = name
        self.prefix = prefix
        self.module = module
        self.attr = attr
        # Parameters are kept as objects (the optimizer holds the same ones);
        # buffers are looked up each time, since a module may rebind them.
        self.param = tensor if is_param else None
        # A DTensor (FSDP2, tensor parallel): the EMA is of the local tensor it
        # holds (docs/scaleout.md "Python"), copied as in mirror mode.
        self.dtensor = _distributed.is_dtensor(tensor)
        if self.dtensor:
            tensor = tensor._local_tensor
        # A piece of an FSDP1 flat parameter (distributed.FlatPiece): the EMA is of
        # those elements of its shard, copied as in mirror mode.
        self.flat = flat
        self.dtype = tensor.dtype
        self.shape = tuple(tensor.shape) if flat is None else (flat.n,)
        self.device = tensor.device
        self.view = None
        self.shadow = None
        self.info = None
        self.backend = None   # the device's Backend in mirror mode (None: plain copies)

    def get(self):
        t = self.param if self.param is not None else self.module._buffers[self.attr]
        if self.flat is not None:
            # Sliced anew each time: FSDP moves the flat parameter's data between storages.
            return t.data[self.flat.start:self.flat.start + self.flat.n]
        return t._local_tensor if self.dtensor else t

    def target(self):
        """The tensor a pull copies into, or None for a buffer the module has
        replaced by one of another shape, dtype or device (the user's new
        tensor: there is nothing of the EMA's to put there)."""
        if self.param is not None:
            return self.get() if self.dtensor or self.flat is not None else self.param
        t = self.module._buffers.get(self.attr)
        if t is not None and self.dtensor:
            t = t._local_tensor
        if t is None or t.dtype != self.dtype or tuple(t.shape) != self.shape or \
                t.device != self.device:
            return None
        return t

    def stale(self, model, modules):
        """Why the model no longer holds this entry's tensor where it was
        registered, or None. modules: {prefix: module} found so far."""
        module = _submodule(model, self.prefix, modules)
        if module is not self.module:
            return "its module %s was replaced" % (self.prefix or "(the model)")
        if self.param is not None:
            if module._parameters.get(self.attr) is not self.param:
                return "the module holds another Parameter there now"
            return None
        t = module._buffers.get(self.attr)
        if t is None:
            return "the module has no such buffer now"
        if t.dtype != self.dtype or tuple(t.shape) != self.shape or t.device != self.device:
            return "the buffer is now %s %s on %s, not %s %s on %s" % (
                t.dtype, tuple(t.shape), t.device, self.dtype, self.shape, self.device)
        return None


def _submodule(model, prefix, modules):
    """model's submodule at prefix ("a.b"), or None; each module looked up
    once per check (modules caches them), as every push checks them all."""
    if prefix in modules:
        return modules[prefix]
    if not prefix:
        found = model
    else:
        parent, _, atom = prefix.rpartition(".")
        up = _submodule(model, parent, modules)
        found = up._modules.get(atom) if up is not None else None
    modules[prefix] = found
    return found


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
        self.backend = None  # the Backend of the mirrored device tensors, if any
        self.pinned = None   # the address passed to backend.pin, once it worked
        self.copy_done = {}  # device -> event: the last copies into the segment are done
        self.job = None      # a _Job in flight (it owns the session meanwhile)
        self.hooks = []
        self.done = False


class _Job:
    """An update event sent from a thread once the copies it reads are done,
    so that the training thread does not wait for the device; events sent
    without waiting (batch_start) meanwhile follow it. The session is the
    job's until the training thread joins it (Session is not thread-safe)."""

    def __init__(self, backend, events, session, event, time):
        self.backend = backend
        self.events = events
        self.session = session
        self.sends = [(event, time)]
        self.tickets = []   # (event, ticket) sent
        self.error = None
        self.lock = threading.Lock()
        self.closed = False  # no more sends taken
        self.thread = threading.Thread(target=self._run, name="emaclient-send", daemon=True)
        self.thread.start()

    def add(self, event, time):
        """Send this event after the others; False once the job is ending."""
        with self.lock:
            if self.closed:
                return False
            self.sends.append((event, time))
            return True

    def _run(self):
        try:
            for ev in self.events:
                self.backend.synchronize(ev)
            while True:
                with self.lock:
                    if len(self.tickets) == len(self.sends):
                        self.closed = True
                        return
                    event, time = self.sends[len(self.tickets)]
                self.tickets.append((event, self.session.send(event, *time)))
        except BaseException as e:  # handed to the training thread by _settle
            with self.lock:
                self.error = e
                self.closed = True


def _release(res):
    if res.done or res.pid != os.getpid():  # nothing to do in a forked child
        return
    res.done = True
    for h in res.hooks:
        try:
            h()
        except Exception:
            pass
    if res.job is not None:
        for ev in res.job.events:  # as _settle does
            try:
                res.backend.synchronize(ev)
            except Exception:
                pass
        res.job.thread.join()
        res.job = None
    if res.backend is not None:
        # No copy may still read or write the segment when it is unmapped.
        for ev in res.copy_done.values():
            try:
                res.backend.synchronize(ev)
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
        if res.pinned is not None and seg is not None and not seg.closed:
            why = res.backend.unpin(res.pinned)
            if why is not None:
                warnings.warn("emaclient.torch: could not unpin segment %s's host copies (%s); "
                              "it is unmapped anyway" % (seg.name, why))
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
    streams: (mirror mode on CUDA) streams, besides the current one and the
        attached optimizer's, on which the parameters or buffers are written
        (an optimizer that steps on streams of its own): the copies to the
        host wait for the work queued on them. "device": wait for all the
        work on the device instead (the training thread then blocks at each
        update until the GPU is idle).
    max_duration: the training's length ("100ba", "5ep"), from which each
        update event's elapsed duration is computed (Composer's trainer
        knows it; ema_start in "dur" needs it, or duration= on the events).
    include_frozen: also average and swap the parameters that do not require
        grad when the EMA starts (by default they are left out, as Composer
        does: eval() shows their training weights). docs/composer.md lists
        every deliberate difference from Composer.
    on_nonfinite: "skip" (emad's default) leaves the shadow element of a NaN
        or Inf parameter element as it was, so that a bad step never poisons
        the EMA; "apply" averages it in like any other. health=False turns
        the health signals (health()) off. docs/running.md "Health".
    profiles: several EMAs of the model at once, {name: settings} in order
        (at most 8; docs/protocol.md "Profiles"), instead of half_life,
        smoothing, update_interval and ema_start: Composer's ({"half_life":
        "100ba"}), timm's warm-up ({"decay": 0.9999, "inv_gamma": 1, "power":
        0.75}) or EDM2's power function ({"sigma_rel": 0.05}). eval_profile:
        the one eval() and checkpoint() swap in (default: the first);
        swap("ema", profile=NAME) and eval(profile=NAME) take any.
    snapshot_every ("Nba"), snapshot_dtype ("f32", "bf16", "f16"),
        snapshot_keep (files kept per profile; 0: all): emad writes the
        power profiles' shadows to files (docs/protocol.md "Snapshots"), from
        which posthoc() reconstructs the EMA of any width; they need
        profiles= with a power profile. snapshot() takes one on request.

    shard:   under torch.distributed, where each local tensor sits in the
        full one: {name: (global_shape, offsets)} (PyTorch distributed
        checkpoint's chunk), "auto" (read from DTensor parameters and FSDP1
        flat parameters, one entry per original parameter's piece), or None
        (every tensor whole: unsharded, or DDP replicas). A
        DistributedDataParallel model is unwrapped (the names are its
        module's). group_checkpoint() and load_group_checkpoint() write and
        resume the EMA of the whole job (docs/scaleout.md "Python").
    job: the torch.distributed job's name, sent to emad with the rank and
        world size (docs/protocol.md "Shard sessions": `emactl` shows a job's
        ranks together); the slices of shard= are sent in any case.
    replicas: with job=, the number R of ranks on this node holding the same
        weights (DDP: the node's ranks, e.g. torchrun's LOCAL_WORLD_SIZE).
        They register as replicas of one session (docs/scaleout.md
        "Replicas"): emad keeps one shadow for the R of them, updated from
        the first one's batch_end; each one's eval() swaps the EMA into its
        own model. Every replica must give the same session= (default: the
        job's name) and the same R. None or 1: a session of its own.

    Errors from emad or the library raise emaclient.Error (with `code`).
    Usable as a context manager: close() on exit (with keep=True when the
    block raised, so that emad keeps the shadow for a resume).
    """

    def __init__(self, model, *, half_life=_DEFAULT_HALF_LIFE, smoothing=None,
                 ema_start="0.0dur", update_interval=None, session=None, socket=None,
                 mode="auto", resume=False, reconnect=None, reconnect_timeout=None,
                 streams=None, max_duration=None, include_frozen=False, on_nonfinite=None,
                 health=None, profiles=None, eval_profile=None, snapshot_every=None,
                 snapshot_dtype=None, snapshot_keep=None, shard=None, job=None,
                 replicas=None):
        if mode not in ("auto", "shm", "mirror"):
            raise ValueError("mode must be 'auto', 'shm' or 'mirror', not %r" % (mode,))
        if streams is None:
            streams = ()
        elif isinstance(streams, str) and streams != "device":
            raise ValueError("streams must be a stream, a list of streams or 'device', not %r"
                             % (streams,))
        elif streams != "device":
            streams = tuple(streams) if isinstance(streams, (list, tuple)) else (streams,)
        self._streams = streams
        self._profiles = None
        self._profile_shadows = {}
        if profiles is not None:
            if (smoothing is not None or update_interval is not None or ema_start != "0.0dur"
                    or not isinstance(half_life, _DefaultHalfLife)):
                raise ValueError("give profiles= or half_life/smoothing/update_interval/"
                                 "ema_start, not both: each profile carries its own")
            if not isinstance(profiles, dict) or not profiles:
                raise ValueError("profiles must be a non-empty dict {name: settings}")
            self._profiles = {str(k): dict(v) for k, v in profiles.items()}
            if eval_profile is not None and eval_profile not in self._profiles:
                raise ValueError("eval_profile %r names none of the profiles" % (eval_profile,))
            half_life = None
            smoothing = 0.0  # not sent: the profiles are
        elif eval_profile is not None and eval_profile != "ema":
            raise ValueError("eval_profile needs profiles=")
        self._eval_profile = eval_profile
        if smoothing is not None:
            if half_life is not None and not isinstance(half_life, _DefaultHalfLife):
                raise ValueError("Only one of half_life or smoothing can be specified")
            half_life = None
        elif half_life is None:
            raise ValueError("Either half_life or smoothing must be specified")
        self._max_duration = _parse_max_duration(max_duration)
        self._start_need = _start_need(ema_start)
        self._include_frozen = bool(include_frozen)
        model = _distributed.unwrap(model)  # DDP: the EMA of the module it wraps
        self.model = model
        self._config = {"half_life": None if half_life is None else str(half_life),
                        "smoothing": smoothing, "update_interval": update_interval,
                        "ema_start": ema_start, "on_nonfinite": on_nonfinite,
                        "health": health, "snapshot_every": snapshot_every,
                        "snapshot_dtype": snapshot_dtype, "snapshot_keep": snapshot_keep}
        if self._profiles is not None:
            self._config.update(half_life=None, smoothing=None, ema_start=None,
                                profiles=self._profiles, eval_profile=eval_profile)
        self._entries = self._collect(model, flat=shard == "auto")
        if not self._entries:
            raise ValueError("the model has no parameters or buffers")
        # Where each local tensor sits in the full one (docs/scaleout.md "Python").
        self._shard = _distributed.resolve_shards(model, self._entries, shard)
        on_cpu = all(e.device.type == "cpu" and not e.dtensor and e.flat is None
                     for e in self._entries)
        if mode == "auto":
            mode = "shm" if on_cpu else "mirror"
        elif mode == "shm" and not on_cpu:
            raise ValueError("mode='shm' needs every tensor on the CPU and no DTensor or FSDP "
                             "flat parameter (found %s);"
                             " use mode='mirror'" % sorted({str(e.device) for e in self._entries}))
        self.mode = mode
        self._replicas = _replica_count(replicas, job)
        if session is None and self._replicas > 1:
            if shard is not None:
                raise ValueError("replicas= with shard=: give session=, the same on the "
                                 "replicas of one shard and another for each shard")
            session = job  # every replica must name the same session
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
        # Parameters frozen (requires_grad False) when the EMA started: as
        # Composer, they are neither averaged nor swapped (docs/composer.md).
        self._excluded = frozenset()
        self._start_frozen = None   # the frozen ones when the last update event was sent
        self._start_warned = False
        self._epoch_ended = False
        self._side = {}     # device -> the side stream of the copies
        self._writers = {}  # device -> {stream: event}: optimizer steps since the last copy

        res = self._res = _Resources()
        # At the interpreter's exit this finalizer is the only one that
        # releases what the EMA made, in order (_released_by_owner).
        self._finalizer = weakref.finalize(self, _release, res)
        for e in self._entries:
            (res.inplace if mode == "shm" and e.param is not None else res.mirrored).append(e)
        for e in res.mirrored:
            e.backend = _backend(e.device)
            res.backend = res.backend or e.backend
        self._devices = sorted({e.device for e in res.mirrored if e.backend is not None}, key=str)
        try:
            prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
            res.client = Client(socket, name="emaclient.torch:%s" % prog, reconnect=reconnect,
                                reconnect_timeout=reconnect_timeout)
            _released_by_owner(res.client)
            res.segment = Segment([(e.name, DTYPES[e.dtype], e.shape) for e in self._entries])
            _released_by_owner(res.segment)
            _distributed.declare(res.segment, self._entries, self._shard, job, self._replicas)
            for e, info in zip(self._entries, res.segment.tensors):
                e.info = info
                e.view = _view(info.address, info.nbytes, e.dtype, e.shape)
            self._pin()
            self._push(self._entries)
            for e in res.inplace:
                e.param.data = e.view
            self._register(resume)
        except BaseException:
            self._finalizer()
            raise

    # ---- setup ----

    @staticmethod
    def _collect(model, flat=False):
        """flat (shard="auto"): an FSDP1 flat parameter is one entry per piece of an
        original parameter in this rank's shard, and every name is then the
        state_dict name FSDP gives it (its wrapper modules left out)."""
        entries = []
        modules = dict(model.named_modules(remove_duplicate=False))
        fsdp = flat and any(_distributed.is_flat_param(p) for p in model.parameters())
        for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
            for name, t in items:
                prefix, _, attr = name.rpartition(".")
                if fsdp and kind == "param" and _distributed.is_flat_param(t):
                    entries += [_Entry(piece.name, prefix, modules[prefix], attr, t, True, piece)
                                for piece in _distributed.flat_pieces(name, t)]
                    continue
                if fsdp:
                    name = _distributed.clean_name(name)
                if t.dtype not in DTYPES:
                    raise TypeError("%s %s: dtype %s is not supported (supported: %s)" % (
                        kind, name, t.dtype, ", ".join(str(d) for d in DTYPES)))
                if t.layout != torch.strided:
                    raise TypeError("%s %s: only dense (strided) tensors are supported" %
                                    (kind, name))
                entries.append(_Entry(name, prefix, modules[prefix], attr, t, kind == "param"))
        seen = set()
        for e in entries if fsdp else ():
            if e.name in seen:
                raise ValueError("two tensors of the model are named %s once FSDP's wrapper "
                                 "modules are left out" % e.name)
            seen.add(e.name)
        return entries

    def _pin(self):
        """Page-lock the host copies of the device tensors (only those: the
        header and the stash are never copied across, and page-locked memory
        is scarce), so that the copies can run asynchronously."""
        res = self._res
        spans = [(e.info.address, e.info.address + e.info.nbytes) for e in res.mirrored
                 if e.backend is not None and e.info.nbytes]
        if not spans:
            return
        lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        why = res.backend.pin(lo, hi - lo)
        if why is None:
            res.pinned = lo
            return
        warnings.warn("emaclient.torch: could not page-lock the %d bytes of host copies of the "
                      "model's device tensors (%s); the EMA works, but the copies between the "
                      "device and the segment are now synchronous and slower" % (hi - lo, why),
                      stacklevel=3)

    def _register(self, resume=False):
        res = self._res
        c = self._config
        session = res.client.register(
            self.session_name, res.segment, half_life=c["half_life"],
            smoothing=c["smoothing"], update_interval=c["update_interval"],
            ema_start=c["ema_start"], resume=resume, on_nonfinite=c["on_nonfinite"],
            health=c["health"], profiles=c.get("profiles"), eval_profile=c.get("eval_profile"),
            snapshot_every=c["snapshot_every"], snapshot_dtype=c["snapshot_dtype"],
            snapshot_keep=c["snapshot_keep"])
        _released_by_owner(session)
        res.session = session
        for e, sh in zip(self._entries, session.shadows):
            nbytes = sh.numel * sh.elem_size
            e.shadow = _view(sh.address, nbytes, _TORCH[sh.dtype], e.shape)
        # Each profile's shadow, {name: [view per entry]} (profile 0's are e.shadow).
        self._profile_shadows = {}
        for p, info in enumerate(session.profiles):
            self._profile_shadows[info["name"]] = [
                _view(session.profile_address(p, i), sh.numel * sh.elem_size, _TORCH[sh.dtype],
                      e.shape) for i, (e, sh) in enumerate(zip(self._entries, session.shadows))]
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

    @staticmethod
    def _by_device(entries):
        groups = {}
        for e in entries:
            if e.backend is not None:
                groups.setdefault(e.device, []).append(e)
        return groups.items()

    def _side_stream(self, device):
        s = self._side.get(device)
        if s is None:
            s = self._side[device] = self._res.backend.new_stream(device)
        return s

    def _after_writers(self, device, stream):
        """Make `stream` wait for the work that may write (or, for a swap
        back, read) the device tensors: what is queued on the current stream,
        on the streams of the attached optimizer's steps and on `streams`.
        Steps on other streams of which nothing is known would let a copy
        read half-written values: `streams` names them, or "device" waits
        for the whole device (blocking the host)."""
        b = self._res.backend
        if self._streams == "device":
            self._writers.pop(device, None)
            b.synchronize_device(device)
            return
        b.wait(stream, b.record(b.current_stream(device)))
        for s in self._streams:
            if getattr(s, "device", device) == device:
                b.wait(stream, b.record(s))
        for ev in self._writers.pop(device, {}).values():
            b.wait(stream, ev)

    def _copy_out(self, entries):
        """Copy the live tensors into the segment: host tensors at once,
        device tensors queued on the side stream. Returns the events after
        which the segment holds them."""
        res = self._res
        events = []
        with torch.no_grad():
            for e in entries:
                if e.backend is None:
                    e.view.copy_(e.get())
            for device, group in self._by_device(entries):
                b = res.backend
                s = self._side_stream(device)
                self._after_writers(device, s)
                for e in group:
                    b.copy(s, e.view, e.get(), res.pinned is not None)
                ev = res.copy_done[device] = b.record(s)
                events.append(ev)
        return events

    def _push(self, entries):
        """Copy the live tensors into the segment (done when this returns)."""
        for ev in self._copy_out(entries):
            self._res.backend.synchronize(ev)

    def _pull(self, entries):
        """Copy the segment into the live tensors (done when this returns: the
        host copies may change with the next swap, and the work queued from
        now on reads the new values). On a device, the copies come after the
        work queued so far, which may still read the old values."""
        res = self._res
        events = []
        with torch.no_grad():
            for e in entries:
                if e.backend is None and e.target() is not None:
                    e.target().copy_(e.view)
            for device, group in self._by_device(entries):
                b = res.backend
                s = self._side_stream(device)
                self._after_writers(device, s)
                for e in group:
                    if e.target() is not None:
                        b.copy(s, e.target(), e.view, res.pinned is not None)
                events.append(b.record(s))
        for ev in events:
            res.backend.synchronize(ev)

    def _before_param_write(self):
        """Device work queued from now on (an optimizer step) comes after the
        copies into the segment: a wait on the GPU, not on the host."""
        b = self._res.backend
        for device, ev in self._res.copy_done.items():
            b.wait(b.current_stream(device), ev)

    def _after_param_write(self):
        """Note where an optimizer step was queued, for the next copies."""
        b = self._res.backend
        for device in self._devices:
            s = b.current_stream(device)
            self._writers.setdefault(device, {})[s] = b.record(s)

    def _check_model(self):
        """Before any push or swap: the model still holds the tensors
        registered, and in shm mode their storage is still the segment."""
        for e in self._entries:
            t = e.get() if e.param is not None else e.module._buffers.get(e.attr)
            if t is not None and (t.dtype != e.dtype or t.device != e.device):
                raise Error("USAGE", "%s is now %s on %s, not %s on %s as when EMA() was made: "
                            "the model was moved or converted (.to(), .half(), .cuda()). Move "
                            "it before making the EMA; to move it later, take "
                            "sd = ema.state_dict(), ema.close() (before moving), move the model, "
                            "make a new EMA and ema.load_state_dict(sd)" % (
                                e.name, t.dtype, t.device, e.dtype, e.device))
        for e in self._entries:
            if e.flat is not None and e.param.data.numel() != e.flat.local:
                raise Error("USAGE", "the FSDP flat parameter holding %s has %d elements now, not "
                            "its shard's %d: it is unsharded (inside forward or backward, or "
                            "summon_full_params); use the EMA outside them" % (
                                e.name, e.param.data.numel(), e.flat.local))
        modules = {}
        for e in self._entries:
            why = e.stale(self.model, modules)
            if why is not None:
                raise Error("USAGE", "%s %s was replaced after EMA() was made (%s): the EMA "
                            "would follow a tensor nobody trains and eval() would not swap into "
                            "the new one. Make the EMA once the model is final (after "
                            "re-initialising layers, load_state_dict(assign=True), "
                            "parametrizations), or close() it and make a new one" % (
                                "parameter" if e.param is not None else "buffer", e.name, why))
        for e in self._res.inplace:
            if e.param.data_ptr() != e.view.data_ptr() or e.param.dtype != e.dtype:
                raise Error("USAGE", "parameter %s no longer lives in the EMA's segment (was the "
                            "model moved or converted after EMA() was made?)" % e.name)

    def _may_read(self, event):
        """Whether emad may read the params for this event (docs/protocol.md "EMA semantics"):
        only the update event of the interval's unit, and once started only
        when the time is a multiple of the interval."""
        if event not in ("batch_end", "epoch_end") or self._profiles is not None:
            return True  # (profiles: each has its own interval, any may read)
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
        self._settle()
        return self._res.session

    def _settle(self):
        """Join the update event sent from a thread (_Job), if any: its
        ticket joins the pending ones, its failure is raised here."""
        job = self._res.job
        if job is None:
            return
        self._res.job = None
        for ev in job.events:  # (a wait on the device's progress, as the job's own)
            self._res.backend.synchronize(ev)
        job.thread.join()
        self._pending.extend(job.tickets)
        if job.error is not None:
            with self._talking():
                raise job.error

    def _note(self, r):
        # After a reconnect the library may have put the training weights
        # back itself (the reply then says "none"): follow the segment.
        changed = r.active != self._active
        if r.started and not self._started and self._start_frozen is not None:
            self._excluded = self._start_frozen
        self._started = r.started
        self._active = r.active
        self._updates = r.updates
        if r.active and self._excluded and (r.action == "swap_in" or changed):
            self._keep_excluded_live()
        if r.action in ("swap_in", "swap_out") or changed:
            self._pull(self._res.mirrored)
        return r

    def _keep_excluded_live(self):
        """With the EMA weights in, give the parameters left out of the EMA
        their training weights back (from the stash; the swap out restores
        the stash whole anyway)."""
        stash = self._stash_views()
        with torch.no_grad():
            for e in self._entries:
                if e.name in self._excluded:
                    e.view.copy_(stash[e.name])

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
        job = self._res.job
        if job is not None and job.add(event, self._now()):
            return
        s = self._session()
        with self._talking():
            ticket = s.send(event, *self._now())
        self._pending.append((event, ticket))

    def _call(self, event):
        self.wait()
        s = self._session()
        with self._talking():
            return self._note(s.event(event, *self._now()))

    # The counts beyond batch/epoch/duration (docs/protocol.md "Time"), for an ema_start in
    # "sp", "tok" or "sec": None until the trainer reports them; the wall clock runs from
    # fit_start() (or the first event), like Composer's total_wct.
    _samples = None
    _tokens = None
    _wct_start = None

    def _clock(self, batch, epoch, duration, samples=None, tokens=None, seconds=None):
        if batch is not None:
            self._batch = int(batch)
        if epoch is not None:
            self._epoch = int(epoch)
        if duration is not None:
            self._duration = float(duration)
        for name, v in (("samples", samples), ("tokens", tokens), ("seconds", seconds)):
            if v is not None and int(v) < 0:
                raise ValueError("%s must be >= 0, not %r" % (name, v))
        if samples is not None:
            self._samples = int(samples)
        if tokens is not None:
            self._tokens = int(tokens)
        if seconds is not None:
            self._wct_start = time.monotonic() - int(seconds)
        elif self._wct_start is None:
            self._wct_start = time.monotonic()

    def _now(self):
        """The clock an event carries: (batch, epoch, duration, samples, tokens, seconds)."""
        seconds = None
        if self._wct_start is not None:
            seconds = max(0, int(time.monotonic() - self._wct_start))
        return (self._batch, self._epoch, self._duration, self._samples, self._tokens, seconds)

    def wait(self):
        """Wait until every event sent is done (emad has finished reading the
        params): call before changing the params, if attach_optimizer is not
        used. Returns the Result of the last update event claimed, or None.
        In mirror mode on a device, the work queued from now on on the
        current stream also waits (on the device) for the copies."""
        last = None
        if not self._closed:
            self._settle()
        while self._pending:
            event, ticket = self._pending[0]
            with self._talking():
                try:
                    r = self._note(self._session().wait(ticket))
                finally:
                    self._pending.pop(0)
            if event in ("batch_end", "epoch_end"):
                last = r
        if self._res.backend is not None:
            self._before_param_write()
        return last

    def fit_start(self, batch=None, epoch=None, duration=None, samples=None, tokens=None,
                  seconds=None):
        """The fit_start event (no weight change); the wall clock of an ema_start in "sec" runs
        from here, or from `seconds` (the training time so far, on a resume)."""
        if seconds is None:
            self._wct_start = time.monotonic()
        self._clock(batch, epoch, duration, samples, tokens, seconds)
        return self._call("fit_start")

    def batch_start(self, batch=None, epoch=None, duration=None, samples=None, tokens=None,
                    seconds=None):
        """Before a batch's forward pass: `batch` = optimizer steps completed so
        far (default: unchanged), `epoch` = epochs completed. If the EMA weights
        are in (after checkpoint()), the training weights come back first."""
        self._clock(batch, epoch, duration, samples, tokens, seconds)
        if self._active:
            self._check_model()  # before the swap out: the training weights go to the model's
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

    def batch_end(self, batch=None, epoch=None, duration=None, wait=False, samples=None,
                  tokens=None, seconds=None):
        """After the optimizer step: `batch` = optimizer steps completed, the
        first batch_end carries 1 (default: one more than the last), `epoch` =
        epochs completed, `duration` = elapsed fraction of the training in
        [0, 1] (optional); `samples`, `tokens` = samples and tokens trained on so
        far (needed by an ema_start in "sp" or "tok"), `seconds` = training time
        so far (default: measured from fit_start). Returns at once (the update
        overlaps the next forward/backward), or with wait=True once it is done,
        with its Result."""
        self._clock(self._batch + 1 if batch is None else batch, epoch, duration, samples, tokens,
                    seconds)
        self._wait_before("batch_end")
        return self._update_event("batch_end", wait)

    def epoch_end(self, epoch=None, batch=None, duration=None, wait=False, samples=None,
                  tokens=None, seconds=None):
        """At the end of an epoch: `epoch` = epochs completed (default: one more
        than the last). The update event when update_interval is in "ep"."""
        self._clock(batch, self._epoch + 1 if epoch is None else epoch, duration, samples, tokens,
                    seconds)
        self._wait_before("epoch_end")
        return self._update_event("epoch_end", wait)

    def _wait_before(self, event):
        """Before an update event: in shm mode, emad is done with the params
        already (the optimizer hook waited); wait anyway, so that requests do
        not pile up. In mirror mode, wait only when this event copies into the
        host buffers emad may still be reading: an event between two updates
        (update_interval "2ba" and more) leaves the host running ahead."""
        if self.mode != "mirror" or self._may_read(event):
            self.wait()

    def _update_event(self, event, wait):
        if event == "epoch_end":
            self._epoch_ended = True
        self._before_update_event()
        events = []
        if self._may_read(event):
            self._check_model()
            # batch_end/epoch_end waited for the last event: emad no longer
            # reads the host copies that this overwrites.
            events = self._copy_out(self._res.mirrored)
        if events:
            s = self._session()
            self._res.job = _Job(self._res.backend, events, s, event, self._now())
        else:
            self._send(event)
        return self.wait() if wait else None

    def _before_update_event(self):
        """Fill in the duration from max_duration; before the start, note
        which parameters are frozen (the start leaves them out) and say when
        the event cannot reach ema_start for want of a duration."""
        if self._max_duration is not None:
            value, unit = self._max_duration
            # Composer's elapsed duration: the time in max_duration's unit over it
            self._duration = min(1.0, (self._batch if unit == "ba" else self._epoch) / value)
        if self._started:
            return
        if not self._include_frozen:
            self._start_frozen = frozenset(e.name for e in self._entries
                                           if e.param is not None and not e.param.requires_grad)
        if self._start_need == "duration" and self._duration is None:
            self._warn_unstarted()

    def _warn_unstarted(self):
        """Once: the EMA has not started and cannot, for lack of what ema_start
        counts (a silent EMA that never starts evaluates the training weights)."""
        if self._started or self._start_warned:
            return
        start = self._config["ema_start"]
        if self._start_need == "duration" and self._duration is None:
            why = ("ema_start=%r counts the elapsed fraction of the training, and no event "
                   "has carried it: make the EMA with max_duration= ('100ba', '5ep') or pass "
                   "duration= to batch_end()/epoch_end()" % (start,))
        elif (self._start_need == "epoch" and self._unit == "ba" and self._epoch == 0 and
              not self._epoch_ended):
            why = ("ema_start=%r counts epochs, and every event so far carried epoch 0: call "
                   "epoch_end() at the end of each epoch or pass epoch= to batch_end()" % (start,))
        else:
            return
        self._start_warned = True
        warnings.warn("emaclient.torch: the EMA has not started: " + why, stacklevel=4)

    def _before_swap_in(self):
        self._warn_unstarted()
        self._caught_up()
        self._check_model()
        if not self._active:
            self._push(self._res.mirrored)

    def eval_start(self, batch=None, epoch=None, duration=None, samples=None, tokens=None,
                   seconds=None, profile=None):
        """Swap the EMA weights in (once the EMA has started). The clock
        arguments, optional everywhere but in batch_end/epoch_end, update the
        time the next events carry. profile: that profile's (default: the
        eval profile)."""
        self._clock(batch, epoch, duration, samples, tokens, seconds)
        self._before_swap_in()
        if profile is not None:
            with self._talking():
                return self._note(self._session().swap("ema", profile=profile))
        return self._call("eval_start")

    def eval_end(self):
        """Swap the training weights back."""
        self._check_model()
        r = self._call("eval_end")
        if self._restore_training is not None:
            self._load_training(self._restore_training)
        return r

    @contextlib.contextmanager
    def eval(self, batch=None, epoch=None, duration=None, samples=None, tokens=None,
             seconds=None, profile=None):
        """with ema.eval(): the model holds the EMA weights inside the block
        (eval_start / eval_end), once the EMA has started; its training
        weights come back bit for bit after. (It does not call model.eval().)
        profile: that profile's EMA weights (default: the eval profile)."""
        self.eval_start(batch, epoch, duration, samples, tokens, seconds, profile=profile)
        try:
            yield self
        finally:
            self.eval_end()

    def checkpoint(self, batch=None, epoch=None, duration=None, samples=None, tokens=None,
                   seconds=None):
        """Before saving a checkpoint: swap the EMA weights in (once started);
        they stay in until the next batch_start or eval_end."""
        self._clock(batch, epoch, duration, samples, tokens, seconds)
        self._before_swap_in()
        return self._call("checkpoint")

    def swap(self, to, profile=None):
        """Swap to "ema" or "train" on request (as eval_start / eval_end).
        profile: with "ema", the profile to swap in (default: the eval one)."""
        if to not in ("ema", "train"):
            raise ValueError("swap: to must be 'ema' or 'train', not %r" % (to,))
        if profile is not None and to != "ema":
            raise ValueError("swap: profile= goes with 'ema' only")
        if to == "ema":
            self._before_swap_in()
        else:
            self.wait()
            self._check_model()
        with self._talking():
            return self._note(self._session().swap(to, profile=profile))

    def _swap_back(self):
        self.wait()
        with self._talking():
            return self._note(self._session().swap("train"))

    # ---- optimizer ----

    def attach_optimizer(self, optimizer):
        """Make optimizer.step() wait until its parameters may change (step
        hooks on torch 2.x, a wrapped step on 1.13): in shm mode for emad's
        pending update; in mirror mode for the copies to the host only (on
        the device: the host does not block), and the stream the step runs
        on is noted so that the next copies wait for it. Returns optimizer."""
        ref = weakref.ref(self)

        def before_step():
            ema = ref()
            if ema is None or ema._closed:
                return
            if ema.mode == "shm":
                ema.wait()
            elif ema._res.backend is not None:
                ema._before_param_write()

        def after_step():
            ema = ref()
            if ema is not None and not ema._closed and ema._res.backend is not None:
                ema._after_param_write()

        if hasattr(optimizer, "register_step_pre_hook"):
            handle = optimizer.register_step_pre_hook(lambda opt, args, kwargs: before_step())
            self._res.hooks.append(handle.remove)
            handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: after_step())
            self._res.hooks.append(handle.remove)
        else:
            original = optimizer.step

            def step(opt, *args, **kwargs):
                before_step()
                r = original(*args, **kwargs)
                after_step()
                return r

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
        self._settle()
        return self._res.client

    def state(self):
        """emad's current state of the session (a dict, as in status)."""
        return self.client.session_state(self.session_name)

    def _caught_up(self):
        """Before reading the shadow or emad's state of the session: this
        rank's events done and, for a replica, the leader's at this rank's
        time too (_await_leader), so that every replica reads the same
        batch's EMA (its state_dict, export, snapshot, health)."""
        self.wait()
        self._await_leader()

    def _await_leader(self, timeout=None):
        """A replica's wait() covers its own events only, and they update
        nothing: the shadow moves with the leader's batch_end (docs/protocol.md
        "Replicas"). Before reading the shadow or swapping it in, wait until
        the leader's last event is at this replica's time at least, so that
        every rank sees the EMA of the same batch; after `timeout` seconds
        (default REPLICA_WAIT, read at the call) -- a leader at another time for
        good -- TIMEOUT."""
        if self._replicas <= 1 or self._closed:
            return
        if timeout is None:
            timeout = REPLICA_WAIT
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            st = self.state()
            last = st["last_time"]
            if last is not None and last["batch"] >= self._batch and \
                    last["epoch"] >= self._epoch:
                break
            if last is None and self._batch == 0 and self._epoch == 0:
                break
            if time.monotonic() > deadline:
                raise Error("TIMEOUT", "replica of session %s at batch %d epoch %d: the leader's "
                            "last event is %s after %g s: the replicas must report the same "
                            "batches (docs/scaleout.md \"Replicas\")" % (
                                self.session_name, self._batch, self._epoch,
                                "none" if last is None else "batch %d epoch %d" % (
                                    last["batch"], last["epoch"]), timeout))
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        if st["started"] and not self._started and self._start_frozen is not None:
            self._excluded = self._start_frozen  # as _note
        self._started = st["started"]
        self._updates = st["updates"]

    def health(self, profile=None):
        """The session's health signals, once the updates sent so far are done: a
        dict with enabled, on_nonfinite, updates_checked, nonfinite_total,
        nonfinite_updates, last_nonfinite ({update, count, tensor} or None),
        distance (RMS of shadow - params before the last update, or None),
        noop_updates, last_update_noop, interval (usual seconds between updates,
        or None), stalled and alarms (a list of "nonfinite", "poisoned", "noop",
        "stalled"). What each means and what to do: docs/running.md "Health".
        With profiles, profile=NAME gives that profile's own signals instead:
        updates_checked, distance, noop_updates, last_update_noop and alarms
        ("poisoned", "noop") of its shadow (docs/protocol.md "Health"); without
        profiles, profile="ema" gives those fields of the session's signals.
        None from an emad that does not report them."""
        self._caught_up()
        state = self.state()
        if profile is None:
            return state.get("health")
        for p in state.get("profiles") or []:
            if p.get("name") == profile:
                return p.get("health")
        h = state.get("health")
        if not state.get("profiles") and profile == "ema" and h is not None:
            # One profile: the session's signals are its own; the same fields as a profile's.
            return {k: h.get(k) for k in ("updates_checked", "distance", "noop_updates",
                                          "last_update_noop")} | {
                "alarms": [a for a in h.get("alarms") or [] if a in ("poisoned", "noop")]}
        raise KeyError("the EMA has no profile %r (it has %s)" % (
            profile, ", ".join(self.profiles)))

    def shadow_state_dict(self, profile=None):
        """{name: tensor}: copies of the shadow exactly as emad keeps it (fp32 for
        f32/f16/bf16 tensors, fp64 for f64, the tensor's dtype for integers),
        on the CPU. profile: that profile's (default: the first)."""
        self._caught_up()
        self._session()
        return {e.name: t.clone() for e, t in zip(self._entries, self._shadows_of(profile))}

    @property
    def profiles(self):
        """The profiles' names, in order (["ema"] without profiles=)."""
        return list(self._profile_shadows) or ["ema"]

    def _shadows_of(self, profile):
        if profile is None or (not self._profile_shadows and profile == "ema"):
            return [e.shadow for e in self._entries]
        if profile not in self._profile_shadows:
            raise KeyError("the EMA has no profile %r (it has %s)" % (
                profile, ", ".join(self.profiles)))
        return self._profile_shadows[profile]

    # ---- snapshots, post-hoc EMA, export ----

    def snapshot(self):
        """Have emad snapshot every power profile now, after the events sent
        before: the files written, [{"file", "profile", "batch", "dtype",
        "bytes"}]."""
        self._caught_up()
        return self._session().snapshot()

    def snapshots(self):
        """Every snapshot file of this session's name, by profile then batch:
        [{"file", "profile", "batch", "dtype", "bytes"}]. The files outlive the
        session, so a session of the same name closed earlier lists its own
        too."""
        self.wait()
        return self._res.client.snapshots(self.session_name)

    def posthoc(self, sigma_rel, batch=None):
        """The EMA of width sigma_rel at `batch` (None: the last snapshot's),
        reconstructed from the snapshots of the power profiles
        (docs/posthoc.md): {name: float32 tensor with the model's shapes, on the
        CPU}, ready for model.load_state_dict. Uses the snapshots at or before
        batch; sigma_rel in (0, 12^-1/2)."""
        files = [f["file"] for f in self.snapshots()]
        if not files:
            raise Error("STATE", "posthoc: session %r has no snapshot files (register with "
                        "snapshot_every=, or call snapshot())" % (self.session_name,))
        with tempfile.TemporaryDirectory(prefix="emaclient-posthoc-") as tmp:
            out = os.path.join(tmp, "posthoc.safetensors")
            posthoc_files(files, sigma_rel, out, batch=batch, dtype="f32")
            tensors, _ = _safetensors.read(out)
        result = {}
        for e in self._entries:
            t = tensors.get(e.name)
            if t is None:
                raise Error("BADFILE", "posthoc: the snapshots lack tensor %r" % (e.name,))
            if t.numel() != e.view.numel():
                raise Error("BADFILE", "posthoc: tensor %r has %d elements in the snapshots, "
                            "%d in the model" % (e.name, t.numel(), e.view.numel()))
            result[e.name] = t.reshape(e.shape)
        return result

    def export(self, path, profile=None, dtype=None):
        """Write the EMA weights of profile (default: the eval profile, which
        eval() swaps in) to path as safetensors, with the model's state_dict
        names and shapes: in dtype ("f32", "bf16", "f16" or a torch dtype;
        rounded to nearest even from the shadow) for the floating tensors, the
        shadow's own dtype when None. Written after the events in flight,
        durably (temp file, fsync, rename)."""
        if isinstance(dtype, str):
            if dtype not in ("f32", "bf16", "f16"):
                raise ValueError("export: dtype must be 'f32', 'bf16' or 'f16', not %r" % dtype)
            dtype = _TORCH[dtype]
        elif dtype is not None and dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError("export: dtype must be float32, bfloat16 or float16, not %s" % dtype)
        self._caught_up()
        self._session()
        if profile is None:
            profile = self._eval_profile
        shadows = self._shadows_of(profile)
        training = self.training_state_dict() if self._excluded else {}
        out = {}
        for e, sh in zip(self._entries, shadows):
            t = training[e.name] if e.name in self._excluded else sh
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            out[e.name] = t.detach().to("cpu").reshape(e.shape)
        _safetensors.write(path, out, {"format": "pt", "session": self.session_name,
                                       "profile": profile or self.profiles[0],
                                       "batch": str(self._batch)})

    def ema_state_dict(self, profile=None):
        """{name: tensor}: the EMA weights in the model's dtypes (read from the
        shadow, rounded to nearest even as a swap-in does), on the model's
        devices. profile: that profile's (default: the first)."""
        self._caught_up()
        self._session()
        out = {e.name: t.to(device=e.device, dtype=e.dtype, copy=True)
               for e, t in zip(self._entries, self._shadows_of(profile))
               if e.name not in self._excluded}
        if self._excluded:
            # left out of the EMA (frozen at its start): what eval() shows for them
            training = self.training_state_dict()
            out.update((n, training[n]) for n in self._excluded)
        return {e.name: out[e.name] for e in self._entries}

    def get_ema_model(self, model=None):
        """Copy the EMA weights into `model` (default: the EMA's own, whose
        training weights they then replace for good; as Composer's, e.g. at
        the end of training). The parameters left out of the EMA keep their
        values. ValueError while the EMA weights are in the model. Returns
        model."""
        if self._active:
            raise ValueError("get_ema_model: the EMA weights are in the model now "
                             "(eval() or checkpoint()); swap('train') first")
        weights = self.ema_state_dict()
        return self._copy_into(model, {n: weights[n] for n in weights if n not in self._excluded})

    def get_training_model(self, model=None):
        """Copy the training weights into `model` while the EMA weights are in
        the EMA's own model (after checkpoint(), inside eval()); the EMA's
        model gets them back by itself at the swap out. ValueError when the
        training weights are in the model already. Returns model."""
        if not self._active:
            raise ValueError("get_training_model: the training weights are in the model now")
        return self._copy_into(model, self.training_state_dict())

    def _copy_into(self, model, weights):
        model = self.model if model is None else model
        self.wait()
        if model is self.model and any(e.flat is not None for e in self._entries):
            # FSDP's flat parameters: their pieces are the entries, not named_parameters()
            with torch.no_grad():
                for e in self._entries:
                    if e.name in weights and e.target() is not None:
                        e.target().copy_(weights[e.name])
            return model
        with torch.no_grad():
            for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
                if name in weights:
                    t.copy_(weights[name])
        return model

    def _stash_views(self):
        """The training weights while the EMA weights are swapped in: the
        segment's stash, which libemaclient locates (the header is its
        business, not this module's)."""
        stash = self._res.segment.stash()
        return {e.name: _view(stash + e.info.offset if e.info.nbytes else None,
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
        if self._profiles is not None:
            return {"profiles": self._profiles, "eval_profile": self._eval_profile}
        return {k: st[k] for k in ("half_life", "smoothing", "update_interval", "ema_start")}

    def state_dict(self, save_in_emad=True, layout="current"):
        """A checkpoint of the EMA that Composer reads too, with its keys
        "ema_weights_active" and "ema_started" and, by layout:
          "current" (Composer 0.13 and later): "ema_model" is
              {"named_parameters_dict", "named_buffers_dict"}: the EMA weights
              or, while they are in the model (checkpoint()), the training
              weights; the parameters left out of the EMA (frozen at its
              start) are not there;
          "legacy" (Composer before 0.13): "ema_model" and "training_model",
              flat state dicts of the EMA and the training weights.
        "emad" holds what an exact resume needs: the fp32 shadow of f16/bf16
        tensors, the counters, the clock (with the samples, tokens and seconds
        it has), the parameters left out and, with
        save_in_emad, the name of the state file emad wrote in its state
        directory (load_state_dict restores from it when that emad still has
        it)."""
        if layout not in ("current", "legacy"):
            raise ValueError("layout must be 'current' or 'legacy', not %r" % (layout,))
        self._caught_up()
        self._warn_unstarted()
        st = self.state()
        meta = {
            "format": _STATE_FORMAT,
            "session": self.session_name,
            "config": self._config_reported(st),
            "started": st["started"],
            "updates": st["updates"],
            "last_time": st["last_time"],
            "counts": dict(zip(("samples", "tokens", "seconds"), self._now()[3:])),
            # ema_model's exact fp32 shadow: the eval profile's, as ema_model is.
            "shadow": {e.name: t.clone() for e, t in
                       zip(self._entries, self._shadows_of(self._eval_profile))
                       if e.dtype in _LOW_PRECISION},
            "excluded": sorted(self._excluded),
            "state_file": None,
        }
        if self._profiles is not None:
            # Every profile's exact shadow and counters (the eval profile's is ema_model's).
            meta["profiles"] = {
                p["name"]: {"shadow": {e.name: t.clone() for e, t in
                                       zip(self._entries, self._profile_shadows[p["name"]])},
                            "started": p["started"], "updates": p["updates"],
                            "last_batch": p["last_batch"], "last_decay": p["last_decay"]}
                for p in st.get("profiles", [])}
        if save_in_emad:
            try:
                self._res.client.save(self.session_name, self._state_file)
                meta["state_file"] = self._state_file
            except Error as err:
                if self._profiles is not None:
                    # load_state_dict resumes an EMA of several profiles from emad's state
                    # file only: it refuses to rebuild them from the checkpoint's contents.
                    warnings.warn("emad could not save the session's state (%s); this "
                                  "checkpoint of an EMA with profiles cannot be resumed "
                                  "(load_state_dict will refuse it): its ema_model still holds "
                                  "the eval profile's weights" % err)
                else:
                    warnings.warn("emad could not save the session's state (%s); the "
                                  "checkpoint still resumes exactly from its own contents" % err)
        ema = self.ema_state_dict(profile=self._eval_profile)
        training = self.training_state_dict()
        out = {"ema_weights_active": bool(self._active), "ema_started": bool(st["started"]),
               "emad": meta}
        if layout == "legacy":
            # Composer < 0.13 loads these with Module.load_state_dict: the
            # model's state dict keys, no more, no fewer.
            keys = set(self.model.state_dict().keys())
            out["ema_model"] = {n: t for n, t in ema.items() if n in keys}
            out["training_model"] = {n: t for n, t in training.items() if n in keys}
            return out
        held = training if self._active else ema
        out["ema_model"] = {
            "named_parameters_dict": {e.name: held[e.name] for e in self._entries
                                      if e.param is not None and e.name not in self._excluded},
            "named_buffers_dict": {e.name: held[e.name] for e in self._entries
                                   if e.param is None},
        }
        return out

    def group_checkpoint(self, directory, job="emaclient", timeout=600.0, group=None):
        """Write the EMA's group checkpoint into directory (docs/scaleout.md
        "Python"): collective, every rank of group (torch.distributed; default
        the whole job) calls it at the same batch; each writes its slices,
        then, after a barrier (timeout seconds, an Error naming the ranks
        missing), rank 0 writes the manifest last. Returns the manifest's path."""
        return _distributed.group_checkpoint(self, directory, job=job, timeout=timeout,
                                             group=group)

    def load_group_checkpoint(self, path, strict=True):
        """Resume from a group checkpoint (its manifest or directory), reading
        this rank's slices (shard=) whatever the world size it was written
        with; the shadow comes back bit for bit. Returns its batch. strict:
        the checkpoint's tensors must be the EMA's (else BADFILE); False: a
        warning, and the EMA of a tensor it lacks restarts from the current
        weights."""
        return _distributed.load_group_checkpoint(self, path, strict=strict)

    def _load_training(self, weights):
        with torch.no_grad():
            for e in self._entries:
                if e.name in weights:
                    e.get().copy_(weights[e.name])

    def _read_layout(self, state, active):
        """(EMA weights, training weights or None, parameters left out,
        missing names, unexpected names) from either of Composer's layouts."""
        em = state.get("ema_model")
        by_name = {e.name: e for e in self._entries}
        params = {n for n, e in by_name.items() if e.param is not None}
        meta = state.get("emad") or {}
        if isinstance(em, dict) and "named_parameters_dict" in em and "training_model" not in state:
            held = dict(em.get("named_parameters_dict") or {})
            buffers = dict(em.get("named_buffers_dict") or {})
            unexpected = sorted(n for n in list(held) + list(buffers) if n not in by_name)
            excluded = {n for n in params if n not in held}
            missing = [n for n, e in by_name.items() if e.param is None and n not in buffers]
            if self._include_frozen:
                missing += sorted(excluded)
                excluded = set()
            held.update(buffers)
            held = {n: t for n, t in held.items() if n in by_name}
            if active:
                # Composer swapped: the model (loaded first) holds the EMA weights
                ema = {n: by_name[n].get().detach().clone() for n in held}
                return ema, held, excluded, missing, unexpected
            return held, None, excluded, missing, unexpected
        if isinstance(em, dict) and all(isinstance(t, torch.Tensor) for t in em.values()):
            keys = set(self.model.state_dict().keys())
            training = state.get("training_model") if active else None
            excluded = set() if self._include_frozen else set(meta.get("excluded") or ()) & params
            missing = [n for n in by_name if n in keys and n not in excluded and n not in em]
            unexpected = sorted(n for n in em if n not in by_name)
            if active:
                if not isinstance(training, dict):
                    raise KeyError("load_state_dict: the checkpoint was taken with the EMA "
                                   "weights in the model, and training_model is missing")
                missing += ["training_model." + n for n in by_name
                            if n in keys and n not in training]
                training = {n: t for n, t in training.items() if n in by_name}
            ema = {n: t for n, t in em.items() if n in by_name}
            return ema, training, excluded, missing, unexpected
        raise ValueError("load_state_dict: no EMA weights found: ema_model is %s, in neither of "
                         "Composer's layouts ({named_parameters_dict, named_buffers_dict} since "
                         "0.13, a flat state dict before)" % (
                             "missing" if em is None else "a %s" % type(em).__name__))

    def load_state_dict(self, state, strict=False, batch=None, epoch=None, duration=None,
                        samples=None, tokens=None, seconds=None):
        """Resume from state_dict()'s output or a Composer EMA state dict, in
        either layout. Load the model's own state dict first (with the EMA
        weights in, it holds them). Names the model has but the checkpoint
        lacks (or the reverse) raise KeyError with strict, else a warning
        says which: their EMA restarts from the current weights (Composer's
        default is strict=False too). batch/epoch/duration and
        samples/tokens/seconds: the checkpoint's time, for a checkpoint that
        does not carry it (Composer's: the trainer's timestamp; the counts
        matter to an ema_start in "sp", "tok" or "sec"); a start at ema_start
        later than that is not marked started.

        The shadow and the started flag come back exactly: from emad's state
        file when the checkpoint names one that emad still has and that
        matches it bit for bit, else from the checkpoint alone, with emad's
        update counter restarting. Where the checkpoint holds the fp32 shadow
        of f16/bf16 tensors (state_dict()'s "emad" entry), that shadow comes
        back bit for bit through a temporary session (see _reseed); from a
        checkpoint without it (Composer's), the shadow of f16/bf16 tensors
        restarts from the rounded EMA weights, and a warning says so. If the
        checkpoint was taken with the EMA weights in (checkpoint()), the
        training weights are put back in the model now and again at the next
        batch_start.

        With replicas=, every replica calls it, with the same checkpoint (a
        collective: the ranks agree through torch.distributed that the load
        went through): the leader alone loads the shadow they share, through
        emad's load, never by registering the session anew; each replica puts
        its own training weights and clock back (docs/scaleout.md "Python")."""
        args = (state, strict, batch, epoch, duration, samples, tokens, seconds)
        if self._replicas <= 1:
            return self._load_state(None, *args)
        # Every replica reaches the meeting point, whatever fails before it: a rank raising
        # alone would leave the others waiting there.
        comm = _distributed._Comm(None, REPLICA_WAIT, "load_state_dict")
        err = None
        try:
            self._load_state(self._leads(comm), *args)
        except Exception as e:
            err = e
        oks = comm.gather(err is None, "load_state_dict")
        if err is not None:
            raise err
        if not all(oks):
            raise Error("STATE", "load_state_dict: rank %s of session %s could not load the "
                        "checkpoint (its error says why)" % (
                            ", ".join(str(r) for r, ok in enumerate(oks) if not ok),
                            self.session_name))
        st = self.state()
        self._started = st["started"]
        self._updates = st["updates"]
        self._active = False

    def _load_state(self, leads, state, strict, batch, epoch, duration, samples, tokens,
                    seconds):
        """load_state_dict's work on this rank; leads: None without replicas,
        else whether this replica loads the shared shadow."""
        self.wait()
        if self._active:
            self._check_model()
            self._swap_back()
        started = bool(state.get("ema_started", False))
        active = bool(state.get("ema_weights_active", False))
        meta = state.get("emad") or {}
        ema, training, excluded, missing, unexpected = self._read_layout(state, active)
        by_name = {e.name: e for e in self._entries}
        for what, d in (("ema_model", ema), ("training_model", training or {})):
            for n, t in d.items():
                if tuple(t.shape) != by_name[n].shape:
                    raise ValueError("load_state_dict: %s %s has shape %s, the model's %s" % (
                        what, n, tuple(t.shape), by_name[n].shape))
        if missing or unexpected:
            why = "; ".join(x for x in (
                "ema_model lacks %s" % ", ".join(missing) if missing else "",
                "the model has no %s" % ", ".join(unexpected) if unexpected else "") if x)
            if strict:
                raise KeyError("load_state_dict: " + why)
            warnings.warn("load_state_dict: %s: loaded without them (their EMA restarts from "
                          "the current weights)" % why, stacklevel=2)
        if active and training is not None:
            self._load_training(training)
            self._restore_training = training
        if meta.get("last_time") is not None:
            self._set_clock(meta["last_time"])
        else:
            self._clock(batch, epoch, duration)
        counts = dict(meta.get("counts") or {})
        for name, v in (("samples", samples), ("tokens", tokens), ("seconds", seconds)):
            if counts.get(name) is None:
                counts[name] = v
        self._clock(None, None, None, **counts)
        if leads is not None:
            if leads:
                self._load_shared(meta, ema, started)
        elif not (meta.get("state_file") and self._load_from_emad(meta, ema)):
            if self._profiles is not None or meta.get("profiles"):
                self._reseed_profiles(meta)
            else:
                self._reseed(ema, meta, started)
        self._excluded = frozenset(excluded) if self._started else frozenset()

    def _leads(self, comm):
        """Whether this replica is the session's leader (the first rank emad
        lists), whose segment updates the shadow the replicas share."""
        if comm.dist is None:
            raise Error("USAGE", "load_state_dict with replicas=: torch.distributed must be "
                        "initialized (every replica loads the checkpoint together)")
        ranks = (self.state().get("replicas") or {}).get("ranks") or []
        if not ranks:
            raise Error("STATE", "load_state_dict: emad lists no replica of session %s" %
                        self.session_name)
        return ranks[0] == comm.dist.get_rank()

    def _load_shared(self, meta, ema_model, started):
        """The shadow the replicas share, from the checkpoint, by the leader
        alone: from emad's state file, or through a temporary session and
        emad's load (_reseed_profiles, _reseed_exact), never by registering
        the session anew, which would take the other replicas' seats."""
        self._push(self._res.mirrored)  # the tensors the checkpoint lacks start from these
        if meta.get("state_file") and self._load_from_emad(meta, ema_model):
            return
        if self._profiles is not None or meta.get("profiles"):
            self._reseed_profiles(meta)
        elif started:
            if not self._reseed_exact(ema_model, self._exact_shadows(meta)):
                raise Error("STATE", "load_state_dict: emad could not load the checkpoint's "
                            "shadow into session %s" % self.session_name)
        elif self.state()["started"]:
            raise Error("USAGE", "load_state_dict: the checkpoint's EMA has not started, "
                        "session %s's has: resume into a new session" % self.session_name)

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
        for name, saved in (meta.get("profiles") or {}).items():
            if name not in self._profile_shadows:
                return False
            for e, t in zip(self._entries, self._profile_shadows[name]):
                want = (saved.get("shadow") or {}).get(e.name)
                if want is None or not _bits_equal(t, want.detach().to("cpu").reshape(e.shape)):
                    return False
        if meta.get("profiles"):
            # Every profile was compared bit for bit above; ema_model is the eval profile's
            # weights, or the training ones when taken swapped in (checkpoint()): nothing to
            # compare with the first profile's shadow.
            self._started = st["started"]
            self._updates = st["updates"]
            return True
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

    def _exact_shadows(self, meta):
        """{name: fp32 tensor} of the f16/bf16 tensors whose exact shadow the
        checkpoint holds (state_dict()'s "emad" entry), on the CPU."""
        out = {}
        for e in self._entries:
            t = (meta.get("shadow") or {}).get(e.name)
            if (e.dtype in _LOW_PRECISION and isinstance(t, torch.Tensor) and
                    t.dtype == torch.float32 and tuple(t.shape) == e.shape):
                out[e.name] = t.detach().to("cpu")
        return out

    def _mark_started(self, session):
        """The update event at the checkpoint's time that marks a session
        started (with the counts an ema_start in "sp", "tok" or "sec" needs):
        its Result, or None where emad refuses the event for want of such a
        count, with a warning."""
        event = "batch_end" if self._unit == "ba" else "epoch_end"
        try:
            r = session.event(event, *self._now())
        except Error as err:
            if err.code != "BADARG":
                raise
            warnings.warn("could not mark the resumed EMA as started (%s): pass the "
                          "checkpoint's samples=, tokens= or seconds= to load_state_dict(); it "
                          "will start again at ema_start" % err)
            return None
        if not r.started:
            warnings.warn("could not mark the resumed EMA as started at batch %d, "
                          "epoch %d: it will start again at ema_start" %
                          (self._batch, self._epoch))
        return r

    def _reseed(self, ema_model, meta, started):
        """Restart the session's shadow from the checkpoint alone: exactly
        through a temporary session where it holds the fp32 shadow of
        f16/bf16 tensors (_reseed_exact), else by registering the session
        anew with the shadow initialised from the checkpoint's EMA weights,
        then marking it started at its time."""
        res = self._res
        self._push(res.mirrored)
        exact = self._exact_shadows(meta) if started else {}
        if exact and self._reseed_exact(ema_model, exact):
            return
        # Unstarted, the shadow is rebuilt from the weights at the start anyway.
        rounded = [e.name for e in self._entries
                   if e.dtype in _LOW_PRECISION and e.name in ema_model and e.name not in exact]
        if started and (rounded or exact):
            warnings.warn("resuming the EMA of f16/bf16 tensors without their exact fp32 shadow "
                          "(%s): it restarts from the checkpoint's EMA weights, rounded to the "
                          "tensors' dtypes" % (
                              "the checkpoint holds none, as Composer's" if not exact
                              else "emad could not rebuild it"))
        training = [e.view.clone() for e in self._entries]
        with torch.no_grad():
            for e in self._entries:
                # the others (missing, or left out of the EMA) start from the
                # current weights, pushed above
                if e.name in ema_model:
                    e.view.copy_(ema_model[e.name].detach().reshape(e.shape))
        s = self._session()
        s.close()
        s.free()
        res.session = None
        try:
            self._register()
            if started:
                r = self._mark_started(res.session)
                if r is not None:
                    self._note(r)
        finally:
            with torch.no_grad():
                for e, t in zip(self._entries, training):
                    e.view.copy_(t)

    def _reseed_profiles(self, meta):
        """Every profile back from the checkpoint alone (emad's state file gone): for each,
        a temporary session of one shadow whose params hold the profile's exact shadow
        (register copies them into its shadow, bit for bit), saved to _reseed_file() and
        loaded into that profile alone with the checkpoint's counters and schedule state
        (docs/protocol.md "load", profile). The session's config must be the checkpoint's."""
        saved = meta.get("profiles") or {}
        st = self.state()
        if self._profiles is None or not saved:
            raise ValueError("load_state_dict: %s" % (
                "the checkpoint holds profiles, this EMA has none" if saved
                else "this EMA has profiles, the checkpoint none"))
        if sorted(saved) != sorted(self._profile_shadows) or \
                meta.get("config") != self._config_reported(st):
            raise ValueError("load_state_dict: the checkpoint's profiles (%s) or their settings "
                             "are not this EMA's (%s)" % (", ".join(sorted(saved)),
                                                          ", ".join(self.profiles)))
        client = self._res.client
        tmp = _reseed_name(self.session_name)
        file = _reseed_file(self.session_name)
        self._session()
        for name in self.profiles:
            p = saved[name]
            want = []
            for e, t in zip(self._entries, self._profile_shadows[name]):
                w = (p.get("shadow") or {}).get(e.name)
                if w is None:
                    raise ValueError("load_state_dict: the checkpoint lacks profile %r's "
                                     "shadow of %s" % (name, e.name))
                want.append(w.detach().to(device="cpu", dtype=t.dtype).reshape(e.shape))
            specs = [(e.name, DTYPES[w.dtype], e.shape) for e, w in zip(self._entries, want)]
            with _temp_session(client, tmp, specs, want):
                client.save(tmp, file)
            client.load_profile(self.session_name, file, name, {
                "started": p["started"], "updates": p["updates"],
                "last_batch": p.get("last_batch"), "last_decay": p.get("last_decay")})
            if not all(_bits_equal(t, w) for t, w in zip(self._profile_shadows[name], want)):
                raise ValueError("load_state_dict: profile %r's shadow emad loaded is not the "
                                 "checkpoint's" % name)
        if meta.get("last_time") is not None:
            # A profile's load leaves the session's clock as it was: an event at the
            # checkpoint's time sets it (a batch_start, which updates nothing), so that
            # status and the replicas waiting for the leader (_await_leader) see it.
            self._session().event("batch_start", *self._now())
        st = self.state()
        self._started = st["started"]
        self._active = False
        self._updates = meta.get("updates", st["updates"])

    def _reseed_exact(self, ema_model, exact):
        """The exact shadow of f16/bf16 tensors from the checkpoint's fp32 copy.
        A trainer never writes a shadow: emad makes it. A temporary session
        (_reseed_name) has the same tensor names and numel, in f32 where the
        exact shadow is known and in the model's dtypes elsewhere, and params
        holding the shadow wanted (the checkpoint's exact shadow, its EMA
        weights, or the current weights for the tensors it lacks). Marked
        started at the checkpoint's time, its shadow becomes those values
        exactly; saved to the state file _reseed_file() names (which stays
        in emad's state directory, replaced by the next such resume of the
        session) and loaded into this session, whose shadow has the same
        layout (docs/protocol.md "load"). True once this session holds that
        shadow bit for bit and is started; False where emad cannot do it (the
        temporary session removed all the same), for the caller's plain
        reseed, which replaces whatever this session then holds."""
        res = self._res
        client = res.client
        tmp = _reseed_name(self.session_name)
        specs, want = [], []
        for e in self._entries:
            if e.name in exact:
                specs.append((e.name, "f32", e.shape))
                want.append(exact[e.name])
            else:
                specs.append((e.name, DTYPES[e.dtype], e.shape))
                src = ema_model[e.name] if e.name in ema_model else e.view
                want.append(src.detach().to(device="cpu", dtype=e.dtype).reshape(e.shape))
        c = self._config
        reg = dict(half_life=c["half_life"], smoothing=c["smoothing"],
                   update_interval=c["update_interval"], ema_start=c["ema_start"],
                   on_nonfinite=c["on_nonfinite"], health=c["health"])
        try:
            with _temp_session(client, tmp, specs, want, **reg) as session:
                r = self._mark_started(session)
                if r is None or not r.started:
                    return False
                client.save(tmp, _reseed_file(self.session_name))
            self._session()
            client.load(self.session_name, _reseed_file(self.session_name))
        except Error as err:
            warnings.warn("emad could not rebuild the exact fp32 shadow of the f16/bf16 "
                          "tensors (%s)" % err)
            return False
        st = self.state()
        # (a start widens f16/bf16 params exactly: the shadow of one without an exact copy
        # holds its rounded EMA weight widened)
        if not st["started"] or not all(_bits_equal(e.shadow, w.to(e.shadow.dtype))
                                        for e, w in zip(self._entries, want)):
            warnings.warn("the shadow emad loaded is not the checkpoint's")
            return False
        self._started = True
        self._active = False
        self._updates = st["updates"]
        if st["last_time"] is not None:
            self._set_clock(st["last_time"])
        return True

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
                            self._swap_back()
                    finally:
                        self._pending = []
                        if self._replicas > 1 and not keep:
                            self._close_replica(s)
                        else:
                            s.close(keep)
                except Error as err:
                    # emad is gone: nothing to close there (the training
                    # weights are back, see _talking and _release)
                    if err.code not in ("DISCONNECTED", "CONNECT"):
                        raise
        finally:
            self._closed = True
            self._finalizer()

    def _close_replica(self, s):
        """A leader's close without keep would end the session for every
        replica, some maybe still training (docs/protocol.md "Replicas"): each
        replica detaches alone (keep), and whichever then finds the session
        detached (no replica left) drops it. Two finding it so at once: the
        second's drop is NOSESSION, which is the outcome wanted."""
        s.close(True)
        try:
            st = self.state()
            if not st["attached"]:
                self._res.client.drop(self.session_name)
        except Error as err:
            if err.code != "NOSESSION":
                raise

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
