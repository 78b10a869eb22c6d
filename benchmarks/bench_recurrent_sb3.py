"""ppolab's recurrent PPO (``--policy lstm``) against sb3-contrib's ``RecurrentPPO`` on StatelessCartPole
(CartPole-v1 observing [x, theta] only), with RL-Zoo's recurrent hyperparameters on both sides, side by side.

    python -m venv /tmp/sb3venv && /tmp/sb3venv/bin/pip install torch==2.13.0 sb3-contrib
    python benchmarks/bench_recurrent_sb3.py --repeats 3            # 100k steps a run, RL-Zoo's budget
    python benchmarks/bench_recurrent_sb3.py --smoke                # a few thousand steps: checks the script only

Hyperparameters: rl-baselines3-zoo ``hyperparams/ppo_lstm.yml``, entry ``CartPoleNoVel-v1`` (DLR-RM/rl-baselines3-zoo
at commit 22e3ff2450fd92033f7f032915e1f64894a09584, "# Tuned"; its benchmark.md: 500 +- 0 after 100k steps):
normalize True (VecNormalize: observations and rewards, gamma 0.98), n_envs 8, n_timesteps 1e5, MlpLstmPolicy,
n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98, n_epochs 20, ent_coef 0.0, learning_rate lin_0.001,
clip_range lin_0.2, policy_kwargs ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64,
enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64]); the rest are sb3's PPO defaults: vf_coef 0.5,
max_grad_norm 0.5, advantages normalized per minibatch, no value clipping, Adam eps 1e-5. RL-Zoo's
``CartPoleNoVel-v1`` is CartPole-v1 under ``MaskVelocityWrapper`` (velocities zeroed, obs still [4]); here both
sides drop them (obs [2]): the same information. In ppolab's flags: 8 envs x 32 steps, 1 minibatch (256 = the whole
batch) x 20 epochs, step size 1e-3 and clip 0.2 both annealed linearly to 0 (``lin_``: progress_remaining x value),
--normalize-obs --normalize-reward, --activation relu --no-ortho-init, sequences = whole rollouts (``--seq-len 0``;
the carry resets at episode starts, as sb3's per-episode sequences do).

The networks are laid out alike: sb3's MlpLstmPolicy is LSTM(64) on the observation -> 64 ReLU -> linear heads, with
a second LSTM for the critic (``enable_critic_lstm=True``); ppolab's ``--preset cartpole-lstm`` is the same: no
layer before the cell, ``--rnn-separate``, ``--rnn-head-sizes 64``, initialized alike: torch's defaults
(``--default-init torch``, the preset's since session 11; ``--default-init flax`` for flax's).

Each repeat runs both sides once, alternating which goes first, each in its own process (ppolab: ``python -m
ppolab.cli train``; sb3: this script under ``--sb3-python`` with ``--sb3-side``). Reported per run: SPS (ppolab:
compilation included, ``sps``, and after the first call, ``sps_after_first_call``; sb3: ``model.learn``), the steps
and wall time until the rolling mean return reaches 475 over the last 20 training episodes (sb3: a callback on
Monitor's episode infos; ppolab: rebuilt from metrics.csv's per-iteration means, so approximate) and over the last
100 (ppolab's ``return_recent``, exact on both sides), times from the process start and from the training loop's
start, and a 10-episode deterministic evaluation. JSON lines go to ``--out`` (default
benchmarks/results/recurrent_sb3.jsonl; with --smoke, /tmp/recurrent_sb3_smoke.jsonl).

The helpers ``ppolab_train`` / ``time_to`` run ``ppolab train`` in a subprocess and read its run directory; the other
recurrent benchmarks (``bench_purejaxrl_rnn.py``, ``popgym_table.py``) import them.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
THRESHOLD = 475.0

#: RL-Zoo ppo_lstm.yml CartPoleNoVel-v1 (see the module docstring), in ppolab's names.
TOTAL_TIMESTEPS = 100_000  # RL-Zoo's n_timesteps
HPARAMS = dict(num_envs=8, num_steps=32, num_minibatches=1, num_epochs=20, normalize=True, activation="relu",
               head_sizes=(64,),
               learning_rate=1e-3, clip_eps=0.2, gamma=0.98, gae_lambda=0.8, ent_coef=0.0, vf_coef=0.5,
               max_grad_norm=0.5, adam_eps=1e-5, rnn_size=64, hidden_sizes=())


#: ppolab's recurrent-policy flags (a checkout that does not know them names one as unrecognized)
RECURRENT_FLAGS = ("--policy", "--rnn-size", "--rnn-separate", "--no-rnn-separate", "--seq-len")


class PpolabRunError(RuntimeError):
    """``ppolab train`` exited with an error; the message is one line saying why."""


def failure_reason(stderr: str, flags: list[str]) -> str:
    """One line for a failed ``ppolab train``: its last error line, and what it likely means for recurrent flags."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip() and not ln.startswith("----")]
    last = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "no output")
    unknown_flag = "nrecognized" in last and any(f in last for f in RECURRENT_FLAGS)
    if "--policy" in flags and (unknown_flag or "Traceback" in stderr):
        return (f"ppolab's recurrent policies (--policy lstm|gru) do not run in this checkout yet: {last[:300]} "
                "(rerun once they have landed)")
    return last[:400]


