"""The surrogate objectives of the paper, one signature, one registry; the value loss; the adaptive-beta rule.

Every objective maps ``PolicyTerms`` (per-sample arrays [N]) and the coefficients to a scalar surrogate L to be
*maximized* (the update minimizes -L); ``SURROGATE_TERMS`` holds the same objectives as per-sample integrands.
r_t(theta) = pi_theta(a_t|s_t) / pi_theta_old(a_t|s_t) = exp(logp - logp_old).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


class PolicyTerms(struct.PyTreeNode):
    log_prob: jax.Array      # [N] log pi_theta(a_t|s_t)
    old_log_prob: jax.Array  # [N] log pi_theta_old(a_t|s_t)
    advantages: jax.Array    # [N] A_t (already normalized if requested)
    kl: jax.Array            # [N] exact KL[pi_old(.|s_t), pi_theta(.|s_t)]

    @property
    def ratio(self):
        return jnp.exp(self.log_prob - self.old_log_prob)


# Each surrogate is written as its integrand: the per-sample term whose empirical mean E_t[...] over a minibatch is the
# objective. ``loss_fn`` takes all the means of a minibatch in one reduction; the ``l_*`` functions are the means.
def pg_term(t: PolicyTerms, clip_eps, beta):
    """log pi_theta(a_t|s_t) A_t, the integrand of L^PG  (eq. 2)."""
    return t.log_prob * t.advantages


def cpi_term(t: PolicyTerms, clip_eps, beta):
    """r_t(theta) A_t, the integrand of L^CPI  (eq. 6): importance-sampled, no clipping or penalty."""
    return t.ratio * t.advantages


def clip_term(t: PolicyTerms, clip_eps, beta):
    """min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t), the integrand of L^CLIP  (eq. 7)."""
    r = t.ratio
    return jnp.minimum(r * t.advantages, jnp.clip(r, 1.0 - clip_eps, 1.0 + clip_eps) * t.advantages)


def klpen_term(t: PolicyTerms, clip_eps, beta):
    """r_t A_t - beta KL[pi_old(.|s_t), pi_theta(.|s_t)], the integrand of L^KLPEN  (eq. 8)."""
    return t.ratio * t.advantages - beta * t.kl


SURROGATE_TERMS = {"pg": pg_term, "cpi": cpi_term, "clip": clip_term, "kl-fixed": klpen_term,
                   "kl-adaptive": klpen_term}


def l_pg(t: PolicyTerms, clip_eps, beta):
    """L^PG = E_t[log pi_theta(a_t|s_t) A_t]  (eq. 2)."""
    return jnp.mean(pg_term(t, clip_eps, beta))


def l_cpi(t: PolicyTerms, clip_eps, beta):
    """L^CPI = E_t[r_t(theta) A_t]  (eq. 6)."""
    return jnp.mean(cpi_term(t, clip_eps, beta))


def l_clip(t: PolicyTerms, clip_eps, beta):
    """L^CLIP = E_t[min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)]  (eq. 7)."""
    return jnp.mean(clip_term(t, clip_eps, beta))


def l_klpen(t: PolicyTerms, clip_eps, beta):
    """L^KLPEN = E_t[r_t A_t - beta KL[pi_old(.|s_t), pi_theta(.|s_t)]]  (eq. 8)."""
    return jnp.mean(klpen_term(t, clip_eps, beta))


OBJECTIVE_FNS = {"pg": l_pg, "cpi": l_cpi, "clip": l_clip, "kl-fixed": l_klpen, "kl-adaptive": l_klpen}


def value_loss_term(values, old_values, targets, vf_clip=None):
    """(V_theta(s_t) - V_t^targ)^2 of eq. 9 per sample; with ``vf_clip`` the ppo2 form
    max((V - V_targ)^2, (V_old + clip(V - V_old, -c, c) - V_targ)^2)."""
    sq = (values - targets) ** 2
    if vf_clip is None:
        return sq
    clipped = old_values + jnp.clip(values - old_values, -vf_clip, vf_clip)
    return jnp.maximum(sq, (clipped - targets) ** 2)


def value_loss(values, old_values, targets, vf_clip=None):
    """L^VF = E_t[``value_loss_term``]."""
    return jnp.mean(value_loss_term(values, old_values, targets, vf_clip))


def adapt_beta(beta, d, d_targ):
    """The paper's rule, applied once after each policy update with d = E_t[KL[pi_old, pi_theta]]:
    d < d_targ / 1.5 -> beta / 2;  d > d_targ * 1.5 -> beta * 2;  otherwise unchanged."""
    beta = jnp.where(d < d_targ / 1.5, beta / 2.0, beta)
    return jnp.where(d > d_targ * 1.5, beta * 2.0, beta)
