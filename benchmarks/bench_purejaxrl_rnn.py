"""PureJaxRL's recurrent PPO (``purejaxrl/ppo_rnn.py``, a GRU) against ``ppolab train --policy gru`` on gymnax
CartPole-v1 with the same settings, side by side: trace + compile time and steps per second after compiling.

    # PureJaxRL is not vendored: point --purejaxrl at a clone, or at the bare git mirror the fetch tool made
    python benchmarks/bench_purejaxrl_rnn.py --purejaxrl /work/.mirror/luchris429+purejaxrl/repo --repeats 3
    python benchmarks/bench_purejaxrl_rnn.py --purejaxrl PATH --smoke      # 2 updates a side: checks the script

``--purejaxrl PATH``: a checkout holding ``purejaxrl/ppo_rnn.py`` and ``purejaxrl/wrappers.py``, or a git directory
(read with ``git show HEAD:...``; written against commit 31756b197773a52db763fdbe6d635e4b46522a73, 2024-09-09). The
two files are copied to a fresh /tmp directory at run time and these shims applied to the copies (each one asserts
the text it replaces, so a changed upstream file fails loudly instead of running something else):

1. flax 0.12: ``nn.GRUCell`` needs ``features`` and its ``initialize_carry`` is a method of an instance taking the
   full input shape: ``nn.GRUCell()(h, x)`` -> ``nn.GRUCell(features=x.shape[1])(h, x)``, and
   ``nn.GRUCell.initialize_carry(key, (B,), H)`` -> ``nn.GRUCell(features=H, parent=None).initialize_carry(key,
   (B, H))`` (what later PureJaxRL versions do).
2. gymnax 1.0: ``env.step`` returns (obs, state, reward, terminated, truncated, info), six values where wrappers.py
   unpacks five: the gymnax env is wrapped in ``FiveTupleStep`` (in the shim module), whose step returns
   ``done = terminated | truncated`` as PureJaxRL's single done flag.
3. wrappers.py imports brax and navix at the top for wrappers ppo_rnn.py does not use; navix is not installed: those
   three imports are replaced by ``None`` placeholders.
4. distrax is not installed (it pulls in tensorflow-probability): a ``distrax.py`` shim with the one class ppo_rnn.py
   uses, ``Categorical(logits=...)`` with ``sample(seed=)``, ``log_prob``, ``entropy``.

PureJaxRL's own config (its ``__main__``): LR 2.5e-4 annealed, NUM_ENVS 4, NUM_STEPS 128, TOTAL_TIMESTEPS 5e5,
UPDATE_EPOCHS 4, NUM_MINIBATCHES 4, GAMMA 0.99, GAE_LAMBDA 0.95, CLIP_EPS 0.2 (also the value clip), ENT_COEF 0.01,
VF_COEF 0.5, MAX_GRAD_NORM 0.5, Adam eps 1e-5; network Dense(128)-ReLU -> GRU(128) -> actor Dense(128)-ReLU ->
logits and critic Dense(128)-ReLU -> value; minibatches are whole 128-step sequences of one env each (the envs are
shuffled), each from the GRU state at the rollout's start. ppolab's flags for the same: ``--policy gru --rnn-size 128
--hidden-sizes 128 --activation relu --seq-len 128`` and the numbers above, ``--vf-coef 0.25`` (PureJaxRL's value
loss carries a factor 0.5 inside: 0.5 x 0.5; ppolab's c1 multiplies the squared error itself), ``--vf-clip 0.2``.
Left different: ppolab's heads are linear after the cell (PureJaxRL has a 128-unit ReLU layer in each head: ~33k more
parameters, ~25 % more network FLOPs there), and ppolab bootstraps truncated episodes where PureJaxRL's single done
flag treats the 500-step limit as a termination.

Measured per side, each run in its own process with cold compilation caches: PureJaxRL: ``jax.jit(train).lower``
(trace) and ``.compile()`` timed apart, then the compiled program run once (the whole training), SPS = steps / run
time; ppolab: ``summary.json``'s ``sps_after_first_call`` and ``first_call_s``, and its compilation before the
loop (first_call_s less the first chunk's own time from metrics.csv). Plus each side's mean training return at the
end, as a check that both learned. JSON lines go to ``--out`` (default benchmarks/results/purejaxrl_rnn.jsonl; with
--smoke, /tmp/purejaxrl_rnn_smoke.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_recurrent_sb3 import PpolabRunError, failure_reason, median_of, ppolab_train  # noqa: E402

#: PureJaxRL ppo_rnn.py's own config (its __main__), DEBUG off (no host callback inside the program).
CONFIG = {"LR": 2.5e-4, "NUM_ENVS": 4, "NUM_STEPS": 128, "TOTAL_TIMESTEPS": 500_000, "UPDATE_EPOCHS": 4,
          "NUM_MINIBATCHES": 4, "GAMMA": 0.99, "GAE_LAMBDA": 0.95, "CLIP_EPS": 0.2, "ENT_COEF": 0.01, "VF_COEF": 0.5,
          "MAX_GRAD_NORM": 0.5, "ENV_NAME": "CartPole-v1", "ANNEAL_LR": True, "DEBUG": False}
GRU_SIZE = 128  # hard-coded in ppo_rnn.py

SHIM_MODULE = '''"""Shims for running PureJaxRL's ppo_rnn.py on gymnax 1.0 (written by bench_purejaxrl_rnn.py)."""
import jax.numpy as jnp


