"""envpool adapter: Gymnasium SAME_STEP semantics on top of envpool's next-step autoreset (no fake transitions,
truncation kept apart with the final observation), and the host driver on envpool."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("envpool")

from ppolab.envs.envpool_vec import EnvpoolVecEnv  # noqa: E402


def test_no_fake_transitions_and_final_obs():
    env = EnvpoolVecEnv("CartPole-v1", num_agents=2, num_envs=3)
    try:
        assert env.obs_spec.shape == (4,) and env.action_spec.kind == "discrete"
        obs = env.reset([5] * 6)
        assert obs.shape == (2, 3, 4) and obs.dtype == np.float32
        rng = np.random.default_rng(0)
        length = np.zeros((2, 3), int)
        ended = 0
        for _ in range(150):
            obs, rew, term, trunc, final, eps = env.step(rng.integers(0, 2, (2, 3)).astype(np.int32))
            length += 1
            assert np.all(rew == 1.0)  # envpool's reset step (reward 0, action ignored) never shows up
            assert not np.any(term & trunc)
            done = term | trunc
            for k, b, ret, n in eps:
                assert done[k, b] and n == length[k, b] and ret == float(n)
                assert not np.allclose(final[k, b], obs[k, b])
                assert np.all(np.abs(obs[k, b]) <= 0.05)  # CartPole's reset state
                ended += 1
            length[done] = 0
            np.testing.assert_array_equal(final[~done], obs[~done])
        assert ended > 5
    finally:
        env.close()


def test_truncation_is_not_termination():
    env = EnvpoolVecEnv("CartPole-v1", num_agents=1, num_envs=2, env_kwargs={"max_episode_steps": 4})
    try:
        env.reset(0)
        flags = []
        for _ in range(5):
            _, _, term, trunc, _, eps = env.step(np.ones((1, 2), np.int32) * np.array([[0, 1]], np.int32))
            flags.append((term[0].tolist(), trunc[0].tolist()))
        assert flags[3] == ([False, False], [True, True])
        assert flags[4] == ([False, False], [False, False])  # an ordinary first step of the next episode
    finally:
        env.close()


def test_host_driver_on_envpool(tmp_path):
    from ppolab.config import Config
    from ppolab.training import train

    cfg = Config(env="envpool:CartPole-v1", total_timesteps=512, num_envs=4, num_steps=32, num_epochs=1,
                 num_seeds=2, eval_episodes=2, progress=False, tensorboard=False, run_dir=str(tmp_path / "r"),
                 compile_cache="")
    result = train(cfg)
    assert result.summary["num_agents"] == 2
    assert len(result.summary["agents"][1]["eval_returns"]) == 2
    # CartPole pays 1 a step: a finished episode's return is its length, an integer in [1, 500], and the finished
    # episodes of an agent hold at most its 512 steps (a driver that counted a fake reset step, double-counted or
    # leaked steps between agents would break one of these)
    for agent in result.summary["agents"]:
        returns = agent["last_100_returns"]
        assert 0 < len(returns) < 100 and all(r == int(r) and 1 <= r <= 500 for r in returns)
        assert 512 - 4 * 500 <= sum(returns) <= 512
