"""Checkpoints without pickle: one file = magic + JSON header + msgpack payload of numpy arrays.

* The payload is the train state (and the driver's state) as a msgpack tree of plain arrays
  (``flax.serialization``); loading only decodes numbers. The header (format version, config, network signature,
  every leaf's shape, host counters, the payload's size and SHA-256) makes a bad or foreign file refused clearly.
* Reading is bounded: regular files only (never a symlink, FIFO, device or directory), a header of at most
  ``MAX_HEADER_BYTES``, every header field type- and range-checked, the payload's size checked before it is read.
* Writes are atomic (a temp file unique to the process, fsync, rename); before pruning to the newest ``keep``,
  unusable checkpoints are renamed ``*.orphaned`` (never loaded, counted or deleted). NaN/inf states are refused.

See docs/checkpoints.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct as _struct
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import serialization

from ppolab import runlock as _rl
from ppolab.runlock import NotRegularFileError, RunWriteError, cut, short_repr

MAGIC = b"PPOLABCK"
FORMAT_VERSION = 1
#: the largest JSON header read (a real one is a few KiB: the config and one signature line per array)
MAX_HEADER_BYTES = 4 * 2**20
#: the largest number of host-counter returns per agent (the trainer keeps the last 100)
MAX_RECENT = 100
_PREFIX = len(MAGIC) + 8
_NAME = re.compile(r"^ckpt-(\d{8,})\.ppolab$")
_DTYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
#: numpy dtype kinds a payload leaf may have (bool, int, uint, float, complex): never object, string or void.
_PLAIN_KINDS = "biufc"
#: Test hook: seconds to sleep between writing the temp file and renaming it (to SIGKILL a writer mid-checkpoint).
_SLOW_ENV = "PPOLAB_TEST_SLOW_CKPT"
_MEMORY = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # no payload is larger than the machine's memory
_verified: dict[tuple, tuple] = {}  # (path, dev, ino, size, mtime_ns) -> ("ok", layout) or ("bad", reason)


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the reason."""


class CheckpointWriteError(CheckpointError, RunWriteError):
    """A checkpoint cannot be written (disk full, permissions, read-only file system): also a ``RunWriteError``."""

    __init__ = RunWriteError.__init__


class _Unreadable(CheckpointError):
    """An OS error while reading (e.g. permissions): not proof that the file is bad, so it is never orphaned."""


def _signature(tree) -> list:
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.asarray(x).dtype)]
            for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def _encode(tree, header: dict) -> tuple[bytes, dict]:
    host = jax.tree_util.tree_map(np.asarray, tree)
    payload = serialization.msgpack_serialize(serialization.to_state_dict(host))
    header = dict(header, format_version=FORMAT_VERSION, payload_sha256=hashlib.sha256(payload).hexdigest(),
                  payload_bytes=len(payload), leaves=_signature(host))
    hdr = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _struct.pack("<II", FORMAT_VERSION, len(hdr)) + hdr + payload, header


def encode(tree, header: dict) -> bytes:
    """The bytes of a checkpoint file holding ``tree`` (any pytree of arrays) and ``header``."""
    return _encode(tree, header)[0]


# ---- reading: bounded, regular files only ------------------------------------------------------------------------
def _read_exact(fd: int, offset: int, n: int, path: Path) -> bytes:
    chunks, got = [], 0
    while got < n:
        try:
            chunks.append(os.pread(fd, min(n - got, 2**26), offset + got))
        except OSError as e:
            raise _Unreadable(f"cannot read checkpoint {path}: {e.strerror}") from None
        if not chunks[-1]:
            raise CheckpointError(f"{path} is truncated (it shrank while being read)")
        got += len(chunks[-1])
    return b"".join(chunks)


def _json_number(s: str) -> int | float:
    """A header's numbers: at most 40 characters (json raises a bare ValueError past 4300 digits), finite."""
    x = float(s) if len(s) <= 40 else math.nan
    if not math.isfinite(x):
        raise ValueError(f"a number out of range ({cut(s, 24)})")
    return int(s) if s.lstrip("-").isdigit() else x


_is_int = lambda v, lo, hi: type(v) is int and lo <= v < hi  # noqa: E731 (bool is not an int here)
_finite = lambda x, bound: type(x) in (int, float) and math.isfinite(x) and abs(x) < bound


def _layout_ok(leaves) -> bool:
    """[[path, shape, dtype], ...] with plain, bounded values."""
    return isinstance(leaves, list) and all(
        isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and len(e[0]) <= 1000
        and isinstance(e[1], list) and len(e[1]) <= 32 and all(_is_int(d, 0, 2**40) for d in e[1])
        and isinstance(e[2], str) and _DTYPE.match(e[2]) for e in leaves)


