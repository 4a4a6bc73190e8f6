"""One phantom subject's files: the weighted images, mask, label maps, 1 mm truth and ``phantom.json`` of
:func:`write_subject`, and their manifest entry (:func:`subject_entry`).

Layout of ``<dataset>/<subject>/`` (paths in the manifest are relative to ``<dataset>``)::

    t1w.nii.gz                T1w MPRAGE, 1 mm, int16 (nominal pure white matter = 1000)
    t2w.nii.gz                T2w TSE, idem
    flair.nii.gz              T2w FLAIR, idem
    mask.nii.gz               brain mask, uint8
    t1_map_lowres.nii.gz      label maps, 3.5 mm slabs, float32: T1 (ms)
    t2_map_lowres.nii.gz                                         T2 (ms)
    m0_map_lowres.nii.gz                                         M0 (PD, fraction of water)
    phantom.json              ground-truth record: subject tissue values, lesions, protocols, noise
    t1_map.nii.gz ...         1 mm reference maps (the exact truth; training subjects' train the oracle)

Files are written atomically and byte-reproducibly (gzip without timestamp).
"""

from __future__ import annotations

import gzip
import json
import pathlib

import nibabel as nib
import numpy as np

from pipeline.files import write_atomically
from pipeline.phantom.acquisition import Acquisition
from pipeline.phantom.contrasts import WHITE_MATTER_INTENSITY, ProtocolOverrides, protocols
from pipeline.phantom.labels import SLICE_PROFILE_EDGE, acquire_low_resolution_maps, add_fit_errors, slab_affine
from pipeline.phantom.simulate import SubjectVolumes
from pipeline.phantom.subject_parameters import SubjectParameters
from pipeline.phantom.tissues import COMPARTMENTS, TISSUE_PARAMETERS

GZIP_LEVEL = 1
"""Fast gzip level for the NIfTI files."""
WEIGHTED_FILES = {"t1w": "mprage", "t2w": "tse", "flair": "flair"}
"""Manifest key (file stem) → contrast of each weighted image."""
MAP_STEMS = {"t1": "t1_ms", "t2": "t2_ms", "m0": "m0"}
"""Map file stem prefix → :class:`~pipeline.phantom.simulate.SubjectVolumes` attribute."""


def subject_entry(subject: str) -> dict[str, str]:
    """The manifest entry of a subject written by :func:`write_subject` into ``<dataset>/<subject>/``."""
    entry = {"subject": subject}
    entry.update({key: f"{subject}/{key}.nii.gz" for key in WEIGHTED_FILES})
    entry.update({f"{stem}_map": f"{subject}/{stem}_map_lowres.nii.gz" for stem in MAP_STEMS})
    entry["mask"] = f"{subject}/mask.nii.gz"
    entry.update({f"{stem}_ref": f"{subject}/{stem}_map.nii.gz" for stem in MAP_STEMS})
    return entry


def write_nifti(path: pathlib.Path, data: np.ndarray, affine: np.ndarray) -> None:
    """Write ``data`` (dtype kept) as gzipped NIfTI-1 with a scanner-space q/sform, byte-reproducibly."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    write_atomically(path, gzip.compress(image.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))


def write_subject(
    subject_dir: pathlib.Path,
    volumes: SubjectVolumes,
    parameters: SubjectParameters,
    record: dict,
    *,
    slab_thickness_mm: float,
    slab_axis: int,
    acquisition: Acquisition = Acquisition(),
    overrides: ProtocolOverrides = (),
) -> None:
    """Write one subject's files (see the module docstring) into ``subject_dir``.

    Args:
        subject_dir: the subject's folder (created).
        volumes, parameters: the simulated subject and its random parameters.
        record: extra entries of ``phantom.json`` (subject name, split).
        slab_thickness_mm, slab_axis: label slabs.
        acquisition: with ``label_acquisition``, labels through a slice profile with fit errors
            (:mod:`pipeline.phantom.labels`).
        overrides: the study's protocol overrides; ``phantom.json`` records the protocols they give.
    """
    subject_dir.mkdir(parents=True, exist_ok=True)
    affine = volumes.grid.affine
    for stem, contrast in WEIGHTED_FILES.items():
        intensities = np.clip(np.rint(volumes.weighted[contrast]), 0, np.iinfo(np.int16).max).astype(np.int16)
        write_nifti(subject_dir / f"{stem}.nii.gz", intensities, affine)
    write_nifti(subject_dir / "mask.nii.gz", volumes.mask.astype(np.uint8), affine)
    thickness_voxels = slab_thickness_mm / volumes.grid.spacing_mm[slab_axis]
    maps = [getattr(volumes, attribute) for attribute in MAP_STEMS.values()]
    edge = SLICE_PROFILE_EDGE * thickness_voxels if acquisition.label_acquisition else 0.0
    labels = acquire_low_resolution_maps(
        *maps, axis=slab_axis, thickness_voxels=thickness_voxels, edge_sigma_voxels=edge
    )
    if acquisition.label_acquisition:
        labels = add_fit_errors(labels, parameters.seed, parameters.subject_index)
    label_affine = slab_affine(affine, slab_axis, thickness_voxels)
    for stem, label, full in zip(MAP_STEMS, labels, maps):
        write_nifti(subject_dir / f"{stem}_map_lowres.nii.gz", label, label_affine)
        write_nifti(subject_dir / f"{stem}_map.nii.gz", full, affine)

    tissue_values = parameters.tissue_values()
    record = {
        **record,
        "seed": parameters.seed,
        "subject_index": parameters.subject_index,
        "tissues": {
            name: dict(zip(TISSUE_PARAMETERS, map(float, values))) for name, values in zip(COMPARTMENTS, tissue_values)
        },
        "lesions": [
            {"centre_mm": centre.round(2).tolist(), "volume_mm3": round(float(volume), 2)}
            for centre, volume in zip(volumes.lesion_centres_mm, volumes.lesion_volumes_mm3)
        ],
        "protocols": {contrast: protocol.to_dict() for contrast, protocol in protocols(overrides).items()},
        "acquisition": acquisition.to_dict(),
        "weighted_image_units": f"nominal pure white matter = {WHITE_MATTER_INTENSITY:g} before receive bias",
        "noise_sigma": volumes.noise_sigma,
    }
    write_atomically(subject_dir / "phantom.json", (json.dumps(record, indent=2) + "\n").encode())
