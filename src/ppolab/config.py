"""Run configuration: one frozen dataclass, presets, validation and the per-agent hyperparameter table.

Static fields (shapes, loop counts, the objective kind) fix the compiled program. The *sweepable* coefficients
(``SWEEPABLE``) are traced: each may be a float or a tuple of floats, and every combination of the given values times
``num_seeds`` becomes one agent of a ``jax.vmap``-ed population trained in a single program.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Literal

OBJECTIVES = ("pg", "cpi", "clip", "kl-fixed", "kl-adaptive")
Objective = Literal["pg", "cpi", "clip", "kl-fixed", "kl-adaptive"]
FloatOrSweep = float | tuple[float, ...]

#: Coefficients that are array leaves of the train state (``HParams``), so they can differ between vmapped agents.
SWEEPABLE = ("learning_rate", "clip_eps", "kl_beta", "kl_target", "ent_coef", "vf_coef", "gamma", "gae_lambda")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Configuration of one ppolab training run (or one vmapped population of runs)."""

    env: str = "CartPole-v1"
    """Environment: a Gymnasium id (e.g. Hopper-v5), or gymnax:NAME, brax:NAME, envpool:NAME."""
    preset: str | None = None
    """Named hyperparameter set applied first (cartpole, gymnax-cartpole, paper-mujoco, ppo2-mujoco, paper-atari,
    ppo2-atari, brax); flags given on the command line override it."""
    objective: Objective = "clip"
    """Surrogate objective: pg (L^PG, eq. 2), cpi (L^CPI, eq. 6), clip (L^CLIP, eq. 7), kl-fixed / kl-adaptive
    (L^KLPEN, eq. 8)."""
    total_timesteps: int = 100_000
    """Environment steps per agent."""
    num_envs: int = 8
    """Parallel actors N per agent."""
    num_steps: int = 32
    """Horizon T: steps per actor per iteration."""
    num_epochs: int = 20
    """K: passes over each batch."""
    num_minibatches: int = 4
    """Minibatches per epoch; must divide num_envs * num_steps."""
    learning_rate: FloatOrSweep = 1e-3
    """Adam step size (a comma list sweeps it)."""
    anneal_lr: bool = True
    """Multiply the step size by alpha, annealed linearly from 1 to 0 over training."""
    clip_eps: FloatOrSweep = 0.2
    """Clip range eps of L^CLIP (a comma list sweeps it)."""
    anneal_clip: bool = True
    """Multiply eps by alpha as well (paper's Atari setting)."""
    kl_beta: FloatOrSweep = 1.0
    """Penalty coefficient beta of L^KLPEN (initial value for kl-adaptive)."""
    kl_target: FloatOrSweep = 0.01
    """d_targ of the adaptive KL rule."""
    vf_coef: FloatOrSweep = 0.5
    """c1 of eq. 9, multiplying (V - V_targ)^2."""
    ent_coef: FloatOrSweep = 0.0
    """c2 of eq. 9, the entropy bonus."""
    gamma: FloatOrSweep = 0.98
    """Discount factor, in (0, 1]."""
    gae_lambda: FloatOrSweep = 0.8
    """GAE lambda, in [0, 1]."""
    norm_adv: bool = True
    """Normalize advantages per minibatch."""
    vf_clip: float | None = None
    """Clip the value update to +-vf_clip around the old value (ppo2); None for the plain squared error."""
    max_grad_norm: float | None = 0.5
    """Global gradient-norm clip; None disables it."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    target_kl: float | None = None
    """Stop the epochs of an update early once a minibatch's approx KL exceeds 1.5 * target_kl."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the MLP (policy and value)."""
    activation: Literal["tanh", "relu"] = "tanh"
    """Hidden activation."""
    shared_torso: bool = False
    """Share the hidden layers between policy and value (the paper's MuJoCo setting uses separate networks)."""
    ortho_init: bool = True
    """Orthogonal init (gain sqrt 2 hidden, 0.01 policy head, 1 value head)."""
    log_std_init: float = 0.0
    """Initial state-independent log std of Gaussian policies."""
    normalize_obs: bool = False
    """Running mean/std normalization of observations (clip 10), kept in the train state."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return (clip 10), kept in the train state."""
    seed: int = 0
    """Base random seed; agent i uses seed + i."""
    num_seeds: int = 1
    """Independent agents per hyperparameter combination, trained at once with jax.vmap."""
    vector_mode: Literal["sync", "gym-sync", "async", "vector"] = "sync"
    """Gymnasium vector env: sync (ppolab's lean in-process loop over the envs), gym-sync (gymnasium's SyncVectorEnv),
    async (gymnasium's AsyncVectorEnv, one process per env), vector (the env's own vectorized implementation,
    Gymnasium's vector entry point, all envs in one numpy step; available for CartPole-v0/v1)."""
    ray_workers: int = 0
    """Gymnasium envs only: step the environments in this many Ray actors (the distributed mode, pip install
    'ppolab[ray]'); actions are still computed here in one batched pass, so results do not depend on it. 0 = off."""
    ray_address: str = ""
    """Ray cluster to join with --ray-workers (e.g. 'auto' or 'HOST:6379'); empty: start a local Ray for the run."""
    ray_worker_cpus: float = 1.0
    """CPUs Ray reserves for each environment worker (0 lets workers share cores, e.g. for envs waiting on I/O)."""
    threads: int = 0
    """CPU threads that update the agents of a population in parallel, each a group of agents (0 = one per CPU core,
    at most one per agent). Results do not depend on it."""
    act_backend: Literal["auto", "numpy", "jax"] = "auto"
    """How Gymnasium drivers compute actions: numpy forward pass of the MLP (fastest on CPU) or a jitted call."""
    run_dir: str | None = None
    """Output directory (default runs/ENV-OBJECTIVE-sSEED-TIME)."""
    overwrite: bool = False
    """Allow writing into an existing run directory (its contents are replaced)."""
    eval_episodes: int = 10
    """Evaluation episodes at the end of training (0 to skip)."""
    eval_deterministic: bool = True
    """Evaluate with the distribution's mode instead of sampling."""
    checkpoint_every: int = 50
    """Write a checkpoint every this many iterations (and at the end); 0 for the end only."""
    checkpoint_every_s: float = 0.0
    """Also write a checkpoint once this many seconds have passed since the last one; 0 disables."""
    keep_checkpoints: int = 3
    """How many checkpoints to keep."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """On a non-finite loss, gradient, parameter, observation or reward: stop the run, or skip the bad update."""
    iterations_per_call: int = 0
    """JAX-native envs: iterations fused in one jitted call (0 = automatic)."""
    brax_backend: Literal["generalized", "positional", "spring", "mjx"] = "generalized"
    """Physics pipeline of brax:NAME environments."""
    compile_cache: str = "~/.cache/ppolab/jax"
    """Directory of JAX's persistent compilation cache ('' disables it; the PPOLAB_CACHE_DIR variable overrides)."""

    # ---- derived quantities -------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_iterations(self) -> int:
        return max(1, self.total_timesteps // self.batch_size)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)


# ---- presets ----------------------------------------------------------------------------------------------------
PRESETS: dict[str, dict] = {
    # The default: CartPole-v1 solved (return 500) within 100k steps. RL-Zoo-like settings.
    "cartpole": dict(env="CartPole-v1"),
    # The same settings on gymnax's CartPole with the fully jitted driver (solved within 100k steps).
    "gymnax-cartpole": dict(env="gymnax:CartPole-v1"),
    # The paper's MuJoCo setting, Table 3, and nothing else: 1 actor, T=2048, Adam 3e-4 constant, 10 epochs,
    # minibatch 64, gamma 0.99, lambda 0.95, eps 0.2, separate policy/value MLPs 64-64 tanh, no entropy bonus,
    # no gradient clipping, no value clipping, no normalization, no learning-rate or clip annealing.
    "paper-mujoco": dict(
        env="Hopper-v5", total_timesteps=1_000_000, num_envs=1, num_steps=2048, num_epochs=10, num_minibatches=32,
        learning_rate=3e-4, anneal_lr=False, clip_eps=0.2, anneal_clip=False, gamma=0.99, gae_lambda=0.95,
        vf_coef=1.0, ent_coef=0.0, norm_adv=False, vf_clip=None, max_grad_norm=None, adam_eps=1e-8,
        shared_torso=False, normalize_obs=False, normalize_reward=False, kl_beta=1.0,
    ),
    # openai/baselines ppo2 MuJoCo defaults: adds observation/reward normalization, value clipping, gradient
    # clipping 0.5, Adam eps 1e-5, linear lr decay, per-minibatch advantage normalization.
    # ppo2's loss is 0.5 * vf_coef * (V - R)^2 with vf_coef 0.5, i.e. c1 = 0.25 in eq. 9's form.
    "ppo2-mujoco": dict(
        env="Hopper-v5", total_timesteps=1_000_000, num_envs=1, num_steps=2048, num_epochs=10, num_minibatches=32,
        learning_rate=3e-4, anneal_lr=True, clip_eps=0.2, anneal_clip=False, gamma=0.99, gae_lambda=0.95,
        vf_coef=0.25, ent_coef=0.0, norm_adv=True, vf_clip=0.2, max_grad_norm=0.5, adam_eps=1e-5,
        shared_torso=False, normalize_obs=True, normalize_reward=True,
    ),
    # Brax's own PPO settings for Ant (google/brax notebooks/training.ipynb, PPO cell; positional pipeline):
    # 4096 envs, 16 unrolls of 5 steps per env between updates (T = 80 here, GAE over the whole horizon), 4 epochs
    # x 32 minibatches of 10,240 samples, Adam 3e-4 constant, gamma 0.97, lambda 0.95, eps 0.3, entropy 1e-2,
    # observation normalization, 50M steps. Brax multiplies rewards by 10 and uses tanh-squashed Gaussians with
    # 32x4 policy / 256x5 value swish MLPs; ppolab scales rewards by the running return std and keeps its own
    # Gaussian policy with 256-256 tanh MLPs. Sized for one GPU: 327,680 env steps per iteration.
    "brax": dict(
        env="brax:ant", brax_backend="positional", total_timesteps=50_000_000, num_envs=4096, num_steps=80,
        num_epochs=4, num_minibatches=32, learning_rate=3e-4, anneal_lr=False, clip_eps=0.3, anneal_clip=False,
        gamma=0.97, gae_lambda=0.95, vf_coef=0.5, ent_coef=1e-2, norm_adv=True, vf_clip=None, max_grad_norm=None,
        hidden_sizes=(256, 256), normalize_obs=True, normalize_reward=True, checkpoint_every=10,
    ),
}


def register_preset(name: str, values: dict) -> None:
    """Add a preset (used by optional modules, e.g. the Atari presets)."""
    PRESETS[name] = dict(values)


def apply_preset(cfg: Config, explicit: dict | None = None) -> Config:
    """Apply ``cfg.preset``, then re-apply ``explicit`` (the values the user set) on top."""
    if cfg.preset is None:
        return cfg
    _ensure_optional_presets()
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    base = dataclasses.replace(Config(), **PRESETS[cfg.preset])
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config)}
    defaults = Config()
    if explicit is None:  # Python API: every field that differs from the default counts as explicit
        explicit = {k: v for k, v in values.items() if v != getattr(defaults, k)}
    return dataclasses.replace(base, **{**explicit, "preset": cfg.preset})


