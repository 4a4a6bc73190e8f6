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

from dataclasses import dataclass


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
