"""The MONAI bundle run as users run it (``python -m monai.bundle run ...``) on the tiny phantom study."""

import json
import os
import pathlib
import re
import shutil
import sys
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser

from pipeline.engine import latest_checkpoint
from tests import warm_python

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "qmap_hybrid"
CONFIGS = BUNDLE / "configs"
RUN_TIMEOUT_S = 300


TRAINING_STEPS_PER_EPOCH = 3
"""Steps of a test training epoch: the tiny study's axial slices would make ~60 (the bundle default, slower here)."""

LOG_EVERY = 2
"""``log_every_n_iterations`` of the ``training`` run: ``TRAINING_STEPS_PER_EPOCH // LOG_EVERY`` = 1 line (step 2)."""


def bundle_run(run_id, config_files, timeout=RUN_TIMEOUT_S, launcher=(sys.executable, "-m"), **overrides):
    """Run ``monai.bundle run <run_id>`` in a subprocess; returns the CompletedProcess (output captured)."""
    if run_id == "training":
        overrides.setdefault("train#trainer#epoch_length", TRAINING_STEPS_PER_EPOCH)
    overrides.setdefault("check_inputs", False)  # ~5 s per subject; test_*_validates_* run it
    configs = [str(CONFIGS / name) for name in config_files]
    command = [*launcher, "monai.bundle", "run", run_id, "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--config_file", configs[0] if len(configs) == 1 else repr(configs)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return warm_python.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def check(result):
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def iteration_log_lines(log: str) -> list[tuple[int, int]]:
    """(epoch, step of the epoch) of each iteration line of the training ``StatsHandler`` (``Epoch: e/E, Iter: i/L --
    loss: ...``) in a run's output."""
    return [(int(epoch), int(step)) for epoch, step in re.findall(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- ", log)]


@pytest.fixture(scope="module")
def study(tiny_study):
    return {"datalist": tiny_study, "dataset_dir": tiny_study.parent}


@pytest.fixture(scope="module")
def training(study, tmp_path_factory):
    """One epoch of hybrid training on the tiny study, a log line every ``LOG_EVERY`` steps; returns the run's
    folders and its console output (stdout + stderr)."""
    root = tmp_path_factory.mktemp("bundle")
    dirs = {"bundle_root": BUNDLE, "ckpt_dir": root / "models", "log_dir": root / "logs"}
    run = bundle_run(
        "training", ["train.json"], max_epochs=1, val_interval=1, log_every_n_iterations=LOG_EVERY, **study, **dirs
    )
    check(run)
    return dirs, run.stdout + run.stderr


@pytest.fixture(scope="module")
def trained(training):
    """The folders of the ``training`` run."""
    return training[0]


def test_metadata_has_model_zoo_keys_and_matches_network():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "task",
        "description",
        "authors",
        "network_data_format",
        "intended_use",
        "references",
    ):
        assert key in metadata, key
    assert metadata["version"] in metadata["changelog"]
    inputs = metadata["network_data_format"]["inputs"]["image"]
    outputs = metadata["network_data_format"]["outputs"]["pred"]

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    height, width = 32, 48  # "16*n" slices
    with torch.no_grad():
        pred = network(torch.randn(2, inputs["num_channels"], height, width))
    assert pred.shape == (2, outputs["num_channels"], height, width)
    assert (
        len(inputs["channel_def"]) == inputs["num_channels"] and len(outputs["channel_def"]) == outputs["num_channels"]
    )
    assert torch.all(pred > 0), "softplus output: maps are positive"


EVAL_METRICS = {
    "test_t1_mpe_percent": ("MPE", "T1", 2),
    "test_t2_mpe_percent": ("MPE", "T2", 2),
    "test_t1_hfen": ("HFEN", "T1", 3),
    "test_t2_hfen": ("HFEN", "T2", 3),
    "test_t1_psnr_db": ("PSNR", "T1", 2),
    "test_t2_psnr_db": ("PSNR", "T2", 2),
    "test_t1_ssim": ("SSIM", "T1", 4),
    "test_t2_ssim": ("SSIM", "T2", 4),
}
"""metadata ``eval_metrics`` key: (metric, map) of the experiment's Table 2 and the decimals the README shows."""


def test_metadata_eval_metrics_are_the_default_settings_test_results():
    """The hybrid default (0.12.0: csf reference, batch norm, intensity term) on the realistic test subject, mean over seeds 0-2
    (docs/results/response/testing, the README's headline table)."""
    results = REPO / "docs" / "results" / "response" / "testing"
    assert json.loads((results / "ablation_testing.json").read_text())["arguments"]["seeds"] == [0, 1, 2]
    table = pd.read_csv(results / "ablation_testing_pairs.csv")
    assert set(table["variant"]) == {"intensity1"} and set(table["seeds"]) == {3}
    hybrid = table.set_index(["metric", "map"])["hybrid_mean"]
    metrics = json.loads((CONFIGS / "metadata.json").read_text())["eval_metrics"]
    assert metrics == {
        key: round(float(hybrid[(metric, map_name)]), decimals)
        for key, (metric, map_name, decimals) in EVAL_METRICS.items()
    }


def test_supervised_override_only_turns_the_physics_terms_off():
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_supervised.json")])
    loss = parser.get_parsed_content("loss")
    assert loss.lambda_self == 0.0 and loss.lambda_intensity == 0.0 and not loss.needs_images
    assert json.loads((CONFIGS / "train_supervised.json").read_text()) == {"lambda_self": 0.0, "lambda_intensity": 0.0}


def test_training_writes_best_model_and_state(trained):
    assert sorted(path.name for path in trained["ckpt_dir"].iterdir()) == [
        "checkpoint_epoch=1.pt",
        "model.json",
        "model.pt",
    ]
    assert json.loads((trained["ckpt_dir"] / "model.json").read_text()) == {
        "slice_axis": 1,
        "context_slices": 1,
        "intensity_reference": "csf",
        "network_norm": "batch",
        "mask_inputs": False,
    }  # train.json's coronal 2.5D, CSF reference, batch normalisation, the input as acquired
    state = torch.load(trained["ckpt_dir"] / "checkpoint_epoch=1.pt", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == state["trainer"]["epoch_length"]  # one epoch
    metrics = (trained["log_dir"] / "metrics.csv").read_text()
    for name in ("val_t1_t2_ssim", "val_t1_ssim", "val_t2_ssim", "val_t1_psnr", "val_t1_hfen", "val_t1_mpe"):
        assert name in metrics


def test_console_shows_a_log_line_every_n_iterations_and_no_progress_bar(training):
    _, log = training
    assert iteration_log_lines(log) == [(1, LOG_EVERY)]
    assert "%|" not in log, "no progress bar beside the log lines"


@pytest.mark.parametrize(
    ("overrides", "progress_bar", "logged_steps"),
    [
        ({}, False, [20, 40]),
        ({"log_every_n_iterations": 15}, False, [15, 30, 45]),
        ({"log_every_n_iterations": 0}, False, []),
        ({"progress_bar": "true"}, True, []),
        ({"progress_bar": "true", "log_every_n_iterations": 1}, True, []),
    ],
)
def test_console_is_a_progress_bar_or_log_lines_never_both(overrides, progress_bar, logged_steps):
    """``--progress_bar`` and ``--log_every_n_iterations`` (as the command line hands them) choose the console of
    training; the steps of a 49-step epoch that get a StatsHandler line."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    for key, value in overrides.items():
        parser[key] = value
    handlers = parser["train#handlers"]
    bar = next(i for i, handler in enumerate(handlers) if handler["_target_"] == "ignite.handlers.ProgressBar")
    assert parser.get_parsed_content(f"train#handlers#{bar}#_disabled_") is not progress_bar
    stats = next(handler for handler in handlers if handler["_target_"] == "StatsHandler")
    assert stats["iteration_log"] == "@train_iteration_log"
    iteration_log = parser.get_parsed_content("train_iteration_log")

    def logs(iteration):  # a line after this (global) iteration of a run of 49-step epochs?
        engine = SimpleNamespace(state=SimpleNamespace(iteration=iteration, epoch_length=49))
        return bool(iteration_log) and iteration_log(engine, iteration)

    assert [step for step in range(1, 50) if logs(49 + step)] == logged_steps  # steps of the second epoch


def _copy_of_the_trained_run(trained, ckpt_dir):
    """``ckpt_dir`` holding a copy of the ``trained`` run's files (``checkpoint_epoch=1.pt``, ``model.pt``,
    ``model.json``)."""
    ckpt_dir.mkdir()
    for path in trained["ckpt_dir"].iterdir():
        (ckpt_dir / path.name).write_bytes(path.read_bytes())
    return ckpt_dir


def test_training_resumes_from_latest_state_and_removes_the_state_it_supersedes(study, trained, tmp_path):
    ckpt_dir = _copy_of_the_trained_run(trained, tmp_path / "models")
    iterations = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", weights_only=False)["trainer"]["iteration"]

    result = check(
        bundle_run(
            "training",
            ["train.json"],
            max_epochs=2,
            val_interval=5,
            resume="true",
            log_every_n_iterations=1,
            bundle_root=BUNDLE,
            ckpt_dir=ckpt_dir,
            log_dir=tmp_path / "logs",
            **study,
        )
    )
    log = result.stdout + result.stderr
    assert "Restored all variables" in log and "Epoch[2] Complete" in log and "Epoch[1] Complete" not in log
    assert sorted(path.name for path in ckpt_dir.iterdir()) == ["checkpoint_epoch=2.pt", "model.json", "model.pt"]
    resumed = torch.load(latest_checkpoint(ckpt_dir), weights_only=False)["trainer"]
    assert resumed["iteration"] == 2 * iterations
    assert iteration_log_lines(log) == [(2, step) for step in range(1, TRAINING_STEPS_PER_EPOCH + 1)]  # every step


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoints(study, trained, tmp_path):
    """Resumed after epoch 1 with a NaN lambda: the first step of epoch 2 has a NaN loss, training stops there with
    a message naming it, and neither checkpoint_epoch=1.pt nor model.pt is touched."""
    ckpt_dir = _copy_of_the_trained_run(trained, tmp_path / "models")
    before = {path.name: path.read_bytes() for path in ckpt_dir.iterdir()}
    result = check(
        bundle_run(
            "training",
            ["train.json"],
            max_epochs=2,
            val_interval=1,
            resume="true",
            lambda_self="$float('nan')",
            bundle_root=BUNDLE,
            ckpt_dir=ckpt_dir,
            log_dir=tmp_path / "logs",
            **study,
        )
    )
    log = result.stdout + result.stderr
    first_step = TRAINING_STEPS_PER_EPOCH + 1
    assert f"non-finite training loss at epoch 2, iteration {first_step} (1/3 of the epoch): loss = nan" in log
    assert "Epoch[2] Complete" not in log and "Engine run finished" in log
    assert {path.name: path.read_bytes() for path in ckpt_dir.iterdir()} == before


def test_training_refuses_to_start_over_an_earlier_run(study, trained):
    before = (trained["ckpt_dir"] / "model.pt").read_bytes()
    result = bundle_run("training", ["train.json"], max_epochs=1, **study, **trained)
    assert result.returncode != 0 and "already holds checkpoints" in result.stderr
    assert (trained["ckpt_dir"] / "model.pt").read_bytes() == before


def test_resume_without_state_is_a_clear_error(study, tmp_path):
    result = bundle_run(
        "training",
        ["train.json"],
        max_epochs=1,
        resume="true",
        bundle_root=BUNDLE,
        ckpt_dir=tmp_path / "empty",
        log_dir=tmp_path / "logs",
        **study,
    )
    assert result.returncode != 0
    assert "no training state" in result.stderr and str(tmp_path / "empty") in result.stderr


def _reoriented_copy(entry_dir, out_dir, voxel_size_mm=1.2):
    """The test subject's weighted images and mask stored LPS with ``voxel_size_mm`` voxels (another grid)."""
    out_dir.mkdir()
    for name in ("t1w", "t2w", "flair", "mask"):
        image = nib.load(entry_dir / f"{name}.nii.gz")
        ornt = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
        )
        image = image.as_reoriented(ornt)
        affine = image.affine @ np.diag([voxel_size_mm] * 3 + [1])
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine), out_dir / f"{name}.nii.gz")
    entry = {"subject": "lps", **{name: f"{name}.nii.gz" for name in ("t1w", "t2w", "flair", "mask")}}
    (out_dir / "dataset.json").write_text(json.dumps({"testing": [entry]}))
    return out_dir / "dataset.json"


