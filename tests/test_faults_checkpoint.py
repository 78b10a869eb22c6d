"""Issue 16, checkpoints: hostile files are skipped (never read unboundedly, never hang) and orphaned, a good
checkpoint is never pruned in favour of an unusable one, temp files are per process, and a write on a full, read-only
or immutable file system fails with one CheckpointWriteError naming the file and the cause."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _faults import fill, no_hang, tiny_mounts, unblock_fifo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppolab import checkpoint as ck
from ppolab.checkpoint import CheckpointError, CheckpointWriteError
from ppolab.runlock import RunWriteError


def tree(v: float = 1.0, n: int = 3) -> dict:
    return {"train_state": {"w": np.full((n,), v, np.float32), "step": np.asarray(7, np.int32)}, "driver_state": None}


def names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def forge(path: Path, header: dict | bytes, payload: bytes = b"") -> Path:
    """A checkpoint file with this header (a dict, completed with a valid payload size and checksum, or raw bytes)."""
    if isinstance(header, dict):
        header = json.dumps(dict(header, payload_bytes=len(payload),
                                 payload_sha256=hashlib.sha256(payload).hexdigest())).encode()
    path.write_bytes(ck.MAGIC + struct.pack("<II", ck.FORMAT_VERSION, len(header)) + header + payload)
    return path


@pytest.fixture
def tinyfs():
    yield from tiny_mounts()


@pytest.fixture
def good(tmp_path):
    """checkpoints/ with a good ckpt-1; returns (dir, its header, its payload)."""
    d = tmp_path / "checkpoints"
    ck.save(d, 1, tree(), {"agents": 1})
    header, payload = ck.read_header(d / "ckpt-00000001.ppolab")
    return d, header, payload


def restores_the_good_one(d: Path, *reason: str) -> list[str]:
    warnings = []
    t, header, path = no_hang(lambda: ck.restore_latest(d, tree(0.0), warn=warnings.append), 30, "restore_latest")
    assert path.name == "ckpt-00000001.ppolab" and header["iteration"] == 1 and t["train_state"]["w"][0] == 1.0
    assert len(warnings) == 1 and "\n" not in warnings[0] and all(r in warnings[0] for r in reason), warnings
    return warnings


# ---- files that are not regular files ------------------------------------------------------------------------------
def test_symlink_to_dev_zero_is_refused_without_reading(good):
    d, _, _ = good
    (d / "ckpt-00000002.ppolab").symlink_to("/dev/zero")
    restores_the_good_one(d, "ckpt-00000002.ppolab is not a regular file (a symbolic link); refused")
    (d / "ckpt-00000003.ppolab").symlink_to(d / "ckpt-00000001.ppolab")  # even one to a good checkpoint
    with pytest.raises(CheckpointError, match="a symbolic link"):
        ck.decode(d / "ckpt-00000003.ppolab", tree(0.0))


def test_fifo_never_hangs(good):
    d, _, _ = good
    fifo = d / "ckpt-00000002.ppolab"
    os.mkfifo(fifo)
    try:
        restores_the_good_one(d, "is not a regular file (a FIFO)")
    finally:
        unblock_fifo(fifo)


def test_device_and_directory_are_refused(good):
    d, _, _ = good
    (d / "ckpt-00000002.ppolab").mkdir()
    with pytest.raises(CheckpointError, match="not a regular file \\(a directory\\)"):
        ck.read_header(d / "ckpt-00000002.ppolab")
    try:
        os.mknod(d / "ckpt-00000003.ppolab", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    except (PermissionError, OSError) as e:
        pytest.skip(f"cannot create a device node here: {e}")
    with pytest.raises(CheckpointError, match="not a regular file \\(a device\\)"):
        no_hang(lambda: ck.read_header(d / "ckpt-00000003.ppolab"), 20)


# ---- hostile headers -----------------------------------------------------------------------------------------------
def test_integer_of_5000_digits_is_one_checkpoint_error(good):
    d, header, payload = good
    text = json.dumps(dict(header, saved_at=0)).replace('"saved_at": 0', '"saved_at": ' + "9" * 5000).encode()
    forge(d / "ckpt-00000002.ppolab", text, payload)
    with pytest.raises(CheckpointError, match="corrupted header \\(a number out of range"):
        ck.decode(d / "ckpt-00000002.ppolab", tree(0.0))
    restores_the_good_one(d, "corrupted header")


def test_header_over_the_limit_is_refused_before_it_is_read(good):
    d, header, payload = good
    big = json.dumps(header).encode()
    big = big[:-1] + b" " * (ck.MAX_HEADER_BYTES + 1 - len(big)) + b"}"  # valid JSON, just too long
    forge(d / "ckpt-00000002.ppolab", big, payload)
    with pytest.raises(CheckpointError, match=f"more than the limit of {ck.MAX_HEADER_BYTES}"):
        ck.decode(d / "ckpt-00000002.ppolab", tree(0.0))
    sparse = d / "ckpt-00000003.ppolab"  # a 100 MB header that takes no disk space: refused without reading it
    sparse.write_bytes(ck.MAGIC + struct.pack("<II", ck.FORMAT_VERSION, 100 * 2**20))
    os.truncate(sparse, 100 * 2**20 + 16)
    with pytest.raises(CheckpointError, match="more than the limit"):
        no_hang(lambda: ck.read_header(sparse), 20)


def test_payload_larger_than_the_template_needs_is_refused_before_it_is_read(good):
    d, header, _ = good
    hdr = json.dumps(dict(header, payload_bytes=2**28, payload_sha256="0" * 64)).encode()
    bad = d / "ckpt-00000002.ppolab"
    bad.write_bytes(ck.MAGIC + struct.pack("<II", ck.FORMAT_VERSION, len(hdr)) + hdr)
    os.truncate(bad, bad.stat().st_size + 2**28)  # sparse: 256 MiB of payload that takes no disk space
    with pytest.raises(CheckpointError, match="more than its arrays can need"):
        no_hang(lambda: ck.decode(bad, tree(0.0)), 20)


@pytest.mark.parametrize("field, value", [
    ("iteration", -7), ("iteration", 2**31), ("iteration", True), ("iteration", 1.5), ("iteration", 1e30),
    ("iteration", "7"), ("iteration", float("nan")), ("iteration", float("inf")), ("iteration", None),
    ("format_version", 1.0), ("format_version", True), ("leaves", [[1, 2, 3]]), ("leaves", [["w", [-1], "int32"]]),
    ("leaves", [["w", [3], "float32 " * 40]]), ("leaves", {"w": 1}), ("agents", 0), ("agents", -1),
    ("network", 5), ("config", [1]),
])
def test_out_of_range_header_fields_are_refused(good, field, value):
    d, header, payload = good
    forge(d / "ckpt-00000002.ppolab", dict(header, **{field: value}), payload)  # json.dumps writes NaN, Infinity
    with pytest.raises(CheckpointError, match="corrupted header"):
        ck.read_header(d / "ckpt-00000002.ppolab")
    restores_the_good_one(d, "corrupted header")


def test_payload_size_and_checksum_fields_are_checked(good):
    d, header, payload = good
    for patch in ({"payload_bytes": -1}, {"payload_bytes": 10**30}, {"payload_sha256": "x" * 64}):
        hdr = json.dumps(dict(header, **patch)).encode()
        (d / "ckpt-00000002.ppolab").write_bytes(ck.MAGIC + struct.pack("<II", 1, len(hdr)) + hdr + payload)
        with pytest.raises(CheckpointError, match="corrupted header"):
            ck.read_header(d / "ckpt-00000002.ppolab")


def test_messages_of_foreign_checkpoints_are_bounded(good):
    d, header, payload = good
    forge(d / "ckpt-00000002.ppolab", dict(header, network="n" * 9000), payload)
    with pytest.raises(CheckpointError, match="belongs to another run") as e:
        ck.decode(d / "ckpt-00000002.ppolab", tree(0.0), {"network": "mine"})
    assert len(str(e.value)) < 500


# ---- host counters -------------------------------------------------------------------------------------------------
def test_host_counters_are_type_and_range_checked():
    ok = {"episodes": 12, "wall_time_s": 3.5, "recent": [[1.0, -2.5, 3]]}
    assert ck.host_counters({"host": ok}, 1) == {"episodes": 12, "wall_time_s": 3.5, "recent": [[1.0, -2.5, 3.0]]}
    assert ck.host_counters({"host": dict(ok, recent=[[], []])}, 2)["recent"] == [[], []]
    nan, inf = float("nan"), float("inf")
    for bad in ({"episodes": -7}, {"episodes": True}, {"episodes": 1.0}, {"episodes": "9"}, {"episodes": 2**60},
                {"wall_time_s": nan}, {"wall_time_s": inf}, {"wall_time_s": 1e30}, {"wall_time_s": -1.0},
                {"wall_time_s": None}, {"recent": [[nan]]}, {"recent": [[1e30]]}, {"recent": [[True]]},
                {"recent": [["1"]]}, {"recent": [[1.0] * 101]}, {"recent": [[1.0], [2.0]]}, {"recent": 3},
                {"recent": [3]}):
        assert ck.host_counters({"host": dict(ok, **bad)}, 1) is None, bad
    for header in ({}, {"host": "text"}, {"host": None}, "text", None, {"host": {"recent": 3}}):
        assert ck.host_counters(header, 1) is None
    assert ck.host_counters({"host": ok}, 0) is None


# ---- pruning and orphans -------------------------------------------------------------------------------------------
def test_corrupt_checkpoint_older_than_the_next_write_is_orphaned_not_counted(tmp_path):
    """Issue 16 (6): a corrupt file counted toward keep got a good older checkpoint deleted."""
    ck.save(tmp_path, 4, tree(4), {})
    (tmp_path / "ckpt-00000006.ppolab").write_bytes(b"PPOLABCK corrupt")
    ck.save(tmp_path, 8, tree(8), {}, keep=2)
    assert names(tmp_path) == ["ckpt-00000004.ppolab", "ckpt-00000006.ppolab.orphaned", "ckpt-00000008.ppolab"]
    for i in (9, 10, 11):
        ck.save(tmp_path, i, tree(i), {}, keep=2)
    assert names(tmp_path) == ["ckpt-00000006.ppolab.orphaned", "ckpt-00000010.ppolab", "ckpt-00000011.ppolab"]
    (tmp_path / "ckpt-00000012.ppolab").write_bytes(b"garbage")
    warnings = []
    ck.save(tmp_path, 13, tree(13), {}, keep=2, warn=warnings.append)
    assert len(warnings) == 1 and "orphaned unusable checkpoint ckpt-00000012.ppolab.orphaned: " in warnings[0]
    assert "bad magic bytes" in warnings[0]


def test_foreign_and_hostile_checkpoints_are_orphaned_and_orphans_never_overwritten(tmp_path):
    ck.save(tmp_path, 1, tree(1), {})
    ck.save(tmp_path / "other", 2, tree(2, n=5), {})  # another layout
    (tmp_path / "other" / "ckpt-00000002.ppolab").rename(tmp_path / "ckpt-00000002.ppolab")
    (tmp_path / "ckpt-00000003.ppolab").symlink_to("/dev/zero")
    (tmp_path / "ckpt-00000002.ppolab.orphaned").write_bytes(b"an earlier orphan")
    ck.save(tmp_path, 4, tree(4), {}, keep=2)
    assert names(tmp_path) == ["ckpt-00000001.ppolab", "ckpt-00000002.ppolab.1.orphaned",
                               "ckpt-00000002.ppolab.orphaned", "ckpt-00000003.ppolab.orphaned",
                               "ckpt-00000004.ppolab", "other"]
    assert (tmp_path / "ckpt-00000002.ppolab.orphaned").read_bytes() == b"an earlier orphan"


# ---- temp files ----------------------------------------------------------------------------------------------------
def test_temp_files_are_unique_per_process_and_only_own_or_dead_ones_are_removed(tmp_path, monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".ckpt-00000005.ppolab.tmp-{sleeper.pid}-0123abcd"  # another live writer's
        live.write_bytes(b"in progress")
        dead = tmp_path / ".ckpt-00000002.ppolab.tmp-999999"
        dead.write_bytes(b"left by a killed writer")
        renamed = []
        real_replace = os.replace
        monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(Path(a).name), real_replace(a, b)))
        ck.save(tmp_path, 1, tree(), {})
        monkeypatch.undo()
        assert re.fullmatch(rf"\.ckpt-00000001\.ppolab\.tmp-{os.getpid()}-[0-9a-f]{{8}}", renamed[0]), renamed
        assert live.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    ck.save(tmp_path, 2, tree(), {})
    assert not live.exists()  # its writer is gone now


# ---- failed writes -------------------------------------------------------------------------------------------------
def _write_fails(d: Path, cause: str, kept: str = "the previous checkpoints are kept") -> None:
    before = {p.name: p.read_bytes() for p in d.glob("ckpt-*")} if d.is_dir() else {}
    with pytest.raises(CheckpointWriteError) as e:
        ck.save(d, 2, tree(2.0, n=50_000), {})
    msg = str(e.value)
    assert isinstance(e.value, RunWriteError) and isinstance(e.value, CheckpointError)
    assert f"cannot write checkpoint {d / 'ckpt-00000002.ppolab'}: {cause}; {kept}" == msg, msg
    assert e.value.path == str(d / "ckpt-00000002.ppolab")
    if d.is_dir():
        assert {p.name: p.read_bytes() for p in d.glob("ckpt-*")} == before
        assert not list(d.glob(".ckpt-*"))  # no temp file left


def test_full_disk(tinyfs, tmp_path):
    fs = tinyfs.mount(tmp_path / "fs")
    ck.save(fs / "ck", 1, tree(), {})
    fill(fs)
    _write_fails(fs / "ck", "No space left on device")
    tree_, header, _ = ck.restore_latest(fs / "ck", tree(0.0))
    assert header["iteration"] == 1


def test_read_only_file_system(tinyfs, tmp_path):
    fs = tinyfs.mount(tmp_path / "fs")
    ck.save(fs / "ck", 1, tree(), {})
    tinyfs.read_only(fs)
    _write_fails(fs / "ck", "Read-only file system")
    _write_fails(fs / "new", "Read-only file system", "no earlier checkpoint exists")  # mkdir fails


def test_permission_denied(tinyfs, tmp_path):
    fs = tinyfs.mount(tmp_path / "fs")
    ck.save(fs / "ck", 1, tree(), {})
    tinyfs.immutable(fs / "ck")
    _write_fails(fs / "ck", "Operation not permitted")


# ---- property tests: the header parser returns a header or raises CheckpointError, never anything else -------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)
FIELDS = ("format_version", "iteration", "payload_bytes", "payload_sha256", "leaves", "agents", "network", "config")
PROPS = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def parses_or_refuses(path: Path, template=None):
    try:
        out = ck.decode(path, template) if template is not None else ck.read_header(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000
        return None
    return out[1] if template is not None else out[0]


@PROPS
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(tmp_path, data):
    (tmp_path / "ckpt-00000001.ppolab").write_bytes(data)
    assert parses_or_refuses(tmp_path / "ckpt-00000001.ppolab") is None


@PROPS
@given(body=st.binary(max_size=512), hlen=st.integers(0, 2**32 - 1))
def test_arbitrary_bytes_after_a_valid_prefix(tmp_path, body, hlen):
    (tmp_path / "c").write_bytes(ck.MAGIC + struct.pack("<II", ck.FORMAT_VERSION, hlen) + body)
    assert parses_or_refuses(tmp_path / "c") is None


@PROPS
@given(header=json_values, keep=st.sets(st.sampled_from(FIELDS)), extra=st.dictionaries(
    st.sampled_from(FIELDS), json_values, max_size=3))
def test_arbitrary_json_headers(tmp_path, header, keep, extra):
    ck.save(tmp_path, 1, tree(), {})
    real, payload = ck.read_header(tmp_path / "ckpt-00000001.ppolab")
    for h in (header, dict({k: real[k] for k in keep if k in real}, **extra)):
        forge(tmp_path / "ckpt-00000002.ppolab", json.dumps(h).encode(), payload)
        got = parses_or_refuses(tmp_path / "ckpt-00000002.ppolab")
        assert got is None or (isinstance(got, dict) and type(got["iteration"]) is int)
        if isinstance(h, dict):  # now with a valid payload size and checksum: the field checks decide
            forge(tmp_path / "ckpt-00000002.ppolab", h, payload)
        parses_or_refuses(tmp_path / "ckpt-00000002.ppolab", tree(0.0))


@PROPS
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**6))
def test_damaged_real_checkpoints(tmp_path, flips, cut):
    ck.save(tmp_path, 1, tree(), {"agents": 1})
    data = bytearray((tmp_path / "ckpt-00000001.ppolab").read_bytes())
    for pos, x in flips:
        data[pos % len(data)] ^= x
    (tmp_path / "ckpt-00000002.ppolab").write_bytes(bytes(data[: cut % (len(data) + 1)] if cut is not None else data))
    parses_or_refuses(tmp_path / "ckpt-00000002.ppolab")
    parses_or_refuses(tmp_path / "ckpt-00000002.ppolab", tree(0.0))
