"""The response benchmark: do the maps follow a tissue whose T1, T2 or PD changed?

One subject simulated again with one tissue's value scaled (:func:`pipeline.phantom.simulate_tissue_changes`: same
anatomy, draws, noise and receive gain) gives a pair of inputs whose only difference is that tissue. A quantitative
map should move by the true change; a network that segments tissues and paints the values it was trained on does not.

Per case and map, over the voxels of the changed tissue (:func:`tissue_voxels`: the tissue's fraction >= ``purity``):

* **change** (%): the mean map's relative change from the unchanged case, predicted and true;
* **slope**: predicted change / true change of the map whose quantity changed (1: the map measures, 0: it paints);
* **cross-talk**: the predicted relative change of a map whose quantity did not change, over the case's true
  relative change (0: none);
* **MPE** (%): mean |predicted - true| / true in the changed case.

Means over many voxels (thousands for a whole tissue) make the slope insensitive to noise; each map is compared with
the same model's map of the unchanged subject, so a model's bias cancels and only its response remains.
:func:`response_slopes` summarises the factors of one tissue and parameter by the least-squares slope through the
origin of predicted against true relative change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.phantom.tissues import COMPARTMENTS, TISSUE_PARAMETERS

TISSUE_GROUPS: dict[str, tuple[str, ...]] = {
    "white_matter": ("white_matter",),
    "cortical_grey_matter": ("cortical_grey_matter",),
    "deep_grey_matter": ("deep_grey_matter",),
    "all_but_csf": ("white_matter", "cortical_grey_matter", "deep_grey_matter", "lesion"),
}
"""The tissues a case changes together, by the name of the group (``all_but_csf``: every brain tissue but CSF, the
free water whose values disease barely moves)."""
RESPONSE_FACTORS: tuple[float, ...] = (0.7, 0.85, 1.15, 1.3)
"""Factors on a tissue's nominal value."""
LESION_CASES: dict[str, dict[str, float]] = {
    "lesion_long": {"t1_ms": 1.5, "t2_ms": 1.6},
    "lesion_short": {"t1_ms": 0.7, "t2_ms": 0.6},
}
"""Lesions outside the training range (the phantom's lesions: T1 1450 ms, T2 160 ms, 8 % between subjects): T1 2175
and T2 256 ms, T1 1015 and T2 96 ms."""
MAP_OF_PARAMETER = {"t1_ms": "t1_map", "t2_ms": "t2_map", "pd": "m0_map"}
"""The map that shows each tissue parameter."""
PURITY = 0.95
"""A voxel is a tissue's when its fraction of the tissue (of the group's tissues together) is at least this."""
LESION_PURITY = 0.8
"""Lesions are small (2-8 mm): a lower purity keeps enough of their voxels."""
REFERENCE_CASE = "reference"


@dataclass(frozen=True)
class ResponseCase:
    """One re-simulation of the subject.

    Attributes:
        name: the case's subject name in the case study (``white_matter-t2_ms-x1.15``, ``lesion_long``, ``reference``).
        group: the changed tissues (a key of :data:`TISSUE_GROUPS`, ``lesion``, or ``""`` for the reference).
        factors: ``{parameter: factor}`` applied to every tissue of the group.
    """

    name: str
    group: str
    factors: tuple[tuple[str, float], ...]

    @property
    def tissue_scales(self) -> dict[str, dict[str, float]]:
        """The case's :func:`~pipeline.phantom.tissues.tissue_scales` mapping."""
        tissues = ("lesion",) if self.group == "lesion" else TISSUE_GROUPS.get(self.group, ())
        return {tissue: dict(self.factors) for tissue in tissues}


