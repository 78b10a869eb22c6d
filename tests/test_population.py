"""Agent groups on parallel threads (drivers/population.py): the same results as one vmapped program."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppolab
from ppolab.config import Config, ConfigError, validate
from ppolab.drivers.population import Groups, num_groups


def test_groups_split_and_join_along_each_outputs_agent_axis():
    g = Groups(5, 2)
    try:
        assert g.bounds == [(0, 3), (3, 5)]
        x = {"a": jnp.arange(5.0), "b": jnp.arange(10).reshape(5, 2)}
        seen = []

        def fn(tree):
            seen.append(int(tree["a"].shape[0]))
            return tree["a"] * 2, jnp.stack([tree["b"], tree["b"] + 100])  # agent axis 0 and 1

        a, b = g(fn, x, out_axes=(0, 1))
        assert sorted(seen) == [2, 3]
        np.testing.assert_array_equal(a, np.arange(5.0) * 2)
        np.testing.assert_array_equal(b, np.stack([np.arange(10).reshape(5, 2), np.arange(10).reshape(5, 2) + 100]))
    finally:
        g.close()


def test_num_groups():
    assert num_groups(1, 8) == 1
    assert num_groups(3, 2) == 2  # never more groups than agents
    assert 1 <= num_groups(0, 8) <= 8


def _final(tmp_path, name, **kw):
    cfg = Config(run_dir=str(tmp_path / name), tensorboard=False, progress=False, eval_episodes=2,
                 checkpoint_every=0, **kw)
    res = ppolab.train(cfg)
    with open(tmp_path / name / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return res, {k: np.asarray([float(r[k]) for r in rows]) for k in rows[0] if k != "time_s"}


@pytest.mark.parametrize("env,kw", [
    ("CartPole-v1", dict(vector_mode="vector", num_envs=4, num_steps=32, num_epochs=2, total_timesteps=1024)),
    ("gymnax:CartPole-v1", dict(num_envs=4, num_steps=32, num_epochs=2, total_timesteps=1024)),
])
@pytest.mark.parametrize("num_seeds", [4, 3])
def test_two_threads_give_the_same_run_as_one(tmp_path, env, kw, num_seeds):
    one, m1 = _final(tmp_path, "one", env=env, num_seeds=num_seeds, threads=1, **kw)
    two, m2 = _final(tmp_path, "two", env=env, num_seeds=num_seeds, threads=2, **kw)
    for x, y in zip(jax.tree_util.tree_leaves(one.state), jax.tree_util.tree_leaves(two.state), strict=True):
        if num_seeds == 4:  # groups of 2 + 2: the same vmapped program per group as for all 4, bit for bit
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        else:  # 2 + 1: a group of one runs unbatched, which may round differently in the last bits
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
    assert list(m1) == list(m2) and len(m1["iteration"]) > 0
    for k in m1:  # batch statistics (explained variance) may differ in the last bits with the batch size of a vmap
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert one.summary["eval_return_mean"] == pytest.approx(two.summary["eval_return_mean"])


def test_bad_threads_value_is_refused():
    with pytest.raises(ConfigError, match="--threads"):
        validate(Config(threads=-1))


def test_xla_compiler_options(monkeypatch):
    from ppolab import xla

    try:
        monkeypatch.setattr(xla, "_cpu_has_avx512", lambda: True)
        xla.compiler_options.cache_clear()
        assert xla.compiler_options() == {"xla_cpu_prefer_vector_width": 512}
        assert float(xla.jit(lambda x: x * 2.0)(jnp.asarray(2.0))) == 4.0  # the option is accepted by XLA
        monkeypatch.setattr(xla, "_cpu_has_avx512", lambda: False)
        xla.compiler_options.cache_clear()
        assert xla.compiler_options() == {}
        monkeypatch.setattr(xla, "_cpu_has_avx512", lambda: True)
        monkeypatch.setenv("PPOLAB_XLA_DEFAULTS", "0")
        xla.compiler_options.cache_clear()
        assert xla.compiler_options() == {}
    finally:
        xla.compiler_options.cache_clear()
