"""emaclient - the Python client of emad, the EMA daemon.

A thin ctypes binding of libemaclient (client/emaclient.h): the C library
is the single implementation of the protocol (msgpack-rpc over a Unix
socket) and of the shared-memory segments; this package only wraps it.

    import emaclient
    with emaclient.Client() as c:                  # $EMAD_SOCKET, $XDG_RUNTIME_DIR/emad.sock, ...
        print(c.server, c.status()["sessions"])

For PyTorch models, use emaclient.torch.EMA (import emaclient.torch).

Every failure raises emaclient.Error, whose `code` is the contract's error
code (BADARG, NOSESSION, EXISTS, PERM, SHM, STATE, ...) or one of the
client-side codes CONNECT, DISCONNECTED, BADREPLY, USAGE, SYSTEM, and whose
`message` is the sentence the library or emad wrote.

Objects are not thread-safe: use a client and its sessions from one thread
at a time (distinct clients are independent). The blocking calls release
the GIL while they wait.
"""

import ctypes
import math
import os
import sys
import weakref
from collections import namedtuple

from . import _lib
from ._lib import lib

__all__ = [
    "Error", "Client", "Segment", "Session", "Result", "TensorInfo", "ShadowInfo",
    "socket_path", "PROTO_VERSION", "DTYPES", "SWAP_TRAIN", "SWAP_STASHED", "SWAP_EMA",
]

__version__ = "0.1.0"

PROTO_VERSION = 1
#: Wire names of the dtypes a segment may hold.
DTYPES = ("f32", "f16", "bf16", "f64", "i64", "i32", "i16", "i8", "u8", "bool")
SWAP_TRAIN = _lib.SWAP_TRAIN      #: the params hold the training weights
SWAP_STASHED = _lib.SWAP_STASHED  #: the stash holds them, the params may be partly EMA
SWAP_EMA = _lib.SWAP_EMA          #: the params hold the EMA weights, the stash the training ones

# emac_metrics hands out text from libemaclient's malloc, which is the
# process's C library's.
_libc = ctypes.CDLL(None)
_libc.free.argtypes = [ctypes.c_void_p]
_libc.free.restype = None


def _libc_free(p):
    _libc.free(p)


class Error(Exception):
    """A failure reported by emad or by libemaclient.

    code:    the contract's error code (e.g. "BADARG", "NOSESSION") or a
             client-side one ("CONNECT", "DISCONNECTED", "BADREPLY", "USAGE",
             "SYSTEM").
    message: the human-readable sentence, naming the problem.
    errno:   the negative errno-style value the C function returned.
    """

    def __init__(self, code, message, errno=None):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message
        self.errno = errno


def _s(b):
    return None if b is None else b.decode("utf-8", "replace")


def _b(s, what):
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    if not isinstance(s, str):
        raise TypeError("%s must be a str, not %s" % (what, type(s).__name__))
    return s.encode("utf-8")


def _check(rc, err):
    if rc < 0:
        code = _s(err.code) or "SYSTEM"
        raise Error(code, _s(err.message) or os.strerror(-rc), rc)
    return rc


def socket_path(path=None):
    """The socket path libemaclient would use: `path`, else $EMAD_SOCKET,
    else $XDG_RUNTIME_DIR/emad.sock, else /run/emad/emad.sock."""
    buf = ctypes.create_string_buffer(4096)
    rc = lib.emac_socket_path(_b(path, "path"), buf, len(buf))
    if rc < 0:
        raise Error("USAGE", "socket path: %s" % os.strerror(-rc), rc)
    return _s(buf.value)


Result = namedtuple("Result", "action active started updates replayed interrupted",
                    defaults=(False, False))
Result.__doc__ = """What emad did for an event or a swap.

action:  "none", "start", "update", "start+update", "swap_in" or "swap_out"
active:  the EMA weights are in the params now
started: the EMA has begun
updates: updates completed so far
"""

TensorInfo = namedtuple("TensorInfo", "name dtype elem_size numel offset nbytes address shape")
TensorInfo.__doc__ = """One tensor of a segment: `address` is where this
process sees its live data (nbytes bytes), `offset` its place in the params
area."""

ShadowInfo = namedtuple("ShadowInfo", "name dtype elem_size numel offset address")
ShadowInfo.__doc__ = """The shadow of one tensor, mapped read-only:
`dtype` is "f32" for f32/f16/bf16 tensors, "f64" for f64, else the
tensor's; `address` is None for an empty tensor."""


def _result(r):
    return Result(_lib.ACTIONS[r.action] if 0 <= r.action < len(_lib.ACTIONS) else str(r.action),
                  bool(r.active), bool(r.started), int(r.updates), bool(r.replayed),
                  bool(r.interrupted))


