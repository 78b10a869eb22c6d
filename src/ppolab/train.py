"""The training loop and the Python API: ``ppolab.train(Config(...)) -> TrainResult``.

drivers (rollout + jitted learner) -> metrics (one host sync per iteration) -> CSV / TensorBoard / progress bar ->
checkpoints -> final evaluation, summary.json and learning_curve.png. See docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import signal
import statistics
import sys
import time
from collections import deque
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppolab import checkpoint as ckpt_lib
from ppolab.config import (
    SWEEPABLE,
    Config,
    ConfigError,
    agent_table,
    apply_preset,
    from_dict,
    swept_fields,
    to_dict,
    validate,
)
from ppolab.envs import backend_of
from ppolab.envs.gymnasium_vec import EnvWorkerError
from ppolab.logging import MetricsLogger, plot_learning_curve
from ppolab.networks import make_network
from ppolab.types import HParams, TrainState
from ppolab.update import METRIC_KEYS, NONFINITE_BITS, LearnerSpec, init_state


class TrainingError(RuntimeError):
    """Training stopped on a fault (e.g. non-finite values); the message names the iteration and the quantity."""


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


def default_run_dir(cfg: Config) -> Path:
    env = re.sub(r"[^A-Za-z0-9_.-]+", "_", cfg.env)
    return Path("runs") / f"{env}-{cfg.objective}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


# ---- building blocks -------------------------------------------------------------------------------------------
def make_env(cfg: Config, num_agents: int, num_envs: int, ray_ok: bool = True):
    """The environment adapter for ``cfg.env`` with num_agents x num_envs actors (in ``cfg.ray_workers`` Ray actors
    where set and ``ray_ok``: the final evaluation's few envs run in this process)."""
    backend, name = backend_of(cfg.env)
    if backend == "gymnasium":
        from ppolab.envs import atari
        from ppolab.envs.gymnasium_vec import GymnasiumVecEnv

        extra = atari.vec_kwargs(name) if atari.is_atari(name) else {}
        with _workers_ignore_stop_signals():
            ray = dict(ray_workers=cfg.ray_workers, ray_address=cfg.ray_address,
                       ray_worker_cpus=cfg.ray_worker_cpus) if cfg.ray_workers and ray_ok else {}
            return GymnasiumVecEnv(name, num_agents, num_envs, cfg.vector_mode, **extra, **ray)
    if backend == "envpool":
        from ppolab.envs import envpool_vec

        return envpool_vec.EnvpoolVecEnv(name, num_agents, num_envs)
    raise ConfigError(f"environment back-end {backend!r} of {cfg.env!r} is not available in this driver")


class _workers_ignore_stop_signals:
    """Worker processes started inside (Gymnasium's async vector env) ignore SIGINT/SIGTERM, inherited as SIG_IGN:
    Ctrl-C reaches the whole process group, and only the trainer decides to stop (final checkpoint), then closes
    its workers. Without this, the workers die first and the final checkpoint cannot be written."""

    def __enter__(self):
        self.old = {}
        if threading_main():
            self.old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def make_driver(cfg: Config, num_agents: int):
    """(driver, net, spec). JAX-native envs get the fully jitted driver, everything else the host loop driver."""
    spec = LearnerSpec.from_config(cfg)
    backend, _ = backend_of(cfg.env)
    if backend in ("gymnax", "brax"):
        from ppolab.drivers.jit import JitDriver

        driver = JitDriver(cfg, spec, num_agents)
        return driver, driver.net, spec
    from ppolab.drivers.host import HostDriver

    env = make_env(cfg, num_agents, cfg.num_envs)
    try:
        net = make_network(cfg, env.obs_spec, env.action_spec)
        driver = HostDriver(cfg, env, net, spec, num_agents)
    except Exception:
        env.close()
        raise
    driver.make_eval_env = functools.partial(make_env, cfg, num_agents, ray_ok=False)
    return driver, net, spec


def init_population(cfg: Config, net, spec: LearnerSpec, rows: list[dict]) -> TrainState:
    """Train state with a leading agent axis [K, ...]: each agent's seed and hyperparameters from ``rows``."""
    # One agent at a time, then stacked: a vmapped init would batch the orthogonal initializer's QR decompositions,
    # and jaxlib's batched LAPACK kernels (ParallelBatchMap) can deadlock XLA's CPU thread pool on a 2-core machine
    # (seen here: both pool threads waiting on each other, intermittently, for K = 8).
    agents = [_init_agent(spec, net, cfg.num_envs, jax.random.PRNGKey(r["seed"]),
                          HParams(**{k: jnp.asarray(r[k], jnp.float32) for k in SWEEPABLE})) for r in rows]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *agents)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_agent(spec, net, num_envs, key, hparams):
    return init_state(spec, net, key, hparams, num_envs)


