"""Tests of pipeline.data.validation and ``python -m pipeline.validate``: every problem of a study at once."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline import physics
from pipeline.cache import CACHE_ENV
from pipeline.data import InvalidInputError, load_datalist, validate_study, validation
from pipeline.data.tissue_contrasts import EXPECTED_CONTRAST_ORDER, contrast_problems, unusual_contrasts
from pipeline.data.validation import input_warnings, require_valid_study
from pipeline.phantom.contrasts import protocols as phantom_protocols
from pipeline.validate import main as validate_main

TISSUE_NAMES = {"white_matter": "white_matter", "cortical_grey_matter": "grey_matter", "csf": "csf"}
"""physics_reference.json tissue name -> validation tissue name."""
CONTRAST_OF_KEY = {"t1w": "mprage", "t2w": "tse", "flair": "flair"}


def test_expected_contrast_orders_follow_from_the_physics(physics_reference):
    """The ascending tissue order of each weighted image is that of its signal model at the reference 3 T values."""
    tissues = physics_reference["tissues_3T"]
    for key, contrast in CONTRAST_OF_KEY.items():
        protocol = phantom_protocols()[contrast]  # FLAIR: the CSF-nulling TI of a real SPACE FLAIR
        signal = {
            TISSUE_NAMES[name]: abs(float(physics.synthesize(contrast, t["T1"], t["T2"], t["PD"], protocol)))
            for name, t in tissues.items()
        }
        assert tuple(sorted(signal, key=signal.get)) == EXPECTED_CONTRAST_ORDER[key]


@pytest.mark.parametrize("swapped", [("t1w", "t2w"), ("t1w", "flair"), ("t2w", "flair")])
def test_contrast_problems_name_both_files_of_any_swap(swapped):
    """Medians as the phantom's full-brain regions give them (a CSF region mostly grey matter: its T1w median is near
    grey matter's), swapped between two keys: both are named, and the unswapped medians pass."""
    medians = {
        "t1w": {"csf": 740.0, "grey_matter": 771.0, "white_matter": 900.0},
        "t2w": {"csf": 1553.0, "grey_matter": 1466.0, "white_matter": 984.0},
        "flair": {"csf": 994.0, "grey_matter": 1763.0, "white_matter": 889.0},
    }
    assert contrast_problems(medians) == {}
    a, b = swapped
    problems = contrast_problems({**medians, a: medians[b], b: medians[a]})
    assert set(problems) == {a, b} and all(f"{min(a, b)} and {max(a, b)} swapped" in p for p in problems.values())


def test_contrasts_near_one_are_no_evidence_of_a_swap():
    """A partial field of view (template CSF region mostly grey matter) with an unregistered T2w: CSF over grey matter
    1.03 in the T1w, 0.94 in the T2w (measured on the BIDS phantom of test_bids_dataset_end_to_end) is no swap."""
    medians = {
        "t1w": {"csf": 1.03, "grey_matter": 1.0, "white_matter": 1.13},
        "t2w": {"csf": 0.94, "grey_matter": 1.0, "white_matter": 0.75},
        "flair": {"csf": 0.66, "grey_matter": 1.0, "white_matter": 0.63},
    }
    assert contrast_problems(medians) == {}
    swapped = contrast_problems({**medians, "t1w": medians["t2w"], "t2w": medians["t1w"]})
    assert set(swapped) == {"t1w", "t2w"}  # the white matter tells what the CSF cannot


def _tissue_medians(physics_reference, scale=None) -> dict:
    """Medians of pure tissue in each weighted image from the signal models (phantom protocols), with ``scale``:
    ``{(tissue, "T1" | "T2"): factor}`` on the reference 3 T values."""
    tissues = physics_reference["tissues_3T"]
    medians = {}
    for key, contrast in CONTRAST_OF_KEY.items():
        medians[key] = {}
        for name, t in tissues.items():
            t1, t2 = ((scale or {}).get((name, p), 1.0) * t[p] for p in ("T1", "T2"))
            signal = physics.synthesize(contrast, t1, t2, t["PD"], phantom_protocols()[contrast])
            medians[key][TISSUE_NAMES[name]] = abs(float(signal))
    return medians


