"""Quality control without ground truth: each check against a direct computation, then the flags on the phantom."""

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from pipeline import physics
from pipeline.phantom import generate_study
from pipeline.phantom.changes import write_tissue_changes
from pipeline.phantom.labels import acquire_low_resolution_maps, slab_affine
from pipeline.qc import QCCalibration, calibrate_directory
from pipeline.qc.__main__ import main as qc_main
from pipeline.qc.consistency import fitted_scale, residual_summary, self_consistency
from pipeline.qc.label_check import degrade_to_label_grid, label_resolution_mpe
from pipeline.qc.plausibility import (
    PUBLISHED_RANGES_3T,
    plausibility_flags,
    tissue_medians,
)
from pipeline.qc.tissues import TISSUE_CLASSES, segment_tissues

SHAPE = (12, 14, 10)
TISSUES_MS = {1: (4000.0, 2000.0, 1.0), 2: (1331.0, 110.0, 0.82), 3: (832.0, 79.2, 0.69)}
"""Class label -> (T1 ms, T2 ms, M0) of the synthetic subject (the phantom's nominal 3 T values)."""


def _subject(seed=0):
    """Maps (3, X, Y, Z) of a blocky three-tissue subject with a smooth texture, its classes and mask."""
    rng = np.random.default_rng(seed)
    tissues = rng.integers(1, 4, size=SHAPE)
    tissues = np.repeat(np.repeat(tissues[::2, ::2], 2, axis=0), 2, axis=1)[: SHAPE[0], : SHAPE[1]]
    table = np.array([(0.0, 0.0, 0.0), *TISSUES_MS.values()], dtype=np.float32)  # row = class label
    maps = np.moveaxis(table[tissues], -1, 0)
    maps *= 1 + 0.03 * gaussian_filter(rng.standard_normal(SHAPE), 2)[None]
    return maps, tissues.astype(np.uint8), np.ones(SHAPE, dtype=np.float32)


def _images(maps, gain_per_slice):
    """T1w, T2w (EPG TSE), FLAIR images of ``maps`` through the physics, scaled by a different gain per axial slice."""
    images = [
        physics.synthesize(c, *(torch.as_tensor(m) for m in maps)).numpy() for c in ("mprage", "tse_epg", "flair")
    ]
    return np.stack(images) * gain_per_slice[None, None, None, :]


def test_segment_tissues_orders_classes_by_t1w_intensity():
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 4, size=(20, 20, 5))
    t1w = np.choose(truth - 1, [200.0, 600.0, 1000.0]) + 40 * rng.standard_normal(truth.shape)
    mask = np.ones(truth.shape)
    mask[0] = 0
    labels = segment_tissues(t1w, mask)
    assert (labels[0] == 0).all()
    assert (labels[1:] == truth[1:]).mean() > 0.99
    with pytest.raises(ValueError, match="non-empty brain mask"):
        segment_tissues(t1w, np.zeros(truth.shape))


def test_fitted_scale_is_the_least_squares_factor_of_each_axial_slice():
    rng = np.random.default_rng(2)
    synthetic, acquired = rng.random(SHAPE) + 0.1, rng.random(SHAPE)
    mask = (rng.random(SHAPE) > 0.3).astype(np.float32)
    scale = fitted_scale(synthetic, acquired, mask)
    for z in range(SHAPE[2]):
        s, a, m = synthetic[..., z], acquired[..., z], mask[..., z] > 0
        np.testing.assert_allclose(scale[..., z], (s[m] * a[m]).sum() / (s[m] ** 2).sum(), rtol=1e-5)


def test_exact_maps_re_synthesise_their_images_whatever_the_gain_of_each_slice():
    maps, tissues, mask = _subject()
    images = _images(maps, gain_per_slice=np.linspace(0.5, 2.0, SHAPE[2]))
    residuals, volumes = self_consistency(maps, images, mask, tissues, smoothing_sigma=0.0)
    for contrast in ("mprage", "tse_epg"):
        assert residuals[contrast]["residual"] < 1e-5
        assert max(abs(b) for b in residuals[contrast]["bias"].values()) < 1e-5
        np.testing.assert_allclose(volumes[f"synthetic_{contrast}"], volumes[f"acquired_{contrast}"], rtol=1e-4)


