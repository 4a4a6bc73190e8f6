"""k-space along one axis: where a signal train's samples land (line ordering) and resolution by truncation.

A scanner fills k-space line by line: the excitations of an MPRAGE readout or the echoes of a turbo spin
echo train each fill their own lines of a phase-encode axis, so the train's evolution multiplies k-space
along that axis (the point-spread function), and its resolution is set by the extent of k-space it covers
(a sharp cut-off: Gibbs ringing). Both are applied here to volumes simulated on a grid twice as fine
as the acquired one. Hand-written because neither MONAI's ``GibbsNoise`` (which keeps the grid size)
nor any other transform resamples by truncation or weights k-space lines by an acquisition's ordering.

Ordering (documented assumption, the common default): **linear**. Lines run from the most negative to the most
positive frequency of the axis while the train runs forward, and the train sample that defines the
contrast (the centre excitation of MPRAGE, the effective-TE echo of a TSE) fills the k-space centre:
the line at frequency ``u`` (cycles per acquired voxel, in [-0.5, 0.5)) is acquired by train sample
``floor(centre + u * train_length + 1/2)`` (the nearest, halves up), clipped to the train: each line by one
sample, so a TSE's k-space is piecewise constant in segments of about ``n_lines / ETL`` lines.
"""

from __future__ import annotations

import numpy as np
import torch


def line_frequencies(n_lines: int) -> np.ndarray:
    """(n_lines,) frequency of every line in FFT order, in cycles per acquired voxel ([-0.5, 0.5))."""
    return np.fft.fftfreq(n_lines)


def train_sample_of_lines(n_lines: int, train_length: int, centre: int) -> np.ndarray:
    """(n_lines,) 0-based train sample that acquires each line (FFT order), linear ordering.

    Args:
        n_lines: acquired lines of the phase-encode axis (its number of voxels).
        train_length: samples in the train (excitations or echoes).
        centre: 0-based train sample at the k-space centre.
    """
    return np.clip(np.floor(centre + line_frequencies(n_lines) * train_length + 0.5), 0, train_length - 1).astype(int)


def line_weights(train: np.ndarray, centre: int, n_lines: int) -> np.ndarray:
    """k-space modulation of every line by a signal train, relative to the centre sample.

    Args:
        train: (..., L) signal of each train sample (signed).
        centre: 0-based sample at the k-space centre (its weight is 1).
        n_lines: acquired lines of the axis.

    Returns:
        (..., n_lines) float64 weights in FFT order.
    """
    train = np.asarray(train, dtype=np.float64)
    return train[..., train_sample_of_lines(n_lines, train.shape[-1], centre)] / train[..., centre : centre + 1]


def phase_encode(volume: torch.Tensor, axis: int, n_out: int, weights: np.ndarray | None = None) -> torch.Tensor:
    """The ``n_out`` acquired k-space lines of ``volume`` along ``axis``, weighted; the line axis moved last.

    ``volume`` holds ``n_in`` samples along ``axis``, either the acquired grid itself (``n_in == n_out``: only the
    weights act) or a grid ``n_in / n_out`` = 2 times finer whose voxel pairs share an acquired voxel (fine samples
    ``2m`` and ``2m + 1`` lie a quarter of the acquired voxel before and after acquired voxel ``m``). The ``n_out``
    lowest frequencies are kept, phase-shifted so that their inverse FFT evaluates the band-limited object at the
    acquired voxel centres (fine position ``2m + 1/2``), and scaled so a constant keeps its value. Linear: spectra
    of several volumes may be summed before one inverse FFT (``torch.fft.ifft(..., dim=-1)``).

    Args:
        volume: real or complex tensor.
        axis: the phase-encode axis.
        n_out: acquired lines.
        weights: (n_out,) k-space weight of every acquired line (FFT order), e.g. :func:`line_weights`.

    Returns:
        complex tensor, the other axes as in ``volume`` and ``n_out`` lines (FFT order) last.
    """
    n_in = volume.shape[axis]
    if n_in not in (n_out, 2 * n_out):
        raise ValueError(
            f"phase_encode resamples {n_in} samples to {n_out}: only the same or half as many are supported"
        )
    moved = volume.movedim(axis, -1).contiguous()  # the FFT is fastest along the contiguous axis
    frequencies = np.rint(line_frequencies(n_out) * n_out).astype(int)  # integer frequencies, FFT order
    n_positive, n_negative = (n_out + 1) // 2, n_out // 2  # frequencies 0 .. n_positive - 1 and -n_negative .. -1
    if moved.is_complex():
        full = torch.fft.fft(moved, dim=-1)
        spectrum = torch.cat([full[..., :n_positive], full[..., n_in - n_negative :]], dim=-1)
    else:  # a real volume's negative frequencies are the conjugates of its positive ones
        half = torch.fft.rfft(moved, dim=-1)
        spectrum = torch.cat([half[..., :n_positive], half[..., 1 : n_negative + 1].flip(-1).conj()], dim=-1)
    factor = np.full(n_out, n_out / n_in, dtype=np.complex128)
    if n_in != n_out:
        factor *= np.exp(1j * np.pi * frequencies / n_in)  # evaluate at fine position 2m + 1/2
    if weights is not None:
        factor *= weights
    return spectrum * torch.as_tensor(factor, dtype=spectrum.dtype)


def acquire_axis(volume: torch.Tensor, axis: int, n_out: int, weights: np.ndarray | None = None) -> torch.Tensor:
    """Acquire ``n_out`` lines of ``volume`` along ``axis`` (:func:`phase_encode`) and return to image space.

    Returns:
        complex tensor with ``n_out`` samples along ``axis``: band-limited resampling of a fine object with the
        ringing of the cut-off, times the weights' point-spread function.
    """
    return torch.fft.ifft(phase_encode(volume, axis, n_out, weights), dim=-1).movedim(-1, axis)
