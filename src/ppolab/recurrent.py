"""Recurrent actor-critics (LSTM, GRU) and their plain-numpy mirror for acting on the host.

Layout: the feed-forward torso of ``ActorCritic`` (the MLP, or the Nature CNN for images), then the cell, then the
linear heads. One torso and cell shared by both heads by default; ``separate`` gives the actor and the critic a
torso and a cell each (carry ``(pi, v)``). The carry is a tuple of per-cell carries (LSTM: ``(c, h)``, GRU: ``h``),
leaves [..., rnn_size].

Episode boundaries: ``starts[t]`` is True where obs[t] is the first observation of an episode (after a reset, a
termination *or* a truncation); the cell's carry is reset to its initial value (zeros) there, before the cell
reads obs[t]. The same rule runs in acting (``sequence=False``, one step) and in the update's re-evaluation of whole
sequences (``sequence=True``, a scan over time), so both see the same carries.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ppolab import distributions as D
from ppolab.cells import GRU, LSTM, can_pair, paired_sequences
from ppolab.networks import ActorCritic, make_dist, sample_from_head

#: Cell kinds: name -> a flax module class with ``features``, ``weight_init`` (a key of ``cells.INITS``),
#: ``initialize_carry(batch_shape)`` and ``__call__(carry, x, starts, sequence=False)`` (``ppolab.cells``). Tests
#: register instrumented cells here.
CELLS: dict[str, type[nn.Module]] = {"lstm": LSTM, "gru": GRU}


def initial_carry(kind: str, size: int, batch_shape: tuple[int, ...], separate: bool = False):
    """The zero carry of ``batch_shape`` actors: a tuple with one cell carry (two with ``separate``)."""
    one = CELLS[kind](features=size, parent=None).initialize_carry(tuple(batch_shape))
    return (one, one) if separate else (one,)


class RecurrentActorCritic(ActorCritic):
    """(obs, starts, carry) -> (distribution, value, carries). See the module docstring for the layout."""

    cell: str = "lstm"
    rnn_size: int = 128
    separate: bool = False
    head_sizes: tuple[int, ...] = ()  # hidden layers after the cell, one stack per head (sb3-contrib, PureJaxRL)
    recurrent = True

    def initial_carry(self, batch_shape: tuple[int, ...]):
        return initial_carry(self.cell, self.rnn_size, batch_shape, self.separate)

    def _torso(self, obs, prefix):
        batch_shape = obs.shape[: obs.ndim - len(self.obs.shape)]
        if self.obs.image:
            x = self._nature_cnn(obs.reshape((-1,) + self.obs.shape))
            return x.reshape(batch_shape + x.shape[-1:])
        return self._mlp(obs.reshape(batch_shape + (-1,)).astype(jnp.float32), prefix)

    def _cell(self, name: str) -> nn.Module:
        return CELLS[self.cell](features=self.rnn_size, weight_init=self.default_init, name=name)

    def _run_cell(self, x, starts, carry, name, sequence, cell=None):
        cell = cell if cell is not None else self._cell(name)
        if not sequence:  # x [B, F], starts [B]
            carry, y = cell(carry, x, starts)
            return y, carry
        # x [S, L, F] -> time-major for the cell, then back: y [S, L, H], carries after each step [S, L, ...]
        time_major = lambda a: jnp.swapaxes(a, 0, 1)
        y, carries = cell(carry, time_major(x), time_major(starts), sequence=True)
        return time_major(y), jax.tree_util.tree_map(time_major, carries)

    def _run_cells(self, obs, starts, carry):
        """The actor's and the critic's cells over sequences (obs [S, L, ...]): as one paired call where
        ``cells.can_pair`` (``cells.paired_sequences``: the two run in parallel), else one after the other."""
        xs, names = [self._torso(obs, "pi"), self._torso(obs, "v")], ("pi_rnn", "v_rnn")
        cells = [self._cell(n) for n in names]
        if not can_pair(cells, xs):
            return [self._run_cell(x, starts, c, None, True, cell) for x, c, cell in zip(xs, carry, cells, strict=True)]
        time_major = lambda a: jnp.swapaxes(a, 0, 1)
        out = paired_sequences(cells, carry, [time_major(x) for x in xs], time_major(starts))
        return [(time_major(y), jax.tree_util.tree_map(time_major, c)) for y, c in out]

    @nn.compact
    def __call__(self, obs, starts, carry, heads: str = "both", action_mask=None, sequence: bool = True):
        """Sequences (``sequence=True``): obs [S, L, *obs], starts [S, L] bool, carry leaves [S, H] (the carry before
        step 0) -> dist [S, L], value [S, L], the carry after each step (leaves [S, L, H]). One step
        (``sequence=False``): obs [B, *obs], starts [B], carry [B, H] -> dist [B], value [B], carry [B, H].
        Every cell advances whatever ``heads`` asks for (the stored carries must stay right); ``heads`` only picks
        which heads are computed ("both", "policy": value None, "value": dist None)."""
        if self.separate and sequence:
            (y_pi, c_pi), (y_v, c_v) = self._run_cells(obs, starts, carry)
            new_carry = (c_pi, c_v)
        elif self.separate:
            y_pi, c_pi = self._run_cell(self._torso(obs, "pi"), starts, carry[0], "pi_rnn", sequence)
            y_v, c_v = self._run_cell(self._torso(obs, "v"), starts, carry[1], "v_rnn", sequence)
            new_carry = (c_pi, c_v)
        else:
            y_pi, c = self._run_cell(self._torso(obs, "torso"), starts, carry[0], "rnn", sequence)
            y_v, new_carry = y_pi, (c,)
        dist = value = None
        if self.head_sizes:  # "pi_post_0.." / "v_post_0..": each head's own layers after the cell
            y_pi = self._mlp(y_pi, "pi_post", self.head_sizes) if heads in ("both", "policy") else y_pi
            y_v = self._mlp(y_v, "v_post", self.head_sizes) if heads in ("both", "value") else y_v
        if heads in ("both", "policy"):
            head = self._head(self.action.head_size, 0.01, "pi_head")(y_pi)
            log_std = None
            if self.action.kind == "box":
                log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action.size,))
            dist = D.with_mask(make_dist(self.action, head, log_std), action_mask)
        if heads in ("both", "value"):
            value = self._head(1, 1.0, "v_head")(y_v)[..., 0]
        return dist, value, new_carry

    def init_params(self, key, batch: int = 1):
        obs = jnp.zeros((batch,) + self.obs.shape, jnp.uint8 if self.obs.image else jnp.float32)
        return self.init(key, obs, jnp.ones((batch,), bool), self.initial_carry((batch,)), sequence=False)


def make_recurrent_network(cfg, obs, action) -> RecurrentActorCritic:
    return RecurrentActorCritic(obs=obs, action=action, hidden_sizes=tuple(cfg.hidden_sizes),
                                activation=cfg.activation, shared_torso=not cfg.rnn_separate,
                                ortho_init=cfg.ortho_init, log_std_init=cfg.log_std_init, cell=cfg.policy,
                                rnn_size=cfg.rnn_size, separate=cfg.rnn_separate,
                                head_sizes=tuple(cfg.rnn_head_sizes), default_init=cfg.default_init)


# ---- numpy mirror ---------------------------------------------------------------------------------------------------
def _sigmoid(x):
    """1 / (1 + e^-x) as 0.5 (tanh(x / 2) + 1), without overflow warnings; one new array."""
    y = np.tanh(0.5 * x)
    y += 1.0
    y *= 0.5
    return y


@dataclasses.dataclass
class NumpyCell:
    """One LSTM (flax ``OptimizedLSTMCell``) or GRU (flax ``GRUCell``) over K stacked agents, in numpy."""

    kind: str
    wi: np.ndarray   # [K, in, G * H]
    wh: np.ndarray   # [K, H, G * H]
    bi: np.ndarray   # [K, 1, G * H]
    bh: np.ndarray   # [K, 1, G * H] (LSTM: zeros; GRU: only the n gate's recurrent bias b_hn)

    @classmethod
    def from_params(cls, kind: str, p) -> NumpyCell:
        """From ``cells.LSTM`` / ``cells.GRU`` parameters with a leading agent axis."""
        if kind == "lstm":
            return cls(kind, p["wi"], p["wh"], p["b"][:, None, :], np.zeros_like(p["b"][:, None, :]))
        if kind == "gru":
            H = p["wh"].shape[1]
            bh = np.concatenate([np.zeros((p["b_hn"].shape[0], 2 * H), np.float32), p["b_hn"]], axis=-1)
            return cls(kind, p["wi"], p["wh"], p["bi"][:, None, :], bh[:, None, :])
        raise ValueError(f"no numpy mirror of the {kind!r} cell")

    def __call__(self, carry, x):
        """carry leaves [K, B, H], x [K, B, in] -> (carry', y [K, B, H]). Few numpy calls (each costs microseconds
        at acting's sizes): the gates as views, one sigmoid over all of them (g's part unused)."""
        H = self.wh.shape[1]
        if self.kind == "lstm":
            c, h = carry
            z = np.matmul(x, self.wi)
            z += self.bi
            z += np.matmul(h, self.wh)
            g = np.tanh(z[..., 2 * H:3 * H])
            s = _sigmoid(z)
            c = s[..., H:2 * H] * c + s[..., :H] * g
            h = s[..., 3 * H:] * np.tanh(c)
            return (c, h), h
        h = carry
        zi = np.matmul(x, self.wi)
        zi += self.bi
        zh = np.matmul(h, self.wh)
        zh += self.bh
        ru = _sigmoid(zi[..., :2 * H] + zh[..., :2 * H])
        r, u = ru[..., :H], ru[..., H:]
        n = np.tanh(zi[..., 2 * H:] + r * zh[..., 2 * H:])
        h = (1.0 - u) * n + u * h
        return h, h


@dataclasses.dataclass
class NumpyRecurrentPolicy:
    """``RecurrentActorCritic``'s acting step (MLP torso) in numpy, over K stacked agents: obs [K, B, *obs]."""

    net: RecurrentActorCritic
    torsos: list      # per cell: [(W [K, in, out], b [K, 1, out])]
    cells: list       # per cell: NumpyCell
    head: tuple
    std: np.ndarray | None
    post: list = dataclasses.field(default_factory=list)  # the policy head's layers after the cell

    @classmethod
    def supports(cls, net) -> bool:
        return not net.obs.image and net.cell in ("lstm", "gru")

    @classmethod
    def from_params(cls, net: RecurrentActorCritic, params) -> NumpyRecurrentPolicy:
        p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params["params"])
        names = (("pi", "pi_rnn"), ("v", "v_rnn")) if net.separate else (("torso", "rnn"),)
        torsos = [[(p[f"{t}_{i}"]["kernel"], p[f"{t}_{i}"]["bias"][:, None, :]) for i in range(len(net.hidden_sizes))]
                  for t, _ in names]
        cells = [NumpyCell.from_params(net.cell, p[c]) for _, c in names]
        head = (p["pi_head"]["kernel"], p["pi_head"]["bias"][:, None, :])
        std = np.exp(p["log_std"][:, None, :]).astype(np.float32) if "log_std" in p else None
        post = [(p[f"pi_post_{i}"]["kernel"], p[f"pi_post_{i}"]["bias"][:, None, :])
                for i in range(len(net.head_sizes))]
        return cls(net, torsos, cells, head, std, post)

    def step(self, obs: np.ndarray, starts: np.ndarray, carry):
        """obs [K, B, *obs] (normalized), starts [K, B] bool, carry (leaves [K, B, H]) -> (head [K, B, head],
        carry')."""
        act = np.tanh if self.net.activation == "tanh" else (lambda z: np.maximum(z, 0, out=z))
        x0 = obs.reshape(obs.shape[:2] + (-1,)).astype(np.float32, copy=False)
        keep = ~starts[..., None]
        out, new_carry = None, []
        for layers, cell, c in zip(self.torsos, self.cells, carry, strict=True):
            x = x0
            for W, b in layers:
                x = act(np.matmul(x, W) + b)
            c = jax.tree_util.tree_map(lambda a: np.where(keep, a, np.float32(0)), c)
            c, y = cell(c, x)
            new_carry.append(c)
            if out is None:
                for W, b in self.post:
                    y = act(np.matmul(y, W) + b)
                out = np.matmul(y, self.head[0]) + self.head[1]
        return out, tuple(new_carry)

    def sample_with_noise(self, obs, starts, carry, noise, mask=None):
        """As ``NumpyPolicy.sample_with_noise``, one recurrent step: -> (actions [K, B, ...], carry')."""
        out, carry = self.step(obs, starts, carry)
        return sample_from_head(self.net.action, out, noise, mask, self.std), carry
