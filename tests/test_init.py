"""Initial weights: orthogonal (``--ortho-init``, the default) or, where it is off and in the recurrent cells,
``--default-init``: flax's defaults or torch's (``nn.Linear``, ``nn.LSTM`` / ``nn.GRU``: sb3 with ortho_init=False)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ppolab import recurrent as R
from ppolab.config import Config, ConfigError
from ppolab.networks import make_network
from ppolab.options import check_options_apply
from ppolab.spaces import ActionSpec, ObsSpec

DISCRETE = ActionSpec("discrete", 3)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_cells_draw_torchs_distributions_and_flax_stays_flaxs(cell):
    """torch: every weight U(+-1/sqrt(H)); a summed bias (LSTM b, GRU's r and z part of bi) the sum of two such
    draws, std bound * sqrt(2/3); flax: lecun-normal input kernel (std 1/sqrt(F)), zero biases."""
    H, F, bound = 64, 2, 1 / 8
    net = lambda init: R.make_recurrent_network(Config(policy=cell, rnn_size=H, default_init=init, hidden_sizes=()),
                                                ObsSpec((F,)), DISCRETE)
    torch_p = net("torch").init_params(jax.random.PRNGKey(0))["params"]["rnn"]
    flax_p = net("flax").init_params(jax.random.PRNGKey(0))["params"]["rnn"]
    uniform_std = bound / np.sqrt(3)
    for name in ("wi", "wh"):
        w = np.asarray(torch_p[name])
        assert np.abs(w).max() <= bound and abs(w.std() / uniform_std - 1) < 0.1, name
    summed = np.asarray(torch_p["b"] if cell == "lstm" else torch_p["bi"][: 2 * H])
    assert np.abs(summed).max() > bound and abs(summed.std() / (bound * np.sqrt(2 / 3)) - 1) < 0.1
    if cell == "gru":  # b_in and b_hn: one draw each
        for single in (torch_p["bi"][2 * H:], torch_p["b_hn"]):
            assert np.abs(np.asarray(single)).max() <= bound and np.asarray(single).std() > 0.5 * uniform_std
    assert abs(float(np.asarray(flax_p["wi"]).std()) * np.sqrt(F) - 1) < 0.25  # lecun-normal: 10x torch's scale
    assert all(not np.asarray(v).any() for k, v in flax_p.items() if k.startswith("b"))


def _uniform_like_torch(kernel, bias):
    """torch's nn.Linear: kernel and bias U(+-1/sqrt(fan_in)) (std bound / sqrt 3), the bias not zero."""
    bound = 1 / np.sqrt(kernel.shape[0])
    for w in (kernel, bias):
        w = np.asarray(w)
        spread = w.std() > 0.6 * bound / np.sqrt(3) if w.size > 8 else np.abs(w).min() > 0  # v_head: one bias
        assert np.abs(w).max() <= bound and spread, (w.shape, w.std(), bound)


@pytest.mark.parametrize("policy", ["feedforward", "lstm"])
def test_no_ortho_init_gives_every_dense_layer_and_head_the_default_init(policy):
    """Under --no-ortho-init every dense layer, the two heads included, takes --default-init: torch's U(+-1/sqrt(fan
    in)) kernels and biases, or flax's lecun-normal kernels and zero biases; never the heads' orthogonal 0.01 / 1
    (the recurrent heads used to stay orthogonal whatever --ortho-init said)."""
    extra = dict(rnn_size=16, rnn_head_sizes=(32,)) if policy == "lstm" else {}
    cfg = Config(policy=policy, hidden_sizes=(24,), ortho_init=False, **extra)
    make = (lambda c: R.make_recurrent_network(c, ObsSpec((5,)), DISCRETE)) if policy == "lstm" else \
        (lambda c: make_network(c, ObsSpec((5,)), DISCRETE))
    torch_p = make(cfg.replace(default_init="torch")).init_params(jax.random.PRNGKey(1))["params"]
    flax_p = make(cfg).init_params(jax.random.PRNGKey(1))["params"]
    ortho_p = make(cfg.replace(ortho_init=True)).init_params(jax.random.PRNGKey(1))["params"]
    dense = [k for k, v in torch_p.items() if "kernel" in v]
    assert {"pi_head", "v_head"} <= set(dense) and len(dense) >= 4, dense
    for name in dense:
        _uniform_like_torch(torch_p[name]["kernel"], torch_p[name]["bias"])
        kernel = np.asarray(flax_p[name]["kernel"])
        assert not np.asarray(flax_p[name]["bias"]).any()
        assert abs(kernel.std() * np.sqrt(kernel.shape[0]) - 1) < 0.35, (name, kernel.std())  # lecun-normal
    pi_ortho = np.asarray(ortho_p["pi_head"]["kernel"])
    assert np.abs(pi_ortho).max() < 0.02  # orthogonal with gain 0.01: what --no-ortho-init must not give


def test_default_init_is_refused_where_it_changes_nothing():
    with pytest.raises(ConfigError, match="--default-init torch does nothing with --policy feedforward"):
        check_options_apply(Config(default_init="torch"))
    with pytest.raises(ConfigError, match="--default-init torch does nothing with --policy feedforward and an Atari"):
        check_options_apply(Config(default_init="torch", env="ALE/Pong-v5"))
    with pytest.raises(ConfigError, match="--no-ortho-init does nothing with --policy feedforward on an Atari env"):
        check_options_apply(Config(ortho_init=False, env="ALE/Pong-v5"))
    check_options_apply(Config(default_init="torch", ortho_init=False))
    check_options_apply(Config(default_init="torch", policy="lstm"))
    check_options_apply(Config(default_init="torch", policy="lstm", env="ALE/Pong-v5"))  # the cell's init


def test_a_config_json_with_the_old_rnn_init_key_still_loads():
    from ppolab.config import from_dict, to_dict

    old = {k: v for k, v in to_dict(Config(policy="gru")).items() if k != "default_init"}
    assert from_dict({**old, "rnn_init": "torch"}).default_init == "torch"
