"""Atari (section 6.2): the paper's preprocessing on real ALE games, the presets, and a tiny end-to-end CNN run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

import gymnasium as gym  # noqa: E402

from ppolab.config import PRESETS, Config, apply_preset, validate  # noqa: E402
from ppolab.envs import atari  # noqa: E402


class RawReward(gym.Wrapper):
    """Test probe on the bare game: the unclipped score since the last real reset."""

    def __init__(self, env):
        super().__init__(env)
        self.total = 0.0

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.total += float(r)
        return obs, r, term, trunc, info

    def reset(self, **kw):
        self.total = 0.0
        return self.env.reset(**kw)


def _play_one_game(env_id: str, seed: int = 0):
    """Random actions until the game (all lives) is over. Returns (probe, rewards, terminations, info)."""
    atari.register_ale()
    probe = RawReward(gym.make(env_id, **atari.env_kwargs(env_id)))
    env = atari.wrap_atari(probe)
    obs, _ = env.reset(seed=seed)
    assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
    assert env.observation_space.shape == (84, 84, 4) and env.observation_space.dtype == np.uint8
    rng = np.random.default_rng(seed)
    rewards, terminations = [], 0
    for _ in range(5000):
        obs, r, term, trunc, info = env.step(int(rng.integers(env.action_space.n)))
        assert obs.shape == (84, 84, 4) and obs.dtype == np.uint8
        rewards.append(r)
        if "episode" in info:
            env.close()
            return probe, rewards, terminations + 1, info
        if term or trunc:
            terminations += 1
            obs, _ = env.reset()
    raise AssertionError("the game did not end in 5000 steps")


def test_preprocessing_shapes_sign_clipping_and_true_return():
    # Space Invaders scores 5..30 points per alien: the agent sees +1, the reported return is the game score.
    probe, rewards, terminations, info = _play_one_game("ALE/SpaceInvaders-v5")
    assert set(rewards) <= {-1.0, 0.0, 1.0} and sum(rewards) > 0
    assert info["episode"]["r"] == pytest.approx(probe.total)   # the true score over the whole game
    assert probe.total > sum(rewards)                             # clipping changed what the agent saw
    assert terminations == 3                                      # one agent episode per life (3 lives)


def test_frames_are_stacked_channels_last():
    env = atari.make_atari("ALE/Breakout-v5")
    obs, _ = env.reset(seed=1)
    frames = [obs]
    for _ in range(3):
        obs, *_ = env.step(0)
        frames.append(obs)
    env.close()
    # the newest frame is the last channel; one step later it has moved one channel to the left
    np.testing.assert_array_equal(frames[2][..., 1:], frames[3][..., :3])
    assert not np.array_equal(frames[0], frames[3])


def test_vec_env_reports_true_episode_returns():
    from ppolab.envs.gymnasium_vec import GymnasiumVecEnv

    env = GymnasiumVecEnv("ALE/Breakout-v5", 1, 2, **atari.vec_kwargs("ALE/Breakout-v5"))
    try:
        assert env.obs_spec.shape == (84, 84, 4) and env.obs_spec.image
        assert env.action_spec.kind == "discrete" and env.action_spec.size == 4
        obs = env.reset(0)
        assert obs.shape == (1, 2, 84, 84, 4) and obs.dtype == np.uint8
        rng = np.random.default_rng(0)
        life_losses, episodes = 0, []
        for _ in range(3000):
            obs, rew, term, trunc, final, eps = env.step(rng.integers(4, size=(1, 2)))
            life_losses += int(term.sum())
            episodes.extend(eps)
            if episodes:
                break
        assert episodes, "no game finished"
        assert life_losses >= 5  # Breakout: 5 lives end 5 agent episodes before the game is reported
        agent, actor, ret, length = episodes[0]
        assert agent == 0 and actor in (0, 1) and ret >= 0 and length > 0
    finally:
        env.close()


def test_presets_match_table5():
    cfg = validate(apply_preset(Config(preset="paper-atari")))
    assert (cfg.num_envs, cfg.num_steps, cfg.num_epochs) == (8, 128, 3)
    assert cfg.minibatch_size == 32 * 8
    assert (cfg.learning_rate, cfg.anneal_lr, cfg.clip_eps, cfg.anneal_clip) == (2.5e-4, True, 0.1, True)
    assert (cfg.vf_coef, cfg.ent_coef, cfg.gamma, cfg.gae_lambda) == (1.0, 0.01, 0.99, 0.95)
    assert cfg.max_grad_norm is None and cfg.vf_clip is None and cfg.env == "ALE/Breakout-v5"
    ppo2 = validate(apply_preset(Config(preset="ppo2-atari")))
    assert (ppo2.num_epochs, ppo2.num_minibatches, ppo2.clip_eps, ppo2.anneal_clip) == (4, 4, 0.1, False)
    assert (ppo2.vf_coef, ppo2.max_grad_norm, ppo2.anneal_lr) == (0.25, 0.5, True)
    assert {"paper-atari", "ppo2-atari"} <= set(PRESETS)


def test_tiny_cnn_training_run(tmp_path):
    from ppolab.training import train

    cfg = Config(env="ALE/Breakout-v5", preset="paper-atari", num_envs=2, num_steps=16, num_epochs=1,
                 num_minibatches=2, total_timesteps=32, eval_episodes=0, run_dir=str(tmp_path / "run"),
                 progress=False, tensorboard=False)
    result = train(cfg)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["total_timesteps"] == 32 and s["env_id"] == "ALE/Breakout-v5"
    params = result.state.params["params"]
    assert "conv_0" in params and "torso_fc" in params  # the shared Nature CNN
    assert np.isfinite(np.asarray(result.state.params["params"]["pi_head"]["kernel"])).all()
    # the update ran on real frames: every minibatch step taken, the parameters moved from their initialization
    from ppolab.assembly import init_population, make_driver
    from ppolab.config import agent_table

    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [r["minibatches_done"] for r in rows] == ["2"] and float(rows[0]["value_loss"]) > 0
    driver, net, spec = make_driver(result.config, 1)
    try:
        init = init_population(result.config, net, spec, agent_table(result.config)).params["params"]
    finally:
        driver.close()
    assert not np.allclose(np.asarray(init["conv_0"]["kernel"]), np.asarray(params["conv_0"]["kernel"]))
