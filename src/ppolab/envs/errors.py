"""The errors of the environment layer (no imports: every adapter and the trainer share them)."""

from __future__ import annotations


class EnvError(ValueError):
    """The environment id or the environment itself is unusable; the message says what to do."""


class EnvWorkerError(RuntimeError):
    """A process that steps environments for the trainer died (a Ray worker, see ``envs/ray_vec.py``)."""
