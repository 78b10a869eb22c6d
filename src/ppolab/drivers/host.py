"""The Python-loop driver: Gymnasium (or any host-side vector env) collects the rollout, the jitted learner updates.

K agents (seeds x swept hyperparameters) x B actors share one vector env; the acting is one numpy forward pass over
all K x B observations per step (or one jitted call for CNN policies), and the update one ``jax.vmap``-ed call.
Random draws for acting come from per-agent numpy generators seeded from each agent's JAX key, so an agent's rollout
does not depend on the other agents in the population.

Action masks: an env with ``has_mask`` gives the mask of its current observations in ``env.mask`` ([K, B, head]
bool, after every reset and step). Each step's masks are checked before acting (``ActionMaskError`` naming the step
and the sub-env), restrict the sampled and the deterministic actions to legal ones, and are stored in the rollout.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ppolab import distributions as D
from ppolab import xla
from ppolab.config import Config
from ppolab.drivers.population import Groups, num_groups
from ppolab.envs.base import HostVecEnv
from ppolab.networks import ActorCritic, NumpyPolicy, draw_noise
from ppolab.recurrent import NumpyRecurrentPolicy
from ppolab.types import Rollout, TrainState
from ppolab.update import LearnerSpec, learn, prepare_obs


def act(spec: LearnerSpec, net: ActorCritic, state: TrainState, obs, key, mask=None, deterministic: bool = False):
    """Single-agent jitted acting: obs [B, *obs] (and mask [B, head] bool or None) -> actions [B, ...]."""
    dist, _ = net.apply(state.params, prepare_obs(spec, state, obs), heads="policy", action_mask=mask)
    return dist.mode() if deterministic else dist.sample(key)


def act_recurrent(spec: LearnerSpec, net, state: TrainState, obs, starts, carry, key, mask=None,
                  deterministic: bool = False):
    """``act`` for a recurrent policy: also starts [B] bool and carry (leaves [B, H]) -> (actions [B, ...], carry)."""
    dist, _, carry = net.apply(state.params, prepare_obs(spec, state, obs), starts, carry, heads="policy",
                               action_mask=mask, sequence=False)
    return (dist.mode() if deterministic else dist.sample(key)), carry


def _numpy_normalize(stats, obs):
    """obs [K, B, *obs] with ``(mean, std)`` from ``_numpy_stats`` -> normalized (as ``normalize.normalize_obs``)."""
    mean, std = stats
    return np.minimum(np.maximum((obs - mean) / std, -10.0), 10.0).astype(np.float32, copy=False)


def _numpy_stats(state_np, eps=1e-8):
    """Running observation stats [K, *obs] -> (mean, std) [K, 1, *obs], computed once per rollout."""
    return state_np.mean[:, None], np.sqrt(state_np.var[:, None] + eps)


class HostDriver:
    """K agents x B actors of a ``HostVecEnv``, stepped in a Python loop (the ``drivers.base.Driver`` contract).

    ``eval_env(n)`` builds the n actors of the final evaluation (in this process, never in Ray workers)."""

    iterations_per_call = 1
    act_stream = 0x5EED  # fold_in constant of the jitted acting keys (JitDriver: ``drivers.jit.ACT_STREAM``)

    def __init__(self, cfg: Config, env: HostVecEnv, net: ActorCritic, spec: LearnerSpec, num_agents: int,
                 eval_env: Callable[[int], HostVecEnv]):
        self.cfg, self.env, self.net, self.spec, self.K = cfg, env, net, spec, num_agents
        self.eval_env = eval_env
        self.B, self.T = cfg.num_envs, cfg.num_steps
        self.obs_spec, self.action_spec = env.obs_spec, env.action_spec
        self.recurrent = net.recurrent
        self._numpy_policy = NumpyRecurrentPolicy if self.recurrent else NumpyPolicy
        backend = cfg.act_backend
        if backend == "auto":
            backend = "numpy" if self._numpy_policy.supports(net) else "jax"
        if backend == "numpy" and not self._numpy_policy.supports(net):
            raise ValueError("--act-backend numpy supports MLP policies only; use jax for image observations")
        self.backend = backend
        # the run's length enters the update as a value, not as part of the program: runs that differ only in
        # --total-timesteps share one compiled update (in this process and through the persistent cache)
        self._num_iterations = np.int32(spec.num_iterations)
        any_length = dataclasses.replace(spec, num_iterations=0)
        self._learn = xla.jit(jax.vmap(lambda s, r, n: learn(any_length, net, s, r, n), in_axes=(0, 0, None)))
        self.groups = Groups(num_agents, num_groups(cfg.threads, num_agents))
        fn = act_recurrent if self.recurrent else act
        self._act = jax.jit(lambda s, *a, deterministic=False: jax.vmap(
            functools.partial(fn, spec, net, deterministic=deterministic))(s, *a), static_argnames="deterministic")
        self.obs = None
        K, T, B = self.K, self.T, self.B
        odt = np.uint8 if self.obs_spec.image else np.float32
        self._obs = np.zeros((K, T, B) + self.obs_spec.shape, odt)
        self._final = np.zeros_like(self._obs)
        self._act_buf = np.zeros((K, T, B) + self.action_spec.shape, self.action_spec.dtype)
        self._rew = np.zeros((K, T, B), np.float32)
        self._term = np.zeros((K, T, B), bool)
        self._trunc = np.zeros((K, T, B), bool)
        self.masked = bool(getattr(env, "has_mask", False))
        self._nvec = self.action_spec.nvec or None
        self._mask_buf = np.zeros((K, T, B, self.action_spec.head_size), bool) if self.masked else None
        self.memory = None  # recurrent policies: (starts [K, B] bool, carry leaves [K, B, H]) of the current obs
        self._starts_buf = self._carry_buf = None
        if self.recurrent:
            self._starts_buf = np.zeros((K, T, B), bool)
            self._carry_buf = self._fresh_carry((K, T // spec.seq_len, B))

    def _fresh_carry(self, batch_shape):
        return jax.tree_util.tree_map(np.array, self.net.initial_carry(batch_shape))  # writable copies

    def _fresh_memory(self, n: int):
        """(starts, carry) of K x n actors at their episodes' first observations (None for feed-forward)."""
        return (np.ones((self.K, n), bool), self._fresh_carry((self.K, n))) if self.recurrent else None

    # ---- episodes ---------------------------------------------------------------------------------------------
    def start(self, seeds: list[int]):
        """Reset every actor with its own seed (K * B seeds)."""
        self.obs = self.env.reset(seeds)
        self.memory = self._fresh_memory(self.B)

    def close(self):
        self.env.close()
        self.groups.close()

    def precompile(self, state_shapes: TrainState):
        """Compile the update for every group shape now, from the train state's shapes alone (before any agent is
        initialized: XLA's compiler then starts from a smaller process, see training.py)."""
        rollout = Rollout(obs=self._obs, actions=self._act_buf, rewards=self._rew, terminated=self._term,
                          truncated=self._trunc, final_obs=self._final, last_obs=self._obs[:, 0],
                          action_mask=self._mask_buf, starts=self._starts_buf, carries=self._carry_buf)
        for state_g, rollout_g in zip(self.groups.abstract_parts(state_shapes), self.groups.abstract_parts(rollout),
                                      strict=True):
            self._learn.lower(state_g, rollout_g, self._num_iterations).compile()

    def learn(self, state: TrainState, rollout: Rollout):
        """The vmapped update of every agent (in parallel groups of agents, see ``drivers.population``)."""
        return self.groups(lambda s, r: self._learn(s, r, self._num_iterations), state, rollout)

    def driver_state(self):
        return None  # Gymnasium envs cannot be snapshotted; a resumed run restarts episodes from derived seeds

    def restore_driver_state(self, tree):  # pragma: no cover - driver_state is always None
        raise RuntimeError("HostDriver has no state to restore")

    # ---- acting ---------------------------------------------------------------------------------------------------
    def _policy(self, state: TrainState):
        if self.backend != "numpy":
            return None
        return self._numpy_policy.from_params(self.net, jax.device_get(state.params))

    def _rngs(self, state: TrainState):
        keys = np.asarray(jax.device_get(state.key))
        return [np.random.default_rng([int(x) for x in keys[k].ravel()] + [0x5EED]) for k in range(self.K)]

    def _mask(self, env: HostVecEnv, step: int) -> np.ndarray | None:
        """The masks of ``env``'s current observations [K, B, head] (None without masks), checked: an
        ``ActionMaskError`` names the step and the sub-env (agent-major index) of a mask with no legal action."""
        if not self.masked:
            return None
        mask = env.mask
        D.raise_if_empty(mask.reshape((-1,) + mask.shape[2:]), self._nvec, step=step)
        return mask

    def _actions(self, policy, state, obs_stats_np, obs, noise_t, keys, mask, memory, deterministic=False):
        """Actions [K, B, ...] for obs [K, B, *obs] and the recurrent ``memory`` (starts, carry) after this step
        (None for feed-forward): numpy (pre-drawn ``noise_t``) or jitted (``keys`` [K], one per agent)."""
        if policy is not None:
            x = _numpy_normalize(obs_stats_np, obs) if self.spec.normalize_obs else obs
            if memory is None:
                return policy.sample_with_noise(x, noise_t, mask), None
            action, carry = policy.sample_with_noise(x, memory[0], memory[1], noise_t, mask)
            return action, (memory[0], carry)
        if memory is None:
            return np.asarray(self._act(state, jnp.asarray(obs), keys, mask, deterministic=deterministic)), None
        action, carry = self._act(state, jnp.asarray(obs), memory[0], memory[1], keys, mask,
                                  deterministic=deterministic)
        return np.asarray(action), (memory[0], jax.tree_util.tree_map(np.asarray, carry))

    def _record_memory(self, t: int):
        """Store the current starts, and the carry where a sequence of the update begins (t = c * L)."""
        starts, carry = self.memory
        self._starts_buf[:, t] = starts
        if t % self.spec.seq_len == 0:
            c = t // self.spec.seq_len
            jax.tree_util.tree_map(lambda buf, x: buf.__setitem__((slice(None), c), x), self._carry_buf, carry)

    def collect(self, state: TrainState):
        """One rollout of T steps for every agent. Returns (Rollout with leaves [K, T, B, ...], episodes)."""
        policy = self._policy(state)
        obs_stats = _numpy_stats(jax.device_get(state.obs_stats)) if self.spec.normalize_obs else None
        noise = None
        key = None
        if policy is not None:
            noise = np.stack([draw_noise(self.action_spec, rng, (self.T, self.B)) for rng in self._rngs(state)])
        else:
            key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.key, self.act_stream)  # [K, 2], one per agent
        episodes = []
        obs = self.obs
        for t in range(self.T):
            self._obs[:, t] = obs
            mask = self._mask(self.env, t)
            if mask is not None:
                self._mask_buf[:, t] = mask
            if self.recurrent:
                self._record_memory(t)
            keys = None if key is None else jax.vmap(jax.random.fold_in, in_axes=(0, None))(key, t)  # [K], per agent
            action, memory = self._actions(policy, state, obs_stats, obs, None if noise is None else noise[:, t],
                                           keys, mask, self.memory)
            self._act_buf[:, t] = action
            obs, rew, term, trunc, final, eps = self.env.step(action)
            if memory is not None:
                self.memory = (term | trunc, memory[1])
            self._rew[:, t], self._term[:, t], self._trunc[:, t], self._final[:, t] = rew, term, trunc, final
            episodes.extend(eps)
        self.obs = obs
        rollout = Rollout(obs=self._obs, actions=self._act_buf, rewards=self._rew, terminated=self._term,
                          truncated=self._trunc, final_obs=self._final, last_obs=obs, action_mask=self._mask_buf,
                          starts=self._starts_buf, carries=self._carry_buf)
        return rollout, episodes

    def run(self, state: TrainState, num_iterations: int = 1):
        """Collect and learn ``num_iterations`` times. Returns (state, [metrics per iteration], [episodes per it])."""
        all_metrics, all_episodes = [], []
        for _ in range(num_iterations):
            rollout, episodes = self.collect(state)
            state, metrics = self.learn(state, rollout)
            all_metrics.append(jax.device_get(metrics))
            all_episodes.append(episodes)
        return state, all_metrics, all_episodes

    def evaluate(self, state: TrainState, episodes: int, deterministic: bool, seed: int) -> np.ndarray:
        """Returns [K, episodes]: the first episode of each of ``episodes`` fresh actors per agent."""
        env = self.eval_env(episodes)
        try:
            obs = env.reset(seed)
            policy = self._policy(state)
            obs_stats = _numpy_stats(jax.device_get(state.obs_stats)) if self.spec.normalize_obs else None
            rngs = self._rngs(state)
            returns = np.full((self.K, episodes), np.nan)
            alive = np.ones((self.K, episodes), bool)
            key = jax.random.PRNGKey(seed)
            t = 0
            memory = self._fresh_memory(episodes)
            while alive.any():
                mask = self._mask(env, t)
                noise = None
                if policy is not None and not deterministic:
                    noise = np.stack([draw_noise(self.action_spec, r, (episodes,)) for r in rngs])
                keys = None if policy is not None else jax.random.split(jax.random.fold_in(key, t), self.K)
                action, memory = self._actions(policy, state, obs_stats, obs, noise, keys, mask, memory,
                                               deterministic)
                obs, _, term, trunc, _, eps = env.step(action)
                if memory is not None:
                    memory = (term | trunc, memory[1])
                for ep in eps:
                    if alive[ep.agent, ep.actor]:
                        returns[ep.agent, ep.actor] = ep.ret
                        alive[ep.agent, ep.actor] = False
                t += 1
            return returns
        finally:
            env.close()
