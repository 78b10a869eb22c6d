"""Numerical faults: NaN from the environment (reward, observation) or in the learner (loss, gradient, parameters)
stops the run naming the iteration and the quantity, keeps the last good checkpoint and never writes a bad one;
``--nonfinite skip`` skips the bad update and goes on."""

from __future__ import annotations

import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _trust import TINY_KW, ckpt_iters, csv_rows, train_state_arrays

from ppolab import checkpoint as ck
from ppolab.assembly import init_population
from ppolab.cli import main as cli_main
from ppolab.config import Config
from ppolab.loop import nonfinite_message
from ppolab.networks import make_network
from ppolab.spaces import ActionSpec, ObsSpec
from ppolab.training import TrainingError, train
from ppolab.types import Rollout
from ppolab.update import METRIC_KEYS, NONFINITE_BITS, LearnerSpec, learn

BAD_STEP = 40  # each actor steps 16 times per iteration: step 40 falls in iteration 3


class NaNAt(gym.Wrapper):
    """CartPole that emits NaN in the reward or the observation at its ``at``-th step (counted over resets)."""

    def __init__(self, env, what: str, at: int = BAD_STEP):
        super().__init__(env)
        self.what, self.at, self.n = what, at, 0

    def step(self, action):
        obs, rew, term, trunc, info = self.env.step(action)
        self.n += 1
        if self.n == self.at:
            if self.what == "reward":
                rew = float("nan")
            else:
                obs = np.full_like(obs, np.nan)
        return obs, rew, term, trunc, info


def _make(what, **kw):
    return NaNAt(gym.make("CartPole-v1", **kw), what)


for _what in ("reward", "obs"):
    if f"PpolabNaN{_what.title()}-v0" not in gym.registry:
        gym.register(f"PpolabNaN{_what.title()}-v0", entry_point=functools.partial(_make, _what),
                     max_episode_steps=500)


def _cfg(tmp_path, env, **kw):
    values = dict(TINY_KW, total_timesteps=5 * 32, checkpoint_every=1, keep_checkpoints=10)
    return Config(env=env, run_dir=str(tmp_path / "run"), **dict(values, **kw))


@pytest.mark.parametrize("env, quantity", [("PpolabNaNReward-v0", "reward"), ("PpolabNaNObs-v0", "observation")])
def test_nonfinite_env_input_stops_naming_iteration_and_quantity(tmp_path, env, quantity):
    with pytest.raises(TrainingError) as e:
        train(_cfg(tmp_path, env))
    msg = str(e.value)
    assert msg.startswith(f"iteration 3, agent 0: non-finite {quantity} from the environment"), msg
    assert "last good checkpoint" in msg and "--nonfinite skip" in msg
    run = tmp_path / "run"
    assert ckpt_iters(run) == [1, 2]  # nothing written for the bad iteration
    arrays = train_state_arrays(run / "checkpoints" / "ckpt-00000002.ppolab")
    assert all(np.all(np.isfinite(a)) for a in arrays.values() if a.dtype.kind == "f")
    assert sorted({int(r["iteration"]) for r in csv_rows(run)}) == [1, 2]


