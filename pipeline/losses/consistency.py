"""The physics-informed terms: do the predicted maps re-synthesise the acquired weighted images?

Each contrast ``c`` is synthesised from the predicted maps with :func:`pipeline.physics.synthesize` and compared with
the acquired image of that contrast under a closed-form least-squares gain (:class:`ScaleInvariantL1Loss`), so the
unknown receive gain and the image normalisation do not matter:

* :class:`EdgeConsistencyLoss` compares their Sobel edge maps (the paper's term): what keeps the 1 mm detail;
* :class:`IntensityConsistencyLoss` compares the images themselves: the contrast *between* tissues under one gain
  per image, which an edge map, divided by its own mean, does not fix (a tissue whose T2 is 20 % longer than the
  maps say brightens the TSE against its neighbours by ~15 %: the edge maps change only at the tissue's border).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses.edges import sobel_edges
from pipeline.losses.masking import binary_mask, per_image_mean
from pipeline.losses.scale_invariant import ScaleInvariantL1Loss
from pipeline.physics import MAP_UNIT_MS, resolve_protocol, synthesize

__all__ = ["EdgeConsistencyLoss", "IntensityConsistencyLoss", "SynthesisConsistencyLoss"]

DEFAULT_INPUT_CHANNELS = {"mprage": 0, "tse": 1, "tse_epg": 1, "flair": 2}
"""Contrast → channel of the acquired images (T1w, T2w, FLAIR) it re-synthesises."""


class SynthesisConsistencyLoss(_Loss):
    """``sum_c w_c SI-L1(F(synth_c), F(acquired_c) / mean F(acquired_c))`` for a comparison ``F`` of the subclass.

    The acquired ``F`` is divided by its mean (per image and contrast, over the mask if given), so the term is
    dimensionless: unchanged when an acquired image is scaled by any positive factor, as it is when the synthetic
    image is scaled (the least-squares gain).

    Args:
        contrasts: keys of ``pipeline.physics.SIGNAL_MODELS``.
        protocols: optional ``{contrast: protocol dataclass or dict of its fields}``; missing contrasts use the
            paper's protocols.
        input_channels: ``{contrast: channel of image}``.
        map_unit_ms: ms per network map unit for T1 and T2.
        detach_scale: passed to :class:`ScaleInvariantL1Loss`.
        contrast_weights: ``{contrast: w_c}``; missing contrasts weigh 1.
        scale_window: ``window`` of :class:`ScaleInvariantL1Loss`: 0 (the paper) fits one factor per image and
            contrast; an odd number of pixels fits a local factor over that neighbourhood.

    A subclass names its terms: ``<term_prefix>_<contrast>`` and ``total_name`` in :meth:`forward`'s dict.
    """

    term_prefix = "consistency"
    total_name = "consistency_total"

    def __init__(
        self,
        contrasts: Sequence[str] = ("mprage", "tse"),
        protocols: Mapping[str, Any] | None = None,
        input_channels: Mapping[str, int] | None = None,
        map_unit_ms: float = MAP_UNIT_MS,
        detach_scale: bool = False,
        contrast_weights: Mapping[str, float] | None = None,
        scale_window: int = 0,
    ) -> None:
        super().__init__()
        self.contrasts = tuple(contrasts)
        protocols, contrast_weights = dict(protocols or {}), dict(contrast_weights or {})
        input_channels = dict(input_channels or DEFAULT_INPUT_CHANNELS)
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
        self.scale_invariant_l1 = ScaleInvariantL1Loss(detach_scale=detach_scale, window=scale_window)

    def synthesis_options(self) -> dict:
        """The arguments that make another term synthesise the same contrasts the same way (protocols, channels,
        units, weights, gain fit)."""
        return {
            "contrasts": self.contrasts,
            "protocols": self.protocols,
            "input_channels": self.input_channels,
            "map_unit_ms": self.map_unit_ms,
            "detach_scale": self.scale_invariant_l1.detach_scale,
            "contrast_weights": self.contrast_weights,
        }

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

    def synthesize(self, pred: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthetic and the acquired images of ``contrasts``, each (B, len(contrasts), H, W).

        Args:
            pred: (B, 3, H, W) positive maps (T1, T2 in network units, M0).
            image: (B, C, H, W) acquired weighted images.
        """
        t1_ms, t2_ms, m0 = pred[:, 0:1] * self.map_unit_ms, pred[:, 1:2] * self.map_unit_ms, pred[:, 2:3]
        synthetic = torch.cat([synthesize(c, t1_ms, t2_ms, m0, self.protocols[c]) for c in self.contrasts], dim=1)
        return synthetic, image[:, [self.input_channels[c] for c in self.contrasts]]

    def compared(self, images: torch.Tensor) -> torch.Tensor:
        """What of the (B, C, H, W) images is compared: the images themselves here; subclasses override."""
        return images

    def per_contrast(
        self,
        pred: torch.Tensor,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Unweighted ``SI-L1`` term of each contrast, ``{contrast: scalar}``.

        Args:
            pred: (B, 3, H, W) positive maps in network units.
            image: (B, C, H, W) acquired weighted images.
            mask: optional (B, 1, H, W).
            scale_mask: optional (B, 1, H, W) region that alone fits the gain (:class:`ScaleInvariantL1Loss`).
        """
        mask = binary_mask(mask, pred)
        synthetic, acquired = (self.compared(images) for images in self.synthesize(pred, image))
        # the clamp only acts on an empty mask or an all-zero image
        acquired = acquired / per_image_mean(acquired, mask).clamp_min(1e-6)
        return {
            c: self.scale_invariant_l1(synthetic[:, i : i + 1], acquired[:, i : i + 1], mask, scale_mask)
            for i, c in enumerate(self.contrasts)
        }

    def forward(
        self,
        pred: torch.Tensor,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale_mask: torch.Tensor | None = None,
    ) -> dict:
        """``{"<term_prefix>_<contrast>": term, ..., "<term_prefix>_total": their contrast_weights-weighted sum}``."""
        terms = self.per_contrast(pred, image, mask, scale_mask)
        weighted = torch.stack([self.contrast_weights[c] * value for c, value in terms.items()]).sum()
        return {**{f"{self.term_prefix}_{c}": value for c, value in terms.items()}, self.total_name: weighted}


class EdgeConsistencyLoss(SynthesisConsistencyLoss):
    """The paper's self-supervised term: ``sum_c w_c SI-L1(S(synth_c), S(acquired_c) / mean S(acquired_c))``.

    ``S`` is the Sobel edge magnitude (:func:`pipeline.losses.edges.sobel_edges`). Terms are named
    ``self_<contrast>`` and their sum ``self_supervised``. Arguments as :class:`SynthesisConsistencyLoss`, and:

    Args:
        edge_eps: ``eps`` of :func:`sobel_edges`.
        edge_smoothing_sigma: Gaussian smoothing (pixels) of both images before the Sobel operator; 0 (the paper)
            compares raw edges, whose noise the network can only lower the term for by copying the inputs' noise into
            the maps.
    """

    term_prefix = "self"
    total_name = "self_supervised"

    def __init__(self, *args, edge_eps: float = 1e-12, edge_smoothing_sigma: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.edge_eps = edge_eps
        self.edge_smoothing_sigma = float(edge_smoothing_sigma)

    def compared(self, images: torch.Tensor) -> torch.Tensor:
        """Sobel edge magnitudes (B, C, H, W), never below ``sqrt(edge_eps)``."""
        return sobel_edges(images, self.edge_eps, self.edge_smoothing_sigma)


class IntensityConsistencyLoss(SynthesisConsistencyLoss):
    """``sum_c w_c SI-L1(synth_c, acquired_c / mean acquired_c)``: the images themselves under one gain per image
    (or a local gain with ``scale_window``, which absorbs a receive field the signal models lack, and with it any
    contrast on a larger scale than the window). Terms are named ``intensity_<contrast>`` and their sum
    ``intensity_total``. Arguments as :class:`SynthesisConsistencyLoss`."""

    term_prefix = "intensity"
    total_name = "intensity_total"
