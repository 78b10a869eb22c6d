"""Signals: SIGINT / SIGTERM end a run cleanly (the current iteration finishes, a final checkpoint is written), and
the processes that step environments leave that decision to the trainer."""

from __future__ import annotations

import os
import signal
import threading


def on_main_thread() -> bool:
    """Signal handlers can only be installed from the main thread (``ppolab compare``'s Ray tasks train elsewhere)."""
    return threading.current_thread() is threading.main_thread()


class StopSignal:
    """SIGINT/SIGTERM: the first asks for a final checkpoint and a clean exit (``requested`` names the signal); a
    second one of either exits at once (checkpoint writes are atomic), also out of an env step that hangs."""

    def __init__(self):
        self.requested: str | None = None
        self._old = {}

    def __enter__(self) -> StopSignal:
        if on_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        if self.requested is None:  # os.write: safe inside a signal handler, unlike print
            os.write(2, f"\n{signal.Signals(signum).name}: finishing the current iteration and writing a checkpoint "
                        f"(Ctrl-C again to quit at once)\n".encode())
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class WorkersIgnoreStopSignals:
    """Processes started inside (Gymnasium's async vector env, Ray's) ignore SIGINT/SIGTERM, inherited as SIG_IGN:
    Ctrl-C reaches the whole process group, and only the trainer decides to stop (final checkpoint), then closes
    its workers. Without this, the workers die first and the final checkpoint cannot be written."""

    def __enter__(self):
        self.old = {}
        if on_main_thread():
            self.old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


class Deadline:
    """SIGALRM after ``seconds`` (0: never) raises ``TimeoutError(message)`` in the code running inside (the main
    thread only; a call stuck in C code that never returns to Python cannot be interrupted this way)."""

    def __init__(self, seconds: float, message: str):
        self.seconds, self.message = seconds, message

    def __enter__(self):
        self.on = self.seconds > 0 and on_main_thread()
        if self.on:
            self.old = signal.signal(signal.SIGALRM, self._expired)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def _expired(self, signum, frame):
        raise TimeoutError(self.message)

    def __exit__(self, *exc):
        if self.on:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
