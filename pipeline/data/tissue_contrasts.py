"""Swapped or unusual weighted images, from the medians of their tissues: what the study validation checks of the T1w,
T2w and FLAIR contrasts (:mod:`pipeline.data.validation`).

The medians of each image over white matter, grey matter and CSF (:func:`tissue_medians`) are taken in the regions
of nilearn's MNI152 tissue templates warped onto the T1w (:func:`template_tissue_regions`,
:class:`pipeline.data.brain_mask.TemplateFit`, independent of the images' intensities). Pairs of images are compared as
:data:`SWAP_EVIDENCE` says (:func:`contrast_problems`: what disease does not invert): a pair clearly the other way
round is a swap. An image whose white/grey order is not a healthy brain's (:data:`EXPECTED_CONTRAST_ORDER`;
FLAIR-bright white matter, a FLAIR with little grey/white contrast) is unusual but valid (:func:`unusual_contrasts`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from pipeline.data.manifest import IMAGE_KEYS

EXPECTED_CONTRAST_ORDER = {
    "t1w": ("csf", "grey_matter", "white_matter"),
    "t2w": ("white_matter", "grey_matter", "csf"),
    "flair": ("csf", "white_matter", "grey_matter"),
}
"""Tissues in ascending median intensity of each weighted image at 3 T: MPRAGE (T1-weighted), TSE (T2-weighted) and
FLAIR (T2-weighted with CSF nulled). tests/test_validation.py derives the same orders from :mod:`pipeline.physics`."""
TISSUE_PROBABILITY = 0.7
"""A T1w voxel counts as a tissue's when its warped template probability is above this."""


