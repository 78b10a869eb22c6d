"""A trained policy out of a run directory, without an environment or an optimizer: ``ppolab.load(RUN_DIR)``.

    policy = ppolab.load("runs/RUN")
    action, _ = policy.predict(obs)                 # one observation -> one action (SB3's convention)
    actions, _ = policy.predict(batch)              # [N, *obs] -> [N, ...]
    v = policy.value(obs)                           # V(s)

What the network needs is stored in ``RUN_DIR/policy.json`` when a run starts (``write_policy_spec``): the
observation and action specs (shape, dtype, kind, bounds, nvec), the network's layout, and whether observations are
normalized. Runs written before that file existed are read from the checkpoint header's network signature and
``config.json`` (their Box bounds are not stored, so their actions are returned unclipped).

``predict`` applies the run's observation statistics (mean/var of the newest good checkpoint) exactly as training
did. The deterministic action is the mode of the policy's distribution: argmax for Discrete and each MultiDiscrete
component, ``logit > 0`` for MultiBinary, and for Box the Gaussian's mean *clipped to the action bounds* -- the
action ``ppolab eval`` executes. MLP policies run a plain-numpy forward pass (``networks.NumpyPolicy``; cheaper
than a jitted call for a few observations), Nature-CNN policies a jitted JAX one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppolab import checkpoint as ckpt_lib
from ppolab.config import ConfigError
from ppolab.networks import ActorCritic, NumpyPolicy
from ppolab.spaces import ActionSpec, ObsSpec

SPEC_FILE = "policy.json"
SPEC_VERSION = 1
_NET_SKIP = ("obs", "action", "parent", "name")
_SIG = re.compile(r"obs=\[(?P<obs>[\d, ]*)\]:(?P<dtype>\w+) action=(?P<kind>\w+):(?P<size>\d+):\[(?P<nvec>[\d, ]*)\] "
                  r"hidden=\[(?P<hidden>[\d, ]*)\] act=(?P<act>\w+) shared=(?P<shared>True|False)")


# ---- the policy spec (policy.json) --------------------------------------------------------------------------------
def _bounds(values) -> list:
    return [float(v) if math.isfinite(v) else None for v in values]  # JSON has no inf: null = unbounded


def _signature(net: ActorCritic) -> str:
    """The checkpoint header's network signature of ``net`` (imported on use: assembly pulls in the drivers)."""
    from ppolab.assembly import net_signature

    return net_signature(net)


def policy_spec(net: ActorCritic, normalize_obs: bool) -> dict:
    """The JSON-able description of ``net`` that ``load`` rebuilds the network from."""
    a = net.action
    layout = {f.name: getattr(net, f.name) for f in dataclasses.fields(net) if f.name not in _NET_SKIP}
    layout = {k: list(v) if isinstance(v, tuple) else v for k, v in layout.items()}
    return {"format": "ppolab-policy", "version": SPEC_VERSION,
            "obs": {"shape": list(net.obs.shape), "dtype": net.obs.dtype, "image": net.obs.image},
            "action": {"kind": a.kind, "size": a.size, "nvec": list(a.nvec), "low": _bounds(a.low),
                       "high": _bounds(a.high), "shape": list(a.shape), "dtype": np.dtype(a.dtype).name},
            "network": layout, "normalize_obs": bool(normalize_obs), "signature": _signature(net)}


