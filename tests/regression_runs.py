"""The fixed runs of the refactor's regression test (issue 11): the same seed and flags must give the same
metrics.csv, every column but ``time_s``, as the commit that generated ``tests/data/regression/``.

    python tests/regression_runs.py OUT_DIR             # writes OUT_DIR/NAME.csv for every run (regenerates the data)
    python tests/regression_runs.py OUT_DIR NAME...     # only these runs (tests/test_regression.py runs them in
                                                        # parallel processes: each run is mostly compilation)
"""

from __future__ import annotations

import csv
import io
import sys
import tempfile
from pathlib import Path

# name -> Config fields. Small on purpose (a few iterations each), and --threads pinned: a population's grouping
# is then the same on every machine.
RUNS = {
    "cartpole_host": dict(env="CartPole-v1", total_timesteps=2048, eval_episodes=2),
    "gymnax_2seeds": dict(env="gymnax:CartPole-v1", num_seeds=2, total_timesteps=4096, threads=2, eval_episodes=2),
    "pendulum_kl_adaptive": dict(env="Pendulum-v1", objective="kl-adaptive", kl_target=0.003, num_envs=4,
                                 num_steps=64, total_timesteps=2048, eval_episodes=1),
    "clip_sweep": dict(env="CartPole-v1", clip_eps=(0.1, 0.3), total_timesteps=2048, threads=1, eval_episodes=1),
}


def metrics_without_time(run_dir: Path) -> str:
    """metrics.csv of ``run_dir`` with the ``time_s`` column removed, as text."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    drop = rows[0].index("time_s")
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    for r in rows:
        w.writerow(r[:drop] + r[drop + 1:])
    return out.getvalue()


def run(name: str, root: Path) -> str:
    import ppolab

    cfg = ppolab.Config(**RUNS[name], run_dir=str(root / name), progress=False, tensorboard=False)
    ppolab.train(cfg)
    return metrics_without_time(root / name)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = sys.argv[2:] or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        sys.exit(f"unknown run(s) {unknown}; known: {list(RUNS)}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            (out / f"{name}.csv").write_text(run(name, Path(tmp)))
            print(name, "written")
