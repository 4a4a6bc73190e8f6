"""Where does the self-supervised edge term point? Evaluate it at known maps, no training.

For one phantom subject (default: the validation subject) the edge term of :class:`pipeline.losses.HybridLoss`
(per contrast, mean over the brain slices) is computed for two sets of maps, the exact 1 mm truth and the 3.5 mm
labels on the 1 mm grid, against three versions of the weighted images simulated from the same subject:

* ``clean``: signals only (no receive bias, no noise): what remains is the model mismatch between the phantom's
  signal-domain partial-volume mixing and the loss's synthesis from mixed maps;
* ``bias``: with the smooth receive-bias field (the per-slice scale ``a`` cannot absorb a spatially varying gain);
* ``acquired``: bias and Rician noise, i.e. the images the network is trained with.

If the term is lower at the truth than at the labels, it pulls the network toward the truth; the size of the
truth's own term (its floor) is what the maps cannot explain and the network can only lower by copying
structure of the inputs (noise, bias) into the maps. Each ``--sigmas`` value is an ``edge_smoothing_sigma``
of the loss (Gaussian smoothing before the Sobel operator).

Usage::

    python scripts/diagnose_edge_loss.py [--section validation] [--sigmas 0 1] [--predictions NAME=DIR ...]
        [--out docs/results/cpu/edge_loss_diagnosis.csv]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import pandas as pd
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data import build_volume_dataset, ensure_study, read_manifest
from pipeline.data.normalization import ScaleByMaskedPercentiled
from pipeline.data.slices import brain_slices
from pipeline.losses import HybridLoss
from pipeline.phantom.contrasts import CONTRASTS
from pipeline.phantom.study import simulate_study_subject, subject_names
from pipeline.physics import MAP_UNIT_MS
from pipeline.engine import MAP_NAMES
from pipeline.reports.evaluation import read_ras

IMAGE_VARIANTS = {"clean": (np.inf, False), "bias": (np.inf, True), "acquired": (None, True)}
"""Name → (SNR, receive bias); SNR None: the study's."""


def simulated_images(generator: dict, subject: str, variant: str) -> np.ndarray:
    """(3, X, Y, Z) weighted images (MPRAGE, TSE, FLAIR) of ``subject`` simulated as ``variant``."""
    snr, receive_bias = IMAGE_VARIANTS[variant]
    index = subject_names(generator["n_subjects"]).index(subject)
    volumes, _ = simulate_study_subject(generator, index, snr, receive_bias)
    return np.stack([volumes.weighted[contrast] for contrast in CONTRASTS])


def edge_terms(maps: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, slices: list[int], sigma: float):
    """Mean over ``slices`` (sagittal, X) of each contrast's edge term for (3, X, Y, Z) maps and images."""
    loss = HybridLoss(lambda_self=1.0, edge_smoothing_sigma=sigma)
    with torch.no_grad():
        terms = loss.edges.per_contrast(
            maps[:, slices].movedim(1, 0), images[:, slices].movedim(1, 0), mask[:, slices].movedim(1, 0)
        )
    return {contrast: float(value) for contrast, value in terms.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", default=str(REPO / "data_manifest.json"))
    parser.add_argument("--dataset_dir", default=str(REPO / "data" / "phantom"))
    parser.add_argument("--section", default="validation")
    parser.add_argument("--sigmas", nargs="+", type=float, default=[0.0, 1.0], help="edge_smoothing_sigma values")
    parser.add_argument(
        "--predictions",
        nargs="*",
        default=[],
        metavar="NAME=DIR",
        help="also evaluate the maps a model predicted for the subject (inference output folders)",
    )
    parser.add_argument("--out", type=pathlib.Path, help="CSV to write (default: print only)")
    args = parser.parse_args(argv)

    ensure_study(args.datalist, args.dataset_dir)
    generator = read_manifest(args.datalist)["generator"]
    # the file grid (no crop): the masks and maps below are read from the files
    volumes = build_volume_dataset(args.datalist, args.dataset_dir, args.section, with_reference=True, crop_margin=None)
    volume = volumes[0]
    mask = volume["mask"].as_tensor()
    slices = brain_slices(mask, min_brain_fraction=0.1)
    normalise = ScaleByMaskedPercentiled("image", mask_key="mask")  # as the data pipeline does
    maps = {"truth (1 mm)": volume["reference"].as_tensor(), "labels (3.5 mm)": volume["label"].as_tensor()}
    for name, folder in (item.split("=", 1) for item in args.predictions):
        predicted = np.stack(
            [read_ras(pathlib.Path(folder, volume["subject"], f"{map_name}.nii.gz")) for map_name in MAP_NAMES]
        )  # T1, T2 (ms), M0: the scale-invariant term ignores its scale
        maps[name] = torch.from_numpy(predicted / np.array([MAP_UNIT_MS, MAP_UNIT_MS, 1.0]).reshape(3, 1, 1, 1))
    rows = []
    for variant in IMAGE_VARIANTS:
        images = simulated_images(generator, volume["subject"], variant)
        images = normalise({"image": torch.from_numpy(images), "mask": mask})["image"]
        if variant == "acquired":  # the same images as the files, up to their int16 rounding
            np.testing.assert_allclose(images.numpy(), volume["image"].numpy(), atol=2e-3)
        for sigma in args.sigmas:
            for maps_name, maps_volume in maps.items():
                terms = edge_terms(maps_volume.float(), images, mask, slices, sigma)
                rows.append(
                    {
                        "edge_smoothing_sigma": sigma,
                        "images": variant,
                        "maps": maps_name,
                        **terms,
                        "sum": sum(terms.values()),
                    }
                )
    table = pd.DataFrame(rows)
    print(f"{volume['subject']}, {len(slices)} sagittal slices: edge term of HybridLoss per contrast")
    print(table.round(4).to_string(index=False))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
