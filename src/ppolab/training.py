"""The Python API of training: ``ppolab.train(Config(...)) -> TrainResult``.

``train`` resolves the config (preset, validation, resume), assembles the driver (``assembly``), restores or creates
the run directory (``rundir``), runs the loop (``loop``) and finishes with the evaluation and summary.json.
See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppolab import checkpoint as ckpt_lib
from ppolab.assembly import env_seeds, init_population, make_driver, net_signature
from ppolab.config import Config, ConfigError, agent_table, apply_preset, backend_of, to_dict, validate
from ppolab.drivers.base import Driver
from ppolab.envs.errors import EnvWorkerError
from ppolab.logging import MetricsLogger, plot_learning_curve
from ppolab.loop import Checkpointer, Clock, EpisodeStats, TrainingError, run_loop
from ppolab.options import check_options_apply
from ppolab.policy import write_policy_spec
from ppolab.progress import ProgressBar
from ppolab.report import write_report
from ppolab.rundir import (
    agent_summary,
    create_run_dir,
    finished_summary,
    load_run_config,
    lock_run_dir,
    make_summary,
    prepare_run_dir,
    resume_overrides,
)
from ppolab.runlock import write_atomic
from ppolab.types import TrainState
from ppolab.wandb_sink import WandbSink

__all__ = ["TrainResult", "TrainingError", "train", "enable_compilation_cache", "release_freed_memory"]


@dataclasses.dataclass
class TrainResult:
    state: TrainState      # leaves [K, ...] for K agents
    summary: dict
    run_dir: Path
    config: Config


def enable_compilation_cache(path: str | None = None) -> None:
    """JAX's persistent compilation cache (on by default; PPOLAB_CACHE_DIR moves it, PPOLAB_CACHE_DIR='' disables)."""
    path = os.environ.get("PPOLAB_CACHE_DIR", path if path is not None else "~/.cache/ppolab/jax")
    if not path:
        return
    path = os.path.expanduser(path)
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program: a load is ~10-30 ms
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception:  # pragma: no cover - the cache is an optimization only
        pass


def release_freed_memory() -> None:
    """Give memory freed by the process back to the OS (glibc ``malloc_trim``; a no-op elsewhere). Compiling the
    learner leaves ~0.2 GB of freed but still mapped heap (CartPole: 587 -> 358 MiB after the trim), which would
    otherwise stay in the run's RSS to the end."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def resolve(cfg: Config, explicit: dict | None, resume: str | os.PathLike | None) -> tuple[Config, Path]:
    """The run's final config and directory; every check of the input, nothing written."""
    if resume is None:
        cfg = validate(apply_preset(cfg, explicit))
        check_options_apply(cfg)
        return cfg, prepare_run_dir(cfg)
    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise ConfigError(f"cannot resume {str(run_dir)!r}: no such directory")
    cfg = load_run_config(run_dir)
    cfg = validate(cfg.replace(**resume_overrides(cfg, explicit)))
    if not ckpt_lib.list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no checkpoint yet (it stopped before its "
                          f"first one; start it again with --run-dir {str(run_dir)!r} --overwrite)")
    return cfg, run_dir


def train(cfg: Config, *, explicit: dict | None = None, resume: str | os.PathLike | None = None,
          console=None) -> TrainResult:
    """Train ``cfg`` (or continue the run in ``resume``). Every check runs before anything is written; the run
    directory is locked for this process (a second one is refused at once). Resuming a finished run changes
    nothing (``TrainResult.state`` is then None) unless ``--total-timesteps`` is raised, which continues it."""
    t_start = time.perf_counter()
    cfg, run_dir = resolve(cfg, explicit, resume)
    say = console.print if console is not None else (lambda *a, **k: None)
    lock = None
    if resume is not None:
        done = finished_summary(run_dir)
        last = max((ckpt_lib.iteration_of(p) for p in ckpt_lib.list_checkpoints(run_dir / "checkpoints")), default=0)
        if done is not None and last >= cfg.num_iterations:  # its summary and its final checkpoint are there
            say(f"{run_dir} has finished ({int(done['total_timesteps']):,} steps, summary.json): nothing to do; "
                "pass a larger --total-timesteps to continue it")
            return TrainResult(None, done, run_dir, cfg)
        lock = lock_run_dir(run_dir, fresh=False)
    try:
        rows = agent_table(cfg)
        enable_compilation_cache(cfg.compile_cache)
        driver, net, spec = make_driver(cfg, len(rows))  # checks the env id and its spaces
        try:
            lock = lock or lock_run_dir(run_dir, fresh=True)
            return _run(cfg, run_dir, resume is not None, driver, net, spec, rows, say, console, t_start)
        finally:
            driver.close()
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Config, run_dir: Path, resuming: bool, driver: Driver, net, spec, rows: list[dict], say, console,
         t_start: float) -> TrainResult:
    """Compile, restore or create the run directory, run the loop, finish (the body of ``train``)."""
    if cfg.num_envs * len(rows) >= 2048 and backend_of(cfg.env)[0] == "brax" and jax.default_backend() == "cpu":
        say(f"note: {cfg.num_envs * len(rows)} Brax envs on a CPU run slowly (the brax preset is sized for one "
            "GPU); --num-envs 64 --num-steps 64 makes a CPU-sized run")
    precompile_s = _precompile(driver, cfg, net, spec, rows, say)
    state = init_population(cfg, net, spec, rows)
    expect = {"network": net_signature(net), "agents": len(rows)}
    if not resuming:
        create_run_dir(run_dir, cfg)
        stats, wall0 = EpisodeStats.create([[] for _ in rows]), 0.0
    else:
        state, stats, wall0 = _restore(run_dir, cfg, state, driver, expect, say)
    start = int(np.asarray(state.iteration)[0])
    if driver.driver_state() is None or not resuming:
        try:
            driver.start(env_seeds(rows, cfg.num_envs, start))
        except EnvWorkerError as e:
            raise TrainingError(f"{e}; no iteration was run") from None
    warn = lambda m: say(f"[yellow]{m}")
    write_policy_spec(run_dir, net, cfg.normalize_obs, driver.masked)  # what ppolab.load and ppolab export read
    wandb = WandbSink(cfg.wandb_project, run_dir, to_dict(cfg)) if cfg.wandb_project else None
    logger = MetricsLogger(run_dir, cfg.tensorboard, resume_iteration=start if resuming else None,
                           steps_per_iteration=cfg.batch_size, warn=warn, sinks=(wandb,) if wandb else ())
    saver = Checkpointer(run_dir / "checkpoints", cfg, expect, driver, logger, warn=warn)
    with ProgressBar(cfg, console, start) as progress:
        clock = Clock(wall0, precompile_s)
        state, it, stopped = run_loop(cfg, driver, state, start, stats, clock, saver, progress)
    if stopped is not None:
        say(f"{stopped}: stopped at iteration {it}; checkpoint written. Resume with: "
            f"ppolab train --resume {run_dir}")
        summary = {"env_id": cfg.env, "objective": cfg.objective, "stopped": stopped, "iteration": it}
        return TrainResult(state, summary, run_dir, cfg)
    summary = _finish(cfg, driver, state, rows, stats, clock, saver, t_start)
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    if wandb is not None:
        wandb.log_summary(summary)
        wandb.close()
    outputs = [("the learning curve", lambda: plot_learning_curve(run_dir, f"{cfg.env} / {cfg.objective}"))]
    if os.environ.get("PPOLAB_REPORT", "1") != "0":  # PPOLAB_REPORT=0 skips it (~1-3 s; the test session does)
        outputs.append(("report.html", lambda: write_report(run_dir)))
    for what, draw in outputs:
        try:
            draw()
        except Exception as e:  # noqa: BLE001 - a plot or report must never lose a run
            say(f"[yellow]could not write {what}: {type(e).__name__}: {e}")
    return TrainResult(state, summary, run_dir, cfg)


