"""The Table 1 grid's cost: each environment's raw physics against the grid's own groups, and the grid's estimate.

    python benchmarks/bench_grid.py --iterations 3

For each of the grid's environments (default: the 7 of Table 1), in fresh subprocesses one after the other (never
two at once): the raw env (``gym.make(ENV)``, uniform random actions, resets included: the time the physics and
Gymnasium's wrappers cost, the floor of any PPO), then each of ``ppolab compare``'s groups for that env (one
objective kind, its coefficients x 3 seeds vmapped, exactly the configs the grid runs) for ``--iterations``
iterations, steady SPS measured from the second iteration on (compilation excluded) and the first iteration's time
(compilation included). Prints one JSON line per measurement and a summary: the grid's estimated wall time on one
core against the raw physics of its 231M steps on one core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

RAW = textwrap.dedent("""
    import json, time, numpy as np, gymnasium as gym
    env = gym.make({env!r})
    env.reset(seed=0)
    env.action_space.seed(0)
    n = {steps}
    acts = [env.action_space.sample() for _ in range(n)]
    t = time.perf_counter()
    for a in acts:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    print(json.dumps({{"what": "raw_env", "env": {env!r}, "sps": n / (time.perf_counter() - t)}}))
""")

GROUP = textwrap.dedent("""
    import csv, json, os, tempfile
    os.environ.setdefault("PPOLAB_CACHE_DIR", "")
    os.environ["PPOLAB_REPORT"] = "0"
    from ppolab.cli import CompareArgs
    from ppolab.experiments import grid
    from ppolab.training import train
    from pathlib import Path
    d = Path(tempfile.mkdtemp())
    args = CompareArgs(envs=({env!r},), total_timesteps=2048 * {iters}, progress=False, out=str(d))
    groups = [g for g in grid.plan(list(args.envs), [grid.parse_setting(s) for s in args.settings])
              if g.objective == {kind!r}]
    cfg = grid.group_config(args, groups[0], d).replace(checkpoint_every=0)
    import dataclasses
    train(cfg, explicit={{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "preset"}})
    rows = list(csv.DictReader(open(Path(cfg.run_dir) / "metrics.csv")))
    K = max(int(r["agent"]) for r in rows) + 1
    t = sorted({{int(r["iteration"]): float(r["time_s"]) for r in rows}}.items())
    steady = K * 2048 * (len(t) - 1) / (t[-1][1] - t[0][1])
    print(json.dumps({{"what": "group", "env": {env!r}, "group": groups[0].name, "agents": K, "sps_steady": steady,
                      "first_iteration_s": t[0][1]}}))
""")

KINDS = ("cpi", "clip", "kl-adaptive", "kl-fixed")
AGENTS = {"cpi": 3, "clip": 9, "kl-adaptive": 9, "kl-fixed": 12}  # the grid's settings x 3 seeds


def run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    out = proc.stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    from ppolab.experiments.grid import ENVS_TABLE1

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envs", default=",".join(ENVS_TABLE1))
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--raw-steps", type=int, default=50_000)
    p.add_argument("--total-timesteps", type=int, default=1_000_000, help="per run, for the estimate")
    a = p.parse_args()
    grid_s = raw_s = 0.0
    for env in a.envs.split(","):
        raw = run(RAW.format(env=env, steps=a.raw_steps))
        env_raw_s = sum(AGENTS.values()) * a.total_timesteps / raw["sps"]
        env_grid_s = 0.0
        for kind in KINDS:
            g = run(GROUP.format(env=env, kind=kind, iters=a.iterations))
            env_grid_s += g["agents"] * a.total_timesteps / g["sps_steady"] + g["first_iteration_s"]
        print(json.dumps({"what": "env_estimate", "env": env, "raw_physics_s": env_raw_s, "grid_s": env_grid_s,
                          "grid_over_raw": env_grid_s / env_raw_s}), flush=True)
        grid_s, raw_s = grid_s + env_grid_s, raw_s + env_raw_s
    print(json.dumps({"what": "grid_estimate", "raw_physics_s_one_core": raw_s, "grid_s_one_core": grid_s,
                      "grid_over_raw": grid_s / raw_s, "grid_s_two_workers": grid_s / 2}))


if __name__ == "__main__":
    main()
