"""The paper experiment: its Table-2 aggregation over seeds, and its driver on a tiny setting."""

import argparse
import json
import os
import pathlib
import sys
from unittest import mock

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from scipy.stats import ttest_rel

from pipeline.data import load_datalist
from pipeline.reports.experiment import compare_experiments, experiment_table
from tests import warm_python

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "run_paper_experiment.py"
MODEL_OFFSETS = {"supervised": 0.0, "hybrid": 0.6, "oracle": 1.0}
"""Per-model shift of every metric in the synthetic table: the hybrid closes 60 % of the gap (before noise)."""


def synthetic_per_slice(seeds=(0, 1, 2), slices=20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for seed in seeds:
        for model, offset in MODEL_OFFSETS.items():
            for map_name in ("T1", "T2"):
                for index in range(slices):
                    noise = rng.normal(0.0, 0.05, size=4)
                    rows.append(
                        {
                            "seed": seed,
                            "model": model,
                            "subject": "sub-05",
                            "slice": index,
                            "map": map_name,
                            "MPE": 10 - 2 * offset + noise[0],
                            "HFEN": 1 - 0.5 * offset + noise[1],
                            "PSNR": 30 + 2 * offset + noise[2],
                            "SSIM": 0.9 + 0.05 * offset + noise[3] / 10,
                        }
                    )
    return pd.DataFrame(rows)


def test_table_columns_gap_closed_and_paired_tests_match_a_direct_computation():
    per_slice = synthetic_per_slice()
    table = experiment_table(per_slice, "supervised", "hybrid", "oracle")
    assert len(table) == 8 and set(table["map"]) == {"T1", "T2"}
    for _, row in table.iterrows():
        cell = per_slice[per_slice["map"] == row["map"]]
        means = cell.groupby(["seed", "model"])[row["metric"]].mean().unstack("model")
        gaps = (means["supervised"] - means["hybrid"]) / (means["supervised"] - means["oracle"])
        assert row["gap_closed_mean"] == pytest.approx(gaps.mean())
        assert row["gap_closed_std"] == pytest.approx(gaps.std())
        assert 0.4 < row["gap_closed_mean"] < 0.8  # both for lower-is-better and higher-is-better metrics
        assert row["hybrid_mean"] == pytest.approx(means["hybrid"].mean())
        assert row["oracle_seed_std"] == pytest.approx(means["oracle"].std())
        p_values = [
            ttest_rel(
                cell[(cell["seed"] == seed) & (cell["model"] == "hybrid")][row["metric"]].to_numpy(),
                cell[(cell["seed"] == seed) & (cell["model"] == "supervised")][row["metric"]].to_numpy(),
            ).pvalue
            for seed in (0, 1, 2)
        ]
        assert row["p_value_max"] == pytest.approx(max(p_values))
        assert row["hybrid_better_seeds"] == 3 and row["seeds"] == 3
        assert "±" in row["supervised"] and "±" in row["oracle"]


def test_a_worse_hybrid_closes_a_negative_gap_and_wins_no_seed():
    per_slice = synthetic_per_slice()
    swap = {"hybrid": "supervised", "supervised": "hybrid"}
    table = experiment_table(per_slice.replace({"model": swap}), "supervised", "hybrid", "oracle")
    assert (table["gap_closed_mean"] < -1).all()
    assert (table["hybrid_better_seeds"] == 0).all()


def test_without_an_oracle_the_table_has_the_paired_tests_and_no_gap():
    per_slice = synthetic_per_slice()
    with_oracle = experiment_table(per_slice, "supervised", "hybrid", "oracle")
    table = experiment_table(per_slice[per_slice["model"] != "oracle"], "supervised", "hybrid", None)
    assert not {"oracle", "oracle_mean", "gap_closed_mean", "gap_closed_std"} & set(table.columns)
    shared = ["hybrid_mean", "supervised_mean", "p_value_max", "p_value_median", "hybrid_better_seeds", "seeds"]
    pd.testing.assert_frame_equal(table[shared], with_oracle[shared])


def test_two_runs_compared_cell_by_cell_against_their_seed_spread():
    """compare_experiments: the difference of the seed means and the spread are those of the two tables; a shift
    larger than the spread is flagged, one inside it is not; the candidate's Table-2 claim comes along."""
    per_slice = synthetic_per_slice()
    reference = experiment_table(per_slice, "supervised", "hybrid", "oracle")
    shifted = per_slice.copy()
    hybrid_t1 = (shifted["model"] == "hybrid") & (shifted["map"] == "T1")
    shifted.loc[hybrid_t1, "MPE"] += 1.0  # far beyond the seeds' spread (noise 0.05 per slice)
    candidate = experiment_table(shifted, "supervised", "hybrid", "oracle")
    comparison = compare_experiments(reference, candidate).set_index(["metric", "map", "model"])
    assert len(comparison) == 8 * 3
    changed = comparison.loc[("MPE", "T1", "hybrid")]
    expected = reference.set_index(["metric", "map"]).loc[("MPE", "T1")]
    assert changed["reference_mean"] == pytest.approx(expected["hybrid_mean"])
    assert changed["difference"] == pytest.approx(1.0)
    assert changed["spread"] == pytest.approx(max(expected["hybrid_seed_std"], changed["candidate_seed_std"]))
    assert not changed["within_spread"]
    claim = candidate.set_index(["metric", "map"]).loc[("MPE", "T1")]
    assert (
        changed["p_value_max"] == claim["p_value_max"]
        and changed["hybrid_better_seeds"] == claim["hybrid_better_seeds"]
    )
    unchanged = comparison.drop(index=("MPE", "T1", "hybrid"))
    assert (unchanged["difference"].abs() < 1e-12).all() and unchanged["within_spread"].all()
    with pytest.raises(ValueError, match="different metric x map cells"):
        compare_experiments(reference, candidate[candidate["metric"] != "SSIM"])


def test_missing_model_is_named():
    per_slice = synthetic_per_slice()
    with pytest.raises(ValueError, match=r"no rows of model\(s\) \['oracle_robust'\]"):
        experiment_table(per_slice, "supervised", "hybrid", "oracle_robust")


def test_driver_runs_a_setting_on_a_tiny_study_and_reuses_its_runs(tiny_study, tmp_path):
    """Two training iterations per model, one seed, the default setting (whose models carry its name): every output
    of the experiment is written. (One setting, sliced along the tiny study's 16 sagittal planes: its coronal slices
    would be ~175 slices padded to 176 x 192 per validation, three quarters of this test's time.)"""
    command = [
        sys.executable, str(SCRIPT), "run", "--seeds", "0", "--jobs", "2", "--out", str(tmp_path),
        "--settings", "default",
        "--datalist", str(tiny_study), "--dataset_dir", str(tiny_study.parent),
        "--set", "max_epochs=1", "val_interval=1", "train#trainer#epoch_length=2", "log_every_n_iterations=1",
        "slice_axis=0",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = warm_python.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    table = pd.read_csv(tmp_path / "table2.csv")
    assert len(table) == 6 * 2  # metrics x maps
    assert set(table["setting"]) == {"default"}
    for column in ("labels", "supervised", "hybrid", "oracle", "p_value_max", "gap_closed_mean", "hybrid_better_seeds"):
        assert column in table.columns
    per_slice = pd.read_csv(tmp_path / "per_slice.csv")
    models = {"supervised_default", "hybrid_default", "oracle_default", "labels"}
    assert set(per_slice["model"]) == models and set(per_slice["subject"]) == {"sub-03"}
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    record = json.loads((tmp_path / "experiment.json").read_text())
    assert record["command"].startswith("python scripts/run_paper_experiment.py run") and record["wall_seconds"] > 0
    assert record["commit_at_start"] == record["commit"]  # nothing was committed while it ran

    oracle_log = (tmp_path / "runs" / "default" / "oracle_seed0" / "log.txt").read_text()
    assert "Epoch: 1/1, Iter: 2/2" in oracle_log
    trained = sorted(tmp_path.glob("runs/*/*/models/model.pt"))
    assert len(trained) == 3
    stamps = [path.stat().st_mtime_ns for path in trained]
    rerun = warm_python.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in trained] == stamps  # finished runs are reused, not retrained


def test_edge_loss_diagnosis_prefers_the_truth_and_shows_the_noise_floor(tiny_study, tmp_path):
    """The diagnosis script re-simulates the validation subject (checking it reproduces the files) with and without
    receive bias and noise, and evaluates the edge term at the 1 mm truth and at the 3.5 mm labels."""
    out = tmp_path / "diagnosis.csv"
    command = [
        sys.executable,
        str(SCRIPT.with_name("diagnose_edge_loss.py")),
        "--datalist",
        str(tiny_study),
        "--dataset_dir",
        str(tiny_study.parent),
        "--sigmas",
        "0",
        "1",
        "--out",
        str(out),
    ]
    result = warm_python.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out).set_index(["edge_smoothing_sigma", "images", "maps"])["sum"]
    for sigma in (0.0, 1.0):
        for images in ("clean", "bias", "acquired"):
            assert table[sigma, images, "truth (1 mm)"] < table[sigma, images, "labels (3.5 mm)"]
        assert table[sigma, "clean", "truth (1 mm)"] < table[sigma, "acquired", "truth (1 mm)"]  # noise floor
    noise_floor = {
        sigma: table[sigma, "acquired", "truth (1 mm)"] - table[sigma, "bias", "truth (1 mm)"] for sigma in (0.0, 1.0)
    }
    assert noise_floor[1.0] < noise_floor[0.0]  # smoothing before the Sobel operator lowers it


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_every_profile_setting_and_model_config_parses_to_the_intended_loss_and_labels(profile):
    """The paper profile runs only on a GPU; its configs are at least checked here."""
    from monai.bundle import ConfigParser

    from pipeline.data import LABEL_KEYS, REFERENCE_KEYS

    sys.path.insert(0, str(SCRIPT.parent))
    import run_paper_experiment as driver

    for setting in driver.SETTINGS:
        for model in driver.MODELS:
            files = ["train.json", *driver.PROFILES[profile], *driver.SETTINGS[setting], *driver.MODELS[model]]
            parser = ConfigParser()
            parser.read_config([str(driver.CONFIGS / name) for name in files])
            parser["device"] = "$torch.device('cpu')"
            loss = parser.get_parsed_content("loss")
            assert (loss.lambda_self > 0) == (model == "hybrid"), (profile, setting, model)
            published = setting == "paper"
            assert loss.supervised.map_weights == ((1.0, 1.0, 1.0) if published else (1.0, 10.0, 1.0))
            assert loss.edges.edge_smoothing_sigma == (0.0 if published else 1.0)
            assert loss.edges.contrasts == (("mprage", "tse_epg") if setting == "default" else ("mprage", "tse"))
            assert loss.edges.scale_invariant_l1.window == 0
            assert parser.get_parsed_content("slice_axis") == (1 if setting == "default" else 0)
            label_keys = parser.get_parsed_content("train#dataset#label_keys", default=LABEL_KEYS)
            assert tuple(label_keys) == (REFERENCE_KEYS if model == "oracle" else LABEL_KEYS)


