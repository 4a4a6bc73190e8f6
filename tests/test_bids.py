"""Tests of pipeline.bids (BIDS dataset → manifest, sidecar protocols, derivatives) on the phantom BIDS dataset.

The dataset (:func:`pipeline.phantom.bids.write_bids_study`, 16 sagittal planes) is written once per module with
non-default protocols, so that the sidecar protocols the manifest records can only match the phantom's by being read.
Names are checked with the bids-validator (raw) and bidsschematools' derivative rules, units by converting back.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bids_validator import BIDSValidator
from bidsschematools.rules import regexify_filename_rules
from bidsschematools.schema import load_schema
from scipy import ndimage

from pipeline.bids import resolve_protocols, write_derivatives, write_manifest
from pipeline.bids.__main__ import main
from pipeline.bids.layout import choose_file
from pipeline.bids.protocols import sidecar_protocol
from pipeline.data.errors import InvalidInputError, MissingFilesError
from pipeline.data.manifest import load_datalist
from pipeline.phantom.bids import TRUTH_PATH, write_bids_study
from pipeline.phantom.contrasts import protocol_overrides, protocols

PROTOCOLS = {"mprage": {"ti": 950.0}, "tse": {"te": 100.0}}
"""The phantom's protocol overrides (ms): sidecars that read back as the defaults would fail the protocol test."""
SCHEMA = load_schema()


@pytest.fixture(scope="module")
def bids_root(tmp_path_factory) -> Path:
    return write_bids_study(tmp_path_factory.mktemp("bids") / "ds", seed=3, sagittal_slices=16, protocols=PROTOCOLS)


@pytest.fixture(scope="module")
def truth(bids_root) -> dict:
    return json.loads((bids_root / TRUTH_PATH).read_text())


@pytest.fixture(scope="module")
def manifest(bids_root, tmp_path_factory) -> Path:
    return write_manifest(bids_root, tmp_path_factory.mktemp("manifest") / "manifest.json", split="split")


def raw_copy(bids_root: Path, destination: Path) -> Path:
    """A copy of the raw dataset (without sourcedata/ and derivatives/) to break."""
    return Path(shutil.copytree(bids_root, destination, ignore=shutil.ignore_patterns("sourcedata", "derivatives")))


def edit_json(path: Path, **changes) -> None:
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


