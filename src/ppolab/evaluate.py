"""Video of a trained agent: one deterministic episode rendered to MP4 (H.264, the default) or an animated GIF.

MP4 goes through ``imageio-ffmpeg``, whose wheel ships its own ffmpeg binary (``pip install 'ppolab[video]'``):
H.264 in yuv420p (what browsers and players decode), ``+faststart`` so it streams. GIF goes through Pillow (no
extra dependency). Atari games are rendered in colour from the full game (the agent still sees the paper's
preprocessed 84x84 frames, ``--frame-stack`` of them; one video frame per agent step, 4 emulator frames). Without a
display, MuJoCo renders off-screen (``MUJOCO_GL=egl`` unless set) and pygame uses SDL's dummy drivers. The video
plays in real time: the env's ``render_fps`` (Atari: 60 Hz / frame skip 4 = 15 fps) unless ``fps`` is given.

The episode is played as training acted (``RenderOptions``: the run's frame stack, env kwargs and ``--action-mask``):
a recurrent policy's carry is threaded through it, and an env's action masks (a Dict observation's
``action_mask``, or ``action_masks()``) restrict every action to the legal ones.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from ppolab.config import ConfigError
from ppolab.envs import backend_of

VIDEO_FORMATS = ("mp4", "gif")
GIF_MAX_FPS = 50  # browsers draw GIF frames of < 20 ms at 100 ms


@dataclasses.dataclass(frozen=True)
class RenderOptions:
    """How the run built its env, so the video's agent sees what training's did: ``Config.frame_stack`` (Atari),
    ``Config.env_kwargs`` (the option's text) and ``Config.action_mask`` (auto|off)."""

    frame_stack: int = 4
    env_kwargs: str = ""
    action_mask: str = "auto"

    @classmethod
    def of(cls, cfg) -> RenderOptions:
        """The options of a ``Config`` (or anything with some of its fields; the missing ones keep the defaults)."""
        return cls(int(getattr(cfg, "frame_stack", 4)), str(getattr(cfg, "env_kwargs", "") or ""),
                   str(getattr(cfg, "action_mask", "auto")))


def make_render_env(env_id: str, options: RenderOptions | None = None):
    """A single Gymnasium env of ``env_id`` that renders rgb_array frames, with the observations training used: the
    Atari preprocessing with the run's frame stack, the run's env kwargs, and an env's action mask appended to its
    observation as ``envs.gymnasium_masks`` does in training (split off again by ``play_episode``)."""
    import gymnasium as gym

    from ppolab.envs import atari, gymnasium_masks
    from ppolab.envs.errors import EnvError
    from ppolab.envs.gymnasium_vec import check_env_id, import_env_module
    from ppolab.options import parse_env_kwargs

    options = options or RenderOptions()
    backend, name = backend_of(env_id)
    if backend != "gymnasium":
        raise ConfigError(f"--video supports Gymnasium environments only (got {env_id!r})")
    try:
        check_env_id(name)  # registers ppolab's probe ids, imports a my_module:Env-v0 id's module
    except EnvError as e:
        raise ConfigError(str(e)) from None
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo's default (GLFW) needs a display
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame (classic control) draws off-screen
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame.init() would open a sound card
    is_atari = atari.is_atari(name)
    kwargs = {**(atari.env_kwargs(name) if is_atari else {}), **parse_env_kwargs(options.env_kwargs),
              "render_mode": "rgb_array"}
    try:
        if is_atari:
            atari.register_ale()
            env = atari.wrap_atari(gym.make(name, **kwargs), frame_stack=options.frame_stack, clip_reward=False,
                                   episodic_life=False)
        else:
            env = gym.make(import_env_module(name), **kwargs)
        env = gymnasium_masks.wrap(env, options.action_mask)
    except Exception as e:  # e.g. an env without rgb_array rendering
        raise ConfigError(f"cannot render {name!r} to video: {e}") from None
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    return env


def _default_fps(env, env_id: str) -> float:
    from ppolab.envs import atari

    if atari.is_atari(backend_of(env_id)[1]):
        return 15.0
    return float(env.metadata.get("render_fps") or 30)


def play_episode(policy, env_id: str, seed: int = 0, max_steps: int = 2000,
                 options: RenderOptions | None = None) -> tuple[list[np.ndarray], float, float]:
    """One deterministic episode of ``policy`` (a ``ppolab.policy.Policy``): (frames [H, W, 3] uint8, the episode's
    return, the video's real-time fps). A recurrent policy's carry is threaded through the episode (reset at its
    first observation); an env's action masks (unless ``options.action_mask`` is off) restrict every action to the
    legal ones, as in training and ``ppolab eval``."""
    from ppolab.distributions import ActionMaskError

    env = make_render_env(env_id, options)
    frames, total = [], 0.0
    try:
        fps = _default_fps(env, env_id)
        obs, _ = env.reset(seed=seed)
        act = _Actor(policy, env, options or RenderOptions())
        for t in range(max_steps):
            frame = env.render()
            if frame is None:
                raise ConfigError(f"{env_id!r} returned no frame from render(); it cannot be recorded")
            frames.append(np.asarray(frame, np.uint8))
            action = act(obs, t)  # Box actions come clipped to the bounds
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            if term or trunc:
                break
    except ConfigError:
        raise
    except ActionMaskError as e:
        raise ConfigError(f"cannot record {env_id!r}: {e}") from None
    except Exception as e:  # a renderer that cannot start (no OpenGL), ...
        raise ConfigError(f"cannot render {env_id!r} to video: {type(e).__name__}: {e} (for MuJoCo set "
                          "MUJOCO_GL=egl or MUJOCO_GL=osmesa)") from None
    finally:
        env.close()
    return frames, total, fps


class _Actor:
    """``policy``'s deterministic action for each observation of one episode of ``env``: the mask cut off the
    observation (and applied unless the run turned masks off), the recurrent carry kept from step to step."""

    def __init__(self, policy, env, options: RenderOptions):
        from ppolab.envs import gymnasium_masks

        self.policy, self.state = policy, None
        self.mask_size = gymnasium_masks.mask_size(env.observation_space)
        self.use_mask = bool(self.mask_size) and options.action_mask != "off"

    def __call__(self, obs, t: int):
        from ppolab import distributions as D
        from ppolab.envs import gymnasium_masks

        obs, mask = gymnasium_masks.split_mask(np.asarray(obs), self.mask_size)
        if self.use_mask:
            spec = self.policy.action_spec
            D.raise_if_empty(mask[None], spec.nvec or None, step=t)
        else:
            mask = None
        action, self.state = self.policy.predict(obs, state=self.state, episode_start=t == 0, action_masks=mask)
        return action


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even width and height: pad the last row/column by repeating it."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") if h % 2 or w % 2 else frame


