"""Resource bounds checked before anything is created: a run whose environments and rollout buffers would not fit
in the memory the machine has is refused with the estimate, not left to climb into swap or the OOM killer.

The estimate, per run of K agents x B actors x T steps:
* rollout buffers and the learner's working set: for N = K T B samples, the host's numpy buffers (observations,
  final observations, actions, rewards, flags), the device copy and flattened batch with pi_old's distribution, one
  sample order per epoch, and the activations of one minibatch forward and backward;
* host environments: K B x the memory one environment takes (measured by building one, with ``tracemalloc``; a
  lower bound: memory a C library allocates itself is not seen).
Small runs (fewer than ``PROBE_ACTORS`` actors and ``PROBE_SAMPLES`` samples) are not probed: they always fit.
"""

from __future__ import annotations

import math
import os
import tracemalloc

import numpy as np

from ppolab.config import Config, ConfigError
from ppolab.spaces import ActionSpec, ObsSpec

PROBE_ACTORS = 256
PROBE_SAMPLES = 1_000_000
FRACTION = 0.9  # of the memory available now


def available_memory() -> int | None:
    """Bytes the OS reports as available (MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def rollout_bytes(cfg: Config, num_agents: int, obs: ObsSpec, action: ActionSpec) -> int:
    """Rollout buffers and the learner's working set of one iteration, bytes (see the module docstring)."""
    obs_bytes = math.prod(obs.shape) * np.dtype(obs.dtype).itemsize
    head = action.head_size * 4                                     # pi_old's parameters per sample
    act = max(1, math.prod(action.shape)) * 4
    n = num_agents * cfg.batch_size                                 # samples per iteration, all agents
    host = n * (2 * obs_bytes + act + 6) + num_agents * cfg.num_envs * obs_bytes  # numpy buffers
    batch = n * (3 * obs_bytes + act + 2 * head + 32)               # device copy, flat batch, advantages, ...
    perms = n * cfg.num_epochs * 4                                  # one sample order per epoch
    width = sum(cfg.hidden_sizes) if not obs.image else 3136 + 512  # Nature CNN: its last conv and dense layer
    activations = (n // cfg.num_minibatches) * width * 4 * 4        # forward and backward of one minibatch
    return host + batch + perms + activations


def needs_probe(cfg: Config, num_agents: int) -> bool:
    return num_agents * cfg.num_envs >= PROBE_ACTORS or num_agents * cfg.batch_size >= PROBE_SAMPLES


def check_fits(cfg: Config, num_agents: int, obs: ObsSpec, action: ActionSpec, env_bytes: int = 0,
               available: int | None = None) -> None:
    """``ConfigError`` if the estimate exceeds ``FRACTION`` of the available memory (see the module docstring)."""
    available = available_memory() if available is None else available
    if available is None:
        return
    actors = num_agents * cfg.num_envs
    buffers = rollout_bytes(cfg, num_agents, obs, action)
    need = buffers + 2 * actors * env_bytes  # twice the traced size: Python's own overhead is not all traced
    if need > FRACTION * available:
        raise ConfigError(
            f"{actors:,} environments (--num-envs {cfg.num_envs} x {num_agents} agents) with --num-steps "
            f"{cfg.num_steps} need about {need / 2**30:.1f} GiB (rollout buffers {buffers / 2**30:.1f} GiB, "
            f"{env_bytes / 2**10:.0f} KiB per env) but {available / 2**30:.1f} GiB are available; lower --num-envs, "
            "--num-steps or the number of agents")


def probe_host_env(make_one) -> tuple[ObsSpec, ActionSpec, int]:
    """(obs spec, action spec, bytes) of one environment built by ``make_one()`` (a 1-actor ``HostVecEnv``): the
    second of two, so that the first one's imports and caches are not counted."""
    first = make_one()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        second = make_one()
        size = max(0, tracemalloc.get_traced_memory()[0] - before)
    finally:
        if started:
            tracemalloc.stop()
        first.close()
    try:
        return second.obs_spec, second.action_spec, size
    finally:
        second.close()
