"""``report.html``: what happened in a run directory, or in a ``ppolab compare`` output directory, on one page.

``write_report(PATH)`` detects which kind PATH is and writes ``PATH/report.html``: one self-contained HTML file
(inline CSS, plots as embedded PNGs, the episode video embedded), viewable without a network.

* A run directory: the summary, a table per agent (seed, swept coefficients, training and evaluation returns),
  the learning curve of every agent, the PPO diagnostics over time from metrics.csv (KL, clip fraction, entropy,
  explained variance, beta, losses, step size), the evaluation results (summary.json, and eval.json where a
  ``ppolab eval`` result was saved), the episode video (``videos/``), and the full config.
* A comparison: the average normalized score of every setting beside the paper's Table 1 column, the per-env
  normalized scores, the random policy's scores, the per-env learning curves (mean over seeds of every setting),
  every run's raw and normalized score, and the grid's arguments.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated

import tyro

from ppolab import report_html as H
from ppolab.config import ConfigError

REPORT_FILE = "report.html"
#: metrics.csv columns drawn as diagnostics, with their axis labels.
DIAGNOSTICS = {"kl": "KL[pi_old, pi] (exact, whole batch)", "clip_fraction": "clip fraction",
               "entropy": "entropy", "explained_variance": "explained variance", "beta": "beta (KL penalty)",
               "approx_kl": "approx. KL", "policy_loss": "policy loss", "value_loss": "value loss",
               "learning_rate": "step size (lr x alpha)"}
SUMMARY_KEYS = ("env_id", "objective", "preset", "total_timesteps", "num_agents", "swept", "eval_episodes",
                "eval_deterministic", "eval_return_mean", "eval_return_std", "train_return_recent", "episodes",
                "wall_time_s", "train_loop_s", "first_call_s", "sps", "sps_after_first_call", "platform", "stopped")


@dataclasses.dataclass
class ReportArgs:
    """Write report.html for a run directory or a ppolab compare output directory."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DIR")]
    """Run directory (ppolab train) or comparison directory (ppolab compare --out)."""
    out: str | None = None
    """Output file (default: DIR/report.html)."""


def run_report(args: ReportArgs) -> Path:
    """What ``ppolab report`` does: ``write_report`` with the command line's arguments."""
    return write_report(args.run_dir, args.out)


def kind_of(path: Path) -> str:
    """'run' (config.json), 'compare' (scores.json or compare.csv), else ConfigError."""
    if (path / "scores.json").is_file() or (path / "compare.csv").is_file():
        return "compare"
    if (path / "config.json").is_file():
        return "run"
    raise ConfigError(f"{str(path)!r} is neither a ppolab run directory (config.json) nor a ppolab compare "
                      "directory (scores.json)")


