"""Action masks of Gymnasium envs, carried inside the observations, so that every vector mode moves them unchanged.

Two conventions (issue 13): a ``Dict`` observation with an ``action_mask`` key (PettingZoo's), and an
``action_masks()`` method (sb3-contrib's; found through wrappers with ``get_wrapper_attr``). ``MaskInObservation``
wraps one sub-env: its observation is the float32 vector ``[flatten(rest), mask as 0/1]``, where ``rest`` is the
observation without the mask (the whole observation for the method convention), and its space is a
``MaskedObservationSpace``: a Box that knows its ``mask_size``. A vector env (ppolab's lean one, Gymnasium's sync and
async ones, Ray workers) then stacks and sends these like any Box observation, final observations included, and the
mask of the next episode's first observation comes with it after an autoreset; ``GymnasiumVecEnv`` cuts the last
``mask_size`` columns off (``split_mask``), so the mask is never fed to the network.

The method is called in the sub-env's own ``reset`` and ``step`` (in its own process for async and Ray workers), so
gathering the masks costs no extra round trip. ppolab's lean sync vector env needs no wrapper for a flat Box
observation: ``VectorMasks`` calls the sub-envs' bound ``action_masks`` methods itself and appends all masks to the
stacked observations in one array operation (the wrapper's per-sub-env observation copy cost ~10 us a step). A Dict
mask is always split off, also with ``--action-mask off`` (the network then sees the same observation as with masks;
only the masking differs).

The mask's layout is the policy head's: [n] for Discrete(n), [sum(nvec)] for MultiDiscrete (sub-action after
sub-action), True or 1 = legal.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppolab.envs.errors import SubEnvError
from ppolab.spaces import UnsupportedSpaceError


def mask_source(env, mode: str = "auto") -> str | None:
    """Where ``env`` (one Gymnasium env) gives its action masks: "obs" (a Dict observation with an ``action_mask``
    key, split off in every mode), "method" (``action_masks()``; not with ``mode`` "off") or None."""
    space = env.observation_space
    if isinstance(space, spaces.Dict) and "action_mask" in space.spaces:
        return "obs"
    if mode == "off":
        return None
    try:
        method = env.get_wrapper_attr("action_masks")
    except AttributeError:
        return None
    return "method" if callable(method) else None


def check_mask_size(size: int, action_spec) -> None:
    """``UnsupportedSpaceError`` unless a mask of ``size`` entries fits ``action_spec`` (an ``ActionSpec``): one
    entry per logit of a Discrete or MultiDiscrete action."""
    if action_spec.kind not in ("discrete", "multidiscrete"):
        raise UnsupportedSpaceError(f"action masks need a Discrete or MultiDiscrete action space, not "
                                    f"{action_spec.kind}; pass --action-mask off to ignore the mask")
    if size != action_spec.head_size:
        raise UnsupportedSpaceError(f"the env's action mask has {size} entries; its action space needs "
                                    f"{action_spec.head_size} (one per action value, sub-action after sub-action)")


class MaskedObservationSpace(spaces.Box):
    """A float32 Box [obs_size + mask_size] whose last ``mask_size`` entries are the action mask (0 or 1)."""

    def __init__(self, low, high, mask_size: int, seed=None):
        low = np.concatenate([np.asarray(low, np.float32), np.zeros(mask_size, np.float32)])
        high = np.concatenate([np.asarray(high, np.float32), np.ones(mask_size, np.float32)])
        super().__init__(low, high, low.shape, np.float32, seed=seed)
        self.mask_size = int(mask_size)


class MaskInObservation(gym.ObservationWrapper):
    """One env's observation as ``[flatten(rest), mask]`` float32 (see the module docstring)."""

    def __init__(self, env, source: str):
        super().__init__(env)
        self.source, space = source, env.observation_space
        if source == "obs":
            self.mask_size = spaces.flatdim(space.spaces["action_mask"])
            space = spaces.Dict({k: v for k, v in space.spaces.items() if k != "action_mask"})
        else:
            self.mask_size = action_mask_size(env.action_space)
        self._rest = space
        flat = spaces.flatten_space(space)
        self.observation_space = MaskedObservationSpace(flat.low, flat.high, self.mask_size)
        # resolved once: the lookup through the wrapper chain and Gymnasium's generic flatten cost ~8 us per step
        self._action_masks = None if source == "obs" else env.get_wrapper_attr("action_masks")
        self._rest_size = int(flat.shape[0])
        self._flatten = _as_is if isinstance(space, spaces.Box) else functools.partial(spaces.flatten, space)

    def observation(self, observation):
        mask = observation["action_mask"] if self._action_masks is None else self._action_masks()
        mask = _flat_mask(mask, self.mask_size)
        out = np.empty(self._rest_size + self.mask_size, np.float32)
        out[: self._rest_size] = np.asarray(self._flatten(observation)).reshape(-1)
        out[self._rest_size:] = mask
        return out


