"""The hybrid supervised + physics-informed self-supervised loss of the paper.

``L = L1(pred, label) + lambda * sum_c SI-L1(S(synth_c), S(acquired_c))`` where ``S`` is the Sobel
edge magnitude (the edge loss of Yu et al. 2019, TMI 38:1750), ``synth_c`` the weighted image of
contrast ``c`` synthesised from the predicted maps by :mod:`pipeline.physics`, and SI-L1 the
scaling-invariant L1 of Wang et al. 2020 (ISMRM p. 867): the synthetic edges are scaled by the
least-squares factor ``a`` before the L1, so the unknown receiver gain / M0 scaling of the physics
model does not matter.

Units: ``pred`` and ``label`` are (T1, T2, M0) with T1 and T2 in units of ``MAP_UNIT_MS`` (3 s),
``image`` holds the acquired weighted images (MPRAGE, TSE, FLAIR) in their normalised intensity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
from torch.nn.modules.loss import _Loss

from pipeline.physics import MAP_UNIT_MS, resolve_protocol, synthesize

__all__ = [
    "EdgeConsistencyLoss",
    "HybridLoss",
    "MapL1Loss",
    "ScaleInvariantL1Loss",
    "SelfSupervisedLoss",
    "label_spread_weights",
    "sobel_edges",
]

LABEL_SPREAD = "label_spread"
"""``HybridLoss(map_weights=LABEL_SPREAD)``: weigh each map by :func:`label_spread_weights`."""

_SOBEL_DIFFERENCE = (-0.5, 0.0, 0.5)
_SOBEL_SMOOTHING = (0.25, 0.5, 0.25)


def sobel_edges(x: torch.Tensor, eps: float = 1e-12, smoothing_sigma: float = 0.0) -> torch.Tensor:
    """Per-channel 2D Sobel gradient magnitude ``sqrt(gx^2 + gy^2 + eps)``, optionally of the Gaussian-smoothed image.

    Uses the kernels and padding of ``monai.transforms.SobelGradients`` (normalised 3x3 Sobel:
    difference ``[-1, 0, 1] / 2`` times smoothing ``[1, 2, 1] / 4``; reflect padding). That transform
    is an un-batched array transform (it adds its own batch axis and converts its input), and the
    primitive it wraps, ``monai.networks.layers.separable_filtering``, runs one grouped 3x1 and one
    1x3 convolution per direction, which is ~30x slower on CPU than one depthwise 3x3 ``conv2d``
    giving both directions at once (measured on 8x2x256x176 float32, forward + backward), so the
    edges are computed with that ``conv2d``. With ``smoothing_sigma > 0`` the image is first smoothed by
    MONAI's sampled, normalised Gaussian (``gaussian_1d``, truncated at 3 sigma; as
    ``scipy.ndimage.gaussian_filter`` with ``mode="mirror"``), one depthwise ``conv2d`` per axis
    (MONAI's ``GaussianFilter`` does the same through ``separable_filtering``, ~5x slower here).

    Args:
        x: images, shape (B, C, H, W).
        eps: added under the square root so the magnitude and its gradient are finite where the
            image is flat; the magnitude is never below ``sqrt(eps)``.
        smoothing_sigma: standard deviation (pixels) of a Gaussian applied before the gradient; 0: none.

    Returns:
        edge magnitudes, shape (B, C, H, W), same dtype and device as ``x``.
    """
    if x.ndim != 4:
        raise ValueError(f"sobel_edges expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}.")
    channels = x.shape[1]
    difference = torch.tensor(_SOBEL_DIFFERENCE, dtype=x.dtype, device=x.device)
    smoothing = torch.tensor(_SOBEL_SMOOTHING, dtype=x.dtype, device=x.device)
    along_h = torch.outer(difference, smoothing)
    kernels = torch.stack([along_h, along_h.T]).unsqueeze(1).repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
    if smoothing_sigma > 0:
        gaussian = gaussian_1d(torch.tensor(float(smoothing_sigma)), 3.0, approx="sampled", normalize=True).to(x)
        radius = len(gaussian) // 2
        along_rows = gaussian.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)  # (C, 1, k, 1)
        x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), along_rows, groups=channels)
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), along_rows.transpose(2, 3), groups=channels)
    gradients = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernels, groups=channels)
    grad_h, grad_w = gradients[:, 0::2], gradients[:, 1::2]
    return torch.sqrt(grad_h.square() + grad_w.square() + eps)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, C, H, W) over the voxels where the 0/1 ``mask`` (B, 1, H, W) is 1 (all if None)."""
    if mask is None:
        return values.mean()
    weights = mask.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _per_image_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over H, W (inside the 0/1 ``mask`` (B, 1, H, W) if given) of (B, C, H, W) values, shape (B, C, 1, 1)."""
    if mask is None:
        return values.mean(dim=(-2, -1), keepdim=True)
    return (values * mask).sum(dim=(-2, -1), keepdim=True) / mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)


def label_spread_weights(label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Weights (C,) that make each map's L1 relative to its spread in the labels: ``spread_0 / spread_c``.

    ``spread_c`` is the mean absolute deviation of channel ``c`` of ``label`` (B, C, H, W) from its median, over the
    pixels of the 0/1 ``mask`` (B, 1, H, W) (all pixels if None), clamped below at 1e-6 of channel 0's; the
    weights are detached. With (T1, T2, M0) in units of 3 s the rule gives T2 about 20x the weight of T1 in the
    brain (white and grey matter T2 differ by ~10 ms, T1 by ~500 ms), where a hand-set weight would be a guess.
    """
    label = label.detach()
    inside = (mask.expand_as(label) > 0) if mask is not None else torch.ones_like(label, dtype=torch.bool)
    spreads = []
    for channel, selected in zip(label.unbind(1), inside.unbind(1)):
        values = channel[selected] if selected.any() else channel.flatten()
        spreads.append((values - values.median()).abs().mean())
    spreads = torch.stack(spreads)
    return spreads[0] / spreads.clamp_min(spreads[0] * 1e-6 + 1e-12)


def _binary_mask(mask: torch.Tensor | None, reference: torch.Tensor) -> torch.Tensor | None:
    """``mask != 0`` as 0/1 values of ``reference``'s dtype, after checking it is (B, 1, H, W)."""
    if mask is None:
        return None
    expected = (reference.shape[0], 1, *reference.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape (B, 1, H, W) = {expected}, got {tuple(mask.shape)}.")
    return (mask != 0).to(reference.dtype)


class ScaleInvariantL1Loss(_Loss):
    """L1 loss after scaling the input by its least-squares factor (Wang et al. 2020, ISMRM p. 867).

    Per image ``b`` and channel ``c``: ``a = <p, t> / (<p, p> + eps)`` (sums over the masked pixels;
    the closed-form minimiser of ``||a p - t||_2^2``), then ``loss = mean |a p - t|`` over all images,
    channels and masked pixels. The loss does not change (up to ``eps``) when ``p`` is multiplied by a
    positive factor.

    With ``window > 0`` the factor is local: ``a(x)`` minimises ``sum_w (a p - t)^2`` over the masked pixels of the
    ``window`` x ``window`` neighbourhood of ``x`` (zero outside the image), so a smooth gain across the image (a
    receive or transmit field the signal model lacks) is absorbed too; edges are then compared only up to that gain.

    Args:
        detach_scale: if True ``a`` is treated as a constant in the backward pass.
        eps: regulariser of the denominator of ``a`` (``p == 0`` gives ``a = 0``, no NaN).
        window: side (pixels, odd) of the neighbourhood of a local ``a``; 0: one ``a`` per image and channel.
    """

    def __init__(self, detach_scale: bool = False, eps: float = 1e-8, window: int = 0) -> None:
        super().__init__()
        if window < 0 or (window > 0 and window % 2 == 0):
            raise ValueError(f"window must be 0 (one scale per image) or an odd number of pixels, got {window}.")
        self.detach_scale = detach_scale
        self.eps = eps
        self.window = int(window)

    def least_squares_scale(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None):
        """The factor ``a``: (B, C, 1, 1), or (B, C, H, W) with a ``window``; optionally detached.

        ``mask`` is a 0/1 (B, 1, H, W) tensor.
        """
        if mask is not None:
            input, target = input * mask, target * mask
        if self.window:  # window sums: a zero-padded separable box filter (avg_pool2d counts the padding) x area
            size, radius = self.window, self.window // 2

            def total(x):
                along_h = F.avg_pool2d(x, (size, 1), stride=1, padding=(radius, 0))
                return F.avg_pool2d(along_h, (1, size), stride=1, padding=(0, radius)) * size**2

        else:

            def total(x):
                return x.sum(dim=(-2, -1), keepdim=True)

        scale = total(input * target) / (total(input.square()) + self.eps)
        return scale.detach() if self.detach_scale else scale

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: the image to scale, shape (B, C, H, W).
            target: shape (B, C, H, W).
            mask: optional (B, 1, H, W); nonzero voxels take part in ``a`` and in the mean.

        Returns:
            scalar loss.
        """
        if input.shape != target.shape or input.ndim != 4:
            raise ValueError(
                f"input and target must both be (B, C, H, W); got {tuple(input.shape)} and {tuple(target.shape)}."
            )
        mask = _binary_mask(mask, input)
        scale = self.least_squares_scale(input, target, mask)
        return _masked_mean((scale * input - target).abs(), mask)


class MapL1Loss(_Loss):
    """The supervised term: ``mean w_m |pred - label|`` over the maps (T1, T2, M0), inside an optional mask, leaving
    out failed label fits.

    Args:
        map_weights: weights of the (T1, T2, M0) channels. The default (1, 1, 1) is the paper's plain L1 with T1 and T2
            in units of 3 s, where white-matter T2 (~0.026) weighs ~40x less than T1; e.g. (1, 10, 1) supervises T2 as
            if in units of 300 ms. ``"label_spread"``: the weights of :func:`label_spread_weights`, per batch, over
            the mask.
        mask_supervised: if True the term is averaged inside ``mask`` only.
    """

    def __init__(self, map_weights: Sequence[float] | str = (1.0, 1.0, 1.0), mask_supervised: bool = False) -> None:
        super().__init__()
        by_rule = isinstance(map_weights, str)
        self.map_weights = map_weights if by_rule else tuple(float(w) for w in map_weights)
        if (map_weights != LABEL_SPREAD) if by_rule else (len(self.map_weights) != 3 or min(self.map_weights) < 0):
            raise ValueError(f"map_weights must be 3 weights >= 0 (T1, T2, M0) or {LABEL_SPREAD!r}, got {map_weights}.")
        self.mask_supervised = mask_supervised

    def forward(
        self,
        pred: torch.Tensor,
        label: torch.Tensor,
        mask: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar term of (B, 3, H, W) ``pred`` and ``label``; ``mask`` and ``valid`` (B, 1, H, W) 0/1 (``valid``: 0
        where the label is a failed fit)."""
        supervised_mask, spread_mask = (mask if self.mask_supervised else None), mask
        if valid is not None:  # failed label fits are left out
            supervised_mask, spread_mask = (valid if m is None else valid * m for m in (supervised_mask, mask))
        if self.map_weights == LABEL_SPREAD:
            weights = label_spread_weights(label, spread_mask).to(pred)
        else:
            weights = pred.new_tensor(self.map_weights)
        return _masked_mean((pred - label).abs() * weights.view(1, 3, 1, 1), supervised_mask)


class EdgeConsistencyLoss(_Loss):
    """The physics-informed term: ``sum_c w_c SI-L1(S(synth_c), S(acquired_c) / mean S(acquired_c))``.

    Each contrast in ``contrasts`` is synthesised from the predicted maps with :func:`pipeline.physics.synthesize`
    (T1/T2 converted to ms by ``map_unit_ms``); the Sobel edge magnitudes of the synthetic and the acquired image
    (channel ``input_channels[c]`` of ``image``) are compared with :class:`ScaleInvariantL1Loss`. The acquired edge
    map is divided by its mean (per image and contrast, over the mask if given) so the term is dimensionless: it is
    unchanged when an acquired image is scaled by any positive factor (as it is when the synthetic image is scaled).

    Args:
        contrasts: keys of ``pipeline.physics.SIGNAL_MODELS``.
        protocols: optional ``{contrast: protocol dataclass or dict of its fields}``; missing contrasts use the
            paper's protocols.
        input_channels: ``{contrast: channel of image}``.
        map_unit_ms: ms per network map unit for T1 and T2.
        detach_scale: passed to :class:`ScaleInvariantL1Loss`.
        edge_eps: ``eps`` of :func:`sobel_edges`.
        contrast_weights: ``{contrast: w_c}``; missing contrasts weigh 1.
        edge_smoothing_sigma: Gaussian smoothing (pixels) of both images before the Sobel operator; 0 (the paper)
            compares raw edges, whose noise the network can only lower the term for by copying the inputs' noise into
            the maps.
        scale_window: ``window`` of :class:`ScaleInvariantL1Loss`: 0 (the paper) fits one factor per image and
            contrast; an odd number of pixels fits a local factor over that neighbourhood.
    """

    def __init__(
        self,
        contrasts: Sequence[str] = ("mprage", "tse"),
        protocols: Mapping[str, Any] | None = None,
        input_channels: Mapping[str, int] | None = None,
        map_unit_ms: float = MAP_UNIT_MS,
        detach_scale: bool = False,
        edge_eps: float = 1e-12,
        contrast_weights: Mapping[str, float] | None = None,
        edge_smoothing_sigma: float = 0.0,
        scale_window: int = 0,
    ) -> None:
        super().__init__()
        self.contrasts = tuple(contrasts)
        protocols, contrast_weights = dict(protocols or {}), dict(contrast_weights or {})
        input_channels = dict(input_channels or {"mprage": 0, "tse": 1, "tse_epg": 1, "flair": 2})
        for name, given in (("protocols", protocols), ("contrast_weights", contrast_weights)):
            unused = sorted(set(given) - set(self.contrasts))
            if unused:
                raise ValueError(f"{name} given for {unused}, which are not in contrasts {list(self.contrasts)}.")
        missing = [c for c in self.contrasts if c not in input_channels]
        if missing:
            raise ValueError(f"input_channels {input_channels} has no channel for contrast(s) {missing}.")
        if min(contrast_weights.values(), default=0) < 0:
            raise ValueError(f"contrast_weights must be >= 0, got {contrast_weights}.")
        self.protocols = {c: resolve_protocol(c, protocols.get(c)) for c in self.contrasts}
        self.input_channels = {c: int(input_channels[c]) for c in self.contrasts}
        self.contrast_weights = {c: float(contrast_weights.get(c, 1.0)) for c in self.contrasts}
        self.map_unit_ms = float(map_unit_ms)
        self.edge_eps = edge_eps
        self.edge_smoothing_sigma = float(edge_smoothing_sigma)
        self.scale_invariant_l1 = ScaleInvariantL1Loss(detach_scale=detach_scale, window=scale_window)

    def check_image(self, pred: torch.Tensor, image: torch.Tensor) -> None:
        """``ValueError`` unless ``image`` is (B, C, H, W) with the channels of ``input_channels`` and ``pred``'s B,
        H, W."""
        n_channels = max(self.input_channels.values()) + 1
        matches_pred = image.ndim == 4 and image.shape[0] == pred.shape[0] and image.shape[2:] == pred.shape[2:]
        if not matches_pred or image.shape[1] < n_channels:
            raise ValueError(
                f"image must be (B, C >= {n_channels}, H, W) matching pred {tuple(pred.shape)} in B, H, W "
                f"(channels {self.input_channels}); got {tuple(image.shape)}."
            )

    def per_contrast(
        self, pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Unweighted ``SI-L1`` edge term of each contrast, ``{contrast: scalar}``.

        Args:
            pred: (B, 3, H, W) positive maps in network units.
            image: (B, C, H, W) acquired weighted images.
            mask: optional (B, 1, H, W).
        """
        mask = _binary_mask(mask, pred)
        t1_ms, t2_ms, m0 = pred[:, 0:1] * self.map_unit_ms, pred[:, 1:2] * self.map_unit_ms, pred[:, 2:3]
        synthetic = torch.cat([synthesize(c, t1_ms, t2_ms, m0, self.protocols[c]) for c in self.contrasts], dim=1)
        acquired = image[:, [self.input_channels[c] for c in self.contrasts]]
        synthetic_edges = sobel_edges(synthetic, self.edge_eps, self.edge_smoothing_sigma)
        acquired_edges = sobel_edges(acquired, self.edge_eps, self.edge_smoothing_sigma)
        # edges are >= sqrt(eps) everywhere, so the clamp only acts on an empty mask
        acquired_edges = acquired_edges / _per_image_mean(acquired_edges, mask).clamp_min(self.edge_eps**0.5)
        return {
            c: self.scale_invariant_l1(synthetic_edges[:, i : i + 1], acquired_edges[:, i : i + 1], mask)
            for i, c in enumerate(self.contrasts)
        }

    def forward(self, pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """``{"self_<contrast>": term, "self_supervised": their contrast_weights-weighted sum}``."""
        terms = self.per_contrast(pred, image, mask)
        weighted = torch.stack([self.contrast_weights[c] * value for c, value in terms.items()]).sum()
        return {**{f"self_{c}": value for c, value in terms.items()}, "self_supervised": weighted}


class HybridLoss(_Loss):
    """``MapL1(pred, label) + lambda_self * EdgeConsistency(pred, image)``: the paper's loss.

    MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, targets)``; the acquired images are the network input,
    so ``pipeline.engine.PrepareMapBatch`` hands over ``targets`` as a dict ``{"label", "image", "mask"[,
    "label_failed"]}``. The paper uses MPRAGE and TSE only (FLAIR is hard to model).

    Args:
        lambda_self: weight of the self-supervised term; 0 gives exactly ``torch.nn.L1Loss()``. The paper does not
            report its value; the default 0.1 is a starting point for the bundle config.
        map_weights, mask_supervised: of the supervised term, :class:`MapL1Loss`. The self-supervised term always
            uses the mask when one is given; the supervised term always leaves out the pixels where
            ``target["label_failed"]`` (B, 1, H, W) is 1: failed fits of the labels (:mod:`pipeline.data.validity`).
        edge_options: of the self-supervised term, :class:`EdgeConsistencyLoss` (``contrasts``, ``protocols``,
            ``input_channels``, ``map_unit_ms``, ``detach_scale``, ``edge_eps``, ``contrast_weights``,
            ``edge_smoothing_sigma``, ``scale_window``).

    ``supervised`` and ``edges`` are the two terms. After each call, ``last_components`` holds the detached
    ``total``, ``supervised``, ``self_supervised`` and ``self_<contrast>`` terms for logging.
    """

    def __init__(
        self,
        lambda_self: float = 0.1,
        map_weights: Sequence[float] | str = (1.0, 1.0, 1.0),
        mask_supervised: bool = False,
        **edge_options,
    ) -> None:
        super().__init__()
        if lambda_self < 0:
            raise ValueError(f"lambda_self must be >= 0, got {lambda_self}.")
        self.lambda_self = float(lambda_self)
        self.supervised = MapL1Loss(map_weights, mask_supervised)
        self.edges = EdgeConsistencyLoss(**edge_options)
        self.last_components: dict[str, torch.Tensor] = {}

    def _unpack(self, pred: torch.Tensor, target: torch.Tensor | Mapping[str, torch.Tensor]):
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"pred must be (B, 3, H, W) maps (T1, T2, M0), got shape {tuple(pred.shape)}.")
        if isinstance(target, torch.Tensor):
            if self.lambda_self != 0:
                raise ValueError(
                    f"HybridLoss with lambda_self={self.lambda_self} needs the acquired weighted images: pass "
                    "target={'label': maps, 'image': acquired images[, 'mask': brain mask]} "
                    "(pipeline.engine.PrepareMapBatch(with_acquired=True)), got a bare tensor."
                )
            target = {"label": target}
        required = ("label",) if self.lambda_self == 0 else ("label", "image")
        missing = [key for key in required if key not in target]
        if missing:
            raise ValueError(f"target dict lacks key(s) {missing}; got keys {sorted(target)}.")
        label, image = target["label"], target.get("image")
        if label.shape != pred.shape:
            raise ValueError(f"label shape {tuple(label.shape)} differs from pred shape {tuple(pred.shape)}.")
        if self.lambda_self != 0:
            self.edges.check_image(pred, image)
        failed = _binary_mask(target.get("label_failed"), pred)
        return label, image, _binary_mask(target.get("mask"), pred), None if failed is None else 1.0 - failed

    def components(
        self, pred: torch.Tensor, target: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """All terms (with autograd graph): ``total``, ``supervised``, ``self_supervised``, ``self_<contrast>``.

        Args:
            pred: (B, 3, H, W) positive maps (T1/3 s, T2/3 s, M0).
            target: (B, 3, H, W) label maps (only with ``lambda_self == 0``) or a dict
                ``{"label": (B, 3, H, W), "image": (B, C, H, W)[, "mask": (B, 1, H, W)]}``.
        """
        label, image, mask, valid = self._unpack(pred, target)
        supervised = self.supervised(pred, label, mask, valid)
        terms = {"total": supervised, "supervised": supervised}
        if self.lambda_self == 0:
            return terms
        terms.update(self.edges(pred, image, mask))
        terms["total"] = supervised + self.lambda_self * terms["self_supervised"]
        return terms

    def forward(self, pred: torch.Tensor, target: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Total loss (scalar); see :meth:`components` for the arguments. Computed in fp32, also inside an autocast
        region (MONAI's CUDA ``amp`` puts the loss in one), a low-precision ``pred`` cast up: the signal models and edges
        need fp32's mantissa."""
        with torch.autocast(pred.device.type, enabled=False):
            terms = self.components(pred.to(torch.promote_types(pred.dtype, torch.float32)), target)
        self.last_components = {name: value.detach() for name, value in terms.items()}
        return terms["total"]


class SelfSupervisedLoss(HybridLoss):
    """The self-supervised edge term of :class:`HybridLoss` alone: ``lambda_self * EdgeConsistency(pred, image)``.

    No labels: what adapts a trained model to a new subject's own images (:mod:`pipeline.adaptation`), with the
    protocol of that subject's scanner in ``protocols``. Arguments as :class:`HybridLoss` (``lambda_self`` only
    scales the term; the supervised options are unused).

    ``target`` is ``{"image": (B, C, H, W)[, "mask": (B, 1, H, W)]}`` (``PrepareMapBatch(label_key=None)``).
    """

    def __init__(self, lambda_self: float = 1.0, **options) -> None:
        if lambda_self <= 0:
            raise ValueError(f"SelfSupervisedLoss needs lambda_self > 0, got {lambda_self}.")
        super().__init__(lambda_self=lambda_self, **options)

    def components(self, pred: torch.Tensor, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``total`` (= ``lambda_self * self_supervised``), ``self_supervised`` and ``self_<contrast>`` terms."""
        if not isinstance(target, Mapping) or "image" not in target:
            raise ValueError("SelfSupervisedLoss needs target={'image': acquired images[, 'mask': brain mask]}.")
        if pred.ndim != 4 or pred.shape[1] != 3 or target["image"].shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"pred must be (B, 3, H, W) maps and image (B, C, H, W) of the same H, W; got {tuple(pred.shape)} and "
                f"{tuple(target['image'].shape)}."
            )
        terms = self.edges(pred, target["image"], target.get("mask"))
        terms["total"] = self.lambda_self * terms["self_supervised"]
        return terms