def test_inference_writes_maps_in_input_geometry_and_refuses_overwrite(study, trained, tmp_path):
    manifest = json.loads(study["datalist"].read_text())
    test_dir = study["dataset_dir"] / manifest["testing"][0]["subject"]
    lps_manifest = _reoriented_copy(test_dir, tmp_path / "lps_input")
    output_dir = tmp_path / "maps"
    run = {
        "bundle_root": BUNDLE,
        "datalist": lps_manifest,
        "dataset_dir": lps_manifest.parent,
        "checkpoint": trained["ckpt_dir"] / "model.pt",
        "output_dir": output_dir,
    }
    check(bundle_run("inference", ["inference.json"], **run))

    t1w = nib.load(lps_manifest.parent / "t1w.nii.gz")
    mask = nib.load(lps_manifest.parent / "mask.nii.gz").get_fdata() > 0
    assert nib.aff2axcodes(t1w.affine) == ("L", "P", "S") and np.allclose(t1w.header.get_zooms(), 1.2)
    for name in ("t1_map", "t2_map", "m0_map"):
        written = nib.load(output_dir / "lps" / f"{name}.nii.gz")
        assert (output_dir / "lps" / f"{name}.nii.gz").stat().st_mode & 0o777 == 0o644  # readable by other users
        assert written.shape == t1w.shape
        np.testing.assert_allclose(written.affine, t1w.affine, atol=1e-5)
        data = written.get_fdata(dtype=np.float32)
        assert written.get_data_dtype() == np.float32
        assert np.isfinite(data).all() and np.all(data[~mask] == 0) and np.all(data[mask] > 0)
    t1 = nib.load(output_dir / "lps" / "t1_map.nii.gz").get_fdata()[mask]
    assert 50 < np.median(t1) < 10000, "T1 written in ms"

    before = (output_dir / "lps" / "t1_map.nii.gz").read_bytes()
    again = bundle_run("inference", ["inference.json"], **run)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert (output_dir / "lps" / "t1_map.nii.gz").read_bytes() == before


