"""Options that apply: an option that would change nothing for the chosen objective or environment back-end is
refused with a one-line error naming it and where it applies; ``--env-kwargs`` parsing.

An option counts as *set* when its value differs from the one the defaults and the preset give (so a preset's own
values are never refused), and a coefficient counts as *swept* when it has more than one value: a sweep of a
coefficient the objective never reads would train identical agents.
"""

from __future__ import annotations

import json

from ppolab import objectives
from ppolab.config import Config, ConfigError, apply_preset, backend_of, sweep_values

#: Back-end options and the environment back-ends they act on.
BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "act_backend": ("gymnasium", "envpool"),
    "action_mask": ("gymnasium", "jumanji"),
    "vector_mode": ("gymnasium",),
    "env_kwargs": ("gymnasium",),
    "env_timeout": ("gymnasium",),
    "ray_workers": ("gymnasium",),
    "ray_address": ("gymnasium",),
    "ray_worker_cpus": ("gymnasium",),
    "iterations_per_call": ("gymnax", "brax"),
    "brax_backend": ("brax",),
}
#: Options that only act together with another one (option -> the other).
NEEDS = {"ray_address": "ray_workers", "ray_worker_cpus": "ray_workers"}


def is_atari_id(env_id: str) -> bool:  # as ``envs.atari.is_atari``, without importing an env library
    return env_id.startswith("ALE/") or "NoFrameskip" in env_id


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{x:g}" for x in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_options_apply(cfg: Config) -> None:
    """Raise ``ConfigError`` for the first option of ``cfg`` that would do nothing (see the module docstring)."""
    base = apply_preset(Config(preset=cfg.preset))
    record = objectives.get(cfg.objective)
    values = sweep_values(cfg)
    for name in objectives.OBJECTIVE_COEFFICIENTS:
        if name in record.coefficients:
            continue
        users = [o.name for o in objectives.OBJECTIVES.values() if name in o.coefficients]
        value = getattr(cfg, name)
        if name in values and len(values[name]) > 1:
            raise ConfigError(f"{_flag(name)} {_shown(value)} sweeps a coefficient that --objective {cfg.objective} "
                              f"does not use: the agents would be identical; it applies to --objective "
                              f"{' / '.join(users)}")
        if value != getattr(base, name):
            raise ConfigError(f"{_flag(name)} {_shown(value)} does nothing with --objective {cfg.objective}; it "
                              f"applies to --objective {' / '.join(users)}")
    backend = backend_of(cfg.env)[0]
    for name, backends in BACKEND_OPTIONS.items():
        value = getattr(cfg, name)
        if value == getattr(base, name):
            continue
        if backend not in backends:
            raise ConfigError(f"{_flag(name)} {_shown(value):.60} does nothing with {cfg.env!r} (a {backend} env); it "
                              f"applies to {' and '.join(backends)} environments")
        other = NEEDS.get(name)
        if other is not None and not getattr(cfg, other):
            raise ConfigError(f"{_flag(name)} {_shown(value):.60} does nothing without {_flag(other)}")
    parse_env_kwargs(cfg.env_kwargs)
    if cfg.frame_stack != base.frame_stack and not (backend == "gymnasium" and is_atari_id(cfg.env)):
        raise ConfigError(f"--frame-stack {cfg.frame_stack} does nothing with {cfg.env!r}; it applies to Atari "
                          "environments (ALE/*-v5, *NoFrameskip-v4)")
    check_init(cfg, base, atari=backend == "gymnasium" and is_atari_id(cfg.env))
    check_recurrent(cfg, base)


def check_init(cfg: Config, base: Config, atari: bool) -> None:
    """--no-ortho-init and --default-init, refused where no layer takes them: a feed-forward policy on Atari (the
    Nature CNN and its heads are always orthogonal), and --default-init with a feed-forward orthogonal network."""
    if cfg.policy != "feedforward":
        return  # the cells take --default-init
    if atari and not cfg.ortho_init:
        raise ConfigError("--no-ortho-init does nothing with --policy feedforward on an Atari env: the Nature "
                          "CNN and its heads are initialized orthogonally")
    if (cfg.ortho_init or atari) and cfg.default_init != base.default_init:
        raise ConfigError(f"--default-init {cfg.default_init} does nothing with --policy feedforward and "
                          f"{'an Atari env' if atari else 'orthogonal init'}; it applies to recurrent cells and "
                          "to MLP layers under --no-ortho-init")


#: Options of recurrent policies (``--policy lstm|gru``).
RECURRENT_OPTIONS = ("rnn_size", "rnn_separate", "rnn_head_sizes", "seq_len")


def check_recurrent(cfg: Config, base: Config) -> None:
    """The recurrent options: refused with a feed-forward policy; the sequences of the update must split exactly."""
    if cfg.policy == "feedforward":
        for name in RECURRENT_OPTIONS:
            if getattr(cfg, name) != getattr(base, name):
                raise ConfigError(f"{_flag(name)} {_shown(getattr(cfg, name))} does nothing with --policy "
                                  "feedforward; it applies to --policy lstm / gru")
        return
    if cfg.shared_torso != base.shared_torso:
        raise ConfigError(f"--shared-torso {cfg.shared_torso} does nothing with --policy {cfg.policy}: the torso is "
                          "shared with the cell unless --rnn-separate gives actor and critic a torso and cell each")
    if cfg.rnn_size <= 0:
        raise ConfigError(f"--rnn-size must be a positive width (got {cfg.rnn_size})")
    L = cfg.seq_len or cfg.num_steps
    if cfg.seq_len < 0 or cfg.num_steps % L:
        raise ConfigError(f"--seq-len {cfg.seq_len} must divide --num-steps {cfg.num_steps} (0: whole rollouts); "
                          f"try a divisor of {cfg.num_steps}")
    sequences = cfg.num_steps // L * cfg.num_envs
    if sequences % cfg.num_minibatches:
        raise ConfigError(f"--num-minibatches {cfg.num_minibatches} must divide the {sequences} sequences of a "
                          f"recurrent update (num_envs {cfg.num_envs} x num_steps {cfg.num_steps} / seq_len {L}): "
                          "minibatches are whole sequences; lower --num-minibatches or --seq-len")


def parse_env_kwargs(text: str) -> dict:
    """``--env-kwargs``: '' -> {}; a JSON object; or 'key=value,key2=value2' (each value read as JSON where it
    parses, e.g. numbers and true/false, else kept as a string). ``ConfigError`` names the bad part."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--env-kwargs {text[:80]!r} is not valid JSON: {e.msg} at character {e.pos}") from None
        if not isinstance(out, dict):
            raise ConfigError(f"--env-kwargs {text[:80]!r} must be a JSON object")
        return out
    out = {}
    for part in text.split(","):
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ConfigError(f"--env-kwargs: {part.strip()[:60]!r} is not key=value (e.g. --env-kwargs "
                              "max_episode_steps=100,render_mode=rgb_array, or a JSON object)")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw.strip()
    return out