def _ensure_optional_presets() -> None:
    try:  # presets living beside optional modules register themselves on import
        from ppolab.envs import atari  # noqa: F401
    except Exception:  # pragma: no cover - atari extras are optional
        pass


# ---- sweeps ---------------------------------------------------------------------------------------------------
def sweep_values(cfg: Config) -> dict[str, tuple[float, ...]]:
    """Each sweepable field as a tuple of values."""
    out = {}
    for name in SWEEPABLE:
        v = getattr(cfg, name)
        out[name] = tuple(float(x) for x in v) if isinstance(v, tuple | list) else (float(v),)
    return out


def agent_table(cfg: Config) -> list[dict]:
    """One row per agent: its seed and its coefficient values. Agents vary seeds fastest, then the swept fields."""
    values = sweep_values(cfg)
    swept = [k for k in SWEEPABLE if len(values[k]) > 1]
    rows = []
    for combo in itertools.product(*(values[k] for k in swept)):
        for s in range(cfg.num_seeds):
            row = {"agent": len(rows), "seed": cfg.seed + s}
            row.update({k: values[k][0] for k in SWEEPABLE})
            row.update(dict(zip(swept, combo, strict=True)))
            rows.append(row)
    return rows


def num_agents(cfg: Config) -> int:
    return len(agent_table(cfg))


