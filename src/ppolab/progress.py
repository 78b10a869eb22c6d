"""The progress bar of ``ppolab train`` (rich), or nothing (``--no-progress``, the Python API without a console)."""

from __future__ import annotations

from ppolab.config import Config


class ProgressBar:
    """Environment steps done, steps per second (all agents) and the population's recent mean return."""

    def __init__(self, cfg: Config, console, start_iteration: int):
        self.cfg, self._bar, self._task = cfg, None, None
        if cfg.progress and console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("steps  SPS {task.fields[sps]}  return {task.fields[ret]}"),
                                 TimeElapsedColumn(), console=console, transient=False, refresh_per_second=4)
            self._task = self._bar.add_task("train", total=cfg.num_iterations * cfg.batch_size,
                                            completed=start_iteration * cfg.batch_size, sps="", ret="")

    def __enter__(self) -> ProgressBar:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def update(self, iteration: int, sps: float, ret: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=iteration * self.cfg.batch_size, sps=f"{sps:,.0f}", ret=f"{ret:.1f}")
