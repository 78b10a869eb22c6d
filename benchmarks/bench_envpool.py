"""envpool Hopper-v4 with 8 envs: raw envpool steps/s vs ppolab's adapter vs PPO training; prints one JSON line.

    python benchmarks/bench_envpool.py           # 20k raw steps, 100k training steps
    python benchmarks/bench_envpool.py --tiny    # checks the script

raw: ``pool.step`` with pre-generated random actions (no policy, no autoreset handling). adapter:
``EnvpoolVecEnv.step`` with the same actions (reordering, partial resets of finished envs, episode bookkeeping).
train: ``ppolab train`` on envpool:Hopper-v4, 8 actors x 256 steps, 10 epochs x 32 minibatches (SPS of the loop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np

from ppolab.config import Config
from ppolab.envs.envpool_vec import EnvpoolVecEnv, import_envpool
from ppolab.train import train


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--task", default="Hopper-v4")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--raw-steps", type=int, default=2500, help="pool steps (each steps every env)")
    ap.add_argument("--train-steps", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3, help="alternated raw / adapter measurements")
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
    with tempfile.TemporaryDirectory(prefix="ppolab-bench-envpool-") as d:
        s = train(cfg.replace(run_dir=f"{d}/run"), explicit={k: getattr(cfg, k) for k in (
            "env", "num_envs", "num_steps", "total_timesteps", "progress", "tensorboard", "checkpoint_every",
            "eval_episodes")}).summary
    print(json.dumps({"bench": "envpool", "task": args.task, "num_envs": args.num_envs, "threads": threads,
                      "raw_sps": round(raw, 1), "adapter_sps": round(adapter, 1),
                      "raw_sps_rounds": [round(x) for x in raws], "adapter_sps_rounds": [round(x) for x in adapters],
                      "adapter_over_raw": adapter / raw, "train_sps": s["sps"],
                      "train_sps_after_first_call": round((s["total_timesteps"] - cfg.batch_size) / max(
                          s["train_loop_s"] - s["first_call_s"], 1e-9), 1),
                      "train_over_raw": (s["total_timesteps"] - cfg.batch_size) / max(
                          s["train_loop_s"] - s["first_call_s"], 1e-9) / raw,
                      "train_timesteps": s["total_timesteps"], "eval_return_mean": s["eval_return_mean"]}))


if __name__ == "__main__":
    main()
