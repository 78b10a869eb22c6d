"""The PPO learner: one pure function ``learn(spec, net, state, rollout) -> (state, metrics)`` used by every driver.

Algorithm 1 of the paper: from a rollout of N actors x T steps, compute advantages (GAE, eqs. 11-12), then optimize
the chosen surrogate for K epochs of minibatch Adam, theta_old <- theta. Controllers (the adaptive KL beta of
section 4, the alpha schedule of lr / clip range) run once per update, after the epochs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from ppolab import advantages as adv_lib
from ppolab import normalize as norm_lib
from ppolab import objectives
from ppolab.batches import apply_batch, make_batch, num_units, prepare_obs
from ppolab.batches import take as take_rows
from ppolab.config import Config
from ppolab.diagnostics import METRIC_KEYS, NONFINITE_BITS, Diagnostics, flag_bits, mask_metrics, update_metrics
from ppolab.networks import ActorCritic
from ppolab.objectives import PolicyTerms, value_loss_term
from ppolab.types import Batch, HParams, Params, Rollout, TrainState

__all__ = ["METRIC_KEYS", "NONFINITE_BITS", "LearnerSpec", "init_state", "learn", "loss_fn", "make_batch",
           "prepare_obs"]



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
    seq_len: int = 0  # recurrent policies: L, the length of the update's sequences (0: a feed-forward policy)
    norm_adv_batch: bool = False  # with norm_adv: once over the whole batch (baselines ppo1), not per minibatch

    @classmethod
    def from_config(cls, cfg: Config) -> LearnerSpec:
        return cls(cfg.objective, cfg.num_epochs, cfg.num_minibatches, cfg.num_iterations, cfg.norm_adv,
                   cfg.vf_clip, cfg.max_grad_norm, cfg.adam_eps, cfg.anneal_lr, cfg.anneal_clip,
                   cfg.normalize_obs, cfg.normalize_reward, cfg.target_kl,
                   0 if cfg.policy == "feedforward" else cfg.seq_len or cfg.num_steps,
                   norm_adv_batch=cfg.norm_adv_batch)


def make_optimizer(spec: LearnerSpec) -> optax.GradientTransformation:
    """Adam direction (with optional global-norm clipping); the step size is applied in ``learn`` so that it can be
    a traced, annealed value."""
    parts = [optax.clip_by_global_norm(spec.max_grad_norm)] if spec.max_grad_norm is not None else []
    return optax.chain(*parts, optax.scale_by_adam(eps=spec.adam_eps))


def init_state(spec: LearnerSpec, net: ActorCritic, key: jax.Array, hparams: HParams, num_envs: int) -> TrainState:
    """A fresh single-agent train state (vmap it over keys and hparams for a population)."""
    init_key, key = jax.random.split(key)
    params = net.init_params(init_key)
    return TrainState(
        params=params, opt_state=make_optimizer(spec).init(params), hparams=hparams,
        beta=jnp.asarray(hparams.kl_beta, jnp.float32), obs_stats=norm_lib.RunningMeanStd.create(net.obs.shape),
        ret_stats=norm_lib.ReturnStats.create(num_envs), iteration=jnp.asarray(0, jnp.int32),
        env_steps=jnp.asarray(0, jnp.int32), key=key)


def alpha(spec: LearnerSpec, iteration: jax.Array, num_iterations: jax.Array | None = None) -> jax.Array:
    """The paper's alpha: linearly annealed from 1 (first update) towards 0 (after the last). The run's length is
    ``spec.num_iterations``, or ``num_iterations`` as a traced value (then runs that differ only in their length
    share one compiled program)."""
    total = spec.num_iterations if num_iterations is None else jnp.asarray(num_iterations).astype(jnp.float32)
    return 1.0 - iteration.astype(jnp.float32) / total


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def _flat_opt_state(opt_state: optax.OptState, params: Params) -> tuple[Callable, Callable]:
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


def shuffles(key: jax.Array, num: int, n: int) -> jax.Array:
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


def loss_fn(params: Params, spec: LearnerSpec, net: ActorCritic, mb: Batch, clip_eps: jax.Array, beta: jax.Array,
            hp: HParams) -> tuple[jax.Array, Diagnostics]:
    """-L^{policy} + c1 L^VF - c2 S  (eq. 9 with the chosen policy surrogate), and the minibatch's diagnostics.

    Every E_t[...] of the minibatch is taken in one reduction over stacked per-sample terms (XLA CPU runs one
    kernel, not one per mean).
    """
    objective = objectives.get(spec.objective)
    dist, values = apply_batch(net, params, mb)  # [M] samples, or [M, L] sequences of a recurrent policy
    log_prob = dist.log_prob(mb.actions)
    advantages = adv_lib.normalize(mb.advantages) if spec.norm_adv and not spec.norm_adv_batch else mb.advantages
    terms = PolicyTerms(log_prob=log_prob, old_log_prob=mb.old_log_prob, advantages=advantages,
                        kl=mb.old_dist.kl(dist) if objective.needs_kl else None)
    ratio = jax.lax.stop_gradient(terms.ratio)
    log_ratio = jax.lax.stop_gradient(log_prob - mb.old_log_prob)
    per_sample = jnp.stack([
        objective.term(terms, clip_eps, beta),                                   # L^policy
        value_loss_term(values, mb.old_values, mb.targets, spec.vf_clip),        # L^VF
        dist.entropy(),                                                          # S
        (ratio - 1.0) - log_ratio,                                               # k3 estimate of the KL
        (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32),                   # clipped or not
    ]).reshape(5, -1)
    surrogate, v_loss, entropy, approx_kl, clip_fraction = jnp.mean(per_sample, axis=1)
    neg_min, ratio_max = jnp.max(jnp.stack([-ratio, ratio]).reshape(2, -1), axis=1)
    loss = -surrogate + hp.vf_coef * v_loss - hp.ent_coef * entropy
    return loss, Diagnostics.of(policy_loss=-surrogate, value_loss=v_loss, entropy=entropy, approx_kl=approx_kl,
                                clip_fraction=clip_fraction, grad_norm=jnp.zeros_like(loss), ratio_min=-neg_min,
                                ratio_max=ratio_max)


class StepInputs(struct.PyTreeNode):
    """What every minibatch step of one update reads (traced)."""

    batch: Batch
    learning_rate: jax.Array   # lr * alpha (annealed) or lr
    clip_eps: jax.Array        # eps * alpha (annealed) or eps
    beta: jax.Array            # the KL penalty coefficient of this update
    hparams: HParams
    input_ok: jax.Array        # bool: the rollout's observations and rewards are finite


class SGDCarry(struct.PyTreeNode):
    """The state of the epochs' minibatch loop."""

    params: jax.Array          # ravel_pytree(params): the epochs optimize one flat vector
    opt_state: optax.OptState  # of the flat vector
    stopped: jax.Array         # bool: the target-KL early stop has fired
    sums: Diagnostics          # over the minibatches taken
    steps: jax.Array           # int32: minibatch steps taken
    skipped: jax.Array         # int32: steps skipped for a non-finite loss, gradient or result
    nonfinite_kind: jax.Array  # int32: ``NONFINITE_BITS`` of what was non-finite


