"""Units and the numpy/torch plumbing every signal model shares: T1/T2 in ms, the network's 3 s unit, the
relaxation floor, and the conversion of floats, arrays and tensors to one torch dtype and device and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


MAP_UNIT_MS = 3000.0
"""Network map unit in ms: T1 and T2 are divided by 3 s inside the network, loss and metrics."""

RELAXATION_FLOOR_MS = 1.0
"""Smallest T1/T2 (ms) the models evaluate; smaller values are clamped to it."""

CSF_T2_MS = 1000.0
"""T2 (ms) above which a map's voxel is CSF (free water ~2 s at 3 T, brain tissue ~0.1 s): the reference tissue
whose T1, T2 and PD disease does not move."""


def _as_tensors(*values: Any) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], Any]]:
    """Convert floats/arrays/tensors to one floating torch dtype and device.

    Returns the tensors and the function that converts a result back to the caller's kind
    (torch stays torch; otherwise a numpy array, or numpy scalar for 0-d results).
    """
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if tensors:
        floating = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = floating[0] if floating else torch.get_default_dtype()
        for other in floating[1:]:
            dtype = torch.promote_types(dtype, other)
        device = tensors[0].device
        converted = [torch.as_tensor(v, dtype=dtype, device=device) for v in values]
        return converted, lambda result: result
    array_dtypes = [np.asarray(v).dtype for v in values if isinstance(v, (np.ndarray, np.generic))]
    keep_single = bool(array_dtypes) and all(dtype == np.float32 for dtype in array_dtypes)
    dtype = torch.float32 if keep_single else torch.float64
    converted = [torch.as_tensor(np.asarray(v), dtype=dtype) for v in values]
    return converted, lambda result: result.numpy()[()]


def _relaxation_ms(value: torch.Tensor) -> torch.Tensor:
    """Clamp a T1/T2 map (ms) to ``RELAXATION_FLOOR_MS``."""
    return value.clamp_min(RELAXATION_FLOOR_MS)
