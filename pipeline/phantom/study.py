"""A phantom study on disk: the files of each subject plus the decathlon-style manifest ``dataset.json``.

Layout of ``out_dir`` (paths in the manifest are relative to it)::

    dataset.json      manifest (format: docs/architecture.md)
    sub-01/...        the subject's weighted images, mask, label maps, 1 mm truth and phantom.json
                      (:mod:`pipeline.phantom.subject_files`)

Subjects ``sub-01 .. sub-N``: the last is the testing subject, the one before the validation subject
(N >= 3), the rest are training subjects. Files are written atomically and byte-reproducibly (gzip
without timestamp), the manifest last.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from pipeline.files import write_atomically
from pipeline.phantom.acquisition import Acquisition, check_protocols
from pipeline.phantom.anatomy import TemplateAnatomy, load_template_anatomy
from pipeline.phantom.contrasts import ProtocolOverrides, overrides_as_dict, protocol_overrides
from pipeline.phantom.grid import VoxelGrid
from pipeline.phantom.simulate import SubjectVolumes, simulate_subject, tissue_fractions
from pipeline.phantom.subject_files import subject_entry, write_subject
from pipeline.phantom.subject_parameters import SubjectParameters
from pipeline.phantom.tissues import TissueScales, scales_as_dict, tissue_scales

DEFAULT_SNR = 30.0
"""Default SNR: nominal pure-white-matter intensity over the noise standard deviation, in every contrast."""
GRID_MARGIN_MM = 6
"""Margin of the study grid around the template brain's bounding box (room for the deformation)."""
VARIETY_GRID_MARGIN_MM = 14
"""The margin with anatomical variety (room for pose, up to +7 % scaling and 3 mm deformations)."""
HEMISPHERE_PLANES_CENTRE_MM = 25.0
"""World x (RAS, right hemisphere) at the centre of the planes kept by ``sagittal_slices``."""
MANIFEST_NAME = "dataset.json"


def study_grid(
    anatomy: TemplateAnatomy,
    sagittal_slices: int | None = None,
    slab_thickness_mm: float = 3.5,
    slab_axis: int = 2,
    margin_mm: int = GRID_MARGIN_MM,
) -> VoxelGrid:
    """The 1 mm grid every subject of a study is simulated on.

    The template brain's bounding box plus ``margin_mm``, extended along ``slab_axis`` to a whole
    number of slabs; with ``sagittal_slices`` only that many X planes centred at
    :data:`HEMISPHERE_PLANES_CENTRE_MM` (same Y, Z extent).
    """
    start = np.full(3, -margin_mm)
    shape = np.array(anatomy.grid.shape) + 2 * margin_mm
    n_slabs = np.ceil(shape[slab_axis] / slab_thickness_mm)
    shape[slab_axis] = int(np.ceil(n_slabs * slab_thickness_mm - 1e-9))
    if sagittal_slices is not None:
        if sagittal_slices > shape[0]:
            raise ValueError(f"sagittal_slices must be at most the study's {shape[0]} planes, got {sagittal_slices}")
        centre = round(anatomy.grid.world_to_index(0, HEMISPHERE_PLANES_CENTRE_MM))
        start[0], shape[0] = centre - sagittal_slices // 2, sagittal_slices
    return anatomy.grid.subgrid(tuple(start), tuple(shape))


def subject_names(n_subjects: int) -> list[str]:
    """``sub-01`` .. ``sub-N`` (zero-padded to at least two digits)."""
    width = max(2, len(str(n_subjects)))
    return [f"sub-{index:0{width}d}" for index in range(1, n_subjects + 1)]


def split_of(index: int, n_subjects: int) -> str:
    """Datalist of subject ``index`` (0-based): the last is testing, the one before validation if N >= 3."""
    if index == n_subjects - 1:
        return "testing"
    if index == n_subjects - 2 and n_subjects >= 3:
        return "validation"
    return "training"


