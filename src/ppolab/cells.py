"""LSTM and GRU cells with the episode-start reset built in, and a fast gradient through whole sequences.

One step: ``cell(carry, x [B, F], starts [B]) -> (carry', y)``, the carry reset to zeros where ``starts`` before the
cell reads x. A sequence (``sequence=True``): x [L, B, F] time-major -> (outputs [L, B, H], carries after each
step [L, B, ...]). The gates are those of flax's ``OptimizedLSTMCell`` (i, f, g, o; c' = f c + i g, h' = o tanh c')
and ``GRUCell`` (r, z, n; h' = (1 - z) n + z h, n = tanh(x_n + r (W_hn h + b_hn))), in one input matrix, one
recurrent matrix and biases.

Why not flax's cells in ``nn.scan``: differentiating a scan accumulates the recurrent weights' gradient inside the
backward loop, one [H, G*H] read-modify-write per time step, which dominates the update on a CPU (LSTM 256, 2 x 32
steps: 24 ms forward + backward through flax's cell against 4.7 ms here, measured side by side). Here the input
projection of all steps is one matrix product before the loop, and a custom VJP runs a backward loop that only
carries dh (and dc) and returns the gate gradients of every step, so the weight gradients are single products after
the loop (as cuDNN does). ``tests/test_recurrent.py`` checks the gradients against autodiff of the plain scan.

On the CPU the two time loops (forward, backward) run as C++ custom calls (``cell_kernels.py``) where they can be
built: the same equations and residuals, one call per sequence instead of ~20 XLA kernels a step.

Initial weights (``weight_init``, ``--default-init``): "flax" (flax's cells: input kernels lecun-normal,
recurrent kernels orthogonal, biases 0) or "torch" (``torch.nn.LSTM`` / ``GRU``, the init sb3-contrib's RecurrentPPO
runs with: every weight and each of torch's two bias vectors U(-1/sqrt(H), 1/sqrt(H)); where ppolab's layout keeps
one summed bias, it is drawn as the sum of two such draws). With few inputs the two differ much: lecun-normal scales
the input kernel by 1/sqrt(F), std 0.71 for StatelessCartPole's F = 2, against torch's bound 1/sqrt(64) = 0.125 for
H = 64.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppolab import cell_kernels


def _keep(starts):
    return ~starts[..., None]


# ---- LSTM ----------------------------------------------------------------------------------------------------------
def _lstm_step(wh, carry, z_in, start):
    c, h = carry
    keep = _keep(start)
    c, h = jnp.where(keep, c, 0.0), jnp.where(keep, h, 0.0)
    i, f, g, o = jnp.split(z_in + h @ wh, 4, axis=-1)
    i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    h_new = o * tc
    return (c_new, h_new), (i, f, g, o, c, h, tc)


@jax.custom_vjp
def lstm_sequence(zx, wh, starts, c0, h0):
    """zx [L, B, 4H] (x W_i + b of every step), wh [H, 4H] -> (h [L, B, H], c [L, B, H]) after each step."""
    return _lstm_forward(zx, wh, starts, c0, h0)[0]


def _lstm_forward(zx, wh, starts, c0, h0):
    if cell_kernels.available():
        (hs, cs), res = cell_kernels.lstm_forward(zx, wh, starts, c0, h0)
        return (hs, cs), (res, wh, starts)

    def step(carry, inputs):
        carry, res = _lstm_step(wh, carry, *inputs)
        return carry, (carry[1], carry[0], res)

    _, (hs, cs, res) = jax.lax.scan(step, (c0, h0), (zx, starts))
    return (hs, cs), (res, wh, starts)


def _lstm_backward(saved, grads):
    res, wh, starts = saved
    g_hs, g_cs = grads
    if cell_kernels.available():
        gates, c_prev, h_prev, tc = res
        dz, dwh, dc0, dh0 = cell_kernels.lstm_backward(g_hs, g_cs, gates, c_prev, h_prev, tc, wh, starts)
        return dz, dwh, None, dc0, dh0
    i, f, g, o, c_prev, h_prev, tc = res

    def step(carry, inputs):
        dh_next, dc_next = carry
        g_h, g_c, i, f, g, o, c_prev, tc, start = inputs
        dh = g_h + dh_next
        dc = g_c + dc_next + dh * o * (1.0 - tc * tc)
        dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g),
                              dh * tc * o * (1.0 - o)], axis=-1)
        keep = _keep(start)  # a reset step passes no gradient to the carry before it
        return (jnp.where(keep, dz @ wh.T, 0.0), jnp.where(keep, dc * f, 0.0)), dz

    zeros = jnp.zeros_like(h_prev[0])
    (dh0, dc0), dz = jax.lax.scan(step, (zeros, zeros), (g_hs, g_cs, i, f, g, o, c_prev, tc, starts), reverse=True)
    return dz, jnp.einsum("lbh,lbk->hk", h_prev, dz), None, dc0, dh0


lstm_sequence.defvjp(lambda *a: _lstm_forward(*a), _lstm_backward)


# ---- GRU -----------------------------------------------------------------------------------------------------------
def _gru_step(wh, b_hn, h, zx, start):
    h = jnp.where(_keep(start), h, 0.0)
    H = h.shape[-1]
    zh = h @ wh
    r = jax.nn.sigmoid(zx[..., :H] + zh[..., :H])
    u = jax.nn.sigmoid(zx[..., H:2 * H] + zh[..., H:2 * H])
    hn = zh[..., 2 * H:] + b_hn
    n = jnp.tanh(zx[..., 2 * H:] + r * hn)
    return (1.0 - u) * n + u * h, (r, u, n, hn, h)


@jax.custom_vjp
def gru_sequence(zx, wh, b_hn, starts, h0):
    """zx [L, B, 3H] (x W_i + b_i of every step), wh [H, 3H], b_hn [H] -> h [L, B, H] after each step."""
    return _gru_forward(zx, wh, b_hn, starts, h0)[0]


def _gru_forward(zx, wh, b_hn, starts, h0):
    if cell_kernels.available():
        hs, res = cell_kernels.gru_forward(zx, wh, b_hn, starts, h0)
        return hs, (res, wh, starts)

    def step(h, inputs):
        h, res = _gru_step(wh, b_hn, h, *inputs)
        return h, (h, res)

    _, (hs, res) = jax.lax.scan(step, h0, (zx, starts))
    return hs, (res, wh, starts)


def _gru_backward(saved, g_hs):
    (r, u, n, hn, h_prev), wh, starts = saved
    if cell_kernels.available():
        dzx, dzh, dwh, dh0 = cell_kernels.gru_backward(g_hs, r, u, n, hn, h_prev, wh, starts)
        return dzx, dwh, dzh[..., 2 * h_prev.shape[-1]:].sum((0, 1)), None, dh0

    def step(dh_next, inputs):
        g_h, r, u, n, hn, h_prev, start = inputs
        dh = g_h + dh_next
        dn = dh * (1.0 - u) * (1.0 - n * n)
        dr = dn * hn * r * (1.0 - r)
        du = dh * (h_prev - n) * u * (1.0 - u)
        dzh = jnp.concatenate([dr, du, dn * r], axis=-1)  # d(h W_h + [0, 0, b_hn])
        dzx = jnp.concatenate([dr, du, dn], axis=-1)
        dh_prev = jnp.where(_keep(start), dh * u + dzh @ wh.T, 0.0)
        return dh_prev, (dzx, dzh)

    dh0, (dzx, dzh) = jax.lax.scan(step, jnp.zeros_like(h_prev[0]), (g_hs, r, u, n, hn, h_prev, starts),
                                   reverse=True)
    H = h_prev.shape[-1]
    return dzx, jnp.einsum("lbh,lbk->hk", h_prev, dzh), dzh[..., 2 * H:].sum((0, 1)), None, dh0


gru_sequence.defvjp(lambda *a: _gru_forward(*a), _gru_backward)


# ---- the flax modules ------------------------------------------------------------------------------------------------
def _torch_uniform(H: int, draws: int = 1):
    """torch's cell init: U(-1/sqrt(H), 1/sqrt(H)), summed over ``draws`` independent draws (its two biases)."""
    bound = 1.0 / math.sqrt(H)

    def init(key, shape, dtype=jnp.float32):
        return sum(jax.random.uniform(k, shape, dtype, -bound, bound) for k in jax.random.split(key, draws))
    return init


