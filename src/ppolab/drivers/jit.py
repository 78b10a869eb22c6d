"""The fully jitted driver for JAX-native environments (gymnax, Brax, jumanji).

One PPO iteration is a pure function of (train state, actor state): a ``lax.scan`` over T steps of B vmapped envs
collects the rollout, then ``ppolab.update.learn`` updates. It is ``jax.vmap``-ed over the K agents of a population
(leading axis [K] of ``TrainState`` and ``ActorState``) and ``iterations_per_call`` iterations are fused with a
second ``lax.scan`` into one compiled program per host call. Acting keys derive from each agent's ``TrainState.key``
and env keys from its ``ActorState.key``, so an agent's trajectory does not depend on the rest of the population.

Action masks: an env with ``has_mask`` (jumanji) keeps the mask of the current observation in its state
(``env.mask(state)``), so the actors' state, and with it a checkpoint, holds it. Each step's masks restrict the
actions and are stored in the rollout; ``learn`` reports the first step without a legal action (``empty_mask_at``)
and ``JitDriver.run`` raises ``ActionMaskError`` for it after the chunk, naming the iteration, step and sub-env.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ppolab import distributions as D
from ppolab import xla
from ppolab.config import Config
from ppolab.drivers.population import Groups, num_groups
from ppolab.envs.base import Episode
from ppolab.envs.factory import make_jax_env
from ppolab.models import make_model
from ppolab.networks import ActorCritic
from ppolab.types import Rollout, TrainState
from ppolab.update import LearnerSpec, learn, prepare_obs

ACT_STREAM = 0xAC7  # fold_in constant: acting keys are a stream of their own beside learn's split of state.key
EVAL_MAX_STEPS = 100_000  # safety bound of an evaluation episode


class ActorState(struct.PyTreeNode):
    """The B actors of one agent between steps (saved in checkpoints, so a resume continues bitwise)."""

    env_state: Any          # the env's state pytree, leaves [B, ...]
    obs: jax.Array          # [B, *obs] current observation
    ep_return: jax.Array    # [B] float32, return of the running episode so far
    ep_length: jax.Array    # [B] int32, its length so far
    key: jax.Array          # [2] uint32, env PRNG key (resets, stochastic dynamics)
    starts: jax.Array | None = None  # [B] bool, obs is an episode's first (recurrent policies; None otherwise)
    carry: Any = None       # the policy's carry, leaves [B, H] (recurrent policies)


class Step(struct.PyTreeNode):
    """One step of B actors (scan output, stacked to [T, B, ...])."""

    obs: jax.Array          # [B, *obs] observation the action was chosen from
    action_mask: jax.Array | None  # [B, head] bool, its action mask (None for an env without masks)
    actions: jax.Array      # [B, *act]
    rewards: jax.Array      # [B]
    terminated: jax.Array   # [B] bool
    truncated: jax.Array    # [B] bool
    final_obs: jax.Array    # [B, *obs] last observation of the episode where it ended, else the next observation
    ep_done: jax.Array      # [B] bool, terminated | truncated
    ep_return: jax.Array    # [B] return of the episode that ended here (where ep_done)
    ep_length: jax.Array    # [B] int32, its length
    starts: jax.Array | None = None  # [B] bool, obs begins an episode (recurrent policies)
    carry: Any = None       # leaves [B, H]: the carry acting had before this step (recurrent policies)


class Episodes(struct.PyTreeNode):
    """Episodes finished by B actors in one iteration, summed over its T steps (exact where count <= 1)."""

    count: jax.Array        # [B] int32
    return_sum: jax.Array   # [B] float32
    length_sum: jax.Array   # [B] int32


def reset_actors(env, num_envs: int, key, net: ActorCritic | None = None) -> ActorState:
    """Fresh episodes for ``num_envs`` actors; ``key`` [2] is split into reset keys and the actors' env key. A
    recurrent ``net`` gives them its initial carry."""
    key, reset_key = jax.random.split(key)
    obs, env_state = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))
    env_state = jax.tree_util.tree_map(lambda x: jnp.asarray(x, x.dtype), env_state)  # no weak types: a restored
    # checkpoint (plain arrays) must hit the same compiled program
    return ActorState(env_state=env_state, obs=obs, ep_return=jnp.zeros((num_envs,), jnp.float32),
                      ep_length=jnp.zeros((num_envs,), jnp.int32), key=key,
                      starts=jnp.ones((num_envs,), bool) if net is not None and net.recurrent else None,
                      carry=net.initial_carry((num_envs,)) if net is not None and net.recurrent else None)


def acting_key(state: TrainState, t):
    """Key of the t-th acting step of the current iteration, derived from the agent's own ``state.key``."""
    return jax.random.fold_in(jax.random.fold_in(state.key, ACT_STREAM), t)


