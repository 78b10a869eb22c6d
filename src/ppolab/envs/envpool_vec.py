"""envpool environments (optional extra: ``pip install 'ppolab[envpool]'``) behind the ``GymnasiumVecEnv`` interface.

envpool resets a finished env on the *next* ``step`` (that step ignores its action and returns the reset observation
with reward 0): used as is, a rollout would hold one fake transition per episode and lose the truncation bootstrap.
Here, right after a step in which some envs finished, those envs are reset at once with ``reset(env_id)`` (sync mode
supports a partial reset, and the next ``step`` is then an ordinary one). So ``step`` has Gymnasium's SAME_STEP
semantics: next_obs is the new episode's first observation and final_obs the ended episode's last.
"""

from __future__ import annotations

import os

import numpy as np

from ppolab.config import ConfigError
from ppolab.envs.base import Episode
from ppolab.spaces import ActionSpec, ObsSpec, action_spec_from_gymnasium, obs_spec_from_gymnasium


def import_envpool():
    try:
        import envpool
    except ImportError:
        raise ConfigError("envpool:NAME environments need the envpool extra: pip install 'ppolab[envpool]' "
                          "(or pip install envpool)") from None
    return envpool


def _by_env_id(x, env_id, in_order: bool = False):
    """Rows of a batch put in env_id order (envpool may return a batch in any order)."""
    if in_order:
        return x
    out = np.empty_like(x)
    out[env_id] = x
    return out


class EnvpoolVecEnv:
    """K agents x B actors of one envpool task as one synchronous pool; arrays come out as [K, B, ...].

    Same interface as ``GymnasiumVecEnv``: ``reset(seed)`` and ``step(actions)`` -> (next_obs, reward, terminated,
    truncated, final_obs, episodes as ``Episode``s). envpool fixes seeds at creation (env i gets
    seed + i), so ``reset`` re-creates the pool when asked for another base seed.
    """

    episode_info = False

    def __init__(self, env_id: str, num_agents: int, num_envs: int, num_threads: int | None = None, seed: int = 0,
                 env_kwargs: dict | None = None):
        envpool = import_envpool()
        if env_id not in envpool.list_all_envs():
            raise ConfigError(f"unknown envpool task {env_id!r}; see envpool.list_all_envs() (e.g. Hopper-v4, "
                              "CartPole-v1, Pong-v5)")
        self.env_id, self.K, self.B = env_id, num_agents, num_envs
        self.n = num_agents * num_envs
        self.num_threads = num_threads or max(1, min(self.n, os.cpu_count() or 1))
        self.pool, self.seed, self.env_kwargs = None, None, dict(env_kwargs or {})
        self._make(seed)
        self.obs_spec: ObsSpec = obs_spec_from_gymnasium(self.pool.observation_space)
        self.action_spec: ActionSpec = action_spec_from_gymnasium(self.pool.action_space)
        self._ret = np.zeros(self.n, np.float64)
        self._len = np.zeros(self.n, np.int64)
        self._order = np.arange(self.n, dtype=np.int32)

    def _make(self, seed: int):
        envpool = import_envpool()
        if self.pool is not None:
            self.pool.close()
        self.pool = envpool.make_gymnasium(self.env_id, num_envs=self.n, batch_size=self.n,
                                           num_threads=self.num_threads, seed=int(seed), **self.env_kwargs)
        self.seed = int(seed)

    def _shape(self, x):
        return x.reshape((self.K, self.B) + x.shape[1:])

    def _obs(self, obs):
        obs = np.asarray(obs)
        return obs if self.obs_spec.image else obs.astype(np.float32, copy=False)

    def reset(self, seed: int | list[int]):
        """Start every actor. envpool seeds env i with base + i: the base is ``seed`` or ``seed[0]``."""
        base = int(seed) if isinstance(seed, int | np.integer) else int(seed[0])
        if base != self.seed:
            self._make(base)
        obs, info = self.pool.reset()
        self._ret[:] = 0
        self._len[:] = 0
        return self._shape(_by_env_id(self._obs(obs), info["env_id"]))

    def step(self, actions: np.ndarray):
        """actions [K, B, ...] -> next_obs, reward, terminated, truncated, final_obs [K, B, ...], episodes."""
        flat = self.action_spec.clip(actions.reshape((self.n,) + actions.shape[2:]))
        obs, rew, term, trunc, info = self.pool.step(flat, self._order)
        ids = info["env_id"]
        ordered = bool((ids == self._order).all())  # the usual case in sync mode: no reordering copies
        obs = _by_env_id(self._obs(obs), ids, ordered)
        rew = _by_env_id(np.asarray(rew, np.float64), ids, ordered)
        term = _by_env_id(np.asarray(term, bool), ids, ordered)
        trunc = _by_env_id(np.asarray(trunc, bool), ids, ordered) & ~term
        done = term | trunc
        self._ret += rew
        self._len += 1
        final = obs
        episodes = []
        if done.any():
            final = obs.copy()
            done_ids = np.flatnonzero(done).astype(np.int32)
            reset_obs, reset_info = self.pool.reset(done_ids)
            obs = obs.copy()
            obs[np.asarray(reset_info["env_id"])] = self._obs(reset_obs)
            for i in done_ids:
                episodes.append(Episode(int(i) // self.B, int(i) % self.B, float(self._ret[i]), int(self._len[i])))
            self._ret[done_ids] = 0
            self._len[done_ids] = 0
        return (self._shape(obs), self._shape(rew.astype(np.float32)), self._shape(term), self._shape(trunc),
                self._shape(final), episodes)

    def close(self):
        if self.pool is not None:
            self.pool.close()
            self.pool = None
