"""The distributed mode: Gymnasium sub-envs stepped by Ray actors (``--ray-workers``, ``envs/ray_vec.py``).

Parity: with any number of workers a run is the same run as without Ray (same seeds per sub-env, actions computed in
the learner), including truncation (final observations) and a population whose agents span shard boundaries.
Failures: bad values and impossible placements are refused before anything is written; a dead worker is reported.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from _trust import csv_rows, kill, start, wait_for

from ppolab.config import Config, ConfigError, validate
from ppolab.envs.errors import EnvError, EnvWorkerError
from ppolab.envs.gymnasium_vec import make_gymnasium_vec
from ppolab.training import train

ray = pytest.importorskip("ray")
from ppolab.envs.ray_vec import RayVectorEnv  # noqa: E402

CPUS = 4  # logical CPUs of the test's Ray instance (workers mostly wait on the learner)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray for the module (starting one costs seconds); the code under test reuses it."""
    with warnings.catch_warnings():  # Ray starts its processes with fork + exec
        warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
        ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _steps_equal(a, b):
    for x, y in zip(a[:4], b[:4], strict=True):
        np.testing.assert_array_equal(x, y)
    ia, ib = a[4], b[4]
    assert ("final_obs" in ia) == ("final_obs" in ib)
    if "final_obs" in ia:
        np.testing.assert_array_equal(ia["_final_obs"], ib["_final_obs"])
        for i in np.flatnonzero(ia["_final_obs"]):
            np.testing.assert_array_equal(ia["final_obs"][i], ib["final_obs"][i])
    return "final_obs" in ia


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-graph", "actor-calls"])
def test_ray_vector_env_steps_like_the_local_vector_env(compiled):
    """Pendulum-v1 truncates every episode at 200 steps: 5 sub-envs in 3 uneven shards, 260 steps, every array and
    every final observation equal to the local vector env's; then a second reset (which tears the compiled graph
    down: its actors take ordinary calls again) and 20 more steps."""
    n = 5
    local = make_gymnasium_vec("Pendulum-v1", n)
    remote = RayVectorEnv("Pendulum-v1", n, 3, compiled=compiled)
    try:
        assert [s.stop - s.start for s in remote.slices] == [2, 1, 2]
        assert remote.single_observation_space == local.single_observation_space
        seeds = [11 * i for i in range(n)]
        np.testing.assert_array_equal(local.reset(seed=seeds)[0], remote.reset(seed=seeds)[0])
        rng = np.random.default_rng(0)
        ended = 0
        for _ in range(260):
            a = rng.uniform(-2, 2, (n, 1)).astype(np.float32)
            ended += _steps_equal(local.step(a), remote.step(a))
        assert ended == 1  # all five truncated together at step 200
        assert remote.compiled == compiled and (remote._graph is not None) == compiled
        np.testing.assert_array_equal(local.reset(seed=seeds[::-1])[0], remote.reset(seed=seeds[::-1])[0])
        for _ in range(20):
            a = rng.uniform(-2, 2, (n, 1)).astype(np.float32)
            _steps_equal(local.step(a), remote.step(a))
    finally:
        local.close()
        remote.close()
    assert remote.workers == []
    assert ray.is_initialized()  # the module's Ray was not ours to shut down


def test_episode_statistics_and_wrappers_travel_to_the_workers():
    """A wrapper (here Gymnasium's RecordEpisodeStatistics, as the Atari preprocessing uses it) is sent to the
    workers; the episode statistics of SAME_STEP autoreset (``final_info``) come back merged at the right indices."""
    import gymnasium as gym

    n, wrappers = 6, [gym.wrappers.RecordEpisodeStatistics]
    local = make_gymnasium_vec("CartPole-v1", n, wrappers=wrappers)
    remote = RayVectorEnv("CartPole-v1", n, 4, wrappers=wrappers)
    try:
        local.reset(seed=list(range(n)))
        remote.reset(seed=list(range(n)))
        rng = np.random.default_rng(1)
        seen = 0
        for _ in range(120):
            a = rng.integers(0, 2, n)
            la, ra = local.step(a), remote.step(a)
            _steps_equal(la, ra)
            assert ("final_info" in la[4]) == ("final_info" in ra[4])
            if "final_info" in la[4]:
                lf, rf = la[4]["final_info"], ra[4]["final_info"]
                np.testing.assert_array_equal(lf["_episode"], rf["_episode"])
                for k in ("r", "l"):
                    np.testing.assert_array_equal(lf["episode"][k][lf["_episode"]], rf["episode"][k][rf["_episode"]])
                seen += int(lf["_episode"].sum())
        assert seen > 10
    finally:
        local.close()
        remote.close()


