"""Test-session setup: the persistent compilation cache goes to a fresh directory of this session, so tests never
depend on (or pollute) a user's ~/.cache/ppolab/jax. Subprocesses inherit the variable."""

import os
import tempfile

os.environ["PPOLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="ppolab-test-jax-cache-")
