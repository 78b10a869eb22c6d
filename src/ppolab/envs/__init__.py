"""Environment back-ends, chosen by the env id's prefix: ``gymnax:``, ``brax:``, ``jumanji:``, ``envpool:``, else
Gymnasium.

``factory.py`` builds the environment a config names; ``base.py`` holds the contracts drivers rely on. Importing
this package imports no environment library: each back-end is imported when it is used.
"""

from __future__ import annotations

from ppolab.config import ENV_PREFIXES as PREFIXES
from ppolab.config import backend_of
from ppolab.envs.errors import EnvError, EnvWorkerError

__all__ = ["EnvError", "EnvWorkerError", "backend_of", "PREFIXES"]
