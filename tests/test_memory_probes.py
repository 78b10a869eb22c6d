"""Memory probes (``envs/memory_probes.py``, ``envs/jax_probes.py``): spaces, Recall's reward rule and episode shape,
StatelessCartPole as CartPole's state[[0, 2]] with the 500-step truncation, and the JAX versions following the same
rules under ``jax.jit`` + ``jax.vmap`` (their random numbers differ from Gymnasium's: rules are compared, not draws)."""

from __future__ import annotations

import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from ppolab.config import ConfigError
from ppolab.envs import memory_probes, probes
from ppolab.envs.gymnax_env import GymnaxEnv

probes.register()  # registers the memory probes too (the path `ppolab train --env ppolab/Recall-v0` takes)
DELAY = memory_probes.Recall().delay  # 4
# Typed keys of XLA's RngBitGenerator: the envs' code is the same for any key, and XLA compiles these programs in
# about half the time it takes with threefry keys (compilation is nearly all of these tests' time).
KEY = functools.partial(jax.random.key, impl="unsafe_rbg")


def _recall_episode(env, seed: int, answer) -> tuple[list[np.ndarray], list[float], int]:
    """One Gymnasium Recall episode; ``answer(cue) -> action`` at every step. (observations, rewards, length)."""
    obs, _ = env.reset(seed=seed)
    cue = float(obs[0])
    seen, rewards = [obs], []
    while True:
        obs, r, terminated, truncated, _ = env.step(answer(cue))
        rewards.append(r)
        assert not truncated
        if terminated:
            return seen, rewards, len(rewards)
        seen.append(obs)


def _balance(s) -> int:
    """A controller on CartPole's full state that keeps the pole up for 500 steps (seeds 0-4)."""
    x, x_dot, theta, theta_dot = s[0], s[1], s[2], s[3]
    return (theta + 0.5 * theta_dot + 0.05 * x + 0.2 * x_dot > 0) * 1


def test_registered_ids_and_spaces():
    recall, cart = gym.make("ppolab/Recall-v0"), gym.make("ppolab/StatelessCartPole-v0")
    assert recall.observation_space == gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    assert recall.action_space == gym.spaces.Discrete(2)
    assert cart.observation_space.shape == (2,) and cart.observation_space.dtype == np.float32
    assert cart.action_space == gym.spaces.Discrete(2) and cart.spec.max_episode_steps == 500
    check_env(recall.unwrapped, skip_render_check=True)
    check_env(cart.unwrapped, skip_render_check=True)
    for name, shape in (("ppolab/Recall", (3,)), ("ppolab/StatelessCartPole", (2,))):
        env = GymnaxEnv(name)
        assert env.obs_spec.shape == shape and (env.action_spec.kind, env.action_spec.size) == ("discrete", 2)
        assert env.env.observation_space(env.params).shape == shape
    with pytest.raises(ConfigError, match="ppolab/Recall"):  # the unknown-name message lists the probes too
        GymnaxEnv("ppolab/NoSuchProbe")


@pytest.mark.parametrize("delay", [1, DELAY, 7])
def test_recall_rule_length_and_cue_only_at_step_0(delay):
    env = memory_probes.Recall(delay=delay)
    for seed in range(20):
        seen, rewards, length = _recall_episode(env, seed, lambda cue: int(cue > 0))
        assert length == delay + 1 and rewards[:-1] == [0.0] * delay and rewards[-1] == 1.0
        cue = seen[0][0]
        assert cue in (-1.0, 1.0) and list(seen[0][1:]) == [1.0, 0.0]
        for t, obs in enumerate(seen[1:], start=1):  # the cue is shown at step 0 only; the query at step delay
            assert obs.tolist() == ([0.0, 0.0, 1.0] if t == delay else [0.0, 0.0, 0.0])
        assert _recall_episode(env, seed, lambda cue: int(cue < 0))[1][-1] == 0.0  # the wrong answer: 0


def test_recall_feed_forward_policy_scores_one_half():
    env = gym.make("ppolab/Recall-v0")
    scores = [sum(_recall_episode(env, seed, lambda cue: 0)[1]) for seed in range(1000)]
    assert abs(np.mean(scores) - 0.5) < 0.05  # 1000 fair coins: sd 0.016
    with pytest.raises(ValueError, match="delay"):
        memory_probes.Recall(delay=0)


