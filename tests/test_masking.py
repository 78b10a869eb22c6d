"""Action masking wired through the core (issue 13), Gymnasium side and learner: masks from Dict observations and
from ``action_masks()`` in every in-process vector mode, the learner's pi_old and pi built with the stored masks
(ratio exactly 1, the exact masked KL), the probe bandit learned with no illegal action while ``--action-mask off``
takes the bait, deterministic evaluation picks the best legal action, and a mask with no legal action stops the run
naming the step and the sub-env. The JAX side (jumanji, the jitted driver) is in test_masking_jax.py."""

from __future__ import annotations

import csv
import math

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab import distributions as D
from ppolab.assembly import env_seeds, init_population, make_driver
from ppolab.config import Config, ConfigError, agent_table, backend_of
from ppolab.envs import masked_probes as MP
from ppolab.envs.errors import SubEnvError
from ppolab.envs.factory import is_jax_native
from ppolab.envs.gymnasium_masks import MaskInObservation
from ppolab.envs.gymnasium_vec import GymnasiumVecEnv, LeanSyncVectorEnv, make_gymnasium_vec
from ppolab.loop import TrainingError
from ppolab.networks import make_network
from ppolab.options import check_options_apply
from ppolab.spaces import ActionSpec, ObsSpec
from ppolab.training import train
from ppolab.types import Rollout
from ppolab.update import LearnerSpec, learn, loss_fn, make_batch

MP.register()
QUIET = dict(tensorboard=False, progress=False)
BANDIT = dict(num_envs=8, num_steps=32, num_epochs=4, num_minibatches=4, gamma=0.5, eval_episodes=0, **QUIET)


# ---- masks out of the vector env -------------------------------------------------------------------------------
def _reference(env_id: str, seeds: list[int], actions: np.ndarray):
    """(observations, masks) [T + 1, n, ...] of single envs stepped by hand with SAME_STEP resets."""
    envs = [gym.make(env_id) for _ in seeds]
    got = [e.reset(seed=s)[0] for e, s in zip(envs, seeds, strict=True)]
    obs, masks = [], []
    for t in range(len(actions) + 1):
        obs.append(np.stack([o["observation"] if isinstance(o, dict) else o for o in got]))
        masks.append(np.stack([e.unwrapped.action_masks() for e in envs]))
        if t < len(actions):
            nxt = []
            for e, a in zip(envs, actions[t], strict=True):
                o, _, term, trunc, _ = e.step(a)
                nxt.append(e.reset()[0] if term or trunc else o)
            got = nxt
    return np.stack(obs), np.stack(masks)


@pytest.mark.parametrize("name, mode", [
    ("MaskedBandit-v0", "sync"), ("MaskedBandit-v0", "gym-sync"), ("MaskedMultiDiscreteMethod-v0", "sync"),
    ("MaskedMultiDiscreteMethod-v0", "gym-sync"),
    pytest.param("MaskedMultiDiscreteMethod-v0", "async", marks=pytest.mark.slow),  # ~30 s: spawned processes
])
def test_vector_env_splits_masks_off_the_observations(name, mode):
    env_id = f"ppolab/{name}"
    env = GymnasiumVecEnv(env_id, 2, 3, mode)
    assert env.has_mask and env.obs_spec.shape == (3,)  # the network sees the context only
    rng = np.random.default_rng(0)
    shape = (9, 6) + env.action_spec.shape
    actions = rng.integers(0, 3, size=shape).astype(np.int32)  # legal or not: the env records either
    seeds = list(range(100, 106))
    want_obs, want_masks = _reference(env_id, seeds, actions)
    try:
        obs = env.reset(seeds)
        for t in range(len(actions) + 1):
            np.testing.assert_array_equal(obs.reshape(6, 3), want_obs[t])
            assert env.mask.dtype == bool
            np.testing.assert_array_equal(env.mask.reshape(6, -1), want_masks[t])
            if t < len(actions):
                obs, _, term, _, final, _ = env.step(actions[t].reshape((2, 3) + env.action_spec.shape))
                assert final.shape == obs.shape
    finally:
        env.close()


