"""Named pytrees that flow through one iteration (see docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax
from flax import struct

from ppolab.distributions import Distribution
from ppolab.normalize import ReturnStats, RunningMeanStd

#: Network parameters: flax's nested mapping {"params": {layer: {"kernel": [in, out], "bias": [out]}}}.
Params = Mapping[str, Any]


class HParams(struct.PyTreeNode):
    """Traced coefficients of one agent (scalars); vmapping over them sweeps hyperparameters in one program."""

    learning_rate: jax.Array
    clip_eps: jax.Array
    kl_beta: jax.Array      # initial beta of L^KLPEN
    kl_target: jax.Array    # d_targ
    ent_coef: jax.Array     # c2
    vf_coef: jax.Array      # c1
    gamma: jax.Array
    gae_lambda: jax.Array


class TrainState(struct.PyTreeNode):
    """Everything the learner needs to continue exactly: a checkpoint is this pytree plus the config."""

    params: Params
    opt_state: optax.OptState  # Adam's moments (and the gradient clip's empty state), shaped like ``params``
    hparams: HParams
    beta: jax.Array            # current KL penalty coefficient (adapted once per update for kl-adaptive)
    obs_stats: RunningMeanStd
    ret_stats: ReturnStats
    iteration: jax.Array       # updates done so far (position of the alpha schedule)
    env_steps: jax.Array       # environment steps so far (per agent)
    key: jax.Array             # PRNG key, split every iteration


class Rollout(struct.PyTreeNode):
    """T steps of B actors, time-major. Raw (unnormalized) observations and rewards; the learner derives the rest.

    obs[t] is the observation the action was chosen from; terminated[t] / truncated[t] are the flags after step t;
    final_obs[t] is the last observation of the episode that ended at step t (meaningful where truncated[t]);
    last_obs is the observation after the final step, for V(s_T). action_mask[t] is the mask of obs[t] (True =
    legal, laid out like the policy head's logits: [n] for Discrete, [sum(nvec)] for MultiDiscrete), or None for an
    env without masks (a None leaf: the unmasked program is unchanged).

    Recurrent policies (None otherwise): starts[t] is True where obs[t] is an episode's first observation (the carry
    is reset there); carries is the actors' carry before step c * L of each of the C = T / L sequences (``seq_len``
    L), leaves [C, B, H], as acting had it (before that step's reset).
    """

    obs: jax.Array          # [T, B, *obs]
    actions: jax.Array      # [T, B, *act] (unclipped)
    rewards: jax.Array      # [T, B]
    terminated: jax.Array   # [T, B] bool
    truncated: jax.Array    # [T, B] bool
    final_obs: jax.Array    # [T, B, *obs]
    last_obs: jax.Array     # [B, *obs]
    action_mask: jax.Array | None = None  # [T, B, head] bool, or None
    starts: jax.Array | None = None       # [T, B] bool (recurrent policies)
    carries: Any = None                   # leaves [C, B, H] (recurrent policies)


class Batch(struct.PyTreeNode):
    """A flattened batch of N = T * B samples as the update sees it. For a recurrent policy the leading axis is
    instead the S = C * B sequences and every per-sample leaf is [S, L, ...]; ``starts`` [S, L] and ``carry``
    (leaves [S, H], the carry before each sequence's first step) are then set (None otherwise)."""

    obs: jax.Array          # [N, *obs] normalized
    actions: jax.Array      # [N, *act]
    old_log_prob: jax.Array  # [N] log pi_old(a|s)
    old_dist: Distribution  # leaves [N, ...]: pi_old(.|s) for the exact KL
    old_values: jax.Array   # [N] V_old(s)
    advantages: jax.Array   # [N]
    targets: jax.Array      # [N] V^targ = A + V_old
    action_mask: jax.Array | None = None  # [N, head] bool: pi_old and pi are both masked with it (or None)
    starts: jax.Array | None = None       # [S, L] bool (recurrent policies)
    carry: Any = None                     # leaves [S, H] (recurrent policies)