def _env_seeds(rows: list[dict], num_envs: int, iteration: int) -> list[int]:
    """Seeds of every actor: derived from its agent's seed, its index, and (after a resume) the iteration."""
    return [(r["seed"] * 10_007 + b + iteration * 1_000_003) % (2**31 - 1) for r in rows for b in range(num_envs)]


# ---- run directory ----------------------------------------------------------------------------------------------
def prepare_run_dir(cfg: Config, resume: bool) -> Path:
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {str(run_dir)!r} exists and is not a directory; choose another path")
    if not resume and run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"--run-dir {str(run_dir)!r} already holds a run; pass --overwrite to replace it, "
                          f"--resume {str(run_dir)!r} to continue it, or choose another directory")
    return run_dir


def load_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"cannot resume {str(run_dir)!r}: no config.json there (is it a ppolab run directory?)")
    try:
        return from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"cannot resume {str(run_dir)!r}: config.json is not valid JSON ({e})") from None


#: Options that may change when a run is resumed (they do not affect what is learned).
RESUME_OVERRIDABLE = ("threads", "progress", "tensorboard", "eval_episodes", "eval_deterministic", "checkpoint_every",
                      "checkpoint_every_s", "keep_checkpoints", "nonfinite", "compile_cache", "ray_workers",
                      "ray_address", "ray_worker_cpus")


def _resume_overrides(cfg: Config, explicit: dict | None) -> dict:
    """Flags given with --resume: the harmless ones apply, any other that differs from the saved config is an error
    (the run continues with its own config; nothing is silently ignored)."""
    out = {}
    for k, v in (explicit or {}).items():
        if k in RESUME_OVERRIDABLE:
            out[k] = v
        elif k in ("run_dir", "overwrite") or v == getattr(cfg, k, v) or (isinstance(v, list | tuple) and tuple(
                v) == tuple(getattr(cfg, k, ()) or ())):
            continue
        else:
            allowed = ", ".join("--" + o.replace("_", "-") for o in RESUME_OVERRIDABLE)
            raise ConfigError(f"--{k.replace('_', '-')} cannot change when resuming (the run has "
                              f"{getattr(cfg, k)!r}); only {allowed} may be given with --resume")
    return out


def _host_counters(host, K: int) -> dict | None:
    """The checkpoint header's host counters if well formed (the header is data from a file: never trust its types)."""
    try:
        ok = (isinstance(host["episodes"], int) and isinstance(host["wall_time_s"], int | float)
              and len(host["recent"]) == K and all(isinstance(x, int | float) for r in host["recent"] for x in r))
    except (TypeError, KeyError):
        return None
    return host if ok else None


def _clear_run_dir(run_dir: Path):
    import shutil

    for p in run_dir.iterdir():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