def tissue_medians(
    t1w: sitk.Image, images: Mapping[str, sitk.Image], regions: Mapping[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """``{key: {tissue: median}}`` of each image, resampled (linearly) onto the T1w grid, over boolean ``regions``."""
    medians = {}
    for key, image in images.items():
        on_grid = image if key == IMAGE_KEYS[0] else sitk.Resample(image, t1w, sitk.Transform(), sitk.sitkLinear)
        array = sitk.GetArrayFromImage(on_grid).transpose(2, 1, 0)  # (X, Y, Z), as the regions
        medians[key] = {tissue: float(np.median(array[region])) for tissue, region in regions.items()}
    return medians


def _white_above_grey(order: Sequence[str]) -> bool:
    """Whether white matter is brighter than grey matter in a tissue ``order`` (ascending)."""
    return order.index("white_matter") > order.index("grey_matter")


def _ratio(medians: Mapping[str, Mapping[str, float]], key: str, tissue: str) -> float:
    """A tissue's median over grey matter's in image ``key``: independent of the image's gain."""
    return medians[key][tissue] / medians[key]["grey_matter"]


SWAP_EVIDENCE = (
    (("t1w", "t2w"), "csf", "CSF is dark in a T1w and bright in a T2w"),
    (("flair", "t2w"), "csf", "CSF is nulled in a FLAIR and bright in a T2w"),
    (("flair", "t1w"), "csf", "CSF is nulled in a FLAIR, grey in a T1w"),
    (("t2w", "t1w"), "white_matter", "white matter is darker than grey matter in a T2w, brighter in a T1w"),
    (
        ("flair", "t1w"),
        "white_matter",
        "white matter is brighter than grey matter in a T1w, darker or alike in a FLAIR",
    ),
)
"""Pairs of images ``(lower, higher)`` and the tissue whose median over grey matter's must be lower in the first: what
white-matter disease does not invert (it moves white matter by tens of %, not CSF, and not a T1w's white matter
below a FLAIR's), so a pair clearly the other way round (:data:`SWAP_MARGIN`) is a swap."""
SWAP_MARGIN = 1.2
"""How much higher than the second image's ratio the first's must be to break a rule of :data:`SWAP_EVIDENCE`. A swap
inverts the ratios by a factor of 2 or more (CSF over grey matter: about 0.4 in a T1w, 2 in a T2w); a partial field
of view whose template CSF region holds mostly grey matter brings both near 1, where noise or an unregistered image
can order them either way, and so can white-matter disease for the FLAIR/T1w pair."""


def _rules_kept(medians: Mapping[str, Mapping[str, float]], files: Mapping[str, str]) -> list[bool]:
    """Whether each rule of :data:`SWAP_EVIDENCE` holds (is not clearly broken, :data:`SWAP_MARGIN`) when image
    ``files[role]`` is taken as ``role`` (rules whose images are not all present are left out)."""
    return [
        _ratio(medians, files[lower], tissue) < SWAP_MARGIN * _ratio(medians, files[higher], tissue)
        for (lower, higher), tissue, _ in SWAP_EVIDENCE
        if {lower, higher} <= files.keys()
    ]


def contrast_problems(medians: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """``{key: problem}`` for the weighted images that look swapped, from :data:`SWAP_EVIDENCE` (pairs of images).

    Each rule compares two images over the same regions, so it holds in template regions of any quality (the priors'
    CSF region of a subject or a partial field of view is often mostly grey matter) and in disease: white matter
    whose T1 or T2 is 20-30 % longer changes its contrast to grey matter in each image (FLAIR-bright white matter is
    what white-matter disease looks like), not the order of the pairs. Every assignment of the files to the contrasts
    is scored by the rules it keeps; when another assignment keeps more than the manifest's, the files it moves are
    named, with the contrast each looks like. When no assignment keeps every rule and the manifest's is among the
    best, the images whose rules fail are named (unusual contrasts, not a swap one can name).

    Args:
        medians: ``{key: {"white_matter", "grey_matter", "csf": median}}`` of the weighted images present.
    """
    keys = [key for key in EXPECTED_CONTRAST_ORDER if key in medians]
    manifest = dict(zip(keys, keys))
    kept = _rules_kept(medians, manifest)
    if all(kept):
        return {}
    assignments = [dict(zip(keys, order)) for order in itertools.permutations(keys)]
    best = max(assignments, key=lambda files: (sum(_rules_kept(medians, files)), files == manifest))
    if best != manifest:
        moved = [best[role] for role in keys if best[role] != role]
        return {
            best[role]: f"its tissue contrasts are those of a {role} ({_pair_ratios(medians)}): are the "
            f"{' and '.join(sorted(moved))} swapped?"
            for role in keys
            if best[role] != role
        }
    failed = [rule for rule, holds in zip(SWAP_EVIDENCE, kept) if not holds]
    return {
        key: f"tissue contrasts that no order of the files explains ({_pair_ratios(medians)}; expected {reason})"
        for (lower, higher), _, reason in failed
        for key in (lower, higher)
    }


def _pair_ratios(medians: Mapping[str, Mapping[str, float]]) -> str:
    """The medians over grey matter's that the rules compare, e.g. ``csf/GM t1w 0.96 t2w 1.06, ...``."""
    return ", ".join(
        f"{tissue}/GM {lower} {_ratio(medians, lower, tissue):.2f} {higher} {_ratio(medians, higher, tissue):.2f}"
        for (lower, higher), tissue, _ in SWAP_EVIDENCE
        if {lower, higher} <= medians.keys()
    )


def unusual_contrasts(medians: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """``{key: warning}`` for each image whose white matter / grey matter order is not a healthy brain's at 3 T
    (:data:`EXPECTED_CONTRAST_ORDER`): valid (white-matter disease, a FLAIR with little grey/white contrast), worth a
    look, not a refusal; swaps are :func:`contrast_problems`'."""
    warnings = {}
    for key, by_tissue in medians.items():
        expected = _white_above_grey(EXPECTED_CONTRAST_ORDER[key])
        if (by_tissue["white_matter"] > by_tissue["grey_matter"]) != expected:
            warnings[key] = (
                f"white matter {by_tissue['white_matter']:.3g} is {'darker' if expected else 'brighter'} than grey "
                f"matter {by_tissue['grey_matter']:.3g} (a healthy {key} at 3 T: "
                f"{' < '.join(EXPECTED_CONTRAST_ORDER[key])}); no swap with the other images: as in white-matter "
                "disease, or an image with little grey/white contrast"
            )
    return warnings


def template_tissue_regions(t1w: sitk.Image) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """WM/GM/CSF regions (boolean (X, Y, Z) arrays) and the brain mask from the MNI152 templates warped to the T1w."""
    from pipeline.data.brain_mask import TemplateFit  # imported here: loads nilearn's templates

    fit = TemplateFit(t1w)
    probabilities = fit.tissue_probabilities()
    brain = fit.brain_probability() >= 0.5  # the template's alone: the T1w's intensities are what is checked
    regions = {
        tissue: (probabilities[tissue] > TISSUE_PROBABILITY) & brain for tissue in EXPECTED_CONTRAST_ORDER["t1w"]
    }
    return regions, brain
