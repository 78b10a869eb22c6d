"""A user's own Gymnasium env, living outside the ppolab package: ``--env my_corridor:MyCorridor-v0`` imports this
module (which registers the id) the way Gymnasium's ``gym.make("module:Env-v0")`` does.

A corridor of ``length`` cells: action 1 moves right, 0 left; reaching the right end pays 1 and terminates.
"""

import gymnasium as gym
import numpy as np


class MyCorridor(gym.Env):
    def __init__(self, length: int = 4):
        self.length = int(length)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.pos = 0

    def _obs(self):
        return np.array([self.pos / self.length], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = max(0, self.pos + (1 if int(action) == 1 else -1))
        done = self.pos >= self.length
        return self._obs(), float(done), done, False, {}


gym.register("MyCorridor-v0", entry_point=MyCorridor, max_episode_steps=50)
