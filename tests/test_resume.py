"""Exact resume. A JAX env (gymnax) resumes bit for bit: final parameters and every metrics.csv row equal the
uninterrupted run's. A Gymnasium env restores the learner state exactly (episodes restart from seeds derived from the
run's seed and the iteration, see docs/checkpoints.md). metrics.csv and TensorBoard carry each iteration exactly
once. Training subprocesses are SIGKILLed between checkpoints and in the middle of a checkpoint write."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from _trust import (
    STEPS_PER_ITER,
    TINY,
    TINY_KW,
    assert_same_arrays,
    checkpoints,
    ckpt_iters,
    csv_rows,
    kill,
    start,
    strip_time,
    train_state_arrays,
    wait_for,
)

from ppolab import checkpoint as ck
from ppolab.config import Config
from ppolab.training import train

ITERS = 12


def _jit_available() -> str | None:
    try:
        import gymnax  # noqa: F401

        from ppolab.drivers.jit import JitDriver  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the optional driver
        return f"the JAX-env driver is not available ({type(e).__name__}: {e})"
    return None


needs_jit = pytest.mark.skipif(_jit_available() is not None, reason=str(_jit_available()))


def _cfg(run_dir, env="gymnax:CartPole-v1", iters=ITERS, **kw):
    values = dict(TINY_KW, total_timesteps=iters * STEPS_PER_ITER, checkpoint_every=4, keep_checkpoints=100, seed=7)
    return Config(env=env, run_dir=str(run_dir), **dict(values, **kw))


def _args(run_dir, env="gymnax:CartPole-v1", iters=ITERS, every=4):
    return ["train", *TINY, "--env", env, "--total-timesteps", str(iters * STEPS_PER_ITER), "--checkpoint-every",
            str(every), "--keep-checkpoints", "100", "--seed", "7", "--run-dir", str(run_dir)]


def _iterations(rows):
    return [int(r["iteration"]) for r in rows]


# ---- TensorBoard event files, read without TensorBoard ------------------------------------------------------------
def read_tb_scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of ``tag`` as TensorBoard shows it: files in order, a SessionLog START at step s (written for
    ``purge_step``) drops the earlier events at steps >= s. Fails on a duplicate step."""
    from tensorboardX.proto import event_pb2

    out: dict[int, float] = {}
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i: i + 8])
            if i + 12 + n + 4 > len(data):
                break  # a record cut short by a kill
            ev = event_pb2.Event.FromString(data[i + 12: i + 12 + n])
            i += 12 + n + 4
            if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
                out = {s: v for s, v in out.items() if s < ev.step}
            for v in ev.summary.value:
                if v.tag == tag:
                    assert ev.step not in out, f"duplicate TensorBoard step {ev.step} for {tag}"
                    out[ev.step] = v.simple_value
    return out


# ---- JAX env: bit-for-bit ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: gymnax CartPole, 12 iterations, checkpoints every 4 (all kept), TensorBoard on."""
    if _jit_available():
        pytest.skip(_jit_available())
    d = tmp_path_factory.mktemp("ref") / "run"
    res = train(_cfg(d, tensorboard=True))
    return d, res


@needs_jit
def test_resume_after_crash_between_checkpoints_is_bitwise_and_logs_once(uninterrupted, tmp_path):
    """The state a crash after checkpoint 4 leaves behind: metrics.csv and TensorBoard hold rows up to 12, the
    checkpoints 8 and 12 never made it. Resuming drops rows 5..12 and regenerates them exactly once."""
    ref, res = uninterrupted
    crashed = tmp_path / "run"
    shutil.copytree(ref, crashed)
    for p in checkpoints(crashed):
        if ck.iteration_of(p) > 4:
            p.unlink()
    (crashed / "summary.json").unlink()
    assert _iterations(csv_rows(crashed)) == list(range(1, ITERS + 1))  # the rows past the checkpoint are there
    train(Config(), resume=crashed)
    assert _iterations(csv_rows(crashed)) == list(range(1, ITERS + 1))
    assert strip_time(csv_rows(crashed)) == strip_time(csv_rows(ref))
    assert ckpt_iters(crashed) == [4, 8, 12]
    for it in (8, 12):
        name = f"ckpt-{it:08d}.ppolab"
        assert_same_arrays(train_state_arrays(crashed / "checkpoints" / name),
                           train_state_arrays(ref / "checkpoints" / name))
    # TensorBoard: every step exactly once (the resumed writer purges steps past the checkpoint), same values
    for tag in ("policy_loss", "value_loss"):
        got, want = read_tb_scalars(crashed / "tb", tag), read_tb_scalars(ref / "tb", tag)
        assert sorted(got) == [i * STEPS_PER_ITER for i in range(1, ITERS + 1)] == sorted(want)
        assert got == pytest.approx(want, rel=0, abs=0)


