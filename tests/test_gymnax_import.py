"""ppolab imports gymnax without importing seaborn (0.7 s of start-up); gymnax's own use of seaborn still works."""

import subprocess
import sys

CODE = """
import sys
from ppolab.envs.gymnax_env import import_gymnax
import_gymnax()
assert "seaborn" not in sys.modules, "seaborn imported at start-up"
from gymnax.environments.misc import pong
assert type(pong.sns).__name__ == "_ImportOnUse"
palette = pong.sns.color_palette("deep")          # first use: the real seaborn
assert type(sys.modules["seaborn"]).__name__ == "module" and len(palette) > 0
import seaborn
assert seaborn is sys.modules["seaborn"] and hasattr(seaborn, "lineplot")
print("ok")
"""


def test_gymnax_import_defers_seaborn_until_used():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"
