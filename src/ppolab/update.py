"""The PPO learner: one pure function ``learn(spec, net, state, rollout) -> (state, metrics)`` used by every driver.

Algorithm 1 of the paper: from a rollout of N actors x T steps, compute advantages (GAE, eqs. 11-12), then optimize
the chosen surrogate for K epochs of minibatch Adam, theta_old <- theta. Controllers (the adaptive KL beta of
section 4, the alpha schedule of lr / clip range) run once per update, after the epochs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from ppolab import advantages as adv_lib
from ppolab import normalize as norm_lib
from ppolab.config import Config
from ppolab.networks import ActorCritic
from ppolab.objectives import SURROGATE_TERMS, PolicyTerms, adapt_beta, value_loss_term
from ppolab.types import Batch, HParams, Rollout, TrainState

METRIC_KEYS = (
    "policy_loss", "value_loss", "entropy", "kl", "approx_kl", "clip_fraction", "explained_variance",
    "ratio_min", "ratio_max", "beta", "learning_rate", "clip_eps", "grad_norm", "minibatches_done",
    "nonfinite_input", "nonfinite_update", "nonfinite_kind",
)
#: Bits of the ``nonfinite_kind`` metric: which quantities were non-finite in this update (0 when all were finite).
#: "parameters": the parameters after a minibatch step; "incoming parameters": already before the update.
NONFINITE_BITS = {"observation": 1, "reward": 2, "loss": 4, "gradient": 8, "parameters": 16, "incoming parameters": 32}


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
    """The static part of the configuration: it fixes the compiled program (hashable)."""

    objective: str
    num_epochs: int
    num_minibatches: int
    num_iterations: int
    norm_adv: bool
    vf_clip: float | None
    max_grad_norm: float | None
    adam_eps: float
    anneal_lr: bool
    anneal_clip: bool
    normalize_obs: bool
    normalize_reward: bool
    target_kl: float | None

    @classmethod
    def from_config(cls, cfg: Config) -> LearnerSpec:
        return cls(cfg.objective, cfg.num_epochs, cfg.num_minibatches, cfg.num_iterations, cfg.norm_adv,
                   cfg.vf_clip, cfg.max_grad_norm, cfg.adam_eps, cfg.anneal_lr, cfg.anneal_clip,
                   cfg.normalize_obs, cfg.normalize_reward, cfg.target_kl)


def make_optimizer(spec: LearnerSpec) -> optax.GradientTransformation:
    """Adam direction (with optional global-norm clipping); the step size is applied in ``learn`` so that it can be
    a traced, annealed value."""
    parts = [optax.clip_by_global_norm(spec.max_grad_norm)] if spec.max_grad_norm is not None else []
    return optax.chain(*parts, optax.scale_by_adam(eps=spec.adam_eps))


def init_state(spec: LearnerSpec, net: ActorCritic, key, hparams: HParams, num_envs: int) -> TrainState:
    """A fresh single-agent train state (vmap it over keys and hparams for a population)."""
    init_key, key = jax.random.split(key)
    dummy = jnp.zeros((1,) + net.obs.shape, jnp.uint8 if net.obs.image else jnp.float32)
    params = net.init(init_key, dummy)
    return TrainState(
        params=params, opt_state=make_optimizer(spec).init(params), hparams=hparams,
        beta=jnp.asarray(hparams.kl_beta, jnp.float32), obs_stats=norm_lib.RunningMeanStd.create(net.obs.shape),
        ret_stats=norm_lib.ReturnStats.create(num_envs), iteration=jnp.asarray(0, jnp.int32),
        env_steps=jnp.asarray(0, jnp.int32), key=key)


def alpha(spec: LearnerSpec, iteration):
    """The paper's alpha: linearly annealed from 1 (first update) towards 0 (after the last)."""
    return 1.0 - iteration.astype(jnp.float32) / spec.num_iterations


def prepare_obs(spec: LearnerSpec, state: TrainState, obs):
    """Observation as the network sees it (normalized with the frozen running stats when enabled)."""
    if spec.normalize_obs:
        return norm_lib.normalize_obs(state.obs_stats, obs)
    return obs


