"""From a rollout to the batch the epochs optimize: advantages (GAE, eqs. 11-12) and the old policy's quantities.

Feed-forward policies (``make_batch``): N = T * B samples. Recurrent policies (``make_sequence_batch``): the
rollout's T steps of each actor are cut into C = T / L sequences of L = ``spec.seq_len`` steps, S = C * B of them
(sequence s = c * B + b holds steps c*L .. c*L + L - 1 of actor b), each evaluated from the carry the actor had
before its first step. Minibatches are whole sequences. In both, pi_theta_old is evaluated here with theta_old =
state.params in exactly the minibatch shapes of the first epoch (order ``perm0``), so on the first minibatch of the
first epoch r_t(theta) is exactly 1; stored action masks mask pi_old as they mask pi in ``update.loss_fn``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppolab import advantages as adv_lib
from ppolab import normalize as norm_lib
from ppolab.types import Batch, Rollout, TrainState


def prepare_obs(spec, state: TrainState, obs: jax.Array) -> jax.Array:
    """Observation as the network sees it (normalized with the frozen running stats when enabled)."""
    if spec.normalize_obs:
        return norm_lib.normalize_obs(state.obs_stats, obs)
    return obs


def take(tree, idx: jax.Array):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def apply_batch(net, params, mb: Batch, heads: str = "both"):
    """(distribution, values) of a batch's samples (feed-forward, [N]) or sequences (recurrent, [S, L])."""
    if not net.recurrent:
        return net.apply(params, mb.obs, heads=heads, action_mask=mb.action_mask)
    dist, values, _ = net.apply(params, mb.obs, mb.starts, mb.carry, heads=heads, action_mask=mb.action_mask)
    return dist, values


def num_units(spec, rollout: Rollout) -> int:
    """What the update shuffles: samples (T * B) or, for a recurrent policy, sequences (T / L * B)."""
    T, B = rollout.rewards.shape
    return T * B if not spec.seq_len else T // spec.seq_len * B


def _advantages(spec, state: TrainState, rollout: Rollout, values, final_values, last_value):
    """GAE over time-major [T, B] values: (advantages, targets, return stats), rewards scaled when enabled."""
    hp = state.hparams
    rewards = rollout.rewards.astype(jnp.float32)
    ret_stats = state.ret_stats
    if spec.normalize_reward:
        ret_stats, rewards = norm_lib.scale_rewards(
            state.ret_stats, rewards, rollout.terminated | rollout.truncated, hp.gamma)
    advantages, targets = adv_lib.gae(rewards, values, rollout.terminated, rollout.truncated, final_values,
                                      last_value, hp.gamma, hp.gae_lambda)
    return advantages, targets, ret_stats


def _old_policy(net, params, batch: Batch, perm0: jax.Array, num_minibatches: int, extra=()):
    """pi_old's (dist, log_prob, value, *extra outputs) of every sample or sequence of ``batch``, evaluated minibatch
    by minibatch in the first epoch's order ``perm0`` and put back in batch order."""
    n = perm0.shape[0]

    def one(_, idx):
        mb = take(batch, idx)
        if net.recurrent:
            dist, value, carries = net.apply(params, mb.obs, mb.starts, mb.carry, action_mask=mb.action_mask)
            return None, (dist, dist.log_prob(mb.actions), value, carries)
        dist, value = net.apply(params, mb.obs, action_mask=mb.action_mask)
        return None, (dist, dist.log_prob(mb.actions), value)

    _, out = jax.lax.scan(one, None, perm0.reshape(num_minibatches, -1))
    inv = jnp.zeros((n,), jnp.int32).at[perm0].set(jnp.arange(n, dtype=jnp.int32), unique_indices=True)
    return jax.tree_util.tree_map(lambda x: x.reshape((n,) + x.shape[2:])[inv], out)


def make_batch(spec, net, state: TrainState, rollout: Rollout, perm0: jax.Array) -> tuple[Batch, norm_lib.ReturnStats]:
    """(Batch, updated return statistics) of a rollout [T, B]; ``perm0``: int32 [``num_units``], the first epoch's
    order of samples (or sequences). With ``spec.norm_adv_batch`` the advantages are standardized here, once over
    the batch (baselines ppo1), and the loss takes them as they are."""
    make = make_sequence_batch if net.recurrent else _sample_batch
    batch, ret_stats = make(spec, net, state, rollout, perm0)
    if spec.norm_adv and spec.norm_adv_batch:
        batch = batch.replace(advantages=adv_lib.normalize(batch.advantages))
    return batch, ret_stats


