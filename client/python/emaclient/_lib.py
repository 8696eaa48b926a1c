"""ctypes declarations of libemaclient (client/emaclient.h) and the loader.

The C library is the single implementation of the protocol and of the
segment logic; this module only declares its public API for ctypes. Keep it
in step with emaclient.h.

The library is looked for, first that works:
  1. $EMACLIENT_LIB (a path to libemaclient.so);
  2. beside this package (emaclient/libemaclient.so.0 or libemaclient.so);
  3. the build tree, when the package is used from a checkout
     (client/python/emaclient -> build/libemaclient.so), after `make`;
  4. the dynamic loader's search path (libemaclient.so.0, as `make install`
     puts it in $(LIBDIR)).
"""

import ctypes
import ctypes.util
import os

__all__ = ["lib", "lib_path"]

c_char_p = ctypes.c_char_p
c_void_p = ctypes.c_void_p
c_bool = ctypes.c_bool
c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_uint32 = ctypes.c_uint32
c_uint64 = ctypes.c_uint64
c_long = ctypes.c_long
c_size_t = ctypes.c_size_t
c_double = ctypes.c_double
POINTER = ctypes.POINTER


class EmacError(ctypes.Structure):
    _fields_ = [("code", ctypes.c_char * 16), ("message", ctypes.c_char * 512)]


class EmacServer(ctypes.Structure):
    _fields_ = [("server", c_char_p), ("proto", c_uint), ("pid", c_long), ("workers", c_uint)]


class EmacTensorSpec(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_char_p),
        ("numel", c_uint64),
        ("shape", POINTER(c_uint64)),
        ("ndim", c_size_t),
    ]


class EmacTensor(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_char_p),
        ("elem_size", c_size_t),
        ("numel", c_uint64),
        ("offset", c_uint64),
        ("bytes", c_uint64),
        ("data", c_void_p),
    ]


class EmacConfig(ctypes.Structure):
    _fields_ = [
        ("half_life", c_char_p),
        ("has_smoothing", c_bool),
        ("smoothing", c_double),
        ("update_interval", c_char_p),
        ("ema_start", c_char_p),
    ]


class EmacHealthConfig(ctypes.Structure):
    _fields_ = [
        ("on_nonfinite", c_char_p),
        ("has_health", c_bool),
        ("health", c_bool),
    ]


class EmacProfile(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("schedule", c_char_p),
        ("half_life", c_char_p),
        ("has_smoothing", c_bool),
        ("smoothing", c_double),
        ("ema_start", c_char_p),
        ("update_interval", c_char_p),
        ("has_decay", c_bool),
        ("decay", c_double),
        ("has_min_decay", c_bool),
        ("min_decay", c_double),
        ("has_update_after_step", c_bool),
        ("update_after_step", c_uint64),
        ("has_inv_gamma", c_bool),
        ("inv_gamma", c_double),
        ("has_power", c_bool),
        ("power", c_double),
        ("has_sigma_rel", c_bool),
        ("sigma_rel", c_double),
        ("has_gamma", c_bool),
        ("gamma", c_double),
    ]


class EmacProfileHealth(ctypes.Structure):
    _fields_ = [
        ("updates_checked", c_uint64),
        ("has_distance", c_bool),
        ("distance", c_double),
        ("noop_updates", c_uint64),
        ("last_update_noop", c_bool),
    ]


class EmacProfileState(ctypes.Structure):
    _fields_ = [
        ("started", c_bool),
        ("updates", c_uint64),
        ("has_last_batch", c_bool),
        ("last_batch", c_uint64),
        ("has_last_decay", c_bool),
        ("last_decay", c_double),
    ]


class EmacProfileInfo(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("schedule", c_char_p),
        ("eval", c_bool),
        ("started", c_bool),
        ("updates", c_uint64),
        ("has_last_batch", c_bool),
        ("last_batch", c_uint64),
        ("has_last_decay", c_bool),
        ("last_decay", c_double),
        ("shadow_offset", c_uint64),
        ("config", EmacProfile),
        ("has_health", c_bool),
        ("health", EmacProfileHealth),
    ]


