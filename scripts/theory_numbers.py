"""Every number of docs/theory.md, computed with ppolab's own network, distributions and objectives.

    python scripts/theory_numbers.py            # print the numbers
    python scripts/theory_numbers.py --write    # write them into docs/theory.md
    python scripts/theory_numbers.py --check    # exit 1 if the doc differs (tests/test_theory_doc.py does this)

The doc carries each number between markers: ``<!-- num:NAME -->VALUE<!-- /num -->``. Three kinds of numbers:
exact (inputs and closed-form toy examples: the text must match), measured (a short CartPole rollout and gradient
steps in float32: must agree to ``RTOL``), tiny (rounding-level differences: both must be below ``TINY``).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppolab import advantages as adv_lib
from ppolab import distributions as D
from ppolab.config import Config
from ppolab.envs.gymnasium_vec import GymnasiumVecEnv
from ppolab.networks import make_network
from ppolab.objectives import PolicyTerms, l_clip, l_cpi, l_klpen, l_pg

DOC = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
MARK = re.compile(r"<!-- num:([a-z0-9_]+) -->(.*?)<!-- /num -->")
RTOL = 0.05
TINY = 1e-6

# inputs of the experiments (they appear in the doc, so they are numbers of the script too)
SEED, NUM_ENVS, NUM_STEPS, GAMMA, LAMBDA = 0, 8, 64, 0.99, 0.95
ADAM_LR, FEW_STEPS, MANY_STEPS, BIG_LR, EPS, BETA = 1e-3, 10, 100, 1e-2, 0.2, 1.0


class Num:
    def __init__(self, value, fmt: str, kind: str):
        self.value, self.fmt, self.kind = float(value), fmt, kind

    @property
    def text(self) -> str:
        return format(self.value, self.fmt)


# ---- a real batch ------------------------------------------------------------------------------------------------
def rollout_batch():
    """NUM_ENVS x NUM_STEPS steps of CartPole-v1 under a freshly initialized ppolab policy; GAE (eqs. 11-12).

    Returns (net, params, obs [N, 4], actions [N], old log-probs [N], old distribution, normalized advantages)."""
    cfg = Config(env="CartPole-v1")
    env = GymnasiumVecEnv("CartPole-v1", 1, NUM_ENVS)
    net = make_network(cfg, env.obs_spec, env.action_spec)
    key = jax.random.PRNGKey(SEED)
    params = net.init(key, jnp.zeros((1, 4)))
    sample = jax.jit(lambda p, o, k: net.apply(p, o)[0].sample(k))
    obs = env.reset(SEED)[0]
    buf = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "final")}
    for t in range(NUM_STEPS):
        a = np.asarray(sample(params, obs, jax.random.fold_in(key, t)))
        nxt, r, term, trunc, final, _ = env.step(a[None])
        for k, v in zip(buf, (obs, a, r[0], term[0], trunc[0], final[0]), strict=True):
            buf[k].append(v)
        obs = nxt[0]
    env.close()
    b = {k: jnp.asarray(np.stack(v)) for k, v in buf.items()}  # [T, B, ...]
    _, values = net.apply(params, b["obs"])
    _, last_value = net.apply(params, jnp.asarray(obs))
    _, final_values = net.apply(params, b["final"])
    adv, _ = adv_lib.gae(b["rew"], values, b["term"], b["trunc"], final_values, last_value, GAMMA, LAMBDA)
    N = NUM_ENVS * NUM_STEPS
    flat_obs, flat_act = b["obs"].reshape(N, -1), b["act"].reshape(N)
    old_dist, _ = net.apply(params, flat_obs)
    return net, params, flat_obs, flat_act, old_dist.log_prob(flat_act), old_dist, adv_lib.normalize(adv.reshape(N))


def surrogate(fn, net, obs, act, old_logp, old_dist, adv, coef=None):
    """params -> fn(PolicyTerms) with the policy evaluated at ``params`` (the objectives of objectives.py)."""
    def f(params):
        dist, _ = net.apply(params, obs)
        terms = PolicyTerms(log_prob=dist.log_prob(act), old_log_prob=old_logp, advantages=adv, kl=old_dist.kl(dist))
        return fn(terms, EPS if coef is None else coef, BETA if coef is None else coef)
    return f


def flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


_STEPS: dict = {}


def ascend(obj, params, lr, steps):
    """``steps`` full-batch Adam steps maximizing ``obj`` (one jitted step per objective and step size)."""
    tx = optax.adam(lr)
    key = (obj, lr)
    if key not in _STEPS:
        def step(p, s):
            u, s = tx.update(jax.grad(lambda q: -obj(q))(p), s, p)
            return optax.apply_updates(p, u), s

        _STEPS[key] = jax.jit(step)
    p, s = params, tx.init(params)
    for _ in range(steps):
        p, s = _STEPS[key](p, s)
    return p


def ratio_stats(net, params, obs, act, old_logp, old_dist):
    dist, _ = net.apply(params, obs)
    r = jnp.exp(dist.log_prob(act) - old_logp)
    return r, jnp.mean(old_dist.kl(dist))


# ---- the numbers ---------------------------------------------------------------------------------------------------
def compute() -> dict[str, Num]:
    out: dict[str, Num] = {}
    ex = lambda v, f="g": Num(v, f, "exact")
    me = lambda v, f=".3g": Num(v, f, "measured")
    out.update(num_envs=ex(NUM_ENVS), num_steps=ex(NUM_STEPS), num_samples=ex(NUM_ENVS * NUM_STEPS),
               gamma=ex(GAMMA), lam=ex(LAMBDA), adam_lr=ex(ADAM_LR), few_steps=ex(FEW_STEPS),
               many_steps=ex(MANY_STEPS), big_lr=ex(BIG_LR), eps=ex(EPS), beta=ex(BETA),
               rtol_pct=ex(100 * RTOL), tiny=ex(TINY))

    # 1. grad L^PG == grad L^CPI at theta_old, and not after a step
    net, params, obs, act, old_logp, old_dist, adv = rollout_batch()
    args = (net, obs, act, old_logp, old_dist, adv)
    pg, cpi = surrogate(l_pg, *args), surrogate(l_cpi, *args)
    grad_pg, grad_cpi = jax.jit(jax.grad(pg)), jax.jit(jax.grad(cpi))
    g_pg, g_cpi = flat(grad_pg(params)), flat(grad_cpi(params))
    out["grad_norm"] = me(jnp.linalg.norm(g_cpi))
    out["grad_diff_old"] = Num(jnp.max(jnp.abs(g_pg - g_cpi)), ".1e", "tiny")
    for name, steps in (("one", 1), ("few", FEW_STEPS)):
        p = ascend(cpi, params, ADAM_LR, steps)
        d_pg, d_cpi = flat(grad_pg(p)), flat(grad_cpi(p))
        r, kl = ratio_stats(net, p, obs, act, old_logp, old_dist)
        out[f"grad_diff_{name}"] = me(jnp.max(jnp.abs(d_pg - d_cpi)), ".2e")
        out[f"grad_rel_{name}"] = me(100 * jnp.linalg.norm(d_pg - d_cpi) / jnp.linalg.norm(d_cpi), ".2g")
        out[f"ratio_min_{name}"] = me(jnp.min(r), ".3f")
        out[f"ratio_max_{name}"] = me(jnp.max(r), ".3f")

    # 2. many epochs on one batch: the unclipped objective runs away; clipping and the KL penalty hold it
    for name, fn in (("cpi", l_cpi), ("clip", l_clip), ("kl", l_klpen)):
        obj = surrogate(fn, *args)
        p = ascend(obj, params, BIG_LR, MANY_STEPS)
        r, kl = ratio_stats(net, p, obs, act, old_logp, old_dist)
        out[f"{name}_cpi_gain"] = me(cpi(p) - cpi(params))  # the importance-sampled improvement estimate
        out[f"{name}_kl"] = me(kl)
        out[f"{name}_rmax"] = me(jnp.max(r))
        out[f"{name}_rmin"] = Num(jnp.min(r), ".1e", "tiny") if name == "cpi" else me(jnp.min(r), ".2g")
        out[f"{name}_outside"] = me(100 * jnp.mean((r < 1 - EPS) | (r > 1 + EPS)), ".3g")

    # 3. the clipped objective's gradient in its four regions: d/d(log pi) of one sample's L^CLIP and L^CPI
    def dlogp(fn, r, a):
        t = lambda lp: fn(PolicyTerms(log_prob=lp, old_log_prob=jnp.zeros(1), advantages=jnp.asarray([a]),
                                      kl=jnp.zeros(1)), EPS, 0.0)
        return jax.grad(t)(jnp.log(jnp.asarray([r], jnp.float32)))[0]

    for a_name, a in (("pos", 1.0), ("neg", -1.0)):
        for r_name, r in (("lo", 0.5), ("hi", 1.5)):
            out[f"clip_{a_name}_{r_name}"] = ex(round(float(dlogp(l_clip, r, a)), 6) + 0.0)  # no "-0"
            out[f"cpi_{a_name}_{r_name}"] = ex(round(float(dlogp(l_cpi, r, a)), 6) + 0.0)
    out.update(r_lo=ex(0.5), r_hi=ex(1.5))

    # 4. ratio 2 with A = +1 against ratio 0.5 with A = -1 under L^CPI: same |log r|, different pull
    g2, g05 = dlogp(l_cpi, 2.0, 1.0), dlogp(l_cpi, 0.5, -1.0)
    out.update(logr_2=ex(round(math.log(2.0), 4)), logr_05=ex(round(math.log(0.5), 4)),
               g_r2=ex(round(float(g2), 6)), g_r05=ex(round(float(g05), 6)),
               g_ratio=ex(round(float(abs(g2 / g05)), 6)),
               gain_r2=ex((2.0 - 1.0) * 1.0), gain_r05=ex((0.5 - 1.0) * -1.0),
               log_clip_hi=ex(round(math.log(1 + EPS), 4)), log_clip_lo=ex(round(math.log(1 - EPS), 4)))
    # the same two moves on a two-action state with pi_old(a) = 0.25, measured by KL[pi_old, pi]
    old = D.Categorical(jnp.log(jnp.asarray([0.25, 0.75])))
    for name, pa in (("kl_r2", 0.5), ("kl_r05", 0.125)):
        new = D.Categorical(jnp.log(jnp.asarray([pa, 1 - pa])))
        out[name] = ex(round(float(old.kl(new)), 4))
    out["p_old"] = ex(0.25)
    return out


# ---- the doc -----------------------------------------------------------------------------------------------------
def _matches(num: Num, text: str) -> bool:
    if num.kind == "exact":
        return text == num.text
    try:
        doc = float(text)
    except ValueError:
        return False
    if num.kind == "tiny":
        return abs(doc) <= TINY and abs(num.value) <= TINY
    return math.isclose(doc, num.value, rel_tol=RTOL, abs_tol=1e-9)


def check(doc: str, nums: dict[str, Num]) -> list[str]:
    """Problems: a marker naming no computed number, a computed number missing from the doc, a differing value."""
    problems, seen = [], set()
    for m in MARK.finditer(doc):
        name, text = m.group(1), m.group(2)
        seen.add(name)
        if name not in nums:
            problems.append(f"{name}: in the doc but not computed")
        elif not _matches(nums[name], text):
            problems.append(f"{name}: doc has {text}, computed {nums[name].text} ({nums[name].kind})")
    problems += [f"{n}: computed but not in the doc" for n in nums if n not in seen]
    return problems


def write(doc: str, nums: dict[str, Num]) -> str:
    return MARK.sub(lambda m: f"<!-- num:{m.group(1)} -->{nums[m.group(1)].text}<!-- /num -->"
                    if m.group(1) in nums else m.group(0), doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="write the numbers into the doc")
    ap.add_argument("--check", action="store_true", help="exit 1 if the doc's numbers differ")
    ap.add_argument("--doc", default=str(DOC))
    a = ap.parse_args(argv)
    nums = compute()
    path = Path(a.doc)
    if a.write:
        path.write_text(write(path.read_text(), nums))
    if a.check or a.write:
        problems = check(path.read_text(), nums)
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems else 0
    for k, v in nums.items():
        print(f"{k:16s} {v.text:>12s}  {v.kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
