"""Running statistics for observation normalization and reward scaling, as pytrees kept in the train state.

Both are computed vectorized in the learner from a whole rollout (no per-env Python wrappers): the statistics are
frozen while a rollout is collected, so acting and learning see the same normalized inputs, and updated once per
iteration from the rollout just collected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

CLIP = 10.0


class RunningMeanStd(struct.PyTreeNode):
    mean: jax.Array
    var: jax.Array
    count: jax.Array

    @classmethod
    def create(cls, shape=()):
        return cls(jnp.zeros(shape, jnp.float32), jnp.ones(shape, jnp.float32), jnp.asarray(1e-4, jnp.float32))

    def update(self, x):
        """Merge a batch x [N, *shape] (parallel algorithm of Chan et al.)."""
        x = x.reshape((-1,) + self.mean.shape).astype(jnp.float32)
        b_mean, b_var, b_count = x.mean(0), x.var(0), jnp.asarray(x.shape[0], jnp.float32)
        delta = b_mean - self.mean
        tot = self.count + b_count
        mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        return RunningMeanStd(mean, m2 / tot, tot)


def normalize_obs(stats: RunningMeanStd, obs, eps=1e-8):
    return jnp.clip((obs - stats.mean) / jnp.sqrt(stats.var + eps), -CLIP, CLIP)


class ReturnStats(struct.PyTreeNode):
    """Running std of the discounted return, and the per-actor running return [B] it is computed from."""

    rms: RunningMeanStd
    ret: jax.Array  # [B]

    @classmethod
    def create(cls, num_envs):
        return cls(RunningMeanStd.create(), jnp.zeros((num_envs,), jnp.float32))


def scale_rewards(stats: ReturnStats, rewards, dones, gamma, eps=1e-8):
    """rewards, dones: [T, B]. ret_t = gamma * ret_{t-1} * (1 - done_{t-1}) + r_t; rewards / std(ret), clip 10."""

    def step(ret, xs):
        r, d = xs
        ret = ret * gamma + r
        return ret * (1.0 - d), ret

    ret, rets = jax.lax.scan(step, stats.ret, (rewards, dones.astype(jnp.float32)))
    rms = stats.rms.update(rets)
    scaled = jnp.clip(rewards / jnp.sqrt(rms.var + eps), -CLIP, CLIP)
    return ReturnStats(rms, ret), scaled
