"""ppolab's GRU policy on three POPGym tasks (easy level), with a markdown table of the returns beside the POPGym
paper's PPO-GRU figures (Morad et al. 2023, "POPGym: Benchmarking Partially Observable Reinforcement Learning",
ICLR 2023, arXiv 2303.01859).

    python -m venv /tmp/popgymvenv --system-site-packages && /tmp/popgymvenv/bin/pip install popgym
    python benchmarks/popgym_table.py --dry-run                 # prints the commands and the table's paper column
    python benchmarks/popgym_table.py --seeds 3                 # the paper's settings and budget: 15M steps a run
    python benchmarks/popgym_table.py --settings quick --seeds 2   # a CPU-sized setting: 2M steps a run
    python benchmarks/popgym_table.py --smoke                   # 512-step runs: checks the script end to end

Each run is ``ppolab train --env popgym_envs:popgym/TASK-v0 --policy gru ...`` (``popgym_envs.py``, next to this
script, registers POPGym's envs with Gymnasium, in the paper's PreviousAction + Antialias wrappers) under
``--python``, a Python that has popgym (by default /tmp/popgymvenv/bin/python when it exists, else this one).

Settings (``--settings paper``, the default): the paper's PPO runs (``popgym/baselines/ppo.py``, proroklab/popgym
at 410d5aa) where ppolab has the option: 64 envs (4 workers x 16), 1024-step rollouts and sequences
(``bptt_cutoff``/``max_seq_len``; longer than any easy episode: RepeatPrevious 51, Autoencode 103, StatelessCartPole
200 steps), minibatches of 8 sequences (``sgd_minibatch_size`` 8 x 1024), gamma 0.99, value coefficient 1.0, a
128-wide torso and a 256-wide GRU (``h``, ``h_memory``), two 128-unit layers in each head after the memory, 15M
steps (``POPGYM_STEPS``); and RLlib's PPO defaults the script leaves alone: step size 5e-5,
GAE lambda 1.0, 30 SGD iterations, clip 0.3, no entropy bonus, no gradient clipping. Not reproduced: RLlib's adaptive
KL penalty *added* to the clipped loss (kl_coeff 0.2; ppolab has clip or a KL penalty, not both), its clipping of the
squared value error at 10 (a no-op for returns in [-1, 1]) and LeakyReLU (ReLU here). On a 2-core CPU these
settings (64 x 1024 steps an iteration, 240 minibatches of 8 x 1024 steps through a GRU of 256) need roughly 7 hours
for 15M steps (an estimate).

``--settings quick``: ppolab's own CPU-sized setting, not the paper's: 64 envs x 128 steps (whole rollouts as
sequences, longer than RepeatPrevious's and Autoencode's easy episodes), 8 minibatches, 4 epochs, step size 3e-4
(annealed), GAE lambda 0.95, gamma 0.99, clip 0.2, a 64-unit torso and a 128-wide GRU, 2M steps (``QUICK_STEPS``).

Reported per task: the mean training return at the end (the last 100 episodes, ``return_recent``) and its maximum
over training (what the paper's MMER, max mean episodic reward, measures on its own smoothed curve), medians over
seeds, next to the paper's figure. The table goes to stdout and ``--out``.md; each run's numbers to ``--out``.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_recurrent_sb3 import PpolabRunError, ppolab_train  # noqa: E402

#: task -> the id popgym_envs registers (POPGym renamed StatelessCartPole to PositionOnlyCartPole; both are there)
TASKS = {"RepeatPreviousEasy": "popgym/RepeatPreviousEasy-v0",
         "StatelessCartPoleEasy": "popgym/StatelessCartPoleEasy-v0",
         "AutoencodeEasy": "popgym/AutoencodeEasy-v0"}

#: The paper's PPO-GRU figure per task: MMER, mean over 3 trials of 15M steps (RLlib PPO), raw (POPGym's returns
#: lie in [-1, 1]), from its Appendix B Table 3 as quoted by bryjudy/fly-critic ``flycritic/popgym/results.py``
#: (commit a93e8b9f3f9ab397c8af4cdf352baa17da4a34b3, dict ``PUBLISHED``; sd 0.000, 0.000, 0.029). The stored copies
#: of the paper itself (arXiv 2303.01859) return only their opening sections, so these are not checked against it.
PAPER_GRU: dict[str, float | None] = {"RepeatPreviousEasy": 1.000, "StatelessCartPoleEasy": 1.000,
                                      "AutoencodeEasy": -0.283}
PAPER_NOTE = "not found (see PAPER_GRU in this script)"

#: The paper's PPO settings in ppolab's flags (see the module docstring for what is and is not reproduced);
#: a value of None: a switch without a value.
SETTINGS = {"--policy": "gru", "--rnn-size": "256", "--hidden-sizes": "128", "--activation": "relu",
            "--rnn-head-sizes": ["128", "128"],
            "--num-envs": "64", "--num-steps": "1024", "--seq-len": "1024", "--num-minibatches": "8",
            "--num-epochs": "30", "--learning-rate": "5e-5", "--no-anneal-lr": None, "--clip-eps": "0.3",
            "--no-anneal-clip": None, "--gamma": "0.99", "--gae-lambda": "1.0", "--vf-coef": "1.0",
            "--ent-coef": "0.0", "--max-grad-norm": "None", "--norm-adv": None, "--checkpoint-every": "0"}
#: --settings quick (see the module docstring)
QUICK = {"--policy": "gru", "--rnn-size": "128", "--hidden-sizes": "64", "--num-envs": "64", "--num-steps": "128",
         "--num-minibatches": "8", "--num-epochs": "4", "--learning-rate": "3e-4", "--gamma": "0.99",
         "--gae-lambda": "0.95", "--checkpoint-every": "0"}
QUICK_STEPS = 2_000_000
#: --smoke: a tiny batch, to check the script end to end (times and returns mean nothing)
SMOKE = {"--rnn-size": "16", "--hidden-sizes": "16", "--num-envs": "4", "--num-steps": "64", "--seq-len": "64",
         "--num-minibatches": "2", "--num-epochs": "1", "--rnn-head-sizes": ["16"]}
PAPER_STEPS = 15_000_000


def default_python() -> str:
    venv = "/tmp/popgymvenv/bin/python"
    return venv if os.path.exists(venv) else sys.executable


def task_flags(task: str, total: int, seed: int, eval_episodes: int, smoke: bool = False,
               settings: str = "paper") -> list[str]:
    chosen = {"paper": SETTINGS, "quick": QUICK}[settings]
    chosen = {**chosen, **SMOKE} if smoke else chosen
    values = lambda v: () if v is None else tuple(v) if isinstance(v, list) else (v,)
    flags = [part for k, v in chosen.items() for part in (k, *values(v))]
    return ["--env", f"popgym_envs:{TASKS[task]}", *flags, "--total-timesteps", str(total), "--seed", str(seed),
            "--eval-episodes", str(eval_episodes)]


def one_run(args, task: str, seed: int, run_dir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])))
    flags = task_flags(task, args.total_timesteps, seed, args.eval_episodes, args.smoke, args.settings)
    try:
        run = ppolab_train(flags, run_dir, python=args.python, env=env)
    except PpolabRunError as e:
        return {"task": task, "seed": seed, "error": str(e)}
    recent = [float(r["return_recent"]) for r in run["rows"] if r["return_recent"] not in ("", "nan")]
    s = run["summary"]
    return {"task": task, "seed": seed, "steps": s["total_timesteps"], "final_return": recent[-1] if recent else None,
            "max_return": max(recent) if recent else None, "eval_return_mean": s["eval_return_mean"],
            "sps": s["sps"], "wall_time_s": s["wall_time_s"], "run_dir": run_dir}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(runs: list[dict], tasks: list[str]) -> str:
    """The markdown table: per task, ppolab's medians over seeds beside the paper's figure."""
    lines = ["| task (easy) | ppolab GRU: final mean return | ppolab GRU: max over training | seeds | "
             "paper PPO-GRU MMER |", "|---|---|---|---|---|"]
    for task in tasks:
        ok = [r for r in runs if r["task"] == task and "error" not in r]
        failed = [r for r in runs if r["task"] == task and "error" in r]
        paper = PAPER_GRU[task]
        seeds = f"{len(ok)}" + (f" ({len(failed)} failed)" if failed else "")
        lines.append(f"| {task} | {_fmt(_median([r['final_return'] for r in ok]))} | "
                     f"{_fmt(_median([r['max_return'] for r in ok]))} | {seeds} | "
                     f"{PAPER_NOTE if paper is None else f'{paper:.3f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=default_python(), help="a Python with popgym and ppolab")
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    ap.add_argument("--settings", choices=("paper", "quick"), default="paper",
                    help="the paper's PPO settings (15M steps) or a CPU-sized setting (2M steps); see the docstring")
    ap.add_argument("--total-timesteps", type=int, default=None, help="default: the settings' own budget")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=100)
    ap.add_argument("--runs-dir", default="/tmp/popgym_runs", help="where the run directories go")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "popgym_table"), help="PATH for PATH.md/.jsonl")
    ap.add_argument("--dry-run", action="store_true", help="print the commands (and the paper column); run nothing")
    ap.add_argument("--smoke", action="store_true", help="tiny runs (512 steps, a 4 x 64 batch): checks the script")
    args = ap.parse_args()
    if args.total_timesteps is None:
        args.total_timesteps = PAPER_STEPS if args.settings == "paper" else QUICK_STEPS
    if args.smoke:
        args.total_timesteps, args.eval_episodes = 512, 2
        if args.out == ap.get_default("out"):
            args.out = "/tmp/popgym_table_smoke"
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        sys.exit(f"error: unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    jobs = [(task, args.seed + i, os.path.join(args.runs_dir, f"{task}-s{args.seed + i}"))
            for task in tasks for i in range(args.seeds)]
    if args.dry_run:
        for task, seed, run_dir in jobs:
            cmd = [args.python, "-m", "ppolab.cli", "train",
                   *task_flags(task, args.total_timesteps, seed, args.eval_episodes, args.smoke, args.settings),
                   "--run-dir", run_dir]
            print(f"PYTHONPATH={shlex.quote(HERE)} " + shlex.join(cmd))
        print()
        print(table([], tasks))
        return
    runs = []
    with open(args.out + ".jsonl", "a") as f:
        for task, seed, run_dir in jobs:
            result = one_run(args, task, seed, run_dir)
            runs.append(result)
            if "error" in result:
                print(f"{task} seed {seed} failed: {result['error']}", file=sys.stderr)
            print(json.dumps(result), flush=True)
            f.write(json.dumps(result) + "\n")
            f.flush()  # each finished run is on disk at once (runs take minutes to hours)
    text = table(runs, tasks)
    with open(args.out + ".md", "w") as f:
        f.write(f"{args.total_timesteps:,} steps per run, --settings {args.settings} (benchmarks/popgym_table.py); "
                f"the paper's column: 15M steps, its settings\n\n{text}\n")
    print(text)


if __name__ == "__main__":
    main()
