"""ONNX export: onnxruntime's outputs against ppolab's own forward pass on a few hundred real observations, for MLP
and Nature-CNN policies and every action space, with normalization folded in; bad input writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from test_policy_api import ATARI, CARTPOLE, HOPPER, MULTIBINARY, MULTIDISCRETE, make_run, reference, rollout_obs  # noqa: E402

import ppolab  # noqa: E402
from ppolab.config import ConfigError  # noqa: E402
from ppolab.export import ExportArgs, export_run, run_export  # noqa: E402

#: kind -> (spaces, env of the real observations (None: Gaussian noise), normalize_obs, network options)
CASES = {
    "discrete-mlp": (CARTPOLE, "CartPole-v1", False, {}),
    "box-mlp-normalized": (HOPPER, "Hopper-v5", True, {}),
    "box-shared-relu": (HOPPER, "Hopper-v5", True, {"shared_torso": True, "activation": "relu",
                                                    "hidden_sizes": (32, 32, 32)}),
    "multidiscrete": (MULTIDISCRETE, "ppolab/DictObsMultiDiscrete-v0", False, {}),
    "multibinary": (MULTIBINARY, None, True, {}),
    "nature-cnn": (ATARI, "ALE/Breakout-v5", False, {}),
}


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_close_values(got, want):
    """V(s) to 1e-5, relative to |V| above 1 (float32 products of values in the hundreds differ in the 6th digit)."""
    assert np.all(np.abs(got - want) <= 1e-5 * np.maximum(1.0, np.abs(want))), np.abs(got - want).max()


@pytest.mark.parametrize("kind", list(CASES))
def test_onnx_model_matches_ppolab_forward(kind, tmp_path):
    spaces, env, norm, options = CASES[kind]
    if env and env.startswith("ALE/"):
        pytest.importorskip("ale_py")
    run, net, params, stats = make_run(tmp_path / "run", *spaces, agents=2, normalize_obs=norm, env=env or "X-v0",
                                       **options)
    n = 64 if net.obs.image else 300
    obs = rollout_obs(env, n) if env else np.random.default_rng(2).normal(0, 2, (n,) + net.obs.shape)
    obs = obs.astype(np.uint8 if net.obs.image else np.float32)
    path = export_run(run, out=tmp_path / "policy.onnx", with_value=True, agent=1)
    sess = session(path)
    assert [i.name for i in sess.get_inputs()] == ["obs"] and [o.name for o in sess.get_outputs()] == ["action",
                                                                                                    "value"]
    ref_a, ref_v = reference(net, params, stats if norm else None, obs, agent=1)
    action, value = sess.run(None, {"obs": obs})
    assert action.shape == ref_a.shape and value.shape == ref_v.shape
    if net.action.kind == "box":
        assert action.dtype == np.float32
        np.testing.assert_allclose(action, ref_a, rtol=0, atol=1e-5)  # clipped to the bounds, as executed
        assert np.abs(action).max() <= 1.0
    else:
        assert action.dtype == np.int32
        np.testing.assert_array_equal(action, ref_a)
    assert_close_values(value, ref_v)
    one = sess.run(["action"], {"obs": obs[:1]})[0]  # the batch dimension is dynamic
    np.testing.assert_array_equal(one, action[:1])
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["action_kind"] == net.action.kind and props["agent"] == "1"
    assert props["observation_normalization"] == ("folded in" if norm else "none")


def test_export_a_trained_run_to_its_default_path(tmp_path):
    run = tmp_path / "run"
    ppolab.train(ppolab.Config(env="CartPole-v1", total_timesteps=512, num_envs=4, num_steps=64, num_epochs=2,
                               eval_episodes=0, progress=False, tensorboard=False, run_dir=str(run)))
    before = set(run.iterdir())
    path = run_export(ExportArgs(run_dir=str(run)))
    assert path == run / "policy.onnx" and set(run.iterdir()) - before == {path}  # no temporary file left
    obs = rollout_obs("CartPole-v1", 300).astype(np.float32)
    sess = session(path)
    assert [o.name for o in sess.get_outputs()] == ["action"]
    np.testing.assert_array_equal(sess.run(None, {"obs": obs})[0], ppolab.load(run).predict(obs)[0])


def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path):
    run, *_ = make_run(tmp_path / "run", *CARTPOLE)
    listing = lambda: sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    (tmp_path / "file").write_text("x")
    before = listing()
    cases = [(dict(run_dir=run, fmt="tflite"), "unknown --format 'tflite'; supported: onnx"),
             (dict(run_dir=tmp_path / "nope"), "does not exist"),
             (dict(run_dir=run, out=tmp_path), "is a directory"),
             (dict(run_dir=run, out=tmp_path / "no" / "dir" / "p.onnx"), "does not exist"),
             (dict(run_dir=run, out=tmp_path / "file" / "p.onnx"), "does not exist"),
             (dict(run_dir=run, agent=1), r"--agent 1 is out of range"),
             (dict(run_dir=tmp_path / "run" / "checkpoints"), "has no checkpoint")]
    for kwargs, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            export_run(**kwargs)
        assert "\n" not in str(e.value)
    assert listing() == before