def write_policy_spec(run_dir: str | os.PathLike, net: ActorCritic, normalize_obs: bool) -> Path:
    """Write ``RUN_DIR/policy.json`` (atomically). Call when a run starts, with ``cfg.normalize_obs``."""
    path = Path(run_dir) / SPEC_FILE
    tmp = path.with_name(f".{SPEC_FILE}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(policy_spec(net, normalize_obs), indent=1))
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
    return {"obs": {"shape": ints(m["obs"]), "dtype": m["dtype"]},
            "action": {"kind": m["kind"], "size": size, "nvec": ints(m["nvec"]), "low": [], "high": [],
                       "shape": shape},
            "network": layout, "normalize_obs": bool(config.get("normalize_obs", False)), "signature": signature}


def build_network(spec: dict) -> ActorCritic:
    """The ``ActorCritic`` that ``spec`` (policy.json's content) describes."""
    a = spec["action"]
    low = tuple(-math.inf if x is None else float(x) for x in a.get("low") or ())
    high = tuple(math.inf if x is None else float(x) for x in a.get("high") or ())
    action = ActionSpec(a["kind"], int(a["size"]), tuple(int(n) for n in a.get("nvec") or ()), low, high)
    obs = ObsSpec(tuple(int(s) for s in spec["obs"]["shape"]), spec["obs"]["dtype"])
    known = {f.name for f in dataclasses.fields(ActorCritic)} - set(_NET_SKIP)
    layout = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["network"].items() if k in known}
    return ActorCritic(obs=obs, action=action, **layout)


