"""``ppolab.load(RUN_DIR)``: predict / value on single and batched observations, the run's normalization, every
action space, the Nature CNN, errors naming the shape and dtype, and no env or optimizer built.

``make_run`` writes a run directory the way the trainer does (config.json, policy.json, a checkpoint of the
train state's params and observation statistics) for a network with random parameters of the initializer's
scale (logits and means of order one, unlike the 0.01-gain heads of a fresh network); ``reference`` is ppolab's
own JAX forward pass. Both are also used by tests/test_export.py."""

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
from ppolab.networks import make_network
from ppolab.normalize import RunningMeanStd, normalize_obs
from ppolab.policy import SPEC_FILE, load, write_policy_spec
from ppolab.spaces import ActionSpec, ObsSpec

CARTPOLE = (ObsSpec((4,)), ActionSpec("discrete", 2))
HOPPER = (ObsSpec((11,)), ActionSpec("box", 3, low=(-1.0,) * 3, high=(1.0,) * 3))
MULTIDISCRETE = (ObsSpec((6,)), ActionSpec("multidiscrete", 2, nvec=(3, 2)))
MULTIBINARY = (ObsSpec((5,)), ActionSpec("multibinary", 4))
ATARI = (ObsSpec((84, 84, 4), "uint8"), ActionSpec("discrete", 4))


def make_run(path: Path, obs: ObsSpec, action: ActionSpec, agents: int = 1, normalize_obs: bool = False,
             env: str = "CartPole-v1", seed: int = 0, **net_options) -> tuple[Path, object, dict, dict]:
    """A run directory holding one checkpoint of ``agents`` agents with random parameters.
    Returns (run_dir, net, params, obs_stats) with leaves [K, ...]."""
    cfg = Config(env=env, normalize_obs=normalize_obs, num_seeds=agents, run_dir=str(path), **net_options)
    net = make_network(cfg, obs, action)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1,) + obs.shape, obs.dtype))

    def draw(path, leaf):  # kernels N(0, 2 / fan_in), biases and log_std N(0, 0.1): outputs of order one
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        else:
            scale = 0.1
        return rng.normal(0, scale, leaf.shape).astype(np.float32)

    params = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[jax.tree_util.tree_map_with_path(draw, shapes)
                                                                 for _ in range(agents)])
    shape = (agents,) + obs.shape
    stats = {"mean": rng.normal(0, 0.5, shape).astype(np.float32), "var": rng.uniform(0.3, 3.0, shape).astype(
        np.float32), "count": np.full((agents,), 1e4, np.float32)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(to_dict(cfg)))
    write_policy_spec(path, net, normalize_obs)
    header = {"config": to_dict(cfg), "network": _signature(net), "agents": agents}
    checkpoint.save(path / "checkpoints", 3, {"train_state": {"params": params, "obs_stats": stats}}, header)
    return path, net, params, stats


def _signature(net) -> str:
    from ppolab.policy import _signature as sig

    return sig(net)


def reference(net, params: dict, stats: dict | None, obs: np.ndarray, agent: int = 0) -> tuple[np.ndarray, ...]:
    """ppolab's own forward pass of agent ``agent``: (mode actions, Box ones clipped as executed; values)."""
    p = jax.tree_util.tree_map(lambda x: jnp.asarray(x[agent]), params)
    x = jnp.asarray(obs)
    if stats is not None:
        x = normalize_obs(RunningMeanStd(jnp.asarray(stats["mean"][agent]), jnp.asarray(stats["var"][agent]),
                                         jnp.asarray(1.0)), x)
    dist, value = net.apply(p, x)
    return net.action.clip(np.asarray(dist.mode())), np.asarray(value)


