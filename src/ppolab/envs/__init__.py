"""Environment back-ends, chosen by the env id's prefix: ``gymnax:``, ``brax:``, ``envpool:``, else Gymnasium.

Optional back-ends are imported lazily, so a missing extra only matters when its prefix is used.
"""

from __future__ import annotations

from ppolab.envs import probes
from ppolab.envs.gymnasium_vec import EnvError, check_env_id

probes.register()

PREFIXES = ("gymnax", "brax", "envpool")


def backend_of(env_id: str) -> tuple[str, str]:
    """'gymnax:CartPole-v1' -> ('gymnax', 'CartPole-v1'); 'Hopper-v5' -> ('gymnasium', 'Hopper-v5')."""
    if ":" in env_id:
        prefix, name = env_id.split(":", 1)
        if prefix in PREFIXES:
            return prefix, name
    return "gymnasium", env_id


__all__ = ["EnvError", "backend_of", "check_env_id", "PREFIXES"]