def response_cases(
    groups: Sequence[str] = tuple(TISSUE_GROUPS),
    parameters: Sequence[str] = TISSUE_PARAMETERS,
    factors: Sequence[float] = RESPONSE_FACTORS,
    lesions: bool = True,
) -> list[ResponseCase]:
    """The reference case, then one case per group, parameter and factor, then the lesion cases.

    Raises:
        ValueError: an unknown group or parameter, or a factor that is not > 0 and != 1.
    """
    unknown = sorted(set(groups) - set(TISSUE_GROUPS)) + sorted(set(parameters) - set(TISSUE_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown tissue group(s) or parameter(s) {unknown}: expected some of "
            f"{list(TISSUE_GROUPS)} and {list(TISSUE_PARAMETERS)}"
        )
    if any(not (factor > 0 and factor != 1) for factor in factors):
        raise ValueError(f"response factors must be > 0 and != 1, got {list(factors)}")
    cases = [ResponseCase(REFERENCE_CASE, "", ())]
    for group in groups:
        for parameter in parameters:
            cases += [ResponseCase(f"{group}-{parameter}-x{f:g}", group, ((parameter, float(f)),)) for f in factors]
    if lesions:
        cases += [ResponseCase(name, "lesion", tuple(factors.items())) for name, factors in LESION_CASES.items()]
    return cases


def tissue_voxels(fractions: np.ndarray, group: str) -> np.ndarray:
    """(X, Y, Z) bool: the voxels of a group of :data:`TISSUE_GROUPS` (or ``lesion``) in (K, X, Y, Z) ``fractions``
    (compartments of :data:`~pipeline.phantom.tissues.COMPARTMENTS`)."""
    tissues, purity = (("lesion",), LESION_PURITY) if group == "lesion" else (TISSUE_GROUPS[group], PURITY)
    return fractions[[COMPARTMENTS.index(t) for t in tissues]].sum(0) >= purity


def mean_change_pct(after: np.ndarray, before: np.ndarray, voxels: np.ndarray) -> float:
    """Relative change (%) of the mean of (X, Y, Z) ``after`` over ``before`` in bool ``voxels``."""
    return float(100 * (after[voxels].mean() / before[voxels].mean() - 1))


def case_response(
    case: ResponseCase,
    predicted: Mapping[str, np.ndarray],
    predicted_reference: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    truth_reference: Mapping[str, np.ndarray],
    voxels: np.ndarray,
) -> pd.DataFrame:
    """One row per map of a case's response (columns: see the module docstring).

    Args:
        case: the case (not the reference).
        predicted, predicted_reference: ``{"t1_map", "t2_map", "m0_map": (X, Y, Z)}`` a model's maps of the case and
            of the reference case (T1/T2 in ms, M0 in its units).
        truth, truth_reference: the 1 mm truth of both, same keys and units.
        voxels: (X, Y, Z) bool, the changed tissue's voxels (:func:`tissue_voxels`).

    Returns:
        rows ``map, voxels, true_change_pct, predicted_change_pct, slope, crosstalk, MPE``; ``slope`` is NaN for a map
        whose quantity did not change, ``crosstalk`` NaN for one whose quantity did.
    """
    if not voxels.any():
        raise ValueError(f"case {case.name}: no voxel of {case.group} in the subject")
    changed = {MAP_OF_PARAMETER[parameter] for parameter, _ in case.factors}
    rows = []
    for name in MAP_OF_PARAMETER.values():
        rows.append(
            {
                "map": name,
                "voxels": int(voxels.sum()),
                "true_change_pct": mean_change_pct(truth[name], truth_reference[name], voxels),
                "predicted_change_pct": mean_change_pct(predicted[name], predicted_reference[name], voxels),
                "MPE": 100
                * float(np.mean(np.abs(predicted[name][voxels] - truth[name][voxels]) / truth[name][voxels])),
                "changed": name in changed,
            }
        )
    table = pd.DataFrame(rows)
    true_change = table["true_change_pct"].where(table["changed"])
    largest = true_change.abs().max()
    table["slope"] = table["predicted_change_pct"] / true_change
    table["crosstalk"] = (table["predicted_change_pct"] / largest).where(~table["changed"])
    return table


def response_slopes(responses: pd.DataFrame, by: Sequence[str] = ("model", "seed")) -> pd.DataFrame:
    """Least-squares slope through the origin of predicted against true relative change, over the factors of each
    group and parameter (changed maps), with the largest |cross-talk| and the mean MPE of those cases.

    Args:
        responses: rows of :func:`case_response` with columns ``group``, ``parameter`` and ``by`` added.
        by: the columns that name a model (kept in the result).

    Returns:
        one row per ``by``, group and parameter: ``slope, max_crosstalk, MPE, cases``.
    """
    keys = [*by, "group", "parameter"]
    changed = responses[responses["changed"]]
    products = changed.assign(
        xy=changed["predicted_change_pct"] * changed["true_change_pct"], xx=changed["true_change_pct"] ** 2
    )
    sums = products.groupby(keys)[["xy", "xx", "MPE"]].agg({"xy": "sum", "xx": "sum", "MPE": "mean"})
    crosstalk = responses[~responses["changed"]].groupby(keys)["crosstalk"].apply(lambda c: c.abs().max())
    cases = changed.groupby(keys)["case"].nunique()
    return pd.DataFrame(
        {"slope": sums["xy"] / sums["xx"], "max_crosstalk": crosstalk, "MPE": sums["MPE"], "cases": cases}
    ).reset_index()
