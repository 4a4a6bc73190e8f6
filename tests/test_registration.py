"""Tests of pipeline.data.registration on a full-size phantom subject moved by known rigid transforms.

The moved images keep their voxels and get a new world geometry (affine ``B @ A``), so the exact answer is known
without interpolation: ITK's fixed → moving transform must equal ``B`` (in LPS). Errors are the largest displacement
between the recovered and the true transform over the brain's voxels, and the angle of the residual rotation.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.transforms import LoadImaged, Orientationd
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pipeline.data.coregistration import RAS_TO_LPS, to_sitk
from pipeline.data.register_to_reference import RegisterToReferenced
from pipeline.data.registration import (
    array_xyz,
    fixed_to_moving_ras,
    register_rigid,
    resample_onto,
    rotation_angle_deg,
    write_transform,
)

KEYS = ("t1w", "t2w", "t1_map", "t2_map", "m0_map", "mask")
BRAIN_CENTRE_RAS_MM = np.array([0.0, -18.0, 10.0])
"""Rotations turn about this RAS point (near the phantom brain's centre), as a head turns in the coil."""
MOVES = {
    # key: (rotation axis, degrees, RAS translation mm)
    "t2w": ("x", 4.0, (3.0, -2.0, 4.0)),  # nodding: tilts the T2w against the T1w
    "t1_map": ("y", -4.0, (-3.0, 2.0, -4.0)),  # rolling: tilts the 3.5 mm slabs of the label maps
}
MAX_ERROR_MM = 0.5
MAX_ERROR_DEG = 0.5


def rigid_ras(axis: str, degrees: float, translation_mm) -> np.ndarray:
    """4x4 RAS rigid transform: rotation about ``axis`` through :data:`BRAIN_CENTRE_RAS_MM`, then a translation."""
    rotation = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = BRAIN_CENTRE_RAS_MM - rotation @ BRAIN_CENTRE_RAS_MM + np.asarray(translation_mm)
    return matrix


def moved(image, matrix_ras: np.ndarray):
    """``image`` with its world geometry moved by ``matrix_ras`` (voxels unchanged): ``moved(B x) = image(x)``."""
    result = image.clone()
    result.affine = torch.as_tensor(matrix_ras @ np.asarray(image.affine), dtype=torch.float64)
    return result


def to_lps(matrix_ras: np.ndarray) -> np.ndarray:
    """A 4x4 RAS transform expressed in LPS (ITK) coordinates."""
    flip = np.eye(4)
    flip[:3, :3] = RAS_TO_LPS
    return flip @ matrix_ras @ flip


def transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 LPS matrix of an ITK transform, from where it sends the origin and the unit vectors."""
    points = np.vstack([np.zeros(3), np.eye(3)])
    images = np.array([transform.TransformPoint(point.tolist()) for point in points])
    matrix = np.eye(4)
    matrix[:3, 3] = images[0]
    matrix[:3, :3] = (images[1:] - images[0]).T
    return matrix


def errors(transform: sitk.Transform, true_ras: np.ndarray, brain_points_lps: np.ndarray) -> tuple[float, float]:
    """(largest displacement error over the brain in mm, residual rotation in degrees) of ``transform`` vs the truth."""
    estimate, truth = transform_matrix(transform), to_lps(true_ras)
    difference = brain_points_lps @ (estimate[:3, :3] - truth[:3, :3]).T + (estimate[:3, 3] - truth[:3, 3])
    residual = estimate[:3, :3].T @ truth[:3, :3]
    return float(np.linalg.norm(difference, axis=1).max()), rotation_angle_deg(residual)


@pytest.fixture(scope="module")
def subject(full_subject) -> dict:
    """The loaded subject (channel-first RAS MetaTensors, as after the pipeline's loading and ``Orientationd``)."""
    entry = {"subject": full_subject["subject"], **{key: full_subject[key] for key in KEYS}}
    loading = LoadImaged(KEYS, image_only=True, ensure_channel_first=True, dtype=np.float32)
    return Orientationd(KEYS, axcodes="RAS", labels=None)(loading(entry))


@pytest.fixture(scope="module")
def brain_points_lps(subject) -> np.ndarray:
    """(N, 3) LPS positions (mm) of the brain voxels (every 2nd along each axis: the maximum is on the surface)."""
    mask = subject["mask"][0].numpy()[::2, ::2, ::2] > 0
    indices = np.argwhere(mask) * 2
    affine = np.asarray(subject["mask"].affine)
    return (indices @ affine[:3, :3].T + affine[:3, 3]) @ RAS_TO_LPS.T


@pytest.fixture(scope="module")
def registered(subject, tmp_path_factory) -> dict:
    """``RegisterToReferenced`` of the moved T2w and T1 map (with T2/M0 maps as its group) to the T1w.

    A 3 x 3 x 3 block of the T2 map is NaN (a fit failure). Returns the input, output and the transform folder.
    """
    data = {"subject": subject["subject"], "t1w": subject["t1w"]}
    data["t2w"] = moved(subject["t2w"], rigid_ras(*MOVES["t2w"]))
    for key in ("t1_map", "t2_map", "m0_map"):
        data[key] = moved(subject[key], rigid_ras(*MOVES["t1_map"]))
    t2_map = data["t2_map"].clone()
    t2_map[0, 80:83, 100:103, 24:27] = float("nan")
    data["t2_map"] = t2_map
    transform_dir = tmp_path_factory.mktemp("transforms")
    transform = RegisterToReferenced(
        ["t2w", "t1_map"], reference_key="t1w", groups={"t1_map": ["t2_map", "m0_map"]}, transform_dir=transform_dir
    )
    return {"input": data, "output": transform(data), "transform_dir": transform_dir, "transform": transform}


@pytest.mark.parametrize("key", sorted(MOVES))
def test_recovers_known_rigid_transforms(registered, brain_points_lps, key):
    """T2w (contrast differs from the T1w) and the 1 x 1 x 3.5 mm T1 map: <= 0.5 mm over the brain, <= 0.5°."""
    record = registered["output"]["registration"][key]
    path = registered["transform_dir"] / "sub-01" / f"{key}_to_t1w.tfm"
    transform = sitk.ReadTransform(str(path))
    error_mm, error_deg = errors(transform, rigid_ras(*MOVES[key]), brain_points_lps)
    assert error_mm <= MAX_ERROR_MM, f"{key}: {error_mm:.3f} mm"
    assert error_deg <= MAX_ERROR_DEG, f"{key}: {error_deg:.3f}°"
    # the record describes the same transform: its RAS matrix, angle and sizes
    _, degrees, _ = MOVES[key]
    assert record["rotation_deg"] == pytest.approx(abs(degrees), abs=MAX_ERROR_DEG)
    recorded_lps = to_lps(np.array(record["fixed_to_moving_ras"]))
    np.testing.assert_allclose(recorded_lps, transform_matrix(transform), atol=1e-6)
    true_lps = to_lps(rigid_ras(*MOVES[key]))
    true_displacement = np.linalg.norm(brain_points_lps @ (true_lps[:3, :3] - np.eye(3)).T + true_lps[:3, 3], axis=1)
    assert record["max_displacement_mm"] >= true_displacement.max() - MAX_ERROR_MM  # box corners >= brain voxels
    json.dumps(registered["output"]["registration"])  # JSON-serialisable


def test_output_lies_on_the_reference_grid(registered):
    reference = registered["output"]["t1w"]
    for key in ("t2w", "t1_map", "t2_map", "m0_map"):
        output = registered["output"][key]
        assert output.shape == reference.shape, key
        assert output.dtype == torch.float32
        np.testing.assert_array_equal(np.asarray(output.affine), np.asarray(reference.affine))
        assert output.meta["filename_or_obj"] == registered["input"][key].meta["filename_or_obj"]
    assert registered["output"]["registration"]["t1_map"]["moved_keys"] == ["t1_map", "t2_map", "m0_map"]


def test_registered_images_match_the_unmoved_ones(subject, registered):
    """After registration the moved images lie where the originals lie (identity resampling onto the T1w grid)."""
    reference = to_sitk(subject["t1w"])
    brain = ndimage.binary_erosion(subject["mask"][0].numpy() > 0, iterations=3)  # away from the surface
    for key in ("t2w", "m0_map"):
        original = array_xyz(resample_onto(to_sitk(subject[key]), reference))
        realigned = registered["output"][key][0].numpy()
        misaligned = array_xyz(resample_onto(to_sitk(registered["input"][key]), reference))
        residual = np.median(np.abs(realigned - original)[brain])
        before = np.median(np.abs(misaligned - original)[brain])
        assert residual < 0.25 * before, f"{key}: {residual:.4g} vs {before:.4g} before registration"


def test_group_keys_move_with_their_key_and_nan_spreads(registered):
    """The T2 and M0 maps get the T1 map's transform (its .tfm, re-read); a NaN block stays NaN, nothing else is."""
    reference = to_sitk(registered["input"]["t1w"])
    transform = sitk.ReadTransform(str(registered["transform_dir"] / "sub-01" / "t1_map_to_t1w.tfm"))
    for key in ("m0_map", "t2_map"):
        expected = array_xyz(resample_onto(to_sitk(registered["input"][key]), reference, transform))
        np.testing.assert_allclose(registered["output"][key][0].numpy(), expected, rtol=1e-5, atol=1e-3, err_msg=key)
    # NaN covers every output voxel interpolated from a NaN voxel (the weight of an indicator of the NaN block > 0),
    # at most one voxel more (ITK multiplies NaN by an exact 0 weight), and nothing else
    indicator = np.isnan(registered["input"]["t2_map"].numpy()).astype(np.float32)
    indicator = registered["input"]["t2_map"].clone().copy_(torch.from_numpy(indicator))
    touched = array_xyz(resample_onto(to_sitk(indicator), reference, transform)) > 0
    nan = np.isnan(registered["output"]["t2_map"][0].numpy())
    assert touched.sum() >= 27 and np.all(nan[touched])
    assert not np.any(nan & ~ndimage.binary_dilation(touched))
    assert np.isfinite(registered["output"]["m0_map"][0].numpy()).all()


def test_transform_files_are_written_and_not_overwritten(registered):
    path = registered["transform_dir"] / "sub-01" / "t2w_to_t1w.tfm"
    content = path.read_bytes()
    record = registered["output"]["registration"]["t2w"]
    assert record["transform_file"] == str(path)
    read = sitk.ReadTransform(str(path))
    np.testing.assert_allclose(to_lps(np.array(record["fixed_to_moving_ras"])), transform_matrix(read), atol=1e-6)
    written = sorted(p.name for p in path.parent.iterdir())
    assert written == ["registration.json", "t1_map_to_t1w.tfm", "t2w_to_t1w.tfm"]  # no temporary file left
    assert json.loads((path.parent / "registration.json").read_text()) == registered["output"]["registration"]
    with pytest.raises(FileExistsError, match=r"sub-01: t2w file .*t2w_to_t1w\.tfm' exists"):
        registered["transform"](registered["input"])
    assert path.read_bytes() == content
    with pytest.raises(FileExistsError):
        write_transform(sitk.Euler3DTransform(), path)
    assert path.read_bytes() == content


def test_write_transform_overwrite_and_suffix(tmp_path):
    transform = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.05, (4.0, 5.0, 6.0))
    path = write_transform(transform, tmp_path / "a" / "x.tfm")
    other = sitk.Euler3DTransform()
    write_transform(other, path, overwrite=True)
    assert np.allclose(sitk.ReadTransform(str(path)).TransformPoint((1.0, 1.0, 1.0)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="end in .tfm"):
        write_transform(transform, tmp_path / "x.txt")
    assert [p.name for p in path.parent.iterdir()] == ["x.tfm"]


def test_fixed_to_moving_ras_convention():
    """An ITK (LPS) Euler transform and its RAS matrix move the same physical point to the same place."""
    transform = sitk.Euler3DTransform((10.0, -20.0, 5.0), 0.1, -0.05, 0.2, (1.0, 2.0, 3.0))
    point_ras = np.array([12.0, -7.0, 30.0])
    moved_lps = np.array(transform.TransformPoint((RAS_TO_LPS @ point_ras).tolist()))
    moved_ras = fixed_to_moving_ras(transform) @ np.append(point_ras, 1.0)
    np.testing.assert_allclose(moved_ras[:3], RAS_TO_LPS @ moved_lps, atol=1e-9)


def test_register_rigid_is_deterministic(subject):
    """Same seed, same transform up to float rounding (SimpleITK would seed the sampler from the clock for seed 0)."""
    fixed = sitk.Shrink(to_sitk(subject["t1w"]), [2, 2, 2])
    moving = sitk.Shrink(to_sitk(moved(subject["t2w"], rigid_ras("z", 3.0, (2.0, 1.0, -1.0)))), [2, 2, 2])
    options = {"shrink_factors": (2,), "smoothing_sigmas_mm": (2.0,), "fixed_mask": None}
    first, second = (register_rigid(fixed, moving, seed=5, **options) for _ in range(2))
    np.testing.assert_allclose(first.transform.GetParameters(), second.transform.GetParameters(), rtol=1e-9, atol=1e-12)
    assert first.metric == pytest.approx(second.metric, rel=1e-9)


def test_missing_keys_and_bad_groups(subject):
    data = {"subject": "sub-01", "t1w": subject["t1w"]}
    result = RegisterToReferenced(["flair"], allow_missing_keys=True)(data)
    assert result["registration"] == {} and result["t1w"] is subject["t1w"]
    with pytest.raises(ValueError, match="neither registered"):
        RegisterToReferenced(["t2w", "t1_map"], groups={"t1_map": ["t2w"]})
    with pytest.raises(ValueError, match="not registered"):
        RegisterToReferenced(["t2w"], groups={"t1_map": ["t2_map"]})
