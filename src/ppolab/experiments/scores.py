"""The score arithmetic of the paper's Table 1 (section 6.1), as pure functions.

* run score: "the average total reward of the last 100 episodes" of a training run;
* per environment, scores are shifted and scaled so that a random policy scores 0 and the best result scores 1:
  ``normalized = (raw - random) / (best - random)``;
* a setting's table entry averages the normalized scores of all its runs (7 environments x 3 seeds = 21).

"The best result" is read here as the best *setting* on that environment: the highest seed-averaged raw score.
(``best_scores(..., per="run")`` uses the best single run instead.)
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

#: Table 1 of the paper: average normalized score of each setting (21 runs each), keyed by our setting names.
PAPER_TABLE1: dict[str, float] = {
    "cpi": -0.39,
    "clip-0.1": 0.76, "clip-0.2": 0.82, "clip-0.3": 0.70,
    "kl-adaptive-0.003": 0.68, "kl-adaptive-0.01": 0.74, "kl-adaptive-0.03": 0.71,
    "kl-fixed-0.3": 0.62, "kl-fixed-1": 0.71, "kl-fixed-3": 0.72, "kl-fixed-10": 0.69,
}

#: Setting names -> the paper's row labels.
PAPER_LABELS: dict[str, str] = {
    "cpi": "No clipping or penalty",
    "clip-0.1": "Clipping, eps = 0.1", "clip-0.2": "Clipping, eps = 0.2", "clip-0.3": "Clipping, eps = 0.3",
    "kl-adaptive-0.003": "Adaptive KL d_targ = 0.003", "kl-adaptive-0.01": "Adaptive KL d_targ = 0.01",
    "kl-adaptive-0.03": "Adaptive KL d_targ = 0.03",
    "kl-fixed-0.3": "Fixed KL, beta = 0.3", "kl-fixed-1": "Fixed KL, beta = 1", "kl-fixed-3": "Fixed KL, beta = 3",
    "kl-fixed-10": "Fixed KL, beta = 10",
}


def run_score(episode_returns: Sequence[float], last: int = 100) -> float:
    """Mean total reward of the last ``last`` episodes (fewer if the run finished fewer); NaN if none."""
    tail = list(episode_returns)[-last:]
    return math.fsum(tail) / len(tail) if tail else math.nan


def normalize(raw: float, random: float, best: float) -> float:
    """Shift and scale so that ``random`` maps to 0 and ``best`` to 1: (raw - random) / (best - random).

    Raises ``ValueError`` when best == random (the scale is undefined)."""
    if best == random:
        raise ValueError(f"cannot normalize: best score {best} equals the random policy's score")
    return (raw - random) / (best - random)


def best_scores(raw: Mapping[tuple[str, str, int], float], per: str = "setting") -> dict[str, float]:
    """The score that maps to 1 on each environment.

    raw: {(setting, env, seed): raw run score}. per="setting": max over settings of the seed-mean;
    per="run": max over single runs. NaN scores are ignored."""
    if per not in ("setting", "run"):
        raise ValueError(f"per must be 'setting' or 'run' (got {per!r})")
    by_env: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (setting, env, _seed), v in raw.items():
        if not math.isnan(v):
            by_env[env][setting].append(v)
    out = {}
    for env, settings in by_env.items():
        if per == "setting":
            out[env] = max(math.fsum(v) / len(v) for v in settings.values())
        else:
            out[env] = max(x for v in settings.values() for x in v)
    return out


def normalized_scores(raw: Mapping[tuple[str, str, int], float], random: Mapping[str, float],
                      per: str = "setting") -> dict[tuple[str, str, int], float]:
    """Every run's normalized score: {(setting, env, seed): (raw - random[env]) / (best[env] - random[env])}."""
    best = best_scores(raw, per)
    return {key: (normalize(v, random[key[1]], best[key[1]]) if not math.isnan(v) else math.nan)
            for key, v in raw.items()}


def table(normalized: Mapping[tuple[str, str, int], float], settings: Iterable[str] | None = None) -> dict[str, dict]:
    """Table 1 rows: {setting: {"score": mean normalized score over envs and seeds, "runs": n, "per_env": {...}}}.

    Runs with a NaN score (no finished episode) are left out of the mean and counted in "missing"."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (setting, env, _seed), v in normalized.items():
        groups[setting][env].append(v)
    order = list(settings) if settings is not None else sorted(groups)
    rows = {}
    for s in order:
        per_env = groups.get(s, {})
        vals = [x for v in per_env.values() for x in v if not math.isnan(x)]
        missing = sum(1 for v in per_env.values() for x in v if math.isnan(x))
        rows[s] = {"score": _nanmean(vals), "runs": len(vals), "missing": missing,
                   "per_env": {e: _nanmean(v) for e, v in sorted(per_env.items())}}
    return rows


def _nanmean(values: Iterable[float]) -> float:
    vals = [x for x in values if not math.isnan(x)]
    return math.fsum(vals) / len(vals) if vals else math.nan


# ---- the random policy (normalized score 0) ----------------------------------------------------------------------
def random_policy_score(env_id: str, episodes: int, seed: int) -> dict:
    """Mean total reward of ``episodes`` episodes of uniform random actions (episode i reset with seed + i)."""
    import gymnasium as gym

    from ppolab.envs import atari

    if atari.is_atari(env_id):  # the agents' game dynamics, scored by the true reward
        env = atari.make_atari(env_id, clip_reward=False, episodic_life=False)
    else:
        env = gym.make(env_id)
    try:
        space = env.action_space
        space.seed(seed)
        rng = np.random.default_rng(seed)
        box = isinstance(space, gym.spaces.Box)
        returns = []
        for i in range(episodes):
            env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                a = rng.uniform(space.low, space.high).astype(space.dtype) if box else space.sample()
                _, r, term, trunc, _ = env.step(a)
                total += float(r)
                done = term or trunc
            returns.append(total)
    finally:
        env.close()
    return {"score": run_score(returns, last=episodes), "episodes": episodes, "seed": seed,
            "policy": "uniform random actions", "returns": returns}


def random_scores(envs: list[str], episodes: int, seed: int, out: Path, say) -> dict:
    """random.json in ``out``: computed once per (env, episodes, seed) and reused on reruns."""
    path = out / "random.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    for env in envs:
        c = cache.get(env)
        if c is None or c.get("episodes") != episodes or c.get("seed") != seed:
            say(f"random policy on {env}: {episodes} episodes, seed {seed}")
            cache[env] = random_policy_score(env, episodes, seed)
            path.write_text(json.dumps(cache, indent=1))
    return {env: cache[env] for env in envs}
