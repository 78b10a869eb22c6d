"""Episode videos: H.264 MP4 (imageio-ffmpeg) by default, GIF as an option, for classic-control, MuJoCo and Atari
frames. ffprobe (Debian's ffmpeg package) reads every file back: codec, size, frame count and duration; without
ffprobe, imageio-ffmpeg's own ffmpeg counts the frames."""

from __future__ import annotations

import json
import shutil
import subprocess
import types

import numpy as np
import pytest

pytest.importorskip("imageio_ffmpeg")

from test_policy_api import ATARI, CARTPOLE, HOPPER, make_run  # noqa: E402

from ppolab.config import ConfigError  # noqa: E402
from ppolab.evaluate import gif_timing, play_episode, record_run_video, record_video, write_video  # noqa: E402
from ppolab.policy import load  # noqa: E402


def probe(path) -> dict:
    """{codec, width, height, frames, duration} of a video file's first stream."""
    if shutil.which("ffprobe") is None:
        import imageio_ffmpeg

        frames, secs = imageio_ffmpeg.count_frames_and_secs(str(path))
        return {"codec": "h264" if path.suffix == ".mp4" else "gif", "frames": frames, "duration": secs}
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                          "stream=codec_name,width,height,nb_read_frames,duration,pix_fmt:format=duration", "-of",
                          "json", str(path)], capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    s = info["streams"][0]
    return {"codec": s["codec_name"], "width": s["width"], "height": s["height"], "pix_fmt": s.get("pix_fmt"),
            "frames": int(s["nb_read_frames"]), "duration": float(s.get("duration") or info["format"]["duration"])}


def gif_duration_ms(path) -> int:
    """Total display time of a GIF (Pillow merges identical consecutive frames, adding up their durations)."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return sum(f.info["duration"] for f in ImageSequence.Iterator(im))


def test_mp4_plays_with_the_right_frame_count_and_duration(tmp_path):
    frames = [np.full((101, 150, 3), i * 8 % 255, np.uint8) for i in range(45)]  # odd height: padded to even
    path = write_video(frames, tmp_path / "v.mp4", fps=30)
    info = probe(path)
    assert info["codec"] == "h264" and info["frames"] == 45
    assert info["duration"] == pytest.approx(1.5, abs=0.05)
    if "width" in info:
        assert (info["width"], info["height"], info["pix_fmt"]) == (150, 102, "yuv420p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # the temporary file was renamed


def test_cartpole_run_to_mp4_and_gif(tmp_path):
    run, *_ = make_run(tmp_path / "run", *CARTPOLE)
    frames, _, fps = play_episode(load(run), "CartPole-v1", max_steps=40)
    mp4 = record_run_video(run, max_steps=40)
    assert mp4 == run / "videos" / "episode.mp4"
    info = probe(mp4)
    assert info["frames"] == len(frames) and info["duration"] == pytest.approx(len(frames) / fps, abs=0.05)
    gif = record_run_video(run, max_steps=40, fmt="gif")
    from PIL import Image

    assert gif_duration_ms(gif) == 20 * len(frames) and Image.open(gif).size == (600, 400)  # 50 fps, real time


def test_mujoco_frames(tmp_path):
    run, *_ = make_run(tmp_path / "run", *HOPPER, normalize_obs=True, env="Hopper-v5")
    frames, _, fps = play_episode(load(run), "Hopper-v5", max_steps=30)
    assert fps == 125 and frames[0].shape == (480, 480, 3) and frames[0].std() > 5  # a rendered scene, not blank
    info = probe(record_run_video(run, max_steps=30))
    assert info["frames"] == len(frames) and info.get("width", 480) == 480


def test_atari_frames_in_colour_from_the_full_game(tmp_path):
    pytest.importorskip("ale_py")
    run, *_ = make_run(tmp_path / "run", *ATARI, env="ALE/Breakout-v5")
    frames, _, fps = play_episode(load(run), "ALE/Breakout-v5", max_steps=40)
    assert fps == 15 and frames[0].shape == (210, 160, 3)  # the game screen; the agent saw 84x84x4 frames
    assert len(frames) == 40  # one frame per agent step (4 emulator frames)
    info = probe(record_run_video(run, max_steps=40))
    assert info["frames"] == 40 and info["duration"] == pytest.approx(40 / 15, abs=0.1)


def test_record_video_of_a_train_state(tmp_path):
    """The entry point ``ppolab eval --video`` calls: agent 0 of a [K, ...] train state."""
    run, net, params, stats = make_run(tmp_path / "run", *HOPPER, agents=2, normalize_obs=True, env="Hopper-v5")
    state = types.SimpleNamespace(params=params, obs_stats=types.SimpleNamespace(**stats))
    cfg = types.SimpleNamespace(env="Hopper-v5", normalize_obs=True)
    path = record_video(cfg, net, types.SimpleNamespace(normalize_obs=True), state, tmp_path / "out", max_steps=10,
                        fmt="gif")
    assert path == tmp_path / "out" / "episode.gif"
    a, _, fps = play_episode(load(run), "Hopper-v5", max_steps=10)
    assert gif_timing(fps) == (5, 40)  # 125 fps drawn at 25 fps: every 5th frame, 4 centiseconds each
    assert gif_duration_ms(path) == len(a[::5]) * 40


def test_bad_format_and_env(tmp_path):
    run, *_ = make_run(tmp_path / "run", *CARTPOLE)
    with pytest.raises(ConfigError, match="unknown video format 'avi'; supported: mp4, gif"):
        record_run_video(run, fmt="avi")
    assert not (run / "videos").exists()
    with pytest.raises(ConfigError, match="Gymnasium environments only"):
        play_episode(load(run), "gymnax:CartPole-v1")
