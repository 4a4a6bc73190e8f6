"""The supervised term: a weighted L1 between predicted and label maps (T1, T2, M0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses.masking import masked_mean

__all__ = ["LABEL_SPREAD", "MapL1Loss", "label_spread_weights"]

LABEL_SPREAD = "label_spread"
"""``MapL1Loss(map_weights=LABEL_SPREAD)``: weigh each map by :func:`label_spread_weights`."""


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
        return masked_mean((pred - label).abs() * weights.view(1, 3, 1, 1), supervised_mask)