def _padded_copy(entry_dir, out_dir, voxels=40):
    """The test subject's weighted images and mask with ``voxels`` zeros on both sides of x and y (world kept)."""
    out_dir.mkdir()
    for name in ("t1w", "t2w", "flair", "mask"):
        image = nib.load(entry_dir / f"{name}.nii.gz")
        data = np.pad(np.asanyarray(image.dataobj), [(voxels, voxels), (voxels, voxels), (0, 0)])
        affine = image.affine.copy()
        affine[:3, 3] -= image.affine[:3, :3] @ [voxels, voxels, 0]
        nib.save(nib.Nifti1Image(data, affine), out_dir / f"{name}.nii.gz")


def test_maps_do_not_depend_on_the_field_of_view(study, trained, tmp_path):
    """The test subject padded with 40 voxels of zeros on two axes gives the same maps in the brain (within 0.5 %)."""
    manifest = json.loads(study["datalist"].read_text())
    test_dir = study["dataset_dir"] / manifest["testing"][0]["subject"]
    _padded_copy(test_dir, tmp_path / "padded")
    names = ("t1w", "t2w", "flair", "mask")
    entries = [
        {"subject": "original", **{name: str(test_dir / f"{name}.nii.gz") for name in names}},
        {"subject": "padded", **{name: str(tmp_path / "padded" / f"{name}.nii.gz") for name in names}},
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"testing": entries}))
    output_dir = tmp_path / "maps"
    run = {"datalist": tmp_path / "dataset.json", "dataset_dir": tmp_path, "output_dir": output_dir, "qc": False}
    check(
        bundle_run(
            "inference", ["inference.json"], bundle_root=BUNDLE, checkpoint=trained["ckpt_dir"] / "model.pt", **run
        )
    )
    mask = nib.load(test_dir / "mask.nii.gz").get_fdata() > 0
    for name in ("t1_map", "t2_map"):
        original = nib.load(output_dir / "original" / f"{name}.nii.gz").get_fdata()[mask]
        padded = nib.load(output_dir / "padded" / f"{name}.nii.gz").get_fdata()[40:-40, 40:-40][mask]
        assert np.mean(np.abs(padded - original) / original) < 0.005, name


