"""Command line: ``ppolab train | eval | export | report | compare | figures | plot`` (tyro; Config docstrings: help).

Bad input never produces a traceback: a one-line ``ppolab: error: ...`` naming the value and what is allowed, exit
code 2, and nothing written. A fault during a run (an env failing, a full disk, non-finite values) is a one-line
error with exit code 1, the last good checkpoint kept; SIGINT / SIGTERM stop with a final checkpoint, exit 130 / 143.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import signal
import sys
from pathlib import Path
from typing import Literal

import tyro

from ppolab.config import SWEEPABLE, Config, ConfigError
from ppolab.experiments import grid

USAGE = """usage: ppolab {train,eval,export,report,compare,figures,plot} [options]

  train     train an agent (default: CartPole-v1); --help lists every option
  eval      evaluate a run directory's checkpoint: ppolab eval RUN_DIR [--episodes N] [--video]
  export    the trained policy as an ONNX model: ppolab export RUN_DIR [--with-value] [--out FILE]
  report    (re)write RUN_DIR/report.html, one self-contained page (a run or a ppolab compare directory)
  compare   the paper's Table 1 comparison of surrogate objectives (normalized scores)
  figures   the paper's Figures 1 and 2 from ppolab's objectives and a real Hopper batch
  plot      redraw a run directory's learning curve
"""


class UsageError(Exception):
    pass


def _fail(msg: str, code: int = 2):
    print(f"ppolab: error: {msg}", file=sys.stderr)
    return code


def split_comma_lists(argv: list[str], flags: set[str]) -> list[str]:
    """``--clip-eps 0.1,0.2`` -> ``--clip-eps 0.1 0.2`` (and ``--flag=a,b``) for the list-valued ``flags``: every
    value after such a flag, up to the next option, is split at its commas. One parser for every command."""
    out, listy = [], False
    for tok in argv:
        if tok.startswith("--"):
            flag, eq, val = tok.partition("=")
            listy = flag in flags
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


SWEEP_FLAGS = {"--" + k.replace("_", "-") for k in SWEEPABLE}


def _tyro_parse(cls, argv: list[str], prog: str, default=None):
    """tyro, with its error box condensed to one line."""
    if any(a in ("-h", "--help") for a in argv):
        return tyro.cli(cls, args=argv, prog=prog, default=default)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            return tyro.cli(cls, args=argv, prog=prog, default=default)
    except SystemExit as e:
        if e.code in (0, None):
            raise
        text = re.sub(r"[│╭╮╰╯─━┃]+", " ", buf.getvalue())
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not re.fullmatch(r"[-=_ ]+", ln.strip())]
        lines = [ln for ln in lines if not ln.startswith(("For full helptext", "Argument helptext"))]
        detail = " ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "invalid arguments")
        raise UsageError(f"{detail.strip()} (see ppolab {prog.split()[-1]} --help)") from None


def _explicit_fields(argv: list[str]) -> set[str]:
    names = {f.name for f in dataclasses.fields(Config)}
    out = set()
    for tok in argv:
        if not tok.startswith("--"):
            continue
        flag = tok[2:].split("=", 1)[0].replace("-", "_")
        if flag in names:
            out.add(flag)
        elif flag.startswith("no_") and flag[3:] in names:
            out.add(flag[3:])
    return out


def _pop_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    out, value, i = [], None, 0
    while i < len(argv):
        tok = argv[i]
        if tok == name:
            if i + 1 >= len(argv):
                raise UsageError(f"{name} needs a value")
            value = argv[i + 1]
            i += 2
            continue
        if tok.startswith(name + "="):
            value = tok.split("=", 1)[1]
        else:
            out.append(tok)
        i += 1
    return out, value


def parse_train_args(argv: list[str]) -> tuple[Config, set[str], str | None]:
    from ppolab.config import from_dict
    from ppolab.config_file import load_config_file

    argv, resume = _pop_option(argv, "--resume")
    argv, config_file = _pop_option(argv, "--config")
    argv = split_comma_lists(argv, SWEEP_FLAGS)
    base = Config()
    explicit: set[str] = set()
    if config_file is not None:
        file_values = load_config_file(config_file)
        base = from_dict(file_values)
        explicit |= set(file_values)
    cfg = _tyro_parse(Config, argv, "ppolab train", default=base)
    explicit |= _explicit_fields(argv)
    return cfg, explicit, resume


@dataclasses.dataclass
class EvalArgs:
    run_dir: tyro.conf.Positional[str]
    """Run directory written by ppolab train."""
    episodes: int = 10
    """Evaluation episodes per agent."""
    stochastic: bool = False
    """Sample actions instead of taking the distribution's mode."""
    seed: int = 12345
    """Seed of the evaluation episodes."""
    video: bool = False
    """Also record one episode of agent 0 to RUN_DIR/videos (MP4, H.264; pip install 'ppolab[video]')."""
    video_format: Literal["mp4", "gif"] = "mp4"
    """Container of the --video recording."""


