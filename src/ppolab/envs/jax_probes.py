"""The memory probes of ``memory_probes.py`` as gymnax environments, for the jitted driver: ``--env
gymnax:ppolab/Recall`` and ``--env gymnax:ppolab/StatelessCartPole`` (``GymnaxEnv`` takes names starting with
``ppolab/`` from ``ENVS`` here instead of ``gymnax.make``).

Both are ``gymnax.environments.environment.Environment`` subclasses (``step_env``, ``reset_env``, ``get_obs``,
``is_terminal``, ``is_truncated``, spaces), so gymnax's own auto-resetting ``step`` works on them too. They follow
the Gymnasium versions' rules; their random numbers come from JAX keys, so they are not bitwise the same episodes.
``GymnaxEnv`` imports this module after ``import_gymnax()`` (gymnax without seaborn at start-up); importing it
first imports gymnax the plain way.

* ``Recall``: obs [3] = (cue, is_first, is_query); cue c in {-1, +1} shown at t = 0, the query at t = delay;
  reward 1 at the query if action == (c > 0); terminated after it (delay + 1 steps; never truncated).
* ``StatelessCartPole``: gymnax's CartPole-v1 (its dynamics, termination and 500-step truncation) observing
  [x, theta] only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces
from gymnax.environments.classic_control import cartpole

from ppolab.envs.memory_probes import OBSERVED


@struct.dataclass
class RecallState(environment.EnvState):
    cue: jax.Array  # [] float32, -1 or +1
    time: int  # the index of the observation last returned (0 after reset)


@struct.dataclass
class RecallParams(environment.EnvParams):
    delay: int = 4
    max_steps_in_episode: int = 1_000_000  # never reached: an episode terminates after delay + 1 steps


class Recall(environment.Environment[RecallState, RecallParams]):
    """Remember a cue for ``delay`` steps (see the module docstring)."""

    @property
    def default_params(self) -> RecallParams:
        return RecallParams()

    def get_obs(self, state: RecallState, params: RecallParams | None = None, key=None) -> jax.Array:
        params = self.default_params if params is None else params
        first = state.time == 0
        query = state.time == params.delay
        return jnp.stack([jnp.where(first, state.cue, 0.0), first, query]).astype(jnp.float32)

    def step_env(self, key: jax.Array, state: RecallState, action, params: RecallParams
                 ) -> tuple[jax.Array, RecallState, jax.Array, jax.Array, dict[str, Any]]:
        at_query = state.time == params.delay
        correct = jnp.asarray(action).astype(jnp.int32) == (state.cue > 0).astype(jnp.int32)
        reward = jnp.where(at_query & correct, 1.0, 0.0).astype(jnp.float32)
        state = state.replace(time=state.time + 1)
        done = self.is_terminal(state, params)
        return jax.lax.stop_gradient(self.get_obs(state, params)), state, reward, done, {}

    def reset_env(self, key: jax.Array, params: RecallParams) -> tuple[jax.Array, RecallState]:
        cue = jnp.where(jax.random.bernoulli(key), 1.0, -1.0).astype(jnp.float32)
        state = RecallState(cue=cue, time=0)
        return self.get_obs(state, params), state

    def is_terminated(self, state: RecallState, params: RecallParams) -> jax.Array:
        return state.time > params.delay

    @property
    def name(self) -> str:
        return "ppolab/Recall"

    @property
    def num_actions(self) -> int:
        return 2

    def action_space(self, params: RecallParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(2)

    def observation_space(self, params: RecallParams | None = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (3,), jnp.float32)


class StatelessCartPole(cartpole.CartPole):
    """gymnax's CartPole-v1 observing [x, theta] (its ``step_env`` and ``reset_env`` call ``get_obs``)."""

    def __init__(self):
        super().__init__()
        self.obs_shape = (len(OBSERVED),)

    def get_obs(self, state: cartpole.EnvState, params=None, key=None) -> jax.Array:
        return jnp.array([state.x, state.theta])

    @property
    def name(self) -> str:
        return "ppolab/StatelessCartPole"

    def observation_space(self, params: cartpole.EnvParams) -> spaces.Box:
        high = jnp.array([params.x_threshold * 2, params.theta_threshold_radians * 2])
        return spaces.Box(-high, high, (len(OBSERVED),), dtype=jnp.float32)


#: name -> environment class (constructed with no arguments; its ``default_params`` are used)
ENVS = {"ppolab/Recall": Recall, "ppolab/StatelessCartPole": StatelessCartPole}


def make(name: str):
    """``(env, params)`` for a name in ``ENVS``, like ``gymnax.make``. ``KeyError`` for any other name."""
    env = ENVS[name]()
    return env, env.default_params
