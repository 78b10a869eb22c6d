"""Recurrent policies in whole runs: a memory task only they solve, a partially observed CartPole, bitwise resume
after SIGKILL on a JAX env, and Ray workers training the same run as in-process sub-envs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _trust import (
    STEPS_PER_ITER,
    TINY,
    assert_same_arrays,
    ckpt_iters,
    csv_rows,
    kill,
    start,
    strip_time,
    train_state_arrays,
    wait_for,
)

from ppolab.config import Config
from ppolab.training import train

RECALL = Config(env="gymnax:ppolab/Recall", total_timesteps=24_576, num_envs=8, num_steps=32, num_minibatches=4,
                hidden_sizes=(32,), rnn_size=32, gamma=0.99, eval_episodes=200, progress=False, tensorboard=False,
                checkpoint_every=0, compile_cache="")


@pytest.mark.parametrize("policy", ["lstm", pytest.param("gru", marks=pytest.mark.slow),
                                    pytest.param("feedforward", marks=pytest.mark.slow)])
def test_only_a_recurrent_policy_recalls_the_cue(tmp_path, policy):
    """Recall (delay 4): the query looks the same for both cues, so a feed-forward policy stays at chance (0.5);
    an LSTM or a GRU reaches the optimum 1 (>= 0.95)."""
    cfg = RECALL.replace(policy=policy, run_dir=str(tmp_path / "run"))
    if policy == "feedforward":
        cfg = cfg.replace(rnn_size=128)  # the default: no recurrent option set
    summary = train(cfg).summary
    if policy == "feedforward":
        assert 0.35 <= summary["eval_return_mean"] <= 0.65, summary
    else:
        assert summary["eval_return_mean"] >= 0.95, summary


NOVEL = dict(env="gymnax:ppolab/StatelessCartPole", total_timesteps=100_000, eval_episodes=20, progress=False,
             tensorboard=False, checkpoint_every=0, compile_cache="")


@pytest.mark.slow
def test_an_lstm_balances_a_cartpole_without_velocities_and_an_mlp_does_not(tmp_path):
    """RL-Zoo's tuned recurrent CartPoleNoVel-v1 settings (``--preset cartpole-lstm``), 4 seeds at once: at least half
    of the LSTMs evaluate >= 475; no MLP with the same settings and budget does. (One seed alone is a coin toss at
    this budget: a change in the last bits of the update moved seed 0 from >= 475 to 364 in session 10, while 4
    seeds evaluated 496 / 500 / 141 / 474.)"""
    from ppolab.config import apply_preset

    lstm_cfg = apply_preset(Config(preset="cartpole-lstm", num_seeds=4, run_dir=str(tmp_path / "lstm"), **NOVEL))
    lstm = [a["eval_return_mean"] for a in train(lstm_cfg).summary["agents"]]
    assert sum(r >= 475 for r in lstm) >= 2, lstm
    mlp = train(lstm_cfg.replace(policy="feedforward", rnn_size=128, rnn_separate=False, rnn_head_sizes=(),
                                 hidden_sizes=(64, 64), preset=None,
                                 run_dir=str(tmp_path / "mlp"))).summary
    assert all(a["eval_return_mean"] < 475 for a in mlp["agents"]), mlp["agents"]


GRU_ARGS = ["--policy", "gru", "--rnn-size", "16", "--hidden-sizes", "16", "--seq-len", "8"]


def _args(run, iters, every):
    return ["train", *TINY, *GRU_ARGS, "--env", "gymnax:CartPole-v1", "--total-timesteps",
            str(iters * STEPS_PER_ITER), "--checkpoint-every", str(every), "--keep-checkpoints", "100", "--seed", "3",
            "--iterations-per-call", "1", "--run-dir", str(run)]


@pytest.mark.slow
def test_a_recurrent_run_sigkilled_between_checkpoints_resumes_bitwise(tmp_path):
    iters = 12
    ref = tmp_path / "ref"
    assert start(_args(ref, iters, 4)).wait(timeout=300) == 0
    run = tmp_path / "run"
    proc = start(_args(run, iters, 4), env={"PPOLAB_TEST_SLOW_CKPT": "1.0"})  # each checkpoint write takes 1 s
    wait_for(lambda: ckpt_iters(run) == [4], 300, proc)
    kill(proc)  # while iteration 8's checkpoint is being written: the run's carries are those of iteration 4
    assert proc.returncode == -9 and ckpt_iters(run) == [4]
    train(Config(), resume=run)
    assert strip_time(csv_rows(run)) == strip_time(csv_rows(ref))
    name = f"ckpt-{iters:08d}.ppolab"
    assert_same_arrays(train_state_arrays(run / "checkpoints" / name), train_state_arrays(ref / "checkpoints" / name))


@pytest.mark.slow
def test_ray_workers_train_the_same_recurrent_run_as_in_process(tmp_path):
    """A recurrent population (2 seeds x 3 envs) whose episodes end inside sequences: 3 Ray workers give the same
    parameters and metrics, bit for bit, as in-process sub-envs (the carries live in the learner's process)."""
    pytest.importorskip("ray")
    cfg = Config(env="CartPole-v1", policy="lstm", rnn_size=16, hidden_sizes=(16,), total_timesteps=3 * 64 * 3,
                 num_envs=3, num_steps=64, seq_len=16, num_epochs=2, num_minibatches=3, num_seeds=2,
                 eval_episodes=2, progress=False, tensorboard=False, checkpoint_every=0, compile_cache="")
    alone = train(cfg.replace(run_dir=str(tmp_path / "alone")))
    spread = train(cfg.replace(run_dir=str(tmp_path / "ray"), ray_workers=3, ray_worker_cpus=0.0))
    for a, b in zip(jax.tree_util.tree_leaves(alone.state), jax.tree_util.tree_leaves(spread.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert strip_time(csv_rows(alone.run_dir)) == strip_time(csv_rows(spread.run_dir))
    assert alone.summary["episodes"] == spread.summary["episodes"] > 6
