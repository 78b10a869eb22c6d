"""``ppolab compare``: the paper's Table 1, comparing surrogate objectives by normalized score (section 6.1).

A grid of objective settings x environments x seeds. Runs are grouped so that one ppolab run trains many agents at
once with ``jax.vmap``: a group is one environment and one objective kind, with every coefficient value of that kind
as a comma-list sweep and the seeds as ``num_seeds`` (e.g. clip eps 0.1, 0.2, 0.3 x 3 seeds = 9 agents in one run).
Groups run one after another, in a process pool (``--workers``), or as Ray tasks on a cluster (``--ray-address``):
``grid.py`` (the grid and each group's config), ``runners.py`` (the three ways to run it), ``report.py`` (scores and
outputs); the options are ``cli.CompareArgs``.

Scoring exactly as the paper: a run's score is the mean total reward of its last 100 training episodes (stored per
agent as ``last_100_returns`` in summary.json); per environment a uniform-random policy maps to 0 and the best
setting to 1 (``scores.normalize``); a setting's entry averages its normalized scores over environments and seeds.

Output directory (``--out``): compare.csv (every run's raw and normalized score), table.md (our column beside the
paper's), scores.json, random.json (the random policy's score, seed and episode count per environment),
learning_curves.png (a panel per environment) and scores.png (bar chart), and runs/ENV/GROUP/ (ppolab run
directories). Rerunning with the same ``--out`` skips finished groups (summary.json present) and resumes unfinished
ones from their newest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from ppolab.config import ConfigError
from ppolab.experiments import report, runners
from ppolab.experiments import scores as S
from ppolab.experiments.grid import (
    ENVS_TABLE1,
    SETTINGS_TABLE1,
    Group,
    Setting,
    group_config,
    group_status,
    parse_setting,
    plan,
)
from ppolab.experiments.report import CompareResult

if TYPE_CHECKING:
    from ppolab.cli import CompareArgs

__all__ = ["ENVS_TABLE1", "SETTINGS_TABLE1", "CompareResult", "Group", "Setting", "group_config", "group_status",
           "parse_setting", "plan", "run_grid"]


def run_grid(args: CompareArgs, console=None) -> CompareResult:
    """Run (or resume) every group of the grid, then score it and write every output."""
    if args.seeds < 1 or args.total_timesteps < 1 or args.workers < 1 or args.random_episodes < 1:
        raise ConfigError("--seeds, --total-timesteps, --workers and --random-episodes must be positive integers")
    if args.ray_address and args.workers != 1:
        raise ConfigError(f"--workers {args.workers} and --ray-address {args.ray_address!r}: choose one (with Ray, "
                          "the cluster's CPUs and --ray-run-cpus decide how many runs go at once)")
    if not (math.isfinite(args.ray_run_cpus) and args.ray_run_cpus > 0):
        raise ConfigError(f"--ray-run-cpus must be a number > 0 (got {args.ray_run_cpus!r})")
    if args.ray_address:
        from ppolab.envs.ray_vec import import_ray

        import_ray()  # a missing Ray is reported before anything is written
    from ppolab.envs import atari, backend_of
    from ppolab.envs.gymnasium_vec import check_env_id

    envs = list(dict.fromkeys(args.envs))
    settings = list({s.name: s for s in map(parse_setting, args.settings)}.values())
    if not envs or not settings:
        raise ConfigError("--envs and --settings must name at least one environment and one setting")
    for env in envs:
        if backend_of(env)[0] != "gymnasium":
            raise ConfigError(f"ppolab compare runs Gymnasium environments; {env!r} is not one")
        if atari.is_atari(env):
            atari.register_ale()
        check_env_id(env)
    out = Path(args.out)
    groups = plan(envs, settings)
    cfgs = [group_config(args, g, out) for g in groups]  # validates everything before anything is written
    todo = [(g, c, group_status(c)) for g, c in zip(groups, cfgs, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    say = console.print if console is not None else (lambda *a, **k: None)
    (out / "grid.json").write_text(json.dumps({"args": dataclasses.asdict(args)}, indent=1, default=list))

    random = S.random_scores(envs, args.random_episodes, args.random_seed, out, say)
    statuses = {str(c.run_dir): "skipped" for g, c, st in todo if st == "done"}
    pending = [(g, c, st) for g, c, st in todo if st != "done"]
    if statuses:
        say(f"{len(statuses)} of {len(todo)} runs already finished in {out} (skipped)")
    stopped = False
    if pending and args.ray_address:
        stopped = runners.run_ray(args, pending, statuses, console)
    elif pending and args.workers == 1:
        stopped = runners.run_in_process(args, pending, statuses, console, say)
    elif pending:
        stopped = runners.run_pool(args, pending, statuses, console)
    if stopped:
        say(f"stopped; rerun the same command (--out {out}) to resume")
    result = report.score_and_write(args, out, groups, cfgs, settings, envs, random, statuses, console)
    try:
        from ppolab.report import write_report

        write_report(out)  # report.html: the table beside the paper's column, per-env curves
    except Exception as e:  # noqa: BLE001 - a report must never lose a grid
        if console is not None:
            console.print(f"[yellow]could not write report.html: {type(e).__name__}: {e}")
    return result
