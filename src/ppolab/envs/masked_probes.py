"""Probe environments for action masking (issue 13), registered by ``register()`` as ``ppolab/NAME-v0``.

Every env draws a context s (one of 3, uniformly) each step, shows it one-hot, and ends an episode after
``horizon`` (4) steps with ``terminated``. Masks come in both conventions, chosen by ``mask_in_obs``:

* ``True`` (PettingZoo's): the observation is ``Dict(observation=Box(3), action_mask=Box(0, 1, (n,), int8))``;
* ``False`` (sb3-contrib's): the observation is the plain ``Box(3)`` and ``env.action_masks()`` returns the mask
  (bool [n]) of the current observation.

For MultiDiscrete the mask is flat, [sum(nvec)], sub-action after sub-action (sb3-contrib's layout, and the layout
of ppolab's logits). Every illegal action taken is counted (``illegal_actions``; ``info["illegal_action"]``) and pays
the ``bait`` reward, larger than any legal return, so a learner that ignores masks is caught by its return as well as
by ``illegal_action_rate``; ``strict=True`` raises ``IllegalActionError`` instead.

* ``ppolab/MaskedBandit-v0`` (Dict) and ``ppolab/MaskedBanditMethod-v0`` (``action_masks()``): Discrete(5); the
  legal sets are {0, 1, 3}, {1, 2, 4} and {2} (one legal action) in contexts 0, 1, 2; the legal optimum (3, 1, 2)
  pays 1, other legal actions 0, an illegal one ``bait`` = 10. Optimal return 4 per episode; uniform-legal 20/9.
* ``ppolab/MaskedMultiDiscrete-v0`` (Dict) and ``ppolab/MaskedMultiDiscreteMethod-v0``: MultiDiscrete([3, 4]) with
  one mask per sub-action (context 1 leaves sub-action 1 a single legal value); each sub-action at its legal optimum
  pays 0.5; any illegal sub-action pays ``bait`` = 10 for the step. Optimal return 4 per episode.
* ``ppolab/EmptyMask-v0``: the bandit whose mask is all-illegal at the observation reached after ``empty_at`` steps
  (counted from the first reset, across episodes; 0 = the first observation), optionally only in the instance first
  reset with seed ``only_seed`` (so one chosen sub-env of a vector env fails): a driver must raise, naming the step
  and the sub-env.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

N_CONTEXTS = 3


class IllegalActionError(ValueError):
    """An env created with ``strict=True`` was given an action its mask forbids."""


class _MaskedProbe(gym.Env):
    """The shared machinery: contexts, the two mask conventions, the illegal-action record."""

    nvec: tuple[int, ...] = ()  # () for Discrete

    def __init__(self, mask_in_obs: bool = True, horizon: int = 4, bait: float = 10.0, strict: bool = False):
        self.mask_in_obs, self.horizon, self.bait, self.strict = mask_in_obs, horizon, float(bait), strict
        n = int(sum(self.nvec)) if self.nvec else int(self.action_space.n)
        ctx = spaces.Box(0.0, 1.0, (N_CONTEXTS,), np.float32)
        self.observation_space = (spaces.Dict({"observation": ctx, "action_mask": spaces.Box(0, 1, (n,), np.int8)})
                                  if mask_in_obs else ctx)
        self.mask_size = n
        self.t, self.context, self.steps, self.illegal_actions = 0, 0, 0, 0

    # -- per-env tables --------------------------------------------------------------------------------------------
    def _mask_of(self, context: int) -> np.ndarray:  # bool [n]
        raise NotImplementedError

    def _reward_of(self, context: int, action) -> float:  # for a legal action
        raise NotImplementedError

    def _is_legal(self, mask: np.ndarray, action) -> bool:
        if not self.nvec:
            return bool(mask[int(action)])
        offsets = np.cumsum((0,) + self.nvec)[:-1]
        return bool(np.all(mask[offsets + np.asarray(action, np.int64)]))

    # -- Gymnasium API ---------------------------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """bool [n]: the legal actions of the current observation (sb3-contrib's convention)."""
        return self._current_mask()

    def _current_mask(self) -> np.ndarray:
        return self._mask_of(self.context)

    def _obs(self):
        ctx = np.zeros(N_CONTEXTS, np.float32)
        ctx[self.context] = 1.0
        if self.mask_in_obs:
            return {"observation": ctx, "action_mask": self._current_mask().astype(np.int8)}
        return ctx

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.context = int(self.np_random.integers(N_CONTEXTS))
        return self._obs(), {}

    def step(self, action):
        legal = self._is_legal(self._current_mask(), action)
        if not legal:
            self.illegal_actions += 1
            if self.strict:
                raise IllegalActionError(f"{type(self).__name__}: action {np.asarray(action).tolist()} is illegal in "
                                         f"context {self.context} (mask {self._current_mask().astype(int).tolist()})")
        reward = self._reward_of(self.context, action) if legal else self.bait
        self.t += 1
        self.steps += 1
        self.context = int(self.np_random.integers(N_CONTEXTS))
        return self._obs(), float(reward), self.t >= self.horizon, False, {"illegal_action": not legal}


class MaskedBandit(_MaskedProbe):
    """Discrete(5): legal {0,1,3} / {1,2,4} / {2}; the legal optimum 3 / 1 / 2 pays 1; illegal pays ``bait``."""

    MASKS = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 0, 1], [0, 0, 1, 0, 0]], bool)
    BEST = (3, 1, 2)

    def __init__(self, **kw):
        self.action_space = spaces.Discrete(5)
        super().__init__(**kw)

    def _mask_of(self, context):
        return self.MASKS[context].copy()

    def _reward_of(self, context, action):
        return float(int(action) == self.BEST[context])


