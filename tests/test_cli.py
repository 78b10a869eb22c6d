"""The command line: a full default-style run directory, eval, and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest

from ppolab.cli import main

# the learner of tests/test_export.py's, test_policy_api.py's, test_learning.py's... tiny CartPole runs (4 x 64 steps, 2
# epochs, 2 iterations): compiled once per session
TINY = ["--total-timesteps", "512", "--num-envs", "4", "--num-steps", "64", "--num-epochs", "2",
        "--eval-episodes", "2", "--no-progress"]


def test_train_writes_every_artifact_and_eval_reloads(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *TINY]) == 0
    for name in ("config.json", "metrics.csv", "learning_curve.png", "summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert list((run / "checkpoints").glob("ckpt-*.ppolab"))
    summary = json.loads((run / "summary.json").read_text())
    for key in ("env_id", "objective", "total_timesteps", "eval_return_mean", "eval_return_std", "wall_time_s", "sps"):
        assert key in summary, key
    assert summary["env_id"] == "CartPole-v1" and summary["total_timesteps"] == 512
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "3", "--video"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 3 and out["eval_return_mean"] > 0
    assert (run / "videos" / "episode.mp4").stat().st_size > 1000


def test_preset_then_flags_override(tmp_path):
    from ppolab.cli import parse_train_args
    from ppolab.config import apply_preset

    cfg, explicit, _ = parse_train_args(["--preset", "paper-mujoco", "--clip-eps", "0.3", "--env", "Swimmer-v5"])
    cfg = apply_preset(cfg, {k: getattr(cfg, k) for k in explicit})
    assert (cfg.num_steps, cfg.num_minibatches, cfg.num_epochs, cfg.learning_rate) == (2048, 32, 10, 3e-4)
    assert cfg.clip_eps == 0.3 and cfg.env == "Swimmer-v5" and cfg.max_grad_norm is None


def test_sweep_lists_parse():
    from ppolab.cli import parse_train_args
    from ppolab.config import agent_table

    cfg, _, _ = parse_train_args(["--clip-eps", "0.1,0.2,0.3", "--num-seeds", "2"])
    assert cfg.clip_eps == (0.1, 0.2, 0.3)
    rows = agent_table(cfg)
    assert len(rows) == 6 and sorted({r["clip_eps"] for r in rows}) == [0.1, 0.2, 0.3]


BAD = [
    (["--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["--env", "ppolab/TupleAction-v0"], "not supported"),
    (["--preset", "nope"], "nope"),
    (["--objective", "ppo9"], "ppo9"),
    (["--num-minibatches", "3"], "--num-minibatches 3"),
    (["--clip-eps", "0"], "--clip-eps"),
    (["--clip-eps", "-0.1"], "--clip-eps"),
    (["--gamma", "1.5"], "--gamma"),
    (["--gamma", "0"], "--gamma"),
    (["--num-envs", "0"], "--num-envs"),
    (["--total-timesteps", "abc"], "abc"),
    (["--learning-rate", "0.1,-1"], "--learning-rate"),
    (["--bogus-flag", "1"], "bogus"),
]


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    code = main(["train", "--run-dir", str(run), *TINY, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("ppolab: error:") and "\n" not in err, err
    assert needle in err
    assert "Traceback" not in err
    assert not run.exists()


def test_existing_run_dir_is_not_clobbered(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep")
    assert main(["train", "--run-dir", str(run), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "precious.txt").read_text() == "keep"


def test_cli_subprocess_error_has_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ppolab.cli", "train", "--env", "Nope-v9", "--run-dir",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1 and "Nope-v9" in p.stderr
    assert not (tmp_path / "r").exists()


def test_help_lists_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--objective" in out and "--clip-eps" in out and "Horizon T" in out
