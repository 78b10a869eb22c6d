"""Shared helpers of the robustness tests (checkpoints, resume, signals, non-finite values). Not a test module."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ppolab import checkpoint as ckpt_lib

#: The smallest useful run: CartPole, 2 actors x 16 steps, one epoch of one minibatch (32 env steps / iteration).
TINY = ["--num-envs", "2", "--num-steps", "16", "--num-epochs", "1", "--num-minibatches", "1", "--eval-episodes", "0",
        "--no-tensorboard", "--no-progress"]
TINY_KW = dict(num_envs=2, num_steps=16, num_epochs=1, num_minibatches=1, eval_episodes=0, tensorboard=False,
               progress=False)
STEPS_PER_ITER = 32


def ppolab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ppolab.cli", *args]


def start(args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
    """``ppolab`` as a subprocess (its own process group, so that signals reach only it)."""
    full = dict(os.environ, **(env or {}))
    full.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.Popen(ppolab_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full,
                            start_new_session=True, **kw)


def wait_for(pred, timeout: float = 60.0, proc: subprocess.Popen | None = None, poll: float = 0.02):
    """Poll ``pred()`` until truthy; fail if ``proc`` exits first or the time runs out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process exited ({proc.returncode}) before the condition held:\n{err[-3000:]}")
        time.sleep(poll)
    if proc is not None:
        kill(proc)
    raise AssertionError(f"condition not reached within {timeout} s")


def kill(proc: subprocess.Popen, sig=signal.SIGKILL):
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.communicate(timeout=60)


def checkpoints(run_dir: Path) -> list[Path]:
    return ckpt_lib.list_checkpoints(Path(run_dir) / "checkpoints")


def ckpt_iters(run_dir: Path) -> list[int]:
    return [ckpt_lib.iteration_of(p) for p in checkpoints(run_dir)]


def train_state_arrays(path: Path) -> dict:
    """{leaf path: array} of a checkpoint's train_state, read without a template."""
    tree, _ = ckpt_lib.read(path)
    import jax

    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree["train_state"])}


def assert_same_arrays(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k], equal_nan=True), f"{k} differs"


def csv_rows(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def strip_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
