"""``RUN_DIR/policy.json``: what ``ppolab.load`` and ``ppolab export`` rebuild a run's network from, without an env.

Written when a run starts (``write_policy_spec``): the observation and action specs (shape, dtype, kind, bounds,
nvec), the network's layout (every field of the network: MLP sizes, activation, ...; for ``--policy lstm|gru`` also
``cell``, ``rnn_size`` and ``separate``, so ``build_network`` rebuilds a ``recurrent.RecurrentActorCritic``),
``policy`` (feedforward, lstm or gru), whether observations are normalized and, where the writer knows it,
``action_mask``: whether the run acted with action masks. Runs written before the file existed are described from
the checkpoint header's network signature and ``config.json`` (their Box bounds are not stored).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from ppolab.config import ConfigError
from ppolab.networks import ActorCritic
from ppolab.recurrent import RecurrentActorCritic
from ppolab.spaces import ActionSpec, ObsSpec

SPEC_FILE = "policy.json"
SPEC_VERSION = 1
_NET_SKIP = ("obs", "action", "parent", "name")
_SIG = re.compile(r"obs=\[(?P<obs>[\d, ]*)\]:(?P<dtype>\w+) action=(?P<kind>\w+):(?P<size>\d+):\[(?P<nvec>[\d, ]*)\] "
                  r"hidden=\[(?P<hidden>[\d, ]*)\] act=(?P<act>\w+) shared=(?P<shared>True|False)"
                  r"( cell=(?P<cell>\w+):(?P<rnn>\d+) separate=(?P<separate>True|False))?"
                  r"( heads=\[(?P<heads>[\d, ]*)\])?")


def _bounds(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]  # JSON has no inf: null = unbounded


def _signature(net: ActorCritic) -> str:
    """The checkpoint header's network signature of ``net`` (imported on use: assembly pulls in the drivers)."""
    from ppolab.assembly import net_signature

    return net_signature(net)


def policy_spec(net: ActorCritic, normalize_obs: bool, action_mask: bool | None = None) -> dict:
    """The JSON-able description of ``net`` that ``build_network`` rebuilds the network from. ``action_mask``:
    whether the run acts with action masks (None: not recorded; ``ppolab export`` then asks the run's env)."""
    a = net.action
    layout = {f.name: getattr(net, f.name) for f in dataclasses.fields(net) if f.name not in _NET_SKIP}
    layout = {k: list(v) if isinstance(v, tuple) else v for k, v in layout.items()}
    spec = {"format": "ppolab-policy", "version": SPEC_VERSION,
            "obs": {"shape": list(net.obs.shape), "dtype": net.obs.dtype, "image": net.obs.image},
            "action": {"kind": a.kind, "size": a.size, "nvec": list(a.nvec), "low": _bounds(a.low),
                       "high": _bounds(a.high), "shape": list(a.shape), "dtype": np.dtype(a.dtype).name},
            "policy": net.cell if net.recurrent else "feedforward",
            "network": layout, "normalize_obs": bool(normalize_obs), "signature": _signature(net)}
    if action_mask is not None:
        spec["action_mask"] = bool(action_mask)
    return spec


def write_policy_spec(run_dir: str | os.PathLike, net: ActorCritic, normalize_obs: bool,
                      action_mask: bool | None = None) -> Path:
    """Write ``RUN_DIR/policy.json`` (atomically). Call when a run starts, with ``cfg.normalize_obs`` (and whether
    the driver acts with masks, where known)."""
    path = Path(run_dir) / SPEC_FILE
    tmp = path.with_name(f".{SPEC_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(policy_spec(net, normalize_obs, action_mask), indent=1))
    os.replace(tmp, path)
    return path


def _spec_from_signature(signature: str, config: dict) -> dict:
    """policy.json's content for a run without one: the checkpoint header's network signature + config.json."""
    m = _SIG.fullmatch(signature or "")
    if m is None:
        raise ConfigError(f"cannot read the network signature {signature!r} of this checkpoint; "
                          "it was written by another ppolab version")
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]
    size = int(m["size"])
    shape = [] if m["kind"] == "discrete" else [size]
    layout = {"hidden_sizes": ints(m["hidden"]), "activation": m["act"], "shared_torso": m["shared"] == "True"}
    for k in ("ortho_init", "log_std_init"):
        if k in config:
            layout[k] = config[k]
    kind = m["cell"] or config.get("policy", "feedforward")
    if m["cell"]:  # a recurrent checkpoint's signature names its cell
        layout.update(cell=kind, rnn_size=int(m["rnn"]), separate=m["separate"] == "True",
                      head_sizes=ints(m["heads"] or ""))
    elif kind != "feedforward":  # (signatures before the cell was named in them) config.json does
        layout.update(cell=kind, rnn_size=int(config.get("rnn_size", 128)),
                      separate=bool(config.get("rnn_separate", False)))
    return {"obs": {"shape": ints(m["obs"]), "dtype": m["dtype"]},
            "action": {"kind": m["kind"], "size": size, "nvec": ints(m["nvec"]), "low": [], "high": [],
                       "shape": shape},
            "policy": kind, "network": layout, "normalize_obs": bool(config.get("normalize_obs", False)),
            "signature": signature}


def build_network(spec: dict) -> ActorCritic:
    """The ``ActorCritic`` (or, where the layout names a ``cell``, the ``RecurrentActorCritic``) that ``spec``
    (policy.json's content) describes."""
    a = spec["action"]
    low = tuple(-math.inf if x is None else float(x) for x in a.get("low") or ())
    high = tuple(math.inf if x is None else float(x) for x in a.get("high") or ())
    action = ActionSpec(a["kind"], int(a["size"]), tuple(int(n) for n in a.get("nvec") or ()), low, high)
    obs = ObsSpec(tuple(int(s) for s in spec["obs"]["shape"]), spec["obs"]["dtype"])
    recurrent = spec.get("policy", "feedforward") != "feedforward" or "cell" in spec["network"]
    cls = RecurrentActorCritic if recurrent else ActorCritic
    known = {f.name for f in dataclasses.fields(cls)} - set(_NET_SKIP)
    layout = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["network"].items() if k in known}
    if recurrent and spec.get("policy") not in (None, "feedforward"):
        layout.setdefault("cell", spec["policy"])
    return cls(obs=obs, action=action, **layout)


def read_policy_spec(run_dir: str | os.PathLike, header: dict | None = None) -> tuple[dict, bool]:
    """(policy.json's content, whether it came from policy.json) for ``run_dir``; runs without the file are
    described from ``header`` (a checkpoint header) and config.json."""
    run_dir = Path(run_dir)
    path = run_dir / SPEC_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); delete it to fall back to the checkpoint") from None
    config = {}
    if (run_dir / "config.json").is_file():
        try:
            config = json.loads((run_dir / "config.json").read_text())
        except json.JSONDecodeError:
            config = {}
    return _spec_from_signature((header or {}).get("network", ""), config), False
