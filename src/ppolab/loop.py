"""The training loop, over named pieces: the driver runs iterations, ``EpisodeStats`` keeps the episode returns,
``metric_rows`` makes the metrics.csv rows, ``Checkpointer`` and ``CheckpointSchedule`` write checkpoints.

One host sync per driver call; a run stops at the end of an iteration on SIGINT/SIGTERM (with a final checkpoint),
on non-finite values (``--nonfinite stop``) or when an environment worker dies.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ppolab import checkpoint as ckpt_lib
from ppolab.config import Config, to_dict
from ppolab.drivers.base import Driver, Metrics
from ppolab.envs.base import Episode
from ppolab.envs.errors import EnvWorkerError
from ppolab.logging import MetricsLogger
from ppolab.signals import StopSignal
from ppolab.types import TrainState
from ppolab.update import METRIC_KEYS, NONFINITE_BITS


class TrainingError(RuntimeError):
    """Training stopped on a fault (e.g. non-finite values); the message names the iteration and the quantity."""


@dataclasses.dataclass
class EpisodeStats:
    """Finished episodes: each agent's last 100 returns (the paper's run score) and the count of all episodes."""

    recent: list[deque]
    episodes: int = 0

    @classmethod
    def create(cls, recent: list[list[float]], episodes: int = 0) -> EpisodeStats:
        return cls([deque(r, maxlen=100) for r in recent], episodes)

    def add(self, episodes: list[Episode]) -> list[list[float]]:
        """Record one iteration's episodes; returns each agent's finite returns of that iteration (an episode with
        a NaN/inf reward, possible with ``--nonfinite skip``, has no usable return)."""
        per_agent: list[list[float]] = [[] for _ in self.recent]
        for ep in episodes:
            if math.isfinite(ep.ret):
                per_agent[ep.agent].append(ep.ret)
                self.recent[ep.agent].append(ep.ret)
        self.episodes += len(episodes)
        return per_agent

    def recent_mean(self, agent: int) -> float:
        return float(np.mean(self.recent[agent])) if self.recent[agent] else math.nan

    def population_mean(self) -> float:
        """Mean over agents of their recent means (the progress bar's "return")."""
        if not any(self.recent):
            return float("nan")
        return float(np.nanmean([np.mean(d) if d else np.nan for d in self.recent]))


def metric_rows(iteration: int, cfg: Config, now: float, returns: list[list[float]], stats: EpisodeStats,
                metrics: Metrics) -> list[dict]:
    """The metrics.csv rows of one iteration, one per agent (``returns``: each agent's episode returns in it)."""
    K = len(returns)
    rows = []
    for k in range(K):
        row = {"iteration": iteration, "agent": k, "env_steps": iteration * cfg.batch_size, "time_s": round(now, 3),
               "episodes": len(returns[k]),
               "episode_return": float(np.mean(returns[k])) if returns[k] else math.nan,
               "return_recent": stats.recent_mean(k), "num_agents": K}
        row.update({m: float(metrics[m][k]) for m in METRIC_KEYS})
        rows.append(row)
    return rows


def nonfinite_message(metrics: Metrics, iteration: int, agent: int) -> str | None:
    """What was non-finite in an agent's update (from the ``nonfinite_*`` metrics), or None."""
    kind = int(metrics["nonfinite_kind"][agent]) if "nonfinite_kind" in metrics else 0
    what = [name for name, bit in NONFINITE_BITS.items() if kind & bit]
    if metrics["nonfinite_input"][agent] > 0:
        src = " and ".join(w for w in what if w in ("observation", "reward")) or "observation or reward"
        return f"iteration {iteration}, agent {agent}: non-finite {src} from the environment"
    if metrics["nonfinite_update"][agent] > 0 or kind:
        if "incoming parameters" in what:
            src = "parameters (already before this update)"
        else:
            src = ", ".join(w for w in what if w in ("loss", "gradient", "parameters"))
            src = src or "loss, gradient or parameters"
        return (f"iteration {iteration}, agent {agent}: non-finite {src} in "
                f"{int(metrics['nonfinite_update'][agent])} minibatch(es)")
    return None


@dataclasses.dataclass
class Clock:
    """Wall-clock accounting of a run (``wall0``: seconds of the run before this process, from its checkpoint)."""

    wall0: float
    precompile_s: float
    start: float = dataclasses.field(default_factory=time.perf_counter)
    start_unix: float = dataclasses.field(default_factory=time.time)  # benchmarks: time-to-threshold
    first_call_s: float | None = None     # compilation before the loop + the first driver call
    first_call_steps: int = 0
    steps: int = 0                        # env steps per agent run by this process
    loop_s: float | None = None           # seconds of the loop, compilation included, before the final checkpoint

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def wall(self) -> float:
        """The run's wall time so far, across resumes."""
        return self.wall0 + self.elapsed()


@dataclasses.dataclass
class CheckpointSchedule:
    """A checkpoint every ``every`` iterations and/or ``every_s`` seconds (0: off), not at the last iteration (the
    final checkpoint is written after the loop)."""

    every: int
    every_s: float
    last_iteration: int
    last_time: float = dataclasses.field(default_factory=time.perf_counter)

    def due(self, iteration: int, final: int) -> bool:
        due = self.every and iteration - self.last_iteration >= self.every
        due = due or (self.every_s and time.perf_counter() - self.last_time >= self.every_s)
        return bool(due) and iteration < final

    def written(self, iteration: int) -> None:
        self.last_iteration, self.last_time = iteration, time.perf_counter()


@dataclasses.dataclass
class Checkpointer:
    """Writes the train state, the driver's state and the host counters (see ``checkpoint.py``)."""

    ckpt_dir: Path
    cfg: Config
    expect: dict                  # header fields a restore checks: the network signature, the number of agents
    driver: Driver
    logger: MetricsLogger
    warn: Callable[[str], None] | None = None  # one-line notices (e.g. an unusable checkpoint set aside)
    writes: list = dataclasses.field(default_factory=list)  # (seconds, bytes) of each write

    def save(self, state: TrainState, iteration: int, stats: EpisodeStats, clock: Clock) -> None:
        bad = ckpt_lib.nonfinite_leaves(state)
        if bad:
            self.logger.close()
            raise TrainingError(f"iteration {iteration}: non-finite values in {', '.join(bad[:3])}; no checkpoint "
                                f"written, the last good checkpoint in {self.ckpt_dir} is kept")
        self.logger.flush()  # rows up to ``iteration`` reach the disk before the checkpoint that vouches for them
        tree = {"train_state": state, "driver_state": self.driver.driver_state()}
        header = {"config": to_dict(self.cfg), **self.expect,
                  "host": {"episodes": stats.episodes, "recent": [list(d) for d in stats.recent],
                           "wall_time_s": clock.wall()}}
        _, seconds, size = ckpt_lib.save(self.ckpt_dir, iteration, tree, header, keep=self.cfg.keep_checkpoints,
                                         warn=self.warn)
        self.writes.append((seconds, size))


def run_loop(cfg: Config, driver: Driver, state: TrainState, start: int, stats: EpisodeStats, clock: Clock,
             saver: Checkpointer, progress) -> tuple[TrainState, int, str | None]:
    """Train from iteration ``start`` to ``cfg.num_iterations`` (or a stop signal). Returns (state, iteration
    reached, the stop signal's name or None). The final checkpoint is written before returning."""
    logger, schedule = saver.logger, CheckpointSchedule(cfg.checkpoint_every, cfg.checkpoint_every_s, start)
    it = start
    with StopSignal() as stop:
        while it < cfg.num_iterations and stop.requested is None:
            n = min(driver.iterations_per_call, cfg.num_iterations - it)
            t0 = time.perf_counter()
            try:
                new_state, metrics_list, episodes_list = driver.run(state, n)
            except EnvWorkerError as e:  # the state of iteration ``it`` is whole: keep it
                saver.save(state, it, stats, clock)
                logger.close()
                raise TrainingError(f"iteration {it + 1}: {e}; checkpoint written at iteration {it}. Resume "
                                    f"with: ppolab train --resume {saver.ckpt_dir.parent}") from None
            if clock.first_call_s is None:  # the compilation before the loop counts as part of the first call
                clock.first_call_s = clock.precompile_s + time.perf_counter() - t0
                clock.first_call_steps = n * cfg.batch_size
            rows = []
            for j, (metrics, episodes) in enumerate(zip(metrics_list, episodes_list, strict=True)):
                _stop_on_nonfinite(cfg, metrics, it + j + 1, rows, saver)
                returns = stats.add(episodes)
                rows += metric_rows(it + j + 1, cfg, clock.wall(), returns, stats, metrics)
            state, it = new_state, it + n
            clock.steps += n * cfg.batch_size
            logger.log(rows)
            progress.update(it, clock.steps * len(stats.recent) / max(clock.elapsed(), 1e-9), stats.population_mean())
            if schedule.due(it, cfg.num_iterations):
                saver.save(state, it, stats, clock)
                schedule.written(it)
        clock.loop_s = clock.elapsed() + clock.precompile_s
        saver.save(state, it, stats, clock)
        logger.close()
    return state, it, stop.requested


def _stop_on_nonfinite(cfg: Config, metrics: Metrics, iteration: int, rows: list[dict], saver: Checkpointer) -> None:
    """With ``--nonfinite stop``: log the rows so far and raise ``TrainingError`` if an agent's update saw NaN/inf."""
    if cfg.nonfinite != "stop":
        return
    for k in range(len(metrics["nonfinite_input"])):
        msg = nonfinite_message(metrics, iteration, k)
        if msg:
            saver.logger.log(rows)
            saver.logger.close()
            raise TrainingError(msg + f"; stopped, the last good checkpoint in {saver.ckpt_dir} is kept "
                                f"(pass --nonfinite skip to skip bad batches instead)")
