"""Actor-critic networks (Flax linen) and a plain-numpy mirror of the MLP policy for cheap acting on the host.

Parameter names are fixed so the numpy mirror can read them: separate networks use ``pi_0.., pi_head`` and
``v_0.., v_head``; a shared torso uses ``torso_0..`` and both heads; Gaussian policies add a state-independent
``log_std`` vector; the Nature CNN (shared) uses ``conv_0..2`` and ``torso_fc``.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ppolab import distributions as D
from ppolab.spaces import ActionSpec, ObsSpec


def make_dist(spec: ActionSpec, head: jax.Array, log_std: jax.Array | None):
    if spec.kind == "discrete":
        return D.Categorical(head)
    if spec.kind == "box":
        return D.DiagGaussian(head, jnp.broadcast_to(log_std, head.shape))
    if spec.kind == "multidiscrete":
        return D.MultiCategorical(head, spec.nvec)
    if spec.kind == "multibinary":
        return D.Bernoulli(head)
    raise ValueError(spec.kind)


def _torch_bias(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def _dense(features, gain, ortho, name, default: str = "flax"):
    """A dense layer: orthogonal (``gain``, zero bias) with ``ortho``; else ``default``'s init: flax's (lecun-normal,
    zero bias) or torch's ``nn.Linear`` (weights and bias U(+-1/sqrt(fan_in)), what sb3 runs with ortho_init=False).
    Returns a callable on the input (torch's bias bound needs its width)."""
    if ortho:
        return nn.Dense(features, kernel_init=nn.initializers.orthogonal(gain), bias_init=nn.initializers.zeros,
                        name=name)
    if default == "flax":
        return nn.Dense(features, name=name)
    kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")  # = U(+-1/sqrt(fan_in))
    return lambda x: nn.Dense(features, kernel_init=kernel, bias_init=_torch_bias(x.shape[-1]), name=name)(x)


class ActorCritic(nn.Module):
    """obs [..., *obs_shape] -> (distribution over actions [...], value [...])."""

    obs: ObsSpec
    action: ActionSpec
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    shared_torso: bool = False
    ortho_init: bool = True
    log_std_init: float = 0.0
    default_init: str = "flax"  # the init where not orthogonal: "flax" or "torch" (``_dense``, ``cells.INITS``)
    recurrent = False  # ``recurrent.RecurrentActorCritic`` takes (obs, starts, carry) and returns a carry too

    def init_params(self, key, batch: int = 1):
        return self.init(key, jnp.zeros((batch,) + self.obs.shape, jnp.uint8 if self.obs.image else jnp.float32))

    def _mlp(self, x, prefix, sizes=None):
        act = jnp.tanh if self.activation == "tanh" else nn.relu
        for i, h in enumerate(self.hidden_sizes if sizes is None else sizes):
            x = act(_dense(h, math.sqrt(2), self.ortho_init, f"{prefix}_{i}", self.default_init)(x))
        return x

    def _head(self, features, gain, name):
        """A linear head: orthogonal with ``gain`` under ortho_init and on images (the Nature CNN's), else
        ``default_init``'s."""
        return _dense(features, gain, self.ortho_init or self.obs.image, name, self.default_init)

    def _nature_cnn(self, x):
        x = x.astype(jnp.float32) / 255.0
        for i, (f, k, s) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
            conv = nn.Conv(f, (k, k), (s, s), padding="VALID", name=f"conv_{i}",
                           kernel_init=nn.initializers.orthogonal(math.sqrt(2)), bias_init=nn.initializers.zeros)
            x = nn.relu(conv(x))
        x = x.reshape(x.shape[:-3] + (-1,))
        return nn.relu(_dense(512, math.sqrt(2), True, "torso_fc")(x))

    @nn.compact
    def __call__(self, obs, heads: str = "both", action_mask=None):
        """``heads``: "both", "policy" (value is None) or "value" (distribution is None): a separate-torso network
        then runs only the half it needs (the learner's bootstrap values and post-update KL, acting).
        ``action_mask`` [..., head_size] bool (True = legal) masks the distribution (``distributions.with_mask``);
        None leaves it unmasked."""
        batch_shape = obs.shape[: obs.ndim - len(self.obs.shape)]
        want_pi, want_v = heads in ("both", "policy"), heads in ("both", "value")
        if self.obs.image:
            # conv layers want exactly one batch dim
            x = self._nature_cnn(obs.reshape((-1,) + self.obs.shape)).reshape(batch_shape + (512,))
            pi_h = v_h = x
        else:
            x = obs.reshape(batch_shape + (-1,)).astype(jnp.float32)
            if self.shared_torso:
                pi_h = v_h = self._mlp(x, "torso")
            else:
                pi_h = self._mlp(x, "pi") if want_pi else None
                v_h = self._mlp(x, "v") if want_v else None
        dist = value = None
        if want_pi:
            head = self._head(self.action.head_size, 0.01, "pi_head")(pi_h)
            log_std = None
            if self.action.kind == "box":
                log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action.size,))
            dist = D.with_mask(make_dist(self.action, head, log_std), action_mask)
        if want_v:
            value = self._head(1, 1.0, "v_head")(v_h)[..., 0]
        return dist, value


