"""Tier 1: numerical references — GAE against a plain loop, objectives against hand values, gradient identities,
exact KL against closed forms, the adaptive-beta rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab import advantages
from ppolab import distributions as D
from ppolab import objectives as O


# ---- GAE ----------------------------------------------------------------------------------------------------------
def gae_loop(rewards, values, terminated, truncated, final_values, last_value, gamma, lam):
    """Plain Python reference: one actor at a time, one step at a time."""
    T, B = rewards.shape
    adv = np.zeros((T, B))
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            if truncated[t, b]:
                next_v = final_values[t, b]
            elif t == T - 1:
                next_v = last_value[b]
            else:
                next_v = values[t + 1, b]
            if terminated[t, b]:
                next_v = 0.0
            delta = rewards[t, b] + gamma * next_v - values[t, b]
            if terminated[t, b] or truncated[t, b]:
                running = 0.0
            running = delta + gamma * lam * running
            adv[t, b] = running
    return adv


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 1.0), (1.0, 0.0), (0.5, 0.7)])
def test_gae_matches_python_loop_with_mid_rollout_episode_ends(gamma, lam):
    rng = np.random.default_rng(0)
    T, B = 37, 5
    rewards = rng.normal(size=(T, B)).astype(np.float32)
    values = rng.normal(size=(T, B)).astype(np.float32)
    final_values = rng.normal(size=(T, B)).astype(np.float32)
    last_value = rng.normal(size=B).astype(np.float32)
    terminated = rng.random((T, B)) < 0.1
    truncated = (rng.random((T, B)) < 0.1) & ~terminated
    terminated[5, 0], truncated[6, 0] = True, True  # both kinds in the middle of one actor's rollout
    truncated[T - 1, 1] = True                      # truncation on the last step: bootstrap from final obs
    adv, targets = advantages.gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(terminated),
                                  jnp.asarray(truncated), jnp.asarray(final_values), jnp.asarray(last_value),
                                  gamma, lam)
    ref = gae_loop(rewards, values, terminated, truncated, final_values, last_value, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets), ref + values, rtol=1e-5, atol=1e-5)


def test_gae_hand_values():
    # one actor, 3 steps, gamma=0.5, lambda=1: r=[1,1,1], V=0, episode terminates after step 1
    r = jnp.ones((3, 1))
    z = jnp.zeros((3, 1))
    term = jnp.asarray([[False], [True], [False]])
    adv, _ = advantages.gae(r, z, term, jnp.zeros((3, 1), bool), z, jnp.asarray([4.0]), 0.5, 1.0)
    # A_2 = 1 + 0.5*4 = 3;  A_1 = 1 (terminal);  A_0 = 1 + 0.5 * A_1 = 1.5
    np.testing.assert_allclose(np.asarray(adv)[:, 0], [1.5, 1.0, 3.0])


def test_timeout_bootstrap_recovers_geometric_sum():
    """Constant reward 1, episodes only ever truncated: the fixed point of V <- TD target is 1 / (1 - gamma)
    everywhere. Treating truncation as termination would pull states near the time limit towards 1."""
    gamma, T, B, L = 0.9, 60, 3, 7
    t_idx = np.arange(T)[:, None] + np.arange(B)[None, :]
    truncated = jnp.asarray((t_idx % L) == L - 1)
    r = jnp.ones((T, B))
    no_flags = jnp.zeros((T, B), bool)

    @jax.jit
    def fixed_point(term, trunc):
        def td_backup(_, v):
            _, targets = advantages.gae(r, v, term, trunc, v, v[-1], gamma, 0.0)
            # every state has the same value (obs carries no time), so the final obs's value is the same number
            return jnp.full_like(v, jnp.mean(targets))
        return jax.lax.fori_loop(0, 400, td_backup, jnp.zeros((T, B)))

    v = fixed_point(no_flags, truncated)
    np.testing.assert_allclose(np.asarray(v), 1.0 / (1.0 - gamma), rtol=1e-4)
    # without the bootstrap (truncation treated as termination) the answer is wrong
    v2 = fixed_point(truncated, no_flags)
    assert float(jnp.mean(v2)) < 0.9 / (1.0 - gamma)


# ---- objectives against hand values -----------------------------------------------------------------------------
def terms(logp, old, adv, kl=None):
    logp, old, adv = map(lambda x: jnp.asarray(x, jnp.float32), (logp, old, adv))
    return O.PolicyTerms(logp, old, adv, jnp.zeros_like(logp) if kl is None else jnp.asarray(kl, jnp.float32))


def test_objectives_hand_values():
    ratios = np.array([0.5, 1.0, 1.5, 0.7])
    adv = np.array([1.0, -2.0, 2.0, -1.0])
    old = np.log(np.array([0.4, 0.3, 0.2, 0.5]))
    logp = old + np.log(ratios)
    kl = np.array([0.1, 0.0, 0.2, 0.3])
    t = terms(logp, old, adv, kl)
    # float32 ratios exp(logp - old) and means: ~1e-6 relative (1.4e-6 seen on an H200), so rel=1e-5
    # L^PG = mean(logp * A)
    assert float(O.l_pg(t, 0.2, 1.0)) == pytest.approx(np.mean(logp * adv), rel=1e-5)
    # L^CPI = mean(r A) = (0.5 - 2 + 3 - 0.7) / 4
    assert float(O.l_cpi(t, 0.2, 1.0)) == pytest.approx((0.5 - 2.0 + 3.0 - 0.7) / 4, rel=1e-5)
    # L^CLIP, eps 0.2: min(rA, clip(r)A) = [0.5, -2, min(3, 2.4)=2.4, min(-0.7, -0.8)=-0.8]
    assert float(O.l_clip(t, 0.2, 1.0)) == pytest.approx((0.5 - 2.0 + 2.4 - 0.8) / 4, rel=1e-5)
    # L^KLPEN, beta 2: mean(rA) - 2 * mean(kl)
    assert float(O.l_klpen(t, 0.2, 2.0)) == pytest.approx((0.5 - 2.0 + 3.0 - 0.7) / 4 - 2 * 0.15, rel=1e-5)


def test_value_loss_plain_and_clipped():
    v, old, tgt = jnp.asarray([1.0, 3.0]), jnp.asarray([0.0, 0.0]), jnp.asarray([2.0, 0.0])
    assert float(O.value_loss(v, old, tgt)) == pytest.approx((1.0 + 9.0) / 2)
    # clipped at 0.5: V_c = [0.5, 0.5]; max((1-2)^2, (0.5-2)^2) = 2.25; max(9, 0.25) = 9
    assert float(O.value_loss(v, old, tgt, 0.5)) == pytest.approx((2.25 + 9.0) / 2)


@pytest.mark.parametrize("d,expected", [(0.001, 0.5), (0.0066, 0.5), (0.0067, 1.0), (0.01, 1.0), (0.015, 1.0),
                                        (0.0151, 2.0), (0.5, 2.0)])
def test_adaptive_beta_rule(d, expected):
    # d_targ = 0.01: below 0.01/1.5 = 0.00667 halves, above 0.015 doubles
    assert float(O.adapt_beta(jnp.asarray(1.0), jnp.asarray(d), 0.01)) == pytest.approx(expected)


# ---- gradient identities ----------------------------------------------------------------------------------------
def _policy_setup(seed=0, n=64, obs_dim=3, actions=4):
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(seed), 4)
    params = {"w": jax.random.normal(k1, (obs_dim, actions)) * 0.5, "b": jnp.zeros(actions)}
    obs = jax.random.normal(k2, (n, obs_dim))
    dist = lambda p: D.Categorical(obs @ p["w"] + p["b"])
    act = dist(params).sample(k3)
    adv = jax.random.normal(k4, (n,))
    old_logp = jax.lax.stop_gradient(dist(params).log_prob(act))
    return params, dist, act, adv, old_logp


def _grad(objective, params, dist, act, adv, old_logp, clip_eps=0.2):
    def f(p):
        t = O.PolicyTerms(dist(p).log_prob(act), old_logp, adv, jnp.zeros_like(adv))
        return objective(t, clip_eps, 0.0)
    return jax.grad(f)(params)


def test_grad_cpi_equals_grad_pg_at_theta_old_and_differs_after_update():
    params, dist, act, adv, old_logp = _policy_setup()
    g_pg = _grad(O.l_pg, params, dist, act, adv, old_logp)
    g_cpi = _grad(O.l_cpi, params, dist, act, adv, old_logp)
    for a, b in zip(jax.tree_util.tree_leaves(g_pg), jax.tree_util.tree_leaves(g_cpi), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert max(float(jnp.abs(x).max()) for x in jax.tree_util.tree_leaves(g_pg)) > 1e-3  # not trivially zero
    # one gradient-ascent step moves theta away from theta_old: the gradients now differ
    moved = jax.tree_util.tree_map(lambda p, g: p + 1.0 * g, params, g_pg)
    g_pg2 = _grad(O.l_pg, moved, dist, act, adv, old_logp)
    g_cpi2 = _grad(O.l_cpi, moved, dist, act, adv, old_logp)
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(g_pg2),
                                                          jax.tree_util.tree_leaves(g_cpi2), strict=True))
    assert diff > 1e-3


def test_clip_gradient_zero_exactly_where_the_paper_says():
    """d L^CLIP / d logp_t = 0 iff (r > 1+eps and A > 0) or (r < 1-eps and A < 0); else it equals r A / N."""
    eps = 0.2
    ratios = jnp.asarray([0.5, 0.5, 0.9, 0.9, 1.1, 1.1, 1.5, 1.5, 1.0, 1.0])
    adv = jnp.asarray([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    old = jnp.zeros_like(ratios)
    g = jax.grad(lambda lp: O.l_clip(O.PolicyTerms(lp, old, adv, jnp.zeros_like(lp)), eps, 0.0))(jnp.log(ratios))
    zero = ((ratios > 1 + eps) & (adv > 0)) | ((ratios < 1 - eps) & (adv < 0))
    assert np.all(np.asarray(g)[np.asarray(zero)] == 0.0)
    np.testing.assert_allclose(np.asarray(g)[~np.asarray(zero)], np.asarray(ratios * adv / 10)[~np.asarray(zero)],
                               rtol=1e-6)
    assert int(zero.sum()) == 2  # r=0.5 with A<0 and r=1.5 with A>0


# ---- distributions: exact KL, entropy, log-prob against closed forms ---------------------------------------------
def test_categorical_kl_entropy_closed_form():
    p = np.array([0.2, 0.5, 0.3])
    q = np.array([0.4, 0.4, 0.2])
    dp, dq = D.Categorical(jnp.log(jnp.asarray(p))), D.Categorical(jnp.log(jnp.asarray(q)))
    assert float(dp.kl(dq)) == pytest.approx(np.sum(p * np.log(p / q)), rel=1e-5)
    assert float(dp.entropy()) == pytest.approx(-np.sum(p * np.log(p)), rel=1e-5)
    assert float(dp.log_prob(jnp.asarray(1))) == pytest.approx(np.log(0.5), rel=1e-6)
    assert float(dp.kl(dp)) == pytest.approx(0.0, abs=1e-7)


def test_gaussian_kl_entropy_closed_form():
    m1, s1, m2, s2 = np.array([0.1, -1.0]), np.array([0.5, 2.0]), np.array([0.3, 0.0]), np.array([1.0, 1.5])
    d1 = D.DiagGaussian(jnp.asarray(m1), jnp.log(jnp.asarray(s1)))
    d2 = D.DiagGaussian(jnp.asarray(m2), jnp.log(jnp.asarray(s2)))
    ref = np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5)
    assert float(d1.kl(d2)) == pytest.approx(ref, rel=1e-5)
    assert float(d1.entropy()) == pytest.approx(np.sum(0.5 * np.log(2 * np.pi * np.e * s1**2)), rel=1e-5)
    a = np.array([0.4, 0.2])
    ref_lp = np.sum(-0.5 * ((a - m1) / s1) ** 2 - np.log(s1) - 0.5 * np.log(2 * np.pi))
    assert float(d1.log_prob(jnp.asarray(a))) == pytest.approx(ref_lp, rel=1e-5)
    # Monte Carlo agrees with the closed form: KL = E_{x~p}[log p(x) - log q(x)]
    xs = jnp.asarray(m1) + jnp.asarray(s1) * jax.random.normal(jax.random.PRNGKey(1), (200_000, 2))
    mc = float(jnp.mean(d1.log_prob(xs) - d2.log_prob(xs)))
    assert mc == pytest.approx(ref, rel=0.02)


def test_multicategorical_and_bernoulli_are_sums_of_parts():
    logits = jnp.asarray([[0.1, 0.2, -0.3, 1.0, 0.0]])
    mc = D.MultiCategorical(logits, (2, 3))
    a = jnp.asarray([[1, 2]])
    parts = D.Categorical(logits[:, :2]), D.Categorical(logits[:, 2:])
    assert float(mc.log_prob(a)[0]) == pytest.approx(float(parts[0].log_prob(a[:, 0])[0] +
                                                           parts[1].log_prob(a[:, 1])[0]), rel=1e-6)
    bern = D.Bernoulli(jnp.asarray([0.3, -1.2]))
    p = 1 / (1 + np.exp(-np.array([0.3, -1.2])))
    assert float(bern.log_prob(jnp.asarray([1, 0]))) == pytest.approx(np.log(p[0]) + np.log(1 - p[1]), rel=1e-5)
    q = D.Bernoulli(jnp.asarray([0.0, 0.0]))
    ref = np.sum(p * np.log(p / 0.5) + (1 - p) * np.log((1 - p) / 0.5))
    assert float(bern.kl(q)) == pytest.approx(ref, rel=1e-5)
    assert math.isfinite(float(mc.entropy()[0]))
