"""A masked JAX-native task fully jitted: jumanji Knapsack-v1 (50 items, capacity 12.5), ppolab's PPO against the
uniform-legal random policy and two greedy heuristics, with the run's SPS.

    python benchmarks/bench_jumanji.py [--total-timesteps 1000000] [--seed 0]

Settings: tests/test_masking_jax.py's learning test (32 envs x 32 steps, 8 epochs x 4 minibatches, lr 1e-3,
gamma 0.3, lambda 0.9: a short discount makes each pick's own value the signal), run longer. Reference scores (500
episodes each, the same instance generator): uniform over legal items, greedy by value, greedy by value / weight.
The jumanji paper (Bonnet et al. 2023, arXiv 2306.09884) plots A2C learning curves for its tasks but tabulates no
return for Knapsack-v1, so there is no published number to put beside these.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import jax
import numpy as np


def reference_scores(episodes: int, seed: int) -> dict:
    """Mean returns of the uniform-legal policy and two greedy heuristics on Knapsack-v1."""
    import jumanji

    env = jumanji.make("Knapsack-v1")
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    states, _ = jax.vmap(env.reset)(keys)
    v, w = np.asarray(states.values), np.asarray(states.weights)
    cap = float(env.generator.total_budget)

    def greedy(order) -> float:
        total = []
        for i in range(episodes):
            room, got = cap, 0.0
            for j in order[i]:
                if w[i, j] <= room:
                    room -= w[i, j]
                    got += v[i, j]
            total.append(got)
        return float(np.mean(total))

    rng = np.random.default_rng(seed)
    uniform = greedy(np.stack([rng.permutation(v.shape[1]) for _ in range(episodes)]))  # = random legal picks
    return {"uniform_legal": round(uniform, 2), "greedy_value": round(greedy(np.argsort(-v, axis=1)), 2),
            "greedy_value_per_weight": round(greedy(np.argsort(-v / w, axis=1)), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--total-timesteps", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    from ppolab.config import Config
    from ppolab.training import train

    with tempfile.TemporaryDirectory() as tmp:
        res = train(Config(env="jumanji:Knapsack-v1", num_envs=32, num_steps=32, num_epochs=8, num_minibatches=4,
                           total_timesteps=a.total_timesteps, learning_rate=1e-3, gamma=0.3, gae_lambda=0.9,
                           eval_episodes=500, seed=a.seed, run_dir=tmp + "/run", tensorboard=False, progress=False))
    s = res.summary
    row = {"env": "jumanji:Knapsack-v1", "total_timesteps": a.total_timesteps, "seed": a.seed,
           "sps": s["sps"], "sps_after_first_call": s["sps_after_first_call"], "first_call_s": s["first_call_s"],
           "train_return_recent": s["train_return_recent"], "eval_return_mean": s["eval_return_mean"],
           **reference_scores(500, a.seed), "device": jax.devices()[0].platform}
    print(json.dumps(row))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
