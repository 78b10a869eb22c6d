"""Checkpoints without pickle: one file = magic + JSON header + msgpack payload of numpy arrays.

* The payload is the train state (and the driver's state, e.g. a JAX env's state pytree) as a msgpack tree of
  plain arrays (``flax.serialization``); loading only decodes numbers, never executes code.
* The header records the format version, the config, the network/space signature, the shapes of every leaf, host
  counters and the payload's SHA-256: a truncated, corrupted or foreign file is refused with a clear message.
* Writes are atomic (temp file in the same directory, fsync, rename, fsync of the directory); the last
  ``keep`` checkpoints are kept, and ``restore_latest`` falls back to the previous good one.
* ``save`` refuses to write a train state holding NaN/inf, so the last good checkpoint is never replaced by a bad one.

See docs/checkpoints.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct as _struct
import time
from pathlib import Path

import jax
import numpy as np
from flax import serialization

MAGIC = b"PPOLABCK"
FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{8,})\.ppolab$")
#: numpy dtype kinds a payload leaf may have (bool, int, uint, float, complex): never object, string or void.
_PLAIN_KINDS = "biufc"
#: Test hook: seconds to sleep between writing the temp file and renaming it (to SIGKILL a writer mid-checkpoint).
_SLOW_ENV = "PPOLAB_TEST_SLOW_CKPT"


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and the reason."""


def _signature(tree) -> list:
    return [[jax.tree_util.keystr(p), list(np.shape(x)), str(np.asarray(x).dtype)]
            for p, x in jax.tree_util.tree_leaves_with_path(tree)]


def encode(tree, header: dict) -> bytes:
    host = jax.tree_util.tree_map(np.asarray, tree)
    payload = serialization.msgpack_serialize(serialization.to_state_dict(host))
    header = dict(header, format_version=FORMAT_VERSION, payload_sha256=hashlib.sha256(payload).hexdigest(),
                  payload_bytes=len(payload), leaves=_signature(host))
    hdr = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _struct.pack("<II", FORMAT_VERSION, len(hdr)) + hdr + payload