def _profile_settings(c):
    out = {k: _s(getattr(c, k)) for k in ("schedule", "half_life", "ema_start", "update_interval")
           if getattr(c, k) is not None}
    out.update((k, float(getattr(c, k))) for k in _PROFILE_NUM if getattr(c, "has_" + k))
    if c.has_update_after_step:
        out["update_after_step"] = int(c.update_after_step)
    return out


def _profile_infos(n, arr):
    return [{"name": _s(arr[i].name), "schedule": _s(arr[i].schedule), "eval": bool(arr[i].eval),
             "started": bool(arr[i].started), "updates": int(arr[i].updates),
             "last_batch": int(arr[i].last_batch) if arr[i].has_last_batch else None,
             "last_decay": float(arr[i].last_decay) if arr[i].has_last_decay else None,
             "shadow_offset": int(arr[i].shadow_offset),
             "config": _profile_settings(arr[i].config),
             "health": _profile_health(arr[i].health) if arr[i].has_health else None}
            for i in range(n)]


def _profile_health(h):
    """A profile's own health (docs/protocol.md "Health"); its alarms as status lists them."""
    distance = float(h.distance) if h.has_distance else None
    alarms = []
    if distance is not None and not math.isfinite(distance):
        alarms.append("poisoned")
    if h.last_update_noop:
        alarms.append("noop")
    return {"updates_checked": int(h.updates_checked), "distance": distance,
            "noop_updates": int(h.noop_updates), "last_update_noop": bool(h.last_update_noop),
            "alarms": alarms}


# The settings a profile may carry (docs/protocol.md "Profiles"), and how each is sent.
_PROFILE_STR = ("schedule", "half_life", "ema_start", "update_interval")
_PROFILE_NUM = ("smoothing", "decay", "min_decay", "inv_gamma", "power", "sigma_rel", "gamma")


def _profile_struct(name, settings):
    """A struct emac_profile from a name and a dict of settings."""
    p = _lib.EmacProfile()
    p.name = _b(name, "profile name")
    for k, v in settings.items():
        if v is None:
            continue
        if k in _PROFILE_STR:
            setattr(p, k, _b(str(v), k))
        elif k in _PROFILE_NUM:
            setattr(p, k, float(v))
            setattr(p, "has_" + k, True)
        elif k == "update_after_step":
            p.update_after_step = int(v)
            p.has_update_after_step = True
        else:
            raise ValueError("profile %r: %r is not a setting of a profile (%s)" % (
                name, k, ", ".join(_PROFILE_STR + _PROFILE_NUM + ("update_after_step",))))
    return p


def _session_info(si):
    last = None
    if si.has_last_time:
        last = {"batch": int(si.last_batch), "epoch": int(si.last_epoch)}
        if si.has_last_duration:
            last["duration"] = float(si.last_duration)
    return {
        "session": _s(si.session),
        "attached": bool(si.attached),
        "owner_pid": int(si.owner_pid),
        "tensors": int(si.tensors),
        "params_bytes": int(si.params_bytes),
        "shadow_bytes": int(si.shadow_bytes),
        "smoothing": float(si.smoothing),
        "half_life": _s(si.half_life),
        "update_interval": _s(si.update_interval),
        "ema_start": _s(si.ema_start),
        "started": bool(si.started),
        "active": bool(si.active),
        "updates": int(si.updates),
        "swaps": int(si.swaps),
        "last_time": last,
        "last_update_seconds": float(si.last_update_seconds),
        "shm": _s(si.shm),
        "shadow_shm": _s(si.shadow_shm),
        "interrupted": bool(si.interrupted),
        "seq": int(si.seq),
    }


def _group_info(st, i, info):
    """Session i's group ("group": {job, rank, world, replicas}) and, for a
    session of replicas (docs/protocol.md "Replicas"), "replicas": {attached,
    diverged, ranks (the leader's first)}; None when it has none."""
    g = lib.emac_status_group(st, i)
    info["group"] = None if not g else {
        "job": _s(g.contents.job), "rank": int(g.contents.rank),
        "world": int(g.contents.world), "replicas": int(g.contents.replicas)}
    attached, diverged = ctypes.c_uint64(), ctypes.c_uint64()
    info["replicas"] = None
    if lib.emac_status_replicas(st, i, ctypes.byref(attached), ctypes.byref(diverged)):
        ranks = ctypes.POINTER(ctypes.c_uint64)()
        n = lib.emac_status_replica_ranks(st, i, ctypes.byref(ranks))
        info["replicas"] = {"attached": int(attached.value), "diverged": int(diverged.value),
                            "ranks": [int(ranks[k]) for k in range(n)]}


