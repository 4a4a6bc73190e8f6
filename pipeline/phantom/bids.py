"""A small BIDS dataset made from the digital phantom: the test fixture of :mod:`pipeline.bids`.

Three phantom subjects (:func:`~pipeline.phantom.study.generate_study`, kept under ``sourcedata/``) become two BIDS
participants, one of them with two sessions, so that every path of the BIDS reader is exercised. Layout of
``out_dir`` (BIDS specification: "Modality agnostic files", "Magnetic Resonance Imaging > Anatomy imaging data",
including "Parametric maps"; times in seconds as the spec's units table and the quantitative MRI appendix require)::

    dataset_description.json  README  participants.tsv  participants.json (the ``split`` column: SPLITS)
    sub-01/anat/sub-01_T1w.nii.gz + .json          phantom sub-01: T1w MPRAGE (sidecar: its protocol, s / degrees)
    sub-01/anat/sub-01_T2w.nii.gz + .json          T2w TSE, moved by a known rigid transform (see below)
    sub-01/anat/sub-01_FLAIR.nii.gz + .json        T2w FLAIR
    sub-01/anat/sub-01_T1map.nii.gz + .json        the phantom's 3.5 mm T1 label, in s (``"Units": "s"``)
    sub-01/anat/sub-01_T2map.nii.gz + .json        T2 label, in s
    sub-01/anat/sub-01_M0map.nii.gz + .json        M0 label (``"Units": "arbitrary"``)
    sub-02/sub-02_sessions.tsv
    sub-02/ses-01/anat/sub-02_ses-01_<suffix>.nii.gz ...   phantom sub-02
    sub-02/ses-02/anat/sub-02_ses-02_<suffix>.nii.gz ...   phantom sub-03
    sourcedata/phantom/study/                      the phantom study itself (dataset.json, masks, 1 mm maps in ms)
    sourcedata/phantom/truth.json                  what tests compare with (:data:`TRUTH_PATH`)

No brain masks are in the raw data (BIDS anat has none; the pipeline derives a foreground mask). Each T2w is the
phantom's T2w resampled (SimpleITK, linear, same grid) through a rigid transform of 1-3 degrees and 1-3 mm per axis,
different per session: a registration to the T1w must undo it. ``truth.json`` records, per session, both directions
as 4x4 matrices in world mm (RAS, the NIfTI frame, and LPS, the frame SimpleITK reads NIfTI in):

* ``resampling_transform``: maps a world point of the BIDS T2w voxel to the point of the phantom's (aligned) T2w that
  was sampled there: ``T2w_bids(x) = T2w_phantom(A x)``;
* ``registration_transform``: its inverse, maps a T1w (fixed) world point to the BIDS T2w (moving) point: what an
  image registration with fixed = T1w and moving = T2w (SimpleITK's convention) should find.

The sidecars carry the phantom's protocols (:func:`pipeline.phantom.contrasts.protocols`, defaults or ``protocols``
overrides) converted from ms to s: T1w ``RepetitionTimePreparation`` (inversion to inversion),
``RepetitionTimeExcitation`` (the readout's excitation spacing), ``InversionTime``, ``EchoTime``, ``FlipAngle``, ``NumberShots`` (excitations per
inversion); T2w ``RepetitionTimeExcitation``, ``EchoTime``, ``EchoTrainLength``; FLAIR ``RepetitionTime``,
``InversionTime``, ``EchoTime``, ``EchoTrainLength``. ``EchoTrainLength`` is not a BIDS schema field: it is the key
dcm2niix writes. The TSE echo spacing and refocusing angle have no BIDS field and are not written; neither is
``FlipAngle`` for the spin-echo images, whose DICOM flip angle means the excitation on some vendors and the refocusing
pulse on others.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Mapping

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from pipeline import __version__
from pipeline.files import write_atomically
from pipeline.phantom import contrasts
from pipeline.phantom.acquisition import Acquisition
from pipeline.phantom.contrasts import ProtocolOverrides, protocol_overrides
from pipeline.phantom.study import DEFAULT_SNR, generate_study
from pipeline.phantom.subject_files import write_nifti

SESSIONS = (("01", None), ("02", "01"), ("02", "02"))
"""(participant label, session label or None) of phantom subjects sub-01, sub-02, sub-03."""
SPLITS = {"01": "training", "02": "testing"}
"""Value of participants.tsv's ``split`` column per participant label."""
SPLIT_COLUMN = "split"
"""The participants.tsv column holding the split (``python -m pipeline.bids manifest --split split``)."""
STUDY_DIR = "sourcedata/phantom/study"
"""Folder (relative to the BIDS root) of the phantom study the dataset is made from."""
TRUTH_PATH = "sourcedata/phantom/truth.json"
"""The truth record (relative to the BIDS root): transforms, masks and 1 mm reference maps per session."""
MOTION_ROTATION_DEG = (1.0, 3.0)
"""Range of the absolute rotation (degrees) about each axis of the T2w's rigid motion."""
MOTION_TRANSLATION_MM = (1.0, 3.0)
"""Range of the absolute translation (mm) along each axis of the T2w's rigid motion."""
MS_PER_S = 1000.0
WEIGHTED_SUFFIXES = {"t1w": "T1w", "t2w": "T2w", "flair": "FLAIR"}
"""Phantom file stem → BIDS suffix of the weighted images."""
MAP_SUFFIXES = {"t1": "T1map", "t2": "T2map", "m0": "M0map"}
"""Phantom map stem → BIDS suffix of the parametric maps (from the phantom's ``<stem>_map_lowres`` labels)."""
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _seconds(value_ms: float) -> float:
    """A time in ms as seconds, rounded to 1e-9 s (keeps ms values exact through the JSON round trip)."""
    return round(float(value_ms) / MS_PER_S, 9)


