"""``ppolab export RUN_DIR``: a run's deterministic policy as an ONNX model (``pip install 'ppolab[export]'``).

The model is the function ``Policy.forward_fn`` (``ppolab.policy``) converted by jax2onnx: one input ``obs``
[N, *obs_shape] (float32, or uint8 frames for Nature-CNN policies) with a dynamic batch dimension N, the run's
observation normalization folded in, and the output ``action``: the mode of the policy's distribution -- argmax
for Discrete (int32 [N]) and for each MultiDiscrete component (int32 [N, len(nvec)]), ``logit > 0`` for
MultiBinary (int32 [N, n]), and for Box the Gaussian's mean clipped to the action bounds (float32 [N, d]), which is
the action ``ppolab eval`` executes. ``--with-value`` adds the output ``value``, V(s) float32 [N].

Action masks (``Policy.predict(..., action_masks=)``) are not an input of the exported model yet: it returns the
unmasked mode. The file is written to a temporary name beside the target and renamed, so a failed export leaves
nothing behind.
The model's metadata (``metadata_props``) records the env, the spaces, the agent, the checkpoint and the conventions.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import tyro

from ppolab.config import ConfigError

FORMATS = ("onnx",)
OPSET = 17  # ONNX opset of the exported graph: every op a ppolab policy needs, read by onnxruntime >= 1.11


@dataclasses.dataclass
class ExportArgs:
    """Export a run's deterministic policy (and optionally its value head) as an ONNX model."""

    run_dir: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run directory written by ppolab train."""
    format: str = "onnx"
    """Model format (onnx)."""
    out: str | None = None
    """Output file (default: RUN_DIR/policy.onnx)."""
    with_value: bool = False
    """Also output the value head V(s) (output 'value')."""
    agent: int = 0
    """Which agent of a population (0..K-1, as in metrics.csv)."""


def run_export(args: ExportArgs) -> Path:
    """What ``ppolab export`` does: ``export_run`` with the command line's arguments."""
    return export_run(args.run_dir, args.format, args.out, with_value=args.with_value, agent=args.agent)


def _target(run_dir: Path, fmt: str, out: str | os.PathLike | None) -> Path:
    """The output path, checked before any work: its directory must exist and the path must not be a directory."""
    path = Path(out) if out is not None else run_dir / f"policy.{fmt}"
    if path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a directory; give a file name, e.g. {str(path / 'policy.onnx')!r}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {str(path)!r}: the directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(path)!r}: the directory {str(parent)!r} is not writable")
    return path


def _import_exporter():
    try:
        import jax2onnx
        import onnx
    except ImportError as e:
        raise ConfigError(f"ONNX export needs jax2onnx and onnx ({e.name} is missing): "
                          "pip install 'ppolab[export]'") from None
    return jax2onnx, onnx


def _load_plugins(subset: bool) -> bool:
    """jax2onnx imports all of its ~500 plugin modules (Equinox, dm-pix, example models) before its first conversion:
    ~11 s on a 2-core CPU. A ppolab policy needs only the jax and flax ones (~4 s); ``subset`` imports just those
    (through jax2onnx's own discovery function). Returns whether the subset was loaded; on any change of jax2onnx's
    internals it does nothing and jax2onnx imports everything itself."""
    try:
        from jax2onnx.plugins import plugin_system as ps

        if ps._already_imported_plugins:
            return False
        if not subset:
            ps.import_all_plugins()
            return False
        root = Path(ps.__file__).parent
        for tree in ("jax", "flax"):
            ps._import_tree(root / tree, f"jax2onnx.plugins.{tree}")
        ps._already_imported_plugins = True
        return True
    except (ImportError, AttributeError, TypeError):
        return False


def _convert(jax2onnx, fn, inputs, **kw):
    """``jax2onnx.to_onnx`` with the plugin subset first, and every plugin if the subset lacks one. onnx_ir's
    warnings about shape constants without a recorded type (they serialize fine) are silenced."""
    import logging

    quiet = logging.getLogger("onnx_ir")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        subset = _load_plugins(subset=True)
        try:
            return jax2onnx.to_onnx(fn, inputs, **kw)
        except Exception:
            if not subset:
                raise
            from jax2onnx.plugins import plugin_system as ps

            ps._already_imported_plugins = False
            _load_plugins(subset=False)
            return jax2onnx.to_onnx(fn, inputs, **kw)
    finally:
        quiet.setLevel(level)


def _metadata(policy, with_value: bool) -> dict[str, str]:
    import json

    from ppolab import __version__

    a, o = policy.action_spec, policy.obs_spec
    env = ""
    if policy.run_dir is not None and (policy.run_dir / "config.json").is_file():
        env = json.loads((policy.run_dir / "config.json").read_text()).get("env", "")
    return {"producer": f"ppolab {__version__}", "env": env, "obs_shape": json.dumps(list(o.shape)),
            "obs_dtype": o.dtype, "action_kind": a.kind, "action_size": str(a.size), "action_nvec": json.dumps(
                list(a.nvec)), "action_low": json.dumps(list(a.low)), "action_high": json.dumps(list(a.high)),
            "action": "mode of the policy distribution" + (
                "; Box: mean clipped to the bounds" if a.kind == "box" and policy.bounds_known else ""),
            "observation_normalization": "folded in" if policy.obs_mean is not None else "none",
            "outputs": "action, value" if with_value else "action", "agent": str(policy.agent),
            "checkpoint": policy.checkpoint.name if policy.checkpoint else "", "iteration": str(policy.iteration)}


def to_onnx(policy, with_value: bool = False, clip: bool = True, opset: int = OPSET):
    """``policy``'s deterministic forward pass (a ``ppolab.policy.Policy``) as an ``onnx.ModelProto``."""
    import jax
    import jax.numpy as jnp

    jax2onnx, onnx = _import_exporter()
    o = policy.obs_spec
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("N") + tuple(o.shape),
                                jnp.uint8 if o.image else jnp.float32)
    fn = policy.forward_fn("mode", with_value=with_value, clip=clip)
    model = _convert(jax2onnx, fn, [spec], model_name="ppolab_policy", opset=opset, input_names=["obs"],
                             output_names=["action", "value"] if with_value else ["action"])
    onnx.helper.set_model_props(model, _metadata(policy, with_value))
    model.doc_string = "ppolab policy: obs -> deterministic action" + (", value" if with_value else "")
    return model


def export_run(run_dir: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
               with_value: bool = False, agent: int = 0, clip: bool = True) -> Path:
    """Export agent ``agent``'s policy of ``run_dir`` (newest good checkpoint) to ``out`` (default
    RUN_DIR/policy.onnx). Returns the path written. Bad input raises ``ConfigError`` before anything is written."""
    from ppolab.policy import load

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; supported: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    path = _target(run_dir, fmt, out)
    _import_exporter()
    policy = load(run_dir, agent=agent)
    data = to_onnx(policy, with_value=with_value, clip=clip).SerializeToString()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write --out {str(path)!r}: {e.strerror or e}") from None
    return path
