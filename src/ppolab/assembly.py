"""Assembly of a run's pieces from its config: the driver (with its environments and network), the population's
train state, the actors' seeds, and the signature that ties a checkpoint to its network."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ppolab import resources
from ppolab.config import SWEEPABLE, Config
from ppolab.drivers.base import Driver
from ppolab.envs.factory import is_jax_native, make_host_env
from ppolab.models import make_model
from ppolab.networks import ActorCritic
from ppolab.types import HParams, TrainState
from ppolab.update import LearnerSpec, init_state


def make_driver(cfg: Config, num_agents: int) -> tuple[Driver, ActorCritic, LearnerSpec]:
    """(driver, net, spec). JAX-native envs get the fully jitted driver, everything else the host loop driver.
    Building it checks the env id and its spaces."""
    spec = LearnerSpec.from_config(cfg)
    if is_jax_native(cfg):
        from ppolab.drivers.jit import JitDriver

        driver = JitDriver(cfg, spec, num_agents)
        if resources.needs_probe(cfg, num_agents):
            resources.check_fits(cfg, num_agents, driver.obs_spec, driver.action_spec)
        return driver, driver.net, spec
    from ppolab.drivers.host import HostDriver

    if resources.needs_probe(cfg, num_agents):  # before a single one of many envs is built
        one = functools.partial(make_host_env, cfg.replace(ray_workers=0), 1, 1, distributed=False)
        resources.check_fits(cfg, num_agents, *resources.probe_host_env(one))
    env = make_host_env(cfg, num_agents, cfg.num_envs)
    try:
        net = make_model(cfg, env.obs_spec, env.action_spec)
        eval_env = functools.partial(make_host_env, cfg, num_agents, distributed=False)
        return HostDriver(cfg, env, net, spec, num_agents, eval_env=eval_env), net, spec
    except Exception:
        env.close()
        raise


def init_population(cfg: Config, net: ActorCritic, spec: LearnerSpec, rows: list[dict]) -> TrainState:
    """Train state with a leading agent axis [K, ...]: each agent's seed and hyperparameters from ``rows``."""
    # One agent at a time, then stacked: a vmapped init would batch the orthogonal initializer's QR decompositions,
    # and jaxlib's batched LAPACK kernels (ParallelBatchMap) can deadlock XLA's CPU thread pool on a 2-core machine
    # (seen here: both pool threads waiting on each other, intermittently, for K = 8).
    agents = [_init_agent(spec, net, cfg.num_envs, jax.random.PRNGKey(r["seed"]),
                          HParams(**{k: jnp.asarray(r[k], jnp.float32) for k in SWEEPABLE})) for r in rows]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *agents)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_agent(spec: LearnerSpec, net: ActorCritic, num_envs: int, key: jax.Array, hparams: HParams) -> TrainState:
    return init_state(spec, net, key, hparams, num_envs)


def env_seeds(rows: list[dict], num_envs: int, iteration: int) -> list[int]:
    """Seeds of every actor: derived from its agent's seed, its index, and (after a resume) the iteration."""
    return [(r["seed"] * 10_007 + b + iteration * 1_000_003) % (2**31 - 1) for r in rows for b in range(num_envs)]


def net_signature(net: ActorCritic) -> str:
    """What a checkpoint's parameters must fit: spaces and network shape (checked on every restore)."""
    return (f"obs={list(net.obs.shape)}:{net.obs.dtype} action={net.action.kind}:{net.action.size}:"
            f"{list(net.action.nvec)} hidden={list(net.hidden_sizes)} act={net.activation} shared={net.shared_torso}"
            + (f" cell={net.cell}:{net.rnn_size} separate={net.separate}" if net.recurrent else "")
            + (f" heads={list(net.head_sizes)}" if getattr(net, "head_sizes", ()) else ""))