# ---- the policy ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Policy:
    """One agent's trained policy and value function. Build with ``ppolab.load(RUN_DIR)``."""

    net: ActorCritic
    params: dict                       # one agent's flax params {"params": {...}} (numpy arrays)
    obs_mean: np.ndarray | None        # observation normalization (None: the run did not normalize)
    obs_var: np.ndarray | None
    run_dir: Path | None = None
    agent: int = 0
    iteration: int | None = None       # the checkpoint's iteration
    checkpoint: Path | None = None
    seed: int = 0
    bounds_known: bool = True          # False: a run without policy.json, Box actions are not clipped

    def __post_init__(self):
        self._numpy = None
        if NumpyPolicy.supports(self.net):
            stacked = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32)[None], self.params)
            self._numpy = NumpyPolicy.from_params(self.net, stacked)
        self._rng = np.random.default_rng(self.seed)
        self._key = jax.random.PRNGKey(self.seed)
        self._jit: dict = {}

    @property
    def obs_spec(self) -> ObsSpec:
        return self.net.obs

    @property
    def action_spec(self) -> ActionSpec:
        return self.net.action

    # ---- input checks ----
    def check_obs(self, obs) -> tuple[np.ndarray, bool]:
        """obs -> (batch [N, *obs_shape] in the network's dtype, whether it was a single observation).
        Raises ``ConfigError`` (a ``ValueError``) naming the shape or dtype and the expected one."""
        shape = tuple(self.net.obs.shape)
        expected = f"expected {shape} (one observation) or (N, {', '.join(map(str, shape))}) (a batch of N)"
        try:
            x = np.asarray(obs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"observation is not an array ({e}); {expected}") from None
        image = self.net.obs.image
        if (image and x.dtype != np.uint8) or x.dtype.kind not in "biuf":
            want = "uint8 (image frames)" if image else "a real number type (float32, float64, int, bool)"
            raise ConfigError(f"observation has dtype {x.dtype}; this policy expects {want}")
        if x.shape == shape:
            return x[None].astype(self._in_dtype, copy=False), True
        if x.ndim == len(shape) + 1 and x.shape[1:] == shape:
            return x.astype(self._in_dtype, copy=False), False
        raise ConfigError(f"observation of shape {x.shape} does not match this policy: {expected}")

    @property
    def _in_dtype(self):
        return np.uint8 if self.net.obs.image else np.float32

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Raw observations -> what the network sees (the run's running statistics, clipped to +-10)."""
        if self.obs_mean is None:
            return x
        from ppolab.normalize import CLIP

        std = np.sqrt(self.obs_var + 1e-8)
        return np.minimum(np.maximum((x - self.obs_mean) / std, -CLIP), CLIP).astype(np.float32)

    def check_mask(self, mask, n: int, single: bool) -> np.ndarray | None:
        """An action mask -> bool [N, head_size] (True = legal), or None. Raises ``ConfigError`` naming the shape."""
        if mask is None:
            return None
        spec = self.net.action
        if spec.kind not in ("discrete", "multidiscrete"):
            raise ConfigError(f"action masks need a Discrete or MultiDiscrete action space; this policy's is "
                              f"{spec.kind}")
        m = np.asarray(mask)
        want = (spec.head_size,) if single else (n, spec.head_size)
        if m.shape != want or m.dtype.kind not in "biu":
            raise ConfigError(f"action mask of shape {m.shape} and dtype {m.dtype} does not match: expected a bool "
                              f"array of shape {want} (True = legal)")
        return (m.astype(bool)[None] if single else m.astype(bool))

    # ---- the API ----
    def predict(self, obs, state=None, deterministic: bool = True, action_masks=None):
        """obs [*obs_shape] or [N, *obs_shape] -> (actions [...] or [N, ...], state).

        ``state`` is the recurrent carry: policies have none yet, so it is returned unchanged (None).
        ``deterministic``: the distribution's mode (see the module docstring); else a sample (this Policy's own
        random generator, seeded by ``load(seed=...)``). Box actions are clipped to the action bounds.
        ``action_masks`` (Discrete / MultiDiscrete): bool [head_size] or [N, head_size], True = legal (the layout of
        sb3-contrib's MaskablePPO); only legal actions are returned."""
        x, single = self.check_obs(obs)
        mask = self.check_mask(action_masks, x.shape[0], single)
        if self._numpy is not None:
            noise = None if deterministic else self._numpy.draw_noise(self._rng, (1, x.shape[0]))
            actions = self._numpy.sample_with_noise(self.normalize(x)[None], noise,
                                                    None if mask is None else mask[None])[0]
        else:
            self._key, key = jax.random.split(self._key)
            fn = self._jitted("sample" if not deterministic else "mode", masked=mask is not None)
            actions = np.asarray(fn(jnp.asarray(x), key, mask))
        actions = self._clip(actions).astype(self.net.action.dtype, copy=False)
        return (actions[0] if single else actions), state

    def value(self, obs) -> np.ndarray:
        """V(s): obs [*obs_shape] -> float32 scalar array, or [N, *obs_shape] -> [N]."""
        x, single = self.check_obs(obs)
        v = np.asarray(self._jitted("value")(jnp.asarray(x), None, None))
        return v[0] if single else v

    def __call__(self, obs):
        """The deterministic action(s) alone."""
        return self.predict(obs)[0]

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        return self.net.action.clip(actions) if self.bounds_known else actions

    # ---- JAX functions (also what export.py converts) ----
    def _apply_fn(self, heads: str) -> Callable:
        """(obs [N, *obs_shape], mask or None) -> (distribution, value) of the network, normalization folded in."""
        from ppolab.normalize import RunningMeanStd, normalize_obs

        params = jax.tree_util.tree_map(jnp.asarray, self.params)
        stats = None if self.obs_mean is None else RunningMeanStd(
            jnp.asarray(self.obs_mean), jnp.asarray(self.obs_var), jnp.asarray(1.0))

        def apply(obs, mask=None):
            x = normalize_obs(stats, obs) if stats is not None else obs
            if mask is None:
                return self.net.apply(params, x, heads=heads)
            return self.net.apply(params, x, heads=heads, action_mask=mask)

        return apply

    def forward_fn(self, outputs: str = "mode", with_value: bool = False, clip: bool = True) -> Callable:
        """A pure JAX function of a raw observation batch [N, *obs_shape] (normalization folded in):
        ``outputs`` "mode" -> the deterministic actions (Box: clipped to the bounds when ``clip`` and they are
        known), "value" -> V(s) [N]; ``with_value`` adds V(s) as a second output to "mode"."""
        spec = self.net.action
        if outputs == "value":
            apply = self._apply_fn("value")
            return lambda obs: apply(obs)[1]
        apply = self._apply_fn("both" if with_value else "policy")
        bounded = clip and self.bounds_known and spec.kind == "box" and bool(spec.low)
        low, high = (np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)) if bounded else (None, None)

        def fn(obs):
            dist, value = apply(obs)
            action = dist.mode()
            if bounded:
                action = jnp.minimum(jnp.maximum(action, low), high)
            action = action.astype(jnp.float32 if spec.kind == "box" else jnp.int32)
            return (action, value) if with_value else action

        return fn

    def _jitted(self, what: str, masked: bool = False):
        """Jitted (obs, key, mask) -> actions ("mode", "sample") or values ("value"), compiled once per input shape."""
        if (what, masked) not in self._jit:
            apply = self._apply_fn("value" if what == "value" else "policy")
            if what == "value":
                fn = lambda obs, key, mask: apply(obs)[1]
            elif what == "sample":
                fn = lambda obs, key, mask: apply(obs, mask)[0].sample(key)
            elif masked:
                fn = lambda obs, key, mask: apply(obs, mask)[0].mode().astype(jnp.int32)
            else:
                f = self.forward_fn("mode")
                fn = lambda obs, key, mask: f(obs)
            self._jit[what, masked] = jax.jit(fn)
        return self._jit[what, masked]