def protocol_sidecars(overrides: ProtocolOverrides = ()) -> dict[str, dict]:
    """The acquisition fields of the T1w, T2w and FLAIR sidecars (BIDS units: s, degrees) of the phantom's protocols.

    Args:
        overrides: the study's protocol overrides (:func:`pipeline.phantom.contrasts.protocol_overrides`).

    Returns:
        ``{"T1w": {...}, "T2w": {...}, "FLAIR": {...}}`` (fields: see the module docstring).
    """
    mprage, tse, flair = (contrasts.protocols(overrides)[contrast] for contrast in ("mprage", "tse", "flair"))
    return {
        "T1w": {
            "PulseSequenceType": "MPRAGE",
            "RepetitionTimePreparation": _seconds(mprage.tr),
            "RepetitionTimeExcitation": _seconds(mprage.echo_spacing),
            "InversionTime": _seconds(mprage.ti),
            "EchoTime": _seconds(mprage.te),
            "FlipAngle": float(mprage.flip_angle),
            "NumberShots": int(mprage.n_excitations),
        },
        "T2w": {
            "PulseSequenceType": "TSE",
            "RepetitionTimeExcitation": _seconds(tse.tr),
            "EchoTime": _seconds(tse.te),
            "EchoTrainLength": int(tse.echo_train_length),
        },
        "FLAIR": {
            "PulseSequenceType": "IR-TSE",
            "RepetitionTime": _seconds(flair.tr),
            "InversionTime": _seconds(flair.ti),
            "EchoTime": _seconds(flair.te),
            "EchoTrainLength": int(flair.echo_train_length),
        },
    }


