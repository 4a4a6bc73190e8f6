"""Sharded inference and evaluation (``torchrun``, 2 gloo processes on CPU) give the files of a one-process run."""

import contextlib
import json
import os
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from pipeline import sharding
from pipeline.data import InvalidInputError, load_datalist
from pipeline.engine import write_model_card
from pipeline.reports import evaluate_predictions
from tests import warm_python

REPO = pathlib.Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "qmap_hybrid"
CONFIGS = BUNDLE / "configs"
MAPS = ("t1_map.nii.gz", "t2_map.nii.gz", "m0_map.nii.gz")
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m")


def bundle_run(run_id, config_files, launcher=(sys.executable, "-m"), **overrides):
    """``monai.bundle run <run_id>`` in a subprocess (one process, or ``torchrun``'s two); returns the output."""
    configs = [str(CONFIGS / name) for name in config_files]
    command = [*launcher, "monai.bundle", "run", run_id, "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--config_file", configs[0] if len(configs) == 1 else repr(configs), "--bundle_root", str(BUNDLE)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = warm_python.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def cohort(tiny_study, tmp_path_factory):
    """The tiny study's three subjects (training, validation, testing) as one ``testing`` list, the first one alone,
    and a randomly initialised model; returns the bundle overrides of an inference run."""
    root = tmp_path_factory.mktemp("sharding")
    manifest = json.loads(tiny_study.read_text())
    entries = [entry for section in ("training", "validation", "testing") for entry in manifest[section]]
    (root / "cohort.json").write_text(json.dumps({"testing": entries}))
    (root / "one.json").write_text(json.dumps({"testing": entries[:1]}))
    write_model_card(root, slice_axis=1, context_slices=1)  # train.json's default slices
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["device"] = "$torch.device('cpu')"
    parser["checkpoint"] = str(root / "model.pt")
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network").state_dict(), root / "model.pt")
    return {
        "datalist": root / "cohort.json",
        "dataset_dir": tiny_study.parent,
        "checkpoint": root / "model.pt",
        "check_inputs": False,
        "qc": False,
    }


@contextlib.contextmanager
def one_thread():
    """Torch on one thread in this process, as in the subprocesses (``OMP_NUM_THREADS=1``): the same float sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_maps(cohort, tmp_path_factory):
    """The maps of a one-process inference of the cohort (``inference.json`` run in this process, which saves a
    subprocess's start; the bundle's logging file is not applied to pytest's loggers)."""
    output_dir = tmp_path_factory.mktemp("single_maps")
    overrides = {**cohort, "bundle_root": str(BUNDLE), "output_dir": str(output_dir)}
    workflow = ConfigWorkflow(
        str(CONFIGS / "inference.json"), str(CONFIGS / "metadata.json"), logging_file=False, run_id="inference"
    )
    for key, value in overrides.items():
        workflow.parser[key] = str(value) if isinstance(value, pathlib.Path) else value
    with one_thread():
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    return output_dir


def subjects_of(datalist) -> list[str]:
    return [entry["subject"] for entry in json.loads(pathlib.Path(datalist).read_text())["testing"]]


def assert_same_maps(output_dir, reference_dir, subjects):
    """``output_dir`` holds exactly the maps of ``subjects``, equal to those in ``reference_dir``."""
    written = sorted(str(path.relative_to(output_dir)) for path in output_dir.glob("*/*_map.nii.gz"))
    assert written == sorted(f"{subject}/{name}" for subject in subjects for name in MAPS)
    for subject in subjects:
        for name in MAPS:
            image, reference = nib.load(output_dir / subject / name), nib.load(reference_dir / subject / name)
            np.testing.assert_allclose(image.affine, reference.affine)
            np.testing.assert_allclose(image.get_fdata(), reference.get_fdata(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("count, world_size", [(0, 2), (1, 2), (3, 2), (5, 4), (2, 5), (7, 3), (4, 1)])
def test_partition_puts_every_subject_in_exactly_one_shard(count, world_size):
    subjects = [f"sub-{index:02d}" for index in range(count)]
    shards = sharding.partition(subjects, world_size)
    assert len(shards) == world_size
    assert sorted(subject for part in shards for subject in part) == subjects
    sizes = [len(part) for part in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)  # empty shards last
    assert [subject for part in shards for subject in part] == subjects  # contiguous: what gathered tables rely on
    with pytest.raises(ValueError):
        sharding.partition(subjects, 0)


def test_without_a_process_group_a_run_is_the_world_size_one_case():
    assert not sharding.is_distributed() and sharding.is_main_process() and sharding.get_world_size() == 1
    subjects = [{"subject": "a"}, {"subject": "b"}]
    assert sharding.shard(subjects) == subjects
    table = pd.DataFrame({"subject": ["a", "b"], "value": [1.0, 2.0]})
    assert sharding.gather_tables(table) is table
    assert sharding.all_gather_lists(("x", "y")) == ["x", "y"]


def test_validate_shard_raises_every_problem_as_a_table(tiny_study, tmp_path):
    entry = load_datalist(tiny_study, "testing")[0]
    flair = nib.load(entry["flair"])
    nib.save(nib.Nifti1Image(np.zeros(flair.shape, np.float32), flair.affine), tmp_path / "flair.nii.gz")
    damaged = {**entry, "flair": str(tmp_path / "flair.nii.gz")}
    options = {"check_contrasts": False, "check_registration": False}
    sharding.validate_shard([entry], tiny_study, **options)
    with pytest.raises(InvalidInputError, match=r"1 problem\(s\) in sections \['testing'\]") as error:
        sharding.validate_shard([entry, damaged], tiny_study, **options)
    assert "flair.nii.gz" in str(error.value) and "is constant" in str(error.value)


def test_sharded_inference_writes_each_subject_once_as_one_process_does(cohort, single_maps, tmp_path):
    """Two ranks (2 + 1 subjects): the one-process maps, every subject once (a second write would refuse to overwrite
    and fail the run), and rank 0's QC index, written after the barrier, lists the subjects of both ranks."""
    output_dir = tmp_path / "maps"
    log = bundle_run(
        "inference",
        ["inference.json", "sharded_inference.json"],
        launcher=TORCHRUN,
        **{**cohort, "output_dir": output_dir, "qc": True},
    )
    subjects = subjects_of(cohort["datalist"])
    assert len(subjects) == 3
    assert_same_maps(output_dir, single_maps, subjects)
    index = (output_dir / "index.html").read_text()
    assert all(f"{subject}/report.html" in index for subject in subjects)
    assert log.count("Engine run finished") == 1, "rank 1 logs at WARNING"
    assert "refusing to overwrite" not in log


def test_a_rank_without_a_subject_neither_crashes_nor_hangs(cohort, single_maps, tmp_path):
    """One subject on two ranks, with the pre-run validation split over them: rank 1 has nothing to do."""
    one = cohort["datalist"].parent / "one.json"
    output_dir = tmp_path / "maps"
    overrides = {**cohort, "datalist": one, "output_dir": output_dir, "check_inputs": True}
    bundle_run("inference", ["inference.json", "sharded_inference.json"], launcher=TORCHRUN, **overrides)
    assert_same_maps(output_dir, single_maps, subjects_of(one))


def test_sharded_evaluation_writes_the_one_process_reports(cohort, single_maps, tmp_path):
    """Two prediction sets (paired t-tests) over three subjects: rank 0 writes the one-process CSVs, value for value."""
    baseline = tmp_path / "baseline"
    for subject in subjects_of(cohort["datalist"]):
        (baseline / subject).mkdir(parents=True)
        for name in MAPS:
            image = nib.load(single_maps / subject / name)
            nib.save(nib.Nifti1Image(image.get_fdata(dtype=np.float32) * 1.1, image.affine), baseline / subject / name)
    predictions = {"supervised": baseline, "hybrid": single_maps}
    with one_thread():
        evaluate_predictions(cohort["datalist"], predictions, tmp_path / "single", dataset_dir=cohort["dataset_dir"])
    log = bundle_run(
        "evaluating",
        ["evaluate.json", "sharded_evaluate.json"],
        launcher=TORCHRUN,
        datalist=cohort["datalist"],
        dataset_dir=cohort["dataset_dir"],
        predictions_dir=single_maps,
        baseline_dir=baseline,
        output_dir=tmp_path / "sharded",
    )
    assert log.count("per_slice: ") == 1, "only rank 0 prints (and writes) the reports"
    assert sorted(path.name for path in (tmp_path / "sharded").iterdir()) == sorted(
        path.name for path in (tmp_path / "single").iterdir()
    )
    for name in ("per_slice.csv", "per_subject.csv", "summary.csv"):
        sharded, single = pd.read_csv(tmp_path / "sharded" / name), pd.read_csv(tmp_path / "single" / name)
        pd.testing.assert_frame_equal(sharded, single, check_exact=True)
    per_slice = pd.read_csv(tmp_path / "sharded" / "per_slice.csv")
    assert list(per_slice["subject"].unique()) == subjects_of(cohort["datalist"])
    assert pd.read_csv(tmp_path / "sharded" / "summary.csv")["p_value"].notna().all()