def test_tensorboard_reader_sees_duplicates(tmp_path):
    """Without the purge marker, a resumed writer would duplicate steps: the reader must notice."""
    from tensorboardX import SummaryWriter

    for i in range(2):
        w = SummaryWriter(str(tmp_path), filename_suffix=f".{i}")
        w.add_scalar("x", 1.0, 5)
        w.close()
    with pytest.raises(AssertionError, match="duplicate TensorBoard step 5"):
        read_tb_scalars(tmp_path, "x")
    good = tmp_path / "purged"
    for i, kw in enumerate(({}, {"purge_step": 5})):
        w = SummaryWriter(str(good), filename_suffix=f".{i}", **kw)
        w.add_scalar("x", 1.0 + i, 5)
        w.close()
    assert read_tb_scalars(good, "x") == {5: 2.0}


@needs_jit
def test_sigkill_during_checkpoint_write_then_resume_is_bitwise(uninterrupted, tmp_path):
    ref, _ = uninterrupted
    run = tmp_path / "run"
    proc = start(_args(run, every=2), env={"PPOLAB_TEST_SLOW_CKPT": "1.0"})
    ck_dir = run / "checkpoints"
    wait_for(lambda: ckpt_iters(run) == [2] and list(ck_dir.glob(".ckpt-00000004.ppolab.tmp-*")), 120, proc)
    kill(proc)
    assert proc.returncode == -9
    assert ckpt_iters(run) == [2] and list(ck_dir.glob(".ckpt-*.tmp-*"))  # the half-done write never became one
    ck.decode  # noqa: B018 - the survivor loads
    assert train_state_arrays(ck_dir / "ckpt-00000002.ppolab")
    res = train(Config(checkpoint_every=4), resume=run, explicit={"checkpoint_every": 4})
    assert not list(ck_dir.glob(".ckpt-*.tmp-*"))  # cleaned by the next write
    assert _iterations(csv_rows(run)) == list(range(1, ITERS + 1))
    assert strip_time(csv_rows(run)) == strip_time(csv_rows(ref))
    assert_same_arrays(train_state_arrays(ck_dir / f"ckpt-{ITERS:08d}.ppolab"),
                       train_state_arrays(ref / "checkpoints" / f"ckpt-{ITERS:08d}.ppolab"))
    assert res.summary["episodes"] == _load_summary(ref)["episodes"]


def _load_summary(run):
    import json

    return json.loads((Path(run) / "summary.json").read_text())


# ---- Gymnasium: learner state exact; each iteration logged once ------------------------------------------------
def test_gymnasium_sigkill_between_checkpoints(tmp_path):
    iters = 40
    ref = tmp_path / "ref"
    train(_cfg(ref, env="CartPole-v1", iters=iters))
    run = tmp_path / "run"
    proc = start(_args(run, env="CartPole-v1", iters=iters))
    # kill once checkpoint 8 exists and some rows past it have (or have not) reached the disk
    wait_for(lambda: 8 in ckpt_iters(run), 120, proc)
    wait_for(lambda: max(_iterations(csv_rows(run)) or [0]) >= 8, 30, proc)
    kill(proc)
    assert proc.returncode == -9
    last = ckpt_iters(run)[-1]
    assert last < iters and last % 4 == 0
    for p in checkpoints(run):  # none left corrupt; each equals the uninterrupted run's at that iteration
        assert_same_arrays(train_state_arrays(p), train_state_arrays(ref / "checkpoints" / p.name))
    rows_before = _iterations(csv_rows(run))
    assert rows_before[:last] == list(range(1, last + 1))
    train(Config(), resume=run)
    rows = csv_rows(run)
    assert _iterations(rows) == list(range(1, iters + 1))  # no duplicate, no gap
    assert strip_time(rows[:last]) == strip_time(csv_rows(ref)[:last])
    assert ckpt_iters(run)[-1] == iters
    assert (run / "summary.json").is_file()


