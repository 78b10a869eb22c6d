"""ppolab figures: the paper's Figure 1 against hand values; Figure 2's numbers regenerated and checked against what
the paper's argument says they must satisfy (section 3), and docs/figures/figure2.json against the command that made
it (as test_theory_doc.py does for docs/theory.md)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppolab import objectives
from ppolab.config import Config, ConfigError
from ppolab.experiments import figures as F

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "docs" / "figures" / "figure2.json"
SERIES = ("kl", "l_cpi", "clipped", "l_clip", "clip_fraction", "ratio_min", "ratio_max")


# ---- Figure 1 -----------------------------------------------------------------------------------------------------
def test_figure1_is_min_of_r_a_and_clipped_r_a():
    v = F.figure1_values(0.2, r_max=2.0, num=401)  # r = 0, 0.005, ..., 2
    r = np.asarray(v["r"])
    assert r[0] == 0.0 and r.shape == (401,)
    for i in range(0, 401, 20):  # min(r A, clip(r, 0.8, 1.2) A), by hand, for A = +1 and -1
        assert v["pos"][i] == pytest.approx(min(r[i], min(max(r[i], 0.8), 1.2)), abs=1e-6)
        assert v["neg"][i] == pytest.approx(min(-r[i], -min(max(r[i], 0.8), 1.2)), abs=1e-6)
    at = {round(float(x), 3): i for i, x in enumerate(r)}
    hand = {0.0: (0.0, -0.8), 0.5: (0.5, -0.8), 1.0: (1.0, -1.0), 1.1: (1.1, -1.1), 1.5: (1.2, -1.5), 2.0: (1.2, -2.0)}
    for x, (pos, neg) in hand.items():  # flat beyond 1+eps for A > 0 and below 1-eps for A < 0
        assert (v["pos"][at[x]], v["neg"][at[x]]) == pytest.approx((pos, neg), abs=1e-6), x
    assert v["cpi_pos"][at[1.5]] == pytest.approx(1.5) and v["cpi_neg"][at[0.5]] == pytest.approx(-0.5)


def test_figure1_calls_ppolabs_clip_term(monkeypatch):
    calls = []
    real = objectives.clip_term
    monkeypatch.setattr(objectives, "clip_term", lambda *a: calls.append(1) or real(*a) * 0 + 7)
    v = F.figure1_values(0.2, num=11)
    assert len(calls) == 2 and set(v["pos"]) == set(v["neg"]) == {7.0}


def test_figure1_png(tmp_path):
    path = F.plot_figure1(F.figure1_values(0.1), tmp_path / "f1.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- Figure 2 -----------------------------------------------------------------------------------------------------
def check_figure2_structure(u: dict) -> None:
    """What the paper's section 3 says of Figure 2's curves, on any batch and update (``update_line``'s output)."""
    t = np.asarray(u["t"])
    kl, cpi, clipped, clip = (np.asarray(u[k]) for k in ("kl", "l_cpi", "clipped", "l_clip"))
    eps = np.float32(u["clip_eps"])
    assert t[0] == 0.0
    # t = 0 is theta_old: r exactly 1, KL exactly 0, every surrogate equal to E[A]
    assert kl[0] == 0.0 and u["ratio_min"][0] == u["ratio_max"][0] == 1.0 and u["clip_fraction"][0] == 0.0
    assert cpi[0] == clip[0] == clipped[0] == pytest.approx(u["mean_advantage"], rel=1e-6, abs=1e-7)
    # KL: non-negative, growing from 0 on [0, 1], quadratically near 0 (KL(2h) / KL(h) = 4 to first order)
    assert np.all(kl >= 0) and np.all(np.diff(kl[t <= 1.0]) > 0)
    assert kl[2] / kl[1] == pytest.approx((t[2] / t[1]) ** 2, rel=0.05)
    # the learner's own E[KL] after the update is the line's KL at t = 1 (theta(1) = theta_new)
    assert np.interp(1.0, t, kl) == pytest.approx(u["kl_learner"], rel=1e-3)
    # L^CLIP is a lower bound of L^CPI and of the clipped term (min per sample) ...
    slack = 1e-6 * np.maximum(np.abs(cpi), 1.0)
    assert np.all(clip <= cpi + slack) and np.all(clip <= clipped + slack)
    # ... equal to L^CPI where no ratio has left [1-eps, 1+eps], and strictly below it once ratios leave it with gains
    inside = (np.asarray(u["ratio_min"]) >= np.float32(1) - eps) & (np.asarray(u["ratio_max"]) <= np.float32(1) + eps)
    assert inside[0] and np.allclose(clip[inside], cpi[inside], rtol=1e-6, atol=1e-7)
    assert clip[-1] < cpi[-1] and u["clip_fraction"][-1] > 0
    # the update improved the objective it optimized
    assert np.interp(1.0, t, clip) > clip[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """4 iterations of Hopper-v5 (paper-mujoco, T = 256, 4 minibatches, 2 epochs): seconds, not minutes."""
    from ppolab.training import train

    run_dir = tmp_path_factory.mktemp("fig") / "run"
    explicit = dict(env="Hopper-v5", objective="clip", total_timesteps=1024, num_steps=256, num_minibatches=4,
                    num_epochs=2, seed=3, run_dir=str(run_dir), eval_episodes=0, progress=False, tensorboard=False)
    train(Config(preset="paper-mujoco", **explicit), explicit=explicit)
    return run_dir


@pytest.fixture(scope="module")
def tiny_out(tiny_run, tmp_path_factory) -> tuple[dict, Path]:
    """``make_figures`` on the tiny run: (its numbers, its output directory)."""
    out = tmp_path_factory.mktemp("figout")
    return F.make_figures(F.FiguresArgs(run_dir=str(tiny_run), out=str(out), points=21)), out


def test_figure2_on_a_tiny_run_has_the_papers_structure(tiny_out):
    n, _ = tiny_out
    assert (n["env"], n["preset"], n["objective"], n["seed"], n["batch_size"]) == ("Hopper-v5", "paper-mujoco",
                                                                                     "clip", 3, 256)
    assert [u["iteration"] for u in n["updates"]] == [0, 4] and n["norm_adv"] is False
    for u in n["updates"]:
        assert len(u["t"]) == 21 and u["t"][-1] == 2.0 and u["clip_eps"] == pytest.approx(0.2)
        check_figure2_structure(u)


def test_make_figures_writes_the_pngs_and_the_numbers(tiny_run, tiny_out):
    n, out = tiny_out
    for name in ("figure1.png", "figure2.png", "figure2.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "figure2.json").read_text()) == n
    assert n["command"] == f"ppolab figures {tiny_run} --out {out} --points 21"
    table = F.figure2_table(n).splitlines()
    assert len(table) == 4 and table[2].startswith("| first update | 0 (0) |")
    assert table[3].startswith("| after training | 4 (1,024) |")


def test_learner_advantages_follow_norm_adv():
    from ppolab.update import LearnerSpec

    spec = LearnerSpec("clip", 1, 4, 1, True, None, None, 1e-8, False, False, False, False, None)
    adv = jnp.arange(16.0) ** 2
    perm0 = jax.random.permutation(jax.random.PRNGKey(0), 16)
    out = F.learner_advantages(spec, adv, perm0)
    for idx in np.asarray(perm0).reshape(4, 4):  # each first-epoch minibatch normalized, as update.loss_fn does
        assert float(jnp.mean(out[idx])) == pytest.approx(0.0, abs=1e-5)
        assert float(jnp.std(out[idx])) == pytest.approx(1.0, abs=1e-5)
    raw = LearnerSpec("clip", 1, 4, 1, False, None, None, 1e-8, False, False, False, False, None)
    assert F.learner_advantages(raw, adv, perm0) is adv


@pytest.mark.parametrize("kw, message", [(dict(run_dir="/nonexistent/run"), "does not exist"),
                                         (dict(points=1), "--points must be >= 2"),
                                         (dict(steps=1000), "--steps must be at least one")])
def test_bad_arguments_are_one_line_errors(tmp_path, kw, message):
    with pytest.raises(ConfigError, match=message):
        F.make_figures(F.FiguresArgs(out=str(tmp_path / "o"), **kw))
    assert not (tmp_path / "o").exists()


def test_figures_args_parse_like_a_tyro_command():
    import tyro

    assert tyro.cli(F.FiguresArgs, args=[]).run_dir is None
    a = tyro.cli(F.FiguresArgs, args=["runs/x", "--steps", "4096", "--t-max", "1.5"])
    assert (a.run_dir, a.steps, a.t_max, a.out) == ("runs/x", 4096, 1.5, "docs/figures")
    assert F.command_line(a) == "ppolab figures runs/x --steps 4096 --t-max 1.5"


# ---- docs/figures -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stored() -> dict:
    return json.loads(STORED.read_text())


def test_stored_figure2_numbers_have_the_papers_structure(stored):
    assert stored["command"] == "ppolab figures" and stored["run_dir"] is None
    assert (stored["env"], stored["preset"], stored["objective"], stored["batch_size"], stored["norm_adv"]) == (
        "Hopper-v5", "paper-mujoco", "clip", 2048, False)
    assert [u["iteration"] for u in stored["updates"]] == [0, F.FiguresArgs().steps // 2048]
    for u in stored["updates"]:
        check_figure2_structure(u)
    for name in ("figure1.png", "figure2.png"):
        assert (STORED.parent / name).stat().st_size > 0


def test_results_md_quotes_the_stored_numbers(stored):
    assert F.figure2_table(stored) in (ROOT / "docs" / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="figure2.json was made on a CPU")
def test_the_command_regenerates_the_stored_figure2_numbers(stored, tmp_path):
    """``ppolab figures`` (no RUN_DIR: 20 iterations of Hopper-v5 trained first, seed 0) -> the stored numbers. On
    the CPU they were made on, bit for bit; another CPU model may round differently and 20 iterations of MuJoCo can
    amplify that, hence the tolerance."""
    again = F.make_figures(F.FiguresArgs(out=str(tmp_path)))
    for a, b in zip(again["updates"], stored["updates"], strict=True):
        assert (a["iteration"], a["t"]) == (b["iteration"], b["t"])
        for k in SERIES + ("kl_learner", "mean_advantage"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-6, err_msg=k)
