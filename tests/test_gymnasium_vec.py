"""The Gymnasium vector adapter: the lean sync loop equals gymnasium's SyncVectorEnv (SAME_STEP autoreset), final
observations are the real last observations, Dict/MultiDiscrete spaces work end to end, and vector mode "vector"
(Gymnasium's numpy CartPole given SAME_STEP autoreset) steps exactly like Gymnasium's single-env CartPole."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import ppolab
from ppolab.cli import main
from ppolab.config import Config
from ppolab.envs import probes
from ppolab.envs.gymnasium_vec import EnvError, GymnasiumVecEnv, LeanSyncVectorEnv, make_gymnasium_vec

probes.register()  # the ppolab/ probe ids, used here with gymnasium.make directly (ppolab registers them on use)


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
    cfg = Config(env="ppolab/DictObsMultiDiscrete-v0", total_timesteps=24576, num_envs=8, num_steps=64,
                 num_epochs=4, learning_rate=3e-3, eval_episodes=5, run_dir=str(tmp_path / "d"), tensorboard=False,
                 progress=False)
    result = ppolab.train(cfg)
    # random: ~3.3 of 10; with this budget seeds 0-4 give 9.4-9.8 (16k steps gave 7.4-9.0: too close to 8)
    assert result.summary["eval_return_mean"] >= 8.0


def _mode_run(tmp_path, mode):
    cfg = Config(total_timesteps=512, num_envs=2, num_steps=64, num_epochs=1, eval_episodes=1, vector_mode=mode,
                 run_dir=str(tmp_path / mode), tensorboard=False, progress=False)
    result = ppolab.train(cfg)
    from regression_runs import metrics_without_time

    return metrics_without_time(tmp_path / mode), result.summary


@pytest.mark.parametrize("mode", ["gym-sync", "async", "vector"])
def test_gymnasium_vector_modes_run_the_same_transitions(tmp_path, mode):
    """Every vector mode steps the same sub-envs from the same seeds with SAME_STEP autoreset: the whole run (episode
    counts and returns of every iteration, every loss) equals the default ``sync`` mode's. A mode that lost a
    final observation, reset one step late or mixed up sub-envs would differ."""
    want, ref = _mode_run(tmp_path, "sync")
    got, summary = _mode_run(tmp_path, mode)
    assert ref["episodes"] > 10 and got == want
    assert summary["eval_return_mean"] == ref["eval_return_mean"]


# ---- vector_mode "vector": Gymnasium's CartPoleVectorEnv with SAME_STEP autoreset ----------------------------------
def _reference_step(ref, state, action):
    """Gymnasium's single-env CartPole physics (``CartPoleEnv.step``, unwrapped: no time limit) from ``state``."""
    ref.state = np.array(state, np.float64)
    ref.steps_beyond_terminated = None
    obs, reward, terminated, truncated, _ = ref.step(int(action))
    assert reward == 1.0 and not truncated
    return obs, terminated, ref.state.copy()


