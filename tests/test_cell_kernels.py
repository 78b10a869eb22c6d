"""The C++ cell kernels (ppolab/kernels/cells.cc) against the lax.scan loops they replace: values, carries and
gradients of LSTM and GRU sequences with episode starts, at sizes that exercise the register blocks and their tails,
under jax.vmap (the populations' path), and the fallback when they cannot be built."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab import cell_kernels, cells

pytestmark = pytest.mark.skipif(not cell_kernels.available(), reason="the C++ cell kernels could not be built here")


def _inputs(kind, L, B, F, H, seed=0, scale=3.0):
    """Inputs large enough to saturate the gates (scale), starts at episode boundaries inside the sequence."""
    ks = jax.random.split(jax.random.PRNGKey(seed), 6)
    cell = {"lstm": cells.LSTM, "gru": cells.GRU}[kind](features=H)
    x = scale * jax.random.normal(ks[0], (L, B, F))
    starts = jax.random.bernoulli(ks[1], 0.15, (L, B)).at[0].set(True)
    params = cell.init(ks[2], cell.initialize_carry((B,)), x, starts, sequence=True)["params"]
    params = jax.tree.map(lambda p, k: p + 0.2 * jax.random.normal(k, p.shape), params,
                          dict(zip(params, jax.random.split(ks[3], len(params)), strict=True)))
    carry = jax.tree.map(lambda c, k: jax.random.normal(k, c.shape), cell.initialize_carry((B,)),
                         tuple(jax.random.split(ks[4], 2)) if kind == "lstm" else ks[4])
    weights = jax.random.normal(ks[5], (L, B, H))  # a loss that weights every output differently
    return cell, params, carry, x, starts, weights


def _run(kind, use_kernels, monkeypatch, *args):
    """(outputs, carries) and the gradients of a weighted loss w.r.t. parameters, x and the initial carry."""
    monkeypatch.setattr(cell_kernels, "available", lambda: use_kernels)
    cell, params, carry, x, starts, weights = args

    def loss(params, carry, x):
        ys, carries = cell.apply({"params": params}, carry, x, starts, sequence=True)
        last = jax.tree.leaves(carries)
        return jnp.sum(weights * jnp.tanh(ys)) + sum(jnp.sum(jnp.sin(c)) for c in last), (ys, carries)

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(params, carry, x)
    return out, grads


def _close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("L,B,F,H", [(32, 8, 2, 64), (7, 3, 5, 5), (5, 9, 4, 24)])
def test_kernels_equal_the_scans_values_and_gradients(kind, L, B, F, H, monkeypatch):
    """(32, 8, 2, 64): the benchmark's shape (blocks of 4 rows x 16 columns, no tail); (7, 3, 5, 5): every column
    and row in a tail; (5, 9, 4, 24): both. Fails if a kernel drops a reset, misplaces a gate or a residual."""
    args = _inputs(kind, L, B, F, H)
    out_k, grads_k = _run(kind, True, monkeypatch, *args)
    out_s, grads_s = _run(kind, False, monkeypatch, *args)
    _close(out_k, out_s, rtol=2e-6, atol=2e-6)
    _close(grads_k, grads_s, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_kernels_under_vmap_equal_each_member_alone(kind, monkeypatch):
    """Two nested vmaps (seeds x settings, as populations run) over parameters and inputs: each member equals its
    own unbatched call, forward and backward (fails if the kernels read one member's weights for all)."""
    monkeypatch.setattr(cell_kernels, "available", lambda: True)
    members = [_inputs(kind, 6, 4, 3, 16, seed=s) for s in range(4)]
    cell, starts = members[0][0], members[0][4]

    def loss(params, carry, x):
        ys, _ = cell.apply({"params": params}, carry, x, starts, sequence=True)
        return jnp.sum(jnp.tanh(ys) * jnp.arange(ys.size).reshape(ys.shape) / ys.size)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
    stack = lambda i: jax.tree.map(lambda *m: jnp.stack(m).reshape(2, 2, *m[0].shape), *[m[i] for m in members])
    batched = jax.jit(jax.vmap(jax.vmap(grad)))(stack(1), stack(2), stack(3))
    for s, m in enumerate(members):
        alone = jax.jit(grad)(m[1], m[2], m[3])
        member = jax.tree.map(lambda b, s=s: b[s // 2, s % 2], batched)
        _close(member, alone, rtol=1e-6, atol=1e-6)


def test_kernels_off_by_environment_variable(monkeypatch):
    monkeypatch.setenv("PPOLAB_CELL_KERNELS", "0")
    assert cell_kernels.available.__wrapped__() is False


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    """No compiler: a warning naming the failure, and available() False (so the scans run), never an error."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.warns(UserWarning, match="no-such-compiler"):
        assert cell_kernels.available.__wrapped__() is False
    assert not list(tmp_path.rglob("*.so"))  # no partial library left behind
