"""The response benchmark: the tissue-change study, the per-case response and the slopes, against direct computations."""

import json
import pathlib
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.phantom import study_manifest
from pipeline.phantom.changes import read_fractions, write_tissue_changes
from pipeline.phantom.tissues import COMPARTMENTS
from pipeline.reports.response import (
    MAP_OF_PARAMETER,
    REFERENCE_CASE,
    ResponseCase,
    case_response,
    response_cases,
    response_slopes,
    tissue_voxels,
)

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
import run_response_benchmark  # noqa: E402
from run_response_benchmark import experiment_models  # noqa: E402
from run_response_benchmark import main as response_benchmark  # noqa: E402

T2_LONGER = ResponseCase("white_matter-t2_ms-x1.2", "white_matter", (("t2_ms", 1.2),))


def _maps(t1, t2, m0, shape=(4, 4, 4)):
    return {"t1_map": np.full(shape, t1), "t2_map": np.full(shape, t2), "m0_map": np.full(shape, m0)}


def test_cases_scale_the_tissues_of_their_group():
    cases = response_cases(["white_matter", "all_but_csf"], ["t2_ms"], [0.7, 1.3])
    assert [c.name for c in cases] == [
        REFERENCE_CASE,
        "white_matter-t2_ms-x0.7",
        "white_matter-t2_ms-x1.3",
        "all_but_csf-t2_ms-x0.7",
        "all_but_csf-t2_ms-x1.3",
        "lesion_long",
        "lesion_short",
    ]
    assert cases[0].tissue_scales == {}
    assert cases[1].tissue_scales == {"white_matter": {"t2_ms": 0.7}}
    assert set(cases[4].tissue_scales) == set(COMPARTMENTS) - {"csf"}
    assert cases[5].tissue_scales == {"lesion": {"t1_ms": 1.5, "t2_ms": 1.6}}
    assert len(response_cases()) == 1 + 4 * 3 * 4 + 2
    for bad in (dict(groups=["csf"]), dict(parameters=["t2"]), dict(factors=[1.0]), dict(factors=[-0.5])):
        with pytest.raises(ValueError):
            response_cases(**bad)


def test_tissue_voxels_are_those_of_pure_tissue():
    fractions = np.zeros((len(COMPARTMENTS), 3, 1, 1), np.float32)
    white, lesion, csf = (COMPARTMENTS.index(n) for n in ("white_matter", "lesion", "csf"))
    fractions[white] = np.array([1.0, 0.9, 0.0])[:, None, None]
    fractions[lesion, 1] = 0.1
    fractions[csf] = 1 - fractions[white] - fractions[lesion]
    assert tissue_voxels(fractions, "white_matter")[:, 0, 0].tolist() == [True, False, False]
    assert tissue_voxels(fractions, "all_but_csf")[:, 0, 0].tolist() == [True, True, False]


