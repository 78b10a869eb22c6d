"""Envs that fail on purpose, for the fault tests (issue 16): ``--env faulty_envs:RaiseAt-v0`` etc.

Every env here is CartPole with one fault, triggered in one sub-env (the one reset with seed ``bad_seed``) at its
``at``-th step, so that the error must name that sub-env and step:
* ``RaiseAt-v0``: ``step`` raises ``RuntimeError("boom")``;
* ``BadShapeAt-v0``: ``step`` returns an observation of shape (5,) instead of (4,);
* ``HangAt-v0``: ``step`` sleeps for an hour (a hung simulator);
* ``RejectAction-v0``: ``step`` raises ``ValueError`` for action 1 after ``at`` steps (an action the env rejects).
"""

import time

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class _Faulty(CartPoleEnv):
    def __init__(self, at: int = 40, bad_seed: int = -1, **kw):
        super().__init__(**kw)
        self.at, self.bad_seed, self.bad, self.n = at, bad_seed, False, 0

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.bad = seed == self.bad_seed or self.bad_seed < 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self.n += 1
        obs, r, te, tr, info = super().step(action)
        if self.bad and self.n == self.at:
            obs, r, te, tr, info = self.fault(action, obs, r, te, tr, info)
        return obs, r, te, tr, info


class RaiseAt(_Faulty):
    def fault(self, action, *out):
        raise RuntimeError("boom")


class BadShapeAt(_Faulty):
    def fault(self, action, obs, *rest):
        return (np.zeros(5, np.float32), *rest)


class HangAt(_Faulty):
    def fault(self, action, *out):
        time.sleep(3600)
        return out


class RejectAction(_Faulty):
    def step(self, action):
        if self.bad and self.n >= self.at and int(action) == 1:
            raise ValueError(f"action {int(action)} is not allowed now")
        self.n += 1
        return CartPoleEnv.step(self, action)


for _cls in (RaiseAt, BadShapeAt, HangAt, RejectAction):
    gym.register(f"{_cls.__name__}-v0", entry_point=_cls, max_episode_steps=500)
