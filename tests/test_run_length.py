"""The run's length (--total-timesteps) is a value of the host driver's compiled update, not part of the program:
a second run that differs only in its length compiles nothing new, and the annealing follows each run's own length."""

import csv

import jax
import pytest

import ppolab
from ppolab.config import Config


def _train(tmp_path, name: str, iterations: int) -> list[dict]:
    cfg = Config(env="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=64 * iterations, learning_rate=1e-3,
                 eval_episodes=0, run_dir=str(tmp_path / name), progress=False, tensorboard=False)
    ppolab.train(cfg)
    with open(tmp_path / name / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_of_another_length_compiles_nothing_and_anneals_over_its_own_length(tmp_path):
    _train(tmp_path, "short", 3)
    misses = []
    listener = lambda event, **kw: misses.append(event) if event.endswith("compilation_cache/cache_misses") else None
    jax.monitoring.register_event_listener(listener)
    try:
        rows = _train(tmp_path, "long", 7)
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert misses == []  # every program of the second run was in the first run's persistent compilation cache
    lr = [float(r["learning_rate"]) for r in rows]
    assert lr == pytest.approx([1e-3 * (1 - i / 7) for i in range(7)], rel=1e-5)  # 6 digits in the CSV
    clip = [float(r["clip_eps"]) for r in rows]
    assert clip == pytest.approx([0.2 * (1 - i / 7) for i in range(7)], rel=1e-5)  # 6 digits in the CSV
