"""Sobel edges, scale-invariant L1 and the hybrid loss: values, invariances and gradients."""

import numpy as np
import pytest
import torch
from scipy import ndimage, optimize

from pipeline import physics
from pipeline.engine import PrepareMapBatch
from pipeline.losses import (
    EdgeConsistencyLoss,
    IntensityConsistencyLoss,
    MapL1Loss,
    HybridLoss,
    ScaleInvariantL1Loss,
    SelfSupervisedLoss,
    label_spread_weights,
    sobel_edges,
)

CONTRAST_CHANNELS = {"mprage": 0, "tse": 1, "flair": 2}


def random_maps(shape=(2, 3, 12, 10), seed=0, dtype=torch.float64):
    """Positive maps in network units: T1 0.1-0.9 (300-2700 ms), T2 0.01-0.1 (30-300 ms), M0 0.5-1."""
    generator = torch.Generator().manual_seed(seed)
    unit = torch.rand(shape, generator=generator, dtype=dtype)
    low = torch.tensor([0.1, 0.01, 0.5], dtype=dtype).view(1, 3, 1, 1)
    high = torch.tensor([0.9, 0.1, 1.0], dtype=dtype).view(1, 3, 1, 1)
    return low + (high - low) * unit


def synthesize_all(pred, map_unit_ms=physics.MAP_UNIT_MS):
    """(B, 3, H, W) MPRAGE, TSE, FLAIR images from (B, 3, H, W) maps, in test-side unit handling."""
    t1, t2, m0 = pred[:, 0:1] * map_unit_ms, pred[:, 1:2] * map_unit_ms, pred[:, 2:3]
    return torch.cat([physics.mprage(t1, m0), physics.tse(t1, t2, m0), physics.flair(t1, t2, m0)], dim=1)