def _generator_parameters(
    n_subjects: int,
    seed: int,
    snr: float,
    sagittal_slices: int | None,
    slab_thickness_mm: float,
    slab_axis: int,
    lesions: bool,
    acquisition: str | Acquisition | dict,
    protocols: Mapping[str, Mapping[str, float]] | ProtocolOverrides | None,
    scales: Mapping[str, Mapping[str, float]] | TissueScales | None,
) -> dict:
    """Validated, JSON-normalised keyword arguments of :func:`generate_study` (``protocols`` and ``tissue_scales``
    only if they change something)."""
    if int(n_subjects) < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    if not float(snr) > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if sagittal_slices is not None and int(sagittal_slices) < 1:
        raise ValueError(f"sagittal_slices must be None or >= 1, got {sagittal_slices}")
    if not float(slab_thickness_mm) >= 1.0:
        raise ValueError(f"slab_thickness_mm must be >= 1 (the 1 mm voxel), got {slab_thickness_mm}")
    if int(slab_axis) not in (0, 1, 2):
        raise ValueError(f"slab_axis must be 0, 1 or 2, got {slab_axis}")
    overrides = protocol_overrides(protocols)
    check_protocols(as_acquisition(acquisition), overrides)
    parameters = {
        "n_subjects": int(n_subjects),
        "seed": int(seed),
        "snr": float(snr),
        "sagittal_slices": None if sagittal_slices is None else int(sagittal_slices),
        "slab_thickness_mm": float(slab_thickness_mm),
        "slab_axis": int(slab_axis),
        "lesions": bool(lesions),
        "acquisition": as_acquisition(acquisition).to_dict(),
    }
    if overrides:  # without overrides the record (and so the default study's manifest) is that of every earlier study
        parameters["protocols"] = overrides_as_dict(overrides)
    if tissue_scales(scales):
        parameters["tissue_scales"] = scales_as_dict(tissue_scales(scales))
    return parameters


def as_acquisition(acquisition: str | Acquisition | dict) -> Acquisition:
    """An :class:`~pipeline.phantom.acquisition.Acquisition` from a preset name, itself, or its ``to_dict`` mapping."""
    if isinstance(acquisition, Acquisition):
        return acquisition
    if isinstance(acquisition, str):
        return Acquisition.preset(acquisition)
    return Acquisition.from_dict(acquisition)


def study_manifest(
    n_subjects: int = 5,
    seed: int = 0,
    snr: float = DEFAULT_SNR,
    *,
    sagittal_slices: int | None = None,
    slab_thickness_mm: float = 3.5,
    slab_axis: int = 2,
    lesions: bool = True,
    acquisition: str | Acquisition | dict = "ideal",
    protocols: Mapping[str, Mapping[str, float]] | ProtocolOverrides | None = None,
    tissue_scales: Mapping[str, Mapping[str, float]] | TissueScales | None = None,
) -> dict:
    """The manifest :func:`generate_study` writes for these parameters (no data are generated).

    Its ``generator`` record is ``{"module": "pipeline.phantom", **generate_study keyword arguments}``.
    """
    generator = _generator_parameters(
        n_subjects,
        seed,
        snr,
        sagittal_slices,
        slab_thickness_mm,
        slab_axis,
        lesions,
        acquisition,
        protocols,
        tissue_scales,
    )
    manifest = {
        "name": "qmap-hybrid digital brain phantom",
        "description": (
            "Simulated 3T brain study from nilearn's MNI152 2009 templates: T1w MPRAGE, T2w TSE and T2w FLAIR at "
            f"1 mm, T1/T2/M0 label maps in {generator['slab_thickness_mm']:g} mm slabs, 1 mm reference maps (the "
            "truth) for every subject. The generator record, without 'module', holds the keyword arguments of "
            "pipeline.phantom.generate_study that regenerate the study."
        ),
        "map_units": {"t1_map": "ms", "t2_map": "ms", "m0_map": "a.u."},
        "generator": {"module": "pipeline.phantom", **generator},
        "training": [],
        "validation": [],
        "testing": [],
    }
    for index, subject in enumerate(subject_names(generator["n_subjects"])):
        split = split_of(index, generator["n_subjects"])
        manifest[split].append(subject_entry(subject))
    return manifest


