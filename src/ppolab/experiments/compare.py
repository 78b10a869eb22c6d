"""``ppolab compare``: the paper's Table 1, comparing surrogate objectives by normalized score (section 6.1).

A grid of objective settings x environments x seeds. Runs are grouped so that one ppolab run trains many agents at
once with ``jax.vmap``: a group is one environment and one objective kind, with every coefficient value of that kind
as a comma-list sweep and the seeds as ``num_seeds`` (e.g. clip eps 0.1, 0.2, 0.3 x 3 seeds = 9 agents in one run).
Groups run one after another, in a process pool (``--workers``), or as Ray tasks on a cluster (``--ray-address``).

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

import csv
import dataclasses
import json
import math
import re
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Literal

import numpy as np

from ppolab.config import Config, ConfigError, apply_preset, to_dict, validate
from ppolab.experiments import scores as S

ENVS_TABLE1 = ("HalfCheetah-v5", "Hopper-v5", "InvertedDoublePendulum-v5", "InvertedPendulum-v5", "Reacher-v5",
               "Swimmer-v5", "Walker2d-v5")
SETTINGS_TABLE1 = ("cpi", "clip-0.1", "clip-0.2", "clip-0.3", "kl-adaptive-0.003", "kl-adaptive-0.01",
                   "kl-adaptive-0.03", "kl-fixed-0.3", "kl-fixed-1", "kl-fixed-3", "kl-fixed-10")
#: The coefficient each objective kind sweeps.
COEFFICIENT = {"clip": "clip_eps", "kl-adaptive": "kl_target", "kl-fixed": "kl_beta"}


@dataclasses.dataclass
class CompareArgs:
    """The paper's Table 1: surrogate objectives compared by normalized score."""

    envs: tuple[str, ...] = ENVS_TABLE1
    """Environments (space- or comma-separated Gymnasium ids)."""
    settings: tuple[str, ...] = SETTINGS_TABLE1
    """Objective settings: cpi, clip-EPS, kl-adaptive-DTARG, kl-fixed-BETA (space- or comma-separated)."""
    seeds: int = 3
    """Random seeds per setting and environment."""
    seed: int = 0
    """First seed (seeds are seed, seed+1, ...)."""
    total_timesteps: int = 1_000_000
    """Environment steps of every run."""
    preset: str = "paper-mujoco"
    """Hyperparameter preset of every run (paper-mujoco: Table 3, beta initialised to 1)."""
    num_steps: int | None = None
    """Override the preset's horizon T (for quick smoke runs)."""
    num_epochs: int | None = None
    """Override the preset's number of epochs K."""
    num_minibatches: int | None = None
    """Override the preset's number of minibatches."""
    out: str = "runs/compare"
    """Output directory; rerunning with the same directory skips finished runs and resumes unfinished ones."""
    workers: int = 1
    """Processes running groups in parallel (1: in this process, one after another)."""
    ray_address: str = ""
    """Run the groups as Ray tasks instead (pip install 'ppolab[ray]'): 'auto' or 'HOST:6379' joins a cluster,
    'local' starts a Ray here. --out must then be a directory every node sees (a shared filesystem)."""
    ray_run_cpus: float = 1.0
    """CPUs Ray reserves for each group's run (with --ray-address)."""
    random_episodes: int = 100
    """Episodes of the uniform-random policy per environment (its score maps to 0)."""
    random_seed: int = 12345
    """Seed of the random policy's episodes and actions."""
    best: Literal["setting", "run"] = "setting"
    """What maps to 1 per environment: the best setting's seed-averaged score, or the best single run."""
    progress: bool = True
    """Show progress bars."""


# ---- the grid -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of Table 1: an objective and (for clip / KL) its coefficient's value."""

    name: str
    objective: str
    value: float | None = None

    @property
    def field(self) -> str | None:
        return COEFFICIENT.get(self.objective)


def parse_setting(name: str) -> Setting:
    """'cpi' | 'pg' | 'clip-0.2' | 'kl-adaptive-0.01' | 'kl-fixed-1' -> Setting (canonical name, e.g. kl-fixed-1)."""
    text = name.strip().lower()
    if text in ("cpi", "pg"):
        return Setting(text, text)
    m = re.fullmatch(r"(clip|kl-adaptive|kl-fixed)-([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)", text)
    if m is None:
        raise ConfigError(f"unknown setting {name!r}; use cpi, pg, clip-EPS, kl-adaptive-DTARG or kl-fixed-BETA "
                          f"(e.g. {', '.join(SETTINGS_TABLE1[:3])})")
    value = float(m.group(2))
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"setting {name!r}: the coefficient must be > 0")
    return Setting(f"{m.group(1)}-{value:g}", m.group(1), value)


