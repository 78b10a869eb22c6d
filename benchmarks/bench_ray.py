"""The distributed mode (--ray-workers) against stepping the envs in the trainer's process; prints JSON lines.

    python benchmarks/bench_ray.py            # both cases below, each without Ray and with 1, 2, 4, 8 workers
    python benchmarks/bench_ray.py --tiny     # checks the script

Two cases, each ``ppolab.train`` with the default (cartpole) settings, 8 envs:
- ``ppolab/SlowCartPole-v0``: CartPole whose step waits 2 ms without using the CPU, the kind of env that outgrows
  one process (a simulator elsewhere, a robot). In-process the 8 envs wait one after another (>= 16 ms per step);
  W workers wait side by side. Workers reserve 0 CPUs (``--ray-worker-cpus 0``): they spend their time waiting.
- ``CartPole-v1``: an env that costs ~10 us a step, where the round trip to a worker (~0.2-1 ms) is all overhead:
  the price of the mode for envs too cheap to need it.
SPS excludes the first call (compilation); ``wall_s`` is the whole ``train`` call, Ray's start-up and shut-down
included (a local Ray is started for each run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

from ppolab.config import Config
from ppolab.training import train


def run(cfg: Config) -> dict:
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ppolab-bench-ray-") as d:
        s = train(cfg.replace(run_dir=f"{d}/run")).summary
    later = (cfg.num_iterations - 1) * cfg.batch_size
    return {"ray_workers": cfg.ray_workers, "sps": s["sps"],
            "sps_after_first_call": round(later / max(s["train_loop_s"] - s["first_call_s"], 1e-9), 1),
            "wall_s": round(time.perf_counter() - t0, 2), "train_loop_s": s["train_loop_s"],
            "eval_return_mean": s["eval_return_mean"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--workers", default="0,1,2,4,8", help="comma-separated worker counts (0: no Ray)")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    cases = [("ppolab/SlowCartPole-v0", 8192, 0.0), ("CartPole-v1", 40960, 1.0)]
    if args.tiny:
        cases, workers = [("ppolab/SlowCartPole-v0", 512, 0.0)], [0, 2]
    for env, steps, cpus in cases:
        cfg = Config(env=env, total_timesteps=steps, progress=False, tensorboard=False, checkpoint_every=0,
                     eval_episodes=2, compile_cache="")
        rows = []
        for w in workers:
            if w and cpus and w * cpus > os.cpu_count():
                continue
            rows.append(run(cfg.replace(ray_workers=w, ray_worker_cpus=cpus)))
            print(json.dumps({"bench": "ray", "env": env, "num_envs": cfg.num_envs, **rows[-1]}), flush=True)
        base = rows[0]["sps_after_first_call"]
        print(json.dumps({"bench": "ray", "env": env, "summary": {
            r["ray_workers"]: round(r["sps_after_first_call"] / base, 2) for r in rows},
            "cpu": platform.processor() or platform.machine()}), flush=True)


if __name__ == "__main__":
    main()
