"""Options that would do nothing are refused; user-defined envs and --env-kwargs; one-line errors for bad input.
(Issue 11.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ppolab.cli import main
from ppolab.config import Config, ConfigError, validate
from ppolab.options import check_options_apply, parse_env_kwargs

USER_ENVS = Path(__file__).parent / "user_envs"
TINY = ["--total-timesteps", "256", "--num-envs", "2", "--num-steps", "32", "--num-epochs", "1",
        "--num-minibatches", "2", "--eval-episodes", "1", "--no-progress", "--no-tensorboard"]


@pytest.mark.parametrize("flags, message", [
    (dict(objective="clip", kl_target=(0.003, 0.01)), "--kl-target 0.003,0.01 sweeps a coefficient"),
    (dict(objective="clip", kl_target=0.003), "--kl-target 0.003 does nothing with --objective clip"),
    (dict(objective="clip", kl_beta=3.0), "--kl-beta 3 does nothing with --objective clip"),
    (dict(objective="kl-fixed", kl_target=0.02), "applies to --objective kl-adaptive"),
    (dict(objective="cpi", clip_eps=(0.1, 0.3)), "--clip-eps 0.1,0.3 sweeps"),
    (dict(objective="pg", anneal_clip=False), "--anneal-clip False does nothing with --objective pg"),
    (dict(env="gymnax:CartPole-v1", act_backend="numpy"), "--act-backend numpy does nothing with 'gymnax"),
    (dict(env="gymnax:CartPole-v1", vector_mode="async"), "--vector-mode async does nothing"),
    (dict(env="CartPole-v1", brax_backend="mjx"), "--brax-backend mjx does nothing"),
    (dict(env="CartPole-v1", iterations_per_call=4), "--iterations-per-call 4 does nothing with 'CartPole-v1'"),
    (dict(env="gymnax:CartPole-v1", env_kwargs="max_episode_steps=10"), "--env-kwargs"),
    (dict(env="CartPole-v1", ray_worker_cpus=2.0), "--ray-worker-cpus 2 does nothing without --ray-workers"),
])
def test_options_that_would_do_nothing_are_refused(flags, message):
    cfg = validate(Config(**flags))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_options_apply(cfg)


@pytest.mark.parametrize("flags", [
    dict(objective="kl-adaptive", kl_target=(0.003, 0.01), kl_beta=3.0),
    dict(objective="clip", clip_eps=(0.1, 0.3), anneal_clip=False),
    dict(objective="kl-fixed", kl_beta=(0.3, 1.0)),
    dict(env="gymnax:CartPole-v1", iterations_per_call=4),
    dict(env="brax:ant", brax_backend="mjx"),
    dict(env="CartPole-v1", vector_mode="vector", act_backend="jax", env_kwargs='{"max_episode_steps": 20}'),
    dict(preset="brax", env="gymnax:CartPole-v1"),  # a preset's own brax_backend is not the user's choice
    dict(preset="paper-mujoco", objective="clip"),  # paper-mujoco sets kl_beta=1 for every objective
])
def test_options_that_apply_are_accepted(flags):
    from ppolab.config import apply_preset

    check_options_apply(validate(apply_preset(Config(**flags))))


def test_refused_option_from_the_cli_is_one_line_exit_2(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--objective", "clip", "--kl-target", "0.003,0.01", "--run-dir", str(run), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppolab: error: --kl-target 0.003,0.01 sweeps") and "\n" not in err
    assert not run.exists()


def test_parse_env_kwargs():
    assert parse_env_kwargs("") == {}
    assert parse_env_kwargs('{"a": 1, "b": [2]}') == {"a": 1, "b": [2]}
    assert parse_env_kwargs("max_episode_steps=100,render_mode=rgb_array,g=9.8,x=true") == {
        "max_episode_steps": 100, "render_mode": "rgb_array", "g": 9.8, "x": True}
    for bad in ("{not json", "[1, 2]", "novalue", "1x=2"):
        with pytest.raises(ConfigError, match="--env-kwargs"):
            parse_env_kwargs(bad)


def _ppolab(args, cwd, timeout=300):
    """The ``ppolab`` console script (which, unlike ``python -m``, does not put the working directory on sys.path)."""
    exe = shutil.which("ppolab") or str(Path(sys.executable).parent / "ppolab")
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_user_env_module_trains_evaluates_and_takes_env_kwargs(tmp_path):
    """`ppolab train --env my_corridor:MyCorridor-v0` from the directory holding the module (not installed, not on
    sys.path): the module is imported, its env trained; --env-kwargs reaches gymnasium.make (a longer corridor
    gives other returns); `ppolab eval` reloads it."""
    run = tmp_path / "run"
    r = _ppolab(["train", "--env", "my_corridor:MyCorridor-v0", "--env-kwargs", "length=2", "--run-dir", str(run),
                 *TINY], cwd=USER_ENVS)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_id"] == "my_corridor:MyCorridor-v0" and summary["episodes"] > 0
    r = _ppolab(["eval", str(run), "--episodes", "2"], cwd=USER_ENVS)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["episodes"] == 2 and 0.0 <= out["eval_return_mean"] <= 1.0


def test_user_env_module_in_process_with_env_kwargs(tmp_path, monkeypatch):
    """The same through the Python API: the corridor's length (an env kwarg) sets the shortest episode."""
    import ppolab

    monkeypatch.syspath_prepend(str(USER_ENVS))
    lengths = {}
    for n in (2, 6):
        cfg = Config(env="my_corridor:MyCorridor-v0", env_kwargs=f"length={n}", total_timesteps=512, num_envs=2,
                     num_steps=64, num_epochs=1, num_minibatches=2, eval_episodes=0, progress=False,
                     tensorboard=False, run_dir=str(tmp_path / f"r{n}"))
        ppolab.train(cfg)
        import csv

        rows = list(csv.DictReader(open(tmp_path / f"r{n}" / "metrics.csv")))
        lengths[n] = sum(int(r["episodes"]) for r in rows)
    assert lengths[2] > lengths[6] > 0  # a shorter corridor ends more episodes in the same steps


