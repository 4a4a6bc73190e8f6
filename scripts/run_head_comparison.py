"""Heads as scanners give them: does a skull, scalp and neck around the brain change the maps?

Every training subject of the phantom is a brain alone. A clinical T1w has a head around it. This script wraps the
test subject's weighted images in the phantom's synthetic head (:func:`pipeline.phantom.head.add_synthetic_head`:
outer CSF, skull, scalp, neck; brain voxels unchanged), infers each model with the bundle's own command on three
entries, and compares their maps inside the brain:

* ``stripped``: the subject as the phantom writes it (brain alone, its mask);
* ``head``: the same brain inside its head, with the same brain mask given;
* ``head_no_mask``: inside its head without a mask (the pipeline extracts the brain from the T1w).

Per model and entry (``head*`` against ``stripped``), over the brain mask and over its interior (voxels at least
``--edge-mm`` from its surface): the median and 95th percentile of ``|map_head - map_stripped| / map_stripped`` for
T1, T2 and M0, written to ``head.csv`` (one coronal slice in ``head.png``); ``head.json`` records the command,
commit and wall time.

    python scripts/run_head_comparison.py --model default=runs/…/models/model.pt --out docs/results/head
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # run_paper_experiment's helpers

from run_paper_experiment import REPO, record
from run_response_benchmark import infer, named_paths

from pipeline.data import IMAGE_KEYS, MASK_KEY, load_datalist
from pipeline.phantom.head import add_synthetic_head

MAPS = ("t1_map", "t2_map", "m0_map")
ENTRIES = ("stripped", "head", "head_no_mask")


def write_cases(entry: dict, work: pathlib.Path, seed: int) -> dict[str, pathlib.Path]:
    """The three entries' files under ``work`` and their manifests (``testing``): ``{"masked": stripped and head,
    "unmasked": head_no_mask}``."""
    images = {key: nib.load(entry[key]) for key in IMAGE_KEYS}
    mask = np.asarray(nib.load(entry[MASK_KEY]).dataobj) > 0
    noise_sigma = json.loads((pathlib.Path(entry["t1w"]).parent / "phantom.json").read_text())["noise_sigma"]
    head = add_synthetic_head(
        {key: np.asarray(image.dataobj, dtype=np.float32) for key, image in images.items()},
        mask,
        images["t1w"].affine,
        noise_sigma,
        seed=seed,
    )
    folder = work / "head"
    folder.mkdir(parents=True, exist_ok=True)
    for key, volume in {**head.images, MASK_KEY: head.brain_mask.astype(np.uint8)}.items():
        nib.save(nib.Nifti1Image(volume, head.affine), folder / f"{key}.nii.gz")
    (work / "padding.json").write_text(json.dumps(head.padding.tolist()))
    headed = {key: str(folder / f"{key}.nii.gz") for key in (*IMAGE_KEYS, MASK_KEY)}
    masked = [
        {"subject": "stripped", **{key: entry[key] for key in (*IMAGE_KEYS, MASK_KEY)}},
        {"subject": "head", **headed},
    ]
    unmasked = [{"subject": "head_no_mask", **{key: headed[key] for key in IMAGE_KEYS}}]
    manifests = {}
    for name, cases in (("masked", masked), ("unmasked", unmasked)):  # a manifest's entries all have a mask or none
        manifests[name] = work / f"{name}.json"
        manifests[name].write_text(json.dumps({"testing": cases}, indent=2))
    return manifests


def compare(maps_dir: pathlib.Path, mask: np.ndarray, padding: np.ndarray, edge_mm: float) -> list[dict]:
    """Rows of relative map differences of each head entry against ``stripped`` (module docstring)."""
    interior = ndimage.distance_transform_edt(mask) >= edge_mm  # 1 mm voxels
    crop = tuple(slice(before, -after if after else None) for before, after in padding)
    stripped = {
        name: np.asarray(nib.load(maps_dir / "masked" / "stripped" / f"{name}.nii.gz").dataobj) for name in MAPS
    }
    rows = []
    for entry in ENTRIES[1:]:
        for name in MAPS:
            folder = maps_dir / ("unmasked" if entry == "head_no_mask" else "masked") / entry
            headed = np.asarray(nib.load(folder / f"{name}.nii.gz").dataobj)[crop]
            difference = np.abs(headed - stripped[name]) / np.maximum(np.abs(stripped[name]), 1e-6)
            for region, voxels in (("brain", mask), ("interior", interior)):
                values = difference[voxels]
                rows.append(
                    {
                        "entry": entry,
                        "map": name.split("_")[0].upper(),
                        "region": region,
                        "median_percent": 100 * float(np.median(values)),
                        "p95_percent": 100 * float(np.percentile(values, 95)),
                    }
                )
    return rows


def figure(work: pathlib.Path, models: list[str], padding: np.ndarray, path: pathlib.Path) -> None:
    """One coronal slice: the T1w with its head, then per model the T2 map of the stripped subject and its change
    with the head (%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1w = np.asarray(nib.load(work / "head" / "t1w.nii.gz").dataobj)
    y = t1w.shape[1] // 2
    crop = tuple(slice(before, -after if after else None) for before, after in padding)
    fig, axes = plt.subplots(1, 1 + 2 * len(models), figsize=(3 * (1 + 2 * len(models)), 3.4))
    axes[0].imshow(np.rot90(t1w[:, y]), cmap="gray")
    axes[0].set_title("T1w with the\nsynthetic head")
    for index, model in enumerate(models):
        maps = work / "maps" / model / "masked"
        stripped = np.asarray(nib.load(maps / "stripped" / "t2_map.nii.gz").dataobj)
        headed = np.asarray(nib.load(maps / "head" / "t2_map.nii.gz").dataobj)[crop]
        change = 100 * (headed - stripped) / np.maximum(stripped, 1e-6)
        y_map = y - padding[1][0]
        axes[1 + 2 * index].imshow(np.rot90(stripped[:, y_map]), cmap="magma", vmin=0, vmax=200)
        axes[1 + 2 * index].set_title(f"{model}\nT2 (ms), brain alone")
        shown = axes[2 + 2 * index].imshow(np.rot90(change[:, y_map]), cmap="coolwarm", vmin=-20, vmax=20)
        axes[2 + 2 * index].set_title(f"{model}\nT2 change with the head (%)")
        fig.colorbar(shown, ax=axes[2 + 2 * index], fraction=0.046)
    for axis in axes:
        axis.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH", help="a model.pt (repeatable)")
    parser.add_argument("--datalist", default=str(REPO / "data" / "phantom_realistic" / "dataset.json"))
    parser.add_argument("--section", default="testing", help="the subject: the section's first entry")
    parser.add_argument("--work", type=pathlib.Path, default=REPO / "data" / "head")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "results" / "head")
    parser.add_argument("--edge-mm", type=float, default=4.0, help="interior: this far inside the brain mask")
    parser.add_argument("--seed", type=int, default=0, help="the head's shape jitter and noise")
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()  # the manifests' paths are relative to their folder, the bundle runs elsewhere
    started = time.perf_counter()
    entry = load_datalist(args.datalist, args.section)[0]
    manifests = write_cases(entry, args.work, args.seed)
    mask = np.asarray(nib.load(entry[MASK_KEY]).dataobj) > 0
    padding = np.asarray(json.loads((args.work / "padding.json").read_text()))
    rows = []
    for name, checkpoint in named_paths(args.model, "--model"):
        maps_dir = args.work / "maps" / name
        for kind, manifest in manifests.items():
            infer(checkpoint, manifest, maps_dir / kind, args.amp)
        rows += [{"model": name, **row} for row in compare(maps_dir, mask, padding, args.edge_mm)]
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "head.csv", index=False, float_format="%.3f")
    figure(args.work, [name for name, _ in named_paths(args.model, "--model")], padding, args.out / "head.png")
    record(args.out, "head", args, started, subject=entry["subject"])
    print(table.to_string(index=False, float_format=lambda value: f"{value:.2f}"))


if __name__ == "__main__":
    main()
