"""Issue 14's tiny grid: 2 envs x 2 settings x 2 seeds through ``ppolab compare`` (cli.main) end to end, every output
recomputed by hand from the runs it wrote. (tests/test_compare.py covers the arithmetic on hand values and one env's
grid: resume, pool and Ray runners.)"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from ppolab.cli import main
from ppolab.experiments import compare
from ppolab.experiments import scores as S

ENVS = ("InvertedPendulum-v5", "Pendulum-v1")
SETTINGS = ("cpi", "clip-0.2")
SEEDS = (5, 6)  # --seed 5 --seeds 2: a runner that ignores --seed trains seeds 0 and 1


def _argv(out: Path) -> list[str]:
    return ["compare", "--envs", ",".join(ENVS), "--settings", ",".join(SETTINGS), "--seeds", "2", "--seed", "5",
            "--total-timesteps", "256", "--num-steps", "64", "--num-epochs", "1", "--num-minibatches", "2",
            "--random-episodes", "3", "--out", str(out), "--no-progress"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The grid run once, then the same command again: (out, [CompareResult of each run], stderr of the rerun,
    summary.json mtimes before the rerun)."""
    out = tmp_path_factory.mktemp("grid") / "cmp"
    results = []
    real = compare.run_grid
    mp = pytest.MonkeyPatch()
    mp.setattr(compare, "run_grid", lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    try:
        assert main(_argv(out)) == 0
        mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("summary.json")}
        csv_before = (out / "compare.csv").read_text()
        assert main(_argv(out)) == 0
    finally:
        mp.undo()
    return out, results, mtimes, csv_before


def _rows(out: Path) -> list[dict]:
    with open(out / "compare.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_run_is_one_row_with_its_own_seed_and_raw_score(grid):
    out, *_ = grid
    rows = _rows(out)
    assert len(rows) == 8
    assert sorted((r["env"], r["setting"], int(r["seed"])) for r in rows) == sorted(
        (e, s, seed) for e in ENVS for s in SETTINGS for seed in SEEDS)
    for r in rows:  # the row reads the run of its own env and setting, and the agent of its own seed
        run_dir = Path(r["run_dir"])
        assert run_dir.parent.name == r["env"] and run_dir.name == r["setting"]
        agent = json.loads((run_dir / "summary.json").read_text())["agents"][int(r["agent"])]
        assert int(agent["seed"]) == int(r["seed"]) and int(r["episodes_scored"]) == len(agent["last_100_returns"])
        assert float(r["raw_score"]) == pytest.approx(S.run_score(agent["last_100_returns"]), rel=1e-5)
        assert len(agent["last_100_returns"]) >= 1


def test_normalized_scores_recomputed_by_hand(grid):
    out, *_ = grid
    rows = _rows(out)
    random = json.loads((out / "random.json").read_text())
    for env in ENVS:
        mine = [r for r in rows if r["env"] == env]
        rnd = random[env]
        assert rnd["episodes"] == 3 and len(rnd["returns"]) == 3
        assert rnd["score"] == pytest.approx(sum(rnd["returns"]) / 3)
        seed_mean = {s: sum(float(r["raw_score"]) for r in mine if r["setting"] == s) / 2 for s in SETTINGS}
        best = max(seed_mean.values())  # the best setting's seed-averaged score maps to 1
        for r in mine:
            assert float(r["random_score"]) == pytest.approx(rnd["score"], rel=1e-5)
            assert float(r["best_score"]) == pytest.approx(best, rel=1e-5)
            hand = (float(r["raw_score"]) - rnd["score"]) / (best - rnd["score"])
            assert float(r["normalized"]) == pytest.approx(hand, rel=1e-4, abs=1e-5)
        top = [s for s in SETTINGS if seed_mean[s] == best]
        assert sum(float(r["normalized"]) for r in mine if r["setting"] == top[0]) / 2 == pytest.approx(1.0, abs=1e-5)


def test_table_md_is_the_mean_normalized_score_per_setting(grid):
    out, *_ = grid
    rows = _rows(out)
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
             for ln in (out / "table.md").read_text().splitlines() if ln.startswith("| ") and "---" not in ln}
    stored = json.loads((out / "scores.json").read_text())["table"]
    for s in SETTINGS:
        mean = math.fsum(float(r["normalized"]) for r in rows if r["setting"] == s) / 4  # 2 envs x 2 seeds
        ours, paper, runs = lines[S.PAPER_LABELS[s]]
        assert ours == f"{mean:.2f}" and paper == f"{S.PAPER_TABLE1[s]:.2f}" and runs == "4/4"
        assert stored[s]["score"] == pytest.approx(mean, abs=1e-5) and stored[s]["runs"] == 4
        for env in ENVS:
            per_env = [float(r["normalized"]) for r in rows if r["setting"] == s and r["env"] == env]
            assert stored[s]["per_env"][env] == pytest.approx(sum(per_env) / 2, abs=1e-5)


def test_rerunning_the_command_skips_every_group(grid):
    out, results, mtimes, csv_before = grid
    first, second = results
    groups = {str(out / "runs" / e / s) for e in ENVS for s in SETTINGS}  # one group per env and objective kind
    assert first.statuses == dict.fromkeys(groups, "trained") and first.complete
    assert second.statuses == dict.fromkeys(groups, "skipped") and second.complete
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing trained again
    assert (out / "compare.csv").read_text() == csv_before
    assert second.table == first.table
