"""What the bundle configs need around MONAI's Ignite engines and MONAI lacks.

* :class:`PrepareMapBatch` -- the ``prepare_batch`` of the trainer and the evaluators. MONAI's
  ``SupervisedTrainer`` calls ``loss_function(pred, targets)`` only, but the hybrid loss also needs
  the acquired weighted images (the network input) and the brain mask: the trainer's batch therefore
  hands a dict ``{"label", "image", "mask"}`` to :class:`pipeline.losses.HybridLoss` as its target.
* :func:`map_channel_output` -- Ignite ``output_transform`` selecting one map (T1 or T2), because
  MONAI's SSIM/PSNR metrics average over channels.
* :class:`MapsToMsd` -- network units (T1, T2 in units of 3 s) back to ms.
* :class:`SaveMapsd` -- writes ``<output_dir>/<subject>/{t1,t2,m0}_map.nii.gz`` atomically in the
  geometry of the subject's T1w, never overwriting silently.
* :func:`loss_terms_output` -- what the training stats handlers log: total loss and its terms.
* :func:`slice_names` -- row names (``<subject>/slice_<n>``) for MONAI's ``MetricsSaver``.
* :func:`latest_checkpoint` -- the newest full training state, for resuming.
* :func:`remove_superseded_checkpoints` -- deletes the full training states a newer one supersedes (a resumed
  run's ``CheckpointSaver`` only knows, and removes, the files it wrote itself).
* :func:`check_new_run` -- refuses to train over an earlier run's checkpoints by accident.
* :func:`write_model_card`, :func:`trained_setting` -- ``model.json`` beside the checkpoints: the slices a model
  was trained on (orientation, neighbours stacked as channels), which inference (and QC calibration, adaptation)
  must repeat.
* :class:`NeighbourSliceInferer` -- MONAI's ``SliceInferer`` feeding each slice with its neighbours (2.5D).
* :func:`as_flag` -- a command-line override (``--resume true``) as a bool.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.handlers import from_engine
from monai.inferers import SliceInferer
from monai.transforms import LoadImage, MapTransform, ResampleToMatch
from monai.utils import convert_to_numpy, convert_to_tensor

from pipeline.data.slices import brain_only, stack_neighbour_slices
from pipeline.files import atomic_target, write_atomically
from pipeline.physics import MAP_UNIT_MS

MAP_NAMES = ("t1_map", "t2_map", "m0_map")
"""Output file stems, in the network's channel order (T1, T2, M0)."""