def _torch_gru_input_bias(H: int):
    """GRU ``bi`` [3H]: b_ir + b_hr, b_iz + b_hz (two draws each), then b_in (one; b_hn is its own parameter)."""
    two, one = _torch_uniform(H, 2), _torch_uniform(H)

    def init(key, shape, dtype=jnp.float32):
        k2, k1 = jax.random.split(key)
        return jnp.concatenate([two(k2, (2 * H,), dtype), one(k1, (H,), dtype)])
    return init


#: ``init`` -> H -> (input kernel, recurrent kernel, LSTM bias ``b``, GRU bias ``bi``, GRU ``b_hn``) initializers.
INITS = {
    "flax": lambda H: (nn.initializers.lecun_normal(), nn.initializers.orthogonal(), nn.initializers.zeros,
                       nn.initializers.zeros, nn.initializers.zeros),
    "torch": lambda H: (_torch_uniform(H), _torch_uniform(H), _torch_uniform(H, 2), _torch_gru_input_bias(H),
                        _torch_uniform(H)),
}


class LSTM(nn.Module):
    """Parameters: ``wi`` [F, 4H], ``wh`` [H, 4H], ``b`` [4H] (gates i, f, g, o). Carry (c, h)."""

    features: int
    weight_init: str = "flax"  # a key of ``INITS`` (not ``init``: flax modules have an ``init`` method)

    def initialize_carry(self, batch_shape):
        zeros = jnp.zeros(tuple(batch_shape) + (self.features,), jnp.float32)
        return zeros, zeros

    @nn.compact
    def weights(self, in_features: int) -> dict:
        H = self.features
        kernel, recurrent, b, _, _ = INITS[self.weight_init](H)
        return {"wi": self.param("wi", kernel, (in_features, 4 * H)), "wh": self.param("wh", recurrent, (H, 4 * H)),
                "b": self.param("b", b, (4 * H,))}

    def __call__(self, carry, x, starts, sequence: bool = False):
        w = self.weights(x.shape[-1])
        if not sequence:
            carry, _ = _lstm_step(w["wh"], carry, x @ w["wi"] + w["b"], starts)
            return carry, carry[1]
        return _lstm_run(w, carry, x, starts)


