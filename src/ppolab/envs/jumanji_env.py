"""jumanji environments (``jumanji:NAME``) as pure single-actor functions with action masks.

Same interface as ``GymnaxEnv``: ``obs_spec``, ``action_spec``, ``reset(key) -> (obs, state)`` and
``step(key, state, action) -> (next_obs, state, reward, terminated, truncated, final_obs)`` with Gymnasium's
SAME_STEP auto-reset; vectorize with ``jax.vmap``. Tested with jumanji 1.1.2 on Knapsack-v1, Game2048-v1, Snake-v1.

The action mask. ``mask(state) -> bool [head_size]`` is the mask of the observation that ``state`` was returned
with (``reset``'s obs, or ``step``'s ``next_obs``: the next episode's first one where an episode ended). The adapter's
state (``JumanjiState``) carries jumanji's state and that mask, so a jitted driver that carries env states beside
observations has the mask with no change to the six outputs of ``step``; the mask is not part of ``obs`` and so is
not fed to the network. Layout: like the policy head's logits, [n] for Discrete(n), [sum(nvec)] for MultiDiscrete
(jumanji's per-sub-action [len(nvec), max(nvec)] masks, e.g. JobShop's, are cut to each sub-action's nvec and
concatenated). A joint mask of shape nvec (BinPack's) has no per-sub-action form and is rejected. An env without an
``action_mask`` field gets an all-True mask and ``has_mask = False``; ``use_mask=False`` (``--action-mask off``) sets
``has_mask = False`` too, so drivers ignore the mask (the env's own handling of ends is unchanged).

Observations. jumanji's are named tuples; every field but ``action_mask`` is flattened (its pytree leaves, in field
order, raveled) and cast to float32, concatenated into one vector: Knapsack-v1 [150] (weights, values, packed_items),
Game2048-v1 [16] (the board's tile exponents), Snake-v1 [721] (the 12x12x5 grid and step_count; too small a frame
for the Nature CNN, so flattened too).

Termination and truncation. jumanji ends every episode with ``step_type == LAST``; its ``truncation()`` leaves
``discount`` at 1 and ``termination()`` sets it to 0, so LAST with discount > 0 is a truncation. Some envs end their
time limit with ``termination()`` nonetheless; those are listed in ``_TIME_LIMIT_ONLY`` with the condition under which
their LAST step was the time limit alone (Snake-v1: ``step_count >= time_limit``, the move legal, the board not full;
checked in jumanji 1.1.2's source), and are reported as truncated. Knapsack-v1 and Game2048-v1 have no time limit.
A state with no legal action that jumanji does not end (Snake trapped by its own body: every move then ends the
episode with reward 0) is reported as terminated there, which is exact when, as in Snake, every action from it
ends the episode with reward 0; ``end_without_legal_action=False`` turns this off (the driver's check then raises).
Never both flags; where either is set, ``next_obs``/``state`` are already the next episode's.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ppolab import distributions as D
from ppolab.config import ConfigError
from ppolab.spaces import ActionSpec, ObsSpec, UnsupportedSpaceError

SUPPORTED = ("Knapsack-v1", "Game2048-v1", "Snake-v1")  # checked; other Discrete/MultiDiscrete single-agent envs run


def _snake_time_limit_only(env, prev, action, nxt) -> jax.Array:
    return (nxt.step_count >= env.time_limit) & prev.action_mask[action] & ~jnp.all(nxt.body)


# env name -> f(env, previous jumanji state, action, next jumanji state) -> bool: the LAST step was the time limit
_TIME_LIMIT_ONLY: dict[str, Callable] = {"Snake-v1": _snake_time_limit_only}


class JumanjiState(struct.PyTreeNode):
    """The adapter's state: jumanji's own state and the action mask of the current observation [head_size]."""

    env_state: object
    action_mask: jax.Array


def _fields(obs) -> dict:
    if hasattr(obs, "_asdict"):
        return dict(obs._asdict())
    if dataclasses.is_dataclass(obs):
        return {f.name: getattr(obs, f.name) for f in dataclasses.fields(obs)}
    if isinstance(obs, dict):
        return dict(obs)
    return {"obs": obs}


def action_spec_from_jumanji(spec) -> ActionSpec:
    from jumanji import specs

    if isinstance(spec, specs.DiscreteArray):
        return ActionSpec("discrete", int(spec.num_values))
    if isinstance(spec, specs.MultiDiscreteArray):
        nvec = tuple(int(n) for n in np.asarray(spec.num_values).ravel())
        if np.asarray(spec.num_values).ndim != 1:
            raise UnsupportedSpaceError(f"jumanji MultiDiscrete action of shape {spec.shape} is not supported; use 1-D")
        return ActionSpec("multidiscrete", len(nvec), nvec=nvec)
    raise UnsupportedSpaceError(f"jumanji action spec {spec} is not supported; supported: DiscreteArray, "
                                "MultiDiscreteArray (1-D)")


class JumanjiEnv:
    """One jumanji env (``jumanji.make(name)``, default arguments) as pure functions of one actor; see the module
    docstring. Hashable by (name, end_without_legal_action, use_mask), so jitted programs built from it are cached."""

    def __init__(self, name: str, end_without_legal_action: bool = True, use_mask: bool = True):
        try:
            import jumanji
        except ImportError:
            raise ConfigError("jumanji:NAME environments need jumanji: pip install 'ppolab[jumanji]'") from None
        if name not in jumanji.registered_environments():
            raise ConfigError(f"unknown jumanji environment {name!r}; choose one of: "
                              f"{', '.join(sorted(jumanji.registered_environments()))}")
        self.name, self.end_without_legal_action, self.use_mask = name, end_without_legal_action, use_mask
        self.env = jumanji.make(name)
        self.action_spec = action_spec_from_jumanji(self.env.action_spec)
        if tuple(self.env.reward_spec.shape) != ():
            raise UnsupportedSpaceError(f"jumanji:{name} has rewards of shape {self.env.reward_spec.shape} "
                                        "(multi-agent); ppolab supports single-agent envs with scalar rewards")
        _, ts = jax.eval_shape(self.env.reset, jax.random.PRNGKey(0))
        fields = _fields(ts.observation)
        self._provides_mask = "action_mask" in fields
        if self._provides_mask:
            self._check_mask_shape(tuple(fields["action_mask"].shape))
        self.has_mask = self._provides_mask and use_mask  # whether drivers should act on ``mask(state)``
        size = sum(int(np.prod(x.shape)) for k, v in fields.items() if k != "action_mask"
                   for x in jax.tree_util.tree_leaves(v))
        self.obs_spec = ObsSpec((size,), "float32")
        self._time_limit_only = _TIME_LIMIT_ONLY.get(name)

    def __hash__(self):
        return hash(("jumanji", self.name, self.end_without_legal_action, self.use_mask))

    def __eq__(self, other):
        return (isinstance(other, JumanjiEnv) and other.name == self.name
                and other.end_without_legal_action == self.end_without_legal_action
                and other.use_mask == self.use_mask)

    def _check_mask_shape(self, shape: tuple[int, ...]) -> None:
        spec = self.action_spec
        if spec.kind == "discrete" and shape == (spec.size,):
            return
        if spec.kind == "multidiscrete" and shape == (len(spec.nvec), max(spec.nvec)):
            return
        if spec.kind == "multidiscrete" and shape == spec.nvec:
            raise UnsupportedSpaceError(f"jumanji:{self.name} has a joint action mask of shape {shape} over "
                                        f"MultiDiscrete{list(spec.nvec)}; ppolab needs one mask per sub-action")
        raise UnsupportedSpaceError(f"jumanji:{self.name}: action mask of shape {shape} does not fit the action "
                                    f"spec {spec.kind} {spec.nvec or spec.size}")

    def _obs(self, obs) -> jax.Array:
        """jumanji observation -> float32 [obs_size] (every field but action_mask, raveled, in field order)."""
        leaves = [x for k, v in _fields(obs).items() if k != "action_mask" for x in jax.tree_util.tree_leaves(v)]
        return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])

    def _mask(self, obs) -> jax.Array:
        """jumanji observation -> bool [head_size] in the logits' layout."""
        if not self._provides_mask:
            return jnp.ones((self.action_spec.head_size,), bool)
        m = jnp.asarray(_fields(obs)["action_mask"], bool)
        if self.action_spec.kind == "multidiscrete":
            return jnp.concatenate([m[i, :n] for i, n in enumerate(self.action_spec.nvec)])
        return m

    def mask(self, state: JumanjiState) -> jax.Array:
        """bool [head_size]: the action mask of the observation ``state`` was returned with."""
        return state.action_mask

    def reset(self, key):
        env_state, ts = self.env.reset(key)
        return self._obs(ts.observation), JumanjiState(env_state, self._mask(ts.observation))

    def step(self, key, state: JumanjiState, action):
        from jumanji.types import StepType

        action = jnp.asarray(action, jnp.int32)
        env_state, ts = self.env.step(state.env_state, action)
        mask_st = self._mask(ts.observation)
        last = ts.step_type == StepType.LAST
        time_limit = last & (jnp.asarray(ts.discount).reshape(()) > 0)
        if self._time_limit_only is not None:
            time_limit = time_limit | (last & self._time_limit_only(self.env, state.env_state, action, env_state))
        trapped = ~D.has_legal(mask_st, self.action_spec.nvec or None)
        if not self.end_without_legal_action:
            trapped = jnp.zeros((), bool)
        truncated = time_limit & ~trapped
        terminated = (last | trapped) & ~truncated
        done = terminated | truncated
        env_re, ts_re = self.env.reset(key)
        state_st = JumanjiState(env_state, mask_st)
        state_re = JumanjiState(env_re, self._mask(ts_re.observation))
        new_state = jax.tree_util.tree_map(lambda r, s: jnp.where(done, r, s), state_re, state_st)
        final_obs = self._obs(ts.observation)
        next_obs = jnp.where(done, self._obs(ts_re.observation), final_obs)
        reward = jnp.asarray(ts.reward, jnp.float32).reshape(())
        return next_obs, new_state, reward, terminated, truncated, final_obs


