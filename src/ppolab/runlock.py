"""One process per run directory: an ``fcntl.flock`` on ``RUN_DIR/.ppolab.lock``, and the error type of failed writes.

* ``RunLock(run_dir)`` (exclusive: ``ppolab train``, fresh or ``--resume``) is held for the whole run;
  ``RunLock(run_dir, shared=True)`` (``ppolab eval``) may be held by several readers at once, never together with an
  exclusive holder. A refused lock raises ``RunLockedError`` at once (never waits), naming the holder's PID.
* The kernel drops a ``flock`` when its process dies (SIGKILL, crash, power loss), so a stale lock file never blocks.
  The file is never deleted (deleting it would let two processes lock two different files): a run directory's
  clean-up (``--overwrite``) must keep ``LOCK_NAME``.
* The file holds one JSON line per holder (PID, mode, command, start time): an exclusive holder truncates it and
  writes its own line, readers append theirs; lines of dead processes are ignored when the holder is named.
* ``RunWriteError``: a file of a run directory cannot be written (disk full, permissions, read-only file system, not a
  regular file). ``ppolab.logging`` and ``ppolab.checkpoint`` (its ``CheckpointWriteError``) raise it.
* Helpers shared by the checkpoint, log and config-file code: ``open_regular`` (never follows a final symlink, never
  blocks on a FIFO, refuses devices and directories), ``write_atomic`` (temp file unique to the process: PID + random
  suffix, fsync, rename, fsync of the directory), ``remove_stale_temps`` (only this process's and dead processes'),
  ``cut`` and ``short_repr`` (bounded one-line messages), ``pid_alive``.

See docs/checkpoints.md.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import json
import os
import re
import reprlib
import secrets
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ppolab.config import ConfigError

LOCK_NAME = ".ppolab.lock"
#: bytes of the lock file read to name its holders (a hostile or overgrown file is never read further)
_READ_LIMIT = 65536
#: a reader appends its line only while the file is smaller than this (readers never truncate it)
_APPEND_LIMIT = 16384


class RunWriteError(RuntimeError):
    """A write to a run directory failed; the message names the file and the cause (one line).

    ``path``: the file; ``cause``: e.g. "No space left on device"; ``errno``: the OS error number, or None."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, errno: int | None = None,
                 cause: str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.errno = errno
        self.cause = cause

    @classmethod
    def of(cls, path: str | os.PathLike, cause: OSError | str, action: str = "write"):
        """``cannot ACTION PATH: CAUSE`` from an OSError (its strerror) or a reason."""
        text = (cause.strerror or str(cause)) if isinstance(cause, OSError) else str(cause)
        return cls(f"cannot {action} {path}: {text}", path, getattr(cause, "errno", None), text)


class RunLockedError(ConfigError):
    """Another process holds the run directory's lock; the message names it."""


class NotRegularFileError(OSError):
    """``open_regular``: the path is a symlink, FIFO, device, socket or directory; ``str()`` says which."""

    def __str__(self) -> str:
        return str(self.strerror)


# ---- bounded messages and hostile files ---------------------------------------------------------------------------
def cut(text, limit: int = 160) -> str:
    """``str(text)`` on one line and at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(v, limit: int = 120) -> str:
    """repr of ``v`` cut to ``limit`` characters: a value from a file never makes an unbounded message (nested
    containers are elided by ``reprlib`` before they are printed)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = limit, limit, 8, 8, 3
    r.maxtuple = r.maxset = r.maxlist
    try:
        return cut(r.repr(v), limit)
    except ValueError:  # e.g. an integer too long to print
        return f"<{type(v).__name__} value>"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (in this PID namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _kind(mode: int) -> str:
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a directory"
            if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device")


def open_regular(path: str | os.PathLike, flags: int = os.O_RDONLY, mode: int = 0o644,
                 follow_symlinks: bool = False) -> int:
    """``os.open`` that only ever returns a descriptor of a regular file: a final symlink (unless
    ``follow_symlinks``), FIFO, device, socket or directory raises ``NotRegularFileError`` ("a FIFO", ...) without
    blocking and, when it exists, without being opened at all; other failures raise the ``OSError``."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(_errno.EINVAL, _kind(st.st_mode))
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as e:
        if e.errno == _errno.ELOOP and not follow_symlinks:
            raise NotRegularFileError(_errno.ELOOP, "a symbolic link") from None
        if e.errno == _errno.ENXIO:  # a FIFO without a reader, opened for writing
            raise NotRegularFileError(_errno.ENXIO, "a FIFO") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFileError(_errno.EINVAL, _kind(st.st_mode))
    os.set_blocking(fd, True)
    return fd


def fsync_dir(d: str | os.PathLike) -> None:
    """fsync a directory (after a rename in it); file systems that cannot do it are ignored."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None],
                 before_rename: Callable[[], None] | None = None, action: str = "write") -> None:
    """Write ``path`` all or nothing: ``data`` (bytes, or a function writing to a binary file) goes to the temp
    file ``.NAME.tmp-PID-RANDOM`` in the same directory (unique to this process), is fsynced and renamed over
    ``path``. A failure raises ``RunWriteError`` naming ``path`` and the cause (an exception of ``data`` itself
    propagates); either way ``path`` is as it was and no temp file is left (except after a KeyboardInterrupt, which
    leaves it to ``remove_stale_temps``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as f:
            data(f) if callable(data) else f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except Exception as e:  # a KeyboardInterrupt (second Ctrl-C) abandons the temp file: the next writer removes it
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RunWriteError.of(path, e, action) from None
        raise
    fsync_dir(path.parent)


def remove_stale_temps(directory: str | os.PathLike, name_pattern: str) -> None:
    """Delete ``write_atomic``'s temp files of ``name_pattern`` (a regex of the final names) left in ``directory``
    by this process or by a dead one (a killed writer); another live process's temp file is never touched."""
    tmp = re.compile(rf"^\.(?:{name_pattern})\.tmp-(\d{{1,10}})(?:-[0-9a-f]{{1,32}})?$")
    with contextlib.suppress(OSError):
        for p in Path(directory).iterdir():
            m = tmp.match(p.name)
            if m and (int(m[1]) == os.getpid() or not pid_alive(int(m[1]))):
                with contextlib.suppress(OSError):
                    p.unlink()


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 80 else text[:77] + "..."


