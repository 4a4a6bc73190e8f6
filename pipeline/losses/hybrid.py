"""The paper's hybrid loss, ``L1(maps, labels) + lambda * edge consistency``, an optional intensity consistency term,
and the physics terms alone for adaptation without labels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn.modules.loss import _Loss

from pipeline.losses.consistency import EdgeConsistencyLoss, IntensityConsistencyLoss
from pipeline.losses.masking import binary_mask
from pipeline.losses.supervised import MapL1Loss
from pipeline.physics import CSF_T2_MS

__all__ = ["INTENSITY_GAINS", "HybridLoss", "SelfSupervisedLoss"]

INTENSITY_GAINS = ("image", "csf")
"""Where :class:`HybridLoss`'s intensity term fits each image's gain."""


class HybridLoss(_Loss):
    """``MapL1(pred, label) + lambda_self * EdgeConsistency(pred, image) + lambda_intensity *
    IntensityConsistency(pred, image)``: the paper's loss (``lambda_intensity = 0``) and an intensity term beside it.

    MONAI's ``SupervisedTrainer`` calls ``loss_function(pred, targets)``; the acquired images are the network input,
    so ``pipeline.engine.PrepareMapBatch`` hands over ``targets`` as a dict ``{"label", "image", "mask"[,
    "label_failed"]}``. The paper uses MPRAGE and TSE only (FLAIR is hard to model).

    Args:
        lambda_self: weight of the self-supervised edge term; 0 (with ``lambda_intensity = 0``) gives exactly
            ``torch.nn.L1Loss()``. The paper does not report its value; the default 0.1 is a starting point for the
            bundle config.
        map_weights, mask_supervised: of the supervised term, :class:`MapL1Loss`. The physics terms always use the
            mask when one is given; the supervised term always leaves out the pixels where ``target["label_failed"]``
            (B, 1, H, W) is 1: failed fits of the labels (:mod:`pipeline.data.validity`).
        lambda_intensity: weight of the intensity consistency term, :class:`IntensityConsistencyLoss`; 0: none.
        intensity_window: its ``scale_window`` (0: one gain per image and contrast).
        intensity_gain: where the intensity term fits that gain: ``"image"`` (the whole mask) or ``"csf"`` (the pixels
            whose label T2 exceeds :data:`pipeline.physics.CSF_T2_MS`: CSF is water, whose T1, T2 and PD disease does
            not move, so a change of every other tissue cannot hide in the gain; a slice with little CSF falls back to
            ``"image"``). ``"csf"`` needs labels (not :class:`SelfSupervisedLoss`) and one gain per image.
        edge_options: of the edge term, :class:`EdgeConsistencyLoss` (``contrasts``, ``protocols``,
            ``input_channels``, ``map_unit_ms``, ``detach_scale``, ``edge_eps``, ``contrast_weights``,
            ``edge_smoothing_sigma``, ``scale_window``); the intensity term synthesises the same contrasts the same way.

    ``supervised``, ``edges`` and ``intensities`` are the terms. After each call, ``last_components`` holds the
    detached ``total``, ``supervised``, ``self_supervised``, ``self_<contrast>`` terms (and ``intensity_total``,
    ``intensity_<contrast>`` with ``lambda_intensity > 0``) for logging.
    """

    def __init__(
        self,
        lambda_self: float = 0.1,
        map_weights: Sequence[float] | str = (1.0, 1.0, 1.0),
        mask_supervised: bool = False,
        lambda_intensity: float = 0.0,
        intensity_window: int = 0,
        intensity_gain: str = "image",
        **edge_options,
    ) -> None:
        super().__init__()
        if lambda_self < 0 or lambda_intensity < 0:
            raise ValueError(f"lambda_self and lambda_intensity must be >= 0, got {lambda_self}, {lambda_intensity}.")
        if intensity_gain not in INTENSITY_GAINS or (intensity_gain == "csf" and intensity_window):
            raise ValueError(
                f"intensity_gain must be one of {INTENSITY_GAINS} ('csf' with intensity_window 0), got "
                f"{intensity_gain!r} with intensity_window {intensity_window}."
            )
        self.intensity_gain = intensity_gain
        self.lambda_self, self.lambda_intensity = float(lambda_self), float(lambda_intensity)
        self.supervised = MapL1Loss(map_weights, mask_supervised)
        self.edges = EdgeConsistencyLoss(**edge_options)
        self.intensities = IntensityConsistencyLoss(**self.edges.synthesis_options(), scale_window=intensity_window)
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def needs_images(self) -> bool:
        """Whether a physics term is on, so the acquired images must be given."""
        return self.lambda_self != 0 or self.lambda_intensity != 0

    def _unpack(self, pred: torch.Tensor, target: torch.Tensor | Mapping[str, torch.Tensor]):
        if pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(f"pred must be (B, 3, H, W) maps (T1, T2, M0), got shape {tuple(pred.shape)}.")
        if isinstance(target, torch.Tensor):
            if self.needs_images:
                raise ValueError(
                    f"HybridLoss with lambda_self={self.lambda_self}, lambda_intensity={self.lambda_intensity} needs "
                    "the acquired weighted images: pass target={'label': maps, 'image': acquired images[, 'mask': "
                    "brain mask]} (pipeline.engine.PrepareMapBatch(with_acquired=True)), got a bare tensor."
                )
            target = {"label": target}
        required = ("label", "image") if self.needs_images else ("label",)
        missing = [key for key in required if key not in target]
        if missing:
            raise ValueError(f"target dict lacks key(s) {missing}; got keys {sorted(target)}.")
        label, image = target["label"], target.get("image")
        if label.shape != pred.shape:
            raise ValueError(f"label shape {tuple(label.shape)} differs from pred shape {tuple(pred.shape)}.")
        if self.needs_images:
            self.edges.check_image(pred, image)
        failed = binary_mask(target.get("label_failed"), pred)
        return label, image, binary_mask(target.get("mask"), pred), None if failed is None else 1.0 - failed

    def physics_terms(
        self, pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor | None, label: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The physics terms whose weight is not 0, by name, and their weighted sum (a 0-d tensor).

        Args:
            pred: (B, 3, H, W) positive maps in network units.
            image: (B, C, H, W) acquired weighted images.
            mask: optional 0/1 (B, 1, H, W).
            label: (B, 3, H, W) label maps in network units; ``intensity_gain="csf"`` finds the CSF in them (the
                edge term and ``"image"`` do not use them).
        """
        terms, total = {}, pred.new_zeros(())
        weighted = ((self.lambda_self, self.edges, None), (self.lambda_intensity, self.intensities, label))
        for weight, term, gain_label in weighted:
            if weight != 0:
                scale_mask = None if gain_label is None else self.gain_region(gain_label, mask)
                terms.update(term(pred, image, mask, scale_mask))
                total = total + weight * terms[term.total_name]
        return terms, total

    def gain_region(self, label: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        """The (B, 1, H, W) 0/1 pixels that fit the intensity term's gain, or None for the whole mask."""
        if self.intensity_gain == "image":
            return None
        csf = (label[:, 1:2] * self.intensities.map_unit_ms > CSF_T2_MS).to(label.dtype)
        return csf if mask is None else csf * mask

    def components(
        self, pred: torch.Tensor, target: torch.Tensor | Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """All terms (with autograd graph): ``total``, ``supervised`` and those of :meth:`physics_terms`.

        Args:
            pred: (B, 3, H, W) positive maps (T1/3 s, T2/3 s, M0).
            target: (B, 3, H, W) label maps (only without physics terms) or a dict
                ``{"label": (B, 3, H, W), "image": (B, C, H, W)[, "mask": (B, 1, H, W)]}``.
        """
        label, image, mask, valid = self._unpack(pred, target)
        supervised = self.supervised(pred, label, mask, valid)
        if not self.needs_images:
            return {"total": supervised, "supervised": supervised}
        terms, physics = self.physics_terms(pred, image, mask, label)
        return {"total": supervised + physics, "supervised": supervised, **terms}

    def forward(self, pred: torch.Tensor, target: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Total loss (scalar); see :meth:`components` for the arguments. Computed in fp32, also inside an autocast
        region (MONAI's CUDA ``amp`` puts the loss in one), a low-precision ``pred`` cast up: the signal models and edges
        need fp32's mantissa."""
        with torch.autocast(pred.device.type, enabled=False):
            terms = self.components(pred.to(torch.promote_types(pred.dtype, torch.float32)), target)
        self.last_components = {name: value.detach() for name, value in terms.items()}
        return terms["total"]


class SelfSupervisedLoss(HybridLoss):
    """The physics terms of :class:`HybridLoss` alone: ``lambda_self * EdgeConsistency(pred, image) +
    lambda_intensity * IntensityConsistency(pred, image)``.

    No labels: what adapts a trained model to a new subject's own images (:mod:`pipeline.adaptation`), with the
    protocol of that subject's scanner in ``protocols``. Arguments as :class:`HybridLoss` (the supervised options are
    unused); at least one weight must be > 0.

    ``target`` is ``{"image": (B, C, H, W)[, "mask": (B, 1, H, W)]}`` (``PrepareMapBatch(label_key=None)``).
    """

    def __init__(self, lambda_self: float = 1.0, lambda_intensity: float = 0.0, **options) -> None:
        super().__init__(lambda_self=lambda_self, lambda_intensity=lambda_intensity, **options)
        if not self.needs_images:
            raise ValueError("SelfSupervisedLoss needs lambda_self > 0 or lambda_intensity > 0, got both 0.")
        if self.intensity_gain != "image":
            raise ValueError("SelfSupervisedLoss has no labels to find the CSF: intensity_gain must be 'image'.")

    def components(self, pred: torch.Tensor, target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``total`` (the weighted physics terms) and the terms of :meth:`HybridLoss.physics_terms`."""
        if not isinstance(target, Mapping) or "image" not in target:
            raise ValueError("SelfSupervisedLoss needs target={'image': acquired images[, 'mask': brain mask]}.")
        if pred.ndim != 4 or pred.shape[1] != 3 or target["image"].shape[2:] != pred.shape[2:]:
            raise ValueError(
                f"pred must be (B, 3, H, W) maps and image (B, C, H, W) of the same H, W; got {tuple(pred.shape)} and "
                f"{tuple(target['image'].shape)}."
            )
        terms, total = self.physics_terms(pred, target["image"], binary_mask(target.get("mask"), pred))
        return {"total": total, **terms}
