"""Action masks after training: ``ppolab eval``, ``--video`` and ``ppolab export`` of a masked run never take an
illegal action. The probe bandit of ``envs/masked_probes.py`` gets an rgb_array renderer here (so it can be
recorded) and runs with ``strict=True``: any illegal action raises inside the env; ``action_mask`` off pays the bait
(10 a step, more than any legal return of 4) instead, which shows the masks are what keeps the actions legal."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from test_recurrent_api import write_run

import ppolab
from ppolab.config import Config
from ppolab.envs.masked_probes import MaskedBandit, MaskedMultiDiscrete
from ppolab.policy import SPEC_FILE, load
from ppolab.spaces import ActionSpec, ObsSpec

STRICT = '{"strict": true}'


class Rendered:
    """A masked probe that renders its context as a 16x16 colour frame."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, render_mode=None, **kw):
        self.render_mode = render_mode
        super().__init__(**kw)

    def render(self):
        frame = np.zeros((16, 16, 3), np.uint8)
        frame[..., self.context] = 255
        return frame


class RenderedBandit(Rendered, MaskedBandit):
    pass


class RenderedMultiDiscrete(Rendered, MaskedMultiDiscrete):
    pass


BANDIT, BANDIT_METHOD = "ppolab_test/RenderedMaskedBandit-v0", "ppolab_test/RenderedMaskedBanditMethod-v0"
MULTI = "ppolab_test/RenderedMaskedMultiDiscrete-v0"
for _id, _entry, _in_obs in ((BANDIT, RenderedBandit, True), (BANDIT_METHOD, RenderedBandit, False),
                             (MULTI, RenderedMultiDiscrete, True)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_entry, kwargs={"mask_in_obs": _in_obs})

