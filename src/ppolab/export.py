"""``ppolab export RUN_DIR``: a run's deterministic policy as an ONNX model (``pip install 'ppolab[export]'``).

The model is the function ``Policy.forward_fn`` (``ppolab.policy``) converted by jax2onnx: one input ``obs``
[N, *obs_shape] (float32, or uint8 frames for Nature-CNN policies) with a dynamic batch dimension N, the run's
observation normalization folded in, and the output ``action``: the mode of the policy's distribution -- argmax
for Discrete (int32 [N]) and for each MultiDiscrete component (int32 [N, len(nvec)]), ``logit > 0`` for
MultiBinary (int32 [N, n]), and for Box the Gaussian's mean clipped to the action bounds (float32 [N, d]), which is
the action ``ppolab eval`` executes. ``--with-value`` adds the output ``value``, V(s) float32 [N].

Action masks: a run that acted with masks (``run_acts_masked``) gets a second input ``action_mask``, bool
[N, head_size] (True = legal; the layout of ``Policy.predict(..., action_masks=)``: [n] for Discrete(n),
[sum(nvec)] for MultiDiscrete), and the model returns the best *legal* action, as ``ppolab eval`` does.

Recurrent policies (``--policy lstm|gru``) export one step (``Policy.step_fn``): inputs ``obs``, (``action_mask``,)
``episode_start`` bool [N] (True where obs is an episode's first observation: that row's carry is reset before the
step) and the carry leaves float32 [N, rnn_size] (``carry_c``, ``carry_h`` for an LSTM, ``carry_h`` for a GRU;
``carry_pi_*``, ``carry_v_*`` with ``--rnn-separate``); outputs ``action``, (``value``,) and the carry after the step,
``next_carry_*``, to feed back as ``carry_*`` at the next step. The first step takes zeros (or any carry with
``episode_start`` True).

The file is written to a temporary name beside the target and renamed, so a failed export leaves nothing behind.
The model's metadata (``metadata_props``) records the env, the spaces, the inputs and outputs, the agent, the
checkpoint and the conventions.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
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


def _carry_names(policy) -> list[str]:
    """The ONNX names of a recurrent policy's carry leaves, in ``jax.tree_util.tree_leaves`` order: carry_c,
    carry_h (LSTM), carry_h (GRU); with separate actor and critic cells carry_pi_* then carry_v_*."""
    cells = policy.initial_state(1)
    prefixes = ("pi_", "v_") if len(cells) == 2 else ("",)
    names = []
    for prefix, cell in zip(prefixes, cells, strict=True):
        n = len(_leaves(cell))
        parts = ("c", "h") if policy.net.cell == "lstm" and n == 2 else ("h",) if n == 1 else map(str, range(n))
        names += [f"carry_{prefix}{part}" for part in parts]
    return names


def _leaves(tree) -> list:
    import jax

    return jax.tree_util.tree_leaves(tree)


def _metadata(policy, with_value: bool, masked: bool, inputs: list[str], outputs: list[str]) -> dict[str, str]:
    import json

    from ppolab import __version__

    a, o = policy.action_spec, policy.obs_spec
    env = ""
    if policy.run_dir is not None and (policy.run_dir / "config.json").is_file():
        env = json.loads((policy.run_dir / "config.json").read_text()).get("env", "")
    net = policy.net
    meta = {"producer": f"ppolab {__version__}", "env": env, "obs_shape": json.dumps(list(o.shape)),
            "obs_dtype": o.dtype, "action_kind": a.kind, "action_size": str(a.size), "action_nvec": json.dumps(
                list(a.nvec)), "action_low": json.dumps(list(a.low)), "action_high": json.dumps(list(a.high)),
            "action": "mode of the policy distribution" + (
                "; Box: mean clipped to the bounds" if a.kind == "box" and policy.bounds_known else "") + (
                "; the best legal action under action_mask (bool, True = legal)" if masked else ""),
            "observation_normalization": "folded in" if policy.obs_mean is not None else "none",
            "inputs": ", ".join(inputs), "outputs": ", ".join(outputs), "agent": str(policy.agent),
            "checkpoint": policy.checkpoint.name if policy.checkpoint else "", "iteration": str(policy.iteration),
            "policy": net.cell if policy.recurrent else "feedforward"}
    if policy.recurrent:
        meta.update(rnn_size=str(net.rnn_size), rnn_separate=str(net.separate).lower(),
                    carry="one step: pass the next_carry_* outputs back as the carry_* inputs; zeros initially; "
                          "episode_start True resets that row's carry before the step")
    return meta


def _model_io(policy, with_value: bool, clip: bool, masked: bool):
    """(function, input specs, input names, output names) of the exported model."""
    import jax
    import jax.numpy as jnp

    o, a = policy.obs_spec, policy.action_spec
    N = jax.export.symbolic_shape("N")
    specs = [jax.ShapeDtypeStruct(N + tuple(o.shape), jnp.uint8 if o.image else jnp.float32)]
    inputs, outputs = ["obs"], ["action"] + (["value"] if with_value else [])
    if masked:
        specs.append(jax.ShapeDtypeStruct(N + (a.head_size,), jnp.bool_))
        inputs.append("action_mask")
    if not policy.recurrent:
        return policy.forward_fn("mode", with_value=with_value, clip=clip), specs, inputs, outputs
    template = policy.initial_state(1)
    treedef = jax.tree_util.tree_structure(template)
    names = _carry_names(policy)
    specs.append(jax.ShapeDtypeStruct(N, jnp.bool_))
    specs += [jax.ShapeDtypeStruct(N + x.shape[1:], jnp.float32) for x in _leaves(template)]
    inputs += ["episode_start"] + names
    outputs += ["next_" + n for n in names]
    step = policy.step_fn(with_value=with_value, clip=clip)

    def fn(obs, *rest):
        mask, rest = (rest[0], rest[1:]) if masked else (None, rest)
        action, value, carry = step(obs, rest[0], jax.tree_util.tree_unflatten(treedef, rest[1:]), mask)
        return (action, *(() if value is None else (value,)), *_leaves(carry))

    return fn, specs, inputs, outputs


def to_onnx(policy, with_value: bool = False, clip: bool = True, opset: int = OPSET, action_mask: bool = False):
    """``policy``'s deterministic forward pass (a ``ppolab.policy.Policy``) as an ``onnx.ModelProto``; with
    ``action_mask`` the model takes the input ``action_mask`` and returns the best legal action. A recurrent
    policy's model is one step (see the module docstring)."""
    if action_mask and policy.action_spec.kind not in ("discrete", "multidiscrete"):
        raise ConfigError(f"action masks need a Discrete or MultiDiscrete action space; this policy's is "
                          f"{policy.action_spec.kind}")
    jax2onnx, onnx = _import_exporter()
    fn, specs, inputs, outputs = _model_io(policy, with_value, clip, action_mask)
    model = _convert(jax2onnx, fn, specs, model_name="ppolab_policy", opset=opset, input_names=inputs,
                     output_names=outputs)
    onnx.helper.set_model_props(model, _metadata(policy, with_value, action_mask, inputs, outputs))
    model.doc_string = f"ppolab policy: {', '.join(inputs)} -> {', '.join(outputs)}"
    return model