def _all_finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _global_norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def _flat_opt_state(opt_state, params):
    """(flatten, unflatten) between the optimizer state of ``params`` and that of ``ravel_pytree(params)``: every
    params-shaped subtree (Adam's mu and nu) becomes one vector and back."""
    treedef = jax.tree_util.tree_structure(params)
    _, unravel = ravel_pytree(params)
    is_sub = lambda x: jax.tree_util.tree_structure(x) == treedef
    to_flat = lambda s: jax.tree_util.tree_map(lambda x: ravel_pytree(x)[0] if is_sub(x) else x, s, is_leaf=is_sub)
    # back: walk the original state, whose params-shaped subtrees sit where the flat state has vectors
    to_tree = lambda s: jax.tree_util.tree_map(lambda orig, x: unravel(x) if is_sub(orig) else x, opt_state, s,
                                               is_leaf=is_sub)
    return to_flat, to_tree


def shuffles(key, num: int, n: int):
    """``num`` independent uniformly random permutations of range(n): int32 [num, n].

    ``jax.random.permutation`` sorts (random key, value) pairs, which XLA CPU does with a comparator call per
    comparison (~0.2 ms for 4 x 512 here, 15 % of a PureJaxRL-sized update). This sorts single uint32 words instead,
    random bits above and the current position below (so all words differ), which XLA sorts on its fast path. Equal
    random parts keep two elements in their previous order; as in jax.random.permutation, rounds are added until the
    random bits of all rounds together number at least 3 log2(n), so that such ties are rare.
    """
    nb = max(1, (n - 1).bit_length())
    free = 32 - nb
    if free < 12:  # n > 2^20: too few random bits left in a word
        return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, num)).astype(jnp.int32)
    rounds = -(-3 * nb // free)
    low = jnp.uint32((1 << nb) - 1)
    perm = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (num, n))
    for k in jax.random.split(key, rounds):
        words = (jax.random.bits(k, (num, n), jnp.uint32) & ~low) | jnp.arange(n, dtype=jnp.uint32)
        order = (jnp.sort(words, axis=-1) & low).astype(jnp.int32)
        perm = jnp.take_along_axis(perm, order, axis=-1)
    return perm


def _take(tree, idx):
    return jax.tree_util.tree_map(lambda x: x[idx], tree)


def make_batch(spec: LearnerSpec, net: ActorCritic, state: TrainState, rollout: Rollout, perm0):
    """Advantages and the old policy's quantities for a rollout.

    The old policy pi_theta_old is evaluated here, with theta_old = state.params, in exactly the minibatch shapes of
    the first epoch (order ``perm0``), so that on the first minibatch of the first epoch r_t(theta) is exactly 1.
    """
    T, B = rollout.rewards.shape
    N = T * B
    hp = state.hparams
    obs = prepare_obs(spec, state, rollout.obs)
    flat_obs = obs.reshape((N,) + obs.shape[2:])
    flat_act = rollout.actions.reshape((N,) + rollout.actions.shape[2:])
    mb_idx = perm0.reshape(spec.num_minibatches, -1)

    def old_policy(_, idx):
        dist, value = net.apply(state.params, flat_obs[idx])
        return None, (dist, dist.log_prob(flat_act[idx]), value)

    _, (old_dist, old_logp, old_values) = jax.lax.scan(old_policy, None, mb_idx)
    inv = jnp.zeros((N,), jnp.int32).at[perm0].set(jnp.arange(N, dtype=jnp.int32), unique_indices=True)
    unperm = lambda x: x.reshape((N,) + x.shape[2:])[inv]
    old_dist, old_logp, old_values = jax.tree_util.tree_map(unperm, (old_dist, old_logp, old_values))

    _, last_value = net.apply(state.params, prepare_obs(spec, state, rollout.last_obs), heads="value")
    _, final_values = net.apply(state.params, prepare_obs(spec, state, rollout.final_obs), heads="value")
    rewards = rollout.rewards.astype(jnp.float32)
    ret_stats = state.ret_stats
    if spec.normalize_reward:
        ret_stats, rewards = norm_lib.scale_rewards(
            state.ret_stats, rewards, rollout.terminated | rollout.truncated, hp.gamma)
    advantages, targets = adv_lib.gae(rewards, old_values.reshape(T, B), rollout.terminated, rollout.truncated,
                                      final_values, last_value, hp.gamma, hp.gae_lambda)
    batch = Batch(obs=flat_obs, actions=flat_act, old_log_prob=old_logp, old_dist=old_dist, old_values=old_values,
                  advantages=advantages.reshape(N), targets=targets.reshape(N))
    return batch, ret_stats