def env_step(env, spec: LearnerSpec, net: ActorCritic, state: TrainState, actors: ActorState, key,
             deterministic: bool = False):
    """Act in all B actors of one agent and step their envs (auto-reset where an episode ended).

    Returns (next ActorState, Step). The policy sees ``prepare_obs`` (frozen normalization stats).
    """
    mask = jax.vmap(env.mask)(actors.env_state) if getattr(env, "has_mask", False) else None
    x = prepare_obs(spec, state, actors.obs)
    carry = None
    if net.recurrent:  # the carry is reset inside the network where starts is set
        dist, _, carry = net.apply(state.params, x, actors.starts, actors.carry, heads="policy", action_mask=mask,
                                   sequence=False)
    else:
        dist, _ = net.apply(state.params, x, heads="policy", action_mask=mask)
    action = dist.mode() if deterministic else dist.sample(key)
    env_key, step_key = jax.random.split(actors.key)
    B = actors.obs.shape[0]
    next_obs, env_state, reward, terminated, truncated, final_obs = jax.vmap(env.step)(
        jax.random.split(step_key, B), actors.env_state, action)
    done = terminated | truncated
    ep_return = actors.ep_return + reward
    ep_length = actors.ep_length + 1
    nxt = ActorState(env_state=env_state, obs=next_obs, ep_return=jnp.where(done, 0.0, ep_return),
                     ep_length=jnp.where(done, 0, ep_length), key=env_key,
                     starts=done if net.recurrent else None, carry=carry)
    step = Step(obs=actors.obs, action_mask=mask, actions=action, rewards=reward, terminated=terminated,
                truncated=truncated, final_obs=final_obs, ep_done=done, ep_return=ep_return, ep_length=ep_length,
                starts=actors.starts, carry=actors.carry)
    return nxt, step


def steps_to_rollout(steps: Step, last_obs, seq_len: int = 0) -> tuple[Rollout, Episodes]:
    """Stacked steps [T, B, ...] and the observation after the last step -> (Rollout, Episodes of this rollout).
    ``seq_len`` L of a recurrent policy: the carries before steps 0, L, 2L, ... are kept (the update's sequences)."""
    carries = None if steps.carry is None else jax.tree_util.tree_map(lambda c: c[::seq_len], steps.carry)
    rollout = Rollout(obs=steps.obs, actions=steps.actions, rewards=steps.rewards, terminated=steps.terminated,
                      truncated=steps.truncated, final_obs=steps.final_obs, last_obs=last_obs,
                      action_mask=steps.action_mask, starts=steps.starts, carries=carries)
    done = steps.ep_done
    episodes = Episodes(count=done.sum(0, dtype=jnp.int32), return_sum=jnp.where(done, steps.ep_return, 0.0).sum(0),
                        length_sum=jnp.where(done, steps.ep_length, 0).sum(0, dtype=jnp.int32))
    return rollout, episodes


def collect(env, spec: LearnerSpec, net: ActorCritic, num_steps: int, state: TrainState, actors: ActorState):
    """T = ``num_steps`` steps of one agent's B actors in a ``lax.scan``. Returns (actors, Rollout [T, B], Episodes)."""

    def one(actors, t):
        return env_step(env, spec, net, state, actors, acting_key(state, t))

    actors, steps = jax.lax.scan(one, actors, jnp.arange(num_steps), unroll=2)
    rollout, episodes = steps_to_rollout(steps, actors.obs, spec.seq_len)
    return actors, rollout, episodes