@functools.lru_cache(maxsize=8)
def _random_episodes_fn(env: JumanjiEnv, max_steps: int) -> Callable:
    """keys [E, 2] -> (returns [E], lengths [E]) of the first episode under the uniform-legal policy (jitted, cached
    per env so repeated calls compile once)."""
    head, nvec = env.action_spec.head_size, env.action_spec.nvec or None

    def act(key, mask):
        zeros = jnp.zeros((head,), jnp.float32)
        dist = D.MaskedMultiCategorical(zeros, mask, nvec) if nvec else D.MaskedCategorical(zeros, mask)
        return dist.sample(key)

    def body(c):
        key, state, ret, _, t = c
        key, ka, ks = jax.random.split(key, 3)
        _, state, r, term, trunc, _ = env.step(ks, state, act(ka, env.mask(state)))
        return key, state, ret + r, term | trunc, t + 1

    def one(key):
        k0, key = jax.random.split(key)
        _, state = env.reset(k0)
        init = (key, state, jnp.zeros(()), jnp.zeros((), bool), jnp.zeros((), jnp.int32))
        c = jax.lax.while_loop(lambda c: ~c[3] & (c[4] < max_steps), body, init)
        return c[2], c[4]

    return jax.jit(jax.vmap(one))


def random_policy_returns(env: JumanjiEnv, episodes: int = 500, seed: int = 0,
                          max_steps: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) [episodes]: the undiscounted return and the length of the first episode of ``episodes``
    envs under the uniform policy over the legal actions (``MaskedCategorical`` with zero logits), from
    ``jax.random.PRNGKey(seed)``; an episode still running after ``max_steps`` steps is cut there."""
    returns, lengths = _random_episodes_fn(env, max_steps)(jax.random.split(jax.random.PRNGKey(seed), episodes))
    return np.asarray(returns), np.asarray(lengths)


def random_policy_score(name: str, episodes: int = 500, seed: int = 0) -> dict[str, float]:
    """Mean, std and standard error of the uniform-legal policy's return, and its mean episode length, on
    ``jumanji:name`` (see ``random_policy_returns``), for comparing a learner against chance."""
    r, n = random_policy_returns(JumanjiEnv(name), episodes, seed)
    return {"mean": float(r.mean()), "std": float(r.std()), "sem": float(r.std() / np.sqrt(len(r))),
            "episodes": int(len(r)), "seed": seed, "mean_length": float(n.mean())}
