"""Masked categorical distributions (issue 13) against an independent float64 numpy reference over the legal set.

Each test can fail: a sampler that ignores the mask picks illegal actions; one that merely makes illegal logits small
(l - 1e8) keeps mass and gradient on an illegal action whose logit is huge; a 0 * -inf in the entropy or KL shows as
NaN in a value or a gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ppolab import distributions as D

A = 6


def _masks(rng, rows, n, single_rows=(0,), empty_rows=()):
    """Random bool masks [rows, n] with at least one legal action; rows in ``single_rows`` have exactly one."""
    m = rng.random((rows, n)) < 0.5
    m[np.arange(rows), rng.integers(0, n, rows)] = True
    for r in single_rows:
        m[r] = False
        m[r, rng.integers(0, n)] = True
    for r in empty_rows:
        m[r] = False
    return m


def _case(seed=0, rows=8, n=A, huge_illegal=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (rows, n)).astype(np.float32)
    mask = _masks(rng, rows, n)
    if huge_illegal:  # an illegal action with an enormous logit: "made small" (l - 1e8) would still pick it
        logits = np.where(mask, logits, np.float32(1e30)).astype(np.float32)
        logits[1][~mask[1]] = np.float32(3e38)  # near float32's largest: l - max overflows if not excluded
    return logits, mask


# ---- numpy reference, written from the formulas ------------------------------------------------------------------
def ref_logp(logits, mask):
    """log pi(a) = l_a - log sum_{b in L} exp(l_b) for a in L, -inf else (float64)."""
    out = np.full(logits.shape, -np.inf)
    for i in range(logits.shape[0]):
        legal = np.flatnonzero(mask[i])
        lg = logits[i, legal].astype(np.float64)
        out[i, legal] = lg - (lg.max() + np.log(np.sum(np.exp(lg - lg.max()))))
    return out


def ref_entropy(logits, mask):
    lp = ref_logp(logits, mask)
    return np.array([-np.sum(np.exp(lp[i, mask[i]]) * lp[i, mask[i]]) for i in range(len(lp))])


def ref_kl(lp_logits, lp_mask, lq_logits, lq_mask):
    lp, lq = ref_logp(lp_logits, lp_mask), ref_logp(lq_logits, lq_mask)
    out = []
    for i in range(len(lp)):
        legal = lp_mask[i]
        if np.any(legal & ~lq_mask[i]):
            out.append(np.inf)
        else:
            out.append(np.sum(np.exp(lp[i, legal]) * (lp[i, legal] - lq[i, legal])))
    return np.array(out)


# ---- sampling ----------------------------------------------------------------------------------------------------
def test_samples_are_legal_and_match_legal_softmax():
    logits, mask = _case(1)
    n = 100_000
    dist = D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask))
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    a = np.asarray(jax.jit(jax.vmap(dist.sample))(keys))  # [n, rows]
    assert a.shape == (n, logits.shape[0])
    assert mask[np.arange(logits.shape[0])[None, :], a].all(), "an illegal action was sampled"
    p = np.exp(ref_logp(logits, mask))
    for i in range(logits.shape[0]):
        counts = np.bincount(a[:, i], minlength=A)
        legal = mask[i]
        if legal.sum() == 1:
            assert counts[legal][0] == n
            continue
        chi2 = np.sum((counts[legal] - n * p[i, legal]) ** 2 / (n * p[i, legal]))
        assert stats.chi2.sf(chi2, legal.sum() - 1) > 1e-6, (i, counts, n * p[i])


def test_numpy_sampler_matches_jax_sampler_with_the_same_noise():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1.5, (4096, A)).astype(np.float32)
    mask = _masks(rng, 4096, A, single_rows=range(0, 4096, 7))
    u = rng.random((4096, A), dtype=np.float32)
    a_np = D.masked_sample_numpy(logits, mask, u)
    a_jax = np.asarray(jax.jit(D.MaskedCategorical.sample_with_noise)(
        D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask)), jnp.asarray(u)))
    assert a_np.dtype == np.int32 and mask[np.arange(4096), a_np].all()
    assert np.mean(a_np == a_jax) > 0.999  # equal up to rare one-ulp differences of log between numpy and XLA
    mode = D.masked_sample_numpy(logits, mask, None)
    np.testing.assert_array_equal(mode, np.asarray(D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask)).mode()))


def test_numpy_sampler_frequencies():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, A).astype(np.float32)
    mask = np.array([True, False, True, True, False, True])
    n = 100_000
    u = rng.random((n, A), dtype=np.float32)
    a = D.masked_sample_numpy(np.broadcast_to(logits, (n, A)), np.broadcast_to(mask, (n, A)), u)
    counts = np.bincount(a, minlength=A)
    assert counts[~mask].sum() == 0
    p = np.exp(ref_logp(logits[None], mask[None]))[0]
    chi2 = np.sum((counts[mask] - n * p[mask]) ** 2 / (n * p[mask]))
    assert stats.chi2.sf(chi2, mask.sum() - 1) > 1e-6


def test_mode_is_the_best_legal_action():
    logits, mask = _case(4)
    mode = np.asarray(D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask)).mode())
    np.testing.assert_array_equal(mode, np.argmax(np.where(mask, logits, -np.inf), axis=-1))
    assert mask[np.arange(len(mode)), mode].all()


# ---- closed forms ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("huge", [False, True])
def test_log_prob_entropy_kl_closed_forms(huge):
    logits, mask = _case(5, rows=32, huge_illegal=huge)
    rng = np.random.default_rng(6)
    other = np.where(mask, rng.normal(0, 2, logits.shape), logits).astype(np.float32)
    d = D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask))
    e = D.MaskedCategorical(jnp.asarray(other), jnp.asarray(mask))
    lp = ref_logp(logits, mask)
    for a in range(A):
        got = np.asarray(d.log_prob(jnp.full(32, a)))
        np.testing.assert_allclose(got[mask[:, a]], lp[mask[:, a], a], rtol=1e-5, atol=1e-5)
        assert np.all(got[~mask[:, a]] == -np.inf)
    np.testing.assert_allclose(np.asarray(d.entropy()), ref_entropy(logits, mask), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.kl(e)), ref_kl(logits, mask, other, mask), rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(d.kl(d)) == 0.0)


def test_kl_with_different_masks():
    logits, mask = _case(7, rows=16, huge_illegal=False)
    wider = mask.copy()
    wider[:, 0] = True  # q allows more: KL over p's legal set stays finite
    narrower = mask.copy()
    narrower[3] = False
    narrower[3, np.flatnonzero(mask[3])[0]] = True
    mask[3, np.flatnonzero(mask[3])[-1]] = True
    d = D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask))
    got_w = np.asarray(d.kl(D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(wider))))
    np.testing.assert_allclose(got_w, ref_kl(logits, mask, logits, wider), rtol=1e-4, atol=1e-6)
    got_n = np.asarray(d.kl(D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(narrower))))
    np.testing.assert_allclose(got_n, ref_kl(logits, mask, logits, narrower), rtol=1e-4, atol=1e-6)


def test_unmasked_equals_categorical():
    logits, _ = _case(8, huge_illegal=False)
    full = np.ones_like(logits, bool)
    m, c = D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(full)), D.Categorical(jnp.asarray(logits))
    a = jnp.asarray(np.arange(8) % A)
    np.testing.assert_allclose(np.asarray(m.log_prob(a)), np.asarray(c.log_prob(a)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(m.entropy()), np.asarray(c.entropy()), rtol=1e-6, atol=1e-6)


# ---- one legal action: zero entropy, zero log-prob, zero policy gradient ----------------------------------------
def test_single_legal_action_is_exactly_deterministic():
    logits = jnp.asarray([[0.3, 5.0, -2.0, 1e30], [7.0, -1.0, 0.0, 2.0]], jnp.float32)
    mask = jnp.asarray([[True, False, False, False], [False, False, False, True]])
    a = jnp.asarray([0, 3])

    def f(lg, which):
        d = D.MaskedCategorical(lg, mask)
        return jnp.sum(d.log_prob(a)) if which == "lp" else jnp.sum(d.entropy())

    d = D.MaskedCategorical(logits, mask)
    assert np.all(np.asarray(d.entropy()) == 0.0)
    assert np.all(np.asarray(d.log_prob(a)) == 0.0)
    for which in ("lp", "ent"):
        g = np.asarray(jax.grad(f)(logits, which))
        assert np.all(g == 0.0), (which, g)
    np.testing.assert_array_equal(np.asarray(d.mode()), [0, 3])


# ---- gradients ---------------------------------------------------------------------------------------------------
def test_gradients_are_finite_and_zero_on_illegal_logits():
    logits, mask = _case(9, rows=16)
    rng = np.random.default_rng(10)
    other = np.where(mask, rng.normal(0, 2, logits.shape), -3e38).astype(np.float32)
    mk = jnp.asarray(mask)
    a = jnp.asarray(np.argmax(np.where(mask, rng.random(mask.shape), -1), -1))

    def loss(lg, og):
        d, e = D.MaskedCategorical(lg, mk), D.MaskedCategorical(og, mk)
        return jnp.sum(d.log_prob(a)) + jnp.sum(d.entropy()) + jnp.sum(d.kl(e)) + jnp.sum(e.kl(d))

    gl, go = jax.grad(loss, argnums=(0, 1))(jnp.asarray(logits), jnp.asarray(other))
    for g in (np.asarray(gl), np.asarray(go)):
        assert np.isfinite(g).all()
        assert np.all(g[~mask] == 0.0)
    # grad of log pi(a) = onehot(a) - pi over the legal set
    glp = np.asarray(jax.grad(lambda lg: jnp.sum(D.MaskedCategorical(lg, mk).log_prob(a)))(jnp.asarray(logits)))
    ref = np.eye(A)[np.asarray(a)] - np.exp(ref_logp(logits, mask))
    np.testing.assert_allclose(glp, ref, atol=1e-5)
    # grad of the entropy: dH/dl_a = -pi(a) (log pi(a) + H) on the legal set
    gh = np.asarray(jax.grad(lambda lg: jnp.sum(D.MaskedCategorical(lg, mk).entropy()))(jnp.asarray(logits)))
    lp = ref_logp(logits, mask)
    p = np.exp(lp)
    ref_h = np.where(mask, -p * (np.where(mask, lp, 0) + ref_entropy(logits, mask)[:, None]), 0)
    np.testing.assert_allclose(gh, ref_h, atol=1e-5)


def test_row_without_legal_action_gives_no_nan():
    logits = jnp.asarray([[1.0, 2.0, 3.0], [0.5, 0.1, 0.2]])
    mask = jnp.asarray([[False, False, False], [True, True, False]])
    d = D.MaskedCategorical(logits, mask)
    assert np.asarray(d.entropy())[0] == 0.0 and np.asarray(d.kl(d))[0] == 0.0
    assert np.asarray(d.log_prob(jnp.asarray([0, 0])))[0] == -np.inf
    g = jax.grad(lambda lg: jnp.sum(D.MaskedCategorical(lg, mask).entropy()))(logits)
    assert np.isfinite(np.asarray(g)).all()
    assert not bool(D.has_legal(mask)[0]) and bool(D.has_legal(mask)[1])


# ---- MultiDiscrete -----------------------------------------------------------------------------------------------
NVEC = (3, 4, 2)


def _multi_case(seed, rows=16):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (rows, sum(NVEC))).astype(np.float32)
    parts = [_masks(rng, rows, n, single_rows=(i,)) for i, n in enumerate(NVEC)]
    return logits, np.concatenate(parts, -1)


def test_multicategorical_masks_per_sub_action():
    logits, mask = _multi_case(11)
    rng = np.random.default_rng(12)
    other = rng.normal(0, 2, logits.shape).astype(np.float32)
    d = D.MaskedMultiCategorical(jnp.asarray(logits), jnp.asarray(mask), NVEC)
    e = D.MaskedMultiCategorical(jnp.asarray(other), jnp.asarray(mask), NVEC)
    cuts = np.cumsum((0,) + NVEC)
    sl = [slice(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)]
    acts = np.stack([np.asarray(D.MaskedCategorical(jnp.asarray(logits[:, s]), jnp.asarray(mask[:, s])).mode())
                     for s in sl], -1)
    ref_lp = sum(ref_logp(logits[:, s], mask[:, s])[np.arange(16), acts[:, i]] for i, s in enumerate(sl))
    np.testing.assert_allclose(np.asarray(d.log_prob(jnp.asarray(acts))), ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(d.entropy()), sum(ref_entropy(logits[:, s], mask[:, s]) for s in sl),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.kl(e)), sum(ref_kl(logits[:, s], mask[:, s], other[:, s], mask[:, s])
                                                      for s in sl), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(d.mode()), acts)
    samples = np.asarray(jax.vmap(d.sample)(jax.random.split(jax.random.PRNGKey(3), 20_000)))  # [n, rows, 3]
    for i, s in enumerate(sl):
        sub = mask[:, s]
        assert sub[np.arange(16)[None, :], samples[..., i]].all()
    assert bool(jnp.all(D.is_legal(jnp.asarray(mask), jnp.asarray(samples), NVEC)))
    u = rng.random(logits.shape, dtype=np.float32)
    np.testing.assert_array_equal(D.masked_sample_numpy(logits, mask, u, NVEC), np.asarray(d.sample_with_noise(u)))
    g = jax.grad(lambda lg: jnp.sum(D.MaskedMultiCategorical(lg, jnp.asarray(mask), NVEC).entropy()
                                    + D.MaskedMultiCategorical(lg, jnp.asarray(mask), NVEC).log_prob(acts)))(
        jnp.asarray(logits))
    assert np.isfinite(np.asarray(g)).all() and np.all(np.asarray(g)[~mask] == 0.0)


# ---- pytrees: jit, vmap, minibatch indexing, stacking -------------------------------------------------------------
@pytest.mark.parametrize("multi", [False, True])
def test_pytree_jit_vmap_index_stack(multi):
    if multi:
        logits, mask = _multi_case(13)
        d = D.MaskedMultiCategorical(jnp.asarray(logits), jnp.asarray(mask), NVEC)
    else:
        logits, mask = _case(13, rows=16)
        d = D.MaskedCategorical(jnp.asarray(logits), jnp.asarray(mask))
    a = d.mode()
    lp = jax.jit(lambda dist, act: dist.log_prob(act))(d, a)
    lp_v = jax.vmap(lambda dist, act: dist.log_prob(act))(d, a)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(lp_v), rtol=1e-6, atol=1e-6)
    idx = jnp.asarray([5, 0, 9])
    sub = jax.tree_util.tree_map(lambda x: x[idx], d)
    assert type(sub) is type(d) and sub.logits.shape[0] == 3 and sub.mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(sub.log_prob(a[idx])), np.asarray(lp)[np.asarray(idx)])
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), d, d)
    assert stacked.logits.shape[:2] == (2, 16)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda x: x.entropy())(stacked))[1], np.asarray(d.entropy()),
                               rtol=1e-6)


def test_with_mask():
    lg = jnp.zeros((2, 3))
    mk = jnp.asarray([[True, False, True], [False, True, False]])
    assert isinstance(D.with_mask(D.Categorical(lg), mk), D.MaskedCategorical)
    assert isinstance(D.with_mask(D.MultiCategorical(lg, (1, 2)), mk), D.MaskedMultiCategorical)
    c = D.Categorical(lg)
    assert D.with_mask(c, None) is c
    with pytest.raises(TypeError, match="Discrete or MultiDiscrete"):
        D.with_mask(D.DiagGaussian(lg, lg), mk)


# ---- mask checks (host side) ---------------------------------------------------------------------------------------
def test_check_masks_and_error_message():
    good = np.ones((4, 3, A), bool)
    assert D.check_masks(good) is None
    bad = good.copy()
    bad[2, 1] = False
    bad[3, 0] = False
    assert D.check_masks(bad) == (2, 1)
    with pytest.raises(D.ActionMaskError, match="step 2, sub-env 1"):
        D.raise_if_empty(bad)
    with pytest.raises(D.ActionMaskError, match="step 7, sub-env 1"):
        D.raise_if_empty(bad[2], step=7)
    D.raise_if_empty(good[0], step=0)
    multi = np.ones((5, sum(NVEC)), bool)
    multi[4, 3:7] = False  # sub-action 1 of sub-env 4 has no legal value
    assert D.check_masks(multi, NVEC) == (4,)
    assert D.check_masks(multi) is None  # read as one Discrete it would still have legal actions
    with pytest.raises(ValueError, match="does not match nvec"):
        D.check_masks(multi, (3, 3))


def test_num_legal_and_is_legal():
    mask = jnp.asarray([[True, False, True, True, True], [False, False, True, False, False]])
    np.testing.assert_array_equal(np.asarray(D.num_legal(mask)), [4, 1])
    np.testing.assert_array_equal(np.asarray(D.num_legal(mask, (2, 3))), [1 * 3, 0 * 1])
    np.testing.assert_array_equal(np.asarray(D.is_legal(mask, jnp.asarray([1, 2]))), [False, True])
    np.testing.assert_array_equal(np.asarray(D.is_legal(mask, jnp.asarray([[0, 1], [1, 0]]), (2, 3))),
                                  [True, False])