def _sample_batch(spec, net, state: TrainState, rollout: Rollout,
                  perm0: jax.Array) -> tuple[Batch, norm_lib.ReturnStats]:
    """``make_batch`` for a feed-forward policy: N = T * B samples."""
    T, B = rollout.rewards.shape
    N = T * B
    flat = lambda x: None if x is None else x.reshape((N,) + x.shape[2:])
    batch = Batch(obs=flat(prepare_obs(spec, state, rollout.obs)), actions=flat(rollout.actions), old_log_prob=None,
                  old_dist=None, old_values=None, advantages=None, targets=None, action_mask=flat(rollout.action_mask))
    old_dist, old_logp, old_values = _old_policy(net, state.params, batch, perm0, spec.num_minibatches)
    _, last_value = net.apply(state.params, prepare_obs(spec, state, rollout.last_obs), heads="value")
    _, final_values = net.apply(state.params, prepare_obs(spec, state, rollout.final_obs), heads="value")
    advantages, targets, ret_stats = _advantages(spec, state, rollout, old_values.reshape(T, B), final_values,
                                                 last_value)
    return batch.replace(old_log_prob=old_logp, old_dist=old_dist, old_values=old_values,
                         advantages=advantages.reshape(N), targets=targets.reshape(N)), ret_stats


def to_sequences(x: jax.Array, seq_len: int) -> jax.Array:
    """Time-major [T, B, ...] -> sequences [S, L, ...], sequence s = c * B + b (steps c*L .. c*L + L - 1 of b)."""
    T, B = x.shape[:2]
    C = T // seq_len
    x = jnp.swapaxes(x.reshape((C, seq_len, B) + x.shape[2:]), 1, 2)  # [C, B, L, ...]
    return x.reshape((C * B, seq_len) + x.shape[3:])


def to_time_major(x: jax.Array, num_envs: int) -> jax.Array:
    """Inverse of ``to_sequences``: [S, L, ...] -> [T, B, ...]."""
    S, L = x.shape[:2]
    x = jnp.swapaxes(x.reshape((S // num_envs, num_envs, L) + x.shape[2:]), 1, 2)  # [C, L, B, ...]
    return x.reshape((S // num_envs * L, num_envs) + x.shape[3:])


def make_sequence_batch(spec, net, state: TrainState, rollout: Rollout,
                        perm0: jax.Array) -> tuple[Batch, norm_lib.ReturnStats]:
    """``make_batch`` for a recurrent policy (see the module docstring). Value bootstraps keep the episode's carry:
    V(final_obs[t]) of a truncated step is computed with the carry after step t (no reset), V(last_obs) with the
    carry after step T - 1 (reset if that step ended its episode)."""
    T, B = rollout.rewards.shape
    L = spec.seq_len
    S = T // L * B
    seq = lambda x: None if x is None else to_sequences(x, L)
    carry = jax.tree_util.tree_map(lambda c: c.reshape((S,) + c.shape[2:]), rollout.carries)
    batch = Batch(obs=seq(prepare_obs(spec, state, rollout.obs)), actions=seq(rollout.actions), old_log_prob=None,
                  old_dist=None, old_values=None, advantages=None, targets=None,
                  action_mask=seq(rollout.action_mask), starts=seq(rollout.starts), carry=carry)
    old_dist, old_logp, old_values, carries = _old_policy(net, state.params, batch, perm0, spec.num_minibatches)

    flat = lambda x: x.reshape((S * L,) + x.shape[2:])
    final_obs = flat(seq(prepare_obs(spec, state, rollout.final_obs)))
    _, final_values, _ = net.apply(state.params, final_obs, jnp.zeros((S * L,), bool),
                                   jax.tree_util.tree_map(flat, carries), heads="value", sequence=False)
    last_carry = jax.tree_util.tree_map(lambda c: c[S - B:, L - 1], carries)  # the last sequence of each actor
    last_start = rollout.terminated[-1] | rollout.truncated[-1]
    _, last_value, _ = net.apply(state.params, prepare_obs(spec, state, rollout.last_obs), last_start, last_carry,
                                 heads="value", sequence=False)
    advantages, targets, ret_stats = _advantages(
        spec, state, rollout, to_time_major(old_values, B), to_time_major(final_values.reshape(S, L), B), last_value)
    return batch.replace(old_log_prob=old_logp, old_dist=old_dist, old_values=old_values,
                         advantages=seq(advantages), targets=seq(targets)), ret_stats
