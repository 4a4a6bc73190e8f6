"""Tests of pipeline.data: manifests, input checks, co-registration, label resampling, normalisation, slices.

Bad-input tests use a small hand-built head (ellipsoids of WM / GM / CSF, low-resolution maps averaged over
3.5 mm slabs along z); the properties of the real pipeline are also checked on the phantom study (``tiny_study``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, SmartCacheDataset, list_data_collate, load_decathlon_datalist
from monai.transforms import Compose, LoadImage, RandFlipd, ResizeWithPadOrCropd
from monai.utils import convert_to_numpy
from scipy import ndimage

from pipeline.data import (
    IMAGE_KEYS,
    INTENSITY_REFERENCES,
    LABEL_KEYS,
    REFERENCE_KEYS,
    CoregistrationWarning,
    InvalidInputError,
    MisregistrationError,
    MissingFilesError,
    ScaleByCsfd,
    build_slice_dataset,
    build_volume_dataset,
    build_volume_transforms,
    ensure_study,
    input_channels,
    load_datalist,
    manifest_base_dir,
    stack_neighbour_slices,
)
from pipeline.data.checks import constant_problem
from pipeline.data.normalization import intensity_normalisation
from pipeline.data.slices import SliceDataset
from pipeline.data.transforms import CROP_MARGIN
from pipeline.data.validity import MarkFitFailuresd
from pipeline.handlers import SmartSliceCacheHandler
from pipeline.losses import HybridLoss
from pipeline.physics import MAP_UNIT_MS

REPO = Path(__file__).resolve().parents[1]

# hand-built head: tissue classes 0 background, 1 CSF, 2 GM, 3 WM; properties per class
T1_MS = np.array([0.0, 4000.0, 1331.0, 832.0])
T2_MS = np.array([0.0, 2000.0, 110.0, 79.2])
PD = np.array([0.0, 1.0, 0.82, 0.69])
WEIGHTED = {
    "t1w": np.array([0.0, 0.2, 0.6, 1.0]),
    "t2w": np.array([0.0, 1.0, 0.5, 0.4]),
    "flair": np.array([0, 0.1, 0.8, 0.6]),
}
SHAPE = (40, 48, 38)
SLAB_MM = 3.5


def tissue(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Tissue class at world coordinates (mm): CSF shell, GM shell, WM core, two CSF ventricles."""
    radii = np.array(SHAPE) * 0.4
    rho = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    classes = np.select([rho < 0.75, rho < 0.9, rho < 1.0], [3, 2, 1], 0)
    ventricles = ((np.abs(x) - 4) / 2.5) ** 2 + (y / 8) ** 2 + (z / 4) ** 2 < 1
    return np.where(ventricles, 1, classes)


def write_subject(folder: Path, seed: int = 0) -> dict:
    """Write a hand-built subject (1 mm images, mask and references; 3.5 mm-slab maps) and return its entry."""
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.eye(4)
    affine[:3, 3] = -(np.array(SHAPE) - 1) / 2
    x, y, z = np.meshgrid(*(np.arange(n) + affine[i, 3] for i, n in enumerate(SHAPE)), indexing="ij")
    classes = tissue(x, y, z)
    noise = np.random.default_rng(seed).standard_normal((3, *SHAPE)) * 0.02
    volumes = {key: table[classes] + noise[i] for i, (key, table) in enumerate(WEIGHTED.items())}
    volumes |= {"mask": classes > 0, "t1_ref": T1_MS[classes], "t2_ref": T2_MS[classes], "m0_ref": PD[classes]}
    # low-resolution maps: mean over 3.5 mm slabs along z, on their own grid (slab centres 1.75 mm inside the FOV)
    n_slabs = int(np.ceil(SHAPE[2] / SLAB_MM))
    slab_affine = np.diag([1.0, 1.0, SLAB_MM, 1.0])
    slab_affine[:3, 3] = affine[:3, 3] + [0.0, 0.0, SLAB_MM / 2 - 0.5]
    xs, ys, zs = np.meshgrid(x[:, 0, 0], y[0, :, 0], slab_affine[2, 3] + SLAB_MM * np.arange(n_slabs), indexing="ij")
    slab_classes = [tissue(xs, ys, zs + dz) for dz in np.linspace(-1.5, 1.5, 7)]
    for key, table in zip(LABEL_KEYS, (T1_MS, T2_MS, PD)):
        nib.save(
            nib.Nifti1Image(np.mean([table[c] for c in slab_classes], 0).astype(np.float32), slab_affine),
            folder / f"{key}_lowres.nii.gz",
        )
    for key, volume in volumes.items():
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), folder / f"{key}.nii.gz")
    entry = {key: f"{folder.name}/{key}.nii.gz" for key in (*IMAGE_KEYS, "mask", *REFERENCE_KEYS)}
    return {"subject": folder.name, **entry, **{key: f"{folder.name}/{key}_lowres.nii.gz" for key in LABEL_KEYS}}