def relative_files(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def test_raw_dataset_is_valid_bids(bids_root):
    files = relative_files(bids_root)
    validator = BIDSValidator()
    invalid = [path for path in files if not validator.is_bids("/" + path)]
    assert not invalid
    assert validator.is_bids("/sub-01/anat/sub-01_T1x.nii.gz") is False  # the check can fail
    assert any(path.startswith("sub-02/ses-02/anat/") for path in files)
    description = json.loads((bids_root / "dataset_description.json").read_text())
    assert description["BIDSVersion"] == SCHEMA.bids_version
    for suffix in ("T1map", "T2map", "M0map"):
        sidecar = json.loads((bids_root / f"sub-01/anat/sub-01_{suffix}.json").read_text())
        assert sidecar["Units"] == SCHEMA.objects.suffixes[suffix].unit
    assert not [path for path in files if "mask" in path and not path.startswith("sourcedata/")]


def test_t2w_motion_is_undone_by_the_recorded_registration(bids_root, truth):
    """Resampling the BIDS T2w (scipy, independent of SimpleITK) with the registration transform gives the phantom's."""
    for session in truth["sessions"]:
        motion = session["t2w_motion"]
        assert all(1.0 <= abs(angle) <= 3.0 for angle in motion["rotation_deg"])
        assert all(1.0 <= abs(shift) <= 3.0 for shift in motion["translation_mm"])
        moved = nib.load(bids_root / _bids_t2w(session))
        aligned = np.asarray(nib.load(bids_root / session["phantom_t2w"]).dataobj, dtype=np.float32)
        voxels = moved.affine
        # output voxel i → world x = V i → moved-image point R x (registration: fixed → moving) → voxel V^-1 R V i
        matrix = np.linalg.inv(voxels) @ np.asarray(motion["registration_transform_ras"]) @ voxels
        undone = ndimage.affine_transform(
            np.asarray(moved.dataobj, dtype=np.float32), matrix[:3, :3], matrix[:3, 3], order=1
        )
        inside = ndimage.affine_transform(np.ones(moved.shape), matrix[:3, :3], matrix[:3, 3], order=0, cval=0.0)
        brain = np.asarray(nib.load(bids_root / session["mask"]).dataobj) > 0
        mask = ndimage.binary_erosion(brain & (inside > 0), iterations=2)  # voxels whose source lies in the grid
        moved_error = _relative_error(np.asarray(moved.dataobj, dtype=np.float32), aligned, mask)
        undone_error = _relative_error(undone, aligned, mask)
        assert undone_error < 0.05 and moved_error > 2 * undone_error
    motions = [tuple(s["t2w_motion"]["rotation_deg"]) for s in truth["sessions"]]
    assert len(set(motions)) == len(motions)


def _relative_error(image: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean(np.abs(image[mask] - target[mask])) / np.mean(target[mask]))


def _bids_t2w(session: dict) -> str:
    prefix = f"sub-{session['participant']}" + (f"_ses-{session['session']}" if session["session"] else "")
    folder = f"sub-{session['participant']}" + (f"/ses-{session['session']}" if session["session"] else "")
    return f"{folder}/anat/{prefix}_T2w.nii.gz"


def test_manifest_entries_sessions_and_split(manifest, bids_root):
    content = json.loads(manifest.read_text())
    names = {section: [e["subject"] for e in content[section]] for section in ("training", "validation", "testing")}
    assert names == {"training": ["sub-01"], "validation": [], "testing": ["sub-02_ses-01", "sub-02_ses-02"]}
    assert (manifest.parent / content["bids_root"]).resolve() == bids_root.resolve()
    records = {e["subject"]: e["bids"] for section in ("training", "testing") for e in content[section]}
    assert records["sub-01"]["subject"] == "01" and "session" not in records["sub-01"]
    assert records["sub-02_ses-02"]["session"] == "02"
    assert records["sub-02_ses-02"]["t2w"] == "sub-02/ses-02/anat/sub-02_ses-02_T2w.nii.gz"
    for record in records.values():
        assert all((bids_root / record[key]).is_file() for key in ("t1w", "t2w", "flair", "t1_map"))
    for section in ("training", "testing"):
        for entry in load_datalist(manifest, section):
            assert Path(entry["t1w"]).resolve() == (bids_root / entry["bids"]["t1w"]).resolve()
            assert not Path(entry["t1_map"]).resolve().is_relative_to(bids_root.resolve())  # cache outside BIDS


def test_maps_are_converted_from_seconds_to_ms(manifest, bids_root, truth):
    by_entry = {session["entry"]: session for session in truth["sessions"]}
    for section in ("training", "testing"):
        for entry in load_datalist(manifest, section):
            session = by_entry[entry["subject"]]
            for key in ("t1_map", "t2_map", "m0_map"):
                phantom = np.asarray(nib.load(bids_root / session[f"phantom_{key}"]).dataobj, dtype=np.float32)
                converted = nib.load(entry[key])
                assert converted.get_data_dtype() == np.float32
                np.testing.assert_allclose(np.asarray(converted.dataobj), phantom, rtol=1e-6, atol=1e-6)
                assert np.allclose(converted.affine, nib.load(bids_root / session[f"phantom_{key}"]).affine)
            seconds = np.asarray(nib.load(bids_root / entry["bids"]["t1_map"]).dataobj)
            assert np.nanmax(seconds) < 10  # the BIDS file itself stays in s


def test_sidecar_protocols_are_the_phantoms(manifest):
    recorded = json.loads(manifest.read_text())["protocols"]
    phantom = {contrast: p.to_dict() for contrast, p in protocols(protocol_overrides(PROTOCOLS)).items()}
    expected_fields = {
        "mprage": {"tr", "ti", "te", "flip_angle", "echo_spacing", "n_excitations"},
        "tse": {"tr", "te", "echo_train_length"},
        "flair": {"tr", "ti", "te", "echo_train_length"},
    }
    assert {contrast: set(fields) for contrast, fields in recorded.items()} == expected_fields
    for contrast, fields in recorded.items():
        for field, value in fields.items():
            assert value == pytest.approx(phantom[contrast][field], rel=1e-9), (contrast, field)
    assert recorded["mprage"]["ti"] == pytest.approx(950.0) and recorded["tse"]["te"] == pytest.approx(100.0)


def test_sidecar_fields_and_fallbacks():
    assert sidecar_protocol("mprage", {"RepetitionTime": 2.3, "InversionTime": 0.9}) == {"tr": 2300.0, "ti": 900.0}
    both = {"RepetitionTimePreparation": 2.0, "RepetitionTime": 2.3}
    assert sidecar_protocol("flair", both)["tr"] == pytest.approx(2000.0)
    assert sidecar_protocol("tse", {"FlipAngle": 150, "EchoTrainLength": 16.0}) == {"echo_train_length": 16}
    with pytest.raises(InvalidInputError, match="x.json: EchoTime"):
        sidecar_protocol("tse", {"EchoTime": [0.01, 0.02]}, "x.json")
    with pytest.raises(InvalidInputError, match="whole number"):
        sidecar_protocol("flair", {"EchoTrainLength": 10.5})


def test_manifest_reuses_its_map_cache_and_refuses_to_overwrite(manifest, bids_root):
    cached = manifest.parent / "maps_ms" / "sub-01" / "t1_map.nii.gz"
    before = cached.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="manifest"):
        write_manifest(bids_root, manifest, split="split")
    write_manifest(bids_root, manifest, split="split", overwrite=True)
    assert cached.stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="inside the BIDS dataset"):
        write_manifest(bids_root, bids_root / "manifest.json")