def test_a_global_t2_error_biases_the_tse_tissues_in_opposite_directions():
    maps, tissues, mask = _subject()
    images = _images(maps, np.ones(SHAPE[2]))
    wrong = maps * np.array([1.0, 1.2, 1.0], dtype=np.float32)[:, None, None, None]
    residuals, _ = self_consistency(wrong, images, mask, tissues, smoothing_sigma=0.0)
    bias = residuals["tse_epg"]["bias"]
    assert bias["csf"] < -0.05 and bias["white_matter"] > 0.02  # CSF darker, white matter brighter than acquired
    assert residuals["mprage"]["residual"] < 1e-5  # T1 and M0 are right: the MPRAGE still agrees


def test_residual_summary_is_the_normalised_mean_and_class_medians():
    rng = np.random.default_rng(3)
    residual, acquired = rng.standard_normal(SHAPE), rng.random(SHAPE) + 1
    tissues = rng.integers(0, 4, size=SHAPE)
    mask = tissues > 0
    summary = residual_summary(residual, acquired, mask, tissues)
    assert summary["residual"] == pytest.approx(np.abs(residual[mask]).mean() / acquired[mask].mean())
    for label, name in TISSUE_CLASSES.items():
        assert summary["bias"][name] == pytest.approx(np.median(residual[tissues == label]) / np.median(acquired[mask]))


def test_tissue_medians_and_plausibility_flags():
    maps, tissues, _ = _subject()
    medians = tissue_medians(maps, tissues)
    for label, name in TISSUE_CLASSES.items():
        assert medians["t2"][name] == pytest.approx(np.median(maps[1][tissues == label]))
    assert plausibility_flags(medians) == []  # nominal 3 T tissue values are plausible
    long_t2 = tissue_medians(maps * np.array([1.0, 1.45, 1.0])[:, None, None, None], tissues)
    flagged = {(flag["map"], flag["tissue"]) for flag in plausibility_flags(long_t2)}
    assert flagged == {("t2", "white_matter"), ("t2", "grey_matter")}  # 115 and 160 ms
    medians["t1"]["csf"] = float("nan")
    assert [flag["tissue"] for flag in plausibility_flags(medians, PUBLISHED_RANGES_3T)] == ["csf"]


def test_label_resolution_check_degrades_like_the_phantoms_slab_labels():
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in (8, 9, 28)), indexing="ij")
    maps = np.stack([900 + 20 * z + 5 * x, 70 + 2 * z + y, 0.6 + 0.01 * z]).astype(np.float32)
    affine = np.array([[0, 0, 1.0, -4], [1.0, 0, 0, 2], [0, 1.0, 0, 7], [0, 0, 0, 1]])  # not axis-aligned with RAS
    labels = np.stack(acquire_low_resolution_maps(*maps, axis=2, thickness_voxels=3.5)[:2])
    label_affine = slab_affine(affine, 2, 3.5)
    inner = (slice(1, -1),) * 3
    mask = np.zeros(maps.shape[1:])
    mask[inner] = 1  # the border slabs are partly outside the brain
    exact = label_resolution_mpe(maps, np.ones(maps.shape[1:]), affine, labels, label_affine)
    assert exact["t1_mpe_percent"] < 0.5 and exact["t2_mpe_percent"] < 0.5  # footprint sampling and border slabs
    biased = label_resolution_mpe(
        maps * np.array([1.1, 0.8, 1])[:, None, None, None], mask, affine, labels, label_affine
    )
    assert biased["t1_mpe_percent"] == pytest.approx(10.0, abs=0.2)
    assert biased["t2_mpe_percent"] == pytest.approx(20.0, abs=0.2)
    assert 0 < biased["compared_voxels"] < exact["compared_voxels"]
    failed = labels.copy()
    failed[0, 1, 1, 1], failed[1, 2, 2, 2], failed[0, 3, 3, 3] = np.nan, 0.0, np.inf  # failed fits of the qMRI
    left_out = label_resolution_mpe(
        maps * np.array([1.1, 0.8, 1])[:, None, None, None], mask, affine, failed, label_affine
    )
    assert left_out["compared_voxels"] == biased["compared_voxels"] - 3
    assert left_out["t1_mpe_percent"] == pytest.approx(biased["t1_mpe_percent"], abs=0.2)


