"""Writing results so that nothing a user made is lost: every file goes to a temporary name, then is renamed."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

__all__ = ["atomic_write", "write_json", "write_csv", "save_torch", "json_safe"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path``.

    A crash or Ctrl-C in between leaves the old file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode an ordinary open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_text(path: str | Path, text: str) -> Path:
    def writer(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, writer)


#: how a JSON file spells the floats JSON cannot hold; ``null`` is kept for "not computed"
NON_FINITE = {math.inf: "inf", -math.inf: "-inf"}


def json_safe(value):
    """Make ``value`` JSON-ready, recursively: tensors become lists, ``±inf`` the strings ``"inf"``/``"-inf"``
    (an infinite divergence is a result, distinct from ``null`` = not computed) and NaN ``"nan"``.

    Example::

        >>> json_safe({"kl": float("inf"), "elbo": None})
        {'kl': 'inf', 'elbo': None}
    """
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as indented JSON, atomically; ±inf and NaN become ``"inf"``, ``"-inf"``, ``"nan"``."""
    return _write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write dict rows as CSV (columns: union of keys in first-seen order), atomically."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return _write_text(path, buffer.getvalue())


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