def test_participant_filter_default_and_explicit_splits(bids_root, tmp_path):
    default = json.loads(write_manifest(bids_root, tmp_path / "a.json", participant_label=["sub-02"]).read_text())
    assert [e["subject"] for e in default["testing"]] == ["sub-02_ses-01", "sub-02_ses-02"]
    assert default["training"] == default["validation"] == []
    lists = json.loads(
        write_manifest(bids_root, tmp_path / "b.json", training=["01"], validation=["sub-02"]).read_text()
    )
    assert [e["subject"] for e in lists["validation"]] == ["sub-02_ses-01", "sub-02_ses-02"]
    with pytest.raises(InvalidInputError, match=r"sub-02'\] are in no list"):
        write_manifest(bids_root, tmp_path / "c.json", training=["01"])
    with pytest.raises(InvalidInputError, match="no participant"):
        write_manifest(bids_root, tmp_path / "d.json", participant_label=["07"])
    with pytest.raises(InvalidInputError, match="no 'nosuch' column"):
        write_manifest(bids_root, tmp_path / "e.json", split="nosuch")


def test_two_runs_are_ambiguous_without_a_rule(bids_root, tmp_path):
    root = raw_copy(bids_root, tmp_path / "runs")
    anat = root / "sub-01" / "anat"
    for run in (1, 2):
        for extension in (".nii.gz", ".json"):
            shutil.copy(anat / f"sub-01_T1w{extension}", anat / f"sub-01_run-{run}_T1w{extension}")
    for extension in (".nii.gz", ".json"):
        (anat / f"sub-01_T1w{extension}").unlink()
    with pytest.raises(InvalidInputError) as error:
        write_manifest(root, tmp_path / "m.json")
    assert "sub-01_run-1_T1w.nii.gz" in str(error.value) and "sub-01_run-2_T1w.nii.gz" in str(error.value)
    assert "runs='highest'" in str(error.value)
    chosen = json.loads(write_manifest(root, tmp_path / "m.json", runs="highest").read_text())
    assert chosen["testing"][0]["bids"]["t1w"] == "sub-01/anat/sub-01_run-2_T1w.nii.gz"
    with pytest.raises(MissingFilesError, match="sub-02_ses-01 T1w, none matching the filter"):
        write_manifest(root, tmp_path / "f.json", filters={"T1w": {"run": "1"}})  # sub-02 has no run-1
    filtered = write_manifest(root, tmp_path / "f.json", participant_label=["01"], filters={"T1w": {"run": "1"}})
    assert json.loads(filtered.read_text())["testing"][0]["bids"]["t1w"].endswith("sub-01_run-1_T1w.nii.gz")
    acquisitions = ["sub-01_acq-a_T1w.nii.gz", "sub-01_acq-b_T1w.nii.gz"]
    with pytest.raises(InvalidInputError, match="--filter T1w:acq=LABEL"):
        choose_file(acquisitions, "T1w", "sub-01", runs="highest")
    assert choose_file(acquisitions, "T1w", "sub-01", {"acq": "b"}) == "sub-01_acq-b_T1w.nii.gz"