def test_gymnasium_resume_restores_learner_state_exactly_and_continues_deterministically(tmp_path):
    """Two resumes from the same checkpoint give the same learner state (episodes restart from derived seeds)."""
    a = tmp_path / "a"
    train(_cfg(a, env="CartPole-v1", iters=10))  # the learner of test_checkpoint.py's run (TINY, 10 iterations)
    for p in checkpoints(a):
        if ck.iteration_of(p) > 4:
            p.unlink()
    b = tmp_path / "b"
    shutil.copytree(a, b)
    saved = train_state_arrays(a / "checkpoints" / "ckpt-00000004.ppolab")
    ra = train(Config(), resume=a)
    rb = train(Config(), resume=b)
    assert_same_arrays(train_state_arrays(a / "checkpoints" / "ckpt-00000010.ppolab"),
                       train_state_arrays(b / "checkpoints" / "ckpt-00000010.ppolab"))
    assert strip_time(csv_rows(a)) == strip_time(csv_rows(b))
    assert int(np.asarray(ra.state.iteration)[0]) == 10 == int(np.asarray(rb.state.iteration)[0])
    assert int(np.asarray(ra.state.env_steps)[0]) == 10 * STEPS_PER_ITER
    assert train_state_arrays(a / "checkpoints" / "ckpt-00000004.ppolab").keys() == saved.keys()


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, env="CartPole-v1", iters=10))
    newest = run / "checkpoints" / "ckpt-00000010.ppolab"
    newest.write_bytes(newest.read_bytes()[:-10])
    (run / "summary.json").unlink()
    with open(run / "metrics.csv", "a") as f:  # a row cut short by the kill, in the middle of its first field
        f.write("1")
    warnings = []

    class Console:
        def print(self, msg, *a, **k):
            warnings.append(str(msg))

    train(Config(), resume=run, console=Console())
    assert any("skipping checkpoint" in w and "checksum" in w for w in warnings)
    assert any("from ckpt-00000008.ppolab (iteration 8)" in w for w in warnings)
    assert ckpt_iters(run) == [4, 8, 10]
    assert train_state_arrays(run / "checkpoints" / "ckpt-00000010.ppolab")  # the rewritten one loads
    assert _iterations(csv_rows(run)) == list(range(1, 11))


def test_rows_reach_the_disk_before_their_checkpoint(tmp_path, monkeypatch):
    """A kill right after a checkpoint must not lose rows it vouches for: the CSV is flushed before each write."""
    run = tmp_path / "run"
    seen = {}
    real_save = ck.save

    def spy(ckpt_dir, iteration, tree, header, **kw):
        seen[iteration] = _iterations(csv_rows(run))
        return real_save(ckpt_dir, iteration, tree, header, **kw)

    monkeypatch.setattr(ck, "save", spy)
    train(_cfg(run, env="CartPole-v1", iters=10))
    assert seen == {4: [1, 2, 3, 4], 8: list(range(1, 9)), 10: list(range(1, 11))}


@needs_jit
def test_repeated_sigkills_at_random_times_then_resume_is_bitwise(uninterrupted, tmp_path):
    """Kill, resume, kill again (random moments after a checkpoint), resume: the same run as never interrupted."""
    import random
    import time

    ref, _ = uninterrupted
    rng = random.Random(20261125)
    run = tmp_path / "run"
    slow = {"PPOLAB_TEST_SLOW_CKPT": "0.3"}  # stretch the tiny run: kills land in writes and between them
    proc = start(_args(run, every=2), env=slow)
    prev, kills = 0, 0
    for attempt in range(2):
        wait_for(lambda p=prev: (ckpt_iters(run) or [0])[-1] > p, 120, proc)
        time.sleep(rng.uniform(0.0, 0.6))
        kill(proc)
        kills += proc.returncode == -9
        for p in checkpoints(run):  # whatever the moment, every checkpoint left behind loads
            ck.read(p)
        prev = ckpt_iters(run)[-1]
        if prev == ITERS or attempt == 1:
            break
        proc = start(["train", "--resume", str(run), "--no-progress"], env=slow)
    assert kills >= 1
    train(Config(), resume=run)
    assert strip_time(csv_rows(run)) == strip_time(csv_rows(ref))
    assert_same_arrays(train_state_arrays(run / "checkpoints" / f"ckpt-{ITERS:08d}.ppolab"),
                       train_state_arrays(ref / "checkpoints" / f"ckpt-{ITERS:08d}.ppolab"))


def test_a_resumed_tensorboard_writer_never_overwrites_the_earlier_event_file(tmp_path):
    """tensorboardX names event files by the second; a writer opened in the same second as an earlier one must not
    truncate that file (found when a resume followed its run within one second)."""
    from ppolab.logging import MetricsLogger
    from ppolab.update import METRIC_KEYS

    def rows(its):
        return [{"iteration": i, "agent": 0, "env_steps": i * 10, "time_s": 0.0, "episodes": 0,
                 "episode_return": float(i), "return_recent": float(i), **{k: float(i) for k in METRIC_KEYS}}
                for i in its]

    first = MetricsLogger(tmp_path, tensorboard=True, steps_per_iteration=10)
    first.log(rows(range(1, 7)))
    first.close()
    second = MetricsLogger(tmp_path, tensorboard=True, resume_iteration=4, steps_per_iteration=10)  # same second
    second.log(rows(range(5, 9)))
    second.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 2
    assert read_tb_scalars(tmp_path / "tb", "policy_loss") == {i * 10: float(i) for i in range(1, 9)}
