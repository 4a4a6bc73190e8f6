"""Masked means and 0/1 masks of (B, C, H, W) tensors, shared by the loss terms."""

from __future__ import annotations

import torch

__all__ = ["binary_mask", "masked_mean", "per_image_mean"]


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, C, H, W) over the voxels where the 0/1 ``mask`` (B, 1, H, W) is 1 (all if None)."""
    if mask is None:
        return values.mean()
    weights = mask.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def per_image_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over H, W (inside the 0/1 ``mask`` (B, 1, H, W) if given) of (B, C, H, W) values, shape (B, C, 1, 1)."""
    if mask is None:
        return values.mean(dim=(-2, -1), keepdim=True)
    return (values * mask).sum(dim=(-2, -1), keepdim=True) / mask.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)


def binary_mask(mask: torch.Tensor | None, reference: torch.Tensor) -> torch.Tensor | None:
    """``mask != 0`` as 0/1 values of ``reference``'s dtype, after checking it is (B, 1, H, W)."""
    if mask is None:
        return None
    expected = (reference.shape[0], 1, *reference.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape (B, 1, H, W) = {expected}, got {tuple(mask.shape)}.")
    return (mask != 0).to(reference.dtype)