def test_a_map_that_measures_has_slope_one_and_one_that_paints_slope_zero():
    truth_reference, truth = _maps(800.0, 80.0, 0.7), _maps(800.0, 96.0, 0.7)
    voxels = np.ones((4, 4, 4), bool)
    measures = case_response(T2_LONGER, truth, truth_reference, truth, truth_reference, voxels).set_index("map")
    assert measures.loc["t2_map", "slope"] == pytest.approx(1.0)
    assert measures.loc["t2_map", "true_change_pct"] == pytest.approx(20.0)
    assert measures.loc[["t1_map", "m0_map"], "crosstalk"].tolist() == [0.0, 0.0]
    assert measures["MPE"].tolist() == [0.0, 0.0, 0.0]
    # a model that paints its training values, and moves its T1 map by 2 % (10 % of the true 20 % T2 change)
    painted = case_response(T2_LONGER, _maps(816.0, 80.0, 0.7), truth_reference, truth, truth_reference, voxels)
    painted = painted.set_index("map")
    assert painted.loc["t2_map", "slope"] == pytest.approx(0.0)
    assert painted.loc["t2_map", "MPE"] == pytest.approx(100 * 16 / 96)
    assert painted.loc["t1_map", "crosstalk"] == pytest.approx(0.1)
    assert np.isnan(painted.loc["t2_map", "crosstalk"]) and np.isnan(painted.loc["t1_map", "slope"])
    # half the change, against a model biased +10 % in both cases: the bias cancels
    half = case_response(T2_LONGER, _maps(880.0, 96.8, 0.77), _maps(880.0, 88.0, 0.77), truth, truth_reference, voxels)
    assert half.set_index("map").loc["t2_map", "slope"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no voxel"):
        case_response(T2_LONGER, truth, truth_reference, truth, truth_reference, np.zeros((4, 4, 4), bool))


def test_slopes_are_the_least_squares_fit_through_the_origin_over_factors():
    true, predicted = np.array([-30.0, -15.0, 15.0, 30.0]), np.array([-9.0, -3.0, 6.0, 8.0])
    rows = [
        {"model": "m", "seed": 0, "group": "white_matter", "parameter": "t2_ms", "case": f"c{i}", "map": map_name}
        | values
        for i, (x, y) in enumerate(zip(true, predicted))
        for map_name, values in [
            (
                "t2_map",
                {"changed": True, "true_change_pct": x, "predicted_change_pct": y, "MPE": abs(i), "crosstalk": np.nan},
            ),
            (
                "t1_map",
                {
                    "changed": False,
                    "true_change_pct": 0.0,
                    "predicted_change_pct": 0.0,
                    "MPE": 0.0,
                    "crosstalk": -0.1 * i,
                },
            ),
        ]
    ]
    slopes = response_slopes(pd.DataFrame(rows)).iloc[0]
    assert slopes["slope"] == pytest.approx((true @ predicted) / (true @ true))
    assert slopes["max_crosstalk"] == pytest.approx(0.3)
    assert slopes["MPE"] == pytest.approx(1.5) and slopes["cases"] == 4


@pytest.fixture(scope="module")
def tissue_changes(tmp_path_factory):
    """A tiny ideal study's testing subject, unchanged and with white matter's T2 x 1.2."""
    generator = study_manifest(2, seed=3, sagittal_slices=4)["generator"]
    cases = {REFERENCE_CASE: None, T2_LONGER.name: T2_LONGER.tissue_scales}
    return generator, cases, write_tissue_changes(generator, cases, tmp_path_factory.mktemp("changes"))


def test_tissue_change_study_is_written_once_and_refuses_another(tissue_changes):
    generator, cases, manifest_path = tissue_changes
    manifest = json.loads(manifest_path.read_text())
    assert [entry["subject"] for entry in manifest["testing"]] == list(cases)
    assert manifest["tissue_changes"]["subject"] == "sub-02"
    assert manifest["tissue_changes"]["cases"][T2_LONGER.name] == {"white_matter": {"t2_ms": 1.2}}
    records = [json.loads((manifest_path.parent / c / "phantom.json").read_text())["tissues"] for c in cases]
    assert records[1]["white_matter"]["t2_ms"] == pytest.approx(1.2 * records[0]["white_matter"]["t2_ms"])
    fractions = read_fractions(manifest_path.parent)
    assert fractions.shape[0] == len(COMPARTMENTS)
    inside = fractions.sum(0) > 0
    np.testing.assert_allclose(fractions.sum(0)[inside], 1.0, atol=1e-5)
    written = manifest_path.stat().st_mtime_ns
    assert write_tissue_changes(generator, cases, manifest_path.parent) == manifest_path
    assert manifest_path.stat().st_mtime_ns == written
    with pytest.raises(FileExistsError, match="another study"):
        write_tissue_changes(generator, {REFERENCE_CASE: None}, manifest_path.parent)


def test_benchmark_finds_slope_one_for_the_truth(tissue_changes, tmp_path):
    """The driver end to end without a network: the cases' own 1 mm truth as a model's maps."""
    _, _, manifest_path = tissue_changes
    study = tmp_path / "study.json"
    study.write_text(json.dumps({"generator": json.loads(manifest_path.read_text())["tissue_changes"]["generator"]}))
    work = tmp_path / "work"  # the driver keeps its case study in work/cases: the fixture's
    work.mkdir()
    (work / "cases").symlink_to(manifest_path.parent, target_is_directory=True)
    out = tmp_path / "out"
    response_benchmark(
        [
            "--study",
            str(study),
            "--work",
            str(work),
            "--out",
            str(out),
            "--groups",
            "white_matter",
            "--parameters",
            "t2_ms",
            "--factors",
            "1.2",
            "--no-lesions",
            "--maps",
            f"truth={manifest_path.parent}",
        ]
    )
    slopes = pd.read_csv(out / "slopes.csv").set_index("model")
    assert slopes.loc["truth", "slope"] == pytest.approx(1.0) and slopes.loc["truth", "max_crosstalk"] == 0.0
    inputs = pd.read_csv(out / "inputs.csv").set_index("image")  # white matter's T2 x 1.2: the T2w, not the T1w
    assert inputs.loc["t2w", "raw_change_pct"] > 10 and abs(inputs.loc["t1w", "raw_change_pct"]) < 0.5

    assert (out / "response.png").stat().st_size > 10_000
    accuracy = pd.read_csv(out / "table2.csv").iloc[0]  # the truth against itself
    assert accuracy["T1_MPE"] == 0 and accuracy["T2_HFEN"] == 0 and accuracy["T1_SSIM"] == pytest.approx(1)
    assert json.loads((out / "response.json").read_text())["cases"] == [REFERENCE_CASE, T2_LONGER.name]
    assert set(pd.read_csv(out / "response.csv")["map"]) == set(MAP_OF_PARAMETER.values())


def test_models_of_an_experiment_and_of_an_ablation_are_named_by_their_runs(tmp_path):
    for run in ("runs/default/hybrid_seed1", "runs/robust/supervised_seed0", "runs/tv_csf_hybrid_seed2"):
        for folder in ("models", "maps_validation"):
            (tmp_path / run / folder).mkdir(parents=True)
        (tmp_path / run / "models" / "model.pt").touch()
        (tmp_path / run / "maps_validation" / "done").touch()
    (tmp_path / "runs" / "training_hybrid_seed0" / "models").mkdir(parents=True)  # a best model, no maps yet
    (tmp_path / "runs" / "training_hybrid_seed0" / "models" / "model.pt").touch()
    found = {(name, seed) for name, seed, _ in experiment_models(tmp_path)}
    assert found == {("hybrid", 1), ("supervised_robust", 0), ("tv_csf_hybrid", 2)}


def test_an_adapted_row_runs_the_bundles_adaptation_with_its_overrides_and_the_qc_that_judges_it(monkeypatch, tmp_path):
    calls = []

    def run_bundle(run_id, configs, overrides, log, threads):
        calls.append((run_id, configs, overrides))
        overrides["output_dir"].mkdir()

    monkeypatch.setattr(run_response_benchmark, "run_bundle", run_bundle)
    manifest, checkpoint = tmp_path / "cases" / "dataset.json", tmp_path / "model.pt"
    run_response_benchmark.infer(checkpoint, manifest, tmp_path / "plain", "auto")
    run_response_benchmark.infer(checkpoint, manifest, tmp_path / "adapted", "auto", {"adapt_lambda_intensity": "1"})
    (plain_id, plain_configs, plain), (adapt_id, adapt_configs, adapted) = calls
    assert (plain_id, plain_configs, plain["qc"]) == ("inference", ["inference.json"], False)
    assert (adapt_id, adapt_configs, adapted["qc"]) == ("adapting", ["inference.json", "adapt.json"], True)
    assert adapted["adapt_lambda_intensity"] == "1" and "adapt_lambda_intensity" not in plain
    assert adapted["checkpoint"] == checkpoint and adapted["output_dir"] == tmp_path / "adapted"
    assert (tmp_path / "adapted" / "done").exists()
    run_response_benchmark.infer(checkpoint, manifest, tmp_path / "adapted", "auto", {"adapt_lambda_intensity": "1"})
    assert len(calls) == 2  # done: not run again
