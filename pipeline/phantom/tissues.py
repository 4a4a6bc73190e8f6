"""Tissue property table of the phantom: relaxation times and proton density at 3 T.

Every compartment of :data:`COMPARTMENTS` has nominal T1, T2 (ms) and proton density (PD, fraction of
pure water), how much they vary between subjects and smoothly within a subject, and a source.
White matter, cortical grey matter and CSF are the values of ``tests/physics_reference.json``
(``tissues_3T``); deep grey matter and white-matter lesions are mid-range 3 T values.

Tissues vary by a few % between subjects and smoothly within a subject. CSF, being free water, varies
ten times less: the phantom's FLAIR nulls nominal CSF, and with its long TE (weak white-matter signal)
a 1 % CSF T1 change already gives CSF a quarter of the white-matter intensity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TissueProperties:
    """Nominal 3 T properties of one tissue compartment.

    Attributes:
        t1_ms: longitudinal relaxation time T1 in ms.
        t2_ms: transverse relaxation time T2 in ms.
        pd: proton density as a fraction of pure water (CSF = 1).
        subject_cv: coefficient of variation of the per-subject factor on each of T1, T2 and PD
            (log-normal).
        texture_cv: coefficient of variation of the smooth, spatially varying texture inside the tissue
            (one log-normal factor on T1, T2 and PD together).
        source: where the nominal values come from.
    """

    t1_ms: float
    t2_ms: float
    pd: float
    subject_cv: float
    texture_cv: float
    source: str


TISSUES_3T: dict[str, TissueProperties] = {
    "white_matter": TissueProperties(
        t1_ms=832.0,
        t2_ms=79.2,
        pd=0.69,
        subject_cv=0.03,
        texture_cv=0.03,
        source="Wansapura et al. 1999, JMRI 9:531 (T1, T2)",
    ),
    "cortical_grey_matter": TissueProperties(
        t1_ms=1331.0,
        t2_ms=110.0,
        pd=0.82,
        subject_cv=0.03,
        texture_cv=0.03,
        source="Wansapura et al. 1999, JMRI 9:531 (T1, T2)",
    ),
    "deep_grey_matter": TissueProperties(
        t1_ms=1200.0,
        t2_ms=72.0,
        pd=0.80,
        subject_cv=0.03,
        texture_cv=0.03,
        source="mid-range of 3 T reports for putamen / thalamus / caudate (T2 shortened by iron)",
    ),
    "csf": TissueProperties(
        t1_ms=4000.0,
        t2_ms=2000.0,
        pd=1.0,
        subject_cv=0.003,
        texture_cv=0.002,
        source="Lu et al. 2005 (T1 3800-4300 ms); T2 reports 500-2000 ms",
    ),
    "lesion": TissueProperties(
        t1_ms=1450.0,
        t2_ms=160.0,
        pd=0.80,
        subject_cv=0.08,
        texture_cv=0.05,
        source="mid-range of 3 T reports for white-matter lesions (T1 1200-1700 ms, T2 120-200 ms)",
    ),
}
"""Nominal properties of every compartment, keyed by compartment name."""

COMPARTMENTS: tuple[str, ...] = tuple(TISSUES_3T)
"""Compartment order of every per-compartment array: the four anatomical classes, then lesions."""

TISSUE_PARAMETERS: tuple[str, ...] = ("t1_ms", "t2_ms", "pd")
"""The scalable properties of a compartment, in the column order of every (K, 3) tissue array."""

TissueScales = tuple[tuple[str, tuple[tuple[str, float], ...]], ...]
"""Normalised, hashable tissue scales: ``((compartment, ((parameter, factor), ...)), ...)`` in the order of
:data:`COMPARTMENTS` and :data:`TISSUE_PARAMETERS`."""


def tissue_scales(scales: Mapping[str, Mapping[str, float]] | TissueScales | None = None) -> TissueScales:
    """Validated, hashable form of factors on the nominal tissue values of :data:`TISSUES_3T`.

    A study with tissue scales is the same study (anatomy, per-subject draws, texture, noise, receive gain, protocols)
    with the compartments' nominal T1, T2 or PD multiplied: the phantom's way to re-simulate a brain whose tissue
    changed (e.g. ``{"white_matter": {"t2_ms": 1.2}}``: white matter with a 20 % longer T2).

    Args:
        scales: ``{compartment: {parameter: factor}}`` with compartments of :data:`COMPARTMENTS` and parameters of
            :data:`TISSUE_PARAMETERS` (numbers or their strings); an already normalised :data:`TissueScales`;
            ``None``: none.

    Returns:
        the :data:`TissueScales` (factors of 1 and compartments without factors dropped; ``()`` without scales).

    Raises:
        ValueError: an unknown compartment or parameter, or a factor that is not a finite number > 0.
    """
    requested = {name: dict(factors) for name, factors in dict(scales or {}).items()}
    unknown = sorted(set(requested) - set(COMPARTMENTS))
    if unknown:
        raise ValueError(f"tissue scales for unknown compartment(s) {unknown}: expected some of {list(COMPARTMENTS)}")
    normalised = []
    for name in (name for name in COMPARTMENTS if name in requested):
        unknown = sorted(set(requested[name]) - set(TISSUE_PARAMETERS))
        if unknown:
            raise ValueError(
                f"tissue scales for unknown {name} parameter(s) {unknown}: expected some of {list(TISSUE_PARAMETERS)}"
            )
        factors = []
        for parameter in (p for p in TISSUE_PARAMETERS if p in requested[name]):
            value = requested[name][parameter]
            try:
                factor = float(value)
            except (TypeError, ValueError):
                factor = math.nan
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"tissue scale {name}.{parameter} must be a finite number > 0, got {value!r}")
            if factor != 1.0:
                factors.append((parameter, factor))
        if factors:
            normalised.append((name, tuple(factors)))
    return tuple(normalised)


def scales_as_dict(scales: TissueScales) -> dict[str, dict[str, float]]:
    """JSON-friendly ``{compartment: {parameter: factor}}`` of :data:`TissueScales` (undoes :func:`tissue_scales`)."""
    return {name: dict(factors) for name, factors in scales}


def scale_array(scales: TissueScales) -> np.ndarray:
    """(K, 3) float64 factors on the nominal T1, T2, PD of :data:`COMPARTMENTS` (1 where not scaled)."""
    array = np.ones((len(COMPARTMENTS), len(TISSUE_PARAMETERS)))
    for name, factors in scales:
        for parameter, factor in factors:
            array[COMPARTMENTS.index(name), TISSUE_PARAMETERS.index(parameter)] = factor
    return array