def simulate_study_subject(
    generator: dict, index: int, snr: float | None = None, receive_bias: bool = True
) -> tuple[SubjectVolumes, SubjectParameters]:
    """Simulate subject ``index`` (0-based) of the study a manifest's ``generator`` record describes.

    Args:
        generator: the manifest's ``generator`` record (keyword arguments of :func:`generate_study`).
        index: the subject's index (``sub-01`` is 0).
        snr: the study's SNR if None; ``numpy.inf``: no noise (as :func:`~pipeline.phantom.simulate.simulate_subject`).
        receive_bias: apply the subject's receive-bias field.

    Returns:
        the simulated volumes (the files :func:`generate_study` writes come from them) and the subject's parameters.
    """
    return next(simulate_tissue_changes(generator, index, [generator.get("tissue_scales")], snr, receive_bias))


def study_subject(generator: Mapping, index: int) -> tuple[TemplateAnatomy, VoxelGrid, SubjectParameters, Acquisition]:
    """The template anatomy, the study grid, subject ``index``'s draws and the acquisition of a ``generator`` record
    (the generator's tissue scales are not applied: see :func:`simulate_tissue_changes`)."""
    anatomy = load_template_anatomy()
    acquisition = as_acquisition(generator.get("acquisition", "ideal"))
    margin = VARIETY_GRID_MARGIN_MM if acquisition.anatomical_variety else GRID_MARGIN_MM
    grid = study_grid(
        anatomy, generator["sagittal_slices"], generator["slab_thickness_mm"], generator["slab_axis"], margin
    )
    held_out = split_of(index, generator["n_subjects"]) != "training"
    parameters = SubjectParameters.draw(
        generator["seed"], index, anatomy, lesions=generator["lesions"], acquisition=acquisition, held_out=held_out
    )
    return anatomy, grid, parameters, acquisition


def simulate_tissue_changes(
    generator: dict,
    index: int,
    scales: Sequence[Mapping[str, Mapping[str, float]] | TissueScales | None],
    snr: float | None = None,
    receive_bias: bool = True,
) -> Iterator[tuple[SubjectVolumes, SubjectParameters]]:
    """Subject ``index`` of a study simulated once per tissue scales, its anatomy simulated once.

    Args:
        generator, index, snr, receive_bias: as :func:`simulate_study_subject`.
        scales: tissue scales (:func:`~pipeline.phantom.tissues.tissue_scales`) that replace the generator's, one
            simulation each: the same subject (anatomy, draws, noise, receive gain) with other tissue values.

    Yields:
        ``(volumes, parameters)`` per entry of ``scales``, in order.
    """
    anatomy, grid, parameters, acquisition = study_subject(generator, index)
    fractions = tissue_fractions(anatomy, grid, parameters, fine=acquisition.fine_anatomy)
    for case in scales:
        scaled = dataclasses.replace(parameters, scales=tissue_scales(case))
        volumes = simulate_subject(
            anatomy,
            grid,
            scaled,
            generator["snr"] if snr is None else snr,
            receive_bias=receive_bias,
            acquisition=acquisition,
            protocols=generator.get("protocols"),
            fractions=fractions,
        )
        yield volumes, scaled


def _remove_study(out_dir: pathlib.Path, manifest: dict) -> None:
    """Delete the files ``manifest`` lists (and the subjects' ``phantom.json``), then empty subject folders."""
    entries = [entry for split in ("training", "validation", "testing") for entry in manifest.get(split, [])]
    for entry in entries:
        paths = [out_dir / value for key, value in entry.items() if key != "subject"]
        paths.append(out_dir / entry["subject"] / "phantom.json")
        for path in paths:
            path.unlink(missing_ok=True)
        if (out_dir / entry["subject"]).is_dir() and not any((out_dir / entry["subject"]).iterdir()):
            (out_dir / entry["subject"]).rmdir()
    (out_dir / MANIFEST_NAME).unlink()


