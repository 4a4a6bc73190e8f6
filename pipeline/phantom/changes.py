"""A study subject with other tissue values: re-simulated and written as a study of its own, or its anatomy for
re-synthesis (:func:`subject_tissues`).

Each case is the subject of :func:`~pipeline.phantom.study.simulate_tissue_changes` under its tissue scales: the same
anatomy, draws, noise and receive gain, only the scaled tissues differ. Layout of ``out_dir``::

    dataset.json          manifest: every case a subject of its ``testing`` section, the ``tissue_changes`` record
    fractions.nii.gz      (X, Y, Z, K) float32 compartment fractions of the subject (the same in every case),
                          compartments in the order of the record's ``compartments``
    <case>/...            the files of :func:`~pipeline.phantom.subject_files.write_subject` (images, labels, 1 mm truth)

The cases are written once: a folder whose record equals the requested one is reused as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from pipeline.cache import cache_dir, cached_array
from pipeline.files import write_atomically
from pipeline.phantom.contrasts import protocol_overrides
from pipeline.phantom.fine_anatomy import acquired_fractions
from pipeline.phantom.acquisition import Acquisition
from pipeline.phantom.simulate import tissue_fractions, transmit_field
from pipeline.phantom.study import MANIFEST_NAME, as_acquisition, simulate_tissue_changes, study_subject, subject_names
from pipeline.phantom.subject_files import subject_entry, write_nifti, write_subject
from pipeline.phantom.tissues import COMPARTMENTS, scales_as_dict, tissue_scales

FRACTIONS_FILE = "fractions.nii.gz"


@dataclass(frozen=True)
class SubjectTissues:
    """What re-synthesising a study subject with other tissue values needs: its 1 mm anatomy, tissue values and the
    fields its acquisition imaged them under.

    Attributes:
        fractions: (K, X, Y, Z) float32 compartment fractions on the study grid (:data:`COMPARTMENTS`; the truth's).
        texture_sigmas: (K, X, Y, Z) float32 texture field of each compartment (unit variance; its factor on T1, T2
            and PD: :func:`~pipeline.phantom.simulate.texture_factor`).
        transmit: (X, Y, Z) float32 relative B1+ (:func:`~pipeline.phantom.simulate.transmit_field`), or ``None``
            when the acquisition has no transmit field.
        affine: (4, 4) voxel-to-world (RAS mm) affine of the study grid.
        values: (K, 3) the subject's T1 (ms), T2 (ms) and PD of each compartment (before texture).
        acquisition: the study's acquisition effects.
    """

    fractions: np.ndarray
    texture_sigmas: np.ndarray
    transmit: np.ndarray | None
    affine: np.ndarray
    values: np.ndarray
    acquisition: Acquisition


def subject_tissues(generator: Mapping, index: int) -> SubjectTissues:
    """The anatomy and tissue values of subject ``index`` of the study a ``generator`` record describes.

    The fractions take the anatomy's simulation (~5 s ideal, ~25 s realistic); they are kept in the on-disk cache
    (:func:`pipeline.cache.cached_array`, folder ``phantom_fractions``) keyed by the record and the index.
    """
    generator = {key: value for key, value in generator.items() if key != "module"}
    anatomy, grid, parameters, acquisition = study_subject(generator, index)
    parameters = dataclasses.replace(parameters, scales=tissue_scales(generator.get("tissue_scales")))
    key = hashlib.sha256(json.dumps([generator, index], sort_keys=True).encode()).hexdigest()[:24]

    def compute() -> np.ndarray:
        fractions = tissue_fractions(anatomy, grid, parameters, fine=acquisition.fine_anatomy)
        filled = np.zeros((len(COMPARTMENTS), *fractions.mask.shape), np.float32)
        filled[:, fractions.mask] = fractions.inside
        mask, inside = acquired_fractions(fractions.mask, filled, acquisition.fine_anatomy)
        acquired = np.zeros((len(COMPARTMENTS), *mask.shape), np.float32)
        acquired[:, mask] = inside
        return acquired

    path = cache_dir("phantom_fractions") / f"{key}.npy"
    fractions = cached_array(path, compute, shape=(len(COMPARTMENTS), *grid.shape))
    transmit = transmit_field(parameters, grid)
    return SubjectTissues(
        fractions,
        parameters.texture(grid).astype(np.float32),
        None if transmit is None else transmit.numpy().astype(np.float32),
        grid.affine,
        parameters.tissue_values(),
        acquisition,
    )


def read_fractions(out_dir: str | os.PathLike) -> np.ndarray:
    """(K, X, Y, Z) float32 compartment fractions of a tissue-change study (in :data:`COMPARTMENTS` order)."""
    return np.moveaxis(np.asarray(nib.load(pathlib.Path(out_dir) / FRACTIONS_FILE).dataobj, np.float32), -1, 0)


def write_tissue_changes(
    generator: Mapping,
    cases: Mapping[str, Mapping[str, Mapping[str, float]] | None],
    out_dir: str | os.PathLike,
    index: int | None = None,
) -> pathlib.Path:
    """Write one subject of a phantom study once per tissue change.

    Args:
        generator: the study's ``generator`` record (its manifest's; ``module`` may be there).
        cases: case name (its subject folder) → tissue scales (:func:`~pipeline.phantom.tissues.tissue_scales`), on
            top of the generator's own.
        out_dir: the folder to write.
        index: the subject (0-based); default the study's testing subject (the last).

    Returns:
        the path of ``out_dir/dataset.json``.

    Raises:
        FileExistsError: ``out_dir`` holds a different study.
    """
    generator = {key: value for key, value in generator.items() if key != "module"}
    index = generator["n_subjects"] - 1 if index is None else int(index)
    scales = {name: scales_as_dict(tissue_scales(case)) for name, case in cases.items()}
    record = {
        "generator": generator,
        "subject": subject_names(generator["n_subjects"])[index],
        "subject_index": index,
        "cases": scales,
        "compartments": list(COMPARTMENTS),
    }
    out_dir = pathlib.Path(out_dir)
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.exists():
        existing = json.loads(manifest_path.read_text())
        if existing.get("tissue_changes") == record:
            return manifest_path
        raise FileExistsError(f"{manifest_path} holds another study; choose another folder or delete it")
    if generator.get("tissue_scales"):
        raise ValueError("write the tissue changes of an unscaled study: its generator has tissue_scales")
    simulations = simulate_tissue_changes(generator, index, list(scales.values()))
    for (volumes, parameters), name in zip(simulations, scales):
        write_subject(
            out_dir / name,
            volumes,
            parameters,
            {"subject": name, "split": "testing"},
            slab_thickness_mm=generator["slab_thickness_mm"],
            slab_axis=generator["slab_axis"],
            acquisition=as_acquisition(generator["acquisition"]),
            overrides=protocol_overrides(generator.get("protocols")),
        )
        if not (out_dir / FRACTIONS_FILE).exists():
            write_nifti(out_dir / FRACTIONS_FILE, np.moveaxis(volumes.fractions, 0, -1), volumes.grid.affine)
    manifest = {
        "name": f"qmap-hybrid phantom: {record['subject']} with changed tissue values",
        "map_units": {"t1_map": "ms", "t2_map": "ms", "m0_map": "a.u."},
        "tissue_changes": record,
        "training": [],
        "validation": [],
        "testing": [subject_entry(name) for name in scales],
    }
    write_atomically(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest_path