class EmacHealth(ctypes.Structure):
    _fields_ = [
        ("enabled", c_bool),
        ("on_nonfinite", c_char_p),
        ("updates_checked", c_uint64),
        ("nonfinite_total", c_uint64),
        ("nonfinite_updates", c_uint64),
        ("has_last_nonfinite", c_bool),
        ("last_nonfinite_update", c_uint64),
        ("last_nonfinite_count", c_uint64),
        ("last_nonfinite_tensor", c_char_p),
        ("has_distance", c_bool),
        ("distance", c_double),
        ("noop_updates", c_uint64),
        ("last_update_noop", c_bool),
        ("has_interval", c_bool),
        ("interval", c_double),
        ("stalled", c_bool),
        ("nalarms", c_size_t),
        ("alarms", POINTER(c_char_p)),
    ]


class EmacSessionInfo(ctypes.Structure):
    _fields_ = [
        ("session", c_char_p),
        ("attached", c_bool),
        ("owner_pid", c_long),
        ("tensors", c_uint64),
        ("params_bytes", c_uint64),
        ("shadow_bytes", c_uint64),
        ("smoothing", c_double),
        ("half_life", c_char_p),
        ("update_interval", c_char_p),
        ("ema_start", c_char_p),
        ("started", c_bool),
        ("active", c_bool),
        ("updates", c_uint64),
        ("swaps", c_uint64),
        ("has_last_time", c_bool),
        ("last_batch", c_uint64),
        ("last_epoch", c_uint64),
        ("has_last_duration", c_bool),
        ("last_duration", c_double),
        ("last_update_seconds", c_double),
        ("shm", c_char_p),
        ("shadow_shm", c_char_p),
        ("interrupted", c_bool),
        ("seq", c_uint64),
    ]


class EmacShadow(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_char_p),
        ("elem_size", c_size_t),
        ("numel", c_uint64),
        ("offset", c_uint64),
        ("data", c_void_p),
    ]


class EmacTime(ctypes.Structure):
    _fields_ = [
        ("batch", c_uint64),
        ("epoch", c_uint64),
        ("has_duration", c_bool),
        ("duration", c_double),
    ]


class EmacTimeCounts(ctypes.Structure):
    _fields_ = [
        ("has_samples", c_bool),
        ("has_tokens", c_bool),
        ("has_seconds", c_bool),
        ("samples", c_uint64),
        ("tokens", c_uint64),
        ("seconds", c_uint64),
    ]


class EmacResult(ctypes.Structure):
    _fields_ = [
        ("action", c_int),  # enum emac_action
        ("active", c_bool),
        ("started", c_bool),
        ("updates", c_uint64),
        ("replayed", c_bool),
        ("interrupted", c_bool),
    ]


class EmacReconnect(ctypes.Structure):
    _fields_ = [
        ("enabled", c_bool),
        ("initial_delay_ms", ctypes.c_uint),
        ("max_delay_ms", ctypes.c_uint),
        ("timeout_ms", ctypes.c_uint),
    ]


class EmacFile(ctypes.Structure):
    _fields_ = [("path", ctypes.c_char * 4096), ("bytes", c_uint64)]


class EmacSnapshotConfig(ctypes.Structure):
    _fields_ = [("every", c_char_p), ("dtype", c_char_p), ("keep", c_uint64)]


class EmacSnapshot(ctypes.Structure):
    _fields_ = [
        ("file", c_char_p),
        ("profile", c_char_p),
        ("batch", c_uint64),
        ("dtype", c_char_p),
        ("bytes", c_uint64),
    ]