class MaskedMultiDiscrete(_MaskedProbe):
    """MultiDiscrete([3, 4]), one mask per sub-action; 0.5 per sub-action at its legal optimum; illegal: ``bait``."""

    nvec = (3, 4)
    MASK0 = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], bool)
    MASK1 = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 0, 1]], bool)
    BEST = ((1, 3), (2, 1), (0, 0))

    def __init__(self, **kw):
        self.action_space = spaces.MultiDiscrete(list(self.nvec))
        super().__init__(**kw)

    def _mask_of(self, context):
        return np.concatenate([self.MASK0[context], self.MASK1[context]])

    def _reward_of(self, context, action):
        a = np.asarray(action, np.int64)
        return 0.5 * float(a[0] == self.BEST[context][0]) + 0.5 * float(a[1] == self.BEST[context][1])


class EmptyMask(MaskedBandit):
    """``MaskedBandit`` whose mask is all-illegal at the observation reached after ``empty_at`` steps (since the
    first reset), in every instance or only in the one first reset with seed ``only_seed``."""

    def __init__(self, empty_at: int = 5, only_seed: int | None = None, **kw):
        self.empty_at, self.only_seed, self.first_seed = int(empty_at), only_seed, None
        super().__init__(**kw)

    def reset(self, *, seed=None, options=None):
        if self.first_seed is None:
            self.first_seed = -1 if seed is None else int(seed)
        return super().reset(seed=seed, options=options)

    def _current_mask(self):
        chosen = self.only_seed is None or self.first_seed == self.only_seed
        if chosen and self.steps == self.empty_at:
            return np.zeros(self.mask_size, bool)
        return self._mask_of(self.context)


REGISTRY = {
    "MaskedBandit-v0": (MaskedBandit, {"mask_in_obs": True}),
    "MaskedBanditMethod-v0": (MaskedBandit, {"mask_in_obs": False}),
    "MaskedMultiDiscrete-v0": (MaskedMultiDiscrete, {"mask_in_obs": True}),
    "MaskedMultiDiscreteMethod-v0": (MaskedMultiDiscrete, {"mask_in_obs": False}),
    "EmptyMask-v0": (EmptyMask, {"mask_in_obs": True}),
}


def register() -> None:
    """Register the probes as ``ppolab/NAME-v0`` (idempotent)."""
    for name, (entry, kwargs) in REGISTRY.items():
        if f"ppolab/{name}" not in gym.registry:
            gym.register(f"ppolab/{name}", entry_point=entry, kwargs=kwargs)
