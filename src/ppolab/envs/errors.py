"""The errors of the environment layer (no imports: every adapter and the trainer share them)."""

from __future__ import annotations


class EnvError(ValueError):
    """The environment id or the environment itself is unusable; the message says what to do."""


class EnvWorkerError(RuntimeError):
    """A process that steps environments for the trainer died (a Ray worker, see ``envs/ray_vec.py``)."""


class EnvFaultError(EnvWorkerError):
    """An environment failed during a run: an exception in ``reset`` / ``step`` (an action it rejects included), an
    observation of the wrong shape or dtype, or a step past ``--env-timeout``. The message names the env id, the
    sub-env (agent, actor) where it is known, and the step; the trainer keeps its last whole iteration."""


class SubEnvError(Exception):
    """Raised by ``LeanSyncVectorEnv`` around a sub-env's own exception: which sub-env failed (``index``)."""

    def __init__(self, index: int, cause: BaseException):
        super().__init__(index, cause)
        self.index, self.cause = index, cause