def test_disagreeing_sidecars_name_sessions_files_and_values(bids_root, tmp_path):
    root = raw_copy(bids_root, tmp_path / "disagree")
    edit_json(root / "sub-02/ses-02/anat/sub-02_ses-02_T1w.json", InversionTime=1.2)
    with pytest.raises(InvalidInputError) as error:
        write_manifest(root, tmp_path / "m.json")
    message = str(error.value)
    assert "mprage.ti" in message and "1200.0" in message and "950.0" in message
    assert "sub-02_ses-02 (sub-02/ses-02/anat/sub-02_ses-02_T1w.json)" in message
    assert "sub-01 (sub-01/anat/sub-01_T1w.json)" in message
    edit_json(root / "sub-02/ses-02/anat/sub-02_ses-02_T1w.json", InversionTime=0.9503)  # within the tolerance
    write_manifest(root, tmp_path / "m.json")


def test_config_protocols_merge_and_contradictions(manifest, bids_root):
    merged = resolve_protocols(manifest, {"tse_epg": {"refocusing_angle": 120.0, "te": 100.0}}, ["mprage", "tse_epg"])
    assert merged["tse_epg"] == {"tr": 7010.0, "te": 100.0, "echo_train_length": 16, "refocusing_angle": 120.0}
    assert merged["mprage"]["ti"] == pytest.approx(950.0)
    from pipeline.losses import HybridLoss

    loss = HybridLoss(contrasts=["mprage", "tse_epg"], protocols=merged)
    assert loss.edges.protocols["tse_epg"].refocusing_angle == 120.0 and loss.edges.protocols["mprage"].ti == pytest.approx(950.0)
    with pytest.raises(InvalidInputError) as error:
        resolve_protocols(manifest, {"mprage": {"ti": 1100.0}}, ["mprage", "tse"])
    assert "mprage.ti" in str(error.value) and "950.0" in str(error.value) and "1100.0" in str(error.value)
    with pytest.raises(InvalidInputError, match="invalid"):
        resolve_protocols(manifest, {"tse": {"echo_spacing": 1.0}}, ["tse"])  # te 100 ms beyond a 16 ms train
    with pytest.raises(ValueError, match="not in contrasts"):
        resolve_protocols(manifest, {"flair": {"te": 300.0}}, ["mprage"])
    assert resolve_protocols({"training": []}, None, ["mprage", "tse"]) == {}
    assert resolve_protocols({"training": []}, {"tse": {"te": 80.0}}, ["tse"]) == {"tse": {"te": 80.0}}
    phantom = bids_root / "sourcedata/phantom/study/dataset.json"  # a phantom study imaged with PROTOCOLS
    assert resolve_protocols(phantom, None, ["mprage", "tse_epg", "flair"]) == {
        "mprage": {"ti": 950.0},
        "tse_epg": {"te": 100.0},
    }


