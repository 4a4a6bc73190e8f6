"""Tissue values on the fly: a phantom training volume re-synthesised with new T1, T2 and PD per tissue.

A network trained on a few subjects whose tissues vary by 3 % learns to segment tissues and paint their values. Drawn
anew for every subject many times per epoch, wide independent tissue values make the images the only evidence of
the values, so the network must read them. Only a phantom study can do this: its anatomy (compartment fractions,
:func:`pipeline.phantom.changes.subject_tissues`) and tissue values are known.

The re-synthesis changes the processed volume voxel by voxel by the signal change the models give (written here
because no library re-synthesises MR images), so what the change leaves out (k-space blur, noise) stays as acquired:

* image of contrast c: ``image + g(x) * (S'(x) - S(x))`` with the mixed signals ``S = |sum_k f_k s_c(v_k t_k, b(x))|``
  of the fractions ``f_k``, the subject's values ``v_k``, textures ``t_k(x)`` and B1+ ``b(x)`` (``S'``: the new values
  ``v'_k``), ``s_c`` the signed signal the study's own acquisition gives at the k-space centre (MPRAGE readout, TSE and
  SPACE echo trains, flip angles times B1+, as the study has them on: the phantom's tables,
  :class:`pipeline.phantom.acquisition.CompartmentSignals`, one physics) and ``g`` the image's gain (receive bias and
  normalisation: the ratio of image to ``S`` smoothed over :data:`GAIN_SIGMA_VOXELS`, where ``S`` is not small); then
  divided by its 99th percentile in the mask again (the pipeline's normalisation, :mod:`pipeline.data.normalization`). A change, not a ratio: the noise keeps its level (as on a scanner), and where
  a FLAIR's inverted and upright compartments cancel ``S`` is near 0, where a ratio would multiply the noise;
* T1 and T2 labels: times the ratio of the rate-mixed maps (``1/T = sum_k f_k / (T_k t_k)``) after both are averaged
  over the label slab (a box of the slab thickness along the slab axis); M0: the ratio of ``sum_k f_k PD_k t_k``,
  then normalised again. Failed fits (NaN) stay failed.

The signals and maps carry each compartment's texture. What the re-synthesis leaves as acquired: the k-space blur
of the realistic acquisition (a boundary voxel's change is its own, not its neighbours', and a compartment's blur does
not follow its new values), and Rician noise where the signal is near zero.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.utils import convert_to_numpy, convert_to_tensor
from scipy import ndimage

from pipeline.data.errors import InvalidInputError
from pipeline.data.manifest import read_manifest
from pipeline.data.manifest import IMAGE_KEYS
from pipeline.data.normalization import intensity_normalisation
from pipeline.phantom.changes import SubjectTissues, subject_tissues
from pipeline.phantom.acquisition import CompartmentSignals, texture_cvs_per_parameter
from pipeline.phantom.contrasts import CONTRASTS, protocol_overrides
from pipeline.phantom.simulate import texture_cvs, texture_factor
from pipeline.phantom.tissues import COMPARTMENTS, TISSUE_PARAMETERS

TISSUE_VALUE_RANGE = (0.65, 1.35)
"""Default range of the factor drawn (uniformly) on each tissue's T1, T2 and PD."""

FIXED_TISSUES = ("csf",)
"""Compartments kept at their values by default: CSF is free water, whose values disease barely moves."""
IMAGE_CONTRASTS = dict(zip(("t1w", "t2w", "flair"), CONTRASTS))
"""Channel of the processed ``image`` → the phantom contrast that imaged it."""
SMALLEST_FRACTION = 1e-3
"""Compartment fractions below this are left out of the mixtures (the fine anatomy's softmax leaves traces of every
compartment everywhere; they change a mixed signal by less than 0.1 %)."""
TEXTURES = ("joint", "independent")
"""How a redraw textures each tissue (:class:`TissueValueSampler`): ``"joint"`` as the phantom does, one field
multiplying T1, T2 and PD together by ``exp(cv s)``; ``"independent"``: each parameter's CV times its own factor drawn
in U(-sqrt 3, sqrt 3) (unit mean square: the phantom's texture amplitude on average, with signs and ratios that differ
between T1, T2 and PD and from draw to draw, so the draws carry no fixed co-variation of the three)."""
GAIN_SIGMA_VOXELS = 8.0
"""Gaussian sigma (voxels) of the gain estimate: receive bias varies over centimetres."""
GAIN_SIGNAL_FRACTION = 0.25
"""Voxels whose mixed signal is below this share of the brain's median do not inform the gain (nulled, noisy)."""


