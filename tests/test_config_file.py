"""Issue 16 (4): --config files are bounded. The loader keeps the CLI's behaviour (YAML, TOML, JSON; dashes or
underscores; one-line errors) and refuses at once a YAML bomb, anchors and aliases, a file over the size limit,
deep nesting, too many values, a FIFO or device, and never prints an unbounded value."""

from __future__ import annotations

import os

import pytest
from _faults import no_hang, unblock_fifo

from ppolab.config import ConfigError
from ppolab.config_file import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_NODES, load_config_file

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)) + \
    "clip_eps: [*i, *i, *i, *i, *i, *i, *i, *i, *i]\n"


def write(tmp_path, name: str, text: str | bytes):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def refused(path, *fragments: str) -> str:
    with pytest.raises(ConfigError) as e:
        no_hang(lambda: load_config_file(str(path)), 20, "loading the config file")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400 and all(f in msg for f in fragments), msg
    return msg


@pytest.mark.parametrize("name, text, want", [
    ("c.yaml", "num-envs: 4\nclip_eps: [0.1, 0.2]\nhidden_sizes: [16, 16]\n",
     {"num_envs": 4, "clip_eps": [0.1, 0.2], "hidden_sizes": [16, 16]}),
    ("c.yml", "env: CartPole-v1\nvf_clip: null\n", {"env": "CartPole-v1", "vf_clip": None}),
    ("c.toml", 'num-envs = 4\nobjective = "pg"\nclip_eps = [0.1, 0.3]\n',
     {"num_envs": 4, "objective": "pg", "clip_eps": [0.1, 0.3]}),
    ("c.json", '{"num-envs": 2, "normalize_obs": false}', {"num_envs": 2, "normalize_obs": False}),
    ("c.yaml", "", {}),
    ("c.yaml", "# only a comment\n", {}),
    ("C.YAML", "seed: 3\n", {"seed": 3}),
])
def test_same_results_as_before(tmp_path, name, text, want):
    assert load_config_file(write(tmp_path, name, text)) == want
    assert load_config_file(str(tmp_path / name)) == want


@pytest.mark.parametrize("name, text, fragments", [
    ("c.yaml", "num_envs: [4\n", ["--config", "cannot be parsed"]),
    ("c.yaml", "- 1\n- 2\n", ["must hold a mapping of option names to values"]),
    ("c.yaml", "!!python/object/apply:os.system ['touch pwned']\n", ["cannot be parsed"]),
    ("c.toml", "gamma = \n", ["cannot be parsed"]),
    ("c.ini", "a=1", ["unknown file type '.ini'; use .yaml, .yml, .toml or .json"]),
    ("c.yaml", b"seed: \xff\xfe\n", ["is not UTF-8 text"]),
    ("c.yaml", "seed: " + "9" * 5000 + "\n", ["cannot be parsed"]),
    ("c.toml", "seed = " + "9" * 5000 + "\n", ["cannot be parsed"]),
    ("c.yaml", "[1, 2]: 3\n", ["cannot be parsed"]),
])
def test_bad_files_give_one_line(tmp_path, name, text, fragments):
    refused(write(tmp_path, name, text), *fragments)
    assert not (tmp_path / "pwned").exists()


def test_missing_file_and_not_a_file(tmp_path):
    refused(tmp_path / "missing.yaml", f"--config '{tmp_path / 'missing.yaml'}' does not exist or is not a file")
    (tmp_path / "d.yaml").mkdir()
    refused(tmp_path / "d.yaml", "does not exist or is not a file")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    refused(tmp_path / "zero.yaml", "does not exist or is not a file")
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    try:
        refused(fifo, "does not exist or is not a file")
    finally:
        unblock_fifo(fifo)
    (tmp_path / "real.yaml").write_text("seed: 1\n")
    (tmp_path / "link.yaml").symlink_to(tmp_path / "real.yaml")  # a symlink to a regular file is fine
    assert load_config_file(tmp_path / "link.yaml") == {"seed": 1}


def test_yaml_bomb_is_refused_at_once(tmp_path):
    """800 bytes of aliases that expand to 9**10 values when walked (config._coerce's repr did that)."""
    assert len(BOMB) < 900
    refused(write(tmp_path, "bomb.yaml", BOMB), "is refused: YAML anchors and aliases (& and *) are not allowed")
    refused(write(tmp_path, "one.yaml", "seed: &s 1\nnum_envs: *s\n"), "anchors and aliases")
    refused(write(tmp_path, "merge.yml", "base: &b {seed: 1}\nother:\n  <<: *b\n"), "anchors and aliases")


def test_size_limit(tmp_path):
    refused(write(tmp_path, "big.yaml", "seed: 1\n" + "#" * MAX_CONFIG_BYTES), f"is larger than "
            f"{MAX_CONFIG_BYTES // 1024} KiB")
    sparse = tmp_path / "sparse.toml"  # a huge file is never read whole
    sparse.write_bytes(b"seed = 1\n")
    os.truncate(sparse, 2**33)
    refused(sparse, "is larger than")


@pytest.mark.parametrize("name, text", [
    ("deep.yaml", "clip_eps: " + "[" * 60 + "]" * 60 + "\n"),
    ("deep.json", '{"clip_eps": ' + "[" * 5000 + "]" * 5000 + "}"),
    ("deep.toml", "clip_eps = " + "[" * 60 + "]" * 60 + "\n"),
    ("deeper.toml", "clip_eps = " + "[" * 5000 + "]" * 5000 + "\n"),
    ("deep2.yaml", "a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 40)) + "  " * 40 + "v\n"),
])
def test_nesting_bound(tmp_path, name, text):
    refused(write(tmp_path, name, text), "is refused: it is nested deeper than", str(MAX_DEPTH))


def test_value_count_bound(tmp_path):
    refused(write(tmp_path, "many.yaml", "clip_eps: [" + ", ".join(["0.1"] * (MAX_NODES + 1)) + "]\n"),
            f"more than {MAX_NODES} values")
    refused(write(tmp_path, "many.toml", "clip_eps = [" + ", ".join(["0.1"] * (MAX_NODES + 1)) + "]\n"),
            f"more than {MAX_NODES} values")


def test_messages_never_print_unbounded_values(tmp_path):
    msg = refused(write(tmp_path, "key.toml", "k" * 100_000 + " = 1\n"), "is not a config option name")
    assert "kkk..." in msg
    msg = refused(write(tmp_path, "err.yaml", "seed: 'unterminated " + "y" * 100_000 + "\n"), "cannot be parsed")
    assert "yyyyyyyyyy" * 20 not in msg
    long_value = load_config_file(write(tmp_path, "v.yaml", "env: " + "e" * 100_000 + "\n"))  # types: from_dict's
    assert len(long_value["env"]) == 100_000
