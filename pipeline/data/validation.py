"""Validation of a whole study before anything runs: every problem of every subject at once, as a table.

:func:`validate_study` checks each entry of a manifest and collects :class:`Problem` rows (subject, file, problem)
instead of stopping at the first one, so a study with ten problems is fixed in one pass. Per entry:

* every file exists and can be read, and is one 3D volume; weighted images and references hold no NaN/Inf
  (label maps may: their failed fits are left out of training, :mod:`pipeline.data.validity`); weighted images are not
  constant (an all-zero image);
* every file lies on the T1w in world space (bounding-box overlap, orientation:
  :func:`pipeline.data.coregistration.geometry_problem`), and T2w, FLAIR and the first label map are registered to the
  T1w by a rigid transform (:func:`pipeline.data.registration.register_rigid`, Mattes mutual information): a rotation
  above ``max_rotation_deg`` or a displacement above ``max_shift_mm`` anywhere in the brain's box is misregistration
  (rotations and translations alike, which the translation-only check of the data pipeline cannot see);
* T1 and T2 maps are in ms (the median of their positive voxels, the ranges of :mod:`pipeline.data.transforms`);
* no two weighted images are swapped: the medians of the T1w, T2w and FLAIR over white matter, grey matter and CSF
  (regions of the MNI152 tissue templates warped onto the T1w), compared between pairs of images
  (:mod:`pipeline.data.tissue_contrasts`: what disease does not invert). An image whose white/grey order is not a
  healthy brain's is a **warning** (:func:`~pipeline.data.tissue_contrasts.unusual_contrasts`), not a refusal: a
  :class:`Problem` of severity ``warning``, logged and shown in the QC report (MRIQC's rule: flag what is unusual but
  valid, refuse only what is wrong).

``python -m pipeline.validate MANIFEST`` prints the table and exits 1 when there is a problem; the bundle configs call
:func:`require_valid_study` before training and inference.

An entry's result is cached on disk (:func:`cached_validate_entry`): the ~10 s of registrations per subject are paid
once per study, not once per run (training, calibration, inference and adaptation of the same subjects). The key
holds every file's resolved path, size and modification time, the options and the package version, so an edited,
replaced or touched file is validated again. The folder is ``$QMAP_HYBRID_CACHE/validation`` (default
``~/.cache/qmap-hybrid``; :mod:`pipeline.cache`); ``--no-cache`` (``cache=False``) bypasses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import SimpleITK as sitk
from monai.data import MetaTensor
from monai.transforms import LoadImage
from monai.utils import convert_to_tensor

import pipeline
from pipeline.cache import cache_dir, cached_json
from pipeline.data.checks import constant_problem, volume_problem
from pipeline.data.coregistration import geometry_problem, to_sitk
from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import (
    IMAGE_KEYS,
    LABEL_KEYS,
    MASK_KEY,
    PATH_KEYS,
    REFERENCE_KEYS,
    SECTIONS,
    manifest_base_dir,
    load_datalist,
    read_manifest,
    subject_name,
)
from pipeline.data.registration import image_like, register_rigid
from pipeline.data.tissue_contrasts import contrast_problems, template_tissue_regions, tissue_medians, unusual_contrasts
from pipeline.data.transforms import T1_MEDIAN_RANGE_MS, T2_MEDIAN_RANGE_MS

MAX_ROTATION_DEG = 2.0
"""Largest tolerated rotation (degrees) between an image and the T1w."""
MAX_SHIFT_MM = 2.0
"""Largest tolerated displacement (mm) of a rigid transform over the brain's box (the data pipeline's shift limit)."""
REGISTERED_KEYS = ("t2w", "flair", LABEL_KEYS[0])
"""Files whose content is registered to the T1w (the label maps share one grid, so their first one stands for all)."""
MAP_MEDIAN_RANGES_MS = {
    LABEL_KEYS[0]: T1_MEDIAN_RANGE_MS,
    LABEL_KEYS[1]: T2_MEDIAN_RANGE_MS,
    REFERENCE_KEYS[0]: T1_MEDIAN_RANGE_MS,
    REFERENCE_KEYS[1]: T2_MEDIAN_RANGE_MS,
}
VALIDATION_RULES = 3
"""Version of the checks, part of the cache key: results cached under other rules are not reused (2: swaps from pairs
of images, an unusual contrast order a warning)."""


class Problem(NamedTuple):
    """One row of the validation table: an ``error`` refuses the study, a ``warning`` is reported (QC, logs)."""

    subject: str
    file: str
    problem: str
    severity: str = "error"


def _load(path: str) -> MetaTensor:
    """A channel-first float32 MetaTensor (1, X, Y, Z) of ``path`` (errors as :class:`pipeline.data.checks.LoadVolumesd`)."""
    if not Path(path).is_file():
        raise MissingFilesError("does not exist", [path])
    try:
        return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)(path)
    except Exception as error:
        raise InvalidInputError(f"cannot be read (corrupt or not an image): {type(error).__name__}: {error}") from error


def _unit_problem(key: str, volume: MetaTensor) -> str | None:
    """Why the map ``key`` does not look like ms (median of its positive finite voxels), or None."""
    values = np.asarray(volume).ravel()
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        return "has no positive finite voxel: no map"
    low, high = MAP_MEDIAN_RANGES_MS[key]
    median = float(np.median(values))
    if median < low:
        return f"median {median:.4g} of its positive voxels looks like seconds; maps must be in ms (multiply by 1000)"
    if median > high:
        return f"median {median:.4g} of its positive voxels looks like µs or a rescaled map; maps must be in ms"
    return None


def _registration_problem(
    t1w: sitk.Image, image: sitk.Image, brain: sitk.Image | None, max_rotation_deg: float, max_shift_mm: float
) -> str | None:
    """Why ``image``'s content is not aligned with the T1w's (rigid registration), or None."""
    result = register_rigid(t1w, image, fixed_mask=brain)
    if result.rotation_deg <= max_rotation_deg and result.max_displacement_mm <= max_shift_mm:
        return None
    return (
        f"misregistered with the T1w: a rigid registration finds a {result.rotation_deg:.1f}° rotation and "
        f"displacements up to {result.max_displacement_mm:.1f} mm in the brain (tolerance {max_rotation_deg:g}°, "
        f"{max_shift_mm:g} mm); register it (bundle 'register: true')"
    )


def validate_entry(
    entry: Mapping,
    max_rotation_deg: float = MAX_ROTATION_DEG,
    max_shift_mm: float = MAX_SHIFT_MM,
    min_overlap: float = 0.5,
    check_contrasts: bool = True,
    check_registration: bool = True,
    template_regions: Callable[[sitk.Image], tuple[dict[str, np.ndarray], np.ndarray]] = template_tissue_regions,
) -> list[Problem]:
    """Every problem of one manifest entry (absolute paths, as :func:`pipeline.data.manifest.load_datalist` gives).

    Args:
        entry: the entry's keys (:data:`pipeline.data.manifest.PATH_KEYS`) and ``subject``.
        max_rotation_deg, max_shift_mm: misregistration tolerances of the rigid registration to the T1w.
        min_overlap: smallest world-space bounding-box overlap with the T1w.
        check_contrasts: check the tissue contrast order of the weighted images (a template registration).
        check_registration: check the alignment of :data:`REGISTERED_KEYS` with the T1w (off when the run registers
            them itself: the data pipeline's check then measures the residual).
        template_regions: T1w → (tissue regions, brain mask) for the contrast check.

    Returns:
        the :class:`Problem` rows, empty if the entry is valid.
    """
    subject = subject_name(entry) if IMAGE_KEYS[0] in entry else str(entry.get("subject", "?"))
    volumes, problems = _readable_volumes(entry, subject)
    reference = volumes.get(IMAGE_KEYS[0])
    if reference is None:
        return problems
    off_t1w = _off_t1w_problems(entry, subject, volumes, min_overlap)
    problems += off_t1w.values()
    volumes = {key: volume for key, volume in volumes.items() if key not in off_t1w}
    t1w = to_sitk(reference)
    brain_mask = to_sitk(volumes[MASK_KEY]) if MASK_KEY in volumes else None
    regions = None
    if check_contrasts:  # the weighted images that passed the checks above
        regions, template_brain = template_regions(t1w)
        if brain_mask is None:
            brain_mask = image_like(template_brain.astype(np.uint8), t1w)
    misregistered = {}
    if check_registration:
        misregistered = _misregistration_problems(
            entry, subject, volumes, t1w, brain_mask, max_rotation_deg, max_shift_mm
        )
    problems += misregistered.values()
    if regions is not None:  # a misregistered image's tissue regions are not the T1w's: its contrasts tell nothing
        images = {key: to_sitk(volumes[key]) for key in IMAGE_KEYS if key in volumes and key not in misregistered}
        problems += _contrast_problems(entry, subject, tissue_medians(t1w, images, regions))
    return problems


def _readable_volumes(entry: Mapping, subject: str) -> tuple[dict[str, MetaTensor], list[Problem]]:
    """The entry's (1, X, Y, Z) volumes that load and pass :func:`_volume_problem`, and a :class:`Problem` for each
    file that does not."""
    problems: list[Problem] = []
    volumes: dict[str, MetaTensor] = {}
    for key in (k for k in PATH_KEYS if k in entry):
        path = str(entry[key])
        try:
            volume = _load(path)
        except (MissingFilesError, InvalidInputError) as error:
            problems.append(Problem(subject, path, f"{key}: {error}"))
            continue
        problem = _volume_problem(key, volume)
        if problem is not None:
            problems.append(Problem(subject, path, f"{key} {problem}"))
            continue
        volumes[key] = volume
    return volumes, problems


def _volume_problem(key: str, volume: MetaTensor) -> str | None:
    """Why the (1, X, Y, Z) volume of file ``key`` is unusable (not one 3D volume, NaN/Inf outside label maps, a
    constant weighted image, a T1/T2 map not in ms, an empty mask), or None."""
    tensor = convert_to_tensor(volume, track_meta=False)
    problem = volume_problem(tensor, allow_non_finite=key in LABEL_KEYS)
    if problem is None and key in IMAGE_KEYS:
        problem = constant_problem(tensor)
    if problem is None and key in MAP_MEDIAN_RANGES_MS:
        problem = _unit_problem(key, volume)
    if problem is None and key == MASK_KEY and not bool((tensor > 0).any()):
        problem = "is an empty mask (no non-zero voxel)"
    return problem


def _off_t1w_problems(
    entry: Mapping, subject: str, volumes: Mapping[str, MetaTensor], min_overlap: float
) -> dict[str, Problem]:
    """``{key: Problem}`` of the volumes that do not lie on the T1w in world space (bounding-box overlap below
    ``min_overlap``, another orientation: :func:`~pipeline.data.coregistration.geometry_problem`)."""
    reference = volumes[IMAGE_KEYS[0]]
    problems = {}
    for key, volume in volumes.items():
        problem = geometry_problem(reference.affine, reference.shape[1:], volume.affine, volume.shape[1:], min_overlap)
        if problem is not None:
            problems[key] = Problem(subject, str(entry[key]), f"{key} is not on the T1w in world space: {problem}")
    return problems


def _misregistration_problems(
    entry: Mapping,
    subject: str,
    volumes: Mapping[str, MetaTensor],
    t1w: sitk.Image,
    brain_mask: sitk.Image | None,
    max_rotation_deg: float,
    max_shift_mm: float,
) -> dict[str, Problem]:
    """``{key: Problem}`` of the volumes of :data:`REGISTERED_KEYS` whose content a rigid registration to the T1w
    (metric inside ``brain_mask``) finds rotated or displaced beyond the tolerances (:func:`_registration_problem`)."""
    problems = {}
    for key in (k for k in REGISTERED_KEYS if k in volumes):
        problem = _registration_problem(t1w, to_sitk(volumes[key]), brain_mask, max_rotation_deg, max_shift_mm)
        if problem is not None:
            problems[key] = Problem(subject, str(entry[key]), f"{key} {problem}")
    return problems


def _contrast_problems(entry: Mapping, subject: str, medians: Mapping[str, Mapping[str, float]]) -> list[Problem]:
    """The swapped images (errors) and unusual contrasts (warnings) of the weighted images' tissue ``medians``
    (:func:`~pipeline.data.tissue_contrasts.contrast_problems`,
    :func:`~pipeline.data.tissue_contrasts.unusual_contrasts`)."""
    problems = [
        Problem(subject, str(entry[key]), f"{key} {problem}") for key, problem in contrast_problems(medians).items()
    ]
    problems += [
        Problem(subject, str(entry[key]), f"{key} {warning}", "warning")
        for key, warning in unusual_contrasts(medians).items()
    ]
    return problems


def validation_cache_dir() -> Path:
    """The folder of cached validation results: ``$QMAP_HYBRID_CACHE/validation`` (:mod:`pipeline.cache`)."""
    return cache_dir("validation")


def _cache_key(entry: Mapping, options: Mapping) -> str | None:
    """SHA-256 of the entry's files (resolved path, size, mtime in ns), options and version; None if a file is
    missing (nothing to cache: that problem costs nothing to find)."""
    files = {}
    for key in (k for k in PATH_KEYS if k in entry):
        try:
            status = os.stat(entry[key])
        except OSError:
            return None
        files[key] = [str(Path(entry[key]).resolve()), status.st_size, status.st_mtime_ns]
    identity = {
        "files": files,
        "subject": str(entry.get("subject")),
        "options": options,
        "version": pipeline.__version__,
        "rules": VALIDATION_RULES,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def cached_validate_entry(entry: Mapping, **options) -> list[Problem]:
    """:func:`validate_entry`, its result read from / written to :func:`validation_cache_dir` (problems too).

    Options that are not plain values (a ``template_regions`` function) bypass the cache; an unreadable cache file is
    recomputed and replaced; one the user cannot write is skipped.
    """
    try:
        key = _cache_key(entry, options)
    except TypeError:  # options json cannot hold
        key = None
    if key is None:
        return validate_entry(entry, **options)
    return cached_json(
        validation_cache_dir() / f"{key}.json",
        lambda: validate_entry(entry, **options),
        encode=lambda problems: {"subject": str(entry.get("subject")), "problems": [list(p) for p in problems]},
        decode=lambda stored: [Problem(*row) for row in stored["problems"]],
    )


def validate_study(
    manifest: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = SECTIONS,
    cache: bool = True,
    **options,
) -> list[Problem]:
    """Every problem of the entries of ``sections`` of a manifest (sections it lacks are skipped).

    Args:
        manifest: decathlon-style manifest; relative paths against ``dataset_dir`` (default: its folder).
        sections: the datalists to check.
        cache: reuse (and store) each entry's result (:func:`cached_validate_entry`).
        options: keyword arguments of :func:`validate_entry`.
    """
    validate = cached_validate_entry if cache else validate_entry
    try:
        content = read_manifest(manifest)
    except (MissingFilesError, InvalidInputError) as error:
        return [Problem("-", str(manifest), str(error))]
    problems = []
    for section in (s for s in sections if content.get(s)):  # absent or empty lists have nothing to check
        try:
            entries = load_datalist(manifest, section, dataset_dir)
        except MissingFilesError:  # every missing file becomes a row below
            base = manifest_base_dir(manifest, dataset_dir)
            entries = [
                {key: str(base / value) if key in PATH_KEYS else value for key, value in entry.items()}
                for entry in content[section]
            ]
        except InvalidInputError as error:
            problems.append(Problem("-", f"{manifest} [{section}]", str(error)))
            continue
        for entry in entries:
            problems += validate(entry, **options)
    return problems


def problems_table(problems: Sequence[Problem]) -> str:
    """The problems as a plain-text table (subject, file, problem, severity); ``"no problems"`` if there are none."""
    if not problems:
        return "no problems"
    table = pd.DataFrame(problems, columns=Problem._fields)
    widths = {column: int(table[column].str.len().max()) for column in table}
    left = {column: f"{{:<{width}}}".format for column, width in widths.items()}  # pandas right-aligns strings
    return table.to_string(index=False, justify="left", formatters=left)


def require_valid_study(
    manifest: str | os.PathLike,
    dataset_dir: str | os.PathLike | None = None,
    sections: Sequence[str] = SECTIONS,
    **options,
) -> list[Problem]:
    """Raise :class:`~pipeline.data.errors.InvalidInputError` with the whole table if :func:`validate_study` finds an
    error; what the bundle configs run before training and inference. Warnings are logged and returned (the QC report
    shows them too: :func:`input_warnings`)."""
    problems = validate_study(manifest, dataset_dir, sections, **options)
    errors = [problem for problem in problems if problem.severity == "error"]
    if errors:
        raise study_error(errors, manifest, sections)
    warnings = [problem for problem in problems if problem.severity != "error"]
    for warning in warnings:
        logging.getLogger(__name__).warning(f"{warning.subject}: {warning.file}: {warning.problem}")
    return warnings


def input_warnings(entry: Mapping, **options) -> list[str]:
    """The warnings of an entry's validation (:func:`cached_validate_entry` with ``options``: the run's own checks, so
    the result is the cached one of the run's pre-run validation)."""
    return [problem.problem for problem in cached_validate_entry(entry, **options) if problem.severity != "error"]


def study_error(problems: Sequence[Problem], manifest: str | os.PathLike, sections: Sequence[str]) -> InvalidInputError:
    """The error of a study with ``problems``: their count, the sections, the way to check again and the table."""
    return InvalidInputError(
        f"manifest '{manifest}': {len(problems)} problem(s) in sections {list(sections)}; fix them (or check a "
        f"study with 'python -m pipeline.validate {manifest}'):\n{problems_table(problems)}"
    )