def _clear_different_study(out_dir: pathlib.Path, generator: dict, overwrite: bool) -> None:
    """Make way for the study of ``generator`` in ``out_dir``: nothing to do without a ``dataset.json`` there or with
    the same ``generator`` record; another phantom study is removed with ``overwrite``, else (and for any other
    ``dataset.json``) :class:`FileExistsError`."""
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.exists():
        return
    try:
        existing = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        existing = None
    existing_generator = existing.get("generator") if isinstance(existing, dict) else None
    if existing_generator == generator:
        return
    if not overwrite:
        raise FileExistsError(
            f"{manifest_path} holds a different study (generator: {existing_generator}); "
            "pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if not isinstance(existing_generator, dict) or existing_generator.get("module") != "pipeline.phantom":
        raise FileExistsError(f"{manifest_path} is not a pipeline.phantom study: not deleting its files")
    _remove_study(out_dir, existing)


def _write_subjects(out_dir: pathlib.Path, generator: dict) -> None:
    """Simulate every subject of the study a ``generator`` record describes and write its files into
    ``out_dir/<subject>/`` (:func:`~pipeline.phantom.subject_files.write_subject`)."""
    for index, subject in enumerate(subject_names(generator["n_subjects"])):
        split = split_of(index, generator["n_subjects"])
        volumes, parameters = simulate_study_subject(generator, index)
        write_subject(
            out_dir / subject,
            volumes,
            parameters,
            {"subject": subject, "split": split},
            slab_thickness_mm=generator["slab_thickness_mm"],
            slab_axis=generator["slab_axis"],
            acquisition=as_acquisition(generator["acquisition"]),
            overrides=protocol_overrides(generator.get("protocols")),
        )


def generate_study(
    out_dir: str | os.PathLike,
    n_subjects: int = 5,
    seed: int = 0,
    snr: float = DEFAULT_SNR,
    *,
    sagittal_slices: int | None = None,
    slab_thickness_mm: float = 3.5,
    slab_axis: int = 2,
    lesions: bool = True,
    acquisition: str | Acquisition | dict = "ideal",
    protocols: Mapping[str, Mapping[str, float]] | ProtocolOverrides | None = None,
    tissue_scales: Mapping[str, Mapping[str, float]] | TissueScales | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """Generate a phantom study (deterministic: same arguments → byte-identical files).

    Args:
        out_dir: dataset folder (created).
        n_subjects: number of subjects (split: see :func:`split_of`).
        seed: study seed; subject ``i`` draws from ``numpy.random.default_rng((seed, i))``.
        snr: nominal pure-white-matter intensity over the noise standard deviation (every contrast).
        sagittal_slices: keep only this many sagittal (X) planes through the right hemisphere (fast tests).
        slab_thickness_mm: thickness of the label slabs.
        slab_axis: axis of the label slabs (2 = z, S-I).
        lesions: add white-matter lesions.
        acquisition: ``"ideal"`` (the loss's own equations), ``"realistic"`` (every scanner effect of
            :mod:`pipeline.phantom.acquisition`), an :class:`~pipeline.phantom.acquisition.Acquisition` or its
            ``to_dict`` mapping (effects one by one).
        protocols: overrides of the default protocols (:func:`~pipeline.phantom.contrasts.protocols`) for a new
            site, ``{contrast: {field: value}}`` with fields of the :mod:`pipeline.physics` protocol dataclasses
            (ms, degrees), e.g. ``{"tse": {"te": 120.0}}``: both acquisitions image with them; intensities keep the
            default protocols' scale (a longer TE gives darker images). Recorded in the ``generator`` record (only
            when given) and in each ``phantom.json``. Invalid overrides raise ``ValueError`` before anything is written.
        tissue_scales: factors on the nominal tissue values, ``{compartment: {parameter: factor}}``
            (:func:`~pipeline.phantom.tissues.tissue_scales`), e.g. ``{"white_matter": {"t2_ms": 1.2}}``: every subject
            is the subject of the unscaled study (anatomy, draws, noise, receive gain, protocols) with those tissues
            changed. Recorded in the ``generator`` record (only when given); each ``phantom.json`` has the values.
        overwrite: replace a study generated with different parameters (another ``generator`` record);
            without it such a study in ``out_dir`` raises :class:`FileExistsError`, as does any other
            ``dataset.json`` there. A study with the same parameters is regenerated in place.

    Returns:
        path of ``out_dir/dataset.json``.
    """
    out_dir = pathlib.Path(out_dir)
    manifest = study_manifest(
        n_subjects,
        seed,
        snr,
        sagittal_slices=sagittal_slices,
        slab_thickness_mm=slab_thickness_mm,
        slab_axis=slab_axis,
        lesions=lesions,
        acquisition=acquisition,
        protocols=protocols,
        tissue_scales=tissue_scales,
    )
    manifest_path = out_dir / MANIFEST_NAME
    _clear_different_study(out_dir, manifest["generator"], overwrite)
    _write_subjects(out_dir, manifest["generator"])
    write_atomically(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest_path
