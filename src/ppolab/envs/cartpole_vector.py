"""Gymnasium's numpy-vectorized CartPole with SAME_STEP autoreset (``--vector-mode vector``).

The class is built on first use (``same_step_cartpole_class``), so that importing this module does not import
Gymnasium.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def same_step_cartpole_class():
    """Built on first use, so that importing this module does not import Gymnasium."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
    from gymnasium.vector import AutoresetMode

    class SameStepCartPoleVectorEnv(CartPoleVectorEnv):
        """Gymnasium's numpy-vectorized CartPole (all sub-envs in one numpy step, its physics unchanged) with
        SAME_STEP autoreset instead of its NEXT_STEP one.

        A sub-env whose episode ends (terminated, or truncated at ``max_episode_steps``) is reset within the same
        ``step``: the step returns the next episode's first observation, drawn from the sub-env's own generator in the
        reset bounds, and puts the episode's last observation in ``info["final_obs"]`` (mask
        ``info["_final_obs"]``), like ``LeanSyncVectorEnv``. No step is a NEXT_STEP filler (reward 0, action
        ignored). ``reset(seed=...)`` takes an int (sub-env i gets seed + i) or a list of per-sub-env seeds (as
        ``GymnasiumVecEnv`` passes); each sub-env draws its initial states from its own generator.
        """

        metadata = {**CartPoleVectorEnv.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}

        def reset(self, *, seed=None, options=None):
            n = self.num_envs
            if isinstance(seed, list | tuple | np.ndarray):
                seeds = [None if x is None else int(x) for x in seed]
            else:
                seeds = [None if seed is None else seed + i for i in range(n)]
            obs, info = super().reset(seed=seeds[0], options=options)  # counters, bounds, the shared generator
            # one generator per sub-env, as each env of a SyncVectorEnv has: an actor's reset states depend on its
            # own seed only (so an agent of a population does not depend on when the others' episodes end)
            self.sub_rngs = [np.random.default_rng(x) for x in seeds]
            self.state = np.stack([r.uniform(self.low, self.high, size=4) for r in self.sub_rngs], axis=1)
            return self.state.T.astype(np.float32), info

        def step(self, actions):
            # With no sub-env marked done from the previous step, the parent's NEXT_STEP reset is a no-op and its
            # step is the plain physics step of every sub-env.
            self.prev_done[:] = False
            obs, reward, terminated, truncated, _ = super().step(np.asarray(actions))
            done = terminated | truncated
            info = {}
            if done.any():
                idx = np.flatnonzero(done)
                info["final_obs"] = np.full(self.num_envs, None, object)
                info["_final_obs"] = done.copy()
                for i in idx:
                    info["final_obs"][i] = obs[i].copy()
                    self.state[:, i] = self.sub_rngs[i].uniform(self.low, self.high, size=4)
                self.steps[idx] = 0
                obs[idx] = self.state[:, idx].T.astype(np.float32)
            return obs, reward, terminated, truncated, info

    SameStepCartPoleVectorEnv.__module__ = __name__
    SameStepCartPoleVectorEnv.__qualname__ = "SameStepCartPoleVectorEnv"
    return SameStepCartPoleVectorEnv


def __getattr__(name):
    if name == "SameStepCartPoleVectorEnv":
        return same_step_cartpole_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
