"""One record per objective (issue 11): the CLI's choices, the refused coefficients, compare's settings and the
loss all come from ``objectives.OBJECTIVES``; a record added there is trained with nothing else changed."""

import dataclasses
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab import config, objectives
from ppolab.experiments.grid import parse_setting
from ppolab.objectives import Objective, PolicyTerms, clip_term


def test_cli_choices_are_the_registry():
    hints = typing.get_type_hints(config.Config)
    assert typing.get_args(hints["objective"]) == tuple(objectives.OBJECTIVES)


@pytest.mark.parametrize("name", list(objectives.OBJECTIVES))
def test_compare_settings_follow_each_record(name):
    record = objectives.OBJECTIVES[name]
    if record.setting_coefficient is None:
        s = parse_setting(name)
        assert (s.objective, s.value, s.field) == (name, None, None)
    else:
        s = parse_setting(f"{name}-0.25")
        assert (s.name, s.objective, s.value, s.field) == (f"{name}-0.25", name, 0.25, record.setting_coefficient)
        assert record.setting_coefficient in record.coefficients


def test_records_need_kl_exactly_when_their_integrand_reads_it():
    n = 5
    t = PolicyTerms(log_prob=jnp.zeros(n), old_log_prob=jnp.zeros(n), advantages=jnp.ones(n), kl=None)
    for record in objectives.OBJECTIVES.values():
        if record.needs_kl:
            with pytest.raises(TypeError):
                record.term(t, 0.2, 1.0)
        else:
            assert record.term(t, 0.2, 1.0).shape == (n,)


def dual_clip_term(t, clip_eps, beta, c=3.0):
    """The worked example of docs/architecture.md (dual-clip PPO)."""
    clipped = clip_term(t, clip_eps, beta)
    return jnp.where(t.advantages < 0, jnp.maximum(clipped, c * t.advantages), clipped)


def test_a_new_record_is_all_the_learner_needs(monkeypatch):
    """Add dual-clip to the registry only: the learner's loss uses its integrand (the policy loss differs from
    L^CLIP's exactly where A < 0 and r > 1 + eps is so large that r A < c A)."""
    from ppolab.networks import make_network
    from ppolab.spaces import ActionSpec, ObsSpec
    from ppolab.types import Batch, HParams
    from ppolab.update import LearnerSpec, init_state, loss_fn

    monkeypatch.setitem(objectives.OBJECTIVES, "dual-clip", Objective(
        "dual-clip", "Ye et al. 2020", dual_clip_term, coefficients=("clip_eps", "anneal_clip"),
        setting_coefficient="clip_eps"))
    cfg = config.Config(num_envs=2, num_steps=4, num_minibatches=1)
    net = make_network(cfg, ObsSpec((3,), "float32"), ActionSpec("discrete", 2))
    spec = dataclasses.replace(LearnerSpec.from_config(cfg), norm_adv=False)
    hp = HParams(*(jnp.float32(x) for x in (1e-3, 0.2, 1.0, 0.01, 0.0, 0.5, 0.99, 0.95)))
    state = init_state(spec, net, jax.random.PRNGKey(0), hp, 2)
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
    actions = jnp.array([0, 1, 0, 1, 0, 1, 0, 1])
    dist, values = net.apply(state.params, obs)
    old_logp = dist.log_prob(actions) - jnp.log(jnp.array([5.0, 1.0, 1.0, 5.0, 1.0, 1.0, 1.0, 1.0]))  # r = 5 twice
    adv = jnp.array([-1.0, -1.0, 1.0, 2.0, -0.5, 0.3, 0.0, -2.0])
    batch = Batch(obs=obs, actions=actions, old_log_prob=old_logp, old_dist=dist, old_values=values,
                  advantages=adv, targets=values)
    losses = {}
    for name in ("clip", "dual-clip"):
        _, diag = loss_fn(state.params, dataclasses.replace(spec, objective=name), net, batch, 0.2, 1.0, hp)
        losses[name] = float(diag.policy_loss)
    # sample 0: r = 5, A = -1: L^CLIP's term min(-5, -1.2) = -5, dual-clip's max(-5, -3) = -3: 2 / 8 higher
    np.testing.assert_allclose(losses["clip"] - losses["dual-clip"], 2.0 / 8, rtol=1e-5)
