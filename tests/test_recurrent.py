"""Recurrent policies: the numpy cell against flax's, the theory at theta_old, the carry's reset placement and value
bootstraps (an instrumented counting cell), parity of the drivers, populations and resume, and the options."""

from __future__ import annotations

import functools

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab import advantages as adv_lib
from ppolab import recurrent as R
from ppolab.assembly import env_seeds, init_population, make_driver
from ppolab.config import Config, ConfigError, agent_table, validate
from ppolab.drivers import jit as J
from ppolab.options import check_options_apply
from ppolab.spaces import ActionSpec, ObsSpec
from ppolab.types import Rollout
from ppolab.update import LearnerSpec, init_state, learn, loss_fn, make_batch

OBS = ObsSpec((3,))
DISCRETE = ActionSpec("discrete", 3)
BOX = ActionSpec("box", 2, low=(-1.0, -1.0), high=(1.0, 1.0))


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _agent(tree, k):
    return jax.tree_util.tree_map(lambda x: x[k], tree)


# ---- the cell: numpy mirror, sequences vs steps ---------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("layout", [dict(hidden_sizes=(16,)), dict(hidden_sizes=(), head_sizes=(8, 4))],
                         ids=["torso", "heads"])
def test_sequence_scan_step_by_step_and_numpy_agree(cell, separate, layout):
    net = R.RecurrentActorCritic(obs=OBS, action=DISCRETE, cell=cell, rnn_size=8, separate=separate, **layout)
    params = net.init_params(jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda p: p * 3.0, params)  # logits far from uniform
    S, L = 3, 6
    obs = jax.random.normal(jax.random.PRNGKey(1), (S, L, 3))
    starts = jax.random.bernoulli(jax.random.PRNGKey(2), 0.3, (S, L))
    carry0 = jax.tree_util.tree_map(lambda x: x + 0.5, net.initial_carry((S,)))
    dist, values, carries = net.apply(params, obs, starts, carry0)
    numpy_policy = R.NumpyRecurrentPolicy.from_params(net, jax.tree_util.tree_map(lambda x: x[None], params))
    c, c_np = carry0, jax.tree_util.tree_map(lambda x: np.asarray(x)[None], carry0)
    for t in range(L):
        d, v, c = net.apply(params, obs[:, t], starts[:, t], c, sequence=False)
        out, c_np = numpy_policy.step(np.asarray(obs[None, :, t]), np.asarray(starts[None, :, t]), c_np)
        np.testing.assert_allclose(d.logits, dist.logits[:, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, values[:, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[0], dist.logits[:, t], rtol=1e-4, atol=1e-5)
        _close(c, jax.tree_util.tree_map(lambda x, t=t: x[:, t], carries))
        _close(jax.tree_util.tree_map(lambda x: x[0], c_np), c, rtol=1e-4, atol=1e-5)
    assert float(jnp.max(jnp.abs(dist.logits[:, 1:] - dist.logits[:, :-1]))) > 1e-3  # the carry matters


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "scans"])
def test_paired_actor_and_critic_cells_equal_each_cell_run_alone(cell, kernels, monkeypatch):
    """--rnn-separate runs the actor's and the critic's cells as one vmapped (paired) sequence; outputs, carries
    and gradients must equal those of the two cells run one after the other (fails if the pairing swaps or shares
    a cell's weights or carry)."""
    from ppolab import cell_kernels

    if kernels and not cell_kernels.available():
        pytest.skip("the C++ cell kernels could not be built here")
    monkeypatch.setattr(cell_kernels, "available", lambda: kernels)
    net = R.RecurrentActorCritic(obs=OBS, action=DISCRETE, cell=cell, rnn_size=16, separate=True,
                                 hidden_sizes=(8,))
    params = jax.tree_util.tree_map(lambda p: p * 2.0, net.init_params(jax.random.PRNGKey(0)))
    S, L = 4, 9
    obs = jax.random.normal(jax.random.PRNGKey(1), (S, L, 3))
    starts = jax.random.bernoulli(jax.random.PRNGKey(2), 0.2, (S, L))
    leaves, tree = jax.tree_util.tree_flatten(net.initial_carry((S,)))
    carry0 = jax.tree_util.tree_unflatten(tree, [jax.random.normal(jax.random.PRNGKey(3 + i), x.shape)
                                                 for i, x in enumerate(leaves)])  # actor's != critic's

    def run(params):
        dist, values, carries = net.apply(params, obs, starts, carry0)
        loss = jnp.sum(dist.logits ** 2) + jnp.sum(jnp.sin(values)) + sum(
            jnp.sum(jnp.cos(c)) for c in jax.tree_util.tree_leaves(carries))
        return loss, (dist.logits, values, carries)

    grad = jax.jit(jax.grad(run, has_aux=True))
    paired = grad(params)
    monkeypatch.setattr(R, "can_pair", lambda cells, xs: False)
    alone = grad(params)
    _close(paired[1], alone[1], rtol=1e-6, atol=1e-6)
    _close(paired[0], alone[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_cells_sequence_gradient_equals_autodiff_of_single_steps(kind):
    from ppolab import cells

    cell = {"lstm": cells.LSTM, "gru": cells.GRU}[kind](features=6)
    Lq, Bq = 7, 3
    x = jax.random.normal(jax.random.PRNGKey(1), (Lq, Bq, 5))
    starts = jnp.asarray(np.random.default_rng(0).random((Lq, Bq)) < 0.3).at[0, 0].set(False)
    carry = jax.tree_util.tree_map(lambda c: c + 0.4, cell.initialize_carry((Bq,)))
    params = cell.init(jax.random.PRNGKey(0), carry, x[0], starts[0])["params"]
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # nonzero biases
    weights = jax.random.normal(jax.random.PRNGKey(2), (Lq, Bq, 6))

    def loss(fn, p, x):
        ys, carries = fn(p, x)
        return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree_util.tree_leaves(carries))

    fast = lambda p, x: cell.apply({"params": p}, carry, x, starts, sequence=True)
    ref = lambda p, x: cells.reference_sequence(kind)(p, carry, x, starts)
    _close(fast(params, x), ref(params, x), rtol=1e-6, atol=1e-6)
    g_fast = jax.grad(functools.partial(loss, fast), argnums=(0, 1))(params, x)
    g_ref = jax.grad(functools.partial(loss, ref), argnums=(0, 1))(params, x)
    _close(g_fast, g_ref, rtol=1e-5, atol=1e-6)
    assert all(float(jnp.max(jnp.abs(g))) > 1e-3 for g in jax.tree_util.tree_leaves(g_fast))


# ---- theory at theta_old -------------------------------------------------------------------------------------------
T, B, L = 16, 4, 4


def _rollout(net, action, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(T, B, 3)).astype(np.float32)
    acts = (rng.integers(0, action.size, size=(T, B)).astype(np.int32) if action.kind == "discrete"
            else rng.normal(size=(T, B, action.size)).astype(np.float32))
    term = rng.random((T, B)) < 0.1
    trunc = (rng.random((T, B)) < 0.1) & ~term
    starts = np.concatenate([rng.random((1, B)) < 0.5, (term | trunc)[:-1]])
    carries = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape).astype(np.float32)),
                                     net.initial_carry((T // L, B)))
    return Rollout(obs=jnp.asarray(obs), actions=jnp.asarray(acts), rewards=jnp.asarray(rng.normal(size=(T, B))),
                   terminated=jnp.asarray(term), truncated=jnp.asarray(trunc), final_obs=jnp.asarray(obs * 0.5),
                   last_obs=jnp.asarray(obs[0]), starts=jnp.asarray(starts), carries=carries)


def _learner(objective="clip", cell="lstm", action=DISCRETE, **kw):
    cfg = Config(num_envs=B, num_steps=T, num_epochs=2, num_minibatches=4, total_timesteps=T * B * 10,
                 objective=objective, policy=cell, rnn_size=8, hidden_sizes=(16,), seq_len=L, **kw)
    net = R.make_recurrent_network(cfg, OBS, action)
    spec = LearnerSpec.from_config(cfg)
    hp = jax.tree_util.tree_map(lambda x: x[0], init_population(cfg, net, spec, agent_table(cfg)).hparams)
    return net, spec, init_state(spec, net, jax.random.PRNGKey(0), hp, B)


@pytest.mark.parametrize("cell,action", [("lstm", DISCRETE), ("gru", BOX)])
def test_ratio_is_one_and_cpi_gradient_equals_pg_gradient_at_theta_old(cell, action):
    grads = {}
    for objective in ("cpi", "pg", "clip"):
        net, spec, state = _learner(objective, cell, action)
        rollout = _rollout(net, action)
        perm0 = jax.random.permutation(jax.random.PRNGKey(3), T // L * B)
        batch, _ = jax.jit(make_batch, static_argnums=(0, 1))(spec, net, state, rollout, perm0)
        assert batch.obs.shape == (T // L * B, L, 3) and batch.starts.shape == (T // L * B, L)
        first = perm0.reshape(spec.num_minibatches, -1)[0]
        mb = jax.tree_util.tree_map(lambda x, first=first: x[first], batch)
        loss = jax.jit(lambda p, spec=spec, net=net, mb=mb, hp=state.hparams: loss_fn(p, spec, net, mb, 0.2, 1.0, hp))
        _, aux = loss(state.params)
        assert float(aux.ratio_min) == 1.0 and float(aux.ratio_max) == 1.0 and float(aux.approx_kl) == 0.0
        grads[objective] = jax.grad(lambda p, loss=loss: loss(p)[0])(state.params)
    _close(grads["cpi"], grads["pg"], rtol=1e-5, atol=1e-7)
    _close(grads["clip"], grads["cpi"], rtol=1e-5, atol=1e-7)  # inside the clip range at r = 1
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads["pg"])) > 1e-4


def test_sequences_start_from_their_stored_carries():
    net, spec, state = _learner()
    rollout = _rollout(net, DISCRETE)
    perm0 = jnp.arange(T // L * B)
    batch, _ = make_batch(spec, net, state, rollout, perm0)
    moved = rollout.replace(carries=jax.tree_util.tree_map(lambda c: c.at[1].add(1.0), rollout.carries))
    other, _ = make_batch(spec, net, state, moved, perm0)
    changed = np.abs(np.asarray(other.old_log_prob - batch.old_log_prob)) > 1e-7  # [S, L]
    starts = np.asarray(batch.starts)
    first_reset = np.where(starts.any(1), starts.argmax(1), L)  # the chunk's steps before its first episode start
    for s in range(T // L * B):
        expect = np.arange(L) < first_reset[s] if s // B == 1 else np.zeros(L, bool)
        np.testing.assert_array_equal(changed[s], expect, err_msg=f"sequence {s}")


# ---- reset placement and bootstraps: a cell that counts steps since the last reset ----------------------------------
class CountingCell(nn.Module):
    """carry' = carry + 1 (after the reset) and output carry': the carry counts the steps since the last reset."""

    features: int
    weight_init: str = "flax"  # no weights: the cells' protocol field, unused

    def initialize_carry(self, batch_shape):
        return jnp.zeros(tuple(batch_shape) + (self.features,), jnp.float32)

    def __call__(self, carry, x, starts, sequence=False):
        step = lambda c, s: jnp.where(s[..., None], 0.0, c) + 1.0
        if not sequence:
            carry = step(carry, starts)
            return carry, carry
        _, counts = jax.lax.scan(lambda c, s: (step(c, s), step(c, s)), carry, starts)
        return counts, counts


class FixedLength(gym.Env):
    """Observation 0, reward 1; terminated after ``length`` steps (or truncated by a shorter TimeLimit)."""

    def __init__(self, length: int):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.length, self.t = length, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), 1.0, self.t >= self.length, False, {}


gym.register("ppolab-test/Term7-v0", entry_point=FixedLength, kwargs={"length": 7})
gym.register("ppolab-test/Trunc5-v0", entry_point=FixedLength, kwargs={"length": 100}, max_episode_steps=5)


@pytest.fixture
def counting_cell(monkeypatch):
    monkeypatch.setitem(R.CELLS, "count", CountingCell)


@pytest.mark.parametrize("env_id,length,flag", [("ppolab-test/Term7-v0", 7, "terminated"),
                                                 ("ppolab-test/Trunc5-v0", 5, "truncated")])
def test_the_carry_is_reset_at_every_episode_start_in_rollout_and_update(counting_cell, env_id, length, flag):
    cfg = Config(env=env_id, policy="lstm", num_envs=2, num_steps=T, seq_len=L, num_minibatches=2, num_epochs=1,
                 rnn_size=2, hidden_sizes=(4,), total_timesteps=T * 2 * 3, act_backend="jax", gamma=0.9,
                 gae_lambda=0.7, progress=False)
    from ppolab.drivers.host import HostDriver

    driver, net, spec = make_driver(cfg, 1)
    net = net.clone(cell="count")
    driver = HostDriver(cfg, driver.env, net, spec, 1, driver.eval_env)
    state = init_population(cfg, net, spec, agent_table(cfg))
    driver.start(env_seeds(agent_table(cfg), cfg.num_envs, 0))
    for it in range(3):  # episodes cross rollout and sequence boundaries
        rollout, _ = driver.collect(state)
        r = _agent(rollout, 0)
        step_in_episode = (it * T + np.arange(T))[:, None] % length * np.ones((1, 2), int)  # [T, B]
        np.testing.assert_array_equal(r.starts, step_in_episode == 0)
        assert getattr(r, flag)[step_in_episode == length - 1].all() and getattr(r, flag).sum() == (
            step_in_episode == length - 1).sum()
        # acting: the carry before each sequence's first step is the count so far (the reset happens in the cell)
        stored = r.carries[0][..., 0]  # [C, B]: the (only) cell's count
        before = step_in_episode[::L]
        np.testing.assert_array_equal(np.where(r.starts[::L], 0, stored), before)
        # the update's re-evaluation: the carry after each step is its step index in the episode, plus 1
        batch, _ = jax.jit(make_batch, static_argnums=(0, 1))(spec, net, _agent(state, 0), r,
                                                             jnp.arange(T // L * 2))
        _, _, carries = net.apply(_agent(state, 0).params, batch.obs, batch.starts, batch.carry)
        after = np.asarray(carries[0][..., 0]).reshape(T // L, 2, L).transpose(0, 2, 1).reshape(T, 2)
        np.testing.assert_array_equal(after, step_in_episode + 1)
        _check_bootstraps(net, _agent(state, 0), r, batch, step_in_episode, cfg)


def _check_bootstraps(net, state, r, batch, step_in_episode, cfg):
    """The targets equal GAE computed from V(count): V(final_obs) of a truncated step continues its episode's count
    (after step t: j + 1, reading final_obs: j + 2), V(last_obs) likewise unless the last step ended an episode."""
    p = state.params["params"]["v_head"]
    value_of = lambda count: count * float(np.sum(p["kernel"])) + float(p["bias"][0])
    done = r.terminated | r.truncated
    values = value_of(step_in_episode + 1.0)
    final = value_of(step_in_episode + 2.0)
    last = np.where(done[-1], value_of(1.0), value_of(step_in_episode[-1] + 2.0))
    _, targets = adv_lib.gae(jnp.asarray(r.rewards), jnp.asarray(values, jnp.float32), r.terminated, r.truncated,
                             jnp.asarray(final, jnp.float32), jnp.asarray(last, jnp.float32), cfg.gamma,
                             cfg.gae_lambda)
    want = np.asarray(targets).reshape(T // L, L, 2).transpose(0, 2, 1).reshape(-1, L)
    np.testing.assert_allclose(np.asarray(batch.targets), want, rtol=1e-5, atol=1e-5)


# ---- drivers: jitted vs host loop, populations, resume ---------------------------------------------------------------
GYMNAX = Config(env="gymnax:CartPole-v1", policy="gru", rnn_size=16, hidden_sizes=(32,), num_envs=4, num_steps=32,
                seq_len=8, num_minibatches=4, num_epochs=2, total_timesteps=4 * 32 * 4, iterations_per_call=2,
                progress=False, tensorboard=False, eval_episodes=0, compile_cache="", act_backend="jax")


def _setup(cfg):
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    state = init_population(cfg, net, spec, rows)
    driver.start(env_seeds(rows, cfg.num_envs, 0))
    return driver, net, spec, state


def test_host_and_jitted_drivers_agree_with_a_recurrent_policy():
    from _host_jax import HostJaxEnv, SameKeysHostDriver

    jitted, net, spec, state = _setup(GYMNAX)
    host = SameKeysHostDriver(GYMNAX, HostJaxEnv(jitted.env, 1, GYMNAX.num_envs), net, spec, 1, eval_env=None)
    host.start(env_seeds(agent_table(GYMNAX), GYMNAX.num_envs, 0))
    rollout, _ = host.collect(state)
    collect = jax.jit(jax.vmap(functools.partial(J.collect, jitted.env, spec, net, GYMNAX.num_steps)))
    _, want, _ = collect(state, jitted.actors)
    assert np.asarray(want.starts)[:, 1:].any()  # episodes restarted inside the rollout
    _close(rollout, want, rtol=1e-5, atol=1e-6)
    host.start(env_seeds(agent_table(GYMNAX), GYMNAX.num_envs, 0))
    s_host, _, _ = host.run(state, 4)
    s_jit, _, _ = jitted.run(state, 4)
    _close(s_host.params, s_jit.params, rtol=1e-4, atol=1e-5)


def test_vmapped_seeds_equal_each_alone_and_resume_is_exact():
    pop, _, _, pstate = _setup(GYMNAX.replace(num_seeds=2))
    pstate, _, _ = pop.run(pstate, 4)
    alone, _, _, astate = _setup(GYMNAX.replace(seed=1))
    astate, _, _ = alone.run(astate, 4)
    _close(_agent(pstate, 1).params, _agent(astate, 0).params, rtol=1e-4, atol=1e-5)
    _close(_agent(pop.actors, 1).carry, _agent(alone.actors, 0).carry, rtol=1e-4, atol=1e-5)
    # resume: the carry travels in the driver state; continuing from a saved state is bitwise
    d2, _, _, s2 = _setup(GYMNAX.replace(seed=1))
    s2, _, _ = d2.run(s2, 2)
    saved = jax.device_get((s2, d2.driver_state()))
    d3, _, _, _ = _setup(GYMNAX.replace(seed=5))
    d3.restore_driver_state(saved[1])
    s3, _, _ = d3.run(jax.tree_util.tree_map(jnp.asarray, saved[0]), 2)
    for a, b in zip(jax.tree_util.tree_leaves(_agent(s3, 0)), jax.tree_util.tree_leaves(_agent(astate, 0)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- options ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,message", [
    (dict(policy="lstm", num_envs=2, num_steps=32, seq_len=0, num_minibatches=4), "must divide the 2 sequences"),
    (dict(policy="gru", num_steps=32, seq_len=5), "--seq-len 5 must divide --num-steps 32"),
    (dict(policy="lstm", rnn_size=0), "--rnn-size must be a positive width"),
    (dict(rnn_size=64), "--rnn-size 64 does nothing with --policy feedforward"),
    (dict(seq_len=8), "--seq-len 8 does nothing with --policy feedforward"),
    (dict(policy="lstm", shared_torso=True), "--shared-torso True does nothing with --policy lstm"),
])
def test_recurrent_options_are_checked_before_any_work(kw, message):
    with pytest.raises(ConfigError, match=message):
        check_options_apply(validate(Config(**kw)))


def test_recurrent_train_learn_compiles_once_per_shape():
    net, spec, state = _learner()
    rollout = _rollout(net, DISCRETE)
    new_state, metrics = jax.jit(learn, static_argnums=(0, 1))(spec, net, state, rollout)
    assert float(metrics["minibatches_done"]) == spec.num_epochs * spec.num_minibatches
    assert float(metrics["kl"]) > 0 and np.isfinite(float(metrics["policy_loss"]))
