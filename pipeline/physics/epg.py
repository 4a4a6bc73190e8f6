"""Extended phase graphs (Weigel 2015, JMRI 41:266): CPMG echo trains for constant or variable refocusing angles,
the echo amplitudes shared by the TSE and FLAIR models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.physics.units import _as_tensors, _relaxation_ms
from pipeline.physics.protocols import TSEProtocol, _require


def centre_echo_index(protocol: TSEProtocol) -> int:
    """1-based echo number of the k-space centre, ``TE / ESP``, which must be an integer <= ETL."""
    ratio = protocol.te / protocol.echo_spacing
    echo = round(ratio)
    _require(
        abs(ratio - echo) <= 1e-6 * max(ratio, 1.0) and 1 <= echo <= protocol.echo_train_length,
        f"tse_epg needs te to be a whole number of echo spacings within the train; got te / echo_spacing = "
        f"{protocol.te} / {protocol.echo_spacing} = {ratio} with echo_train_length {protocol.echo_train_length}.",
    )
    return echo


def _cpmg_echo_train(t1: torch.Tensor, t2: torch.Tensor, refocusing_deg: Sequence[float], echo_spacing: float):
    """(..., n) normalised amplitudes of the echoes of a CPMG train started from Mz = M0.

    Extended phase graph (Weigel 2015, JMRI 41:266): 90 deg excitation about y, refocusing about x at
    ESP/2 + k ESP (angle ``refocusing_deg[k]``), echoes at k ESP, relaxation and one dephasing step per
    ESP/2. In this CPMG phase convention the states that refocus at the echoes are real ``F+_k``,
    ``F-_k`` and imaginary ``Z_k = i z_k``, so the graph runs in real arithmetic. Longitudinal regrowth
    ``(1 - E1)`` and the Mz an imperfect excitation leaves feed the quadrature subsystem (real Z_0),
    which is tipped at refocusing times and only refocuses at refocusing times, never at echo times,
    so it is omitted without changing the echo amplitudes.
    """
    shape = (*torch.broadcast_shapes(t1.shape, t2.shape), 2)
    e1 = torch.exp(-0.5 * echo_spacing / t1).unsqueeze(-1)
    e2 = torch.exp(-0.5 * echo_spacing / t2).unsqueeze(-1)
    unit = torch.zeros(2, dtype=t1.dtype, device=t1.device)
    unit[0] = 1.0
    f_plus = unit.expand(shape)
    f_minus = unit.expand(shape)
    z = torch.zeros(shape, dtype=t1.dtype, device=t1.device)

    def relax_and_dephase(f_plus, f_minus, z):
        # dephasing raises the order of every state by one: the graph grows by one state per half echo spacing
        f_plus, f_minus, z = f_plus * e2, f_minus * e2, z * e1
        zero = torch.zeros_like(f_minus[..., :1])
        f_plus = torch.cat([f_minus[..., 1:2], f_plus], dim=-1)
        f_minus = torch.cat([f_minus[..., 1:], zero, zero], dim=-1)
        z = torch.cat([z, zero], dim=-1)
        return f_plus, f_minus, z

    echoes = []
    for angle in refocusing_deg:
        beta = math.radians(angle)
        cos_half_sq, sin_half_sq = math.cos(beta / 2) ** 2, math.sin(beta / 2) ** 2
        sin_beta, cos_beta = math.sin(beta), math.cos(beta)
        f_plus, f_minus, z = relax_and_dephase(f_plus, f_minus, z)
        f_plus, f_minus, z = (
            cos_half_sq * f_plus + sin_half_sq * f_minus + sin_beta * z,
            sin_half_sq * f_plus + cos_half_sq * f_minus - sin_beta * z,
            0.5 * sin_beta * (f_minus - f_plus) + cos_beta * z,
        )
        f_plus, f_minus, z = relax_and_dephase(f_plus, f_minus, z)
        echoes.append(f_plus[..., 0])
    return torch.stack(echoes, dim=-1)


def cpmg_echo_train(t1: Any, t2: Any, refocusing_deg: Sequence[float], echo_spacing: float) -> Any:
    """Echo amplitudes of a CPMG train with the given refocusing angles, by extended phase graphs.

    The train starts from transverse magnetisation M0 (a 90 deg excitation of Mz = M0); echo ``k``
    (1-based) forms at ``k * echo_spacing`` after refocusing pulse ``k`` of angle ``refocusing_deg[k-1]``
    (Weigel 2015, JMRI 41:266). Constant 180 deg gives ``exp(-k ESP / T2)``; lower or variable angles
    (3D SPACE: Mugler 2014, JMRI 39:745) add stimulated-echo pathways that slow the decay.

    Args:
        t1, t2: relaxation times in ms (clamped to ``RELAXATION_FLOOR_MS``).
        refocusing_deg: refocusing flip angle of every echo (degrees, in (0, 180]); its length is the train length.
        echo_spacing: time between echoes (ms).

    Returns:
        (..., n_echoes) amplitudes relative to M0 (signed; positive for CPMG), ``...`` the broadcast shape.
    """
    _require(len(refocusing_deg) >= 1, "cpmg_echo_train needs at least one refocusing angle.")
    _require(
        all(0.0 < angle <= 180.0 for angle in refocusing_deg),
        f"refocusing angles must be in (0, 180] degrees, got {list(refocusing_deg)}.",
    )
    _require(echo_spacing > 0.0, f"echo_spacing must be > 0 ms, got {echo_spacing}.")
    (t1, t2), to_output = _as_tensors(t1, t2)
    return to_output(_cpmg_echo_train(_relaxation_ms(t1), _relaxation_ms(t2), refocusing_deg, echo_spacing))
