"""Yardsticks beside the trained models, written in the layout of a prediction set so the evaluation and the response
benchmark score them like a model.

* :func:`write_interpolated_labels`: a section's own label maps (e.g. 3.5 mm slabs) resampled onto each subject's
  1 mm T1w grid exactly as the training pipeline resamples them (linear interpolation,
  :func:`pipeline.data.build_volume_dataset`). A network trained on those labels that does not beat them has learned
  little beyond their blur.
* :func:`write_dictionary_fit`: the ideal observer (:mod:`pipeline.dictionary`), each voxel's T1 and T2 fitted to its
  three images with the project's signal models, the images' gains from the subject's labels or from the images
  alone. What the images can tell: a network that measures should come close to it.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import torch

from pipeline.data import build_volume_dataset
from pipeline.dictionary import SignalDictionary, fit_voxels, gains_from_images, gains_from_labels
from pipeline.engine import MapsToMsd, SaveMapsd
from pipeline.physics import MAP_UNIT_MS

__all__ = ["write_dictionary_fit", "write_interpolated_labels"]
GAIN_SOURCES = ("labels", "images")
"""Where :func:`write_dictionary_fit` takes the images' gains from."""


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
        dataset_dir: folder of the manifest's relative paths; default :func:`pipeline.data.manifest_base_dir`.
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


def write_dictionary_fit(
    datalist: str | os.PathLike,
    output_dir: str | os.PathLike,
    protocols: Mapping[str, object],
    dataset_dir: str | os.PathLike | None = None,
    section: str = "testing",
    gains: str = "labels",
    contrasts: Sequence[str] = ("mprage", "tse", "flair"),
    overwrite: bool = False,
    **volume_options,
) -> pathlib.Path:
    """Write ``<output_dir>/<subject>/{t1,t2,m0}_map.nii.gz``: the dictionary fit of each subject's images.

    Args:
        datalist, output_dir, dataset_dir, section, overwrite, volume_options: as :func:`write_interpolated_labels`.
        protocols: contrast → protocol of the images (the study's).
        gains: ``"labels"`` (the median ratio of image to model signal of the subject's own labels) or ``"images"``
            (the best-fitting gain ratios, :func:`pipeline.dictionary.gains_from_images`).
        contrasts: the signal model of each image channel (T1w, T2w, FLAIR).

    Returns:
        ``output_dir``. T1/T2 in ms; M0 is PD x receive bias in the gains' units (relative changes only).
    """
    if gains not in GAIN_SOURCES:
        raise ValueError(f"gains must be one of {GAIN_SOURCES}, got {gains!r}")
    volumes = build_volume_dataset(
        datalist,
        dataset_dir,
        section,
        with_labels=gains == "labels",
        with_reference=False,
        with_mask=True,
        cache_num=0,
        **volume_options,
    )
    dictionary = SignalDictionary.build(contrasts, protocols)
    to_ms, save = MapsToMsd("fit"), SaveMapsd("fit", output_dir, overwrite=overwrite)
    for volume in volumes:
        mask = volume["mask"][0] > 0
        images = volume["image"][:, mask].double().numpy()
        if gains == "labels":
            label = volume["label"][:, mask].double().numpy()
            valid = (label > 0).all(0)
            t1, t2 = label[:2, valid] * MAP_UNIT_MS
            image_gains = gains_from_labels(images[:, valid], t1, t2, label[2, valid], dictionary, protocols)
        else:
            image_gains = gains_from_images(images, dictionary)
        t1, t2, pd, _ = fit_voxels(images, image_gains, dictionary)
        fitted = torch.zeros((3, *mask.shape), dtype=torch.float32)
        for channel, values in enumerate((t1 / MAP_UNIT_MS, t2 / MAP_UNIT_MS, pd)):
            fitted[channel][mask] = torch.as_tensor(values, dtype=torch.float32)
        save(to_ms({**volume, "fit": fitted}))
    return pathlib.Path(output_dir)