@dataclasses.dataclass(frozen=True)
class Group:
    """One ppolab run: one environment, one objective kind, its settings' coefficients swept, seeds vmapped."""

    env: str
    objective: str
    settings: tuple[Setting, ...]

    @property
    def name(self) -> str:
        if self.settings[0].value is None:
            return self.objective
        return self.objective + "-" + "_".join(f"{s.value:g}" for s in self.settings)

    def run_dir(self, out: Path) -> Path:
        return out / "runs" / re.sub(r"[^A-Za-z0-9_.-]+", "_", self.env) / self.name


def plan(envs: list[str], settings: list[Setting]) -> list[Group]:
    """Settings grouped by objective kind, for each environment (in the order given)."""
    kinds: dict[str, list[Setting]] = {}
    for s in settings:
        kinds.setdefault(s.objective, []).append(s)
    return [Group(env, kind, tuple(ss)) for env in envs for kind, ss in kinds.items()]


def group_config(args: CompareArgs, group: Group, out: Path) -> Config:
    """The fully resolved Config of a group (the preset, then the grid's values on top)."""
    explicit = dict(env=group.env, objective=group.objective, total_timesteps=args.total_timesteps,
                    num_seeds=args.seeds, seed=args.seed, run_dir=str(group.run_dir(out)), eval_episodes=0,
                    progress=args.progress, tensorboard=False)
    for name in ("num_steps", "num_epochs", "num_minibatches"):
        if getattr(args, name) is not None:
            explicit[name] = getattr(args, name)
    field = group.settings[0].field
    if field is not None:
        values = tuple(s.value for s in group.settings)
        explicit[field] = values if len(values) > 1 else values[0]
    return validate(apply_preset(Config(preset=args.preset), explicit))


def _comparable(cfg_dict: dict) -> dict:
    d = json.loads(json.dumps(cfg_dict))
    for k in ("progress", "overwrite", "run_dir"):
        d.pop(k, None)
    return d


def group_status(cfg: Config) -> str:
    """'done' (summary.json written), 'resume' (a checkpoint exists), 'fresh' (nothing usable yet).

    Raises ``ConfigError`` when the directory holds a run of different settings."""
    run_dir = Path(cfg.run_dir)
    stored = run_dir / "config.json"
    if stored.is_file():
        try:
            old = json.loads(stored.read_text())
        except json.JSONDecodeError:
            old = None
        if old is not None and _comparable(old) != _comparable(to_dict(cfg)):
            diff = sorted(k for k in set(old) | set(to_dict(cfg))
                          if _comparable(old).get(k) != _comparable(to_dict(cfg)).get(k))
            raise ConfigError(f"{str(run_dir)!r} holds a run with other settings ({', '.join(diff)} differ); "
                              f"use another --out or the same options as before")
    summary = run_dir / "summary.json"
    if summary.is_file() and "stopped" not in json.loads(summary.read_text()):
        return "done"
    from ppolab.checkpoint import list_checkpoints

    if stored.is_file() and list_checkpoints(run_dir / "checkpoints"):
        return "resume"
    return "fresh"


def train_group(cfg: Config, status: str, console=None) -> str:
    """Train (or resume) one group; returns 'done', 'stopped' or 'failed: REASON' (a TrainingError, e.g. non-finite
    values: the other groups go on). Module level, so a process pool can run it."""
    from ppolab.train import TrainingError, train

    try:
        if status == "resume":
            result = train(cfg, explicit={"progress": cfg.progress}, resume=cfg.run_dir, console=console)
        else:
            cfg = cfg.replace(overwrite=True)  # a directory without a checkpoint holds nothing worth keeping
            every = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "preset"}
            result = train(cfg, explicit=every, console=console)
    except TrainingError as e:
        return f"failed: {e}"
    return "stopped" if "stopped" in result.summary else "done"


def _status(result: str, before: str) -> str:
    if result == "done":
        return "resumed" if before == "resume" else "trained"
    return "failed" if result.startswith("failed") else result


