"""Fusion of prediction sets: the voxel-wise median of several models' maps of the same subjects.

The slab labels are 3.5 mm thick along S-I, so a 2D model of one slice orientation errs in its own way: an axial model
predicts each axial slice on its own (stripes along S-I in the other views), a sagittal or coronal one sees the label
blur in-plane. The median of an axial, a sagittal and a coronal model's maps keeps what two of the three agree on (the
fusion of orientations SyMTIC uses). Each input is an inference's output folder (:class:`pipeline.engine.SaveMapsd`:
``<folder>/<subject>/{t1,t2,m0}_map.nii.gz``, T1/T2 in ms, on the subject's T1w grid); the fused set has the same
layout, so every evaluation and report reads it as it reads one model's.

Command line (each folder the ``output_dir`` of one bundle inference; exit code 2 on a refused input)::

    python -m pipeline.fusion maps_axial maps_sagittal maps_coronal --output-dir maps_fused [--overwrite]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from pipeline.engine import MAP_NAMES
from pipeline.files import atomic_target

__all__ = ["fuse_prediction_sets"]


def _subjects(folder: pathlib.Path) -> set[str]:
    return {path.parent.name for path in folder.glob(f"*/{MAP_NAMES[0]}.nii.gz")}


def fuse_prediction_sets(
    folders: Sequence[str | os.PathLike], output_dir: str | os.PathLike, overwrite: bool = False
) -> pathlib.Path:
    """Write the voxel-wise median of the maps of ``folders`` to ``output_dir`` (same layout), for every subject.

    Args:
        folders: two or more prediction sets with the same subjects, each map on the same grid in every set.
        output_dir: the fused prediction set.
        overwrite: replace existing maps (otherwise :class:`FileExistsError`).

    Returns:
        ``output_dir``. Each fused map keeps the first set's NIfTI header (float32).

    Raises:
        ValueError: fewer than two sets, sets with other subjects, or a map whose grid (shape, affine) differs from
            the first set's, naming the file.
    """
    folders = [pathlib.Path(folder) for folder in folders]
    if len(folders) < 2:
        raise ValueError(f"fusion needs two or more prediction sets, got {len(folders)}.")
    subjects = _subjects(folders[0])
    if not subjects:
        raise ValueError(f"{folders[0]}: no subject folder with a {MAP_NAMES[0]}.nii.gz.")
    for folder in folders[1:]:
        if (others := _subjects(folder)) != subjects:
            raise ValueError(f"{folder}: subjects {sorted(others)} differ from {folders[0]}'s {sorted(subjects)}.")
    output_dir = pathlib.Path(output_dir)
    for subject in sorted(subjects):
        for name in MAP_NAMES:
            target = output_dir / subject / f"{name}.nii.gz"
            if target.exists() and not overwrite:
                raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
            images = [nib.load(folder / subject / f"{name}.nii.gz") for folder in folders]
            for folder, image in zip(folders[1:], images[1:]):
                if image.shape != images[0].shape:
                    problem = f"shape {image.shape} differs from {images[0].shape}"
                elif not np.allclose(image.affine, images[0].affine, atol=1e-4):
                    problem = "its affine differs"
                else:
                    continue
                raise ValueError(f"{folder / subject / f'{name}.nii.gz'}: {problem} in {folders[0] / subject}.")
            median = np.median(np.stack([np.asarray(image.dataobj, dtype=np.float32) for image in images]), axis=0)
            fused = nib.Nifti1Image(median.astype(np.float32), images[0].affine, images[0].header)
            fused.set_data_dtype(np.float32)
            with atomic_target(target, suffix=".nii.gz") as temporary:
                nib.save(fused, temporary)
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.fusion", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="prediction sets (bundle inference output_dir folders)")
    parser.add_argument("--output-dir", required=True, help="where the fused set is written")
    parser.add_argument("--overwrite", action="store_true", help="replace fused maps that exist")
    args = parser.parse_args(argv)
    try:
        output_dir = fuse_prediction_sets(args.folders, args.output_dir, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as error:
        print(f"python -m pipeline.fusion: {error}", file=sys.stderr)
        return 2
    print(
        f"wrote the median of {len(args.folders)} prediction sets of {len(_subjects(output_dir))} subject(s) to {output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