def write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """H.264 MP4 of ``frames`` ([H, W, 3] uint8) through imageio-ffmpeg's bundled ffmpeg."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ConfigError("MP4 video needs imageio-ffmpeg: pip install 'ppolab[video]' (or choose the gif format)"
                          ) from None
    first = _even(frames[0])
    h, w = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", macro_block_size=2, quality=None,
                                         output_params=["-crf", "23", "-movflags", "+faststart"],
                                         ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(_even(f)))
    finally:
        writer.close()
    return path


def gif_timing(fps: float) -> tuple[int, int]:
    """(keep every ``step``-th frame, frame duration in ms) of a GIF that plays ``fps`` frames in real time: GIF
    delays are whole centiseconds of at least 2 (browsers draw shorter ones at 100 ms), so the smallest step whose
    rounded delay is within 5% of real time (else the most accurate of the first five)."""
    first = max(1, math.ceil(fps / GIF_MAX_FPS))
    candidates = []
    for step in range(first, first + 5):
        cs = max(2, round(100 * step / fps))
        candidates.append((abs(cs - 100 * step / fps) / (100 * step / fps), step, cs * 10))
        if candidates[-1][0] <= 0.05:
            return step, cs * 10
    _, step, ms = min(candidates)
    return step, ms


def write_gif(frames: list[np.ndarray], path: Path, fps: float) -> Path:
    """Animated GIF of ``frames`` (Pillow) in real time, at most ``GIF_MAX_FPS`` frames per second (``gif_timing``)."""
    from PIL import Image

    step, ms = gif_timing(fps)
    images = [Image.fromarray(f) for f in frames[::step]]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)
    return path


def write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: float, fmt: str = "mp4") -> Path:
    """``frames`` to ``path`` as ``fmt`` (mp4 | gif), atomically (a temporary file beside it, then renamed)."""
    if fmt not in VIDEO_FORMATS:
        raise ConfigError(f"unknown video format {fmt!r}; supported: {', '.join(VIDEO_FORMATS)}")
    if not frames:
        raise ConfigError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.{fmt}")
    try:
        (write_mp4 if fmt == "mp4" else write_gif)(frames, tmp, fps)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def record_policy(policy, env_id: str, out_dir: str | os.PathLike, seed: int = 0, max_steps: int = 2000,
                  fps: float | None = None, fmt: str = "mp4", options: RenderOptions | None = None) -> Path:
    """Render one deterministic episode of ``policy`` on ``env_id`` to ``out_dir/episode.{fmt}``."""
    if fmt not in VIDEO_FORMATS:
        raise ConfigError(f"unknown video format {fmt!r}; supported: {', '.join(VIDEO_FORMATS)}")
    frames, _, real_fps = play_episode(policy, env_id, seed, max_steps, options)
    return write_video(frames, Path(out_dir) / f"episode.{fmt}", fps or real_fps, fmt)


def record_run_video(run_dir: str | os.PathLike, agent: int = 0, seed: int = 0, max_steps: int = 2000,
                     fps: float | None = None, fmt: str = "mp4") -> Path:
    """One episode of agent ``agent`` of ``run_dir`` (newest good checkpoint) to ``RUN_DIR/videos/episode.{fmt}``,
    on the env the run's config.json describes."""
    from ppolab.policy import load
    from ppolab.rundir import load_run_config

    run_dir = Path(run_dir)
    if fmt not in VIDEO_FORMATS:
        raise ConfigError(f"unknown video format {fmt!r}; supported: {', '.join(VIDEO_FORMATS)}")
    policy = load(run_dir, agent=agent)
    cfg = load_run_config(run_dir)
    return record_policy(policy, cfg.env, run_dir / "videos", seed, max_steps, fps, fmt, RenderOptions.of(cfg))


def record_video(cfg, net, spec, state, out_dir: Path, seed: int = 0, max_steps: int = 2000, fps: float | None = None,
                 fmt: str = "mp4") -> Path:
    """Render one deterministic episode of agent 0 of ``state`` ([K, ...] leaves) to ``out_dir/episode.{fmt}``.
    ``spec``: the run's ``LearnerSpec`` (for ``normalize_obs``); ``cfg``: the run's ``Config`` (env, frame stack,
    env kwargs, action masks)."""
    import jax

    from ppolab.policy import Policy

    params = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], jax.device_get(state.params))
    norm = bool(getattr(spec, "normalize_obs", getattr(cfg, "normalize_obs", False)))
    mean = np.asarray(state.obs_stats.mean, np.float32)[0] if norm else None
    var = np.asarray(state.obs_stats.var, np.float32)[0] if norm else None
    policy = Policy(net, params, mean, var, seed=seed)
    return record_policy(policy, cfg.env, out_dir, seed, max_steps, fps, fmt, RenderOptions.of(cfg))
