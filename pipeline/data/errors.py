"""Errors raised for bad input data, and the helper that names the file an error is about.

Every message names the subject and the offending file, so a user can fix the data without reading code.
"""

from __future__ import annotations

from collections.abc import Mapping


class InvalidInputError(ValueError):
    """An input file exists but its content cannot be used (corrupt, wrong shape, NaN, units, geometry)."""


class MisregistrationError(InvalidInputError):
    """An image is not co-registered with the T1w (no world-space overlap or residual shift above threshold)."""


class CoregistrationWarning(UserWarning):
    """Issued instead of :class:`MisregistrationError` when the co-registration check runs with ``on_failure="warn"``."""


class MissingFilesError(FileNotFoundError):
    """Files listed in a manifest (or a data dict) do not exist; ``missing`` lists every one of them."""

    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing


def describe_item(data: Mapping, key: str) -> str:
    """``"<subject>: <key> file '<filename>'"`` for error messages about ``data[key]``.

    The file name is the MetaTensor's ``filename_or_obj`` once loaded, else the path string itself.
    """
    value = data[key]
    meta = getattr(value, "meta", {})
    filename = meta.get("filename_or_obj", value if isinstance(value, str) else "<in memory>")
    return f"{data.get('subject', '<unknown subject>')}: {key} file '{filename}'"
