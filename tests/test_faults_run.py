"""Faults while running, end to end through ``ppolab train`` / ``eval`` (issue 16): each test reproduces a finding
of the issue. A fault during a run stops it with a one-line error (exit 1) and keeps the last good checkpoint; bad
input is refused before anything is written (exit 2)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _faults import fill, tiny_mounts
from _trust import ckpt_iters, wait_for

USER_ENVS = Path(__file__).parent / "user_envs"
TINY = ["--num-envs", "4", "--num-steps", "32", "--num-epochs", "1", "--num-minibatches", "2", "--eval-episodes",
        "1", "--no-progress"]
PY = [sys.executable, "-m", "ppolab.cli"]


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(USER_ENVS), os.environ.get("PYTHONPATH", "")]))


def _run(args, timeout=300, **kw):
    return subprocess.run(PY + args, capture_output=True, text=True, timeout=timeout, env=_env(), **kw)


def _last_line(stderr: str) -> str:
    return [ln for ln in stderr.strip().splitlines() if ln.strip()][-1]


@pytest.fixture
def tinyfs():
    yield from tiny_mounts()


@pytest.mark.parametrize("env, what, step", [
    ("faulty_envs:RaiseAt-v0", "RuntimeError: boom", "100"),
    ("faulty_envs:BadShapeAt-v0", "observation of shape (5,), the observation space has (4,)", "100"),
    ("faulty_envs:RejectAction-v0", "ValueError: action 1 is not allowed now", "1"),  # the first action 1 from 101
])
def test_env_fault_is_one_line_naming_env_subenv_and_step_with_checkpoint(tmp_path, env, what, step):
    """Sub-env 6 (agent 1, actor 2: the one reset with seed 10009) fails at its 100th step, in iteration 4 of 32
    steps: exit 1, one line naming the env, the sub-env and the step, and a checkpoint of iteration 3."""
    run = tmp_path / "run"
    r = _run(["train", "--env", env, "--env-kwargs", "at=100,bad_seed=10009", "--num-seeds", "2",
              "--total-timesteps", "2048", "--checkpoint-every", "0", "--run-dir", str(run), *TINY])
    line = _last_line(r.stderr)
    assert r.returncode == 1, r.stderr[-1500:]
    assert line.startswith("ppolab: error: iteration 4: env ") and env in line, line
    assert "sub-env 6 (agent 1, actor 2), in step() at env step " + step in line and what in line, line
    assert "checkpoint written at iteration 3" in line and "Traceback" not in r.stderr
    assert ckpt_iters(run) == [3]


def test_hung_env_step_hits_env_timeout(tmp_path):
    run = tmp_path / "run"
    t0 = time.monotonic()
    r = _run(["train", "--env", "faulty_envs:HangAt-v0", "--env-kwargs", "at=40,bad_seed=1", "--env-timeout", "2",
              "--total-timesteps", "1024", "--checkpoint-every", "0", "--run-dir", str(run), *TINY], timeout=120)
    assert r.returncode == 1 and time.monotonic() - t0 < 90
    line = _last_line(r.stderr)
    assert "did not return within --env-timeout 2 s" in line and "sub-env 1 (agent 0, actor 1)" in line, line
    assert ckpt_iters(run) == [1]


def test_second_sigterm_stops_a_hung_step(tmp_path):
    """SIGTERM asks for a clean stop at the end of the iteration; a hung env step never ends it: a second SIGTERM
    (like a second Ctrl-C) leaves at once."""
    run = tmp_path / "run"
    p = subprocess.Popen(PY + ["train", "--env", "faulty_envs:HangAt-v0", "--env-kwargs", "at=40,bad_seed=1",
                               "--total-timesteps", "1024", "--run-dir", str(run), *TINY], env=_env(),
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "metrics.csv").is_file(), timeout=120, proc=p)
        time.sleep(3)  # inside the hung step by now (step 40 is in iteration 2)
        p.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert p.poll() is None  # the first one waits for the iteration to end
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) in (130, 143)
    finally:
        if p.poll() is None:
            p.kill()


def test_full_disk_stops_the_run_within_seconds(tmp_path, tinyfs):
    """A TensorBoard or metrics.csv write that hits ENOSPC: the run ends with a one-line error naming the file and
    the cause (exit 1) instead of hanging in tensorboardX's queue; nothing is left half-written."""
    disk = tinyfs.mount(tmp_path / "disk", size="400k")
    run = disk / "run"
    p = subprocess.Popen(PY + ["train", "--total-timesteps", "65536", "--checkpoint-every", "0", "--run-dir",
                               str(run), *TINY], env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "metrics.csv").is_file() and (run / "metrics.csv").stat().st_size > 2000,
                 timeout=120, proc=p)
        fill(disk)
        t0 = time.monotonic()
        rc = p.wait(timeout=90)
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 1 and time.monotonic() - t0 < 60, err[-1500:]
    line = _last_line(err)
    assert line.startswith("ppolab: error: ") and "No space left on device" in line, line


def test_second_process_on_a_run_is_refused_with_the_holders_pid(tmp_path):
    """While a run trains, a second `train --resume`, an `eval` and a `train --overwrite` of its directory are
    refused at once naming the holder's PID (two `--resume` 1.5 s apart destroyed metrics.csv before)."""
    run = tmp_path / "run"
    first = subprocess.Popen(PY + ["train", "--total-timesteps", "1000000", "--run-dir", str(run), *TINY],
                             env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run / "metrics.csv").is_file(), timeout=120, proc=first)
        for args in (["train", "--resume", str(run)], ["eval", str(run)],
                     ["train", "--run-dir", str(run), "--overwrite", *TINY]):
            r = _run(args, timeout=120)
            line = _last_line(r.stderr)
            assert r.returncode == 2 and "is in use by process" in line and str(first.pid) in line, line
        assert first.poll() is None  # the holder goes on undisturbed
    finally:
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130
    rows = (run / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, len(rows)))  # no gap, no duplicate


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    run = tmp_path / "run"
    assert _run(["train", "--total-timesteps", "512", "--run-dir", str(run), *TINY]).returncode == 0
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = _run(["train", "--resume", str(run)])
    assert r.returncode == 0 and "has finished" in r.stderr and "nothing to do" in r.stderr
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".ppolab.lock"}
    assert after == {k: v for k, v in before.items() if k.name != ".ppolab.lock"}
    # a larger --total-timesteps continues it
    r = _run(["train", "--resume", str(run), "--total-timesteps", "1024"])
    assert r.returncode == 0, r.stderr[-1500:]
    assert json.loads((run / "summary.json").read_text())["total_timesteps"] == 1024
    assert max(ckpt_iters(run)) == 8


def test_yaml_bomb_config_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
        for i in range(1, 9)] + ["hidden_sizes: *a8"]
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.monotonic()
    r = _run(["train", "--config", str(bomb), "--run-dir", str(tmp_path / "r")], timeout=60)
    assert r.returncode == 2 and time.monotonic() - t0 < 30
    assert _last_line(r.stderr).startswith("ppolab: error: --config") and not (tmp_path / "r").exists()


def test_too_many_envs_are_refused_before_any_is_built(tmp_path):
    t0 = time.monotonic()
    r = _run(["train", "--num-envs", "1000000", "--total-timesteps", "32000000", "--run-dir", str(tmp_path / "r")],
             timeout=120)
    assert r.returncode == 2 and time.monotonic() - t0 < 60, r.stderr[-800:]
    line = _last_line(r.stderr)
    assert "1,000,000 environments" in line and "GiB are available" in line and not (tmp_path / "r").exists()