def _health(h):
    """A session's health signals (struct emac_health) as a dict: docs/running.md "Health"."""
    last = None
    if h.has_last_nonfinite:
        last = {"update": int(h.last_nonfinite_update), "count": int(h.last_nonfinite_count),
                "tensor": _s(h.last_nonfinite_tensor)}
    return {
        "enabled": bool(h.enabled),
        "on_nonfinite": _s(h.on_nonfinite),
        "updates_checked": int(h.updates_checked),
        "nonfinite_total": int(h.nonfinite_total),
        "nonfinite_updates": int(h.nonfinite_updates),
        "last_nonfinite": last,
        "distance": float(h.distance) if h.has_distance else None,
        "noop_updates": int(h.noop_updates),
        "last_update_noop": bool(h.last_update_noop),
        "interval": float(h.interval) if h.has_interval else None,
        "stalled": bool(h.stalled),
        "alarms": [_s(h.alarms[i]) for i in range(h.nalarms)],
    }


def _time(batch, epoch, duration):
    t = _lib.EmacTime()
    t.batch = int(batch)
    t.epoch = int(epoch)
    if duration is not None:
        t.has_duration = True
        t.duration = float(duration)
    return t


def _counts(samples, tokens, seconds):
    """The optional counts of the clock (docs/protocol.md "Time"), or None."""
    if samples is None and tokens is None and seconds is None:
        return None
    c = _lib.EmacTimeCounts()
    for name, v in (("samples", samples), ("tokens", tokens), ("seconds", seconds)):
        if v is not None:
            if int(v) < 0:
                raise ValueError("%s must be >= 0, not %r" % (name, v))
            setattr(c, "has_" + name, True)
            setattr(c, name, int(v))
    return c


# ---- Client ----


def _disconnect(handle):
    lib.emac_disconnect(handle)


