"""A JAX env stepped from the host, so the Python-loop driver (``HostDriver``) and the jitted driver (``JitDriver``)
can run the same env with the same keys (parity tests)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ppolab.drivers import jit as J
from ppolab.drivers.host import HostDriver
from ppolab.envs.base import Episode


class HostJaxEnv:
    """K x B actors of a ``JaxEnv`` stepped from the host with exactly the jitted driver's reset and step keys, behind
    the ``HostVecEnv`` interface (with masks: ``has_mask``, ``mask`` [K, B, head], where the env has them)."""

    def __init__(self, env, num_agents: int, num_envs: int):
        self.env, self.K, self.B = env, num_agents, num_envs
        self.obs_spec, self.action_spec = env.obs_spec, env.action_spec
        self.has_mask = bool(getattr(env, "has_mask", False))
        self._step = jax.jit(jax.vmap(self._step_agent))
        self._masks = jax.jit(jax.vmap(jax.vmap(env.mask))) if self.has_mask else None

    def _step_agent(self, actors: J.ActorState, action):  # the env half of ``drivers.jit.env_step``
        env_key, step_key = jax.random.split(actors.key)
        obs, env_state, rew, term, trunc, final = jax.vmap(self.env.step)(
            jax.random.split(step_key, self.B), actors.env_state, action)
        done = term | trunc
        ret, length = actors.ep_return + rew, actors.ep_length + 1
        nxt = J.ActorState(env_state=env_state, obs=obs, ep_return=jnp.where(done, 0.0, ret),
                           ep_length=jnp.where(done, 0, length), key=env_key)
        return nxt, (rew, term, trunc, final, ret, length)

    def _update_mask(self):
        if self.has_mask:
            self.mask = np.asarray(self._masks(self.actors.env_state))

    def reset(self, seeds):
        keys = jnp.stack([jax.random.PRNGKey(int(s)) for s in np.asarray(seeds).reshape(self.K, self.B)[:, 0]])
        self.actors = J._reset_population(self.env, self.B, keys)
        self._update_mask()
        return np.asarray(self.actors.obs)

    def step(self, actions):
        self.actors, out = self._step(self.actors, jnp.asarray(actions))
        rew, term, trunc, final, ret, length = (np.asarray(x) for x in out)
        self._update_mask()
        done = term | trunc
        episodes = [Episode(int(k), int(b), float(ret[k, b]), int(length[k, b]))
                    for k, b in zip(*np.nonzero(done), strict=True)]
        return np.asarray(self.actors.obs), rew, term, trunc, final, episodes

    def close(self):
        pass


class SameKeysHostDriver(HostDriver):
    act_stream = J.ACT_STREAM  # acting keys as the jitted driver derives them
