"""HFEN, MPE, SSIM and PSNR against the reference values, scipy and scikit-image."""

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.handlers import IgniteMetricHandler
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.metrics import (
    HFENMetric,
    MPEMetric,
    hfen,
    laplacian_of_gaussian,
    log_kernel,
    map_psnr_metric,
    map_ssim_metric,
    mpe,
)


def smooth_random_map(seed, shape=(40, 36)):
    """A positive map with structure at several scales (like a T1 map in units of 3 s)."""
    rng = np.random.default_rng(seed)
    return 0.2 + ndimage.gaussian_filter(rng.random(shape), 1.5) + 0.05 * rng.random(shape)


@pytest.fixture(scope="module")
def square_case(physics_reference):
    """The reference's HFEN case: a 32x32 unit square in a 64x64 zero image, estimate = 0.9 * reference."""
    reference = np.zeros((64, 64))
    reference[16:48, 16:48] = 1.0
    return 0.9 * reference, reference, physics_reference["hfen"]["cases"][0]


def test_log_kernel_matches_fspecial(physics_reference):
    described = physics_reference["hfen"]["log_kernel"]
    kernel = log_kernel(described["size"], described["sigma"])
    assert kernel.shape == (15, 15)
    assert float(kernel[7, 7]) == pytest.approx(described["centre_value"], abs=1e-6)
    assert float(kernel.sum()) == pytest.approx(0.0, abs=1e-15)
    torch.testing.assert_close(kernel, kernel.T)
    torch.testing.assert_close(kernel, kernel.flip(0))


def test_hfen_matches_reference_square(square_case):
    estimate, reference, expected = square_case
    assert hfen(estimate, reference) == pytest.approx(expected["normalised"], abs=1e-6)
    assert hfen(estimate, reference, normalized=False) == pytest.approx(expected["unnormalised"], abs=1e-5)
    assert hfen(torch.tensor(estimate), torch.tensor(reference)) == pytest.approx(expected["normalised"], abs=1e-6)


def test_hfen_matches_scipy_convolution():
    estimate, reference = smooth_random_map(0), smooth_random_map(1)
    kernel = log_kernel().numpy()
    difference = ndimage.convolve(estimate, kernel, mode="constant") - ndimage.convolve(
        reference, kernel, mode="constant"
    )
    unnormalised = np.linalg.norm(difference)
    assert hfen(estimate, reference, normalized=False) == pytest.approx(unnormalised, rel=1e-10)
    normaliser = np.linalg.norm(ndimage.convolve(reference, kernel, mode="constant"))
    assert hfen(estimate, reference) == pytest.approx(unnormalised / normaliser, rel=1e-10)
    filtered = laplacian_of_gaussian(torch.tensor(estimate)[None, None])
    np.testing.assert_allclose(filtered[0, 0].numpy(), ndimage.convolve(estimate, kernel, mode="constant"), atol=1e-12)


def test_mpe_by_hand():
    reference = np.array([[100.0, 200.0], [0.0, 400.0]])
    estimate = np.array([[110.0, 150.0], [5.0, 400.0]])
    # the zero reference voxel is left out: (10% + 25% + 0%) / 3
    assert mpe(estimate, reference) == pytest.approx(35.0 / 3.0, rel=1e-12)
    assert mpe(estimate, reference, mask=np.array([[1, 1], [1, 0]])) == pytest.approx(17.5, rel=1e-12)
    assert mpe(estimate, reference, exclude=np.array([[0, 1], [0, 0]])) == pytest.approx(5.0, rel=1e-12)
    assert mpe(torch.tensor(estimate), torch.tensor(reference)) == pytest.approx(35.0 / 3.0, rel=1e-12)
    assert math.isnan(mpe(estimate, np.zeros((2, 2))))
    with pytest.raises(ValueError, match="2D map"):
        mpe(estimate[None], reference[None])


def batch_of_maps(n_slices=3, n_channels=2):
    references = np.stack([[smooth_random_map(10 * s + c) for c in range(n_channels)] for s in range(n_slices)])
    noise = np.random.default_rng(5).normal(0.0, 0.03, references.shape)
    estimates = ndimage.uniform_filter(references, size=(1, 1, 3, 3)) + noise
    return estimates, references


