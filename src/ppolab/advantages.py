"""Truncated generalized advantage estimation (paper eqs. 11-12), time-major [T, B].

Conventions: ``terminated[t]`` / ``truncated[t]`` are the flags *after* step t. A terminated step has no future
(V(s_{t+1}) = 0); a truncated step bootstraps from ``final_values[t]`` = V(final observation) because the
observation that follows it in the rollout already belongs to the next episode. The GAE recursion restarts on either.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, terminated: jax.Array, truncated: jax.Array, final_values: jax.Array,
        last_value: jax.Array, gamma: jax.Array | float, gae_lambda: jax.Array | float) -> tuple[jax.Array, jax.Array]:
    """Return (advantages [T, B], value targets [T, B]).

    rewards, values, terminated, truncated, final_values: [T, B]; values[t] = V(s_t).
    last_value: [B], V(s_T) of the observation after the last step.
        next_v_t = final_values[t] if truncated[t] else values[t+1]        (values[T] = last_value)
        delta_t  = r_t + gamma * next_v_t * (1 - terminated[t]) - V(s_t)   (eq. 12)
        A_t      = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}       (eq. 11, reset at episode ends)
    """
    terminated = terminated.astype(values.dtype)
    truncated = truncated.astype(values.dtype)
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    next_values = jnp.where(truncated > 0, final_values, next_values)
    deltas = rewards + gamma * next_values * (1.0 - terminated) - values
    not_done = 1.0 - jnp.maximum(terminated, truncated)

    def step(carry, xs):
        delta, nd = xs
        adv = delta + gamma * gae_lambda * nd * carry
        return adv, adv

    _, advantages = jax.lax.scan(step, jnp.zeros_like(last_value), (deltas, not_done), reverse=True)
    return advantages, advantages + values


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / (std + eps) over all elements (per minibatch in the update)."""
    return (x - x.mean()) / (x.std() + eps)
