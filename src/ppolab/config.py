"""Run configuration: one frozen dataclass, validation and the per-agent hyperparameter table.

Static fields (shapes, loop counts, the objective kind) fix the compiled program. The *sweepable* coefficients
(``SWEEPABLE``) are traced: each may be a float or a tuple of floats, and every combination of the given values times
``num_seeds`` becomes one agent of a ``jax.vmap``-ed population trained in a single program. Presets are plain data
(``ppolab.presets``); the objectives' names and coefficients come from their registry (``ppolab.objectives``).
Importing this module imports no environment library.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
from typing import Literal

from ppolab.objectives import OBJECTIVES as _OBJECTIVE_RECORDS

OBJECTIVE_NAMES = tuple(_OBJECTIVE_RECORDS)
Objective = Literal[OBJECTIVE_NAMES]  # the CLI's choices: the registry's names
FloatOrSweep = float | tuple[float, ...]

#: Coefficients that are array leaves of the train state (``HParams``), so they can differ between vmapped agents.
SWEEPABLE = ("learning_rate", "clip_eps", "kl_beta", "kl_target", "ent_coef", "vf_coef", "gamma", "gae_lambda")

#: Environment back-ends named by an id prefix; any other id is a Gymnasium id (``module:Env-v0`` included).
ENV_PREFIXES = ("gymnax", "brax", "envpool", "jumanji")


def backend_of(env_id: str) -> tuple[str, str]:
    """'gymnax:CartPole-v1' -> ('gymnax', 'CartPole-v1'); 'Hopper-v5' or 'my_module:MyEnv-v0' -> ('gymnasium', id)."""
    if ":" in env_id:
        prefix, name = env_id.split(":", 1)
        if prefix in ENV_PREFIXES:
            return prefix, name
    return "gymnasium", env_id


from ppolab.config_values import ConfigError, coerce  # noqa: E402  (re-exported: ``config.ConfigError``)


@dataclasses.dataclass(frozen=True)
class Config:
    """Configuration of one ppolab training run (or one vmapped population of runs)."""

    env: str = "CartPole-v1"
    """Environment: a Gymnasium id (e.g. Hopper-v5, or my_module:MyEnv-v0 to import your own module first), or
    gymnax:NAME, brax:NAME, envpool:NAME."""
    preset: str | None = None
    """Named hyperparameter set applied first (cartpole, cartpole-lstm, gymnax-cartpole, paper-mujoco, ppo1-mujoco,
    ppo2-mujoco, paper-atari, ppo2-atari, cleanrl-atari-lstm, brax); flags given on the command line override it."""
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
    norm_adv_batch: bool = False
    """With --norm-adv: normalize once over the whole batch instead (baselines ppo1, the paper's released code)."""
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
    """Orthogonal init of the dense layers (gain sqrt 2 hidden, 0.01 policy head, 1 value head); else --default-init."""
    log_std_init: float = 0.0
    """Initial state-independent log std of Gaussian policies."""
    policy: Literal["feedforward", "lstm", "gru"] = "feedforward"
    """Feed-forward (MLP; Nature CNN on images), or an LSTM / GRU cell after that torso (ppolab.recurrent)."""
    rnn_size: int = 128
    """Width of the recurrent cell (--policy lstm|gru)."""
    rnn_separate: bool = False
    """Separate actor and critic torso+cell (default: one torso and cell for both heads)."""
    rnn_head_sizes: tuple[int, ...] = ()
    """Hidden layers after the cell, one stack per head (sb3-contrib's RecurrentPPO: 64; PureJaxRL: 128)."""
    default_init: Literal["flax", "torch"] = "flax"
    """The init wherever orthogonal init is not used (the recurrent cells always; the dense layers under
    --no-ortho-init): flax's (lecun-normal kernels, orthogonal recurrent kernels, zero biases) or torch's defaults
    (nn.Linear / LSTM / GRU: U(+-1/sqrt(fan_in)) weights and biases, what sb3 runs with ortho_init=False)."""
    seq_len: int = 0
    """Recurrent update: sequences of this many steps, each from its stored start carry (0: whole rollouts)."""
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
    frame_stack: int = 4
    """Atari: frames stacked in one observation (the paper: 4; a recurrent policy can use 1)."""
    env_kwargs: str = ""
    """Gymnasium envs: keyword arguments for gymnasium.make, as JSON ('{"max_episode_steps": 100}') or
    key=value pairs separated by commas (values read as JSON where they parse, else as strings)."""
    env_timeout: float = 0.0
    """Gymnasium envs: seconds an env's reset or step may take before the run stops with an error naming the env,
    the sub-env and the step (after a checkpoint of the last whole iteration); 0 waits forever."""
    ray_workers: int = 0
    """Gymnasium envs only: step the environments in this many Ray actors (the distributed mode, pip install
    'ppolab[ray]'); actions are still computed here in one batched pass, so results do not depend on it. 0 = off."""
    ray_address: str = ""
    """Ray cluster to join with --ray-workers (e.g. 'auto' or 'HOST:6379'); empty: start a local Ray for the run."""
    ray_worker_cpus: float = 1.0
    """CPUs Ray reserves for each environment worker (0 lets workers share cores, e.g. for envs waiting on I/O)."""
    threads: int = 0
    """CPU threads that update the agents of a population in parallel, each a group of agents (0 = one per CPU core,
    at most one per agent). Groups of equal size give bitwise the same agents as one program; a group of a single
    agent runs unbatched and may differ in the last bits (a speed setting, not a learning one)."""
    act_backend: Literal["auto", "numpy", "jax"] = "auto"
    """Gymnasium and envpool envs: how actions are computed, a numpy forward pass of the MLP (fastest on CPU) or a
    jitted call (auto: numpy for MLPs, jax for CNNs)."""
    action_mask: Literal["auto", "off"] = "auto"
    """Discrete / MultiDiscrete actions: only the legal ones where the env gives a mask (a Dict observation's
    action_mask key, not fed to the network; an action_masks() method; jumanji envs); off ignores the mask."""
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
    wandb_project: str = ""
    """Also log metrics.csv's rows to this Weights & Biases project (pip install 'ppolab[wandb]'; WANDB_MODE=offline
    logs to RUN_DIR/wandb without a network); empty: off."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """On a non-finite loss, gradient, parameter, observation or reward: stop the run, or skip the bad update."""
    iterations_per_call: int = 0
    """gymnax and Brax envs: iterations fused in one jitted call (0 = automatic)."""
    brax_backend: Literal["generalized", "positional", "spring", "mjx"] = "generalized"
    """brax:NAME envs: the physics pipeline."""
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


from ppolab.presets import PRESETS  # noqa: E402  (plain data)


def apply_preset(cfg: Config, explicit: dict | None = None) -> Config:
    """Apply ``cfg.preset``, then re-apply ``explicit`` (the values the user set) on top."""
    if cfg.preset is None:
        return cfg
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of: {', '.join(sorted(PRESETS))}")
    base = dataclasses.replace(Config(), **PRESETS[cfg.preset])
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config)}
    defaults = Config()
    if explicit is None:  # Python API: every field that differs from the default counts as explicit
        explicit = {k: v for k, v in values.items() if v != getattr(defaults, k)}
    return dataclasses.replace(base, **{**explicit, "preset": cfg.preset})


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


#: The allowed range of each sweepable coefficient: (test, what the message says is allowed).
COEFFICIENT_RANGES = {
    "learning_rate": (lambda v: v > 0, "> 0"), "clip_eps": (lambda v: v > 0, "> 0"),
    "kl_beta": (lambda v: v >= 0, ">= 0"), "kl_target": (lambda v: v > 0, "> 0"),
    "vf_coef": (lambda v: v >= 0, ">= 0"), "ent_coef": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"), "gae_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
}


def _check_coefficients(cfg: Config) -> None:
    for name, values in sweep_values(cfg).items():
        ok, allowed = COEFFICIENT_RANGES[name]
        for v in values:
            _check(math.isfinite(v) and ok(v), f"--{name.replace('_', '-')} {v!r} is not allowed: must be {allowed}")


def _check_update(cfg: Config) -> None:
    """The update's optional clips, Adam's eps and the advantage normalization's scope."""
    for name in ("vf_clip", "max_grad_norm", "target_kl"):
        v = getattr(cfg, name)
        _check(v is None or (math.isfinite(v) and v > 0), f"--{name.replace('_', '-')} must be > 0 or None (got {v!r})")
    _check(math.isfinite(cfg.adam_eps) and cfg.adam_eps > 0, f"--adam-eps must be > 0 (got {cfg.adam_eps!r})")
    _check(not cfg.norm_adv_batch or cfg.norm_adv,
           "--norm-adv-batch normalizes the advantages, which --no-norm-adv turns off: drop one of them")
    _check(not cfg.norm_adv_batch or cfg.num_minibatches > 1,
           "--norm-adv-batch with --num-minibatches 1 is --norm-adv (the one minibatch is the batch): drop it")


def validate(cfg: Config) -> Config:
    """Raise ``ConfigError`` naming the first bad value and what is allowed. Returns ``cfg`` unchanged."""
    for f in dataclasses.fields(Config):  # types first (the Python API takes anything), then ranges
        v = getattr(cfg, f.name)
        _coerce(f.name, tuple(v) if isinstance(v, list) else v, f.default, label=f"--{f.name.replace('_', '-')}")
    _check(cfg.objective in OBJECTIVE_NAMES,
           f"unknown objective {cfg.objective!r}; choose one of: {', '.join(OBJECTIVE_NAMES)}")
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
    _check_coefficients(cfg)
    _check_update(cfg)
    _check((len(cfg.hidden_sizes) > 0 or cfg.policy != "feedforward") and all(h > 0 for h in cfg.hidden_sizes),
           f"--hidden-sizes must be positive widths (got {cfg.hidden_sizes!r}; none: only before a recurrent cell)")
    _check(all(h > 0 for h in cfg.rnn_head_sizes), f"--rnn-head-sizes must be positive widths "
           f"(got {cfg.rnn_head_sizes!r})")
    _check(cfg.activation in ("tanh", "relu"), f"--activation must be tanh or relu (got {cfg.activation!r})")
    _check(1 <= cfg.frame_stack <= 16, f"--frame-stack must be 1..16 frames (got {cfg.frame_stack})")
    _check(cfg.eval_episodes >= 0, f"--eval-episodes must be >= 0 (got {cfg.eval_episodes})")
    _check(cfg.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 (got {cfg.checkpoint_every})")
    _check(math.isfinite(cfg.checkpoint_every_s) and cfg.checkpoint_every_s >= 0,
           f"--checkpoint-every-s must be a number of seconds >= 0 (got {cfg.checkpoint_every_s!r})")
    _check(cfg.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1 (got {cfg.keep_checkpoints})")
    _check(cfg.iterations_per_call >= 0, f"--iterations-per-call must be >= 0 (got {cfg.iterations_per_call})")
    _check(isinstance(cfg.threads, numbers.Integral) and cfg.threads >= 0,
           f"--threads must be an integer >= 0 (got {cfg.threads!r})")
    _check(isinstance(cfg.env, str) and cfg.env.strip() != "", f"--env must be an environment id (got {cfg.env!r})")
    _check(isinstance(cfg.env_timeout, numbers.Real) and math.isfinite(cfg.env_timeout) and cfg.env_timeout >= 0,
           f"--env-timeout must be a number of seconds >= 0 (got {cfg.env_timeout!r})")
    _check(isinstance(cfg.ray_workers, numbers.Integral) and not isinstance(cfg.ray_workers, bool)
           and cfg.ray_workers >= 0, f"--ray-workers must be an integer >= 0 (got {cfg.ray_workers!r})")
    _check(isinstance(cfg.ray_worker_cpus, numbers.Real) and math.isfinite(cfg.ray_worker_cpus)
           and cfg.ray_worker_cpus >= 0, f"--ray-worker-cpus must be a number >= 0 (got {cfg.ray_worker_cpus!r})")
    if cfg.ray_workers:
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


@functools.cache
def _literal_choices() -> dict[str, tuple]:
    """Fields annotated with ``Literal[...]`` and their allowed values (computed once: ``get_type_hints`` costs
    ~120 ms, once per field check otherwise). Read-only."""
    import typing

    hints = typing.get_type_hints(Config)
    return {k: typing.get_args(t) for k, t in hints.items() if typing.get_origin(t) is Literal}


def to_dict(cfg: Config) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


#: Config keys renamed since runs were written with them: old -> new (config.json of older runs still loads).
RENAMED = {"rnn_init": "default_init"}  # session 11: the cells' init became the init of every non-orthogonal layer


def from_dict(d: dict) -> Config:
    """Inverse of ``to_dict``; unknown keys and wrong types raise ``ConfigError``."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    d = {RENAMED.get(k, k): v for k, v in d.items()}
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
    return coerce(key, v, default, label, SWEEPABLE, _literal_choices().get(key))
