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


def test_identifiability_jacobian_matches_the_closed_forms_and_finds_the_weak_direction(tiny_study):
    """``scripts/identifiability.py`` on the simple acquisition (spin-echo TSE, no readout train): each image is linear
    in PD, the MPRAGE does not see T2, the spin echo's ``d log S / d log T2`` is TE / T2 and its T1 term negative and within twice the
    saturation recovery's (the refocusing's stimulated echoes add some); white matter's weakest direction moves T2 up
    with T1 and PD down."""
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "scripts"))
    import identifiability

    from pipeline.phantom.changes import subject_tissues
    from pipeline.phantom.contrasts import protocol_overrides, protocols
    from pipeline.phantom.tissues import COMPARTMENTS

    generator = json.loads(tiny_study.read_text())["generator"]
    tissues = subject_tissues(generator, 0)
    assert not tissues.acquisition.tse_echo_train  # the closed form below is the simple spin echo's
    white = COMPARTMENTS.index("white_matter")
    jacobian = identifiability.log_jacobian(tissues, protocol_overrides(generator.get("protocols")), white)
    np.testing.assert_allclose(jacobian[:, 2], 1.0, atol=1e-6)
    assert abs(jacobian[0, 1]) < 1e-6
    t1, t2 = tissues.values[white, :2]
    tse = protocols()["tse"]
    assert jacobian[1, 1] == pytest.approx(tse.te / t2, rel=1e-3)
    recovery = np.exp(-tse.tr / t1)  # saturation recovery: d log S / d log T1 = -(TR/T1) e^(-TR/T1) / (1 - e^(-TR/T1))
    assert -2 * (tse.tr / t1) * recovery / (1 - recovery) < jacobian[1, 0] < 0
    weakest = np.linalg.svd(jacobian)[2][-1]
    weakest = weakest * np.sign(weakest[1])
    assert weakest[0] < 0 and weakest[2] < 0