def _cfg(tmp_path, name, **kw):
    return Config(env="Pendulum-v1", total_timesteps=3 * 96 * 3, num_envs=3, num_steps=96, num_epochs=2,
                  num_minibatches=2, num_seeds=2, eval_episodes=2, progress=False, tensorboard=False,
                  checkpoint_every=0, compile_cache="", run_dir=str(tmp_path / name), **kw)


def test_ray_workers_train_the_same_run_as_without_ray(tmp_path):
    """2 agents x 3 envs = 6 sub-envs; 3 workers of 2: the middle one steps one env of each agent. 288 steps per env:
    every episode is truncated once (final observations bootstrap the value). Parameters, metrics and episode
    returns are identical, bit for bit."""
    alone = train(_cfg(tmp_path, "alone"))
    spread = train(_cfg(tmp_path, "ray", ray_workers=3))
    for a, b in zip(jax.tree_util.tree_leaves(alone.state), jax.tree_util.tree_leaves(spread.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows_a, rows_b = csv_rows(alone.run_dir), csv_rows(spread.run_dir)
    drop = {"time_s", "sps"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in drop} for r in rows_b]
    assert alone.summary["episodes"] == spread.summary["episodes"] == 6
    assert alone.summary["eval_return_mean"] == spread.summary["eval_return_mean"]
    saved = json.loads((spread.run_dir / "config.json").read_text())
    assert saved["ray_workers"] == 3


@pytest.mark.parametrize("kw, message", [
    (dict(ray_workers=-1), "--ray-workers must be an integer >= 0 (got -1)"),
    (dict(ray_worker_cpus=float("nan")), "--ray-worker-cpus must be a number >= 0"),
    (dict(ray_workers=2, env="gymnax:CartPole-v1"), "--ray-workers steps Gymnasium environments, not "
                                                     "'gymnax:CartPole-v1'"),
    (dict(ray_workers=2, env="envpool:CartPole-v1"), "drop --ray-workers"),
])
def test_bad_ray_options_are_refused_by_validate(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(Config(**kw))


@pytest.mark.parametrize("kw, message", [
    (dict(ray_workers=7), "--ray-workers 7 is more than the 6 environments"),
    (dict(ray_workers=5), f"needs 5 CPUs but the Ray cluster has {CPUS}"),
])
def test_impossible_placements_fail_before_anything_is_written(tmp_path, kw, message):
    run = tmp_path / "run"
    with pytest.raises(EnvError, match=message):
        train(_cfg(tmp_path, "run", **kw))
    assert not run.exists()


def test_worker_cpus_zero_lets_more_workers_than_cpus_share_the_cores():
    env = RayVectorEnv("CartPole-v1", 6, CPUS + 2, worker_cpus=0)
    try:
        obs, _ = env.reset(seed=list(range(6)))
        assert obs.shape == (6, 4)
        assert env.step(np.zeros(6, np.int64))[0].shape == (6, 4)
    finally:
        env.close()


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled-graph", "actor-calls"])
def test_a_dead_worker_is_reported(compiled):
    env = RayVectorEnv("CartPole-v1", 4, 2, compiled=compiled)
    try:
        env.reset(seed=[0, 1, 2, 3])
        ray.kill(env.workers[1])
        with pytest.raises(EnvWorkerError, match="a Ray environment worker died"):
            for _ in range(50):  # the kill takes effect asynchronously
                env.step(np.zeros(4, np.int64))
                time.sleep(0.05)
    finally:
        env.close()


def test_without_ray_installed_the_error_says_how_to_install(monkeypatch):
    from ppolab.envs import ray_vec

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(EnvError, match=r"pip install 'ppolab\[ray\]'"):
        ray_vec.import_ray()


def test_ctrl_c_reaches_the_whole_process_group_and_the_run_resumes(tmp_path):
    """Ctrl-C in a terminal signals every process of the foreground group, the local Ray's included: the trainer
    still finishes its iteration, writes its checkpoint and exits 130; ``--resume`` continues with another number of
    workers."""
    run = tmp_path / "run"
    args = ["train", "--num-envs", "4", "--num-steps", "16", "--num-epochs", "1", "--num-minibatches", "1",
            "--eval-episodes", "0", "--no-tensorboard", "--no-progress", "--total-timesteps", str(4 * 16 * 5000),
            "--checkpoint-every", "5", "--ray-workers", "2", "--run-dir", str(run)]
    env = {"RAY_ADDRESS": ""}  # a fresh local Ray in the subprocess, not this module's
    proc = start(args, env=env)
    wait_for(lambda: len(csv_rows(run)) >= 6 if (run / "metrics.csv").exists() else False, 180, proc)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = kill(proc, 0) if proc.poll() is None else proc.communicate(timeout=60)
    proc.wait(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint written" in " ".join(err.split()) and "Traceback" not in err
    n = len(csv_rows(run))
    proc = start(["train", "--resume", str(run), "--ray-workers", "1"], env=env)
    wait_for(lambda: len(csv_rows(run)) > n + 2, 180, proc)
    out, err = kill(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert [int(r["iteration"]) for r in csv_rows(run)] == list(range(1, len(csv_rows(run)) + 1))


def test_a_worker_killed_mid_run_leaves_a_checkpoint_and_a_resume_command(tmp_path):
    """kill -9 of one worker process during training: the trainer writes a checkpoint of the last whole iteration,
    exits 1 with one line naming it and the resume command; the run then resumes."""
    import psutil

    run = tmp_path / "run"
    args = ["train", "--num-envs", "4", "--num-steps", "16", "--num-epochs", "1", "--num-minibatches", "1",
            "--eval-episodes", "0", "--no-tensorboard", "--no-progress", "--total-timesteps", str(4 * 16 * 5000),
            "--checkpoint-every", "1000", "--ray-workers", "2", "--run-dir", str(run)]
    env = {"RAY_ADDRESS": ""}
    proc = start(args, env=env)
    wait_for(lambda: len(csv_rows(run)) >= 5 if (run / "metrics.csv").exists() else False, 180, proc)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if any("ShardWorker" in part for part in p.cmdline())]
    assert len(workers) == 2
    workers[0].kill()
    out, err = proc.communicate(timeout=120)
    flat = " ".join(err.split())
    assert proc.returncode == 1, err
    assert "a Ray environment worker died" in flat and "Traceback" not in err.split("ppolab: error:")[-1]
    n = int(flat.split("checkpoint written at iteration ")[1].split(".")[0])
    assert n >= 5 and (run / "checkpoints" / f"ckpt-{n:08d}.ppolab").exists()
    assert [int(r["iteration"]) for r in csv_rows(run)] == list(range(1, n + 1))
    assert f"Resume with: ppolab train --resume {run}" in flat
    proc = start(["train", "--resume", str(run)], env=env)  # without Ray this time
    wait_for(lambda: len(csv_rows(run)) > n + 2, 180, proc)
    out, err = kill(proc, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert [int(r["iteration"]) for r in csv_rows(run)] == list(range(1, len(csv_rows(run)) + 1))


def test_user_env_module_in_ray_workers(tmp_path, monkeypatch):
    """``--env my_corridor:MyCorridor-v0`` with the module on this process's path only (not installed, not on
    PYTHONPATH): the workers import it from where the trainer found it, and the run equals the in-process one."""
    from pathlib import Path

    from regression_runs import metrics_without_time

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "user_envs"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    kw = dict(env="my_corridor:MyCorridor-v0", env_kwargs="length=3", total_timesteps=512, num_envs=4, num_steps=32,
              num_epochs=1, num_minibatches=2, eval_episodes=2, progress=False, tensorboard=False)
    local = train(Config(run_dir=str(tmp_path / "local"), **kw))
    remote = train(Config(run_dir=str(tmp_path / "ray"), ray_workers=2, ray_worker_cpus=0.5, **kw))
    assert local.summary["episodes"] > 0
    assert metrics_without_time(tmp_path / "ray") == metrics_without_time(tmp_path / "local")
    assert remote.summary["eval_return_mean"] == local.summary["eval_return_mean"]