def test_nonfinite_reward_via_cli_exit_code_1_no_traceback(tmp_path, capsys):
    code = cli_main(["train", "--env", "PpolabNaNReward-v0", "--num-envs", "2", "--num-steps", "16", "--num-epochs",
                     "1", "--num-minibatches", "1", "--eval-episodes", "0", "--no-tensorboard", "--no-progress",
                     "--total-timesteps", "160", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1
    assert "ppolab: error: iteration 3, agent 0: non-finite reward from the environment" in err
    assert "Traceback" not in err


def test_skip_mode_skips_the_bad_update_and_continues(tmp_path):
    res = train(_cfg(tmp_path, "PpolabNaNReward-v0", nonfinite="skip"))
    run = tmp_path / "run"
    assert ckpt_iters(run) == [1, 2, 3, 4, 5]
    rows = {int(r["iteration"]): r for r in csv_rows(run)}
    assert float(rows[3]["nonfinite_input"]) == 1.0 and float(rows[3]["minibatches_done"]) == 0.0
    assert int(float(rows[3]["nonfinite_kind"])) & NONFINITE_BITS["reward"]
    assert all(float(rows[i]["nonfinite_input"]) == 0.0 and float(rows[i]["nonfinite_kind"]) == 0.0
               for i in (1, 2, 4, 5))
    ck2, ck3, ck4 = (train_state_arrays(run / "checkpoints" / f"ckpt-0000000{i}.ppolab") for i in (2, 3, 4))
    params = [k for k in ck2 if "params" in k and "opt_state" not in k]
    assert params
    for k in params:  # iteration 3's update was skipped: same parameters; iteration 4 learned again
        np.testing.assert_array_equal(ck2[k], ck3[k])
    assert any(not np.array_equal(ck3[k], ck4[k]) for k in params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(res.state.params))
    # the episodes that saw the NaN reward have no return: they stay out of the statistics
    assert all(r["return_recent"] != "" for r in csv_rows(run)[2:])  # episodes ended before: a finite mean
    assert np.isfinite(res.summary["train_return_recent"])


def _poison(run, state, iteration: int):
    """Replace checkpoints >= ``iteration`` by a valid checkpoint ``iteration`` whose parameters hold NaN."""
    header, _ = ck.read_header(run / "checkpoints" / f"ckpt-{iteration:08d}.ppolab")
    for k in ("format_version", "payload_sha256", "payload_bytes", "leaves", "iteration", "saved_at"):
        header.pop(k)
    for p in ck.list_checkpoints(run / "checkpoints"):
        if ck.iteration_of(p) >= iteration:
            p.unlink()
    params = jax.tree_util.tree_map(lambda x: x.at[..., 0].set(jnp.nan) if x.ndim > 1 else x, state.params)
    state = state.replace(params=params, iteration=jnp.full_like(state.iteration, iteration))
    ck.save(run / "checkpoints", iteration, {"train_state": state, "driver_state": None}, header, keep=10,
            check_finite=False)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_parameters_stop_and_are_never_checkpointed(tmp_path, mode):
    run = tmp_path / "run"
    res = train(_cfg(tmp_path, "CartPole-v1", total_timesteps=4 * 32))
    _poison(run, res.state, 3)
    before = (run / "checkpoints" / "ckpt-00000003.ppolab").read_bytes()
    with pytest.raises(TrainingError) as e:
        train(Config(), resume=run) if mode == "stop" else train(
            Config(nonfinite="skip"), resume=run, explicit={"nonfinite": "skip"})
    msg = str(e.value)
    if mode == "stop":
        assert msg.startswith("iteration 4, agent 0: non-finite parameters (already before this update)"), msg
    else:  # every update skipped; the final checkpoint would hold NaN parameters: refused
        assert msg.startswith("iteration 4: non-finite values in .params['params']"), msg
    assert ckpt_iters(run) == [1, 2, 3]
    assert (run / "checkpoints" / "ckpt-00000003.ppolab").read_bytes() == before


# ---- the learner's fault report: loss vs gradient vs parameters ----------------------------------------------------
@pytest.fixture(scope="module")
def learner():
    cfg = Config(num_envs=4, num_steps=8, num_epochs=1, num_minibatches=2, max_grad_norm=None)
    net = make_network(cfg, ObsSpec((3,)), ActionSpec("discrete", 2))
    spec = LearnerSpec.from_config(cfg)
    state = init_population(cfg, net, spec, [{"seed": 0, **{k: 0.5 for k in (
        "learning_rate", "clip_eps", "kl_beta", "kl_target", "ent_coef", "vf_coef", "gamma", "gae_lambda")}}])
    state = state.replace(hparams=state.hparams.replace(learning_rate=jnp.asarray([1e-3])))
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(1, 8, 4, 3)).astype(np.float32)
    rollout = Rollout(obs=obs, actions=rng.integers(0, 2, (1, 8, 4)).astype(np.int32),
                      rewards=rng.normal(size=(1, 8, 4)).astype(np.float32), terminated=np.zeros((1, 8, 4), bool),
                      truncated=np.zeros((1, 8, 4), bool), final_obs=obs, last_obs=obs[:, 0])
    step = jax.jit(jax.vmap(functools.partial(learn, spec, net)))
    return state, rollout, step


def _bits(metrics) -> set[str]:
    kind = int(np.asarray(metrics["nonfinite_kind"])[0])
    return {n for n, b in NONFINITE_BITS.items() if kind & b}


def test_learner_reports_which_quantity_is_nonfinite(learner):
    state, rollout, step = learner
    hp = state.hparams
    new, m = step(state, rollout)
    assert _bits(m) == set() and float(m["nonfinite_update"][0]) == 0 and set(METRIC_KEYS) <= set(m)
    # an infinite value coefficient: the loss is non-finite (its gradient too)
    _, m = step(state.replace(hparams=hp.replace(vf_coef=jnp.asarray([jnp.inf]))), rollout)
    assert {"loss", "gradient"} <= _bits(m) and "incoming parameters" not in _bits(m)
    assert float(m["nonfinite_update"][0]) == 2 and float(m["minibatches_done"][0]) == 0
    # an infinite step size: loss and gradient finite, the new parameters are not
    new, m = step(state.replace(hparams=hp.replace(learning_rate=jnp.asarray([jnp.inf]))), rollout)
    assert _bits(m) == {"parameters"} and float(m["minibatches_done"][0]) == 0
    assert ck.nonfinite_leaves(new.params) == []  # skipped: the old parameters are kept
    # NaN parameters coming in
    bad = jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params)
    _, m = step(state.replace(params=bad), rollout)
    assert "incoming parameters" in _bits(m)
    # non-finite rewards / observations: the whole update is skipped, the statistics are kept
    _, m = step(state, rollout.replace(rewards=rollout.rewards * np.inf))
    assert _bits(m) == {"reward"} and float(m["nonfinite_input"][0]) == 1
    _, m = step(state, rollout.replace(last_obs=rollout.last_obs * np.nan))
    assert _bits(m) == {"observation"}


