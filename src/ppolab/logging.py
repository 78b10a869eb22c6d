"""Metric sinks: metrics.csv (one row per iteration and agent), TensorBoard, and the learning-curve plot.

On resume both continue from the checkpoint's iteration: CSV rows past it are dropped, and TensorBoard is told to
purge events at or after that step, so curves have neither gaps nor duplicates (a metrics.csv that was deleted or
cut short is continued with a warning naming the missing iterations).

Every write is checked and none can hang: metrics.csv and the TensorBoard event file are written by the caller's
thread (the event file as tensorboardX's record format, without its writer thread and queue, whose thread dies on a
full disk and leaves the trainer blocked forever). Any failure (ENOSPC, EPERM, EROFS, a file that is not a regular
file) raises ``RunWriteError`` (defined in ``ppolab.runlock``, re-exported here) naming the file and the cause.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ppolab import runlock as _rl
from ppolab.runlock import RunWriteError
from ppolab.update import METRIC_KEYS

__all__ = ["CSV_FIELDS", "MetricsLogger", "RunWriteError", "plot_learning_curve", "read_metrics"]

CSV_FIELDS = ("iteration", "agent", "env_steps", "time_s", "episodes", "episode_return", "return_recent") + METRIC_KEYS
#: seconds between flushes of the event file's buffer to the OS (tensorboardX's writer used 30 here too)
TB_FLUSH_SECS = 30.0


def _open_append(path: Path):
    """metrics.csv opened for appending (text): a regular file only (never a symlink, FIFO or device)."""
    try:
        fd = _rl.open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as e:
        raise RunWriteError.of(path, e, "open") from None
    return open(fd, "a", newline="", encoding="utf-8")


class MetricsLogger:
    """metrics.csv + (optionally) a TensorBoard event file of one run directory.

    ``resume_iteration``: continue a run from its checkpoint's iteration (rows after it are dropped); ``warn`` gets a
    one-line message when metrics.csv ends before that iteration. Every method raises ``RunWriteError`` on a failed
    write; after one, ``close`` releases the files without raising again."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_iteration: int | None = None,
                 steps_per_iteration: int = 1, *, warn: Callable[[str], None] | None = None, sinks: tuple = ()):
        self.path = Path(run_dir) / "metrics.csv"
        self.sinks = tuple(sinks)  # more destinations of the same rows: ``log(rows)`` and ``close()`` (e.g. W&B)
        self._failed = False
        if resume_iteration is not None:
            _continue(self.path, resume_iteration, warn or (lambda m: None))
        new = not self.path.exists()
        self._file = _open_append(self.path)
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        self._tb = None
        try:
            with self._checked():
                if new:
                    self._csv.writeheader()
                if tensorboard:
                    # TensorBoard steps are env_steps = iteration * steps_per_iteration: purge those past the
                    # checkpoint
                    purge = resume_iteration * steps_per_iteration + 1 if resume_iteration is not None else None
                    self._tb = _EventFile(Path(run_dir) / "tb", purge)
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def _checked(self):
        """Turn an OSError of metrics.csv into RunWriteError; after any failure the logger is closed for writing."""
        if self._failed:
            raise RunWriteError(f"cannot write {self.path}: it was closed after a failed write", self.path)
        try:
            yield
        except OSError as e:
            self._failed = True
            raise RunWriteError.of(self.path, e) from None
        except RunWriteError:
            self._failed = True
            raise

    def log(self, rows: list[dict]):
        with self._checked():
            for row in rows:
                self._csv.writerow({k: _fmt(v) for k, v in row.items()})
                if self._tb is not None:
                    self._tb.add_row(row)
        for sink in self.sinks:
            sink.log(rows)

    def flush(self):
        """Everything logged so far reaches the disk (flushed and fsynced): called before each checkpoint."""
        with self._checked():
            self._file.flush()
            os.fsync(self._file.fileno())
            if self._tb is not None:
                self._tb.flush()

    def close(self):
        """Flush and close; raises ``RunWriteError`` if that fails, unless a failure was raised already. Safe to
        call twice."""
        if self._file.closed:
            return
        try:
            if not self._failed:
                self.flush()
        finally:
            self._failed = True
            with contextlib.suppress(OSError):  # after a failure the buffers may still hold rows: drop them
                self._file.close()
            if self._tb is not None:
                self._tb.close()
            for sink in self.sinks:
                sink.close()


