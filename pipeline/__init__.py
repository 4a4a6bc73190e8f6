"""qmap-hybrid: quantitative T1/T2/M0 maps from clinical weighted MR images.

Rooms (one concept per module, dependencies point down this list):

* :mod:`pipeline.physics`  -- protocol dataclasses and differentiable signal models.
* :mod:`pipeline.phantom`  -- the digital brain phantom built from nilearn's MNI152 maps.
* :mod:`pipeline.data`     -- manifests and MONAI transforms from NIfTI subjects to 2D slices.
* :mod:`pipeline.losses`   -- Sobel edges, scale-invariant L1 and the hybrid loss.
* :mod:`pipeline.metrics`  -- HFEN, MPE, SSIM/PSNR for maps divided by 3 s.
* :mod:`pipeline.engine`   -- what the bundle configs call that MONAI lacks.
* :mod:`pipeline.precision` -- mixed precision: the network in bf16/fp16 where the device has the units.
* :mod:`pipeline.export`   -- TorchScript / ONNX exports run in the engines (onnxruntime).
* :mod:`pipeline.sharding` -- a run's subjects split over torchrun's ranks, results gathered on rank 0.
* :mod:`pipeline.reports`  -- per-slice / per-subject CSVs, Table-2 summary, Figure-2 PNG.
"""

__version__ = "0.1.0"
