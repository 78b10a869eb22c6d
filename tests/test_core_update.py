"""The learner on a fixed rollout: ratio exactly 1 at theta_old, every option changes the update, controllers,
numpy acting == JAX acting, determinism."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab.assembly import init_population
from ppolab.config import Config
from ppolab.networks import NumpyPolicy, make_network
from ppolab.spaces import ActionSpec, ObsSpec
from ppolab.types import Rollout
from ppolab.update import LearnerSpec, learn, loss_fn, make_batch

T, B, OBS = 16, 4, 3


def _rollout(action: ActionSpec, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T, B, OBS)).astype(np.float32)
    if action.kind == "discrete":
        acts = rng.integers(0, action.size, size=(T, B)).astype(np.int32)
    else:
        acts = rng.normal(size=(T, B, action.size)).astype(np.float32)
    term = rng.random((T, B)) < 0.05
    trunc = (rng.random((T, B)) < 0.05) & ~term
    return Rollout(obs=jnp.asarray(obs), actions=jnp.asarray(acts),
                   rewards=jnp.asarray(rng.normal(size=(T, B)).astype(np.float32)), terminated=jnp.asarray(term),
                   truncated=jnp.asarray(trunc), final_obs=jnp.asarray(obs * 0.5), last_obs=jnp.asarray(obs[0]))


DISCRETE = ActionSpec("discrete", 3)
BOX = ActionSpec("box", 2, low=(-1.0, -1.0), high=(1.0, 1.0))


def _setup(cfg: Config, action=DISCRETE):
    net = make_network(cfg, ObsSpec((OBS,)), action)
    spec = LearnerSpec.from_config(cfg)
    rows = [{"seed": cfg.seed, **{k: float(getattr(cfg, k)) for k in
                                  ("learning_rate", "clip_eps", "kl_beta", "kl_target", "ent_coef", "vf_coef",
                                   "gamma", "gae_lambda")}}]
    state = jax.tree_util.tree_map(lambda x: x[0], init_population(cfg, net, spec, rows))
    return net, spec, state


BASE = Config(num_envs=B, num_steps=T, num_epochs=2, num_minibatches=4, total_timesteps=T * B * 10)


@pytest.mark.parametrize("action", [DISCRETE, BOX])
@pytest.mark.parametrize("objective", ["pg", "cpi", "clip", "kl-fixed", "kl-adaptive"])
def test_ratio_is_exactly_one_on_first_minibatch_of_first_epoch(objective, action):
    cfg = BASE.replace(objective=objective)
    net, spec, state = _setup(cfg, action)
    rollout = _rollout(action)
    perm0 = jax.random.permutation(jax.random.PRNGKey(3), T * B)
    batch, _ = jax.jit(make_batch, static_argnums=(0, 1))(spec, net, state, rollout, perm0)
    idx = perm0.reshape(spec.num_minibatches, -1)[0]
    mb = jax.tree_util.tree_map(lambda x: x[idx], batch)
    _, aux = jax.jit(loss_fn, static_argnums=(1, 2))(state.params, spec, net, mb, 0.2, 1.0, state.hparams)
    assert float(aux.ratio_min) == 1.0 and float(aux.ratio_max) == 1.0
    assert float(aux.approx_kl) == 0.0


def test_single_minibatch_single_epoch_update_reports_ratio_one():
    cfg = BASE.replace(num_epochs=1, num_minibatches=1)
    net, spec, state = _setup(cfg)
    _, m = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, _rollout(DISCRETE))
    assert float(m["ratio_min"]) == 1.0 == float(m["ratio_max"])
    assert float(m["clip_fraction"]) == 0.0


def _params_after(cfg: Config, action=DISCRETE, rollout=None):
    net, spec, state = _setup(cfg, action)
    new, metrics = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, rollout or _rollout(action))
    return new, metrics


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


OPTION_CHANGES = [
    dict(objective="pg"), dict(objective="cpi"), dict(objective="kl-fixed"), dict(objective="kl-fixed", kl_beta=0.0),
    dict(clip_eps=0.05), dict(vf_clip=0.01), dict(norm_adv=False), dict(norm_adv_batch=True), dict(max_grad_norm=0.01),
    dict(max_grad_norm=None), dict(ent_coef=0.5), dict(vf_coef=2.0), dict(learning_rate=1e-2), dict(gamma=0.5),
    dict(gae_lambda=0.1), dict(num_epochs=3), dict(num_minibatches=2), dict(adam_eps=1e-1), dict(normalize_obs=True),
    dict(normalize_reward=True), dict(target_kl=1e-6), dict(activation="relu"), dict(ortho_init=False), dict(seed=1),
    dict(log_std_init=-1.0, _action=BOX),  # anneal_lr / anneal_clip: test_anneal_options_change_later_updates
]


@pytest.mark.parametrize("change", OPTION_CHANGES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_each_option_changes_the_update(change):
    change = dict(change)
    action = change.pop("_action", DISCRETE)
    base = BASE.replace(learning_rate=3e-3, clip_eps=0.1, kl_beta=3.0)
    p0, _ = _params_after(base, action)
    p1, _ = _params_after(base.replace(**change), action)
    # the whole new train state: parameters, optimizer state, normalization statistics, beta
    a, b = _flat(p0.replace(hparams=None, key=None)), _flat(p1.replace(hparams=None, key=None))
    assert not np.array_equal(a, b), f"option {change} did not change the update"


def test_norm_adv_batch_standardizes_once_over_the_batch():
    # baselines ppo1: (A - mean) / std over the whole batch, then each minibatch takes its share unchanged
    cfg = BASE.replace(norm_adv_batch=True)
    net, spec, state = _setup(cfg)
    plain = dataclasses.replace(spec, norm_adv=False, norm_adv_batch=False)
    perm0 = jax.random.permutation(jax.random.PRNGKey(3), T * B)
    batch, _ = make_batch(spec, net, state, _rollout(DISCRETE), perm0)
    raw, _ = make_batch(plain, net, state, _rollout(DISCRETE), perm0)
    a = np.asarray(raw.advantages, np.float64)
    np.testing.assert_allclose(batch.advantages, (a - a.mean()) / a.std(), rtol=1e-5, atol=1e-6)
    mb = jax.tree_util.tree_map(lambda x: x[perm0[: T * B // 4]], batch)
    loss, _ = loss_fn(state.params, spec, net, mb, 0.2, 1.0, state.hparams)
    loss_raw, _ = loss_fn(state.params, plain, net, mb, 0.2, 1.0, state.hparams)
    assert float(loss) == float(loss_raw)  # not standardized a second time per minibatch


def test_anneal_options_change_later_updates():
    cfg = BASE.replace(learning_rate=3e-3)
    net, spec, state = _setup(cfg)
    state = state.replace(iteration=jnp.asarray(5, jnp.int32))  # alpha = 1 - 5/10 = 0.5
    f = jax.jit(learn, static_argnums=(0, 1))
    _, m = f(spec, net, state, _rollout(DISCRETE))
    assert float(m["learning_rate"]) == pytest.approx(1.5e-3)
    assert float(m["clip_eps"]) == pytest.approx(0.1)
    spec2 = dataclasses.replace(spec, anneal_lr=False, anneal_clip=False)
    _, m2 = f(spec2, net, state, _rollout(DISCRETE))
    assert float(m2["learning_rate"]) == pytest.approx(3e-3) and float(m2["clip_eps"]) == pytest.approx(0.2)


def test_adaptive_beta_applied_once_per_update():
    cfg = BASE.replace(objective="kl-adaptive", kl_target=1e-9, learning_rate=1e-2, kl_beta=1.0)
    new, m = _params_after(cfg)
    assert float(m["beta"]) == 1.0          # beta used during this update
    assert float(new.beta) == 2.0           # d >> 1.5 d_targ: doubled once, not per minibatch
    cfg = BASE.replace(objective="kl-adaptive", kl_target=10.0, kl_beta=1.0)
    new, _ = _params_after(cfg)
    assert float(new.beta) == 0.5
    new, _ = _params_after(BASE.replace(objective="kl-fixed", kl_target=1e-9))
    assert float(new.beta) == 1.0           # fixed beta never moves


def test_target_kl_stops_early():
    # target_kl is static (part of the compiled learner): 1e-6, as in OPTION_CHANGES, shares that program
    _, m = _params_after(BASE.replace(target_kl=1e-6, learning_rate=1e-2))
    assert 1 <= float(m["minibatches_done"]) < BASE.num_epochs * BASE.num_minibatches
    _, m = _params_after(BASE)
    assert float(m["minibatches_done"]) == BASE.num_epochs * BASE.num_minibatches


def test_learner_is_deterministic():
    a, ma = _params_after(BASE)
    b, mb = _params_after(BASE)
    np.testing.assert_array_equal(_flat(a.params), _flat(b.params))
    for k in ma:
        np.testing.assert_array_equal(np.asarray(ma[k]), np.asarray(mb[k]))


@pytest.mark.parametrize("action", [DISCRETE, BOX, ActionSpec("multidiscrete", 2, nvec=(2, 3)),
                                    ActionSpec("multibinary", 3)], ids=lambda a: a.kind)
@pytest.mark.parametrize("shared", [False, True])
def test_numpy_policy_matches_jax_network(action, shared):
    cfg = BASE.replace(shared_torso=shared)
    net = make_network(cfg, ObsSpec((OBS,)), action)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, OBS)))
    # make the head non-trivial so modes differ between states
    params = jax.tree_util.tree_map(lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    obs = np.random.default_rng(0).normal(size=(1, 7, OBS)).astype(np.float32)
    dist, _ = net.apply(params, jnp.asarray(obs[0]))
    stacked = jax.tree_util.tree_map(lambda x: np.asarray(x)[None], params)
    pol = NumpyPolicy.from_params(net, stacked)
    np.testing.assert_allclose(pol.head_out(obs)[0], np.asarray(getattr(dist, "logits", getattr(dist, "mean", None))),
                               rtol=1e-5, atol=1e-5)
    if action.kind == "box":
        np.testing.assert_allclose(pol.sample_with_noise(obs, None)[0], np.asarray(dist.mode()), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(pol.sample_with_noise(obs, None)[0], np.asarray(dist.mode()))
    noise = pol.draw_noise(np.random.default_rng(0), (1, 7))
    a = pol.sample_with_noise(obs, noise)
    assert a.shape == (1, 7) + action.shape


def test_unrolled_image_epochs_equal_the_loop(monkeypatch):
    # on the CPU an image policy's epochs are unrolled (XLA:CPU's convolution gradients are slow inside loops); the
    # update must be the loop's: same minibatch order, same Adam steps
    import ppolab.update as update_mod

    cfg = BASE.replace(num_envs=2, num_steps=8, num_minibatches=2, num_epochs=2, total_timesteps=160)
    net = make_network(cfg, ObsSpec((36, 36, 1), "uint8"), DISCRETE)
    spec = LearnerSpec.from_config(cfg)
    rows = [{"seed": 0, **{k: float(getattr(cfg, k)) for k in ("learning_rate", "clip_eps", "kl_beta", "kl_target",
                                                                   "ent_coef", "vf_coef", "gamma", "gae_lambda")}}]
    state = jax.tree_util.tree_map(lambda x: x[0], init_population(cfg, net, spec, rows))
    rng = np.random.default_rng(0)
    base = _rollout(DISCRETE)
    frames = lambda *s: jnp.asarray(rng.integers(0, 256, size=s + (36, 36, 1)).astype(np.uint8))
    rollout = base.replace(obs=frames(8, 2), final_obs=frames(8, 2), last_obs=frames(2), actions=base.actions[:8, :2],
                           rewards=base.rewards[:8, :2], terminated=base.terminated[:8, :2],
                           truncated=base.truncated[:8, :2])
    assert update_mod._unroll_epochs(spec, net) == (jax.default_backend() == "cpu")
    unrolled, _ = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, rollout)
    monkeypatch.setattr(update_mod, "_unroll_epochs", lambda spec, net: False)
    looped, _ = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, rollout)
    np.testing.assert_allclose(_flat(unrolled.params), _flat(looped.params), rtol=1e-5, atol=1e-6)
    assert not np.array_equal(_flat(unrolled.params), _flat(state.params))
