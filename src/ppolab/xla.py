"""The XLA compiler options ppolab's training programs are compiled with, and a ``jit`` that applies them.

On an x86 CPU with AVX-512, XLA:CPU still emits 256-bit vector code unless told otherwise
(``xla_cpu_prefer_vector_width``, default 256, a safe choice for CPUs that slow their clock on 512-bit code). On the
AMD EPYC VMs ppolab is measured on, 512-bit code made the PPO update ~5 % faster (PureJaxRL-sized gymnax CartPole
iteration 2.01 -> 1.90 ms, Hopper update 22.3 -> 21.1 ms, CartPole update 4.40 -> 4.03 ms, A/B in one process;
BENCHMARKS.md). No fast-math: results stay IEEE float32. ``PPOLAB_XLA_DEFAULTS=0`` turns this off.
"""

from __future__ import annotations

import functools
import os

import jax


def _cpu_has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return " avx512f" in line
    except OSError:
        pass
    return False


@functools.cache
def compiler_options() -> dict:
    """Options for ppolab's jitted programs on the current default backend (empty off CPU).

    Not used, measured: ``xla_cpu_use_fusion_emitters=False`` lowers the peak RSS of a first (uncached) CartPole
    run from ~580 to ~380 MiB, but makes the CartPole update 33 % slower (4.03 -> 5.35 ms) and the fused gymnax
    iteration 9 % slower."""
    if os.environ.get("PPOLAB_XLA_DEFAULTS", "1") == "0" or jax.default_backend() != "cpu":
        return {}
    return {"xla_cpu_prefer_vector_width": 512} if _cpu_has_avx512() else {}


class jit:
    """``jax.jit`` with ``compiler_options()``, created on first use (so that importing a module does not start the
    JAX backend). Supports calling and ``lower``, like the jitted function it stands for."""

    def __init__(self, fn, **jit_kwargs):
        self.fn, self.jit_kwargs, self._jitted = fn, jit_kwargs, None
        functools.update_wrapper(self, fn)

    @property
    def jitted(self):
        if self._jitted is None:
            options = compiler_options()
            self._jitted = jax.jit(self.fn, compiler_options=options or None, **self.jit_kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self.jitted.lower(*args, **kwargs)