def test_evaluation_writes_reports(study, trained, tmp_path):
    maps = tmp_path / "maps"
    check(
        bundle_run(
            "inference",
            ["inference.json"],
            bundle_root=BUNDLE,
            checkpoint=trained["ckpt_dir"] / "model.pt",
            output_dir=maps,
            **study,
        )
    )
    reports = tmp_path / "reports"
    result = check(
        bundle_run(
            "evaluating",
            ["evaluate.json"],
            bundle_root=BUNDLE,
            predictions_dir=maps,
            baseline_dir=maps,
            output_dir=reports,
            **study,
        )
    )
    per_slice = pd.read_csv(reports / "per_slice.csv")
    metrics = ["MPE", "HFEN", "PSNR", "SSIM", "MPE_parenchyma", "MAE_parenchyma_ms"]
    assert list(per_slice.columns) == ["model", "subject", "slice", "map", *metrics]
    assert set(per_slice["model"]) == {"hybrid", "supervised"} and set(per_slice["map"]) == {"T1", "T2"}
    assert list(pd.read_csv(reports / "per_subject.csv").columns) == ["model", "subject", "map", *metrics]
    summary = pd.read_csv(reports / "summary.csv")
    assert {"metric", "map", "supervised", "hybrid", "p_value"} <= set(summary.columns)
    assert (reports / "figure.png").stat().st_size > 10_000
    assert "summary.csv" in result.stdout


def test_multi_gpu_config_runs_two_processes_on_cpu(study, tmp_path):
    """Two gloo processes (every one runs the non-finite loss stop, which all-reduces its flag each step: a process
    without it would hang the run), with the progress bar instead of log lines."""
    launcher = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m")
    result = check(
        bundle_run(
            "training",
            ["train.json", "multi_gpu_train.json"],
            launcher=launcher,
            timeout=240,
            max_epochs=1,
            val_interval=1,
            progress_bar="true",
            slice_axis=0,  # the tiny study's 16 sagittal planes: one validation batch per process, not ~175 slices
            bundle_root=BUNDLE,
            ckpt_dir=tmp_path / "models",
            log_dir=tmp_path / "logs",
            **study,
        )
    )
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "checkpoint_epoch=1.pt", weights_only=False)
    assert not any(key.startswith("module.") for key in state["model"]), "DDP wrapper is not saved"
    assert "val_t1_ssim" in (tmp_path / "logs" / "metrics.csv").read_text()
    log = result.stdout + result.stderr
    assert "Engine run finished" in log
    assert "%|" in log and iteration_log_lines(log) == []


