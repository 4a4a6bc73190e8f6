"""How the phantom's scanner acquires: the ``ideal`` acquisition of the loss's own equations, or a ``realistic`` one.

The ``ideal`` acquisition (the default study) images every compartment with the closed-form models the hybrid
loss inverts (:mod:`pipeline.phantom.contrasts`). A win of the loss there may be an *inverse crime*. The
``realistic`` acquisition adds what a 3 T scanner does and the loss does not model; each effect is a flag of
:class:`Acquisition` and can be switched off on its own:

=======================  ===============================================================================================
``mprage_readout``       MPRAGE: Mz recovers during the 176-excitation readout (:func:`pipeline.physics.mprage_readout`,
                         the recursion the physics tests check pulse by pulse); each excitation fills lines of the
                         inner phase-encode axis (:data:`PHASE_ENCODE_AXIS`, linear ordering): its point-spread
                         function. Long-T1 tissue is still inverted early in the train, so its PSF changes sign.
``tse_echo_train``       T2w TSE: echo amplitudes from EPG with the protocol's 150 deg refocusing, ETL 16, ESP 9.3 ms
                         (:func:`pipeline.physics.tse_echo_train`), echo ``k`` filling segment ``k`` of the phase-encode
                         axis (linear ordering, echo TE/ESP = 10 at the centre): stimulated echoes and T2 blurring.
``flair_variable_flip``  FLAIR: an inversion-recovery 3D SPACE-like train, EPG with variable refocusing angles
                         (:func:`refocusing_schedule`), centre echo nearest the protocol TE, placed along the
                         phase-encode axis like the TSE's. Its T2 weighting is weaker than ``exp(-TE/T2)``.
``transmit_field``       B1+: a smooth field (:data:`TRANSMIT_STD`, clipped to :data:`TRANSMIT_RANGE`) scales every flip
                         angle: MPRAGE excitation and inversion (hard-pulse inversion, ``eta = -cos(pi B1)``: the
                         worst case; adiabatic inversions are B1-insensitive), TSE/FLAIR excitation and refocusing,
                         FLAIR inversion. Without an EPG effect, the simplified TSE ignores angles (as the loss does).
``fine_anatomy``         tissues simulated on a 0.5 mm grid with sharp boundaries (tissue probabilities thresholded
                         with a partial-volume rim, :data:`BOUNDARY_TEMPERATURE`) and acquired at 1 mm by k-space
                         truncation (:func:`pipeline.phantom.kspace.acquire_axis`): Gibbs ringing.
``anatomical_variety``   pose, global and regional scaling, large deformations, atrophy, lesion load and, for the
                         validation and test subjects, the mirrored brain (:mod:`pipeline.phantom.variety`).
``label_acquisition``    label maps through a slice profile with transition bands, with fit noise and a per-subject
                         bias (:mod:`pipeline.phantom.labels`); the 1 mm references stay the exact truth.
=======================  ===============================================================================================

Every effect images the study's protocols (:func:`~pipeline.phantom.contrasts.protocols`: the defaults, or a new
site's through the ``overrides`` arguments) and builds on :mod:`pipeline.physics` (never a second copy of its
equations). Its EPG
(:func:`pipeline.physics.cpmg_echo_train`) is tested against the pulse-by-pulse reference values and an isochromat
Bloch simulation; a maintained EPG package was considered and not taken: ``mrpro`` (its ``EPG`` operator) requires
``cufinufft``, ``pytorch-finufft``, ``torchvision`` (which does not import beside the CPU torch 2.13 this
project pins), ``pypulseq`` and ``ismrmrd`` for one recursion of ~40 lines. MONAI's ``RandBiasField``,
``RandGibbsNoise`` and ``RandRicianNoise`` do not fit: the phantom's fields are tied to world coordinates (so a crop
sees the same values, :mod:`pipeline.phantom.fields`), its Gibbs ringing comes from a change of grid that
``GibbsNoise`` (same grid) cannot do, and its noise is seeded per sagittal plane. A compartment's signal
depends on its texture factor and on B1+, both smooth: it is tabulated on a (B1+, texture) grid per
compartment (:class:`CompartmentSignals`) and looked up per 1 mm voxel; with ``fine_anatomy`` the smooth signal
fields are interpolated to the 0.5 mm grid and multiplied by the sharp fractions there. The k-space modulation
of a compartment uses its subject-level T1/T2 at nominal B1+ (texture and B1+ change the PSF width at second
order); the k-space-centre value of every voxel uses its own T1, T2 and B1+.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import physics
from pipeline.phantom.contrasts import (
    CONTRASTS,
    WHITE_MATTER_INTENSITY,
    ProtocolOverrides,
    overrides_as_dict,
    protocols,
    signed_magnitude,
)
from pipeline.phantom.kspace import acquire_axis, line_weights, phase_encode
from pipeline.phantom.tissues import TISSUES_3T

PHASE_ENCODE_AXIS = {"mprage": 1, "tse": 0, "flair": 1}
"""Axis (0 = x L-R, 1 = y A-P, 2 = z S-I) along which each contrast's train fills k-space: a sagittal 3D MPRAGE and
3D FLAIR with their inner phase-encode loop A-P, an axial 2D TSE phase-encoded R-L (as usual, to keep eye motion off
the brain)."""
TRANSMIT_STD = 0.08
"""Standard deviation of the relative B1+ (unit-variance smooth field times this): about +-16 % at 2 sigma."""
TRANSMIT_RANGE = (0.8, 1.2)
"""B1+ is clipped to this range (refocusing stays <= 180 deg: 150 deg x 1.2)."""
TRANSMIT_SPACING_MM = 80.0
"""Knot spacing of the B1+ field (a 3 T head's transmit field varies over decimetres)."""
TRANSMIT_STREAM = 100
"""Third entry of the seed tuple ``(seed, subject_index, TRANSMIT_STREAM)`` of the B1+ field."""
BOUNDARY_TEMPERATURE = 0.1
"""Temperature of the softmax that sharpens the template's tissue probabilities on the 0.5 mm grid: boundaries
whose partial-volume rim is a fraction of a millimetre instead of the MNI average's few millimetres."""
BOUNDARY_OFFSETS = {"csf": 0.15}
"""Offsets on tissue probabilities before sharpening: the MNI average smears sulcal CSF below 0.5 probability, so
the CSF boundary is moved outwards to keep a CSF layer around the cortex."""
FLAIR_MINIMUM_ANGLE = 40.0
"""Lowest refocusing angle (degrees) of the SPACE-like FLAIR train."""
FLAIR_START_ANGLE = 150.0
"""First refocusing angle (degrees) of the SPACE-like FLAIR train, also its final angle."""
TABLE_TEXTURE_SIGMAS = 5.0
"""The texture axis of the signal tables spans +-this many standard deviations of the texture field."""
TABLE_SIZE = (11, 21)
"""Samples of the signal tables along (B1+, texture)."""


@dataclasses.dataclass(frozen=True)
class Acquisition:
    """Which effects of a real acquisition the phantom simulates (see the module docstring); all off: ``ideal``."""

    mprage_readout: bool = False
    tse_echo_train: bool = False
    flair_variable_flip: bool = False
    transmit_field: bool = False
    fine_anatomy: bool = False
    anatomical_variety: bool = False
    label_acquisition: bool = False

    @classmethod
    def effects(cls) -> tuple[str, ...]:
        """Names of every effect (the flags)."""
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def preset(cls, name: str, without: Sequence[str] = ()) -> Acquisition:
        """``ideal`` (no effect) or ``realistic`` (every effect), minus the effects named in ``without``."""
        if name not in ("ideal", "realistic"):
            raise ValueError(f"unknown acquisition {name!r}: expected 'ideal' or 'realistic'")
        unknown = sorted(set(without) - set(cls.effects()))
        if unknown:
            raise ValueError(f"unknown acquisition effect(s) {unknown}: expected some of {list(cls.effects())}")
        return cls(**{effect: name == "realistic" and effect not in without for effect in cls.effects()})

    @classmethod
    def from_dict(cls, flags: Mapping[str, bool]) -> Acquisition:
        """From :meth:`to_dict`'s mapping (unknown names are an error)."""
        unknown = sorted(set(flags) - set(cls.effects()))
        if unknown:
            raise ValueError(f"unknown acquisition effect(s) {unknown}: expected some of {list(cls.effects())}")
        return cls(**{name: bool(value) for name, value in flags.items()})

    def to_dict(self) -> dict[str, bool]:
        """``{effect: on}`` (the study manifest's generator record keeps it)."""
        return dataclasses.asdict(self)

    @property
    def images_need_kspace(self) -> bool:
        """Whether any effect acts on the images (rather than the anatomy or the labels)."""
        image_effects = ("mprage_readout", "tse_echo_train", "flair_variable_flip", "transmit_field", "fine_anatomy")
        return any(getattr(self, effect) for effect in image_effects)


def refocusing_schedule(n_echoes: int, centre: int) -> list[float]:
    """A 3D SPACE-like variable refocusing train (degrees), after the shapes of Mugler 2014 (JMRI 39:745).

    Starts at :data:`FLAIR_START_ANGLE`, falls exponentially (over ~4 echoes) to :data:`FLAIR_MINIMUM_ANGLE`
    (pseudo steady state), holds it to the centre echo, then rises linearly back to the start angle at the end of
    the train (to keep the late, high-frequency echoes' signal). A stand-in for the vendor's T2-prescribed
    schedule, which is not published.
    """
    echo = np.arange(n_echoes, dtype=float)
    falling = FLAIR_MINIMUM_ANGLE + (FLAIR_START_ANGLE - FLAIR_MINIMUM_ANGLE) * np.exp(-echo / 4.0)
    rising = FLAIR_MINIMUM_ANGLE + (FLAIR_START_ANGLE - FLAIR_MINIMUM_ANGLE) * (echo - centre) / max(
        n_echoes - 1 - centre, 1
    )
    return np.where(echo <= centre, falling, np.maximum(rising, FLAIR_MINIMUM_ANGLE)).tolist()


def protocol_at(contrast: str, transmit: float, overrides: ProtocolOverrides = ()):
    """The contrast's protocol under ``overrides`` (:func:`~pipeline.phantom.contrasts.protocols`), angles times B1+."""
    protocol = protocols(overrides)[contrast]
    if contrast == "mprage":
        return dataclasses.replace(
            protocol,
            flip_angle=protocol.flip_angle * transmit,
            inversion_efficiency=-math.cos(math.pi * transmit),
        )
    scaled = {"excitation_angle": protocol.excitation_angle * transmit}
    if contrast == "tse":
        scaled["refocusing_angle"] = min(protocol.refocusing_angle * transmit, 180.0)
    else:
        scaled["inversion_efficiency"] = -math.cos(math.pi * transmit)
    return dataclasses.replace(protocol, **scaled)


def flair_centre_echo(protocol: physics.FLAIRProtocol) -> int:
    """0-based echo of the SPACE-like FLAIR train at the k-space centre: the echo (at ``k ESP``, k >= 1) nearest TE."""
    return max(round(protocol.te / protocol.echo_spacing), 1) - 1


def signal_train(
    contrast: str,
    acquisition: Acquisition,
    t1_ms: np.ndarray,
    t2_ms: np.ndarray,
    pd: np.ndarray,
    transmit: float,
    through_centre: bool = False,
    overrides: ProtocolOverrides = (),
) -> tuple[np.ndarray, int]:
    """Signed signal of every sample of the contrast's train (M0 units) and the sample at the k-space centre.

    A contrast whose train effect is off is one sample: the simplified model's signed signal
    (:func:`~pipeline.phantom.contrasts.signed_magnitude`) at the B1+-scaled protocol.

    Args:
        contrast: one of :data:`~pipeline.phantom.contrasts.CONTRASTS`.
        acquisition: the effects in force.
        t1_ms, t2_ms, pd: (N,) float64 compartment values.
        transmit: relative B1+ (1 = nominal).
        through_centre: only the echoes up to the centre one (the signal at the k-space centre is the last sample).
        overrides: the study's protocol overrides (:func:`~pipeline.phantom.contrasts.protocol_overrides`).

    Returns:
        (N, L) float64 train and the 0-based centre sample.
    """
    protocol = protocol_at(contrast, transmit, overrides)
    if contrast == "mprage" and acquisition.mprage_readout:
        return physics.mprage_readout(t1_ms, pd, protocol), protocol.centre_index
    if contrast == "tse" and acquisition.tse_echo_train:
        centre = physics.centre_echo_index(protocol) - 1
        if through_centre:
            return physics.tse_epg(t1_ms, t2_ms, pd, protocol)[:, None], 0
        return physics.tse_echo_train(t1_ms, t2_ms, pd, protocol), centre
    if contrast == "flair" and acquisition.flair_variable_flip:
        centre = flair_centre_echo(protocol)
        angles = [min(angle * transmit, 180.0) for angle in refocusing_schedule(protocol.echo_train_length, centre)]
        if through_centre:
            angles = angles[: centre + 1]
        return physics.flair_echo_train(t1_ms, t2_ms, pd, angles, protocol), centre
    return signed_magnitude(contrast, t1_ms, t2_ms, pd, protocol, overrides)[:, None], 0


def check_protocols(acquisition: Acquisition, overrides: ProtocolOverrides) -> None:
    """Raise a ``ValueError`` before any subject is simulated if the overridden protocols do not fit ``acquisition``.

    Runs every contrast's :func:`signal_train` for nominal white matter at the B1+ extremes the acquisition uses, so
    any protocol the simulation would build is built (e.g. ``tse_echo_train`` needs the TSE's ``te`` to be a whole
    number of ``echo_spacing``: the echo that fills the k-space centre).
    """
    white = TISSUES_3T["white_matter"]
    values = [np.array([value]) for value in (white.t1_ms, white.t2_ms, white.pd)]
    try:
        for contrast in CONTRASTS:
            for transmit in TRANSMIT_RANGE if acquisition.transmit_field else (1.0,):
                signal_train(contrast, acquisition, *values, transmit, overrides=overrides)
    except ValueError as error:
        raise ValueError(
            f"protocol overrides {overrides_as_dict(overrides)} do not fit the acquisition (effects "
            f"{[effect for effect, on in acquisition.to_dict().items() if on]}): {error}"
        ) from error


@functools.cache
def intensity_scale(contrast: str, acquisition: Acquisition) -> float:
    """Factor from signal to image intensity: nominal white matter at nominal B1+ → :data:`WHITE_MATTER_INTENSITY`.

    Defined by the *default* protocols (no overrides), as a scanner's fixed receive gain: an overridden protocol
    changes the image intensities by its own signal change.
    """
    white = TISSUES_3T["white_matter"]
    train, centre = signal_train(
        contrast, acquisition, *(np.array([v]) for v in (white.t1_ms, white.t2_ms, white.pd)), 1.0
    )
    return WHITE_MATTER_INTENSITY / float(train[0, centre])


def texture_cvs_per_parameter(texture_cv: np.ndarray) -> np.ndarray:
    """Texture CVs (K,) (one for T1, T2 and PD together, as the phantom has them) or (K, 3) (one each) as (K, 1) or
    (K, 3), to broadcast against (K, 3) tissue values."""
    texture_cv = np.asarray(texture_cv)
    return texture_cv.reshape(len(texture_cv), -1)


@dataclasses.dataclass(frozen=True)
class CompartmentSignals:
    """One contrast's signal of every compartment of a subject, tabulated over B1+ and texture.

    Attributes:
        transmit: (B,) B1+ samples (one sample, 1, without the transmit effect).
        centre: (K, B, T) image intensity of the k-space-centre sample of each compartment.
        line_weights: (K, n_lines) k-space modulation of each compartment along the phase-encode axis (FFT
            order; subject values, nominal B1+), or ``None`` without a train effect for this contrast.
    """

    transmit: np.ndarray
    centre: np.ndarray
    line_weights: np.ndarray | None

    @classmethod
    def tabulate(
        cls,
        contrast: str,
        acquisition: Acquisition,
        values: np.ndarray,
        texture_cv: np.ndarray,
        n_lines: int | None,
        overrides: ProtocolOverrides = (),
    ) -> CompartmentSignals:
        """Tabulate ``contrast`` for compartments of subject ``values`` (K, 3: T1 ms, T2 ms, PD) and texture CVs (K,)
        or (K, 3).

        The texture multiplies T1, T2 and PD by ``exp(cv * s)``: together with CVs (K,) (as in
        :mod:`pipeline.phantom.simulate`), each parameter by its own with CVs (K, 3) (one field ``s``, its own CV).
        ``n_lines``: phase-encode lines of the k-space modulation (``None``: the k-space-centre table alone).
        ``overrides``: the study's protocol overrides (the intensity scale stays the default protocols').
        """
        transmit = np.linspace(*TRANSMIT_RANGE, TABLE_SIZE[0]) if acquisition.transmit_field else np.ones(1)
        sigmas = np.linspace(-TABLE_TEXTURE_SIGMAS, TABLE_TEXTURE_SIGMAS, TABLE_SIZE[1])
        textured = values[:, :, None] * np.exp(texture_cvs_per_parameter(texture_cv)[:, :, None] * sigmas)  # (K, 3, T)
        t1, t2, pd = textured.transpose(1, 0, 2)
        scale = intensity_scale(contrast, acquisition)
        centre = np.empty((len(values), len(transmit), len(sigmas)))
        for b, b1 in enumerate(transmit):
            train, index = signal_train(
                contrast, acquisition, t1.ravel(), t2.ravel(), pd.ravel(), b1, through_centre=True, overrides=overrides
            )
            centre[:, b] = scale * train[:, index].reshape(t1.shape)
        if n_lines is None:
            return cls(transmit, centre, None)
        nominal, index = signal_train(
            contrast, acquisition, values[:, 0], values[:, 1], values[:, 2], 1.0, overrides=overrides
        )
        weights = line_weights(nominal, index, n_lines) if nominal.shape[-1] > 1 else None
        return cls(transmit, centre, weights)

    def lookup(self, compartment: int, texture_sigmas: torch.Tensor, transmit: torch.Tensor | None) -> torch.Tensor:
        """Bilinear look-up of one compartment's intensity at voxels (any shape; B1+ ``None``: nominal)."""
        table = torch.as_tensor(self.centre[compartment], dtype=torch.float32)
        x = texture_sigmas / TABLE_TEXTURE_SIGMAS  # grid_sample's normalised coordinates, [-1, 1] over the table
        low, high = TRANSMIT_RANGE
        if len(self.transmit) == 1:
            y = torch.zeros_like(x)
        else:  # the range is symmetric about 1, so nominal B1+ is the table's middle row
            y = torch.zeros_like(x) if transmit is None else (2.0 * transmit - (low + high)) / (high - low)
        grid = torch.stack([x, y], dim=-1).reshape(1, 1, -1, 2)
        sampled = F.grid_sample(table[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled.reshape(texture_sigmas.shape)


def fine_product(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """(2X, 2Y, 2Z) ``fine`` times (X, Y, Z) ``coarse`` taken constant over each 1 mm voxel's 2x2x2 fine voxels.

    For smooth intensity fields (texture, B1+, receive bias: < 0.5 % change per mm), without the cost of
    interpolating each field to the fine grid.
    """
    x, y, z = coarse.shape
    product = fine.reshape(x, 2, y, 2, z, 2) * coarse.reshape(x, 1, y, 1, z, 1)
    return product.reshape(fine.shape)


def acquire_contrast(
    signals: CompartmentSignals,
    fractions: torch.Tensor,
    fields: torch.Tensor,
    phase_encode_axis: int,
    acquired_shape: tuple[int, int, int],
) -> np.ndarray:
    """One contrast's complex image on the acquired (1 mm) grid.

    Each compartment's image (fraction times intensity field) is acquired along the phase-encode axis with its own
    k-space modulation; the compartments are summed in k-space, then the other axes are acquired (truncated from a
    fine grid).

    Args:
        signals: the contrast's compartment signals (their k-space modulation along ``phase_encode_axis``).
        fractions: (K, *simulated shape) compartment fractions on the simulated grid (1 mm, or 0.5 mm: twice
            the acquired shape).
        fields: (K, *acquired shape) each compartment's intensity (texture, B1+, receive bias) at 1 mm; smooth, so
            constant over the fine voxels of a 1 mm voxel (:func:`fine_product`).
        phase_encode_axis: the axis the contrast's train fills.
        acquired_shape: (X, Y, Z) of the acquired grid.

    Returns:
        (X, Y, Z) complex64 image.
    """
    fine = tuple(fractions.shape[1:]) != tuple(acquired_shape)
    lines = acquired_shape[phase_encode_axis]
    image = 0
    for k in range(len(fractions)):
        field = fields[k]
        compartment = fine_product(fractions[k], field) if fine else fractions[k] * field
        weights = None if signals.line_weights is None else signals.line_weights[k]
        if fine or weights is not None:
            compartment = phase_encode(compartment, phase_encode_axis, lines, weights)
        image = image + compartment
    if fine or signals.line_weights is not None:
        image = torch.fft.ifft(image, dim=-1).movedim(-1, phase_encode_axis)
    if fine:
        for axis in range(3):
            if axis != phase_encode_axis:
                image = acquire_axis(image, axis, acquired_shape[axis])
    return torch.as_tensor(image).to(torch.complex64).numpy()
