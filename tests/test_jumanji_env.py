"""The jumanji backend adapter: specs, jit/vmap, masks equal to jumanji's own, SAME_STEP auto-reset, and termination
kept apart from truncation on constructed Snake states (time limit, trapped snake, illegal move)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jumanji")

from ppolab import distributions as D  # noqa: E402
from ppolab.envs.jumanji_env import JumanjiEnv, JumanjiState, random_policy_returns  # noqa: E402

ENVS = ("Knapsack-v1", "Game2048-v1", "Snake-v1")
UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3


@pytest.fixture(scope="module", params=ENVS)
def env(request):
    return JumanjiEnv(request.param)


def _legal_action(key, mask):
    return D.MaskedCategorical(jnp.zeros(mask.shape, jnp.float32), mask).sample(key)


def _reference_step(env, key, state, action):
    """What the adapter's step must return, computed from jumanji directly (no adapter code but ``_obs``)."""
    from jumanji.types import StepType

    env_state, ts = env.env.step(state.env_state, action)
    env_re, ts_re = env.env.reset(key)
    done = (ts.step_type == StepType.LAST) | ~jnp.any(ts.observation.action_mask)
    mask = jnp.where(done, ts_re.observation.action_mask, ts.observation.action_mask)
    next_obs = jnp.where(done, env._obs(ts_re.observation), env._obs(ts.observation))
    return next_obs, mask, ts.reward, done, env._obs(ts.observation)


def test_specs_shapes_and_dtypes(env):
    """Shapes and dtypes of vmapped reset/step against the specs (abstractly; the rollout test runs them jitted)."""
    B = 8
    keys = jax.ShapeDtypeStruct((B, 2), jnp.uint32)
    obs, state = jax.eval_shape(jax.vmap(env.reset), keys)
    assert obs.shape == (B,) + env.obs_spec.shape and obs.dtype == jnp.float32
    mask = jax.eval_shape(jax.vmap(env.mask), state)
    assert mask.shape == (B, env.action_spec.head_size) and mask.dtype == jnp.bool_
    assert env.has_mask and env.action_spec.kind == "discrete"
    actions = jax.ShapeDtypeStruct((B,), jnp.int32)
    next_obs, state2, reward, term, trunc, final_obs = jax.eval_shape(jax.vmap(env.step), keys, state, actions)
    assert next_obs.shape == final_obs.shape == (B,) + env.obs_spec.shape
    assert next_obs.dtype == final_obs.dtype == jnp.float32
    assert reward.shape == term.shape == trunc.shape == (B,)
    assert reward.dtype == jnp.float32 and term.dtype == trunc.dtype == jnp.bool_
    assert isinstance(state2, JumanjiState)
    assert jax.tree_util.tree_structure(state2) == jax.tree_util.tree_structure(state)
    assert hash(env) == hash(JumanjiEnv(env.name)) and env == JumanjiEnv(env.name)


def test_knapsack_observation_is_the_flattened_fields():
    env = JumanjiEnv("Knapsack-v1")
    obs, state = jax.jit(env.reset)(jax.random.PRNGKey(3))
    _, ts = jax.jit(env.env.reset)(jax.random.PRNGKey(3))
    o = ts.observation
    np.testing.assert_array_equal(np.asarray(obs), np.concatenate(
        [np.asarray(o.weights), np.asarray(o.values), np.asarray(o.packed_items, np.float32)]))
    np.testing.assert_array_equal(np.asarray(env.mask(state)), np.asarray(o.action_mask))