AUX_KEYS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm", "ratio_min",
            "ratio_max")  # minibatch diagnostics, in the order of the vector ``loss_fn`` returns


def loss_fn(params, spec: LearnerSpec, net: ActorCritic, mb: Batch, clip_eps, beta, hp: HParams):
    """-L^{policy} + c1 L^VF - c2 S  (eq. 9 with the chosen policy surrogate), and diagnostics.

    Returns (loss, aux) with aux the vector of ``AUX_KEYS`` (grad_norm left 0). Every E_t[...] of the minibatch is
    taken in one reduction over stacked per-sample terms (XLA CPU runs one kernel, not one per mean).
    """
    dist, values = net.apply(params, mb.obs)
    log_prob = dist.log_prob(mb.actions)
    advantages = adv_lib.normalize(mb.advantages) if spec.norm_adv else mb.advantages
    terms = PolicyTerms(log_prob=log_prob, old_log_prob=mb.old_log_prob, advantages=advantages,
                        kl=mb.old_dist.kl(dist) if spec.objective.startswith("kl") else None)
    ratio = jax.lax.stop_gradient(terms.ratio)
    log_ratio = jax.lax.stop_gradient(log_prob - mb.old_log_prob)
    per_sample = jnp.stack([
        SURROGATE_TERMS[spec.objective](terms, clip_eps, beta),                  # L^policy
        value_loss_term(values, mb.old_values, mb.targets, spec.vf_clip),        # L^VF
        dist.entropy(),                                                          # S
        (ratio - 1.0) - log_ratio,                                               # k3 estimate of the KL
        (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32),                   # clipped or not
    ])
    surrogate, v_loss, entropy, approx_kl, clip_fraction = jnp.mean(per_sample, axis=1)
    neg_min, ratio_max = jnp.max(jnp.stack([-ratio, ratio]), axis=1)
    loss = -surrogate + hp.vf_coef * v_loss - hp.ent_coef * entropy
    aux = jnp.stack([-surrogate, v_loss, entropy, approx_kl, clip_fraction, jnp.zeros_like(loss), -neg_min,
                     ratio_max])  # in the order of AUX_KEYS
    return loss, aux