@dataclasses.dataclass
class CompareArgs:
    """The paper's Table 1: surrogate objectives compared by normalized score."""

    envs: tuple[str, ...] = grid.ENVS_TABLE1
    """Environments (space- or comma-separated Gymnasium ids)."""
    settings: tuple[str, ...] = grid.SETTINGS_TABLE1
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


@dataclasses.dataclass
class PlotArgs:
    run_dir: tyro.conf.Positional[str]
    """Run directory written by ppolab train."""


def cmd_train(argv: list[str]) -> int:
    from rich.console import Console

    from ppolab.training import train

    cfg, explicit, resume = parse_train_args(argv)
    console = Console(stderr=True)
    result = train(cfg, explicit={k: getattr(cfg, k) for k in explicit}, resume=resume, console=console)
    s = result.summary
    if "stopped" in s:  # SIGINT / SIGTERM: final checkpoint written; exit 128 + signal number (130 / 143)
        return 128 + int(getattr(signal, s["stopped"], signal.SIGINT))
    ev = s.get("eval_return_mean")
    console.print(f"[bold green]done[/] {s['env_id']} / {s['objective']}: {s['total_timesteps']:,} steps in "
                  f"{s['wall_time_s']:.1f} s ({s['sps']:,.0f} SPS"
                  + (f"; {s['sps_after_first_call']:,.0f} after compiling" if s.get("sps_after_first_call") else "")
                  + ")"
                  + (f", eval return {ev:.1f} +- {s['eval_return_std']:.1f}" if ev is not None else "")
                  + f"\nrun directory: {result.run_dir}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    from ppolab.evaluation import evaluate_run

    args = _tyro_parse(EvalArgs, argv, "ppolab eval")
    if not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory {args.run_dir!r} does not exist")
    out = evaluate_run(args.run_dir, args.episodes, not args.stochastic, args.seed, video=args.video,
                       video_format=args.video_format)
    print(json.dumps(out, indent=2))
    return 0


def cmd_plot(argv: list[str]) -> int:
    from ppolab.logging import plot_learning_curve

    args = _tyro_parse(PlotArgs, argv, "ppolab plot")
    if not (Path(args.run_dir) / "metrics.csv").is_file():
        raise ConfigError(f"{args.run_dir!r} has no metrics.csv (is it a ppolab run directory?)")
    print(plot_learning_curve(Path(args.run_dir)))
    return 0


def cmd_compare(argv: list[str]) -> int:
    import time

    from rich.console import Console

    from ppolab.experiments.compare import run_grid

    args = _tyro_parse(CompareArgs, split_comma_lists(list(argv), {"--envs", "--settings"}), "ppolab compare")
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


def cmd_export(argv: list[str]) -> int:
    from ppolab.export import ExportArgs, run_export

    print(run_export(_tyro_parse(ExportArgs, argv, "ppolab export")))
    return 0


def cmd_report(argv: list[str]) -> int:
    from ppolab.report import ReportArgs, run_report

    print(run_report(_tyro_parse(ReportArgs, argv, "ppolab report")))
    return 0


def cmd_figures(argv: list[str]) -> int:
    from ppolab.experiments.figures import FiguresArgs, make_figures

    out = make_figures(_tyro_parse(FiguresArgs, argv, "ppolab figures"))
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, list | dict)}, indent=2))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "report": cmd_report, "plot": cmd_plot,
            "compare": cmd_compare, "figures": cmd_figures}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            argv = ["train"]
        else:
            print(USAGE)
            return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        return _fail(f"unknown command {cmd!r}; choose one of: {', '.join(COMMANDS)}")
    from ppolab.checkpoint import CheckpointError
    from ppolab.envs.errors import EnvError, EnvWorkerError
    from ppolab.loop import TrainingError
    from ppolab.runlock import RunWriteError
    from ppolab.spaces import UnsupportedSpaceError

    try:
        return COMMANDS[cmd](rest)
    except (TrainingError, RunWriteError, EnvWorkerError) as e:  # a fault during the run: exit 1
        return _fail(str(e), code=1)
    except (ConfigError, EnvError, UnsupportedSpaceError, CheckpointError, UsageError) as e:  # bad input: exit 2
        return _fail(str(e))
    except KeyboardInterrupt:
        print("ppolab: interrupted", file=sys.stderr)
        return 130


def _entry():  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
