"""Protocol messages as flat (arrays, values) maps, the form both transports carry.

A message is a nested dict of numpy arrays, bytes, numbers, strings, lists of numbers and dicts (keys: str or int).
`flatten` turns it into ``{path: array}`` and ``{path: value}`` with "/"-joined paths (int keys as digits; a path
ending in "/" marks a dict, so empty dicts survive); `unflatten` inverts it. Flower carries the two maps as an
``ArrayRecord`` and a ``ConfigRecord``; the direct transport as array frames and one JSON header.
"""

from __future__ import annotations

import numpy as np

SEP = "/"


def flatten(message: dict) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(arrays by path, other values by path) of a nested message dict."""
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, object] = {}
    _flatten(message, "", arrays, values)
    return arrays, values


def _flatten(message: dict, prefix: str, arrays: dict, values: dict) -> None:
    for key, value in message.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            values[path + SEP] = True
            _flatten(value, path + SEP, arrays, values)
        elif isinstance(value, np.ndarray):
            arrays[path] = np.ascontiguousarray(value)
        elif isinstance(value, list | tuple):
            values[path] = [v.item() if isinstance(v, np.generic) else v for v in value]
        else:
            values[path] = value.item() if isinstance(value, np.generic) else value


def _key(part: str) -> int | str:
    return int(part) if part.isdigit() else part


def _insert(target: dict, path: str, value) -> None:
    parts = path.split(SEP)
    for part in parts[:-1]:
        target = target.setdefault(_key(part), {})
    if parts[-1]:
        target[_key(parts[-1])] = value


def unflatten(arrays: dict[str, np.ndarray], values: dict[str, object]) -> dict:
    """The nested message back from `flatten`'s two maps."""
    message: dict = {}
    for path, value in values.items():
        _insert(message, path, value)
    for path, array in arrays.items():
        _insert(message, path, array)
    return message


def payload_bytes(message: dict) -> int:
    """Bytes a message's arrays and byte strings take on the wire (the figure the benches report)."""
    total = 0
    for value in message.values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, bytes | bytearray):
            total += len(value)
        elif isinstance(value, dict):
            total += payload_bytes(value)
        elif isinstance(value, list | tuple):
            total += 8 * len(value)
    return total
