"""Fully jitted PPO on gymnax CartPole-v1 in PureJaxRL's setting; prints one JSON line.

    python benchmarks/bench_gymnax.py            # 500k steps, 4 envs x 128 steps, 4 epochs x 4 minibatches
    python benchmarks/bench_gymnax.py --tiny     # a few thousand steps: checks the script, times nothing useful

Measures: trace and compile time of the fused program on a cold persistent cache and again from the cache (fresh
in-memory caches), steps per second of training after compilation, wall time and steps until the mean training
return of the episodes finished in a chunk reaches 475, the achieved FLOP/s (network FLOPs per iteration from XLA's
cost analysis of the pieces, see ``model_flops_per_iteration``) against a large float32 matmul timed in the same
process, and the final deterministic evaluation return.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from ppolab.assembly import env_seeds, init_population, make_driver
from ppolab.config import Config, agent_table
from ppolab.drivers import jit as J
from ppolab.training import enable_compilation_cache

# PureJaxRL's CartPole PPO (purejaxrl/ppo.py): lr 2.5e-4 annealed, gamma 0.99, lambda 0.95, eps 0.2 (also the value
# clip), c1 0.5, c2 0.01, grad-norm 0.5, 64-64 tanh separate actor/critic, per-minibatch advantage normalization.
PUREJAXRL = dict(env="gymnax:CartPole-v1", total_timesteps=500_000, num_envs=4, num_steps=128, num_epochs=4,
                 num_minibatches=4, learning_rate=2.5e-4, anneal_lr=True, clip_eps=0.2, anneal_clip=False,
                 gamma=0.99, gae_lambda=0.95, vf_coef=0.5, ent_coef=0.01, vf_clip=0.2, max_grad_norm=0.5,
                 adam_eps=1e-5, hidden_sizes=(64, 64), activation="tanh", norm_adv=True, progress=False,
                 tensorboard=False)


def matmul_flops(n: int = 2048, reps: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul on the default device (best of ``reps``)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def model_flops_per_iteration(cfg: Config, driver, state) -> float:
    """FLOPs of one iteration from XLA's cost analysis of its pieces (XLA counts a loop body once, not per trip):
    acting (N forward passes), the old policy and the bootstrap values (N + N + B forwards), the KL after the update
    (N forwards) and epochs x minibatches gradient steps. Environment dynamics are not counted."""
    from ppolab.types import Batch
    from ppolab.update import loss_fn

    net, spec = driver.net, driver.spec
    s0 = jax.tree_util.tree_map(lambda x: x[0], state)
    N, mb = cfg.batch_size, cfg.minibatch_size
    obs = jnp.zeros((N,) + net.obs.shape, jnp.float32)
    fwd = _xla_flops(lambda p, x: net.apply(p, x), s0.params, obs) / N
    dist, values = net.apply(s0.params, obs[:mb])
    actions = jnp.zeros((mb,) + net.action.shape, net.action.dtype)
    batch = Batch(obs=obs[:mb], actions=actions, old_log_prob=dist.log_prob(actions), old_dist=dist,
                  old_values=values, advantages=jnp.ones((mb,)), targets=jnp.ones((mb,)))
    grad = _xla_flops(lambda p, b: jax.value_and_grad(loss_fn, has_aux=True)(
        p, spec, net, b, 0.2, 1.0, s0.hparams), s0.params, batch)
    return fwd * (4 * N + cfg.num_envs) + grad * cfg.num_epochs * cfg.num_minibatches


def lower_compile(driver, state, chunk):
    args = (driver.env, driver.spec, driver.net, driver.T, chunk, state, driver.actors, jnp.asarray(chunk, jnp.int32))
    t0 = time.perf_counter()
    lowered = J._run_chunk_jit.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny budget (checks the script)")
    ap.add_argument("--total-timesteps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunks", type=int, default=50, help="host calls over the run (return checked after each)")
    args = ap.parse_args()
    cfg = Config(**PUREJAXRL, seed=args.seed)
    if args.tiny:
        cfg = cfg.replace(total_timesteps=4 * 512)
    if args.total_timesteps:
        cfg = cfg.replace(total_timesteps=args.total_timesteps)
    n_it = cfg.num_iterations
    chunk = max(1, n_it // args.chunks)
    cfg = cfg.replace(iterations_per_call=chunk)

    cache_dir = tempfile.mkdtemp(prefix="ppolab-bench-cache-")
    os.environ["PPOLAB_CACHE_DIR"] = cache_dir
    enable_compilation_cache(cache_dir)
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    state = init_population(cfg, net, spec, rows)
    driver.start(env_seeds(rows, cfg.num_envs, 0))

    compiled, trace_s, compile_s = lower_compile(driver, state, chunk)

    jax.clear_caches()  # in-memory caches gone: the second compile can only come from the persistent cache
    _, trace2_s, compile2_s = lower_compile(driver, state, chunk)

    # training, timed after compilation
    jax.block_until_ready(compiled(state, driver.actors, jnp.asarray(0, jnp.int32)))  # warm-up call (n=0)
    it, t_solve, steps_solve = 0, None, None
    t0 = time.perf_counter()
    calls = 0
    while it < n_it:
        n = min(chunk, n_it - it)
        state, driver.actors, _, episodes = compiled(state, driver.actors, jnp.asarray(n, jnp.int32))
        count, ret_sum = jax.device_get((episodes.count, episodes.return_sum))  # slice on the host: slicing the
        count, ret_sum = count[:n], ret_sum[:n]  # device arrays with a new n would compile an op (~40 ms)
        it += n
        calls += 1
        if t_solve is None and count.sum() > 0 and ret_sum.sum() / count.sum() >= 475:
            t_solve, steps_solve = time.perf_counter() - t0, it * cfg.batch_size
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0
    steps = n_it * cfg.batch_size
    peak = matmul_flops()
    flops = model_flops_per_iteration(cfg, driver, state) * n_it * len(rows)
    eval_ret = driver.evaluate(state, 10, True, seed=12345)
    out = {
        "bench": "gymnax", "env": cfg.env, "setting": "purejaxrl 4x128, 4 epochs x 4 minibatches",
        "total_timesteps": steps, "iterations": n_it, "iterations_per_call": chunk, "calls": calls,
        "trace_s": round(trace_s, 3), "compile_s": round(compile_s, 3),
        "trace_cached_s": round(trace2_s, 3), "compile_cached_s": round(compile2_s, 3),
        "train_s": round(train_s, 3), "sps": round(steps / train_s, 1),
        "time_to_475_s": None if t_solve is None else round(t_solve, 3), "steps_to_475": steps_solve,
        "model_flops": flops, "achieved_flops": flops / train_s, "matmul_flops": peak,
        "flops_fraction_of_matmul": flops / train_s / peak,
        "eval_return_mean": float(np.mean(eval_ret)),
        "device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "cpu": platform.processor(),
        "jax": jax.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
