"""Evaluation reports on small synthetic subjects: per-slice metrics, tables, t-tests, Figure 2."""

import json
import re
import shutil

import matplotlib.image
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import ttest_rel
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.physics import MAP_UNIT_MS
from pipeline.reports import (
    evaluate_predictions,
    load_test_subjects,
    per_slice_metrics,
    summary_table,
)

SHAPE = (8, 40, 32)
# the first array axis runs right to left (LAS storage): reading in RAS reverses it.
AFFINE = np.array([[-1.0, 0, 0, 10.0], [0, 1.0, 0, -20.0], [0, 0, 1.0, -15.0], [0, 0, 0, 1]])
MIN_BRAIN_FRACTION = 0.1
METRICS = ["MPE", "HFEN", "PSNR", "SSIM", "MPE_parenchyma", "MAE_parenchyma_ms"]
PER_SLICE_COLUMNS = ["model", "subject", "slice", "map", *METRICS]
PER_SUBJECT_COLUMNS = ["model", "subject", "map", *METRICS]


def _save(path, array, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), path)


def _subject_volumes(rng, x_shift):
    """Brain mask and reference maps (ms) of one subject, stored (not RAS) array order."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    mask = ((x - 3.5 - x_shift) / 3.8) ** 2 + ((y - 19.5) / 17) ** 2 + ((z - 15.5) / 13) ** 2 <= 1
    t1 = 1300 + 900 * np.sin(y / 6) * np.cos(z / 5) + 40 * x  # above 2000 ms (CSF-like) in places
    t2 = 80 + 30 * np.cos(y / 4) * np.sin(z / 7) + 3 * x
    background = rng.uniform(0, 200, SHAPE)  # reference noise outside the brain: must not be scored
    return {
        "mask": mask,
        "t1_ref": np.where(mask, t1, background),
        "t2_ref": np.where(mask, t2, background / 4),
        "m0_ref": np.where(mask, 0.8, 0.0),
        "t1w": np.where(mask, 2000 / t1, 0.1),
        "t2w": np.where(mask, t2 / 100, 0.1),
        "flair": np.where(mask, t2 / 100 * (t1 < 1200), 0.1),
    }


def _degrade(ref_ms, mask, rng, blur, noise):
    """A prediction: the reference blurred by a Gaussian of ``blur`` voxels, with relative noise, and a
    random background (which must not be scored)."""
    pred = gaussian_filter(ref_ms, blur) * (1 + noise * rng.standard_normal(SHAPE))
    return np.where(mask, pred, rng.uniform(0, 300, SHAPE))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two test subjects (the second named by its T1w stem) and three prediction sets."""
    root = tmp_path_factory.mktemp("reports_study")
    rng = np.random.default_rng(0)
    entries, references = [], {}
    for index, (name, t1w_file) in enumerate([("sub-a", "t1w.nii.gz"), ("sub-b_T1w", "sub-b_T1w.nii.gz")]):
        volumes = _subject_volumes(rng, x_shift=0.4 * index)
        files = {key: f"{name}/{key}.nii.gz" for key in volumes}
        files["t1w"] = f"{name}/{t1w_file}"
        for key, array in volumes.items():
            _save(root / "data" / files[key], array)
        entries.append({"subject": name, **files} if index == 0 else files)
        references[name] = volumes
        for model, blur, noise in [("exact", 0.0, 0.0), ("supervised", 1.5, 0.04), ("hybrid", 0.7, 0.02)]:
            for key, file_name in [("t1_ref", "t1_map"), ("t2_ref", "t2_map"), ("m0_ref", "m0_map")]:
                pred = volumes[key] if model == "exact" else _degrade(volumes[key], volumes["mask"], rng, blur, noise)
                _save(root / "predictions" / model / name / f"{file_name}.nii.gz", pred)
    manifest = root / "data" / "dataset.json"
    manifest.write_text(json.dumps({"name": "synthetic", "training": [], "testing": entries}))
    return {"root": root, "manifest": manifest, "references": references}


def _predictions(study, *models):
    return {model: study["root"] / "predictions" / model for model in models}


@pytest.fixture(scope="module")
def report(study):
    """One two-model evaluation; the output dir already holds an unrelated file."""
    output_dir = study["root"] / "report"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("keep me")
    summary = evaluate_predictions(
        study["manifest"], _predictions(study, "supervised", "hybrid"), output_dir, dataset_dir=study["root"] / "data"
    )
    tables = {name: pd.read_csv(output_dir / f"{name}.csv") for name in ("per_slice", "per_subject", "summary")}
    return {"summary": summary, "output_dir": output_dir, **tables}