def _entries(fd: int) -> list[dict]:
    """Well-formed holder lines of the lock file (bounded read; anything malformed is ignored)."""
    try:
        raw = os.pread(fd, _READ_LIMIT, 0)
    except OSError:
        return []
    out = []
    for line in raw.decode("utf-8", "replace").splitlines()[:256]:
        try:
            e = json.loads(line) if len(line) <= 1024 else None
        except (ValueError, RecursionError):
            continue
        pid = e.get("pid") if isinstance(e, dict) else None
        if type(pid) is int and 0 < pid < 2**31:
            since = e.get("since")
            out.append({"pid": pid, "mode": "shared" if e.get("mode") == "shared" else "exclusive",
                        "command": str(e.get("command", "?"))[:80],
                        "since": since if isinstance(since, int | float) and 0 < since < 1e11 else None})
    return out


def _when(since: float | None) -> str:
    if since is None:
        return ""
    t = time.localtime(since)
    fmt = "%H:%M:%S" if time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d") else "%Y-%m-%d %H:%M:%S"
    return f", since {time.strftime(fmt, t)}"


def _refusal(run_dir: Path, fd: int, shared: bool) -> RunLockedError:
    live = [e for e in _entries(fd) if pid_alive(e["pid"])]
    holder = next((e for e in live if e["mode"] == "exclusive"), None) or (live[0] if live else None)
    hint = "wait for it to finish" if shared else "wait for it to finish or choose another --run-dir"
    if holder is None:
        return RunLockedError(f"run directory {run_dir} is in use by another process (it holds {run_dir / LOCK_NAME});"
                              f" {hint}")
    verb = "being read" if holder["mode"] == "shared" else "in use"
    return RunLockedError(f"run directory {run_dir} is {verb} by process {holder['pid']} ({holder['command']}"
                          f"{_when(holder['since'])}); {hint}")


class RunLock:
    """The run directory's lock: ``with RunLock(run_dir): ...`` or ``lock = RunLock(run_dir).acquire()`` ...
    ``lock.release()``. ``shared=True``: a reader's lock (eval), compatible with other readers only.

    ``acquire`` raises ``RunLockedError`` (a ``ConfigError``) if it is held elsewhere, ``ConfigError`` if the
    directory does not exist or the lock file is not a regular file, ``RunWriteError`` if an exclusive lock file
    cannot be created or written. A reader on a read-only directory without a lock file proceeds unlocked (no
    training can write there)."""

    def __init__(self, run_dir: str | os.PathLike, shared: bool = False, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.shared = shared
        self.command = command if command is not None else _command()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int | None:
        try:
            try:
                return open_regular(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND)
            except OSError as e:
                if isinstance(e, NotRegularFileError) or not self.shared or e.errno not in (
                        _errno.EROFS, _errno.EACCES, _errno.EPERM):
                    raise
            return open_regular(self.path, os.O_RDONLY)
        except NotRegularFileError as e:
            raise ConfigError(f"{self.path} is {e}, not a regular file; remove it (ppolab creates its own)") from None
        except FileNotFoundError:
            return None  # a reader on a read-only directory without a lock file: nothing can train in it
        except OSError as e:
            raise RunWriteError.of(self.path, e, "create lock file") from None

    def _lock(self, fd: int) -> bool:
        """flock ``fd``; False if the file was replaced meanwhile (try again), raises if held elsewhere."""
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(self.run_dir, fd, self.shared) from None
        try:
            st, mine = os.stat(self.path, follow_symlinks=False), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _record(self, fd: int) -> None:
        line = json.dumps({"pid": os.getpid(), "mode": "shared" if self.shared else "exclusive",
                           "command": self.command, "since": round(time.time(), 3)}) + "\n"
        try:
            if not self.shared:
                os.ftruncate(fd, 0)
            elif os.fstat(fd).st_size >= _APPEND_LIMIT:
                return
            os.write(fd, line.encode())
        except OSError as e:
            if self.shared:
                return  # a reader's line is only informative (e.g. opened read-only)
            raise RunWriteError.of(self.path, e) from None

    def acquire(self) -> RunLock:
        """Take the lock now or raise (see the class); returns self."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        if not self.run_dir.is_dir():
            raise ConfigError(f"run directory {str(self.run_dir)!r} does not exist or is not a directory")
        for _ in range(16):
            fd = self._open()
            if fd is None:
                return self
            try:
                if self._lock(fd):
                    self._record(fd)
                    self._fd = fd
                    return self
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the lock file was deleted or replaced between open and flock: lock the new one
        raise ConfigError(f"{self.path} keeps being replaced by another process; cannot lock {self.run_dir}")

    def release(self) -> None:
        """Give the lock back (an exclusive holder first empties the file). Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if not self.shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)  # also for copies of the descriptor inherited by forked workers
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