class FiveTupleStep:
    """gymnax 1.0's step returns (obs, state, reward, terminated, truncated, info); PureJaxRL's wrappers unpack
    (obs, state, reward, done, info): done = terminated | truncated."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        return getattr(self._env, name)

    def step(self, key, state, action, params=None):
        obs, state, reward, terminated, truncated, info = self._env.step(key, state, action, params)
        return obs, state, reward, jnp.logical_or(terminated, truncated), info
'''

DISTRAX_SHIM = '''"""The part of distrax that PureJaxRL's ppo_rnn.py uses (written by bench_purejaxrl_rnn.py)."""
import jax
import jax.numpy as jnp


class Categorical:
    def __init__(self, logits):
        self.logits = jax.nn.log_softmax(logits, axis=-1)

    def sample(self, seed):
        return jax.random.categorical(seed, self.logits, axis=-1)

    def log_prob(self, value):
        return jnp.take_along_axis(self.logits, value[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self):
        return -jnp.sum(jnp.exp(self.logits) * self.logits, axis=-1)
'''

#: (file, old text, new text): the shims of the module docstring, applied to the /tmp copies.
PATCHES = [
    ("ppo_rnn.py", "new_rnn_state, y = nn.GRUCell()(rnn_state, ins)",
     "new_rnn_state, y = nn.GRUCell(features=ins.shape[1])(rnn_state, ins)"),
    ("ppo_rnn.py",
     "return nn.GRUCell.initialize_carry(\n            jax.random.PRNGKey(0), (batch_size,), hidden_size\n        )",
     "return nn.GRUCell(features=hidden_size, parent=None).initialize_carry(\n"
     "            jax.random.PRNGKey(0), (batch_size, hidden_size)\n        )"),
    ("ppo_rnn.py", "    env = FlattenObservationWrapper(env)\n",
     "    env = FlattenObservationWrapper(purejaxrl_shims.FiveTupleStep(env))\n"),
    ("ppo_rnn.py", "from wrappers import FlattenObservationWrapper, LogWrapper\n",
     "from wrappers import FlattenObservationWrapper, LogWrapper\nimport purejaxrl_shims\n"),
    ("wrappers.py", "from brax import envs\n", "envs = None  # shim: brax unused by ppo_rnn.py\n"),
    ("wrappers.py", "from brax.envs.wrappers.training import EpisodeWrapper, AutoResetWrapper\n",
     "EpisodeWrapper = AutoResetWrapper = None  # shim: brax unused by ppo_rnn.py\n"),
    ("wrappers.py", "import navix as nx\n", "nx = None  # shim: navix (not installed) unused by ppo_rnn.py\n"),
]


def read_upstream(path: str, name: str) -> str:
    """``purejaxrl/NAME`` from a checkout, or from HEAD of a git directory."""
    checkout = os.path.join(path, "purejaxrl", name)
    if os.path.exists(checkout):
        with open(checkout) as f:
            return f.read()
    out = subprocess.run(["git", "--git-dir", path, "show", f"HEAD:purejaxrl/{name}"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: no purejaxrl/{name} under {path} (a checkout or a git directory): {out.stderr.strip()}")
    return out.stdout


def prepare_copy(path: str) -> str:
    """Copy ppo_rnn.py and wrappers.py from ``path`` into a fresh /tmp directory with the shims; returns it."""
    files = {name: read_upstream(path, name) for name in ("ppo_rnn.py", "wrappers.py")}
    for name, old, new in PATCHES:
        if files[name].count(old) != 1:
            sys.exit(f"error: {name} from {path} has changed: the shim for {old.splitlines()[0]!r} no longer applies")
        files[name] = files[name].replace(old, new)
    files["purejaxrl_shims.py"], files["distrax.py"] = SHIM_MODULE, DISTRAX_SHIM
    out = tempfile.mkdtemp(prefix="purejaxrl-rnn-")
    for name, text in files.items():
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
    return out


def purejaxrl_side(copy_dir: str, total: int, seed: int) -> dict:
    """Runs in a fresh process: trace, compile, then one run of the compiled training."""
    sys.path.insert(0, copy_dir)
    import jax
    import numpy as np
    import ppo_rnn

    config = dict(CONFIG, TOTAL_TIMESTEPS=total)
    rng = jax.random.PRNGKey(seed)
    t0 = time.perf_counter()
    lowered = jax.jit(ppo_rnn.make_train(config)).lower(rng)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    out = jax.block_until_ready(compiled(rng))
    t3 = time.perf_counter()
    steps = total // config["NUM_STEPS"] // config["NUM_ENVS"] * config["NUM_STEPS"] * config["NUM_ENVS"]
    metric = jax.tree_util.tree_map(np.asarray, out["metric"])  # leaves [updates, NUM_STEPS, NUM_ENVS]
    last = max(1, metric["returned_episode"].shape[0] // 20)  # the last 5 % of the updates
    done = metric["returned_episode"][-last:]
    ret = metric["returned_episode_returns"][-last:][done]
    return {"side": "purejaxrl", "seed": seed, "steps": int(steps), "trace_s": round(t1 - t0, 3),
            "compile_s": round(t2 - t1, 3), "run_s": round(t3 - t2, 3),
            "sps_after_compile": round(steps / (t3 - t2), 1), "return_end": float(ret.mean()) if ret.size else None,
            "backend": jax.default_backend()}


def ppolab_flags(total: int, seed: int) -> list[str]:
    c = CONFIG
    return ["--env", "gymnax:CartPole-v1", "--policy", "gru", "--rnn-size", str(GRU_SIZE), "--hidden-sizes", "128",
            "--rnn-head-sizes", "128",
            "--activation", "relu", "--seq-len", str(c["NUM_STEPS"]), "--num-envs", str(c["NUM_ENVS"]),
            "--num-steps", str(c["NUM_STEPS"]), "--num-epochs", str(c["UPDATE_EPOCHS"]), "--num-minibatches",
            str(c["NUM_MINIBATCHES"]), "--learning-rate", str(c["LR"]), "--anneal-lr", "--clip-eps",
            str(c["CLIP_EPS"]), "--no-anneal-clip", "--gamma", str(c["GAMMA"]), "--gae-lambda", str(c["GAE_LAMBDA"]),
            "--vf-coef", str(c["VF_COEF"] * 0.5), "--vf-clip", str(c["CLIP_EPS"]), "--ent-coef", str(c["ENT_COEF"]),
            "--max-grad-norm", str(c["MAX_GRAD_NORM"]), "--adam-eps", "1e-5", "--norm-adv", "--total-timesteps",
            str(total), "--seed", str(seed), "--eval-episodes", "10", "--checkpoint-every", "0"]


def ppolab_side(total: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PPOLAB_CACHE_DIR=os.path.join(tmp, "cache"))  # cold: compiled from scratch
        try:
            run = ppolab_train(ppolab_flags(total, seed), os.path.join(tmp, "run"), env=env)
        except PpolabRunError as e:
            return {"side": "ppolab", "seed": seed, "error": str(e)}
    s, rows = run["summary"], run["rows"]
    first_chunk_s = float(rows[0]["time_s"]) if rows else 0.0  # rows of one call share its end time
    tail = [r for r in rows[-max(1, len(rows) // 20):] if r["return_recent"] not in ("", "nan")]
    return {"side": "ppolab", "seed": seed, "steps": s["total_timesteps"], "first_call_s": s["first_call_s"],
            "compile_before_loop_s": round(s["first_call_s"] - first_chunk_s, 3), "loop_s": s["train_loop_s"],
            "sps": s["sps"], "sps_after_first_call": s["sps_after_first_call"],
            "return_end": float(tail[-1]["return_recent"]) if tail else None, "eval_return_mean": s["eval_return_mean"],
            "backend": s.get("platform")}


def run_purejaxrl(copy_dir: str, total: int, seed: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--pj-side", copy_dir, "--total-timesteps", str(total),
           "--seed", str(seed)]
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR="", JAX_ENABLE_COMPILATION_CACHE="false")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        return {"side": "purejaxrl", "seed": seed, "error": failure_reason(p.stderr, [])}
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], total: int, copy_dir: str) -> dict:
    """Medians per side over the runs without an error."""
    ok = {side: [x for x in runs if x["side"] == side and "error" not in x] for side in ("purejaxrl", "ppolab")}
    return {"what": "summary", "env": "gymnax:CartPole-v1", "total_timesteps": total, "purejaxrl_config": CONFIG,
            "purejaxrl_copy": copy_dir, "runs": {side: len(v) for side, v in ok.items()},
            "purejaxrl": {"median_sps_after_compile": median_of(ok["purejaxrl"], lambda x: x["sps_after_compile"]),
                          "median_trace_plus_compile_s": median_of(ok["purejaxrl"],
                                                                   lambda x: x["trace_s"] + x["compile_s"])},
            "ppolab": {"median_sps_after_first_call": median_of(ok["ppolab"], lambda x: x["sps_after_first_call"]),
                       "median_compile_before_loop_s": median_of(ok["ppolab"], lambda x: x["compile_before_loop_s"])}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--purejaxrl", default=None, help="PureJaxRL checkout or git directory (see the docstring)")
    ap.add_argument("--total-timesteps", type=int, default=CONFIG["TOTAL_TIMESTEPS"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="2 updates a side, 1 repeat: checks the script")
    ap.add_argument("--out", default=None, help="JSON lines file (default: see the docstring)")
    ap.add_argument("--pj-side", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pj_side:  # the PureJaxRL process
        print(json.dumps(purejaxrl_side(args.pj_side, args.total_timesteps, args.seed)))
        return
    if not args.purejaxrl:
        sys.exit("error: --purejaxrl PATH is required (a PureJaxRL checkout or git directory; see the docstring)")
    if args.smoke:
        args.total_timesteps, args.repeats = 2 * CONFIG["NUM_ENVS"] * CONFIG["NUM_STEPS"], 1
    out = args.out or ("/tmp/purejaxrl_rnn_smoke.jsonl" if args.smoke else
                       os.path.join(HERE, "results", "purejaxrl_rnn.jsonl"))
    copy_dir = prepare_copy(args.purejaxrl)
    runs = []
    with open(out, "a") as f:
        for r in range(args.repeats):
            seed = args.seed + r
            sides = [lambda s: run_purejaxrl(copy_dir, args.total_timesteps, s),
                     lambda s: ppolab_side(args.total_timesteps, s)]
            for side in sides if r % 2 == 0 else sides[::-1]:
                result = {"what": "run", "repeat": r, **side(seed)}
                runs.append(result)
                print(json.dumps(result), flush=True)
                f.write(json.dumps(result) + "\n")
        report = summarize(runs, args.total_timesteps, copy_dir)
        f.write(json.dumps(report) + "\n")
    for x in runs:
        if "error" in x:
            print(f"{x['side']} failed (seed {x['seed']}): {x['error']}", file=sys.stderr)
    print(json.dumps(report, indent=1))
    print(f"results appended to {out}")


if __name__ == "__main__":
    main()