# ---- the loop ---------------------------------------------------------------------------------------------------
class _Stop:
    """SIGINT/SIGTERM: the first asks for a final checkpoint and a clean exit; a second SIGINT exits at once."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: leave now (checkpoint writes are atomic)
        if self.requested is None:  # os.write: safe inside a signal handler, unlike print
            os.write(2, f"\n{signal.Signals(signum).name}: finishing the current iteration and writing a checkpoint "
                        f"(Ctrl-C again to quit at once)\n".encode())
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _nonfinite_message(metrics: dict, iteration: int, agent: int) -> str | None:
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


def train(cfg: Config, *, explicit: dict | None = None, resume: str | os.PathLike | None = None,
          console=None) -> TrainResult:
    """Train ``cfg`` (or continue the run in ``resume``). Every check runs before anything is written."""
    t_start = time.perf_counter()
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise ConfigError(f"cannot resume {str(run_dir)!r}: no such directory")
        cfg = load_run_config(run_dir)
        cfg = validate(cfg.replace(**_resume_overrides(cfg, explicit)))
        if not ckpt_lib.list_checkpoints(run_dir / "checkpoints"):
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it has no checkpoint yet (it stopped before its "
                              f"first one; start it again with --run-dir {str(run_dir)!r} --overwrite)")
    else:
        cfg = validate(apply_preset(cfg, explicit))
        run_dir = prepare_run_dir(cfg, resume=False)
    rows = agent_table(cfg)
    K = len(rows)
    enable_compilation_cache(cfg.compile_cache)
    driver, net, spec = make_driver(cfg, K)  # checks the env id and its spaces
    say = console.print if console is not None else (lambda *a, **k: None)
    try:
        if cfg.num_envs * K >= 2048 and backend_of(cfg.env)[0] == "brax" and jax.default_backend() == "cpu":
            say(f"note: {cfg.num_envs * K} Brax envs on a CPU run slowly (the brax preset is sized for one GPU); "
                "--num-envs 64 --num-steps 64 makes a CPU-sized run")
        # Compile the learner (host driver) or fused chunk (JAX envs) from the train state's shapes before any agent
        # exists: XLA's compiler then starts from a smaller process (first CartPole run, no cache: peak RSS
        # ~519 -> ~451 MiB in a probe), and the freed compiler heap goes back to the OS before training starts.
        say("compiling (the compiled program is cached for later runs)...")
        t_pre = time.perf_counter()
        driver.precompile(jax.eval_shape(lambda: init_population(cfg, net, spec, rows)))
        release_freed_memory()
        precompile_s = time.perf_counter() - t_pre
        state = init_population(cfg, net, spec, rows)
        ckpt_dir = run_dir / "checkpoints"
        expect = {"network": _net_signature(net), "agents": K}
        host = {"episodes": 0, "wall_time_s": 0.0, "recent": [[] for _ in range(K)]}
        if resume is not None:
            template = {"train_state": state, "driver_state": driver.driver_state()}
            tree, header, path = ckpt_lib.restore_latest(ckpt_dir, template, expect, warn=lambda m: say(f"[yellow]{m}"))
            state = jax.tree_util.tree_map(jnp.asarray, tree["train_state"])
            if tree["driver_state"] is not None:
                driver.restore_driver_state(tree["driver_state"])
            host = _host_counters(header.get("host"), K) or host
            say(f"resuming {run_dir} from {path.name} (iteration {header['iteration']})")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite:
                _clear_run_dir(run_dir)
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        start_iter = int(np.asarray(state.iteration)[0])
        if driver.driver_state() is None or resume is None:
            driver.start(_env_seeds(rows, cfg.num_envs, start_iter))
        logger = MetricsLogger(run_dir, cfg.tensorboard, resume_iteration=start_iter if resume is not None else None,
                               steps_per_iteration=cfg.batch_size)
        recent = [deque(h, maxlen=100) for h in host["recent"]]
        stats = dict(episodes=host["episodes"], wall0=host["wall_time_s"], compile_s=None)

        def save(it):
            bad = ckpt_lib.nonfinite_leaves(state)
            if bad:
                logger.close()
                raise TrainingError(f"iteration {it}: non-finite values in {', '.join(bad[:3])}; no checkpoint "
                                    f"written, the last good checkpoint in {ckpt_dir} is kept")
            logger.flush()  # rows up to ``it`` reach the disk before the checkpoint that vouches for them
            tree = {"train_state": state, "driver_state": driver.driver_state()}
            header = {"config": to_dict(cfg), **expect,
                      "host": {"episodes": stats["episodes"], "recent": [list(d) for d in recent],
                               "wall_time_s": stats["wall0"] + time.perf_counter() - t_loop}}
            return ckpt_lib.save(ckpt_dir, it, tree, header, keep=cfg.keep_checkpoints)

        with _Stop() as stop, _progress(cfg, console) as progress:
            task = progress.add_task("train", total=cfg.num_iterations * cfg.batch_size,
                                     completed=start_iter * cfg.batch_size, sps="", ret="")
            it = start_iter
            chunk = getattr(driver, "iterations_per_call", 1)
            t_loop = time.perf_counter()
            stats["loop_start_unix"] = time.time()  # lets benchmarks measure time-to-threshold from process start
            steps_loop = 0
            last_ckpt_it, last_ckpt_t, save_log = it, time.perf_counter(), []
            while it < cfg.num_iterations and stop.requested is None:
                n = min(chunk, cfg.num_iterations - it)
                t0 = time.perf_counter()
                try:
                    new_state, metrics_list, episodes_list = driver.run(state, n)
                except EnvWorkerError as e:  # the state of iteration ``it`` is whole: keep it
                    save(it)
                    logger.close()
                    raise TrainingError(f"iteration {it + 1}: {e}; checkpoint written at iteration {it}. Resume "
                                        f"with: ppolab train --resume {run_dir}") from None
                if stats["compile_s"] is None:  # the compilation before the loop counts as part of the first call
                    stats["compile_s"] = precompile_s + time.perf_counter() - t0
                    stats["first_call_steps"] = n * cfg.batch_size
                out_rows = []
                for j, (metrics, episodes) in enumerate(zip(metrics_list, episodes_list, strict=True)):
                    itj = it + j + 1
                    for k in range(K):
                        msg = _nonfinite_message(metrics, itj, k)
                        if msg and cfg.nonfinite == "stop":
                            logger.log(out_rows)
                            logger.close()
                            raise TrainingError(msg + f"; stopped, the last good checkpoint in {ckpt_dir} is kept "
                                                f"(pass --nonfinite skip to skip bad batches instead)")
                    per_agent = [[] for _ in range(K)]
                    for ep in episodes:
                        if not math.isfinite(ep[-2]):
                            continue  # --nonfinite skip: an episode with a NaN/inf reward has no usable return
                        per_agent[ep[0]].append(ep[-2])
                        recent[ep[0]].append(ep[-2])
                    stats["episodes"] += len(episodes)
                    now = stats["wall0"] + time.perf_counter() - t_loop
                    for k in range(K):
                        row = {"iteration": itj, "agent": k, "env_steps": itj * cfg.batch_size, "time_s": round(now, 3),
                               "episodes": len(per_agent[k]),
                               "episode_return": float(np.mean(per_agent[k])) if per_agent[k] else math.nan,
                               "return_recent": float(np.mean(recent[k])) if recent[k] else math.nan,
                               "num_agents": K}
                        row.update({m: float(metrics[m][k]) for m in METRIC_KEYS})
                        out_rows.append(row)
                state = new_state
                it += n
                steps_loop += n * cfg.batch_size
                logger.log(out_rows)
                elapsed = time.perf_counter() - t_loop
                ret = np.nanmean([np.mean(d) if d else np.nan for d in recent]) if any(recent) else float("nan")
                progress.update(task, completed=it * cfg.batch_size, sps=f"{steps_loop * K / max(elapsed, 1e-9):,.0f}",
                                ret=f"{ret:.1f}")
                due = cfg.checkpoint_every and it - last_ckpt_it >= cfg.checkpoint_every
                due = due or (cfg.checkpoint_every_s and time.perf_counter() - last_ckpt_t >= cfg.checkpoint_every_s)
                if due and it < cfg.num_iterations:
                    save_log.append(save(it)[1:])
                    last_ckpt_it, last_ckpt_t = it, time.perf_counter()
            loop_time = time.perf_counter() - t_loop + precompile_s
            save_log.append(save(it)[1:])
            logger.close()
        if stop.requested is not None:
            say(f"{stop.requested}: stopped at iteration {it}; checkpoint written. Resume with: "
                f"ppolab train --resume {run_dir}")
            summary = {"env_id": cfg.env, "objective": cfg.objective, "stopped": stop.requested, "iteration": it}
            return TrainResult(state, summary, run_dir, cfg)

        eval_returns = None
        if cfg.eval_episodes > 0:
            eval_returns = driver.evaluate(state, cfg.eval_episodes, cfg.eval_deterministic, seed=cfg.seed + 10**6,
                                           make_env=getattr(driver, "make_eval_env", None))
        wall = time.perf_counter() - t_start
        summary = make_summary(cfg, rows, eval_returns, recent, wall, stats, loop_time,
                               steps_loop, state)
        summary["checkpoint_write_s_max"] = round(max(t for t, _ in save_log), 4)
        summary["checkpoint_bytes"] = save_log[-1][1]
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        try:
            plot_learning_curve(run_dir, title=f"{cfg.env} / {cfg.objective}")
        except Exception as e:  # pragma: no cover - a plot must never lose a run
            say(f"[yellow]could not draw the learning curve: {e}")
        return TrainResult(state, summary, run_dir, cfg)
    finally:
        driver.close()


def _net_signature(net) -> str:
    return (f"obs={list(net.obs.shape)}:{net.obs.dtype} action={net.action.kind}:{net.action.size}:"
            f"{list(net.action.nvec)} hidden={list(net.hidden_sizes)} act={net.activation} shared={net.shared_torso}")


def make_summary(cfg, rows, eval_returns, recent, wall, stats, loop_time, steps_loop, state) -> dict:
    K = len(rows)
    agents = []
    for k, r in enumerate(rows):
        a = dict(r)
        a["train_return_recent"] = float(np.mean(recent[k])) if recent[k] else None
        a["last_100_returns"] = [float(x) for x in recent[k]]  # the paper's run score (Table 1) is their mean
        if eval_returns is not None:
            a["eval_return_mean"] = float(np.mean(eval_returns[k]))
            a["eval_return_std"] = float(np.std(eval_returns[k]))
            a["eval_returns"] = [float(x) for x in eval_returns[k]]
        a["final_beta"] = float(np.asarray(state.beta)[k])
        agents.append(a)
    means = [a["eval_return_mean"] for a in agents] if eval_returns is not None else []
    summary = {
        "env_id": cfg.env, "objective": cfg.objective, "preset": cfg.preset,
        "total_timesteps": int(cfg.num_iterations * cfg.batch_size), "num_agents": K,
        "swept": swept_fields(cfg),
        "eval_episodes": cfg.eval_episodes, "eval_deterministic": cfg.eval_deterministic,
        "eval_return_mean": (means[0] if K == 1 else statistics.fmean(means)) if means else None,
        "eval_return_std": (agents[0]["eval_return_std"] if K == 1 else
                            (statistics.pstdev(means) if len(means) > 1 else 0.0)) if means else None,
        "train_return_recent": agents[0]["train_return_recent"] if K == 1 else None,
        "episodes": stats["episodes"],
        "wall_time_s": round(wall, 3),
        "loop_start_unix": stats.get("loop_start_unix"),
        "train_loop_s": round(loop_time, 3),
        "first_call_s": round(stats["compile_s"] or 0.0, 3),
        "sps": round(steps_loop * K / max(loop_time, 1e-9), 1),
        # steady state: the first call also traces and compiles
        "sps_after_first_call": (round((steps_loop - stats.get("first_call_steps", 0)) * K
                                       / (loop_time - stats["compile_s"]), 1)
                                 if stats.get("compile_s") and loop_time > stats["compile_s"]
                                 and steps_loop > stats.get("first_call_steps", 0) else None),
        "agents": agents,
        "platform": jax.default_backend(),
    }
    if K > 1 and means:
        summary["eval_return_mean_over_agents"] = statistics.fmean(means)
        summary["eval_return_std_over_agents"] = statistics.pstdev(means)
    return summary


class _NullProgress:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass


def _progress(cfg: Config, console):
    if not cfg.progress or console is None:
        return _NullProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("steps  SPS {task.fields[sps]}  return {task.fields[ret]}"), TimeElapsedColumn(),
                    console=console, transient=False, refresh_per_second=4)


def evaluate_run(run_dir: str | os.PathLike, episodes: int = 10, deterministic: bool = True, seed: int = 12345,
                 video: bool = False) -> dict:
    """Reload the newest good checkpoint of ``run_dir`` and evaluate every agent. Returns a dict of results."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if episodes <= 0:
        raise ConfigError(f"--episodes must be a positive integer (got {episodes})")
    rows = agent_table(cfg)
    K = len(rows)
    enable_compilation_cache(cfg.compile_cache)
    driver, net, spec = make_driver(cfg, K)
    try:
        template = {"train_state": init_population(cfg, net, spec, rows), "driver_state": driver.driver_state()}
        tree, header, path = ckpt_lib.restore_latest(run_dir / "checkpoints", template,
                                                     {"network": _net_signature(net), "agents": K},
                                                     warn=lambda m: print(m, file=sys.stderr))
        state = jax.tree_util.tree_map(jnp.asarray, tree["train_state"])
        returns = driver.evaluate(state, episodes, deterministic, seed, make_env=getattr(driver, "make_eval_env", None))
        out = {"run_dir": str(run_dir), "checkpoint": path.name, "iteration": header["iteration"],
               "episodes": episodes, "deterministic": deterministic,
               "eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
               "agents": [{"agent": k, "eval_return_mean": float(np.mean(returns[k])),
                           "eval_return_std": float(np.std(returns[k]))} for k in range(K)]}
        if video:
            from ppolab.evaluate import record_video

            out["video"] = str(record_video(cfg, net, spec, state, run_dir / "videos", seed=seed))
        return out
    finally:
        driver.close()