def test_sobel_edges_match_scipy_sobel():
    images = torch.rand(2, 3, 9, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = 1e-8
    edges = sobel_edges(images, eps=eps)
    assert edges.shape == images.shape and edges.dtype == images.dtype
    for index in np.ndindex(*images.shape[:2]):
        image = images[index].numpy()
        # torch 'reflect' padding (d c b | a b c d) is scipy's 'mirror'; MONAI's kernels are scipy's / 8
        grad_h = ndimage.sobel(image, axis=0, mode="mirror") / 8
        grad_w = ndimage.sobel(image, axis=1, mode="mirror") / 8
        np.testing.assert_allclose(edges[index].numpy(), np.sqrt(grad_h**2 + grad_w**2 + eps), rtol=1e-12)


@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_smoothed_sobel_edges_match_scipy_gaussian_then_sobel(sigma):
    images = torch.rand(1, 2, 40, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    edges = sobel_edges(images, eps=0.0, smoothing_sigma=sigma)
    for channel in range(2):
        smoothed = ndimage.gaussian_filter(images[0, channel].numpy(), sigma, truncate=3.0, mode="mirror")
        grad_h = ndimage.sobel(smoothed, axis=0, mode="mirror") / 8
        grad_w = ndimage.sobel(smoothed, axis=1, mode="mirror") / 8
        np.testing.assert_allclose(edges[0, channel].numpy(), np.hypot(grad_h, grad_w), rtol=1e-5, atol=1e-12)
    assert edges.mean() < sobel_edges(images, eps=0.0).mean()  # smoothing removes pixel noise


def test_sobel_edges_rejects_non_batched_input():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        sobel_edges(torch.rand(3, 8, 8))


def test_scale_invariant_l1_equals_brute_force_minimiser_and_ignores_input_scale():
    generator = torch.Generator().manual_seed(2)
    prediction = torch.rand(1, 1, 6, 5, dtype=torch.float64, generator=generator)
    target = 3.0 * prediction + 0.2 * torch.rand(1, 1, 6, 5, dtype=torch.float64, generator=generator)
    loss = ScaleInvariantL1Loss(eps=0.0)
    p, t = prediction.numpy().ravel(), target.numpy().ravel()
    best_scale = optimize.minimize_scalar(lambda a: np.sum((a * p - t) ** 2)).x
    assert float(loss(prediction, target)) == pytest.approx(np.mean(np.abs(best_scale * p - t)), rel=1e-6)
    for factor in (1e-3, 0.5, 40.0):
        assert float(loss(factor * prediction, target)) == pytest.approx(float(loss(prediction, target)), rel=1e-9)


def test_scale_invariant_l1_mask_restricts_fit_and_mean():
    generator = torch.Generator().manual_seed(3)
    prediction = torch.rand(2, 2, 8, 8, dtype=torch.float64, generator=generator)
    target = 2.0 * prediction
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1.0
    corrupted = torch.where(mask.bool(), target, torch.full_like(target, 50.0))
    loss = ScaleInvariantL1Loss()
    assert float(loss(prediction, corrupted, mask)) < 1e-6
    assert float(loss(prediction, corrupted)) > 1.0


def test_hybrid_loss_without_self_term_is_plain_l1():
    pred, label = random_maps(seed=1), random_maps(seed=2)
    expected = torch.nn.L1Loss()(pred, label)
    assert torch.equal(HybridLoss(lambda_self=0.0)(pred, label), expected)
    assert torch.equal(HybridLoss(lambda_self=0.0)(pred, {"label": label, "image": torch.rand_like(label)}), expected)


def test_hybrid_loss_needs_acquired_images_when_self_term_is_on():
    pred = random_maps()
    with pytest.raises(ValueError, match="needs the acquired weighted images"):
        HybridLoss(lambda_self=0.1)(pred, pred)
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['image'\]"):
        HybridLoss(lambda_self=0.1)(pred, {"label": pred})


def test_hybrid_loss_components_and_total():
    pred, label = random_maps(seed=1), random_maps(seed=2)
    image = synthesize_all(random_maps(seed=3))
    loss = HybridLoss(lambda_self=0.3, contrasts=("mprage", "tse", "flair"))
    total = loss(pred, {"label": label, "image": image})
    parts = loss.last_components
    assert set(parts) == {"total", "supervised", "self_supervised", "self_mprage", "self_tse", "self_flair"}
    assert torch.equal(parts["supervised"], torch.nn.L1Loss()(pred, label))
    assert float(parts["self_supervised"]) == pytest.approx(
        float(parts["self_mprage"] + parts["self_tse"] + parts["self_flair"]), rel=1e-12
    )
    assert float(total) == pytest.approx(float(parts["supervised"] + 0.3 * parts["self_supervised"]), rel=1e-12)
    assert all(not value.requires_grad for value in parts.values())


def test_the_hybrid_loss_is_its_two_terms_each_a_loss_of_its_own():
    """``HybridLoss`` = ``MapL1Loss`` + lambda ``EdgeConsistencyLoss``, each usable alone with the same options, and
    each refuses its own wrong options."""
    pred, label = random_maps(seed=4), random_maps(seed=5)
    image, mask = synthesize_all(random_maps(seed=6)), (torch.rand(2, 1, 12, 10, dtype=torch.float64) > 0.3).double()
    hybrid = HybridLoss(lambda_self=0.3, map_weights=(1.0, 10.0, 1.0), contrasts=("mprage", "tse_epg"))
    parts = hybrid.components(pred, {"label": label, "image": image, "mask": mask})
    supervised = MapL1Loss(map_weights=(1.0, 10.0, 1.0))(pred, label, mask)
    edges = EdgeConsistencyLoss(contrasts=("mprage", "tse_epg"))(pred, image, mask)
    assert float(parts["supervised"]) == pytest.approx(float(supervised), rel=1e-12)
    assert float(parts["self_tse_epg"]) == pytest.approx(float(edges["self_tse_epg"]), rel=1e-12)
    assert float(parts["total"]) == pytest.approx(float(supervised + 0.3 * edges["self_supervised"]), rel=1e-12)
    with pytest.raises(ValueError, match="map_weights"):
        MapL1Loss(map_weights=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match=r"protocols given for \['flair'\]"):
        EdgeConsistencyLoss(protocols={"flair": {}})
    with pytest.raises(ValueError, match="contrast_weights must be >= 0"):
        EdgeConsistencyLoss(contrast_weights={"tse": -1.0})


def test_map_and_contrast_weights():
    pred, label = random_maps(seed=1), random_maps(seed=2)
    target = {"label": label, "image": synthesize_all(random_maps(seed=3))}
    plain = HybridLoss(lambda_self=0.5).components(pred, target)
    weighted = HybridLoss(lambda_self=0.5, map_weights=(1.0, 10.0, 0.5), contrast_weights={"tse": 3.0})
    parts = weighted.components(pred, target)
    errors = (pred - label).abs().mean(dim=(0, 2, 3))  # per map
    assert float(parts["supervised"]) == pytest.approx(float((errors * torch.tensor([1.0, 10.0, 0.5])).mean()))
    assert float(parts["self_supervised"]) == pytest.approx(float(plain["self_mprage"] + 3.0 * plain["self_tse"]))
    assert float(parts["total"]) == pytest.approx(float(parts["supervised"] + 0.5 * parts["self_supervised"]))
    with pytest.raises(ValueError, match="map_weights must be 3 weights"):
        HybridLoss(map_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"contrast_weights given for \['flair'\]"):
        HybridLoss(contrast_weights={"flair": 1.0})


@pytest.mark.parametrize("with_mask", [False, True])
def test_self_term_ignores_the_scale_of_acquired_images(with_mask):
    pred, label = random_maps(seed=4), random_maps(seed=5)
    image = synthesize_all(random_maps(seed=6))
    target = {"label": label, "image": image}
    if with_mask:
        target["mask"] = (torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(7)) > 0.3).double()
    loss = HybridLoss(lambda_self=1.0)
    reference = loss.components(pred, target)["self_supervised"]
    for factor in (0.25, 4.0, 100.0):
        scaled = dict(target, image=factor * image)
        assert float(loss.components(pred, scaled)["self_supervised"]) == pytest.approx(float(reference), rel=1e-3)


def test_self_term_vanishes_when_acquired_images_are_the_synthesized_ones():
    pred = random_maps(seed=8)
    loss = HybridLoss(lambda_self=1.0, contrasts=("mprage", "tse", "flair"))
    parts = loss.components(pred, {"label": pred, "image": synthesize_all(pred)})
    assert float(parts["self_supervised"]) < 1e-6
    mismatched = loss.components(pred, {"label": pred, "image": synthesize_all(random_maps(seed=9))})
    assert float(mismatched["self_supervised"]) > 0.1


def test_epg_tse_term_reads_the_t2w_channel_and_vanishes_on_epg_images():
    pred = random_maps(seed=12)
    t1, t2, m0 = pred[:, 0:1] * 3000.0, pred[:, 1:2] * 3000.0, pred[:, 2:3]
    epg_images = torch.cat([physics.mprage(t1, m0), physics.tse_epg(t1, t2, m0)], dim=1)
    epg_loss = HybridLoss(lambda_self=1.0, contrasts=("mprage", "tse_epg"))
    # the loss's EPG model is tabulated (physics.tse_epg_tabulated, within 5e-4 of the recursion)
    assert float(epg_loss.components(pred, {"label": pred, "image": epg_images})["self_supervised"]) < 1e-5
    simplified = HybridLoss(lambda_self=1.0, contrasts=("mprage", "tse"))
    assert float(simplified.components(pred, {"label": pred, "image": epg_images})["self_tse"]) > 1e-4


def test_self_term_uses_the_configured_channels_units_and_protocols():
    pred = random_maps(seed=10)
    image = synthesize_all(pred)
    swapped = image[:, [1, 0, 2]]
    loss = HybridLoss(lambda_self=1.0, input_channels={"mprage": 1, "tse": 0, "flair": 2})
    assert float(loss.components(pred, {"label": pred, "image": swapped})["self_supervised"]) < 1e-6
    in_seconds = HybridLoss(lambda_self=1.0, map_unit_ms=1000.0)
    pred_in_seconds = torch.cat([pred[:, :2] * 3.0, pred[:, 2:]], dim=1)
    assert float(in_seconds.components(pred_in_seconds, {"label": pred, "image": image})["self_supervised"]) < 1e-6
    t1, t2, m0 = pred[:, 0:1] * 3000.0, pred[:, 1:2] * 3000.0, pred[:, 2:3]
    short_te = torch.cat([physics.mprage(t1, m0), physics.tse(t1, t2, m0, physics.TSEProtocol(te=18.6))], dim=1)
    custom = HybridLoss(lambda_self=1.0, protocols={"tse": {"te": 18.6}}, input_channels={"mprage": 0, "tse": 1})
    assert float(custom.components(pred, {"label": pred, "image": short_te})["self_supervised"]) < 1e-6
    with pytest.raises(ValueError, match="not in contrasts"):
        HybridLoss(protocols={"flair": {}})


@pytest.mark.parametrize("contrasts", [("mprage", "tse"), ("flair",)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_hybrid_loss_gradcheck(contrasts, with_mask):
    pred = random_maps(shape=(1, 3, 6, 5), seed=11).requires_grad_()
    target = {"label": random_maps(shape=(1, 3, 6, 5), seed=12), "image": synthesize_all(random_maps((1, 3, 6, 5), 13))}
    if with_mask:
        target["mask"] = torch.ones(1, 1, 6, 5, dtype=torch.float64)
        target["mask"][..., 0, :] = 0.0
    loss = HybridLoss(lambda_self=0.5, contrasts=contrasts)
    assert torch.autograd.gradcheck(lambda p: loss(p, target), (pred,), fast_mode=True)


def test_scale_invariant_l1_gradcheck():
    generator = torch.Generator().manual_seed(14)
    prediction = torch.rand(2, 1, 5, 4, dtype=torch.float64, generator=generator).requires_grad_()
    target = torch.rand(2, 1, 5, 4, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(ScaleInvariantL1Loss(), (prediction, target))


def test_detached_scale_gives_the_gradient_at_a_frozen_scale():
    generator = torch.Generator().manual_seed(15)
    prediction = torch.rand(2, 2, 5, 4, dtype=torch.float64, generator=generator).requires_grad_()
    target = torch.rand(2, 2, 5, 4, dtype=torch.float64, generator=generator)
    loss = ScaleInvariantL1Loss(detach_scale=True)
    (gradient,) = torch.autograd.grad(loss(prediction, target), prediction)
    p, t = prediction.detach(), target
    frozen_scale = (p * t).sum(dim=(-2, -1), keepdim=True) / (p * p).sum(dim=(-2, -1), keepdim=True)
    expected = frozen_scale * torch.sign(frozen_scale * p - t) / p.numel()
    torch.testing.assert_close(gradient, expected)
    (full_gradient,) = torch.autograd.grad(ScaleInvariantL1Loss()(prediction, target), prediction)
    assert not torch.allclose(full_gradient, gradient)


def test_hybrid_loss_detach_scale_trains_and_differs_from_full_gradient():
    pred = random_maps(seed=16).requires_grad_()
    target = {"label": random_maps(seed=17), "image": synthesize_all(random_maps(seed=18))}
    gradients = {}
    for detach in (False, True):
        (gradients[detach],) = torch.autograd.grad(HybridLoss(lambda_self=1.0, detach_scale=detach)(pred, target), pred)
        assert torch.isfinite(gradients[detach]).all()
    assert not torch.allclose(gradients[False], gradients[True])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_nan_for_all_zero_images_and_maps(dtype):
    pred = torch.zeros(2, 3, 8, 8, dtype=dtype, requires_grad=True)
    zeros = torch.zeros(2, 3, 8, 8, dtype=dtype)
    for mask in (None, torch.zeros(2, 1, 8, 8, dtype=dtype), torch.ones(2, 1, 8, 8, dtype=dtype)):
        target = {"label": zeros, "image": zeros} | ({} if mask is None else {"mask": mask})
        value = HybridLoss(lambda_self=1.0, mask_supervised=True)(pred, target)
        (gradient,) = torch.autograd.grad(value, pred)
        assert torch.isfinite(value) and torch.isfinite(gradient).all()


def test_gradients_reach_every_map_channel_from_the_self_term():
    pred = random_maps(seed=19).float().requires_grad_()
    image = synthesize_all(random_maps(seed=20)).float()
    loss = HybridLoss(lambda_self=1.0)
    parts = loss.components(pred, {"label": pred.detach(), "image": image})
    (gradient,) = torch.autograd.grad(parts["self_supervised"], pred)
    assert all(gradient[:, channel].abs().sum() > 0 for channel in range(3))


def test_mask_supervised_averages_inside_the_mask():
    pred, label = random_maps(seed=21), random_maps(seed=22)
    mask = torch.zeros(2, 1, 12, 10, dtype=torch.float64)
    mask[..., :4, :] = 1.0
    masked = HybridLoss(lambda_self=0.0, mask_supervised=True)(pred, {"label": label, "mask": mask})
    expected = (pred - label)[..., :4, :].abs().mean()
    assert float(masked) == pytest.approx(float(expected), rel=1e-12)


def test_shape_errors_say_what_was_received():
    with pytest.raises(ValueError, match=r"pred must be \(B, 3, H, W\).*\(2, 2, 4, 4\)"):
        HybridLoss(lambda_self=0.0)(torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4))
    pred = random_maps()
    with pytest.raises(ValueError, match="image must be"):
        HybridLoss(lambda_self=1.0)(pred, {"label": pred, "image": pred[:, :1]})


@pytest.mark.parametrize("with_mask", [False, True])
def test_local_scale_is_the_least_squares_factor_of_each_window(with_mask):
    """``window`` > 0: a(x) = sum_w p t / sum_w p p over the masked window around x (zero outside the image)."""
    generator = torch.Generator().manual_seed(4)
    p = torch.rand(2, 1, 11, 9, dtype=torch.float64, generator=generator) + 0.1
    t = torch.rand(2, 1, 11, 9, dtype=torch.float64, generator=generator)
    mask = (torch.rand(2, 1, 11, 9, generator=generator) > 0.3).double() if with_mask else None
    loss = ScaleInvariantL1Loss(window=5, eps=0.0)
    scale = loss.least_squares_scale(p, t, mask)
    pm, tm = (p * mask, t * mask) if with_mask else (p, t)
    padded_pt = np.pad((pm * tm).numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    padded_pp = np.pad((pm * pm).numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    for b, i, j in np.ndindex(2, 11, 9):
        expected = padded_pt[b, 0, i : i + 5, j : j + 5].sum() / padded_pp[b, 0, i : i + 5, j : j + 5].sum()
        assert scale[b, 0, i, j].item() == pytest.approx(expected, rel=1e-10)
    # a smooth gain field on the target is absorbed where it is near-constant over the window
    gain = torch.linspace(0.5, 2.0, 9, dtype=torch.float64).view(1, 1, 1, 9)
    assert ScaleInvariantL1Loss(window=1)(p, p * gain).item() == pytest.approx(0.0, abs=1e-7)
    assert ScaleInvariantL1Loss()(p, p * gain).item() > 0.05
    with pytest.raises(ValueError, match="odd"):
        ScaleInvariantL1Loss(window=4)


def test_label_spread_weights_are_the_ratio_of_mean_absolute_deviations_from_the_median():
    generator = torch.Generator().manual_seed(5)
    label = random_maps((3, 3, 16, 12), seed=6)
    mask = (torch.rand(3, 1, 16, 12, generator=generator) > 0.4).double()
    weights = label_spread_weights(label, mask)
    inside = mask[:, 0].numpy() > 0
    spreads = []
    for channel in range(3):
        values = label[:, channel].numpy()[inside]
        # torch.median takes the lower of the two middle values; with an even count numpy's median differs
        median = np.sort(values)[(values.size - 1) // 2]
        spreads.append(np.mean(np.abs(values - median)))
    np.testing.assert_allclose(weights.numpy(), spreads[0] / np.array(spreads), rtol=1e-10)
    pred = label + 0.01
    loss = HybridLoss(lambda_self=0.0, map_weights="label_spread", mask_supervised=True)
    direct = sum(weights[c] * 0.01 for c in range(3)) / 3
    assert loss(pred, {"label": label, "mask": mask}).item() == pytest.approx(direct.item(), rel=1e-9)
    with pytest.raises(ValueError, match="label_spread"):
        HybridLoss(map_weights="spread")


def test_self_supervised_loss_is_the_hybrid_losss_edge_term_without_labels():
    torch.manual_seed(0)
    pred = (torch.rand(2, 3, 24, 20) * 0.5 + 0.01).requires_grad_()
    image, mask = torch.rand(2, 3, 24, 20), (torch.rand(2, 1, 24, 20) > 0.2).float()
    options = {"contrasts": ("mprage", "tse_epg"), "edge_smoothing_sigma": 1.0, "contrast_weights": {"tse_epg": 2.0}}
    hybrid = HybridLoss(lambda_self=0.3, **options).components(
        pred, {"label": torch.zeros_like(pred), "image": image, "mask": mask}
    )
    loss = SelfSupervisedLoss(lambda_self=0.3, **options)
    total = loss(pred, {"image": image, "mask": mask})
    torch.testing.assert_close(total, 0.3 * hybrid["self_supervised"])
    torch.testing.assert_close(loss.last_components["self_tse_epg"], hybrid["self_tse_epg"].detach())
    total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs target"):
        loss(pred, image)
    with pytest.raises(ValueError, match="lambda_self > 0"):
        SelfSupervisedLoss(lambda_self=0.0)


def test_prepare_batch_without_labels_hands_the_images_and_mask_to_the_loss():
    batch = {"image": torch.rand(2, 3, 8, 8), "mask": torch.ones(2, 1, 8, 8)}
    inputs, target = PrepareMapBatch(label_key=None)(batch)
    assert inputs is batch["image"] and set(target) == {"image", "mask"}


def test_intensity_term_is_the_l1_under_the_least_squares_gain_of_each_image():
    """Direct computation in numpy: acquired / its masked mean, a = <s, y> / <s, s>, mean |a s - y| in the mask."""
    pred, acquired_maps = random_maps(seed=20), random_maps(seed=21)
    image = 7.0 * synthesize_all(acquired_maps)
    mask = (torch.rand(2, 1, 12, 10, generator=torch.Generator().manual_seed(22)) > 0.3).double()
    loss = IntensityConsistencyLoss(contrasts=("mprage", "tse"), contrast_weights={"tse": 2.0})
    terms = loss(pred, image, mask)
    synthetic = synthesize_all(pred).numpy()
    for channel, contrast in enumerate(("mprage", "tse")):
        errors = []
        for b in range(2):
            inside = mask[b, 0].numpy() > 0
            s, y = synthetic[b, channel][inside], image[b, channel].numpy()[inside]
            y = y / y.mean()
            errors.append(np.abs(s * (s @ y) / (s @ s) - y))
        expected = np.concatenate(errors).mean()
        assert float(terms[f"intensity_{contrast}"]) == pytest.approx(expected, rel=1e-6)
    total = terms["intensity_mprage"] + 2.0 * terms["intensity_tse"]
    assert float(terms["intensity_total"]) == pytest.approx(float(total), rel=1e-9)


def two_tissue_maps():
    """(1, 3, 16, 16) maps: a CSF-like background around an 8 x 8 white-matter-like square; the square's mask."""
    maps = torch.empty(1, 3, 16, 16, dtype=torch.float64)
    maps[:, 0], maps[:, 1], maps[:, 2] = 4000 / 3000, 2000 / 3000, 1.0
    maps[:, 0, 4:12, 4:12], maps[:, 1, 4:12, 4:12], maps[:, 2, 4:12, 4:12] = 800 / 3000, 70 / 3000, 0.7
    square = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    square[..., 4:12, 4:12] = True
    return maps, square


def mprage_and_epg_images(pred, map_unit_ms=physics.MAP_UNIT_MS):
    """(B, 3, H, W): MPRAGE, EPG TSE (the recursion, not the loss's table) and an empty FLAIR channel."""
    t1, t2, m0 = pred[:, 0:1] * map_unit_ms, pred[:, 1:2] * map_unit_ms, pred[:, 2:3]
    return torch.cat([physics.mprage(t1, m0), physics.tse_epg(t1, t2, m0), torch.zeros_like(m0)], dim=1)


def test_intensity_term_vanishes_for_the_maps_that_made_the_images_at_any_gain_and_sees_a_tissue_change():
    """Two tissues: the exact maps give 0 whatever the images' gain; maps whose second tissue keeps its old T2 while
    the images saw it 30 % longer do not."""
    maps, _ = two_tissue_maps()
    changed = maps.clone()
    changed[:, 1, 4:12, 4:12] *= 1.3
    loss = HybridLoss(lambda_self=1.0, lambda_intensity=1.0, contrasts=("mprage", "tse_epg"))
    for gain in (0.01, 1.0, 50.0):
        exact = loss.components(maps, {"label": maps, "image": gain * mprage_and_epg_images(maps)})
        assert float(exact["intensity_total"]) < 1e-3
    unmoved = loss.components(maps, {"label": maps, "image": mprage_and_epg_images(changed)})
    assert float(unmoved["intensity_tse_epg"]) > 0.01
    assert float(unmoved["intensity_mprage"]) < 1e-3  # T2 does not change the MPRAGE


def test_intensity_term_alone_recovers_a_tissues_changed_t2_by_gradient_descent():
    """The images fix a tissue's T2 against a reference tissue up to one gain per image: fitting only the changed
    tissue's T2 by the intensity term finds the true value (within 2 %)."""
    maps, inside = two_tissue_maps()
    image = 3.0 * mprage_and_epg_images(maps)
    log_t2 = torch.tensor(np.log(50 / 3000), dtype=torch.float64, requires_grad=True)  # starts 29 % short
    loss = SelfSupervisedLoss(lambda_self=0.0, lambda_intensity=1.0, contrasts=("tse_epg",))
    optimizer = torch.optim.Adam([log_t2], lr=0.02)
    for _ in range(300):
        optimizer.zero_grad()
        pred = torch.where(inside & (torch.arange(3).view(1, 3, 1, 1) == 1), log_t2.exp(), maps)
        loss(pred, {"image": image}).backward()
        optimizer.step()
    assert float(log_t2.detach().exp()) * 3000 == pytest.approx(70.0, rel=0.02)


def test_hybrid_loss_adds_the_intensity_term_with_its_weight_and_the_same_synthesis():
    pred, label, image = random_maps(seed=30), random_maps(seed=31), synthesize_all(random_maps(seed=32))
    options = {"contrasts": ("mprage", "tse_epg"), "contrast_weights": {"mprage": 0.5}, "edge_smoothing_sigma": 1.0}
    hybrid = HybridLoss(lambda_self=0.2, lambda_intensity=0.7, intensity_window=5, **options)
    assert hybrid.intensities.contrast_weights == hybrid.edges.contrast_weights
    assert hybrid.intensities.protocols == hybrid.edges.protocols and hybrid.intensities.scale_invariant_l1.window == 5
    parts = hybrid.components(pred, {"label": label, "image": image})
    edges_only = HybridLoss(lambda_self=0.2, **options).components(pred, {"label": label, "image": image})
    intensity = IntensityConsistencyLoss(
        contrasts=options["contrasts"], contrast_weights={"mprage": 0.5}, scale_window=5
    )
    expected = intensity(pred, image)["intensity_total"]
    torch.testing.assert_close(parts["intensity_total"], expected)
    torch.testing.assert_close(parts["total"], edges_only["total"] + 0.7 * expected)
    assert "intensity_total" not in edges_only
    labels_only = HybridLoss(lambda_self=0.0, lambda_intensity=0.0)
    torch.testing.assert_close(labels_only(pred, label), (pred - label).abs().mean())
    with pytest.raises(ValueError, match="needs the acquired weighted images"):
        HybridLoss(lambda_self=0.0, lambda_intensity=0.1)(pred, label)
    with pytest.raises(ValueError, match="lambda_intensity must be >= 0"):
        HybridLoss(lambda_intensity=-1.0)


def test_intensity_gain_fitted_in_the_csf_keeps_a_tissue_change_out_of_the_gain():
    """``intensity_gain="csf"``: the gain is the least-squares factor of the CSF pixels (label T2 > 1 s) alone, so
    maps that miss a change of the other tissue pay for all of it there; exact maps still give 0 at any gain; a slice
    without CSF falls back to the whole image's gain."""
    maps, _ = two_tissue_maps()
    tissue = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    tissue[..., 2:14, 2:14] = True  # the tissue fills most of the slice, as white matter does: 144 of 256 pixels
    maps = torch.where(tissue, maps[..., 4:5, 4:5], maps)
    changed = torch.where(tissue & (torch.arange(3).view(1, 3, 1, 1) == 1), 1.3 * maps, maps)
    image = 5.0 * mprage_and_epg_images(changed)
    options = {"lambda_self": 0.0, "lambda_intensity": 1.0, "contrasts": ("tse_epg",)}
    in_csf, in_image = HybridLoss(intensity_gain="csf", **options), HybridLoss(**options)
    term = in_csf.components(maps, {"label": maps, "image": image})["intensity_total"]
    synthetic, acquired = (x.numpy()[0, 0] for x in in_csf.intensities.synthesize(maps, image))
    acquired = acquired / acquired.mean()
    csf = ~tissue.numpy()[0, 0]
    gain = (synthetic * acquired)[csf].sum() / (synthetic**2)[csf].sum()
    assert float(term) == pytest.approx(np.abs(gain * synthetic - acquired).mean(), rel=1e-6)
    assert (
        np.abs(gain * synthetic - acquired)[csf].max() < 1e-9
    )  # the CSF fixes the gain; the tissue carries the change
    assert float(term) > 0.05
    exact = in_csf.components(changed, {"label": changed, "image": 0.02 * mprage_and_epg_images(changed)})
    assert float(exact["intensity_total"]) < 1e-3
    no_csf = changed.clone()
    no_csf[:, 1] = 70 / 3000
    target = {"label": no_csf, "image": image}
    torch.testing.assert_close(in_csf.components(maps, target)["total"], in_image.components(maps, target)["total"])
    for wrong in ({"intensity_gain": "wm"}, {"intensity_gain": "csf", "intensity_window": 5}):
        with pytest.raises(ValueError, match="intensity_gain must be one of"):
            HybridLoss(**options, **wrong)
    with pytest.raises(ValueError, match="no labels to find the CSF"):
        SelfSupervisedLoss(**options, intensity_gain="csf")