@pytest.mark.parametrize("name", ["MaskedBanditMethod-v0", "MaskedMultiDiscreteMethod-v0"])
def test_lean_vector_env_gathers_action_masks_like_the_wrapper(name):
    """The lean sync env calls the sub-envs' ``action_masks()`` itself (no ``MaskInObservation`` per sub-env) and
    gives what gym-sync with the wrapper gives: observations with masks, final observations with theirs, rewards."""
    env_id = f"ppolab/{name}"
    lean, ref = make_gymnasium_vec(env_id, 5, "sync"), make_gymnasium_vec(env_id, 5, "gym-sync")
    assert not isinstance(lean.envs[0], MaskInObservation) and isinstance(ref.envs[0], MaskInObservation)
    assert lean.single_observation_space == ref.single_observation_space
    assert lean.single_observation_space.mask_size == ref.single_observation_space.mask_size
    np.testing.assert_array_equal(lean.reset(seed=7)[0], ref.reset(seed=7)[0])
    rng, ends = np.random.default_rng(3), 0
    for _ in range(30):
        a = rng.integers(0, 3, size=(5,) + lean.single_action_space.shape)  # legal or not
        (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) = lean.step(a), ref.step(a)
        assert o1.dtype == o2.dtype == np.float32
        for x, y in ((o1, o2), (r1, r2), (te1, te2), (tr1, tr2)):
            np.testing.assert_array_equal(x, y)
        assert ("final_obs" in i1) == ("final_obs" in i2)
        for i in np.flatnonzero(i2.get("_final_obs", [])):
            np.testing.assert_array_equal(i1["final_obs"][i], i2["final_obs"][i])
            ends += 1
    assert ends >= 20
    lean.close()
    ref.close()


class _FaultyMasks(MP.MaskedBandit):
    def __init__(self, fault: str):
        super().__init__(mask_in_obs=False)
        self.fault = fault

    def action_masks(self):
        if self.fault == "raise":
            raise RuntimeError("mask service down")
        return np.ones(4, bool) if self.fault == "size" else super().action_masks()


@pytest.mark.parametrize("fault, match", [("raise", "mask service down"), ("size", "action mask of 4 entries")])
def test_lean_vector_env_names_the_sub_env_whose_mask_fails(fault, match):
    env = LeanSyncVectorEnv([lambda: _FaultyMasks("ok")] * 2 + [lambda: _FaultyMasks(fault)], mask_size=5)
    with pytest.raises(SubEnvError, match=match) as err:
        env.reset(seed=0)
    assert err.value.index == 2


def test_action_mask_off_and_spaces():
    env = GymnasiumVecEnv("ppolab/MaskedBandit-v0", 1, 2, action_mask="off")
    assert not env.has_mask and env.mask is None and env.reset(0).shape == (1, 2, 3)  # mask cut off all the same
    env.close()
    env = GymnasiumVecEnv("ppolab/MaskedBanditMethod-v0", 1, 2, action_mask="off")
    assert not env.has_mask and env.obs_spec.shape == (3,)
    env.close()
    assert not GymnasiumVecEnv("CartPole-v1", 1, 2).has_mask
    assert backend_of("jumanji:Knapsack-v1") == ("jumanji", "Knapsack-v1")
    assert is_jax_native(Config(env="jumanji:Knapsack-v1"))
    with pytest.raises(ConfigError, match="--action-mask off does nothing with 'gymnax:CartPole-v1'"):
        check_options_apply(Config(env="gymnax:CartPole-v1", action_mask="off"))
    check_options_apply(Config(env="jumanji:Knapsack-v1", action_mask="off"))


@pytest.mark.slow
def test_masks_travel_with_the_observations_through_ray_workers():
    ray = pytest.importorskip("ray")
    from ppolab.envs.ray_vec import RayVectorEnv

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for name in ("ppolab/MaskedBandit-v0", "ppolab/MaskedMultiDiscreteMethod-v0"):
            remote = GymnasiumVecEnv(name, 2, 3, vector_env=RayVectorEnv(name, 6, 2, worker_cpus=0))
            local = GymnasiumVecEnv(name, 2, 3)
            assert remote.has_mask and remote.obs_spec == local.obs_spec
            np.testing.assert_array_equal(remote.reset(list(range(6))), local.reset(list(range(6))))
            rng = np.random.default_rng(1)
            for _ in range(10):
                np.testing.assert_array_equal(remote.mask, local.mask)
                a = rng.integers(0, 3, size=(2, 3) + local.action_spec.shape).astype(np.int32)
                for x, y in zip(remote.step(a)[:5], local.step(a)[:5], strict=True):
                    np.testing.assert_array_equal(x, y)
            remote.close()
            local.close()
    finally:
        ray.shutdown()


# ---- the learner with masks --------------------------------------------------------------------------------------
T, B, OBS, N_ACT = 16, 4, 3, 5