def _ignore_sigint():  # pool workers: only train()'s own handler (final checkpoint, clean exit) reacts to Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---- the random policy --------------------------------------------------------------------------------------------
def random_policy_score(env_id: str, episodes: int, seed: int) -> dict:
    """Mean total reward of ``episodes`` episodes of uniform random actions (episode i reset with seed + i)."""
    import gymnasium as gym

    from ppolab.envs import atari

    if atari.is_atari(env_id):  # the agents' game dynamics, scored by the true reward
        env = atari.make_atari(env_id, clip_reward=False, episodic_life=False)
    else:
        env = gym.make(env_id)
    try:
        space = env.action_space
        space.seed(seed)
        rng = np.random.default_rng(seed)
        box = isinstance(space, gym.spaces.Box)
        returns = []
        for i in range(episodes):
            env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                a = rng.uniform(space.low, space.high).astype(space.dtype) if box else space.sample()
                _, r, term, trunc, _ = env.step(a)
                total += float(r)
                done = term or trunc
            returns.append(total)
    finally:
        env.close()
    return {"score": S.run_score(returns, last=episodes), "episodes": episodes, "seed": seed,
            "policy": "uniform random actions", "returns": returns}


def random_scores(envs: list[str], episodes: int, seed: int, out: Path, say) -> dict:
    """random.json in ``out``: computed once per (env, episodes, seed) and reused on reruns."""
    path = out / "random.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    for env in envs:
        c = cache.get(env)
        if c is None or c.get("episodes") != episodes or c.get("seed") != seed:
            say(f"random policy on {env}: {episodes} episodes, seed {seed}")
            cache[env] = random_policy_score(env, episodes, seed)
            path.write_text(json.dumps(cache, indent=1))
    return {env: cache[env] for env in envs}


# ---- running the grid ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CompareResult:
    out: Path
    statuses: dict[str, str]   # group run dir -> skipped | trained | resumed | stopped | failed
    table: dict[str, dict]     # scores.table() rows
    complete: bool


def _steps_done(run_dir: Path) -> int:
    """env_steps of the last complete metrics.csv row (cheap tail read); 0 if none yet."""
    path = run_dir / "metrics.csv"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 8192))
            lines = f.read().decode(errors="ignore").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        parts = line.split(",")
        if len(parts) > 3 and parts[2].isdigit():
            return int(parts[2])
    return 0


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
    from ppolab.envs import atari, backend_of, check_env_id

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

    random = random_scores(envs, args.random_episodes, args.random_seed, out, say)
    statuses = {str(c.run_dir): "skipped" for g, c, st in todo if st == "done"}
    pending = [(g, c, st) for g, c, st in todo if st != "done"]
    if statuses:
        say(f"{len(statuses)} of {len(todo)} runs already finished in {out} (skipped)")
    stopped = False
    if pending and args.ray_address:
        stopped = _run_ray(args, pending, statuses, console)
    elif args.workers == 1:
        for i, (g, c, st) in enumerate(pending):
            say(f"[bold]run {i + 1}/{len(pending)}[/]: {g.env} {g.name} x {args.seeds} seeds"
                + (" (resuming)" if st == "resume" else ""))
            result = train_group(c, st, console=console if args.progress else None)
            statuses[str(c.run_dir)] = _status(result, st)
            if result.startswith("failed"):
                say(f"[red]{g.env} {g.name} {result}")
            if result == "stopped":
                stopped = True
                break
    elif pending:
        stopped = _run_pool(args, pending, statuses, console)
    if stopped:
        say(f"stopped; rerun the same command (--out {out}) to resume")
    return score_and_write(args, out, groups, cfgs, settings, envs, random, statuses, console)


def _group_progress(args: CompareArgs, console):
    """The progress display of groups running in parallel: a bar per group and one for the whole grid."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=console is None or not args.progress)


def _group_finished(progress, overall, bar, statuses: dict, group, cfg, before: str, result: str) -> bool:
    """Record a parallel group's result; True when it stopped (Ctrl-C)."""
    statuses[str(cfg.run_dir)] = _status(result, before)
    if result.startswith("failed"):
        progress.console.print(f"[red]{group.env} {group.name} {result}")
    progress.update(bar, completed=cfg.num_iterations * cfg.batch_size)
    progress.advance(overall)
    return result == "stopped"