def sgd_step(spec: LearnerSpec, net: ActorCritic, tx: optax.GradientTransformation, unravel: Callable,
             inputs: StepInputs, carry: SGDCarry, idx: jax.Array) -> tuple[SGDCarry, None]:
    """One Adam step on the minibatch ``idx`` (int32 [M]) of ``inputs.batch``; skipped (and counted) when the loss,
    the gradient or the new parameters are not finite, or once the target-KL early stop has fired."""
    mb = take_rows(inputs.batch, idx)
    flat_loss = lambda p, *a: loss_fn(unravel(p), *a)
    (loss, diag), grads = jax.value_and_grad(flat_loss, has_aux=True)(
        carry.params, spec, net, mb, inputs.clip_eps, inputs.beta, inputs.hparams)
    updates, new_opt = tx.update(grads, carry.opt_state, carry.params)
    new_params = carry.params - inputs.learning_rate * updates
    # one scalar per tree, far cheaper than a check per leaf: a norm is finite iff every entry is (or if some
    # entry is so large that its square overflows, which is as much a reason to skip the batch)
    grad_norm = _global_norm(grads)
    loss_ok, grads_ok = jnp.isfinite(loss), jnp.isfinite(grad_norm)
    new_ok = jnp.isfinite(_global_norm(new_params))
    finite = loss_ok & grads_ok & new_ok
    stopped = carry.stopped
    if spec.target_kl is not None:  # checked before the step (as SB3)
        stopped = stopped | (diag.approx_kl > 1.5 * spec.target_kl)
    take = ~stopped & finite & inputs.input_ok
    pick = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(take, n, o), new, old)
    running = carry.sums.accumulate(diag.with_grad_norm(grad_norm))
    carry = SGDCarry(params=pick(new_params, carry.params), opt_state=pick(new_opt, carry.opt_state),
                     stopped=stopped, sums=pick(running, carry.sums), steps=carry.steps + take,
                     skipped=carry.skipped + (~finite & ~stopped),
                     nonfinite_kind=carry.nonfinite_kind | flag_bits(~stopped & inputs.input_ok, loss_ok, grads_ok,
                                                                       new_ok))
    return carry, None