def test_best_model_is_the_lowest_validation_error_and_a_runaway_validation_stops_training():
    """model.pt is kept by the mean T1/T2 validation MPE (lower is better), and the divergence stop watches the
    validation errors the evaluator computes: a diverged model is never the best one."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    assert list(parser["validate#key_metric"]) == ["val_t1_t2_mpe"]
    saver = next(h for h in parser["validate#handlers"] if h["_target_"] == "CheckpointSaver")
    assert saver["key_metric_filename"] == "model.pt" and saver["key_metric_negative_sign"] is True
    parser["device"] = "$torch.device('cpu')"
    lower_is_better = parser.get_parsed_content("validate#evaluator#metric_cmp_fn")
    assert lower_is_better(5.0, 6.0) and not lower_is_better(6.0, 5.0)
    stop = parser["divergence_stop"]  # parsing the trainer would load the study: the wiring is checked as written
    assert (
        stop["_target_"] == "pipeline.handlers.DivergenceStop"
        and stop["trainer"].replace("::", "#") == "@train#trainer"
    )
    assert set(parser.get_parsed_content("divergence_metrics")) <= set(parser["validate#additional_metrics"])
    assert parser.get_parsed_content("divergence_factor") > 1
    assert stop["start_epoch"] == "@divergence_start_epoch" and parser.get_parsed_content("divergence_start_epoch") == 8
    assert any("@divergence_stop.attach(@validate" in step for step in parser["attach_state_handlers"])
    warmup = next(h for h in parser["train#handlers"] if h["_target_"] == "pipeline.handlers.LambdaWarmup")
    assert warmup["loss"] == "@loss" and warmup["lambda_self"] == "@lambda_self"


@pytest.fixture(scope="module")
def calibrated_model(study, trained, tmp_path_factory):
    """A copy of the trained model with its QC calibration (the ``calibrating`` command) beside it."""
    ckpt_dir = tmp_path_factory.mktemp("calibrated")
    checkpoint = ckpt_dir / "model.pt"
    for name in ("model.pt", "model.json"):
        (ckpt_dir / name).write_bytes((trained["ckpt_dir"] / name).read_bytes())
    run = {"bundle_root": BUNDLE, "checkpoint": checkpoint, **study}
    check(bundle_run("calibrating", ["inference.json", "calibrate.json"], **run))
    return run


def test_calibrating_writes_thresholds_beside_the_model_and_never_replaces_them(calibrated_model):
    calibration = calibrated_model["checkpoint"].parent / "qc_calibration.json"
    values = json.loads(calibration.read_text())
    manifest = json.loads(calibrated_model["datalist"].read_text())
    assert values["subjects"] == [entry["subject"] for entry in manifest["validation"]]
    assert values["model"] == str(calibrated_model["checkpoint"]) and values["margin"] == 2.0
    again = bundle_run("calibrating", ["inference.json", "calibrate.json"], **calibrated_model)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr
    assert json.loads(calibration.read_text()) == values


@pytest.fixture(scope="module")
def inferred(calibrated_model, tmp_path_factory):
    """Inference (with its QC) of the calibrated model on the tiny study's test subject; returns the maps folder and
    the console output."""
    output_dir = tmp_path_factory.mktemp("qc_inference")
    run = check(bundle_run("inference", ["inference.json"], output_dir=output_dir, **calibrated_model))
    return output_dir, run.stdout + run.stderr


def test_inference_writes_qc_and_a_report_per_subject_and_an_index(study, inferred):
    output_dir, log = inferred
    subject = json.loads(study["datalist"].read_text())["testing"][0]["subject"]
    qc = json.loads((output_dir / subject / "qc.json").read_text())
    assert qc["calibrated"] and set(qc["self_consistency"]) == {"mprage", "tse_epg"}
    assert qc["label_resolution"] is not None and qc["metrics"] is not None  # the tiny study has labels and references
    # three training steps make no model: its maps are implausible, and the console says so
    assert qc["flagged"] and f"{subject}: QC flags:" in log
    report, index = (output_dir / subject / "report.html").read_text(), (output_dir / "index.html").read_text()
    assert qc["flags"][0]["message"] in report and f"{subject}/report.html" in index


def test_inference_without_qc_writes_maps_only(calibrated_model, tmp_path):
    check(bundle_run("inference", ["inference.json"], output_dir=tmp_path, qc=False, **calibrated_model))
    written = sorted(path.name for path in tmp_path.rglob("*") if path.is_file())
    assert written == ["m0_map.nii.gz", "t1_map.nii.gz", "t2_map.nii.gz"]


@pytest.mark.parametrize(
    "learning_rate, kept, options",
    [(1e-4, None, {}), (1e6, False, {}), (1e-4, True, {"adapt_keep": "always", "adapt_lambda_intensity": 0.5})],
)
def test_adapting_keeps_the_fine_tuned_model_only_if_self_consistency_improves(
    study, calibrated_model, inferred, tmp_path, learning_rate, kept, options
):
    run = {"output_dir": tmp_path, "adapt_steps": 2, "adapt_learning_rate": learning_rate, **calibrated_model}
    check(bundle_run("adapting", ["inference.json", "adapt.json"], **run, **options))
    subject = json.loads(study["datalist"].read_text())["testing"][0]["subject"]
    record = json.loads((tmp_path / subject / "adaptation.json").read_text())
    assert record["steps"] == 2 and record["learning_rate"] == learning_rate
    assert (record["lambda_self"], record["lambda_intensity"]) == (1.0, options.get("adapt_lambda_intensity", 0.0))
    improved = record["score_after"] < record["score_before"]
    assert record["judged_better"] == (improved and len(record["flags_after"]) <= len(record["flags_before"]))
    assert record["kept"] == (record["judged_better"] or record["keep"] == "always")
    if kept:  # kept whatever the QC says: the adapted maps differ from the trained model's
        adapted = nib.load(tmp_path / subject / "t1_map.nii.gz").get_fdata()
        assert not np.allclose(adapted, nib.load(inferred[0] / subject / "t1_map.nii.gz").get_fdata())
    assert (
        record["metrics_before"]["t2_mpe_percent"] > 0
        and record["metrics_after"].keys() == record["metrics_before"].keys()
    )
    assert (tmp_path / subject / "qc.json").is_file() and (tmp_path / "index.html").is_file()
    if kept is False:  # a step of 1e6 wrecks the network: the trained model's maps are written
        assert not record["kept"]
        for name in ("t1_map", "t2_map", "m0_map"):
            adapted = nib.load(tmp_path / subject / f"{name}.nii.gz").get_fdata()
            trained = nib.load(inferred[0] / subject / f"{name}.nii.gz").get_fdata()
            np.testing.assert_allclose(adapted, trained, rtol=1e-5, atol=1e-4)


def test_training_validates_the_whole_study_first_and_names_every_problem(study, tmp_path):
    """The pre-run check (on by default) refuses a study with problems, listing them all, before any training."""
    root = tmp_path / "study"
    shutil.copytree(study["dataset_dir"], root)
    manifest = json.loads((root / "dataset.json").read_text())
    damaged = [root / manifest["training"][0]["flair"], root / manifest["validation"][0]["t2w"]]
    for path in damaged:
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.zeros(image.shape, np.float32), image.affine), path)
    ckpt_dir = tmp_path / "models"
    run = bundle_run(
        "training",
        ["train.json"],
        bundle_root=BUNDLE,
        datalist=root / "dataset.json",
        dataset_dir=root,
        ckpt_dir=ckpt_dir,
        log_dir=tmp_path / "logs",
        max_epochs=1,
        check_inputs=True,
    )
    assert run.returncode != 0 and "2 problem(s)" in run.stderr
    assert all(str(path) in run.stderr for path in damaged) and "is constant" in run.stderr
    assert not list(ckpt_dir.glob("*.pt"))


@pytest.mark.parametrize(
    "check_inputs, register, registered_in_pipeline",
    [(True, False, ()), (False, False, ("t2w", "flair")), (True, True, ("t2w", "flair"))],
)
def test_the_content_registration_runs_once_per_pair(study, check_inputs, register, registered_in_pipeline):
    """The pre-run validation registers T2w and FLAIR to the T1w (rigid); the data pipeline's translation check then
    only repeats it where the validation did not run or the run registers the images itself (the residual)."""
    from pipeline.data.coregistration import CheckCoregistrationd

    for config in ("inference.json", "train.json"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        untrained = {"intensity_reference": "brain"}  # no model.json to read it from
        parser.update(
            {"bundle_root": str(BUNDLE), "check_inputs": check_inputs, "register": register, **untrained, **study}
        )
        if config == "train.json":
            assert parser.get_parsed_content("coregistration_keys") == ([] if registered_in_pipeline == () else None)
            continue
        dataset = parser.get_parsed_content("dataset")  # streamed: nothing is loaded
        check = next(t for t in dataset.transform.transforms if isinstance(t, CheckCoregistrationd))
        assert check.registration_keys == registered_in_pipeline


def test_tissue_values_and_the_csf_reference_reach_training_the_card_and_inference(study, tmp_path):
    """``--tissue_values true --intensity_reference csf``: the training volumes are divided by their CSF (T1w, T2w)
    and re-drawn by a sampler that normalises alike; the model card records the reference and the network's norm, and
    inference repeats both."""
    from pipeline.data.normalization import ScaleByCsfd
    from pipeline.engine import write_model_card
    from pipeline.handlers import TissueValueHandler

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    overrides = {
        "tissue_values": "true",
        "intensity_reference": "csf",
        "tissue_value_every": 5,
        "tissue_value_texture": "independent",
    }
    parser.update({"bundle_root": str(BUNDLE), "ckpt_dir": str(tmp_path), **overrides, **study})
    handler = next(h for h in parser.get_parsed_content("train#handlers") if isinstance(h, TissueValueHandler))
    assert (
        handler.every_n_iterations == 5
        and handler.sampler.volumes is parser.get_parsed_content("train#dataset").volumes
        and handler.sampler.texture == "independent"
    )
    assert all(isinstance(s.normalisation[0], ScaleByCsfd) for s in handler.sampler.syntheses)
    for dataset in ("train#dataset", "validate#dataset"):
        transforms = parser.get_parsed_content(dataset).volumes.transform.transforms
        assert [t.keys for t in transforms if isinstance(t, ScaleByCsfd)] == [("t1w", "t2w")]
    write_model_card(tmp_path, slice_axis=1, context_slices=1, intensity_reference="csf", network_norm="batch")
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "checkpoint": str(tmp_path / "model.pt"), **study})
    assert parser.get_parsed_content("intensity_reference") == "csf"
    assert any(isinstance(t, ScaleByCsfd) for t in parser.get_parsed_content("dataset").transform.transforms)
    norms = {type(m).__name__ for m in parser.get_parsed_content("network_def").modules() if "Norm" in type(m).__name__}
    assert norms == {"BatchNorm2d"}  # the card's network_norm: the trained weights' layers


def test_masked_inputs_reach_training_the_card_inference_and_adaptation(study, tmp_path):
    """``--mask_inputs true``: training slices carry their stacked masks through the slice transforms and the trainer
    and validator mask the network's input; the card records it, and inference and adaptation repeat it."""
    from pipeline.engine import write_model_card

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "ckpt_dir": str(tmp_path), "mask_inputs": "true", **study})
    for section in ("train", "validate"):
        assert parser.get_parsed_content(f"{section}#prepare_batch").mask_inputs
    item = parser.get_parsed_content("train#dataset")[0]
    assert item["input_mask"].shape == (3, *item["image"].shape[1:])  # 2.5D: the slice and its two neighbours
    write_model_card(tmp_path, slice_axis=1, context_slices=1, mask_inputs=True)
    for config in (["inference.json"], ["inference.json", "adapt.json"]):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / name) for name in config])
        parser.update({"bundle_root": str(BUNDLE), "checkpoint": str(tmp_path / "model.pt"), **study})
        assert parser.get_parsed_content("evaluator").prepare_batch.mask_inputs
    assert parser.get_parsed_content("adaptation").prepare_slices.mask_inputs
    keys = parser.get_parsed_content("adapt_slice_transforms")[0].keys
    assert "input_mask" in keys