def _run_pool(args: CompareArgs, pending, statuses: dict, console) -> bool:
    """Groups in a process pool (spawned: JAX is not fork-safe); progress read from each run's metrics.csv."""
    import multiprocessing as mp

    stopped = False
    progress = _group_progress(args, console)
    with progress, ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn"),
                                       initializer=_ignore_sigint) as pool:
        overall = progress.add_task(f"{len(pending)} runs", total=len(pending))
        futures = {}
        for g, c, st in pending:
            f = pool.submit(train_group, c.replace(progress=False), st)
            futures[f] = (g, c, st, progress.add_task(f"  {g.env} {g.name}", total=c.num_iterations * c.batch_size,
                                                      start=False))
        try:
            left = set(futures)
            while left:
                finished, left = wait(left, timeout=1.0, return_when=FIRST_COMPLETED)
                for f in finished:
                    g, c, st, task = futures[f]
                    stopped |= _group_finished(progress, overall, task, statuses, g, c, st, f.result())
                for f in left:
                    g, c, st, task = futures[f]
                    if f.running():
                        progress.start_task(task)
                        progress.update(task, completed=_steps_done(Path(c.run_dir)))
        except KeyboardInterrupt:  # workers got the signal too: they checkpoint and return
            for f in futures:
                f.cancel()
            wait([f for f in futures if not f.cancelled()])
            stopped = True
    return stopped


def _run_ray(args: CompareArgs, pending, statuses: dict, console) -> bool:
    """Groups as Ray tasks (one ``train_group`` each, ``--ray-run-cpus`` CPUs); progress read from each run's
    metrics.csv. Ctrl-C cancels the tasks: Ray interrupts each running one, whose ``train`` then stops at the end of
    its iteration with a final checkpoint, so rerunning the command resumes every group."""
    from ppolab.envs.ray_vec import init_ray

    ray, owns = init_ray("" if args.ray_address == "local" else args.ray_address)
    run_task = ray.remote(num_cpus=args.ray_run_cpus, max_retries=0)(train_group)
    stopped = False
    progress = _group_progress(args, console)
    try:
        with progress:
            overall = progress.add_task(f"{len(pending)} runs on Ray", total=len(pending))
            refs = {}
            for g, c, st in pending:
                bar = progress.add_task(f"  {g.env} {g.name}", total=c.num_iterations * c.batch_size)
                refs[run_task.remote(c.replace(progress=False), st)] = (g, c, st, bar)
            left = list(refs)
            try:
                while left:
                    done, left = ray.wait(left, num_returns=len(left), timeout=1.0)
                    for ref in done:
                        g, c, st, bar = refs[ref]
                        try:
                            result = ray.get(ref)
                        except ray.exceptions.RayError as e:  # the task's process died, or an unexpected error
                            result = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        stopped |= _group_finished(progress, overall, bar, statuses, g, c, st, result)
                    for ref in left:
                        progress.update(refs[ref][3], completed=_steps_done(Path(refs[ref][1].run_dir)))
            except KeyboardInterrupt:
                for ref in left:
                    ray.cancel(ref)
                for ref in left:
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError:
                        pass
                stopped = True
    finally:
        if owns:
            ray.shutdown()
    return stopped


# ---- scoring and outputs ------------------------------------------------------------------------------------------
def _agent_matches(agent: dict, setting: Setting) -> bool:
    return setting.field is None or math.isclose(agent[setting.field], setting.value, rel_tol=1e-6)


def score_and_write(args, out, groups, cfgs, settings, envs, random, statuses, console) -> CompareResult:
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


# ---- command line -------------------------------------------------------------------------------------------------
def _split_commas(argv: list[str]) -> list[str]:
    """``--envs A,B`` -> ``--envs A B`` (also for --settings)."""
    out, listy = [], False
    for tok in argv:
        if tok.startswith("--"):
            flag, eq, val = tok.partition("=")
            listy = flag in ("--envs", "--settings")
            if eq and listy:
                out.append(flag)
                out.extend(x for x in val.split(",") if x)
                continue
            out.append(tok)
        elif listy:
            out.extend(x for x in tok.split(",") if x)
        else:
            out.append(tok)
    return out


def main(argv: list[str]) -> int:
    from rich.console import Console

    from ppolab.cli import _tyro_parse

    args = _tyro_parse(CompareArgs, _split_commas(list(argv)), "ppolab compare")
    console = Console(stderr=True)
    t0 = time.perf_counter()
    result = run_grid(args, console)
    if any(s == "stopped" for s in result.statuses.values()):
        return 0
    if any(s == "failed" for s in result.statuses.values()):
        console.print("[red]some runs failed[/] (see above); the table leaves them out")
        return 1
    console.print(f"[bold green]done[/] in {time.perf_counter() - t0:.0f} s"
                  + ("" if result.complete else " (table incomplete: some runs have no finished episode)"))
    return 0