class PrepareMapBatch:
    """``prepare_batch`` for MONAI engines working on slice batches of :mod:`pipeline.data`.

    Args:
        label_key: batch key of the target maps (B, 3, H, W): ``"label"`` (the low-resolution labels)
            for training, ``"reference"`` to validate against 1 mm reference maps when a subject has them; None: no
            maps (the target is ``{"image", "mask"}``, for :class:`pipeline.losses.SelfSupervisedLoss`).
        with_acquired: if True the target is ``{"label": (B,3,H,W), "image": (B,3,H,W), "mask":
            (B,1,H,W)[, "label_failed": (B,1,H,W)]}`` (what :class:`pipeline.losses.HybridLoss` takes;
            ``label_failed`` with ``label_key="label"`` when the batch has it); otherwise the bare label tensor
            (what metric handlers take).
        mask_inputs: the network's input is the image masked to the brain (:func:`pipeline.data.slices.brain_only`,
            by the batch's ``input_mask`` when it has one, else its ``mask``), so that what surrounds the brain (a
            skull, a neck) cannot reach the maps; the target's ``image`` stays as acquired.
    """

    def __init__(self, label_key: str | None = "label", with_acquired: bool = True, mask_inputs: bool = False) -> None:
        self.label_key = label_key
        self.with_acquired = with_acquired
        self.mask_inputs = as_flag(mask_inputs)

    def __call__(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        def to_device(key: str) -> torch.Tensor:
            return batchdata[key].to(device=device, non_blocking=non_blocking, **kwargs)

        image = to_device("image")
        label = None if self.label_key is None else to_device(self.label_key)
        network_input = image
        if self.mask_inputs:
            mask_key = next((key for key in ("input_mask", "mask") if key in batchdata), None)
            if mask_key is None:
                raise ValueError("mask_inputs needs the batch's brain mask ('input_mask' or 'mask'); it has none.")
            network_input = brain_only(image, to_device(mask_key))
        if not self.with_acquired:
            return network_input, label
        target = {"image": image} if label is None else {"label": label, "image": image}
        # label_failed (B, 1, H, W): where the low-resolution labels are failed fits (pipeline.data.validity)
        for key in ("mask", "label_failed") if self.label_key == "label" else ("mask",):
            if key in batchdata:
                target[key] = to_device(key)
        return network_input, target


def map_channel_output(channels: int | Sequence[int], keys: Sequence[str] = ("pred", "label")):
    """Ignite ``output_transform`` giving ``([pred[channels]...], [label[channels]...])`` of decollated items.

    MONAI's SSIM/PSNR metrics average over channels, so a metric of one map selects its channel here.

    Args:
        channels: 0 for T1, 1 for T2, 2 for M0, or a sequence of them (e.g. ``[0, 1]``: a metric averaged
            over T1 and T2).
        keys: engine-output keys to read (prediction first).
    """
    read = from_engine(list(keys))
    selected = [channels] if isinstance(channels, int) else list(channels)

    def select(output):
        return tuple([item[selected] for item in items] for items in read(output))

    return select


def loss_terms_output(loss_function):
    """Ignite ``output_transform`` giving ``{"loss": total, "<term>": value, ...}`` as Python floats.

    The terms are ``loss_function.last_components`` (e.g. ``supervised``, ``self_supervised``,
    ``self_mprage``, ``self_tse`` of :class:`pipeline.losses.HybridLoss`), so stats handlers show how
    the hybrid loss splits.
    """

    def terms(output: Mapping) -> dict[str, float]:
        components = getattr(loss_function, "last_components", {})
        return {"loss": output["loss"].item(), **{name: value.item() for name, value in components.items()}}

    return terms


def slice_names(batch: Sequence[Mapping]) -> list[dict]:
    """``MetricsSaver`` ``batch_transform``: name each decollated slice item ``<subject>/slice_<n>``.

    MONAI's ``MetricsSaver`` names its per-item rows by the ``filename_or_obj`` of these dicts; a slice
    of a volume has no file of its own, so its subject and index name it.
    """
    return [{"filename_or_obj": f"{item['subject']}/slice_{int(item['slice']):03d}"} for item in batch]


class MapsToMsd(MapTransform):
    """Convert predicted maps (3, ...) from network units to physical units.

    T1 and T2 (channels 0 and 1) are multiplied by ``map_unit_ms`` (the network works in units of
    3 s, as in the paper); M0 (channel 2) stays in its normalised arbitrary units.
    """

    def __init__(self, keys: KeysCollection, map_unit_ms: float = MAP_UNIT_MS, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.map_unit_ms = map_unit_ms

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            scale = torch.tensor([self.map_unit_ms, self.map_unit_ms, 1.0], dtype=d[key].dtype, device=d[key].device)
            d[key] = d[key] * scale.reshape(-1, *([1] * (d[key].ndim - 1)))
        return d


class SaveMapsd(MapTransform):
    """Write a subject's predicted maps (3, X, Y, Z) as float32 NIfTI in the geometry of its T1w.

    Files: ``<output_dir>/<subject>/t1_map.nii.gz``, ``t2_map.nii.gz`` (ms) and ``m0_map.nii.gz``
    (a.u.). The maps lie on the model's grid (the RAS grid of ``reference_key``, whose affine they
    take); MONAI's ``ResampleToMatch`` brings them onto the grid of the T1w file named by the
    ``filename_or_obj`` meta of ``reference_key`` (a pure axis permutation/flip when only the
    orientation differs), and the T1w's affine is copied: the maps have exactly the input's shape and
    affine. Voxels outside ``mask_key`` (resampled by nearest neighbour) are set to 0. Each file is written to a temporary name in the same folder
    and renamed, so an interrupted run never leaves a truncated map. Existing maps raise
    ``FileExistsError`` unless ``overwrite`` is True.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        reference_key: str = "image",
        subject_key: str = "subject",
        mask_key: str = "mask",
        overwrite: bool = False,
    ) -> None:
        super().__init__(keys)
        self.output_dir = pathlib.Path(output_dir)
        self.reference_key, self.subject_key, self.mask_key = reference_key, subject_key, mask_key
        self.overwrite = overwrite
        self.load_reference = LoadImage(image_only=True, ensure_channel_first=True)
        self.resample = ResampleToMatch(padding_mode="zeros")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        model_grid = d[self.reference_key]
        reference_file = str(model_grid.meta["filename_or_obj"])
        subject_dir = self.output_dir / str(d[self.subject_key])
        targets = [subject_dir / f"{name}.nii.gz" for name in MAP_NAMES]
        existing = [str(t) for t in targets if t.exists()]
        if existing and not self.overwrite:
            raise FileExistsError(
                f"refusing to overwrite existing maps {existing}; pass --overwrite true to replace them."
            )
        reference = self.load_reference(reference_file)
        affine = nib.load(reference_file).affine
        mask = self._to_reference(d[self.mask_key], model_grid, reference, mode="nearest") > 0
        for key in self.key_iterator(d):
            maps = self._to_reference(d[key], model_grid, reference, mode="bilinear") * mask
            subject_dir.mkdir(parents=True, exist_ok=True)
            for channel, target in zip(maps, targets):
                _atomic_save(nib.Nifti1Image(channel, affine), target)
        return d

    def _to_reference(self, volume, model_grid, reference, mode: str) -> np.ndarray:
        """``volume`` (C, X, Y, Z) on ``model_grid``'s grid → float32 array on ``reference``'s grid."""
        array = convert_to_tensor(volume, track_meta=False).detach().cpu().float()
        source_affine = np.asarray(convert_to_numpy(model_grid.affine), dtype=np.float64)
        target_affine = np.asarray(convert_to_numpy(reference.affine), dtype=np.float64)
        pasted = paste_on_grid(array.numpy(), source_affine, target_affine, tuple(reference.shape[1:]))
        if pasted is not None:
            return pasted
        return np.asarray(self.resample(MetaTensor(array, affine=model_grid.affine), reference, mode=mode), np.float32)


def paste_on_grid(
    volume: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, int, int]
) -> np.ndarray | None:
    """``volume`` (C, X, Y, Z) copied voxel for voxel onto a grid it shares voxels with, or None if it does not.

    The model's grid is the T1w's, reoriented to RAS and cropped (or padded) to the brain's box: every model voxel is a
    voxel of the T1w file, reached by an axis permutation, flips and an integer shift. MONAI's ``ResampleToMatch``
    would interpolate the whole volume (a sampling grid of every target voxel) to the same values; this is the
    exact index copy, written by hand because no MONAI or SimpleITK function takes that shortcut. Voxels of the target
    outside ``volume`` are 0.

    Args:
        volume: (C, X, Y, Z) array on the grid of ``source_affine``.
        source_affine, target_affine: 4 x 4 voxel-to-world affines (mm).
        target_shape: spatial shape of the target grid.

    Returns:
        (C, *target_shape) float32 array, or None when the grids are not related by a signed permutation of the axes
        and an integer shift (within 1e-4 voxel): then they need a real resampling.
    """
    source_to_target = np.linalg.inv(target_affine) @ source_affine
    rotation, shift = source_to_target[:3, :3], source_to_target[:3, 3]
    signs = np.round(rotation)
    if not (np.allclose(rotation, signs, atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-4)):
        return None
    if not np.array_equal(np.abs(signs).sum(axis=0), np.ones(3)) or not np.array_equal(
        np.abs(signs).sum(1), np.ones(3)
    ):
        return None
    source_axis = np.abs(signs).argmax(axis=1)  # target axis i runs along source axis source_axis[i]
    aligned = volume.transpose(0, *(1 + source_axis))
    offsets = np.round(shift).astype(int)
    for axis in range(3):
        if signs[axis, source_axis[axis]] < 0:  # target index = offset - source index
            aligned = np.flip(aligned, axis=1 + axis)
            offsets[axis] -= aligned.shape[1 + axis] - 1
    target = np.zeros((volume.shape[0], *target_shape), dtype=np.float32)
    source_region, target_region = [slice(None)], [slice(None)]
    for offset, length, size in zip(offsets, aligned.shape[1:], target_shape):
        start, stop = max(offset, 0), min(offset + length, size)
        if start >= stop:
            return target  # no overlap: all zeros
        target_region.append(slice(start, stop))
        source_region.append(slice(start - offset, stop - offset))
    target[tuple(target_region)] = aligned[tuple(source_region)]
    return target


def _atomic_save(image: nib.Nifti1Image, target: pathlib.Path) -> None:
    """Save to a temporary file in ``target``'s folder, then rename it onto ``target``."""
    with atomic_target(target, suffix=".nii.gz") as temporary:
        nib.save(image, temporary)


CHECKPOINT_GLOB = "*checkpoint_epoch=*.pt"
"""Full training states in a ``ckpt_dir``: ``checkpoint_epoch=<N>.pt``, the name Ignite gives a checkpoint of several
objects (``checkpoint``) saved each epoch by the bundle's ``CheckpointSaver`` (``file_prefix`` ""); the leading ``*``
also finds the ``checkpoint_checkpoint_epoch=<N>.pt`` of bundle versions before 0.4.0, so their runs resume."""


def _full_state_checkpoints(ckpt_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The full training states (:data:`CHECKPOINT_GLOB`) in ``ckpt_dir``, oldest first (by modification time)."""
    return sorted(pathlib.Path(ckpt_dir).glob(CHECKPOINT_GLOB), key=lambda path: path.stat().st_mtime)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """Path of the newest full training state in ``ckpt_dir`` (for resuming).

    Raises:
        FileNotFoundError: when there is none, naming the folder.
    """
    candidates = _full_state_checkpoints(ckpt_dir)
    if not candidates:
        raise FileNotFoundError(f"no training state '{CHECKPOINT_GLOB}' to resume from in {ckpt_dir}.")
    return str(candidates[-1])


def remove_superseded_checkpoints(ckpt_dir: str | os.PathLike) -> list[str]:
    """Delete every full training state in ``ckpt_dir`` but the newest; returns the deleted paths.

    Called after the trainer's ``CheckpointSaver`` at the end of each epoch: the newest file is then the one just
    written, so nothing is deleted before its successor exists, and a resumed run (or one started over with
    ``--overwrite true``) drops the earlier run's state. ``model.pt`` and other files are never touched.
    """
    superseded = _full_state_checkpoints(ckpt_dir)[:-1]
    for path in superseded:
        path.unlink()
    return [str(path) for path in superseded]


def check_new_run(ckpt_dir: str | os.PathLike, resume: bool | str = False, overwrite: bool | str = False) -> None:
    """Refuse to start a new training run in a ``ckpt_dir`` that holds an earlier run's ``*.pt`` files.

    Raises:
        FileExistsError: naming the folder and the two ways on (``--resume true`` continues the earlier
            run; ``--overwrite true`` starts over and replaces its checkpoints).
    """
    if as_flag(resume) or as_flag(overwrite):
        return
    existing = sorted(str(path) for path in pathlib.Path(ckpt_dir).glob("*.pt"))
    if existing:
        raise FileExistsError(
            f"{ckpt_dir} already holds checkpoints of an earlier run {existing}: pass --resume true to continue "
            "it, --overwrite true to start over and replace them, or choose another --ckpt_dir."
        )


MODEL_CARD = "model.json"
"""What a model's ``ckpt_dir`` records beside its weights about how it was trained, the settings inference must
repeat: ``{"slice_axis": 0|1|2, "context_slices": k, "intensity_reference": "brain"|"csf", "network_norm": name,
"mask_inputs": bool}``."""
CARD_DEFAULTS = {"context_slices": 0, "intensity_reference": "brain", "network_norm": "instance", "mask_inputs": False}
"""The value of each setting a card lacks because it was written before the setting existed (bundle 0.8.0, 0.11.0,
0.13.0)."""
NETWORK_NORMS = {"instance": ("instance", {"affine": True}), "batch": ("batch", {}), "none": None}
"""``BasicUNet``'s ``norm`` of each ``network_norm`` name. ``instance`` (MONAI's default) normalises every feature map
of every slice by its own mean and spread, at inference too: a change of a whole tissue's intensity, which spans much
of a slice, is largely divided away. ``batch`` normalises by the batch's statistics in training and by fixed running
statistics at inference, ``none`` not at all: the network can read absolute intensity."""
SLICE_PLANES = {0: "sagittal", 1: "coronal", 2: "axial"}
"""Slice orientation of each ``slice_axis`` (the RAS axis the slices are taken along)."""


def _read_card(card: pathlib.Path) -> dict:
    return {**CARD_DEFAULTS, **json.loads(card.read_text())}


def write_model_card(
    ckpt_dir: str | os.PathLike,
    slice_axis: int,
    resume: bool | str = False,
    context_slices: int = 0,
    intensity_reference: str = "brain",
    network_norm: str = "instance",
    mask_inputs: bool | str = False,
) -> pathlib.Path:
    """Write ``<ckpt_dir>/model.json`` (:data:`MODEL_CARD`) at the start of training; returns its path.

    Raises:
        ValueError: when a resumed run's card records other settings (its checkpoints were trained on other
            slices), naming the card and the overrides that resume it.
    """
    card = pathlib.Path(ckpt_dir) / MODEL_CARD
    settings = {
        "slice_axis": int(slice_axis),
        "context_slices": int(context_slices),
        "intensity_reference": str(intensity_reference),
        "network_norm": str(network_norm),
        "mask_inputs": as_flag(mask_inputs),
    }
    if as_flag(resume) and card.is_file():
        recorded = _read_card(card)
        changed = {name: recorded[name] for name, value in settings.items() if recorded[name] != value}
        if changed:
            raise ValueError(
                f"{card}: the run being resumed was trained with {changed}, not "
                f"{ {name: settings[name] for name in changed} }; resume it with "
                + " ".join(f"--{name} {value}" for name, value in changed.items())
                + f" (slice_axis {recorded['slice_axis']}: {SLICE_PLANES[recorded['slice_axis']]})."
            )
    return write_atomically(card, json.dumps(settings, indent=2) + "\n")


def network_norm(name: str) -> tuple | None:
    """``BasicUNet``'s ``norm`` argument for a :data:`NETWORK_NORMS` name.

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in NETWORK_NORMS:
        raise ValueError(f"network_norm must be one of {list(NETWORK_NORMS)}, got {name!r}.")
    return NETWORK_NORMS[name]


def trained_setting(checkpoint: str | os.PathLike, name: str) -> int | str | bool:
    """The setting ``name`` (``slice_axis``, ``context_slices``, ``intensity_reference``, ``network_norm``,
    ``mask_inputs``) the model
    in ``checkpoint`` (``model.pt``, ``model.ts``, ``model.onnx``) was trained with, from the :data:`MODEL_CARD` in its
    folder: inference must cut the same slices, normalise the images alike and build the same network.

    Raises:
        FileNotFoundError: when the folder has no card (a model trained before bundle 0.8.0, or weights copied
            without it), naming the card and the overrides that set the training's settings by hand.
    """
    card = pathlib.Path(checkpoint).parent / MODEL_CARD
    if not card.is_file():
        raise FileNotFoundError(
            f"{card} is missing: it records the slices {checkpoint} was trained on. Copy it with the model, or pass "
            "--slice_axis 0, 1 or 2 (sagittal, coronal, axial) and --context_slices k (neighbours on either side, 0 "
            "for 2D slices), --intensity_reference brain or csf, --network_norm instance, batch or none and "
            "--mask_inputs true or false: the training's."
        )
    return _read_card(card)[name]


class NeighbourSliceInferer(SliceInferer):
    """MONAI's ``SliceInferer`` for a 2.5D network: each slice along ``spatial_dim`` goes in with its
    ``context_slices`` neighbours on either side as channels (:func:`pipeline.data.stack_neighbour_slices`, the
    training slices' stacking); with 0 it is ``SliceInferer`` itself.

    ``inputs``: (B, C, X, Y, Z) -> the network's per-slice output stacked back, (B, C_out, X, Y, Z).
    """

    def __init__(self, spatial_dim: int = 0, context_slices: int = 0, *args, **kwargs) -> None:
        super().__init__(spatial_dim, *args, **kwargs)
        self.context_slices = int(context_slices)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        stacked = stack_neighbour_slices(inputs, self.spatial_dim, self.context_slices)
        return super().__call__(stacked, network, *args, **kwargs)


def as_flag(value: bool | str | int) -> bool:
    """A boolean config value given as a bool or as command-line text (``true``/``false``, ``1``/``0``, ``yes``/``no``).

    ``python -m monai.bundle run ... --overwrite false`` hands the config the *string* ``"false"``, which
    Python would take as true; configs pass such flags through this function.
    """
    if isinstance(value, (bool, int)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "none", ""):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}.")