@pytest.mark.parametrize(
    "scale, flair_bright",
    [({("white_matter", "T2"): 1.3}, True), ({("white_matter", "T1"): 1.2, ("white_matter", "T2"): 1.3}, False)],
)
def test_white_matter_disease_is_at_most_a_warning_and_swaps_are_still_caught(physics_reference, scale, flair_bright):
    """White matter with a 30 % longer T2 (FLAIR-bright, as disease is on every scanner: the old rule refused it), or
    with a 20 % longer T1 too: never a refusal, a warning when FLAIR-bright; swaps still named."""
    medians = _tissue_medians(physics_reference, scale)
    assert (medians["flair"]["white_matter"] > medians["flair"]["grey_matter"]) == flair_bright
    assert contrast_problems(medians) == {}
    warnings = unusual_contrasts(medians)
    assert set(warnings) == ({"flair"} if flair_bright else set())
    assert all("white-matter disease" in warning for warning in warnings.values())
    for a, b in [("t1w", "t2w"), ("t1w", "flair"), ("t2w", "flair")]:
        problems = contrast_problems({**medians, a: medians[b], b: medians[a]})
        assert set(problems) == {a, b} and all(f"{min(a, b)} and {max(a, b)} swapped" in p for p in problems.values())


def test_a_flair_with_little_grey_white_contrast_passes(physics_reference):
    medians = _tissue_medians(physics_reference)
    for contrast in (0.98, 1.02):  # white matter 2 % darker or brighter than grey matter
        flat = {**medians, "flair": {**medians["flair"], "white_matter": contrast * medians["flair"]["grey_matter"]}}
        assert contrast_problems(flat) == {}
        assert set(unusual_contrasts(flat)) == (set() if contrast < 1 else {"flair"})


def test_warnings_do_not_stop_a_run_and_reach_the_qc(tiny_study, monkeypatch, capsys):
    entry = load_datalist(tiny_study, "testing")[0]
    warning = validation.Problem(entry["subject"], entry["flair"], "flair white matter is brighter", "warning")
    monkeypatch.setattr(validation, "validate_entry", lambda entry, **options: [warning])
    assert require_valid_study(tiny_study, sections=["testing"]) == [warning]
    assert input_warnings(entry) == ["flair white matter is brighter"]
    assert validate_main([str(tiny_study), "--sections", "testing"]) == 0
    assert "warning" in capsys.readouterr().out
    error = warning._replace(severity="error")
    monkeypatch.setattr(validation, "validate_entry", lambda entry, **options: [warning, error])
    with pytest.raises(InvalidInputError, match="1 problem"):
        require_valid_study(tiny_study, sections=["testing"], cache=False)


def rotated(path: str, degrees: float, shift_mm=(0.0, 0.0, 0.0)) -> None:
    """Rewrite an image with its content rotated about the x axis (through the grid centre) and shifted."""
    image = sitk.ReadImage(path, sitk.sitkFloat32)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    transform.SetRotation(np.deg2rad(degrees), 0.0, 0.0)
    transform.SetTranslation(shift_mm)
    sitk.WriteImage(sitk.Resample(image, image, transform, sitk.sitkLinear, 0.0), path)


def rewrite(path: str, function) -> None:
    image = nib.load(path)
    nib.save(nib.Nifti1Image(function(image.get_fdata(dtype=np.float32)).astype(np.float32), image.affine), path)