def _continue(path: Path, last_iteration: int, warn: Callable[[str], None]) -> None:
    """Keep the rows of metrics.csv up to ``last_iteration``, rewritten atomically in the current columns through a
    temp file unique to this process. A row cut short by a kill (only rows after the checkpoint can be: the CSV is
    flushed before every checkpoint) is dropped. A missing or cut metrics.csv is reported through ``warn``."""
    if not os.path.lexists(path):
        if last_iteration > 0:
            warn(f"{path} is missing but the checkpoint is at iteration {last_iteration}: iterations "
                 f"1..{last_iteration} are missing from it")
        return
    try:
        src = open(_rl.open_regular(path), newline="", encoding="utf-8", errors="replace")
    except OSError as e:
        raise RunWriteError.of(path, e, "read") from None
    seen = {"end": 0, "damaged": False}

    def rewrite(out) -> None:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="")
        w = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        rows = csv.reader(src)
        try:
            head = next(rows, [])
            for r in rows:
                if len(r) == len(head) and r[0].isdigit() and len(r[0]) < 12 and int(r[0]) <= last_iteration:
                    w.writerow(dict(zip(head, r, strict=True)))
                    seen["end"] = max(seen["end"], int(r[0]))
        except csv.Error:  # e.g. a NUL byte or a field past csv's size limit: keep what came before
            seen["damaged"] = True
        text.flush()
        text.detach()

    with src:
        _rl.write_atomic(path, rewrite, action="rewrite")
    end = seen["end"]
    if seen["damaged"]:
        warn(f"{path} is damaged after iteration {end}; the rest of it was dropped")
    if end < last_iteration:
        warn(f"{path} ends at iteration {end} but the checkpoint is at iteration {last_iteration}: iterations "
             f"{end + 1}..{last_iteration} are missing from it")


@contextlib.contextmanager
def _no_torch():
    """Import tensorboardX without PyTorch: tensorboardX imports torch whenever it is installed (only to convert
    torch tensors, which ppolab never logs), and that costs ~200 MB of memory."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # makes ``import torch`` raise ImportError inside tensorboardX
    try:
        yield
    finally:
        if blocked:
            del sys.modules["torch"]


class _EventFile:
    """One TensorBoard event file, written in the caller's thread in TFRecord framing (length, its masked CRC-32C,
    the serialized ``Event``, its masked CRC-32C) through a 64 KiB buffer flushed every ``TB_FLUSH_SECS``: a failed
    write raises ``RunWriteError`` at once (tensorboardX's writer thread would die and block its queue)."""

    def __init__(self, logdir: Path, purge_step: int | None):
        with _no_torch():
            from tensorboardX.proto.event_pb2 import Event, SessionLog
            from tensorboardX.proto.summary_pb2 import Summary
            from tensorboardX.record_writer import masked_crc32c
        self._Event, self._Summary, self._crc = Event, Summary, masked_crc32c
        # tensorboardX's name, events.out.tfevents.<second>.<host>, plus a nanosecond suffix: a writer opened in the
        # same second as an earlier one (a quick resume) must neither truncate that file nor sort before it
        self.path = logdir / f"events.out.tfevents.{str(time.time())[:10]}.{socket.gethostname()}.{time.time_ns()}"
        try:
            logdir.mkdir(parents=True, exist_ok=True)
            self._file = open(_rl.open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb", 2**16)
        except OSError as e:
            raise RunWriteError.of(self.path, e, "create") from None
        self._flushed = time.monotonic()
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:  # TensorBoard drops the earlier events at steps >= purge_step
            self._write(Event(wall_time=time.time(), step=purge_step, file_version="brain.Event:2"))
            self._write(Event(wall_time=time.time(), step=purge_step,
                              session_log=SessionLog(status=SessionLog.START)))

    def _write(self, event) -> None:
        data = event.SerializeToString()
        head = struct.pack("<Q", len(data))
        try:
            self._file.write(b"".join((head, struct.pack("<I", self._crc(head)), data,
                                       struct.pack("<I", self._crc(data)))))
            if time.monotonic() - self._flushed >= TB_FLUSH_SECS:
                self._file.flush()
                self._flushed = time.monotonic()
        except OSError as e:
            raise RunWriteError.of(self.path, e) from None

    def add_row(self, row: dict) -> None:
        """One event holding all of a metrics row's scalars, at step ``env_steps``."""
        tag = f"agent{row['agent']}/" if row.get("num_agents", 1) > 1 else ""
        values = [self._Summary.Value(tag=f"{tag}{k}", simple_value=float(v))
                  for k in ("episode_return", "return_recent") + METRIC_KEYS
                  if (v := row.get(k)) is not None and not (isinstance(v, float) and math.isnan(v))]
        self._write(self._Event(wall_time=time.time(), step=int(row["env_steps"]),
                                summary=self._Summary(value=values)))

    def flush(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise RunWriteError.of(self.path, e) from None
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Close without raising (MetricsLogger.close flushes first and reports a failure)."""
        with contextlib.suppress(OSError):
            self._file.close()


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def read_metrics(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def plot_learning_curve(run_dir: Path, title: str = "") -> Path:
    """learning_curve.png: recent mean episode return against environment steps, one line per agent. A failed
    write raises ``RunWriteError`` naming the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    curves: dict[str, tuple[list, list]] = {}
    for r in rows:
        if r.get("return_recent") not in (None, ""):
            xs, ys = curves.setdefault(r["agent"], ([], []))
            xs.append(int(r["env_steps"]))
            ys.append(float(r["return_recent"]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for agent, (xs, ys) in sorted(curves.items(), key=lambda kv: int(kv[0])):
        ax.plot(xs, ys, label=f"agent {agent}" if len(curves) > 1 else None)
    ax.set_xlabel("environment steps (per agent)")
    ax.set_ylabel("mean episode return (last 100)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if 1 < len(curves) <= 12:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(run_dir) / "learning_curve.png"
    try:
        _rl.write_atomic(out, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return out
