"""PNG of one sagittal slice set of a phantom subject: weighted images, 1 mm truth and low-resolution labels.

``python -m pipeline.phantom.figure DATASET_JSON PNG [--subject sub-05] [--x-mm 25]``

Every panel is drawn in world millimetres (true aspect): the 3.5 mm label slabs show as the blocks the
network's labels are made of. The default plane goes through the largest lesion listed in the
subject's ``phantom.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

from pipeline.phantom.grid import VoxelGrid
from pipeline.phantom.study import HEMISPHERE_PLANES_CENTRE_MM

WEIGHTED_PANELS = (("t1w", "T1w MPRAGE"), ("t2w", "T2w TSE"), ("flair", "T2w FLAIR"))
"""Manifest key and title of the weighted-image panels."""
MAP_PANELS = (
    ("t1", "T1 (ms)", 0.0, 2500.0, "magma"),
    ("t2", "T2 (ms)", 0.0, 200.0, "viridis"),
    ("m0", "M0", 0.0, 1.1, "gray"),
)
"""Map file prefix, title, display range and colour map of the map panels."""


def _sagittal_plane(path: pathlib.Path, x_mm: float) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The (Y, Z) plane of the volume at ``path`` containing world x = ``x_mm``, and its imshow extent (mm)."""
    image = nib.load(path)
    grid = VoxelGrid(image.shape, image.affine)
    index = int(np.clip(round(grid.world_to_index(0, x_mm)), 0, image.shape[0] - 1))
    (y_mm, z_mm), (dy, dz) = grid.axes_mm()[1:], grid.spacing_mm[1:]
    extent = (y_mm[0] - dy / 2, y_mm[-1] + dy / 2, z_mm[0] - dz / 2, z_mm[-1] + dz / 2)
    return np.asarray(image.dataobj[index], dtype=np.float32), extent


def default_plane_mm(subject_dir: pathlib.Path, t1w: pathlib.Path) -> float:
    """World x of the plane through the subject's largest lesion, else of the plane nearest +25 mm."""
    image = nib.load(t1w)
    x_axis = VoxelGrid(image.shape, image.affine).axes_mm()[0]
    lesions = json.loads((subject_dir / "phantom.json").read_text())["lesions"]
    target = (
        max(lesions, key=lambda lesion: lesion["volume_mm3"])["centre_mm"][0]
        if lesions
        else HEMISPHERE_PLANES_CENTRE_MM
    )
    return float(x_axis[np.argmin(np.abs(x_axis - target))])


def save_slice_figure(
    manifest: str | os.PathLike, png: str | os.PathLike, subject: str | None = None, x_mm: float | None = None
) -> pathlib.Path:
    """Draw one sagittal slice set of a subject of a phantom study.

    Rows: T1w / T2w / FLAIR; the 1 mm reference T1 / T2 / M0 maps (if the subject has them); the
    low-resolution label maps at their true slab size.

    Args:
        manifest: the study's ``dataset.json``.
        png: output file (folders are created).
        subject: subject name; default the first testing subject.
        x_mm: world x of the sagittal plane; default :func:`default_plane_mm`.

    Returns:
        the PNG path.
    """
    manifest = pathlib.Path(manifest)
    content = json.loads(manifest.read_text())
    entries = [entry for split in ("testing", "validation", "training") for entry in content.get(split, [])]
    entry = next(entry for entry in entries if subject in (None, entry["subject"]))
    root = manifest.parent
    x_mm = default_plane_mm(root / entry["subject"], root / entry["t1w"]) if x_mm is None else x_mm

    rows = [[(key, title, None) for key, title in WEIGHTED_PANELS]]
    if "t1_ref" in entry:
        rows.append(
            [(f"{stem}_ref", f"{title}, 1 mm truth", (low, high, cmap)) for stem, title, low, high, cmap in MAP_PANELS]
        )
    rows.append([(f"{stem}_map", f"{title}, label", (low, high, cmap)) for stem, title, low, high, cmap in MAP_PANELS])

    figure, axes = plt.subplots(len(rows), 3, figsize=(13.5, 4.0 * len(rows)), squeeze=False)
    for row, panels in zip(axes, rows):
        for axis, (key, title, display) in zip(row, panels):
            plane, extent = _sagittal_plane(root / entry[key], x_mm)
            if display is None:  # weighted image: grey, robust window
                low, high, cmap = 0.0, float(np.percentile(plane, 99.5)), "gray"
            else:
                low, high, cmap = display
            shown = axis.imshow(
                plane.T, origin="lower", extent=extent, cmap=cmap, vmin=low, vmax=high, interpolation="nearest"
            )
            axis.set_title(title)
            axis.set_xlabel("y (mm, anterior →)")
            axis.set_ylabel("z (mm, superior ↑)")
            if display is not None:
                figure.colorbar(shown, ax=axis, fraction=0.04)
    generator = content.get("generator", {})
    figure.suptitle(
        f"Phantom {entry['subject']}, sagittal plane x = {x_mm:+.0f} mm (SNR {generator.get('snr')}, "
        f"labels {generator.get('slab_thickness_mm')} mm slabs)"
    )
    figure.tight_layout()
    png = pathlib.Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.phantom.figure", description="Draw one sagittal slice set of a phantom subject."
    )
    parser.add_argument("manifest", help="the study's dataset.json")
    parser.add_argument("png", help="output PNG")
    parser.add_argument("--subject", default=None, help="subject (default: the first testing subject)")
    parser.add_argument("--x-mm", type=float, default=None, help="world x of the sagittal plane")
    args = parser.parse_args(argv)
    print(f"wrote {save_slice_figure(args.manifest, args.png, args.subject, args.x_mm)}")


if __name__ == "__main__":
    main()
