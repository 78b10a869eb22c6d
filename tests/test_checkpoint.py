"""Checkpoints: no pickle anywhere, exact round trip, corrupted / truncated / foreign / malicious files refused with a
clear message, fallback to the previous good one, atomic writes, keep N, never a non-finite train state."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
from pathlib import Path

import jax
import msgpack
import numpy as np
import pytest
from _trust import TINY_KW, ckpt_iters, train_state_arrays

import ppolab
from ppolab import checkpoint as ck
from ppolab.assembly import init_population, make_driver, net_signature
from ppolab.checkpoint import CheckpointError
from ppolab.cli import main as cli_main
from ppolab.config import Config, agent_table
from ppolab.training import train

SRC = Path(ppolab.__file__).parent


# ---- no pickle -----------------------------------------------------------------------------------------------------
UNSAFE = re.compile(r"\b(import\s+(c?pickle|cloudpickle|dill|shelve|marshal|joblib)|from\s+(c?pickle|cloudpickle|dill|"
                    r"shelve|joblib)\s+import|pickle\.loads?\(|torch\.load\(|allow_pickle\s*=\s*True|"
                    r"yaml\.(unsafe_)?load\(|np\.load\(|numpy\.load\(|eval\(|exec\()")


def scan_for_unsafe(root: Path) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if UNSAFE.search(code):
                hits.append(f"{path.relative_to(root.parent)}:{i}: {line.strip()}")
    return hits


def test_package_source_has_no_pickle_or_code_loading():
    assert scan_for_unsafe(SRC) == []


def test_pickle_scanner_can_fail(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("import pickle\nx = 1\n")
    (pkg / "b.py").write_text("import numpy as np\nd = np.load(f, allow_pickle=True)\n")
    (pkg / "c.py").write_text("import yaml\nyaml.safe_load(s)  # fine\n")
    hits = scan_for_unsafe(pkg)
    assert len(hits) == 2 and "a.py:1" in hits[0] and "b.py:2" in hits[1]


# ---- a real run's checkpoints -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """10 iterations of tiny CartPole, a checkpoint every 2 iterations, keep 2: leaves ckpt 8 and 10."""
    d = tmp_path_factory.mktemp("ck") / "run"
    cfg = Config(run_dir=str(d), total_timesteps=320, checkpoint_every=2, keep_checkpoints=2, seed=3, **TINY_KW)
    res = train(cfg)
    return d, res


def _template(cfg):
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    try:
        t = {"train_state": init_population(cfg, net, spec, rows), "driver_state": driver.driver_state()}
        return t, {"network": net_signature(net), "agents": len(rows)}
    finally:
        driver.close()


def test_keep_checkpoints_and_final_state_round_trip(run):
    d, res = run
    assert ckpt_iters(d) == [8, 10]
    template, expect = _template(res.config)
    tree, header, path = ck.restore_latest(d / "checkpoints", template, expect)
    assert path.name == "ckpt-00000010.ppolab" and header["iteration"] == 10
    assert header["format_version"] == ck.FORMAT_VERSION and header["config"]["seed"] == 3
    got = jax.tree_util.tree_leaves_with_path(tree["train_state"])
    want = dict(jax.tree_util.tree_leaves_with_path(res.state))
    assert len(got) == len(want)
    for p, x in got:  # params, opt state, RNG key, normalization stats, beta, iteration, env_steps, hparams
        np.testing.assert_array_equal(np.asarray(x), np.asarray(want[p]), err_msg=jax.tree_util.keystr(p))
    assert int(np.asarray(tree["train_state"].iteration)[0]) == 10
    assert int(np.asarray(tree["train_state"].env_steps)[0]) == 10 * 32


def test_keep_checkpoints_flag_via_cli(tmp_path, capsys):
    d = tmp_path / "r"
    # the shapes and length of the module's run (10 iterations): the same compiled learner, no second compile
    code = cli_main(["train", "--env", "CartPole-v1", "--num-envs", "2", "--num-steps", "16", "--num-epochs", "1",
                     "--num-minibatches", "1", "--eval-episodes", "0", "--no-tensorboard", "--no-progress",
                     "--total-timesteps", "320", "--checkpoint-every", "1", "--keep-checkpoints", "2",
                     "--run-dir", str(d)])
    assert code == 0, capsys.readouterr().err
    assert ckpt_iters(d) == [9, 10]
    code = cli_main(["train", "--keep-checkpoints", "0", "--run-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--keep-checkpoints must be >= 1 (got 0)" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


# ---- corrupted, truncated, foreign ---------------------------------------------------------------------------------
@pytest.fixture
def copy(run, tmp_path):
    d, res = run
    dst = tmp_path / "checkpoints"
    dst.mkdir()
    for p in (d / "checkpoints").iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    template, expect = _template(res.config)
    return dst, template, expect


def _mutate(path: Path, fn):
    path.write_bytes(fn(path.read_bytes()))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "truncated or corrupted (payload checksum mismatch)"),
    (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "truncated or corrupted (payload checksum mismatch)"),
    (lambda b: b[:5], "is truncated (5 bytes)"),
    (lambda b: b"", "bad magic bytes"),
    (lambda b: b"GARBAGE!" + b[8:], "not a ppolab checkpoint (bad magic bytes)"),
    (lambda b: b[:8] + struct.pack("<I", 99) + b[12:], "has format version 99; this ppolab reads version 1"),
    (lambda b: b[:16] + b"\xff\xfe" + b[18:], "corrupted header"),
    (lambda b: b[:12] + struct.pack("<I", 10**9) + b[16:], "truncated (header cut short)"),
    (lambda b: pickle.dumps({"params": [1, 2, 3]}), "bad magic bytes"),
])
def test_damaged_newest_is_refused_and_restore_falls_back(copy, damage, message):
    dst, template, expect = copy
    newest = dst / "ckpt-00000010.ppolab"
    _mutate(newest, damage)
    with pytest.raises(CheckpointError) as e:
        ck.decode(newest, template, expect)
    assert message in str(e.value) and str(newest) in str(e.value)
    warnings = []
    tree, header, path = ck.restore_latest(dst, template, expect, warn=warnings.append)
    assert path.name == "ckpt-00000008.ppolab" and header["iteration"] == 8
    assert len(warnings) == 1 and message in warnings[0]


def test_header_that_is_not_an_object_is_refused(copy):
    dst, template, expect = copy
    _, payload = ck.read_header(dst / "ckpt-00000010.ppolab")
    for hdr in (b"[1, 2]", b'"text"', b"{}", json.dumps({"format_version": 1, "leaves": 3, "iteration": 1}).encode()):
        bad = dst / "ckpt-00000011.ppolab"
        bad.write_bytes(ck.MAGIC + struct.pack("<II", 1, len(hdr)) + hdr + payload)
        with pytest.raises(CheckpointError, match="corrupted header"):
            ck.decode(bad, template, expect)


def test_all_checkpoints_bad_gives_one_clear_error(copy):
    dst, template, expect = copy
    for p in dst.iterdir():
        _mutate(p, lambda b: b[:-3])
    with pytest.raises(CheckpointError, match=r"no usable checkpoint: .*ckpt-00000010.*checksum.*ckpt-00000008"):
        ck.restore_latest(dst, template, expect, warn=lambda m: None)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        ck.restore_latest(dst / "nothing", template, expect)


def test_foreign_network_and_spaces_are_refused(copy):
    dst, template, expect = copy
    path = dst / "ckpt-00000010.ppolab"
    # another network (hidden sizes) -> another signature and other leaf shapes
    other_t, other_e = _template(Config(hidden_sizes=(8,), **TINY_KW))
    with pytest.raises(CheckpointError, match=r"belongs to another run: its network is .*hidden=\[64, 64\].*"
                                              r"this run has .*hidden=\[8\]"):
        ck.decode(path, other_t, other_e)
    with pytest.raises(CheckpointError, match="does not match this run's network/state layout"):
        ck.decode(path, other_t, None)
    # another env's spaces (Acrobot: 6 observations, 3 actions)
    acro_t, acro_e = _template(Config(env="Acrobot-v1", **TINY_KW))
    with pytest.raises(CheckpointError, match=r"its network is 'obs=\[4\].*this run has 'obs=\[6\]"):
        ck.decode(path, acro_t, acro_e)
    with pytest.raises(CheckpointError, match="its agents is 1, this run has 2"):
        ck.decode(path, template, dict(expect, agents=2))


def test_resume_of_run_with_foreign_checkpoints_fails_cleanly(run, tmp_path, capsys):
    d, res = run
    foreign = tmp_path / "acro"
    foreign.mkdir()
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(env="Acrobot-v1", run_dir=str(foreign))
    (foreign / "config.json").write_text(json.dumps(cfg))
    (foreign / "checkpoints").mkdir()
    src = d / "checkpoints" / "ckpt-00000010.ppolab"
    (foreign / "checkpoints" / src.name).write_bytes(src.read_bytes())
    before = sorted((p.name, p.stat().st_mtime_ns) for p in foreign.rglob("*"))
    code = cli_main(["train", "--resume", str(foreign)])
    (foreign / ".ppolab.lock").unlink()  # the run directory's lock (runlock.py), taken before the checkpoint is read
    err = capsys.readouterr().err
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ppolab: error: no usable checkpoint") and "belongs to another run" in last
    assert "Traceback" not in err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in foreign.rglob("*")) == before  # nothing written


# ---- malicious payloads --------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forge(path: Path, template_header: dict, payload: bytes):
    header = dict(template_header, payload_sha256=hashlib.sha256(payload).hexdigest(), payload_bytes=len(payload))
    hdr = json.dumps(header, sort_keys=True).encode()
    path.write_bytes(ck.MAGIC + struct.pack("<II", ck.FORMAT_VERSION, len(hdr)) + hdr + payload)


def _replace_first_leaf(state_dict, value):
    """Replace the first array leaf of a nested dict payload (the first parameter) by ``value``."""
    for k, v in state_dict.items():
        if isinstance(v, dict):
            if _replace_first_leaf(v, value):
                return True
        elif isinstance(v, np.ndarray):
            state_dict[k] = value
            return True
    return False


@pytest.mark.parametrize("kind", ["pickle_as_bytes", "object_dtype_ext", "pickle_whole_payload"])
def test_malicious_checkpoint_executes_nothing(copy, tmp_path, kind):
    dst, template, expect = copy
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker))
    good = dst / "ckpt-00000010.ppolab"
    header, payload = ck.read_header(good)
    state = ck.read(good)[0]
    if kind == "pickle_as_bytes":  # a leaf replaced by the pickle's bytes (msgpack bin)
        assert _replace_first_leaf(state, evil)
        new = msgpack.packb(state, default=_np_ext, use_bin_type=True)
    elif kind == "object_dtype_ext":  # flax's ndarray extension claiming dtype object over the pickle bytes
        assert _replace_first_leaf(state, msgpack.ExtType(1, msgpack.packb(((len(evil),), "O", evil))))
        new = msgpack.packb(state, default=_np_ext, use_bin_type=True)
    else:
        new = evil
    bad = dst / "ckpt-00000011.ppolab"
    _forge(bad, header, new)
    with pytest.raises(CheckpointError) as e:
        ck.decode(bad, template, expect)
    assert str(bad) in str(e.value)
    if kind == "pickle_as_bytes":  # loaded as plain bytes, never unpickled
        raw, _ = ck.read(bad)
        flat = jax.tree_util.tree_leaves(raw)
        assert any(isinstance(x, bytes) and x == evil for x in flat)
    assert not marker.exists()


def test_forged_header_fields_are_plain_data(copy, tmp_path):
    dst, template, expect = copy
    marker = tmp_path / "pwned"
    good = dst / "ckpt-00000010.ppolab"
    header, payload = ck.read_header(good)
    bad = dst / "ckpt-00000011.ppolab"
    _forge(bad, dict(header, host={"episodes": pickle.dumps(_Evil(marker)).hex()}), payload)
    tree, hdr = ck.decode(bad, template, expect)
    assert isinstance(hdr["host"]["episodes"], str)
    assert not marker.exists()


def _np_ext(x):
    if isinstance(x, np.ndarray):
        return msgpack.ExtType(1, msgpack.packb((x.shape, x.dtype.name, x.tobytes())))
    return x


# ---- atomic writes, pruning, refusing bad states -------------------------------------------------------------------
def _tiny_tree(v=1.0):
    return {"train_state": {"w": np.full((3,), v, np.float32), "step": np.asarray(7, np.int32)}, "driver_state": None}


def test_save_refuses_nonfinite_train_state_and_keeps_last_good(tmp_path):
    ck.save(tmp_path, 1, _tiny_tree(1.0), {})
    with pytest.raises(CheckpointError, match=r"refusing to write checkpoint 2: non-finite values in \['w'\]"):
        ck.save(tmp_path, 2, _tiny_tree(np.nan), {})
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-00000001.ppolab"]
    tree, header = ck.decode(tmp_path / "ckpt-00000001.ppolab", _tiny_tree(0.0))
    assert tree["train_state"]["w"].tolist() == [1.0, 1.0, 1.0]
    ck.save(tmp_path, 3, _tiny_tree(np.inf), {}, check_finite=False)  # explicit opt-out (tests, tools)
    assert ck.nonfinite_leaves(_tiny_tree(np.inf)) == ["['train_state']['w']"]


def test_keep_prunes_oldest_and_stale_temp_files_go(tmp_path):
    stale = tmp_path / ".ckpt-00000002.ppolab.tmp-999999"
    stale.write_bytes(b"half a checkpoint")
    for i in range(1, 6):
        ck.save(tmp_path, i, _tiny_tree(i), {}, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-00000004.ppolab", "ckpt-00000005.ppolab"]
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000004.ppolab", "ckpt-00000005.ppolab"]
    with pytest.raises(CheckpointError, match="keep must be >= 1"):
        ck.save(tmp_path, 6, _tiny_tree(), {}, keep=0)


def test_numbering_sorts_numerically_past_eight_digits(tmp_path):
    ck.save(tmp_path, 99_999_999, _tiny_tree(1), {}, keep=5)
    ck.save(tmp_path, 100_000_000, _tiny_tree(2), {}, keep=5)
    assert ck.iteration_of(ck.list_checkpoints(tmp_path)[-1]) == 100_000_000
    tree, header, path = ck.restore_latest(tmp_path, _tiny_tree(0))
    assert header["iteration"] == 100_000_000


def test_saving_an_older_iteration_orphans_newer_unusable_ones(tmp_path):
    """After a resume fell back past a corrupt newest checkpoint, pruning must never delete the fresh one."""
    ck.save(tmp_path, 10, _tiny_tree(1), {}, keep=1)
    newest = tmp_path / "ckpt-00000020.ppolab"
    newest.write_bytes(b"PPOLABCK corrupt")
    ck.save(tmp_path, 15, _tiny_tree(2), {}, keep=1)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["ckpt-00000015.ppolab"]
    assert (tmp_path / "ckpt-00000020.ppolab.orphaned").exists()


def test_checkpoint_holds_every_learner_field(run):
    d, res = run
    a = train_state_arrays(d / "checkpoints" / "ckpt-00000010.ppolab")
    assert len(a) == len(jax.tree_util.tree_leaves(res.state))
    names = " ".join(a)
    for field in ("params", "opt_state", "hparams", "beta", "obs_stats", "ret_stats", "iteration", "env_steps", "key"):
        assert field in names, field


@pytest.mark.parametrize("host", ["text", {"episodes": "9", "recent": [[1.0]], "wall_time_s": 0}, {"recent": 3}])
def test_resume_ignores_malformed_host_counters(run, tmp_path, host):
    """A header is data from a file: a forged or damaged field must not crash the resume."""
    import shutil

    d, _ = run
    copy_dir = tmp_path / "run"
    shutil.copytree(d, copy_dir)
    newest = copy_dir / "checkpoints" / "ckpt-00000010.ppolab"
    header, payload = ck.read_header(newest)
    _forge(newest, dict(header, host=host), payload)
    (copy_dir / "summary.json").unlink()  # as if stopped before its summary (a finished run is not resumed)
    res = train(Config(), resume=copy_dir)
    assert int(np.asarray(res.state.iteration)[0]) == 10 and res.summary["episodes"] == 0


def test_failed_write_disk_full_keeps_previous_checkpoints(tmp_path, monkeypatch):
    import errno

    ck.save(tmp_path, 1, _tiny_tree(1.0), {})
    before = (tmp_path / "ckpt-00000001.ppolab").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.os, "fsync", full)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*ckpt-00000002.ppolab: No space left on "
                                              r"device; the previous checkpoints are kept"):
        ck.save(tmp_path, 2, _tiny_tree(2.0), {})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-00000001.ppolab"]  # no temp file left either
    assert (tmp_path / "ckpt-00000001.ppolab").read_bytes() == before
