"""Masked probe envs: Gymnasium's env checker, masks as specified in both conventions, the illegal-action bait, the
empty-mask env, and that a tabular learner finds the legal optimum with masks and the bait without them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ppolab import distributions as D
from ppolab.envs import masked_probes as MP

MP.register()
IDS = tuple(f"ppolab/{name}" for name in MP.REGISTRY)


def _mask(env, obs):
    return np.asarray(obs["action_mask"], bool) if isinstance(obs, dict) else env.unwrapped.action_masks()


@pytest.mark.parametrize("env_id", IDS)
def test_gymnasium_env_checker_passes(env_id):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_register_is_idempotent():
    MP.register()
    MP.register()
    assert all(i in gym.registry for i in IDS)


@pytest.mark.parametrize("cls, table", [(MP.MaskedBandit, MP.MaskedBandit.MASKS),
                                        (MP.MaskedMultiDiscrete, np.concatenate(
                                            [MP.MaskedMultiDiscrete.MASK0, MP.MaskedMultiDiscrete.MASK1], -1))])
def test_masks_as_specified_in_both_conventions(cls, table):
    for mask_in_obs in (True, False):
        env = cls(mask_in_obs=mask_in_obs)
        obs, _ = env.reset(seed=0)
        seen = set()
        for _ in range(60):
            m = _mask(env, obs)
            np.testing.assert_array_equal(m, table[env.context])
            np.testing.assert_array_equal(env.action_masks(), m)
            assert m.dtype == bool and m.shape == (env.mask_size,)
            seen.add(env.context)
            obs, *_ = env.step(env.action_space.sample())
        assert seen == {0, 1, 2}
        assert isinstance(obs, dict) == mask_in_obs
    # the conventions see the same contexts for the same seed
    a, b = cls(mask_in_obs=True), cls(mask_in_obs=False)
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    np.testing.assert_array_equal(oa["observation"], ob)


def test_multidiscrete_masks_are_per_sub_action():
    env = MP.MaskedMultiDiscrete()
    env.reset(seed=0)
    env.context = 1
    m = env.action_masks()
    assert m[:3].sum() >= 1 and m[3:].sum() == 1  # sub-action 1 has a single legal value here
    assert D.check_masks(m[None], env.nvec) is None
    assert env._is_legal(m, (2, 1)) and not env._is_legal(m, (2, 0)) and not env._is_legal(m, (0, 1))


def _all_actions(env):
    if isinstance(env.action_space, gym.spaces.Discrete):
        return [np.int64(a) for a in range(env.action_space.n)]
    return [np.array([i, j]) for i in range(env.nvec[0]) for j in range(env.nvec[1])]


@pytest.mark.parametrize("cls", [MP.MaskedBandit, MP.MaskedMultiDiscrete])
def test_illegal_action_pays_more_than_any_legal_one_and_is_recorded(cls):
    env = cls()
    env.reset(seed=0)
    legal_best, illegal_min = -np.inf, np.inf
    for context in range(MP.N_CONTEXTS):
        for a in _all_actions(env):
            env.context, env.t = context, 0
            legal = env._is_legal(env.action_masks(), a)
            before = env.illegal_actions
            _, r, *_, info = env.step(a)
            assert info["illegal_action"] == (not legal)
            assert env.illegal_actions == before + (not legal)
            if legal:
                legal_best = max(legal_best, r)
            else:
                illegal_min = min(illegal_min, r)
    assert legal_best == 1.0 and illegal_min == env.bait
    assert illegal_min > env.horizon * legal_best  # one illegal step beats a whole optimal legal episode
    strict = cls(strict=True)
    strict.reset(seed=0)
    strict.context = 2
    bad = next(a for a in _all_actions(strict) if not strict._is_legal(strict.action_masks(), a))
    with pytest.raises(MP.IllegalActionError, match="illegal in context 2"):
        strict.step(bad)


def test_episodes_terminate_after_horizon():
    env = gym.make("ppolab/MaskedBandit-v0")
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(True, False)]


def test_empty_mask_at_the_chosen_step_and_sub_env():
    env = MP.EmptyMask(empty_at=6)
    obs, _ = env.reset(seed=0)
    masks = []
    for _ in range(8):
        masks.append(obs["action_mask"].astype(bool))
        obs, _, term, trunc, _ = env.step(2)
        if term or trunc:
            obs, _ = env.reset()
    assert [m.any() for m in masks] == [True] * 6 + [False, True]
    check_env(MP.EmptyMask(empty_at=0), skip_render_check=True)
    # in a vector env only the sub-env first reset with only_seed: the driver's check names it
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("ppolab/EmptyMask-v0", empty_at=3, only_seed=12)] * 4)
    obs, _ = vec.reset(seed=10)
    for _ in range(3):
        assert D.check_masks(obs["action_mask"].astype(bool)) is None
        obs, *_ = vec.step(np.full(4, 2))
    assert D.check_masks(obs["action_mask"].astype(bool)) == (2,)
    with pytest.raises(D.ActionMaskError, match="step 3, sub-env 2"):
        D.raise_if_empty(obs["action_mask"].astype(bool), step=3)
    vec.close()


def _tabular_pg(cls, use_mask: bool, steps: int = 3000, lr: float = 0.5, seed: int = 0) -> tuple[float, float]:
    """REINFORCE with a running baseline on a tabular softmax per context; returns (mean reward, illegal rate) over
    the last 500 steps."""
    env = cls(mask_in_obs=False)
    heads = list(env.nvec) if env.nvec else [env.action_space.n]
    logits = np.zeros((MP.N_CONTEXTS, sum(heads)))
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    baseline, rewards, illegal = 0.0, [], []
    cuts = np.cumsum([0] + heads)
    for _ in range(steps):
        c = env.context
        mask = env.action_masks() if use_mask else np.ones(sum(heads), bool)
        u = rng.random(sum(heads))
        a = D.masked_sample_numpy(logits[c], mask, u, tuple(heads) if env.nvec else None)
        _, r, term, _, info = env.step(a)
        if term:
            env.reset()
        baseline += 0.05 * (r - baseline)
        for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            ai = int(np.atleast_1d(a)[i])
            p = np.exp(np.where(mask[lo:hi], logits[c, lo:hi], -np.inf))
            p /= p.sum()  # the legal softmax of sub-action i
            g = -p
            g[ai] += 1.0
            logits[c, lo:hi] += lr * (r - baseline) * np.where(mask[lo:hi], g, 0.0)
        rewards.append(r)
        illegal.append(info["illegal_action"])
    return float(np.mean(rewards[-500:])), float(np.mean(illegal[-500:]))


@pytest.mark.parametrize("cls", [MP.MaskedBandit, MP.MaskedMultiDiscrete])
def test_legal_optimum_is_learnable_and_ignoring_masks_takes_the_bait(cls):
    ret, rate = _tabular_pg(cls, use_mask=True)
    assert rate == 0.0 and ret > 0.9  # optimum 1.0 per step; uniform-legal about 0.56 (bandit)
    ret_u, rate_u = _tabular_pg(cls, use_mask=False)
    assert rate_u > 0.5 and ret_u > 5.0  # a learner blind to masks is drawn to the illegal bait
