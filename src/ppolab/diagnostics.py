"""The learner's diagnostics: the metric names of an update, the minibatch diagnostics carried through the epochs
(``Diagnostics``, one vector read by name), the non-finite bits and the action-mask metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ppolab import distributions as D
from ppolab.networks import ActorCritic
from ppolab.types import Rollout

METRIC_KEYS = (
    "policy_loss", "value_loss", "entropy", "kl", "approx_kl", "clip_fraction", "explained_variance",
    "ratio_min", "ratio_max", "beta", "learning_rate", "clip_eps", "grad_norm", "minibatches_done",
    "nonfinite_input", "nonfinite_update", "nonfinite_kind", "illegal_action_rate", "legal_actions_mean",
)
#: Bits of the ``nonfinite_kind`` metric: which quantities were non-finite in this update (0 when all were finite).
#: "parameters": the parameters after a minibatch step; "incoming parameters": already before the update.
NONFINITE_BITS = {"observation": 1, "reward": 2, "loss": 4, "gradient": 8, "parameters": 16, "incoming parameters": 32}


#: ``Diagnostics.values``' order: six summed over the minibatches taken (reported as means), the ratio's min and max.
DIAGNOSTICS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "ratio_min",
               "ratio_max")
MEAN_KEYS = DIAGNOSTICS[:6]


class Diagnostics(struct.PyTreeNode):
    """Minibatch diagnostics, read by name (``diag.approx_kl``: the k3 estimate E[(r - 1) - log r]), held as one
    vector: the epochs' running sums stay one vector operation a minibatch (eight scalar ones: Hopper 37 -> 47 ms)."""

    values: jax.Array  # float32 [8], in ``DIAGNOSTICS`` order

    @classmethod
    def of(cls, **named: jax.Array) -> Diagnostics:
        return cls(jnp.stack([jnp.asarray(named[k], jnp.float32) for k in DIAGNOSTICS]))

    @classmethod
    def empty(cls) -> Diagnostics:
        return cls(jnp.asarray([0.0] * 6 + [jnp.inf, -jnp.inf], jnp.float32))

    def accumulate(self, mb: Diagnostics) -> Diagnostics:
        """Running sums (the first six), minimum and maximum of the ratio."""
        a, b = self.values, mb.values
        return Diagnostics(jnp.concatenate([a[:6] + b[:6], jnp.minimum(a[6:7], b[6:7]), jnp.maximum(a[7:], b[7:])]))

    def with_grad_norm(self, grad_norm: jax.Array) -> Diagnostics:
        return Diagnostics(self.values.at[DIAGNOSTICS.index("grad_norm")].set(grad_norm))


for _i, _name in enumerate(DIAGNOSTICS):
    setattr(Diagnostics, _name, property(lambda self, i=_i: self.values[i], doc=f"``{_name}`` (scalar)"))


def flag_bits(flag: jax.Array, loss_ok: jax.Array, grads_ok: jax.Array, new_ok: jax.Array) -> jax.Array:
    """The ``NONFINITE_BITS`` of a minibatch step whose update would have been applied (``flag``)."""
    return jnp.where(flag & ~loss_ok, NONFINITE_BITS["loss"], 0) \
        | jnp.where(flag & ~grads_ok, NONFINITE_BITS["gradient"], 0) \
        | jnp.where(flag & ~new_ok, NONFINITE_BITS["parameters"], 0)


def mask_metrics(net: ActorCritic, rollout: Rollout) -> tuple[jax.Array | None, dict]:
    """(usable, metrics) of a rollout's action masks [T, B, head]. ``usable``: bool, every step left a legal action
    (None without masks). Metrics: ``illegal_action_rate`` (the fraction of actions their stored mask forbids; 0
    without masks), ``legal_actions_mean`` (legal joint actions per step; without masks all, ``num_actions``) and,
    with masks, ``empty_mask_at`` (int32 t * B + b of the first step with no legal action, -1 if none)."""
    mask = rollout.action_mask
    if mask is None:
        return None, {"illegal_action_rate": jnp.zeros((), jnp.float32),
                      "legal_actions_mean": jnp.asarray(net.action.num_actions, jnp.float32)}
    nvec = net.action.nvec or None
    usable = D.has_legal(mask, nvec).reshape(-1)
    ok = jnp.all(usable)
    return ok, {"illegal_action_rate": jnp.mean(~D.is_legal(mask, rollout.actions, nvec), dtype=jnp.float32),
                "legal_actions_mean": jnp.mean(D.num_legal(mask, nvec)),
                "empty_mask_at": jnp.where(ok, -1, jnp.argmin(usable)).astype(jnp.int32)}


def update_metrics(inputs, carry, kind: jax.Array, kl: jax.Array) -> dict:
    """The update's metrics, {``METRIC_KEYS``: scalar}: the minibatch diagnostics averaged over the steps taken
    (``inputs``: ``update.StepInputs``; ``carry``: the final ``update.SGDCarry``)."""
    batch = inputs.batch
    n = jnp.maximum(carry.steps, 1).astype(jnp.float32)
    var_t = jnp.var(batch.targets)
    metrics = {k: getattr(carry.sums, k) / n for k in MEAN_KEYS}
    metrics.update(
        ratio_min=carry.sums.ratio_min, ratio_max=carry.sums.ratio_max, kl=kl, beta=inputs.beta,
        learning_rate=inputs.learning_rate, clip_eps=inputs.clip_eps, minibatches_done=carry.steps.astype(jnp.float32),
        explained_variance=jnp.where(var_t > 0, 1.0 - jnp.var(batch.targets - batch.old_values) / var_t, 0.0),
        nonfinite_input=(~inputs.input_ok).astype(jnp.float32), nonfinite_update=carry.skipped.astype(jnp.float32),
        nonfinite_kind=kind.astype(jnp.float32))
    return metrics