def ppolab_train(flags: list[str], run_dir: str, python: str = sys.executable, env: dict | None = None,
                 timeout: float | None = None) -> dict:
    """Run ``python -m ppolab.cli train FLAGS`` into ``run_dir`` (no progress bar, TensorBoard or report); return
    {"summary": summary.json, "rows": metrics.csv rows, "process_start_unix": when the process started}.
    ``PpolabRunError`` (one line) if it fails."""
    cmd = [python, "-m", "ppolab.cli", "train", *flags, "--run-dir", run_dir, "--overwrite", "--no-progress",
           "--no-tensorboard"]
    env = dict(os.environ if env is None else env, PPOLAB_REPORT="0")
    start = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PpolabRunError(f"ppolab train ran past {timeout} s") from None
    if p.returncode != 0:
        raise PpolabRunError(failure_reason(p.stderr, flags))
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return {"summary": summary, "rows": rows, "process_start_unix": start}


def time_to(rows: list[dict], threshold: float = THRESHOLD, window: int = 100) -> dict | None:
    """The first metrics.csv row where the mean return over the last ``window`` episodes reaches ``threshold``:
    {"steps", "loop_s"} (seconds since the training loop started). ``window`` 100 reads ``return_recent`` (exact);
    other windows are rebuilt from the per-iteration means (each iteration's episodes counted at its mean)."""
    recent: collections.deque = collections.deque(maxlen=window)
    for row in rows:
        if window == 100:
            value = float(row["return_recent"]) if row["return_recent"] not in ("", "nan") else None
        else:
            n = int(row["episodes"])
            recent.extend([float(row["episode_return"])] * n if n else [])
            value = statistics.fmean(recent) if len(recent) == window else None
        if value is not None and value >= threshold:
            return {"steps": int(row["env_steps"]), "loop_s": float(row["time_s"])}
    return None


def ppolab_flags(total: int, seed: int, eval_episodes: int, default_init: str = "torch") -> list[str]:
    h = HPARAMS
    return ["--preset", "cartpole-lstm", "--env", "ppolab/StatelessCartPole-v0", "--policy", "lstm",  # the preset:
            "--rnn-size", str(h["rnn_size"]),  # no layer before the cell (--hidden-sizes empty), the rest as below
            "--rnn-separate", "--rnn-head-sizes", *map(str, h["head_sizes"]), "--activation", h["activation"],
            "--no-ortho-init", "--normalize-obs", "--normalize-reward",
            "--num-envs", str(h["num_envs"]), "--num-steps", str(h["num_steps"]), "--seq-len", "0",
            "--num-minibatches", str(h["num_minibatches"]), "--num-epochs", str(h["num_epochs"]),
            "--learning-rate", str(h["learning_rate"]), "--anneal-lr", "--clip-eps", str(h["clip_eps"]),
            "--anneal-clip", "--gamma", str(h["gamma"]), "--gae-lambda", str(h["gae_lambda"]),
            "--ent-coef", str(h["ent_coef"]), "--vf-coef", str(h["vf_coef"]), "--max-grad-norm",
            str(h["max_grad_norm"]), "--adam-eps", str(h["adam_eps"]), "--norm-adv", "--total-timesteps",
            str(total), "--seed", str(seed), "--eval-episodes", str(eval_episodes), "--checkpoint-every", "0",
            "--default-init", default_init]


def ppolab_side(total: int, seed: int, eval_episodes: int, default_init: str = "torch") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = ppolab_train(ppolab_flags(total, seed, eval_episodes, default_init), os.path.join(tmp, "run"))
    s, rows = run["summary"], run["rows"]
    offset = s["loop_start_unix"] - run["process_start_unix"]  # process start -> training loop start
    out = {"side": "ppolab", "seed": seed, "default_init": default_init, "steps": s["total_timesteps"],
           "loop_s": s["train_loop_s"],
           "sps": s["sps"], "sps_after_first_call": s["sps_after_first_call"], "first_call_s": s["first_call_s"],
           "return_recent_100": s["train_return_recent"], "eval_return_mean": s["eval_return_mean"]}
    for window in (20, 100):
        hit = time_to(rows, THRESHOLD, window)
        out[f"to_475_last{window}"] = None if hit is None else {
            "steps": hit["steps"], "loop_s": hit["loop_s"], "process_s": round(offset + hit["loop_s"], 2)}
    return out


