"""Command-line pieces shared by the package's CLIs (``python -m pipeline.phantom``, ``python -m pipeline.qc``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def field_assignment(text: str) -> tuple[str, str, int | float]:
    """``(name, field, value)`` of one ``NAME.FIELD=VALUE`` argument (argparse ``type``), the value a number (an int
    when written as one): ``--protocol CONTRAST.FIELD=VALUE`` and ``--tissue-scale COMPARTMENT.PARAMETER=FACTOR``;
    whoever takes the arguments checks the names."""
    target, equals, value = text.partition("=")
    contrast, dot, field = target.partition(".")
    if not (equals and dot and contrast and field and value):
        raise argparse.ArgumentTypeError(
            f"expected NAME.FIELD=VALUE (e.g. tse.te=120 or white_matter.t2_ms=1.2), got {text!r}"
        )
    try:
        number = int(value) if value.strip().lstrip("+-").isdigit() else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the value of {text!r} is not a number") from None
    return contrast.strip(), field.strip(), number


def overrides_of(arguments: Sequence[tuple[str, str, int | float]]) -> dict[str, dict[str, int | float]]:
    """``{name: {field: value}}`` of parsed :func:`field_assignment` arguments (a field given twice: the last counts)."""
    overrides: dict[str, dict[str, int | float]] = {}
    for contrast, field, value in arguments:
        overrides.setdefault(contrast, {})[field] = value
    return overrides
