"""Test-session setup.

- The persistent compilation cache goes to a fresh directory of this session, so tests never depend on (or
  pollute) a user's ~/.cache/ppolab/jax. Subprocesses inherit the variable.
- report.html is not written at the end of each of the suite's many small runs (1-3 s each); tests/test_report.py
  checks it at the end of a run and on its own.
- float32 matrix products at full precision. The tests check arithmetic (numpy vs JAX networks, a vmapped agent vs
  the same agent alone) to ~1e-5; on NVIDIA GPUs JAX's default float32 matmuls run in TF32 (10-bit mantissa), which
  moves such results by ~1e-3 (seen on an H200: 9 tests failed at the default precision and passed at "highest").
  On CPU this changes nothing.
"""

import os
import tempfile

import jax

os.environ["PPOLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="ppolab-test-jax-cache-")
os.environ["PPOLAB_REPORT"] = "0"  # report.html at the end of every run: tested in tests/test_report.py
jax.config.update("jax_default_matmul_precision", "highest")
