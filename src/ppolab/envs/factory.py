"""One factory for every environment back-end: ``Config.env`` -> the environment a driver steps.

``make_host_env`` builds a ``HostVecEnv`` (Gymnasium sub-envs in this process or in Ray actors, envpool) for the
Python-loop driver; ``make_jax_env`` a ``JaxEnv`` (gymnax, Brax, jumanji) for the jitted driver. Which of Ray or
in-process sub-envs is decided here, not inside the Gymnasium adapter. Optional back-ends are imported when used.
``--action-mask`` is applied here: with ``off`` an env offers no mask (``has_mask`` False) and drivers act unmasked.
"""

from __future__ import annotations

from ppolab.config import Config, ConfigError, backend_of
from ppolab.envs.base import HostVecEnv, JaxEnv
from ppolab.options import parse_env_kwargs
from ppolab.signals import WorkersIgnoreStopSignals

HOST_BACKENDS = ("gymnasium", "envpool")
JAX_BACKENDS = ("gymnax", "brax", "jumanji")


def make_host_env(cfg: Config, num_agents: int, num_envs: int, distributed: bool = True) -> HostVecEnv:
    """``num_agents`` x ``num_envs`` actors of ``cfg.env``; in ``cfg.ray_workers`` Ray actors where set and
    ``distributed`` (the final evaluation's few envs run in this process)."""
    backend, name = backend_of(cfg.env)
    if backend == "gymnasium":
        return _gymnasium(cfg, name, num_agents, num_envs, distributed)
    if backend == "envpool":
        from ppolab.envs import envpool_vec

        return envpool_vec.EnvpoolVecEnv(name, num_agents, num_envs)
    raise ConfigError(f"{cfg.env!r} is a JAX-native environment: it runs in the jitted driver, not the host loop")


def _gymnasium(cfg: Config, name: str, num_agents: int, num_envs: int, distributed: bool) -> HostVecEnv:
    from ppolab.envs import atari
    from ppolab.envs.gymnasium_vec import GymnasiumVecEnv, check_env_id, check_vector_mode, module_root

    check_env_id(name)
    check_vector_mode(name, cfg.vector_mode)
    extra = atari.vec_kwargs(name, frame_stack=cfg.frame_stack) if atari.is_atari(name) else {}
    env_kwargs = {**extra.pop("env_kwargs", {}), **parse_env_kwargs(cfg.env_kwargs)}
    with WorkersIgnoreStopSignals():
        vector_env = None
        if cfg.ray_workers and distributed:
            from ppolab.envs.ray_vec import RayVectorEnv

            root = module_root(name)
            vector_env = RayVectorEnv(name, num_agents * num_envs, cfg.ray_workers, cfg.vector_mode, env_kwargs,
                                      extra.get("wrappers"), cfg.ray_address, cfg.ray_worker_cpus,
                                      sys_path=[root] if root else None, action_mask=cfg.action_mask)
        return GymnasiumVecEnv(name, num_agents, num_envs, cfg.vector_mode, env_kwargs, extra.get("wrappers"),
                               extra.get("episode_info", False), vector_env=vector_env, timeout=cfg.env_timeout,
                               action_mask=cfg.action_mask)


def make_jax_env(cfg: Config) -> JaxEnv:
    """The gymnax, Brax or jumanji adapter for ``cfg.env`` (pure single-actor reset/step functions)."""
    backend, name = backend_of(cfg.env)
    if backend == "gymnax":
        from ppolab.envs.gymnax_env import GymnaxEnv

        return GymnaxEnv(name)
    if backend == "brax":
        from ppolab.envs.brax_env import BraxEnv

        return BraxEnv(name, backend=cfg.brax_backend)
    if backend == "jumanji":
        from ppolab.envs.jumanji_env import JumanjiEnv

        return JumanjiEnv(name, use_mask=cfg.action_mask != "off")
    raise ConfigError(f"{cfg.env!r} is not a JAX-native environment; the jitted driver takes gymnax:NAME, brax:NAME "
                      "or jumanji:NAME")


def is_jax_native(cfg: Config) -> bool:
    return backend_of(cfg.env)[0] in JAX_BACKENDS
