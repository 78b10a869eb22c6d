"""Issue 16, logs: a full disk, a read-only file system or an immutable directory under metrics.csv or TensorBoard
raises one RunWriteError naming the file and the cause, within seconds (the TensorBoard writer used to hang the
trainer forever); the resume rewrite is atomic with a per-process temp file; a cut or deleted metrics.csv is
continued with a warning; hostile files never hang the logger."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from _faults import fill, no_hang, tiny_mounts, unblock_fifo

from ppolab.logging import CSV_FIELDS, MetricsLogger, RunWriteError, read_metrics
from ppolab.update import METRIC_KEYS


@pytest.fixture
def tinyfs():
    yield from tiny_mounts()


def rows(its, agents: int = 1) -> list[dict]:
    return [{"iteration": i, "agent": k, "env_steps": i * 10, "time_s": 0.5, "episodes": 1, "episode_return": 1.0,
             "return_recent": 2.0, "num_agents": agents, **{m: 0.25 for m in METRIC_KEYS}}
            for i in its for k in range(agents)]


def log_until_it_fails(logger: MetricsLogger, limit: int = 20_000) -> RunWriteError:
    """Log rows (and flush) until a RunWriteError: returns it; fails the test after ``limit`` rows or on a hang."""
    def go():
        for i in range(1, limit, 50):
            logger.log(rows(range(i, i + 50), agents=4))
        logger.flush()

    with pytest.raises(RunWriteError) as e:
        no_hang(go, 60, "logging on a full disk")
    assert "\n" not in str(e.value)
    return e.value


def test_full_disk_under_metrics_csv(tinyfs, tmp_path):
    run = tinyfs.mount(tmp_path / "run")
    logger = MetricsLogger(run, tensorboard=False)
    fill(run)
    err = log_until_it_fails(logger)
    assert str(err) == f"cannot write {run / 'metrics.csv'}: No space left on device" and err.path.endswith("csv")
    logger.close()  # after the failure: releases the file, does not raise again
    with pytest.raises(RunWriteError, match="closed after a failed write"):
        logger.log(rows([1]))


def test_full_disk_under_tensorboard_raises_instead_of_hanging(tinyfs, tmp_path):
    """Issue 16 (1): the tensorboardX writer thread died on ENOSPC and the trainer blocked forever in its queue."""
    run = tmp_path / "run"
    tb = tinyfs.mount(run / "tb")
    logger = MetricsLogger(run, tensorboard=True)
    fill(tb)
    err = log_until_it_fails(logger)
    assert str(err).startswith(f"cannot write {tb}/events.out.tfevents.") and str(err).endswith(
        ": No space left on device")
    logger.close()


def test_full_disk_from_the_start_fails_at_close_at_the_latest(tinyfs, tmp_path):
    run = tinyfs.mount(tmp_path / "run")
    (run / "tb").mkdir()
    fill(run)
    logger = MetricsLogger(run, tensorboard=True)  # empty files still fit; their buffered bytes do not
    with pytest.raises(RunWriteError, match="No space left on device"):
        no_hang(logger.close, 30)
    logger.close()  # once reported, closing again is quiet


def test_read_only_file_system(tinyfs, tmp_path):
    run = tinyfs.mount(tmp_path / "run")
    tinyfs.read_only(run)
    with pytest.raises(RunWriteError) as e:
        MetricsLogger(run, tensorboard=False)
    assert str(e.value) == f"cannot open {run / 'metrics.csv'}: Read-only file system"


def test_permission_denied(tinyfs, tmp_path):
    run = tinyfs.mount(tmp_path / "run")
    (run / "metrics.csv").write_text(",".join(CSV_FIELDS) + "\n")
    tinyfs.immutable(run / "metrics.csv")
    with pytest.raises(RunWriteError, match="cannot open .*metrics.csv: Operation not permitted"):
        MetricsLogger(run, tensorboard=False)
    tinyfs.immutable(run)  # the resume rewrite cannot create its temp file
    with pytest.raises(RunWriteError, match="cannot rewrite .*metrics.csv: Operation not permitted"):
        MetricsLogger(run, tensorboard=False, resume_iteration=0)


def test_resume_rewrite_on_a_full_disk_keeps_metrics_csv(tinyfs, tmp_path):
    run = tinyfs.mount(tmp_path / "run")
    first = MetricsLogger(run, tensorboard=False)
    first.log(rows(range(1, 201)))
    first.close()
    before = (run / "metrics.csv").read_bytes()
    fill(run)
    with pytest.raises(RunWriteError, match="cannot rewrite .*metrics.csv: No space left on device"):
        MetricsLogger(run, tensorboard=False, resume_iteration=100)
    assert (run / "metrics.csv").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["filler", "metrics.csv"]  # no temp file left


def test_resume_rewrite_uses_a_temp_file_of_its_own(tmp_path):
    """Issue 16 (2): two processes shared metrics.csv.tmp; one crashed renaming the other's."""
    first = MetricsLogger(tmp_path, tensorboard=False)
    first.log(rows(range(1, 7)))
    first.close()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = [tmp_path / "metrics.csv.tmp", tmp_path / f".metrics.csv.tmp-{sleeper.pid}-0123abcd"]
        for t in theirs:
            t.write_text("another process's rewrite in progress")
        second = MetricsLogger(tmp_path, tensorboard=False, resume_iteration=4)
        second.close()
        assert all(t.read_text() == "another process's rewrite in progress" for t in theirs)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert [int(r["iteration"]) for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_cut_or_deleted_metrics_csv_is_continued_with_a_warning(tmp_path):
    first = MetricsLogger(tmp_path, tensorboard=False)
    first.log(rows(range(1, 4)))
    first.close()
    warnings = []
    MetricsLogger(tmp_path, tensorboard=False, resume_iteration=6, warn=warnings.append).close()
    assert warnings == [f"{tmp_path / 'metrics.csv'} ends at iteration 3 but the checkpoint is at iteration 6: "
                        f"iterations 4..6 are missing from it"]
    (tmp_path / "metrics.csv").unlink()
    warnings.clear()
    logger = MetricsLogger(tmp_path, tensorboard=False, resume_iteration=6, warn=warnings.append)
    logger.log(rows([7]))
    logger.close()
    assert warnings == [f"{tmp_path / 'metrics.csv'} is missing but the checkpoint is at iteration 6: iterations "
                        f"1..6 are missing from it"]
    assert [int(r["iteration"]) for r in read_metrics(tmp_path)] == [7]
    warnings.clear()
    MetricsLogger(tmp_path, tensorboard=False, resume_iteration=7, warn=warnings.append).close()
    assert warnings == []  # complete: no warning


def test_damaged_metrics_csv_keeps_what_came_before(tmp_path):
    first = MetricsLogger(tmp_path, tensorboard=False)
    first.log(rows(range(1, 4)))
    first.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("4,0," + "x" * 200_000 + "\n")  # a field past csv's size limit
    warnings = []
    MetricsLogger(tmp_path, tensorboard=False, resume_iteration=3, warn=warnings.append).close()
    assert len(warnings) == 1 and "is damaged after iteration 3" in warnings[0]
    assert [int(r["iteration"]) for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
@pytest.mark.parametrize("resume", [None, 3])
def test_hostile_metrics_csv_never_hangs(tmp_path, kind, resume):
    path = tmp_path / "metrics.csv"
    {"fifo": os.mkfifo, "symlink": lambda p: p.symlink_to("/dev/zero"), "directory": os.mkdir}[kind](path)
    try:
        with pytest.raises(RunWriteError, match="metrics.csv: .*(FIFO|symbolic link|directory)"):
            no_hang(lambda: MetricsLogger(tmp_path, tensorboard=False, resume_iteration=resume), 20)
    finally:
        unblock_fifo(path) if kind == "fifo" else None


def _records(path: Path) -> list[bytes]:
    """The events of a TFRecord file, every length and CRC checked (tensorboardX's masked CRC-32C)."""
    from tensorboardX.record_writer import masked_crc32c

    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i: i + 8])
        assert struct.unpack("<I", data[i + 8: i + 12])[0] == masked_crc32c(data[i: i + 8])
        body = data[i + 12: i + 12 + n]
        assert struct.unpack("<I", data[i + 12 + n: i + 16 + n])[0] == masked_crc32c(body)
        out.append(body)
        i += 16 + n
    return out


def test_event_file_is_valid_tfrecord_with_purge_on_resume(tmp_path):
    from tensorboardX.proto import event_pb2

    logger = MetricsLogger(tmp_path, tensorboard=True, resume_iteration=4, steps_per_iteration=10)
    logger.log(rows([5, 6], agents=2))
    logger.close()
    (f,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = [event_pb2.Event.FromString(b) for b in _records(f)]
    assert events[0].file_version == "brain.Event:2" and events[2].session_log.status == event_pb2.SessionLog.START
    assert events[2].step == 41 and [e.step for e in events[3:]] == [50, 50, 60, 60]
    tags = {v.tag for v in events[3].summary.value}
    assert "agent0/policy_loss" in tags and "agent0/episode_return" in tags
