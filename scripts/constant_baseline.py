"""Constant-map baseline: the floor a trained model must clearly beat.

Writes, for every subject of a manifest section, T1/T2/M0 maps that hold one value inside the brain
mask (the median of the training labels inside their masks) in the layout inference writes
(``<output_dir>/<subject>/{t1,t2,m0}_map.nii.gz``); evaluate them like any prediction set:

    python scripts/constant_baseline.py --output_dir runs/constant
    python -m monai.bundle run evaluating --config_file bundles/qmap_hybrid/configs/evaluate.json \
        --bundle_root bundles/qmap_hybrid --predictions_dir runs/constant --output_dir runs/constant_report
"""

from __future__ import annotations

import argparse
import pathlib

import nibabel as nib
import numpy as np

from pipeline.data import load_datalist
from pipeline.data.manifest import LABEL_KEYS
from pipeline.engine import MAP_NAMES

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def training_medians(datalist: str, dataset_dir: str) -> list[float]:
    """Median of each training label map (T1, T2, M0) over the training subjects' masked voxels."""
    entries = load_datalist(datalist, "training", dataset_dir)
    values = {key: [] for key in LABEL_KEYS}
    for entry in entries:
        for key in LABEL_KEYS:
            label = nib.load(entry[key]).get_fdata()
            values[key].append(label[label > 0])
    return [float(np.median(np.concatenate(values[key]))) for key in LABEL_KEYS]


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--datalist", default=str(REPOSITORY / "data_manifest.json"))
    arguments.add_argument("--dataset_dir", default=str(REPOSITORY / "data" / "phantom"))
    arguments.add_argument("--section", default="testing")
    arguments.add_argument("--output_dir", required=True)
    options = arguments.parse_args()
    medians = training_medians(options.datalist, options.dataset_dir)
    for entry in load_datalist(options.datalist, options.section, options.dataset_dir):
        t1w = nib.load(entry["t1w"])
        brain = nib.load(entry["mask"]).get_fdata() > 0
        subject_dir = pathlib.Path(options.output_dir) / entry["subject"]
        subject_dir.mkdir(parents=True, exist_ok=False)
        for name, value in zip(MAP_NAMES, medians):
            nib.save(nib.Nifti1Image((brain * value).astype(np.float32), t1w.affine), subject_dir / f"{name}.nii.gz")
    print(f"constant maps (T1, T2, M0 = {medians}) written to {options.output_dir}")


if __name__ == "__main__":
    main()