class Client:
    """One connection to emad (hello done).

    socket: the socket path (default: $EMAD_SOCKET, $XDG_RUNTIME_DIR/emad.sock,
            /run/emad/emad.sock); name: how emad's log calls this client.
    reconnect: after losing the connection, reconnect, resume the sessions
            and send again the unanswered events and swaps (default True);
    reconnect_timeout: give up after this many seconds without a connection
            (default 30, or $EMAD_RECONNECT_TIMEOUT); reconnect_delay and
            reconnect_max_delay: the backoff's first and largest delay, in
            seconds (default 0.05 and 2). See "Crash safety" in emaclient.h.
    Usable as a context manager (closes the connection).
    """

    def __init__(self, socket=None, name=None, *, reconnect=None, reconnect_timeout=None,
                 reconnect_delay=None, reconnect_max_delay=None):
        if name is None:
            name = "python:%s" % (os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0]
                                  else "python")
        handle = _lib.client_p()
        err = _lib.EmacError()
        _check(lib.emac_connect(_b(socket, "socket"), _b(name, "name"), ctypes.byref(handle),
                                ctypes.byref(err)), err)
        self._h = handle
        self._fin = weakref.finalize(self, _disconnect, handle)
        if (reconnect, reconnect_timeout, reconnect_delay, reconnect_max_delay) != (None,) * 4:
            self.set_reconnect(reconnect, reconnect_timeout, reconnect_delay,
                               reconnect_max_delay)
        info = lib.emac_server_info(handle).contents
        self.server = {"server": _s(info.server), "proto": int(info.proto),
                       "pid": int(info.pid), "workers": int(info.workers)}

    def _handle(self):
        if self.closed:
            raise Error("USAGE", "the client was closed")
        return self._h

    def set_reconnect(self, enabled=None, timeout=None, delay=None, max_delay=None):
        """Set the reconnect policy (times in seconds); a setting left None
        takes the library's default (the timeout: $EMAD_RECONNECT_TIMEOUT's
        value is not read here)."""
        r = _lib.EmacReconnect()
        lib.emac_reconnect_defaults(ctypes.byref(r))
        if enabled is not None:
            r.enabled = bool(enabled)
        for field, value in (("timeout_ms", timeout), ("initial_delay_ms", delay),
                             ("max_delay_ms", max_delay)):
            if value is not None:
                if not 0 <= float(value) <= 86400:
                    raise Error("USAGE", "reconnect %s: %r is not in [0, 86400] seconds"
                                % (field[:-3], value))
                setattr(r, field, int(round(float(value) * 1000)))
        if delay is not None and max_delay is None and r.max_delay_ms < r.initial_delay_ms:
            r.max_delay_ms = r.initial_delay_ms
        err = _lib.EmacError()
        _check(lib.emac_set_reconnect(self._handle(), ctypes.byref(r), ctypes.byref(err)), err)

    @property
    def reconnects(self):
        """How many times this client has reconnected to emad."""
        return int(lib.emac_reconnects(self._handle()))

    @property
    def closed(self):
        # The finalizer may have run without close() (at the interpreter's exit).
        return self._h is None or not self._fin.alive

    def close(self):
        """Close the connection. Sessions registered on it stay in emad
        (detached) unless they were closed; requests on them fail."""
        if self._h is not None:
            self._fin()
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<emaclient.Client %s%s>" % (self.server.get("server"),
                                            " closed" if self.closed else "")

    def status(self, session=None):
        """emad's status: {"server": {...}, "sessions": [session state, ...]};
        with `session`, only that one (NOSESSION if there is none)."""
        st = ctypes.POINTER(_lib.EmacStatus)()
        err = _lib.EmacError()
        _check(lib.emac_status(self._handle(), _b(session, "session"), ctypes.byref(st),
                               ctypes.byref(err)), err)
        try:
            s = st.contents
            server = {
                "server": _s(s.server), "version": _s(s.version), "proto": int(s.proto),
                "pid": int(s.pid), "uptime_seconds": float(s.uptime_seconds),
                "workers": int(s.workers), "connections": int(s.connections),
                "sessions": int(s.sessions), "max_connections": int(s.max_connections),
                "max_sessions": int(s.max_sessions), "max_message": int(s.max_message),
                "socket": _s(s.socket), "state_dir": _s(s.state_dir),
            }
            sessions = [_session_info(s.session_list[i]) for i in range(s.nsessions)]
            for i, info in enumerate(sessions):
                h = lib.emac_status_health(st, i)
                info["health"] = _health(h.contents) if h else None
                arr = ctypes.POINTER(_lib.EmacProfileInfo)()
                n = lib.emac_status_profiles(st, i, ctypes.byref(arr))
                if n:
                    info["profiles"] = _profile_infos(n, arr)
                _group_info(st, i, info)
        finally:
            lib.emac_status_free(st)
        return {"server": server, "sessions": sessions}

    def metrics(self):
        """emad's metrics in the Prometheus text exposition format (a str);
        unless the caller is root, the per-session series are those of its
        own sessions only (docs/running.md "Metrics")."""
        text = ctypes.c_void_p()
        err = _lib.EmacError()
        _check(lib.emac_metrics(self._handle(), ctypes.byref(text), ctypes.byref(err)), err)
        try:
            return ctypes.string_at(text.value).decode("utf-8", "replace")
        finally:
            _libc_free(text)

    def session_state(self, session):
        """The current state of one session (a dict, as in status)."""
        return self.status(session)["sessions"][0]

    def register(self, session, segment, *, half_life=None, smoothing=None,
                 update_interval=None, ema_start=None, resume=False, on_nonfinite=None,
                 health=None, profiles=None, eval_profile=None, snapshot_every=None,
                 snapshot_dtype=None, snapshot_keep=None):
        """Register a session for the tensors of `segment` (a Segment); the
        config fields left None take emad's defaults. With resume, re-attach
        to a detached session of that name with the same tensor table.
        on_nonfinite: "skip" (emad's default: a NaN or Inf param element
        leaves its shadow element as it was) or "apply"; health=False turns
        the health signals off (docs/running.md "Health").
        profiles: {name: {setting: value}} (docs/protocol.md "Profiles"; in
        order, at most 8), instead of half_life, smoothing, update_interval
        and ema_start; eval_profile: the one eval_start swaps in (default:
        the first). snapshot_every ("Nba"), snapshot_dtype ("f32", "bf16",
        "f16") and snapshot_keep (files kept per profile, 0: all): snapshots
        of the power profiles for post-hoc EMA (docs/protocol.md
        "Snapshots"); they need profiles=."""
        snap = None
        if any(v is not None for v in (snapshot_every, snapshot_dtype, snapshot_keep)):
            if profiles is None:
                raise ValueError("register: snapshot_every/snapshot_dtype/snapshot_keep need "
                                 "profiles= with a power profile")
            snap = _lib.EmacSnapshotConfig()
            snap.every = _b(snapshot_every, "snapshot_every")
            snap.dtype = _b(snapshot_dtype, "snapshot_dtype")
            keep = 0 if snapshot_keep is None else int(snapshot_keep)
            if keep < 0:
                raise ValueError("register: snapshot_keep must be >= 0, not %d" % keep)
            snap.keep = keep
        if profiles is not None:
            if any(v is not None for v in (half_life, smoothing, update_interval, ema_start)):
                raise ValueError("register: give profiles or half_life/smoothing/"
                                 "update_interval/ema_start, not both")
            items = list(profiles.items())
            arr = (_lib.EmacProfile * max(1, len(items)))()
            for i, (name, settings) in enumerate(items):
                arr[i] = _profile_struct(name, dict(settings))
            hcfg = _lib.EmacHealthConfig()
            hcfg.on_nonfinite = _b(on_nonfinite, "on_nonfinite")
            if health is not None:
                hcfg.has_health = True
                hcfg.health = bool(health)
            handle = _lib.session_p()
            err = _lib.EmacError()
            _check(lib.emac_register_snapshots(
                self._handle(), _b(session, "session"), segment._handle(), arr, len(items),
                _b(eval_profile, "eval_profile"), ctypes.byref(hcfg),
                ctypes.byref(snap) if snap is not None else None, bool(resume),
                ctypes.byref(handle), ctypes.byref(err)), err)
            return Session(self, segment, handle)
        cfg = _lib.EmacConfig()
        cfg.half_life = _b(half_life, "half_life")
        if smoothing is not None:
            cfg.has_smoothing = True
            cfg.smoothing = float(smoothing)
        cfg.update_interval = _b(update_interval, "update_interval")
        cfg.ema_start = _b(ema_start, "ema_start")
        hcfg = _lib.EmacHealthConfig()
        hcfg.on_nonfinite = _b(on_nonfinite, "on_nonfinite")
        if health is not None:
            hcfg.has_health = True
            hcfg.health = bool(health)
        handle = _lib.session_p()
        err = _lib.EmacError()
        _check(lib.emac_register_health(self._handle(), _b(session, "session"),
                                        segment._handle(), ctypes.byref(cfg),
                                        ctypes.byref(hcfg), bool(resume), ctypes.byref(handle),
                                        ctypes.byref(err)), err)
        return Session(self, segment, handle)

    def _file(self, fn, session, name):
        out = _lib.EmacFile()
        err = _lib.EmacError()
        _check(fn(self._handle(), _b(session, "session"), _b(name, "name"), ctypes.byref(out),
                  ctypes.byref(err)), err)
        return {"path": _s(out.path), "bytes": int(out.bytes)}

    def save(self, session, name=None):
        """Write the session's state to the file `name` (a name, not a path;
        default chosen by emad) in emad's state directory: {"path", "bytes"}."""
        return self._file(lib.emac_save, session, name)

    def load(self, session, name=None):
        """Replace the session's shadow and state from such a file."""
        return self._file(lib.emac_load, session, name)

    def load_profile(self, session, name, profile, state=None):
        """Replace one profile's shadow alone with that of the file `name` (saved
        from a session of one profile and the same tensors); state, a dict with
        started, updates, last_batch (or None) and last_decay (or None), is what
        the profile takes (docs/protocol.md "load")."""
        st = None
        if state is not None:
            st = _lib.EmacProfileState()
            st.started = bool(state["started"])
            st.updates = int(state["updates"])
            if state.get("last_batch") is not None:
                st.has_last_batch = True
                st.last_batch = int(state["last_batch"])
            if state.get("last_decay") is not None:
                st.has_last_decay = True
                st.last_decay = float(state["last_decay"])
        out = _lib.EmacFile()
        err = _lib.EmacError()
        _check(lib.emac_load_profile(self._handle(), _b(session, "session"), _b(name, "name"),
                                     _b(profile, "profile"),
                                     ctypes.byref(st) if st is not None else None,
                                     ctypes.byref(out), ctypes.byref(err)), err)
        return {"path": _s(out.path), "bytes": int(out.bytes)}

    def drop(self, session):
        """Remove a detached session and its shadow."""
        err = _lib.EmacError()
        _check(lib.emac_drop(self._handle(), _b(session, "session"), ctypes.byref(err)), err)

    def snapshots(self, session):
        """Every snapshot file of the session of that name (running or closed),
        by profile then batch: [{"file", "profile", "batch", "dtype", "bytes"}]."""
        return _snapshot_list(lib.emac_snapshots, self._handle(), _b(session, "session"))

    def snapshot(self, session):
        """Have emad snapshot every power profile of the session now (after the
        events queued before): the files written, as snapshots() lists them."""
        return _snapshot_list(lib.emac_snapshot_session, self._handle(),
                              _b(session, "session"))


