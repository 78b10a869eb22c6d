"""Figures 1 and 2 of the paper (section 3), computed by ppolab's own objectives on a real batch (``ppolab figures``).

* Figure 1: one term of L^CLIP (eq. 7), min(r A, clip(r, 1-eps, 1+eps) A), as a function of the probability ratio r,
  for A > 0 and A < 0 (``objectives.clip_term`` on a grid of ratios).
* Figure 2: the surrogates along the update direction. From theta_old (a run's parameters at some iteration) one PPO
  update by the run's own driver (``update.learn``, vmapped as in training) gives theta_new; on its rollout,
  theta(t) = theta_old + t (theta_new - theta_old) is evaluated for t in [0, t_max]: E_t[KL[pi_old, pi_theta(t)]]
  (the distributions' exact ``kl``), L^CPI (eq. 6, ``objectives.l_cpi``), E_t[clip(r_t, 1-eps, 1+eps) A_t] and
  L^CLIP (eq. 7, ``objectives.l_clip``). t = 1 is the parameters after the update.

The batch is the learner's: ``update.make_batch`` (advantages by GAE, eqs. 11-12; pi_old in the first epoch's
minibatch shapes, so r_t is exactly 1 at t = 0), advantages normalized per first-epoch minibatch only where the
run's config does (``norm_adv``; the ``paper-mujoco`` preset does not). Every theta(t) is evaluated by the same
compiled ``make_batch`` call, so t = 0 reproduces pi_old bit for bit (KL exactly 0).

Two updates are drawn: the run's first (iteration 0, from the initial parameters: the paper's Figure 2 is "the first
policy update on the Hopper-v1 problem") and the one after the run's newest checkpoint. Without a run directory a
short Hopper-v5 run with preset ``paper-mujoco`` is trained first, seeded, in a temporary directory.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shlex
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tyro

from ppolab import advantages as adv_lib
from ppolab import checkpoint as ckpt_lib
from ppolab import objectives, update
from ppolab.config import Config, ConfigError, agent_table
from ppolab.networks import ActorCritic
from ppolab.objectives import PolicyTerms
from ppolab.types import Batch, Rollout, TrainState
from ppolab.update import LearnerSpec

__all__ = ["FiguresArgs", "make_figures", "figure1_values", "update_line", "figure2_numbers", "figure2_table",
           "train_short_run"]


@dataclasses.dataclass
class FiguresArgs:
    """The paper's Figures 1 and 2 from ppolab's objectives and a real batch."""

    run_dir: tyro.conf.Positional[str | None] = None
    """Run directory of ppolab train (a Gymnasium env); without it a short Hopper-v5 paper-mujoco run is trained."""
    out: str = "docs/figures"
    """Where figure1.png, figure2.png and figure2.json are written."""
    steps: int = 40_960
    """Environment steps of the short run trained without RUN_DIR (2048 per iteration)."""
    seed: int = 0
    """Seed of the short run trained without RUN_DIR."""
    env: str = "Hopper-v5"
    """Environment of the short run trained without RUN_DIR."""
    agent: int = 0
    """Which agent of the run's population to draw."""
    t_max: float = 2.0
    """Largest interpolation factor t (t = 1: the parameters after the update)."""
    points: int = 81
    """Points of the t grid in [0, t_max]."""


# ---- Figure 1 -----------------------------------------------------------------------------------------------------
def figure1_values(clip_eps: float = 0.2, r_max: float = 2.0, num: int = 401) -> dict:
    """L^CLIP's per-sample term (eq. 7) against r for A = +1 and A = -1, by ``objectives.clip_term``.

    Returns {"clip_eps", "r": [num] (the ratios clip_term computed, exp(log r - 0)), "pos": [num], "neg": [num],
    "cpi_pos", "cpi_neg": [num] (r A, eq. 6's term, for comparison)}."""
    with np.errstate(divide="ignore"):
        log_r = jnp.asarray(np.log(np.linspace(0.0, r_max, num)), jnp.float32)
    eps = jnp.asarray(clip_eps, jnp.float32)
    out: dict = {"clip_eps": clip_eps}
    for name, a in (("pos", 1.0), ("neg", -1.0)):
        terms = PolicyTerms(log_prob=log_r, old_log_prob=jnp.zeros_like(log_r),
                            advantages=jnp.full_like(log_r, a), kl=None)
        out["r"] = np.asarray(terms.ratio).tolist()
        out[name] = np.asarray(objectives.clip_term(terms, eps, jnp.float32(0.0))).tolist()
        out["cpi_" + name] = np.asarray(objectives.cpi_term(terms, eps, jnp.float32(0.0))).tolist()
    return out


