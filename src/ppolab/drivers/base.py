"""The written contract between the training loop and a driver (``train`` and ``loop`` call only this).

A driver owns the environments of a population of K agents and the compiled programs that act and learn:

* ``HostDriver`` (``drivers/host.py``): a ``HostVecEnv`` stepped in a Python loop, acting in numpy or a jitted call,
  the jitted vmapped ``update.learn`` after each rollout;
* ``JitDriver`` (``drivers/jit.py``): a ``JaxEnv`` stepped inside one compiled program that also learns, up to
  ``iterations_per_call`` iterations per call.

``make_driver`` (``assembly.py``) picks one from the config.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ppolab.envs.base import Episode
from ppolab.networks import ActorCritic
from ppolab.types import TrainState
from ppolab.update import LearnerSpec

#: Per-iteration metrics of K agents: {name: array [K]} (the keys of ``update.METRIC_KEYS``).
Metrics = dict[str, np.ndarray]


class Driver(Protocol):
    net: ActorCritic  # or ``recurrent.RecurrentActorCritic`` (``net.recurrent``)
    spec: LearnerSpec
    iterations_per_call: int
    """How many iterations one ``run`` call should be asked for at most (1 for the host loop)."""
    masked: bool
    """Whether the env gives action masks and the policy acts with them."""

    def precompile(self, state_shapes: TrainState) -> None:
        """Compile every program the run needs from the train state's shapes (``jax.eval_shape``) alone."""

    def start(self, seeds: list[int]) -> None:
        """Fresh episodes for the K x B actors (K * B seeds, agent-major)."""

    def run(self, state: TrainState, num_iterations: int) -> tuple[TrainState, list[Metrics], list[list[Episode]]]:
        """Collect and learn ``num_iterations`` times; metrics and finished episodes per iteration."""

    def driver_state(self) -> Any | None:
        """The actors' state to checkpoint for an exact resume (None where envs cannot be snapshotted)."""

    def restore_driver_state(self, tree: Any) -> None:
        """Inverse of ``driver_state``."""

    def evaluate(self, state: TrainState, episodes: int, deterministic: bool, seed: int) -> np.ndarray:
        """[K, episodes]: the return of the first episode of each of ``episodes`` fresh actors per agent."""

    def close(self) -> None: ...
