"""Why a Table 1 setting fails on a task: return, policy entropy, E[KL[pi_old, pi]] and clip fraction over training,
one line per setting (seed-averaged), read from a ``ppolab compare`` output directory's metrics.csv files.

    python scripts/table1_diagnostics.py docs/results/table1 --envs Reacher-v5,InvertedDoublePendulum-v5 \
        --groups clip-0.1_0.2_0.3,kl-fixed-0.3_1_3_10 --out docs/figures/table1_diagnostics.png

Prints, per env and setting, the figures docs/results.md quotes: the return at its best and at the end, the entropy
at the end, and the share of updates whose KL exceeded 0.1 in the last half of training.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

PANELS = (("return_recent", "return (last 100 episodes)", False), ("entropy", "entropy of pi", False),
          ("kl", "E[KL[pi_old, pi]] after the update", True), ("clip_fraction", "|r - 1| > eps fraction", False))


def _setting(agent: dict, objective: str) -> str:
    key = {"clip": "clip_eps", "kl-fixed": "kl_beta", "kl-adaptive": "kl_target"}.get(objective)
    return objective if key is None else f"{objective}-{agent[key]:g}"


def load_group(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """{setting: {column: [seeds, iterations] array}} of one group's run directory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    names = {a["agent"]: _setting(a, summary["objective"]) for a in summary["agents"]}
    rows: dict[int, list[dict]] = defaultdict(list)
    with open(run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            rows[int(row["agent"])].append(row)
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for agent, rs in rows.items():
        for col in ("env_steps",) + tuple(p[0] for p in PANELS):
            out[names[agent]][col].append([float(r[col]) if r[col] not in ("", "nan") else np.nan for r in rs])
    return {s: {c: np.asarray(v) for c, v in cols.items()} for s, cols in out.items()}


def summarize(env: str, setting: str, cols: dict[str, np.ndarray]) -> str:
    ret = np.nanmean(cols["return_recent"], axis=0)
    half = cols["kl"].shape[1] // 2
    big_kl = float(np.mean(cols["kl"][:, half:] > 0.1))
    return (f"| {env} | {setting} | {np.nanmax(ret):.0f} | {ret[-1]:.0f} | {np.mean(cols['entropy'][:, -1]):.2f} | "
            f"{big_kl:.2f} |")


def plot(groups: dict[str, dict[str, dict[str, np.ndarray]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), len(PANELS), figsize=(4 * len(PANELS), 3 * len(groups)), squeeze=False)
    for row, (env, settings) in enumerate(groups.items()):
        for col, (name, label, log) in enumerate(PANELS):
            ax = axes[row, col]
            for setting, cols in settings.items():
                style = "-" if setting.startswith("clip") else "--"
                y = np.nanmedian(cols[name], axis=0) if log else np.nanmean(cols[name], axis=0)
                ax.plot(cols["env_steps"][0] / 1e6, y, style, label=setting, lw=1)
            ax.set_yscale("log" if log else "linear")
            ax.set_title(f"{env}: {label}" + (" (median of seeds)" if log else ""), fontsize=8)
            ax.set_xlabel("env steps (M)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[row, 0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="a ppolab compare --out directory")
    p.add_argument("--envs", required=True)
    p.add_argument("--groups", required=True, help="group directory names, comma-separated")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    a = p.parse_args()
    groups: dict[str, dict] = {}
    print("| env | setting | best return | final return | final entropy | KL > 0.1 (2nd half) |")
    print("|---|---|---|---|---|---|")
    for env in a.envs.split(","):
        groups[env] = {}
        for g in a.groups.split(","):
            for setting, cols in load_group(a.out_dir / "runs" / env / g).items():
                groups[env][setting] = cols
                print(summarize(env, setting, cols))
    plot(groups, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
