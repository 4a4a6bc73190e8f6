"""Yardsticks beside the trained models: what the low-resolution labels alone carry.

:func:`write_interpolated_labels` writes a section's own label maps (e.g. 3.5 mm slabs) resampled onto each
subject's 1 mm T1w grid exactly as the training pipeline resamples them (linear interpolation,
:func:`pipeline.data.build_volume_dataset`), in the layout of a prediction set, so the evaluation scores them like a
model. A network trained on those labels that does not beat them has learned little beyond their blur.
"""

from __future__ import annotations

import os
import pathlib

from pipeline.data import build_volume_dataset
from pipeline.engine import MapsToMsd, SaveMapsd

__all__ = ["write_interpolated_labels"]


def write_interpolated_labels(
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    section: str = "testing",
    overwrite: bool = False,
    **volume_options,
) -> pathlib.Path:
    """Write ``<output_dir>/<subject>/{t1,t2,m0}_map.nii.gz``: the labels of ``section`` on each T1w grid.

    Args:
        datalist: manifest whose ``section`` entries have the label maps (``t1_map``, ``t2_map``, ``m0_map``).
        output_dir: the prediction-set folder to write.
        dataset_dir: folder of the manifest's relative paths; default the manifest's folder.
        section: manifest section.
        overwrite: replace existing maps (otherwise ``FileExistsError``, as for inference).
        volume_options: further keyword arguments of :func:`pipeline.data.build_volume_dataset` (e.g.
            ``max_shift_mm``).

    Returns:
        ``output_dir``. T1/T2 in ms, M0 in the pipeline's normalised units, zero outside the brain mask.
    """
    volumes = build_volume_dataset(
        datalist,
        dataset_dir,
        section,
        with_labels=True,
        with_reference=False,
        with_mask=True,
        cache_num=0,
        **volume_options,
    )
    to_ms, save = MapsToMsd("label"), SaveMapsd("label", output_dir, overwrite=overwrite)
    for volume in volumes:
        save(to_ms(volume))
    return pathlib.Path(output_dir)
