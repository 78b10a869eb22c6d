"""Brax on thousands of parallel envs (GPU): raw env steps/s and fully jitted PPO steps/s; prints one JSON line.

    python benchmarks/bench_brax.py                                  # GPU: the brax preset (ant, 4096 envs x 80)
    python benchmarks/bench_brax.py --env hopper --backend generalized
    python benchmarks/bench_brax.py --tiny                           # CPU: a few envs, checks the script

The PPO settings are the ``brax`` preset's (Brax's own notebook settings); flags override its sizes.

raw: a ``lax.scan`` of vmapped ``BraxEnv.step`` calls with random actions (auto-reset included, no policy).
train: the ``JitDriver`` (rollout + PPO update fused, ``iterations`` iterations in one call), timed after compiling.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp

from ppolab.assembly import env_seeds, init_population, make_driver
from ppolab.config import Config, agent_table, apply_preset, validate
from ppolab.drivers import jit as J
from ppolab.envs.brax_env import BraxEnv


def _raw_rollout(env, num_steps, actors, key):
    def one(actors, k):
        a = jax.random.uniform(k, (actors.obs.shape[0], env.action_spec.size), minval=-1.0, maxval=1.0)
        keys = jax.random.split(jax.random.fold_in(k, 1), actors.obs.shape[0])
        obs, env_state, *_ = jax.vmap(env.step)(keys, actors.env_state, a)
        return actors.replace(env_state=env_state, obs=obs), None

    actors, _ = jax.lax.scan(one, actors, jax.random.split(key, num_steps))
    return actors


def raw_sps(env: BraxEnv, num_envs: int, num_steps: int, reps: int):
    actors = jax.jit(functools.partial(J.reset_actors, env, num_envs))(jax.random.PRNGKey(0))
    run = jax.jit(functools.partial(_raw_rollout, env, num_steps))
    t = time.perf_counter()
    actors = jax.block_until_ready(run(actors, jax.random.PRNGKey(1)))
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(reps):
        actors = run(actors, jax.random.PRNGKey(2 + i))
    jax.block_until_ready(actors)
    return num_envs * num_steps * reps / (time.perf_counter() - t), compile_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with a handful of envs")
    ap.add_argument("--preset", default="brax")
    ap.add_argument("--env", default=None, help="Brax env name (default: the preset's)")
    ap.add_argument("--backend", default=None, help="default: the preset's")
    ap.add_argument("--num-envs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--num-steps", type=int, default=None, help="default: the preset's")
    ap.add_argument("--num-minibatches", type=int, default=None, help="default: the preset's")
    ap.add_argument("--iterations", type=int, default=4, help="iterations per timed call (after compiling)")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--raw-steps", type=int, default=1000, help="steps per env of the random-action loop")
    args = ap.parse_args()
    given = dict(env=args.env and f"brax:{args.env}", brax_backend=args.backend, num_envs=args.num_envs,
                 num_steps=args.num_steps, num_minibatches=args.num_minibatches)
    sizes = {k: v for k, v in given.items() if v is not None}
    if args.tiny:
        sizes.update(num_envs=4, num_steps=4, num_minibatches=2, num_epochs=1, hidden_sizes=(32, 32))
        args.iterations, args.calls, args.raw_steps = 2, 1, 4
    cfg = apply_preset(Config(preset=args.preset), {"eval_episodes": 0, "progress": False, "tensorboard": False,
                                                    "iterations_per_call": args.iterations, **sizes})
    cfg = validate(cfg.replace(total_timesteps=cfg.batch_size * args.iterations * (args.calls + 1)))
    steps = cfg.batch_size * args.iterations * args.calls
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    raw, raw_compile_s = raw_sps(driver.env, cfg.num_envs, args.raw_steps, 1 if args.tiny else 3)
    state = init_population(cfg, net, spec, rows)
    driver.start(env_seeds(rows, cfg.num_envs, 0))
    t = time.perf_counter()
    state, _, _ = driver.run(state, args.iterations)
    jax.block_until_ready(state)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.calls):
        state, _, episodes = driver.run(state, args.iterations)
    jax.block_until_ready(state)
    dt = time.perf_counter() - t
    rets = [e[2] for it in episodes for e in it]
    print(json.dumps({"bench": "brax", "env": cfg.env, "backend": cfg.brax_backend, "preset": args.preset,
                      "num_envs": cfg.num_envs, "num_steps": cfg.num_steps, "num_epochs": cfg.num_epochs,
                      "num_minibatches": cfg.num_minibatches, "hidden_sizes": list(cfg.hidden_sizes),
                      "iterations_per_call": args.iterations, "timed_steps": steps,
                      "raw_sps": round(raw, 1), "raw_compile_s": round(raw_compile_s, 3),
                      "first_call_s": round(first_s, 3), "train_sps": round(steps / dt, 1),
                      "train_over_raw": round(steps / dt / raw, 3),
                      "last_returns_mean": float(jnp.mean(jnp.asarray(rets))) if rets else None,
                      "device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
                      "jax": jax.__version__}))


if __name__ == "__main__":
    main()
