"""Writing files so that an interrupted run never leaves a truncated one: a temporary file in the same folder, then
an atomic rename (``os.replace``) onto the target. Used for every JSON, HTML and gzip file the package writes
(NIfTI maps go through nibabel in :func:`pipeline.engine.SaveMapsd` the same way)."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_atomically(path: str | os.PathLike, content: bytes | str) -> pathlib.Path:
    """Write ``content`` (text is UTF-8 encoded) to ``path`` atomically, creating its folder; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would make results unreadable to other users
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
