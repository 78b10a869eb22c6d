"""Weights & Biases logging (``--wandb-project NAME``; ``pip install 'ppolab[wandb]'``): the rows of metrics.csv.

``WandbSink(project, run_dir, config_dict)`` opens a W&B run whose files live in ``RUN_DIR/wandb/``; ``log(rows)``
takes the same rows as ``MetricsLogger.log`` (one per iteration and agent) and logs every number of a row at
W&B step ``env_steps`` (the x axis of metrics.csv and TensorBoard), keys prefixed ``agentK/`` in a population
(the TensorBoard tags), so the K rows of one iteration form one W&B history row. ``close()`` finishes the run.

The W&B run id is kept in ``RUN_DIR/wandb/ppolab-run-id``: ``ppolab train --resume`` continues the same W&B run
(W&B ignores steps at or before the last one it has; rows recomputed after a resume keep their first values).
``mode``: "online", "offline" (no network; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads later) or
"disabled"; None lets W&B decide (``WANDB_MODE``, else online). wandb is imported only when a sink is made.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ppolab.config import ConfigError

ID_FILE = "ppolab-run-id"
_SKIP = ("agent", "num_agents")


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError("--wandb-project needs wandb: pip install 'ppolab[wandb]'") from None
    return wandb


def _new_id() -> str:
    """A W&B run id (8 characters of [a-z0-9], as W&B makes them)."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _number(v) -> float | int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class WandbSink:
    """A W&B run fed with metrics.csv rows. See the module docstring."""

    def __init__(self, project: str, run_dir: str | os.PathLike, config_dict: dict, mode: str | None = None,
                 name: str | None = None, entity: str | None = None, group: str | None = None,
                 tags: tuple[str, ...] = ()):
        if not project or not isinstance(project, str):
            raise ConfigError(f"--wandb-project must be a non-empty name (got {project!r})")
        if mode not in (None, "online", "offline", "disabled"):
            raise ConfigError(f"wandb mode {mode!r} is not one of online, offline, disabled")
        wandb = _import_wandb()
        self.run_dir = Path(run_dir)
        wdir = self.run_dir / "wandb"
        wdir.mkdir(parents=True, exist_ok=True)
        id_path = wdir / ID_FILE
        run_id = id_path.read_text().strip() if id_path.is_file() else _new_id()
        try:
            self.run = wandb.init(project=project, entity=entity, dir=str(self.run_dir), config=config_dict,
                                  name=name or self.run_dir.name, group=group, tags=list(tags) or None, id=run_id,
                                  resume="allow", mode=mode, reinit="create_new",
                                  settings=wandb.Settings(console="off", silent=True))
        except Exception as e:  # no network / no login in online mode, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(f"cannot start W&B run for --wandb-project {project!r}: {first} (set "
                              "WANDB_MODE=offline to log without a network)") from None
        id_path.write_text(self.run.id)
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")
        self._last_step = -1

    def log(self, rows: list[dict]) -> None:
        """Log metrics.csv rows (dicts with ``agent``, ``env_steps``, ...; NaN / empty values are left out)."""
        for row in rows:
            step = int(row["env_steps"])
            if step < self._last_step:
                continue  # W&B refuses steps that go back
            prefix = f"agent{row['agent']}/" if int(row.get("num_agents", 1)) > 1 else ""
            data = {}
            for k, v in row.items():
                if k in _SKIP or k == "env_steps":
                    continue
                x = _number(v)
                if x is not None:
                    data[prefix + k] = x
            data["env_steps"] = step
            self.run.log(data, step=step)
            self._last_step = step

    def log_summary(self, summary: dict) -> None:
        """Put the scalar entries of summary.json (eval_return_mean, sps, ...) into the W&B run's summary."""
        for k, v in summary.items():
            if isinstance(v, str):
                self.run.summary[k] = v
            elif not isinstance(v, list | dict | type(None)) and (x := _number(v)) is not None:
                self.run.summary[k] = x

    def log_video(self, path: str | os.PathLike) -> None:
        """Attach a recorded episode (MP4 or GIF file)."""
        wandb = _import_wandb()
        p = Path(path)
        self.run.log({"video": wandb.Video(str(p), format=p.suffix.lstrip("."))}, commit=False)

    def close(self) -> None:
        """Finish the W&B run (flushes everything to RUN_DIR/wandb/)."""
        if self.run is not None:
            self.run.finish()
            self.run = None

    def __enter__(self) -> WandbSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
