"""Action distributions as named pytrees of their parameters.

Each class holds the parameters of a batch of distributions (leading dims ``[...]``) and offers ``sample``,
``log_prob``, ``entropy``, ``mode`` and the *exact* ``kl(self, other)`` = KL[self || other] in closed form
(the paper's KL[pi_old, pi_theta] is ``old.kl(new)``). Static sizes are non-pytree fields so ``jax.vmap`` and
``lax.scan`` see only arrays.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ppolab.envs.errors import EnvFaultError

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


class _Factored:
    """A product of independent sub-distributions (``self._parts()``, one per sub-action): the mode and samples
    stack, log-probs, entropies and KLs add."""

    def mode(self):
        return jnp.stack([c.mode() for c in self._parts()], axis=-1)

    def log_prob(self, action):
        return sum(c.log_prob(action[..., i]) for i, c in enumerate(self._parts()))

    def entropy(self):
        return sum(c.entropy() for c in self._parts())

    def kl(self, other):
        return sum(p.kl(q) for p, q in zip(self._parts(), other._parts(), strict=True))


class MultiCategorical(_Factored, struct.PyTreeNode):
    """Independent categoricals (MultiDiscrete). logits: [..., sum(nvec)], split statically by ``nvec``."""

    logits: jax.Array
    nvec: tuple[int, ...] = struct.field(pytree_node=False)

    def _parts(self):
        splits = np.cumsum(self.nvec)[:-1].tolist()
        return [Categorical(lg) for lg in jnp.split(self.logits, splits, axis=-1)]

    def sample(self, key):
        keys = jax.random.split(key, len(self.nvec))
        return jnp.stack([c.sample(k) for c, k in zip(self._parts(), keys, strict=True)], axis=-1)



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


# ---- action masking (issue 13) ------------------------------------------------------------------------------------
# A mask is a bool array laid out like the logits ([..., n] or [..., sum(nvec)]); True marks a legal action.
# Over the legal set L of a state, with masked log-normalizer Z = log sum_{b in L} exp(l_b):
#   log pi(a) = l_a - Z for a in L (-inf outside),   H = -sum_{a in L} pi(a) log pi(a),
#   KL[p || q] = sum_{a in L_p} p(a) (log p(a) - log q(a))  (+inf if some a in L_p is illegal under q).
# Illegal entries never enter an exp, a log or a product: every -inf or 0 * -inf is replaced by an explicit 0 before
# any arithmetic (the "double where"), so values and gradients are finite and illegal logits get gradient exactly 0.
# A row with no legal action has no distribution: check_masks / has_legal find it; the classes return entropy 0,
# KL 0 and log_prob -inf there (never NaN) so one bad row cannot poison a batch before the driver raises.


class ActionMaskError(EnvFaultError, ValueError):
    """A state's action mask leaves no legal action; the message names the step and the sub-env. An env fault: the
    trainer stops with a checkpoint of the last whole iteration (``loop.run_loop``)."""


def _masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """[..., n], [..., n] bool -> log pi over the legal set [..., n], with 0 (not -inf) at illegal entries."""
    m = jax.lax.stop_gradient(jnp.max(jnp.where(mask, logits, -jnp.inf), axis=-1, keepdims=True))
    z = jnp.where(mask, logits - m, 0.0)
    s = jnp.sum(jnp.where(mask, jnp.exp(z), 0.0), axis=-1, keepdims=True)
    lse = jnp.log(jnp.where(s > 0, s, 1.0))  # no 0/0 even in the backward pass (jax_debug_nans stays quiet)
    return jnp.where(mask, z - lse, 0.0)


def _gumbel_from_uniform(u):
    """The Gumbel noise of ``NumpyPolicy``'s convention: G = -log(-log U), U clipped to [1e-12, 1 - 1e-7]."""
    xp = np if isinstance(u, np.ndarray) else jnp
    return -xp.log(-xp.log(xp.clip(u, 1e-12, 1.0 - 1e-7)))