@pytest.mark.parametrize(
    "linear, shift",
    [
        (np.diag([1.0, 1.0, 3.5]), [0.0, 0.0, 1.2]),  # slabs along the last axis
        (np.array([[0, -1.0, 0], [3.5, 0, 0], [0, 0, 1.0]]), [8.0, -2.3, 0.4]),  # permuted, flipped, past the edges
    ],
)
def test_label_degradation_one_axis_at_a_time_equals_point_sampling(linear, shift):
    """On an axis-aligned label grid the separable footprint means equal map_coordinates' point sampling (edges, where
    footprints leave the maps' grid, included); an oblique grid takes the point-sampling path."""
    rng = np.random.default_rng(3)
    maps = np.stack(
        [rng.uniform(600, 2000, (9, 10, 14)), rng.uniform(40, 200, (9, 10, 14)), rng.uniform(0.5, 1, (9, 10, 14))]
    )
    mask = rng.uniform(size=maps.shape[1:]) > 0.2
    maps_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    maps_affine[:3, 3] = [-4, 2, 7]
    label_affine = np.eye(4)
    label_affine[:3, :3], label_affine[:3, 3] = linear, maps_affine[:3, 3] + shift
    label_shape = tuple(int(n) for n in np.ceil(np.abs(np.linalg.inv(linear)) @ maps.shape[1:]) + 1)
    fast = degrade_to_label_grid(maps, mask, maps_affine, label_affine, label_shape)
    slow = degrade_to_label_grid(maps, mask, maps_affine, label_affine, label_shape, point_sampling=True)
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (fast[1] > 0).mean() > 0.5 and (fast[1] == 0).any()  # mostly inside, some footprints wholly outside
    oblique = label_affine.copy()
    oblique[:3, :3] = linear @ np.array([[np.cos(0.1), -np.sin(0.1), 0], [np.sin(0.1), np.cos(0.1), 0], [0, 0, 1]])
    rotated = degrade_to_label_grid(maps, mask, maps_affine, oblique, label_shape)
    np.testing.assert_array_equal(
        rotated[0], degrade_to_label_grid(maps, mask, maps_affine, oblique, label_shape, point_sampling=True)[0]
    )


def _report(subject, residual, csf_bias, t2_mpe=5.0):
    return {
        "subject": subject,
        "self_consistency": {"tse_epg": {"residual": residual, "bias": {"csf": csf_bias, "white_matter": 0.0}}},
        "label_resolution": {"t1_mpe_percent": 4.0, "t2_mpe_percent": t2_mpe},
    }


