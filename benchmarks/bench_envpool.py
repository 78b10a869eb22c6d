"""envpool Hopper-v4 with 8 envs: raw envpool steps/s vs ppolab's adapter vs PPO training; prints one JSON line.

    python benchmarks/bench_envpool.py           # 20k raw steps, 100k training steps
    python benchmarks/bench_envpool.py --tiny    # checks the script

raw: ``pool.step`` with pre-generated random actions (no policy, no autoreset handling). adapter:
``EnvpoolVecEnv.step`` with the same actions (reordering, partial resets of finished envs, episode bookkeeping).
train: ``ppolab train`` on envpool:Hopper-v4, 8 actors x 256 steps, 10 epochs x 32 minibatches (SPS of the loop).
interleaved: the same training, one iteration (``HostDriver.run``: collect 2048 steps + update) at a time, each
followed by 256 raw ``pool.step`` calls (2048 steps) on a second pool: per-iteration ratios side by side, so that the
VM's slow and fast spells (here a pool step takes 250-520 us from one second to the next) hit both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np

from ppolab.assembly import env_seeds, init_population, make_driver
from ppolab.config import Config, agent_table, apply_preset, validate
from ppolab.envs.envpool_vec import EnvpoolVecEnv, import_envpool
from ppolab.training import train


def raw_sps(task: str, num_envs: int, steps: int, threads: int) -> float:
    envpool = import_envpool()
    pool = envpool.make_gymnasium(task, num_envs=num_envs, batch_size=num_envs, num_threads=threads, seed=0)
    d = pool.action_space.shape[0]
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, num_envs, d)).astype(np.float32)
    pool.reset()
    t = time.perf_counter()
    for a in actions:
        pool.step(a)
    dt = time.perf_counter() - t
    pool.close()
    return steps * num_envs / dt


def adapter_sps(task: str, num_envs: int, steps: int) -> float:
    env = EnvpoolVecEnv(task, 1, num_envs)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 1, num_envs, env.action_spec.size)).astype(np.float32)
    env.reset(0)
    t = time.perf_counter()
    for a in actions:
        env.step(a)
    dt = time.perf_counter() - t
    threads = env.num_threads
    env.close()
    return steps * num_envs / dt, threads


def interleaved(cfg: Config, iterations: int) -> dict:
    """Training iterations alternated with raw pool steps of the same count; per-iteration ratios raw / train."""
    envpool = import_envpool()
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    state = init_population(cfg, net, spec, rows)
    driver.start(env_seeds(rows, cfg.num_envs, 0))
    state, _, _ = driver.run(state, 1)  # compiles
    jax.block_until_ready(state)
    task = cfg.env.split(":", 1)[1]
    pool = envpool.make_gymnasium(task, num_envs=cfg.num_envs, batch_size=cfg.num_envs,
                                  num_threads=driver.env.num_threads, seed=1)
    pool.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (cfg.num_steps, cfg.num_envs, pool.action_space.shape[0]))
    actions = actions.astype(np.float32)
    raw_t, train_t = [], []
    for _ in range(iterations):
        t = time.perf_counter()
        for a in actions:
            pool.step(a)
        raw_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        state, _, _ = driver.run(state, 1)
        jax.block_until_ready(state)
        train_t.append(time.perf_counter() - t)
    pool.close()
    driver.close()
    ratios = [r / t for r, t in zip(raw_t, train_t, strict=True)]
    q = np.percentile(ratios, [25, 50, 75])
    return {"iterations": iterations, "median_ratio": round(float(q[1]), 4),
            "ratio_quartiles": [round(float(x), 4) for x in q], "total_ratio": round(sum(raw_t) / sum(train_t), 4),
            "raw_sps_median": round(cfg.batch_size / statistics.median(raw_t), 1),
            "train_sps_median": round(cfg.batch_size / statistics.median(train_t), 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--task", default="Hopper-v4")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--raw-steps", type=int, default=2500, help="pool steps (each steps every env)")
    ap.add_argument("--train-steps", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternated raw / adapter measurements")
    ap.add_argument("--interleaved-iterations", type=int, default=40,
                    help="training iterations alternated with raw pool steps (0 skips this measurement)")
    args = ap.parse_args()
    raw_steps = 50 if args.tiny else args.raw_steps
    # alternated, fresh pools each round, medians: the first pool of a process runs slower than later ones here
    raws, adapters = [], []
    for _ in range(1 if args.tiny else args.rounds):
        adapter, threads = adapter_sps(args.task, args.num_envs, raw_steps)
        adapters.append(adapter)
        raws.append(raw_sps(args.task, args.num_envs, raw_steps, threads))
    raw, adapter = statistics.median(raws), statistics.median(adapters)
    cfg = Config(env=f"envpool:{args.task}", preset="ppo2-mujoco", num_envs=args.num_envs, num_steps=256,
                 total_timesteps=args.num_envs * 256 * 2 if args.tiny else args.train_steps, progress=False,
                 tensorboard=False, checkpoint_every=0, eval_episodes=1 if args.tiny else 5)
    explicit = {k: getattr(cfg, k) for k in ("env", "num_envs", "num_steps", "total_timesteps", "progress",
                                             "tensorboard", "checkpoint_every", "eval_episodes")}
    side_by_side = None
    if args.interleaved_iterations > 0:
        side_by_side = interleaved(validate(apply_preset(cfg, explicit)),
                                   2 if args.tiny else args.interleaved_iterations)
    with tempfile.TemporaryDirectory(prefix="ppolab-bench-envpool-") as d:
        s = train(cfg.replace(run_dir=f"{d}/run"), explicit=explicit).summary
    print(json.dumps({"bench": "envpool", "task": args.task, "num_envs": args.num_envs, "threads": threads,
                      "raw_sps": round(raw, 1), "adapter_sps": round(adapter, 1),
                      "raw_sps_rounds": [round(x) for x in raws], "adapter_sps_rounds": [round(x) for x in adapters],
                      "adapter_over_raw": adapter / raw, "train_sps": s["sps"],
                      "train_sps_after_first_call": round((s["total_timesteps"] - cfg.batch_size) / max(
                          s["train_loop_s"] - s["first_call_s"], 1e-9), 1),
                      "train_over_raw": (s["total_timesteps"] - cfg.batch_size) / max(
                          s["train_loop_s"] - s["first_call_s"], 1e-9) / raw,
                      "train_timesteps": s["total_timesteps"], "eval_return_mean": s["eval_return_mean"],
                      "interleaved": side_by_side}))


if __name__ == "__main__":
    main()
