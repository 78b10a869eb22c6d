"""Tier 3: small learning tests on probe environments and CartPole, through the public API."""

import csv

import jax
import jax.numpy as jnp
import pytest

import ppolab
from ppolab.assembly import make_driver
from ppolab.config import Config

FAST = dict(tensorboard=False, progress=False, overwrite=True)


def test_cartpole_default_reaches_475_within_100k_steps(tmp_path):
    result = ppolab.train(Config(run_dir=str(tmp_path / "cp"), **FAST))
    assert result.summary["total_timesteps"] <= 100_000
    assert result.summary["eval_return_mean"] >= 475, result.summary


def test_continuous_probe_learns_the_target_mean(tmp_path):
    """ppolab/TargetGaussian-v0: reward -(a - x)^2; the Gaussian policy's mean must track x (random: about -1.3)."""
    cfg = Config(env="ppolab/TargetGaussian-v0", total_timesteps=16384, num_envs=8, num_steps=64, num_epochs=10,
                 num_minibatches=4, learning_rate=3e-3, eval_episodes=20, run_dir=str(tmp_path / "g"), **FAST)
    result = ppolab.train(cfg)
    assert result.summary["eval_return_mean"] > -0.02, result.summary


def test_truncation_bootstrap_learns_geometric_value(tmp_path):
    """ppolab/ConstantTruncated-v0: reward 1 forever, only ever truncated: V = 1 / (1 - gamma) = 10 for gamma 0.9.
    Without bootstrapping from V(final obs) the value would be pulled towards a finite-horizon sum."""
    cfg = Config(env="ppolab/ConstantTruncated-v0", total_timesteps=20480, num_envs=8, num_steps=64, num_epochs=10,
                 num_minibatches=4, learning_rate=3e-3, gamma=0.9, gae_lambda=0.95, eval_episodes=1,
                 run_dir=str(tmp_path / "c"), **FAST)
    result = ppolab.train(cfg)
    _, net, _ = make_driver(result.config, 1)
    params = jax.tree_util.tree_map(lambda x: x[0], result.state.params)
    value = float(net.apply(params, jnp.zeros((1, 1)))[1][0])
    assert value == pytest.approx(10.0, rel=0.05)


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(f)]


def test_same_seed_gives_identical_metrics(tmp_path):
    # 2 iterations of the tiny CartPole run of test_cli.py, test_export.py...: the learner is compiled once a session
    kw = dict(total_timesteps=512, num_envs=4, num_steps=64, num_epochs=2, eval_episodes=2, **FAST)
    a = ppolab.train(Config(run_dir=str(tmp_path / "a"), **kw))
    b = ppolab.train(Config(run_dir=str(tmp_path / "b"), **kw))
    c = ppolab.train(Config(run_dir=str(tmp_path / "c"), seed=1, **kw))
    assert _rows(a.run_dir) == _rows(b.run_dir)
    assert _rows(a.run_dir) != _rows(c.run_dir)
    assert a.summary["agents"][0]["eval_returns"] == b.summary["agents"][0]["eval_returns"]