@pytest.mark.parametrize("bias_correction", [False, True])
def test_bias_correction_is_one_switch_of_training_and_inference(study, bias_correction):
    """``bias_correction`` reaches the training and validation datasets and the inference pipeline, which then
    N4-corrects the weighted images (and nothing else) before the normalisation."""
    from pipeline.data.bias_field import CorrectBiasFieldd
    from pipeline.data.normalization import ScaleByMaskedPercentiled

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "bias_correction": bias_correction, **study})
    for dataset in ("train#dataset", "validate#dataset"):
        assert parser.get_parsed_content(f"{dataset}#bias_correction") is bias_correction
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    flag = str(bias_correction).lower()
    parser.update({"bundle_root": str(BUNDLE), "bias_correction": flag, "intensity_reference": "brain", **study})
    transforms = parser.get_parsed_content("dataset").transform.transforms  # streamed: nothing is loaded
    corrections = [t for t in transforms if isinstance(t, CorrectBiasFieldd)]
    assert len(corrections) == int(bias_correction)
    if bias_correction:
        assert list(corrections[0].keys) == ["t1w", "t2w", "flair"]
        normalisation = next(t for t in transforms if isinstance(t, ScaleByMaskedPercentiled))
        assert transforms.index(corrections[0]) < transforms.index(normalisation)


