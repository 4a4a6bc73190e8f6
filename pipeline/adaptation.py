"""Adaptation of a trained model to a new subject's own images: the physics terms only, kept if it helps.

A model trained on one site's protocol sees another site's images as a shifted input (another TE darkens the T2w
TSE, another TI changes FLAIR) and writes wrong maps without a word (:mod:`pipeline.qc` flags them). The physics
that the hybrid loss uses knows the new protocol: with the subject's own protocol in force, fine-tuning on the
subject's own slices with :class:`pipeline.losses.SelfSupervisedLoss` (no labels) pulls the maps towards ones
that re-synthesise what this scanner acquired: their edges (``lambda_self``) and, with ``lambda_intensity > 0``, the
contrast between tissues under one gain per image, which is what a changed tissue value changes.

Per subject (:class:`SubjectAdaptation`): the trained weights are loaded, the maps predicted and judged by the QC of
the inference postprocessing (:meth:`pipeline.qc.SubjectQCd.assess`: the self-consistency ``residual``, averaged
over the contrasts, and the number of flags); ``steps`` iterations of MONAI's ``SupervisedTrainer`` on random crops of
the subject's slices follow; the maps are predicted and judged again, and the adapted weights are kept only if the
residual fell **and** the QC raises no more flags than before. The second condition matters: the edge term can be
lowered by maps that fit the images better than the exact maps do (the signal models are simpler than the scanner),
which drifts T2 away (a long, fast run on the phantom fitted the images best with white-matter T2 at 120 ms, which
the plausibility and label checks flag). A run that drifts or diverges falls back to the trained model; ``keep="always"``
keeps the adapted weights whenever their maps are finite (the plausibility ranges are healthy adults', so they also
refuse a real change of tissue: a benchmark of the maps' response uses it). The kept
maps go through the inference postprocessing (maps written, QC), and ``<output_dir>/<subject>/adaptation.json``
records the figures, the decision and the settings (and, where the subject has 1 mm references, the metrics of both
the trained and the adapted maps, kept or not).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from pipeline.data.slices import SliceDataset
from pipeline.engine import PrepareMapBatch
from pipeline.files import write_atomically
from pipeline.physics import MAP_UNIT_MS
from pipeline.precision import AutocastInferer, needs_grad_scaler
from pipeline.qc.transforms import SubjectQCd

ADAPTATION_FILE = "adaptation.json"
KEEP_RULES = ("judged", "always")
"""When :class:`SubjectAdaptation` keeps the adapted weights: when the QC judges them better, or always."""


def load_weights(network: torch.nn.Module, checkpoint: str | os.PathLike, device: torch.device | str = "cpu") -> None:
    """Load a bundle checkpoint (``model.pt``: the network's state dict, or a dict holding it under ``"model"``)."""
    state = torch.load(checkpoint, map_location=device, weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, Mapping) else state)


