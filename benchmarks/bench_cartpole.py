"""CartPole-v1 with ppolab's default settings: wall time from process start until the mean return of the last 100
episodes reaches 475, and the peak RSS of the whole process (a Gymnasium MLP run).

    python benchmarks/bench_cartpole.py --repeats 3 [--cache warm|cold]
    python benchmarks/bench_cartpole.py --repeats 3 --gymnax-purejaxrl   # gymnax:CartPole-v1, PureJaxRL's setting

``ppolab train`` runs as a subprocess; its start time comes from the OS (psutil), the moment the threshold is reached
from metrics.csv (time since the loop started) plus summary.json's ``loop_start_unix``. Peak RSS from getrusage.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

# `ppolab train ...` that reports its own peak RSS (getrusage of this process alone) on stderr at exit
CHILD = ("import resource, sys\nfrom ppolab.cli import main\nrc = main(sys.argv[1:])\n"
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(rc)")


# PureJaxRL's CartPole settings (as benchmarks/bench_gymnax.py) as `ppolab train` flags
PUREJAXRL_FLAGS = ["--env", "gymnax:CartPole-v1", "--total-timesteps", "500000", "--num-envs", "4", "--num-steps",
                   "128", "--num-epochs", "4", "--num-minibatches", "4", "--learning-rate", "2.5e-4", "--anneal-lr",
                   "--clip-eps", "0.2", "--no-anneal-clip", "--gamma", "0.99", "--gae-lambda", "0.95", "--vf-coef",
                   "0.5", "--ent-coef", "0.01", "--vf-clip", "0.2", "--max-grad-norm", "0.5", "--adam-eps", "1e-5",
                   "--norm-adv"]


def one(cache_dir: str, threshold: float = 475.0, extra: list[str] | None = None) -> dict:
    run_dir = tempfile.mkdtemp() + "/run"
    env = dict(os.environ, PPOLAB_CACHE_DIR=cache_dir)
    p = subprocess.Popen([sys.executable, "-c", CHILD, "train", "--run-dir", run_dir, "--no-progress",
                          "--eval-episodes", "10", *(extra or [])], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    created = psutil.Process(p.pid).create_time()
    _, err = p.communicate()
    end = time.time()
    if p.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    peak_kb = int(err.decode().rsplit("MAXRSS_KB", 1)[1].split()[0])
    summary = json.load(open(run_dir + "/summary.json"))
    hit = None
    with open(run_dir + "/metrics.csv") as f:
        for row in csv.DictReader(f):
            if row["return_recent"] and float(row["return_recent"]) >= threshold:
                hit = row
                break
    out = {"process_wall_s": round(end - created, 2), "eval_return_mean": summary["eval_return_mean"],
           "peak_rss_mib": round(peak_kb / 1024, 1)}
    if hit is not None:
        out["time_to_475_s"] = round(summary["loop_start_unix"] + float(hit["time_s"]) - created, 2)
        out["steps_to_475"] = int(hit["env_steps"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", choices=["warm", "cold"], default="warm",
                    help="warm: persistent compilation cache filled by a first untimed run; cold: no cache")
    ap.add_argument("--gymnax-purejaxrl", action="store_true",
                    help="gymnax:CartPole-v1 with PureJaxRL's settings instead of the default CartPole-v1 run")
    a = ap.parse_args()
    extra = PUREJAXRL_FLAGS if a.gymnax_purejaxrl else []
    cache = tempfile.mkdtemp() if a.cache == "warm" else ""
    if a.cache == "warm":
        one(cache, extra=extra)  # fills the cache
    runs = []
    for _ in range(a.repeats):
        r = one(cache, extra=extra)
        print(json.dumps(r), flush=True)
        runs.append(r)
    times = [r["time_to_475_s"] for r in runs if "time_to_475_s" in r]
    print(json.dumps({"what": "summary", "run": "gymnax-purejaxrl" if extra else "cartpole-default",
                      "cache": a.cache, "median_time_to_475_s": statistics.median(times) if times
                      else None, "solved_runs": len(times), "runs": len(runs),
                      "median_process_wall_s": statistics.median(r["process_wall_s"] for r in runs),
                      "max_peak_rss_mib": max(r["peak_rss_mib"] for r in runs)}))


if __name__ == "__main__":
    main()
