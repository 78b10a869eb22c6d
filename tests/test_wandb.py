"""W&B logging in offline mode (no network): the run directory's wandb/ folder holds the logged metrics.csv rows.

The offline ``.wandb`` file is read back record by record: a 7-byte W&B header, then LevelDB log blocks of
protobuf ``Record`` messages (``wandb.proto.wandb_internal_pb2``), the format ``wandb sync`` uploads."""

from __future__ import annotations

import csv
import json
import math
import struct
import time
import zlib
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from ppolab.config import ConfigError  # noqa: E402
from ppolab.wandb_sink import WandbSink  # noqa: E402

BLOCK = 32768


def read_records(path: Path) -> list:
    """Every complete protobuf Record of an offline .wandb file (checksums verified)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if (length == 0 and kind == 0) or pos + 7 + length > len(data):
            break  # the end, or a record still being written
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def history(run_dir: Path, timeout: float = 30.0) -> list[dict]:
    """The W&B history rows of the single offline run in RUN_DIR/wandb. wandb-core finishes writing the file shortly
    after ``run.finish()`` returns (its stream is closed asynchronously): wait for the exit record."""
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [{"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_sink_logs_the_rows_of_a_population_offline(offline, tmp_path):
    rows = [{"iteration": i, "agent": k, "env_steps": 128 * i, "time_s": 0.1 * i, "episodes": 3,
             "episode_return": float("nan") if i == 1 else 10.0 * i + k, "return_recent": 5.0 + i,
             "kl": 0.01 * i, "clip_fraction": 0.1, "beta": 1.0, "num_agents": 2} for i in (1, 2, 3) for k in (0, 1)]
    with WandbSink("ppolab-test", tmp_path / "run", {"env": "CartPole-v1", "clip_eps": 0.2}) as sink:
        sink.log(rows)
        sink.log_summary({"eval_return_mean": 42.0, "env_id": "CartPole-v1", "agents": [{}]})
    hist = history(tmp_path / "run")
    assert [h["env_steps"] for h in hist] == [128, 256, 384]  # one W&B row per iteration, step = env_steps
    assert hist[2]["agent1/episode_return"] == 31.0 and hist[2]["agent0/kl"] == pytest.approx(0.03)
    assert "agent0/episode_return" not in hist[0]  # NaN (no finished episode) is left out, as in metrics.csv
    assert all(h["_step"] == h["env_steps"] for h in hist)
    assert (tmp_path / "run" / "wandb" / "ppolab-run-id").read_text().strip()


def test_training_run_rows_match_metrics_csv(offline, tmp_path):
    import ppolab

    run = tmp_path / "run"
    # the tiny CartPole run of test_export.py and test_policy_api.py: the same compiled learner
    ppolab.train(ppolab.Config(env="CartPole-v1", total_timesteps=512, num_envs=4, num_steps=64, num_epochs=2,
                               eval_episodes=0, progress=False, tensorboard=False, run_dir=str(run)))
    with open(run / "metrics.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    config = json.loads((run / "config.json").read_text())
    sink = WandbSink("ppolab-test", run, config, mode="offline")
    sink.log([dict(r, num_agents=1) for r in csv_rows])  # the trainer passes the same dicts it writes to the CSV
    sink.close()
    hist = history(run)
    assert len(hist) == len(csv_rows) == 2
    for h, r in zip(hist, csv_rows, strict=True):
        assert h["env_steps"] == int(r["env_steps"])
        for k in ("kl", "clip_fraction", "entropy", "explained_variance", "beta", "return_recent"):
            if r[k] != "":
                assert math.isclose(h[k], float(r[k]), rel_tol=1e-9), k


def test_resume_continues_the_same_run_id(offline, tmp_path):
    row = {"agent": 0, "env_steps": 64, "kl": 0.1}
    with WandbSink("p", tmp_path / "run", {}) as first:
        first.log([row])
        run_id = first.run.id
    with WandbSink("p", tmp_path / "run", {}) as second:
        second.log([dict(row, env_steps=32), dict(row, env_steps=128)])  # a step that goes back is skipped
        assert second.run.id == run_id


def test_bad_arguments_are_one_line_errors(offline, tmp_path):
    with pytest.raises(ConfigError, match="non-empty name"):
        WandbSink("", tmp_path / "run", {})
    with pytest.raises(ConfigError, match="mode 'sometimes'"):
        WandbSink("p", tmp_path / "run", {}, mode="sometimes")
    assert not (tmp_path / "run").exists()
