"""XLA:CPU's Nature-CNN gradient inside a loop body against outside one (why ``update._unroll_epochs`` exists).

    python benchmarks/bench_conv_loop.py [--batch 256] [--steps 4]

Times, per minibatch of ``--batch`` 84x84x4 uint8 frames: the forward pass, the gradient of a scalar loss jitted
alone, ``--steps`` gradient steps in a ``lax.scan`` and the same scan unrolled; forward passes in a scan and
unrolled. Prints one JSON line (milliseconds per minibatch, first call of each excluded).
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp


class NatureCNN(nn.Module):
    actions: int = 4

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32) / 255.0
        for f, k, s in ((32, 8, 4), (64, 4, 2), (64, 3, 1)):
            x = nn.relu(nn.Conv(f, (k, k), (s, s), padding="VALID")(x))
        x = nn.relu(nn.Dense(512)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.actions)(x)


def _ms(f, *args, repeats: int = 2) -> float:
    jax.block_until_ready(f(*args))
    t = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(*args))
    return (time.perf_counter() - t) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args()
    m = NatureCNN()
    x = jnp.zeros((a.batch, 84, 84, 4), jnp.uint8)
    xs = jnp.zeros((a.steps,) + x.shape, jnp.uint8)
    params = m.init(jax.random.PRNGKey(0), x)
    loss = lambda p, x: jnp.sum(m.apply(p, x) ** 2)

    def sgd(p, xs, unroll):
        def body(p, x):
            g = jax.grad(loss)(p, x)
            return jax.tree_util.tree_map(lambda w, d: w - 1e-6 * d, p, g), None
        return jax.lax.scan(body, p, xs, unroll=unroll)[0]

    def forward(p, xs, unroll):
        return jax.lax.scan(lambda c, x: (c, m.apply(p, x)), None, xs, unroll=unroll)[1]

    n = a.steps
    out = {"backend": jax.default_backend(), "batch": a.batch, "steps": n,
           "forward_ms": _ms(jax.jit(m.apply), params, x),
           "grad_ms": _ms(jax.jit(jax.grad(loss)), params, x),
           "grad_in_scan_ms": _ms(jax.jit(lambda p, xs: sgd(p, xs, 1)), params, xs) / n,
           "grad_unrolled_ms": _ms(jax.jit(lambda p, xs: sgd(p, xs, True)), params, xs) / n,
           "forward_in_scan_ms": _ms(jax.jit(lambda p, xs: forward(p, xs, 1)), params, xs) / n,
           "forward_unrolled_ms": _ms(jax.jit(lambda p, xs: forward(p, xs, True)), params, xs) / n}
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
