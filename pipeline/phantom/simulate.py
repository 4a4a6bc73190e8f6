"""One phantom subject: deformed anatomy, quantitative maps and noisy weighted images at 1 mm.

Everything random about a subject is drawn once from ``numpy.random.default_rng((seed, subject_index))``
(:class:`~pipeline.phantom.subject_parameters.SubjectParameters`); the volumes are then a deterministic function of
those parameters and of the output grid. Random fields are tied to world coordinates (:mod:`pipeline.phantom.fields`)
and the image noise of each sagittal plane has its own seed, so simulating a few sagittal planes gives the same values
as cutting them out of the whole head (up to float rounding).

Steps (all per voxel of the output grid):

1. **deformation**: a smooth random displacement (a few mm) maps each voxel to a template position,
   where the tissue fractions of :func:`~pipeline.phantom.anatomy.load_template_anatomy` are sampled
   (linear interpolation); the brain mask is where the sampled fractions sum to >= 0.5.
2. **lesions** (optional): small irregular blobs (2-8 mm) in deep white matter (:mod:`pipeline.phantom.lesions`),
   placed in template space and deformed with the anatomy, replace their share of the white-matter fraction.
3. **tissue values**: per compartment, nominal 3 T values x per-subject factor x smooth texture.
4. **maps**: partial volumes mixed in relaxation *rates*, ``1/T1 = sum_k f_k / T1_k`` (same for T2), and
   ``M0 = sum_k f_k PD_k``; 0 outside the brain mask.
5. **weighted images**: each compartment's signal from :mod:`pipeline.phantom.contrasts`, mixed in the
   signal domain ``|sum_k f_k s_k|``, times a smooth receive-bias field, plus Rician noise.

With a realistic :class:`~pipeline.phantom.acquisition.Acquisition`, steps 1-2 may add anatomical variety and
run on a 0.5 mm grid with sharpened boundaries (:mod:`pipeline.phantom.fine_anatomy`: the 1 mm fractions, and so the
truth, are their block means), and step 5 goes through k-space (:func:`acquire_images`): signal trains across the
phase-encode axis, B1+, truncation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from pipeline.phantom.acquisition import (
    BOUNDARY_OFFSETS,
    PHASE_ENCODE_AXIS,
    TRANSMIT_RANGE,
    TRANSMIT_STD,
    Acquisition,
    CompartmentSignals,
    acquire_contrast,
)
from pipeline.phantom.anatomy import ANATOMICAL_CLASSES, TemplateAnatomy
from pipeline.phantom.contrasts import (
    CONTRASTS,
    WHITE_MATTER_INTENSITY,
    ProtocolOverrides,
    protocol_overrides,
    signed_signal,
)
from pipeline.phantom.fields import FIELD_DOMAIN_MM
from pipeline.phantom.fine_anatomy import acquired_fractions, fine_grid, sharpen, upsample
from pipeline.phantom.grid import VoxelGrid
from pipeline.phantom.subject_parameters import BIAS_LOG_STD, DEFORMATION_STD_MM, SubjectParameters
from pipeline.phantom.tissues import COMPARTMENTS, TISSUES_3T
from pipeline.phantom.variety import DEFORMATION_FACTOR


@dataclass(frozen=True)
class SubjectVolumes:
    """The 1 mm volumes of one subject on its grid (X, Y, Z).

    Attributes:
        grid: the voxel grid of every volume.
        mask: bool brain mask.
        fractions: (K, X, Y, Z) float32 compartment fractions (:data:`COMPARTMENTS`), sum 1 in the mask.
        t1_ms, t2_ms: float32 relaxation-time maps in ms (0 outside the mask).
        m0: float32 proton-density map (fraction of water; 0 outside the mask).
        weighted: contrast name (:data:`CONTRASTS`) → float32 noisy magnitude image (nominal WM = 1000).
        noise_sigma: standard deviation of the Gaussian noise in each real/imaginary channel.
        lesion_centres_mm: (L, 3) RAS centroid of each lesion visible on the grid (subject space).
        lesion_volumes_mm3: (L,) volume of each of these lesions on the grid.
    """

    grid: VoxelGrid
    mask: np.ndarray
    fractions: np.ndarray
    t1_ms: np.ndarray
    t2_ms: np.ndarray
    m0: np.ndarray
    weighted: dict[str, np.ndarray]
    noise_sigma: float
    lesion_centres_mm: np.ndarray
    lesion_volumes_mm3: np.ndarray


def displacement_mm(grid: VoxelGrid, parameters: SubjectParameters) -> np.ndarray:
    """(3, X, Y, Z) float32 displacement (mm) from each voxel centre of ``grid`` to its template position."""
    return DEFORMATION_STD_MM * parameters.deformation(grid)


def template_positions(grid: VoxelGrid, displacement: np.ndarray) -> np.ndarray:
    """(3, X, Y, Z) float32 template-space positions (mm) of the voxel centres: world + ``displacement``."""
    return np.stack([displacement[d] + grid.coordinate_mm(d).astype(np.float32) for d in range(3)])


def deformed_fractions(anatomy: TemplateAnatomy, positions_mm: np.ndarray) -> np.ndarray:
    """(4, X, Y, Z) float32 anatomical fractions sampled at template ``positions_mm`` (linear, 0 outside)."""
    indices = np.stack([anatomy.grid.world_to_index(d, positions_mm[d]) for d in range(3)])
    return np.stack([ndimage.map_coordinates(f, indices, order=1, cval=0.0) for f in anatomy.fractions])


def compartment_values(parameters: SubjectParameters, grid: VoxelGrid, mask: np.ndarray) -> np.ndarray:
    """(K, 3, N) float32 T1 (ms), T2 (ms), PD of every compartment at the N mask voxels, with texture.

    Texture is log-normal, one field per compartment shared by T1, T2 and PD (tissue water content moves
    them together): ``value = subject value * exp(cv * field)`` with the compartment's
    :attr:`~pipeline.phantom.tissues.TissueProperties.texture_cv`.
    """
    texture = texture_factors(parameters, grid)[:, mask]
    return parameters.tissue_values().astype(np.float32)[:, :, None] * texture[:, None, :]


def texture_cvs() -> np.ndarray:
    """(K,) texture coefficient of variation of each compartment (:data:`COMPARTMENTS` order)."""
    return np.array([TISSUES_3T[name].texture_cv for name in COMPARTMENTS])


def texture_factor(cv: np.ndarray | float, field: np.ndarray) -> np.ndarray:
    """The factor ``exp(cv * field)`` a unit-variance texture ``field`` puts on a compartment's T1, T2 and PD (float32
    for a float32 field)."""
    return np.exp(np.asarray(cv, np.float32) * field)


def texture_factors(parameters: SubjectParameters, grid: VoxelGrid) -> np.ndarray:
    """(K, X, Y, Z) float32 texture of each compartment (:func:`texture_factor`)."""
    return texture_factor(texture_cvs()[:, None, None, None], parameters.texture(grid))


def lesion_fraction(
    parameters: SubjectParameters,
    grid: VoxelGrid,
    displacement: np.ndarray,
    positions_mm: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion fraction (union of all lesions) on ``grid``, and centroids and volumes of the lesions it shows.

    Args:
        parameters: the subject's lesions and lesion-shape field.
        grid: the output grid.
        displacement, positions_mm: (3, X, Y, Z) template position minus world position, and template positions
            of the voxels.

    Returns:
        (X, Y, Z) float32 fraction in [0, 1]; (L, 3) RAS centroids (subject space) and (L,) volumes (mm^3)
        of the lesions on the grid.
    """
    fraction = np.zeros(grid.shape, dtype=np.float32)
    largest_shift = np.abs(displacement).max(axis=(1, 2, 3))
    centres, volumes = [], []
    for lesion in parameters.lesions:
        # the voxels whose world position lies within the lesion's reach plus the largest displacement
        reach = lesion.reach_mm + largest_shift
        low, high = (
            [grid.world_to_index(d, lesion.centre_mm[d] + side * reach[d]) for d in range(3)] for side in (-1, 1)
        )
        start = np.clip(np.floor(low).astype(int), 0, grid.shape)
        stop = np.clip(np.ceil(high).astype(int) + 1, 0, grid.shape)
        if np.any(stop <= start):
            continue
        box = tuple(slice(a, b) for a, b in zip(start, stop))
        box_grid = grid.subgrid(tuple(start), tuple(stop - start))
        box_positions = positions_mm[(slice(None), *box)].reshape(3, -1)
        shape_field = parameters.lesion_shape(box_grid)[0].reshape(-1)
        share = lesion.fraction(box_positions, shape_field).reshape(box_grid.shape)
        if share.sum() > 0:
            fraction[box] = np.maximum(fraction[box], share)
            world = np.stack(np.meshgrid(*box_grid.axes_mm(), indexing="ij"))
            centres.append(np.sum(world * share, axis=(1, 2, 3)) / share.sum())
            volumes.append(share.sum() * np.prod(grid.spacing_mm))
    return fraction, np.reshape(centres, (-1, 3)), np.array(volumes)