class MaskedCategorical(struct.PyTreeNode):
    """pi(a) = exp(l_a) / sum_{b legal} exp(l_b) for legal a, 0 for illegal a. logits: [..., n]; mask: [..., n] bool."""

    logits: jax.Array
    mask: jax.Array

    def _logp(self):
        return _masked_log_softmax(self.logits, self.mask)

    def _probs(self, logp):
        return jnp.where(self.mask, jnp.exp(logp), 0.0)

    def sample(self, key):
        """Gumbel-max over the legal actions only [...] (an illegal action scores -inf)."""
        g = jax.random.gumbel(key, self.logits.shape, self.logits.dtype)
        return jnp.argmax(jnp.where(self.mask, self.logits + g, -jnp.inf), axis=-1)

    def sample_with_noise(self, u):
        """u [..., n] uniform in [0, 1) (``NumpyPolicy.draw_noise``) -> the action of ``masked_sample_numpy``."""
        return jnp.argmax(jnp.where(self.mask, self.logits + _gumbel_from_uniform(u), -jnp.inf), axis=-1)

    def mode(self):
        """The most probable legal action [...]."""
        return jnp.argmax(jnp.where(self.mask, self.logits, -jnp.inf), axis=-1)

    def log_prob(self, action):
        """log pi(action) [...]: exactly 0 where one action is legal; -inf for an illegal action (finite gradient)."""
        a = action.astype(jnp.int32)[..., None]
        lp = jnp.take_along_axis(self._logp(), a, axis=-1)[..., 0]
        legal = jnp.take_along_axis(self.mask, a, axis=-1)[..., 0]
        return jnp.where(legal, lp, -jnp.inf)

    def entropy(self):
        """-sum_{a legal} pi(a) log pi(a) [...]; exactly 0 where one action is legal."""
        logp = self._logp()
        return -jnp.sum(self._probs(logp) * logp, axis=-1)

    def kl(self, other: MaskedCategorical):
        """KL[self || other] over self's legal set [...]; +inf where self puts mass on an action other forbids."""
        logp, logq = self._logp(), other._logp()
        kl = jnp.sum(self._probs(logp) * (logp - logq), axis=-1)
        uncovered = jnp.any(self.mask & ~other.mask, axis=-1)
        return jnp.where(uncovered, jnp.inf, kl)


class MaskedMultiCategorical(_Factored, struct.PyTreeNode):
    """Independent masked categoricals (MultiDiscrete), one mask per sub-action.

    logits, mask: [..., sum(nvec)], split statically by ``nvec`` (the mask of sub-action i is its own slice)."""

    logits: jax.Array
    mask: jax.Array
    nvec: tuple[int, ...] = struct.field(pytree_node=False)

    def _parts(self):
        splits = np.cumsum(self.nvec)[:-1].tolist()
        return [MaskedCategorical(lg, mk) for lg, mk in
                zip(jnp.split(self.logits, splits, axis=-1), jnp.split(self.mask, splits, axis=-1), strict=True)]

    def sample(self, key):
        keys = jax.random.split(key, len(self.nvec))
        return jnp.stack([c.sample(k) for c, k in zip(self._parts(), keys, strict=True)], axis=-1)

    def sample_with_noise(self, u):
        """u [..., sum(nvec)] uniform -> actions [..., len(nvec)] (the same as ``masked_sample_numpy``)."""
        us = jnp.split(u, np.cumsum(self.nvec)[:-1].tolist(), axis=-1)
        return jnp.stack([c.sample_with_noise(x) for c, x in zip(self._parts(), us, strict=True)], axis=-1)



def with_mask(dist, mask: jax.Array | None):
    """Categorical -> MaskedCategorical, MultiCategorical -> MaskedMultiCategorical (mask [..., head] bool);
    ``mask=None`` returns ``dist`` unchanged. Other distributions cannot be masked."""
    if mask is None:
        return dist
    mask = jnp.asarray(mask, bool)
    if isinstance(dist, Categorical):
        return MaskedCategorical(dist.logits, mask)
    if isinstance(dist, MultiCategorical):
        return MaskedMultiCategorical(dist.logits, mask, dist.nvec)
    raise TypeError(f"action masks need a Discrete or MultiDiscrete action space, not {type(dist).__name__}")


def _segments(mask, nvec: tuple[int, ...] | None) -> tuple[tuple[int, int], ...]:
    """The (lo, hi) slices of the sub-actions in a mask's last axis (one slice for Discrete)."""
    return _segments_of(mask.shape[-1], tuple(nvec) if nvec else None)


