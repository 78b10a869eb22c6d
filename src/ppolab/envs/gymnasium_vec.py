"""Gymnasium environments through the vector API, with termination and truncation kept apart.

The vector env runs in Gymnasium's SAME_STEP autoreset mode: when a sub-env's episode ends, ``step`` returns the
first observation of the next episode and puts the episode's last observation in ``info["final_obs"]``. So no fake
transition ever crosses an episode boundary, and a truncated step can bootstrap from V(final observation).
"""

from __future__ import annotations

import numpy as np

from ppolab.spaces import ActionSpec, ObsSpec, action_spec_from_gymnasium, obs_spec_from_gymnasium


class EnvError(ValueError):
    """The environment id or the environment itself is unusable; the message says what to do."""


def check_env_id(env_id: str) -> None:
    """Raise ``EnvError`` for an id Gymnasium does not know, before anything is created or written."""
    import gymnasium as gym

    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise EnvError(f"unknown environment id {env_id!r}: {e} Use a registered Gymnasium id (e.g. CartPole-v1, "
                       "Hopper-v5) or a prefixed one (gymnax:CartPole-v1, brax:hopper, envpool:Hopper-v4)") from None


def _needs_flatten(space) -> bool:
    from gymnasium import spaces

    return not isinstance(space, spaces.Box)


def make_gymnasium_vec(env_id: str, num_envs: int, mode: str = "sync", env_kwargs: dict | None = None,
                       wrappers: list | None = None):
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    check_env_id(env_id)
    wrappers = list(wrappers or [])
    probe = gym.make(env_id, **(env_kwargs or {}))
    try:
        for w in wrappers:
            probe = w(probe)
        if _needs_flatten(probe.observation_space):
            wrappers.append(gym.wrappers.FlattenObservation)
    finally:
        probe.close()
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, wrappers=wrappers or None,
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **(env_kwargs or {}))


class GymnasiumVecEnv:
    """K agents x B actors of one Gymnasium env id as one vector env; arrays come out as [K, B, ...].

    ``step`` returns (next_obs, reward, terminated, truncated, final_obs) where final_obs[k, b] is the episode's last
    observation where it ended (terminated or truncated), else the ordinary next observation.
    Episode returns and lengths are tracked per actor from the rewards, unless ``episode_info`` is set: then they are
    read from ``info["episode"]`` as written by an inner ``RecordEpisodeStatistics`` (Atari: the true game score
    while the agent sees clipped rewards and life-loss terminations).
    """

    def __init__(self, env_id: str, num_agents: int, num_envs: int, mode: str = "sync", env_kwargs=None,
                 wrappers=None, episode_info: bool = False):
        self.env_id, self.K, self.B = env_id, num_agents, num_envs
        self.episode_info = episode_info
        self.env = make_gymnasium_vec(env_id, num_agents * num_envs, mode, env_kwargs, wrappers)
        self.obs_spec: ObsSpec = obs_spec_from_gymnasium(self.env.single_observation_space)
        self.action_spec: ActionSpec = action_spec_from_gymnasium(self.env.single_action_space)
        self._ret = np.zeros(num_agents * num_envs, np.float64)
        self._len = np.zeros(num_agents * num_envs, np.int64)

    def _shape(self, x):
        return x.reshape((self.K, self.B) + x.shape[1:])

    def reset(self, seed: int | list[int]):
        """Seed actor i with ``seed + i`` (int) or ``seed[i]`` (list of K * B seeds)."""
        seeds = [seed + i for i in range(self.K * self.B)] if isinstance(seed, int) else [int(s) for s in seed]
        obs, _ = self.env.reset(seed=seeds)
        self._ret[:] = 0
        self._len[:] = 0
        return self._shape(np.asarray(obs))

    def step(self, actions: np.ndarray):
        """actions [K, B, ...] -> next_obs, reward, terminated, truncated, final_obs [K, B, ...], finished episodes
        as a list of (agent, actor, return, length)."""
        flat = actions.reshape((self.K * self.B,) + actions.shape[2:])
        flat = self.action_spec.clip(flat)
        obs, rew, term, trunc, info = self.env.step(flat)
        obs = np.asarray(obs)
        rew = np.asarray(rew, np.float64)
        done = term | trunc
        final = obs
        episodes = []
        self._ret += rew
        self._len += 1
        # SAME_STEP autoreset moves the ending step's info (with "episode") to info["final_info"]
        ended = info.get("final_info", {}) if self.episode_info else {}
        if "episode" in ended:
            ep = ended["episode"]
            for i in np.flatnonzero(ended["_episode"]):
                episodes.append((i // self.B, i % self.B, float(ep["r"][i]), int(ep["l"][i])))
        if done.any():
            final = obs.copy()
            mask = info.get("_final_obs", done)
            for i in np.flatnonzero(mask):
                final[i] = info["final_obs"][i]
            for i in np.flatnonzero(done):
                if not self.episode_info:
                    episodes.append((i // self.B, i % self.B, float(self._ret[i]), int(self._len[i])))
                self._ret[i] = 0
                self._len[i] = 0
        return (self._shape(obs), self._shape(rew.astype(np.float32)), self._shape(term), self._shape(trunc),
                self._shape(final), episodes)

    def close(self):
        self.env.close()