def test_unknown_user_module_is_one_line_error(tmp_path):
    r = _ppolab(["train", "--env", "no_such_module_xyz:Env-v0", "--run-dir", str(tmp_path / "r"), *TINY],
                cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("ppolab: error: --env 'no_such_module_xyz:Env-v0': cannot import module")
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()


@pytest.mark.parametrize("run_dir", ["/proc/forbidden/run", "/proc/self/run", "x" * 300])
def test_unwritable_run_dir_is_one_line_exit_2(tmp_path, capsys, run_dir):
    os.chdir(tmp_path)
    assert main(["train", "--run-dir", run_dir, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppolab: error: --run-dir") and "\n" not in err and "Traceback" not in err


def test_tyro_errors_are_the_message_only(capsys):
    assert main(["train", "--objective", "trpo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ppolab: error: ") and "\n" not in err and "---" not in err and "trpo" in err


def test_importing_config_imports_no_env_library():
    code = ("import sys, ppolab.config, ppolab.options; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('gymnasium', 'ray', 'gymnax', 'brax', 'envpool', "
            "'ale_py', 'mujoco') or m.startswith('ppolab.envs')]; print(bad); assert not bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_user_env_module_in_compare(tmp_path):
    """`ppolab compare --envs my_corridor:MyCorridor-v0` (module in the working directory only): the random policy and
    a tiny grid run on the user's env."""
    out = tmp_path / "cmp"
    r = _ppolab(["compare", "--envs", "my_corridor:MyCorridor-v0", "--settings", "cpi,clip-0.2", "--seeds", "1",
                 "--total-timesteps", "256", "--num-steps", "64", "--num-epochs", "1", "--num-minibatches", "2",
                 "--random-episodes", "3", "--out", str(out), "--no-progress"], cwd=USER_ENVS)
    assert r.returncode == 0, r.stderr[-2000:]
    random = json.loads((out / "random.json").read_text())["my_corridor:MyCorridor-v0"]
    assert random["episodes"] == 3 and len(random["returns"]) == 3
    assert (out / "compare.csv").read_text().count("my_corridor:MyCorridor-v0") == 2
