"""ppolab against sb3-contrib's ``MaskablePPO`` on the same masked Gymnasium env with the same hyperparameters, side by
side: steps per second (the ratio, issue 13's goal >= 5x) and the final return.

    python -m venv /tmp/sb3venv && /tmp/sb3venv/bin/pip install torch==2.13.0 sb3-contrib
    python benchmarks/bench_maskable.py --sb3-python /tmp/sb3venv/bin/python [--env ppolab/MaskedBanditMethod-v0]
        [--total-timesteps 200000] [--repeats 3] [--seed 0]

The env is one of ppolab's masked probes (``ppolab/MaskedBanditMethod-v0``, ``ppolab/MaskedMultiDiscreteMethod-v0``:
masks from an ``action_masks()`` method, sb3-contrib's convention); the sb3 side loads ``envs/masked_probes.py`` as a
plain file (it needs Gymnasium and numpy only), so neither venv needs the other's packages. Both sides: the same
number of envs, steps per rollout, minibatch size, epochs, step size (constant: ppolab's annealing is turned off),
clip range, gamma, GAE lambda, entropy and value coefficients, gradient clip, Adam epsilon, a 64x64 tanh MLP for
policy and value with orthogonal init, advantages normalized per minibatch. ppolab acts with the numpy policy
(its default for MLPs); sb3 with its torch policy on CPU (one torch thread per process unless --torch-threads).

Reported per side and repeat: the training loop's wall time and SPS (ppolab: ``summary.json``'s ``sps``, compilation
included, and ``sps_after_first_call``; sb3: ``model.learn``), the mean return of the last 100 training episodes, and a
deterministic evaluation over ``--eval-episodes`` episodes with masks (sb3-contrib's ``evaluate_policy``); then the
median SPS ratios (with and without ppolab's compilation) and the median returns, as JSON. Compilation is a fixed
cost of a few seconds: give a budget where it does not dominate (the default 200k steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROBES = os.path.join(HERE, "..", "src", "ppolab", "envs", "masked_probes.py")

#: The shared hyperparameters, in ppolab's names (the sb3 side translates them).
HPARAMS = dict(num_envs=8, num_steps=64, num_minibatches=4, num_epochs=4, learning_rate=3e-4, clip_eps=0.2,
               gamma=0.5, gae_lambda=0.95, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, adam_eps=1e-5)


def ppolab_side(env_id: str, total: int, seed: int, eval_episodes: int) -> dict:
    import ppolab

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ppolab.Config(env=env_id, total_timesteps=total, seed=seed, anneal_lr=False, anneal_clip=False,
                            hidden_sizes=(64, 64), activation="tanh", eval_episodes=eval_episodes,
                            eval_deterministic=True, run_dir=os.path.join(tmp, "run"), progress=False,
                            tensorboard=False, checkpoint_every=0, **HPARAMS)
        s = ppolab.train(cfg).summary
    return {"loop_s": s["train_loop_s"], "sps": s["sps"], "sps_after_first_call": s["sps_after_first_call"],
            "return_recent": s["agents"][0]["train_return_recent"], "eval_return_mean": s["eval_return_mean"]}


def sb3_side(env_id: str, total: int, seed: int, eval_episodes: int, torch_threads: int) -> dict:
    import importlib.util

    import gymnasium as gym
    import numpy as np
    import torch as th
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.evaluation import evaluate_policy
    from stable_baselines3.common.env_util import make_vec_env

    th.set_num_threads(torch_threads)
    spec = importlib.util.spec_from_file_location("masked_probes", PROBES)
    probes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probes)
    probes.register()
    h = HPARAMS
    env = make_vec_env(env_id, n_envs=h["num_envs"], seed=seed)
    model = MaskablePPO("MlpPolicy", env, n_steps=h["num_steps"], n_epochs=h["num_epochs"],
                        batch_size=h["num_envs"] * h["num_steps"] // h["num_minibatches"],
                        learning_rate=h["learning_rate"], clip_range=h["clip_eps"], gamma=h["gamma"],
                        gae_lambda=h["gae_lambda"], ent_coef=h["ent_coef"], vf_coef=h["vf_coef"],
                        max_grad_norm=h["max_grad_norm"], normalize_advantage=True, seed=seed, device="cpu",
                        policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=th.nn.Tanh,
                                           ortho_init=True, optimizer_kwargs=dict(eps=h["adam_eps"])))
    t0 = time.perf_counter()
    model.learn(total_timesteps=total)
    loop_s = time.perf_counter() - t0
    recent = [ep["r"] for ep in model.ep_info_buffer]
    eval_env = gym.make(env_id)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True)
    return {"loop_s": round(loop_s, 3), "sps": round(model.num_timesteps / loop_s, 1),
            "return_recent": float(np.mean(recent)) if recent else None, "eval_return_mean": float(mean)}


def _median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sb3-python", default=os.environ.get("SB3_PYTHON", "/tmp/sb3venv/bin/python"),
                    help="a Python with torch and sb3-contrib installed")
    ap.add_argument("--env", default="ppolab/MaskedBanditMethod-v0")
    ap.add_argument("--total-timesteps", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--sb3-side", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sb3_side:  # running in the sb3 venv
        print(json.dumps(sb3_side(args.env, args.total_timesteps, args.seed, args.eval_episodes, args.torch_threads)))
        return
    if not os.path.exists(args.sb3_python):
        sys.exit(f"error: no Python at {args.sb3_python}; create the venv (see this script's docstring) "
                 "or pass --sb3-python")
    ours, theirs = [], []
    for r in range(args.repeats):
        seed = args.seed + r
        ours.append(ppolab_side(args.env, args.total_timesteps, seed, args.eval_episodes))
        out = subprocess.run([args.sb3_python, os.path.abspath(__file__), "--sb3-side", "--env", args.env,
                              "--total-timesteps", str(args.total_timesteps), "--seed", str(seed),
                              "--eval-episodes", str(args.eval_episodes), "--torch-threads", str(args.torch_threads)],
                             check=True, capture_output=True, text=True)
        theirs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    sps_theirs = _median(theirs, "sps")
    ratio = lambda key: round(_median(ours, key) / sps_theirs, 2) if _median(ours, key) and sps_theirs else None
    report = {"env": args.env, "total_timesteps": args.total_timesteps, "repeats": args.repeats, "hparams": HPARAMS,
              "ppolab": ours, "sb3_contrib": theirs,
              "median_sps_ratio": ratio("sps"),  # ppolab's compilation included
              "median_sps_ratio_after_first_call": ratio("sps_after_first_call"),
              "median_eval_return": {"ppolab": _median(ours, "eval_return_mean"),
                                     "sb3_contrib": _median(theirs, "eval_return_mean")},
              "median_return_recent": {"ppolab": _median(ours, "return_recent"),
                                       "sb3_contrib": _median(theirs, "return_recent")}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