def test_maps_in_unknown_or_wrong_units(bids_root, tmp_path):
    root = raw_copy(bids_root, tmp_path / "units")
    sidecar = root / "sub-01/anat/sub-01_T1map.json"
    edit_json(sidecar, Units="msec")
    with pytest.raises(InvalidInputError, match=r"sub-01: T1map file .*sub-01_T1map.nii.gz.*'msec'"):
        write_manifest(root, tmp_path / "m.json", split="split")
    edit_json(sidecar, Units="ms")  # values in s declared as ms: a median of ~1 "ms"
    with pytest.raises(InvalidInputError, match="median of 1.*Units 'ms'"):
        write_manifest(root, tmp_path / "m.json", split="split")
    content = json.loads(sidecar.read_text())
    content.pop("Units")
    sidecar.write_text(json.dumps(content))  # no Units: the spec's seconds
    entry = json.loads(write_manifest(root, tmp_path / "m.json", split="split").read_text())["training"][0]
    in_ms = np.asarray(nib.load(tmp_path / entry["t1_map"]).dataobj)
    in_s = np.asarray(nib.load(root / entry["bids"]["t1_map"]).dataobj)
    np.testing.assert_allclose(in_ms, in_s * 1000.0, rtol=1e-6)


def test_maps_from_a_derivatives_folder(bids_root, tmp_path):
    root = raw_copy(bids_root, tmp_path / "raw")
    maps = tmp_path / "maps"
    for path in sorted(root.rglob("*map.*")):
        target = (
            maps / path.relative_to(root).parent / path.name.replace("_T", "_desc-fit_T").replace("_M0", "_desc-fit_M0")
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
    without_maps = json.loads(write_manifest(root, tmp_path / "plain.json").read_text())
    assert all("t1_map" not in entry for entry in without_maps["testing"])
    with pytest.raises(InvalidInputError, match="training / validation sessions need"):
        write_manifest(root, tmp_path / "plain.json", split="split", overwrite=True)
    content = json.loads(write_manifest(root, tmp_path / "m.json", maps_dir=maps, split="split").read_text())
    entry = content["training"][0]
    assert entry["bids"]["maps_dataset"] == "maps" and entry["bids"]["t1_map"].endswith("_desc-fit_T1map.nii.gz")
    assert (tmp_path / content["maps_dir"]).resolve() == maps.resolve()
    (maps / "sub-02/ses-01/anat/sub-02_ses-01_desc-fit_M0map.nii.gz").unlink()
    with pytest.raises(InvalidInputError, match=r"sub-02_ses-01 .*has \['T1map', 'T2map'\] but not \['M0map'\]"):
        write_manifest(root, tmp_path / "n.json", maps_dir=maps, split="split")


@pytest.fixture(scope="module")
def predictions(manifest, truth, bids_root, tmp_path_factory) -> Path:
    """Maps as the inference writes them: <dir>/<entry>/t1_map.nii.gz (ms) on the T1w grid, zero outside the mask."""
    folder = tmp_path_factory.mktemp("predictions")
    for session in truth["sessions"]:
        mask = np.asarray(nib.load(bids_root / session["mask"]).dataobj) > 0
        for key in ("t1", "t2", "m0"):
            reference = nib.load(bids_root / session[f"{key}_ref"])
            data = np.where(mask, np.asarray(reference.dataobj, dtype=np.float32), 0).astype(np.float32)
            (folder / session["entry"]).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, reference.affine), folder / session["entry"] / f"{key}_map.nii.gz")
    return folder


def derivative_rules() -> list[re.Pattern]:
    rules = [
        rule["regex"]
        for group in (SCHEMA.rules.files.common, SCHEMA.rules.files.deriv)
        for rule in regexify_filename_rules(group, SCHEMA, level=2)
    ]
    return [re.compile(rule) for rule in rules]