def rollout_obs(env_id: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` real observations of ``env_id`` under uniformly random actions (flattened as ppolab's adapter does)."""
    import gymnasium as gym

    from ppolab.envs import atari, probes

    probes.register()
    env = atari.make_atari(env_id) if atari.is_atari(env_id) else gym.make(env_id)
    if not isinstance(env.observation_space, gym.spaces.Box):
        env = gym.wrappers.FlattenObservation(env)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(n):
        out.append(np.asarray(obs))
        obs, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(out)


# ---- a trained run ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("policy") / "run"
    result = ppolab.train(ppolab.Config(env="CartPole-v1", total_timesteps=512, num_envs=4, num_steps=64,
                                        num_epochs=2, eval_episodes=0, progress=False, tensorboard=False,
                                        run_dir=str(run)))
    return run, result


def test_load_a_trained_run_without_building_an_env_or_an_optimizer(trained, monkeypatch, tmp_path):
    import gymnasium
    import optax

    run, result = trained
    for mod, name in ((gymnasium, "make"), (gymnasium, "make_vec"), (optax, "adam"), (optax, "chain")):
        monkeypatch.setattr(mod, name, lambda *a, _n=name, **k: pytest.fail(f"load() called {_n}"))
    policy = ppolab.load(run)
    policy.predict(np.zeros(4))
    monkeypatch.undo()
    obs = rollout_obs("CartPole-v1", 300).astype(np.float32)
    state = result.state
    net = make_network(result.config, *CARTPOLE)
    ref_a, ref_v = reference(net, jax.device_get(state.params), None, obs)
    actions, carry = policy.predict(obs)
    assert carry is None and actions.shape == (300,) and actions.dtype == np.int32
    np.testing.assert_array_equal(actions, ref_a)
    np.testing.assert_allclose(policy.value(obs), ref_v, rtol=1e-6, atol=1e-5)
    one, _ = policy.predict(obs[7])
    assert one.shape == () and one == ref_a[7] and policy.value(obs[7]).shape == ()
    assert policy.predict(obs[7].astype(np.float64))[0] == ref_a[7]  # float64 observations are converted
    assert policy(obs[:3]).tolist() == ref_a[:3].tolist()


def test_runs_without_policy_json_are_read_from_the_checkpoint_header(trained, tmp_path):
    import shutil

    run, _ = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / SPEC_FILE).unlink(missing_ok=True)
    obs = rollout_obs("CartPole-v1", 50)
    a, _ = load(old).predict(obs)
    np.testing.assert_array_equal(a, load(run).predict(obs)[0])


# ---- every kind of policy -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["box", "multidiscrete", "multibinary"])
def test_predict_matches_ppolab_forward_for_every_action_space(kind, tmp_path):
    spaces, env, norm = {"box": (HOPPER, "Hopper-v5", True), "multidiscrete": (MULTIDISCRETE,
                         "ppolab/DictObsMultiDiscrete-v0", False), "multibinary": (MULTIBINARY, None, True)}[kind]
    run, net, params, stats = make_run(tmp_path / kind, *spaces, agents=2, normalize_obs=norm, env=env or "X-v0")
    obs = rollout_obs(env, 300) if env else np.random.default_rng(1).normal(0, 2, (300, 5)).astype(np.float32)
    for agent in (0, 1):
        policy = load(run, agent=agent)
        ref_a, ref_v = reference(net, params, stats if norm else None, obs, agent)
        actions, _ = policy.predict(obs)
        assert actions.dtype == net.action.dtype and actions.shape == (300,) + net.action.shape
        if kind == "box":
            np.testing.assert_allclose(actions, ref_a, atol=1e-5)
            assert (np.abs(actions) == 1.0).any() and np.abs(actions).max() <= 1.0  # clipped to the bounds
        else:
            np.testing.assert_array_equal(actions, ref_a)
        np.testing.assert_allclose(policy.value(obs), ref_v, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(load(run, agent=0).predict(obs)[0], load(run, agent=1).predict(obs)[0])


def test_nature_cnn_policy_on_atari_frames(tmp_path):
    pytest.importorskip("ale_py")
    run, net, params, _ = make_run(tmp_path / "atari", *ATARI, env="ALE/Breakout-v5")
    frames = rollout_obs("ALE/Breakout-v5", 64)
    policy = load(run)
    ref_a, ref_v = reference(net, params, None, frames)
    np.testing.assert_array_equal(policy.predict(frames)[0], ref_a)
    np.testing.assert_allclose(policy.value(frames), ref_v, rtol=1e-5, atol=1e-4)
    assert policy.predict(frames[0])[0] == ref_a[0]
    with pytest.raises(ConfigError, match=r"dtype float32; this policy expects uint8"):
        policy.predict(frames.astype(np.float32))


def test_stochastic_predict_samples_the_policy_distribution(tmp_path):
    run, net, params, _ = make_run(tmp_path / "run", *CARTPOLE)
    obs = np.repeat(rollout_obs("CartPole-v1", 1), 4000, axis=0)
    dist, _ = net.apply(jax.tree_util.tree_map(lambda x: x[0], params), jnp.asarray(obs[:1]))
    p1 = float(jax.nn.softmax(dist.logits)[0, 1])
    actions, _ = load(run, seed=3).predict(obs, deterministic=False)
    assert abs(actions.mean() - p1) < 0.03
    np.testing.assert_array_equal(actions, load(run, seed=3).predict(obs, deterministic=False)[0])  # seeded


def test_state_is_the_recurrent_hook(tmp_path):
    run, *_ = make_run(tmp_path / "run", *CARTPOLE)
    marker = object()
    assert load(run).predict(np.zeros(4), state=marker)[1] is marker


# ---- bad input ----------------------------------------------------------------------------------------------------
def test_wrong_shapes_dtypes_agents_and_directories_are_one_line_errors(tmp_path):
    run, *_ = make_run(tmp_path / "run", *HOPPER, agents=2)
    policy = load(run)
    cases = [(np.zeros(10), r"shape \(10,\) does not match this policy: expected \(11,\)"),
             (np.zeros((3, 4, 11)), r"shape \(3, 4, 11\) .* or \(N, 11\)"),
             (np.array(["a"] * 11), r"dtype <U1; this policy expects a real number type"),
             (np.zeros(11, np.complex64), r"dtype complex64"),
             ([[0.0] * 11, [0.0] * 3], r"not an array|dtype object")]
    for obs, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            policy.predict(obs)
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match=msg):
            policy.value(obs)
    with pytest.raises(ConfigError, match=r"--agent 2 is out of range: the run has 2 agent\(s\), 0..1"):
        load(run, agent=2)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope")
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no checkpoint"):
        load(empty)


def test_policy_json_round_trip_with_unbounded_box_dimensions(tmp_path):
    inf = float("inf")
    spaces = (ObsSpec((3,)), ActionSpec("box", 2, low=(-inf, -0.5), high=(inf, 0.5)))
    run, net, params, _ = make_run(tmp_path / "run", *spaces, hidden_sizes=(16,), activation="relu")
    text = (run / SPEC_FILE).read_text()
    assert "Infinity" not in text and json.loads(text)["action"]["low"] == [None, -0.5]  # strict JSON
    policy = load(run)
    assert policy.net.action == spaces[1] and policy.net.hidden_sizes == (16,) and policy.net.activation == "relu"
    obs = np.random.default_rng(0).normal(0, 3, (200, 3)).astype(np.float32)
    actions, _ = policy.predict(obs)
    ref, _ = reference(net, params, None, obs)
    np.testing.assert_allclose(actions, ref, atol=1e-5)
    assert np.abs(actions[:, 1]).max() <= 0.5 and np.abs(actions[:, 0]).max() > 0.5  # only dimension 1 is bounded


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_action_masks_leave_only_legal_actions(backend, tmp_path):
    run, *_ = make_run(tmp_path / "run", *MULTIDISCRETE)
    policy = load(run, seed=1)
    if backend == "jax":
        policy._numpy = None  # the jitted path the Nature CNN takes
    obs = rollout_obs("ppolab/DictObsMultiDiscrete-v0", 200)
    free, _ = policy.predict(obs)
    mask = np.ones((200, 5), bool)
    mask[np.arange(200), free[:, 0]] = False  # forbid each state's preferred first sub-action
    mask[:, 3] = False  # and value 0 of the second one
    for deterministic in (True, False):
        a, _ = policy.predict(obs, deterministic=deterministic, action_masks=mask)
        assert (a[:, 0] != free[:, 0]).all() and (a[:, 1] == 1).all()
    one, _ = policy.predict(obs[0], action_masks=mask[0])
    assert one.shape == (2,) and one[0] != free[0, 0]
    with pytest.raises(ConfigError, match=r"action mask of shape \(5,\) .* expected a bool array of shape \(200, 5\)"):
        policy.predict(obs, action_masks=mask[0])
    box, *_ = make_run(tmp_path / "box", *HOPPER)
    with pytest.raises(ConfigError, match="need a Discrete or MultiDiscrete action space; this policy's is box"):
        load(box).predict(np.zeros(11), action_masks=np.ones(3, bool))
