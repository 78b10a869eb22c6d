"""ONNX export and acting latency of the CartPole, Hopper and Atari policies; prints one JSON line per policy.

    python benchmarks/bench_export.py            # 200 timed calls per latency, 5 exports per policy
    python benchmarks/bench_export.py --tiny     # checks the script (few repeats)
    python benchmarks/bench_export.py --policies cartpole,hopper

For each policy a run of one iteration is trained with its preset (the network of a finished run: the same shapes),
then:

* ``export_cold_s``: ``ppolab export`` of the run in a fresh Python process, import of jax2onnx and its plugins
  included (what a user waits for), ``export_warm_s``: the median of further exports in this process;
* ``onnx_bytes``: the size of the .onnx file (the value head included with ``--with-value``);
* ``predict_us``: the median latency of ``ppolab.load(RUN).predict(obs)`` for one observation (numpy forward pass
  for MLPs, a jitted JAX call for the Nature CNN), ``onnxruntime_us``: ``InferenceSession.run`` on the same
  observation (CPU provider, one intra-op thread, and the default thread count);
* ``max_abs_diff_action`` / ``max_abs_diff_value``: onnxruntime against ``predict`` / ``value`` on 300 (Atari: 64)
  real observations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

#: name -> (env, preset)
POLICIES = {"cartpole": ("CartPole-v1", None), "hopper": ("Hopper-v5", "paper-mujoco"),
            "atari": ("ALE/Breakout-v5", "paper-atari")}


def train_one_iteration(env: str, preset: str | None, run_dir: Path) -> Path:
    import ppolab
    from ppolab.config import Config, apply_preset
    from ppolab.envs import atari

    if atari.is_atari(env):
        atari.register_ale()
    batch = apply_preset(Config(env=env, preset=preset)).batch_size
    ppolab.train(Config(env=env, preset=preset, total_timesteps=batch, eval_episodes=0, progress=False,
                        tensorboard=False, run_dir=str(run_dir)))
    return run_dir


def real_obs(env: str, n: int) -> np.ndarray:
    import gymnasium as gym

    from ppolab.envs import atari

    e = atari.make_atari(env) if atari.is_atari(env) else gym.make(env)
    e.action_space.seed(0)
    obs, _ = e.reset(seed=0)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, _, term, trunc, _ = e.step(e.action_space.sample())
        if term or trunc:
            obs, _ = e.reset()
    e.close()
    return np.stack(out)


def median_us(fn, repeats: int) -> float:
    for _ in range(min(20, repeats)):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e6, 1)


def cold_export_s(run_dir: Path, out: Path) -> float:
    code = ("import sys, time; t = time.perf_counter(); from ppolab.export import export_run; "
            "export_run(sys.argv[1], out=sys.argv[2], with_value=True); print(time.perf_counter() - t)")
    res = subprocess.run([sys.executable, "-c", code, str(run_dir), str(out)], capture_output=True, text=True,
                         check=True)
    return round(float(res.stdout.strip().splitlines()[-1]), 3)


def sessions(path: Path) -> dict:
    import onnxruntime as ort

    one = ort.SessionOptions()
    one.intra_op_num_threads = 1
    return {"1thread": ort.InferenceSession(str(path), one, providers=["CPUExecutionProvider"]),
            "default": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])}


def bench_policy(name: str, workdir: Path, repeats: int, exports: int) -> dict:
    import ppolab
    from ppolab.export import export_run

    env, preset = POLICIES[name]
    run = train_one_iteration(env, preset, workdir / name)
    path = workdir / f"{name}.onnx"
    cold = cold_export_s(run, path)
    warm = []
    for _ in range(exports):
        t0 = time.perf_counter()
        export_run(run, out=path, with_value=True)
        warm.append(time.perf_counter() - t0)
    policy = ppolab.load(run)
    obs = real_obs(env, 64 if policy.obs_spec.image else 300).astype(
        np.uint8 if policy.obs_spec.image else np.float32)
    sess = sessions(path)
    action, value = sess["default"].run(None, {"obs": obs})
    one = obs[:1]
    row = {"policy": name, "env": env, "preset": preset, "obs_shape": list(policy.obs_spec.shape),
           "action": policy.action_spec.kind, "export_cold_s": cold,
           "export_warm_s": round(statistics.median(warm), 3), "onnx_bytes": path.stat().st_size,
           "predict_us": median_us(lambda: policy.predict(obs[0]), repeats),
           "predict_path": "numpy" if policy._numpy is not None else "jax-jit"}
    for k, s in sess.items():
        row[f"onnxruntime_{k}_us"] = median_us(lambda s=s: s.run(["action"], {"obs": one}), repeats)
    row["max_abs_diff_action"] = float(np.max(np.abs(action.astype(np.float64) - policy.predict(obs)[0])))
    row["max_abs_diff_value"] = float(np.max(np.abs(value - policy.value(obs))))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="few repeats: checks the script, not a measurement")
    ap.add_argument("--policies", default=",".join(POLICIES), help="comma-separated: " + ", ".join(POLICIES))
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--exports", type=int, default=5)
    args = ap.parse_args()
    names = [n for n in args.policies.split(",") if n]
    unknown = sorted(set(names) - set(POLICIES))
    if unknown:
        ap.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    repeats, exports = (5, 1) if args.tiny else (args.repeats, args.exports)
    with tempfile.TemporaryDirectory(prefix="ppolab-bench-export-") as d:
        for name in names:
            print(json.dumps(bench_policy(name, Path(d), repeats, exports)), flush=True)


if __name__ == "__main__":
    main()