def test_vector_mode_cartpole_steps_like_gymnasium_cartpole_with_same_step_autoreset():
    n = 5
    env = make_gymnasium_vec("CartPole-v1", n, "vector")
    assert env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and env.num_envs == n
    ref = gym.make("CartPole-v1").unwrapped
    ref.reset(seed=0)
    obs, _ = env.reset(seed=[11, 12, 13, 14, 15])
    assert obs.shape == (n, 4) and obs.dtype == np.float32 and np.all(np.abs(obs) <= 0.05)
    rng = np.random.default_rng(0)
    length = np.zeros(n, int)
    ends, fresh = 0, [obs[i] for i in range(n)]
    for _ in range(400):
        before = env.state.copy()  # [4, n] float64: the state the returned observation was made from
        np.testing.assert_array_equal(obs, before.T.astype(np.float32))
        actions = rng.integers(0, 2, n)
        obs, rew, term, trunc, info = env.step(actions)
        length += 1
        np.testing.assert_array_equal(rew, 1.0)  # never reward 0: no NEXT_STEP filler transition
        assert not trunc.any()  # random actions never keep the pole up for 500 steps
        assert ("final_obs" in info) == bool(term.any())
        for i in range(n):
            r_obs, r_term, r_state = _reference_step(ref, before[:, i], actions[i])
            assert term[i] == r_term
            if r_term:  # ended: the true last observation in final_obs, a fresh episode's first one returned
                assert info["_final_obs"][i]
                np.testing.assert_allclose(info["final_obs"][i], r_obs, rtol=1e-6, atol=1e-7)
                assert np.all(np.abs(obs[i]) <= 0.05), obs[i]  # Gymnasium's default reset bounds
                assert np.all(np.abs(env.state[:, i]) <= 0.05) and env.steps[i] == 0
                fresh.append(obs[i])
                ends += 1
                length[i] = 0
            else:
                assert "final_obs" not in info or not info["_final_obs"][i]
                np.testing.assert_allclose(env.state[:, i], r_state, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(obs[i], r_obs, rtol=1e-6, atol=1e-7)
                assert env.steps[i] == length[i]
    assert ends > 30
    assert len({tuple(o) for o in fresh}) == len(fresh)  # every reset draws a new start state


@pytest.mark.parametrize("env_id,limit", [("CartPole-v1", 500), ("CartPole-v0", 200)])
def test_vector_mode_cartpole_truncates_at_the_registered_limit(env_id, limit):
    """The state is held upright before every step, so nothing terminates unless forced: envs 0 and 1 truncate at
    exactly ``limit`` steps (twice); env 2 is made to fall at step 10, so its counter restarts and it truncates 10
    steps later."""
    n, fall = 3, 10
    env = make_gymnasium_vec(env_id, n, "vector")
    assert env.max_episode_steps == gym.spec(env_id).max_episode_steps == limit
    ref = gym.make(env_id).unwrapped
    ref.reset(seed=0)
    env.reset(seed=[0, 1, 2])
    actions = np.array([0, 1, 0])
    truncations = 0
    for t in range(1, 2 * limit + fall + 1):
        env.state[:] = 0.0
        if t == fall:
            env.state[2, 2] = 0.5  # pole angle beyond 12 degrees: terminates at this step
        before = env.state.copy()
        obs, rew, term, trunc, info = env.step(actions)
        want_term = np.array([False, False, t == fall])
        want_trunc = np.array([t % limit == 0, t % limit == 0, t > fall and (t - fall) % limit == 0])
        np.testing.assert_array_equal(term, want_term, err_msg=f"step {t}")
        np.testing.assert_array_equal(trunc, want_trunc, err_msg=f"step {t}")
        np.testing.assert_array_equal(rew, 1.0)
        ended = want_term | want_trunc
        assert ("final_obs" in info) == bool(ended.any())
        for i in np.flatnonzero(ended):
            assert info["_final_obs"][i]
            r_obs, r_term, _ = _reference_step(ref, before[:, i], actions[i])
            assert r_term == want_term[i]
            np.testing.assert_allclose(info["final_obs"][i], r_obs, rtol=1e-6, atol=1e-7)
            assert np.all(np.abs(obs[i]) <= 0.05) and env.steps[i] == 0
        truncations += int(want_trunc.sum())
    assert truncations == 6


def test_vector_mode_same_seeds_same_trajectories():
    def rollout(seeds):
        env = GymnasiumVecEnv("CartPole-v1", 2, 3, "vector")
        out = [env.reset(seeds)]
        rng = np.random.default_rng(1)
        episodes = []
        for _ in range(300):
            *arrays, eps = env.step(rng.integers(0, 2, (2, 3)))
            out.extend(arrays)
            episodes.extend(eps)
        env.close()
        return out, episodes

    seeds = list(range(100, 106))
    (a, ep_a), (b, ep_b) = rollout(seeds), rollout(seeds)
    assert len(ep_a) > 10 and ep_a == ep_b
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    other, _ = rollout([7, *seeds[1:]])
    assert not np.array_equal(a[0], other[0])
    assert rollout(100)[1] == ep_a  # an int seed s means the list [s, s + 1, ...]
    # each sub-env has its own generator: changing one actor's seed changes that actor only, so an agent of a
    # population does not depend on the others' resets
    changed, _ = rollout([*seeds[:4], 999, seeds[5]])
    obs_a = np.stack([a[0], *a[1::5]]).reshape(-1, 6, 4)  # reset, then each step's next observations
    obs_c = np.stack([changed[0], *changed[1::5]]).reshape(-1, 6, 4)
    np.testing.assert_array_equal(np.delete(obs_a, 4, axis=1), np.delete(obs_c, 4, axis=1))
    assert not np.array_equal(obs_a[:, 4], obs_c[:, 4])


@pytest.mark.slow
def test_vector_mode_cartpole_default_reaches_475_within_100k_steps(tmp_path):
    """The default CartPole settings (as tests/test_learning.py) with vector_mode "vector"."""
    cfg = Config(vector_mode="vector", run_dir=str(tmp_path / "cp"), tensorboard=False, progress=False)
    result = ppolab.train(cfg)
    assert result.summary["total_timesteps"] <= 100_000
    assert result.summary["eval_return_mean"] >= 475, result.summary


def test_vector_mode_is_not_the_default():
    assert Config().vector_mode == "sync"


def test_vector_mode_other_env_is_rejected_before_anything_is_created(monkeypatch):
    def no_env(*a, **k):
        raise AssertionError("an env was created")

    monkeypatch.setattr(gym, "make", no_env)
    monkeypatch.setattr(gym, "make_vec", no_env)
    with pytest.raises(EnvError, match="'Hopper-v5'.*sync, gym-sync, async"):
        make_gymnasium_vec("Hopper-v5", 2, "vector")
    with pytest.raises(EnvError, match="ConstantTruncated"):
        make_gymnasium_vec("ppolab/ConstantTruncated-v0", 2, "vector")


def test_vector_mode_other_env_cli_one_line_exit_2_nothing_written(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--env", "Hopper-v5", "--vector-mode", "vector", "--run-dir", str(run), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ppolab: error:") and "\n" not in err and "Traceback" not in err, err
    assert "Hopper-v5" in err and "--vector-mode" in err and "sync, gym-sync, async" in err
    assert not run.exists()