def factor_ranges(value_range: Sequence) -> np.ndarray:
    """(3, 2) low and high factor of T1, T2 and PD from one ``(low, high)`` for all three or one pair per parameter.

    Raises:
        ValueError: not a pair or three pairs, or a pair that is not ``0 < low <= high``.
    """
    ranges = np.asarray(value_range, dtype=float)
    if ranges.shape == (2,):
        ranges = np.tile(ranges, (len(TISSUE_PARAMETERS), 1))
    if ranges.shape != (len(TISSUE_PARAMETERS), 2) or not ((0 < ranges[:, 0]) & (ranges[:, 0] <= ranges[:, 1])).all():
        raise ValueError(
            f"value_range must be (low, high) with 0 < low <= high, or one such pair for each of "
            f"{list(TISSUE_PARAMETERS)}, got {np.asarray(value_range).tolist()}"
        )
    return ranges


def slab_average(volume: torch.Tensor, axis: int, thickness_voxels: float) -> torch.Tensor:
    """(X, Y, Z) ``volume`` averaged over a box ``thickness_voxels`` wide (fractional edges) along spatial ``axis``."""
    half = thickness_voxels / 2
    taps = np.arange(-int(np.ceil(half - 0.5)), int(np.ceil(half - 0.5)) + 1)
    weights = np.clip(half + 0.5 - np.abs(taps), 0.0, 1.0)
    averaged = ndimage.convolve1d(convert_to_numpy(volume), weights / weights.sum(), axis=axis, mode="nearest")
    return torch.as_tensor(averaged)


