"""The fully jitted driver (gymnax, Brax): parity with a Python loop, population independence, sweeps, truncation,
resume, learning. Every gymnax test shares one set of static shapes so that each program compiles once per session.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab.assembly import env_seeds, init_population, make_driver
from ppolab.config import Config, agent_table
from ppolab.drivers import jit as J
from ppolab.training import train
from ppolab.update import learn

# The learning test's settings (the default config: solves CartPole within 100k steps); parity tests run 2 of its
# iterations. total_timesteps and iterations_per_call are part of the compiled program, so they are shared too.
BASE = Config(env="gymnax:CartPole-v1", total_timesteps=100_000, iterations_per_call=8, progress=False,
              tensorboard=False, eval_episodes=10, compile_cache="")


def _setup(cfg: Config):
    rows = agent_table(cfg)
    driver, net, spec = make_driver(cfg, len(rows))
    state = init_population(cfg, net, spec, rows)
    driver.start(env_seeds(rows, cfg.num_envs, 0))
    return driver, net, spec, state, rows


def _agent(tree, k):
    return jax.tree_util.tree_map(lambda x: x[k], tree)


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _python_loop(driver, spec, net, state, actors, iterations):
    """Reference driver: a host loop stepping the JAX env one jitted step at a time, then the same ``learn``."""
    step = jax.jit(functools.partial(J.env_step, driver.env, spec, net))
    learn_j = jax.jit(functools.partial(learn, spec, net))
    rollouts = []
    for _ in range(iterations):
        steps = []
        for t in range(driver.T):
            actors, s = step(state, actors, J.acting_key(state, t))
            steps.append(s)
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *steps)
        rollout, _ = J.steps_to_rollout(stacked, actors.obs)
        rollouts.append(rollout)
        state, _ = learn_j(state, rollout)
    return state, actors, rollouts


def test_jit_matches_python_loop():
    driver, net, spec, state, _ = _setup(BASE)
    s0, a0 = _agent(state, 0), _agent(driver.actors, 0)
    ref_state, ref_actors, ref_rollouts = _python_loop(driver, spec, net, s0, a0, 2)
    # the rollout: jitted scan vs the step-by-step loop
    _, rollout, _ = jax.jit(functools.partial(J.collect, driver.env, spec, net, driver.T))(s0, a0)
    _close(rollout, ref_rollouts[0])
    assert int(np.asarray(rollout.terminated).sum()) > 0  # episodes ended inside the rollout
    # two fused iterations vs two loop iterations
    new_state, metrics, episodes = driver.run(state, 2)
    assert len(metrics) == 2 and len(episodes) == 2
    _close(_agent(new_state, 0).params, ref_state.params, rtol=1e-4, atol=1e-5)
    _close(_agent(driver.actors, 0), ref_actors, rtol=1e-4, atol=1e-5)
    assert int(new_state.iteration[0]) == 2
    assert all(ep[0] == 0 and ep[3] >= 1 for ep in episodes[0])


def test_seeds_vmap_equals_alone_and_sweep_is_local():
    pop, _, _, pstate, rows = _setup(BASE.replace(num_seeds=2))
    assert [r["seed"] for r in rows] == [0, 1]
    pstate, _, _ = pop.run(pstate, 2)
    alone, _, _, astate, _ = _setup(BASE.replace(seed=1))
    astate, _, _ = alone.run(astate, 2)
    _close(_agent(pstate, 1).params, _agent(astate, 0).params, rtol=1e-4, atol=1e-5)
    _close(_agent(pop.actors, 1), _agent(alone.actors, 0), rtol=1e-4, atol=1e-5)

    # --clip-eps 0.2,0.3: agent 0 is the unswept run, agent 1 differs
    sweep, _, _, sstate, srows = _setup(BASE.replace(clip_eps=(0.2, 0.3)))
    assert [r["clip_eps"] for r in srows] == [0.2, 0.3]
    sstate, _, _ = sweep.run(sstate, 2)
    base, _, _, bstate, _ = _setup(BASE)
    bstate, _, _ = base.run(bstate, 2)
    _close(_agent(sstate, 0).params, _agent(bstate, 0).params, rtol=1e-4, atol=1e-5)
    diff = jax.tree_util.tree_map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                  _agent(sstate, 1).params, _agent(sstate, 0).params)
    assert max(jax.tree_util.tree_leaves(diff)) > 1e-6


def test_resume_driver_state_is_exact():
    d1, _, _, s1, _ = _setup(BASE)
    s1, m1, _ = d1.run(s1, 4)
    d2, _, _, s2, _ = _setup(BASE)
    s2, _, _ = d2.run(s2, 2)
    saved_state, saved_actors = jax.device_get((s2, d2.driver_state()))
    d3, _, _, _, _ = _setup(BASE.replace(seed=7))  # different episodes until restored
    template = d3.driver_state()
    assert jax.tree_util.tree_structure(template) == jax.tree_util.tree_structure(saved_actors)
    d3.restore_driver_state(saved_actors)
    s3, m3, _ = d3.run(jax.tree_util.tree_map(jnp.asarray, saved_state), 2)
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s3), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(m1[-1]["policy_loss"], m3[-1]["policy_loss"])


def test_gymnax_truncation_is_not_termination():
    from ppolab.envs.gymnax_env import GymnaxEnv

    env = GymnaxEnv("CartPole-v1")
    obs, state = env.reset(jax.random.PRNGKey(0))
    limit = env.params.max_steps_in_episode
    state = state.replace(time=jnp.asarray(limit - 1, jnp.int32))  # upright pole, one step from the time limit
    next_obs, new_state, reward, term, trunc, final_obs = jax.jit(env.step)(jax.random.PRNGKey(1), state,
                                                                            jnp.asarray(1))
    assert bool(trunc) and not bool(term) and float(reward) == 1.0
    assert int(new_state.time) == 0  # auto-reset
    assert not np.allclose(final_obs, next_obs)  # the final observation is kept for the bootstrap
    np.testing.assert_allclose(final_obs[0], obs[0] + 0.02 * obs[1], rtol=1e-5)  # x advanced one Euler step

    # a pole that falls: terminated, not truncated
    fallen = state.replace(time=jnp.asarray(3, jnp.int32), theta=jnp.asarray(0.5, jnp.float32))
    _, _, _, term, trunc, _ = jax.jit(env.step)(jax.random.PRNGKey(1), fallen, jnp.asarray(1))
    assert bool(term) and not bool(trunc)

    # the learner bootstraps the truncated step from V(final_obs): changing final_obs changes the advantage there
    from ppolab.advantages import gae

    T, B = 3, 1
    r = jnp.ones((T, B))
    v = jnp.zeros((T, B))
    tr = jnp.zeros((T, B), bool).at[1, 0].set(True)
    te = jnp.zeros((T, B), bool)
    a1, _ = gae(r, v, te, tr, jnp.full((T, B), 10.0), jnp.zeros(B), 0.9, 0.95)
    a0, _ = gae(r, v, tr, te, jnp.full((T, B), 10.0), jnp.zeros(B), 0.9, 0.95)  # same step marked terminated
    assert float(a1[1, 0]) == pytest.approx(1.0 + 0.9 * 10.0) and float(a0[1, 0]) == pytest.approx(1.0)


def test_gymnax_cartpole_learns(tmp_path):
    result = train(BASE.replace(preset="gymnax-cartpole", run_dir=str(tmp_path / "run"), checkpoint_every=0))
    assert result.summary["eval_return_mean"] >= 475, result.summary
    assert result.summary["episodes"] > 100


def _brax_two_iterations(name: str, **options):
    pytest.importorskip("brax")
    cfg = Config(env=f"brax:{name}", brax_backend="positional", total_timesteps=64, num_envs=4, num_steps=8,
                 num_epochs=1, num_minibatches=2, hidden_sizes=(8,), iterations_per_call=2, eval_episodes=0,
                 progress=False, compile_cache="", **options)
    driver, net, spec, state, _ = _setup(cfg)
    assert net.recurrent == ("policy" in options)
    assert driver.action_spec.kind == "box"
    state, metrics, _ = driver.run(state, 2)
    assert int(state.iteration[0]) == 2 and int(state.env_steps[0]) == 64
    assert np.isfinite(metrics[-1]["policy_loss"]).all()
    returns = driver.evaluate(state, 2, True, 0)
    assert returns.shape == (1, 2) and np.isfinite(returns).all()


def test_brax_two_iterations():
    _brax_two_iterations("fast")  # Brax's trivial test env: the plumbing without a physics compile


@pytest.mark.slow
def test_brax_with_a_recurrent_policy_two_iterations():
    _brax_two_iterations("fast", policy="lstm", rnn_size=8)  # the carry through Brax's jitted rollout and update


@pytest.mark.slow
def test_brax_physics_two_iterations():
    _brax_two_iterations("inverted_pendulum")  # ~50 s of compilation on a busy 2-core CPU


def test_brax_preset_is_brax_notebook_ant_and_the_cpu_note(tmp_path):
    from rich.console import Console

    from ppolab.config import apply_preset, validate

    cfg = validate(apply_preset(Config(preset="brax")))
    # Brax's notebook Ant PPO: 4096 envs x 16 unrolls of 5, batch 2048 sequences x 32 minibatches, 4 epochs
    assert (cfg.env, cfg.brax_backend, cfg.num_envs, cfg.num_steps) == ("brax:ant", "positional", 4096, 80)
    assert (cfg.num_epochs, cfg.num_minibatches, cfg.minibatch_size) == (4, 32, 2048 * 5)
    assert (cfg.gamma, cfg.clip_eps, cfg.ent_coef, cfg.learning_rate, cfg.anneal_lr) == (0.97, 0.3, 1e-2, 3e-4, False)
    pytest.importorskip("brax")
    console = Console(record=True, width=200)
    small = dict(env="brax:fast", total_timesteps=2048 * 2, num_steps=2, num_epochs=1, num_minibatches=2,
                 hidden_sizes=(8,), eval_episodes=0, progress=False, tensorboard=False, compile_cache="")
    train(Config(preset="brax", num_envs=2048, run_dir=str(tmp_path / "big"), **small), console=console)
    train(Config(preset="brax", num_envs=64, run_dir=str(tmp_path / "small"), **small), console=console)
    # the note is for CPUs only: once for 2048 envs, never for 64; on a GPU never
    expected = 1 if jax.default_backend() == "cpu" else 0
    assert console.export_text().count("Brax envs on a CPU run slowly") == expected


def test_brax_truncation_kept_apart():
    pytest.importorskip("brax")
    from ppolab.envs.brax_env import BraxEnv

    env = BraxEnv("fast", backend="positional", episode_length=3)
    _, state = env.reset(jax.random.PRNGKey(0))
    step = jax.jit(env.step)
    flags = []
    for t in range(4):
        _, state, _, term, trunc, _ = step(jax.random.PRNGKey(t), state, jnp.zeros(env.action_spec.size))
        flags.append((bool(term), bool(trunc)))
    assert flags == [(False, False), (False, False), (False, True), (False, False)]
    assert int(state.info["steps"]) == 1  # restarted after the truncation


def test_host_driver_seeds_match_alone():
    # the tiny CartPole run of test_cli.py, test_export.py... (alone) and of test_report.py's two seeds (population):
    # learners compiled once a session
    cfg = Config(env="CartPole-v1", total_timesteps=512, num_envs=4, num_steps=64, num_epochs=2, progress=False,
                 compile_cache="")
    pop, _, _, pstate, rows = _setup(cfg.replace(num_seeds=2))
    try:
        pstate, _, _ = pop.run(pstate, 2)
    finally:
        pop.close()
    alone, _, _, astate, _ = _setup(cfg.replace(seed=1))
    try:
        astate, _, _ = alone.run(astate, 2)
    finally:
        alone.close()
    _close(_agent(pstate, 1).params, _agent(astate, 0).params, rtol=1e-4, atol=1e-5)
