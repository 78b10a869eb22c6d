"""ppolab's masked categorical against sb3-contrib's ``MaskableCategorical``, on the same logits and masks.

A numerical check, not a timing. torch stays out of ppolab's environment: this script computes ppolab's numbers
here, saves inputs and results to an .npz, runs its own ``--sb3-side`` half in a separate venv's Python (which has
torch and sb3-contrib, not ppolab), and prints the max abs differences as JSON.

    python -m venv /tmp/sb3venv && /tmp/sb3venv/bin/pip install torch==2.13.0 sb3-contrib numpy
    python benchmarks/check_masked_vs_sb3.py --sb3-python /tmp/sb3venv/bin/python

Compared: log pi(a) for legal and for illegal actions, the entropy, KL[p || q] for q with the same mask, a wider
mask and a narrower mask, and the gradients of sum(log pi(a)) and of sum(entropy) w.r.t. the logits. sb3-contrib
replaces an illegal logit by -1e8 (not -inf), so its log-prob of an illegal action is finite; its KL is torch's
``kl_divergence`` of two ``Categorical``s (sb3's MaskablePPO itself uses the log-ratio estimate of the KL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROWS, N = 512, 7


def make_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """Random logits [R, N] with scales 0.1..10, random masks (>= 1 legal, every 8th row exactly 1 legal), another
    set of logits, a wider and a narrower mask, a legal and an illegal action per row."""
    rng = np.random.default_rng(seed)
    scale = np.exp(rng.uniform(np.log(0.1), np.log(10.0), (ROWS, 1)))
    logits = (rng.normal(size=(ROWS, N)) * scale).astype(np.float32)
    other = (rng.normal(size=(ROWS, N)) * scale).astype(np.float32)
    mask = rng.random((ROWS, N)) < 0.5
    mask[np.arange(ROWS), rng.integers(0, N, ROWS)] = True
    single = np.arange(0, ROWS, 8)
    mask[single] = False
    mask[single, rng.integers(0, N, len(single))] = True
    mask[1::8, :-1] = True  # rows with one illegal action
    mask[1::8, -1] = False
    legal_a = np.array([rng.choice(np.flatnonzero(m)) for m in mask], np.int64)
    illegal_a = np.array([rng.choice(np.flatnonzero(~m)) if (~m).any() else 0 for m in mask], np.int64)
    has_illegal = (~mask).any(-1)
    wider = mask | (rng.random((ROWS, N)) < 0.3)
    narrower = mask.copy()
    for i in np.flatnonzero(mask.sum(-1) > 1)[::2]:
        narrower[i, np.flatnonzero(mask[i])[0]] = False
    return dict(logits=logits, other=other, mask=mask, wider=wider, narrower=narrower, legal_a=legal_a,
                illegal_a=illegal_a, has_illegal=has_illegal)


def ppolab_side(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp

    from ppolab import distributions as D

    jax.config.update("jax_enable_x64", False)
    lg, mk = jnp.asarray(x["logits"]), jnp.asarray(x["mask"])
    d = D.MaskedCategorical(lg, mk)
    out = dict(logp_legal=d.log_prob(jnp.asarray(x["legal_a"])), logp_illegal=d.log_prob(jnp.asarray(x["illegal_a"])),
               entropy=d.entropy())
    for name in ("mask", "wider", "narrower"):
        out[f"kl_{name}"] = d.kl(D.MaskedCategorical(jnp.asarray(x["other"]), jnp.asarray(x[name])))
    a = jnp.asarray(x["legal_a"])
    out["grad_logp"] = jax.grad(lambda z: jnp.sum(D.MaskedCategorical(z, mk).log_prob(a)))(lg)
    out["grad_entropy"] = jax.grad(lambda z: jnp.sum(D.MaskedCategorical(z, mk).entropy()))(lg)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def sb3_side(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch as th
    from sb3_contrib.common.maskable.distributions import MaskableCategorical
    from torch.distributions import kl_divergence

    def dist(logits, mask):
        return MaskableCategorical(logits=logits, masks=th.as_tensor(mask))

    lg = th.tensor(x["logits"], requires_grad=True)
    d = dist(lg, x["mask"])
    out = dict(logp_legal=d.log_prob(th.as_tensor(x["legal_a"])), logp_illegal=d.log_prob(th.as_tensor(x["illegal_a"])),
               entropy=d.entropy())
    for name in ("mask", "wider", "narrower"):
        out[f"kl_{name}"] = kl_divergence(d, dist(th.tensor(x["other"]), x[name]))
    out["grad_logp"] = th.autograd.grad(out["logp_legal"].sum(), lg, retain_graph=True)[0]
    out["grad_entropy"] = th.autograd.grad(out["entropy"].sum(), lg)[0]
    return {k: v.detach().numpy().astype(np.float64) for k, v in out.items()}


def compare(x: dict[str, np.ndarray], ours: dict[str, np.ndarray], sb3: dict[str, np.ndarray]) -> dict:
    """Max abs difference over the entries where both are finite; and where the two disagree on being finite."""
    report: dict[str, object] = {}
    for k in ours:
        a, b = ours[k], sb3[k]
        if k == "logp_illegal":
            a, b = a[x["has_illegal"]], b[x["has_illegal"]]
        both = np.isfinite(a) & np.isfinite(b)
        entry = {"max_abs_diff": float(np.max(np.abs(a[both] - b[both]), initial=0.0)),
                 "finite_mismatch": int(np.sum(np.isfinite(a) != np.isfinite(b))),
                 "ppolab_nonfinite": int(np.sum(~np.isfinite(a))), "sb3_nonfinite": int(np.sum(~np.isfinite(b)))}
        if k == "logp_illegal":
            entry["sb3_max"] = float(np.max(b)) if b.size else None
        report[k] = entry
    single = x["mask"].sum(-1) == 1
    report["single_legal_rows"] = {
        "count": int(single.sum()),
        "ppolab_entropy_max_abs": float(np.max(np.abs(ours["entropy"][single]))),
        "sb3_entropy_max_abs": float(np.max(np.abs(sb3["entropy"][single]))),
        "ppolab_logp_max_abs": float(np.max(np.abs(ours["logp_legal"][single]))),
        "sb3_logp_max_abs": float(np.max(np.abs(sb3["logp_legal"][single]))),
        "ppolab_grad_logp_max_abs": float(np.max(np.abs(ours["grad_logp"][single]))),
        "sb3_grad_logp_max_abs": float(np.max(np.abs(sb3["grad_logp"][single])))}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sb3-python", default=os.environ.get("SB3_PYTHON", "/tmp/sb3venv/bin/python"),
                    help="a Python with torch and sb3-contrib installed")
    ap.add_argument("--sb3-side", metavar="NPZ", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.sb3_side:  # running in the sb3 venv: inputs in, sb3's numbers out
        with np.load(args.sb3_side) as f:
            x = {k: f[k] for k in f.files}
        np.savez(args.sb3_side + ".sb3.npz", **sb3_side(x))
        return
    if not os.path.exists(args.sb3_python):
        sys.exit(f"error: no Python at {args.sb3_python}; create the venv (see this script's docstring) "
                 "or pass --sb3-python")
    x = make_inputs(args.seed)
    ours = ppolab_side(x)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        np.savez(path, **x)
        np.savez(os.path.join(tmp, "ppolab.npz"), **ours)
        subprocess.run([args.sb3_python, os.path.abspath(__file__), "--sb3-side", path], check=True)
        with np.load(path + ".sb3.npz") as f:
            sb3 = {k: f[k] for k in f.files}
    print(json.dumps({"rows": ROWS, "actions": N, "seed": args.seed, **compare(x, ours, sb3)}, indent=1))


if __name__ == "__main__":
    main()
