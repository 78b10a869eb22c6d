"""The run directory: where a run is written, what may change when it is resumed, and its summary.

A run directory holds config.json (the full config), metrics.csv, tb/, checkpoints/, learning_curve.png and, once
the run has finished, summary.json (README.md lists what each holds).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from ppolab.config import Config, ConfigError, from_dict, swept_fields, to_dict
from ppolab.runlock import LOCK_NAME, RunLock, RunWriteError, write_atomic

#: Options that may change when a run is resumed (they do not affect what is learned).
RESUME_OVERRIDABLE = ("threads", "progress", "tensorboard", "eval_episodes", "eval_deterministic", "checkpoint_every",
                      "checkpoint_every_s", "keep_checkpoints", "nonfinite", "compile_cache", "ray_workers",
                      "ray_address", "ray_worker_cpus", "wandb_project", "env_timeout")


def default_run_dir(cfg: Config) -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env)
    return Path("runs") / f"{env}-{cfg.objective}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: Config) -> Path:
    """The directory a fresh run of ``cfg`` will write: checked, not yet created (``create_run_dir``)."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    _check_names(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {str(run_dir)!r} exists and is not a directory; choose another path")
    if run_dir.exists() and any(p.name != LOCK_NAME for p in run_dir.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--run-dir {str(run_dir)!r} already holds a run; pass --overwrite to replace it, "
                          f"--resume {str(run_dir)!r} to continue it, or choose another directory")
    check_writable(run_dir)
    return run_dir


def _check_names(run_dir: Path) -> None:
    for part in run_dir.absolute().parts:
        if len(os.fsencode(part)) > 255:
            raise ConfigError(f"--run-dir {str(run_dir)!r}: the name {part[:40]!r}... is longer than the 255 bytes "
                              "a file name may have; choose a shorter one")


def check_writable(run_dir: Path) -> None:
    """``ConfigError`` unless ``run_dir`` can be created (or written, if it exists): every name within the file
    system's limit, and a directory can be made in its nearest existing ancestor (tried and removed again, so
    nothing is left behind: permission bits alone do not tell, e.g. for root or in /proc)."""
    _check_names(run_dir)
    parent = run_dir.absolute()
    while not parent.exists():
        parent = parent.parent
    try:
        if not parent.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        os.rmdir(tempfile.mkdtemp(prefix=".ppolab-probe-", dir=parent))
    except OSError as e:
        raise ConfigError(f"--run-dir {str(run_dir)!r} cannot be written: {str(parent)!r}: {e.strerror or e}; "
                          "choose another --run-dir") from None


def lock_run_dir(run_dir: Path, fresh: bool) -> RunLock:
    """The exclusive lock of ``run_dir`` for this process's run (created first for a fresh run); a second process
    is refused at once, naming the holder (``runlock.RunLockedError``)."""
    if fresh:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--run-dir {str(run_dir)!r} cannot be written: {e.strerror or e}; choose another "
                              "--run-dir") from None
    return RunLock(run_dir, command="ppolab train").acquire()


def create_run_dir(run_dir: Path, cfg: Config) -> None:
    """Empty ``run_dir`` with --overwrite (its lock file stays: the lock is held on it) and write config.json; an
    OS error is a ``ConfigError``."""
    try:
        if cfg.overwrite:
            for p in run_dir.iterdir():
                if p.name == LOCK_NAME:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
        write_atomic(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2).encode())
    except (OSError, RunWriteError) as e:
        raise ConfigError(f"--run-dir {str(run_dir)!r} cannot be written: {getattr(e, 'strerror', None) or e}; "
                          "choose another --run-dir") from None


def finished_summary(run_dir: Path) -> dict | None:
    """summary.json of a run that finished (not one stopped by a signal), or None."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and "stopped" not in summary else None


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"cannot resume {str(run_dir)!r}: no config.json there (is it a ppolab run directory?)")
    try:
        return from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"cannot resume {str(run_dir)!r}: config.json is not valid JSON ({e})") from None


def resume_overrides(cfg: Config, explicit: dict | None) -> dict:
    """Flags given with --resume: the harmless ones apply, any other that differs from the saved config is an error
    (the run continues with its own config; nothing is silently ignored)."""
    out = {}
    for k, v in (explicit or {}).items():
        if k in RESUME_OVERRIDABLE:
            out[k] = v
        elif k == "total_timesteps" and isinstance(v, int) and v > cfg.total_timesteps:
            out[k] = v  # continues the run (a finished one too) to the new total
        elif k in ("run_dir", "overwrite") or v == getattr(cfg, k, v) or (isinstance(v, list | tuple) and tuple(
                v) == tuple(getattr(cfg, k, ()) or ())):
            continue
        else:
            allowed = ", ".join("--" + o.replace("_", "-") for o in RESUME_OVERRIDABLE)
            raise ConfigError(f"--{k.replace('_', '-')} cannot change when resuming (the run has "
                              f"{getattr(cfg, k)!r}); only {allowed} (and a larger --total-timesteps, to continue "
                              "it) may be given with --resume")
    return out


def agent_summary(row: dict, recent: list[float], eval_returns, final_beta: float) -> dict:
    """One agent's entry of summary.json: its seed and coefficients (``row``), its training and eval scores."""
    a = dict(row)
    a["train_return_recent"] = float(np.mean(recent)) if recent else None
    a["last_100_returns"] = [float(x) for x in recent]  # the paper's run score (Table 1) is their mean
    if eval_returns is not None:
        a["eval_return_mean"] = float(np.mean(eval_returns))
        a["eval_return_std"] = float(np.std(eval_returns))
        a["eval_returns"] = [float(x) for x in eval_returns]
    a["final_beta"] = final_beta
    return a


def make_summary(cfg: Config, agents: list[dict], timing: dict, episodes: int) -> dict:
    """summary.json: the run's settings, scores (``agents``, from ``agent_summary``) and ``timing``."""
    K = len(agents)
    means = [a["eval_return_mean"] for a in agents if "eval_return_mean" in a]
    summary = {
        "env_id": cfg.env, "objective": cfg.objective, "preset": cfg.preset,
        "total_timesteps": int(cfg.num_iterations * cfg.batch_size), "num_agents": K,
        "swept": swept_fields(cfg),
        "eval_episodes": cfg.eval_episodes, "eval_deterministic": cfg.eval_deterministic,
        "eval_return_mean": (means[0] if K == 1 else statistics.fmean(means)) if means else None,
        "eval_return_std": (agents[0]["eval_return_std"] if K == 1 else
                            (statistics.pstdev(means) if len(means) > 1 else 0.0)) if means else None,
        "train_return_recent": agents[0]["train_return_recent"] if K == 1 else None,
        "episodes": episodes,
        **timing,
        "agents": agents,
        "platform": jax.default_backend(),
    }
    if K > 1 and means:
        summary["eval_return_mean_over_agents"] = statistics.fmean(means)
        summary["eval_return_std_over_agents"] = statistics.pstdev(means)
    return summary