def _snapshot_list(fn, *args):
    arr = ctypes.POINTER(_lib.EmacSnapshot)()
    n = ctypes.c_size_t()
    err = _lib.EmacError()
    _check(fn(*args, ctypes.byref(arr), ctypes.byref(n), ctypes.byref(err)), err)
    try:
        return [{"file": _s(arr[i].file), "profile": _s(arr[i].profile),
                 "batch": int(arr[i].batch), "dtype": _s(arr[i].dtype),
                 "bytes": int(arr[i].bytes)} for i in range(n.value)]
    finally:
        lib.emac_snapshots_free(arr)


def posthoc_files(paths, sigma_rel, out_path, batch=None, dtype=None):
    """Reconstruct the power EMA of width sigma_rel at `batch` (None: the
    latest snapshot's) from the snapshot files `paths` into the safetensors
    file out_path, in dtype ("f32" (None), "bf16" or "f16"): emac_posthoc_files
    (docs/posthoc.md)."""
    paths = [os.fsencode(p) for p in paths]
    arr = (ctypes.c_char_p * max(1, len(paths)))(*paths)
    err = _lib.EmacError()
    _check(lib.emac_posthoc_files(arr, len(paths), float(sigma_rel),
                                  0 if batch is None else int(batch), os.fsencode(out_path),
                                  _b(dtype, "dtype"), ctypes.byref(err)), err)