@pytest.fixture
def damaged_study(full_study, tmp_path):
    """A copy of the full-size study with a different problem in every file listed in ``expected``."""
    root = tmp_path / "study"
    shutil.copytree(full_study.parent, root)
    shutil.copytree(root / "sub-01", root / "sub-02")  # a second subject to damage otherwise
    manifest = json.loads((root / "dataset.json").read_text())
    first = manifest["testing"][0]
    second = {key: value.replace("sub-01", "sub-02") for key, value in first.items()}
    (root / "dataset.json").write_text(json.dumps({**manifest, "training": [first], "testing": [second]}))
    rotated(str(root / first["t2w"]), 8.0)  # misregistered by a rotation only
    rewrite(str(root / first["t1_map"]), lambda d: d / 1000)  # seconds
    rewrite(str(root / second["flair"]), lambda d: 0 * d)  # all zero
    (root / second["mask"]).unlink()  # missing
    t1w, t2w = root / second["t1w"], root / second["t2w"]  # swapped in the files
    t1w_bytes = t1w.read_bytes()
    t1w.write_bytes(t2w.read_bytes())
    t2w.write_bytes(t1w_bytes)
    expected = {
        (first["subject"], first["t2w"]): "rotation",
        (first["subject"], first["t1_map"]): "looks like seconds",
        (second["subject"], second["flair"]): "is constant",
        (second["subject"], second["mask"]): "does not exist",
        (second["subject"], second["t1w"]): "are the t1w and t2w swapped?",
        (second["subject"], second["t2w"]): "are the t1w and t2w swapped?",
    }
    return root / "dataset.json", {(s, str(root / f)): phrase for (s, f), phrase in expected.items()}


def test_every_problem_of_a_study_at_once(damaged_study, capsys, monkeypatch):
    manifest, expected = damaged_study
    problems = validate_study(manifest, sections=["training", "testing"])
    found = {(p.subject, p.file): p.problem for p in problems if p.severity == "error"}
    for (subject, file), phrase in expected.items():
        assert phrase in found.get((subject, file), ""), (subject, file, found)
    assert set(found) == set(expected)  # nothing else: the untouched files pass
    # the command line and the bundle's pre-run check report these rows (validated once above: ~10 s per subject)
    monkeypatch.setattr("pipeline.validate.validate_study", lambda *args, **kwargs: problems)
    assert validate_main([str(manifest)]) == 1
    table = capsys.readouterr().out
    assert all(file in table for _, file in expected) and "looks like seconds" in table
    monkeypatch.setattr("pipeline.data.validation.validate_study", lambda *args, **kwargs: problems)
    with pytest.raises(InvalidInputError, match="6 problem"):
        require_valid_study(manifest)


def test_results_are_cached_per_file_state_and_options(tiny_study, tmp_path, monkeypatch):
    """A second validation reads the first one's result (problems included); touching a file, other options,
    ``cache=False`` or a damaged cache file validate again."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    calls = []

    def fake_validate_entry(entry, **options):
        calls.append(entry["subject"])
        return [validation.Problem(entry["subject"], entry["t2w"], f"t2w problem {len(calls)}")]

    monkeypatch.setattr(validation, "validate_entry", fake_validate_entry)
    first = validate_study(tiny_study, sections=["testing"])
    assert validate_study(tiny_study, sections=["testing"]) == first and len(calls) == 1
    assert isinstance(first[0], validation.Problem) and first[0].problem == "t2w problem 1"
    validate_study(tiny_study, sections=["testing"], check_contrasts=False)
    assert len(calls) == 2
    validate_study(tiny_study, sections=["testing"], cache=False)
    assert len(calls) == 3
    entry = load_datalist(tiny_study, "testing")[0]
    os.utime(entry["flair"], ns=(0, 10**18))
    assert validate_study(tiny_study, sections=["testing"])[0].problem == "t2w problem 4"
    for cached in validation.validation_cache_dir().glob("*.json"):
        cached.write_text("{not json")
    validate_study(tiny_study, sections=["testing"])
    assert len(calls) == 5


def test_a_clean_study_has_no_problem(full_study, capsys):
    assert validate_main([str(full_study)]) == 0
    assert "no problems" in capsys.readouterr().out