def _register_stateless_cartpole() -> None:
    """In the sb3 venv: ``StatelessCartPole-v1``, an ObservationWrapper over CartPole-v1 keeping obs[[0, 2]]."""
    import gymnasium as gym
    import numpy as np

    class StatelessCartPole(gym.ObservationWrapper):
        def __init__(self, env):
            super().__init__(env)
            low, high = env.observation_space.low[[0, 2]], env.observation_space.high[[0, 2]]
            self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

        def observation(self, obs):
            return np.asarray(obs, np.float32)[[0, 2]]

    if "StatelessCartPole-v1" not in gym.registry:
        gym.register("StatelessCartPole-v1", entry_point=lambda: StatelessCartPole(gym.make("CartPole-v1")))


def _threshold_callback(t0: float, process_start: float):
    """In the sb3 venv: a callback noting the steps and seconds until the mean return of the last 20 (and 100)
    training episodes (Monitor's episode infos) reaches 475."""
    import numpy as np
    from stable_baselines3.common.callbacks import BaseCallback

    class RollingThreshold(BaseCallback):
        def __init__(self):
            super().__init__()
            self.recent = {w: collections.deque(maxlen=w) for w in (20, 100)}
            self.hits: dict[int, dict] = {}

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" not in info:
                    continue
                for w, d in self.recent.items():
                    d.append(float(info["episode"]["r"]))
                    if w not in self.hits and len(d) == w and np.mean(d) >= THRESHOLD:
                        self.hits[w] = {"steps": int(self.num_timesteps),
                                        "loop_s": round(time.perf_counter() - t0, 3),
                                        "process_s": round(time.time() - process_start, 2)}
            return True

    return RollingThreshold()


def sb3_side(total: int, seed: int, eval_episodes: int, torch_threads: int, process_start: float) -> dict:
    """Runs in the sb3 venv: RecurrentPPO with RL-Zoo's CartPoleNoVel-v1 hyperparameters on StatelessCartPole."""
    import gymnasium as gym
    import numpy as np
    import torch as th
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    _register_stateless_cartpole()
    th.set_num_threads(torch_threads)
    h = HPARAMS
    linear = lambda v: (lambda progress_remaining: progress_remaining * v)  # RL-Zoo's lin_ schedules
    env = VecNormalize(make_vec_env("StatelessCartPole-v1", n_envs=h["num_envs"], seed=seed), gamma=h["gamma"])
    policy_kwargs = dict(ortho_init=False, activation_fn=th.nn.ReLU, lstm_hidden_size=h["rnn_size"],
                         enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64]))
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=h["num_steps"], batch_size=256, n_epochs=h["num_epochs"],
                         policy_kwargs=policy_kwargs,
                         learning_rate=linear(h["learning_rate"]), clip_range=linear(h["clip_eps"]), gamma=h["gamma"],
                         gae_lambda=h["gae_lambda"], ent_coef=h["ent_coef"], vf_coef=h["vf_coef"],
                         max_grad_norm=h["max_grad_norm"], seed=seed, device="cpu")
    t0 = time.perf_counter()
    callback = _threshold_callback(t0, process_start)
    model.learn(total_timesteps=total, callback=callback)
    loop_s = time.perf_counter() - t0
    mean = lambda d: float(np.mean(d)) if d else None
    return {"side": "sb3_contrib", "seed": seed, "steps": int(model.num_timesteps), "loop_s": round(loop_s, 3),
            "sps": round(model.num_timesteps / loop_s, 1), "torch_threads": torch_threads,
            "return_recent_100": mean(callback.recent[100]), "return_recent_20": mean(callback.recent[20]),
            "eval_return_mean": _sb3_evaluate(model, gym.make("StatelessCartPole-v1"), eval_episodes, seed, env),
            **{f"to_475_last{w}": callback.hits.get(w) for w in (20, 100)}}