# ---- Segment ----


def _spec_array(specs):
    """specs: iterable of (name, dtype, shape) with shape a sequence of ints
    (or an int: a 1-D tensor of that many elements)."""
    specs = list(specs)
    arr = (_lib.EmacTensorSpec * max(len(specs), 1))()
    keep = []
    shapes = []
    for i, spec in enumerate(specs):
        if isinstance(spec, dict):
            name, dtype, shape = spec["name"], spec["dtype"], spec.get("shape", spec.get("numel"))
        else:
            name, dtype, shape = spec
        if isinstance(shape, int):
            shape = (shape,)
        shape = tuple(int(d) for d in shape)
        numel = 1
        for d in shape:
            if d < 0:
                raise Error("USAGE", "tensor %r: negative dimension in shape %r" % (name, shape))
            numel *= d
        nb, db = _b(name, "tensor name"), _b(dtype, "dtype")
        sh = (_lib.c_uint64 * max(len(shape), 1))(*shape)
        keep += [nb, db, sh]
        arr[i].name = nb
        arr[i].dtype = db
        arr[i].numel = numel
        arr[i].shape = ctypes.cast(sh, ctypes.POINTER(_lib.c_uint64))
        arr[i].ndim = len(shape)
        shapes.append(shape)
    return arr, len(specs), keep, shapes


def _segment_release(handle, destroy, pid=None):
    if pid is not None and pid != os.getpid():
        return  # a forked child must not remove its parent's segment
    if destroy:
        lib.emac_segment_destroy(handle)
    else:
        lib.emac_segment_close(handle)


