"""Writing files so that an interrupted run never leaves a truncated one: a temporary file in the same folder, then
an atomic rename (``os.replace``) onto the target. Used for every file the package writes: JSON, HTML and gzip
(:func:`write_atomically`), NIfTI maps (:func:`pipeline.engine.SaveMapsd`), transforms and cache entries
(:func:`atomic_target`)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[pathlib.Path]:
    """A temporary path beside ``path`` (its folder is created) for the block to write; renamed onto ``path`` with mode
    0644 when the block ends without an error, removed otherwise.

    Args:
        path: the file to (re)place.
        suffix: the temporary file's extension, for writers that choose a format by it (``.nii.gz``, ``.tfm``).
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield pathlib.Path(temporary)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make results unreadable to other users
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_atomically(path: str | os.PathLike, content: bytes | str) -> pathlib.Path:
    """Write ``content`` (text is UTF-8 encoded) to ``path`` atomically, creating its folder; returns the path."""
    with atomic_target(path) as temporary:
        temporary.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return pathlib.Path(path)
