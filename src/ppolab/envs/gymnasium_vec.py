"""Gymnasium environments through the vector API, with termination and truncation kept apart.

The vector env runs in Gymnasium's SAME_STEP autoreset mode: when a sub-env's episode ends, ``step`` returns the
first observation of the next episode and puts the episode's last observation in ``info["final_obs"]``. So no fake
transition ever crosses an episode boundary, and a truncated step can bootstrap from V(final observation).
That holds for every vector mode, including ``vector`` (``SameStepCartPoleVectorEnv``: Gymnasium's numpy CartPole,
whose own autoreset is NEXT_STEP, given SAME_STEP autoreset).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
from pathlib import Path

import numpy as np

from ppolab.envs import atari, gymnasium_masks, masked_probes, probes
from ppolab.envs.base import Episode
from ppolab.envs.cartpole_vector import same_step_cartpole_class
from ppolab.envs.errors import EnvError, EnvFaultError, SubEnvError
from ppolab.signals import Deadline
from ppolab.spaces import ActionSpec, ObsSpec, action_spec_from_gymnasium, obs_spec_from_gymnasium


def import_env_module(env_id: str) -> str:
    """Gymnasium's module-import form: for 'my_module:MyEnv-v0' import ``my_module`` (which registers its envs; the
    working directory is searched too, as ``python -m`` would) and return the registered id 'MyEnv-v0'. Any other id
    is returned unchanged. ``EnvError`` if the module cannot be imported."""
    if ":" not in env_id:
        return env_id
    module, name = env_id.split(":", 1)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if os.getcwd() in sys.path or e.name != module.split(".")[0]:
            raise EnvError(f"--env {env_id!r}: cannot import module {module!r} ({e}); put it on PYTHONPATH") from None
        sys.path.append(os.getcwd())
        return import_env_module(env_id)
    except Exception as e:  # noqa: BLE001 - a user's module failing at import: name it, one line
        raise EnvError(f"--env {env_id!r}: importing module {module!r} failed: {type(e).__name__}: {e}") from None
    return name


def module_root(env_id: str) -> str | None:
    """The sys.path entry that ``import_env_module`` found the module of ``env_id`` under (for Ray workers)."""
    if ":" not in env_id:
        return None
    module = sys.modules.get(env_id.split(":", 1)[0])
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    root = Path(path).resolve().parent
    for _ in range(env_id.split(":", 1)[0].count(".") + (Path(path).name == "__init__.py")):
        root = root.parent
    return str(root)


def check_env_id(env_id: str) -> None:
    """Raise ``EnvError`` for an id Gymnasium does not know, before anything is created or written."""
    import gymnasium as gym

    probes.register()
    masked_probes.register()
    name = import_env_module(env_id)
    if atari.is_atari(name):
        atari.register_ale()  # ale-py's ids exist only once registered (EnvError naming the extra if not installed)
    try:
        gym.spec(name)
    except gym.error.Error as e:
        raise EnvError(f"unknown environment id {env_id!r}: {e} Use a registered Gymnasium id (e.g. CartPole-v1, "
                       "Hopper-v5), my_module:MyEnv-v0 for your own, or a prefixed one (gymnax:CartPole-v1, "
                       "brax:hopper, envpool:Hopper-v4)") from None


def _needs_flatten(space) -> bool:
    from gymnasium import spaces

    return not isinstance(space, spaces.Box)


def _is_flat_box(space) -> bool:
    from gymnasium import spaces

    return isinstance(space, spaces.Box) and len(space.shape) == 1


def _make_one(env_id: str, env_kwargs: dict, wrappers: list):
    import gymnasium as gym

    env = gym.make(env_id, **env_kwargs)
    for w in wrappers:
        env = w(env)
    return env


#: ``vector_mode`` values of ``make_gymnasium_vec``.
VECTOR_MODES = ("sync", "gym-sync", "async", "vector")
_CARTPOLE_VECTOR_ENTRY_POINT = "gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv"


def _has_numpy_cartpole_vector(env_id: str) -> bool:
    """Whether Gymnasium's vector entry point of ``env_id`` is its numpy CartPole (CartPole-v0, CartPole-v1)."""
    import gymnasium as gym

    entry = gym.spec(import_env_module(env_id)).vector_entry_point
    if isinstance(entry, str):
        return entry == _CARTPOLE_VECTOR_ENTRY_POINT
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    return isinstance(entry, type) and issubclass(entry, CartPoleVectorEnv)