def test_calibration_rules_and_two_sided_bias_flags(tmp_path):
    reports = [_report("a", 0.04, 0.10), _report("b", 0.06, 0.02, t2_mpe=6.0)]
    calibration = QCCalibration.from_reports(reports, margin=1.5, min_tolerance=0.01, min_residual=0.0)
    limits = calibration.thresholds["tse_epg"]
    assert limits["residual"] == pytest.approx(1.5 * 0.06)
    assert limits["bias"]["csf"] == pytest.approx({"centre": 0.06, "tolerance": 1.5 * 0.04})
    assert limits["bias"]["white_matter"] == pytest.approx({"centre": 0.0, "tolerance": 0.01})  # the floor
    assert calibration.label_thresholds == pytest.approx({"t1_mpe_percent": 6.0, "t2_mpe_percent": 9.0})
    assert calibration.flags(reports[0]["self_consistency"], reports[0]["label_resolution"]) == []
    for csf_bias, flagged in ((0.06 + 0.059, False), (0.06 + 0.061, True), (0.06 - 0.061, True), (float("nan"), True)):
        flags = calibration.flags(_report("c", 0.05, csf_bias)["self_consistency"])
        assert bool(flags) == flagged, csf_bias
    label_flags = calibration.flags(reports[0]["self_consistency"], {"t1_mpe_percent": 4.0, "t2_mpe_percent": 9.5})
    assert [flag["check"] for flag in label_flags] == ["label_resolution"]
    path = calibration.save(tmp_path / "qc_calibration.json")
    assert QCCalibration.load(path) == calibration
    with pytest.raises(FileExistsError, match="overwrite"):
        calibration.save(path)
    with pytest.raises(FileNotFoundError, match="calibrating"):
        QCCalibration.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="different contrasts"):
        QCCalibration.from_reports([reports[0], {**reports[1], "self_consistency": {}}])


def test_calibration_floors_stand_for_what_one_subjects_model_maps_cannot_show():
    """A model's maps fit their images more closely than exact maps: the floors keep exact maps unflagged."""
    model = _report("val", 0.007, -0.02)  # bundle 0.12.0's maps of the validation subject, roughly
    model["self_consistency"]["tse_epg"]["bias"]["grey_matter"] = 0.006
    model["self_consistency"]["tse_epg"]["grey_white"] = -0.006
    calibration = QCCalibration.from_reports([model])
    limits = calibration.thresholds["tse_epg"]
    assert limits["residual"] == pytest.approx(0.06)  # max(2 x 0.007, the floor)
    assert limits["bias"]["csf"] == pytest.approx({"centre": -0.02, "tolerance": 0.15})
    assert limits["bias"]["grey_matter"]["tolerance"] == pytest.approx(0.06)
    assert limits["grey_white"] == pytest.approx({"centre": -0.006, "tolerance": 0.06})
    exact = {"residual": 0.048, "bias": {"csf": 0.085, "grey_matter": -0.013, "white_matter": -0.018}}
    assert calibration.flags({"tse_epg": {**exact, "grey_white": -0.005}}) == []  # sub-04's exact maps
    flags = calibration.flags({"tse_epg": {**exact, "grey_white": -0.148}})  # white matter T2 x 1.3, maps frozen
    assert [(flag["tissue"], "darker" in flag["message"]) for flag in flags] == [("grey_white", True)]
    one_floor = QCCalibration.from_reports([model], min_tolerance=0.01, min_residual=0.02)
    assert one_floor.thresholds["tse_epg"]["bias"]["csf"]["tolerance"] == pytest.approx(0.01)
    assert one_floor.thresholds["tse_epg"]["residual"] == pytest.approx(0.02)
    old = dict(
        dataclasses.asdict(calibration), thresholds={"tse_epg": {k: v for k, v in limits.items() if k != "grey_white"}}
    )
    assert QCCalibration(**old).flags({"tse_epg": {**exact, "grey_white": -0.148}}) == []  # written before grey_white
    with pytest.raises(ValueError, match="floors"):
        QCCalibration.from_reports([model], min_tolerance={"csf": -0.1})


# --- the flags on the phantom: exact maps of the tiny study as "predictions" (a trained model is not needed to test
# what the QC says about maps; docs/results/qc/ measures it with trained models)


def _maps_dir(study_dir, tmp_path, name="maps", t2_factor=1.0):
    """The exact 1 mm maps of every subject as a predictions folder (T2 times ``t2_factor``)."""
    out = tmp_path / name
    for subject_dir in sorted(study_dir.glob("sub-*")):
        (out / subject_dir.name).mkdir(parents=True)
        for stem in ("t1_map", "m0_map"):
            shutil.copy(subject_dir / f"{stem}.nii.gz", out / subject_dir.name)
        t2 = nib.load(subject_dir / "t2_map.nii.gz")
        nib.save(
            nib.Nifti1Image(t2.get_fdata(dtype=np.float32) * t2_factor, t2.affine),
            out / subject_dir.name / "t2_map.nii.gz",
        )
    return out