def plot_figure1(values: dict, path: Path) -> Path:
    """Two panels as the paper's Figure 1: L^CLIP_t against r, clip points and the start r = 1 marked."""
    plt = _plt()
    eps, r = values["clip_eps"], np.asarray(values["r"])
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.2))
    for ax, name, sign in ((axes[0], "pos", "A > 0"), (axes[1], "neg", "A < 0")):
        ax.plot(r, values["cpi_" + name], color="gray", ls="--", lw=0.8, label="r A (L^CPI term)")
        ax.plot(r, values[name], color="C0", lw=2.0, label="L^CLIP term")
        for x, lab in ((1 - eps, "1-eps"), (1 + eps, "1+eps")):
            ax.axvline(x, color="black", ls=":", lw=0.8)
            ax.text(x, 0.99, lab, ha="center", va="top", fontsize=8, transform=ax.get_xaxis_transform())
        ax.plot([1.0], [1.0 if name == "pos" else -1.0], "o", color="red", ms=7, label="start, r = 1")
        ax.set_title(f"{sign} (A = {'+1' if name == 'pos' else '-1'}), eps = {eps:g}", fontsize=9)
        ax.set_xlabel("r = pi / pi_old", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if name == "pos" else "center right")
    axes[0].set_ylabel("L^CLIP_t = min(r A, clip(r, 1-eps, 1+eps) A)", fontsize=8)
    fig.suptitle("Figure 1 (ppolab objectives.clip_term)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- Figure 2: the surrogates along the update direction ---------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 1))
def _policy_batch(spec: LearnerSpec, net: ActorCritic, state: TrainState, delta, t: jax.Array, rollout: Rollout,
                  perm0: jax.Array) -> Batch:
    """``update.make_batch`` with theta(t) = theta_old + t delta: its ``old_log_prob`` / ``old_dist`` [N] are then
    log pi_theta(t)(a_t|s_t) and pi_theta(t)(.|s_t), evaluated in the first epoch's minibatch shapes."""
    params = jax.tree_util.tree_map(lambda p, d: p + t * d, state.params, delta)
    batch, _ = update.make_batch(spec, net, state.replace(params=params), rollout, perm0)
    return batch


@jax.jit
def _surrogates(old: Batch, new: Batch, advantages: jax.Array, clip_eps: jax.Array) -> dict:
    """Figure 2's quantities at one theta (scalars): E[KL[pi_old, pi_theta]], L^CPI, E[clip(r) A], L^CLIP, the
    fraction of |r - 1| > eps, min and max of r."""
    terms = PolicyTerms(log_prob=new.old_log_prob, old_log_prob=old.old_log_prob, advantages=advantages,
                        kl=old.old_dist.kl(new.old_dist))
    r, beta = terms.ratio, jnp.float32(0.0)
    return {"kl": jnp.mean(terms.kl), "l_cpi": objectives.l_cpi(terms, clip_eps, beta),
            "clipped": jnp.mean(jnp.clip(r, 1.0 - clip_eps, 1.0 + clip_eps) * advantages),
            "l_clip": objectives.l_clip(terms, clip_eps, beta),
            "clip_fraction": jnp.mean((jnp.abs(r - 1.0) > clip_eps).astype(jnp.float32)),
            "ratio_min": jnp.min(r), "ratio_max": jnp.max(r)}


def learner_advantages(spec: LearnerSpec, advantages: jax.Array, perm0: jax.Array) -> jax.Array:
    """A_t [N] as ``update.loss_fn`` uses them in the first epoch: normalized per minibatch of ``perm0`` where
    ``spec.norm_adv``, raw otherwise (or as ``make_batch`` standardized them over the batch: ``norm_adv_batch``)."""
    if not spec.norm_adv or spec.norm_adv_batch:
        return advantages
    normed = jax.vmap(adv_lib.normalize)(advantages[perm0].reshape(spec.num_minibatches, -1)).reshape(-1)
    return jnp.zeros_like(advantages).at[perm0].set(normed)


def update_line(spec: LearnerSpec, net: ActorCritic, state: TrainState, new_params, rollout: Rollout,
                ts: np.ndarray) -> dict:
    """Figure 2's quantities for one agent's update theta_old = ``state.params`` -> theta_new = ``new_params`` (the
    learner's result on ``rollout`` [T, B]) at theta(t) = theta_old + t (theta_new - theta_old), for each t of
    ``ts`` [P], on the batch ``update.make_batch`` builds from ``rollout`` with theta_old.

    Returns {"t": [P], "kl", "l_cpi", "clipped", "l_clip", "clip_fraction", "ratio_min", "ratio_max": [P] each,
    "clip_eps", "mean_advantage": E[A] (every surrogate's value at t = 0)}."""
    T, B = rollout.rewards.shape
    _, perm_key = jax.random.split(state.key)  # the first-epoch sample order, drawn as ``update.learn`` draws it
    perm0 = update.shuffles(perm_key, spec.num_epochs, T * B)[0]
    delta = jax.tree_util.tree_map(lambda n, o: n - o, new_params, state.params)
    old = _policy_batch(spec, net, state, delta, jnp.float32(0.0), rollout, perm0)
    adv = learner_advantages(spec, old.advantages, perm0)
    hp = state.hparams
    clip_eps = hp.clip_eps * update.alpha(spec, state.iteration) if spec.anneal_clip else hp.clip_eps
    rows = [jax.device_get(_surrogates(old, _policy_batch(spec, net, state, delta, jnp.float32(t), rollout, perm0),
                                       adv, clip_eps)) for t in ts]
    out = {"t": [float(t) for t in ts]}
    for k in rows[0]:
        out[k] = [_f(row[k]) for row in rows]
    out.update(clip_eps=_f(clip_eps), mean_advantage=_f(jnp.mean(adv)))
    return out


def _f(x) -> float:
    """A float32 scalar as the shortest decimal that reads back to the same float32."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-")) if np.isfinite(x) else float(x)


def _pick(tree, k: int):
    """Agent ``k`` of a population pytree [K, ...]."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x[k]), tree)


def _update(driver, cfg: Config, rows: list[dict], pop: TrainState, agent: int, ts: np.ndarray) -> dict:
    """The population's next update, as training would run it: one rollout from fresh episodes seeded as a resume at
    this iteration (``assembly.env_seeds``), the driver's own (vmapped) learner; ``update_line`` for ``agent``."""
    from ppolab.assembly import env_seeds

    it = int(np.asarray(pop.iteration)[agent])
    driver.start(env_seeds(rows, cfg.num_envs, it))
    rollout, episodes = driver.collect(pop)
    rollout = jax.tree_util.tree_map(np.array, rollout)  # a copy: the driver reuses its buffers
    new_pop, metrics = driver.learn(pop, rollout)
    line = update_line(driver.spec, driver.net, _pick(pop, agent), _pick(new_pop.params, agent),
                       _pick(rollout, agent), ts)
    returns = [float(e.ret) for e in episodes if e.agent == agent]
    return {"iteration": it, "env_steps": it * cfg.batch_size, "episodes_in_batch": len(returns),
            "episode_return_mean": float(np.mean(returns)) if returns else None,
            "kl_learner": _f(np.asarray(metrics["kl"])[agent]), **line}


def _restore(run_dir: Path, template: TrainState, driver, net: ActorCritic, agents: int) -> TrainState:
    """The population's train state from the newest good checkpoint of ``run_dir``."""
    from ppolab.assembly import net_signature

    tree, _, _ = ckpt_lib.restore_latest(run_dir / "checkpoints",
                                         {"train_state": template, "driver_state": driver.driver_state()},
                                         {"network": net_signature(net), "agents": agents},
                                         warn=lambda m: print(m, file=sys.stderr))
    return jax.tree_util.tree_map(jnp.asarray, tree["train_state"])


def figure2_numbers(run_dir: str | Path, agent: int = 0, ts: np.ndarray | None = None) -> dict:
    """Figure 2's numbers for agent ``agent`` of ``run_dir``: its first update (iteration 0, the initial parameters
    and the run's own first rollout) and the update after its newest checkpoint. See ``update_line``."""
    from ppolab.assembly import init_population, make_driver
    from ppolab.rundir import load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    rows = agent_table(cfg)
    if not 0 <= agent < len(rows):
        raise ConfigError(f"--agent {agent}: the run has agents 0..{len(rows) - 1}")
    ts = np.linspace(0.0, 2.0, 81) if ts is None else np.asarray(ts)
    driver, net, spec = make_driver(cfg, len(rows))
    try:
        if not hasattr(driver, "collect"):
            raise ConfigError(f"ppolab figures needs a run of a Gymnasium environment; {cfg.env!r} is not one")
        init = init_population(cfg, net, spec, rows)
        latest = _restore(run_dir, init, driver, net, len(rows))
        updates = [{"label": label, **_update(driver, cfg, rows, pop, agent, ts)}
                   for label, pop in (("first update", init), ("after training", latest))]
    finally:
        driver.close()
    return {"run_dir": str(run_dir), "env": cfg.env, "preset": cfg.preset, "objective": cfg.objective,
            "seed": int(rows[agent]["seed"]), "agent": agent, "batch_size": cfg.batch_size,
            "num_epochs": cfg.num_epochs, "num_minibatches": cfg.num_minibatches, "norm_adv": cfg.norm_adv,
            "norm_adv_batch": cfg.norm_adv_batch, "learning_rate": float(rows[agent]["learning_rate"]),
            "updates": updates}


def plot_figure2(numbers: dict, path: Path) -> Path:
    """A panel per update: L^CPI, E[clip(r) A] and L^CLIP minus their common value E[A] at t = 0 (left axis) and
    E[KL] (right axis) against the interpolation factor t."""
    plt = _plt()
    ups = numbers["updates"]
    fig, axes = plt.subplots(1, len(ups), figsize=(5.4 * len(ups), 4.0), squeeze=False)
    curves = (("l_cpi", "L^CPI = E[r A]", "C1"), ("clipped", "E[clip(r, 1-eps, 1+eps) A]", "C2"),
              ("l_clip", "L^CLIP = E[min(r A, clip(r, 1-eps, 1+eps) A)]", "C3"))
    for ax, u in zip(axes[0], ups, strict=True):
        t, base = np.asarray(u["t"]), u["mean_advantage"]
        for key, label, color in curves:
            ax.plot(t, np.asarray(u[key]) - base, lw=1.6, color=color, label=label + " - E[A]")
        k = int(np.argmax(u["l_clip"]))
        ax.plot([t[k]], [u["l_clip"][k] - base], "o", color="C3", ms=5, label=f"max of L^CLIP (t = {t[k]:.3g})")
        ax.axvline(1.0, color="gray", ls=":", lw=0.8)
        ax2 = ax.twinx()
        ax2.plot(t, u["kl"], lw=1.6, color="C0", ls="--", label="E[KL[pi_old, pi]] (right axis)")
        ax2.set_ylabel("E[KL[pi_old, pi]]", fontsize=8, color="C0")
        ax2.tick_params(labelsize=7, colors="C0")
        kl1 = float(np.interp(1.0, t, u["kl"]))
        ax.set_title(f"{u['label']}: iteration {u['iteration']} ({u['env_steps']:,} steps); E[A] = {base:.3g}\n"
                     f"KL at t = 1: {kl1:.4f}; L^CLIP maximal at t = {t[k]:.3g}", fontsize=8)
        ax.set_xlabel("linear interpolation factor t: theta_old + t (theta_new - theta_old)", fontsize=8)
        ax.set_ylabel("surrogate - E[A] (its value at t = 0)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=6.5, loc="upper left")
    adv = ("raw (not normalized, as the learner uses them)" if not numbers["norm_adv"] else
           "normalized over the batch" if numbers.get("norm_adv_batch") else "normalized per minibatch")
    fig.suptitle(f"Figure 2: {numbers['env']}, preset {numbers['preset']}, objective {numbers['objective']}, "
                 f"seed {numbers['seed']}; one batch of {numbers['batch_size']} samples; advantages {adv}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure2_table(numbers: dict) -> str:
    """The numbers docs/results.md quotes from figure2.json, as a markdown table (a row per update)."""
    lines = ["| update | iteration (env steps) | episodes in the batch: mean return | E[A] | E[KL] at t = 1 "
             "| r outside [1-eps, 1+eps] at t = 1 | L^CLIP - E[A] at t = 1 | L^CLIP maximal at t "
             f"| L^CPI - E[A] at t = 1, t = {numbers['updates'][0]['t'][-1]:g} |", "|---" * 9 + "|"]
    for u in numbers["updates"]:
        t, base = np.asarray(u["t"]), u["mean_advantage"]
        at1 = {k: float(np.interp(1.0, t, u[k])) for k in ("kl", "clip_fraction", "l_clip", "l_cpi")}
        k = int(np.argmax(u["l_clip"]))
        ret = "—" if u["episode_return_mean"] is None else f"{u['episodes_in_batch']}: {u['episode_return_mean']:.0f}"
        lines.append(f"| {u['label']} | {u['iteration']} ({u['env_steps']:,}) | {ret} | {base:.3f} "
                     f"| {at1['kl']:.4f} | {100 * at1['clip_fraction']:.1f} % | {at1['l_clip'] - base:.4f} "
                     f"| {t[k]:.3g} ({u['l_clip'][k] - base:.4f}) | {at1['l_cpi'] - base:.4f}, "
                     f"{u['l_cpi'][-1] - base:.4f} |")
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- the command --------------------------------------------------------------------------------------------------
def train_short_run(run_dir: Path, steps: int, seed: int, env: str = "Hopper-v5") -> Path:
    """Train ``steps`` environment steps of ``env`` with preset ``paper-mujoco`` (objective clip) into ``run_dir``."""
    from ppolab.training import train

    explicit = dict(env=env, objective="clip", total_timesteps=steps, seed=seed, run_dir=str(run_dir),
                    eval_episodes=0, progress=False, tensorboard=False)
    train(Config(preset="paper-mujoco", **explicit), explicit=explicit)
    return run_dir


def command_line(args: FiguresArgs) -> str:
    """The ``ppolab figures`` command that regenerates these figures."""
    parts = ["ppolab", "figures"] + ([args.run_dir] if args.run_dir else [])
    defaults = FiguresArgs()
    for f in dataclasses.fields(FiguresArgs):
        value = getattr(args, f.name)
        if f.name != "run_dir" and value != getattr(defaults, f.name):
            parts += ["--" + f.name.replace("_", "-"), str(value)]
    return shlex.join(parts)


def make_figures(args: FiguresArgs) -> dict:
    """Write figure1.png, figure2.png and figure2.json to ``args.out``; return Figure 2's numbers (figure2.json)."""
    if args.points < 2 or not args.t_max > 0:
        raise ConfigError(f"--points must be >= 2 and --t-max > 0 (got {args.points}, {args.t_max})")
    if args.run_dir is None and args.steps < 2048:
        raise ConfigError(f"--steps must be at least one paper-mujoco batch of 2048 steps (got {args.steps})")
    if args.run_dir is not None and not Path(args.run_dir).is_dir():
        raise ConfigError(f"run directory {args.run_dir!r} does not exist")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ts = np.linspace(0.0, args.t_max, args.points)
    if args.run_dir is not None:
        numbers = figure2_numbers(args.run_dir, args.agent, ts)
    else:
        with tempfile.TemporaryDirectory(prefix="ppolab-figures-") as tmp:
            run_dir = train_short_run(Path(tmp) / "run", args.steps, args.seed, args.env)
            numbers = figure2_numbers(run_dir, args.agent, ts)
        numbers["run_dir"] = None
    numbers["command"] = command_line(args)
    eps = numbers["updates"][0]["clip_eps"]
    plot_figure1(figure1_values(eps), out / "figure1.png")
    plot_figure2(numbers, out / "figure2.png")
    (out / "figure2.json").write_text(json.dumps(numbers, indent=1) + "\n")
    return numbers
