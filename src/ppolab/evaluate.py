"""Video of a trained agent: one episode of agent 0 rendered to an animated GIF (Pillow; no extra dependency)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppolab.config import ConfigError
from ppolab.envs import backend_of
from ppolab.update import prepare_obs


def record_video(cfg, net, spec, state, out_dir: Path, seed: int = 0, max_steps: int = 2000, fps: int = 30) -> Path:
    """Render one deterministic episode of agent 0 of ``state`` ([K, ...] leaves) to ``out_dir/episode.gif``."""
    import gymnasium as gym
    from PIL import Image

    backend, name = backend_of(cfg.env)
    if backend != "gymnasium":
        raise ConfigError(f"--video supports Gymnasium environments only (got {cfg.env!r})")
    try:
        env = gym.make(name, render_mode="rgb_array")
    except Exception as e:  # e.g. an env without rgb_array rendering
        raise ConfigError(f"cannot render {name!r} to video: {e}") from None
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    agent = jax.tree_util.tree_map(lambda x: x[0], state)
    apply = jax.jit(lambda s, o: net.apply(s.params, prepare_obs(spec, s, o), heads="policy")[0].mode())
    frames = []
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(max_steps):
            frames.append(Image.fromarray(np.asarray(env.render())))
            action = np.asarray(apply(agent, jnp.asarray(obs)[None]))[0]
            if net.action.kind == "box":
                action = net.action.clip(action)
            obs, _, term, trunc, _ = env.step(action)
            if term or trunc:
                break
    finally:
        env.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "episode.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