def iteration(env, spec: LearnerSpec, net: ActorCritic, num_steps: int, state: TrainState, actors: ActorState):
    """One PPO iteration of one agent: collect, then ``learn``. Returns (state, actors, metrics, episodes)."""
    actors, rollout, episodes = collect(env, spec, net, num_steps, state, actors)
    state, metrics = learn(spec, net, state, rollout)
    return state, actors, metrics, episodes


def run_chunk(env, spec: LearnerSpec, net: ActorCritic, num_steps: int, max_iterations: int,
              states: TrainState, actors: ActorState, n):
    """``n`` <= ``max_iterations`` iterations of K agents in one program (leaves [K, ...]).

    ``n`` is traced: a ``lax.while_loop`` runs the first n iterations, so one compiled program serves every chunk
    length. Returns (states, actors, metrics {name: [max_iterations, K]},
    Episodes leaves [max_iterations, K, B]); only the first n rows are meaningful.
    """
    one = functools.partial(iteration, env, spec, net, num_steps)
    K = jax.tree_util.tree_leaves(states)[0].shape[0]
    if K == 1:  # a population of one: the same program without the batch dimension (~7 % faster on XLA CPU)
        squeeze = lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree)
        agents = lambda s, a: jax.tree_util.tree_map(lambda x: x[None], one(squeeze(s), squeeze(a)))
    else:
        agents = jax.vmap(one)
    out_shapes = jax.eval_shape(agents, states, actors)

    # a while loop over the n iterations asked for, writing each one's metrics and episodes into row i of
    # zero-filled [max_iterations, ...] buffers (one compiled program for every chunk length)
    buffers = jax.tree_util.tree_map(lambda s: jnp.zeros((max_iterations,) + s.shape, s.dtype), out_shapes[2:])

    def body(carry):
        i, states, actors, buffers = carry
        states, actors, metrics, episodes = agents(states, actors)
        buffers = jax.tree_util.tree_map(lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, i, 0),
                                         buffers, (metrics, episodes))
        return i + 1, states, actors, buffers

    _, states, actors, (metrics, episodes) = jax.lax.while_loop(
        lambda c: c[0] < n, body, (jnp.asarray(0, jnp.int32), states, actors, buffers))
    return states, actors, metrics, episodes


def evaluate_agent(env, spec: LearnerSpec, net: ActorCritic, num_episodes: int, deterministic: bool,
                   state: TrainState, key):
    """First-episode return of each of ``num_episodes`` fresh actors of one agent: (returns [num_episodes] float32,
    int32 t * num_episodes + e of the first step where a running episode's mask had no legal action, or -1)."""
    actors = reset_actors(env, num_episodes, key, net)
    act_key = jax.random.fold_in(state.key, ACT_STREAM + 1)

    def cond(carry):
        _, _, finished, t, _ = carry
        return ~jnp.all(finished) & (t < EVAL_MAX_STEPS)

    def body(carry):
        actors, returns, finished, t, empty_at = carry
        actors, step = env_step(env, spec, net, state, actors, jax.random.fold_in(act_key, t), deterministic)
        if step.action_mask is not None:
            bad = ~D.has_legal(step.action_mask, net.action.nvec or None) & ~finished
            empty_at = jnp.where((empty_at < 0) & bad.any(), t * num_episodes + jnp.argmax(bad), empty_at)
        returns = jnp.where(step.ep_done & ~finished, step.ep_return, returns)
        return actors, returns, finished | step.ep_done, t + 1, empty_at

    init = (actors, jnp.full((num_episodes,), jnp.nan, jnp.float32), jnp.zeros((num_episodes,), bool),
            jnp.asarray(0, jnp.int32), jnp.asarray(-1, jnp.int32))
    _, returns, _, _, empty_at = jax.lax.while_loop(cond, body, init)
    return returns, empty_at