def _masked_rollout(seed=0):
    """A rollout whose masks matter: random legal sets, a quarter of the rows with a single legal action."""
    rng = np.random.default_rng(seed)
    mask = rng.random((T, B, N_ACT)) < 0.5
    single = rng.random((T, B)) < 0.25
    mask[single] = np.eye(N_ACT, dtype=bool)[rng.integers(0, N_ACT, single.sum())]
    mask[~mask.any(-1)] = True
    actions = np.array([[rng.choice(np.flatnonzero(m)) for m in row] for row in mask], np.int32)
    obs = rng.normal(size=(T, B, OBS)).astype(np.float32)
    return Rollout(obs=jnp.asarray(obs), actions=jnp.asarray(actions),
                   rewards=jnp.asarray(rng.normal(size=(T, B)).astype(np.float32)),
                   terminated=jnp.asarray(rng.random((T, B)) < 0.05), truncated=jnp.zeros((T, B), bool),
                   final_obs=jnp.asarray(obs), last_obs=jnp.asarray(obs[0]), action_mask=jnp.asarray(mask))


def _learner(objective="clip", **kw):
    cfg = Config(num_envs=B, num_steps=T, num_epochs=2, num_minibatches=4, total_timesteps=T * B * 10,
                 objective=objective, **kw)
    net = make_network(cfg, ObsSpec((OBS,)), ActionSpec("discrete", N_ACT))
    spec = LearnerSpec.from_config(cfg)
    state = jax.tree_util.tree_map(lambda x: x[0], init_population(cfg, net, spec, agent_table(cfg)))
    return net, spec, state


@pytest.mark.parametrize("objective", ["clip", "kl-adaptive"])
def test_ratio_is_exactly_one_with_masks(objective):
    net, spec, state = _learner(objective)
    rollout = _masked_rollout()
    perm0 = jax.random.permutation(jax.random.PRNGKey(3), T * B)
    batch, _ = jax.jit(make_batch, static_argnums=(0, 1))(spec, net, state, rollout, perm0)
    assert isinstance(batch.old_dist, D.MaskedCategorical)
    mb = jax.tree_util.tree_map(lambda x: x[perm0.reshape(spec.num_minibatches, -1)[0]], batch)
    loss = jax.jit(loss_fn, static_argnums=(1, 2))
    _, aux = loss(state.params, spec, net, mb, 0.2, 1.0, state.hparams)
    assert float(aux.ratio_min) == 1.0 == float(aux.ratio_max) and float(aux.approx_kl) == 0.0
    if objective != "clip":
        return
    # the same minibatch with pi left unmasked: pi_old was masked, so the ratio moves (the check above can fail)
    _, unmasked = loss(state.params, spec, net, mb.replace(action_mask=None), 0.2, 1.0, state.hparams)
    assert float(unmasked.ratio_min) < 1.0


def _legal_softmax(logits, mask):
    z = np.where(mask, logits, -np.inf)
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def test_update_reports_the_exact_masked_kl_and_the_mask_metrics():
    net, spec, state = _learner("kl-adaptive")
    rollout = _masked_rollout(1)
    new, m = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, rollout)
    obs = np.asarray(rollout.obs).reshape(T * B, OBS)
    mask = np.asarray(rollout.action_mask).reshape(T * B, N_ACT)
    old_logits = np.asarray(net.apply(state.params, obs, heads="policy")[0].logits, np.float64)
    new_logits = np.asarray(net.apply(new.params, obs, heads="policy")[0].logits, np.float64)
    p, q = _legal_softmax(old_logits, mask), _legal_softmax(new_logits, mask)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(mask, p * (np.log(p) - np.log(q)), 0.0).sum(-1).mean()
        full_p, full_q = _legal_softmax(old_logits, True), _legal_softmax(new_logits, True)
        unmasked_kl = (full_p * (np.log(full_p) - np.log(full_q))).sum(-1).mean()
    assert float(m["kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-9)
    assert abs(unmasked_kl - kl) > 1e-3 * kl  # an unmasked KL would be another number
    assert float(m["illegal_action_rate"]) == 0.0 and int(m["empty_mask_at"]) == -1
    assert float(m["legal_actions_mean"]) == pytest.approx(mask.sum(-1).mean())
    illegal = rollout.replace(actions=jnp.argmin(rollout.action_mask, -1).astype(jnp.int32))  # an illegal one where
    _, m2 = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, illegal)                # a row has one
    want = (~np.take_along_axis(mask, np.asarray(illegal.actions).reshape(-1, 1), -1)).mean()
    assert float(m2["illegal_action_rate"]) == pytest.approx(want) and want > 0


def test_update_skips_a_rollout_with_an_empty_mask():
    net, spec, state = _learner("kl-adaptive")  # the learner of the test above: compiled once
    rollout = _masked_rollout(2)
    rollout = rollout.replace(action_mask=rollout.action_mask.at[5, 2].set(False))
    new, m = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, rollout)
    assert int(m["empty_mask_at"]) == 5 * B + 2 and float(m["minibatches_done"]) == 0.0
    assert float(m["nonfinite_input"]) == 0.0 and not any(math.isnan(float(v)) for v in m.values())
    np.testing.assert_array_equal(jax.flatten_util.ravel_pytree(new.params)[0],
                                  jax.flatten_util.ravel_pytree(state.params)[0])