def check_vector_mode(env_id: str, mode: str) -> None:
    """Raise ``EnvError`` for a vector mode ``env_id`` cannot use, before anything is created or written."""
    if mode not in VECTOR_MODES:
        raise EnvError(f"unknown --vector-mode {mode!r}; choose one of: {', '.join(VECTOR_MODES)}")
    if mode == "vector" and not _has_numpy_cartpole_vector(env_id):
        others = ", ".join(m for m in VECTOR_MODES if m != "vector")
        raise EnvError(f"--vector-mode vector is not available for {env_id!r} (only CartPole-v0 and CartPole-v1 have "
                       f"Gymnasium's vectorized implementation); choose one of: {others}")


def make_gymnasium_vec(env_id: str, num_envs: int, mode: str = "sync", env_kwargs: dict | None = None,
                       wrappers: list | None = None, action_mask: str = "auto"):
    """A Gymnasium vector env in SAME_STEP autoreset mode. ``mode``: sync (``LeanSyncVectorEnv``, the default),
    gym-sync (``gymnasium.vector.SyncVectorEnv``), async (``gymnasium.vector.AsyncVectorEnv``) or vector (the env's
    own vectorized implementation, Gymnasium's vector entry point; CartPole-v0/v1 only, as
    ``SameStepCartPoleVectorEnv``). An env with action masks (``action_mask`` auto|off, see
    ``gymnasium_masks``) gets its mask appended to its observations."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    check_env_id(env_id)
    check_vector_mode(env_id, mode)
    if mode == "vector":
        if wrappers:
            raise EnvError(f"--vector-mode vector steps {env_id!r} as one vectorized env: per-env wrappers cannot be "
                           "applied; use --vector-mode sync")
        # Gymnasium's own construction from the registered spec (its kwargs, max_episode_steps: 500 for v1, 200 for
        # v0), with the vector entry point swapped for the SAME_STEP subclass.
        spec = dataclasses.replace(gym.spec(import_env_module(env_id)), vector_entry_point=same_step_cartpole_class())
        return gym.make_vec(spec, num_envs=num_envs, vectorization_mode="vector_entry_point", **(env_kwargs or {}))
    wrappers = list(wrappers or [])
    probe = _make_one(env_id, env_kwargs or {}, wrappers)
    lean_masks = 0  # the mask size where the lean env gathers ``action_masks()`` itself (``VectorMasks``)
    try:
        source = gymnasium_masks.mask_source(probe, action_mask)
        if source == "method" and mode == "sync" and _is_flat_box(probe.observation_space):
            lean_masks = gymnasium_masks.action_mask_size(probe.action_space)
        elif source is not None:
            wrappers.append(functools.partial(gymnasium_masks.wrap, mode=action_mask))
        elif _needs_flatten(probe.observation_space):
            wrappers.append(gym.wrappers.FlattenObservation)
    finally:
        probe.close()
    if mode == "sync":
        return LeanSyncVectorEnv([functools.partial(_make_one, env_id, env_kwargs or {}, wrappers)] * num_envs,
                                 mask_size=lean_masks)
    return gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode.removeprefix("gym-"),
                        wrappers=wrappers or None,
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP,
                                       **({"context": "spawn"} if mode == "async" else {})},  # no fork under JAX
                        **(env_kwargs or {}))


def _stack_obs(obs: list, space) -> np.ndarray:
    """The sub-envs' observations as one array; ``SubEnvError`` names the first of another shape than ``space``'s."""
    try:
        return np.asarray(obs)
    except ValueError:  # ragged: some sub-env returned another shape
        shape = tuple(space.shape or ())
        i = next((i for i, o in enumerate(obs) if np.shape(o) != shape), 0)
        raise SubEnvError(i, ValueError(f"observation of shape {np.shape(obs[i])}, the observation space has "
                                        f"{shape}")) from None


class LeanSyncVectorEnv:
    """The Gymnasium vector API (reset / step / close, SAME_STEP autoreset, ``final_obs`` and the ``episode``
    entry of ``final_info``) stepping sub-envs one after another — without SyncVectorEnv's per-step merging of
    every info key, which costs ~40 us a step on Hopper (BENCHMARKS.md). Same results as
    ``gymnasium.vector.SyncVectorEnv(..., autoreset_mode=SAME_STEP)`` for the keys ppolab reads
    (tests/test_gymnasium_vec.py). ``mask_size`` > 0: the sub-envs' ``action_masks()`` are appended to their flat
    observations (``gymnasium_masks.VectorMasks``), as the ``MaskInObservation`` wrapper would."""

    def __init__(self, env_fns, mask_size: int = 0):
        from gymnasium.vector import AutoresetMode
        from gymnasium.vector.utils import batch_space

        self.envs = [fn() for fn in env_fns]
        self.num_envs = len(self.envs)
        self._env_space = self.envs[0].observation_space  # a sub-env's own, without the mask
        self._masks = gymnasium_masks.VectorMasks(self.envs, mask_size) if mask_size else None
        self.single_observation_space = self._masks.space(self._env_space) if self._masks else self._env_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def reset(self, *, seed=None, options=None):
        seeds = seed if isinstance(seed, list | tuple) else [None if seed is None else seed + i
                                                              for i in range(self.num_envs)]
        obs = []
        for i, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            try:
                obs.append(env.reset(seed=s, options=options)[0])
            except Exception as e:  # noqa: BLE001
                raise SubEnvError(i, e) from e
        return self._stacked(obs), {}

    def _stacked(self, obs: list) -> np.ndarray:
        obs = _stack_obs(obs, self._env_space)
        return obs if self._masks is None else self._masks.append(obs)

    def step(self, actions):
        n = self.num_envs
        obs, rew, term, trunc = [], [], [], []  # plain lists: per-item numpy writes cost more at these sizes
        info = {}
        for i, env in enumerate(self.envs):
            try:
                o, r, te, tr, inf = env.step(actions[i])
            except Exception as e:  # noqa: BLE001 - the trainer names the sub-env and stops cleanly
                raise SubEnvError(i, e) from e
            if te or tr:
                if "final_obs" not in info:
                    info["final_obs"] = np.full(n, None, object)
                    info["_final_obs"] = np.zeros(n, bool)
                info["final_obs"][i] = o if self._masks is None else self._masks.append_one(i, o)
                info["_final_obs"][i] = True
                if "episode" in inf:
                    fin = info.setdefault("final_info", {"episode": {k: np.zeros(n) for k in ("r", "l", "t")},
                                                         "_episode": np.zeros(n, bool)})
                    for k in ("r", "l", "t"):
                        fin["episode"][k][i] = inf["episode"][k]
                    fin["_episode"][i] = True
                try:
                    o, _ = env.reset()
                except Exception as e:  # noqa: BLE001
                    raise SubEnvError(i, e) from e
            obs.append(o)
            rew.append(r)
            term.append(te)
            trunc.append(tr)
        return self._stacked(obs), np.asarray(rew, np.float64), np.asarray(term, bool), np.asarray(trunc, bool), info

    def close(self):
        for env in self.envs:
            env.close()


class GymnasiumVecEnv:
    """K agents x B actors of one Gymnasium env id as one vector env; arrays come out as [K, B, ...].

    ``step`` returns (next_obs, reward, terminated, truncated, final_obs) where final_obs[k, b] is the episode's last
    observation where it ended (terminated or truncated), else the ordinary next observation.
    Episode returns and lengths are tracked per actor from the rewards, unless ``episode_info`` is set: then they are
    read from ``info["episode"]`` as written by an inner ``RecordEpisodeStatistics`` (Atari: the true game score
    while the agent sees clipped rewards and life-loss terminations).
    Action masks (``gymnasium_masks``; ``action_mask`` auto|off): where ``has_mask``, ``mask`` [K, B, head] bool holds
    the masks of the observations the last ``reset`` / ``step`` returned; they are cut off the observations (and
    final observations), which the network sees without them.
    """

    def __init__(self, env_id: str, num_agents: int, num_envs: int, mode: str = "sync", env_kwargs=None,
                 wrappers=None, episode_info: bool = False, vector_env=None, timeout: float = 0.0,
                 action_mask: str = "auto"):
        self.env_id, self.K, self.B = env_id, num_agents, num_envs
        self.episode_info = episode_info
        self.timeout, self.steps = timeout, 0  # --env-timeout (0: none); env steps since this process started
        # the K x B sub-envs: in this process, or ``vector_env`` built elsewhere (e.g. Ray actors, envs/factory.py)
        self.env = vector_env if vector_env is not None else make_gymnasium_vec(
            env_id, num_agents * num_envs, mode, env_kwargs, wrappers, action_mask)
        self.obs_spec: ObsSpec = obs_spec_from_gymnasium(self.env.single_observation_space)
        self.action_spec: ActionSpec = action_spec_from_gymnasium(self.env.single_action_space)
        self._init_masks(action_mask)
        spec = self.action_spec
        self._low = np.asarray(spec.low, np.float32) if spec.kind == "box" and spec.low else None
        self._high = np.asarray(spec.high, np.float32) if self._low is not None else None
        self._ret = np.zeros(num_agents * num_envs, np.float64)
        self._len = np.zeros(num_agents * num_envs, np.int64)

    def _shape(self, x):
        return x.reshape((self.K, self.B) + x.shape[1:])

    def reset(self, seed: int | list[int]):
        """Seed actor i with ``seed + i`` (int) or ``seed[i]`` (list of K * B seeds)."""
        seeds = [seed + i for i in range(self.K * self.B)] if isinstance(seed, int) else [int(s) for s in seed]
        obs, _ = self._guarded("reset", self.env.reset, seed=seeds)
        self._ret[:] = 0
        self._len[:] = 0
        return self._shape(self._checked(self._split(np.asarray(obs)), "reset"))

    def step(self, actions: np.ndarray):
        """actions [K, B, ...] -> next_obs, reward, terminated, truncated, final_obs [K, B, ...], finished episodes
        as a list of ``Episode``."""
        flat = actions.reshape((self.K * self.B,) + actions.shape[2:])
        if self._low is not None:  # Box: execute the clipped action, the unclipped one is what was stored
            flat = np.minimum(np.maximum(flat, self._low), self._high)  # np.clip's wrapper costs ~3 us a call
        self.steps += 1
        obs, rew, term, trunc, info = self._guarded("step", self.env.step, flat)
        obs = self._checked(self._split(np.asarray(obs)), "step")
        rew = np.asarray(rew, np.float64)
        final = obs
        episodes = []
        self._ret += rew
        self._len += 1
        # SAME_STEP autoreset moves the ending step's info (with "episode") to info["final_info"]
        ended = info.get("final_info", {}) if self.episode_info else {}
        if "episode" in ended:
            ep = ended["episode"]
            for i in np.flatnonzero(ended["_episode"]):
                episodes.append(Episode(i // self.B, i % self.B, float(ep["r"][i]), int(ep["l"][i])))
        if "final_obs" in info:  # SAME_STEP autoreset: present exactly when some episode ended
            final = obs.copy()
            mask = info["_final_obs"]
            for i in np.flatnonzero(mask):
                final[i] = self._split(np.asarray(info["final_obs"][i]), keep=False)
            for i in np.flatnonzero(term | trunc):
                if not self.episode_info:
                    episodes.append(Episode(i // self.B, i % self.B, float(self._ret[i]), int(self._len[i])))
                self._ret[i] = 0
                self._len[i] = 0
        return (self._shape(obs), self._shape(rew.astype(np.float32)), self._shape(term), self._shape(trunc),
                self._shape(final), episodes)

    def close(self):
        self.env.close()

    # ---- action masks ---------------------------------------------------------------------------------------------
    def _init_masks(self, mode: str) -> None:
        """The mask entries at the end of each observation (``gymnasium_masks``), and whether they are used."""
        self._mask_size = gymnasium_masks.mask_size(self.env.single_observation_space)
        if self._mask_size:
            self.obs_spec = ObsSpec((self.obs_spec.shape[0] - self._mask_size,), "float32")
        self.has_mask = bool(self._mask_size) and mode != "off"
        if self.has_mask:
            gymnasium_masks.check_mask_size(self._mask_size, self.action_spec)
        self.mask: np.ndarray | None = None

    def _split(self, obs: np.ndarray, keep: bool = True) -> np.ndarray:
        """Observations [..., obs + mask] -> [..., obs]; the masks of a reset's or step's observations (``keep``)
        are kept in ``self.mask`` [K, B, head] when used."""
        obs, mask = gymnasium_masks.split_mask(obs, self._mask_size)
        if keep and self.has_mask and obs.ndim == 2 and len(obs) == self.K * self.B:  # else ``_checked`` reports
            self.mask = self._shape(mask)
        return obs

    # ---- faults ---------------------------------------------------------------------------------------------------
    def _where(self, i: int | None, what: str) -> str:
        sub = f"sub-env {i} (agent {i // self.B}, actor {i % self.B})" if i is not None else "a sub-env"
        return f"env {self.env_id!r}, {sub}, in {what}() at env step {self.steps}"

    def _guarded(self, what: str, fn, *args, **kwargs):
        """``fn(...)`` with an env's own exception (or ``--env-timeout``) turned into ``EnvFaultError``."""
        try:
            if not self.timeout:
                return fn(*args, **kwargs)
            with Deadline(self.timeout, f"{what} did not return within --env-timeout {self.timeout:g} s"):
                return fn(*args, **kwargs)
        except SubEnvError as e:
            raise EnvFaultError(f"{self._where(e.index, what)}: {type(e.cause).__name__}: "
                                f"{str(e.cause)[:300]}") from e.cause
        except EnvFaultError:
            raise
        except Exception as e:  # noqa: BLE001 - a vector env that does not say which sub-env failed
            from ppolab.envs.errors import EnvWorkerError

            if isinstance(e, EnvWorkerError):
                raise
            raise EnvFaultError(f"{self._where(None, what)}: {type(e).__name__}: {str(e)[:300]}") from e

    def _checked(self, obs: np.ndarray, what: str) -> np.ndarray:
        """``EnvFaultError`` for observations of another shape or dtype than the observation space's."""
        want = (self.K * self.B,) + tuple(self.obs_spec.shape)
        ok_dtype = obs.dtype == np.uint8 if self.obs_spec.image else obs.dtype.kind in "biuf"
        if obs.shape != want or not ok_dtype:
            raise EnvFaultError(f"{self._where(None if obs.ndim == 0 else 0, what)}: observations of shape "
                                f"{obs.shape[1:]} and dtype {obs.dtype}, the observation space has "
                                f"{tuple(self.obs_spec.shape)} and {self.obs_spec.dtype}")
        return obs
