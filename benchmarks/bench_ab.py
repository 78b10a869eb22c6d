"""Side by side: one benchmark script of two checkouts (e.g. the previous commit in a ``git worktree``), alternated.

    git worktree add /tmp/base <commit>
    python benchmarks/bench_ab.py --base /tmp/base --pairs 3 -- benchmarks/bench_hopper.py --repeats 1

Pair i runs ``BASE/SCRIPT ARGS`` then ``HEAD/SCRIPT ARGS`` (or the other way round for odd i, so that neither side
always runs second), each in its own process with its own ``src`` first on ``PYTHONPATH``. Every numeric field of
each run's last JSON line is collected; the summary gives each side's median and the ratio head / base of the
medians. Nothing else should run meanwhile (pause background jobs with SIGSTOP).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HEAD = Path(__file__).resolve().parent.parent


def run(side: Path, script: str, args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(side / "src"), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(side / script), *args], env=env, capture_output=True, text=True,
                         cwd=side, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    for ln in lines:
        print(json.dumps({"side": side.name, **json.loads(ln)}), flush=True)
    return json.loads(lines[-1]) if lines else {}


def numeric(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out[prefix + k] = float(v)
        elif isinstance(v, dict):
            out.update(numeric(v, prefix + k + "."))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the other checkout (a git worktree)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("script")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    sides = {"base": Path(a.base).resolve(), "head": HEAD}
    results: dict[str, list[dict]] = {"base": [], "head": []}
    for i in range(a.pairs):
        order = ("base", "head") if i % 2 == 0 else ("head", "base")
        for name in order:
            results[name].append(numeric(run(sides[name], a.script, a.args)))
    keys = sorted(set(results["base"][0]) & set(results["head"][0]))
    summary = {}
    for k in keys:
        b = statistics.median(r[k] for r in results["base"] if k in r)
        h = statistics.median(r[k] for r in results["head"] if k in r)
        summary[k] = {"base": b, "head": h, "head/base": h / b if b else None}
    print(json.dumps({"summary": summary, "script": a.script, "args": a.args, "pairs": a.pairs}))


if __name__ == "__main__":
    main()