def run_epochs(spec: LearnerSpec, net: ActorCritic, state: TrainState, inputs: StepInputs,
               perms: jax.Array) -> tuple[Params, optax.OptState, SGDCarry]:
    """K epochs of minibatch SGD (``perms``: int32 [K, N], one sample order per epoch) from ``state.params``.
    Returns (params, optimizer state, the loop's final carry)."""
    tx = make_optimizer(spec)
    # The epochs work on one flat parameter vector: Adam, clipping and the finiteness checks are then a handful of
    # kernels per minibatch instead of a handful per parameter array (PureJaxRL-sized step: ~212 -> ~100 kernels).
    flat_params, unravel = ravel_pytree(state.params)
    to_flat_opt, to_tree_opt = _flat_opt_state(state.opt_state, state.params)
    step = functools.partial(sgd_step, spec, net, tx, unravel, inputs)
    unroll = _unroll_epochs(spec, net)

    def epoch(carry, perm):
        carry, _ = jax.lax.scan(step, carry, perm.reshape(spec.num_minibatches, -1), unroll=unroll)
        return carry, None

    zero = jnp.asarray(0, jnp.int32)
    init = SGDCarry(params=flat_params, opt_state=to_flat_opt(state.opt_state), stopped=jnp.asarray(False),
                    sums=Diagnostics.empty(), steps=zero, skipped=zero, nonfinite_kind=zero)
    carry, _ = jax.lax.scan(epoch, init, perms, unroll=unroll)
    return unravel(carry.params), to_tree_opt(carry.opt_state), carry


def _unroll_epochs(spec: LearnerSpec, net: ActorCritic) -> bool:
    """Whether the epochs' loops are unrolled: XLA:CPU runs a convolution's gradient ~9x slower inside a loop body
    than outside one (a Nature-CNN minibatch of 256: 4.6 s in a scan, 0.50 s unrolled; benchmarks/bench_conv_loop.py),
    so image policies on the CPU unroll up to 64 minibatch steps (the results are those of the loop)."""
    return bool(net.obs.image) and jax.default_backend() == "cpu" and spec.num_epochs * spec.num_minibatches <= 64


def learn(spec: LearnerSpec, net: ActorCritic, state: TrainState, rollout: Rollout,
          num_iterations: jax.Array | None = None) -> tuple[TrainState, dict]:
    """One PPO iteration's learning step for one agent (Algorithm 1): GAE, K epochs of minibatch SGD on the
    surrogate, then the controllers. Returns (new state, metrics: {``METRIC_KEYS``: scalar}). ``num_iterations``:
    the run's length as a traced value (see ``alpha``), else ``spec.num_iterations``."""
    hp = state.hparams
    T, B = rollout.rewards.shape
    key, perm_key = jax.random.split(state.key)
    perms = shuffles(perm_key, spec.num_epochs, num_units(spec, rollout))
    a = alpha(spec, state.iteration, num_iterations)
    obs_ok = _all_finite((rollout.obs, rollout.final_obs, rollout.last_obs))
    reward_ok = _all_finite(rollout.rewards)
    params_ok = _all_finite(state.params)
    mask_ok, mask_info = mask_metrics(net, rollout)
    batch, ret_stats = make_batch(spec, net, state, rollout, perms[0])
    input_ok = obs_ok & reward_ok if mask_ok is None else obs_ok & reward_ok & mask_ok  # no update on an empty mask
    inputs = StepInputs(batch=batch, learning_rate=hp.learning_rate * a if spec.anneal_lr else hp.learning_rate,
                        clip_eps=hp.clip_eps * a if spec.anneal_clip else hp.clip_eps, beta=state.beta,
                        hparams=hp, input_ok=input_ok)
    params, opt_state, carry = run_epochs(spec, net, state, inputs, perms)
    kind = carry.nonfinite_kind | jnp.where(obs_ok, 0, NONFINITE_BITS["observation"]) | jnp.where(
        reward_ok, 0, NONFINITE_BITS["reward"]) | jnp.where(params_ok, 0, NONFINITE_BITS["incoming parameters"])

    # d = E_t[KL[pi_old(.|s_t), pi_theta(.|s_t)]] over the whole batch, after the update (section 4).
    new_dist, _ = apply_batch(net, params, batch, heads="policy")
    kl = jnp.mean(batch.old_dist.kl(new_dist))
    controller = objectives.get(spec.objective).controller
    new_beta = controller(state.beta, kl, hp.kl_target) if controller is not None else state.beta
    obs_stats = state.obs_stats.update(rollout.obs) if spec.normalize_obs else state.obs_stats
    if not spec.normalize_reward:
        ret_stats = state.ret_stats
    keep_inputs = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(inputs.input_ok, n, o), new, old)
    obs_stats, ret_stats = keep_inputs((obs_stats, ret_stats), (state.obs_stats, state.ret_stats))
    metrics = {**update_metrics(inputs, carry, kind, kl), **mask_info}
    if mask_ok is not None:  # an empty mask is the driver's error to raise, not a non-finite input
        metrics["nonfinite_input"] = (~(obs_ok & reward_ok)).astype(jnp.float32)
    new_state = state.replace(params=params, opt_state=opt_state, beta=new_beta, obs_stats=obs_stats,
                              ret_stats=ret_stats, iteration=state.iteration + 1, env_steps=state.env_steps + T * B,
                              key=key)
    return new_state, metrics