def rician_noise(image: np.ndarray, grid: VoxelGrid, parameters: SubjectParameters, stream: int, sigma: float):
    """float32 magnitude of ``image`` (real or complex) plus complex Gaussian noise of standard deviation ``sigma``.

    Each sagittal plane draws its noise from ``default_rng((seed, subject_index, stream, plane))`` with
    ``plane`` the plane's world x in mm from the field domain's edge, so a crop sees the same noise.
    """
    noisy = np.empty(image.shape, dtype=np.float32)
    for i, x_mm in enumerate(grid.axes_mm()[0]):
        plane = round(x_mm - FIELD_DOMAIN_MM[0][0])
        rng = np.random.default_rng((parameters.seed, parameters.subject_index, stream, plane))
        real, imaginary = sigma * rng.standard_normal((2, *image.shape[1:]), dtype=np.float32)
        noisy[i] = np.hypot(image[i].real + real, image[i].imag + imaginary)
    return noisy


def mix_relaxation_rates(fractions: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantitative maps of partial-volume voxels.

    Args:
        fractions: (K, N) compartment fractions (sum 1 per voxel).
        values: (K, 3, N) compartment T1 (ms), T2 (ms), PD.

    Returns:
        (N,) T1 = 1 / sum_k(f_k / T1_k), T2 likewise (ms), and M0 = sum_k f_k PD_k.
    """
    t1_ms, t2_ms = (1.0 / np.sum(fractions / values[:, column], axis=0) for column in (0, 1))
    return t1_ms, t2_ms, np.sum(fractions * values[:, 2], axis=0)


def mix_signals(fractions: np.ndarray, values: np.ndarray, overrides: ProtocolOverrides = ()) -> dict[str, np.ndarray]:
    """Magnitudes ``|sum_k f_k s_k|`` of the signed compartment signals of every contrast.

    Args and shapes as :func:`mix_relaxation_rates`; each compartment is simulated only where present. ``overrides``:
    the study's protocol overrides (:func:`~pipeline.phantom.contrasts.protocol_overrides`).

    Returns:
        contrast name (:data:`CONTRASTS`) → (N,) float32 magnitude.
    """
    signals = {contrast: np.zeros(fractions.shape[1], dtype=np.float32) for contrast in CONTRASTS}
    for fraction, compartment in zip(fractions, values):
        present = np.flatnonzero(fraction > 0)
        t1_ms, t2_ms, pd = compartment[:, present]
        for contrast, signal in signals.items():
            signal[present] += fraction[present] * signed_signal(contrast, t1_ms, t2_ms, pd, overrides)
    return {contrast: np.abs(signal) for contrast, signal in signals.items()}


def _fill(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 volume(s) of ``mask``'s shape holding (..., N) ``values`` at the mask voxels and 0 elsewhere."""
    volume = np.zeros((*values.shape[:-1], *mask.shape), dtype=np.float32)
    volume[..., mask] = values
    return volume


class SubjectFractions(NamedTuple):
    """A subject's anatomy (steps 1-2 of the module docstring): a function of its draws, not of its tissue values.

    Attributes:
        mask: bool brain mask on the simulated grid (the acquired grid, or its fine grid).
        inside: (K, N) float32 compartment fractions at the N mask voxels.
        lesion_centres_mm, lesion_volumes_mm3: lesion centroids and volumes (:func:`lesion_fraction`).
    """

    mask: np.ndarray
    inside: np.ndarray
    lesion_centres_mm: np.ndarray
    lesion_volumes_mm3: np.ndarray


def tissue_fractions(
    anatomy: TemplateAnatomy, grid: VoxelGrid, parameters: SubjectParameters, fine: bool = False
) -> SubjectFractions:
    """The subject's brain mask and compartment fractions (steps 1-2 of the module docstring).

    Args:
        anatomy: the template anatomy.
        grid: the acquired (1 mm) grid.
        parameters: the subject (with ``variety``: its pose, scaling, atrophy and lesion load too).
        fine: the realistic fine anatomy: template positions and tissue probabilities (smooth at 1 mm: the
            template is a 1 mm average) are interpolated to :func:`~pipeline.phantom.fine_anatomy.fine_grid`, where
            the tissue boundaries are sharpened (:func:`~pipeline.phantom.fine_anatomy.sharpen`) and the lesions
            drawn.

    Returns:
        the :class:`SubjectFractions`, on ``grid`` or, with ``fine``, on its fine grid.
    """
    displacement = displacement_mm(grid, parameters)
    variety = parameters.variety
    if variety is not None:
        displacement *= DEFORMATION_FACTOR
    positions = template_positions(grid, displacement)
    if variety is not None:
        positions = variety.template_positions(grid, positions)
    anatomical = deformed_fractions(anatomy, positions)
    if fine:
        grid = fine_grid(grid)
        anatomical, positions = upsample(anatomical), upsample(positions)
    if fine or variety is not None:
        displacement = np.stack([positions[d] - grid.coordinate_mm(d).astype(np.float32) for d in range(3)])
    total = anatomical.sum(0)
    mask = total >= 0.5
    inside = np.zeros((len(COMPARTMENTS), int(mask.sum())), dtype=np.float32)
    if fine:
        offsets = np.array([BOUNDARY_OFFSETS.get(name, 0.0) for name in ANATOMICAL_CLASSES], dtype=np.float32)
        if variety is not None:
            offsets[ANATOMICAL_CLASSES.index("cortical_grey_matter")] += variety.cortical_offset
        inside[: len(anatomical)] = sharpen(anatomical[:, mask], offsets)
    else:
        inside[: len(anatomical)] = anatomical[:, mask] / total[mask]
    lesion, lesion_centres, lesion_volumes = lesion_fraction(parameters, grid, displacement, positions)
    white = COMPARTMENTS.index("white_matter")
    lesion_share = lesion[mask] * inside[white]
    inside[COMPARTMENTS.index("lesion")] = lesion_share
    inside[white] -= lesion_share
    return SubjectFractions(mask, inside, lesion_centres, lesion_volumes)


def transmit_field(parameters: SubjectParameters, grid: VoxelGrid) -> torch.Tensor | None:
    """(X, Y, Z) relative B1+ on ``grid``: ``1 + TRANSMIT_STD * field`` clipped to ``TRANSMIT_RANGE``; None if off."""
    if parameters.transmit is None:
        return None
    return torch.as_tensor(1.0 + TRANSMIT_STD * parameters.transmit(grid)[0]).clamp(*TRANSMIT_RANGE)


def acquire_images(
    acquisition: Acquisition,
    parameters: SubjectParameters,
    grid: VoxelGrid,
    fractions: np.ndarray,
    bias: np.ndarray | float,
    overrides: ProtocolOverrides = (),
) -> dict[str, np.ndarray]:
    """Noise-free complex images of every contrast through the effects of :mod:`~pipeline.phantom.acquisition`.

    Args:
        acquisition: the effects in force.
        parameters: the subject (tissue values, texture and B1+ fields).
        grid: the acquired (1 mm) grid.
        fractions: (K, *simulated shape) compartment fractions on the acquired or the fine grid.
        bias: (X, Y, Z) receive bias on ``grid``, or 1.
        overrides: the study's protocol overrides (:func:`~pipeline.phantom.contrasts.protocol_overrides`).

    Returns:
        contrast name → (X, Y, Z) complex64 image in intensity units.
    """
    values = parameters.tissue_values()
    texture_cv = texture_cvs()
    texture = torch.as_tensor(parameters.texture(grid))
    transmit = transmit_field(parameters, grid)
    fractions = torch.as_tensor(fractions)
    images = {}
    for contrast in CONTRASTS:
        axis = PHASE_ENCODE_AXIS[contrast]
        signals = CompartmentSignals.tabulate(contrast, acquisition, values, texture_cv, grid.shape[axis], overrides)
        fields = torch.stack([signals.lookup(k, texture[k], transmit) for k in range(len(COMPARTMENTS))])
        images[contrast] = acquire_contrast(signals, fractions, fields * torch.as_tensor(bias), axis, grid.shape)
    return images


def simulate_subject(
    anatomy: TemplateAnatomy,
    grid: VoxelGrid,
    parameters: SubjectParameters,
    snr: float,
    receive_bias: bool = True,
    acquisition: Acquisition = Acquisition(),
    protocols: Mapping[str, Mapping[str, float]] | ProtocolOverrides | None = None,
    fractions: SubjectFractions | None = None,
) -> SubjectVolumes:
    """Simulate one subject on ``grid``.

    Args:
        anatomy: the template anatomy.
        grid: output 1 mm grid (any axis-aligned grid inside :data:`~pipeline.phantom.fields.FIELD_DOMAIN_MM`).
        parameters: the subject's random parameters.
        snr: nominal pure-WM intensity (1000, before receive bias) over the noise standard deviation,
            the same in every contrast; ``numpy.inf``: no noise.
        receive_bias: multiply the signals by the subject's smooth receive-bias field (off: to study its effect).
        acquisition: the scanner effects (:class:`~pipeline.phantom.acquisition.Acquisition`); the default, ideal
            one images each compartment with the closed-form models and mixes the signals voxel by voxel. With
            ``fine_anatomy`` the tissues are simulated on :func:`~pipeline.phantom.fine_anatomy.fine_grid` and the
            1 mm fractions (the truth's) are their block means.
        protocols: overrides of the default protocols, ``{contrast: {field: value}}`` (a new site's; validated by
            :func:`~pipeline.phantom.contrasts.protocol_overrides`); every contrast images with them, the intensity
            scale stays the default protocols' (nominal white matter = 1000 under them). None: the defaults.
        fractions: the subject's anatomy if already simulated (:func:`tissue_fractions` of the same ``grid``,
            ``parameters`` up to their tissue scales, and ``acquisition.fine_anatomy``): several tissue values of
            one subject pay for it once.

    Returns:
        the subject's :class:`SubjectVolumes`.
    """
    overrides = protocol_overrides(protocols)
    if fractions is None:
        fractions = tissue_fractions(anatomy, grid, parameters, fine=acquisition.fine_anatomy)
    simulated_mask, simulated_inside, lesion_centres, lesion_volumes = fractions
    simulated_fractions = _fill(simulated_inside, simulated_mask)
    mask, inside = acquired_fractions(simulated_mask, simulated_fractions, acquisition.fine_anatomy)

    values = compartment_values(parameters, grid, mask)
    t1_ms, t2_ms, m0 = mix_relaxation_rates(inside, values)
    sigma = WHITE_MATTER_INTENSITY / snr
    bias_field = np.exp(BIAS_LOG_STD * parameters.bias(grid)[0]) if receive_bias else 1.0
    if acquisition.images_need_kspace:
        images = acquire_images(acquisition, parameters, grid, simulated_fractions, bias_field, overrides)
    else:
        bias = bias_field[mask] if receive_bias else 1.0
        images = {
            contrast: _fill(bias * signal, mask) for contrast, signal in mix_signals(inside, values, overrides).items()
        }
    weighted = {
        contrast: rician_noise(image, grid, parameters, stream, sigma)
        for stream, (contrast, image) in enumerate(images.items(), start=1)
    }
    return SubjectVolumes(
        grid=grid,
        mask=mask,
        fractions=np.stack([_fill(f, mask) for f in inside]),
        t1_ms=_fill(t1_ms, mask),
        t2_ms=_fill(t2_ms, mask),
        m0=_fill(m0, mask),
        weighted=weighted,
        noise_sigma=sigma,
        lesion_centres_mm=lesion_centres,
        lesion_volumes_mm3=lesion_volumes,
    )
