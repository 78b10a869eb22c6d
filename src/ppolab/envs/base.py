"""The written contracts of the environment layer: what a driver may ask of an environment.

Two kinds, one per driver (``drivers/base.py``):

* ``HostVecEnv``, stepped by the Python-loop driver (Gymnasium in-process or in Ray workers, envpool): K agents x B
  actors as one vector env with SAME_STEP autoreset, arrays [K, B, ...] in and out.
* ``JaxEnv``, stepped inside the jitted driver's program (gymnax, Brax): pure functions of one actor, vmapped by the
  driver; hashable, so the programs built from it are cached.

In both, ``terminated`` is an episode's natural end (no future value) and ``truncated`` a time limit (bootstrap
from V(final_obs)); never both. ``envs/factory.py`` builds the one ``Config.env`` names.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from ppolab.spaces import ActionSpec, ObsSpec


class Episode(NamedTuple):
    """A finished episode, as drivers report it."""

    agent: int
    actor: int
    ret: float     # total (undiscounted) reward; Atari: the true game score over all lives
    length: int


class HostVecEnv(Protocol):
    obs_spec: ObsSpec
    action_spec: ActionSpec

    def reset(self, seed: int | list[int]) -> np.ndarray:
        """Fresh episodes; actor i (agent-major, K * B of them) seeded with ``seed + i`` or ``seed[i]``. Returns
        obs [K, B, *obs]."""

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                  list[Episode]]:
        """actions [K, B, *act] (unclipped) -> (next_obs, reward, terminated, truncated, final_obs) [K, B, ...] and
        the episodes that ended. Where an episode ended, next_obs is the next episode's first observation and
        final_obs the ended one's last; elsewhere final_obs = next_obs."""

    def close(self) -> None: ...


class JaxEnv(Protocol):
    obs_spec: ObsSpec
    action_spec: ActionSpec

    def reset(self, key: Any) -> tuple[Any, Any]:
        """key [2] -> (obs [*obs], env state)."""

    def step(self, key: Any, state: Any, action: Any) -> tuple[Any, Any, Any, Any, Any, Any]:
        """-> (next_obs, state, reward [], terminated [], truncated [], final_obs), auto-reset where an episode
        ended (next_obs and state then belong to the next episode)."""

    def __hash__(self) -> int: ...