@pytest.fixture(scope="module")
def calibrated(tiny_study, tmp_path_factory):
    """The tiny study's exact maps and a calibration made on its validation subject."""
    root = tmp_path_factory.mktemp("qc")
    maps = _maps_dir(tiny_study.parent, root)
    calibration = root / "qc_calibration.json"
    assert qc_main(["calibrate", str(tiny_study), "--maps", str(maps), "--out", str(calibration)]) == 0
    return maps, calibration


def _check(manifest, maps, calibration, *extra):
    code = qc_main(["check", str(manifest), "--maps", str(maps), "--calibration", str(calibration), *extra])
    test_subject = json.loads(manifest.read_text())["testing"][0]["subject"]
    return code, json.loads((maps / test_subject / "qc.json").read_text())


def test_calibration_writes_thresholds_of_the_validation_subject(tiny_study, calibrated):
    maps, calibration = calibrated
    values = json.loads(calibration.read_text())
    validation = json.loads(tiny_study.read_text())["validation"][0]["subject"]
    assert values["subjects"] == [validation]
    assert set(values["thresholds"]) == {"mprage", "tse_epg"}
    assert (maps / validation / "report.html").is_file()


def test_correct_maps_are_not_flagged(tiny_study, calibrated, tmp_path):
    code, qc = _check(tiny_study, _maps_dir(tiny_study.parent, tmp_path), calibrated[1])
    assert code == 0 and not qc["flagged"], qc["flags"]
    assert qc["calibrated"] and qc["label_resolution"]["t2_mpe_percent"] < 15
    assert qc["metrics"]["t2_mpe_percent"] < 1e-3  # the exact maps against the references


def test_a_global_t2_error_is_flagged(tiny_study, calibrated, tmp_path):
    """T2 20 % too long everywhere: flagged by the plausibility and label checks; the TSE's figures move as a longer T2
    makes them (CSF darker, white matter brighter) but stay inside the floors that keep exact maps unflagged; at 40 %
    the TSE flags it too."""
    code, qc = _check(tiny_study, _maps_dir(tiny_study.parent, tmp_path, t2_factor=1.2), calibrated[1])
    assert code == 1 and {flag["check"] for flag in qc["flags"]} == {"plausibility", "label_resolution"}, qc["flags"]
    tse = qc["self_consistency"]["tse_epg"]["bias"]
    assert tse["csf"] < -0.03 and tse["white_matter"] > 0.03
    code, qc = _check(tiny_study, _maps_dir(tiny_study.parent, tmp_path, "maps_40", t2_factor=1.4), calibrated[1])
    consistency = {flag["contrast"] for flag in qc["flags"] if flag["check"] == "self_consistency"}
    assert code == 1 and consistency == {"tse_epg"}, qc["flags"]


def test_swapped_t1w_and_t2w_are_flagged(tiny_study, calibrated, tmp_path):
    manifest = json.loads(tiny_study.read_text())
    for entry in manifest["testing"]:
        entry["t1w"], entry["t2w"] = entry["t2w"], entry["t1w"]
    swapped = tiny_study.parent / "swapped.json"
    swapped.write_text(json.dumps(manifest))
    code, qc = _check(swapped, _maps_dir(tiny_study.parent, tmp_path), calibrated[1])
    assert code == 1
    checks = {flag["check"] for flag in qc["flags"]}
    assert checks == {"self_consistency", "plausibility"}, qc["flags"]
    assert {flag["contrast"] for flag in qc["flags"] if flag["check"] == "self_consistency"} == {"mprage", "tse_epg"}


@pytest.fixture(scope="module")
def long_te_study(tmp_path_factory):
    """The tiny study imaged with another site's TSE (TE 120 ms instead of 93, echo spacing 10 ms instead of 9.3)."""
    tse = {"te": 120.0, "echo_spacing": 10.0}
    return generate_study(
        tmp_path_factory.mktemp("long_te"), n_subjects=3, seed=7, sagittal_slices=16, protocols={"tse": tse}
    )


