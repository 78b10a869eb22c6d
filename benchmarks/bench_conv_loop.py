"""XLA:CPU's Nature-CNN gradient inside a loop body against outside one (why ``update._unroll_epochs`` exists);
the network is ppolab's own paper-atari one.

    python benchmarks/bench_conv_loop.py [--batch 256] [--steps 4]

Times, per minibatch of ``--batch`` 84x84x4 uint8 frames: the forward pass, the gradient of a scalar loss jitted
alone, ``--steps`` gradient steps in a ``lax.scan`` and the same scan unrolled; forward passes in a scan and
unrolled. Prints one JSON line (milliseconds per minibatch, first call of each excluded).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from ppolab.config import Config, apply_preset
from ppolab.networks import make_network
from ppolab.spaces import ActionSpec, ObsSpec


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
    # ppolab's own paper-atari network (shared Nature CNN, policy and value heads)
    net = make_network(apply_preset(Config(preset="paper-atari")), ObsSpec((84, 84, 4), "uint8"),
                       ActionSpec("discrete", 4))
    x = jnp.zeros((a.batch, 84, 84, 4), jnp.uint8)
    xs = jnp.zeros((a.steps,) + x.shape, jnp.uint8)
    params = net.init_params(jax.random.PRNGKey(0))

    def forward_one(p, x):
        dist, value = net.apply(p, x)
        return dist.logits, value

    def loss(p, x):
        logits, value = forward_one(p, x)
        return jnp.sum(logits ** 2) + jnp.sum(value ** 2)

    def sgd(p, xs, unroll):
        def body(p, x):
            g = jax.grad(loss)(p, x)
            return jax.tree_util.tree_map(lambda w, d: w - 1e-6 * d, p, g), None
        return jax.lax.scan(body, p, xs, unroll=unroll)[0]

    def forward(p, xs, unroll):
        return jax.lax.scan(lambda c, x: (c, forward_one(p, x)), None, xs, unroll=unroll)[1]

    n = a.steps
    out = {"backend": jax.default_backend(), "batch": a.batch, "steps": n,
           "forward_ms": _ms(jax.jit(forward_one), params, x),
           "grad_ms": _ms(jax.jit(jax.grad(loss)), params, x),
           "grad_in_scan_ms": _ms(jax.jit(lambda p, xs: sgd(p, xs, 1)), params, xs) / n,
           "grad_unrolled_ms": _ms(jax.jit(lambda p, xs: sgd(p, xs, True)), params, xs) / n,
           "forward_in_scan_ms": _ms(jax.jit(lambda p, xs: forward(p, xs, 1)), params, xs) / n,
           "forward_unrolled_ms": _ms(jax.jit(lambda p, xs: forward(p, xs, True)), params, xs) / n}
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