@pytest.mark.parametrize("kind, update, expected", [
    (NONFINITE_BITS["reward"], 0, "iteration 7, agent 1: non-finite reward from the environment"),
    (NONFINITE_BITS["observation"] | NONFINITE_BITS["reward"], 0,
     "iteration 7, agent 1: non-finite observation and reward from the environment"),
    (NONFINITE_BITS["loss"] | NONFINITE_BITS["gradient"], 3,
     "iteration 7, agent 1: non-finite loss, gradient in 3 minibatch(es)"),
    (NONFINITE_BITS["gradient"] | NONFINITE_BITS["parameters"], 1,
     "iteration 7, agent 1: non-finite gradient, parameters in 1 minibatch(es)"),
    (NONFINITE_BITS["incoming parameters"] | NONFINITE_BITS["loss"], 4,
     "iteration 7, agent 1: non-finite parameters (already before this update) in 4 minibatch(es)"),
    (0, 0, None),
])
def test_message_names_iteration_agent_and_quantity(kind, update, expected):
    inp = 1.0 if kind & (NONFINITE_BITS["reward"] | NONFINITE_BITS["observation"]) else 0.0
    metrics = {"nonfinite_input": np.array([0.0, inp]), "nonfinite_update": np.array([0.0, update]),
               "nonfinite_kind": np.array([0.0, kind])}
    assert nonfinite_message(metrics, 7, 1) == expected
    assert nonfinite_message(metrics, 7, 0) is None