class Segment:
    """The trainer's tensors in a POSIX shared-memory segment (docs/protocol.md "Segment header").

    Segment(specs) creates a new one ("/emad-<random>", every tensor zero);
    Segment.open(name, specs) maps one left by an earlier run. specs is a
    list of (name, dtype, shape): dtype one of DTYPES, shape a tuple of ints.
    `tensors` describes each tensor (TensorInfo: address, nbytes, ...);
    buffer(i) is a writable ctypes array over tensor i (valid while the
    segment is mapped). destroy() unmaps and removes the object (what a
    created segment does when collected), close() only unmaps it (what an
    opened one does). As a context manager it destroys (created) or closes
    (opened) on exit. Sessions using it are freed first.
    """

    def __init__(self, specs, *, _open_name=None):
        arr, n, keep, shapes = _spec_array(specs)
        handle = _lib.segment_p()
        err = _lib.EmacError()
        if _open_name is None:
            _check(lib.emac_segment_create(arr, n, ctypes.byref(handle), ctypes.byref(err)), err)
        else:
            _check(lib.emac_segment_open(_b(_open_name, "name"), arr, n, ctypes.byref(handle),
                                         ctypes.byref(err)), err)
        del keep
        self._h = handle
        self._owned = _open_name is None
        self._fin = weakref.finalize(self, _segment_release, handle, self._owned, os.getpid())
        self._sessions = weakref.WeakSet()
        self.name = _s(lib.emac_segment_name(handle))
        self.base = lib.emac_segment_base(handle)
        self.nbytes = int(lib.emac_segment_bytes(handle))
        self.tensors = []
        for i in range(lib.emac_segment_ntensors(handle)):
            t = lib.emac_segment_tensor(handle, i).contents
            self.tensors.append(TensorInfo(_s(t.name), _s(t.dtype), int(t.elem_size),
                                           int(t.numel), int(t.offset), int(t.bytes),
                                           t.data, shapes[i]))

    @classmethod
    def open(cls, name, specs):
        """Map an existing segment made for the same specs (swap state left as
        found: call restore() to be sure the params hold the training weights)."""
        return cls(specs, _open_name=name)

    def _handle(self):
        if self.closed:
            raise Error("USAGE", "segment %s was closed" % self.name)
        return self._h

    @property
    def closed(self):
        # The finalizer may have run without close() (at the interpreter's exit).
        return self._h is None or not self._fin.alive

    def buffer(self, i):
        """A writable ctypes array (c_char * nbytes) over tensor i's live
        data; memoryview() it, or hand it to numpy/torch.frombuffer."""
        self._handle()
        t = self.tensors[i]
        if t.nbytes == 0:
            return (ctypes.c_char * 0)()
        return (ctypes.c_char * t.nbytes).from_address(t.address)

    def stash(self):
        """The address of the stash, where the training weights lie while
        the EMA weights are swapped in: tensor t's at stash() + t.offset.
        The library reads the header (and checks it); SHM if it is bad."""
        addr = lib.emac_segment_stash(self._handle())
        if not addr:
            raise Error("SHM", "segment %s: bad header" % self.name)
        return addr

    def swap_state(self):
        """(swap_state, swap_generation) from the header: SWAP_TRAIN,
        SWAP_STASHED or SWAP_EMA, read with acquire ordering."""
        st, gen = _lib.c_uint32(), _lib.c_uint64()
        lib.emac_segment_swap_state(self._handle(), ctypes.byref(st), ctypes.byref(gen))
        return int(st.value), int(gen.value)

    def restore(self):
        """If the swap state is not TRAIN, copy the stash back into the params
        (only while emad is not working on the segment). True if it did."""
        done = _lib.c_bool()
        err = _lib.EmacError()
        _check(lib.emac_segment_restore(self._handle(), ctypes.byref(done), ctypes.byref(err)),
               err)
        return bool(done.value)

    @staticmethod
    def recover(name):
        """restore() for a segment this process has not mapped, by name."""
        done = _lib.c_bool()
        err = _lib.EmacError()
        _check(lib.emac_segment_recover(_b(name, "name"), ctypes.byref(done), ctypes.byref(err)),
               err)
        return bool(done.value)

    def _release(self, destroy):
        if self.closed:
            self._h = None
            return
        for s in list(self._sessions):
            s.free()
        self._fin.detach()
        _segment_release(self._h, destroy)
        self._h = None

    def close(self):
        """Unmap, keeping the shared-memory object."""
        self._release(False)

    def destroy(self):
        """Unmap and remove the shared-memory object."""
        self._release(True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._release(self._owned)

    def __repr__(self):
        return "<emaclient.Segment %s, %d tensors, %d bytes%s>" % (
            self.name, len(self.tensors), self.nbytes, " closed" if self.closed else "")


# ---- Session ----


def _session_free(handle):
    lib.emac_session_free(handle)


class Session:
    """A session registered with Client.register (owned by that connection).

    event() sends an event and waits until emad has done what it calls for;
    send() / wait() are the split form (the trainer must not modify its
    params between sending an update event and the end of its wait).
    As a context manager: close() (unless closed already) and free() on exit.
    free() releases the handle without telling emad (the session stays in
    emad, detached, unless it was closed).
    """

    def __init__(self, client, segment, handle):
        self.client = client
        self.segment = segment
        self._h = handle
        self._fin = weakref.finalize(self, _session_free, handle)
        self._closed = False
        segment._sessions.add(self)
        self.name = _s(lib.emac_session_name(handle))
        self.state = _session_info(lib.emac_session_state(handle).contents)
        self.shadows = []
        for i in range(len(segment.tensors)):
            sh = lib.emac_session_shadow(handle, i).contents
            self.shadows.append(ShadowInfo(_s(sh.name), _s(sh.dtype), int(sh.elem_size),
                                           int(sh.numel), int(sh.offset),
                                           sh.data if sh.numel else None))
        arr = ctypes.POINTER(_lib.EmacProfileInfo)()
        n = lib.emac_session_profiles(handle, ctypes.byref(arr))
        # [] for a session registered without profiles (its one profile is "ema")
        self.profiles = _profile_infos(n, arr)

    def profile_address(self, profile, i):
        """The address of tensor i's shadow in the profile (its index or name;
        read-only memory), or None for an empty tensor. Profile 0 (or "ema"
        without profiles) is shadows[i].address."""
        if not isinstance(profile, int):
            names = [p["name"] for p in self.profiles] or ["ema"]
            if profile not in names:
                raise KeyError("session %s has no profile %r" % (self.name, profile))
            profile = names.index(profile)
        if self.shadows[i].numel == 0:
            return None
        addr = lib.emac_session_profile_data(self._handle(), profile, i)
        if not addr:
            raise IndexError("session %s: no profile %d" % (self.name, profile))
        return addr

    def _handle(self):
        if self.freed:
            raise Error("USAGE", "session %s was freed" % self.name)
        return self._h

    @property
    def freed(self):
        # The finalizer may have run without free() (at the interpreter's exit).
        return self._h is None or not self._fin.alive

    @property
    def closed(self):
        return self._closed

    @property
    def restored(self):
        """True once the library restored the training weights from the stash
        after losing the connection with the EMA weights swapped in."""
        return bool(lib.emac_session_restored(self._handle()))

    def shadow_buffer(self, i):
        """A ctypes array over tensor i's shadow (read-only memory: never write
        to it), valid until free()."""
        self._handle()
        s = self.shadows[i]
        if s.address is None:
            return (ctypes.c_char * 0)()
        return (ctypes.c_char * (s.numel * s.elem_size)).from_address(s.address)

    def event(self, event, batch=0, epoch=0, duration=None, samples=None, tokens=None,
              seconds=None):
        """Send an event and wait for it: a Result. samples, tokens, seconds: the
        counts an ema_start in "sp", "tok" or "sec" needs (sent when not None)."""
        out = _lib.EmacResult()
        err = _lib.EmacError()
        t = _time(batch, epoch, duration)
        c = _counts(samples, tokens, seconds)
        _check(lib.emac_event_counts(self._handle(), _b(event, "event"), ctypes.byref(t),
                                     None if c is None else ctypes.byref(c),
                                     ctypes.byref(out), ctypes.byref(err)), err)
        return _result(out)

    def send(self, event, batch=0, epoch=0, duration=None, samples=None, tokens=None,
             seconds=None):
        """Send an event without waiting: a ticket for wait()."""
        ticket = _lib.c_uint32()
        err = _lib.EmacError()
        t = _time(batch, epoch, duration)
        c = _counts(samples, tokens, seconds)
        _check(lib.emac_event_send_counts(self._handle(), _b(event, "event"), ctypes.byref(t),
                                          None if c is None else ctypes.byref(c),
                                          ctypes.byref(ticket), ctypes.byref(err)), err)
        return int(ticket.value)

    def wait(self, ticket):
        """Wait until the event of that ticket is done: a Result."""
        out = _lib.EmacResult()
        err = _lib.EmacError()
        _check(lib.emac_event_wait(self._handle(), ticket, ctypes.byref(out), ctypes.byref(err)),
               err)
        return _result(out)

    def status(self):
        """This session's current state, as Client.status reports it (a dict,
        with its "health" signals)."""
        return self.client.session_state(self.name)

    def health(self):
        """This session's health signals (a dict: docs/running.md "Health"),
        or None from an emad that does not report them."""
        return self.status().get("health")

    def nonfinite(self):
        """(count, tensor) of the last update answered: the NaN or Inf param
        elements it found and the first tensor with one; (0, None) if none."""
        tensor = ctypes.c_char_p()
        n = lib.emac_session_nonfinite(self._handle(), ctypes.byref(tensor))
        return int(n), _s(tensor.value) if n else None

    def diverged(self):
        """Whether the last event or swap reply said that a replica's sampled
        params differ from the leader's at the same batch (docs/protocol.md
        "Replicas"); False for a session without replicas."""
        return bool(lib.emac_session_diverged(self._handle()))

    def swap(self, to, profile=None):
        """Swap to "ema" (as eval_start) or "train" (as eval_end): a Result.
        profile: with "ema", the profile to swap in (default: the eval one)."""
        out = _lib.EmacResult()
        err = _lib.EmacError()
        if profile is not None:
            if to != "ema":
                raise ValueError("swap: profile= goes with to='ema' only")
            _check(lib.emac_swap_profile(self._handle(), _b(profile, "profile"),
                                         ctypes.byref(out), ctypes.byref(err)), err)
            return _result(out)
        _check(lib.emac_swap(self._handle(), _b(to, "to"), ctypes.byref(out), ctypes.byref(err)),
               err)
        return _result(out)

    def snapshot(self):
        """Have emad snapshot every power profile of this session now, after
        the events sent before: the files written (as Client.snapshots)."""
        return _snapshot_list(lib.emac_snapshot, self._handle())

    def close(self, keep=False):
        """End the session in emad (its shadow freed), or with keep leave it
        detached for a later register(..., resume=True)."""
        err = _lib.EmacError()
        _check(lib.emac_close(self._handle(), bool(keep), ctypes.byref(err)), err)
        self._closed = True

    def free(self):
        """Release the handle and unmap the shadow (emad is not told)."""
        if self._h is not None:
            self._fin()
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if not self.freed and not self._closed and not self.client.closed:
                self.close()
        finally:
            self.free()

    def __repr__(self):
        return "<emaclient.Session %s%s>" % (self.name, " freed" if self.freed else "")


def _released_by_owner(*objs):
    """Leave the release of these Clients, Segments and Sessions at the
    interpreter's exit to the object that owns them (emaclient.torch.EMA),
    which releases them in order. weakref.finalize runs the finalizers left
    at exit newest first: a Segment made by an EMA would be unmapped before
    the EMA's own finalizer, which still reads and restores it."""
    for o in objs:
        o._fin.atexit = False