def absolute(entry: dict, base: Path) -> dict:
    """``entry`` with every path made absolute against ``base``."""
    return {key: value if key == "subject" else str(base / value) for key, value in entry.items()}


def data_error(error: BaseException) -> BaseException:
    """The first data error in a ``raise ... from`` chain (MONAI's Compose wraps transform errors in RuntimeError)."""
    while not isinstance(error, (InvalidInputError, MissingFilesError)):
        error = error.__cause__
    return error


@pytest.fixture(scope="module")
def hand_study(tmp_path_factory) -> Path:
    """A 2-subject hand-built study: sub-01 training (no references), sub-02 validation; returns its manifest."""
    root = tmp_path_factory.mktemp("hand_study")
    training = {key: value for key, value in write_subject(root / "sub-01").items() if key not in REFERENCE_KEYS}
    manifest = {"name": "hand", "training": [training], "validation": [write_subject(root / "sub-02", seed=1)]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    return root / "dataset.json"


@pytest.fixture
def subject(tmp_path) -> dict:
    """A fresh hand-built subject with absolute paths, free to damage."""
    return absolute(write_subject(tmp_path / "sub-09"), tmp_path)


@pytest.fixture
def phantom_subject(tiny_study, tmp_path) -> dict:
    """A copy of the phantom's validation subject with absolute paths, free to damage."""
    entry = json.loads(tiny_study.read_text())["validation"][0]
    shutil.copytree(tiny_study.parent / entry["subject"], tmp_path / entry["subject"])
    return absolute(entry, tmp_path)


def edited(data=lambda array: array, affine=lambda matrix: matrix):
    """A function rewriting a NIfTI file in place with ``data(array)`` and ``affine(matrix)``."""

    def rewrite(path: str) -> None:
        image = nib.load(path)
        array = np.asarray(data(image.get_fdata(dtype=np.float32)), dtype=np.float32)
        nib.save(nib.Nifti1Image(array, affine(image.affine)), path)

    return rewrite


def shifted(affine: np.ndarray, shift_mm) -> np.ndarray:
    moved = affine.copy()
    moved[:3, 3] += shift_mm
    return moved


# ---------------------------------------------------------------- manifests


def test_manifest_round_trips_through_load_decathlon_datalist(hand_study):
    raw = json.loads(hand_study.read_text())
    for section in ("training", "validation"):
        monai_entries = load_decathlon_datalist(hand_study, is_segmentation=False, data_list_key=section)
        entries = load_datalist(hand_study, section)
        assert len(entries) == len(monai_entries) == len(raw[section])
        for entry, monai_entry, raw_entry in zip(entries, monai_entries, raw[section]):
            assert entry.keys() == raw_entry.keys()
            for key in raw_entry.keys() - {"subject"}:
                assert entry[key] == monai_entry[key] == str(hand_study.parent / raw_entry[key])
                assert Path(entry[key]).is_file()
            # MONAI turns "sub-01" into a path because that folder exists; the subject name is kept
            assert entry["subject"] == raw_entry["subject"]


def test_load_datalist_resolves_against_dataset_dir_and_names_every_missing_file(hand_study, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(hand_study.parent, copy)
    entries = load_datalist(hand_study, "training", dataset_dir=copy)
    assert all(entries[0][key].startswith(str(copy)) for key in IMAGE_KEYS)
    (copy / "sub-01" / "t2w.nii.gz").unlink()
    (copy / "sub-01" / "t1_map_lowres.nii.gz").unlink()
    with pytest.raises(MissingFilesError) as error:
        load_datalist(hand_study, "training", dataset_dir=copy)
    assert sorted(Path(path).name for path in error.value.missing) == ["t1_map_lowres.nii.gz", "t2w.nii.gz"]
    assert str(copy / "sub-01" / "t2w.nii.gz") in str(error.value)
    assert str(copy / "sub-01" / "t1_map_lowres.nii.gz") in str(error.value)


def test_a_manifest_elsewhere_names_its_files_folder_and_the_bundle_defaults_to_it(hand_study, tmp_path):
    """Without ``dataset_dir`` the paths resolve against the manifest's own ``dataset_dir`` entry (relative to the
    manifest), else its folder; the bundle configs leave ``dataset_dir`` unset, so ``--datalist`` alone works."""
    moved = dict(json.loads(hand_study.read_text()), dataset_dir=os.path.relpath(hand_study.parent, tmp_path / "m"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(moved))
    entries = load_datalist(tmp_path / "m" / "manifest.json", "training")
    assert entries == load_datalist(hand_study, "training")
    assert manifest_base_dir(hand_study) == hand_study.parent.resolve()
    assert manifest_base_dir(REPO / "data_manifest.json") == REPO / "data" / "phantom"
    for config in ("train.json", "inference.json", "evaluate.json"):
        assert json.loads((REPO / "bundles" / "qmap_hybrid" / "configs" / config).read_text())["dataset_dir"] is None


def test_load_datalist_rejects_incomplete_entries_and_names_subjects_by_t1w_stem(tmp_path):
    entry = write_subject(tmp_path / "sub-03")
    del entry["subject"]
    (tmp_path / "m.json").write_text(json.dumps({"training": [entry]}))
    assert load_datalist(tmp_path / "m.json")[0]["subject"] == "t1w"
    del entry["t2_map"]
    (tmp_path / "m.json").write_text(json.dumps({"training": [entry]}))
    with pytest.raises(InvalidInputError, match="t2_map"):
        load_datalist(tmp_path / "m.json")
    with pytest.raises(InvalidInputError, match="'testing'"):
        load_datalist(tmp_path / "m.json", "testing")


def test_ensure_study_without_generator_names_missing_files(hand_study, tmp_path):
    assert ensure_study(hand_study) == hand_study.parent.resolve()
    with pytest.raises(MissingFilesError, match="no pipeline.phantom generator") as error:
        ensure_study(hand_study, dataset_dir=tmp_path)
    assert str(tmp_path / "sub-01" / "t1w.nii.gz") in str(error.value)


def test_ensure_study_regenerates_a_phantom_study_once(tiny_study, tmp_path, monkeypatch):
    calls = []

    def generate_study(out_dir, **params):  # stands in for the (slower) phantom: copies the generated study
        calls.append(params)
        shutil.copytree(tiny_study.parent, out_dir, dirs_exist_ok=True)
        return Path(out_dir) / "dataset.json"

    monkeypatch.setattr("pipeline.phantom.generate_study", generate_study)
    generator = dict(json.loads(tiny_study.read_text())["generator"])
    assert generator.pop("module") == "pipeline.phantom"
    assert ensure_study(tiny_study, tmp_path / "regenerated") == (tmp_path / "regenerated").resolve()
    assert ensure_study(tiny_study, tmp_path / "regenerated") == (tmp_path / "regenerated").resolve()
    assert calls == [generator]
    assert load_datalist(tiny_study, "testing", dataset_dir=tmp_path / "regenerated")[0]["t1_ref"].startswith(
        str(tmp_path / "regenerated")
    )
    other = json.loads(tiny_study.read_text())
    other["validation"] = []
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(RuntimeError, match=r"\['validation'\] lists differ"):
        ensure_study(tmp_path / "other.json", tmp_path / "elsewhere")


# ---------------------------------------------------------------- bad input


def truncate(path: str) -> None:
    content = Path(path).read_bytes()
    Path(path).write_bytes(content[: len(content) // 2])


BAD_INPUTS = {  # case: (damaged key, damage, error type, phrase of the message)
    "missing file": ("t2w", lambda path: Path(path).unlink(), MissingFilesError, "missing file"),
    "truncated gzip": ("flair", truncate, InvalidInputError, "cannot be read"),
    "2D image": ("t1w", edited(lambda d: d[:, :, 10]), InvalidInputError, "not a single 3D"),
    "4D, 3 frames": ("t2w", edited(lambda d: np.stack([d] * 3, -1)), InvalidInputError, "3 frame"),
    "NaN voxels": ("t2w", edited(lambda d: np.where(d > np.percentile(d, 99), np.nan, d)), InvalidInputError, "NaN"),
    "all-zero T2w": ("t2w", edited(lambda d: 0 * d), InvalidInputError, "is constant"),
    "constant FLAIR": ("flair", edited(lambda d: 0 * d + 7), InvalidInputError, r"is constant \(every voxel = 7\)"),
    "labels all failed": ("t1_map", edited(lambda d: np.full_like(d, np.nan)), InvalidInputError, "no valid label"),
    "Inf voxel": ("m0_ref", edited(lambda d: np.where(d > 0.99, np.inf, d)), InvalidInputError, "NaN/Inf"),
    "empty mask": ("mask", edited(lambda d: 0 * d), InvalidInputError, "empty mask"),
    "T1 in seconds": ("t1_map", edited(lambda d: d / 1000), InvalidInputError, "looks like seconds"),
    "T2 in µs": ("t2_ref", edited(lambda d: d * 1000), InvalidInputError, "looks like µs"),
    "no overlap": (
        "flair",
        edited(affine=lambda a: shifted(a, [0, 200, 0])),
        MisregistrationError,
        "overlap by only 0%",
    ),
}


@pytest.mark.parametrize("cache_num", [-1, 0], ids=["cached", "streamed"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_a_clear_error_naming_the_file(subject, case, cache_num):
    """Cached volumes fail when the dataset is built, streamed ones when the volume is read: the same error."""
    key, damage, error_type, phrase = BAD_INPUTS[case]
    damage(subject[key])
    with pytest.raises(error_type, match=phrase) as error:
        build_volume_dataset([subject], cache_num=cache_num)[0]
    assert subject[key] in str(error.value) and "sub-09" in str(error.value)


def test_transforms_used_directly_name_a_missing_file(subject):
    Path(subject["flair"]).unlink()
    with pytest.raises(RuntimeError) as wrapped:  # MONAI's Compose wraps transform errors
        build_volume_transforms(with_reference=True)(subject)
    error = data_error(wrapped.value)
    assert isinstance(error, MissingFilesError)
    assert subject["flair"] in str(error) and "does not exist" in str(error)


def test_entries_must_agree_on_optional_keys(subject, tmp_path):
    other = absolute(write_subject(tmp_path / "sub-10"), tmp_path)
    del other["t1_ref"], other["t2_ref"], other["m0_ref"]
    with pytest.raises(InvalidInputError, match=r"references .*\['sub-10'\] lack them"):
        build_volume_dataset([subject, other])


def test_single_frame_4d_image_is_accepted(subject):
    edited(lambda d: d[..., None])(subject["t2w"])
    assert build_volume_dataset([subject], crop_margin=None)[0]["image"].shape == (3, *SHAPE)


# ---------------------------------------------------------------- co-registration


@pytest.mark.parametrize("study", ["subject", "phantom_subject"])
def test_coregistration_check_fails_a_map_shifted_by_4_mm(study, request):
    subject = request.getfixturevalue(study)
    transforms = build_volume_transforms(with_reference=True)
    transforms(subject)  # aligned: passes
    edited(affine=lambda a: shifted(a, [0.0, 4.0, 0.0]))(subject["t1_map"])
    with pytest.raises(RuntimeError) as wrapped:
        transforms(subject)
    error = data_error(wrapped.value)
    assert isinstance(error, MisregistrationError)
    assert subject["t1_map"] in str(error) and subject["t1w"] in str(error) and subject["subject"] in str(error)
    assert float(re.search(r"shift ([\d.]+) mm", str(error)).group(1)) == pytest.approx(4.0, abs=0.5)
    with pytest.warns(CoregistrationWarning, match="shift"):
        build_volume_transforms(with_reference=True, on_failure="warn")(subject)


# ---------------------------------------------------------------- volume pipeline


@pytest.fixture(scope="module", params=["hand_study", "tiny_study"])
def validation_subject(request) -> tuple[dict, dict]:
    """(entry, processed volume) of the first validation subject of the hand-built study and of the phantom."""
    manifest = request.getfixturevalue(request.param)
    return load_datalist(manifest, "validation")[0], build_volume_dataset(manifest, section="validation")[0]


def brain_box(mask_file: str, margin: int = CROP_MARGIN) -> tuple[np.ndarray, tuple[int, ...]]:
    """(first voxel index, shape) of the mask's bounding box grown by ``margin`` voxels, in the file's (RAS) grid."""
    inside = np.argwhere(nib.load(mask_file).get_fdata() > 0.5)
    start, stop = inside.min(axis=0) - margin, inside.max(axis=0) + 1 + margin
    return start, tuple(int(n) for n in stop - start)


def test_volume_keys_shapes_and_t1w_geometry(validation_subject):
    """Volumes lie on the T1w grid cropped to the brain's bounding box plus the margin (padded beyond the image)."""
    entry, volume = validation_subject
    t1w = nib.load(entry["t1w"])
    assert set(volume) == {"image", "label", "label_failed", "reference", "mask", "subject"}
    assert volume["subject"] == entry["subject"]
    start, shape = brain_box(entry["mask"])
    assert (start < 0).any() or any(n < size for n, size in zip(shape, t1w.shape))  # the crop does something
    cropped_affine = t1w.affine.copy()
    cropped_affine[:3, 3] = t1w.affine[:3, :3] @ start + t1w.affine[:3, 3]
    for key, channels in {"image": 3, "label": 3, "label_failed": 1, "reference": 3, "mask": 1}.items():
        assert volume[key].shape == (channels, *shape)
        assert volume[key].dtype == torch.float32
        np.testing.assert_allclose(volume[key].affine.numpy(), cropped_affine, atol=1e-5)
    assert not volume["label_failed"].any()  # no failed fit in these labels
    assert volume["image"].meta["filename_or_obj"] == entry["t1w"]
    assert set(volume["mask"].unique().tolist()) == {0.0, 1.0}


def smooth_and_edge_regions(reference_t1: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels whose (3, 3, 7) neighbourhood (one 3.5 mm slab either way) has a constant / varying reference T1."""
    local_max = ndimage.maximum_filter(reference_t1, size=(3, 3, 7))
    local_min = ndimage.minimum_filter(reference_t1, size=(3, 3, 7))
    spread = (local_max - local_min) / np.maximum(local_max, 1e-6)
    return mask & (spread < 0.05), mask & (spread > 0.3)


def test_resampled_labels_match_the_truth_where_smooth_and_are_blurred_at_edges(validation_subject):
    _, volume = validation_subject
    label, reference = volume["label"][0].numpy(), volume["reference"][0].numpy()
    smooth, edge = smooth_and_edge_regions(reference, volume["mask"][0].numpy() > 0)
    relative_error = np.abs(label - reference) / reference.clip(1e-6)
    assert smooth.sum() > 1000 and edge.sum() > 500
    assert np.median(relative_error[smooth]) < 0.01
    assert np.median(relative_error[edge]) > max(0.02, 5 * np.median(relative_error[smooth]))


def test_labels_in_network_units_and_normalised_intensities(validation_subject):
    _, volume = validation_subject
    mask = volume["mask"][0].numpy() > 0
    label, reference = volume["label"].numpy(), volume["reference"].numpy()
    smooth, _ = smooth_and_edge_regions(reference[0], mask)
    white_matter = smooth & (np.abs(reference[0] * MAP_UNIT_MS - 832) < 0.15 * 832)
    assert np.median(label[0][white_matter]) == pytest.approx(832 / MAP_UNIT_MS, rel=0.05)
    assert np.median(label[1][white_matter]) == pytest.approx(np.median(reference[1][white_matter]), rel=0.01)
    assert np.median(label[1][white_matter]) == pytest.approx(79.2 / MAP_UNIT_MS, rel=0.1)
    for channel in (*volume["image"].numpy(), label[2], reference[2]):
        assert np.percentile(channel[mask], 99) == pytest.approx(1.0, abs=1e-4)


def _csf_head(white_t1w: float) -> dict:
    """A (1, 20, 20, 20) brain: CSF (6 % of it: the T2w's brightest) and white matter of T1w value ``white_t1w``,
    with gains 7 (T1w) and 3 (T2w)."""
    mask = torch.zeros(1, 20, 20, 20)
    mask[:, 2:18, 2:18, 2:18] = 1
    csf = torch.zeros_like(mask, dtype=torch.bool)
    csf[:, 8:12, 8:12, 2:18] = True
    noise = torch.linspace(0.95, 1.05, mask.numel()).reshape(mask.shape)
    t1w = 7 * torch.where(csf, 0.3, white_t1w) * noise * mask
    t2w = 3 * torch.where(csf, 2.0, 0.6) * noise * mask
    return {"t1w": t1w, "t2w": t2w, "flair": t2w * ~csf, "mask": mask}


def test_the_csf_reference_keeps_a_tissue_change_the_brain_percentile_divides_away():
    """The T1w and T2w over their median in the T2w's brightest voxels: CSF at 1; white matter 20 % brighter in the
    T1w stays 20 % brighter, where the 99th percentile (white matter's own) leaves it almost unchanged."""
    csf_scale, by_percentile = intensity_normalisation("csf")
    assert isinstance(csf_scale, ScaleByCsfd) and list(by_percentile.keys) == ["flair"]
    healthy, changed = _csf_head(1.0), _csf_head(1.2)
    inside, csf = healthy["mask"][0] > 0, _csf_head(1.0)["t2w"][0] > 3
    white = inside & ~csf
    seen = {}
    for reference in INTENSITY_REFERENCES:
        normalised = [Compose(intensity_normalisation(reference))(head) for head in (healthy, changed)]
        seen[reference] = float(normalised[1]["t1w"][0][white].median() / normalised[0]["t1w"][0][white].median())
        if reference == "csf":
            region = torch.as_tensor(csf_scale.csf(healthy))
            assert 0.01 * inside.sum() < region.sum() and not (region & ~csf).any()  # CSF, 2 % of the brain
            for key in ("t1w", "t2w"):
                assert float(normalised[0][key][0][region].median()) == pytest.approx(1.0, rel=1e-5)
    assert seen["csf"] == pytest.approx(1.2, rel=1e-4)
    assert abs(seen["brain"] - 1) < 0.02


def test_an_image_without_csf_signal_or_an_unknown_reference_is_a_clear_error():
    head = _csf_head(1.0)
    with pytest.raises(InvalidInputError, match=r"flair.*median in the CSF.*nulls CSF"):
        ScaleByCsfd(["flair"])(head)
    with pytest.raises(ValueError, match="intensity_reference must be one of"):
        intensity_normalisation("ventricles")


def test_a_missing_mask_is_extracted_from_the_t1w_or_a_clear_error(subject, full_study):
    """No mask: the brain is extracted from the T1w (tests/test_brain_mask.py measures its Dice); the hand-built head
    (ellipsoids, 4 cm across) is no brain the MNI template can be fitted to, which is said naming the file."""
    entry = load_datalist(full_study, "testing")[0]
    given = build_volume_dataset([entry], with_labels=False, with_reference=False)[0]
    extracted = build_volume_dataset([{k: v for k, v in entry.items() if k != "mask"}], with_labels=False)[0]
    assert extracted["mask"].meta["filename_or_obj"].startswith("brain mask estimated from")
    given_mask, extracted_mask = (convert_to_numpy(v["mask"][0]) > 0 for v in (given, extracted))
    assert given_mask.shape != extracted_mask.shape or not np.array_equal(given_mask, extracted_mask)
    assert abs(int(extracted_mask.sum()) - int(given_mask.sum())) < 0.1 * given_mask.sum()
    del subject["mask"]
    with pytest.raises(InvalidInputError, match="brain extraction failed") as error:
        build_volume_dataset([subject])
    assert subject["t1w"] in str(error.value)


# ---------------------------------------------------------------- failed label fits


def test_fit_failures_are_marked_nan_on_the_label_grid():
    """NaN/Inf, negative, absurd and one-map zeros fail every map of the voxel; all-zero background stays 0."""
    t1 = torch.tensor([[[[800.0, np.nan, 900.0, -5.0, 4e4, 0.0, 0.0, 1000.0]]]])
    t2 = torch.tensor([[[[80.0, 70.0, np.inf, 60.0, 50.0, 0.0, 0.0, 90.0]]]])
    m0 = torch.tensor([[[[0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.0, 0.8]]]])
    marked = MarkFitFailuresd(LABEL_KEYS)(dict(zip(LABEL_KEYS, (t1, t2, m0))))
    expected_failed = np.array([0, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    for key, original in zip(LABEL_KEYS, (t1, t2, m0)):
        value = marked[key].numpy().ravel()
        np.testing.assert_array_equal(np.isnan(value), expected_failed)
        np.testing.assert_array_equal(value[~expected_failed], original.numpy().ravel()[~expected_failed])


def test_failed_label_voxels_are_left_out_and_the_others_unchanged(subject):
    """Failed fits on the 3.5 mm grid become ``label_failed`` over their interpolation footprint on the 1 mm grid."""
    clean = build_volume_dataset([subject], crop_margin=None)[0]
    label_image = nib.load(subject["t1_map"])
    damaged = label_image.get_fdata(dtype=np.float32).copy()
    centre = np.array(damaged.shape) // 2
    bad_voxels = np.array([centre, centre + [5, 0, 1], centre + [-6, 3, 0], [0, 0, 0]])
    for voxel, value in zip(bad_voxels, (np.nan, 0.0, 1e7, np.inf)):  # in the brain: NaN, a fit returning 0 where
        damaged[tuple(voxel)] = value  # M0 > 0, an absurd value; in the background: Inf
    nib.save(nib.Nifti1Image(damaged, label_image.affine), subject["t1_map"])
    volume = build_volume_dataset([subject], crop_margin=None)[0]
    failed = volume["label_failed"][0].numpy() > 0
    # every failed 1 mm voxel interpolates from a damaged label voxel (weight 0 included: 0 * NaN is NaN): within one
    # label voxel of it along each axis
    # (or beyond the outermost slab centre, where the border value is repeated)
    bad_world = nib.affines.apply_affine(label_image.affine, bad_voxels)
    failed_world = nib.affines.apply_affine(nib.load(subject["t1w"]).affine, np.argwhere(failed))
    distance = np.abs(failed_world[:, None] - bad_world[None]) / np.array([1.0, 1.0, SLAB_MM])
    beyond = failed_world[:, 2] < label_image.affine[2, 3]
    assert failed.sum() >= 3 * 4 * 2 and ((distance <= 1.0 + 1e-6).all(axis=2).any(axis=1) | beyond).all()
    assert (volume["label"][:, failed] == 0).all()
    torch.testing.assert_close(volume["label"][:, ~failed], clean["label"][:, ~failed])
    torch.testing.assert_close(volume["image"], clean["image"])


def test_supervised_term_leaves_failed_pixels_out():
    """The L1 term is the mean over the pixels without a failed fit (numpy), whatever the labels hold there."""
    generator = torch.Generator().manual_seed(0)
    pred, label = torch.rand(2, 3, 8, 8, generator=generator), torch.rand(2, 3, 8, 8, generator=generator)
    failed = (torch.rand(2, 1, 8, 8, generator=generator) > 0.7).float()
    loss = HybridLoss(lambda_self=0.0)
    value = loss(pred, {"label": label, "label_failed": failed})
    kept = np.broadcast_to(failed.numpy() == 0, pred.shape)
    np.testing.assert_allclose(float(value), np.abs(pred.numpy() - label.numpy())[kept].mean(), rtol=1e-6)
    scrambled = torch.where(failed.bool(), torch.full_like(label, 1e3), label)
    assert float(loss(pred, {"label": scrambled, "label_failed": failed})) == pytest.approx(float(value), rel=1e-6)
    assert float(loss(pred, {"label": scrambled})) > 100 * float(value)


# ---------------------------------------------------------------- field of view


def padded(axes=(0, 1), voxels: int = 40):
    """A function rewriting a NIfTI file with ``voxels`` zeros on both sides of ``axes``, world coordinates kept."""

    def pad(array: np.ndarray) -> np.ndarray:
        return np.pad(array, [(voxels, voxels) if axis in axes else (0, 0) for axis in range(array.ndim)])

    def move(affine: np.ndarray) -> np.ndarray:
        start = np.array([voxels if axis in axes else 0 for axis in range(3)])
        return shifted(affine, -affine[:3, :3] @ start)

    return edited(pad, move)


def test_padding_the_field_of_view_leaves_the_network_input_unchanged(subject):
    """The crop to the brain's box: a subject padded with 40 voxels of zeros on two axes gives the same volumes."""
    original = build_volume_dataset([subject])[0]
    for key in (*IMAGE_KEYS, *LABEL_KEYS, *REFERENCE_KEYS, "mask"):
        padded()(subject[key])
    assert nib.load(subject["t1w"]).shape == (SHAPE[0] + 80, SHAPE[1] + 80, SHAPE[2])
    larger = build_volume_dataset([subject])[0]
    for key in ("image", "label", "label_failed", "reference", "mask"):
        assert larger[key].shape == original[key].shape
        torch.testing.assert_close(larger[key].as_tensor(), original[key].as_tensor(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(larger[key].affine.numpy(), original[key].affine.numpy(), atol=1e-5)
    uncropped = build_volume_dataset([subject], crop_margin=None)[0]
    assert not torch.allclose(uncropped["image"].mean(), original["image"].mean())  # the background is what differs


# ---------------------------------------------------------------- slices


def test_slice_dataset_items_skip_empty_slices_and_load_each_volume_once(hand_study, monkeypatch):
    loaded = []
    load = LoadImage.__call__

    def counting_load(self, filename, *args, **kwargs):
        loaded.append(filename)
        return load(self, filename, *args, **kwargs)

    monkeypatch.setattr(LoadImage, "__call__", counting_load)
    keys, size = ["image", "label", "label_failed", "reference", "mask"], (64, 48)
    dataset = build_slice_dataset(
        hand_study,
        section="validation",
        slice_transforms=[ResizeWithPadOrCropd(keys, size), RandFlipd(keys, prob=0.5, spatial_axis=0)],
        min_brain_fraction=0.05,
        crop_margin=None,  # slice indices of the file's own grid
    )
    files = len(json.loads(hand_study.read_text())["validation"][0]) - 1  # every key but "subject"
    assert len(loaded) == files
    items = list(dataset)
    brain_fraction = nib.load(hand_study.parent / "sub-02" / "mask.nii.gz").get_fdata().mean(axis=(1, 2))
    assert [item["slice"] for item in items] == np.flatnonzero(brain_fraction >= 0.05).tolist()
    assert 0 < len(items) < SHAPE[0]
    for item in items:
        assert set(item) == {*keys, "subject", "slice"} and item["subject"] == "sub-02"
        assert item["image"].shape == item["label"].shape == item["reference"].shape == (3, *size)
        assert item["mask"].shape == (1, *size) and item["mask"].sum() > 0
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=list_data_collate)))
    assert batch["image"].shape == (4, 3, *size) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, *size)
    assert batch["subject"] == ["sub-02"] * 4 and batch["slice"].shape == (4,)
    assert len(loaded) == files  # serving slices never reloads a volume


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_neighbour_slices_are_the_volume_shifted_along_the_slice_axis_and_clamped_at_its_ends(axis):
    """Channel block j of the stacked volume is the volume at offset (0, -1, +1, -2, +2)[j] along ``axis`` (numpy's
    ``take`` of clipped indices); a dataset item is its slice, so training and inference see the same channels."""
    rng = np.random.default_rng(axis)
    image = torch.from_numpy(rng.random((3, 5, 6, 7), dtype=np.float32))
    stacked = stack_neighbour_slices(image, axis, context_slices=2)
    assert stacked.shape == (input_channels(2), 5, 6, 7) == (15, 5, 6, 7)
    n = image.shape[axis + 1]
    for block, offset in enumerate([0, -1, 1, -2, 2]):
        shifted = np.take(image.numpy(), np.clip(np.arange(n) + offset, 0, n - 1), axis=axis + 1)
        np.testing.assert_array_equal(stacked[3 * block : 3 * block + 3].numpy(), shifted)
    assert stack_neighbour_slices(image, axis) is image  # 2D slices: the volume itself
    batched = stack_neighbour_slices(image[None], axis, context_slices=2)
    np.testing.assert_array_equal(batched[0].numpy(), stacked.numpy())
    volume = {"image": image, "mask": torch.ones(1, 5, 6, 7), "subject": "s"}
    items = list(SliceDataset([volume], axis, min_brain_fraction=0.0, context_slices=2))
    assert [item["slice"] for item in items] == list(range(n))
    for item in items:
        np.testing.assert_array_equal(item["image"].numpy(), stacked.select(axis + 1, item["slice"]).numpy())
        assert item["mask"].shape == (1, *np.delete(image.shape[1:], axis))
    with pytest.raises(ValueError, match="context_slices must be 0"):
        input_channels(-1)


def test_streamed_volumes_equal_cached_ones_and_are_computed_when_read(tiny_study, monkeypatch):
    loads = []
    load = LoadImage.__call__
    monkeypatch.setattr(LoadImage, "__call__", lambda self, *a, **k: loads.append(1) or load(self, *a, **k))
    cached = build_volume_dataset(tiny_study, section="validation")
    files_per_subject = len(loads)
    streamed = build_volume_dataset(tiny_study, section="validation", cache_num=0)
    assert type(streamed).__name__ == "StreamingVolumeDataset" and len(loads) == files_per_subject  # nothing read yet
    volume = streamed[0]
    assert len(loads) == 2 * files_per_subject
    for key in ("image", "label", "reference", "mask"):
        assert torch.equal(torch.as_tensor(volume[key]), torch.as_tensor(cached[0][key])), key
    streamed[0]
    assert len(loads) == 3 * files_per_subject  # not kept: computed again


def test_smart_cache_trains_on_every_subject_over_epochs_with_a_fixed_epoch_length(tiny_study):
    """3 subjects, 2 in memory, one swapped per epoch: each epoch serves the slices of the 2 cached subjects only,
    the number of items (the engine's epoch length) stays the same, and over 3 epochs every subject is seen."""
    entries = [
        entry for section in ("training", "validation", "testing") for entry in load_datalist(tiny_study, section)
    ]
    slices = build_slice_dataset(entries, cache_num=2, replace_rate=0.5, with_reference=False, min_brain_fraction=0.1)
    assert isinstance(slices.volumes, SmartCacheDataset) and len(slices.volumes) == 2
    length, seen = len(slices), []
    engine = Engine(lambda engine, batch: None)

    @engine.on(Events.EPOCH_STARTED)
    def record(_):
        seen.append({item["subject"] for item in slices})
        assert len(slices) == length

    SmartSliceCacheHandler(slices).attach(engine)
    engine.run(range(2), max_epochs=3)
    assert all(len(subjects) == 2 for subjects in seen) and len(set.union(*seen)) == 3
    assert seen[0] != seen[1]
    with pytest.raises(ValueError, match="cache_num"):
        build_volume_dataset(entries, cache_num=-2)


def test_phantom_training_slices_have_the_documented_keys(tiny_study):
    entry = load_datalist(tiny_study, "training")[0]
    dataset = build_slice_dataset(tiny_study, section="training", min_brain_fraction=0.1, with_reference=False)
    _, shape = brain_box(entry["mask"])
    batch = next(iter(DataLoader(dataset, batch_size=2, collate_fn=list_data_collate)))
    assert set(batch) == {"image", "label", "label_failed", "mask", "subject", "slice"}
    assert batch["image"].shape == batch["label"].shape == (2, 3, *shape[1:])
    assert batch["mask"].shape == batch["label_failed"].shape == (2, 1, *shape[1:])
    assert batch["subject"] == [entry["subject"]] * 2
    assert len(dataset) <= shape[0] * len(json.loads(tiny_study.read_text())["training"])


def test_oracle_labels_are_the_1mm_maps(tiny_study):
    """``label_keys=REFERENCE_KEYS`` (the oracle of the paper experiment) trains on the 1 mm maps, same pipeline."""
    default = build_volume_dataset(tiny_study, section="training", with_reference=True)[0]
    oracle = build_volume_dataset(tiny_study, section="training", with_reference=False, label_keys=REFERENCE_KEYS)[0]
    assert set(oracle) == {"image", "label", "label_failed", "mask", "subject"}
    torch.testing.assert_close(oracle["label"], default["reference"])
    torch.testing.assert_close(oracle["image"], default["image"])
    assert not torch.allclose(default["label"], default["reference"])  # the 3.5 mm labels differ from the truth


def test_constant_problem_looks_at_finite_voxels_only():
    image = torch.full((1, 4, 5, 6), 3.0)
    assert constant_problem(image) == "is constant (every voxel = 3): an empty or failed acquisition"
    image[0, 0, 0, 0] = float("nan")
    assert "every voxel = 3" in constant_problem(image)
    image[0, 1, 1, 1] = 2.0
    assert constant_problem(image) is None
    assert constant_problem(torch.full((1, 2, 2, 2), float("inf"))) is None  # nothing finite: volume_problem's case
