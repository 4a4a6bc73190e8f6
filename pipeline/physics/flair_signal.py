"""The T2w FLAIR: inversion recovery before a spin-echo train, simplified or as an EPG echo train (3D SPACE)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.physics.units import _as_tensors, _relaxation_ms
from pipeline.physics.protocols import FLAIRProtocol, _require
from pipeline.physics.epg import _cpmg_echo_train


def flair(t1: Any, t2: Any, m0: Any, protocol: FLAIRProtocol | None = None) -> Any:
    """Simplified inversion-recovery TSE (FLAIR) magnitude signal.

    Assumptions (same simplifications as :func:`tse`): perfect inversion and 90 deg excitation,
    Mz = 0 at the end of the echo train (train length ``ETL ESP`` starting at TI), mono-exponential T2
    decay to the (effective) TE. Mz regrows from 0 for ``TR - TI - ETL ESP``, is inverted and
    recovers for TI:

    ``S = M0 |1 - 2 exp(-TI / T1) + exp(-(TR - ETL ESP) / T1)| exp(-TE / T2)``.

    A tissue is nulled where ``2 exp(-TI/T1) = 1 + exp(-(TR - ETL ESP)/T1)``, i.e. T1 = TI / ln 2 for
    TR -> infinity. With the paper's TE = 352 ms as a mono-exponential weighting, long-T2 fluid keeps
    more signal than a 3D SPACE FLAIR with variable flip angles would (the paper leaves FLAIR out of
    the self-supervised loss for this modelling difficulty).

    Args:
        t1, t2: relaxation times in ms (clamped to ``RELAXATION_FLOOR_MS``).
        m0: arbitrary units.
        protocol: ``None`` uses ``FLAIRProtocol()``.

    Returns:
        magnitude signal with the broadcast shape of the inputs.
    """
    protocol = protocol or FLAIRProtocol()
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    t1, t2 = _relaxation_ms(t1), _relaxation_ms(t2)
    return to_output(m0 * _inversion_recovery(t1, protocol).abs() * torch.exp(-protocol.te / t2))


def _inversion_recovery(t1: torch.Tensor, protocol: FLAIRProtocol) -> torch.Tensor:
    """Signed Mz/M0 at TI (see :func:`inversion_recovery`) of clamped T1 (ms)."""
    # 1 - (1 + eta (1 - E(TR - TI - train))) E(TI), expanded (for eta = 1 the operations of the original formula)
    train = protocol.echo_train_length * protocol.echo_spacing
    eta = protocol.inversion_efficiency
    return 1.0 - (1.0 + eta) * torch.exp(-protocol.ti / t1) + eta * torch.exp(-(protocol.tr - train) / t1)


def inversion_recovery(t1: Any, protocol: FLAIRProtocol | None = None) -> Any:
    """Signed Mz/M0 of a FLAIR at the excitation, TI after the inversion.

    Mz regrows from 0 (end of the previous echo train) for ``TR - TI - ETL ESP``, is inverted to
    ``-eta`` times itself (``protocol.inversion_efficiency``) and recovers for TI:
    ``Mz/M0 = 1 - (1 + eta (1 - exp(-(TR - TI - ETL ESP) / T1))) exp(-TI / T1)``; for eta = 1 this is
    :func:`flair`'s ``1 - 2 exp(-TI/T1) + exp(-(TR - ETL ESP)/T1)``. Negative for a T1 beyond the null.

    Args:
        t1: T1 in ms (clamped to ``RELAXATION_FLOOR_MS``).
        protocol: ``None`` uses ``FLAIRProtocol()``.

    Returns:
        Mz/M0 with the shape of ``t1``.
    """
    (t1,), to_output = _as_tensors(t1)
    return to_output(_inversion_recovery(_relaxation_ms(t1), protocol or FLAIRProtocol()))


def flair_echo_train(t1: Any, t2: Any, m0: Any, refocusing_deg: Sequence[float], protocol: FLAIRProtocol | None = None):
    """Signed signal of every echo of an inversion-recovery echo train (3D FLAIR, e.g. SPACE).

    ``S_k = M0 Mz_TI sin(excitation) A_k``: :func:`inversion_recovery`'s signed Mz/M0 at TI, excited and
    refocused by the train ``refocusing_deg`` (:func:`cpmg_echo_train`, which is linear in the
    magnetisation it starts from). Keeps :func:`flair`'s assumption Mz = 0 after each train.

    Args:
        t1, t2: relaxation times in ms; m0: arbitrary units.
        refocusing_deg: refocusing angle of each echo (degrees): at most ``protocol.echo_train_length``, the
            first echoes of the train.
        protocol: ``None`` uses ``FLAIRProtocol()``.

    Returns:
        (..., len(refocusing_deg)) signals, negative where Mz was still inverted at TI.
    """
    protocol = protocol or FLAIRProtocol()
    _require(
        len(refocusing_deg) <= protocol.echo_train_length,
        f"flair_echo_train takes at most echo_train_length = {protocol.echo_train_length} refocusing angles, "
        f"got {len(refocusing_deg)}.",
    )
    (t1, t2, m0), to_output = _as_tensors(t1, t2, m0)
    t1, t2 = _relaxation_ms(t1), _relaxation_ms(t2)
    amplitudes = _cpmg_echo_train(t1, t2, refocusing_deg, protocol.echo_spacing)
    scale = m0 * math.sin(math.radians(protocol.excitation_angle)) * _inversion_recovery(t1, protocol)
    return to_output(scale.unsqueeze(-1) * amplitudes)