def action_mask_size(action_space) -> int:
    """The entries of an ``action_masks()`` mask for ``action_space``: n for Discrete(n), sum(nvec) for
    MultiDiscrete (0 for other spaces: ``check_mask_size`` refuses them)."""
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    return int(np.sum(getattr(action_space, "nvec", 0)))


def _flat_mask(mask, size: int) -> np.ndarray:
    mask = np.asarray(mask).reshape(-1)
    if mask.size != size:
        raise ValueError(f"action mask of {mask.size} entries; the action space needs {size} (one per action "
                         "value, sub-action after sub-action)")
    return mask


class VectorMasks:
    """The ``action_masks()`` of a vector env's sub-envs (``envs``, one process) appended to their stacked flat
    observations, as ``MaskInObservation`` appends each one's: the bound methods are resolved once, and each step
    builds one [n, obs + mask] float32 array. A sub-env's failing method is a ``SubEnvError`` naming it."""

    def __init__(self, envs, size: int):
        self.methods = [env.get_wrapper_attr("action_masks") for env in envs]
        self.size = int(size)

    def space(self, single_space) -> MaskedObservationSpace:
        """The single observation space with the mask appended (``single_space``: a 1-D Box)."""
        return MaskedObservationSpace(single_space.low, single_space.high, self.size)

    def append(self, obs: np.ndarray) -> np.ndarray:
        """obs [n, d] of the sub-envs' current states -> [n, d + size] float32 with their masks appended."""
        masks = []
        try:
            for method in self.methods:
                masks.append(method())
        except Exception as e:  # noqa: BLE001 - the trainer names the sub-env and stops cleanly
            raise SubEnvError(len(masks), e) from e
        try:
            flat = np.asarray(masks)
        except ValueError:  # ragged
            flat = None
        if flat is None or flat.shape != (len(masks), self.size):  # ragged, nested (MultiDiscrete) or mis-sized
            flat = np.empty((len(masks), self.size), np.float32)
            for i, mask in enumerate(masks):
                try:
                    flat[i] = _flat_mask(mask, self.size)
                except ValueError as e:
                    raise SubEnvError(i, e) from e
        return np.concatenate((obs, flat), axis=1, dtype=np.float32)

    def append_one(self, i: int, obs) -> np.ndarray:
        """One sub-env's observation [d] (its current state: a final observation) with its mask appended."""
        try:
            mask = _flat_mask(self.methods[i](), self.size)
        except Exception as e:  # noqa: BLE001
            raise SubEnvError(i, e) from e
        return np.concatenate((np.asarray(obs).reshape(-1), mask), dtype=np.float32)


def _as_is(x):  # a module-level function, not a lambda: the wrapper stays picklable
    return x


def wrap(env, mode: str = "auto"):
    """``env`` with ``MaskInObservation`` where it has a mask (``mask_source``), else ``env`` itself."""
    source = mask_source(env, mode)
    return env if source is None else MaskInObservation(env, source)


def mask_size(space) -> int:
    """The mask entries at the end of a vector env's single observation space (0 for an env without masks)."""
    return int(getattr(space, "mask_size", 0))


def split_mask(obs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """obs [..., rest + size] -> (observation [..., rest], mask [..., size] bool); ``size`` 0: (obs, None)."""
    if not size:
        return obs, None
    return obs[..., :-size], obs[..., -size:] > 0.5