def _sb3_evaluate(model, env, episodes: int, seed: int, norm) -> float | None:
    """Mean return of ``episodes`` deterministic episodes, the LSTM state carried and reset at episode starts, the
    observations normalized with the training run's VecNormalize statistics ``norm``."""
    import numpy as np

    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 10**6 + i)
        state, start, total, done = None, np.ones((1,), bool), 0.0, False
        while not done:
            action, state = model.predict(norm.normalize_obs(obs), state=state, episode_start=start,
                                          deterministic=True)
            obs, r, terminated, truncated, _ = env.step(int(action))
            total, done, start = total + r, terminated or truncated, np.zeros((1,), bool)
        returns.append(total)
    return float(np.mean(returns)) if returns else None


def run_sb3(args, seed: int) -> dict:
    cmd = [args.sb3_python, os.path.abspath(__file__), "--sb3-side", "--total-timesteps", str(args.total_timesteps),
           "--seed", str(seed), "--eval-episodes", str(args.eval_episodes), "--torch-threads",
           str(args.torch_threads), "--process-start", repr(time.time())]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"side": "sb3_contrib", "seed": seed, "error": failure_reason(p.stderr, [])}
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_ppolab(args, seed: int) -> dict:
    try:
        return ppolab_side(args.total_timesteps, seed, args.eval_episodes, args.default_init)
    except PpolabRunError as e:
        return {"side": "ppolab", "seed": seed, "error": str(e)}


def median_of(runs: list[dict], get) -> float | None:
    values = [v for r in runs if (v := get(r)) is not None]
    return statistics.median(values) if values else None


def _hit(run: dict, key: str):
    return (run["to_475_last100"] or {}).get(key)


def summarize(runs: list[dict]) -> dict:
    """Medians per side of SPS, steps and times to 475 (last 100 episodes), over the runs without an error."""
    out = {}
    for side in ("ppolab", "sb3_contrib"):
        ok = [r for r in runs if r["side"] == side and "error" not in r]
        out[side] = {"runs": len(ok), "failed": sum(r["side"] == side and "error" in r for r in runs),
                     "median_sps": median_of(ok, lambda r: r["sps"]),
                     "median_sps_after_first_call": median_of(ok, lambda r: r.get("sps_after_first_call")),
                     "median_steps_to_475": median_of(ok, lambda r: _hit(r, "steps")),
                     "median_process_s_to_475": median_of(ok, lambda r: _hit(r, "process_s")),
                     "median_eval_return": median_of(ok, lambda r: r["eval_return_mean"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sb3-python", default=os.environ.get("SB3_PYTHON", "/tmp/sb3venv/bin/python"),
                    help="a Python with torch and sb3-contrib installed")
    ap.add_argument("--total-timesteps", type=int, default=TOTAL_TIMESTEPS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--default-init", choices=("flax", "torch"), default="torch",
                    help="ppolab's init of its cells and dense layers (torch: RecurrentPPO's own, the preset's)")
    ap.add_argument("--smoke", action="store_true", help="2048 steps, 1 repeat, 2 eval episodes: checks the script")
    ap.add_argument("--out", default=None, help="JSON lines file (default: see the docstring)")
    ap.add_argument("--sb3-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--process-start", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sb3_side:  # running in the sb3 venv
        print(json.dumps(sb3_side(args.total_timesteps, args.seed, args.eval_episodes, args.torch_threads,
                                  args.process_start or time.time())))
        return
    if args.smoke:
        args.total_timesteps, args.repeats, args.eval_episodes = 2048, 1, 2
    out = args.out or ("/tmp/recurrent_sb3_smoke.jsonl" if args.smoke else
                       os.path.join(HERE, "results", "recurrent_sb3.jsonl"))
    if not os.path.exists(args.sb3_python):
        sys.exit(f"error: no Python at {args.sb3_python}; create the venv (see this script's docstring) "
                 "or pass --sb3-python")
    runs = []
    with open(out, "a") as f:
        for r in range(args.repeats):
            seed = args.seed + r
            sides = (run_ppolab, run_sb3) if r % 2 == 0 else (run_sb3, run_ppolab)
            for side in sides:
                result = {"what": "run", "repeat": r, **side(args, seed)}
                runs.append(result)
                print(json.dumps(result), flush=True)
                f.write(json.dumps(result) + "\n")
        report = {"what": "summary", "env": "StatelessCartPole (CartPole-v1, obs [x, theta])",
                  "total_timesteps": args.total_timesteps, "repeats": args.repeats, "hparams": HPARAMS,
                  **summarize(runs)}
        f.write(json.dumps(report) + "\n")
    for side in ("ppolab", "sb3_contrib"):
        for r in runs:
            if r["side"] == side and "error" in r:
                print(f"{side} failed (seed {r['seed']}): {r['error']}", file=sys.stderr)
    print(json.dumps(report, indent=1))
    print(f"results appended to {out}")


if __name__ == "__main__":
    main()