@functools.partial(xla.jit, static_argnums=(0, 1, 2, 3, 4))
def _run_chunk_jit(env, spec, net, num_steps, max_iterations, states, actors, n):
    return run_chunk(env, spec, net, num_steps, max_iterations, states, actors, n)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("net",))
def _reset_population(env, num_envs, keys, net=None):
    return jax.vmap(functools.partial(reset_actors, env, num_envs, net=net))(keys)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _evaluate_population(env, spec, net, num_episodes, deterministic, states, key):
    fn = functools.partial(evaluate_agent, env, spec, net, num_episodes, deterministic)
    return jax.vmap(fn, in_axes=(0, None))(states, key)


def auto_iterations_per_call(cfg: Config) -> int:
    """Iterations fused per host call: about 1/50 of the run (so progress and logs update ~50 times), at most
    ``checkpoint_every`` (checkpoints land where asked) and at most 200."""
    if cfg.iterations_per_call > 0:
        return cfg.iterations_per_call
    n = max(1, cfg.num_iterations // 50)
    if cfg.checkpoint_every > 0:
        n = min(n, cfg.checkpoint_every)
    return min(n, 200)


def episodes_to_tuples(episodes: Episodes) -> list[Episode]:
    """Host side: Episodes of one iteration (numpy leaves [K, B]) -> [Episode(agent, actor, return, length)].

    An actor that finished c > 1 episodes in one rollout contributes c entries with their mean return and length
    (the per-agent mean over the iteration stays exact)."""
    out = []
    count = np.asarray(episodes.count)
    for k, b in zip(*np.nonzero(count), strict=True):
        c = int(count[k, b])
        ret = float(episodes.return_sum[k, b]) / c
        length = int(round(float(episodes.length_sum[k, b]) / c))
        out.extend([Episode(int(k), int(b), ret, length)] * c)
    return out


def raise_on_empty_mask(metrics: dict, n: int, first_iteration: int, num_envs: int) -> None:
    """Host side, after a chunk: ``ActionMaskError`` for the first of its ``n`` iterations (numbered from
    ``first_iteration``) in which a step's mask had no legal action (``empty_mask_at`` [n, K]: t * B + b or -1)."""
    at = metrics.get("empty_mask_at")
    for j in range(n if at is not None else 0):
        agents = np.flatnonzero(np.asarray(at[j]) >= 0)
        if agents.size:
            k = int(agents[0])
            t, b = divmod(int(at[j][k]), num_envs)
            raise D.ActionMaskError(f"action mask with no legal action at iteration {first_iteration + j}, step {t}, "
                                    f"sub-env {k * num_envs + b} (agent {k}, actor {b}): an env must leave at least "
                                    "one legal action in every state it does not end")


class JitDriver:
    """K agents x B actors of a gymnax, Brax or jumanji env, whole iterations compiled (see the module docstring; the
    ``drivers.base.Driver`` contract)."""

    def __init__(self, cfg: Config, spec: LearnerSpec, num_agents: int):
        self.cfg, self.spec, self.K = cfg, spec, num_agents
        self.B, self.T = cfg.num_envs, cfg.num_steps
        self.env = make_jax_env(cfg)
        self.obs_spec, self.action_spec = self.env.obs_spec, self.env.action_spec
        self.net = make_model(cfg, self.obs_spec, self.action_spec)
        self.masked = bool(getattr(self.env, "has_mask", False))
        self.iterations_per_call = auto_iterations_per_call(cfg)
        self.actors: ActorState | None = None
        self.groups = Groups(num_agents, num_groups(cfg.threads, num_agents))

    # ---- episodes ---------------------------------------------------------------------------------------------
    def _population_keys(self, seeds: list[int]):
        seeds = np.asarray(seeds, np.int64).reshape(self.K, self.B)
        return jnp.stack([jax.random.PRNGKey(int(s[0])) for s in seeds])

    def start(self, seeds: list[int]):
        """Fresh episodes for every actor. ``seeds``: K * B ints; agent k's env key is derived from seeds[k * B]."""
        self.actors = _reset_population(self.env, self.B, self._population_keys(seeds), net=self.net)

    def _actor_shapes(self):
        return jax.eval_shape(functools.partial(_reset_population, self.env, self.B, net=self.net),
                              jax.ShapeDtypeStruct((self.K, 2), jnp.uint32))

    def driver_state(self):
        """The actors of every agent (env states, observations, running episode stats, env keys), leaves [K, ...].

        The env state is given as a flat dict {path: array}, so that any env's state pytree (e.g. MJX's ``Data``)
        fits the checkpoint format. Before ``start`` this is a zero template of the right structure."""
        actors = self.actors
        if actors is None:
            actors = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), self._actor_shapes())
        named = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(actors.env_state)}
        return actors.replace(env_state=named)

    def restore_driver_state(self, tree):
        """Inverse of ``driver_state``."""
        template = self._actor_shapes().env_state
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)]
        env_state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                                 [jnp.asarray(tree.env_state[p]) for p in paths])
        self.actors = jax.tree_util.tree_map(jnp.asarray, tree.replace(env_state=env_state))

    def close(self):
        self.actors = None
        self.groups.close()

    # ---- training ---------------------------------------------------------------------------------------------
    def _chunk(self, n):
        return functools.partial(_run_chunk_jit, self.env, self.spec, self.net, self.T, self.iterations_per_call,
                                 n=jnp.asarray(n, jnp.int32))

    def precompile(self, state_shapes: TrainState):
        """Compile the fused chunk for every group shape now, from the shapes alone (see ``HostDriver.precompile``)."""
        for state_g, actors_g in zip(self.groups.abstract_parts(state_shapes),
                                     self.groups.abstract_parts(self._actor_shapes()), strict=True):
            _run_chunk_jit.lower(self.env, self.spec, self.net, self.T, self.iterations_per_call, state_g, actors_g,
                                 n=jnp.asarray(0, jnp.int32)).compile()

    def run(self, state: TrainState, num_iterations: int = 1):
        """``num_iterations`` iterations in calls of up to ``iterations_per_call`` fused iterations.

        Returns (state, [metrics {name: [K]} per iteration], [[(agent, actor, return, length)] per iteration])."""
        if self.actors is None:
            raise RuntimeError("JitDriver.run before start()")
        all_metrics, all_episodes = [], []
        done = 0
        while done < num_iterations:
            n = min(self.iterations_per_call, num_iterations - done)
            # agent groups on parallel threads; metrics and episodes have the iteration axis first, agents second
            new_state, actors, metrics, episodes = self.groups(self._chunk(n), state, self.actors,
                                                               out_axes=(0, 0, 1, 1))
            metrics, episodes = jax.device_get((metrics, episodes))
            if "empty_mask_at" in metrics and (metrics["empty_mask_at"][:n] >= 0).any():  # before the actors move
                # on: a checkpoint written for the error then holds the chunk's start
                raise_on_empty_mask(metrics, n, int(np.asarray(state.iteration).ravel()[0]) + 1, self.B)
            state, self.actors = new_state, actors
            for j in range(n):
                all_metrics.append({k: v[j] for k, v in metrics.items()})
                all_episodes.append(episodes_to_tuples(jax.tree_util.tree_map(lambda x, j=j: x[j], episodes)))
            done += n
        return state, all_metrics, all_episodes

    def evaluate(self, state: TrainState, episodes: int, deterministic: bool, seed: int) -> np.ndarray:
        """[K, episodes]: the first episode of each of ``episodes`` fresh actors per agent (same env seeds for all
        agents; action sampling from each agent's own key)."""
        returns, empty_at = jax.device_get(_evaluate_population(self.env, self.spec, self.net, episodes,
                                                                 deterministic, state, jax.random.PRNGKey(seed)))
        for k in np.flatnonzero(np.asarray(empty_at) >= 0)[:1]:
            t, e = divmod(int(empty_at[k]), episodes)
            raise D.ActionMaskError(f"action mask with no legal action in the evaluation at step {t}, actor {e} of "
                                    f"agent {k}: an env must leave at least one legal action in every state it does "
                                    "not end")
        return np.asarray(returns, np.float64)
