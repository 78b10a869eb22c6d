"""Brax environments (optional extra: ``pip install 'ppolab[brax]'``) as pure single-env functions.

The env is wrapped in Brax's ``EpisodeWrapper`` only (no ``AutoResetWrapper``): the wrapper ends an episode after
``episode_length`` steps and marks it in ``state.info["truncation"]``, kept apart from the env's own termination.
Ended episodes restart from a fresh ``reset`` with a new key (selected with ``jnp.where``), so every episode draws its
own initial state and the last observation of the ended episode is returned as ``final_obs``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppolab.config import ConfigError
from ppolab.spaces import ActionSpec, ObsSpec

BACKENDS = ("generalized", "positional", "spring", "mjx")


def import_brax():
    try:
        from brax import envs
    except ImportError:
        raise ConfigError("brax:NAME environments need the brax extra: pip install 'ppolab[brax]' "
                          "(or pip install brax)") from None
    return envs


class BraxEnv:
    """One Brax env as pure functions of one actor (vmap them over actors).

    reset(key) -> (obs [obs_size], state); step(key, state, action [action_size]) -> (next_obs, state, reward [],
    terminated [], truncated [], final_obs). Actions are clipped to [-1, 1] (Brax's actuator range convention).
    """

    def __init__(self, name: str, backend: str = "generalized", episode_length: int = 1000):
        envs = import_brax()
        from brax.envs.wrappers.training import EpisodeWrapper

        known = sorted(envs._envs)
        if name not in known:
            raise ConfigError(f"unknown brax environment {name!r}; choose one of: {', '.join(known)}")
        if backend not in BACKENDS:
            raise ConfigError(f"--brax-backend {backend!r} is not known; choose one of: {', '.join(BACKENDS)}")
        self.name, self.backend, self.episode_length = name, backend, episode_length
        self.env = EpisodeWrapper(envs.get_environment(name, backend=backend), episode_length, 1)
        self.obs_spec = ObsSpec((int(self.env.observation_size),), "float32")
        d = int(self.env.action_size)
        self.action_spec = ActionSpec("box", d, low=(-1.0,) * d, high=(1.0,) * d)

    def __hash__(self):
        return hash(("brax", self.name, self.backend, self.episode_length))

    def __eq__(self, other):
        return isinstance(other, BraxEnv) and (other.name, other.backend, other.episode_length) == (
            self.name, self.backend, self.episode_length)

    def reset(self, key):
        state = self.env.reset(key)
        return state.obs, state

    def step(self, key, state, action):
        nxt = self.env.step(state, jnp.clip(action, -1.0, 1.0))
        truncated = nxt.info["truncation"] > 0
        done = nxt.done > 0
        terminated = done & ~truncated
        fresh = self.env.reset(key)
        fresh = fresh.replace(info={**nxt.info, **fresh.info})  # same info keys as a stepped state
        new_state = jax.tree_util.tree_map(lambda r, s: jnp.where(done, r, s), fresh, nxt)
        return new_state.obs, new_state, nxt.reward.astype(jnp.float32), terminated, truncated, nxt.obs
