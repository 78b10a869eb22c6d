"""Bad input everywhere: property-based tests of validate() / from_dict() / to_dict(), and the command line's answer
to bad flags, config files, env ids, run directories and resumes: one line naming the value and what is allowed,
exit code 2, no traceback, nothing existing overwritten."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ppolab.cli import main as cli_main
from ppolab.config import SWEEPABLE, Config, ConfigError, from_dict, to_dict, validate

FIELDS = {f.name: f for f in dataclasses.fields(Config)}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- what validate() must accept, written independently of it ------------------------------------------------------
FLOAT_RULES = {"learning_rate": lambda v: v > 0, "clip_eps": lambda v: v > 0, "kl_beta": lambda v: v >= 0,
               "kl_target": lambda v: v > 0, "vf_coef": lambda v: v >= 0, "ent_coef": lambda v: v >= 0,
               "gamma": lambda v: 0 < v <= 1, "gae_lambda": lambda v: 0 <= v <= 1}
OPTIONAL_POSITIVE = ("vf_clip", "max_grad_norm", "target_kl")
INT_MIN = {"total_timesteps": 1, "num_envs": 1, "num_steps": 1, "num_epochs": 1, "num_minibatches": 1, "num_seeds": 1,
           "eval_episodes": 0, "checkpoint_every": 0, "keep_checkpoints": 1, "iterations_per_call": 0}


def expected_valid(cfg: Config) -> bool:
    for name, lo in INT_MIN.items():
        if getattr(cfg, name) < lo:
            return False
    if cfg.batch_size % cfg.num_minibatches or cfg.total_timesteps < cfg.batch_size:
        return False
    if not 0 <= cfg.seed < 2**31:
        return False
    for name, ok in FLOAT_RULES.items():
        v = getattr(cfg, name)
        for x in v if isinstance(v, tuple) else (v,):
            if not (math.isfinite(x) and ok(x)):
                return False
    for name in OPTIONAL_POSITIVE:
        v = getattr(cfg, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            return False
    if not (math.isfinite(cfg.adam_eps) and cfg.adam_eps > 0):
        return False
    if not (math.isfinite(cfg.checkpoint_every_s) and cfg.checkpoint_every_s >= 0):
        return False
    return len(cfg.hidden_sizes) > 0 and all(h > 0 for h in cfg.hidden_sizes) and cfg.env.strip() != ""


edge_floats = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-12, 0.5, 1.0000001, 2.0, math.inf, -math.inf,
                                         math.nan]), st.floats(-2, 2), st.floats(allow_nan=True, allow_infinity=True))
small_ints = st.one_of(st.integers(-3, 8), st.sampled_from([16, 32, 64, 256, 1024, 2**31 - 1, 2**31]))


def field_values(name: str):
    default = FIELDS[name].default
    if name in SWEEPABLE:
        return st.one_of(edge_floats, st.lists(edge_floats, min_size=2, max_size=3).map(tuple))
    if name in OPTIONAL_POSITIVE:
        return st.one_of(st.none(), edge_floats)
    if name == "hidden_sizes":
        return st.lists(st.integers(-2, 70), min_size=0, max_size=3).map(tuple)
    if name == "env":
        return st.sampled_from(["CartPole-v1", "", "   ", "gymnax:CartPole-v1"])
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return small_ints
    if isinstance(default, float):
        return edge_floats
    return st.just(default)


NUMERIC = sorted(set(INT_MIN) | set(FLOAT_RULES) | set(OPTIONAL_POSITIVE) |
                 {"adam_eps", "checkpoint_every_s", "hidden_sizes", "env", "seed"})


@st.composite
def configs(draw):
    names = draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=5, unique=True))
    return Config(**{n: draw(field_values(n)) for n in names})


@SETTINGS
@given(configs())
def test_validate_accepts_exactly_the_valid_ranges(cfg):
    ok = expected_valid(cfg)
    if ok:
        assert validate(cfg) is cfg
    else:
        with pytest.raises(ConfigError) as e:
            validate(cfg)
        msg = str(e.value)
        assert msg.startswith("--") and "\n" not in msg  # names the flag, one line


@pytest.mark.parametrize("name, value, message", [
    ("gamma", 0.0, "--gamma 0.0 is not allowed: must be in (0, 1]"),
    ("gamma", 1.0, None),
    ("gae_lambda", 0.0, None),
    ("gae_lambda", 1.5, "--gae-lambda 1.5 is not allowed: must be in [0, 1]"),
    ("learning_rate", (1e-3, -1.0), "--learning-rate -1.0 is not allowed: must be > 0"),
    ("clip_eps", math.nan, "--clip-eps nan is not allowed"),
    ("kl_beta", 0.0, None),
    ("num_minibatches", 3, "--num-minibatches 3 must divide the batch num_envs * num_steps = 8 * 32 = 256"),
    ("total_timesteps", 255, "--total-timesteps 255 is smaller than one batch"),
    ("keep_checkpoints", 0, "--keep-checkpoints must be >= 1 (got 0)"),
    ("checkpoint_every_s", -1.0, "--checkpoint-every-s must be a number of seconds >= 0"),
    ("seed", -1, "--seed must be an integer in [0, 2**31)"),
    ("max_grad_norm", None, None),
    ("max_grad_norm", 0.0, "--max-grad-norm must be > 0 or None (got 0.0)"),
    ("hidden_sizes", (), "--hidden-sizes must be positive widths"),
    ("nonfinite", "ignore", "--nonfinite has value 'ignore'; choose one of: stop, skip"),
    ("objective", "ppo", "choose one of: pg, cpi, clip, kl-fixed, kl-adaptive"),
    ("eval_episodes", "3", "--eval-episodes has value '3' of type str; expected int"),
    ("num_envs", 2.5, "--num-envs has value 2.5 of type float; expected int"),
    ("normalize_obs", 1, "--normalize-obs has value 1 of type int; expected bool"),
    ("learning_rate", np.float32(3e-4), None),  # numpy numbers are numbers
    ("num_envs", np.int64(8), None),
])
def test_validate_boundaries_and_messages(name, value, message):
    cfg = Config(**{name: value})
    if message is None:
        validate(cfg)
    else:
        with pytest.raises(ConfigError) as e:
            validate(cfg)
        assert message in str(e.value)


def test_every_field_is_type_checked():
    """A value of the wrong type in any field is a ConfigError naming it (never a TypeError deep inside)."""
    for name in FIELDS:
        with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')}"):
            validate(Config(**{name: object()}))


# ---- to_dict / from_dict ----------------------------------------------------------------------------------------
def valid_values(name: str):
    if name in SWEEPABLE:
        x = st.floats(0.01, 1.0)
        return st.one_of(x, st.lists(x, min_size=2, max_size=3).map(tuple))
    if name in OPTIONAL_POSITIVE:
        return st.one_of(st.none(), st.floats(0.01, 5.0))
    if name == "hidden_sizes":
        return st.lists(st.integers(1, 128), min_size=1, max_size=3).map(tuple)
    if name in ("num_envs", "num_steps", "num_minibatches"):
        return st.just(FIELDS[name].default)
    from ppolab.config import _literal_choices

    choices = _literal_choices().get(name)
    if choices:
        return st.sampled_from(choices)
    default = FIELDS[name].default
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(max(INT_MIN.get(name, 0), 0), 10_000) if name != "total_timesteps" else st.integers(
            256, 10**7)
    if isinstance(default, float):
        return st.floats(1e-9, 1e3)
    if name in ("preset", "run_dir"):
        return st.one_of(st.none(), st.sampled_from(["cartpole", "runs/x"]))
    return st.just(default)


@st.composite
def valid_configs(draw):
    names = draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=8, unique=True))
    return Config(**{n: draw(valid_values(n)) for n in names})


@SETTINGS
@given(valid_configs())
def test_to_dict_from_dict_round_trip_through_json(cfg):
    validate(cfg)
    d = to_dict(cfg)
    assert from_dict(d) == cfg
    assert from_dict(json.loads(json.dumps(d))) == cfg
    assert validate(from_dict(d)) == cfg


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True),
                                     st.text(max_size=8)),
                           lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=4),
                                                                                              kids, max_size=2)),
                           max_leaves=5)


@SETTINGS
@given(st.dictionaries(st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=6)), json_values, max_size=4))
def test_from_dict_then_validate_raise_only_config_errors(d):
    """Any JSON-like mapping (a config file) gives a Config or a ConfigError naming the key, nothing else."""
    try:
        cfg = from_dict(d)
    except ConfigError as e:
        assert "config key" in str(e) and "\n" not in str(e)
        return
    try:
        validate(cfg)
    except ConfigError as e:
        assert str(e).startswith("--")


def test_from_dict_messages():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) 'lr', 'nenvs'; known keys: env, preset"):
        from_dict({"lr": 1, "nenvs": 2, "env": "CartPole-v1"})
    with pytest.raises(ConfigError, match="config key 'num_envs' has value '8' of type str; expected int"):
        from_dict({"num_envs": "8"})
    with pytest.raises(ConfigError, match="config key 'activation' has value 'gelu'; choose one of: tanh, relu"):
        from_dict({"activation": "gelu"})
    assert from_dict({"learning_rate": [0.1, 0.2], "hidden_sizes": [8]}) == Config(learning_rate=(0.1, 0.2),
                                                                                   hidden_sizes=(8,))


# ---- the command line: one line, exit 2, nothing written ------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main(list(argv))
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ppolab: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--num-envs", "abc"], ["--num-envs", "abc"]),
    (["train", "--no-such-flag", "1"], ["--no-such-flag"]),
    (["train", "--num-minibatches", "3"], ["--num-minibatches 3 must divide", "256"]),
    (["train", "--gamma", "1.5"], ["--gamma 1.5 is not allowed: must be in (0, 1]"]),
    (["train", "--clip-eps", "0.1,-0.2"], ["--clip-eps -0.2 is not allowed: must be > 0"]),
    (["train", "--nonfinite", "ignore"], ["--nonfinite", "ignore"]),
    (["train", "--checkpoint-every-s", "-5"], ["--checkpoint-every-s must be a number of seconds >= 0"]),
    (["train", "--seed", "-3"], ["--seed must be an integer in [0, 2**31)"]),
    (["train", "--env", "NoSuchEnv-v9"], ["unknown environment id 'NoSuchEnv-v9'"]),
    (["train", "--preset", "nope"], ["unknown preset 'nope'; choose one of:"]),
    (["bogus"], ["unknown command 'bogus'; choose one of: train"]),
    (["eval", "/nonexistent/run"], ["run directory '/nonexistent/run' does not exist"]),
])
def test_bad_flags(capsys, tmp_path, monkeypatch, argv, fragments):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "runs").exists()  # nothing written


@pytest.mark.parametrize("name, text, fragments", [
    ("c.yaml", "num_envs: 4\nlearning_rat: 0.1\n", ["unknown config key(s) 'learning_rat'"]),
    ("c.yaml", "num_envs: four\n", ["config key 'num_envs' has value 'four' of type str; expected int"]),
    ("c.yaml", "num_envs: [4\n", ["--config", "cannot be parsed"]),
    ("c.yaml", "- 1\n- 2\n", ["must hold a mapping of option names to values"]),
    ("c.yaml", "!!python/object/apply:os.system ['touch pwned']\n", ["cannot be parsed"]),
    ("c.toml", "gamma = 2.0\n", ["--gamma 2.0 is not allowed: must be in (0, 1]"]),
    ("c.toml", "gamma = \n", ["cannot be parsed"]),
    ("c.ini", "a=1", ["unknown file type '.ini'; use .yaml, .yml, .toml or .json"]),
    ("missing.yaml", None, ["--config", "does not exist or is not a file"]),
])
def test_bad_config_files(capsys, tmp_path, monkeypatch, name, text, fragments):
    monkeypatch.chdir(tmp_path)
    if text is not None:
        (tmp_path / name).write_text(text)
    code, err = run_cli(capsys, "train", "--config", str(tmp_path / name))
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pwned").exists()


def test_config_file_values_and_flags_combine(tmp_path):
    from ppolab.cli import parse_train_args

    (tmp_path / "c.toml").write_text('num-envs = 4\nhidden_sizes = [16]\nclip_eps = [0.1, 0.3]\nobjective = "pg"\n')
    cfg, explicit, resume = parse_train_args(["--config", str(tmp_path / "c.toml"), "--num-envs", "2"])
    assert (cfg.num_envs, cfg.hidden_sizes, cfg.clip_eps, cfg.objective) == (2, (16,), (0.1, 0.3), "pg")
    assert {"num_envs", "hidden_sizes", "clip_eps", "objective"} <= explicit and resume is None


def test_existing_run_dir_is_never_clobbered(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    code, err = run_cli(capsys, "train", "--run-dir", str(run))
    assert_one_line_error(code, err, f"--run-dir '{run}' already holds a run; pass --overwrite")
    assert [p.name for p in run.iterdir()] == ["precious.txt"] and (run / "precious.txt").read_text() == "keep me"
    afile = tmp_path / "file"
    afile.write_text("x")
    code, err = run_cli(capsys, "train", "--run-dir", str(afile))
    assert_one_line_error(code, err, "exists and is not a directory")
    assert afile.read_text() == "x"


def test_bad_resumes(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--resume", str(tmp_path / "nope"))
    assert_one_line_error(code, err, f"cannot resume '{tmp_path / 'nope'}': no such directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = run_cli(capsys, "train", "--resume", str(empty))
    assert_one_line_error(code, err, "no config.json there (is it a ppolab run directory?)")
    (empty / "config.json").write_text("{not json")
    code, err = run_cli(capsys, "train", "--resume", str(empty))
    assert_one_line_error(code, err, "config.json is not valid JSON")
    (empty / "config.json").write_text(json.dumps(dict(to_dict(Config()), num_envs="x")))
    code, err = run_cli(capsys, "train", "--resume", str(empty))
    assert_one_line_error(code, err, "config key 'num_envs' has value 'x'")
    (empty / "config.json").write_text(json.dumps(to_dict(Config(run_dir=str(empty)))))
    code, err = run_cli(capsys, "train", "--resume", str(empty))
    assert_one_line_error(code, err, "has no checkpoint yet")
    code, err = run_cli(capsys, "train", "--resume", str(empty), "--learning-rate", "0.5")
    assert_one_line_error(code, err, "--learning-rate cannot change when resuming (the run has 0.001)")
    assert sorted(p.name for p in empty.iterdir()) == ["config.json"]  # nothing written


@pytest.mark.parametrize("change", [dict(norm_adv=False), dict(num_minibatches=1)])
def test_norm_adv_batch_is_refused_where_it_would_do_nothing(change):
    with pytest.raises(ConfigError, match="^--norm-adv-batch .*drop"):
        validate(Config(norm_adv_batch=True, **change))
    validate(Config(norm_adv_batch=True))