@pytest.mark.parametrize(
    "override",
    [
        {"self_contrasts": ["mprage", "tse_epg"]},  # of scripts/run_realistic_experiment.sh
        {"self_contrasts": ["mprage", "tse_epg"], "scale_window": 31, "map_weights": "label_spread"},  # ablation
    ],
)
def test_loss_overrides_of_the_experiment_scripts_parse_to_the_intended_loss(override):
    from monai.bundle import ConfigParser

    from pipeline.physics import TSEProtocol

    sys.path.insert(0, str(SCRIPT.parent))
    import run_paper_experiment as driver

    parser = ConfigParser()
    parser.read_config([str(driver.CONFIGS / name) for name in ["train.json", "robust.json"]])
    for key, value in override.items():
        parser[key] = value
    parser["device"] = "$torch.device('cpu')"
    loss = parser.get_parsed_content("loss")
    assert loss.edges.contrasts == ("mprage", "tse_epg") and loss.edges.input_channels["tse_epg"] == 1
    assert isinstance(loss.edges.protocols["tse_epg"], TSEProtocol)
    assert loss.edges.scale_invariant_l1.window == override.get("scale_window", 0)
    assert loss.supervised.map_weights == override.get("map_weights", (1.0, 10.0, 1.0))


def test_acquisition_effect_summary_matches_a_direct_computation():
    sys.path.insert(0, str(SCRIPT.parent))
    import diagnose_acquisition_effects as effects

    rows = [
        {"acquisition": name, "images": images, "maps": maps, "sum": value}
        for name, truth, labels in (("ideal", 0.2, 0.5), ("fine_anatomy", 0.25, 0.5))
        for images in ("clean", "acquired")
        for maps, value in (("truth (1 mm)", truth), ("labels (3.5 mm)", labels))
    ]
    summary = effects.summarise(pd.DataFrame(rows)).set_index(["acquisition", "images"])
    assert summary.loc[("ideal", "acquired"), "discrimination"] == pytest.approx((0.5 - 0.2) / 0.5)
    assert summary.loc[("fine_anatomy", "clean"), "truth"] == pytest.approx(0.25)
    assert list(effects.variants())[0] == "ideal" and list(effects.variants())[-1] == "realistic"
    assert len(effects.variants()) == len(effects.Acquisition.effects()) + 2


