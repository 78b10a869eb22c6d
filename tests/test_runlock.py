"""Issue 16 (2): one process per run directory. A second holder is refused at once naming the first's PID; a lock
left by a SIGKILLed process never blocks; readers (eval) share, but never with a trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _faults import no_hang, tiny_mounts

from ppolab.config import ConfigError
from ppolab.runlock import LOCK_NAME, RunLock, RunLockedError, RunWriteError

HOLDER = """
import sys, time
from ppolab.runlock import RunLock
lock = RunLock(sys.argv[1], shared=sys.argv[2] == "shared", command="ppolab train --run-dir R").acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def tinyfs():
    yield from tiny_mounts()


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of a run directory; yields a function (mode) -> Popen."""
    procs = []

    def start(mode: str = "exclusive", run: Path = tmp_path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run), mode], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        procs.append(p)
        line = no_hang(p.stdout.readline, 120, "starting the lock holder")
        assert line.strip() == "locked", p.stderr.read()
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_second_lock_in_the_same_process_is_refused(tmp_path):
    with RunLock(tmp_path) as first:
        assert first.held
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path).acquire()
        msg = str(e.value)
        assert isinstance(e.value, ConfigError) and "\n" not in msg
        assert msg.startswith(f"run directory {tmp_path} is in use by process {os.getpid()} (")
        assert msg.endswith("wait for it to finish or choose another --run-dir")
        with pytest.raises(RunLockedError):
            RunLock(tmp_path, shared=True).acquire()
    assert not first.held
    RunLock(tmp_path).acquire().release()  # free again
    assert (tmp_path / LOCK_NAME).read_text() == ""  # an exclusive holder empties the file when it is done


def test_another_process_is_refused_and_a_killed_one_never_blocks(tmp_path, holder):
    proc = holder("exclusive")
    entry = json.loads((tmp_path / LOCK_NAME).read_text())
    assert entry["pid"] == proc.pid and entry["mode"] == "exclusive"
    with pytest.raises(RunLockedError, match=rf"is in use by process {proc.pid} \(ppolab train --run-dir R, "
                                             rf"since \d\d:\d\d:\d\d\); wait for it to finish or choose another"):
        no_hang(RunLock(tmp_path).acquire, 10, "a refused lock")
    with pytest.raises(RunLockedError, match=rf"in use by process {proc.pid} .*; wait for it to finish$"):
        RunLock(tmp_path, shared=True).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == proc.pid  # the stale file is still there
    lock = no_hang(RunLock(tmp_path).acquire, 10, "locking after a SIGKILL")
    assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()


def test_readers_share_but_exclude_a_trainer(tmp_path, holder):
    proc = holder("shared")
    with RunLock(tmp_path, shared=True) as mine:  # a second reader is fine
        assert mine.held
    with pytest.raises(RunLockedError, match=rf"is being read by process {proc.pid} "):
        RunLock(tmp_path).acquire()
    proc.kill()
    proc.wait()
    RunLock(tmp_path).acquire().release()


def test_bad_lock_files_and_directories(tmp_path):
    with pytest.raises(ConfigError, match="does not exist or is not a directory"):
        RunLock(tmp_path / "nope").acquire()
    (tmp_path / LOCK_NAME).symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match="is a symbolic link, not a regular file; remove it"):
        RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).unlink()
    (tmp_path / LOCK_NAME).write_text("garbage\n" + "x" * 100_000 + '\n{"pid": ' + "9" * 5000 + "}\n")
    with RunLock(tmp_path) as lock:  # a garbage lock file is no obstacle; it is rewritten
        with pytest.raises(RunLockedError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
        assert lock.held


def test_garbage_from_a_killed_holder_gives_a_plain_refusal(tmp_path):
    with RunLock(tmp_path) as lock:
        os.truncate(lock.path, 0)  # e.g. the holder's line never made it to the disk
        with pytest.raises(RunLockedError, match=f"is in use by another process \\(it holds {lock.path}\\)"):
            RunLock(tmp_path).acquire()


def test_read_only_run_directory(tinyfs, tmp_path):
    run = tinyfs.mount(tmp_path / "run")
    tinyfs.read_only(run)
    with RunLock(run, shared=True) as lock:  # eval of a read-only copy: nothing can train there
        assert not lock.held
    with pytest.raises(RunWriteError, match=f"cannot create lock file {run / LOCK_NAME}: Read-only file system"):
        RunLock(run).acquire()
