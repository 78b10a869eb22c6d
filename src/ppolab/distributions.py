"""Action distributions as named pytrees of their parameters.

Each class holds the parameters of a batch of distributions (leading dims ``[...]``) and offers ``sample``,
``log_prob``, ``entropy``, ``mode`` and the *exact* ``kl(self, other)`` = KL[self || other] in closed form
(the paper's KL[pi_old, pi_theta] is ``old.kl(new)``). Static sizes are non-pytree fields so ``jax.vmap`` and
``lax.scan`` see only arrays.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_LOG_2PI_E = math.log(2 * math.pi * math.e)
_LOG_2PI = math.log(2 * math.pi)


class Categorical(struct.PyTreeNode):
    """pi(a) = softmax(logits)_a. logits: [..., n]."""

    logits: jax.Array

    def _logp(self):
        return jax.nn.log_softmax(self.logits, axis=-1)

    def sample(self, key):
        return jax.random.categorical(key, self.logits, axis=-1)

    def mode(self):
        return jnp.argmax(self.logits, axis=-1)

    def log_prob(self, action):
        a = action.astype(jnp.int32)[..., None]
        return jnp.take_along_axis(self._logp(), a, axis=-1)[..., 0]

    def entropy(self):
        logp = self._logp()
        return -jnp.sum(jnp.exp(logp) * logp, axis=-1)

    def kl(self, other: Categorical):
        """KL[self || other] = sum_a p(a) (log p(a) - log q(a))."""
        logp, logq = self._logp(), other._logp()
        return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


class DiagGaussian(struct.PyTreeNode):
    """Diagonal Gaussian N(mean, exp(log_std)^2). mean, log_std: [..., d]; log-prob and KL sum over d."""

    mean: jax.Array
    log_std: jax.Array

    def sample(self, key):
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self):
        return self.mean

    def log_prob(self, action):
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z**2 - self.log_std - 0.5 * _LOG_2PI, axis=-1)

    def entropy(self):
        return jnp.sum(self.log_std + 0.5 * _LOG_2PI_E, axis=-1)

    def kl(self, other: DiagGaussian):
        """KL[N(m1,s1) || N(m2,s2)] = sum log(s2/s1) + (s1^2 + (m1-m2)^2) / (2 s2^2) - 1/2."""
        var1, var2 = jnp.exp(2 * self.log_std), jnp.exp(2 * other.log_std)
        return jnp.sum(other.log_std - self.log_std + (var1 + (self.mean - other.mean) ** 2) / (2 * var2) - 0.5,
                       axis=-1)


class MultiCategorical(struct.PyTreeNode):
    """Independent categoricals (MultiDiscrete). logits: [..., sum(nvec)], split statically by ``nvec``."""

    logits: jax.Array
    nvec: tuple[int, ...] = struct.field(pytree_node=False)

    def _parts(self):
        splits = np.cumsum(self.nvec)[:-1].tolist()
        return [Categorical(lg) for lg in jnp.split(self.logits, splits, axis=-1)]

    def sample(self, key):
        keys = jax.random.split(key, len(self.nvec))
        return jnp.stack([c.sample(k) for c, k in zip(self._parts(), keys, strict=True)], axis=-1)

    def mode(self):
        return jnp.stack([c.mode() for c in self._parts()], axis=-1)

    def log_prob(self, action):
        return sum(c.log_prob(action[..., i]) for i, c in enumerate(self._parts()))

    def entropy(self):
        return sum(c.entropy() for c in self._parts())

    def kl(self, other: MultiCategorical):
        return sum(p.kl(q) for p, q in zip(self._parts(), other._parts(), strict=True))


class Bernoulli(struct.PyTreeNode):
    """Independent Bernoullis (MultiBinary). logits: [..., n]; p = sigmoid(logits)."""

    logits: jax.Array

    def sample(self, key):
        return jax.random.bernoulli(key, jax.nn.sigmoid(self.logits)).astype(jnp.int32)

    def mode(self):
        return (self.logits > 0).astype(jnp.int32)

    def log_prob(self, action):
        a = action.astype(self.logits.dtype)
        return jnp.sum(a * jax.nn.log_sigmoid(self.logits) + (1 - a) * jax.nn.log_sigmoid(-self.logits), axis=-1)

    def entropy(self):
        p = jax.nn.sigmoid(self.logits)
        return jnp.sum(-p * jax.nn.log_sigmoid(self.logits) - (1 - p) * jax.nn.log_sigmoid(-self.logits), axis=-1)

    def kl(self, other: Bernoulli):
        p = jax.nn.sigmoid(self.logits)
        lp, l1p = jax.nn.log_sigmoid(self.logits), jax.nn.log_sigmoid(-self.logits)
        lq, l1q = jax.nn.log_sigmoid(other.logits), jax.nn.log_sigmoid(-other.logits)
        return jnp.sum(p * (lp - lq) + (1 - p) * (l1p - l1q), axis=-1)


Distribution = Categorical | DiagGaussian | MultiCategorical | Bernoulli
