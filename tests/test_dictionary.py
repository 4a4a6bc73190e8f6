"""The ideal-observer dictionary fit against voxels synthesised with known T1, T2, PD and gains."""

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline import physics
from pipeline.dictionary import SignalDictionary, fit_voxels, gains_from_images, gains_from_labels
from pipeline.phantom.contrasts import protocols
from pipeline.reports.yardsticks import write_dictionary_fit

CONTRASTS = ("mprage", "tse", "flair")
TISSUES = np.array([[832.0, 79.2], [1331.0, 110.0], [1200.0, 72.0], [1450.0, 160.0], [1000.0, 95.0]])
"""T1, T2 (ms) of white, cortical grey and deep grey matter, a lesion, and one in between."""


@pytest.fixture(scope="module")
def dictionary():
    return SignalDictionary.build(CONTRASTS, protocols())


def _voxels(t1, t2, pd, gains):
    return np.stack([g * np.abs(physics.synthesize(c, t1, t2, pd, protocols()[c])) for c, g in zip(CONTRASTS, gains)])


def test_noiseless_voxels_are_fitted_within_the_grid_step(dictionary):
    t1, t2 = TISSUES.T
    pd = np.array([0.69, 0.82, 0.8, 0.8, 0.75]) * 1.1  # PD x receive bias
    gains = np.array([2.0, 0.5, 1.3])
    fit_t1, fit_t2, fit_pd, distance = fit_voxels(_voxels(t1, t2, pd, gains), gains, dictionary)
    np.testing.assert_allclose(fit_t1, t1, rtol=0.02)
    np.testing.assert_allclose(fit_t2, t2, rtol=0.03)
    np.testing.assert_allclose(fit_pd, pd, rtol=0.05)
    assert distance.max() < 0.01
    wrong_t1 = fit_voxels(_voxels(t1, t2, pd, gains), gains * np.array([1.0, 1.0, 2.0]), dictionary)[0]
    assert np.abs(wrong_t1 / t1 - 1).max() > 0.05  # the gains matter


def test_gains_from_labels_recover_the_gains_and_from_images_fit_at_least_as_well(dictionary):
    """The labels give the gains; the images alone give gains that fit as well as the true ones, and need not be
    them: a voxel's direction in image space has two degrees of freedom, as many as the atoms (T1, T2), so other
    gain ratios fit the voxels too (the two numbers per subject that the images leave open)."""
    rng = np.random.default_rng(0)
    t1, t2 = (TISSUES[rng.integers(len(TISSUES), size=4000)] * rng.uniform(0.9, 1.1, (4000, 2))).T
    pd = rng.uniform(0.6, 0.9, 4000)
    gains = np.array([2.0, 0.5, 1.3])
    images = _voxels(t1, t2, pd, gains)
    np.testing.assert_allclose(gains_from_labels(images, t1, t2, pd, dictionary, protocols()), gains, rtol=1e-5)
    found = gains_from_images(images, dictionary, sample=2000)
    assert found[0] == 1.0
    fit_found, fit_true = (np.median(fit_voxels(images, g, dictionary)[3]) for g in (found, gains))
    assert fit_found <= fit_true + 1e-4
    with pytest.raises(ValueError, match="no voxel"):
        gains_from_labels(images, t1, t2, pd * 0, dictionary, protocols())


def test_written_fit_of_a_phantom_subject_measures_its_white_matter(tiny_study, tmp_path):
    """The ideal study is imaged with these very models: with the labels' gains, white matter T1 and T2 within 5 %."""
    out = write_dictionary_fit(tiny_study, tmp_path / "fit", protocols(), section="testing")
    subject = json.loads(tiny_study.read_text())["testing"][0]["subject"]
    truth = {m: nib.load(tiny_study.parent / subject / f"{m}_map.nii.gz").get_fdata() for m in ("t1", "t2")}
    fit = {m: nib.load(out / subject / f"{m}_map.nii.gz").get_fdata() for m in ("t1", "t2")}
    white = np.abs(truth["t1"] / 832.0 - 1) < 0.05
    assert white.sum() > 500
    for name in ("t1", "t2"):
        assert np.median(np.abs(fit[name][white] / truth[name][white] - 1)) < 0.05, name
    with pytest.raises(ValueError, match="gains must be"):
        write_dictionary_fit(tiny_study, tmp_path / "other", protocols(), gains="truth")
