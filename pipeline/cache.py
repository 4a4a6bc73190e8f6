"""The on-disk cache of results that depend on nothing but their key: ``$QMAP_HYBRID_CACHE`` (default
``~/.cache/qmap-hybrid``), one folder per kind of result.

Three kinds use it: the pre-run validation (:mod:`pipeline.data.validation`, keyed by the state of an entry's files),
the template fit behind the estimated brain mask (:mod:`pipeline.data.brain_mask`, keyed by the T1w's voxels and
geometry), so that a subject is validated and fitted once, not once per command, and the EPG echo-amplitude tables of
the ``tse_epg`` signal model (:mod:`pipeline.physics`, keyed by the protocol), which take seconds to fill and are the
same for every process. Entries are JSON (:func:`cached_json`) or ``.npy`` files (:func:`cached_array`) written to a
temporary name and renamed, so concurrent processes (sharded runs, ``--jobs 2``) never read half of one; an entry
that cannot be read is computed again and replaced, a cache folder that cannot be written is skipped.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.files import write_atomically

__all__ = ["CACHE_ENV", "cache_dir", "cached_array", "cached_json"]

CACHE_ENV = "QMAP_HYBRID_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/qmap-hybrid``)."""

T = TypeVar("T")


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached result: ``$QMAP_HYBRID_CACHE/<kind>``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qmap-hybrid") / kind


def cached_json(path: Path, compute: Callable[[], T], encode: Callable[[T], Any], decode: Callable[[Any], T]) -> T:
    """``decode`` of the JSON at ``path`` if it can be read and decoded, else ``compute()``, stored there as ``encode``
    of it (atomically; skipped if the folder cannot be written).

    Args:
        path: the entry's file (its name is the key, e.g. a hash of the inputs).
        compute: makes the value when the entry is missing or unreadable.
        encode, decode: value → JSON-serialisable object and back; ``decode`` may raise ``KeyError``, ``TypeError`` or
            ``ValueError`` on an entry of another layout, which is then recomputed.
    """
    try:
        return decode(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return _store(path, compute(), lambda value: json.dumps(encode(value)))


def cached_array(path: Path, compute: Callable[[], np.ndarray], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The array in the ``.npy`` file at ``path`` if it can be read (and has ``shape``, when given), else ``compute()``,
    stored there (atomically; skipped if the folder cannot be written)."""
    try:
        array = np.load(path, allow_pickle=False)
        if shape is None or array.shape == tuple(shape):
            return array
    except (OSError, ValueError, EOFError):
        pass
    return _store(path, np.asarray(compute()), _npy_bytes)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _store(path: Path, value: T, serialise: Callable[[T], bytes | str]) -> T:
    """``value``, written to ``path`` as ``serialise(value)`` where the folder can be written."""
    try:
        write_atomically(path, serialise(value))
    except OSError:
        pass
    return value
