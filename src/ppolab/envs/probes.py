"""Probe environments: tiny Gymnasium envs whose correct answer is known, registered as ``ppolab/NAME-v0``.

* ``ppolab/ConstantTruncated-v0``: observation 0, reward 1 every step, never terminates, truncated after 20 steps.
  The value of every state is sum_t gamma^t = 1 / (1 - gamma) only if truncation bootstraps from V(final obs).
* ``ppolab/TargetGaussian-v0``: one-step episodes; observation x ~ U[-1, 1]^1, reward -(a - x)^2 for a Box action.
  A Gaussian policy must learn mean(x) = x.
* ``ppolab/NaNReward-v0``: CartPole whose reward turns NaN after ``nan_after`` steps (fault injection).
* ``ppolab/DictObsMultiDiscrete-v0``: Dict observations (flattened) and MultiDiscrete actions.
* ``ppolab/TupleAction-v0``: an action space ppolab does not support (for error tests).
* ``ppolab/SlowCartPole-v0``: CartPole-v1 whose every step and reset also waits ``delay_s`` (2 ms) without using
  the CPU: an env bound by waiting (a simulator in another process or machine, a robot), for the distributed mode's
  benchmark (``--ray-workers``).

``register()`` also registers the memory probes of ``memory_probes.py`` (``ppolab/Recall-v0``,
``ppolab/StatelessCartPole-v0``).
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from ppolab.envs import memory_probes


class ConstantTruncated(gym.Env):
    def __init__(self, horizon: int = 20):
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.horizon, self.t = horizon, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, False, self.t >= self.horizon, {}


class TargetGaussian(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.x = np.zeros(1, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.np_random.uniform(-1, 1, size=1).astype(np.float32)
        return self.x.copy(), {}

    def step(self, action):
        r = -float(np.sum((np.asarray(action, np.float32) - self.x) ** 2))
        return self.x.copy(), r, True, False, {}


class NaNReward(CartPoleEnv):
    def __init__(self, nan_after: int = 300, **kw):
        super().__init__(**kw)
        self.nan_after, self.count = nan_after, 0

    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        self.count += 1
        return obs, (float("nan") if self.count > self.nan_after else r), term, trunc, info


class SlowCartPole(CartPoleEnv):
    def __init__(self, delay_s: float = 0.002, **kw):
        super().__init__(**kw)
        self.delay_s = delay_s

    def reset(self, *, seed=None, options=None):
        time.sleep(self.delay_s)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        time.sleep(self.delay_s)
        return super().step(action)


class DictObsMultiDiscrete(gym.Env):
    """Dict observation {"pos": Box(2,), "grid": Box(2, 2)} and MultiDiscrete([3, 2]) actions: reward 1 when the
    first action matches the sign pattern of pos (0: both negative, 1: mixed, 2: both positive), 10-step episodes."""

    def __init__(self):
        self.observation_space = spaces.Dict({"pos": spaces.Box(-1.0, 1.0, (2,), np.float32),
                                              "grid": spaces.Box(-1.0, 1.0, (2, 2), np.float32)})
        self.action_space = spaces.MultiDiscrete([3, 2])
        self.t, self.pos = 0, np.zeros(2, np.float32)

    def _obs(self):
        return {"pos": self.pos.copy(), "grid": np.zeros((2, 2), np.float32)}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.pos = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        return self._obs(), {}

    def step(self, action):
        target = int(np.sum(self.pos > 0))
        r = float(int(action[0]) == target)
        self.t += 1
        self.pos = self.np_random.uniform(-1, 1, size=2).astype(np.float32)
        return self._obs(), r, False, self.t >= 10, {}


class TupleAction(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(3)))

    def reset(self, *, seed=None, options=None):
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, True, False, {}


def register() -> None:
    memory_probes.register()
    for name, entry in (("ConstantTruncated-v0", ConstantTruncated), ("TargetGaussian-v0", TargetGaussian),
                        ("NaNReward-v0", NaNReward), ("TupleAction-v0", TupleAction),
                        ("DictObsMultiDiscrete-v0", DictObsMultiDiscrete), ("SlowCartPole-v0", SlowCartPole)):
        if f"ppolab/{name}" not in gym.registry:
            limit = 500 if issubclass(entry, CartPoleEnv) else None  # CartPole-v1's time limit
            gym.register(f"ppolab/{name}", entry_point=entry, max_episode_steps=limit)
