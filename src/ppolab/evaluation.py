"""Evaluation of a finished or stopped run from its directory (``ppolab eval``, ``ppolab.evaluate``).

The episodes are the driver's own ``evaluate`` (the code path of training's final evaluation): a recurrent policy's
carry is threaded through each episode and reset at its start, an env's action masks restrict every action to the
legal ones. So ``seed=cfg.seed + 10**6`` with the run's ``eval_episodes`` and ``eval_deterministic`` reproduces
summary.json's ``eval_return_mean`` of a finished run exactly (same checkpoint, same env seeds, same actions).
``--video`` plays one deterministic episode of agent 0 on the env as the run built it (``evaluate.RenderOptions``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppolab import checkpoint as ckpt_lib
from ppolab.assembly import init_population, make_driver, net_signature
from ppolab.config import ConfigError, agent_table
from ppolab.rundir import load_run_config
from ppolab.runlock import RunLock
from ppolab.training import enable_compilation_cache


def evaluate_run(run_dir: str | os.PathLike, episodes: int = 10, deterministic: bool = True, seed: int = 12345,
                 video: bool = False, video_format: str = "mp4") -> dict:
    """Reload the newest good checkpoint of ``run_dir`` and evaluate every agent. Returns a dict of results."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if episodes <= 0:
        raise ConfigError(f"--episodes must be a positive integer (got {episodes})")
    rows = agent_table(cfg)
    enable_compilation_cache(cfg.compile_cache)
    with RunLock(run_dir, shared=True, command="ppolab eval"):  # no training writes it meanwhile
        return _evaluate(run_dir, cfg, rows, episodes, deterministic, seed, video and video_format)


def _evaluate(run_dir: Path, cfg, rows: list[dict], episodes: int, deterministic: bool, seed: int,
              video: str | bool) -> dict:
    K = len(rows)
    driver, net, spec = make_driver(cfg, K)
    try:
        template = {"train_state": init_population(cfg, net, spec, rows), "driver_state": driver.driver_state()}
        tree, header, path = ckpt_lib.restore_latest(run_dir / "checkpoints", template,
                                                     {"network": net_signature(net), "agents": K},
                                                     warn=lambda m: print(m, file=sys.stderr))
        state = jax.tree_util.tree_map(jnp.asarray, tree["train_state"])
        returns = driver.evaluate(state, episodes, deterministic, seed)
        out = {"run_dir": str(run_dir), "checkpoint": path.name, "iteration": header["iteration"],
               "episodes": episodes, "deterministic": deterministic,
               "eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
               "agents": [{"agent": k, "eval_return_mean": float(np.mean(returns[k])),
                           "eval_return_std": float(np.std(returns[k]))} for k in range(K)]}
        if video:
            from ppolab.evaluate import record_video

            out["video"] = str(record_video(cfg, net, spec, state, run_dir / "videos", seed=seed, fmt=video))
        return out
    finally:
        driver.close()