def test_bids_dataset_end_to_end(trained, tmp_path):
    """BIDS (rotated T2w, maps in s, no masks) → manifest → validate → register + infer → qMRI-BIDS derivatives."""
    from pipeline.bids import is_valid_derivative_path, write_manifest
    from pipeline.data import validate_study
    from pipeline.phantom.bids import TRUTH_PATH, write_bids_study

    bids_root = write_bids_study(tmp_path / "bids", seed=3, sagittal_slices=48)  # 16 mm cannot pin a rigid x shift
    manifest = write_manifest(bids_root, tmp_path / "work" / "manifest.json")
    problems = validate_study(manifest)
    assert problems and all(p.file.endswith("_T2w.nii.gz") and "misregistered" in p.problem for p in problems)
    assert validate_study(manifest, check_registration=False) == []  # registering is what the rest needs
    output_dir = tmp_path / "maps"
    run = {"datalist": manifest, "dataset_dir": manifest.parent, "output_dir": output_dir, "qc": False}
    check(
        bundle_run(
            "inference",
            ["inference.json"],
            bundle_root=BUNDLE,
            checkpoint=trained["ckpt_dir"] / "model.pt",
            register=True,
            check_inputs=True,
            **run,
        )
    )
    entries = json.loads(manifest.read_text())["testing"]
    truth = json.loads((bids_root / TRUTH_PATH).read_text())
    assert len(entries) == len(truth["sessions"]) == 3
    derivatives = bids_root / "derivatives" / "qmap-hybrid"
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "qmap-hybrid"
    for entry in entries:
        tfm = output_dir / entry["subject"] / "t2w_to_t1w.tfm"
        assert sitk.ReadTransform(str(tfm)).GetNumberOfParameters() == 6
        # the registration found the fixture's motion: displacement error over the brain (a 48 mm slab)
        found = json.loads((output_dir / entry["subject"] / "registration.json").read_text())["t2w"]
        session = next(s for s in truth["sessions"] if s["entry"] == entry["subject"])
        mask = nib.load(bids_root / session["mask"])
        brain = nib.affines.apply_affine(mask.affine, np.argwhere(mask.get_fdata() > 0)[::20])
        moved = [
            nib.affines.apply_affine(np.asarray(m), brain)
            for m in (found["fixed_to_moving_ras"], session["t2w_motion"]["registration_transform_ras"])
        ]
        assert np.linalg.norm(moved[0] - moved[1], axis=1).max() < 1.0
        session = f"_ses-{entry['bids']['session']}" if entry["bids"].get("session") else ""
        maps = sorted(derivatives.rglob(f"sub-{entry['bids']['subject']}{session}_desc-hybrid_*map.nii.gz"))
        assert len(maps) == 3 and all(is_valid_derivative_path(str(m.relative_to(derivatives))) for m in maps)
        t1_s = nib.load(next(m for m in maps if m.name.endswith("_T1map.nii.gz"))).get_fdata()
        t1_ms = nib.load(output_dir / entry["subject"] / "t1_map.nii.gz").get_fdata()
        np.testing.assert_allclose(t1_s, t1_ms / 1000, rtol=1e-5, atol=1e-7)
        sidecar = json.loads(
            next(m for m in maps if m.name.endswith("_T1map.nii.gz")).with_suffix("").with_suffix(".json").read_text()
        )
        assert sidecar["Units"] == "s" and sidecar["SkullStripped"] is True


