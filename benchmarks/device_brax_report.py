"""Read a Brax run directory: the learning curve and the time to given returns (for device_brax.sh).

    python benchmarks/device_brax_report.py RUN_DIR [--targets 3000 5000 5800]

Prints one line per iteration (steps, loop time, mean return of recent episodes), the first iteration whose recent
mean return reaches each target, and the summary's timings (SPS after the first call, compile time).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--targets", type=float, nargs="*", default=[1000.0, 3000.0, 5000.0, 5500.0, 5800.0])
    args = ap.parse_args()
    run = Path(args.run_dir)
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["return_recent"] not in ("", None)]
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
    compile_s = float(summary.get("first_call_s") or 0.0)
    print("iteration env_steps time_s return_recent")
    for r in rows:
        print(r["iteration"], r["env_steps"], r["time_s"], r["return_recent"])
    reached = {}
    for agent in sorted({r["agent"] for r in rows}, key=int):
        mine = [r for r in rows if r["agent"] == agent]
        for target in args.targets:
            hit = next((r for r in mine if float(r["return_recent"]) >= target), None)
            reached[f"agent{agent}>={target:g}"] = None if hit is None else {
                "env_steps": int(hit["env_steps"]), "time_s": float(hit["time_s"])}
    print(json.dumps({"time_to_return": reached, "compile_s": compile_s,
                      "best_recent": max((float(r["return_recent"]) for r in rows), default=None),
                      **{k: v for k, v in summary.items() if not isinstance(v, list | dict)}}))


if __name__ == "__main__":
    main()