@pytest.mark.parametrize("name", ENVS)
def test_rollout_matches_jumanji_with_same_step_autoreset(name):
    """A vmapped scan of random legal steps: every output equals jumanji's own step (or its reset where the episode
    ended); episodes do end, and the flags are never both set."""
    env = JumanjiEnv(name)
    B, T = 4, {"Knapsack-v1": 60, "Game2048-v1": 240, "Snake-v1": 40}[name]

    def step(carry, key):
        state = carry
        ka, ks = jax.random.split(key)
        ks = jax.random.split(ks, B)
        mask = jax.vmap(env.mask)(state)
        a = jax.vmap(_legal_action)(jax.random.split(ka, B), mask)
        ref = jax.vmap(lambda k, s, x: _reference_step(env, k, s, x))(ks, state, a)
        out = jax.vmap(env.step)(ks, state, a)
        legal = D.is_legal(mask, a)
        return out[1], (out, ref, jax.vmap(env.mask)(out[1]), legal)

    _, state = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), B))
    if name == "Snake-v1":  # a uniform-legal snake lives ~1500 steps: start near the time limit of 4000
        start = env.env.unwrapped.time_limit - jnp.asarray([30, 25, 20, 15], jnp.int32)
        state = state.replace(env_state=state.env_state.replace(step_count=start))
    _, (out, ref, mask_next, legal) = jax.jit(lambda s: jax.lax.scan(step, s, jax.random.split(
        jax.random.PRNGKey(2), T)))(state)
    next_obs, _, reward, term, trunc, final_obs = (np.asarray(x) for x in out)
    r_next, r_mask, r_reward, r_done, r_final = (np.asarray(x) for x in ref)
    assert np.asarray(legal).all()
    np.testing.assert_array_equal(next_obs, r_next)
    np.testing.assert_array_equal(final_obs, r_final)
    np.testing.assert_array_equal(np.asarray(mask_next), r_mask)
    np.testing.assert_array_equal(reward, r_reward.astype(np.float32))
    np.testing.assert_array_equal(term | trunc, r_done)
    assert not np.any(term & trunc)
    done = term | trunc
    assert done.sum() >= 1, "no episode ended: the auto-reset was not exercised"
    if name == "Snake-v1":
        assert trunc.sum() >= 1
    assert np.all(np.any(final_obs[done] != next_obs[done], axis=-1))  # a fresh episode after an end
    np.testing.assert_array_equal(final_obs[~done], next_obs[~done])
    assert D.check_masks(np.asarray(mask_next)) is None
    if name != "Snake-v1":
        assert not trunc.any()  # no time limit in Knapsack-v1 or Game2048-v1


# ---- constructed Snake states --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def snake():
    """The Snake adapter and its jitted step, reset and jumanji's own jitted step (compiled once for these tests)."""
    env = JumanjiEnv("Snake-v1")
    return env, jax.jit(env.step), jax.jit(env.reset), jax.jit(env.env.step)


def _snake_state(env, step_count):
    """Head at (0, 1) of a length-5 snake (0,1) <- (1,1) <- (1,0) <- (2,0) <- (3,0) (tail), fruit at (6, 6).
    LEFT traps the head in the corner (0, 0); RIGHT is a free legal move; UP leaves the board (illegal)."""
    from jumanji.environments.routing.snake.types import Position, State

    inner = env.env.unwrapped
    body_state = jnp.zeros(inner.board_shape, jnp.int32)
    for (r, c), v in zip(((0, 1), (1, 1), (1, 0), (2, 0), (3, 0)), (5, 4, 3, 2, 1), strict=True):
        body_state = body_state.at[r, c].set(v)
    head = Position(jnp.asarray(0, jnp.int32), jnp.asarray(1, jnp.int32))
    mask = inner._get_action_mask(head, body_state)
    s = State(key=jax.random.PRNGKey(7), body=body_state > 0, body_state=body_state, head_position=head,
              tail=body_state == 1, fruit_position=Position(jnp.asarray(6, jnp.int32), jnp.asarray(6, jnp.int32)),
              length=jnp.asarray(5, jnp.int32), step_count=jnp.asarray(step_count, jnp.int32), action_mask=mask)
    return JumanjiState(s, mask)


