"""Recurrent policies out of a run directory: ``ppolab.load`` + ``predict`` against the network's own step-by-step
output (carry threaded, reset at episode_start), numpy vs jitted acting, policy.json's recurrent layout, ``ppolab
eval`` of a trained recurrent run (== training's final evaluation), the video's carry, Atari video with the run's
frame stack, and the ONNX export of one step under onnxruntime.

``write_run`` writes a run directory as the trainer does (config.json, policy.json, a checkpoint of params and
observation statistics) for any ``--policy``, with random parameters of the initializer's scale, so that actions
depend on the carry (a fresh network's 0.01-gain head barely does). tests/test_masked_eval.py uses it too."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppolab
from ppolab import checkpoint
from ppolab.config import Config, ConfigError, to_dict
from ppolab.models import make_model
from ppolab.normalize import RunningMeanStd, normalize_obs
from ppolab.policy import SPEC_FILE, load, write_policy_spec
from ppolab.recurrent import RecurrentActorCritic
from ppolab.spaces import ActionSpec, ObsSpec

OBS = ObsSpec((4,))
DISCRETE = ActionSpec("discrete", 3)
BOX = ActionSpec("box", 2, low=(-0.5, -0.5), high=(0.5, 0.5))
T, N = 24, 3  # steps and envs of the synthetic episodes


def write_run(path: Path, obs: ObsSpec, action: ActionSpec, env: str = "CartPole-v1", seed: int = 0,
              **cfg_kw) -> tuple[Path, object, dict, dict]:
    """A run directory with one agent of random parameters: (run_dir, net, params, obs_stats), leaves [1, ...]."""
    cfg = Config(env=env, run_dir=str(path), **{"hidden_sizes": (16,), **cfg_kw})
    net = make_model(cfg, obs, action)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init_params, jax.random.PRNGKey(0))

    def draw(p, leaf):  # kernels N(0, 2 / fan_in), biases and log_std N(0, 0.1)
        scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1])) if "kernel" in jax.tree_util.keystr(p) else 0.1
        return rng.normal(0, scale, (1,) + leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    stats = {"mean": rng.normal(0, 0.5, (1,) + obs.shape).astype(np.float32),
             "var": rng.uniform(0.3, 3.0, (1,) + obs.shape).astype(np.float32), "count": np.full((1,), 1e4, np.float32)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(to_dict(cfg)))
    write_policy_spec(path, net, cfg.normalize_obs)
    from ppolab.policy import _signature

    header = {"config": to_dict(cfg), "network": _signature(net), "agents": 1}
    checkpoint.save(path / "checkpoints", 3, {"train_state": {"params": params, "obs_stats": stats}}, header)
    return path, net, params, stats


def episodes(seed: int = 0, starts_p: float = 0.15):
    """Synthetic observations [T, N, 4] and episode starts [T, N] (True at t = 0 and where an episode begins)."""
    rng = np.random.default_rng(seed)
    starts = rng.random((T, N)) < starts_p
    starts[0] = True
    return rng.normal(0, 1.5, (T, N, 4)).astype(np.float32), starts


def reference_steps(net, params, stats, obs, starts, mask=None, reset_every_step=False):
    """The network's own ``apply(..., sequence=False)`` step by step from the zero carry: (mode actions [T, N, ...]
    (Box clipped as executed), values [T, N], the carry after each step)."""
    p = jax.tree_util.tree_map(lambda x: jnp.asarray(x[0]), params)
    rms = None if stats is None else RunningMeanStd(jnp.asarray(stats["mean"][0]), jnp.asarray(stats["var"][0]),
                                                    jnp.asarray(1.0))
    step = jax.jit(lambda x, s, c, m: net.apply(p, x if rms is None else normalize_obs(rms, x), s, c, action_mask=m,
                                                sequence=False))
    carry = net.initial_carry((obs.shape[1],))
    actions, values, carries = [], [], []
    for t in range(len(obs)):
        s = np.ones_like(starts[t]) if reset_every_step else starts[t]
        dist, v, carry = step(obs[t], s, carry, None if mask is None else mask[t])
        actions.append(net.action.clip(np.asarray(dist.mode())))
        values.append(np.asarray(v))
        carries.append(jax.tree_util.tree_map(np.asarray, carry))
    return np.stack(actions), np.stack(values), carries


def assert_tree_close(a, b, atol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=atol)


def assert_actions(got, want, kind):
    if kind == "box":
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:
        np.testing.assert_array_equal(got, want)


# ---- load + predict -------------------------------------------------------------------------------------------------
CASES = {"lstm-discrete": ("lstm", False, DISCRETE, False), "gru-separate-box-normalized": ("gru", True, BOX, True)}


@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("case", list(CASES))
def test_predict_threads_the_carry_like_the_networks_own_steps(case, backend, tmp_path):
    cell, separate, action, norm = CASES[case]
    run, net, params, stats = write_run(tmp_path / "run", OBS, action, policy=cell, rnn_size=8, rnn_separate=separate,
                                        normalize_obs=norm)
    policy = load(run)
    assert isinstance(policy.net, RecurrentActorCritic) and policy.recurrent
    assert policy._numpy is not None  # an MLP torso: the numpy mirror acts
    if backend == "jax":
        policy._numpy = None  # the jitted path (Nature-CNN policies)
    obs, starts = episodes()
    ref_a, ref_v, ref_c = reference_steps(net, params, stats if norm else None, obs, starts)
    stateless, _, _ = reference_steps(net, params, stats if norm else None, obs, starts, reset_every_step=True)
    assert not np.allclose(ref_a, stateless)  # the carry changes the actions: a predict that drops it fails here
    state, single = None, None
    for t in range(T):
        np.testing.assert_allclose(policy.value(obs[t], state, episode_start=starts[t]), ref_v[t], rtol=1e-5,
                                   atol=1e-5)
        a, state = policy.predict(obs[t], state, episode_start=starts[t])
        assert a.shape == (N,) + action.shape and a.dtype == action.dtype
        assert_actions(a, ref_a[t], action.kind)
        assert_tree_close(state, ref_c[t])
        one, single = policy.predict(obs[t, 0], single, episode_start=bool(starts[t, 0]))  # one env, leaves [H]
        assert one.shape == action.shape and all(x.shape == (8,) for x in jax.tree_util.tree_leaves(single))
        assert_actions(one, ref_a[t, 0], action.kind)
        assert_tree_close(single, jax.tree_util.tree_map(lambda c: c[0], ref_c[t]))
    fresh, _ = policy.predict(obs[5])  # state None: the initial carry, whatever episode_start says
    assert_actions(fresh, policy.predict(obs[5], policy.initial_state(N), episode_start=True)[0], action.kind)


def test_numpy_and_jitted_predict_agree_and_masks_leave_only_legal_actions(tmp_path):
    run, net, params, _ = write_run(tmp_path / "run", OBS, DISCRETE, policy="lstm", rnn_size=8)
    numpy_policy, jax_policy = load(run), load(run)
    jax_policy._numpy = None
    assert numpy_policy._numpy is not None
    obs, starts = episodes(seed=1)
    mask = np.random.default_rng(2).random((T, N, 3)) < 0.5
    mask[np.arange(T)[:, None], np.arange(N)[None], np.argmax(obs[..., :3], -1)] = True  # >= 1 legal action
    ref_a, _, ref_c = reference_steps(net, params, None, obs, starts, mask=mask)
    _, _, unmasked_c = reference_steps(net, params, None, obs, starts)
    s_np = s_jax = None
    for t in range(T):
        a_np, s_np = numpy_policy.predict(obs[t], s_np, episode_start=starts[t], action_masks=mask[t])
        a_jax, s_jax = jax_policy.predict(obs[t], s_jax, episode_start=starts[t], action_masks=mask[t])
        np.testing.assert_array_equal(a_np, a_jax)
        np.testing.assert_array_equal(a_np, ref_a[t])
        assert mask[t, np.arange(N), a_np].all()
        assert_tree_close(s_np, s_jax)
        assert_tree_close(s_np, unmasked_c[t])  # the mask restricts the action, never the carry
    samples = [numpy_policy.predict(obs[0], deterministic=False, action_masks=mask[0])[0] for _ in range(50)]
    assert mask[0][np.arange(N), np.stack(samples)].all()


def test_policy_json_describes_the_recurrent_layout_and_old_runs_read_config_json(tmp_path):
    run, net, *_ = write_run(tmp_path / "run", OBS, BOX, policy="gru", rnn_size=8, rnn_separate=True)
    spec = json.loads((run / SPEC_FILE).read_text())
    assert spec["policy"] == "gru"
    assert {k: spec["network"][k] for k in ("cell", "rnn_size", "separate")} == {"cell": "gru", "rnn_size": 8,
                                                                                 "separate": True}
    assert load(run).net == net
    (run / SPEC_FILE).unlink()  # a run written before policy.json: the header's signature + config.json
    with pytest.warns(UserWarning, match="Box action bounds are unknown"):
        old = load(run)
    assert isinstance(old.net, RecurrentActorCritic) and (old.net.cell, old.net.rnn_size, old.net.separate) == (
        "gru", 8, True)


def test_bad_state_and_episode_start_are_one_line_errors(tmp_path):
    run, *_ = write_run(tmp_path / "run", OBS, DISCRETE, policy="lstm", rnn_size=8)
    policy = load(run)
    obs = np.zeros((2, 4), np.float32)
    _, state = policy.predict(obs)
    cases = [(dict(state=state[0]), r"state does not match this policy: expected the carry that predict returns "
                                    r"\(2 arrays of shape \(2, 8\)"),
             (dict(state=jax.tree_util.tree_map(lambda c: c[:1], state)), r"2 arrays of shape \(2, 8\)"),
             (dict(episode_start=np.ones(3, bool)), r"episode_start of shape \(3,\) .* expected a bool scalar or an "
                                                    r"array of shape \(2,\)"),
             (dict(episode_start="yes"), r"episode_start of shape \(\) and dtype <U3")]
    for kwargs, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            policy.predict(obs, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"arrays of shape \(8,\)"):
        policy.predict(obs[0], state)  # a batch's state for one observation


# ---- a trained run: eval, video -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("recurrent") / "run"
    result = ppolab.train(Config(env="CartPole-v1", policy="lstm", rnn_size=16, hidden_sizes=(16,),
                                 total_timesteps=512, num_envs=2, num_steps=64, num_minibatches=2, eval_episodes=2,
                                 progress=False, tensorboard=False, run_dir=str(run)))
    return run, result


def test_eval_of_a_recurrent_run_reproduces_the_final_evaluation_and_predict_plays_it(trained):
    import gymnasium as gym

    from ppolab.evaluation import evaluate_run

    run, result = trained
    cfg = result.config
    out = evaluate_run(run, episodes=cfg.eval_episodes, deterministic=True, seed=cfg.seed + 10**6)
    assert out["eval_return_mean"] == result.summary["eval_return_mean"]  # the same code path, the same seeds
    policy, returns = load(run), []
    for i in range(cfg.eval_episodes):  # the eval env seeds actor i with seed + i
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=cfg.seed + 10**6 + i)
        state, start, ret, done = None, True, 0.0, False
        while not done:
            action, state = policy.predict(obs, state, episode_start=start)
            obs, r, term, trunc, _ = env.step(action)
            ret, start, done = ret + r, term or trunc, term or trunc
        returns.append(ret)
    assert float(np.mean(returns)) == out["eval_return_mean"]


def test_video_threads_the_carry_through_the_episode(trained, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from ppolab.evaluate import play_episode, record_run_video
    from ppolab.evaluation import evaluate_run

    run, _ = trained
    calls = []
    policy = load(run)
    predict = policy.predict

    def spy(obs, state=None, episode_start=None, **kw):
        action, new = predict(obs, state, episode_start, **kw)
        calls.append((state, episode_start, new))
        return action, new

    policy.predict = spy
    frames, _, _ = play_episode(policy, "CartPole-v1", seed=3, max_steps=25)
    assert len(calls) == len(frames) and calls[0][0] is None and calls[0][1] is True
    for (_, _, before), (state, start, _) in zip(calls[:-1], calls[1:], strict=True):
        assert start is False and state is before  # the carry returned at t is the one passed at t + 1
    gif = record_run_video(run, max_steps=10, fmt="gif")
    assert gif.is_file()
    out = evaluate_run(run, episodes=1, video=True, video_format="gif")  # ppolab eval --video
    assert Path(out["video"]).is_file()


def test_atari_video_uses_the_runs_frame_stack(tmp_path):
    pytest.importorskip("ale_py")
    pytest.importorskip("imageio_ffmpeg")
    from ppolab.evaluate import record_run_video

    run, *_ = write_run(tmp_path / "run", ObsSpec((84, 84, 1), "uint8"), ActionSpec("discrete", 4),
                        env="ALE/Breakout-v5", policy="lstm", rnn_size=8, frame_stack=1)
    assert record_run_video(run, max_steps=4, fmt="gif").is_file()  # 84x84x4 frames would not fit the network


# ---- ONNX: one step -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell,separate,masked", [("lstm", True, False), ("gru", False, True)])
def test_recurrent_onnx_model_is_one_step_of_the_network(cell, separate, masked, tmp_path):
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    from ppolab.export import export_run

    run, net, params, stats = write_run(tmp_path / "run", OBS, DISCRETE, policy=cell, rnn_size=8,
                                        rnn_separate=separate, normalize_obs=True)
    path = export_run(run, out=tmp_path / "p.onnx", with_value=True, action_mask=masked)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    carry = {"lstm": ["carry_pi_c", "carry_pi_h", "carry_v_c", "carry_v_h"], "gru": ["carry_h"]}[cell]
    inputs = ["obs"] + (["action_mask"] if masked else []) + ["episode_start"] + carry
    assert [i.name for i in sess.get_inputs()] == inputs
    assert [o.name for o in sess.get_outputs()] == ["action", "value"] + ["next_" + c for c in carry]
    obs, starts = episodes(seed=4)
    mask = np.random.default_rng(5).random((T, N, 3)) < 0.5
    mask[..., 1] |= ~mask.any(-1)
    ref_a, ref_v, ref_c = reference_steps(net, params, stats, obs, starts, mask=mask if masked else None)
    feed = {c: np.zeros((N, 8), np.float32) for c in carry}
    for t in range(T):
        extra = {"action_mask": mask[t]} if masked else {}
        action, value, *new = sess.run(None, {"obs": obs[t], "episode_start": starts[t], **feed, **extra})
        np.testing.assert_array_equal(action, ref_a[t])
        np.testing.assert_allclose(value, ref_v[t], rtol=1e-5, atol=1e-5)
        assert_tree_close(new, jax.tree_util.tree_leaves(ref_c[t]))
        if masked:
            assert mask[t, np.arange(N), action].all()
        feed = dict(zip(carry, new, strict=True))
