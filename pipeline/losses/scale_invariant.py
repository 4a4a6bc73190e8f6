"""The scaling-invariant L1 of Wang et al. 2020 (ISMRM p. 867): an L1 after a closed-form least-squares gain."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from pipeline.losses.masking import binary_mask, masked_mean

__all__ = ["MIN_SCALE_PIXELS", "ScaleInvariantL1Loss"]

MIN_SCALE_PIXELS = 20
"""Fewest pixels of a ``scale_mask`` that fit an image's factor alone."""


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

    def forward(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        scale_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input: the image to scale, shape (B, C, H, W).
            target: shape (B, C, H, W).
            mask: optional (B, 1, H, W); nonzero voxels take part in ``a`` and in the mean.
            scale_mask: optional (B, 1, H, W) region that alone fits ``a`` (one per image; not with a ``window``),
                e.g. a reference tissue; an image with fewer than :data:`MIN_SCALE_PIXELS` of it falls back to ``mask``.

        Returns:
            scalar loss.
        """
        if input.shape != target.shape or input.ndim != 4:
            raise ValueError(
                f"input and target must both be (B, C, H, W); got {tuple(input.shape)} and {tuple(target.shape)}."
            )
        mask = binary_mask(mask, input)
        scale = self.least_squares_scale(input, target, mask)
        if scale_mask is not None:
            if self.window:
                raise ValueError("a scale_mask fits one factor per image; it cannot be combined with a window.")
            scale_mask = binary_mask(scale_mask, input)
            enough = scale_mask.sum(dim=(-2, -1), keepdim=True) >= MIN_SCALE_PIXELS
            scale = torch.where(enough, self.least_squares_scale(input, target, scale_mask), scale)
        return masked_mean((scale * input - target).abs(), mask)