def test_snake_time_limit_is_truncation_and_natural_ends_are_termination(snake):
    env, step, reset, jumanji_step = snake
    limit = env.env.unwrapped.time_limit
    key = jax.random.PRNGKey(0)
    state = _snake_state(env, 10)
    assert np.asarray(env.mask(state)).tolist() == [False, True, False, True]
    # mid-episode, free move: neither flag
    _, _, _, term, trunc, _ = step(key, state, jnp.asarray(RIGHT))
    assert not bool(term) and not bool(trunc)
    # the time limit reached by a free legal move: truncated, not terminated (jumanji itself says termination)
    at_limit = _snake_state(env, limit - 1)
    _, ts = jumanji_step(at_limit.env_state, jnp.asarray(RIGHT))
    assert int(ts.step_type) == 2 and float(ts.discount) == 0.0
    next_obs, new_state, _, term, trunc, final_obs = step(key, at_limit, jnp.asarray(RIGHT))
    assert bool(trunc) and not bool(term)
    np.testing.assert_array_equal(np.asarray(next_obs), np.asarray(reset(key)[0]))
    np.testing.assert_array_equal(np.asarray(final_obs), np.asarray(jax.jit(env._obs)(ts.observation)))
    assert int(new_state.env_state.step_count) == 0
    # an illegal move at the time limit is the natural end: terminated
    _, _, _, term, trunc, _ = step(key, at_limit, jnp.asarray(UP))
    assert bool(term) and not bool(trunc)


def test_snake_trapped_state_ends_as_terminated(snake):
    env, step, reset, jumanji_step = snake
    key = jax.random.PRNGKey(0)
    state = _snake_state(env, 10)
    env_state, ts = jumanji_step(state.env_state, jnp.asarray(LEFT))
    assert int(ts.step_type) == 1 and not np.asarray(ts.observation.action_mask).any()  # jumanji goes on
    next_obs, new_state, _, term, trunc, final_obs = step(key, state, jnp.asarray(LEFT))
    assert bool(term) and not bool(trunc)
    np.testing.assert_array_equal(np.asarray(final_obs), np.asarray(jax.jit(env._obs)(ts.observation)))
    np.testing.assert_array_equal(np.asarray(next_obs), np.asarray(reset(key)[0]))
    assert np.asarray(env.mask(new_state)).any()
    # trapped at the time limit: terminated (the value there is 0), not truncated
    _, _, _, term, trunc, _ = step(key, _snake_state(env, env.env.unwrapped.time_limit - 1), jnp.asarray(LEFT))
    assert bool(term) and not bool(trunc)
    # without the rule the episode goes on with an empty mask, which the driver's check reports
    raw = JumanjiEnv("Snake-v1", end_without_legal_action=False)
    _, s2, _, term, trunc, _ = jax.jit(raw.step)(key, state, jnp.asarray(LEFT))
    assert not bool(term) and not bool(trunc)
    assert D.check_masks(np.asarray(raw.mask(s2))[None]) == (0,)


def test_unknown_env_and_unsupported_mask():
    from ppolab.config import ConfigError
    from ppolab.spaces import UnsupportedSpaceError

    with pytest.raises(ConfigError, match="unknown jumanji environment"):
        JumanjiEnv("NoSuchEnv-v0")
    with pytest.raises(UnsupportedSpaceError, match="joint action mask"):
        JumanjiEnv("BinPack-v2")


def test_multidiscrete_per_sub_action_mask():
    env = JumanjiEnv("JobShop-v0")
    nvec = env.action_spec.nvec
    obs, state = jax.jit(env.reset)(jax.random.PRNGKey(0))
    _, ts = jax.jit(env.env.reset)(jax.random.PRNGKey(0))
    full = np.asarray(ts.observation.action_mask)
    np.testing.assert_array_equal(np.asarray(env.mask(state)),
                                  np.concatenate([full[i, :n] for i, n in enumerate(nvec)]))
    assert obs.shape == env.obs_spec.shape


def test_random_policy_returns_is_deterministic_and_legal_only():
    env = JumanjiEnv("Knapsack-v1")
    a, n = random_policy_returns(env, episodes=64, seed=0)
    b, _ = random_policy_returns(env, episodes=64, seed=0)
    np.testing.assert_array_equal(a, b)
    assert 1 <= n.min() and n.max() <= 50  # at most one step per item
    # a legal item always fits: a uniform-legal policy packs until nothing fits, so it scores well above 0
    assert a.shape == (64,) and a.min() > 0 and 8 < a.mean() < 20