CONTEXTS = np.eye(3, dtype=np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("masked") / "run"
    result = ppolab.train(Config(env=BANDIT, env_kwargs=STRICT, hidden_sizes=(16,), total_timesteps=512, num_envs=2,
                                 num_steps=64, num_minibatches=2, eval_episodes=2, progress=False, tensorboard=False,
                                 run_dir=str(run)))
    return run, result


def illegal_without_masks(policy) -> int:
    """How many of the bandit's 3 contexts the policy's unmasked mode answers with an illegal action."""
    actions, _ = policy.predict(CONTEXTS)
    return int((~MaskedBandit.MASKS[np.arange(3), actions]).sum())


def test_eval_of_a_masked_run_takes_no_illegal_action(trained):
    from ppolab.evaluation import evaluate_run

    run, result = trained
    for deterministic in (True, False):  # sampling: an unmasked policy meets an illegal action within a few steps
        out = evaluate_run(run, episodes=8, deterministic=deterministic, seed=5)  # strict: an illegal action raises
        assert out["eval_return_mean"] <= 4.0  # no bait paid
    cfg = result.config
    assert evaluate_run(run, episodes=2, seed=cfg.seed + 10**6)["eval_return_mean"] == result.summary[
        "eval_return_mean"]


@pytest.mark.parametrize("env_id", [BANDIT, BANDIT_METHOD])
def test_video_of_a_masked_policy_takes_no_illegal_action(env_id, tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from ppolab.evaluate import RenderOptions, play_episode, record_run_video

    run, *_ = write_run(tmp_path / "run", ObsSpec((3,)), ActionSpec("discrete", 5), env=env_id, env_kwargs=STRICT,
                        seed=3)
    policy = load(run)
    assert illegal_without_masks(policy) > 0  # the masks matter for this policy
    for seed in range(4):  # strict: an illegal action raises (a ConfigError naming IllegalActionError)
        frames, ret, fps = play_episode(policy, env_id, seed=seed, options=RenderOptions(env_kwargs=STRICT))
        assert len(frames) == 4 and ret <= 4.0 and fps == 4
    assert record_run_video(run, fmt="gif").is_file()
    rets = [play_episode(policy, env_id, seed=s, options=RenderOptions(action_mask="off"))[1] for s in range(4)]
    assert max(rets) >= 10.0  # --action-mask off: the mask is still cut off the observation, not applied


def test_video_of_a_trained_masked_run_and_eval_video(trained):
    pytest.importorskip("imageio_ffmpeg")
    from ppolab.evaluation import evaluate_run

    run, _ = trained
    out = evaluate_run(run, episodes=1, video=True, video_format="gif")  # ppolab eval --video, strict env
    assert out["video"].endswith("episode.gif")


def test_video_of_a_recurrent_masked_multidiscrete_policy(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    from ppolab.evaluate import RenderOptions, play_episode

    run, *_ = write_run(tmp_path / "run", ObsSpec((3,)), ActionSpec("multidiscrete", 2, nvec=(3, 4)), env=MULTI,
                        policy="gru", rnn_size=8, seed=1)
    for seed in range(3):
        _, ret, _ = play_episode(load(run), MULTI, seed=seed, options=RenderOptions(env_kwargs=STRICT))
        assert ret <= 4.0


# ---- ONNX ---------------------------------------------------------------------------------------------------------
def _session(path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def random_masks(n: int, nvec: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """[n, sum(nvec)] bool masks with at least one legal value per sub-action."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, sum(nvec))) < 0.4
    lo = 0
    for k in nvec:
        mask[np.arange(n), lo + rng.integers(0, k, n)] = True
        lo += k
    return mask


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete"])
def test_onnx_model_of_a_masked_policy_picks_only_legal_actions(kind, tmp_path):
    pytest.importorskip("jax2onnx")
    from ppolab.export import export_run

    action = ActionSpec("discrete", 5) if kind == "discrete" else ActionSpec("multidiscrete", 2, nvec=(3, 4))
    nvec = (5,) if kind == "discrete" else (3, 4)
    run, *_ = write_run(tmp_path / "run", ObsSpec((3,)), action, env=BANDIT if kind == "discrete" else MULTI,
                        normalize_obs=True, seed=2)
    sess = _session(export_run(run, out=tmp_path / "p.onnx"))  # the run's env gives masks: an action_mask input
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("obs", "tensor(float)"), ("action_mask", "tensor(bool)")]
    obs = np.random.default_rng(1).normal(0, 1, (400, 3)).astype(np.float32)
    mask = random_masks(400, nvec)
    (action_out,) = sess.run(None, {"obs": obs, "action_mask": mask})
    policy = load(run)
    np.testing.assert_array_equal(action_out, policy.predict(obs, action_masks=mask)[0])
    free, _ = policy.predict(obs)
    assert (free != action_out).any()  # the mask changed some actions
    parts = action_out.reshape(400, -1)
    offsets = np.cumsum((0,) + nvec)[:-1]
    assert mask[np.arange(400)[:, None], offsets + parts].all()  # every sub-action legal


def test_exported_inputs_follow_the_runs_masks(trained, tmp_path):
    pytest.importorskip("jax2onnx")
    from ppolab.export import export_run

    run, _ = trained
    assert [i.name for i in _session(export_run(run, out=tmp_path / "a.onnx")).get_inputs()] == ["obs",
                                                                                                 "action_mask"]
    off = tmp_path / "off"  # policy.json does not say: the run's env and --action-mask are asked
    write_run(off, ObsSpec((3,)), ActionSpec("discrete", 5), env=BANDIT, action_mask="off")
    assert [i.name for i in _session(export_run(off, out=tmp_path / "b.onnx")).get_inputs()] == ["obs"]
    recorded = tmp_path / "recorded"
    write_run(recorded, ObsSpec((3,)), ActionSpec("discrete", 5), env=BANDIT)
    (recorded / SPEC_FILE).write_text(json.dumps({**json.loads((recorded / SPEC_FILE).read_text()),
                                                  "action_mask": False}))
    assert [i.name for i in _session(export_run(recorded, out=tmp_path / "c.onnx")).get_inputs()] == ["obs"]
