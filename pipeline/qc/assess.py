"""One subject's QC: self-consistency, plausibility, the label-resolution check and, with references, metrics.

:func:`assess_subject` gathers the checks of this package into the ``qc.json`` record (a dict) and the volumes the
HTML report shows. Flags come from the calibrated thresholds (:class:`~pipeline.qc.calibration.QCCalibration`) and
from the published ranges (:mod:`pipeline.qc.plausibility`); an uncalibrated check still reports its values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.metrics import mpe
from pipeline.physics import resolve_protocol
from pipeline.qc.calibration import QCCalibration
from pipeline.qc.consistency import self_consistency
from pipeline.qc.label_check import label_resolution_mpe
from pipeline.qc.plausibility import (
    PUBLISHED_RANGES_3T,
    plausibility_flags,
    tissue_medians,
)
from pipeline.qc.tissues import segment_tissues

MAP_VOLUMES = ("t1_map", "t2_map", "m0_map")
"""Report volume names of the predicted (T1, T2, M0) channels."""


def reference_metrics(maps_ms: np.ndarray, references_ms: np.ndarray, mask: np.ndarray) -> dict:
    """MPE (%) and mean absolute error (ms) of T1 and T2 (channels 0, 1 of (3, X, Y, Z) maps) over the brain mask."""
    inside = np.asarray(mask) != 0
    metrics = {}
    for channel, name in enumerate(("t1", "t2")):
        pred, ref = maps_ms[channel], references_ms[channel]
        metrics[f"{name}_mpe_percent"] = mpe(pred.reshape(-1, 1), ref.reshape(-1, 1), inside.reshape(-1, 1))
        metrics[f"{name}_mae_ms"] = float(np.abs(pred - ref)[inside & (ref > 0)].mean())
    return metrics


def assess_subject(
    subject: str,
    maps_ms: np.ndarray,
    images: np.ndarray,
    mask: np.ndarray,
    maps_affine: np.ndarray,
    contrasts: Sequence[str] = ("mprage", "tse_epg"),
    protocols: Mapping[str, Any] | None = None,
    calibration: QCCalibration | None = None,
    ranges: Mapping = PUBLISHED_RANGES_3T,
    labels: tuple[np.ndarray, np.ndarray] | None = None,
    references_ms: np.ndarray | None = None,
    smoothing_sigma: float = 1.0,
    scale_window: int = 0,
    input_warnings: Sequence[str] = (),
) -> tuple[dict, dict]:
    """Every QC check of one subject.

    Args:
        subject: its name.
        maps_ms: (3, X, Y, Z) predicted T1 (ms), T2 (ms), M0 on the images' grid, 0 outside the brain.
        images: (3, X, Y, Z) acquired T1w, T2w, FLAIR on that grid.
        mask: (X, Y, Z) brain mask.
        maps_affine: 4 x 4 voxel-to-world affine (mm) of that grid.
        contrasts, protocols, smoothing_sigma, scale_window: of :func:`pipeline.qc.consistency.self_consistency`.
        calibration: thresholds of the residuals and of the label-resolution MPE; None: values only, no such flags.
        ranges: plausible class medians (:data:`~pipeline.qc.plausibility.PUBLISHED_RANGES_3T`).
        labels: optional low-resolution ((2, *label_shape) T1, T2 in ms, 4 x 4 affine) for the label-resolution check.
        references_ms: optional (3, X, Y, Z) 1 mm reference maps (ms) on the images' grid.
        input_warnings: what the pre-run validation found unusual but valid in the subject's images (recorded and
            shown, not flags).

    Returns:
        ``qc``: the ``qc.json`` record (keys ``subject``, ``flagged``, ``flags``, ``input_warnings``, ``calibrated``,
        ``contrasts``,
        ``protocols``, ``self_consistency``, ``thresholds``, ``plausibility``, ``ranges``, ``label_resolution``,
        ``metrics``); ``volumes``: float32 (X, Y, Z) arrays for the report (maps, mask, tissues, and the acquired,
        scaled synthetic and residual image of each contrast; ``t1_ref``, ``t2_ref`` with references).
    """
    maps_ms = np.asarray(maps_ms, dtype=np.float32)
    tissues = segment_tissues(images[0], mask)
    protocols = {c: resolve_protocol(c, (protocols or {}).get(c)) for c in contrasts}
    residuals, volumes = self_consistency(
        maps_ms, images, mask, tissues, contrasts, protocols, smoothing_sigma, scale_window
    )
    medians = tissue_medians(maps_ms, tissues)
    label_resolution = None if labels is None else label_resolution_mpe(maps_ms, mask, maps_affine, *labels)
    flags = plausibility_flags(medians, ranges)
    if calibration is not None:
        flags = calibration.flags(residuals, label_resolution) + flags
    qc = {
        "subject": subject,
        "flagged": bool(flags),
        "flags": flags,
        "input_warnings": list(input_warnings),
        "calibrated": calibration is not None,
        "contrasts": list(contrasts),
        "protocols": {contrast: protocol.to_dict() for contrast, protocol in protocols.items()},
        "self_consistency": residuals,
        "thresholds": None if calibration is None else calibration.thresholds,
        "plausibility": medians,
        "ranges": {
            name: {tissue: list(bounds) for tissue, bounds in by_tissue.items()} for name, by_tissue in ranges.items()
        },
        "label_resolution": label_resolution,
        "metrics": None if references_ms is None else reference_metrics(maps_ms, references_ms, mask),
    }
    volumes.update(dict(zip(MAP_VOLUMES, maps_ms)))
    volumes.update(mask=(np.asarray(mask) != 0).astype(np.float32), tissues=tissues.astype(np.float32))
    if references_ms is not None:
        volumes.update(t1_ref=np.asarray(references_ms[0], np.float32), t2_ref=np.asarray(references_ms[1], np.float32))
    return qc, volumes