def _header_problem(h) -> str | None:
    """Why ``h`` is not a well-formed header (None if it is): every field the loader relies on is checked."""
    if not isinstance(h, dict):
        return "not a JSON object"
    checks = (("format_version", _is_int(h.get("format_version"), FORMAT_VERSION, FORMAT_VERSION + 1)),
              ("iteration", _is_int(h.get("iteration"), 0, 2**31)),
              ("payload_bytes", _is_int(h.get("payload_bytes"), 0, 2**62)),
              ("payload_sha256", isinstance(h.get("payload_sha256"), str) and _SHA.match(h["payload_sha256"])),
              ("leaves", _layout_ok(h.get("leaves"))),
              ("agents", "agents" not in h or _is_int(h["agents"], 1, 2**31)),
              ("network", "network" not in h or isinstance(h["network"], str) and len(h["network"]) <= 10_000),
              ("config", "config" not in h or isinstance(h["config"], dict)))
    bad = [name for name, ok in checks if not ok]
    return f"missing or malformed fields: {', '.join(bad)}" if bad else None


def _read_head(fd: int, size: int, path: Path) -> tuple[dict, int]:
    """(checked header, payload offset) of an open checkpoint; the payload is not read."""
    head = _read_exact(fd, 0, min(size, _PREFIX), path)
    if len(head) < _PREFIX:
        if head and MAGIC.startswith(head[: len(MAGIC)]):
            raise CheckpointError(f"{path} is truncated ({len(head)} bytes)")
        raise CheckpointError(f"{path} is not a ppolab checkpoint (bad magic bytes)")
    if head[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a ppolab checkpoint (bad magic bytes)")
    version, hlen = _struct.unpack("<II", head[len(MAGIC):])
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this ppolab reads version {FORMAT_VERSION}")
    if _PREFIX + hlen > size:
        raise CheckpointError(f"{path} is truncated (header cut short)")
    if hlen > MAX_HEADER_BYTES:
        raise CheckpointError(f"{path} has a corrupted header ({hlen} bytes, more than the limit of "
                              f"{MAX_HEADER_BYTES}); refused")
    try:
        header = json.loads(_read_exact(fd, _PREFIX, hlen, path).decode(), parse_int=_json_number,
                            parse_float=_json_number, parse_constant=_json_number)
    except (UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path} has a corrupted header") from None
    except ValueError as e:  # JSONDecodeError, or one of the bounds above
        raise CheckpointError(f"{path} has a corrupted header ({cut(e, 100)})") from None
    problem = _header_problem(header)
    if problem:
        raise CheckpointError(f"{path} has a corrupted header ({problem})")
    if header["payload_bytes"] != size - _PREFIX - hlen:
        raise CheckpointError(f"{path} is truncated or corrupted (payload checksum mismatch); its payload is "
                              f"{size - _PREFIX - hlen} bytes, the header says {header['payload_bytes']}")
    return header, _PREFIX + hlen


def _load(path: Path, check: Callable[[dict], int] | None = None) -> tuple[dict, bytes]:
    """(header, payload). ``check(header)`` (before the payload is read) raises or returns the payload size bound."""
    path = Path(path)
    try:
        fd = _rl.open_regular(path)
    except NotRegularFileError as e:
        raise CheckpointError(f"{path} is not a regular file ({e}); refused") from None
    except OSError as e:
        raise _Unreadable(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        header, offset = _read_head(fd, st.st_size, path)
        limit = check(header) if check is not None else _MEMORY
        if header["payload_bytes"] > limit:
            raise CheckpointError(f"{path} has a payload of {header['payload_bytes']} bytes, more than its arrays "
                                  f"can need ({limit}); refused")
        payload = _read_exact(fd, offset, header["payload_bytes"], path)
    finally:
        os.close(fd)
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CheckpointError(f"{path} is truncated or corrupted (payload checksum mismatch)")
    _remember(path, st, header)
    return header, payload


def read_header(path: Path) -> tuple[dict, bytes]:
    """(checked header, checksummed payload bytes) of a checkpoint file, or ``CheckpointError``."""
    return _load(path)


def _payload_bound(host_template) -> int:
    """Generous upper bound of the msgpack size of ``host_template`` (raw bytes + keys + framing per array)."""
    leaves = jax.tree_util.tree_leaves_with_path(host_template)
    return sum(x.nbytes + len(jax.tree_util.keystr(p)) + 64 + 10 * x.ndim for p, x in leaves) + 2**20


def decode(path: Path, template, expect: dict | None = None):
    """Restore ``template``'s structure from ``path``. ``expect``: header fields that must match (e.g. the network
    and space signature), else the checkpoint is foreign. Returns (tree, header)."""
    host_template = jax.tree_util.tree_map(np.asarray, template)
    want = _signature(host_template)

    def check(header: dict) -> int:
        for k, v in (expect or {}).items():
            if header.get(k) != v:
                raise CheckpointError(f"{path} belongs to another run: its {k} is {short_repr(header.get(k), 300)}, "
                                      f"this run has {short_repr(v, 300)}")
        if header["leaves"] != want:
            raise CheckpointError(f"{path} does not match this run's network/state layout (foreign checkpoint)")
        return _payload_bound(host_template)

    header, payload = _load(path, check)
    try:
        tree = serialization.from_state_dict(host_template, _restore(path, payload))
    except CheckpointError:
        raise
    except Exception as e:  # malformed payload that passed the checksum: still refuse, never crash
        raise CheckpointError(f"{path} payload cannot be decoded: {type(e).__name__}: {cut(e)}") from None
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        if not isinstance(x, np.ndarray | np.generic) or x.dtype.kind not in _PLAIN_KINDS:
            raise CheckpointError(f"{path} payload leaf {jax.tree_util.keystr(p)} is not a numeric array "
                                  f"({type(x).__name__}); refused")
    if _signature(tree) != header["leaves"]:
        raise CheckpointError(f"{path} payload does not match its header")
    return tree, header


def _restore(path: Path, payload: bytes):
    try:
        return serialization.msgpack_restore(payload)
    except Exception as e:  # malformed payload that passed the checksum: still refuse, never crash
        raise CheckpointError(f"{path} payload cannot be decoded: {type(e).__name__}: {cut(e)}") from None


def read(path: Path) -> tuple[dict, dict]:
    """(payload as a nested dict of numpy arrays, header) without a template: for inspection and tools."""
    header, payload = read_header(path)
    return _restore(path, payload), header


def host_counters(header: dict, num_agents: int) -> dict | None:
    """The header's host counters ``{"episodes": int, "wall_time_s": float, "recent": [[float, ...] per agent]}``
    if well formed, else None (the caller starts them from zero). The header is data from a file: episodes must be
    an int in [0, 2**53), wall_time_s a finite number in [0, 1e9) seconds, recent one list per agent of at most
    ``MAX_RECENT`` finite returns of magnitude < 1e12."""
    host = header.get("host") if isinstance(header, dict) else None
    if not isinstance(host, dict) or not _is_int(num_agents, 1, 2**31):
        return None
    episodes, wall, recent = host.get("episodes"), host.get("wall_time_s"), host.get("recent")
    if not _is_int(episodes, 0, 2**53) or not _finite(wall, 1e9) or wall < 0 or not isinstance(recent, list) or len(
            recent) != num_agents or not all(isinstance(r, list) and len(r) <= MAX_RECENT
                                             and all(_finite(x, 1e12) for x in r) for r in recent):
        return None
    return {"episodes": episodes, "wall_time_s": float(wall), "recent": [[float(x) for x in r] for r in recent]}


def nonfinite_leaves(tree) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` that hold NaN or inf."""
    return [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(tree)
            if np.asarray(x).dtype.kind in "fc" and not np.all(np.isfinite(np.asarray(x)))]


# ---- writing ------------------------------------------------------------------------------------------------------
def _write_error(path: Path, e: OSError | RunWriteError, what: str = "write checkpoint") -> CheckpointWriteError:
    earlier = [p for p in list_checkpoints(path.parent) if p.name != path.name]
    kept = "the previous checkpoints are kept" if earlier else "no earlier checkpoint exists"
    cause = e.strerror if isinstance(e, OSError) else e.cause
    return CheckpointWriteError(f"cannot {what} {path}: {cause}; {kept}", path, e.errno, cause)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing (``runlock.write_atomic``); a failure (disk full, permissions,
    read-only) raises ``CheckpointWriteError`` naming the file and the cause; ``path`` is as it was, no temp left."""
    slow = os.environ.get(_SLOW_ENV)
    try:
        _rl.write_atomic(path, data, before_rename=(lambda: time.sleep(float(slow))) if slow else None)
    except RunWriteError as e:
        raise _write_error(Path(path), e) from None


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    if not (ckpt_dir := Path(ckpt_dir)).is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1]))


def iteration_of(path: Path) -> int:
    return int(_NAME.match(Path(path).name)[1])


def _layout(header: dict) -> tuple:
    leaves = hashlib.sha256(json.dumps(header.get("leaves")).encode()).hexdigest()
    return leaves, header.get("network"), header.get("agents")


def _remember(path: Path, st: os.stat_result, header: dict) -> None:
    if len(_verified) > 4096:
        _verified.clear()
    _verified[(str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)] = ("ok", _layout(header))


def _verdict(path: Path) -> tuple[str, object]:
    """("ok", layout) | ("bad", reason) | ("unreadable", reason); each version of a file is read once per process
    (files this process wrote or loaded are known already)."""
    try:
        st = os.lstat(path)
        key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _verified:
            _load(path)
    except (OSError, _Unreadable) as e:
        return "unreadable", str(e)  # e.g. permissions: leave it alone, but never count it as good
    except CheckpointError as e:
        _verified[key] = ("bad", str(e))
    return _verified.get(key, ("unreadable", "changed while being verified"))


def _orphan(path: Path) -> Path:
    """Rename ``path`` to ``path.orphaned`` (``path.N.orphaned`` if taken): kept for inspection, never loaded."""
    n = next(n for n in range(2**20) if not os.path.lexists(f"{path}{f'.{n}' if n else ''}.orphaned"))
    dst = path.with_name(f"{path.name}{f'.{n}' if n else ''}.orphaned")
    try:
        path.rename(dst)
    except OSError as e:
        raise _write_error(path, e, "rename unusable checkpoint") from None
    return dst


def _prune(ckpt_dir: Path, new: Path, header: dict, keep: int, warn: Callable[[str], None]) -> None:
    """Orphan every unusable or foreign checkpoint, then delete the oldest good ones beyond ``keep``."""
    mine, good = _layout(header), []
    for p in list_checkpoints(ckpt_dir):
        kind, info = ("ok", mine) if p == new else _verdict(p)
        if kind == "ok" and info != mine:
            kind, info = "bad", f"{p} belongs to another run (another network, state layout or number of agents)"
        if kind == "ok":
            good.append(p)
        elif kind == "bad":
            warn(f"orphaned unusable checkpoint {_orphan(p).name}: {info}")
    for old in good[:-keep]:
        try:
            old.unlink(missing_ok=True)
        except OSError as e:
            raise _write_error(old, e, "remove old checkpoint") from None


def save(ckpt_dir: Path, iteration: int, tree, header: dict, keep: int = 3,
         check_finite: bool = True, *, warn: Callable[[str], None] | None = None) -> tuple[Path, float, int]:
    """Write checkpoint ``iteration`` atomically and prune to the newest ``keep``. Returns (path, seconds, bytes).

    ``check_finite``: refuse (``CheckpointError``) a tree whose ``train_state`` (or, without that key, any leaf)
    holds NaN or inf. Checkpoints numbered after ``iteration`` (an abandoned timeline, e.g. unusable ones skipped by
    a resume) and unusable or foreign ones are renamed ``*.orphaned`` (reported through ``warn``) before pruning, so
    that pruning never deletes a good checkpoint in their favour. A failed write raises ``CheckpointWriteError``."""
    t0 = time.perf_counter()
    if keep < 1:
        raise CheckpointError(f"keep must be >= 1 (got {keep})")
    ckpt_dir = Path(ckpt_dir)
    if check_finite:
        bad = nonfinite_leaves(tree["train_state"] if isinstance(tree, dict) and "train_state" in tree else tree)
        if bad:
            raise CheckpointError(f"refusing to write checkpoint {iteration}: non-finite values in "
                                  f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
    path = ckpt_dir / f"ckpt-{int(iteration):08d}.ppolab"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e) from None
    data, full = _encode(tree, dict(header, iteration=int(iteration), saved_at=time.time()))
    for later in list_checkpoints(ckpt_dir):
        if iteration_of(later) > int(iteration):
            _orphan(later)
    atomic_write(path, data)
    _remember(path, os.lstat(path), full)
    _prune(ckpt_dir, path, full, keep, warn or (lambda m: None))
    _rl.remove_stale_temps(ckpt_dir, r"ckpt-\d{8,}\.ppolab")  # left by killed writers; never a live one's
    return path, time.perf_counter() - t0, len(data)


def restore_latest(ckpt_dir: Path, template, expect: dict | None = None, warn=print):
    """Newest checkpoint that loads; unusable ones (corrupt, foreign, hostile, not a regular file) are reported
    (``skipping checkpoint: REASON``, one line each) and skipped; the next write orphans them. Raises if none loads."""
    files = list_checkpoints(ckpt_dir)
    if not files:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    errors = []
    for path in reversed(files):
        try:
            return decode(path, template, expect) + (path,)
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"skipping checkpoint: {e}")
    raise CheckpointError("no usable checkpoint: " + "; ".join(errors))
