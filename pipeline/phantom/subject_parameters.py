"""Everything random about one phantom subject (:class:`SubjectParameters`), drawn once from its seed.

The subject's tissue factors, its smooth random fields (deformation, receive bias, texture, lesion outlines; unit
variance, scaled by the amplitudes below where they are used), its lesions, and, with a realistic acquisition, its
anatomical variety and B1+ field. :mod:`pipeline.phantom.simulate` turns them into volumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.phantom.acquisition import TRANSMIT_SPACING_MM, TRANSMIT_STREAM, Acquisition
from pipeline.phantom.anatomy import TemplateAnatomy
from pipeline.phantom.fields import SmoothRandomField
from pipeline.phantom.lesions import LESION_SHAPE_SPACING_MM, Lesion, draw_lesions
from pipeline.phantom.tissues import COMPARTMENTS, TISSUE_PARAMETERS, TISSUES_3T, TissueScales, scale_array
from pipeline.phantom.variety import VARIETY_STREAM, AnatomicalVariety

DEFORMATION_STD_MM = 1.5
"""Standard deviation of each displacement component (displacements are typically 2-3 mm, at most ~7 mm)."""
DEFORMATION_SPACING_MM = 32.0
"""Knot spacing of the displacement field (its correlation length)."""
BIAS_LOG_STD = 0.05
"""Standard deviation of the log receive-bias field (intensity varies by ~15-25 % over a brain)."""
BIAS_SPACING_MM = 64.0
"""Knot spacing of the receive-bias field."""
TEXTURE_SPACING_MM = 8.0
"""Knot spacing of the intra-tissue texture fields."""


@dataclass(frozen=True)
class SubjectParameters:
    """Everything random about one subject.

    Attributes:
        seed, subject_index: the study seed and the subject's 0-based index (they also seed the noise).
        tissue_factors: (K, 3) per-subject factors on the nominal T1, T2, PD of :data:`COMPARTMENTS`.
        deformation: 3 fields (x, y, z displacement, unit variance).
        bias: 1 field (log receive bias, unit variance).
        texture: K fields (texture of each compartment, unit variance).
        lesion_shape: 1 field (irregularity of lesion outlines, unit variance).
        lesions: white-matter lesions (empty without lesions).
        variety: pose, scaling, atrophy, ... (:mod:`pipeline.phantom.variety`), or None.
        transmit: 1 field (relative B1+ deviation, unit variance), or None.
        scales: the study's factors on the nominal tissue values (:func:`~pipeline.phantom.tissues.tissue_scales`);
            they draw nothing, so a scaled subject is the same subject with other tissue values.
    """

    seed: int
    subject_index: int
    tissue_factors: np.ndarray
    deformation: SmoothRandomField
    bias: SmoothRandomField
    texture: SmoothRandomField
    lesion_shape: SmoothRandomField
    lesions: list[Lesion]
    variety: AnatomicalVariety | None = None
    transmit: SmoothRandomField | None = None
    scales: TissueScales = ()

    @classmethod
    def draw(
        cls,
        seed: int,
        subject_index: int,
        anatomy: TemplateAnatomy,
        lesions: bool = True,
        acquisition: Acquisition = Acquisition(),
        held_out: bool = False,
        scales: TissueScales = (),
    ) -> SubjectParameters:
        """Draw a subject from ``numpy.random.default_rng((seed, subject_index))``.

        The acquisition's anatomical variety and transmit field draw from streams of their own
        (``(seed, subject_index, stream)``), so the draws of the ideal acquisition do not change. ``held_out``:
        a validation or test subject (variety images it from the mirrored template). ``scales``: see the attribute.
        """
        rng = np.random.default_rng((seed, subject_index))
        subject_cv = np.array([[TISSUES_3T[name].subject_cv] for name in COMPARTMENTS])
        tissue_factors = np.exp(subject_cv * rng.standard_normal((len(COMPARTMENTS), len(TISSUE_PARAMETERS))))
        fields = {
            "deformation": SmoothRandomField.draw(rng, DEFORMATION_SPACING_MM, 3),
            "bias": SmoothRandomField.draw(rng, BIAS_SPACING_MM, 1),
            "texture": SmoothRandomField.draw(rng, TEXTURE_SPACING_MM, len(COMPARTMENTS)),
            "lesion_shape": SmoothRandomField.draw(rng, LESION_SHAPE_SPACING_MM, 1),
        }
        drawn_lesions = draw_lesions(rng, anatomy) if lesions else []
        variety = None
        if acquisition.anatomical_variety:
            variety = AnatomicalVariety.draw(seed, subject_index, held_out)
            if lesions:
                extra_rng = np.random.default_rng((seed, subject_index, VARIETY_STREAM, 1))
                drawn_lesions += draw_lesions(extra_rng, anatomy, variety.extra_lesion_count)
        transmit = None
        if acquisition.transmit_field:
            transmit_rng = np.random.default_rng((seed, subject_index, TRANSMIT_STREAM))
            transmit = SmoothRandomField.draw(transmit_rng, TRANSMIT_SPACING_MM, 1)
        return cls(
            seed,
            subject_index,
            tissue_factors,
            **fields,
            lesions=drawn_lesions,
            variety=variety,
            transmit=transmit,
            scales=scales,
        )

    def tissue_values(self) -> np.ndarray:
        """(K, 3) the subject's T1 (ms), T2 (ms), PD of each compartment before texture: nominal x scales x the
        subject's factors."""
        nominal = np.array([[getattr(TISSUES_3T[name], p) for p in TISSUE_PARAMETERS] for name in COMPARTMENTS])
        return nominal * scale_array(self.scales) * self.tissue_factors