class EmacStatus(ctypes.Structure):
    _fields_ = [
        ("server", c_char_p),
        ("version", c_char_p),
        ("proto", c_uint),
        ("pid", c_long),
        ("uptime_seconds", c_double),
        ("workers", c_uint),
        ("connections", c_uint),
        ("sessions", c_uint),
        ("max_connections", c_uint),
        ("max_sessions", c_uint),
        ("max_message", c_uint64),
        ("socket", c_char_p),
        ("state_dir", c_char_p),
        ("nsessions", c_size_t),
        ("session_list", POINTER(EmacSessionInfo)),
    ]


class EmacCkptGroup(ctypes.Structure):
    _fields_ = [("job", c_char_p), ("batch", c_uint64), ("epoch", c_uint64),
                ("world_size", c_uint32)]


class EmacCkptSlice(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_char_p),
        ("ndim", c_uint),
        ("global_shape", POINTER(c_uint64)),
        ("offsets", POINTER(c_uint64)),
        ("shape", POINTER(c_uint64)),
        ("data", c_void_p),
    ]


class EmacCkptShard(ctypes.Structure):
    _fields_ = [
        ("file", c_char_p),
        ("ranks", POINTER(c_uint32)),
        ("nranks", c_size_t),
        ("slices", POINTER(EmacCkptSlice)),
        ("nslices", c_size_t),
    ]


class EmacGroup(ctypes.Structure):
    _fields_ = [("job", c_char_p), ("rank", c_uint64), ("world", c_uint64),
                ("replicas", c_uint64)]


# Opaque handles.
client_p = c_void_p
segment_p = c_void_p
session_p = c_void_p
err_p = POINTER(EmacError)

