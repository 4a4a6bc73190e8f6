"""The interpolated-labels yardstick: the low-resolution labels on the 1 mm grid, as training sees them."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.reports.yardsticks import write_interpolated_labels


def test_interpolated_labels_are_the_linear_interpolation_of_the_slabs_on_the_t1w_grid(tiny_study, tmp_path):
    folder = write_interpolated_labels(tiny_study, tmp_path / "labels", section="testing")
    entry = json.loads(tiny_study.read_text())["testing"][0]
    t1w = nib.load(tiny_study.parent / entry["t1w"])
    mask = np.asarray(nib.load(tiny_study.parent / entry["mask"]).dataobj) > 0
    for map_key, file_name in (("t1_map", "t1_map"), ("t2_map", "t2_map")):
        written = nib.load(folder / entry["subject"] / f"{file_name}.nii.gz")
        assert written.shape == t1w.shape and np.allclose(written.affine, t1w.affine)
        slabs = nib.load(tiny_study.parent / entry[map_key])
        assert slabs.header.get_zooms()[2] == pytest.approx(3.5)
        # scipy: every 1 mm voxel's position in the slab volume's voxel coordinates, linear interpolation
        to_slabs = np.linalg.inv(slabs.affine) @ t1w.affine
        coordinates = np.stack(np.meshgrid(*(np.arange(n) for n in t1w.shape), indexing="ij"), 0).reshape(3, -1)
        coordinates = to_slabs[:3, :3] @ coordinates + to_slabs[:3, 3:]
        expected = ndimage.map_coordinates(np.asarray(slabs.dataobj, np.float64), coordinates, order=1, mode="nearest")
        expected = expected.reshape(t1w.shape)
        np.testing.assert_allclose(np.asarray(written.dataobj)[mask], expected[mask], rtol=1e-4)
        assert (np.asarray(written.dataobj)[~mask] == 0).all()
    with pytest.raises(FileExistsError, match="overwrite"):
        write_interpolated_labels(tiny_study, folder, section="testing")