def _sitk_image(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a (X, Y, Z) array whose physical frame is the NIfTI affine's own (RAS) world frame."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in affine[:3, 3]))
    image.SetDirection(tuple(float(d) for d in (affine[:3, :3] / spacing).ravel()))
    return image


def rigid_transform(rotation_deg, translation_mm, centre_mm) -> tuple[sitk.Euler3DTransform, np.ndarray]:
    """A SimpleITK rigid transform and its 4x4 matrix (world mm → world mm, the frame of the coordinates given).

    Args:
        rotation_deg: rotations (3,) about the x, y, z axes (degrees; SimpleITK's Euler3D order).
        translation_mm: translation (3,) in mm.
        centre_mm: centre of rotation (3,) in mm.
    """
    transform = sitk.Euler3DTransform()
    transform.SetCenter(tuple(float(c) for c in centre_mm))
    transform.SetRotation(*(float(np.radians(angle)) for angle in rotation_deg))
    transform.SetTranslation(tuple(float(t) for t in translation_mm))
    rotation = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + np.asarray(transform.GetTranslation()) - rotation @ centre
    return transform, matrix


def resample_rigidly(data: np.ndarray, affine: np.ndarray, transform: sitk.Transform) -> np.ndarray:
    """``data`` (X, Y, Z) on its own grid sampled at ``transform(x)`` for each voxel centre ``x`` (linear, 0 outside).

    ``transform`` maps world points (the affine's RAS frame) of the output voxels to points of the input image, as
    SimpleITK's resampling does. Returns float32 (X, Y, Z).
    """
    image = _sitk_image(data.astype(np.float32), affine)
    moved = sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved).transpose(2, 1, 0)


def _motion(seed: int, index: int, affine: np.ndarray, shape: tuple[int, ...]) -> dict:
    """The T2w's rigid motion of phantom subject ``index``: parameters and both matrices (see the module docstring)."""
    rng = np.random.default_rng((seed, 7919, index))
    rotation = rng.uniform(*MOTION_ROTATION_DEG, 3) * rng.choice([-1.0, 1.0], 3)
    translation = rng.uniform(*MOTION_TRANSLATION_MM, 3) * rng.choice([-1.0, 1.0], 3)
    centre = (affine @ np.append((np.asarray(shape) - 1) / 2.0, 1.0))[:3]
    transform, matrix = rigid_transform(rotation, translation, centre)
    inverse = np.linalg.inv(matrix)
    return {
        "transform": transform,
        "record": {
            "rotation_deg": rotation.round(6).tolist(),
            "translation_mm": translation.round(6).tolist(),
            "centre_mm": centre.round(6).tolist(),
            "parameters": "SimpleITK Euler3DTransform (rotations about x, y, z in degrees), RAS world mm",
            "resampling_transform_ras": matrix.tolist(),
            "resampling_transform_lps": (LPS_FROM_RAS @ matrix @ LPS_FROM_RAS).tolist(),
            "registration_transform_ras": inverse.tolist(),
            "registration_transform_lps": (LPS_FROM_RAS @ inverse @ LPS_FROM_RAS).tolist(),
        },
    }


def _bids_name(participant: str, session: str | None, suffix: str, extension: str) -> str:
    """``sub-<p>[/ses-<s>]/anat/sub-<p>[_ses-<s>]_<suffix><extension>`` (POSIX, relative to the BIDS root)."""
    prefix = f"sub-{participant}" + (f"_ses-{session}" if session else "")
    folder = f"sub-{participant}" + (f"/ses-{session}" if session else "")
    return f"{folder}/anat/{prefix}_{suffix}{extension}"


def _write_json(path: pathlib.Path, content) -> None:
    write_atomically(path, json.dumps(content, indent=2) + "\n")


def _bids_version() -> str:
    """The BIDS version of bidsschematools' bundled schema (the version the dataset is written for)."""
    from bidsschematools.schema import load_schema

    return str(load_schema().bids_version)