class TissueValueSynthesis:
    """Re-synthesise one processed phantom volume with new tissue values (see the module docstring).

    Args:
        tissues: the subject's anatomy, values and acquisition (:func:`~pipeline.phantom.changes.subject_tissues`).
        volume: the processed volume (``image`` (3, X, Y, Z), ``label`` (3, X, Y, Z), ``mask``) whose grid is a crop
            of the study grid (same voxel size and orientation); its current ``image`` and ``label`` are the
            originals every draw starts from.
        overrides: the study's protocol overrides (:func:`~pipeline.phantom.contrasts.protocol_overrides`).
        slab_axis, slab_thickness_voxels: the label slabs of the study.
        intensity_reference: the volume's normalisation (:func:`~pipeline.data.normalization.intensity_normalisation`),
            repeated on each re-synthesis.

    Raises:
        InvalidInputError: the volume is not on the study grid.
    """

    def __init__(
        self,
        tissues: SubjectTissues,
        volume: Mapping,
        overrides=(),
        slab_axis: int = 2,
        slab_thickness_voxels: float = 3.5,
        intensity_reference: str = "brain",
    ) -> None:
        self.values = tissues.values.astype(np.float32)
        self.acquisition = tissues.acquisition
        self.normalisation = intensity_normalisation(intensity_reference, m0_keys=("m0",))
        self.overrides = overrides
        self.slab_axis, self.slab_thickness_voxels = slab_axis, slab_thickness_voxels
        image = volume["image"]

        def cropped(array: np.ndarray) -> np.ndarray:
            return crop_to_volume(array, tissues.affine, image, volume.get("subject"))

        fractions = cropped(tissues.fractions)
        sigmas = cropped(tissues.texture_sigmas)
        transmit = None if tissues.transmit is None else cropped(tissues.transmit[None])[0]
        self.shape = fractions.shape[1:]
        self.texture_cv = texture_cvs()
        # each compartment where it is present: flat voxel indices, fractions, texture field, its factor and B1+ there
        self.present = [np.flatnonzero(f > SMALLEST_FRACTION) for f in fractions]
        self.fractions = [f.ravel()[i] for f, i in zip(fractions, self.present)]
        self.sigmas = [torch.as_tensor(t.ravel()[i]) for t, i in zip(sigmas, self.present)]
        self.transmit = [None if transmit is None else torch.as_tensor(transmit.ravel()[i]) for i in self.present]
        self.subject_textures = self._textures(self.texture_cv)
        self.image = convert_to_tensor(image, track_meta=False).clone()
        self.label = convert_to_tensor(volume["label"], track_meta=False).clone()
        self.mask = volume["mask"]
        self.signals = self._mixed_signals(self.values, self.texture_cv)
        self.gain = self._gain()
        self.maps = self._slab_maps(self.values, self.subject_textures)

    def _mix(self, per_voxel) -> torch.Tensor:
        """(C, X, Y, Z) ``sum_k f_k per_voxel(k)`` of a function giving (C, n_k) values of compartment ``k`` at its
        voxels."""
        total = None
        for k, (present, fractions) in enumerate(zip(self.present, self.fractions)):
            contribution = np.asarray(per_voxel(k))
            if total is None:
                total = np.zeros((len(contribution), int(np.prod(self.shape))), np.float32)
            total[:, present] += fractions * contribution
        return torch.as_tensor(total.reshape(-1, *self.shape))

    def _mixed_signals(self, values: np.ndarray, texture_cv: np.ndarray) -> torch.Tensor:
        """(3, X, Y, Z) |sum_k f_k s_c(v_k t_k, b)| of each image channel for (K, 3) ``values`` and texture CVs (K,) or
        (K, 3) (:meth:`pipeline.phantom.acquisition.CompartmentSignals.tabulate`)."""
        tables = [
            CompartmentSignals.tabulate(
                c, self.acquisition, values.astype(np.float64), texture_cv, None, self.overrides
            )
            for c in IMAGE_CONTRASTS.values()
        ]
        return self._mix(
            lambda k: torch.stack([table.lookup(k, self.sigmas[k], self.transmit[k]) for table in tables])
        ).abs()

    def _textures(self, texture_cv: np.ndarray) -> list[np.ndarray]:
        """Each compartment's texture factors at its voxels: (1, n_k) on T1, T2 and PD together for CVs (K,), (3, n_k)
        one each for CVs (K, 3)."""
        cv = texture_cvs_per_parameter(texture_cv)
        return [texture_factor(cv[k, :, None], sigmas.numpy()[None]) for k, sigmas in enumerate(self.sigmas)]

    def _slab_maps(self, values: np.ndarray, textures: list[np.ndarray]) -> torch.Tensor:
        """(3, X, Y, Z) slab-averaged T1, T2 (rate-mixed) and PD maps of (K, 3) ``values`` with each compartment's
        texture factors (:meth:`_textures`)."""

        def rates_and_pd(k: int) -> list[np.ndarray]:
            t1, t2, pd = values[k, :, None] * textures[k]
            return [1.0 / t1, 1.0 / t2, pd]

        mixed = self._mix(rates_and_pd)
        maps = torch.cat([1.0 / mixed[:2].clamp_min(1e-12), mixed[2:]])
        return torch.stack([slab_average(m, self.slab_axis, self.slab_thickness_voxels) for m in maps])

    def _gain(self) -> torch.Tensor:
        """(3, X, Y, Z) image intensity per unit of mixed signal, smoothed (the module docstring's ``g``)."""
        image, signals = convert_to_numpy(self.image), convert_to_numpy(self.signals)
        inside = convert_to_numpy(self.mask)[0] > 0
        gains = []
        for channel, signal in zip(image, signals):
            informative = (inside & (signal > GAIN_SIGNAL_FRACTION * np.median(signal[inside]))).astype(np.float32)
            numerator = ndimage.gaussian_filter(channel * informative, GAIN_SIGMA_VOXELS)
            denominator = ndimage.gaussian_filter(signal * informative, GAIN_SIGMA_VOXELS)
            overall = (channel * informative).sum() / (signal * informative).sum()
            gains.append(
                np.where(denominator > 1e-3 * signal.max(), numerator / np.maximum(denominator, 1e-12), overall)
            )
        return torch.as_tensor(np.stack(gains), dtype=torch.float32)

    def __call__(self, factors: np.ndarray, texture_cv: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """``{"image", "label"}`` of the volume with each compartment's T1, T2 and PD times (K, 3) ``factors`` and,
        if given, texture CVs (K, 3) of its own for each (default: the subject's, one for all three)."""
        values = self.values * np.asarray(factors, np.float32)
        textures = self.subject_textures if texture_cv is None else self._textures(texture_cv)
        texture_cv = self.texture_cv if texture_cv is None else texture_cv
        image = (self.image + self.gain * (self._mixed_signals(values, texture_cv) - self.signals)).clamp_min(0.0)
        maps = self._slab_maps(values, textures)
        label_ratio = torch.where(self.maps > 0, maps / self.maps.clamp_min(1e-12), 1.0)
        scaled = {**dict(zip(IMAGE_KEYS, image[:, None])), "m0": self.label[2:] * label_ratio[2:], "mask": self.mask}
        for normalise in self.normalisation:
            scaled = normalise(scaled)
        image = torch.stack([scaled[key][0] for key in IMAGE_KEYS])
        return {"image": image, "label": torch.cat([self.label[:2] * label_ratio[:2], scaled["m0"]])}


def crop_to_volume(array: np.ndarray, affine: np.ndarray, image, subject=None) -> np.ndarray:
    """(C, ...) ``array`` on the grid of ``affine`` cut (zero-padded) to the grid of MetaTensor ``image``."""
    target = np.asarray(convert_to_numpy(image.affine), np.float64)
    if not np.allclose(target[:3, :3], affine[:3, :3], atol=1e-4):
        raise InvalidInputError(
            f"{subject}: tissue values on the fly need the volume on the phantom's own grid (voxel size and "
            f"orientation {np.diag(affine)[:3].tolist()}), got the affine\n{target}"
        )
    offset = np.linalg.solve(affine, target[:, 3])[:3]
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        raise InvalidInputError(f"{subject}: the volume's grid is shifted from the phantom's by {offset} voxels")
    start, shape = np.round(offset).astype(int), image.shape[1:]
    out = np.zeros((array.shape[0], *shape), array.dtype)
    source = tuple(slice(max(s, 0), min(s + n, size)) for s, n, size in zip(start, shape, array.shape[1:]))
    target_index = tuple(slice(src.start - s, src.stop - s) for src, s in zip(source, start))
    out[(slice(None), *target_index)] = array[(slice(None), *source)]
    return out


class TissueValueSampler:
    """Tissue values on the fly for the cached training volumes of a phantom study: each :meth:`redraw` overwrites one
    volume's ``image`` and ``label`` (in place, in the volume cache) with its re-synthesis with new values.

    Args:
        volumes: the cached processed volumes (a ``CacheDataset`` of the training section; the slice dataset's
            ``volumes``), in the order of ``datalist``'s entries.
        datalist: the study's manifest (its ``generator`` record: a :mod:`pipeline.phantom` study).
        value_range: (low, high) of the uniform factor on each tissue's T1, T2 and PD, or one such pair for each of
            T1, T2 and PD (:func:`factor_ranges`).
        fixed: compartments kept at their values (:data:`FIXED_TISSUES`).
        seed: seed of the draws.
        intensity_reference: the volumes' normalisation, as :func:`~pipeline.data.build_volume_dataset`'s.
        texture: one of :data:`TEXTURES`: the varied compartments' texture, as the phantom's or drawn per parameter.

    Raises:
        InvalidInputError: the study is not a phantom study, or a volume has no ``phantom.json`` beside its T1w.
        ValueError: an unknown fixed compartment or texture.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping],
        datalist: str | pathlib.Path,
        value_range: Sequence[float] = TISSUE_VALUE_RANGE,
        fixed: Sequence[str] = FIXED_TISSUES,
        seed: int = 0,
        intensity_reference: str = "brain",
        texture: str = "joint",
    ) -> None:
        if texture not in TEXTURES:
            raise ValueError(f"texture must be one of {TEXTURES}, got {texture!r}")
        generator = read_manifest(datalist).get("generator")
        if not isinstance(generator, dict) or generator.get("module") != "pipeline.phantom":
            raise InvalidInputError(f"{datalist}: tissue values on the fly need a pipeline.phantom study")
        ranges = factor_ranges(value_range)
        unknown = sorted(set(fixed) - set(COMPARTMENTS))
        if unknown:
            raise ValueError(f"fixed tissues {unknown} are not compartments {list(COMPARTMENTS)}")
        self.volumes, self.low, self.high = volumes, ranges[:, 0], ranges[:, 1]
        self.varied = np.array([name not in fixed for name in COMPARTMENTS])
        self.rng, self.texture = np.random.default_rng(seed), texture
        overrides = protocol_overrides(generator.get("protocols"))
        thickness = generator["slab_thickness_mm"]
        self.syntheses = []
        for volume in (volumes[i] for i in range(len(volumes))):
            index = _subject_index(volume)
            tissues = subject_tissues(generator, index)
            self.syntheses.append(
                TissueValueSynthesis(tissues, volume, overrides, generator["slab_axis"], thickness, intensity_reference)
            )
        self.next_volume = 0

    def factors(self) -> np.ndarray:
        """(K, 3) factors of one draw: uniform in the range for varied compartments, 1 for fixed ones."""
        drawn = self.rng.uniform(self.low, self.high, (len(COMPARTMENTS), len(TISSUE_PARAMETERS)))
        return np.where(self.varied[:, None], drawn, 1.0)

    def draw_texture_cvs(self) -> np.ndarray | None:
        """(K, 3) texture CVs of one draw (:data:`TEXTURES`; fixed compartments keep theirs), None for ``"joint"``."""
        if self.texture == "joint":
            return None
        drawn = self.rng.uniform(-np.sqrt(3), np.sqrt(3), (len(COMPARTMENTS), len(TISSUE_PARAMETERS)))
        return texture_cvs()[:, None] * np.where(self.varied[:, None], drawn, 1.0)

    def redraw(self, index: int | None = None) -> np.ndarray:
        """Re-synthesise volume ``index`` (default: the next one, in turn) with a new draw; returns its factors."""
        if index is None:
            index, self.next_volume = self.next_volume, (self.next_volume + 1) % len(self.syntheses)
        factors = self.factors()
        volume = self.volumes[index]
        for key, value in self.syntheses[index](factors, self.draw_texture_cvs()).items():
            volume[key].copy_(value)  # in place: the cached tensors keep their meta (affine, file names)
        return factors


def _subject_index(volume: Mapping) -> int:
    """The phantom subject index of a processed volume, from the ``phantom.json`` beside its T1w."""
    t1w = pathlib.Path(str(volume["image"].meta["filename_or_obj"]))
    record = t1w.parent / "phantom.json"
    try:
        return int(json.loads(record.read_text())["subject_index"])
    except (OSError, ValueError, KeyError) as error:
        raise InvalidInputError(f"{record}: no phantom record for tissue values on the fly ({error})") from None