def _precompile(driver: Driver, cfg: Config, net, spec, rows: list[dict], say) -> float:
    """Compile the learner (host driver) or fused chunk (JAX envs) from the train state's shapes before any agent
    exists: XLA's compiler then starts from a smaller process (first CartPole run, no cache: peak RSS ~519 ->
    ~451 MiB in a probe), and the freed compiler heap goes back to the OS before training starts. Returns seconds."""
    say("compiling (the compiled program is cached for later runs)...")
    t0 = time.perf_counter()
    driver.precompile(jax.eval_shape(lambda: init_population(cfg, net, spec, rows)))
    release_freed_memory()
    return time.perf_counter() - t0


def _restore(run_dir: Path, cfg: Config, template: TrainState, driver: Driver, expect: dict, say):
    """(state, episode stats, wall time so far) from the newest good checkpoint of ``run_dir``."""
    tree, header, path = ckpt_lib.restore_latest(run_dir / "checkpoints",
                                                 {"train_state": template, "driver_state": driver.driver_state()},
                                                 expect, warn=lambda m: say(f"[yellow]{m}"))
    state = jax.tree_util.tree_map(jnp.asarray, tree["train_state"])
    if tree["driver_state"] is not None:
        driver.restore_driver_state(tree["driver_state"])
    iterations = np.asarray(state.iteration)
    if not (np.all(iterations == header["iteration"]) and 0 <= header["iteration"] <= cfg.num_iterations):
        raise ckpt_lib.CheckpointError(f"{path}: its train state is at iteration {iterations.tolist()[:4]}, its "
                                       f"header at {header['iteration']}, the run has {cfg.num_iterations}; refused")
    host = ckpt_lib.host_counters(header, expect["agents"])
    say(f"resuming {run_dir} from {path.name} (iteration {header['iteration']})")
    if host is None:
        return state, EpisodeStats.create([[] for _ in range(expect["agents"])]), 0.0
    return state, EpisodeStats.create(host["recent"], host["episodes"]), host["wall_time_s"]


def _finish(cfg: Config, driver: Driver, state: TrainState, rows: list[dict], stats: EpisodeStats, clock: Clock,
            saver: Checkpointer, t_start: float) -> dict:
    """The final evaluation and summary.json's contents."""
    eval_returns = None
    if cfg.eval_episodes > 0:
        eval_returns = driver.evaluate(state, cfg.eval_episodes, cfg.eval_deterministic, seed=cfg.seed + 10**6)
    beta = np.asarray(state.beta)
    agents = [agent_summary(r, list(stats.recent[k]), None if eval_returns is None else eval_returns[k],
                            float(beta[k])) for k, r in enumerate(rows)]
    K, loop_s, first = len(rows), clock.loop_s, clock.first_call_s
    timing = {
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "loop_start_unix": clock.start_unix,
        "train_loop_s": round(loop_s, 3),
        "first_call_s": round(first or 0.0, 3),
        "sps": round(clock.steps * K / max(loop_s, 1e-9), 1),
        # steady state: the first call also traces and compiles
        "sps_after_first_call": (round((clock.steps - clock.first_call_steps) * K / (loop_s - first), 1)
                                 if first and loop_s > first and clock.steps > clock.first_call_steps else None),
    }
    summary = make_summary(cfg, agents, timing, stats.episodes)
    summary["checkpoint_write_s_max"] = round(max(t for t, _ in saver.writes), 4)
    summary["checkpoint_bytes"] = saver.writes[-1][1]
    return summary