def test_another_te_is_flagged_unless_qc_is_given_the_protocol_in_force(long_te_study, calibrated, tmp_path):
    maps = _maps_dir(long_te_study.parent, tmp_path)
    code, qc = _check(long_te_study, maps, calibrated[1])
    assert code == 1 and {flag["contrast"] for flag in qc["flags"]} == {"tse_epg"}, qc["flags"]
    code, qc = _check(
        long_te_study,
        maps,
        calibrated[1],
        "--overwrite",
        "--protocol",
        "tse_epg.te=120",
        "--protocol",
        "tse_epg.echo_spacing=10",
    )
    assert code == 0, qc["flags"]
    assert qc["protocols"]["tse_epg"]["te"] == 120.0


def test_calibration_takes_only_the_named_validation_subjects(tmp_path):
    for subject, residual in (("sub-val", 0.05), ("sub-stale", 0.5)):  # sub-stale: left by an earlier calibration
        (tmp_path / subject).mkdir()
        (tmp_path / subject / "qc.json").write_text(json.dumps(_report(subject, residual, 0.0)))
    path = calibrate_directory(tmp_path, tmp_path / "qc_calibration.json", subjects=["sub-val"])
    values = json.loads(path.read_text())
    assert values["subjects"] == ["sub-val"] and values["thresholds"]["tse_epg"]["residual"] == pytest.approx(0.1)
    with pytest.raises(FileNotFoundError, match="sub-missing"):
        calibrate_directory(tmp_path, tmp_path / "other.json", subjects=["sub-val", "sub-missing"])


@pytest.fixture(scope="module")
def changed_tissues(tiny_study, tmp_path_factory):
    """The tiny study's test subject re-simulated with white matter's T2 x 1.3 and cortical grey matter's T1 x 1.3,
    and two predictions of every case: its own exact maps, and the unchanged subject's maps (maps that ignore the
    change)."""
    cases = {
        "reference": None,
        "white_matter-t2_ms-x1.3": {"white_matter": {"t2_ms": 1.3}},
        "cortical_grey_matter-t1_ms-x1.3": {"cortical_grey_matter": {"t1_ms": 1.3}},
    }
    generator = json.loads(tiny_study.read_text())["generator"]
    manifest = write_tissue_changes(generator, cases, tmp_path_factory.mktemp("changes"))
    root = tmp_path_factory.mktemp("changed_maps")
    for case in cases:
        for kind, source in (("exact", case), ("frozen", "reference")):
            (root / kind / case).mkdir(parents=True)
            for stem in ("t1_map", "t2_map", "m0_map"):
                shutil.copy(manifest.parent / source / f"{stem}.nii.gz", root / kind / case)
    return manifest, root


def _self_consistency_flags(manifest, maps, calibration):
    qc_main(["check", str(manifest), "--maps", str(maps), "--calibration", str(calibration)])
    reports = {path.parent.name: json.loads(path.read_text()) for path in maps.glob("*/qc.json")}
    return {
        case: {(flag["contrast"], flag["tissue"]) for flag in qc["flags"] if flag["check"] == "self_consistency"}
        for case, qc in reports.items()
    }


def test_maps_that_ignore_a_tissue_change_are_flagged_and_the_truth_is_not(changed_tissues, calibrated):
    manifest, root = changed_tissues
    exact = _self_consistency_flags(manifest, root / "exact", calibrated[1])
    assert exact == {case: set() for case in exact} and len(exact) == 3
    frozen = _self_consistency_flags(manifest, root / "frozen", calibrated[1])
    assert frozen["reference"] == set()
    assert ("tse_epg", "grey_white") in frozen["white_matter-t2_ms-x1.3"], frozen
    assert {contrast for contrast, _ in frozen["cortical_grey_matter-t1_ms-x1.3"]} == {"mprage"}, frozen