def _lstm_run(w, carry, x, starts):
    hs, cs = lstm_sequence(x @ w["wi"] + w["b"], w["wh"], starts, *carry)
    return hs, (cs, hs)


class GRU(nn.Module):
    """Parameters: ``wi`` [F, 3H], ``bi`` [3H], ``wh`` [H, 3H], ``b_hn`` [H] (gates r, z, n). Carry h."""

    features: int
    weight_init: str = "flax"  # a key of ``INITS`` (not ``init``: flax modules have an ``init`` method)

    def initialize_carry(self, batch_shape):
        return jnp.zeros(tuple(batch_shape) + (self.features,), jnp.float32)

    @nn.compact
    def weights(self, in_features: int) -> dict:
        H = self.features
        kernel, recurrent, _, bi, b_hn = INITS[self.weight_init](H)
        return {"wi": self.param("wi", kernel, (in_features, 3 * H)), "bi": self.param("bi", bi, (3 * H,)),
                "wh": self.param("wh", recurrent, (H, 3 * H)), "b_hn": self.param("b_hn", b_hn, (H,))}

    def __call__(self, carry, x, starts, sequence: bool = False):
        w = self.weights(x.shape[-1])
        if not sequence:
            h, _ = _gru_step(w["wh"], w["b_hn"], carry, x @ w["wi"] + w["bi"], starts)
            return h, h
        return _gru_run(w, carry, x, starts)


def _gru_run(w, carry, x, starts):
    hs = gru_sequence(x @ w["wi"] + w["bi"], w["wh"], w["b_hn"], starts, carry)
    return hs, hs


_RUN = {LSTM: _lstm_run, GRU: _gru_run}


def can_pair(cells, xs) -> bool:
    """Whether ``paired_sequences`` can run these cells (ppolab's LSTM or GRU, one class and size, inputs alike)."""
    kinds = {type(c) for c in cells}
    return (len(kinds) == 1 and next(iter(kinds)) in _RUN and len({c.features for c in cells}) == 1
            and len({(x.shape, x.dtype) for x in xs}) == 1)


def paired_sequences(cells, carries, xs, starts):
    """``[cell(carry, x, starts, sequence=True) for ...]`` as one vmapped sequence (the actor's and the critic's
    cells): the kernels run the members in parallel (``cell_kernels``), and each member is computed exactly as it
    is alone. Parameters stay each cell's own (the same names and values as unpaired)."""
    stack = lambda *trees: jax.tree_util.tree_map(lambda *a: jnp.stack(a), *trees)
    weights = stack(*[c.weights(x.shape[-1]) for c, x in zip(cells, xs, strict=True)])
    ys, new = jax.vmap(_RUN[type(cells[0])], in_axes=(0, 0, 0, None))(weights, stack(*carries), stack(*xs), starts)
    unstack = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)
    return [(ys[i], unstack(new, i)) for i in range(len(cells))]


@functools.cache
def reference_sequence(kind: str):
    """The same sequence by plain autodiff of a scan of single steps (the tests' reference for the custom VJPs)."""
    def run(cell_params, carry, x, starts):
        cell = {"lstm": LSTM, "gru": GRU}[kind](features=cell_params["wh"].shape[0])

        def step(c, inputs):
            c, y = cell.apply({"params": cell_params}, c, *inputs)
            return c, (y, c)

        _, (ys, carries) = jax.lax.scan(step, carry, (x, starts))
        return ys, carries

    return run