def test_derivatives(predictions, manifest, bids_root, tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    out = write_derivatives(predictions, manifest, checkpoint=checkpoint)
    assert out == bids_root.resolve() / "derivatives" / "qmap-hybrid"
    files = relative_files(out)
    rules = derivative_rules()
    assert files and all(any(rule.match(path) for rule in rules) for path in files)
    assert not any(rule.match("sub-01/anat/sub-01_desc-hybrid_T1mapp.nii.gz") for rule in rules)
    assert not BIDSValidator().is_bids("/" + files[-1])  # bids-validator has no derivative rules
    maps = [path for path in files if path.endswith(".nii.gz")]
    assert len(maps) == 9 and "sub-02/ses-01/anat/sub-02_ses-01_desc-hybrid_T2map.nii.gz" in maps

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"] == SCHEMA.bids_version
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "qmap-hybrid" and generated["Version"]
    assert generated["CheckpointSHA256"] == hashlib.sha256(b"weights").hexdigest()
    raw = (out / description["DatasetLinks"]["raw"]).resolve()
    assert raw == bids_root.resolve()

    rules = SCHEMA.rules.sidecars.derivatives.common_derivatives  # those selecting every derivative NIfTI image
    required = [
        name
        for rule in (rules.CommonDerivativeFields, rules.ImageDerivatives)
        for name, level in rule.fields.items()
        if (level if isinstance(level, str) else level["level"]) == "required"
    ]
    assert "SkullStripped" in required
    for path in maps:
        suffix = path.removesuffix(".nii.gz").rsplit("_", 1)[1]
        sidecar = json.loads((out / path.replace(".nii.gz", ".json")).read_text())
        assert sidecar["Units"] == SCHEMA.objects.suffixes[suffix].unit
        assert all(name in sidecar for name in required) and sidecar["SkullStripped"] is True
        assert sidecar["EstimationReference"] and sidecar["EstimationAlgorithm"]
        assert len(sidecar["Sources"]) == 3
        for uri in sidecar["Sources"]:
            dataset, _, relative = uri.removeprefix("bids:").partition(":")
            assert dataset == "raw" and (raw / relative).is_file()
        entry = path.split("/anat/")[1].split("_desc-")[0]
        prediction = nib.load(predictions / entry / f"{suffix[:2].lower()}_map.nii.gz")
        written = nib.load(out / path)
        factor = {"s": 1000.0, "arbitrary": 1.0}[sidecar["Units"]]
        np.testing.assert_allclose(np.asarray(written.dataobj) * factor, np.asarray(prediction.dataobj), rtol=1e-6)
        assert np.allclose(written.affine, prediction.affine)

    import bids

    layout = bids.BIDSLayout(str(out), validate=False, is_derivative=True)
    assert len(layout.get(desc="hybrid", suffix=["T1map", "T2map", "M0map"], extension=".nii.gz")) == 9

    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_derivatives(predictions, manifest, checkpoint=checkpoint)
    with pytest.raises(ValueError, match="inside the BIDS dataset"):
        write_derivatives(predictions, manifest, bids_root / "sub-01")
    write_derivatives(predictions, manifest, checkpoint=checkpoint, overwrite=True)


def test_derivatives_bad_predictions(predictions, manifest, tmp_path):
    broken = Path(shutil.copytree(predictions, tmp_path / "broken"))
    image = nib.load(broken / "sub-01" / "t1_map.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:-1], image.affine), broken / "sub-01" / "t1_map.nii.gz")
    with pytest.raises(InvalidInputError, match="sub-01: prediction .*t1_map.nii.gz.* not on the grid"):
        write_derivatives(broken, manifest, tmp_path / "out")
    (broken / "sub-01" / "t2_map.nii.gz").unlink()
    with pytest.raises(MissingFilesError, match="t2_map.nii.gz"):
        write_derivatives(broken, manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli(bids_root, predictions, tmp_path, capsys):
    assert main(["manifest", str(bids_root), "--out", str(tmp_path / "m.json"), "--split", "split"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["training"][0]["subject"] == "sub-01"
    assert main(["manifest", str(bids_root), "--out", str(tmp_path / "m.json"), "--split", "split"]) == 1
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["manifest", str(bids_root), "--out", str(tmp_path / "x.json"), "--split", "split", "--training", "01"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:
        main(["manifest", str(bids_root), "--out", str(tmp_path / "x.json"), "--filter", "T1w-acq"])
    assert usage.value.code == 2
    arguments = ["derivatives", str(predictions), str(tmp_path / "m.json"), "--out", str(tmp_path / "deriv")]
    assert main(arguments) == 0 and (tmp_path / "deriv" / "dataset_description.json").is_file()