def run_acts_masked(run_dir: Path, action_spec) -> bool:
    """Whether the run in ``run_dir`` acted with action masks: policy.json's ``action_mask`` where recorded, else
    the run's env asks (built once, as training built it; a warning and False where it cannot be built)."""
    from ppolab.policy import read_policy_spec
    from ppolab.rundir import load_run_config

    if action_spec.kind not in ("discrete", "multidiscrete"):
        return False
    spec, _ = read_policy_spec(run_dir)
    if "action_mask" in spec:
        return bool(spec["action_mask"])
    cfg = load_run_config(run_dir)
    if cfg.action_mask == "off":
        return False
    from ppolab.envs.factory import is_jax_native, make_host_env, make_jax_env

    try:
        if is_jax_native(cfg):
            return bool(getattr(make_jax_env(cfg), "has_mask", False))
        env = make_host_env(cfg.replace(ray_workers=0), 1, 1, distributed=False)
        try:
            return bool(getattr(env, "has_mask", False))
        finally:
            env.close()
    except Exception as e:  # noqa: BLE001 - the env is not installed here, ...: export unmasked, say so
        warnings.warn(f"cannot build {cfg.env!r} to see whether it gives action masks ({type(e).__name__}: {e}); "
                      "the model has no action_mask input", stacklevel=2)
        return False


def export_run(run_dir: str | os.PathLike, fmt: str = "onnx", out: str | os.PathLike | None = None,
               with_value: bool = False, agent: int = 0, clip: bool = True, action_mask: bool | None = None) -> Path:
    """Export agent ``agent``'s policy of ``run_dir`` (newest good checkpoint) to ``out`` (default
    RUN_DIR/policy.onnx). Returns the path written. Bad input raises ``ConfigError`` before anything is written.
    ``action_mask``: give the model an ``action_mask`` input (None: where the run acted with masks,
    ``run_acts_masked``)."""
    from ppolab.policy import load

    if fmt not in FORMATS:
        raise ConfigError(f"unknown --format {fmt!r}; supported: {', '.join(FORMATS)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    path = _target(run_dir, fmt, out)
    _import_exporter()
    policy = load(run_dir, agent=agent)
    masked = run_acts_masked(run_dir, policy.action_spec) if action_mask is None else bool(action_mask)
    data = to_onnx(policy, with_value=with_value, clip=clip, action_mask=masked).SerializeToString()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write --out {str(path)!r}: {e.strerror or e}") from None
    return path
