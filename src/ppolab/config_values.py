"""Type checks of configuration values (from the CLI, a ``--config`` file or the Python API): ``coerce`` one value to
its field's type or raise a ``ConfigError`` whose message stays bounded whatever the value (a huge or deeply shared
structure from a user's file is never printed whole)."""

from __future__ import annotations

import numbers

_INT_TUPLES = ("hidden_sizes", "rnn_head_sizes")  # fields that are tuples of integers


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the value and what is allowed."""


def _short(v) -> str:
    """A bounded repr of a value from a user's file (never the whole of a huge or deeply shared structure)."""
    import reprlib

    r = reprlib.Repr()  # (keyword arguments only from Python 3.12)
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 4, 60, 60
    return r.repr(v)


class _BadValue(ConfigError):
    """A value of the wrong type; the message is bounded (``_short``) and built only when raised."""

    def __init__(self, key, v, default, label: str | None, sweepable: tuple[str, ...]):
        expected = ("a number or a list of numbers" if key in sweepable else "a list of integers"
                    if key in _INT_TUPLES else type(default).__name__ if default is not None else "a value or null")
        super().__init__(f"{label or f'config key {key!r}'} has value {_short(v)} of type {type(v).__name__}; "
                         f"expected {expected}")


def coerce(key, v, default, label: str | None, sweepable: tuple[str, ...], choices: tuple | None):
    """``v`` as the type of config field ``key`` (default ``default``), or a bounded ``ConfigError``."""
    bad = lambda: _BadValue(key, v, default, label, sweepable)  # built only when raised
    if key in sweepable:
        if isinstance(v, tuple):
            if not v or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in v):
                raise bad()
            return tuple(float(x) for x in v) if len(v) > 1 else float(v[0])
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise bad()
        return float(v)
    if key in _INT_TUPLES:
        if not isinstance(v, tuple) or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v):
            raise bad()
        return tuple(int(x) for x in v)
    if v is None:
        if default is None or key in ("vf_clip", "max_grad_norm", "target_kl", "preset", "run_dir"):
            return None
        raise bad()
    if isinstance(default, bool):
        if not isinstance(v, bool):
            raise bad()
        return v
    if isinstance(default, int):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise bad()
        return int(v)
    if isinstance(default, float) or key in ("vf_clip", "max_grad_norm", "target_kl"):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise bad()
        return float(v)
    if isinstance(default, str) or key in ("preset", "run_dir"):
        if not isinstance(v, str):
            raise bad()
        if choices and v not in choices:
            raise ConfigError(f"{label or f'config key {key!r}'} has value {_short(v)}; choose one of: "
                              f"{', '.join(choices)}")
        return v
    return v