def learn(spec: LearnerSpec, net: ActorCritic, state: TrainState, rollout: Rollout):
    """One PPO iteration's learning step for one agent. Returns (new state, metrics dict of scalars)."""
    hp = state.hparams
    T, B = rollout.rewards.shape
    N = T * B
    key, perm_key = jax.random.split(state.key)
    perms = shuffles(perm_key, spec.num_epochs, N)
    a = alpha(spec, state.iteration)
    lr = hp.learning_rate * a if spec.anneal_lr else hp.learning_rate
    clip_eps = hp.clip_eps * a if spec.anneal_clip else hp.clip_eps
    beta = state.beta
    obs_ok = _all_finite((rollout.obs, rollout.final_obs, rollout.last_obs))
    reward_ok = _all_finite(rollout.rewards)
    params_ok = _all_finite(state.params)
    input_ok = obs_ok & reward_ok

    batch, ret_stats = make_batch(spec, net, state, rollout, perms[0])
    tx = make_optimizer(spec)
    n_sum = AUX_KEYS.index("ratio_min")  # summed diagnostics first, then the running ratio_min and ratio_max
    zero_aux = jnp.asarray([0.0] * n_sum + [jnp.inf, -jnp.inf], jnp.float32)

    # The epochs work on one flat parameter vector: Adam, clipping and the finiteness checks are then a handful of
    # kernels per minibatch instead of a handful per parameter array (PureJaxRL-sized step: ~212 -> ~100 kernels).
    flat_params, unravel = ravel_pytree(state.params)
    to_flat_opt, to_tree_opt = _flat_opt_state(state.opt_state, state.params)
    flat_loss = lambda p, *a: loss_fn(unravel(p), *a)

    def minibatch(carry, idx):
        params, opt_state, stop, sums, done, bad, kind = carry
        mb = _take(batch, idx)
        (loss, aux), grads = jax.value_and_grad(flat_loss, has_aux=True)(params, spec, net, mb, clip_eps, beta, hp)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = params - lr * updates
        # one scalar per tree, far cheaper than a check per leaf: a norm is finite iff every entry is (or if some
        # entry is so large that its square overflows, which is as much a reason to skip the batch)
        grad_norm = _global_norm(grads)
        loss_ok, grads_ok = jnp.isfinite(loss), jnp.isfinite(grad_norm)
        new_ok = jnp.isfinite(_global_norm(new_params))
        finite = loss_ok & grads_ok & new_ok
        if spec.target_kl is not None:
            stop = stop | (aux[AUX_KEYS.index("approx_kl")] > 1.5 * spec.target_kl)  # checked before the step (as SB3)
        take = ~stop & finite & input_ok
        pick = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(take, n, o), new, old)
        aux = aux.at[AUX_KEYS.index("grad_norm")].set(grad_norm)
        running = jnp.concatenate([sums[:n_sum] + aux[:n_sum], jnp.minimum(sums[n_sum:n_sum + 1], aux[n_sum:n_sum + 1]),
                                   jnp.maximum(sums[n_sum + 1:], aux[n_sum + 1:])])
        sums = jnp.where(take, running, sums)
        flag = ~stop & input_ok  # the update would have been applied: record why it was not
        kind = kind | jnp.where(flag & ~loss_ok, NONFINITE_BITS["loss"], 0) \
            | jnp.where(flag & ~grads_ok, NONFINITE_BITS["gradient"], 0) \
            | jnp.where(flag & ~new_ok, NONFINITE_BITS["parameters"], 0)
        carry = (pick(new_params, params), pick(new_opt, opt_state), stop, sums, done + take,
                 bad + (~finite & ~stop), kind)
        return carry, None

    def epoch(carry, perm):
        carry, _ = jax.lax.scan(minibatch, carry, perm.reshape(spec.num_minibatches, -1))
        return carry, None

    init = (flat_params, to_flat_opt(state.opt_state), jnp.asarray(False), zero_aux, jnp.asarray(0, jnp.int32),
            jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32))
    (params, opt_state, _, sums, done, bad, kind), _ = jax.lax.scan(epoch, init, perms)
    params, opt_state = unravel(params), to_tree_opt(opt_state)
    kind = kind | jnp.where(obs_ok, 0, NONFINITE_BITS["observation"]) | jnp.where(
        reward_ok, 0, NONFINITE_BITS["reward"]) | jnp.where(params_ok, 0, NONFINITE_BITS["incoming parameters"])

    # d = E_t[KL[pi_old(.|s_t), pi_theta(.|s_t)]] over the whole batch, after the update (section 4).
    new_dist, _ = net.apply(params, batch.obs, heads="policy")
    kl = jnp.mean(batch.old_dist.kl(new_dist))
    new_beta = adapt_beta(beta, kl, hp.kl_target) if spec.objective == "kl-adaptive" else beta
    obs_stats = state.obs_stats.update(rollout.obs) if spec.normalize_obs else state.obs_stats
    if not spec.normalize_reward:
        ret_stats = state.ret_stats
    keep_inputs = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(input_ok, n, o), new, old)
    obs_stats, ret_stats = keep_inputs((obs_stats, ret_stats), (state.obs_stats, state.ret_stats))

    n = jnp.maximum(done, 1).astype(jnp.float32)
    var_t = jnp.var(batch.targets)
    metrics = {k: sums[i] / n for i, k in enumerate(AUX_KEYS[:n_sum])}
    metrics.update(
        ratio_min=sums[n_sum], ratio_max=sums[n_sum + 1], kl=kl, beta=beta, learning_rate=lr,
        clip_eps=clip_eps, minibatches_done=done.astype(jnp.float32),
        explained_variance=jnp.where(var_t > 0, 1.0 - jnp.var(batch.targets - batch.old_values) / var_t, 0.0),
        nonfinite_input=(~input_ok).astype(jnp.float32), nonfinite_update=bad.astype(jnp.float32),
        nonfinite_kind=kind.astype(jnp.float32))
    new_state = state.replace(params=params, opt_state=opt_state, beta=new_beta, obs_stats=obs_stats,
                              ret_stats=ret_stats, iteration=state.iteration + 1, env_steps=state.env_steps + N,
                              key=key)
    return new_state, metrics
