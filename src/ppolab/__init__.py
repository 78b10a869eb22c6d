"""ppolab: Proximal Policy Optimization (Schulman et al. 2017, arXiv 1707.06347) on JAX.

    import ppolab
    result = ppolab.train(ppolab.Config(env="CartPole-v1"))
    result.summary["eval_return_mean"]
"""

import ppolab.train as _train_module  # loaded first so that the function below, not the module, is ppolab.train
from ppolab.config import PRESETS, Config, ConfigError
from ppolab.train import TrainResult

__version__ = "0.1.0"


def train(cfg: Config | None = None, **kwargs) -> TrainResult:
    """Train ``cfg`` (default: CartPole-v1); returns TrainResult(state, summary, run_dir, config).
    See ``ppolab.train.train`` for the keyword arguments."""
    return _train_module.train(cfg if cfg is not None else Config(), **kwargs)


def evaluate(run_dir, episodes: int = 10, deterministic: bool = True, seed: int = 12345):
    """Evaluate the newest good checkpoint of a run directory."""
    from ppolab.train import evaluate_run

    return evaluate_run(run_dir, episodes, deterministic, seed)


__all__ = ["Config", "ConfigError", "PRESETS", "TrainResult", "train", "evaluate", "__version__"]