# ---- the host driver --------------------------------------------------------------------------------------------
def _run_driver(cfg: Config, iterations: int, state=None):
    """(driver, state, metrics per iteration, illegal actions the envs recorded) after ``iterations``."""
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    if state is None:
        state = init_population(cfg, net, spec, rows)
    driver.start(env_seeds(rows, cfg.num_envs, 0))
    state, metrics, _ = driver.run(state, iterations)
    recorded = sum(e.unwrapped.illegal_actions for e in driver.env.env.envs)
    return driver, state, metrics, recorded


def test_bandit_is_learned_without_illegal_actions_and_off_takes_the_bait():
    cfg = Config(env="ppolab/MaskedBandit-v0", total_timesteps=16 * 256, **BANDIT)
    masked, state, metrics, recorded = _run_driver(cfg, 16)
    try:
        assert recorded == 0 and all(float(m["illegal_action_rate"][0]) == 0.0 for m in metrics)
        legal = np.mean([float(m["legal_actions_mean"][0]) for m in metrics])
        assert 2.1 < legal < 2.6  # (3 + 3 + 1) / 3 legal actions per context
        assert np.all(masked.evaluate(state, 8, True, seed=5) == 4.0)  # the legal optimum in all 4 steps
        blind, blind_state, blind_metrics, blind_recorded = _run_driver(cfg.replace(action_mask="off"), 16)
        blind.close()
        assert blind_recorded > 16 * 256 // 2  # the env saw the illegal bait taken, most of the time
        assert "empty_mask_at" not in blind_metrics[0]
        # the blind policy prefers illegal actions; evaluated with masks it takes its best legal one
        returns = masked.evaluate(blind_state, 8, True, seed=5)
        assert np.all(returns <= 4.0)
    finally:
        masked.close()


def test_numpy_and_jax_acting_agree_on_masked_actions():
    cfg = Config(env="ppolab/MaskedMultiDiscrete-v0", total_timesteps=2 * 256, num_seeds=2, **BANDIT)
    for backend in ("numpy", "jax"):
        driver, _, metrics, recorded = _run_driver(cfg.replace(act_backend=backend), 2)
        driver.close()
        assert recorded == 0 and all(float(x) == 0.0 for m in metrics for x in m["illegal_action_rate"])
        assert 4.0 < float(metrics[0]["legal_actions_mean"][0]) < 5.4  # (6 + 2 + 6) / 3


def test_train_writes_the_mask_metrics(tmp_path):
    cfg = Config(env="ppolab/MaskedBanditMethod-v0", total_timesteps=4 * 256, run_dir=str(tmp_path / "run"),
                 **{**BANDIT, "eval_episodes": 4})
    res = train(cfg)
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["illegal_action_rate"] == "0" for r in rows)
    assert all(2.0 < float(r["legal_actions_mean"]) < 2.7 for r in rows)
    assert res.summary["eval_return_mean"] <= 4.0


def test_empty_mask_stops_the_run_naming_step_and_sub_env(tmp_path):
    # sub-env 2 (seeded 2 by env_seeds for seed 0) has no legal action at its 40th observation: step 8 of iteration 2
    cfg = Config(env="ppolab/EmptyMask-v0", env_kwargs='{"empty_at": 40, "only_seed": 2}', num_envs=4,
                 num_steps=32, num_epochs=1, num_minibatches=1, total_timesteps=4 * 128, checkpoint_every=1,
                 run_dir=str(tmp_path / "run"), eval_episodes=0, **QUIET)
    with pytest.raises(TrainingError, match=r"iteration 2: action mask with no legal action at step 8, sub-env 2.*"
                                            r"checkpoint written at iteration 1"):
        train(cfg)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv", newline="")))
    assert [r["iteration"] for r in rows] == ["1"]
