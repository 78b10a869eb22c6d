"""POPGym's environments (Morad et al. 2023, arXiv 2303.01859; ``pip install popgym``) registered with Gymnasium as
``popgym/NAME-v0``, for ppolab's module-import form of ``--env``:

    cd benchmarks && ppolab train --env popgym_envs:popgym/RepeatPreviousEasy-v0 --policy gru ...
    PYTHONPATH=benchmarks ppolab train --env popgym_envs:popgym/StatelessCartPoleEasy-v0 ...

NAME is each POPGym class name (``RepeatPreviousEasy``, ``AutoencodeEasy``, ``PositionOnlyCartPoleEasy``, ... every
class in ``popgym.envs.ALL``), and ``StatelessCartPole{,Easy,Medium,Hard}`` for the paper's name of
``PositionOnlyCartPole`` (the package renamed it). As in the paper's experiments (``popgym/baselines/ppo.py``:
``wrap``), each env is wrapped in POPGym's ``PreviousAction`` (the last action joins the observation) and
``Antialias`` (a flag for the first step); ``--env-kwargs paper_wrappers=false`` gives the bare env. The observations
are then Tuples of Discrete/Box spaces, which ppolab flattens (one-hot for the Discrete parts).

POPGym 1.0.7 (PyPI) needs only gymnasium and numpy; its envs pass Gymnasium 1.3's env checker and download nothing.
The ids are registered without Gymnasium's passive checker (Autoencode's observations hold numpy int32s, which the
checker warns about on every step).
"""

from __future__ import annotations

import gymnasium as gym

try:
    import popgym.envs as _popgym_envs
    from popgym import wrappers as _popgym_wrappers
except ImportError as e:  # a one-line EnvError in `ppolab train` (it names this module and the exception)
    raise ImportError(f"POPGym is not installed ({e}): pip install popgym") from None

#: the paper's names for classes the package renamed
ALIASES = {f"StatelessCartPole{level}": f"PositionOnlyCartPole{level}" for level in ("", "Easy", "Medium", "Hard")}


def make(name: str, paper_wrappers: bool = True, **kwargs) -> gym.Env:
    """The POPGym env class ``name`` (or an alias), in the paper's wrappers unless ``paper_wrappers`` is False."""
    env = getattr(_popgym_envs, ALIASES.get(name, name))(**kwargs)
    if paper_wrappers:
        env = _popgym_wrappers.Antialias(_popgym_wrappers.PreviousAction(env))
    return env


def register() -> list[str]:
    """Register every POPGym env as ``popgym/NAME-v0`` (idempotent); returns the ids."""
    names = [cls.__name__ for cls in _popgym_envs.ALL] + list(ALIASES)
    ids = []
    for name in names:
        env_id = f"popgym/{name}-v0"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=make, kwargs={"name": name}, disable_env_checker=True)
        ids.append(env_id)
    return ids


register()