# ---- loading ------------------------------------------------------------------------------------------------------
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


def _newest_checkpoint(run_dir: Path) -> tuple[dict, dict, Path]:
    files = ckpt_lib.list_checkpoints(run_dir / "checkpoints")
    if not files:
        raise ConfigError(f"{str(run_dir)!r} has no checkpoint (is it a ppolab run directory? a run writes its "
                          "first checkpoint at its end or every --checkpoint-every iterations)")
    errors = []
    for path in reversed(files):
        try:
            tree, header = ckpt_lib.read(path)
            return tree, header, path
        except ckpt_lib.CheckpointError as e:
            errors.append(str(e))
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=3)
    raise ConfigError("no usable checkpoint: " + "; ".join(errors))


def _check_params(net: ActorCritic, params: dict, path: Path) -> None:
    """The checkpoint's parameters must have the shapes the described network has."""
    want = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1,) + net.obs.shape, net.obs.dtype)))
    got = jax.tree_util.tree_map(np.shape, params)
    if jax.tree_util.tree_map(lambda s: tuple(s.shape), want) != got:
        raise ConfigError(f"{path} does not match the network described by {SPEC_FILE} (foreign checkpoint?)")


def load(run_dir: str | os.PathLike, agent: int = 0, seed: int = 0) -> Policy:
    """The trained policy of agent ``agent`` in ``run_dir`` (newest good checkpoint). No env, no optimizer."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    tree, header, path = _newest_checkpoint(run_dir)
    spec, from_file = read_policy_spec(run_dir, header)
    if from_file and header.get("network") not in (None, spec.get("signature")):
        raise ConfigError(f"{path} belongs to another network ({header.get('network')!r}) than {SPEC_FILE} "
                          f"describes ({spec.get('signature')!r})")
    K = int(header.get("agents", 1))
    if isinstance(agent, bool) or not isinstance(agent, int | np.integer) or not 0 <= agent < K:
        raise ConfigError(f"--agent {agent!r} is out of range: the run has {K} agent(s), 0..{K - 1}")
    try:
        state = tree["train_state"]
        params = jax.tree_util.tree_map(lambda x: np.asarray(x)[agent], state["params"])
        stats = state["obs_stats"]
    except (KeyError, TypeError, IndexError):
        raise ConfigError(f"{path} holds no policy parameters (train_state.params)") from None
    net = build_network(spec)
    _check_params(net, params, path)
    mean = var = None
    if spec.get("normalize_obs"):
        mean = np.asarray(stats["mean"][agent], np.float32)
        var = np.asarray(stats["var"][agent], np.float32)
    bounds_known = from_file or net.action.kind != "box"
    if not bounds_known:
        warnings.warn(f"{str(run_dir)!r} has no {SPEC_FILE}: Box action bounds are unknown, actions are not clipped",
                      stacklevel=2)
    return Policy(net, params, mean, var, run_dir, agent, int(header.get("iteration", 0)), path, seed, bounds_known)
