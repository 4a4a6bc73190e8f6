"""Fusion of prediction sets (pipeline.fusion): the voxel-wise median, against numpy, and its refusals."""

import nibabel as nib
import numpy as np
import pytest

from pipeline.engine import MAP_NAMES
from pipeline.fusion import fuse_prediction_sets, main


def _write_set(folder, maps, affine=None, subject="sub-01"):
    """A prediction set of one subject: ``maps`` (3, X, Y, Z) as T1, T2, M0 files (identity affine by default)."""
    affine = np.eye(4) if affine is None else affine
    for name, values in zip(MAP_NAMES, maps):
        (folder / subject).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(values.astype(np.float32), affine), folder / subject / f"{name}.nii.gz")
    return folder


def test_fusion_is_the_voxelwise_median_of_every_map(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 2.5)
    values = rng.uniform(10, 2000, size=(3, 3, 6, 5, 4))  # (models, maps, X, Y, Z)
    folders = [_write_set(tmp_path / f"model{k}", values[k], affine) for k in range(3)]
    out = fuse_prediction_sets(folders, tmp_path / "fused")
    for index, name in enumerate(MAP_NAMES):
        fused = nib.load(out / "sub-01" / f"{name}.nii.gz")
        np.testing.assert_allclose(fused.get_fdata(), np.median(values[:, index], axis=0), rtol=1e-6)
        np.testing.assert_allclose(fused.affine, affine)
    # an outlier model does not move the median: replace one set by garbage, the fused map stays between the others
    _write_set(folders[2], values[2] * 100, affine)
    fused = nib.load(fuse_prediction_sets(folders, tmp_path / "fused", overwrite=True) / "sub-01" / "t1_map.nii.gz")
    assert (fused.get_fdata() <= np.maximum(values[0, 0], values[1, 0]) + 1e-3).all()


def test_fusion_refuses_mismatched_sets_and_existing_maps(tmp_path):
    maps = np.ones((3, 4, 4, 4))
    first = _write_set(tmp_path / "a", maps)
    shifted = np.eye(4)
    shifted[0, 3] = 2.0
    moved = _write_set(tmp_path / "b", maps, shifted)
    with pytest.raises(ValueError, match=r"b/sub-01/t1_map.nii.gz: its affine differs"):
        fuse_prediction_sets([first, moved], tmp_path / "out")
    other = _write_set(tmp_path / "c", maps, subject="sub-02")
    with pytest.raises(ValueError, match=r"subjects \['sub-02'\] differ"):
        fuse_prediction_sets([first, other], tmp_path / "out")
    with pytest.raises(ValueError, match="two or more"):
        fuse_prediction_sets([first], tmp_path / "out")
    out = fuse_prediction_sets([first, _write_set(tmp_path / "d", maps)], tmp_path / "out")
    written = (out / "sub-01" / "t1_map.nii.gz").read_bytes()
    with pytest.raises(FileExistsError, match="t1_map.nii.gz exists"):
        fuse_prediction_sets([first, first], out)
    assert (out / "sub-01" / "t1_map.nii.gz").read_bytes() == written


def test_command_line_fuses_and_refuses_with_exit_code_2(tmp_path, capsys):
    rng = np.random.default_rng(1)
    values = rng.uniform(10, 2000, size=(3, 3, 4, 4, 4))
    folders = [str(_write_set(tmp_path / f"model{k}", values[k])) for k in range(3)]
    assert main([*folders, "--output-dir", str(tmp_path / "fused")]) == 0
    fused = nib.load(tmp_path / "fused" / "sub-01" / "t2_map.nii.gz").get_fdata()
    np.testing.assert_allclose(fused, np.median(values[:, 1], axis=0), rtol=1e-6)
    assert "3 prediction sets of 1 subject(s)" in capsys.readouterr().out
    assert main([*folders, "--output-dir", str(tmp_path / "fused")]) == 2  # the fused set exists: not overwritten
    assert "exists" in capsys.readouterr().err
    assert main([*folders, "--output-dir", str(tmp_path / "fused"), "--overwrite"]) == 0