@pytest.mark.parametrize("normalized", [True, False])
def test_hfen_metric_keeps_per_slice_values(normalized):
    estimates, references = batch_of_maps()
    metric = HFENMetric(normalized=normalized)
    metric(y_pred=torch.tensor(estimates[:2], dtype=torch.float32), y=torch.tensor(references[:2], dtype=torch.float32))
    metric(y_pred=torch.tensor(estimates[2:], dtype=torch.float32), y=torch.tensor(references[2:], dtype=torch.float32))
    per_slice = metric.get_buffer()
    expected = np.array(
        [
            [hfen(e, r, normalized) for e, r in zip(es, rs, strict=True)]
            for es, rs in zip(estimates, references, strict=True)
        ]
    )
    assert per_slice.shape == (3, 2)
    np.testing.assert_allclose(per_slice.numpy(), expected, rtol=1e-5)
    assert float(metric.aggregate()) == pytest.approx(expected.mean(), rel=1e-5)


def test_mpe_metric_masks_background_and_skips_empty_slices():
    estimates, references = batch_of_maps(n_channels=1)
    references[:, :, :5] = 0.0
    metric = MPEMetric()
    metric(y_pred=torch.tensor(estimates), y=torch.tensor(references))
    metric(y_pred=torch.ones(1, 1, 40, 36, dtype=torch.float64), y=torch.zeros(1, 1, 40, 36, dtype=torch.float64))
    per_slice = metric.get_buffer()
    expected = [mpe(e[0], r[0]) for e, r in zip(estimates, references, strict=True)]
    np.testing.assert_allclose(per_slice[:3, 0].numpy(), expected, rtol=1e-12)
    assert math.isnan(float(per_slice[3, 0]))
    assert float(metric.aggregate()) == pytest.approx(np.mean(expected), rel=1e-6)


def test_ssim_matches_scikit_image():
    estimates, references = batch_of_maps(n_channels=1)
    metric = map_ssim_metric(data_range=1.0, reduction="none")
    values = metric(y_pred=torch.tensor(estimates), y=torch.tensor(references))
    for value, estimate, reference in zip(values[:, 0], estimates[:, 0], references[:, 0], strict=True):
        expected = structural_similarity(
            reference,
            estimate,
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            K1=0.01,
            K2=0.03,
        )
        assert float(value) == pytest.approx(expected, abs=1e-4)  # MONAI computes SSIM in float32


def test_psnr_matches_scikit_image():
    estimates, references = batch_of_maps(n_channels=1)
    values = map_psnr_metric(max_val=1.5, reduction="none")(y_pred=torch.tensor(estimates), y=torch.tensor(references))
    for value, estimate, reference in zip(values[:, 0], estimates[:, 0], references[:, 0], strict=True):
        assert float(value) == pytest.approx(peak_signal_noise_ratio(reference, estimate, data_range=1.5), rel=1e-6)


def test_metrics_work_as_ignite_handlers():
    estimates, references = batch_of_maps(n_channels=1)
    batches = [(torch.tensor(estimates[i : i + 1]), torch.tensor(references[i : i + 1])) for i in range(3)]
    engine = Engine(lambda engine, batch: batch)
    IgniteMetricHandler(metric_fn=HFENMetric(), output_transform=lambda output: output, save_details=True).attach(
        engine, "hfen"
    )
    IgniteMetricHandler(metric_fn=MPEMetric(), output_transform=lambda output: output).attach(engine, "mpe")
    state = engine.run(batches)
    expected_hfen = np.mean([hfen(e[0], r[0]) for e, r in zip(estimates, references, strict=True)])
    assert state.metrics["hfen"] == pytest.approx(expected_hfen, rel=1e-6)
    assert state.metric_details["hfen"].shape == (3, 1)
    assert state.metrics["mpe"] == pytest.approx(
        np.mean([mpe(e[0], r[0]) for e, r in zip(estimates, references, strict=True)])
    )
