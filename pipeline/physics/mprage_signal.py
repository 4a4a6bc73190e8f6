"""MPRAGE: the steady-state closed form (Deichmann et al. 2000; Wang et al. 2014) and every excitation of its
readout."""

from __future__ import annotations

import math
from typing import Any

import torch

from pipeline.physics.units import _as_tensors, _relaxation_ms
from pipeline.physics.protocols import MPRAGEProtocol


def mprage(t1: Any, m0: Any, protocol: MPRAGEProtocol | None = None) -> Any:
    """Steady-state MPRAGE magnitude signal at the k-space-centre excitation.

    Sequence (Deichmann et al. 2000, MRM 44:130; Wang et al. 2014, PLoS ONE 9:e96899): an inversion
    at t = 0 (``Mz -> -eta * Mz``), then N hard-pulse excitations of flip angle ``alpha`` at
    ``t_k = TI + (k - c) * ESP`` (k = 0..N-1, c = N // 2, linear ordering), ideal spoiling, next
    inversion at t = TR. With ``m = Mz / M0`` and ``E(t) = exp(-t / T1)``:

    * between excitations (just before excitation k -> k+1): ``m_{k+1} = a m_k + (1 - E1)`` with
      ``E1 = E(ESP)``, ``a = cos(alpha) E1``; its fixed point is ``m_inf = (1 - E1) / (1 - a)``, so the
      geometric series gives ``m_k = m_inf + a^k (m_0 - m_inf)``;
    * inversion and recovery to the first excitation: ``m_0 = 1 - E_A - eta E_A m_ss`` with
      ``E_A = E(t_0)``, ``m_ss`` = Mz/M0 just before the inversion;
    * after the last excitation, recovery to the next inversion:
      ``m_ss = 1 - E_D + E_D cos(alpha) m_{N-1}`` with ``E_D = E(TR - t_{N-1})``.

    Steady state (``m_ss`` equal in consecutive TRs) solves these linear equations:

    ``m_ss = [1 - E_D + E_D cos(alpha) (m_inf (1 - a^{N-1}) + a^{N-1} (1 - E_A))]
    / (1 + eta E_D E_A cos(alpha) a^{N-1})``

    and the signal is ``M0 sin(alpha) |m_c|`` (times ``exp(-TE / T2*)`` if ``protocol.t2star`` is set).

    Args:
        t1: T1 in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: proton density / equilibrium magnetisation, arbitrary units.
        protocol: sequence timing; ``None`` uses the paper's (``MPRAGEProtocol()``).

    Returns:
        magnitude signal, broadcast shape of ``t1`` and ``m0``, same units as ``m0``.
    """
    protocol = protocol or MPRAGEProtocol()
    (t1, m0), to_output = _as_tensors(t1, m0)
    m_inf, a, m_first = _mprage_recovery(_relaxation_ms(t1), protocol)
    m_centre = m_inf + a**protocol.centre_index * (m_first - m_inf)
    return to_output(_mprage_transverse(m0, m_centre.abs(), protocol))


def _mprage_recovery(t1: torch.Tensor, protocol: MPRAGEProtocol) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steady-state ``(m_inf, a, m_0)`` of :func:`mprage`'s recursion ``m_k = m_inf + a^k (m_0 - m_inf)``."""
    alpha = math.radians(protocol.flip_angle)
    cos_alpha = math.cos(alpha)
    n = int(protocol.n_excitations)

    one_minus_e1 = -torch.expm1(-protocol.echo_spacing / t1)
    a = cos_alpha * (1.0 - one_minus_e1)
    m_inf = one_minus_e1 / (1.0 - a)
    e_a = torch.exp(-protocol.first_excitation_time / t1)
    e_d = torch.exp(-(protocol.tr - protocol.last_excitation_time) / t1)
    a_last = a ** (n - 1)
    eta = protocol.inversion_efficiency

    m_ss = (1.0 - e_d + e_d * cos_alpha * (m_inf * (1.0 - a_last) + a_last * (1.0 - e_a))) / (
        1.0 + eta * e_d * e_a * cos_alpha * a_last
    )
    return m_inf, a, 1.0 - e_a - eta * e_a * m_ss


def _mprage_transverse(m0: torch.Tensor, mz: torch.Tensor, protocol: MPRAGEProtocol) -> torch.Tensor:
    """Transverse signal ``M0 sin(alpha) m_k`` (times ``exp(-TE / T2*)`` with ``protocol.t2star``) of Mz/M0 ``m_k``."""
    signal = m0 * math.sin(math.radians(protocol.flip_angle)) * mz
    if protocol.t2star is not None:
        signal = signal * math.exp(-protocol.te / protocol.t2star)
    return signal


def mprage_readout(t1: Any, m0: Any, protocol: MPRAGEProtocol | None = None) -> Any:
    """Signed MPRAGE signal of every excitation of the steady-state readout train.

    The same recursion as :func:`mprage` (Deichmann et al. 2000), kept for all excitations:
    ``S_k = M0 sin(alpha) (m_inf + a^k (m_0 - m_inf))`` for ``k = 0 .. N-1``. Excitation ``k`` fills one
    k-space line of the inner phase-encode loop, so ``S_k / S_c`` is the readout's k-space modulation
    (its point-spread function); ``|S_c|`` (``c = N // 2``) is :func:`mprage`. The sign is that of
    Mz: negative while a long-T1 tissue is still inverted.

    Args:
        t1: T1 in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: arbitrary units.
        protocol: ``None`` uses ``MPRAGEProtocol()``.

    Returns:
        (..., N) signals, ``...`` the broadcast shape of ``t1`` and ``m0``.
    """
    protocol = protocol or MPRAGEProtocol()
    (t1, m0), to_output = _as_tensors(t1, m0)
    m_inf, a, m_first = _mprage_recovery(_relaxation_ms(t1), protocol)
    k = torch.arange(int(protocol.n_excitations), dtype=t1.dtype, device=t1.device)
    m_k = m_inf.unsqueeze(-1) + a.unsqueeze(-1) ** k * (m_first - m_inf).unsqueeze(-1)
    return to_output(_mprage_transverse(m0.unsqueeze(-1), m_k, protocol))
