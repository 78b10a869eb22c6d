"""Atari as in the paper (section 6.2): the standard preprocessing, from Gymnasium's wrappers (the Table 5
presets are data in ``ppolab.presets``).

The paper used OpenAI baselines' Atari wrappers on the ``*NoFrameskip-v4`` games. The same pipeline here, innermost
first (one Gymnasium env per actor; ``GymnasiumVecEnv`` applies the list through ``gymnasium.make_vec``):

1. the ALE game without frame skip or sticky actions (``ALE/*-v5`` gets ``frameskip=1,
   repeat_action_probability=0``, i.e. the ``NoFrameskip-v4`` dynamics);
2. ``gymnasium.wrappers.AtariPreprocessing``: up to 30 no-op actions on reset, frame skip 4 with max-pooling over
   the last two frames, 84x84 grayscale;
3. ``RecordEpisodeStatistics``: the *true* game score and length, over all lives, with unclipped rewards;
   ``GymnasiumVecEnv(episode_info=True)`` reports these, so the returns logged and scored are the paper's;
4. ``EpisodicLife``: a lost life ends the agent's episode (terminated) but the game goes on (baselines'
   ``EpisodicLifeEnv``; Gymnasium's ``terminal_on_life_loss`` would restart the whole game instead);
5. ``FireReset``: press FIRE after every (life) reset in games that need it (Breakout, ...);
6. reward sign clipping, ``TransformReward(np.sign)``, for training only;
7. ``FrameStackObservation(4)`` -> [4, 84, 84], transposed to channels-last uint8 [84, 84, 4] as the Nature CNN
   in ``networks.ActorCritic`` expects.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

_REGISTERED = False


def register_ale() -> None:
    """Register the ALE environments (``ALE/*-v5``, ``*NoFrameskip-v4``) with Gymnasium (ale-py ships the ROMs)."""
    global _REGISTERED
    if _REGISTERED:
        return
    try:
        import ale_py
    except ImportError as e:
        from ppolab.envs.errors import EnvError

        raise EnvError("Atari needs ale-py and opencv: pip install 'ppolab[atari]'") from e
    gym.register_envs(ale_py)
    _REGISTERED = True


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


class EpisodicLife(gym.Wrapper):
    """A lost life ends the agent's episode (``terminated``) while the game continues; the game itself is reset
    only when it is really over (as baselines' EpisodicLifeEnv). Helps value estimation (Mnih et al. 2015)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.lives = 0
        self.real_done = True

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.real_done = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self.lives:
            terminated = True
        self.lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, *, seed=None, options=None):
        if self.real_done or seed is not None:
            obs, info = self.env.reset(seed=seed, options=options)
        else:  # a life was lost: continue the game with a no-op step
            obs, _, terminated, truncated, info = self.env.step(0)
            if terminated or truncated:
                obs, info = self.env.reset(seed=seed, options=options)
        self.lives = self.env.unwrapped.ale.lives()
        self.real_done = False
        return obs, info


class FireReset(gym.Wrapper):
    """Press FIRE (then action 2) after a reset, for games that wait for it (baselines' FireResetEnv)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        assert meanings[1] == "FIRE" and len(meanings) >= 3, meanings

    def reset(self, *, seed=None, options=None):
        self.env.reset(seed=seed, options=options)
        obs, info = None, {}
        for action in (1, 2):
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(seed=seed, options=options)
        return obs, info


def needs_fire(env: gym.Env) -> bool:
    return "FIRE" in env.unwrapped.get_action_meanings()[1:2]


def _channels_last(obs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(obs, 0, -1))


def _sign(r):
    return float(np.sign(r))


def wrap_atari(env: gym.Env, frame_stack: int = 4, clip_reward: bool = True, episodic_life: bool = True,
               noop_max: int = 30) -> gym.Env:
    """The paper's preprocessing on one ALE env (created with frameskip=1): see the module docstring."""
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84,
                                          terminal_on_life_loss=False, grayscale_obs=True)
    env = gym.wrappers.RecordEpisodeStatistics(env)  # true score, before life loss and reward clipping
    if episodic_life:
        env = EpisodicLife(env)
    if needs_fire(env):
        env = FireReset(env)
    if clip_reward:
        env = gym.wrappers.TransformReward(env, _sign)
    env = gym.wrappers.FrameStackObservation(env, frame_stack)  # [stack, 84, 84]
    h, w = env.observation_space.shape[1:]
    space = gym.spaces.Box(0, 255, (h, w, frame_stack), np.uint8)
    return gym.wrappers.TransformObservation(env, _channels_last, space)


def env_kwargs(env_id: str) -> dict:
    """ALE/*-v5: no internal frame skip (AtariPreprocessing skips and max-pools) and no sticky actions, as the
    NoFrameskip-v4 games the paper used. *NoFrameskip-v4 already is that."""
    if env_id.startswith("ALE/"):
        return {"frameskip": 1, "repeat_action_probability": 0.0, "full_action_space": False}
    return {}


def vec_kwargs(env_id: str, **wrap) -> dict:
    """Keyword arguments of ``GymnasiumVecEnv`` for an Atari id: env kwargs, the wrapper, and true episode returns
    read from the inner RecordEpisodeStatistics."""
    register_ale()
    return {"env_kwargs": env_kwargs(env_id), "wrappers": [functools.partial(wrap_atari, **wrap)],
            "episode_info": True}


def make_atari(env_id: str, **wrap) -> gym.Env:
    """One preprocessed Atari env (for tests and inspection)."""
    register_ale()
    return wrap_atari(gym.make(env_id, **env_kwargs(env_id)), **wrap)
