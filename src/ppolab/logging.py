"""Metric sinks: metrics.csv (one row per iteration and agent), TensorBoard, and the learning-curve plot.

On resume both continue from the checkpoint's iteration: CSV rows past it are dropped, and TensorBoard is told to
purge events at or after that step, so curves have neither gaps nor duplicates.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

from ppolab.update import METRIC_KEYS

CSV_FIELDS = ("iteration", "agent", "env_steps", "time_s", "episodes", "episode_return", "return_recent") + METRIC_KEYS


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_iteration: int | None = None,
                 steps_per_iteration: int = 1):
        self.path = Path(run_dir) / "metrics.csv"
        if resume_iteration is not None and self.path.exists():
            self._truncate(resume_iteration)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            self._csv.writeheader()
        self._tb = None
        if tensorboard:
            SummaryWriter = _summary_writer()
            # TensorBoard steps are env_steps = iteration * steps_per_iteration: purge those past the checkpoint
            kw = {"purge_step": resume_iteration * steps_per_iteration + 1} if resume_iteration is not None else {}
            # tensorboardX names the file events.out.tfevents.<second>.<host> and truncates an existing file of that
            # name: a resume within the same second as the run it continues would wipe that run's events. A
            # nanosecond suffix keeps every writer's file apart (and in order).
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), flush_secs=30, filename_suffix=f".{time.time_ns()}",
                                     **kw)

    def _truncate(self, last_iteration: int):
        """Keep the rows up to ``last_iteration``. A row cut short by a kill (only rows after the checkpoint can be:
        the CSV is flushed before every checkpoint) is dropped; the header is rewritten in the current columns."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        head = rows[0]
        keep = [dict(zip(head, r, strict=True)) for r in rows[1:]
                if len(r) == len(head) and r[0].isdigit() and int(r[0]) <= last_iteration]
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(keep)
        tmp.replace(self.path)

    def log(self, rows: list[dict]):
        for row in rows:
            self._csv.writerow({k: _fmt(v) for k, v in row.items()})
            if self._tb is not None:
                # one event holding all of a row's scalars: SummaryWriter.add_scalar queues an event per value
                # through a multiprocessing queue (~50 us each, ~1 s of a 500k-step gymnax run)
                from tensorboardX.proto.summary_pb2 import Summary

                tag = f"agent{row['agent']}/" if row.get("num_agents", 1) > 1 else ""
                values = [Summary.Value(tag=f"{tag}{k}", simple_value=float(v))
                          for k in ("episode_return", "return_recent") + METRIC_KEYS
                          if (v := row.get(k)) is not None and not (isinstance(v, float) and math.isnan(v))]
                self._tb._get_file_writer().add_summary(Summary(value=values), int(row["env_steps"]))

    def flush(self):
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch whenever it is installed
    (only to convert torch tensors, which ppolab never logs), and that costs ~200 MB of memory."""
    import sys

    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # makes ``import torch`` raise ImportError inside tensorboardX
    try:
        from tensorboardX import SummaryWriter
    finally:
        if blocked:
            del sys.modules["torch"]
    return SummaryWriter


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def read_metrics(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def plot_learning_curve(run_dir: Path, title: str = "") -> Path:
    """learning_curve.png: recent mean episode return against environment steps, one line per agent."""
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
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
