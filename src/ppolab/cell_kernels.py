"""The LSTM / GRU sequence loops of ``cells.py`` as XLA:CPU custom calls (``kernels/cells.cc`` through ``jax.ffi``).

Why: on a CPU, a ``lax.scan`` over a small cell is bound by XLA's dispatch, ~20 kernels a time step, not by the
arithmetic (BENCHMARKS.md, session 7: 25 us forward and 50 us backward a step for sb3's CartPoleNoVel LSTMs, 8 x 64).
One custom call runs the whole time loop in C++ instead, and the backward call also forms the recurrent weights'
gradient (XLA's own product for it, [64, 256] over 256 rows, took ~0.3 ms: as long as the loop). Vmapped calls
(leading dims: the actor's and critic's cells paired by ``cells.paired_sequences``, populations) run their members
in parallel on XLA's CPU thread pool. The kernels compute the same equations with the same
residuals as the scans they replace (``tests/test_cell_kernels.py`` checks values and gradients against them and
against autodiff), so ``cells.py`` picks one or the other per process and nothing else changes.

Built on first use: ``g++ -O3 -march=native`` against jaxlib's FFI headers into ``$XDG_CACHE_HOME/ppolab/kernels``
(``~/.cache``), keyed by the source, jaxlib's version and the CPU, in about 5 s; later processes load the cached
library. Used only where the default backend is the CPU; ``PPOLAB_CELL_KERNELS=0`` turns them off (the scans run),
and where the build fails (no compiler) the scans run after one warning naming the reason.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "cells.cc")
TARGETS = {"ppolab_lstm_fwd": "PpolabLstmForward", "ppolab_lstm_bwd": "PpolabLstmBackward",
           "ppolab_gru_fwd": "PpolabGruForward", "ppolab_gru_bwd": "PpolabGruBackward"}
#: IEEE float32 throughout (no -ffast-math); -fno-trapping-math lets the compiler vectorize the branch-free selects,
#: -ffp-contract=fast lets it fuse multiply-adds.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
         "-ffp-contract=fast")


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln for ln in f if ln.startswith("flags")), platform.processor())
    except OSError:
        return platform.processor()


def library_path() -> str:
    """Where the compiled kernels for this source, jaxlib and CPU live."""
    import jaxlib

    with open(SOURCE, "rb") as f:
        key = hashlib.sha256(f.read() + jaxlib.__version__.encode() + " ".join(FLAGS).encode()
                             + _cpu_signature().encode()).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "ppolab", "kernels", f"cells-{key}.so")


def build(path: str) -> None:
    """Compile ``kernels/cells.cc`` to ``path`` (written whole, then renamed: concurrent builds are safe)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(fd)
    cmd = [os.environ.get("CXX", "g++"), *FLAGS, f"-I{jax.ffi.include_dir()}", SOURCE, "-o", tmp]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        os.replace(tmp, path)
        for old in glob.glob(os.path.join(os.path.dirname(path), "cells-*.so")):  # builds of older sources
            if old != path:
                os.unlink(old)
    except (OSError, subprocess.CalledProcessError) as err:
        os.unlink(tmp)
        detail = getattr(err, "stderr", "") or str(err)
        reason = detail.strip().splitlines()[-1] if detail.strip() else repr(err)
        raise RuntimeError(f"{cmd[0]} failed: {reason}") from err


@functools.cache
def available() -> bool:
    """Whether the kernels are built, loaded and registered for this process (cached: decided once)."""
    if os.environ.get("PPOLAB_CELL_KERNELS", "1") == "0" or jax.default_backend() != "cpu":
        return False
    path = library_path()
    try:
        if not os.path.exists(path):
            build(path)
        lib = ctypes.cdll.LoadLibrary(path)
        for name, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, RuntimeError) as err:
        warnings.warn(f"ppolab: the C++ cell kernels are not available ({err}); recurrent updates use lax.scan "
                      "(slower on a CPU; set PPOLAB_CELL_KERNELS=0 to silence this)", stacklevel=2)
        return False
    return True


def _call(name, shapes, *args):
    out = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.ffi.ffi_call(name, out, vmap_method="broadcast_all")(*args)


def lstm_forward(zx, wh, starts, c0, h0):
    """-> (hs, cs), residuals (gates [L, B, 4H], c_prev, h_prev, tc [L, B, H]): cells._lstm_forward's loop."""
    L, B, H = (*zx.shape[:2], wh.shape[0])
    seq, gates = (L, B, H), (L, B, 4 * H)
    hs, cs, g, c_prev, h_prev, tc = _call("ppolab_lstm_fwd", [seq, seq, gates, seq, seq, seq], zx, wh, starts, c0, h0)
    return (hs, cs), (g, c_prev, h_prev, tc)


def lstm_backward(g_hs, g_cs, gates, c_prev, h_prev, tc, wh, starts):
    """-> dz [L, B, 4H], dwh [H, 4H] (sum_t h_prev^T dz), dc0, dh0 [B, H]: cells._lstm_backward's loop and product."""
    L, B, H = g_hs.shape
    return _call("ppolab_lstm_bwd", [(L, B, 4 * H), (H, 4 * H), (B, H), (B, H)], g_hs, g_cs, gates, c_prev, h_prev,
                 tc, wh, starts)


def gru_forward(zx, wh, b_hn, starts, h0):
    """-> hs, residuals (r, u, n, hn, h_prev, each [L, B, H]): cells._gru_forward's loop."""
    L, B, H = (*zx.shape[:2], wh.shape[0])
    hs, *res = _call("ppolab_gru_fwd", [(L, B, H)] * 6, zx, wh, b_hn, starts, h0)
    return hs, tuple(res)


def gru_backward(g_hs, r, u, n, hn, h_prev, wh, starts):
    """-> dzx, dzh [L, B, 3H], dwh [H, 3H] (sum_t h_prev^T dzh), dh0 [B, H]: cells._gru_backward's loop and
    product."""
    L, B, H = g_hs.shape
    return _call("ppolab_gru_bwd", [(L, B, 3 * H), (L, B, 3 * H), (H, 3 * H), (B, H)], g_hs, r, u, n, hn, h_prev, wh,
                 starts)
