"""Hopper-v5, paper-mujoco settings, 1 env: ppolab SPS vs the raw env vs Stable-Baselines3, and the update time.

    python benchmarks/bench_hopper.py --repeats 3 --iterations 6

Each measurement runs in its own fresh subprocess, one after the other (never two at once), and the script prints one
JSON line per measurement and a final summary with medians and ratios. SB3 is optional
(``pip install torch==2.13.0 stable-baselines3``); it is skipped if missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

RAW = textwrap.dedent("""
    import json, time, numpy as np, gymnasium as gym
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    n = {steps}
    acts = np.random.default_rng(0).uniform(-1, 1, size=(n, 3)).astype(np.float32)
    t = time.perf_counter()
    for i in range(n):
        _, _, term, trunc, _ = env.step(acts[i])
        if term or trunc:
            env.reset()
    print(json.dumps({{"what": "raw_env", "sps": n / (time.perf_counter() - t)}}))
""")

PPOLAB = textwrap.dedent("""
    import csv, json, os, tempfile, time
    os.environ.setdefault("PPOLAB_CACHE_DIR", "")
    import ppolab
    from ppolab.config import Config
    d = tempfile.mkdtemp()
    r = ppolab.train(Config(preset="paper-mujoco", env="Hopper-v5", total_timesteps=2048 * {iters}, eval_episodes=0,
                            run_dir=d + "/run", tensorboard=False, progress=False, checkpoint_every=0))
    rows = list(csv.DictReader(open(d + "/run/metrics.csv")))
    t = [float(x["time_s"]) for x in rows]
    steps = 2048 * (len(rows) - 1)
    print(json.dumps({{"what": "ppolab", "sps_steady": steps / (t[-1] - t[0]), "sps_incl_compile": r.summary["sps"],
                      "first_iteration_s": t[0]}}))
""")

UPDATE = textwrap.dedent("""
    import json, time, functools, jax, jax.numpy as jnp, numpy as np
    from ppolab.config import Config, PRESETS
    from ppolab.networks import make_network
    from ppolab.spaces import ActionSpec, ObsSpec
    from ppolab.assembly import init_population
    from ppolab.types import Rollout
    from ppolab.update import LearnerSpec, learn
    cfg = Config(**PRESETS["paper-mujoco"])
    net = make_network(cfg, ObsSpec((11,)), ActionSpec("box", 3, low=(-1.0,) * 3, high=(1.0,) * 3))
    spec = LearnerSpec.from_config(cfg)
    rows = [dict(seed=0, learning_rate=3e-4, clip_eps=0.2, kl_beta=1.0, kl_target=0.01, ent_coef=0.0, vf_coef=1.0,
                 gamma=0.99, gae_lambda=0.95)]
    state = init_population(cfg, net, spec, rows)
    rng = np.random.default_rng(0)
    T, B = 2048, 1
    ro = Rollout(obs=rng.normal(size=(1, T, B, 11)).astype(np.float32),
                 actions=rng.normal(size=(1, T, B, 3)).astype(np.float32),
                 rewards=rng.normal(size=(1, T, B)).astype(np.float32), terminated=rng.random((1, T, B)) < 0.01,
                 truncated=np.zeros((1, T, B), bool), final_obs=np.zeros((1, T, B, 11), np.float32),
                 last_obs=np.zeros((1, B, 11), np.float32))
    f = jax.jit(jax.vmap(functools.partial(learn, spec, net)))
    t = time.perf_counter(); s, m = f(state, ro); jax.block_until_ready(m); compile_s = time.perf_counter() - t
    times = []
    for _ in range(10):
        t = time.perf_counter(); s, m = f(s, ro); jax.block_until_ready(m); times.append(time.perf_counter() - t)
    print(json.dumps({{"what": "update_2048x10x32", "median_ms": 1000 * sorted(times)[5], "compile_s": compile_s}}))
""")

SB3 = textwrap.dedent("""
    import json, time, torch
    torch.set_num_threads(1)
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    class Clock(BaseCallback):
        def __init__(self):
            super().__init__(); self.marks = []
        def _on_rollout_start(self):
            self.marks.append(time.perf_counter())
        def _on_step(self):
            return True
    model = PPO("MlpPolicy", "Hopper-v5", n_steps=2048, batch_size=64, n_epochs=10, learning_rate=3e-4, gamma=0.99,
                gae_lambda=0.95, clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=1e9, seed=0, device="cpu",
                policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=torch.nn.Tanh), verbose=0)
    clock = Clock()
    t0 = time.perf_counter()
    model.learn(2048 * {iters}, callback=clock)
    t1 = time.perf_counter()
    m = clock.marks
    print(json.dumps({{"what": "sb3", "sps_steady": 2048 * (len(m) - 1) / (t1 - m[1]) if len(m) > 2 else None,
                      "sps_total": 2048 * {iters} / (t1 - t0)}}))
""")


def run(code: str) -> dict | None:
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr[-2000:], file=sys.stderr)
        return None
    out = json.loads(p.stdout.strip().splitlines()[-1])
    print(json.dumps(out), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=6, help="PPO iterations of 2048 steps per training run")
    ap.add_argument("--raw-steps", type=int, default=20_000)
    ap.add_argument("--no-sb3", action="store_true")
    a = ap.parse_args()
    res: dict[str, list] = {"raw": [], "ppolab": [], "update_ms": [], "sb3": []}
    for _ in range(a.repeats):
        r = run(RAW.format(steps=a.raw_steps))
        res["raw"].append(r["sps"])
        r = run(PPOLAB.format(iters=a.iterations))
        res["ppolab"].append(r["sps_steady"])
        r = run(UPDATE.format())
        res["update_ms"].append(r["median_ms"])
        if not a.no_sb3:
            r = run(SB3.format(iters=a.iterations))
            if r is not None and r["sps_steady"]:
                res["sb3"].append(r["sps_steady"])
    med = {k: statistics.median(v) for k, v in res.items() if v}
    summary = {"what": "summary", **{f"median_{k}": round(v, 2) for k, v in med.items()},
               "ppolab_over_raw": round(med["ppolab"] / med["raw"], 3)}
    if "sb3" in med:
        summary["ppolab_over_sb3"] = round(med["ppolab"] / med["sb3"], 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
