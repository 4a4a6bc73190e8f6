"""The ideal observer: a per-voxel dictionary fit of the weighted images with the project's signal models.

Each voxel's weighted images ``I_c = g_c * b * PD * f_c(T1, T2)`` share the proton density and the receive bias
``b``; their direction in image space (``I / |I|``) depends on T1, T2 and the images' gains ``g_c`` only. A
dictionary of model signals ``f_c`` (:func:`pipeline.physics.synthesize`) over a log-spaced T1 x T2 grid, scaled by the
gains and normalised, is matched to every voxel's direction by the nearest atom (a k-d tree, scipy); PD x bias is
then the least-squares scale of the atom. What the fit cannot know from the images is the gains, up to one common
factor: two numbers per subject. Two ways to get them:

* :func:`gains_from_labels`: the median ratio of each image to the model signal of the subject's own label maps
  (what the images can tell once the scale is known);
* :func:`gains_from_images`: the gain ratios whose dictionary fits the images best (median distance to the nearest
  atom over a sample of voxels; a label-free physicist's fit). A voxel's direction has two degrees of freedom, as
  many as an atom's (T1, T2): under other gains the atoms cover another patch of directions, and every voxel inside
  it fits exactly. Only voxels outside the patch (tissues at the ends of the T1/T2 ranges, noise, partial volume)
  tell the gains apart, so the fit may prefer wrong ones: a result about what the images tell, not a flaw of the
  search.

Nothing here is learned: a network that measures should do at least as well as the fit with the gains it can infer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from pipeline import physics

T1_RANGE_MS = (200.0, 6000.0)
T2_RANGE_MS = (20.0, 3000.0)
GRID_STEPS = 200
"""Atoms per axis: log steps of 1.7 % (T1) and 2.5 % (T2)."""
GAIN_SEARCH = (np.linspace(-0.7, 0.7, 15), np.linspace(-0.1, 0.1, 11))
"""Log gain ratios searched by :func:`gains_from_images`: factors 0.5-2 in steps of 10 %, then steps of 2 % around the
best."""


@dataclass(frozen=True)
class SignalDictionary:
    """Model signals per unit PD over a T1 x T2 grid.

    Attributes:
        t1_ms, t2_ms: (J,) the atoms' T1 and T2 (ms).
        signals: (J, C) |signal| of each contrast for PD = 1.
        contrasts: the C contrasts (:data:`pipeline.physics.SIGNAL_MODELS` names), in image channel order.
    """

    t1_ms: np.ndarray
    t2_ms: np.ndarray
    signals: np.ndarray
    contrasts: tuple[str, ...]

    @classmethod
    def build(
        cls, contrasts: Sequence[str], protocols: Mapping[str, object], steps: int = GRID_STEPS
    ) -> SignalDictionary:
        """Atoms on a log grid of :data:`T1_RANGE_MS` x :data:`T2_RANGE_MS` (``steps`` each), T2 < T1.

        Args:
            contrasts: the signal model of each image channel, e.g. ``("mprage", "tse", "flair")``.
            protocols: contrast → protocol (a :mod:`pipeline.physics` dataclass or its fields).
        """
        t1, t2 = np.meshgrid(np.geomspace(*T1_RANGE_MS, steps), np.geomspace(*T2_RANGE_MS, steps), indexing="ij")
        keep = t2 < t1
        t1, t2 = t1[keep], t2[keep]
        signals = np.stack([np.abs(physics.synthesize(c, t1, t2, np.ones_like(t1), protocols[c])) for c in contrasts])
        return cls(t1, t2, signals.T.astype(np.float64), tuple(contrasts))

    def model(self, t1_ms: np.ndarray, t2_ms: np.ndarray, protocols: Mapping[str, object]) -> np.ndarray:
        """(C, N) |signal| per unit PD of the contrasts at given T1, T2 (ms)."""
        return np.stack(
            [np.abs(physics.synthesize(c, t1_ms, t2_ms, np.ones_like(t1_ms), protocols[c])) for c in self.contrasts]
        )


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def fit_voxels(
    images: np.ndarray, gains: np.ndarray, dictionary: SignalDictionary
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """T1, T2 (ms), PD x bias and the fit's distance of every voxel.

    Args:
        images: (C, N) the voxels' intensities, channels in ``dictionary.contrasts`` order.
        gains: (C,) each image's gain (intensity per unit PD x signal).
        dictionary: the atoms.

    Returns:
        (N,) T1 and T2 (ms), PD x bias in the gains' units (the least-squares scale of the atom), and the Euclidean
        distance between the voxel's unit vector and the atom's (0: an exact fit).
    """
    atoms = dictionary.signals * np.asarray(gains, np.float64)
    voxels = np.asarray(images, np.float64).T
    distance, index = cKDTree(_unit(atoms)).query(_unit(voxels), workers=-1)
    chosen = atoms[index]
    scale = np.einsum("nc,nc->n", voxels, chosen) / np.maximum(np.einsum("nc,nc->n", chosen, chosen), 1e-12)
    return dictionary.t1_ms[index], dictionary.t2_ms[index], scale, distance


def gains_from_labels(
    images: np.ndarray,
    t1_ms: np.ndarray,
    t2_ms: np.ndarray,
    pd: np.ndarray,
    dictionary: SignalDictionary,
    protocols: Mapping[str, object],
) -> np.ndarray:
    """(C,) each image's gain: the median of image / (PD x model signal) of the label maps over the (N,) voxels."""
    model = dictionary.model(t1_ms, t2_ms, protocols) * pd
    valid = np.all(model > 0, axis=0) & np.all(np.isfinite(model), axis=0)
    if not valid.any():
        raise ValueError("no voxel with a positive model signal: are the label maps empty or not in ms?")
    return np.median(images[:, valid] / model[:, valid], axis=1)


def gains_from_images(
    images: np.ndarray, dictionary: SignalDictionary, sample: int = 20000, seed: int = 0
) -> np.ndarray:
    """(C,) gains (the first 1) whose dictionary fits a random sample of the voxels best (median distance), searched
    over :data:`GAIN_SEARCH` (coarse, then fine around the coarse best) for every other channel's log gain ratio."""
    rng = np.random.default_rng(seed)
    chosen = images[:, rng.choice(images.shape[1], min(sample, images.shape[1]), replace=False)]
    best = np.zeros(len(images))
    for steps in GAIN_SEARCH:
        grids = np.meshgrid(*([steps] * (len(images) - 1)), indexing="ij")
        candidates = best + np.stack([np.zeros(grids[0].size), *(g.ravel() for g in grids)], axis=1)
        scores = [np.median(fit_voxels(chosen, np.exp(log_gains), dictionary)[3]) for log_gains in candidates]
        best = candidates[int(np.argmin(scores))]
    return np.exp(best)