def test_ablation_trains_each_variant_on_the_validation_subject_with_its_overrides(tiny_study, tmp_path):
    """A '+supervised' variant trains its own supervised model; the others share none; the labels yardstick is
    evaluated beside them; inference gets the training's slice axis and neighbour slices (2.5D) from ``model.json``."""
    command = [
        sys.executable, str(SCRIPT), "ablate", "--seeds", "0", "--jobs", "2", "--out", str(tmp_path),
        "--datalist", str(tiny_study), "--dataset_dir", str(tiny_study.parent),
        "--set", "max_epochs=1", "val_interval=1", "train#trainer#epoch_length=1", "slice_axis=0",
        "--variant", "base+supervised", "--variant", "axial", "slice_axis=2", "slice_size=[16,208]", "context_slices=1",
        "--fuse", "both", "base", "axial", "--fuse", "one", "base:supervised", "base:supervised",
    ]  # fmt: skip
    result = warm_python.run(
        command, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert runs == [
        "axial_hybrid_seed0", "base_hybrid_seed0", "base_supervised_seed0", "both_hybrid_seed0", "one_supervised_seed0"
    ]  # fmt: skip
    (subject,) = (path.name for path in (tmp_path / "runs" / "both_hybrid_seed0" / "maps_validation").iterdir())
    fused, *sources = (
        nib.load(tmp_path / "runs" / f"{name}_hybrid_seed0" / "maps_validation" / subject / "t2_map.nii.gz").get_fdata()
        for name in ("both", "base", "axial")
    )
    np.testing.assert_allclose(fused, (sources[0] + sources[1]) / 2, rtol=1e-6)  # the median of two is their mean
    inference_log = (tmp_path / "runs" / "axial_hybrid_seed0" / "log.txt").read_text()
    assert inference_log.count("> slice_axis: 2") == 2  # training and inference of the variant both got it
    axial_models = tmp_path / "runs" / "axial_hybrid_seed0" / "models"
    card = {
        "slice_axis": 2,
        "context_slices": 1,
        "intensity_reference": "csf",
        "network_norm": "batch",
        "mask_inputs": False,
    }
    assert json.loads((axial_models / "model.json").read_text()) == card
    weights = torch.load(axial_models / "model.pt", map_location="cpu", weights_only=True)
    assert weights["0.conv_0.conv_0.conv.weight"].shape[1] == 9  # 3 images x (the slice and one neighbour each side)
    per_seed = pd.read_csv(tmp_path / "ablation_per_seed.csv")
    assert set(per_seed["model"]) == {
        "base:supervised", "base:hybrid", "axial:hybrid", "both:hybrid", "one:supervised", "labels"
    }  # fmt: skip
    models = per_seed.set_index("model")
    assert models.loc["one:supervised", "T2_MPE"] == pytest.approx(models.loc["base:supervised", "T2_MPE"], rel=1e-5)
    assert {"T1_MPE", "T2_HFEN", "T1_MPE_parenchyma", "T2_MAE_parenchyma_ms"} <= set(per_seed.columns)
    summary = pd.read_csv(tmp_path / "ablation.csv", index_col=0)
    assert summary.loc["axial:hybrid", "T1_MPE_mean"] == pytest.approx(
        per_seed.set_index("model").loc["axial:hybrid", "T1_MPE"]
    )
    pairs = pd.read_csv(tmp_path / "ablation_pairs.csv")  # only base has both models
    assert set(pairs["variant"]) == {"base"} and "oracle" not in pairs and "gap_closed_mean" not in pairs
    t1_mpe = pairs[(pairs["metric"] == "MPE") & (pairs["map"] == "T1")].iloc[0]
    assert t1_mpe["hybrid_mean"] == pytest.approx(models.loc["base:hybrid", "T1_MPE"])
    assert t1_mpe["labels_mean"] == pytest.approx(models.loc["labels", "T1_MPE"])

    # the report on the test subject reuses the trained models: inference only
    trained = (tmp_path / "runs" / "base_hybrid_seed0" / "train_seconds.txt").stat().st_mtime_ns
    testing = command[: command.index("--variant")] + ["--section", "testing", "--variant", "base+supervised"]
    result = warm_python.run(
        testing, check=False, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "runs" / "base_hybrid_seed0" / "train_seconds.txt").stat().st_mtime_ns == trained
    assert any((tmp_path / "runs" / "base_hybrid_seed0" / "maps_testing").glob("*/t1_map.nii.gz"))
    on_test = pd.read_csv(tmp_path / "ablation_testing_per_seed.csv").set_index("model")
    assert set(on_test.index) == {"base:supervised", "base:hybrid", "labels"}
    assert on_test.loc["labels", "T1_MPE"] != pytest.approx(models.loc["labels", "T1_MPE"])  # another subject
    assert set(pd.read_csv(tmp_path / "ablation_testing_pairs.csv")["variant"]) == {"base"}


def test_label_thickness_curve_plot_and_study_folders(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import run_label_thickness_curve as curve

    assert curve.study_dir(tmp_path, "realistic", 3.5) == tmp_path / "phantom_realistic"
    assert curve.study_dir(tmp_path, "realistic", 5.0) == tmp_path / "phantom_realistic_label5mm"
    tables = [
        experiment_table(synthetic_per_slice(), "supervised", "hybrid", "oracle").assign(label_thickness_mm=thickness)
        for thickness in (2.0, 3.5, 7.0)
    ]
    table = pd.concat(tables, ignore_index=True)
    table.loc[0, "gap_closed_mean"] = 14.2  # an ill-conditioned ratio: written at the edge, the range kept
    figure_texts = []
    with mock.patch.object(curve.plt.Axes, "annotate", side_effect=lambda text, *a, **k: figure_texts.append(text)):
        curve.plot_curve(table, tmp_path / "curve.png")
    assert figure_texts == ["+14.2"]
    assert (tmp_path / "curve.png").stat().st_size > 10_000


def test_a_merged_label_thickness_curve_keeps_this_runs_thicknesses_and_refuses_other_models(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    import run_label_thickness_curve as curve

    def measured(thicknesses, shift):
        per_slice = pd.concat(
            [synthetic_per_slice(seeds=(0, 1)).assign(label_thickness_mm=t, MPE=lambda f: f["MPE"] + shift)
             for t in thicknesses], ignore_index=True)  # fmt: skip
        tables = [experiment_table(per_slice[per_slice["label_thickness_mm"] == t], "supervised", "hybrid", "oracle")
                  .assign(label_thickness_mm=t) for t in thicknesses]  # fmt: skip
        return pd.concat(tables, ignore_index=True), per_slice

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    old_table, old_per_slice = measured((3.5, 7.0), shift=1.0)
    old_table.to_csv(earlier / "label_thickness_curve.csv", index=False)
    old_per_slice.to_csv(earlier / "label_thickness_per_slice.csv", index=False)
    arguments = {"seeds": [0, 1], "setting": "default", "acquisition": "realistic", "oracle_thickness": 3.5,
                 "overrides": []}  # fmt: skip
    (earlier / "label_thickness_curve.json").write_text(json.dumps({"commit": "abc", "arguments": arguments}))

    table, per_slice = measured((5.0, 3.5), shift=0.0)
    args = argparse.Namespace(**arguments)
    merged_table, merged_per_slice, record = curve.merge_earlier(earlier, args, table, per_slice)
    assert record["commit"] == "abc"
    assert list(merged_table["label_thickness_mm"].unique()) == [3.5, 5.0, 7.0]
    assert len(merged_per_slice) == len(per_slice) + len(old_per_slice) / 2
    ours = merged_per_slice[merged_per_slice["label_thickness_mm"] == 3.5]["MPE"]  # this run's 3.5 mm, not the earlier
    assert ours.to_numpy() == pytest.approx(per_slice[per_slice["label_thickness_mm"] == 3.5]["MPE"].to_numpy())
    assert merged_table[merged_table["label_thickness_mm"] == 7.0].reset_index(drop=True).equals(
        old_table[old_table["label_thickness_mm"] == 7.0].reset_index(drop=True))  # fmt: skip

    with pytest.raises(ValueError, match="label_thickness_curve.json.*seeds"):
        curve.merge_earlier(earlier, argparse.Namespace(**{**arguments, "seeds": [0, 1, 2]}), table, per_slice)


def test_the_oracle_shared_across_label_studies_carries_its_card_and_keeps_what_is_there(tmp_path):
    """Inference reads the slices a model was trained on from ``model.json``: a copied ``model.pt`` without it fails."""
    sys.path.insert(0, str(SCRIPT.parent))
    import run_label_thickness_curve as curve

    source, target = tmp_path / "label3.5mm" / "oracle_seed0", tmp_path / "label7mm" / "oracle_seed0"
    (source / "models").mkdir(parents=True)
    (source / "models" / "model.pt").write_bytes(b"weights")
    (source / "models" / "model.json").write_text('{"slice_axis": 1, "context_slices": 1}')
    curve.share_model(source, target)
    assert json.loads((target / "models" / "model.json").read_text()) == {"slice_axis": 1, "context_slices": 1}
    assert (target / "models" / "model.pt").read_bytes() == b"weights"
    (source / "models" / "model.pt").write_bytes(b"retrained")
    curve.share_model(source, target)
    assert (target / "models" / "model.pt").read_bytes() == b"weights"  # a file already there is never replaced


def test_head_comparison_wraps_the_brain_in_a_head_and_measures_the_maps_inside_the_brain(tiny_study, tmp_path):
    """The head entries keep every brain voxel of the images; a map changed by 10 % in the brain's outer 2 mm and
    cropped back from the head's padded grid shows as that change over the brain and none in its interior."""
    sys.path.insert(0, str(SCRIPT.parent))
    import run_head_comparison as head

    subject = load_datalist(tiny_study, "testing")[0]  # 16 sagittal planes of a phantom subject
    manifests = head.write_cases(subject, tmp_path, seed=0)
    masked, unmasked = (json.loads(manifests[name].read_text())["testing"] for name in ("masked", "unmasked"))
    assert [case["subject"] for case in masked + unmasked] == list(head.ENTRIES) and "mask" not in unmasked[0]
    padding = np.asarray(json.loads((tmp_path / "padding.json").read_text()))
    crop = tuple(slice(before, -after if after else None) for before, after in padding)
    brain = nib.load(subject["mask"]).get_fdata() > 0
    for key in ("t1w", "flair"):
        original = nib.load(subject[key]).get_fdata()
        headed = nib.load(masked[1][key]).get_fdata()[crop]
        np.testing.assert_allclose(headed[brain], original[brain], rtol=1e-6)
        assert headed[~brain].mean() > 2 * original[~brain].mean()  # skull, scalp and neck outside the brain

    edge = brain & ~(ndimage.distance_transform_edt(brain) > 2)
    maps = tmp_path / "maps"
    for entry in head.ENTRIES:
        folder = maps / ("unmasked" if entry == "head_no_mask" else "masked") / entry
        folder.mkdir(parents=True)
        for name in head.MAPS:
            values = np.full(brain.shape, 100.0, dtype=np.float32) * (1 + 0.1 * (edge & (entry != "stripped")))
            if entry != "stripped":
                values = np.pad(values, padding, constant_values=7.0)
            nib.save(nib.Nifti1Image(values, np.eye(4)), folder / f"{name}.nii.gz")
    rows = pd.DataFrame(head.compare(maps, brain, padding, edge_mm=4.0)).set_index(["entry", "map", "region"])
    assert 0.05 < edge.sum() / brain.sum() < 0.5  # the edge: more than 5 % of the brain, less than half
    assert (rows["median_percent"] == 0).all()
    np.testing.assert_allclose(rows.xs("brain", level="region")["p95_percent"], 10.0, rtol=1e-5)
    assert (rows.xs("interior", level="region")["p95_percent"] == 0).all()