def _subjects(study):
    return load_test_subjects(study["manifest"])


def test_identical_prediction_scores_perfect(study):
    per_slice = per_slice_metrics(_subjects(study), _predictions(study, "exact"))
    assert len(per_slice) > 0
    np.testing.assert_allclose(per_slice["MPE"], 0.0, atol=1e-4)
    np.testing.assert_allclose(per_slice["HFEN"], 0.0, atol=1e-4)
    np.testing.assert_allclose(per_slice["SSIM"], 1.0, atol=1e-5)
    assert (per_slice["PSNR"] > 100).all()


@pytest.mark.parametrize("data_range", [None, 1.0])
def test_per_slice_metrics_match_direct_computation(study, data_range):
    per_slice = per_slice_metrics(_subjects(study), _predictions(study, "supervised"), data_range=data_range)
    assert set(per_slice["subject"]) == {"sub-a", "sub-b_T1w"}
    assert (per_slice["MPE"] > 0.5).all() and (per_slice["HFEN"] > 0.01).all()
    assert (per_slice["SSIM"] < 0.999).all() and np.isfinite(per_slice["PSNR"]).all()
    assert (per_slice["MPE_parenchyma"] != per_slice["MPE"]).any()  # some slices have CSF-like voxels
    for row in per_slice.itertuples():
        volumes = study["references"][row.subject]
        key = {"T1": "t1_ref", "T2": "t2_ref"}[row.map]
        file_name = {"T1": "t1_map", "T2": "t2_map"}[row.map]
        pred_file = study["root"] / "predictions" / "supervised" / row.subject / f"{file_name}.nii.gz"
        mask = volumes["mask"][::-1]  # RAS: the first axis reversed
        ref = volumes[key][::-1] / MAP_UNIT_MS * mask
        pred = np.asarray(nib.load(pred_file).dataobj, dtype=np.float64)[::-1] / MAP_UNIT_MS * mask
        peak = ref.max() if data_range is None else data_range
        ref_slice, pred_slice, mask_slice = ref[row.slice], pred[row.slice], mask[row.slice]
        ssim = structural_similarity(
            ref_slice, pred_slice, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=peak
        )
        mpe = 100 * np.mean(np.abs(pred_slice - ref_slice)[mask_slice] / ref_slice[mask_slice])
        parenchyma = mask_slice & (volumes["t1_ref"][::-1][row.slice] < 2000.0)  # CSF (T1 ~ 4 s) left out
        errors = np.abs(pred_slice - ref_slice)[parenchyma]
        assert row.MPE_parenchyma == pytest.approx(100 * np.mean(errors / ref_slice[parenchyma]), rel=1e-4)
        assert row.MAE_parenchyma_ms == pytest.approx(MAP_UNIT_MS * np.mean(errors), rel=1e-4)
        assert row.SSIM == pytest.approx(ssim, abs=2e-4)
        assert row.PSNR == pytest.approx(peak_signal_noise_ratio(ref_slice, pred_slice, data_range=peak), abs=1e-3)
        assert row.MPE == pytest.approx(mpe, rel=1e-4)


def test_slices_selected_by_brain_fraction(study, report):
    for name, volumes in study["references"].items():
        fraction = volumes["mask"][::-1].mean(axis=(1, 2))
        expected = np.flatnonzero(fraction >= MIN_BRAIN_FRACTION)
        assert 0 < len(expected) < SHAPE[0]
        for _, group in report["per_slice"][report["per_slice"]["subject"] == name].groupby(["model", "map"]):
            assert group["slice"].tolist() == expected.tolist()
    strict = per_slice_metrics(_subjects(study), _predictions(study, "hybrid"), min_brain_fraction=0.5)
    assert strict["slice"].nunique() < report["per_slice"]["slice"].nunique()


def test_csv_layouts(report):
    assert list(report["per_slice"].columns) == PER_SLICE_COLUMNS
    assert list(report["per_subject"].columns) == PER_SUBJECT_COLUMNS
    assert list(report["summary"].columns) == [
        "metric", "map", "supervised", "hybrid", "p_value",
        "supervised_mean", "supervised_std", "hybrid_mean", "hybrid_std",
    ]  # fmt: skip
    assert list(zip(report["summary"]["metric"], report["summary"]["map"])) == [
        (metric, map_name) for metric in METRICS for map_name in ("T1", "T2")
    ]
    expected = report["per_slice"].groupby(["model", "subject", "map"])[METRICS].mean()
    pd.testing.assert_frame_equal(report["per_subject"].set_index(["model", "subject", "map"]).sort_index(), expected)
    assert (report["output_dir"] / "notes.txt").read_text() == "keep me"


