"""Tests of pipeline.files (atomic writes) and of the maps written through it."""

from __future__ import annotations

import stat

import nibabel as nib
import numpy as np
import pytest

from pipeline.files import atomic_target, write_atomically


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_target_renames_a_finished_file_readable_by_others_and_removes_a_failed_one(tmp_path):
    target = tmp_path / "new" / "map.nii.gz"
    with atomic_target(target, suffix=".nii.gz") as temporary:
        assert temporary.parent == target.parent and temporary.name.endswith(".nii.gz") and not target.exists()
        nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), temporary)
    assert _mode(target) == 0o644  # not mkstemp's 0600
    np.testing.assert_array_equal(nib.load(target).get_fdata(), 1.0)

    write_atomically(target, b"kept")
    with pytest.raises(RuntimeError), atomic_target(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"kept" and sorted(p.name for p in target.parent.iterdir()) == ["map.nii.gz"]