def write_report(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of ``path`` (run or compare directory) to ``out`` (default PATH/report.html), atomically."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} does not exist or is not a directory")
    kind = kind_of(path)
    target = Path(out) if out is not None else path / REPORT_FILE
    if not target.parent.is_dir():
        raise ConfigError(f"--out {str(target)!r}: the directory {str(target.parent)!r} does not exist")
    text = run_page(path) if kind == "run" else compare_page(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {str(target)!r}: {e.strerror or e}") from None
    return target


# ---- reading --------------------------------------------------------------------------------------------------------
def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def read_columns(metrics_csv: Path, keys: tuple[str, ...]) -> dict[int, dict[str, tuple[list, list]]]:
    """metrics.csv -> {agent: {key: (env_steps, values)}} for the non-empty cells of ``keys``."""
    out: dict[int, dict[str, tuple[list, list]]] = {}
    if not metrics_csv.is_file():
        return out
    with open(metrics_csv, newline="") as f:
        for r in csv.DictReader(f):
            try:
                agent, step = int(r["agent"]), int(r["env_steps"])
            except (KeyError, TypeError, ValueError):
                continue  # a row cut short by a kill
            for k in keys:
                v = _float(r.get(k))
                if math.isfinite(v):
                    xs, ys = out.setdefault(agent, {}).setdefault(k, ([], []))
                    xs.append(step)
                    ys.append(v)
    return out


# ---- a run directory ------------------------------------------------------------------------------------------------
def _agents_table(summary: dict) -> str:
    agents = summary.get("agents") or []
    if not agents:
        return '<p class="note">no per-agent results (summary.json is missing: the run did not finish)</p>'
    swept = list(summary.get("swept") or [])
    headers = ["agent", "seed", *swept, "train return (last 100)", "eval mean", "eval std", "final beta"]
    rows = [[a.get("agent", i), a.get("seed"), *[a.get(k) for k in swept], a.get("train_return_recent"),
             a.get("eval_return_mean"), a.get("eval_return_std"), a.get("final_beta")] for i, a in enumerate(agents)]
    return H.table(headers, rows, "agents")


def _eval_section(summary: dict, later: dict | None) -> str:
    """The final evaluation of summary.json, and a later ``ppolab eval`` result (eval.json) if one was saved."""
    extra = ""
    if later:
        extra = "<h3>eval.json (ppolab eval)</h3>" + H.kv_table(
            [(k, v) for k, v in later.items() if not isinstance(v, dict | list)], "eval-later")
    agents = [a for a in summary.get("agents") or [] if a.get("eval_returns")]
    if not agents:
        return '<p class="note">no evaluation in this run (eval_episodes = 0, or it did not finish)</p>' + extra
    rows = [[a.get("agent", i), len(a["eval_returns"]), a.get("eval_return_mean"), a.get("eval_return_std"),
             min(a["eval_returns"]), max(a["eval_returns"])] for i, a in enumerate(agents)]
    mode = "deterministic (mode)" if summary.get("eval_deterministic", True) else "stochastic"
    return (f"<p>{H.esc(mode)} policy, one fresh episode per evaluation env</p>"
            + H.table(["agent", "episodes", "mean return", "std", "min", "max"], rows, "eval") + extra)


def _curves(cols: dict, key: str) -> dict[str, tuple[list, list]]:
    K = len(cols)
    return {(f"agent {a}" if K > 1 else key): c[key] for a, c in sorted(cols.items()) if key in c}


def _diagnostics(cols: dict) -> str:
    plots = [H.line_plot(f"diag-{k}", _curves(cols, k), "environment steps (per agent)", label, label,
                         size=(4.6, 3.0)) for k, label in DIAGNOSTICS.items() if _curves(cols, k)]
    if not plots:
        return '<p class="note">no metrics.csv rows yet</p>'
    return '<div class="grid">' + "".join(plots) + "</div>"


def _video(run_dir: Path) -> str:
    videos = sorted((p for p in (run_dir / "videos").glob("episode.*") if p.suffix in (".mp4", ".gif")),
                    key=lambda p: (p.stat().st_mtime, p.suffix == ".mp4"))
    if not videos:
        return '<p class="note">no video recorded (ppolab eval RUN_DIR --video records one)</p>'
    return H.video_html(videos[-1]) + f'<p class="meta">{H.esc(videos[-1].name)}</p>'


def run_page(run_dir: Path) -> str:
    """The HTML of a run directory's report."""
    config = _json(run_dir / "config.json") or {}
    summary = _json(run_dir / "summary.json") or {}
    cols = read_columns(run_dir / "metrics.csv", ("return_recent", "episode_return", *DIAGNOSTICS))
    curve = _curves(cols, "return_recent")
    learning = (H.line_plot("learning-curve", curve, "environment steps (per agent)",
                            "mean episode return (last 100)", "learning curve")
                if curve else '<p class="note">no finished episode yet</p>')
    summary_rows = [(k, summary[k]) for k in SUMMARY_KEYS if k in summary]
    sections = [
        ("summary", "Summary", H.kv_table(summary_rows, "summary") if summary_rows else
         '<p class="note">no summary.json: the run has not finished (or was stopped)</p>'),
        ("agents", "Agents", _agents_table(summary)),
        ("learning", "Learning curves", learning),
        ("diagnostics", "PPO diagnostics", _diagnostics(cols)),
        ("evaluation", "Evaluation", _eval_section(summary, _json(run_dir / "eval.json"))),
        ("video", "Video", _video(run_dir)),
        ("config", "Config", "<details open><summary>config.json</summary>"
         + H.kv_table(sorted(config.items()), "config") + "</details>"),
    ]
    title = f"ppolab run: {config.get('env', '?')} / {config.get('objective', '?')}"
    return H.page(title, str(run_dir), sections)


# ---- a ppolab compare directory -------------------------------------------------------------------------------------
def _compare_rows(cmp_dir: Path) -> list[dict]:
    path = cmp_dir / "compare.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_dir_of(cmp_dir: Path, recorded: str) -> Path:
    """compare.csv's run_dir (relative to where compare ran) -> this directory's runs/ENV/GROUP."""
    parts = Path(recorded).parts
    if "runs" in parts:
        i = len(parts) - 1 - parts[::-1].index("runs")
        return cmp_dir.joinpath(*parts[i:])
    return Path(recorded)


def _env_curves(cmp_dir: Path, rows: list[dict]) -> dict[str, dict[str, list]]:
    """{env: {setting: [(steps, return_recent) per run]}} from every run's metrics.csv."""
    cache: dict[Path, dict] = {}
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        run = _run_dir_of(cmp_dir, r.get("run_dir", ""))
        if run not in cache:
            cache[run] = read_columns(run / "metrics.csv", ("return_recent",))
        c = cache[run].get(int(r.get("agent") or 0), {}).get("return_recent")
        if c:
            out.setdefault(r["env"], {}).setdefault(r["setting"], []).append(c)
    return out


def _mean_curve(runs: list) -> tuple[list, list]:
    n = min(len(xs) for xs, _ in runs)
    return runs[0][0][:n], [math.fsum(ys[i] for _, ys in runs) / len(runs) for i in range(n)]


def _score_tables(scores: dict) -> str:
    from ppolab.experiments import scores as S

    tab = scores.get("table") or {}
    paper = scores.get("paper") or {}
    rows = [[S.PAPER_LABELS.get(n, n), t.get("score"), paper.get(n), t.get("runs"), t.get("missing")]
            for n, t in tab.items()]
    main = H.table(["setting", "ppolab", "paper (Table 1)", "runs", "missing"], rows, "table1")
    envs = sorted({e for t in tab.values() for e in (t.get("per_env") or {})})
    per_env = H.table(["setting", *envs], [[n, *[(t.get("per_env") or {}).get(e) for e in envs]]
                                           for n, t in tab.items()], "per-env")
    rnd = scores.get("random") or {}
    random = H.table(["env", "random score", "episodes", "seed"],
                     [[e, v.get("score"), v.get("episodes"), v.get("seed")] for e, v in rnd.items()], "random")
    best = H.kv_table(sorted((scores.get("best") or {}).items()), "best")
    note = "" if scores.get("complete", True) else '<p class="note">the grid is not complete yet</p>'
    return (note + "<p>average normalized score (random policy = 0, best " + H.esc(scores.get("best_per", "setting"))
            + " = 1), ours beside the paper's</p>" + main + "<h3>per environment</h3>" + per_env
            + "<h3>random policy</h3>" + random + "<h3>best raw score per environment</h3>" + best)


def _bars(scores: dict) -> str:
    tab = scores.get("table") or {}
    paper = scores.get("paper") or {}
    names = list(tab)
    if not names:
        return ""
    fig, ax = H.figure(max(5.0, 0.8 * len(names) + 2), 3.8)
    x = range(len(names))
    ours = [_float(tab[n].get("score")) for n in names]
    ax.bar([i - 0.2 for i in x], [0 if math.isnan(v) else v for v in ours], 0.4, label="ppolab")
    ax.bar([i + 0.2 for i in x], [_float(paper.get(n)) if paper.get(n) is not None else 0 for n in names], 0.4,
           label="paper (Table 1)", color="gray")
    ax.set_xticks(list(x), names, rotation=45, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_ylabel("average normalized score")
    ax.legend(fontsize=8)
    return H.figure_html(fig, "scores", "average normalized score per setting")


def compare_page(cmp_dir: Path) -> str:
    """The HTML of a ppolab compare directory's report."""
    scores = _json(cmp_dir / "scores.json") or {}
    rows = _compare_rows(cmp_dir)
    grid = (_json(cmp_dir / "grid.json") or {}).get("args", {})
    random = {e: _float(v.get("score")) for e, v in (scores.get("random") or {}).items()}
    curves = _env_curves(cmp_dir, rows)
    plots = [H.line_plot(f"env-{re.sub(r'[^A-Za-z0-9_.-]+', '_', env)}",
                         {s: _mean_curve(runs) for s, runs in sorted(per.items())}, "environment steps",
                         "mean episode return (last 100)", env, hline=(random.get(env, math.nan), "random"),
                         size=(5.2, 3.4)) for env, per in sorted(curves.items())]
    if not plots and (cmp_dir / "learning_curves.png").is_file():
        plots = [H.image_file_html(cmp_dir / "learning_curves.png", "learning-curves", "learning curves")]
    cols = ["env", "setting", "seed", "agent", "episodes_scored", "raw_score", "random_score", "normalized"]
    sections = [
        ("table1", "Table 1: average normalized score", _score_tables(scores) if scores else
         '<p class="note">no scores.json yet</p>'),
        ("scores-plot", "Scores", _bars(scores)),
        ("curves", "Learning curves per environment", '<div class="grid">' + "".join(plots) + "</div>" if plots
         else '<p class="note">no learning curves</p>'),
        ("runs", "Runs", H.table(cols, [[r.get(c) for c in cols] for r in rows], "runs-table")),
        ("grid", "Grid", H.kv_table(sorted(grid.items()), "grid-args")),
    ]
    return H.page("ppolab compare: surrogate objectives by normalized score", str(cmp_dir), sections)