# name: (restype, argtypes)
_PROTOTYPES = {
    "emac_socket_path": (c_int, [c_char_p, c_char_p, c_size_t]),
    "emac_connect": (c_int, [c_char_p, c_char_p, POINTER(client_p), err_p]),
    "emac_disconnect": (None, [client_p]),
    "emac_server_info": (POINTER(EmacServer), [client_p]),
    "emac_reconnect_defaults": (None, [POINTER(EmacReconnect)]),
    "emac_set_reconnect": (c_int, [client_p, POINTER(EmacReconnect), err_p]),
    "emac_reconnects": (ctypes.c_uint, [client_p]),
    "emac_segment_create": (c_int, [POINTER(EmacTensorSpec), c_size_t, POINTER(segment_p), err_p]),
    "emac_segment_open": (
        c_int, [c_char_p, POINTER(EmacTensorSpec), c_size_t, POINTER(segment_p), err_p]),
    "emac_segment_close": (None, [segment_p]),
    "emac_segment_destroy": (None, [segment_p]),
    "emac_segment_name": (c_char_p, [segment_p]),
    "emac_segment_ntensors": (c_size_t, [segment_p]),
    "emac_segment_tensor": (POINTER(EmacTensor), [segment_p, c_size_t]),
    "emac_segment_base": (c_void_p, [segment_p]),
    "emac_segment_bytes": (c_uint64, [segment_p]),
    "emac_segment_stash": (c_void_p, [segment_p]),
    "emac_segment_swap_state": (None, [segment_p, POINTER(c_uint32), POINTER(c_uint64)]),
    "emac_segment_restore": (c_int, [segment_p, POINTER(c_bool), err_p]),
    "emac_segment_recover": (c_int, [c_char_p, POINTER(c_bool), err_p]),
    "emac_register": (
        c_int,
        [client_p, c_char_p, segment_p, POINTER(EmacConfig), c_bool, POINTER(session_p), err_p]),
    "emac_register_health": (
        c_int,
        [client_p, c_char_p, segment_p, POINTER(EmacConfig), POINTER(EmacHealthConfig), c_bool,
         POINTER(session_p), err_p]),
    "emac_session_nonfinite": (c_uint64, [session_p, POINTER(c_char_p)]),
    "emac_session_free": (None, [session_p]),
    "emac_session_name": (c_char_p, [session_p]),
    "emac_session_segment": (segment_p, [session_p]),
    "emac_session_state": (POINTER(EmacSessionInfo), [session_p]),
    "emac_session_shadow": (POINTER(EmacShadow), [session_p, c_size_t]),
    "emac_session_restored": (c_bool, [session_p]),
    "emac_action_name": (c_char_p, [c_int]),
    "emac_event": (c_int, [session_p, c_char_p, POINTER(EmacTime), POINTER(EmacResult), err_p]),
    "emac_event_send": (
        c_int, [session_p, c_char_p, POINTER(EmacTime), POINTER(c_uint32), err_p]),
    "emac_event_wait": (c_int, [session_p, c_uint32, POINTER(EmacResult), err_p]),
    "emac_event_counts": (
        c_int, [session_p, c_char_p, POINTER(EmacTime), POINTER(EmacTimeCounts),
                POINTER(EmacResult), err_p]),
    "emac_event_send_counts": (
        c_int, [session_p, c_char_p, POINTER(EmacTime), POINTER(EmacTimeCounts),
                POINTER(c_uint32), err_p]),
    "emac_swap": (c_int, [session_p, c_char_p, POINTER(EmacResult), err_p]),
    "emac_close": (c_int, [session_p, c_bool, err_p]),
    "emac_save": (c_int, [client_p, c_char_p, c_char_p, POINTER(EmacFile), err_p]),
    "emac_load": (c_int, [client_p, c_char_p, c_char_p, POINTER(EmacFile), err_p]),
    "emac_load_profile": (c_int, [client_p, c_char_p, c_char_p, c_char_p,
                                  POINTER(EmacProfileState), POINTER(EmacFile), err_p]),
    "emac_drop": (c_int, [client_p, c_char_p, err_p]),
    "emac_status": (c_int, [client_p, c_char_p, POINTER(POINTER(EmacStatus)), err_p]),
    "emac_status_free": (None, [POINTER(EmacStatus)]),
    "emac_status_raw": (None, [POINTER(EmacStatus), POINTER(c_void_p), POINTER(c_size_t)]),
    "emac_metrics": (c_int, [client_p, POINTER(c_void_p), err_p]),
    "emac_status_health": (POINTER(EmacHealth), [POINTER(EmacStatus), c_size_t]),
    "emac_register_profiles": (
        c_int,
        [client_p, c_char_p, segment_p, POINTER(EmacProfile), c_size_t, c_char_p,
         POINTER(EmacHealthConfig), c_bool, POINTER(session_p), err_p]),
    "emac_session_profiles": (c_size_t, [session_p, POINTER(POINTER(EmacProfileInfo))]),
    "emac_session_profile_data": (c_void_p, [session_p, c_size_t, c_size_t]),
    "emac_swap_profile": (c_int, [session_p, c_char_p, POINTER(EmacResult), err_p]),
    "emac_status_profiles": (
        c_size_t, [POINTER(EmacStatus), c_size_t, POINTER(POINTER(EmacProfileInfo))]),
    "emac_register_snapshots": (
        c_int,
        [client_p, c_char_p, segment_p, POINTER(EmacProfile), c_size_t, c_char_p,
         POINTER(EmacHealthConfig), POINTER(EmacSnapshotConfig), c_bool, POINTER(session_p),
         err_p]),
    "emac_snapshot": (
        c_int, [session_p, POINTER(POINTER(EmacSnapshot)), POINTER(c_size_t), err_p]),
    "emac_snapshot_session": (
        c_int, [client_p, c_char_p, POINTER(POINTER(EmacSnapshot)), POINTER(c_size_t), err_p]),
    "emac_snapshots": (
        c_int, [client_p, c_char_p, POINTER(POINTER(EmacSnapshot)), POINTER(c_size_t), err_p]),
    "emac_snapshots_free": (None, [POINTER(EmacSnapshot)]),
    "emac_posthoc_files": (
        c_int, [POINTER(c_char_p), c_size_t, ctypes.c_double, c_uint64, c_char_p, c_char_p,
                err_p]),
    # group checkpoints (client/emacheckpoint.h)
    "emac_checkpoint_write_shard": (
        c_int, [c_char_p, POINTER(EmacCkptGroup), POINTER(EmacCkptShard), err_p]),
    "emac_checkpoint_write_manifest": (
        c_int, [c_char_p, POINTER(EmacCkptGroup), c_char_p, POINTER(EmacCkptShard), c_size_t,
                err_p]),
    "emac_checkpoint_consolidate": (c_int, [c_char_p, c_char_p, c_char_p, err_p]),
    "emac_checkpoint_consolidate_profile": (
        c_int, [c_char_p, c_char_p, c_char_p, c_char_p, err_p]),
    "emac_checkpoint_open": (c_int, [c_char_p, POINTER(c_void_p), err_p]),
    "emac_checkpoint_group": (POINTER(EmacCkptGroup), [c_void_p]),
    "emac_checkpoint_read": (
        c_int, [c_void_p, c_char_p, c_uint, POINTER(c_uint64), POINTER(c_uint64), c_void_p,
                c_size_t, c_char_p, err_p]),
    "emac_checkpoint_close": (None, [c_void_p]),
    # shard sessions (emaclient.h "Shard sessions")
    "emac_segment_set_slice": (
        c_int, [segment_p, c_size_t, POINTER(c_uint64), POINTER(c_uint64), c_size_t, err_p]),
    "emac_segment_set_group": (c_int, [segment_p, POINTER(EmacGroup), err_p]),
    # replicas (emaclient.h, docs/protocol.md "Replicas")
    "emac_session_diverged": (c_bool, [session_p]),
    "emac_status_replicas": (
        c_bool, [POINTER(EmacStatus), c_size_t, POINTER(c_uint64), POINTER(c_uint64)]),
    "emac_status_replica_ranks": (
        c_size_t, [POINTER(EmacStatus), c_size_t, POINTER(POINTER(c_uint64))]),
    "emac_status_group": (POINTER(EmacGroup), [POINTER(EmacStatus), c_size_t]),
}

