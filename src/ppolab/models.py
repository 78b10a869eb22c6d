"""The network a configuration asks for: ``--policy feedforward`` (``networks.ActorCritic``: the MLP, or the Nature
CNN on images) or ``--policy lstm|gru`` (``recurrent.RecurrentActorCritic``: that torso, then the cell)."""

from __future__ import annotations

from ppolab.networks import ActorCritic, make_network
from ppolab.recurrent import RecurrentActorCritic, make_recurrent_network
from ppolab.spaces import ActionSpec, ObsSpec


def make_model(cfg, obs: ObsSpec, action: ActionSpec) -> ActorCritic | RecurrentActorCritic:
    if cfg.policy == "feedforward":
        return make_network(cfg, obs, action)
    return make_recurrent_network(cfg, obs, action)