def test_stateless_cartpole_is_cartpole_without_velocities_and_truncates_at_500():
    for seed in range(2):
        full, stateless = gym.make("CartPole-v1"), gym.make("ppolab/StatelessCartPole-v0")
        s, _ = full.reset(seed=seed)
        o, _ = stateless.reset(seed=seed)
        steps = 0
        while True:
            np.testing.assert_array_equal(o, np.float32(s[[0, 2]]))
            a = _balance(s)
            s, r, te, tr, _ = full.step(a)
            o, r2, te2, tr2, _ = stateless.step(a)
            steps += 1
            assert (r, te, tr) == (r2, te2, tr2)
            if te or tr:
                break
        np.testing.assert_array_equal(o, np.float32(s[[0, 2]]))
        assert (steps, te, tr) == (500, False, True)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _jax_rollout(env: GymnaxEnv, keys, steps: int, answer_cue: jax.Array):
    """``steps`` steps of ``env`` for each key (vmapped with ``answer_cue`` [N] bool); the action: the sign of the
    cue remembered from the step whose is_first flag is set (answer_cue) or 0. Returns (obs before each step
    [N, T, *obs], rewards [N, T], terminated, truncated)."""

    def one(key, answer_cue):
        obs, state = env.reset(key)

        def body(carry, k):
            obs, state, cue = carry
            cue = jnp.where(obs[1] > 0, obs[0], cue)  # Recall's is_first flag: remember the cue
            action = jnp.where(answer_cue, (cue > 0).astype(jnp.int32), 0)
            nxt, state, r, te, tr, _ = env.step(k, state, action)
            return (nxt, state, cue), (obs, r, te, tr)

        _, out = jax.lax.scan(body, (obs, state, jnp.float32(0)), jax.random.split(key, steps))
        return out

    return jax.vmap(one)(keys, answer_cue)


def test_jax_recall_follows_the_gymnasium_rule_under_jit_and_vmap():
    env = GymnaxEnv("ppolab/Recall")
    n = 1024  # the first half answers with the remembered cue, the second always 0
    answer = jnp.arange(n) < n // 2
    obs, r, te, tr = map(np.asarray, _jax_rollout(env, jax.random.split(KEY(0), n), DELAY + 1,
                                                 answer))
    assert not tr.any() and te[:, DELAY].all() and not te[:, :DELAY].any()  # delay + 1 steps, then terminated
    assert (r[:, :DELAY] == 0).all() and set(np.unique(r[:, DELAY])) <= {0.0, 1.0}
    gym_env = memory_probes.Recall()
    expected = {}  # cue -> the Gymnasium episode's observations
    for seed in range(10):
        seen, _, _ = _recall_episode(gym_env, seed, lambda cue: 0)
        expected[float(seen[0][0])] = np.stack(seen)
    assert set(expected) == {-1.0, 1.0}
    for i in range(n):
        np.testing.assert_array_equal(obs[i], expected[float(obs[i, 0, 0])])
    cue, right, zero = obs[:, 0, 0], r[: n // 2, DELAY], r[n // 2:, DELAY]
    assert (right == 1).all()  # remembering the cue: always right
    assert ((zero == 1) == (cue[n // 2:] < 0)).all()  # answering 0 is right for a negative cue only
    assert abs(zero.mean() - 0.5) < 0.07  # the cue is a fair coin: 512 of them, sd 0.022


def test_jax_stateless_cartpole_is_cartpole_without_velocities_and_truncates_at_500():
    env = GymnaxEnv("ppolab/StatelessCartPole")

    @jax.jit
    @jax.vmap
    def rollout(key):
        o, s = env.reset(key)

        def body(carry, k):
            o, s = carry
            full = jnp.stack([s.x, s.x_dot, s.theta, s.theta_dot])  # gymnax CartPole's state (its dynamics)
            o2, s, r, te, tr, _ = env.step(k, s, _balance(full))  # acting on the full state
            return (o2, s), (o, full, r, te, tr)

        return jax.lax.scan(body, (o, s), jax.random.split(key, 500))[1]

    o, full, r, te, tr = map(np.asarray, rollout(jax.random.split(KEY(3), 4)))
    np.testing.assert_array_equal(o, full[..., [0, 2]])
    assert (r == 1).all() and not te.any() and tr[:, 499].all() and not tr[:, :499].any()  # truncated at step 500
    # the Gymnasium version, started from the same state, follows the same dynamics (float64 there, float32 here)
    gym_env = gym.make("ppolab/StatelessCartPole-v0")
    gym_env.reset(seed=0)
    gym_env.unwrapped.state = np.asarray(full[0, 0], np.float64)
    for t in range(60):
        obs, *_ = gym_env.step(_balance(full[0, t]))
        np.testing.assert_allclose(obs, o[0, t + 1], atol=1e-4)
    from ppolab.envs import jax_probes  # (imported by GymnaxEnv, after gymnax without seaborn)

    assert isinstance(env.env, jax_probes.StatelessCartPole) and env.env.name == "ppolab/StatelessCartPole"