def swept_fields(cfg: Config) -> list[str]:
    return [k for k, v in sweep_values(cfg).items() if len(v) > 1]


# ---- validation ---------------------------------------------------------------------------------------------------
def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def validate(cfg: Config) -> Config:
    """Raise ``ConfigError`` naming the first bad value and what is allowed. Returns ``cfg`` unchanged."""
    for f in dataclasses.fields(Config):  # types first (the Python API takes anything), then ranges
        v = getattr(cfg, f.name)
        _coerce(f.name, tuple(v) if isinstance(v, list) else v, f.default, label=f"--{f.name.replace('_', '-')}")
    _check(cfg.objective in OBJECTIVES, f"unknown objective {cfg.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
    for name in ("total_timesteps", "num_envs", "num_steps", "num_epochs", "num_minibatches", "num_seeds"):
        v = getattr(cfg, name)
        _check(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0,
               f"--{name.replace('_', '-')} must be a positive integer (got {v!r})")
    _check(cfg.batch_size % cfg.num_minibatches == 0,
           f"--num-minibatches {cfg.num_minibatches} must divide the batch num_envs * num_steps = "
           f"{cfg.num_envs} * {cfg.num_steps} = {cfg.batch_size}; try a divisor of {cfg.batch_size}")
    _check(cfg.total_timesteps >= cfg.batch_size,
           f"--total-timesteps {cfg.total_timesteps} is smaller than one batch (num_envs * num_steps = "
           f"{cfg.batch_size}); raise it or shrink the batch")
    values = sweep_values(cfg)

    def each(name, pred, allowed):
        for v in values[name]:
            _check(math.isfinite(v) and pred(v), f"--{name.replace('_', '-')} {v!r} is not allowed: must be {allowed}")

    each("learning_rate", lambda v: v > 0, "> 0")
    each("clip_eps", lambda v: v > 0, "> 0")
    each("kl_beta", lambda v: v >= 0, ">= 0")
    each("kl_target", lambda v: v > 0, "> 0")
    each("vf_coef", lambda v: v >= 0, ">= 0")
    each("ent_coef", lambda v: v >= 0, ">= 0")
    each("gamma", lambda v: 0 < v <= 1, "in (0, 1]")
    each("gae_lambda", lambda v: 0 <= v <= 1, "in [0, 1]")
    for name in ("vf_clip", "max_grad_norm", "target_kl"):
        v = getattr(cfg, name)
        _check(v is None or (math.isfinite(v) and v > 0), f"--{name.replace('_', '-')} must be > 0 or None (got {v!r})")
    _check(math.isfinite(cfg.adam_eps) and cfg.adam_eps > 0, f"--adam-eps must be > 0 (got {cfg.adam_eps!r})")
    _check(len(cfg.hidden_sizes) > 0 and all(h > 0 for h in cfg.hidden_sizes),
           f"--hidden-sizes must be positive widths (got {cfg.hidden_sizes!r})")
    _check(cfg.activation in ("tanh", "relu"), f"--activation must be tanh or relu (got {cfg.activation!r})")
    _check(cfg.eval_episodes >= 0, f"--eval-episodes must be >= 0 (got {cfg.eval_episodes})")
    _check(cfg.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 (got {cfg.checkpoint_every})")
    _check(math.isfinite(cfg.checkpoint_every_s) and cfg.checkpoint_every_s >= 0,
           f"--checkpoint-every-s must be a number of seconds >= 0 (got {cfg.checkpoint_every_s!r})")
    _check(cfg.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1 (got {cfg.keep_checkpoints})")
    _check(cfg.iterations_per_call >= 0, f"--iterations-per-call must be >= 0 (got {cfg.iterations_per_call})")
    _check(isinstance(cfg.threads, numbers.Integral) and cfg.threads >= 0,
           f"--threads must be an integer >= 0 (got {cfg.threads!r})")
    _check(isinstance(cfg.env, str) and cfg.env.strip() != "", f"--env must be an environment id (got {cfg.env!r})")
    _check(isinstance(cfg.ray_workers, numbers.Integral) and not isinstance(cfg.ray_workers, bool)
           and cfg.ray_workers >= 0, f"--ray-workers must be an integer >= 0 (got {cfg.ray_workers!r})")
    _check(isinstance(cfg.ray_worker_cpus, numbers.Real) and math.isfinite(cfg.ray_worker_cpus)
           and cfg.ray_worker_cpus >= 0, f"--ray-worker-cpus must be a number >= 0 (got {cfg.ray_worker_cpus!r})")
    if cfg.ray_workers:
        from ppolab.envs import backend_of

        _check(backend_of(cfg.env)[0] == "gymnasium",
               f"--ray-workers steps Gymnasium environments, not {cfg.env!r}: gymnax and brax envs run inside the "
               "jitted program (scale them with --num-envs or a GPU) and envpool has its own threads; drop "
               "--ray-workers")
    _check(isinstance(cfg.seed, numbers.Integral) and 0 <= cfg.seed < 2**31,
           f"--seed must be an integer in [0, 2**31) (got {cfg.seed!r})")
    for name, choices in _literal_choices().items():
        v = getattr(cfg, name)
        _check(v in choices, f"--{name.replace('_', '-')} {v!r} is not allowed; choose one of: {', '.join(choices)}")
    return cfg


def _literal_choices() -> dict[str, tuple]:
    """Fields annotated with ``Literal[...]`` and their allowed values."""
    import typing

    hints = typing.get_type_hints(Config)
    return {k: typing.get_args(t) for k, t in hints.items() if typing.get_origin(t) is Literal}


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def from_dict(d: dict) -> Config:
    """Inverse of ``to_dict``; unknown keys and wrong types raise ``ConfigError``."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(fields)}")
    kwargs = {}
    defaults = Config()
    for k, v in d.items():
        default = getattr(defaults, k)
        if isinstance(v, list):
            v = tuple(v)
        kwargs[k] = _coerce(k, v, default)
    return Config(**kwargs)


def _coerce(key, v, default, label: str | None = None):
    label = label or f"config key {key!r}"
    expected = ("a number or a list of numbers" if key in SWEEPABLE else "a list of integers" if key == "hidden_sizes"
                else type(default).__name__ if default is not None else "a value or null")
    bad = ConfigError(f"{label} has value {v!r} of type {type(v).__name__}; expected {expected}")
    if key in SWEEPABLE:
        if isinstance(v, tuple):
            if not v or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v):
                raise bad
            return tuple(float(x) for x in v) if len(v) > 1 else float(v[0])
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise bad
        return float(v)
    if key == "hidden_sizes":
        if not isinstance(v, tuple) or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v):
            raise bad
        return tuple(int(x) for x in v)
    if v is None:
        if default is None or key in ("vf_clip", "max_grad_norm", "target_kl", "preset", "run_dir"):
            return None
        raise bad
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise bad
        return v
    if isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise bad
        return int(v)
    if isinstance(default, float) or key in ("vf_clip", "max_grad_norm", "target_kl"):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise bad
        return float(v)
    if isinstance(default, str) or key in ("preset", "run_dir"):
        if not isinstance(v, str):
            raise bad
        choices = _literal_choices().get(key)
        if choices and v not in choices:
            raise ConfigError(f"{label} has value {v!r}; choose one of: {', '.join(choices)}")
        return v
    return v
