"""Memory probes: Gymnasium envs that only a policy with memory (``--policy lstm|gru``) can solve, registered by
``register()`` as ``ppolab/NAME-v0`` (called from ``probes.register``, so ``ppolab train --env ppolab/Recall-v0``
works). Their JAX twins, for the jitted driver, are in ``jax_probes.py`` (``gymnax:ppolab/Recall``, ...).

* ``ppolab/Recall-v0`` (``delay=4``): step 0 shows a cue c in {-1, +1}, steps 1..delay-1 show nothing, step ``delay``
  asks for it. Observation Box float32 [3] = (cue, is_first, is_query): (c, 1, 0) at t = 0, (0, 0, 0) for
  0 < t < delay, (0, 0, 1) at t = delay. Discrete(2) actions; reward 1 at the query step if action == (c > 0), else 0;
  0 at every other step; terminated after the query step (delay + 1 steps). The query observation is the same for
  both cues, so any feed-forward policy scores 0.5 per episode on average; a policy that remembers c scores 1.
* ``ppolab/StatelessCartPole-v0``: CartPole-v1 (500-step time limit, a truncation) observing only the cart position
  and the pole angle, obs = state[[0, 2]] = [x, theta]: the velocities must be inferred from successive
  observations. POPGym's StatelessCartPole (``PositionOnlyCartPole``: same observation, but a 200-step episode and
  rewards scaled to 1 / 200) and RL-Zoo's ``CartPoleNoVel-v1`` (the velocities zeroed, obs still [4]) are the same
  task.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

#: The indices of CartPole's state [x, x_dot, theta, theta_dot] that StatelessCartPole observes.
OBSERVED = (0, 2)


class Recall(gym.Env):
    """Remember a cue for ``delay`` steps (see the module docstring). ``t``: the index of the observation last
    returned (0 after reset); the action of step ``t`` answers that observation."""

    def __init__(self, delay: int = 4):
        if int(delay) != delay or delay < 1:
            raise ValueError(f"Recall: delay must be an integer >= 1 (got {delay!r})")
        self.delay = int(delay)
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t, self.cue = 0, 1.0

    def _obs(self) -> np.ndarray:
        first, query = self.t == 0, self.t == self.delay
        return np.array([self.cue if first else 0.0, float(first), float(query)], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.cue = float(self.np_random.choice((-1.0, 1.0)))
        return self._obs(), {}

    def step(self, action):
        if self.t == self.delay:  # the query: answer 1 for a positive cue, 0 for a negative one
            reward = float(int(action) == int(self.cue > 0))
            self.t += 1
            return np.zeros(3, np.float32), reward, True, False, {}
        self.t += 1
        return self._obs(), 0.0, False, False, {}


class StatelessCartPole(CartPoleEnv):
    """CartPole without velocities: obs = [x, theta] (the time limit comes from the registration, as CartPole-v1's)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        high = np.array([self.x_threshold * 2, self.theta_threshold_radians * 2], np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    @staticmethod
    def _drop_velocities(obs) -> np.ndarray:
        return np.asarray(obs, np.float32)[list(OBSERVED)]

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        return self._drop_velocities(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return self._drop_velocities(obs), reward, terminated, truncated, info


#: id -> (entry point, max_episode_steps)
ENVS = {"ppolab/Recall-v0": (Recall, None), "ppolab/StatelessCartPole-v0": (StatelessCartPole, 500)}


def register() -> None:
    """Register the memory probes as ``ppolab/NAME-v0`` (idempotent)."""
    for env_id, (entry, limit) in ENVS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry, max_episode_steps=limit)
