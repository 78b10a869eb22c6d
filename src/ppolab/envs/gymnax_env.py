"""gymnax environments as pure single-env functions, with termination and truncation kept apart.

gymnax's own ``step`` auto-resets and returns the next episode's first observation where an episode ended. Here
``step`` calls ``step_env`` and ``reset_env`` itself and selects with ``jnp.where``, so the episode's last observation
comes out as ``final_obs`` (for the truncation bootstrap V(final observation)) next to the reset observation.
Vectorize with ``jax.vmap`` over keys, states and actions.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from ppolab.config import ConfigError
from ppolab.spaces import ActionSpec, ObsSpec, UnsupportedSpaceError


def action_spec_from_gymnax(space) -> ActionSpec:
    from gymnax.environments import spaces

    if isinstance(space, spaces.Discrete):
        return ActionSpec("discrete", int(space.n))
    if isinstance(space, spaces.Box):
        shape = tuple(space.shape) if space.shape else (1,)
        if len(shape) != 1:
            raise UnsupportedSpaceError(f"gymnax Box action space of shape {space.shape} is not supported; use 1-D")
        low = tuple(float(x) for x in np.broadcast_to(np.asarray(space.low, np.float32), shape))
        high = tuple(float(x) for x in np.broadcast_to(np.asarray(space.high, np.float32), shape))
        return ActionSpec("box", shape[0], low=low, high=high)
    raise UnsupportedSpaceError(f"gymnax action space {space} is not supported; supported: Discrete, Box (1-D)")


def obs_spec_from_gymnax(space) -> ObsSpec:
    from gymnax.environments import spaces

    if isinstance(space, spaces.Box):
        return ObsSpec(tuple(int(s) for s in space.shape), "float32")
    if isinstance(space, spaces.Discrete):
        return ObsSpec((int(space.n),), "float32")  # one-hot
    raise UnsupportedSpaceError(f"gymnax observation space {space} is not supported; supported: Box, Discrete")


class _ImportOnUse(types.ModuleType):
    """Stands in for a module until an attribute of it is first used; then the real module is imported."""

    def __getattr__(self, attr):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attr)


def import_gymnax():
    """``import gymnax``, without importing seaborn at that moment.

    gymnax's package imports all of its environments, and two of them import seaborn for their plotting helpers:
    0.7 s of a ~1.1 s import here, before any training starts. During the import, seaborn is a stand-in that imports
    the real seaborn on first use (so gymnax's plots still work); ppolab's own start-up never pays for it."""
    if "gymnax" in sys.modules:
        return sys.modules["gymnax"]
    stub = None
    if "seaborn" not in sys.modules and importlib.util.find_spec("seaborn") is not None:
        stub = sys.modules["seaborn"] = _ImportOnUse("seaborn")
    try:
        import gymnax
    finally:
        if stub is not None and sys.modules.get("seaborn") is stub:
            del sys.modules["seaborn"]
    return gymnax


class GymnaxEnv:
    """One gymnax env (``gymnax.make(name)`` with its default parameters; ``ppolab/NAME``: ppolab's memory probes
    from ``jax_probes``) as pure functions of one actor.

    reset(key) -> (obs [*obs], state); step(key, state, action) -> (next_obs, state, reward [], terminated [],
    truncated [], final_obs). ``terminated`` is the env's natural end (no future value); ``truncated`` is the time
    limit ``max_steps_in_episode`` reached without termination (bootstrap from V(final_obs)). Both False otherwise;
    never both True. Where either is set, next_obs/state are already the next episode's first ones.
    Hashable by (name), so jitted programs built from it are cached.
    """

    def __init__(self, name: str):
        try:
            gymnax = import_gymnax()
        except ImportError:  # pragma: no cover - gymnax is a core dependency
            raise ConfigError("gymnax:NAME environments need gymnax: pip install 'gymnax>=1.0'") from None
        from ppolab.envs import jax_probes  # ppolab's own gymnax envs, named ppolab/NAME

        if name not in gymnax.registered_envs and name not in jax_probes.ENVS:
            raise ConfigError(f"unknown gymnax environment {name!r}; choose one of: "
                              f"{', '.join([*gymnax.registered_envs, *jax_probes.ENVS])}")
        self.name = name
        self.env, self.params = jax_probes.make(name) if name in jax_probes.ENVS else gymnax.make(name)
        from gymnax.environments import spaces

        obs_space = self.env.observation_space(self.params)
        self.obs_spec = obs_spec_from_gymnax(obs_space)
        self.action_spec = action_spec_from_gymnax(self.env.action_space(self.params))
        self._one_hot = isinstance(obs_space, spaces.Discrete)

    def __hash__(self):
        return hash(("gymnax", self.name))

    def __eq__(self, other):
        return isinstance(other, GymnaxEnv) and other.name == self.name

    def _obs(self, obs):
        if self._one_hot:
            return jax.nn.one_hot(obs, self.obs_spec.shape[0], dtype=jnp.float32)
        return jnp.asarray(obs, jnp.float32).reshape(self.obs_spec.shape)

    def reset(self, key):
        obs, state = self.env.reset_env(key, self.params)
        return self._obs(obs), state

    def step(self, key, state, action):
        step_key, reset_key = jax.random.split(key)
        if self.action_spec.kind == "box":
            low, high = jnp.asarray(self.action_spec.low), jnp.asarray(self.action_spec.high)
            action = jnp.clip(action, low, high)
        obs_st, state_st, reward, terminated, _ = self.env.step_env(step_key, state, action, self.params)
        terminated = jnp.asarray(terminated, bool).reshape(())
        truncated = jnp.asarray(self.env.is_truncated(state_st, self.params), bool).reshape(()) & ~terminated
        done = terminated | truncated
        obs_re, state_re = self.env.reset_env(reset_key, self.params)
        state = jax.tree_util.tree_map(lambda r, s: jnp.where(done, r, s), state_re, state_st)
        final_obs = self._obs(obs_st)
        next_obs = jnp.where(done, self._obs(obs_re), final_obs)
        return next_obs, state, jnp.asarray(reward, jnp.float32).reshape(()), terminated, truncated, final_obs