def test_summary_statistics_and_paired_t_tests(report):
    per_slice = report["per_slice"]
    for row in report["summary"].itertuples():
        map_slices = per_slice[per_slice["map"] == row.map]
        cell = map_slices.pivot(index=["subject", "slice"], columns="model", values=row.metric)
        assert row.supervised_mean == pytest.approx(cell["supervised"].mean())
        assert row.hybrid_std == pytest.approx(cell["hybrid"].std())
        assert row.p_value == pytest.approx(ttest_rel(cell["supervised"], cell["hybrid"]).pvalue, rel=1e-6)
        decimals = {"SSIM": 3, "MAE_parenchyma_ms": 1}.get(row.metric, 2)
        assert row.hybrid == f"{row.hybrid_mean:.{decimals}f}±{row.hybrid_std:.{decimals}f}"
    assert (report["summary"]["p_value"] < 0.05).all()  # the hybrid-like set is clearly better here


def test_single_prediction_dir_and_rerun(study, tmp_path, capsys):
    for _ in range(2):  # a second run replaces the reports
        summary = evaluate_predictions(study["manifest"], str(study["root"] / "predictions" / "hybrid"), tmp_path)
    assert "p_value" not in summary.columns and "hybrid" in summary.columns
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["per_slice.csv", "per_subject.csv", "summary.csv", "figure.png"]
    )
    printed = capsys.readouterr().out
    assert "HFEN" in printed and str(tmp_path / "figure.png") in printed


def test_figure_png(report):
    image = matplotlib.image.imread(report["output_dir"] / "figure.png")
    assert image.ndim == 3 and image.shape[0] > 800 and image.shape[1] > 600
    assert image[..., :3].std() > 0.1


def test_mismatched_geometry_names_both_files(study, tmp_path):
    predictions = tmp_path / "predictions"
    shutil.copytree(study["root"] / "predictions" / "hybrid", predictions)
    bad = predictions / "sub-a" / "t2_map.nii.gz"
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    _save(bad, nib.load(bad).get_fdata(), affine=shifted)
    with pytest.raises(ValueError, match="same grid") as error:
        per_slice_metrics(_subjects(study), {"hybrid": predictions})
    assert str(bad) in str(error.value) and str(study["root"] / "data/sub-a/t1_ref.nii.gz") in str(error.value)

    _save(bad, np.zeros((8, 40, 30)))
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        per_slice_metrics(_subjects(study), {"hybrid": predictions})


def test_missing_prediction_names_file(study, tmp_path):
    predictions = tmp_path / "predictions"
    shutil.copytree(study["root"] / "predictions" / "hybrid", predictions)
    (predictions / "sub-b_T1w" / "t1_map.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(predictions / "sub-b_T1w" / "t1_map.nii.gz"))):
        evaluate_predictions(study["manifest"], {"hybrid": predictions}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_summary_rejects_more_than_two_models():
    rng = np.random.default_rng(1)
    per_slice = pd.DataFrame(
        [
            {"model": model, "subject": "s", "slice": index, "map": "T1", **dict(zip(METRICS, rng.uniform(size=6)))}
            for model in ("a", "b", "c")
            for index in range(4)
        ]
    )
    with pytest.raises(ValueError, match="one or two prediction sets"):
        summary_table(per_slice)
    assert np.isfinite(summary_table(per_slice[per_slice["model"] != "c"])["p_value"]).all()
    assert "p_value" not in summary_table(per_slice[per_slice["model"] == "a"]).columns


def test_manifest_problems_are_named(study, tmp_path):
    entry = json.loads(study["manifest"].read_text())["testing"][0]
    without_references = {key: value for key, value in entry.items() if not key.endswith("_ref")}
    manifest = study["root"] / "data" / "no_references.json"
    manifest.write_text(json.dumps({"testing": [without_references]}))
    with pytest.raises(ValueError, match=r"sub-a lacks the keys \['t1_ref', 't2_ref'\]"):
        load_test_subjects(manifest)
    with pytest.raises(ValueError, match="'sub-z' is not in the testing list"):
        evaluate_predictions(study["manifest"], _predictions(study, "hybrid"), tmp_path, figure_subject="sub-z")
