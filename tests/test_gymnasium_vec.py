"""The Gymnasium vector adapter: the lean sync loop equals gymnasium's SyncVectorEnv (SAME_STEP autoreset), final
observations are the real last observations, and Dict/MultiDiscrete spaces work end to end."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import ppolab
from ppolab.config import Config
from ppolab.envs.gymnasium_vec import GymnasiumVecEnv, LeanSyncVectorEnv


@pytest.mark.parametrize("env_id", ["CartPole-v1", "ppolab/ConstantTruncated-v0", "ppolab/DictObsMultiDiscrete-v0"])
def test_lean_sync_matches_gymnasium_sync_vector_env(env_id):
    def make():
        env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        if isinstance(env.observation_space, gym.spaces.Dict):
            env = gym.wrappers.FlattenObservation(env)
        return env

    n = 3
    lean = LeanSyncVectorEnv([make] * n)
    ref = SyncVectorEnv([make] * n, autoreset_mode=AutoresetMode.SAME_STEP)
    o1, _ = lean.reset(seed=[1, 2, 3])
    o2, _ = ref.reset(seed=[1, 2, 3])
    np.testing.assert_array_equal(o1, o2)
    space = lean.single_action_space
    space.seed(0)
    ends = 0
    for _ in range(300):
        a = np.asarray([space.sample() for _ in range(n)])
        r1, r2 = lean.step(a), ref.step(a)
        for x, y in zip(r1[:4], r2[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        if "final_obs" in r2[4]:
            ends += int(r2[4]["_final_obs"].sum())
            np.testing.assert_array_equal(r1[4]["_final_obs"], r2[4]["_final_obs"])
            for i in np.flatnonzero(r2[4]["_final_obs"]):
                np.testing.assert_array_equal(r1[4]["final_obs"][i], r2[4]["final_obs"][i])
                np.testing.assert_array_equal(r1[4]["final_info"]["episode"]["r"][i],
                                              r2[4]["final_info"]["episode"]["r"][i])
        else:
            assert "final_obs" not in r1[4]
    assert ends > 5


def test_final_obs_is_the_last_observation_not_the_reset_one():
    env = GymnasiumVecEnv("ppolab/TargetGaussian-v0", 1, 2)
    obs = env.reset([5, 6])
    nxt, rew, term, trunc, final, episodes = env.step(obs.copy())  # a = x: reward 0, one-step episodes
    assert term.all() and not trunc.any()
    np.testing.assert_array_equal(final, obs)       # the episode's last observation
    assert not np.array_equal(nxt, obs)             # the next episode's first observation
    assert [e[:2] for e in episodes] == [(0, 0), (0, 1)] and all(abs(e[2]) < 1e-6 for e in episodes)


def test_dict_observations_and_multidiscrete_actions_learn(tmp_path):
    cfg = Config(env="ppolab/DictObsMultiDiscrete-v0", total_timesteps=16384, num_envs=8, num_steps=64,
                 num_epochs=4, learning_rate=3e-3, eval_episodes=5, run_dir=str(tmp_path / "d"), tensorboard=False,
                 progress=False)
    result = ppolab.train(cfg)
    assert result.summary["eval_return_mean"] >= 8.0  # random: ~3.3 of 10


@pytest.mark.parametrize("mode", ["gym-sync", "async"])
def test_gymnasium_vector_modes_run(tmp_path, mode):
    cfg = Config(total_timesteps=512, num_envs=2, num_steps=64, num_epochs=1, eval_episodes=1, vector_mode=mode,
                 run_dir=str(tmp_path / mode), tensorboard=False, progress=False)
    assert ppolab.train(cfg).summary["total_timesteps"] == 512