def read_header(path: Path) -> tuple[dict, bytes]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if len(data) < len(MAGIC) + 8:
        if data and MAGIC.startswith(data[: len(MAGIC)]):
            raise CheckpointError(f"{path} is truncated ({len(data)} bytes)")
        raise CheckpointError(f"{path} is not a ppolab checkpoint (bad magic bytes)")
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a ppolab checkpoint (bad magic bytes)")
    version, hlen = _struct.unpack("<II", data[len(MAGIC): len(MAGIC) + 8])
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {version}; this ppolab reads version {FORMAT_VERSION}")
    start = len(MAGIC) + 8
    if start + hlen > len(data):
        raise CheckpointError(f"{path} is truncated (header cut short)")
    try:
        header = json.loads(data[start: start + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} has a corrupted header") from None
    if not isinstance(header, dict) or header.get("format_version") != version or not isinstance(
            header.get("leaves"), list) or not isinstance(header.get("iteration"), int):
        raise CheckpointError(f"{path} has a corrupted header (missing or malformed fields)")
    payload = data[start + hlen:]
    if len(payload) != header.get("payload_bytes") or hashlib.sha256(payload).hexdigest() != header.get(
            "payload_sha256"):
        raise CheckpointError(f"{path} is truncated or corrupted (payload checksum mismatch)")
    return header, payload


def decode(path: Path, template, expect: dict | None = None):
    """Restore ``template``'s structure from ``path``. ``expect``: header fields that must match (e.g. the network
    and space signature), else the checkpoint is foreign. Returns (tree, header)."""
    header, payload = read_header(path)
    for k, v in (expect or {}).items():
        if header.get(k) != v:
            raise CheckpointError(f"{path} belongs to another run: its {k} is {header.get(k)!r}, this run has {v!r}")
    host_template = jax.tree_util.tree_map(np.asarray, template)
    if header.get("leaves") != _signature(host_template):
        raise CheckpointError(f"{path} does not match this run's network/state layout (foreign checkpoint)")
    try:
        state_dict = serialization.msgpack_restore(payload)
        tree = serialization.from_state_dict(host_template, state_dict)
    except Exception as e:  # malformed payload that passed the checksum: still refuse, never crash
        raise CheckpointError(f"{path} payload cannot be decoded: {type(e).__name__}: {e}") from None
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        if not isinstance(x, np.ndarray | np.generic) or x.dtype.kind not in _PLAIN_KINDS:
            raise CheckpointError(f"{path} payload leaf {jax.tree_util.keystr(p)} is not a numeric array "
                                  f"({type(x).__name__}); refused")
    if _signature(tree) != header["leaves"]:
        raise CheckpointError(f"{path} payload does not match its header")
    return tree, header


def read(path: Path) -> tuple[dict, dict]:
    """(payload as a nested dict of numpy arrays, header) without a template: for inspection and tools."""
    header, payload = read_header(path)
    try:
        return serialization.msgpack_restore(payload), header
    except Exception as e:
        raise CheckpointError(f"{path} payload cannot be decoded: {type(e).__name__}: {e}") from None


def nonfinite_leaves(tree) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` that hold NaN or inf."""
    out = []
    for p, x in jax.tree_util.tree_leaves_with_path(tree):
        a = np.asarray(x)
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            out.append(jax.tree_util.keystr(p))
    return out


def _fsync_dir(d: Path):
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing. A failed write (disk full, permissions) raises CheckpointError
    and leaves ``path`` as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get(_SLOW_ENV):
            time.sleep(float(os.environ[_SLOW_ENV]))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}; the previous checkpoints are "
                              f"kept") from None
    _fsync_dir(path.parent)


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name)), key=lambda p: int(_NAME.match(p.name)[1]))


def iteration_of(path: Path) -> int:
    return int(_NAME.match(Path(path).name)[1])


def save(ckpt_dir: Path, iteration: int, tree, header: dict, keep: int = 3,
         check_finite: bool = True) -> tuple[Path, float, int]:
    """Write checkpoint ``iteration`` atomically and prune to the newest ``keep``. Returns (path, seconds, bytes).

    ``check_finite``: refuse (``CheckpointError``) a tree whose ``train_state`` (or, without that key, any leaf)
    holds NaN or inf, so that a bad state never replaces the last good checkpoint. Checkpoints numbered after
    ``iteration`` (left by an abandoned timeline, e.g. unusable ones skipped by a resume) are renamed to
    ``*.orphaned`` so that pruning can never delete the checkpoint just written in their favour.
    """
    t0 = time.perf_counter()
    if keep < 1:
        raise CheckpointError(f"keep must be >= 1 (got {keep})")
    ckpt_dir = Path(ckpt_dir)
    if check_finite:
        bad = nonfinite_leaves(tree["train_state"] if isinstance(tree, dict) and "train_state" in tree else tree)
        if bad:
            raise CheckpointError(f"refusing to write checkpoint {iteration}: non-finite values in "
                                  f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    data = encode(tree, dict(header, iteration=int(iteration), saved_at=time.time()))
    path = ckpt_dir / f"ckpt-{int(iteration):08d}.ppolab"
    for later in list_checkpoints(ckpt_dir):
        if iteration_of(later) > int(iteration):
            later.replace(later.with_name(later.name + ".orphaned"))
    atomic_write(path, data)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in ckpt_dir.glob(".ckpt-*.tmp-*"):  # left by a killed writer
        if not str(stale).endswith(f"-{os.getpid()}"):
            stale.unlink(missing_ok=True)
    return path, time.perf_counter() - t0, len(data)


def restore_latest(ckpt_dir: Path, template, expect: dict | None = None, warn=print):
    """Newest checkpoint that loads; corrupt or foreign ones are reported and skipped. Raises if none loads."""
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
