"""The surrogate objectives of the paper as one registry of records; the value loss; the adaptive-beta rule.

Each objective is one ``Objective`` record in ``OBJECTIVES``: its name (the ``--objective`` value), its per-sample
integrand, the coefficients it reads, whether it needs the exact KL, and its controller. Everything else derives
from the registry: the CLI's choices (``config.Objective``), the check that refuses a coefficient the chosen
objective ignores (``config.check_options_apply``), ``ppolab compare``'s settings (``experiments.grid``) and the
loss (``update.loss_fn``). docs/architecture.md shows how to add one.

An integrand maps ``PolicyTerms`` (per-sample arrays [N]) and the coefficients to the per-sample term whose empirical
mean E_t[...] over a minibatch is the surrogate L, to be *maximized* (the update minimizes -L).
r_t(theta) = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) = exp(logp - logp_old).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct


class PolicyTerms(struct.PyTreeNode):
    log_prob: jax.Array         # [N] log pi_theta(a_t|s_t)
    old_log_prob: jax.Array     # [N] log pi_theta_old(a_t|s_t)
    advantages: jax.Array       # [N] A_t (already normalized if requested)
    kl: jax.Array | None        # [N] exact KL[pi_old(.|s_t), pi_theta(.|s_t)] (None where no objective needs it)

    @property
    def ratio(self) -> jax.Array:
        return jnp.exp(self.log_prob - self.old_log_prob)


Integrand = Callable[[PolicyTerms, jax.Array, jax.Array], jax.Array]
Controller = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


# ---- the integrands: per-sample terms, [N] -> [N] -----------------------------------------------------------------
def pg_term(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """log pi_theta(a_t|s_t) A_t, the integrand of L^PG  (eq. 2)."""
    return t.log_prob * t.advantages


def cpi_term(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """r_t(theta) A_t, the integrand of L^CPI  (eq. 6): importance-sampled, no clipping or penalty."""
    return t.ratio * t.advantages


def clip_term(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t), the integrand of L^CLIP  (eq. 7)."""
    r = t.ratio
    return jnp.minimum(r * t.advantages, jnp.clip(r, 1.0 - clip_eps, 1.0 + clip_eps) * t.advantages)


def klpen_term(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """r_t A_t - beta KL[pi_old(.|s_t), pi_theta(.|s_t)], the integrand of L^KLPEN  (eq. 8)."""
    return t.ratio * t.advantages - beta * t.kl


# ---- the controller -----------------------------------------------------------------------------------------------
def adapt_beta(beta: jax.Array, d: jax.Array, d_targ: jax.Array) -> jax.Array:
    """The paper's rule (section 4), applied once after each policy update with d = E_t[KL[pi_old, pi_theta]]:
    d < d_targ / 1.5 -> beta / 2;  d > d_targ * 1.5 -> beta * 2;  otherwise unchanged."""
    beta = jnp.where(d < d_targ / 1.5, beta / 2.0, beta)
    return jnp.where(d > d_targ * 1.5, beta * 2.0, beta)


# ---- the registry -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Objective:
    """One surrogate objective: everything the config, the learner and ``ppolab compare`` need to know of it."""

    name: str
    """The ``--objective`` value."""
    paper: str
    """Where the paper defines it."""
    term: Integrand
    """Per-sample integrand ``term(PolicyTerms, clip_eps, beta) -> [N]``; the surrogate is its mean."""
    coefficients: tuple[str, ...] = ()
    """Config fields the objective reads (beyond those every objective reads); the others of
    ``OBJECTIVE_COEFFICIENTS`` are refused when set with it."""
    setting_coefficient: str | None = None
    """The coefficient a Table 1 setting of this objective names (``clip-0.2`` -> clip_eps), if any."""
    needs_kl: bool = False
    """Whether the integrand reads the exact KL[pi_old, pi_theta] (computed only then)."""
    controller: Controller | None = None
    """``beta' = controller(beta, d, kl_target)``, once per update after the epochs (None: beta stays)."""


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("pg", "L^PG, eq. 2", pg_term),
    Objective("cpi", "L^CPI, eq. 6", cpi_term),
    Objective("clip", "L^CLIP, eq. 7", clip_term, coefficients=("clip_eps", "anneal_clip"),
              setting_coefficient="clip_eps"),
    Objective("kl-fixed", "L^KLPEN, eq. 8 (fixed beta)", klpen_term, coefficients=("kl_beta",),
              setting_coefficient="kl_beta", needs_kl=True),
    Objective("kl-adaptive", "L^KLPEN, eq. 8 (adaptive beta, section 4)", klpen_term,
              coefficients=("kl_beta", "kl_target"), setting_coefficient="kl_target", needs_kl=True,
              controller=adapt_beta),
)}

#: Config fields that only some objectives read: each is refused with an objective that does not list it.
OBJECTIVE_COEFFICIENTS = ("clip_eps", "anneal_clip", "kl_beta", "kl_target")


def get(name: str) -> Objective:
    """The record of ``name``; ``KeyError`` naming the choices otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; choose one of: {', '.join(OBJECTIVES)}") from None


# ---- the surrogates as means (the integrands' E_t[...]; for docs, tests and figures) ------------------------------
def l_pg(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """L^PG = E_t[log pi_theta(a_t|s_t) A_t]  (eq. 2)."""
    return jnp.mean(pg_term(t, clip_eps, beta))


def l_cpi(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """L^CPI = E_t[r_t(theta) A_t]  (eq. 6)."""
    return jnp.mean(cpi_term(t, clip_eps, beta))


def l_clip(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """L^CLIP = E_t[min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)]  (eq. 7)."""
    return jnp.mean(clip_term(t, clip_eps, beta))


def l_klpen(t: PolicyTerms, clip_eps: jax.Array, beta: jax.Array) -> jax.Array:
    """L^KLPEN = E_t[r_t A_t - beta KL[pi_old(.|s_t), pi_theta(.|s_t)]]  (eq. 8)."""
    return jnp.mean(klpen_term(t, clip_eps, beta))


# ---- the value loss of eq. 9 ----------------------------------------------------------------------------------------
def value_loss_term(values: jax.Array, old_values: jax.Array, targets: jax.Array,
                    vf_clip: float | None = None) -> jax.Array:
    """(V_theta(s_t) - V_t^targ)^2 of eq. 9 per sample, [N]; with ``vf_clip`` the ppo2 form
    max((V - V_targ)^2, (V_old + clip(V - V_old, -c, c) - V_targ)^2)."""
    sq = (values - targets) ** 2
    if vf_clip is None:
        return sq
    clipped = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
    return jnp.maximum(sq, (clipped - targets) ** 2)


def value_loss(values: jax.Array, old_values: jax.Array, targets: jax.Array, vf_clip: float | None = None) -> jax.Array:
    """L^VF = E_t[``value_loss_term``]."""
    return jnp.mean(value_loss_term(values, old_values, targets, vf_clip))
