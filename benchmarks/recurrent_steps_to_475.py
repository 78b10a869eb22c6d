"""Steps to a last-100 mean return of 475 on StatelessCartPole, ppolab's ``--preset cartpole-lstm`` against
sb3-contrib's RecurrentPPO (RL-Zoo's CartPoleNoVel settings, ``bench_recurrent_sb3.py``), over many seeds.

    python benchmarks/recurrent_steps_to_475.py --populations 100 200            # 8 seeds each: 100-107, 200-207
    /tmp/sb3venv/bin/python benchmarks/bench_recurrent_sb3.py --sb3-side --seed 6 >> sb3.jsonl   # one sb3 seed
    python benchmarks/recurrent_steps_to_475.py --runs-dir /tmp/steps475 --jsonl sb3.jsonl \\
        benchmarks/results/recurrent_sb3_s11.jsonl --out benchmarks/results/steps_to_475_s11.json

One seed alone says little at this budget (100k steps): both sides sometimes reach 475 and then fall back, or never
reach it. ppolab's seeds run as populations (``--num-seeds 8``, one program; each member an independent run, tested
equal to it alone), read from each run directory's metrics.csv; RecurrentPPO's and any other side's from the JSON
lines of ``bench_recurrent_sb3.py`` (both sides: ``to_475_last100``). Reported per side: how many seeds reach 475
within the budget, the median steps over all seeds (a seed that never reaches it counts as beyond the budget) and
over those that do, and a two-sided Mann-Whitney U test of the steps (seeds that never reach it tied at the
budget's end; scipy, where installed).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import statistics
import subprocess
import sys

THRESHOLD = 475.0
BUDGET = 100_000


def run_population(seed: int, num_seeds: int, runs_dir: str, extra: list[str]) -> str:
    run_dir = os.path.join(runs_dir, f"pop-s{seed}")
    cmd = [sys.executable, "-m", "ppolab.cli", "train", "--preset", "cartpole-lstm", "--num-seeds", str(num_seeds),
           "--seed", str(seed), "--run-dir", run_dir, "--checkpoint-every", "0", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def population_seeds(run_dir: str) -> list[dict]:
    """Per member of a population run: seed, steps to last-100 475 (None: never), final last-100 mean, eval."""
    rows: dict[int, list[dict]] = {}
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["agent"]), []).append(r)
    with open(os.path.join(run_dir, "summary.json")) as f:
        agents = {a["agent"]: a for a in json.load(f)["agents"]}
    out = []
    for agent, rs in sorted(rows.items()):
        recent = [(int(r["env_steps"]), float(r["return_recent"])) for r in rs if r["return_recent"] not in ("", "nan")]
        hit = next((steps for steps, v in recent if v >= THRESHOLD), None)
        out.append({"side": "ppolab", "seed": agents[agent]["seed"], "steps_to_475": hit,
                    "final_return_recent_100": recent[-1][1] if recent else None,
                    "eval_return_mean": agents[agent].get("eval_return_mean"), "source": run_dir})
    return out


def jsonl_seeds(path: str) -> list[dict]:
    out = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "side" not in r or "error" in r:
                continue
            if r["side"] == "ppolab" and r.get("default_init", r.get("rnn_init", "flax")) != "torch":
                continue  # before session 11's preset (torch's init); older files name it rnn_init
            out.append({"side": r["side"], "seed": r["seed"],
                        "steps_to_475": (r.get("to_475_last100") or {}).get("steps"),
                        "final_return_recent_100": r.get("return_recent_100"),
                        "eval_return_mean": r.get("eval_return_mean"), "source": path})
    return out


def summarize(seeds: list[dict]) -> dict:
    steps = [s["steps_to_475"] for s in seeds]
    reached = sorted(s for s in steps if s is not None)
    beyond = [s if s is not None else BUDGET + 1 for s in steps]
    return {"seeds": len(steps), "reached": len(reached),
            "median_steps_all": statistics.median(beyond) if beyond else None,
            "median_steps_reached": statistics.median(reached) if reached else None, "steps_reached": reached,
            "median_final_return_recent_100": statistics.median(s["final_return_recent_100"] for s in seeds)}


def mann_whitney(a: list[dict], b: list[dict]) -> float | None:
    try:
        from scipy.stats import mannwhitneyu
    except ImportError:
        return None
    steps = lambda side: [s["steps_to_475"] if s["steps_to_475"] is not None else BUDGET + 1 for s in side]
    return float(mannwhitneyu(steps(a), steps(b), alternative="two-sided").pvalue)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--populations", type=int, nargs="*", default=[], help="first seeds of ppolab populations to run")
    ap.add_argument("--num-seeds", type=int, default=8)
    ap.add_argument("--train-args", default="", help="extra `ppolab train` flags for the populations")
    ap.add_argument("--runs-dir", default="/tmp/steps475", help="population run directories (run and read)")
    ap.add_argument("--jsonl", nargs="*", default=[], help="bench_recurrent_sb3.py outputs (JSON lines)")
    ap.add_argument("--out", default=None, help="write the per-seed results and the summary here (JSON)")
    args = ap.parse_args()
    for seed in args.populations:
        run_population(seed, args.num_seeds, args.runs_dir, args.train_args.split())
    seeds = [s for d in sorted(glob.glob(os.path.join(args.runs_dir, "*", "metrics.csv")))
             for s in population_seeds(os.path.dirname(d))]
    for path in args.jsonl:
        seeds += jsonl_seeds(path)
    unique = {(s["side"], s["seed"]): s for s in seeds}  # a seed run twice (the runs are deterministic): once
    by_side = {side: [s for (sd, _), s in sorted(unique.items()) if sd == side] for side in ("ppolab", "sb3_contrib")}
    report = {side: summarize(v) for side, v in by_side.items() if v}
    if all(by_side.values()):
        report["mann_whitney_p"] = mann_whitney(by_side["ppolab"], by_side["sb3_contrib"])
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threshold": THRESHOLD, "budget": BUDGET, "summary": report,
                       "seeds": [unique[k] for k in sorted(unique)]}, f, indent=1)


if __name__ == "__main__":
    main()