# enum emac_action, in the header's order.
ACTIONS = ("none", "start", "update", "start+update", "swap_in", "swap_out")

SWAP_TRAIN, SWAP_STASHED, SWAP_EMA = 0, 1, 2


def _candidates():
    env = os.environ.get("EMACLIENT_LIB")
    if env:
        return [env], True
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [os.path.join(here, "libemaclient.so.0"), os.path.join(here, "libemaclient.so")]
    tree = os.path.normpath(os.path.join(here, "..", "..", "..", "build", "libemaclient.so"))
    paths.append(tree)
    return paths, False


def _load():
    paths, explicit = _candidates()
    tried = []
    for p in paths:
        if explicit or os.path.exists(p):
            try:
                return ctypes.CDLL(p), p
            except OSError as e:
                tried.append("%s (%s)" % (p, e))
                if explicit:
                    break
        else:
            tried.append("%s (missing)" % p)
    if not explicit:
        for name in ("libemaclient.so.0", ctypes.util.find_library("emaclient")):
            if not name:
                continue
            try:
                return ctypes.CDLL(name), name
            except OSError as e:
                tried.append("%s (%s)" % (name, e))
    raise ImportError(
        "emaclient: cannot load libemaclient (build it with `make`, install it with "
        "`make install`, or point EMACLIENT_LIB at it); tried: " + "; ".join(tried))


def _declare(cdll, path):
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            raise ImportError("emaclient: %s lacks %s (a libemaclient older than this "
                              "package?)" % (path, name)) from None
        fn.restype = restype
        fn.argtypes = argtypes
    return cdll


lib, lib_path = _load()
_declare(lib, lib_path)
