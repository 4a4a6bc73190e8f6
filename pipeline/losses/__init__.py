"""The hybrid supervised + physics-informed self-supervised loss of the paper, one term a module.

``L = L1(pred, label) + lambda * sum_c SI-L1(S(synth_c), S(acquired_c))`` where ``S`` is the Sobel
edge magnitude (the edge loss of Yu et al. 2019, TMI 38:1750), ``synth_c`` the weighted image of
contrast ``c`` synthesised from the predicted maps by :mod:`pipeline.physics`, and SI-L1 the
scaling-invariant L1 of Wang et al. 2020 (ISMRM p. 867): the synthetic edges are scaled by the
least-squares factor ``a`` before the L1, so the unknown receiver gain / M0 scaling of the physics
model does not matter. Optionally ``+ lambda_intensity * sum_c SI-L1(synth_c, acquired_c)``: the images
themselves under that gain.

* :mod:`~pipeline.losses.supervised` -- :class:`MapL1Loss`, the L1 to the label maps;
* :mod:`~pipeline.losses.edges` -- :func:`sobel_edges`;
* :mod:`~pipeline.losses.scale_invariant` -- :class:`ScaleInvariantL1Loss`, the L1 under a least-squares gain;
* :mod:`~pipeline.losses.consistency` -- :class:`EdgeConsistencyLoss` and :class:`IntensityConsistencyLoss`;
* :mod:`~pipeline.losses.hybrid` -- :class:`HybridLoss` (training) and :class:`SelfSupervisedLoss` (adaptation).

Units: ``pred`` and ``label`` are (T1, T2, M0) with T1 and T2 in units of ``MAP_UNIT_MS`` (3 s),
``image`` holds the acquired weighted images (MPRAGE, TSE, FLAIR) in their normalised intensity.
"""

from pipeline.losses.consistency import EdgeConsistencyLoss, IntensityConsistencyLoss, SynthesisConsistencyLoss
from pipeline.losses.edges import sobel_edges
from pipeline.losses.hybrid import HybridLoss, SelfSupervisedLoss
from pipeline.losses.scale_invariant import ScaleInvariantL1Loss
from pipeline.losses.supervised import LABEL_SPREAD, MapL1Loss, label_spread_weights

__all__ = [
    "LABEL_SPREAD",
    "EdgeConsistencyLoss",
    "HybridLoss",
    "IntensityConsistencyLoss",
    "MapL1Loss",
    "ScaleInvariantL1Loss",
    "SelfSupervisedLoss",
    "SynthesisConsistencyLoss",
    "label_spread_weights",
    "sobel_edges",
]