def make_network(cfg, obs: ObsSpec, action: ActionSpec) -> ActorCritic:
    """The feed-forward network of ``cfg`` (``models.make_model`` picks it or a recurrent one)."""
    return ActorCritic(obs=obs, action=action, hidden_sizes=tuple(cfg.hidden_sizes), activation=cfg.activation,
                       shared_torso=cfg.shared_torso, ortho_init=cfg.ortho_init, log_std_init=cfg.log_std_init,
                       default_init=cfg.default_init)


# ---- numpy mirror of the MLP policy -------------------------------------------------------------------------------
@dataclasses.dataclass
class NumpyPolicy:
    """The policy half of ``ActorCritic`` (MLP only) in plain numpy, for acting on the host.

    Works on stacked agents: every parameter has a leading agent axis [K, ...] and observations are [K, B, *obs].
    A jitted JAX call costs ~135-200 us on this CPU against ~40-80 us for this forward pass (BENCHMARKS.md).
    """

    net: ActorCritic
    layers: list  # [(W [K, in, out], b [K, 1, out])]
    head: tuple
    log_std: np.ndarray | None  # [K, 1, d]
    std: np.ndarray | None = None  # exp(log_std), computed once per iteration

    @classmethod
    def supports(cls, net: ActorCritic) -> bool:
        return not net.obs.image

    @classmethod
    def from_params(cls, net: ActorCritic, params) -> NumpyPolicy:
        p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params["params"])
        prefix = "torso" if net.shared_torso else "pi"
        layers = [(p[f"{prefix}_{i}"]["kernel"], p[f"{prefix}_{i}"]["bias"][:, None, :])
                  for i in range(len(net.hidden_sizes))]
        head = (p["pi_head"]["kernel"], p["pi_head"]["bias"][:, None, :])
        log_std = p["log_std"][:, None, :] if "log_std" in p else None
        policy = cls(net, layers, head, log_std)
        policy.std = np.exp(log_std).astype(np.float32) if log_std is not None else None
        return policy

    def head_out(self, obs: np.ndarray) -> np.ndarray:
        K = obs.shape[0]
        act = np.tanh if self.net.activation == "tanh" else (lambda z: np.maximum(z, 0, out=z))
        if K == 1:  # one agent: plain 2-D matmuls, cheaper than the broadcast batched form
            x = obs.reshape(obs.shape[1], -1).astype(np.float32, copy=False)
            for W, b in self.layers:
                x = act(x @ W[0] + b[0])
            return (x @ self.head[0][0] + self.head[1][0])[None]
        x = obs.reshape(K, obs.shape[1], -1).astype(np.float32, copy=False)
        for W, b in self.layers:
            x = act(np.matmul(x, W) + b)
        return np.matmul(x, self.head[0]) + self.head[1]

    def draw_noise(self, rng: np.random.Generator, shape: tuple) -> np.ndarray:
        return draw_noise(self.net.action, rng, shape)

    def sample_with_noise(self, obs: np.ndarray, noise: np.ndarray | None,
                          mask: np.ndarray | None = None) -> np.ndarray:
        """obs [K, B, *obs] (already normalized), noise [K, B, head] or None for the mode -> actions [K, B, ...].
        ``mask`` [K, B, head] bool: only legal actions (the best legal one for the mode), same noise convention."""
        return sample_from_head(self.net.action, self.head_out(obs), noise, mask, self.std)


def draw_noise(spec: ActionSpec, rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """Pre-drawn randomness for ``shape`` (e.g. [T, B]) steps: standard normals for Gaussians, uniforms else."""
    full = tuple(shape) + (spec.head_size,)
    if spec.kind == "box":
        return rng.standard_normal(full, dtype=np.float32)
    return rng.random(full, dtype=np.float32)


def sample_from_head(spec: ActionSpec, out: np.ndarray, noise: np.ndarray | None, mask: np.ndarray | None,
                     std: np.ndarray | None) -> np.ndarray:
    """Actions from the policy head's output ``out`` [..., head] and pre-drawn ``noise`` (None: the mode)."""
    if mask is not None:
        return D.masked_sample_numpy(out, mask, noise, spec.nvec if spec.kind == "multidiscrete" else None)
    if spec.kind == "discrete":
        return _sample_categorical(out, noise)
    if spec.kind == "box":
        return out if noise is None else out + std * noise
    if spec.kind == "multidiscrete":
        splits = np.cumsum(spec.nvec)[:-1]
        parts = zip(np.split(out, splits, axis=-1),
                    np.split(noise, splits, axis=-1) if noise is not None else [None] * len(spec.nvec), strict=True)
        return np.stack([_sample_categorical(lg, u) for lg, u in parts], axis=-1)
    if spec.kind == "multibinary":
        if noise is None:
            return (out > 0).astype(np.int32)
        return (noise < 1.0 / (1.0 + np.exp(-out))).astype(np.int32)
    raise ValueError(spec.kind)


def _sample_categorical(logits, u):
    if u is None:
        return np.argmax(logits, axis=-1).astype(np.int32)
    # Gumbel-max: argmax(logits + G), G = -log(-log U)
    g = -np.log(-np.log(np.clip(u, 1e-12, 1.0 - 1e-7)))
    return np.argmax(logits + g, axis=-1).astype(np.int32)