def write_bids_study(
    out_dir: str | os.PathLike,
    seed: int = 0,
    sagittal_slices: int | None = None,
    *,
    snr: float = DEFAULT_SNR,
    acquisition: str | Acquisition | dict = "ideal",
    protocols: Mapping[str, Mapping[str, float]] | ProtocolOverrides | None = None,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write the phantom BIDS dataset (layout: the module docstring) into ``out_dir``; deterministic.

    Args:
        out_dir: BIDS root to create.
        seed, sagittal_slices, snr, acquisition, protocols: of the 3-subject phantom study
            (:func:`~pipeline.phantom.study.generate_study`; ``sagittal_slices=16`` for fast tests). ``protocols``
            overrides the phantom's protocols (ms, degrees) and so the sidecars' values.
        overwrite: rewrite a phantom BIDS dataset already in ``out_dir``; without it any existing
            ``dataset_description.json`` there raises :class:`FileExistsError`, as does (always) a non-empty
            folder that is not such a dataset.

    Returns:
        the BIDS root ``out_dir``.
    """
    root = pathlib.Path(out_dir)
    if (root / "dataset_description.json").exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a BIDS dataset; pass overwrite=True to rewrite it")
    if root.is_dir() and any(root.iterdir()) and not (root / TRUTH_PATH).is_file():
        raise FileExistsError(f"{root} is not empty and not a phantom BIDS dataset: not writing into it")
    overrides = protocol_overrides(protocols)
    study_manifest = generate_study(
        root / STUDY_DIR,
        n_subjects=len(SESSIONS),
        seed=seed,
        snr=snr,
        sagittal_slices=sagittal_slices,
        acquisition=acquisition,
        protocols=overrides,
        overwrite=overwrite,
    )
    study = json.loads(study_manifest.read_text())
    entries = sorted(
        (e for split in ("training", "validation", "testing") for e in study[split]), key=lambda e: e["subject"]
    )
    sidecars = protocol_sidecars(overrides)
    truth_sessions = []
    for index, (entry, (participant, session)) in enumerate(zip(entries, SESSIONS)):
        motion = _write_weighted_images(root, entry, participant, session, sidecars, seed, index)
        _write_label_maps(root, entry, participant, session)
        truth_sessions.append(_truth_session(entry, participant, session, motion))
    _write_dataset_files(root, seed, sagittal_slices)
    _write_json(
        root / TRUTH_PATH,
        {
            "description": "Ground truth of the phantom BIDS dataset: per session, the phantom subject it was made "
            "from, its brain mask and 1 mm reference maps (T1, T2 in ms, M0) and the rigid motion of its T2w "
            "(pipeline.phantom.bids module docstring). Paths are relative to the BIDS root.",
            "study_manifest": f"{STUDY_DIR}/dataset.json",
            "reference_units": {"t1_ref": "ms", "t2_ref": "ms", "m0_ref": "a.u."},
            "protocols": {
                contrast: protocol.to_dict() for contrast, protocol in contrasts.protocols(overrides).items()
            },
            "sessions": truth_sessions,
        },
    )
    return root


def _write_weighted_images(
    root: pathlib.Path, entry: dict, participant: str, session: str | None, sidecars: dict, seed: int, index: int
) -> dict:
    """The session's T1w, T2w (rigidly moved) and FLAIR with their sidecars; returns the T2w's motion."""
    subject_dir = root / STUDY_DIR / entry["subject"]
    for stem, suffix in WEIGHTED_SUFFIXES.items():
        target = root / _bids_name(participant, session, suffix, ".nii.gz")
        source = subject_dir / f"{stem}.nii.gz"
        if suffix == "T2w":
            image = nib.load(source)
            motion = _motion(seed, index, image.affine, image.shape)
            moved = resample_rigidly(np.asanyarray(image.dataobj), image.affine, motion["transform"])
            intensities = np.clip(np.rint(moved), 0, np.iinfo(np.int16).max).astype(np.int16)
            write_nifti(target, intensities, image.affine)
        else:
            write_atomically(target, source.read_bytes())
        _write_json(
            target.with_name(target.name.replace(".nii.gz", ".json")), {**sidecars[suffix], "MagneticFieldStrength": 3}
        )
    return motion


def _write_label_maps(root: pathlib.Path, entry: dict, participant: str, session: str | None) -> None:
    """The session's T1map and T2map (s) and M0map in thick slabs, with their sidecars."""
    subject_dir = root / STUDY_DIR / entry["subject"]
    for stem, suffix in MAP_SUFFIXES.items():
        target = root / _bids_name(participant, session, suffix, ".nii.gz")
        label = nib.load(subject_dir / f"{stem}_map_lowres.nii.gz")
        data = np.asarray(label.dataobj, dtype=np.float32)
        if stem != "m0":
            data = (data / np.float32(MS_PER_S)).astype(np.float32)
        write_nifti(target, data, label.affine)
        _write_json(
            target.with_name(target.name.replace(".nii.gz", ".json")),
            {
                "Units": "arbitrary" if stem == "m0" else "s",
                "Description": f"Simulated {suffix} in thick slabs (the phantom's low-resolution label, "
                "pipeline.phantom.labels)",
            },
        )


def _truth_session(entry: dict, participant: str, session: str | None, motion: dict) -> dict:
    """The truth record of one session: its phantom subject, mask, 1 mm references and the T2w's motion."""
    return {
        "participant": participant,
        "session": session,
        "entry": f"sub-{participant}" + (f"_ses-{session}" if session else ""),
        "phantom_subject": entry["subject"],
        "split": SPLITS[participant],
        "mask": f"{STUDY_DIR}/{entry['mask']}",
        **{key: f"{STUDY_DIR}/{entry[key]}" for key in ("t1_ref", "t2_ref", "m0_ref")},
        **{
            f"phantom_{key}": f"{STUDY_DIR}/{entry[key]}"
            for key in ("t1w", "t2w", "flair", "t1_map", "t2_map", "m0_map")
        },
        "t2w_motion": motion["record"],
    }


def _write_dataset_files(root: pathlib.Path, seed: int, sagittal_slices: int | None) -> None:
    """dataset_description.json, README, participants.tsv/.json and the sessions files."""
    _write_json(
        root / "dataset_description.json",
        {
            "Name": "qmap-hybrid digital brain phantom (BIDS test dataset)",
            "BIDSVersion": _bids_version(),
            "DatasetType": "raw",
            "GeneratedBy": [
                {
                    "Name": "pipeline.phantom",
                    "Version": __version__,
                    "Description": f"pipeline.phantom.bids.write_bids_study(seed={seed}, "
                    f"sagittal_slices={sagittal_slices}); phantom study in {STUDY_DIR}",
                }
            ],
        },
    )
    write_atomically(
        root / "README",
        "Simulated 3T brain data from qmap-hybrid's digital phantom (nilearn's MNI152 2009 templates): T1w MPRAGE, "
        "T2w TSE (rigidly moved, see sourcedata/phantom/truth.json) and FLAIR at 1 mm, T1/T2 (s) and M0 maps in "
        "3.5 mm slabs. Written by pipeline.phantom.bids.write_bids_study.\n",
    )
    participants = sorted({participant for participant, _ in SESSIONS})
    write_atomically(
        root / "participants.tsv",
        f"participant_id\t{SPLIT_COLUMN}\n" + "".join(f"sub-{p}\t{SPLITS[p]}\n" for p in participants),
    )
    _write_json(
        root / "participants.json",
        {
            SPLIT_COLUMN: {
                "Description": "datalist of the participant's sessions in the qmap-hybrid manifest",
                "Levels": {
                    "training": "train the network",
                    "validation": "select the model",
                    "testing": "evaluate or predict",
                },
            }
        },
    )
    for participant in participants:
        sessions = [s for p, s in SESSIONS if p == participant and s]
        if sessions:
            write_atomically(
                root / f"sub-{participant}" / f"sub-{participant}_sessions.tsv",
                "session_id\n" + "".join(f"ses-{s}\n" for s in sessions),
            )
