"""Sobel edge magnitudes of (B, C, H, W) images, the edge map ``S`` of the self-supervised term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d

__all__ = ["sobel_edges"]

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