TRAINING_ONLY_DIFFERENCES = {
    "imports": "training imports Ignite's handlers as well",
    "amp": "training on the CPU stays fp32 by default, inference autocasts",
    "inferer": "training's validation wraps MONAI's SimpleInferer, inference the slice inferer",
    "slice_axis": "inference reads the trained model's settings from its card",
    "context_slices": "from the card",
    "mask_inputs": "from the card",
    "intensity_reference": "from the card",
    "network_norm": "from the card",
    "network_def": "in_channels from the card's context_slices",
    "network": "training names it map_network (channels_last a setting of its own); inference channels-last always",
    "initialize": "each run's own checks",
    "run": "each run's own workflow",
}


def test_train_and_inference_configs_share_their_preprocessing_and_differ_only_where_they_must():
    """``train.json`` and ``inference.json`` stand alone (MONAI model-zoo convention; every other config is layered on
    one of them), so the keys both define must agree: a change of preprocessing made in one and not the other fails
    here, naming the key. The keys that differ by role are listed with why."""
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    shared = sorted(set(train) & set(inference))
    differing = {key for key in shared if train[key] != inference[key]}
    assert differing == set(TRAINING_ONLY_DIFFERENCES), sorted(differing ^ set(TRAINING_ONLY_DIFFERENCES))
    preprocessing = ("max_shift_mm", "voxel_size_mm", "crop_margin", "bias_correction", "register")
    assert set(preprocessing) <= set(shared)
