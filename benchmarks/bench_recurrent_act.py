"""Host acting with a recurrent policy: one step of ``recurrent.NumpyRecurrentPolicy`` (plain numpy) against the
jitted JAX step the host driver would otherwise call (``drivers.host.act_recurrent``, vmapped over agents), for the
shapes the Python-loop driver uses: K agents x B actors, MLP torso 64-64, LSTM / GRU cell.

    python benchmarks/bench_recurrent_act.py [--rnn-size 128] [--repeats 2000]

Both sides compute the same step (action sampling included; the JAX side's output is copied back to numpy, as the
driver needs it). Reported: median microseconds per step, and which the driver's ``--act-backend auto`` picks.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ppolab.assembly import init_population
from ppolab.config import Config, agent_table
from ppolab.drivers.host import act_recurrent
from ppolab.networks import draw_noise
from ppolab.recurrent import NumpyRecurrentPolicy, make_recurrent_network
from ppolab.spaces import ActionSpec, ObsSpec
from ppolab.update import LearnerSpec


def _time(fn, repeats: int) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def one(cell: str, K: int, B: int, rnn_size: int, repeats: int) -> dict:
    cfg = Config(policy=cell, rnn_size=rnn_size, num_envs=B)
    net = make_recurrent_network(cfg, ObsSpec((4,)), ActionSpec("discrete", 2))
    spec = LearnerSpec.from_config(cfg)
    rows = agent_table(cfg.replace(num_seeds=K))
    states = init_population(cfg.replace(num_seeds=K), net, spec, rows)
    policy = NumpyRecurrentPolicy.from_params(net, jax.device_get(states.params))
    obs = np.random.default_rng(0).normal(size=(K, B, 4)).astype(np.float32)
    starts = np.zeros((K, B), bool)
    carry = jax.tree_util.tree_map(np.array, net.initial_carry((K, B)))
    rng = np.random.default_rng(1)

    def numpy_step():
        noise = draw_noise(net.action, rng, (K, B))
        return policy.sample_with_noise(obs, starts, carry, noise)

    act = jax.jit(jax.vmap(functools.partial(act_recurrent, spec, net)))
    keys = jax.random.split(jax.random.PRNGKey(0), K)

    def jax_step():
        action, new_carry = act(states, jnp.asarray(obs), starts, carry, keys)
        return np.asarray(action), jax.tree_util.tree_map(np.asarray, new_carry)

    us_np, us_jax = _time(numpy_step, repeats), _time(jax_step, repeats)
    return {"cell": cell, "K": K, "B": B, "rnn_size": rnn_size, "numpy_us": round(us_np, 1),
            "jax_us": round(us_jax, 1), "jax_over_numpy": round(us_jax / us_np, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rnn-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--out", default="")
    a = p.parse_args()
    rows = [one(cell, K, B, a.rnn_size, a.repeats) for cell in ("lstm", "gru") for K, B in ((1, 8), (1, 64), (8, 8))]
    for r in rows:
        print(json.dumps(r))
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
