"""report.html in a real browser: headless Chromium (Debian's ``chromium``) loads the file through the DevTools
protocol; the test reads the DOM (table rows, plots decoded, the video's metadata), collects console errors and
uncaught exceptions, and checks that a full-page screenshot is not blank."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from ppolab.config import ConfigError
from ppolab.report import write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
HAS_WEBSOCKETS = importlib.util.find_spec("websockets") is not None
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or not HAS_WEBSOCKETS,
    reason="headless Chromium is not installed (apt-get install -y chromium; .ci/run installs it)" if CHROMIUM is None
    else "the DevTools client needs the websockets package (pip install -e '.[test]')")

#: The DOM facts the tests check, computed in the page.
DOM_FACTS = """JSON.stringify({
  title: document.title,
  rows: Object.fromEntries([...document.querySelectorAll('table[id]')].map(t => [t.id, t.tBodies[0].rows.length])),
  plots: [...document.querySelectorAll('figure.plot')].map(f => f.dataset.plot),
  images: [...document.images].map(i => [i.complete, i.naturalWidth]),
  video: (v => v ? {ready: v.readyState, duration: v.duration, width: v.videoWidth, error: v.error && v.error.code}
                 : null)(document.querySelector('video')),
  cells: Object.fromEntries([...document.querySelectorAll('table[id]')].map(
      t => [t.id, [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent))])),
})"""


class Chromium:
    """Headless Chromium driven over the DevTools protocol (one websocket, flattened sessions)."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--mute-audio", "--hide-scrollbars", "--window-size=1280,1600",
             "--remote-debugging-port=0", "--remote-allow-origins=*")

    def __init__(self, profile: Path):
        self.profile, self.ids, self.events = profile, itertools.count(1), []
        self.stack = contextlib.ExitStack()

    def __enter__(self):
        from websockets.sync.client import connect

        # its scratch files (and socket: a short path) in a directory of its own, removed on exit
        self.tmp = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="ppolab-chromium-"))
        self.proc = subprocess.Popen([CHROMIUM, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "TMPDIR": self.tmp})
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split()) == 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError("Chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        port, path = port_file.read_text().split()
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=30))
        return self

    def __exit__(self, *exc):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the browser this test started, and its own children
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        finally:
            self.stack.close()

    def cmd(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        i = next(self.ids)
        msg = {"id": i, "method": method, "params": params} | ({"sessionId": session} if session else {})
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def open(self, path: Path) -> str:
        target = self.cmd("Target.createTarget", url="about:blank")["targetId"]
        s = self.cmd("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.cmd(f"{domain}.enable", s)
        self.cmd("Emulation.setDeviceMetricsOverride", s, width=1280, height=1600, deviceScaleFactor=1, mobile=False)
        self.cmd("Page.navigate", s, url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")
        return s

    def evaluate(self, session: str, expression: str):
        r = self.cmd("Runtime.evaluate", session, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen so far."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(str(p.get("exceptionDetails", {}).get("text")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def screenshot(self, session: str, out: Path) -> np.ndarray:
        from PIL import Image

        data = base64.b64decode(self.cmd("Page.captureScreenshot", session, format="png",
                                         captureBeyondViewport=True)["data"])
        out.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def load_in_chromium(report: Path, tmp_path: Path, want_video: bool = False) -> tuple[dict, list[str], np.ndarray]:
    """(DOM facts, console errors, screenshot pixels) of ``report`` in headless Chromium."""
    with Chromium(tmp_path / "chromium-profile") as browser:
        s = browser.open(report)
        facts = browser.evaluate(s, DOM_FACTS)
        deadline = time.monotonic() + 20
        while want_video and json.loads(facts)["video"]["ready"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)  # a data: URI video decodes its metadata asynchronously
            facts = browser.evaluate(s, DOM_FACTS)
        pixels = browser.screenshot(s, tmp_path / f"{report.stem}.png")
        return json.loads(facts), browser.errors(), pixels


def assert_not_blank(pixels: np.ndarray):
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000, pixels.shape  # the whole page, not one line
    gray = pixels.mean(axis=2)
    assert gray.std() > 10, f"screenshot looks blank (pixel std {gray.std():.1f})"
    assert (gray < 200).mean() > 0.01, "screenshot has almost no dark pixels (no text, no plots)"


# ---- fixtures ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished 2-agent CartPole run with an evaluation and an MP4 of one episode."""
    import ppolab
    from ppolab.evaluate import record_run_video

    run = tmp_path_factory.mktemp("report") / "run"
    ppolab.train(ppolab.Config(env="CartPole-v1", total_timesteps=512, num_envs=4, num_steps=64, num_epochs=2,
                               num_seeds=2, eval_episodes=2, progress=False, tensorboard=False, run_dir=str(run)))
    record_run_video(run, max_steps=60)
    return run


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> Path:
    """The tiny Table 1 grid of tests/test_compare.py: one env, two settings, two seeds."""
    from ppolab.cli import CompareArgs
    from ppolab.experiments import compare

    out = tmp_path_factory.mktemp("report") / "cmp"
    compare.run_grid(CompareArgs(out=str(out), envs=("InvertedPendulum-v5",), settings=("cpi", "clip-0.2"),
                                         seeds=2, total_timesteps=256, num_steps=64, num_epochs=1,
                                         num_minibatches=2, random_episodes=5, progress=False))
    return out


# ---- tests ------------------------------------------------------------------------------------------------------
@needs_chromium
def test_run_report_in_chromium(run_dir, tmp_path):
    report = write_report(run_dir)
    assert report == run_dir / "report.html"
    text = report.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    facts, errors, pixels = load_in_chromium(report, tmp_path, want_video=True)
    assert errors == []
    assert facts["title"] == "ppolab run: CartPole-v1 / clip"
    rows = facts["rows"]
    assert rows["agents"] == 2 and rows["eval"] == 2 and rows["summary"] >= 10 and rows["config"] >= 30
    assert "learning-curve" in facts["plots"]
    for k in ("kl", "clip_fraction", "entropy", "explained_variance", "beta"):
        assert f"diag-{k}" in facts["plots"], k
    assert facts["images"] and all(ok and w > 0 for ok, w in facts["images"])  # every embedded PNG decoded
    video = facts["video"]
    assert video["error"] is None and video["ready"] >= 1 and video["duration"] > 0 and video["width"] == 600
    assert_not_blank(pixels)
    assert (tmp_path / "report.png").stat().st_size > 10_000


@needs_chromium
@pytest.mark.slow
def test_compare_report_in_chromium(compare_dir, tmp_path):
    report = write_report(compare_dir)
    facts, errors, pixels = load_in_chromium(report, tmp_path)
    assert errors == []
    rows, cells = facts["rows"], facts["cells"]
    assert rows["table1"] == 2 and rows["runs-table"] == 4 and rows["random"] == 1
    table1 = {r[0]: r for r in cells["table1"]}
    assert table1["No clipping or penalty"][2] == "-0.39"  # the paper's column beside ours
    assert table1["Clipping, eps = 0.2"][2] == "0.82"
    assert "env-InvertedPendulum-v5" in facts["plots"] and "scores" in facts["plots"]
    assert all(ok and w > 0 for ok, w in facts["images"])
    assert_not_blank(pixels)


def test_report_of_an_unfinished_run_and_bad_paths(run_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(run_dir / "config.json", partial / "config.json")
    (partial / "eval.json").write_text(json.dumps({"eval_return_mean": 12.5, "episodes": 3, "agents": []}))
    text = write_report(partial).read_text()  # no metrics, no summary, no checkpoint: still a page
    assert "no summary.json" in text and "no video recorded" in text
    assert 'id="eval-later"' in text and "12.5" in text
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="neither a ppolab run directory"):
        write_report(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(run_dir, out=tmp_path / "no" / "such" / "report.html")
    assert list(empty.iterdir()) == []


def test_a_finished_run_writes_its_report(tmp_path, monkeypatch):
    """report.html is written at the end of every run (the test session turns that off elsewhere)."""
    import ppolab

    monkeypatch.setenv("PPOLAB_REPORT", "1")
    run = tmp_path / "r"
    ppolab.train(ppolab.Config(total_timesteps=512, num_envs=4, num_steps=64, num_epochs=2, eval_episodes=1,
                               progress=False, tensorboard=False, run_dir=str(run)))  # test_export.py's learner
    text = (run / "report.html").read_text()
    assert "<html" in text.lower() and "CartPole-v1" in text and "data:image/png;base64," in text
