"""The runners of ``ppolab compare``: a grid's groups trained one after another in this process, in a process pool
(``--workers``), or as Ray tasks on a cluster (``--ray-address``). Each returns whether a stop signal ended it."""

from __future__ import annotations

import dataclasses
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from ppolab.config import Config

if TYPE_CHECKING:
    from ppolab.cli import CompareArgs


# A pool worker that saw a stop signal starts no further group: the pool hands its workers calls ahead of time, which
# Ctrl-C in the parent can no longer cancel, and a group started after the signal would train on to its end.
_pool_worker = False
_stop_seen = False


def train_group(cfg: Config, status: str, console=None) -> str:
    """Train (or resume) one group; returns 'done', 'stopped' or 'failed: REASON' (a TrainingError, e.g. non-finite
    values: the other groups go on). Module level, so a process pool can run it."""
    global _stop_seen
    from ppolab.training import TrainingError, train

    if _pool_worker and _stop_seen:
        return "stopped"
    try:
        if status == "resume":
            result = train(cfg, explicit={"progress": cfg.progress}, resume=cfg.run_dir, console=console)
        else:
            cfg = cfg.replace(overwrite=True)  # a directory without a checkpoint holds nothing worth keeping
            every = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "preset"}
            result = train(cfg, explicit=every, console=console)
    except TrainingError as e:
        return f"failed: {e}"
    stopped = "stopped" in result.summary
    _stop_seen = _stop_seen or stopped
    return "stopped" if stopped else "done"


def _status(result: str, before: str) -> str:
    if result == "done":
        return "resumed" if before == "resume" else "trained"
    return "failed" if result.startswith("failed") else result


def _ignore_sigint():  # pool workers: only train()'s own handler (final checkpoint, clean exit) reacts to Ctrl-C
    global _pool_worker
    _pool_worker = True
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_in_process(args: CompareArgs, pending, statuses: dict, console, say) -> bool:
    """Groups one after another in this process (``--workers 1``), each with its own progress bar."""
    for i, (g, c, st) in enumerate(pending):
        say(f"[bold]run {i + 1}/{len(pending)}[/]: {g.env} {g.name} x {args.seeds} seeds"
            + (" (resuming)" if st == "resume" else ""))
        result = train_group(c, st, console=console if args.progress else None)
        statuses[str(c.run_dir)] = _status(result, st)
        if result.startswith("failed"):
            say(f"[red]{g.env} {g.name} {result}")
        if result == "stopped":
            return True
    return False


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


def run_pool(args: CompareArgs, pending, statuses: dict, console) -> bool:
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


def run_ray(args: CompareArgs, pending, statuses: dict, console) -> bool:
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