@functools.lru_cache(maxsize=64)  # the host driver asks at every step
def _segments_of(n: int, nvec: tuple[int, ...] | None) -> tuple[tuple[int, int], ...]:
    nvec = nvec or (n,)
    if sum(nvec) != n:
        raise ValueError(f"mask of last dimension {n} does not match nvec {nvec} (sum {sum(nvec)})")
    ends = np.cumsum((0,) + nvec).tolist()
    return tuple(zip(ends[:-1], ends[1:], strict=True))


def has_legal(mask: jax.Array, nvec: tuple[int, ...] | None = None) -> jax.Array:
    """[..., head] -> bool [...]: every sub-action has at least one legal value (JAX, for the jitted driver)."""
    b = _segments(mask, nvec)
    return jnp.all(jnp.stack([jnp.any(mask[..., lo:hi], axis=-1) for lo, hi in b], -1), -1)


def num_legal(mask: jax.Array, nvec: tuple[int, ...] | None = None) -> jax.Array:
    """[..., head] -> [...] float32: the number of legal joint actions, prod_i |L_i| (the metric's mean)."""
    b = _segments(mask, nvec)
    counts = [jnp.sum(mask[..., lo:hi], axis=-1, dtype=jnp.float32) for lo, hi in b]
    return jnp.prod(jnp.stack(counts, -1), -1)


def is_legal(mask: jax.Array, action: jax.Array, nvec: tuple[int, ...] | None = None) -> jax.Array:
    """mask [..., head], action [...] (Discrete) or [..., len(nvec)] -> bool [...] (for ``illegal_action_rate``);
    the mask broadcasts against the action's batch dims."""
    b = _segments(mask, nvec)
    batch = action.shape if not nvec else action.shape[:-1]
    mask = jnp.broadcast_to(mask, batch + mask.shape[-1:])
    if not nvec:
        return jnp.take_along_axis(mask, action.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    parts = [jnp.take_along_axis(mask[..., lo:hi], action[..., i, None].astype(jnp.int32), axis=-1)[..., 0]
             for i, (lo, hi) in enumerate(b)]
    return jnp.all(jnp.stack(parts, -1), -1)


def check_masks(mask: np.ndarray, nvec: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """Host side: the index (of the leading dims, e.g. (t, b)) of the first row with a sub-action that has no
    legal value, or None if every row is usable. mask: [..., head] bool."""
    mask = np.asarray(mask, bool)
    starts = [lo for lo, _ in _segments(mask, nvec)]
    # one reduction per call (this runs at every host step): any() over each sub-action's slice, then all()
    ok = mask.any(-1) if len(starts) == 1 else np.logical_or.reduceat(mask, starts, axis=-1).all(-1)
    if ok.all():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmin(ok.ravel())), ok.shape))


def raise_if_empty(mask: np.ndarray, nvec: tuple[int, ...] | None = None, step: int | None = None) -> None:
    """Raise ``ActionMaskError`` naming the first row of ``mask`` with no legal action: mask [B, head] (one step,
    ``step``), [T, B, head] (a rollout) or more leading dims (reported as an index)."""
    bad = check_masks(mask, nvec)
    if bad is None:
        return
    if len(bad) == 1:
        at = f"sub-env {bad[0]}" if step is None else f"step {step}, sub-env {bad[0]}"
    elif len(bad) == 2:
        at = f"step {bad[0]}, sub-env {bad[1]}"
    else:
        at = f"index {bad}"
    raise ActionMaskError(f"action mask with no legal action at {at}: an env must leave at least one legal action "
                          "in every state it does not end")


def masked_sample_numpy(logits: np.ndarray, mask: np.ndarray, u: np.ndarray | None,
                        nvec: tuple[int, ...] | None = None) -> np.ndarray:
    """``NumpyPolicy``'s sampler with masks: logits, mask, u [..., head] -> int32 actions [...] (Discrete) or
    [..., len(nvec)]. u None: the best legal action; else Gumbel-max over the legal actions with
    G = -log(-log U), the same action as ``Masked*.sample_with_noise(u)``."""
    b = _segments(mask, nvec)
    out = []
    for lo, hi in b:
        z = logits[..., lo:hi] if u is None else logits[..., lo:hi] + _gumbel_from_uniform(u[..., lo:hi])
        out.append(np.argmax(np.where(mask[..., lo:hi], z, -np.inf), axis=-1).astype(np.int32))
    return np.stack(out, axis=-1) if nvec else out[0]


Distribution = (Categorical | DiagGaussian | MultiCategorical | Bernoulli | MaskedCategorical
                | MaskedMultiCategorical)
