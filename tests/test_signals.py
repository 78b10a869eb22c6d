"""SIGINT / SIGTERM: a final checkpoint, a clean exit within seconds (exit code 128 + signal: 130 for SIGINT, 143 for
SIGTERM), and ``--resume`` continues. A second SIGINT leaves at once (130) without corrupting any checkpoint."""

from __future__ import annotations

import signal
import threading
import time

from _trust import STEPS_PER_ITER, TINY, checkpoints, ckpt_iters, csv_rows, kill, start, train_state_arrays, wait_for

from ppolab import checkpoint as ck

LONG = 2000  # iterations: the runs below are always stopped long before the end


def _args(run, every=5):
    return ["train", *TINY, "--total-timesteps", str(LONG * STEPS_PER_ITER), "--checkpoint-every", str(every),
            "--keep-checkpoints", "3", "--run-dir", str(run)]


def _iterations(run):
    return [int(r["iteration"]) for r in csv_rows(run)]


def _flat(text: str) -> str:
    return " ".join(text.split())  # the console wraps long lines


def test_sigint_then_resume_then_sigterm(tmp_path):
    run = tmp_path / "run"
    proc = start(_args(run))
    wait_for(lambda: ckpt_iters(run), 120, proc)
    t0 = time.monotonic()
    out, err = kill(proc, signal.SIGINT)
    assert time.monotonic() - t0 < 20, "SIGINT did not stop the run within seconds"
    assert proc.returncode == 130, err
    n = ckpt_iters(run)[-1]
    assert f"SIGINT: stopped at iteration {n}; checkpoint written. Resume with: ppolab train --resume {run}" in _flat(
        err)
    assert "Traceback" not in err
    assert train_state_arrays(run / "checkpoints" / f"ckpt-{n:08d}.ppolab")["['iteration']"].tolist() == [n]
    assert _iterations(run) == list(range(1, n + 1))
    assert not (run / "summary.json").exists()

    proc = start(["train", "--resume", str(run), "--no-progress"])
    wait_for(lambda: ckpt_iters(run)[-1] > n, 120, proc)
    t0 = time.monotonic()
    out, err = kill(proc, signal.SIGTERM)
    assert time.monotonic() - t0 < 20, "SIGTERM did not stop the run within seconds"
    assert proc.returncode == 143, err
    m = ckpt_iters(run)[-1]
    assert m > n and f"SIGTERM: stopped at iteration {m}; checkpoint written" in _flat(err)
    assert f"resuming {run} from ckpt-{n:08d}.ppolab (iteration {n})" in _flat(err)
    assert _iterations(run) == list(range(1, m + 1))  # continued: no gap, no duplicate
    assert len(ckpt_iters(run)) <= 3  # --keep-checkpoints 3


class StderrReader(threading.Thread):
    """Collects a subprocess's stderr while it runs."""

    def __init__(self, proc):
        super().__init__(daemon=True)
        self.proc, self.lines = proc, []

    def run(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)


def test_second_sigint_exits_at_once_and_corrupts_nothing(tmp_path):
    run = tmp_path / "run"
    slow = 8.0  # every checkpoint write takes this long: the second SIGINT lands in the middle of one
    proc = start(_args(run, every=2), env={"PPOLAB_TEST_SLOW_CKPT": str(slow)})
    reader = StderrReader(proc)
    reader.start()
    wait_for(lambda: ckpt_iters(run) == [2], 120, proc)
    written = {p.name: p.read_bytes() for p in checkpoints(run)}
    proc.send_signal(signal.SIGINT)  # first: asks for a final checkpoint ...
    # (signals do not queue: wait until the first one is handled, or both would count as one)
    wait_for(lambda: "SIGINT: finishing the current iteration and writing a checkpoint" in reader.text(), 60, proc)
    tmp = wait_for(lambda: list((run / "checkpoints").glob(".ckpt-*.tmp-*")), 60, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)  # ... second, during that (slow) write: leave now
    proc.wait(timeout=60)
    reader.join(timeout=10)
    err = reader.text()
    assert time.monotonic() - t0 < slow - 2, "the second SIGINT waited for the checkpoint write"
    assert proc.returncode == 130
    assert "ppolab: interrupted" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in checkpoints(run)} == written  # the previous checkpoint is untouched
    assert all(t.exists() for t in tmp)  # the unfinished write never became a checkpoint
    tree, header = ck.read(run / "checkpoints" / "ckpt-00000002.ppolab")
    assert header["iteration"] == 2


def test_signal_to_the_whole_process_group_with_async_workers(tmp_path):
    """Ctrl-C in a terminal (or systemd's stop) signals every process of the group, Gymnasium's async env workers
    included: they must leave the stop to the trainer, which writes its final checkpoint and closes them."""
    import os

    run = tmp_path / "run"
    proc = start([*_args(run), "--vector-mode", "async"])
    wait_for(lambda: ckpt_iters(run), 120, proc)
    n0 = ckpt_iters(run)[-1]
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped at iteration" in _flat(err) and "checkpoint written" in _flat(err)
    assert "Traceback" not in err and "Worker" not in err
    n = ckpt_iters(run)[-1]
    assert n >= n0 and train_state_arrays(run / "checkpoints" / f"ckpt-{n:08d}.ppolab")["['iteration']"].tolist() == [n]
    assert not _alive_in_group(proc.pid), "env worker processes outlived the trainer"


def _alive_in_group(pgid: int) -> list[int]:
    """Live (not zombie: a container's PID 1 may never reap them) processes of a process group, after a grace."""
    import os

    import psutil

    deadline = time.monotonic() + 5
    while True:
        alive = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(p.info["pid"]) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(p.info["pid"])
            except (ProcessLookupError, psutil.Error):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)
