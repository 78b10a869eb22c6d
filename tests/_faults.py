"""Fault injection for the tests: tiny tmpfs mounts (a full disk, a read-only file system), ``chattr +i`` (EPERM even
for root, who bypasses permission bits), and a guard that turns a hang into a failure instead of a stuck session.

Mounting needs root (CAP_SYS_ADMIN): without it the tests that need a mount are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


class TinyFS:
    """Mounts made by one test; all of them are unmounted (lazily if busy) at its end."""

    def __init__(self):
        self.mounts: list[Path] = []

    def mount(self, path: Path, size: str = "300k") -> Path:
        """A fresh tmpfs of ``size`` at ``path`` (created if needed); skips the test if mounting is impossible."""
        if os.geteuid() != 0:
            pytest.skip("mounting a tiny tmpfs (a full disk) needs root")
        path.mkdir(parents=True, exist_ok=True)
        r = _sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
        self.mounts.append(path)
        return path

    def read_only(self, path: Path) -> None:
        """Remount ``path`` (a mount of this test) read-only: every write then fails with EROFS."""
        r = _sh("mount", "-o", "remount,ro", str(path))
        if r.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only: {r.stderr.strip()}")

    def immutable(self, path: Path) -> None:
        """``chattr +i path``: creating, renaming or deleting in it (a directory) or writing it fails with EPERM."""
        r = _sh("chattr", "+i", str(path))
        if r.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {r.stderr.strip() or r.returncode}")

    def close(self) -> None:
        for m in reversed(self.mounts):
            _sh("chattr", "-R", "-i", str(m))
            if _sh("umount", str(m)).returncode != 0:
                _sh("umount", "-l", str(m))
        self.mounts.clear()


def tiny_mounts():
    """The body of a ``tinyfs`` fixture (``yield from tiny_mounts()``): a TinyFS, cleaned up afterwards."""
    fs = TinyFS()
    try:
        yield fs
    finally:
        fs.close()


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system of ``directory`` with one file until ENOSPC, then free ``leave`` bytes."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def no_hang(fn, timeout: float = 30.0, what: str = "the call"):
    """``fn()`` on a daemon thread: its result, or its exception re-raised; a failure if it runs past ``timeout``
    seconds (the thread is left behind: that is the bug being tested)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{what} hung for more than {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def unblock_fifo(path: Path) -> None:
    """Open a FIFO's write end without blocking, releasing a reader stuck in open() (a hung test's thread)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


def is_errno(e: BaseException, code: int) -> bool:
    return getattr(e, "errno", None) == code or os.strerror(code) in str(e)


ENOSPC, EROFS, EPERM = errno.ENOSPC, errno.EROFS, errno.EPERM
