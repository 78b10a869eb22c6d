"""8 seeds at once vs 1 seed on Gymnasium CartPole-v1 (host driver); prints one JSON line.

    python benchmarks/bench_seeds.py             # 50k steps per agent, the default (cartpole) settings
    python benchmarks/bench_seeds.py --tiny      # checks the script
    python benchmarks/bench_seeds.py --vector-mode vector   # Gymnasium's numpy CartPole (SAME_STEP autoreset)
    python benchmarks/bench_seeds.py --vector-mode vector --setting cleanrl   # CleanRL's / PureJaxRL's CartPole PPO

Total SPS counts the steps of every agent. The population shares one vector env, one numpy acting pass per step and
one vmapped update per iteration, so the ratio sps_8 / sps_1 shows how much of the per-step overhead is amortized.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import typing

import jax

from ppolab.config import Config
from ppolab.drivers.population import available_cores, num_groups
from ppolab.training import train


def run(cfg: Config) -> dict:
    with tempfile.TemporaryDirectory(prefix="ppolab-bench-seeds-") as d:
        s = train(cfg.replace(run_dir=f"{d}/run")).summary
    later = (cfg.num_iterations - 1) * cfg.batch_size * s["num_agents"]  # the first call also compiles
    return {"sps": s["sps"], "sps_after_first_call": round(later / max(s["train_loop_s"] - s["first_call_s"], 1e-9), 1),
            "train_loop_s": s["train_loop_s"], "first_call_s": s["first_call_s"],
            "eval_return_mean": s["eval_return_mean"]}


# CleanRL's ppo.py CartPole defaults (the same as PureJaxRL's): 4 envs x 128 steps, 4 epochs x 4 minibatches,
# Adam 2.5e-4 annealed, gamma 0.99, lambda 0.95, eps 0.2, entropy 0.01, value clipping 0.2, grad norm 0.5.
SETTINGS = {
    "default": {},
    "cleanrl": dict(num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4, learning_rate=2.5e-4, anneal_lr=True,
                    clip_eps=0.2, anneal_clip=False, gamma=0.99, gae_lambda=0.95, vf_coef=0.5, ent_coef=0.01,
                    vf_clip=0.2, max_grad_norm=0.5, adam_eps=1e-5, norm_adv=True),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--total-timesteps", type=int, default=50_000)
    ap.add_argument("--seeds", type=int, default=8)
    modes = typing.get_args(typing.get_type_hints(Config)["vector_mode"])
    ap.add_argument("--vector-mode", default="sync", choices=modes,
                    help="Config.vector_mode: how the Gymnasium vector env steps its sub-envs")
    ap.add_argument("--env", default="CartPole-v1", help="e.g. gymnax:CartPole-v1 (the jitted driver)")
    ap.add_argument("--threads", type=int, default=0, help="Config.threads for the population (0: one per core)")
    ap.add_argument("--setting", default="default", choices=sorted(SETTINGS),
                    help="PPO hyperparameters: ppolab's default (cartpole preset) or CleanRL's CartPole defaults")
    args = ap.parse_args()
    steps = 1024 if args.tiny else args.total_timesteps
    cfg = Config(env=args.env, total_timesteps=steps, progress=False, tensorboard=False, checkpoint_every=0,
                 eval_episodes=2 if args.tiny else 10, vector_mode=args.vector_mode, threads=args.threads,
                 **SETTINGS[args.setting])
    one = run(cfg.replace(num_seeds=1))
    many = run(cfg.replace(num_seeds=args.seeds))
    print(json.dumps({"bench": "seeds", "env": cfg.env, "setting": args.setting, "vector_mode": cfg.vector_mode,
                      "threads": cfg.threads, "groups": num_groups(cfg.threads, args.seeds),
                      "cpu_cores": available_cores(),
                      "total_timesteps_per_agent": cfg.num_iterations * cfg.batch_size, "seeds": args.seeds,
                      "one": one, "many": many,
                      "sps_ratio": many["sps_after_first_call"] / one["sps_after_first_call"],
                      "platform": jax.default_backend()}))

if __name__ == "__main__":
    main()
