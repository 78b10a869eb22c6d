"""A trained policy out of a run directory, without an environment or an optimizer: ``ppolab.load(RUN_DIR)``.

    policy = ppolab.load("runs/RUN")
    action, _ = policy.predict(obs)                 # one observation -> one action (SB3's convention)
    actions, _ = policy.predict(batch)              # [N, *obs] -> [N, ...]
    v = policy.value(obs)                           # V(s)

A recurrent policy (``--policy lstm|gru``) takes and returns its carry, as sb3-contrib's ``RecurrentPPO`` does:

    state, start = None, True                       # None: the initial (zero) carry
    while ...:
        action, state = policy.predict(obs, state=state, episode_start=start)
        obs, reward, terminated, truncated, info = env.step(action)
        start = terminated or truncated             # the next observation starts an episode: its carry is reset

The network is rebuilt from ``RUN_DIR/policy.json`` (``ppolab.policy_spec``). ``predict`` applies the run's
observation statistics (mean/var of the newest good checkpoint) exactly as training did. The deterministic action
is the mode of the policy's distribution: argmax for Discrete and each MultiDiscrete component, ``logit > 0`` for
MultiBinary, and for Box the Gaussian's mean *clipped to the action bounds* -- the action ``ppolab eval`` executes.
MLP policies (feed-forward and recurrent) run a plain-numpy forward pass (``networks.NumpyPolicy``,
``recurrent.NumpyRecurrentPolicy``; cheaper than a jitted call for a few observations), Nature-CNN policies a jitted
JAX one.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ppolab import checkpoint as ckpt_lib
from ppolab.config import ConfigError
from ppolab.networks import ActorCritic, NumpyPolicy, draw_noise
from ppolab.policy_spec import (  # noqa: F401 - re-exported: ppolab.policy is where callers find them
    SPEC_FILE,
    SPEC_VERSION,
    _signature,
    _spec_from_signature,
    build_network,
    policy_spec,
    read_policy_spec,
    write_policy_spec,
)
from ppolab.recurrent import NumpyRecurrentPolicy
from ppolab.spaces import ActionSpec, ObsSpec

_tree = jax.tree_util.tree_map


@dataclasses.dataclass
class Policy:
    """One agent's trained policy and value function. Build with ``ppolab.load(RUN_DIR)``."""

    net: ActorCritic                   # or a recurrent.RecurrentActorCritic (``recurrent`` True)
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
        mirror = NumpyRecurrentPolicy if self.recurrent else NumpyPolicy
        if mirror.supports(self.net):
            stacked = _tree(lambda x: np.asarray(x, np.float32)[None], self.params)
            self._numpy = mirror.from_params(self.net, stacked)
        self._rng = np.random.default_rng(self.seed)
        self._key = jax.random.PRNGKey(self.seed)
        self._jit: dict = {}

    @property
    def obs_spec(self) -> ObsSpec:
        return self.net.obs

    @property
    def action_spec(self) -> ActionSpec:
        return self.net.action

    @property
    def recurrent(self) -> bool:
        return bool(self.net.recurrent)

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

    def initial_state(self, n: int | None = None):
        """The initial (zero) carry of ``n`` envs (leaves [n, H] float32), or of one env for ``n`` None (leaves [H]:
        what ``predict`` of a single observation takes); None for a feed-forward policy."""
        if not self.recurrent:
            return None
        return _tree(lambda c: np.zeros(c.shape, np.float32), self.net.initial_carry(() if n is None else (n,)))

    def check_state(self, state, episode_start, n: int, single: bool) -> tuple[np.ndarray, tuple]:
        """(state, episode_start) of ``predict`` -> (starts bool [n], carry with leaves [n, H] float32) of a
        recurrent policy. Raises ``ConfigError`` naming the shape expected."""
        template = self.initial_state(None if single else n)
        carry = template
        if state is not None:
            leaves, treedef = jax.tree_util.tree_flatten(state)
            want = jax.tree_util.tree_structure(template)
            shape = jax.tree_util.tree_leaves(template)[0].shape
            if treedef != want or any(np.shape(x) != shape for x in leaves):
                raise ConfigError(f"state does not match this policy: expected the carry that predict returns "
                                  f"({want.num_leaves} arrays of shape {shape} in {want}), or None for the initial "
                                  "state")
            carry = jax.tree_util.tree_unflatten(treedef, [np.asarray(x, np.float32) for x in leaves])
        if single:
            carry = _tree(lambda c: c[None], carry)
        if episode_start is None:
            return np.zeros(n, bool), carry
        s = np.asarray(episode_start)
        if s.dtype.kind not in "biuf" or s.shape not in ((), (n,)):
            raise ConfigError(f"episode_start of shape {s.shape} and dtype {s.dtype} does not match: expected a "
                              f"bool scalar or an array of shape ({n},) (True where obs starts an episode)")
        return np.broadcast_to(s != 0, (n,)).copy(), carry

    # ---- the API ----
    def predict(self, obs, state=None, episode_start=None, deterministic: bool = True, action_masks=None):
        """obs [*obs_shape] or [N, *obs_shape] -> (actions [...] or [N, ...], state).

        ``state``: the recurrent carry (sb3-contrib's ``RecurrentPPO`` convention): None is the initial (zero)
        carry; pass back the state this returned. ``episode_start`` (bool scalar or [N]): True where ``obs`` is an
        episode's first observation -- that env's carry is reset before the step. A feed-forward policy has no
        carry: ``state`` is returned unchanged and ``episode_start`` is not read.
        ``deterministic``: the distribution's mode (see the module docstring); else a sample (this Policy's own
        random generator, seeded by ``load(seed=...)``). Box actions are clipped to the action bounds.
        ``action_masks`` (Discrete / MultiDiscrete): bool [head_size] or [N, head_size], True = legal (the layout of
        sb3-contrib's MaskablePPO); only legal actions are returned."""
        x, single = self.check_obs(obs)
        n = x.shape[0]
        mask = self.check_mask(action_masks, n, single)
        memory = self.check_state(state, episode_start, n, single) if self.recurrent else None
        if self._numpy is not None:
            actions, carry = self._act_numpy(x, deterministic, mask, memory)
        else:
            self._key, key = jax.random.split(self._key)
            starts, carry = memory if memory is not None else (None, None)
            actions, carry = self._jitted("mode" if deterministic else "sample")(jnp.asarray(x), key, mask, starts,
                                                                                  carry)
            actions = np.asarray(actions)
        actions = self._clip(actions).astype(self.net.action.dtype, copy=False)
        if self.recurrent:
            state = _tree(lambda c: np.asarray(c, np.float32)[0] if single else np.asarray(c, np.float32), carry)
        return (actions[0] if single else actions), state

    def _act_numpy(self, x: np.ndarray, deterministic: bool, mask, memory):
        """The numpy mirror's actions [N, ...] (and carry' for a recurrent policy, else None)."""
        noise = None if deterministic else draw_noise(self.net.action, self._rng, (1, x.shape[0]))
        obs, mask = self.normalize(x)[None], None if mask is None else mask[None]
        if memory is None:
            return self._numpy.sample_with_noise(obs, noise, mask)[0], None
        starts, carry = memory
        actions, carry = self._numpy.sample_with_noise(obs, starts[None], _tree(lambda c: c[None], carry), noise,
                                                       mask)
        return actions[0], _tree(lambda c: c[0], carry)

    def value(self, obs, state=None, episode_start=None) -> np.ndarray:
        """V(s): obs [*obs_shape] -> float32 scalar array, or [N, *obs_shape] -> [N]. A recurrent policy's value
        reads the carry ``state`` (before ``obs``, as ``predict`` takes it) and ``episode_start`` too."""
        x, single = self.check_obs(obs)
        starts, carry = self.check_state(state, episode_start, x.shape[0], single) if self.recurrent else (None, None)
        v, _ = self._jitted("value")(jnp.asarray(x), None, None, starts, carry)
        v = np.asarray(v)
        return v[0] if single else v

    def __call__(self, obs):
        """The deterministic action(s) alone (a recurrent policy: from the initial carry)."""
        return self.predict(obs)[0]

    def _clip(self, actions: np.ndarray) -> np.ndarray:
        return self.net.action.clip(actions) if self.bounds_known else actions

    # ---- JAX functions (also what export.py converts) ----
    def _apply_fn(self, heads: str) -> Callable:
        """(obs [N, *obs_shape], mask or None, starts [N] or None, carry or None) -> (distribution, value, carry')
        of the network (carry' None for a feed-forward one), normalization folded in."""
        from ppolab.normalize import RunningMeanStd, normalize_obs

        params = _tree(jnp.asarray, self.params)
        stats = None if self.obs_mean is None else RunningMeanStd(
            jnp.asarray(self.obs_mean), jnp.asarray(self.obs_var), jnp.asarray(1.0))
        net = self.net

        def apply(obs, mask=None, starts=None, carry=None):
            x = normalize_obs(stats, obs) if stats is not None else obs
            if net.recurrent:
                return net.apply(params, x, starts, carry, heads=heads, action_mask=mask, sequence=False)
            return (*net.apply(params, x, heads=heads, action_mask=mask), None)

        return apply

    def _mode_fn(self, clip: bool = True) -> Callable:
        """distribution -> its mode as executed: Box means clipped to the bounds (when ``clip`` and they are known),
        float32 for Box, int32 else."""
        spec = self.net.action
        bounded = clip and self.bounds_known and spec.kind == "box" and bool(spec.low)
        low, high = (np.asarray(spec.low, np.float32), np.asarray(spec.high, np.float32)) if bounded else (None, None)

        def mode(dist):
            action = dist.mode()
            if bounded:
                action = jnp.minimum(jnp.maximum(action, low), high)
            return action.astype(jnp.float32 if spec.kind == "box" else jnp.int32)

        return mode

    def forward_fn(self, outputs: str = "mode", with_value: bool = False, clip: bool = True) -> Callable:
        """A pure JAX function of a raw observation batch obs [N, *obs_shape] (normalization folded in) and, as an
        optional second argument, an action mask [N, head_size] bool: ``outputs`` "mode" -> the deterministic
        actions (the best legal ones under a mask; Box: clipped to the bounds when ``clip`` and they are known),
        "value" -> V(s) [N]; ``with_value`` adds V(s) as a second output to "mode". Feed-forward policies only (a
        recurrent one's step is ``step_fn``)."""
        if self.recurrent:
            raise ConfigError("forward_fn is a feed-forward policy's function; a recurrent policy's is step_fn")
        if outputs == "value":
            apply = self._apply_fn("value")
            return lambda obs: apply(obs)[1]
        apply, mode = self._apply_fn("both" if with_value else "policy"), self._mode_fn(clip)

        def fn(obs, mask=None):
            dist, value, _ = apply(obs, mask)
            return (mode(dist), value) if with_value else mode(dist)

        return fn

    def step_fn(self, with_value: bool = False, clip: bool = True) -> Callable:
        """A recurrent policy's one step as a pure JAX function: (obs [N, *obs_shape], episode_start [N] bool,
        carry (leaves [N, H]), mask [N, head_size] bool or None) -> (deterministic actions, V(s) [N] or None,
        carry'), normalization folded in; the carry is reset where ``episode_start`` before the cell reads obs."""
        if not self.recurrent:
            raise ConfigError("step_fn is a recurrent policy's function; a feed-forward policy's is forward_fn")
        apply, mode = self._apply_fn("both" if with_value else "policy"), self._mode_fn(clip)

        def fn(obs, episode_start, carry, mask=None):
            dist, value, carry = apply(obs, mask, episode_start, carry)
            return mode(dist), value, carry

        return fn

    def _jitted(self, what: str) -> Callable:
        """Jitted (obs, key, mask, starts, carry) -> (actions ("mode", "sample") or values ("value"), carry');
        mask, starts and carry may be None (compiled once per input shape and per None-ness)."""
        if what not in self._jit:
            apply = self._apply_fn("value" if what == "value" else "policy")
            mode = self._mode_fn()

            def fn(obs, key, mask, starts, carry):
                dist, value, carry = apply(obs, mask, starts, carry)
                if what == "value":
                    return value, carry
                return (dist.sample(key) if what == "sample" else mode(dist)), carry

            self._jit[what] = jax.jit(fn)
        return self._jit[what]


# ---- loading ------------------------------------------------------------------------------------------------------
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
    want = jax.eval_shape(lambda: net.init_params(jax.random.PRNGKey(0)))
    got = _tree(np.shape, params)
    if _tree(lambda s: tuple(s.shape), want) != got:
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
        params = _tree(lambda x: np.asarray(x)[agent], state["params"])
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
