"""The grid of ``ppolab compare`` (the paper's Table 1): objective settings x environments x seeds, grouped into
ppolab runs, each run's config and status.

A group is one environment and one objective kind, with every coefficient value of that kind as a comma-list sweep
and the seeds as ``num_seeds`` (e.g. clip eps 0.1, 0.2, 0.3 x 3 seeds = 9 agents in one run, vmapped).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ppolab import objectives
from ppolab.config import Config, ConfigError, apply_preset, to_dict, validate

if TYPE_CHECKING:
    from ppolab.cli import CompareArgs

ENVS_TABLE1 = ("HalfCheetah-v5", "Hopper-v5", "InvertedDoublePendulum-v5", "InvertedPendulum-v5", "Reacher-v5",
               "Swimmer-v5", "Walker2d-v5")
SETTINGS_TABLE1 = ("cpi", "clip-0.1", "clip-0.2", "clip-0.3", "kl-adaptive-0.003", "kl-adaptive-0.01",
                   "kl-adaptive-0.03", "kl-fixed-0.3", "kl-fixed-1", "kl-fixed-3", "kl-fixed-10")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of Table 1: an objective and (for clip / KL) its coefficient's value."""

    name: str
    objective: str
    value: float | None = None

    @property
    def field(self) -> str | None:
        """The coefficient the setting names (from the objective's record)."""
        return objectives.get(self.objective).setting_coefficient


def _setting_forms() -> str:
    return ", ".join(f"{o.name}-{o.setting_coefficient.upper().replace('_', '')}" if o.setting_coefficient else o.name
                     for o in objectives.OBJECTIVES.values())


def parse_setting(name: str) -> Setting:
    """'cpi' | 'pg' | 'clip-0.2' | 'kl-adaptive-0.01' | 'kl-fixed-1' -> Setting (canonical name, e.g. kl-fixed-1).
    The forms come from the objectives' registry: NAME, or NAME-VALUE where the objective names a coefficient."""
    text = name.strip().lower()
    record = objectives.OBJECTIVES.get(text)
    if record is not None and record.setting_coefficient is None:
        return Setting(text, text)
    kind, _, raw = text.rpartition("-")
    record = objectives.OBJECTIVES.get(kind)
    if record is None or record.setting_coefficient is None or not re.fullmatch(
            r"[0-9]*\.?[0-9]+(?:e-?[0-9]+)?", raw):
        raise ConfigError(f"unknown setting {name!r}; use {_setting_forms()} (e.g. {', '.join(SETTINGS_TABLE1[:3])})")
    value = float(raw)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"setting {name!r}: the coefficient must be > 0")
    return Setting(f"{kind}-{value:g}", kind, value)


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
