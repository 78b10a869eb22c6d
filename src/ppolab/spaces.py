"""Static descriptions of observation and action spaces, independent of any environment library."""

from __future__ import annotations

import dataclasses

import numpy as np


class UnsupportedSpaceError(ValueError):
    """The environment's space cannot be handled; the message names it and lists what is supported."""


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """kind: discrete | box | multidiscrete | multibinary. ``size`` is n (discrete), d (box), len(nvec), n (binary)."""

    kind: str
    size: int
    nvec: tuple[int, ...] = ()
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    @property
    def head_size(self) -> int:
        return sum(self.nvec) if self.kind == "multidiscrete" else self.size

    @property
    def shape(self) -> tuple[int, ...]:
        return () if self.kind == "discrete" else (self.size,)

    @property
    def num_actions(self) -> float:
        """Joint actions: n (discrete), prod(nvec), 2^n (binary); inf for a box (every action legal without a mask)."""
        if self.kind == "box":
            return float("inf")
        return float(self.size if self.kind == "discrete" else np.prod(self.nvec) if self.nvec else 2**self.size)

    @property
    def dtype(self):
        return np.float32 if self.kind == "box" else np.int32

    def clip(self, action: np.ndarray) -> np.ndarray:
        """Box actions are clipped to the bounds when executed; the unclipped action is what is stored."""
        if self.kind != "box" or not self.low:
            return action
        # np.minimum / np.maximum: np.clip's Python wrapper costs ~3 us a call, felt once per env step
        return np.minimum(np.maximum(action, np.asarray(self.low, np.float32)), np.asarray(self.high, np.float32))


@dataclasses.dataclass(frozen=True)
class ObsSpec:
    """shape of one observation (after flattening Dict/Tuple spaces); ``image`` marks uint8 frames [H, W, C]."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def image(self) -> bool:
        return self.dtype == "uint8" and len(self.shape) == 3


def action_spec_from_gymnasium(space) -> ActionSpec:
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        if int(space.start) != 0:
            raise UnsupportedSpaceError(
                f"Discrete action space with start={space.start} is not supported; start must be 0")
        return ActionSpec("discrete", int(space.n))
    if isinstance(space, spaces.Box):
        if len(space.shape) != 1:
            raise UnsupportedSpaceError(f"Box action space of shape {space.shape} is not supported; use a 1-D Box")
        low = tuple(float(x) for x in np.broadcast_to(space.low, space.shape))
        high = tuple(float(x) for x in np.broadcast_to(space.high, space.shape))
        return ActionSpec("box", int(space.shape[0]), low=low, high=high)
    if isinstance(space, spaces.MultiDiscrete):
        if space.nvec.ndim != 1 or np.any(space.start != 0):
            raise UnsupportedSpaceError(f"MultiDiscrete {space} is not supported; use a 1-D nvec starting at 0")
        nvec = tuple(int(n) for n in space.nvec)
        return ActionSpec("multidiscrete", len(nvec), nvec=nvec)
    if isinstance(space, spaces.MultiBinary):
        if len(space.shape) != 1:
            raise UnsupportedSpaceError(f"MultiBinary of shape {space.shape} is not supported; use a 1-D MultiBinary")
        return ActionSpec("multibinary", int(space.shape[0]))
    raise UnsupportedSpaceError(
        f"action space {space} is not supported; supported: Discrete, Box (1-D), MultiDiscrete, MultiBinary")


def obs_spec_from_gymnasium(space) -> ObsSpec:
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        if space.dtype == np.uint8 and len(space.shape) == 3:
            return ObsSpec(tuple(space.shape), "uint8")
        return ObsSpec(tuple(int(s) for s in space.shape), "float32")
    if isinstance(space, spaces.Discrete):
        return ObsSpec((int(space.n),), "float32")  # one-hot by gymnasium.spaces.flatten
    if isinstance(space, spaces.Dict | spaces.Tuple | spaces.MultiDiscrete | spaces.MultiBinary):
        return ObsSpec((int(spaces.flatdim(space)),), "float32")
    raise UnsupportedSpaceError(
        f"observation space {space} is not supported; "
        "supported: Box, Discrete, Dict, Tuple, MultiDiscrete, MultiBinary")
