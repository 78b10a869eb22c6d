"""ppolab: Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347) on JAX.

    import ppolab
    result = ppolab.train(ppolab.Config(env="CartPole-v1"))
    result.summary["eval_return_mean"]
    policy = ppolab.load(result.run_dir)        # no env, no optimizer
    action, _ = policy.predict(obs)
"""

from ppolab.config import PRESETS, Config, ConfigError

__version__ = "0.1.0"


def train(cfg: Config | None = None, **kwargs):
    """Train ``cfg`` (default: CartPole-v1); returns TrainResult(state, summary, run_dir, config).
    See ``ppolab.training.train`` for the keyword arguments."""
    from ppolab.training import train as _train

    return _train(cfg if cfg is not None else Config(), **kwargs)


def __getattr__(name: str):
    if name == "TrainResult":  # imported on use: ``import ppolab`` (or ppolab.config) stays light
        from ppolab.training import TrainResult

        return TrainResult
    raise AttributeError(f"module 'ppolab' has no attribute {name!r}")


def evaluate(run_dir, episodes: int = 10, deterministic: bool = True, seed: int = 12345):
    """Evaluate the newest good checkpoint of a run directory."""
    from ppolab.evaluation import evaluate_run

    return evaluate_run(run_dir, episodes, deterministic, seed)


def load(run_dir, agent: int = 0, seed: int = 0):
    """The trained policy of a run directory (newest good checkpoint): ``predict(obs, state=None,
    episode_start=None, deterministic=True, action_masks=None) -> (actions, state)`` (``state``: a recurrent
    policy's carry) and ``value(obs)``. See ``ppolab.policy``."""
    from ppolab.policy import load as _load

    return _load(run_dir, agent=agent, seed=seed)


__all__ = ["Config", "ConfigError", "PRESETS", "TrainResult", "train", "evaluate", "load", "__version__"]
