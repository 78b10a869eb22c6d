"""``--config FILE``: a YAML, TOML or JSON file of Config keys, read with bounds.

``load_config_file`` behaves as the CLI's loader always did (dashes or underscores in keys, an empty file is ``{}``,
one-line ``ConfigError`` messages naming the file), and refuses at once, before building anything large:

* anything but a regular file (a FIFO never blocks, a device is never read) and files over ``MAX_CONFIG_BYTES``;
* YAML anchors and aliases (a "billion laughs" bomb of a few hundred bytes would expand without bound when walked);
* nesting deeper than ``MAX_DEPTH`` and more than ``MAX_NODES`` values;
* keys that are not short scalars.

No message prints an unbounded value: values are shown through ``runlock.short_repr``. The values' types are checked
by ``config.from_dict``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ppolab.config import ConfigError
from ppolab.runlock import NotRegularFileError, cut, open_regular, short_repr

#: the largest config file read (a real one is well under 4 KiB)
MAX_CONFIG_BYTES = 2**20
#: the deepest nesting of mappings and lists (a Config value is at most a list inside the top-level mapping)
MAX_DEPTH = 8
#: the most values (scalars, lists, mappings) in one file
MAX_NODES = 20_000
#: the longest key
MAX_KEY_CHARS = 64
_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


def _read_text(path: str) -> str:
    """The file's text; a bounded read of a regular file (symlinks to one are followed)."""
    try:
        fd = open_regular(path, follow_symlinks=True)
    except (FileNotFoundError, NotRegularFileError, IsADirectoryError, NotADirectoryError):
        raise ConfigError(f"--config {path!r} does not exist or is not a file") from None
    except OSError as e:
        raise ConfigError(f"--config {path!r} cannot be read: {e.strerror}") from None
    with open(fd, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path!r} is larger than {MAX_CONFIG_BYTES // 1024} KiB; a config file holds a "
                          f"few option names and values")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path!r} is not UTF-8 text") from None


class _Refused(Exception):
    """A bound of this module was hit while parsing (kept apart from the parsers' own errors)."""


def _yaml_loader():
    """yaml.SafeLoader that refuses anchors and aliases and bounds depth and size while composing, i.e. before any
    value is constructed."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        _depth = _nodes = 0

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _Refused("YAML anchors and aliases (& and *) are not allowed; write every value out")
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise _Refused(f"it holds more than {MAX_NODES} values")
            if self._depth >= MAX_DEPTH:
                raise _Refused(f"it is nested deeper than {MAX_DEPTH} levels")
            self._depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return BoundedLoader


def _check_tree(value, depth: int = 1, count: list | None = None) -> None:
    """The same bounds on an already parsed value (TOML)."""
    count = count if count is not None else [0]
    count[0] += 1
    if count[0] > MAX_NODES:
        raise _Refused(f"it holds more than {MAX_NODES} values")
    if depth > MAX_DEPTH:
        raise _Refused(f"it is nested deeper than {MAX_DEPTH} levels")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for v in children:
        _check_tree(v, depth + 1, count)


def _parse(path: str, suffix: str, text: str):
    if suffix == ".toml":
        import tomllib

        data = tomllib.loads(text)
        _check_tree(data)
        return data
    loader = _yaml_loader()(text)  # YAML, and JSON through YAML (as the CLI always read it)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _key_ok(k) -> bool:
    """A short scalar (YAML may give an int, float or bool key, which ``str`` turns into an unknown name)."""
    if isinstance(k, bool | float):
        return True
    if isinstance(k, int):
        return abs(k) < 10**MAX_KEY_CHARS
    return isinstance(k, str) and len(k) <= MAX_KEY_CHARS


def load_config_file(path: str | os.PathLike) -> dict:
    """YAML, TOML or JSON file of Config keys (dashes or underscores) -> {key_with_underscores: value}.

    Raises ``ConfigError`` (one line, naming the file) for a missing or non-regular file, an unknown suffix, a file
    over ``MAX_CONFIG_BYTES``, a parse error, YAML anchors/aliases, nesting deeper than ``MAX_DEPTH``, more than
    ``MAX_NODES`` values, a top level that is not a mapping, or a key that is not a short scalar."""
    path = os.fspath(path)
    text = _read_text(path)
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ConfigError(f"--config {path!r}: unknown file type {suffix!r}; use .yaml, .yml, .toml or .json")
    try:
        data = _parse(path, suffix, text)
    except _Refused as e:
        raise ConfigError(f"--config {path!r} is refused: {e}") from None
    except RecursionError:
        raise ConfigError(f"--config {path!r} is refused: it is nested deeper than {MAX_DEPTH} levels") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"--config {path!r} cannot be parsed: {cut(first, 200)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path!r} must hold a mapping of option names to values")
    out = {}
    for k, v in data.items():
        if not _key_ok(k):
            raise ConfigError(f"--config {path!r}: key {short_repr(k, 80)} is not a config option name")
        out[str(k).replace("-", "_")] = v
    return out