class SubjectAdaptation:
    """Adapt the trained network to each subject of a dataset in turn (module docstring) and write the kept maps.

    Args:
        network: the bundle's network (softplus output, network units).
        checkpoint: the trained weights every subject starts from.
        dataset: processed volumes (``image`` (3, X, Y, Z) ``MetaTensor``, ``mask`` (1, X, Y, Z), ``subject``), e.g.
            the inference config's ``dataset``.
        inferer: predicts a volume's maps from a (1, 3, X, Y, Z) image batch (the inference config's
            :class:`~pipeline.engine.NeighbourSliceInferer`).
        postprocessing: applied to ``{"pred", "image", "mask", "subject"}`` of the kept maps (the inference config's:
            masking, ms, writing, QC).
        qc: the QC that judges the maps (the :class:`~pipeline.qc.SubjectQCd` of ``postprocessing``, with the
            subject's protocol and the model's calibration).
        loss: the self-supervised loss with the subject's protocol (:class:`pipeline.losses.SelfSupervisedLoss`).
        output_dir: where ``<subject>/adaptation.json`` goes (the maps' folder).
        steps, learning_rate, batch_size: the fine-tuning: Adam, this many iterations of this many slices.
        slice_axis, min_brain_fraction, slice_transforms, context_slices: the training slices (as the training config's;
            random crops).
        mask_inputs: the model's input is masked to the brain (its card's ``mask_inputs``), in prediction and
            fine-tuning alike (:class:`~pipeline.engine.PrepareMapBatch`).
        map_unit_ms: ms per network unit of T1 and T2.
        device: where the network runs.
        autocast_dtype: the fine-tuning network's precision (:func:`pipeline.precision.autocast_dtype`; None: fp32).
            Prediction runs in ``inferer``'s.
        overwrite: replace an existing ``adaptation.json`` (otherwise ``FileExistsError``).
        keep: ``"judged"``: the adapted weights only if the QC judges them better (module docstring); ``"always"``: the
            adapted weights whatever the QC says (the record still holds both judgements), to measure what adaptation
            does where the QC's healthy ranges would refuse a real change.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoint: str | os.PathLike,
        dataset: Sequence[Mapping],
        inferer: Callable,
        postprocessing: Callable,
        qc: SubjectQCd,
        loss: torch.nn.Module,
        output_dir: str | os.PathLike,
        steps: int = 100,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        slice_axis: int = 2,
        min_brain_fraction: float = 0.05,
        slice_transforms: Sequence[Callable] | None = None,
        context_slices: int = 0,
        mask_inputs: bool = False,
        map_unit_ms: float = MAP_UNIT_MS,
        device: torch.device | str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        overwrite: bool = False,
        keep: str = "judged",
    ) -> None:
        if keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {KEEP_RULES}, got {keep!r}.")
        if steps < 1 or learning_rate <= 0:
            raise ValueError(f"adaptation needs steps >= 1 and learning_rate > 0, got {steps} and {learning_rate}.")
        self.network, self.checkpoint, self.dataset = network, checkpoint, dataset
        if not isinstance(qc, SubjectQCd):
            raise TypeError(f"adaptation needs the QC (a pipeline.qc.SubjectQCd) to judge the maps, got {qc!r}.")
        self.inferer, self.postprocessing, self.qc, self.loss = inferer, postprocessing, qc, loss
        self.output_dir = pathlib.Path(output_dir)
        self.steps, self.learning_rate, self.batch_size = int(steps), float(learning_rate), int(batch_size)
        self.slice_axis, self.min_brain_fraction, self.slice_transforms = (
            slice_axis,
            min_brain_fraction,
            slice_transforms,
        )
        self.context_slices, self.mask_inputs = context_slices, mask_inputs
        self.prepare_input = PrepareMapBatch(label_key=None, with_acquired=False, mask_inputs=mask_inputs)
        self.prepare_slices = PrepareMapBatch(label_key=None, mask_inputs=mask_inputs)
        self.map_unit_ms, self.device, self.overwrite = float(map_unit_ms), torch.device(device), overwrite
        self.autocast_dtype, self.keep = autocast_dtype, keep
        self.logger = logging.getLogger(__name__)

    def predict(self, volume: Mapping) -> torch.Tensor:
        """The network's maps (3, X, Y, Z) in network units, 0 outside the mask, on the CPU."""
        self.network.eval()
        with torch.no_grad():
            batch = {key: torch.as_tensor(volume[key])[None] for key in ("image", "mask")}
            inputs, _ = self.prepare_input(batch, self.device)
            pred = self.inferer(inputs, self.network)[0].cpu()
        return pred * torch.as_tensor(volume["mask"]).to(pred)

    def judge(self, pred: torch.Tensor, volume: Mapping) -> tuple[float, dict]:
        """The QC's mean self-consistency residual over its contrasts, and its record, of network-unit maps
        (3, X, Y, Z)."""
        scale = torch.tensor([self.map_unit_ms, self.map_unit_ms, 1.0]).reshape(3, 1, 1, 1)
        qc, _ = self.qc.assess({**volume, "pred": pred * scale})
        return float(np.mean([figures["residual"] for figures in qc["self_consistency"].values()])), qc

    def fine_tune(self, volume: Mapping) -> None:
        """``steps`` iterations of the self-supervised loss on random crops of ``volume``'s slices."""
        slices = SliceDataset(
            [volume],
            self.slice_axis,
            self.min_brain_fraction,
            self.slice_transforms,
            self.context_slices,
            self.mask_inputs,
        )
        loader = DataLoader(slices, batch_size=self.batch_size, shuffle=True, num_workers=0)
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=math.ceil(self.steps / len(loader)),
            train_data_loader=loader,
            network=self.network,
            optimizer=torch.optim.Adam(self.network.parameters(), lr=self.learning_rate),
            loss_function=self.loss,
            prepare_batch=self.prepare_slices,
            inferer=AutocastInferer(self.autocast_dtype),
            amp=needs_grad_scaler(self.autocast_dtype),
            decollate=False,
        )
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=self.steps), lambda engine: engine.terminate())
        trainer.run()

    def adapt(self, volume: Mapping) -> dict:
        """Adapt to one subject, write its kept maps (postprocessing) and ``adaptation.json``; returns the record."""
        subject = str(volume["subject"])
        record_path = self.output_dir / subject / ADAPTATION_FILE
        if record_path.exists() and not self.overwrite:
            raise FileExistsError(f"refusing to overwrite {record_path}; pass --overwrite true.")
        load_weights(self.network, self.checkpoint, self.device)
        trained_state = copy.deepcopy(self.network.state_dict())
        before = self.predict(volume)
        score_before, qc_before = self.judge(before, volume)
        self.fine_tune(volume)
        after = self.predict(volume)
        score_after, qc_after = self.judge(after, volume)
        judged_better = bool(
            score_after < score_before and len(qc_after["flags"]) <= len(qc_before["flags"])
        )  # NaN: no
        kept = judged_better or (self.keep == "always" and math.isfinite(score_after))
        if not kept:
            self.network.load_state_dict(trained_state)
        self.postprocessing({**volume, "pred": after if kept else before})
        record = {
            "subject": subject,
            "checkpoint": str(self.checkpoint),
            "kept": kept,
            "judged_better": judged_better,
            "keep": self.keep,
            "score_before": score_before,
            "score_after": score_after,
            "flags_before": [flag["message"] for flag in qc_before["flags"]],
            "flags_after": [flag["message"] for flag in qc_after["flags"]],
            "metrics_before": qc_before["metrics"],
            "metrics_after": qc_after["metrics"],
            "steps": self.steps,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "lambda_self": self.loss.lambda_self,
            "lambda_intensity": self.loss.lambda_intensity,
            "protocols": {contrast: protocol.to_dict() for contrast, protocol in self.loss.edges.protocols.items()},
        }
        write_atomically(record_path, json.dumps(record, indent=2) + "\n")
        self.logger.info(
            f"{subject}: self-consistency residual {score_before:.4f} -> {score_after:.4f}, QC flags "
            f"{len(qc_before['flags'])} -> {len(qc_after['flags'])} after {self.steps} steps: "
            f"{'adapted model kept' if kept else 'trained model kept'}"
        )
        return record

    def run(self) -> list[dict]:
        """:meth:`adapt` every subject of the dataset; returns their records."""
        return [self.adapt(volume) for volume in self.dataset]
