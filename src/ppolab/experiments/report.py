"""Scoring and outputs of ``ppolab compare``: the paper's normalized scores (``scores.py``) of every run, written as
compare.csv, table.md (our column beside the paper's), scores.json, learning_curves.png and scores.png."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppolab.experiments import scores as S
from ppolab.experiments.grid import Setting

if TYPE_CHECKING:
    from ppolab.cli import CompareArgs


@dataclasses.dataclass
class CompareResult:
    out: Path
    statuses: dict[str, str]   # group run dir -> skipped | trained | resumed | stopped | failed
    table: dict[str, dict]     # scores.table() rows
    complete: bool


def _agent_matches(agent: dict, setting: Setting) -> bool:
    return setting.field is None or math.isclose(agent[setting.field], setting.value, rel_tol=1e-6)


def score_and_write(args: CompareArgs, out: Path, groups, cfgs, settings, envs, random, statuses,
                    console) -> CompareResult:
    raw: dict[tuple[str, str, int], float] = {}
    rows = []
    curves: dict[str, dict[str, list]] = {}  # env -> setting -> [(agent's env_steps, return_recent) lists]
    for g, c in zip(groups, cfgs, strict=True):
        run_dir = Path(c.run_dir)
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        if "agents" not in summary:
            continue
        per_agent = _read_curves(run_dir)
        for s in g.settings:
            for a in summary["agents"]:
                if not _agent_matches(a, s):
                    continue
                returns = a.get("last_100_returns", [])
                score = S.run_score(returns)
                raw[(s.name, g.env, int(a["seed"]))] = score
                rows.append({"env": g.env, "setting": s.name, "objective": s.objective,
                             "coefficient": s.field or "", "value": "" if s.value is None else s.value,
                             "seed": int(a["seed"]), "agent": a["agent"], "episodes_scored": len(returns),
                             "raw_score": score, "run_dir": str(run_dir)})
                if a["agent"] in per_agent:
                    curves.setdefault(g.env, {}).setdefault(s.name, []).append(per_agent[a["agent"]])
    rand = {e: random[e]["score"] for e in envs}
    envs_scored = {k[1] for k in raw}
    normalized = S.normalized_scores(raw, rand, args.best) if raw else {}
    best = S.best_scores(raw, args.best) if raw else {}
    for r in rows:
        r.update(random_score=rand[r["env"]], random_episodes=random[r["env"]]["episodes"],
                 random_seed=random[r["env"]]["seed"], best_score=best.get(r["env"], math.nan),
                 normalized=normalized.get((r["setting"], r["env"], r["seed"]), math.nan))
    names = [s.name for s in settings]
    tab = S.table(normalized, names)
    expected = len(envs) * args.seeds
    complete = all(tab[n]["runs"] + tab[n]["missing"] == expected for n in names) and envs_scored == set(envs)
    _write_csv(out / "compare.csv", rows)
    (out / "table.md").write_text(table_markdown(tab, names, expected, args))
    (out / "scores.json").write_text(json.dumps(
        {"table": tab, "paper": {n: S.PAPER_TABLE1.get(n) for n in names}, "best": best, "best_per": args.best,
         "random": {e: {k: v for k, v in random[e].items() if k != "returns"} for e in envs},
         "complete": complete}, indent=1, default=_json_nan))
    plot_curves(out / "learning_curves.png", curves, rand, envs, names)
    plot_bars(out / "scores.png", tab, names)
    if console is not None:
        console.print(rich_table(tab, names, expected))
        console.print(f"outputs in {out}: compare.csv, table.md, scores.json, learning_curves.png, scores.png")
    return CompareResult(out, statuses, tab, complete)


def _json_nan(x):
    return None


def _read_curves(run_dir: Path) -> dict[int, tuple[list[int], list[float]]]:
    """metrics.csv -> {agent: (env_steps, return_recent)}."""
    path = run_dir / "metrics.csv"
    out: dict[int, tuple[list[int], list[float]]] = {}
    if not path.is_file():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("return_recent") not in (None, ""):
                xs, ys = out.setdefault(int(r["agent"]), ([], []))
                xs.append(int(r["env_steps"]))
                ys.append(float(r["return_recent"]))
    return out


def _write_csv(path: Path, rows: list[dict]):
    fields = ("env", "setting", "objective", "coefficient", "value", "seed", "agent", "episodes_scored", "raw_score",
              "random_score", "random_episodes", "random_seed", "best_score", "normalized", "run_dir")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) and not math.isnan(v) else
                            ("" if isinstance(v, float) else v)) for k, v in r.items()})


def _fmt(x: float | None) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def table_markdown(tab: dict, names: list[str], expected: int, args: CompareArgs) -> str:
    lines = [f"Average normalized score ({len(args.envs)} environments x {args.seeds} seeds, "
             f"{args.total_timesteps:,} steps, preset {args.preset}; random policy = 0, best setting = 1)", "",
             "| Setting | ppolab | paper (Table 1) | runs |", "|---|---|---|---|"]
    for n in names:
        label = S.PAPER_LABELS.get(n, n)
        lines.append(f"| {label} | {_fmt(tab[n]['score'])} | {_fmt(S.PAPER_TABLE1.get(n))} | "
                     f"{tab[n]['runs']}/{expected} |")
    return "\n".join(lines) + "\n"


def rich_table(tab: dict, names: list[str], expected: int):
    from rich.table import Table

    t = Table(title="Table 1: average normalized score")
    for col in ("setting", "ppolab", "paper", "runs"):
        t.add_column(col, justify="left" if col == "setting" else "right")
    for n in names:
        t.add_row(S.PAPER_LABELS.get(n, n), _fmt(tab[n]["score"]), _fmt(S.PAPER_TABLE1.get(n)),
                  f"{tab[n]['runs']}/{expected}")
    return t


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(path: Path, curves: dict, random: dict, envs: list[str], names: list[str]) -> Path:
    """A panel per environment: mean over seeds of the recent-100 episode return, one line per setting."""
    plt = _plt()
    n = len(envs)
    cols = min(n, 4)
    rows_ = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.3 * rows_), squeeze=False)
    for ax, env in zip(axes.flat, envs, strict=False):
        for name in names:
            runs = curves.get(env, {}).get(name, [])
            if not runs:
                continue
            length = min(len(xs) for xs, _ in runs)
            if length == 0:
                continue
            xs = np.asarray(runs[0][0][:length])
            ys = np.mean([np.asarray(y[:length]) for _, y in runs], axis=0)
            ax.plot(xs, ys, label=name, lw=1.2)
        ax.axhline(random[env], color="gray", ls="--", lw=0.8, label="random")
        ax.set_title(env, fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_bars(path: Path, tab: dict, names: list[str]) -> Path:
    """Average normalized score per setting, ours beside the paper's Table 1."""
    plt = _plt()
    x = np.arange(len(names))
    ours = [tab[n]["score"] for n in names]
    paper = [S.PAPER_TABLE1.get(n, math.nan) for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(names) + 2), 3.8))
    ax.bar(x - 0.2, np.nan_to_num(ours), 0.4, label="ppolab")
    ax.bar(x + 0.2, np.nan_to_num(paper), 0.4, label="paper (Table 1)", color="gray")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("average normalized score")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
