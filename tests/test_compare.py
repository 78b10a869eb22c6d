"""ppolab compare: the paper's Table 1 score arithmetic against hand values, and the grid runner on a tiny budget."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ppolab.cli import CompareArgs
from ppolab.config import Config, ConfigError
from ppolab.experiments import compare
from ppolab.experiments import scores as S


# ---- score arithmetic (section 6.1) -----------------------------------------------------------------------------
def test_run_score_is_mean_of_last_100_episodes():
    returns = list(range(150))  # episodes 50..149 count
    assert S.run_score(returns) == pytest.approx(99.5)
    assert S.run_score([1.0, 2.0, 6.0]) == pytest.approx(3.0)  # fewer than 100: all of them
    assert math.isnan(S.run_score([]))


def test_normalize_hand_values():
    assert S.normalize(50.0, 10.0, 90.0) == pytest.approx(0.5)
    assert S.normalize(10.0, 10.0, 90.0) == 0.0           # random policy -> 0
    assert S.normalize(90.0, 10.0, 90.0) == 1.0           # best -> 1
    assert S.normalize(0.0, 10.0, 90.0) == pytest.approx(-0.125)  # below random: negative (L^CPI on HalfCheetah)
    assert S.normalize(-50.0, -100.0, 0.0) == pytest.approx(0.5)  # negative rewards (Reacher)
    with pytest.raises(ValueError):
        S.normalize(1.0, 2.0, 2.0)


def test_table_averages_normalized_scores_over_envs_and_seeds():
    # env A: random 0; setting a: seeds 10, 30 (mean 20), b: 40, 40 (mean 40 = best setting)
    # env B: random 100; setting a: 200, 200 (best, mean 200), b: 150, 50
    raw = {("a", "A", 0): 10.0, ("a", "A", 1): 30.0, ("b", "A", 0): 40.0, ("b", "A", 1): 40.0,
           ("a", "B", 0): 200.0, ("a", "B", 1): 200.0, ("b", "B", 0): 150.0, ("b", "B", 1): 50.0}
    random = {"A": 0.0, "B": 100.0}
    assert S.best_scores(raw) == {"A": 40.0, "B": 200.0}
    assert S.best_scores(raw, per="run") == {"A": 40.0, "B": 200.0}
    norm = S.normalized_scores(raw, random)
    assert norm[("a", "A", 0)] == pytest.approx(0.25)
    assert norm[("b", "B", 1)] == pytest.approx(-0.5)
    tab = S.table(norm, ["b", "a"])
    assert list(tab) == ["b", "a"]
    assert tab["a"]["score"] == pytest.approx((0.25 + 0.75 + 1.0 + 1.0) / 4)
    assert tab["b"]["score"] == pytest.approx((1.0 + 1.0 + 0.5 - 0.5) / 4)
    assert tab["a"]["per_env"] == {"A": pytest.approx(0.5), "B": pytest.approx(1.0)}
    assert tab["a"]["runs"] == 4 and tab["a"]["missing"] == 0


def test_table_best_per_run_and_missing_runs():
    raw = {("a", "A", 0): 10.0, ("a", "A", 1): 30.0, ("b", "A", 0): 20.0, ("b", "A", 1): math.nan}
    assert S.best_scores(raw, per="run") == {"A": 30.0}
    assert S.best_scores(raw, per="setting") == {"A": 20.0}  # the NaN run is ignored
    tab = S.table(S.normalized_scores(raw, {"A": 0.0}))
    assert tab["b"]["runs"] == 1 and tab["b"]["missing"] == 1
    assert tab["b"]["score"] == pytest.approx(1.0)


def test_settings_parse_and_group():
    names = [compare.parse_setting(n).name for n in compare.SETTINGS_TABLE1]
    assert names == list(compare.SETTINGS_TABLE1) == list(S.PAPER_TABLE1)
    s = compare.parse_setting("KL-Fixed-1.0")
    assert (s.name, s.objective, s.value, s.field) == ("kl-fixed-1", "kl-fixed", 1.0, "kl_beta")
    for bad in ("clip", "clip-0", "kl-foo-1", "ppo"):
        with pytest.raises(ConfigError):
            compare.parse_setting(bad)
    groups = compare.plan(["A", "B"], [compare.parse_setting(n) for n in compare.SETTINGS_TABLE1])
    assert len(groups) == 8  # 2 envs x {cpi, clip, kl-adaptive, kl-fixed}
    clip = groups[1]
    assert clip.name == "clip-0.1_0.2_0.3"
    cfg = compare.group_config(CompareArgs(), clip, compare.Path("out"))
    assert cfg.clip_eps == (0.1, 0.2, 0.3) and cfg.num_seeds == 3 and cfg.num_steps == 2048
    assert cfg.kl_beta == 1.0 and cfg.preset == "paper-mujoco" and cfg.eval_episodes == 0
    kl = compare.group_config(CompareArgs(), groups[2], compare.Path("out"))
    assert kl.objective == "kl-adaptive" and kl.kl_target == (0.003, 0.01, 0.03) and kl.kl_beta == 1.0


def test_cli_bad_setting_is_one_line_error(capsys):
    from ppolab.cli import main

    assert main(["compare", "--settings", "clip-0.2,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown setting 'nope'" in err[0]


# ---- the grid runner --------------------------------------------------------------------------------------------
TINY = dict(envs=("InvertedPendulum-v5",), settings=("cpi", "clip-0.2"), seeds=2, total_timesteps=256,
            num_steps=64, num_epochs=1, num_minibatches=2, random_episodes=5, progress=False)


def test_tiny_grid_writes_every_output_and_skips_finished_runs(tmp_path):
    args = CompareArgs(out=str(tmp_path / "cmp"), **TINY)
    res = compare.run_grid(args)
    out = tmp_path / "cmp"
    assert sorted(res.statuses.values()) == ["trained", "trained"]
    assert res.complete
    for name in ("compare.csv", "table.md", "scores.json", "random.json", "learning_curves.png", "scores.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert {(r["setting"], r["seed"]) for r in rows} == {("cpi", "0"), ("cpi", "1"), ("clip-0.2", "0"),
                                                         ("clip-0.2", "1")}
    rnd = json.loads((out / "random.json").read_text())["InvertedPendulum-v5"]
    assert rnd["episodes"] == 5 and rnd["seed"] == 12345 and len(rnd["returns"]) == 5
    for r in rows:  # the raw score is exactly the mean of the stored last-100 episode returns
        summary = json.loads((out / "runs" / "InvertedPendulum-v5" / ("cpi" if r["setting"] == "cpi" else "clip-0.2")
                              / "summary.json").read_text())
        agent = summary["agents"][int(r["agent"])]
        assert float(r["raw_score"]) == pytest.approx(S.run_score(agent["last_100_returns"]), rel=1e-5)
        assert float(r["random_score"]) == pytest.approx(rnd["score"], rel=1e-5)
    table_md = (out / "table.md").read_text()
    assert "Clipping, eps = 0.2" in table_md and "0.82" in table_md and "-0.39" in table_md

    # rerun: nothing is trained again
    summaries = sorted((out / "runs").rglob("summary.json"))
    mtimes = [p.stat().st_mtime_ns for p in summaries]
    res2 = compare.run_grid(args)
    assert sorted(res2.statuses.values()) == ["skipped", "skipped"]
    assert [p.stat().st_mtime_ns for p in summaries] == mtimes
    assert res2.table["cpi"]["score"] == pytest.approx(res.table["cpi"]["score"])

    # an unfinished run (checkpoint but no summary.json) is resumed from its checkpoint, not retrained
    cpi_dir = out / "runs" / "InvertedPendulum-v5" / "cpi"
    before = json.loads((cpi_dir / "summary.json").read_text())
    (cpi_dir / "summary.json").unlink()
    res3 = compare.run_grid(args)
    assert res3.statuses == {str(cpi_dir): "resumed", str(out / "runs" / "InvertedPendulum-v5" / "clip-0.2"):
                             "skipped"}
    after = json.loads((cpi_dir / "summary.json").read_text())
    assert [a["last_100_returns"] for a in after["agents"]] == [a["last_100_returns"] for a in before["agents"]]

    # the same --out with other settings is refused before anything runs
    with pytest.raises(ConfigError, match="other settings"):
        compare.run_grid(CompareArgs(out=str(out), **(TINY | {"total_timesteps": 512})))


def test_the_grid_in_a_process_pool_and_as_ray_tasks_scores_exactly_like_in_process(tmp_path, monkeypatch):
    """--workers 2 (a spawned process pool) and --ray-address local (each group a Ray task in its own worker
    process): the same runs, the same scores as one after another in this process."""
    pytest.importorskip("ray")
    here = compare.run_grid(CompareArgs(out=str(tmp_path / "here"), **TINY))
    calls = []
    from ppolab.experiments import runners

    for name in ("run_pool", "run_ray"):
        run = getattr(runners, name)
        monkeypatch.setattr(runners, name, lambda *a, name=name, run=run: calls.append((name, len(a[1]))) or run(*a))
    for out, kw in (("pool", dict(workers=2)), ("ray", dict(ray_address="local"))):
        spread = compare.run_grid(CompareArgs(out=str(tmp_path / out), **kw, **TINY))
        assert sorted(spread.statuses.values()) == ["trained", "trained"] and spread.complete
        for setting in ("cpi", "clip-0.2"):
            assert spread.table[setting]["score"] == here.table[setting]["score"]
        rows = [list(csv.DictReader(open(tmp_path / d / "compare.csv"))) for d in ("here", out)]
        assert [r["raw_score"] for r in rows[0]] == [r["raw_score"] for r in rows[1]]
    assert calls == [("run_pool", 2), ("run_ray", 2)]  # both groups went to the pool, then to Ray


@pytest.mark.parametrize("kw, message", [
    (dict(workers=2, ray_address="auto"), "--workers 2 and --ray-address 'auto': choose one"),
    (dict(ray_address="auto", ray_run_cpus=0.0), "--ray-run-cpus must be a number > 0"),
])
def test_bad_ray_options_of_compare_are_refused_before_anything_is_written(tmp_path, kw, message):
    out = tmp_path / "cmp"
    with pytest.raises(ConfigError, match=message):
        compare.run_grid(CompareArgs(out=str(out), **(TINY | kw)))
    assert not out.exists()


def test_ctrl_c_stops_the_ray_tasks_with_checkpoints_and_the_grid_resumes(tmp_path):
    """Ctrl-C (SIGINT to the process group) while the groups run as Ray tasks: Ray interrupts each task, whose
    train() stops at the end of its iteration with a final checkpoint; the command says how to resume, and a rerun
    would resume every group."""
    pytest.importorskip("ray")
    import os
    import signal

    from _trust import checkpoints, csv_rows, start, wait_for

    out = tmp_path / "cmp"
    args = ["compare", "--envs", "InvertedPendulum-v5", "--settings", "cpi,clip-0.2", "--seeds", "1",
            "--total-timesteps", "400000", "--num-steps", "64", "--random-episodes", "5", "--out", str(out),
            "--ray-address", "local", "--no-progress"]
    proc = start(args, env={"RAY_ADDRESS": ""})
    runs = [out / "runs" / "InvertedPendulum-v5" / name for name in ("cpi", "clip-0.2")]
    wait_for(lambda: all((r / "metrics.csv").exists() and len(csv_rows(r)) >= 20 for r in runs), 180, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped; rerun the same command" in " ".join(err.split())
    for r in runs:
        n = len(csv_rows(r))
        assert 20 <= n < 6250 and checkpoints(r)[-1].name == f"ckpt-{n:08d}.ppolab"  # the final one, at its last row
        assert not (r / "summary.json").exists()
    same = CompareArgs(envs=("InvertedPendulum-v5",), settings=("cpi", "clip-0.2"), seeds=1,
                               total_timesteps=400000, num_steps=64, out=str(out))
    groups = compare.plan(list(same.envs), [compare.parse_setting(s) for s in same.settings])
    cfgs = [compare.group_config(same, g, out) for g in groups]
    assert [compare.group_status(c) for c in cfgs] == ["resume", "resume"]


def test_a_pool_worker_that_saw_a_stop_starts_no_queued_group(monkeypatch):
    """Ctrl-C cannot cancel the calls a process pool has already handed its workers; such a group must not train to
    its end after the signal (seen in session 7: a full group started after Ctrl-C). Outside a pool nothing changes."""
    import types

    import ppolab.training
    from ppolab.experiments import runners

    calls = []
    summaries = iter([{"stopped": "SIGINT"}, {}, {}])
    monkeypatch.setattr(ppolab.training, "train",
                        lambda cfg, **kw: calls.append(cfg) or types.SimpleNamespace(summary=next(summaries)))
    monkeypatch.setattr(runners, "_stop_seen", False)
    monkeypatch.setattr(runners, "_pool_worker", True)
    cfg = Config(run_dir="unused")
    assert runners.train_group(cfg, "fresh") == "stopped"
    assert runners.train_group(cfg, "resume") == "stopped"  # queued after the signal: not started
    assert len(calls) == 1
    monkeypatch.setattr(runners, "_pool_worker", False)  # in-process: the next run of the grid trains
    assert runners.train_group(cfg, "resume") == "done" and len(calls) == 2
