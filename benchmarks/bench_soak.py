"""Soak test: a long run with frequent checkpoints, watching memory and checkpoint cost.

    python benchmarks/bench_soak.py                      # the full soak: 5M steps gymnax:CartPole-v1, 1M CartPole-v1
    python benchmarks/bench_soak.py --tiny               # a few seconds per env, to check that the script works
    python benchmarks/bench_soak.py --env CartPole-v1 --steps 1000000 --checkpoint-every-s 5

For each env, training runs in this process (the main thread, as ``ppolab train`` does) while a background thread
samples the resident set size every ``--sample-s`` seconds. Written to ``--out`` (default benchmarks/results/soak):

* ``soak-ENV-rss.csv``   time_s, rss_mb, peak_rss_mb, checkpoints (the RSS curve over the run)
* ``soak-ENV-ckpt.csv``  iteration, write_s, bytes, rss_mb (every checkpoint: wall time of the atomic write, size)
* ``soak-ENV.json``      summary: steps, wall time, SPS, RSS at start / after warm-up / end, peak (getrusage), the
                         RSS growth after warm-up (MB per million steps: ~0 means no leak), checkpoint write time
                         (mean / p95 / max) and size
* the run directory itself (metrics.csv, TensorBoard, checkpoints) under ``--out/runs``.

Each env runs in a fresh process (its own RSS curve); the RSS growth is fitted over the last 75% of the run.

Checkpoints are written every ``--checkpoint-every-s`` seconds (Config.checkpoint_every_s; the iteration-based
ones are off) and at the end; ``--keep-checkpoints`` of them are kept. Numbers depend on the machine and on whatever
else runs on it: run it on an idle machine and report the hardware with the numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

FULL = [("gymnax:CartPole-v1", 5_000_000), ("CartPole-v1", 1_000_000)]
TINY = [("gymnax:CartPole-v1", 20_000), ("CartPole-v1", 4_000)]


class RssSampler(threading.Thread):
    def __init__(self, period: float):
        super().__init__(daemon=True)
        self.period, self.proc, self.t0 = period, psutil.Process(), time.perf_counter()
        self.samples: list[tuple[float, float, float, int]] = []
        self.checkpoints = 0
        self._halt = threading.Event()

    def sample(self):
        rss = self.proc.memory_info().rss / 2**20
        peak = max([rss] + [s[2] for s in self.samples[-1:]])
        self.samples.append((time.perf_counter() - self.t0, rss, peak, self.checkpoints))

    def run(self):
        while not self._halt.wait(self.period):
            self.sample()

    def stop(self):
        self._halt.set()
        self.join()
        self.sample()


def soak(env: str, steps: int, args, out: Path) -> dict:
    from ppolab import checkpoint as ckpt_lib
    from ppolab.config import Config
    from ppolab.training import train

    tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
    run_dir = out / "runs" / tag
    cfg = Config(env=env, total_timesteps=steps, run_dir=str(run_dir), overwrite=True, progress=False,
                 tensorboard=not args.no_tensorboard, eval_episodes=args.eval_episodes, checkpoint_every=0,
                 checkpoint_every_s=args.checkpoint_every_s, keep_checkpoints=args.keep_checkpoints,
                 seed=args.seed)
    sampler = RssSampler(args.sample_s)
    writes: list[tuple[int, float, int, float]] = []
    real_save = ckpt_lib.save

    def timed_save(ckpt_dir, iteration, tree, header, keep=3, **kw):
        path, seconds, size = real_save(ckpt_dir, iteration, tree, header, keep=keep, **kw)
        sampler.checkpoints += 1
        writes.append((int(iteration), seconds, size, sampler.proc.memory_info().rss / 2**20))
        return path, seconds, size

    sampler.sample()
    sampler.start()
    ckpt_lib.save = timed_save  # the train loop calls ckpt_lib.save: time every write
    t0 = time.perf_counter()
    try:
        result = train(cfg)
    finally:
        ckpt_lib.save = real_save
        sampler.stop()
    wall = time.perf_counter() - t0

    with open(out / f"soak-{tag}-rss.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "rss_mb", "peak_rss_mb", "checkpoints"])
        w.writerows([(round(t, 3), round(r, 2), round(p, 2), c) for t, r, p, c in sampler.samples])
    with open(out / f"soak-{tag}-ckpt.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "write_s", "bytes", "rss_mb"])
        w.writerows([(i, round(s, 5), b, round(r, 2)) for i, s, b, r in writes])

    t = np.array([s[0] for s in sampler.samples])
    rss = np.array([s[1] for s in sampler.samples])
    warm = t >= t[0] + 0.25 * (t[-1] - t[0])  # after compilation and the first checkpoints
    slope = float(np.polyfit(t[warm], rss[warm], 1)[0]) if warm.sum() >= 3 else float("nan")  # MB / s
    sps = result.summary.get("sps") or steps / wall
    wt = np.array([s for _, s, _, _ in writes]) if writes else np.array([np.nan])
    summary = {
        "env": env, "steps": steps, "wall_s": round(wall, 2), "sps": sps,
        "rss_start_mb": round(float(rss[0]), 1), "rss_after_warmup_mb": round(float(rss[warm][0]), 1),
        "rss_end_mb": round(float(rss[-1]), 1), "peak_rss_sampled_mb": round(float(rss.max()), 1),
        "peak_rss_getrusage_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_growth_mb_per_million_steps": round(slope / max(sps, 1e-9) * 1e6, 3),
        "checkpoints": len(writes), "checkpoint_write_s_mean": round(float(np.mean(wt)), 5),
        "checkpoint_write_s_p95": round(float(np.percentile(wt, 95)), 5),
        "checkpoint_write_s_max": round(float(np.max(wt)), 5),
        "checkpoint_bytes": writes[-1][2] if writes else None,
        "run_dir": str(run_dir),
    }
    (out / f"soak-{tag}.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", action="append", help="env id (repeatable); default: the full soak list")
    p.add_argument("--steps", type=int, help="environment steps per env (default: 5M gymnax, 1M Gymnasium)")
    p.add_argument("--tiny", action="store_true", help="a few seconds per env (smoke test of this script)")
    p.add_argument("--checkpoint-every-s", type=float, default=3.0)
    p.add_argument("--keep-checkpoints", type=int, default=3)
    p.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling period")
    p.add_argument("--eval-episodes", type=int, default=0)
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/soak")
    args = p.parse_args(argv)
    plan = TINY if args.tiny else FULL
    if args.env:
        defaults = dict(FULL)
        plan = [(e, args.steps or defaults.get(e, 1_000_000)) for e in args.env]
    elif args.steps:
        plan = [(e, args.steps) for e, _ in plan]
    if args.tiny:
        args.checkpoint_every_s = min(args.checkpoint_every_s, 0.5)
        args.sample_s = min(args.sample_s, 0.1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if len(plan) == 1:
        results = [soak(plan[0][0], plan[0][1], args, out)]
    else:  # one fresh process per env, so that each RSS curve is its own
        import subprocess

        results = []
        for env, steps in plan:
            cmd = [sys.executable, __file__, "--env", env, "--steps", str(steps), "--out", str(out),
                   "--checkpoint-every-s", str(args.checkpoint_every_s), "--keep-checkpoints",
                   str(args.keep_checkpoints), "--sample-s", str(args.sample_s), "--eval-episodes",
                   str(args.eval_episodes), "--seed", str(args.seed)] + (["--no-tensorboard"] if args.no_tensorboard
                                                                          else [])
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", env)
            results.append(json.loads((out / f"soak-{tag}.json").read_text()))
    meta = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": psutil.cpu_count(),
            "tiny": args.tiny}
    print(json.dumps({"machine": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
