"""The digital brain phantom: a simulated 3 T study built from nilearn's MNI152 2009 templates.

Real data cannot ship, so the phantom is the embedded default study and its ground truth. Modules, one
concept each:

* :mod:`~pipeline.phantom.anatomy` -- template → tissue fractions (WM, cortical / deep GM, CSF) and brain mask.
* :mod:`~pipeline.phantom.tissues` -- 3 T tissue property table (T1, T2, PD, variability, sources).
* :mod:`~pipeline.phantom.grid` -- axis-aligned RAS voxel grids.
* :mod:`~pipeline.phantom.fields` -- smooth random fields (deformation, receive bias, texture).
* :mod:`~pipeline.phantom.contrasts` -- MPRAGE / TSE / FLAIR protocols, the ideal images on :mod:`pipeline.physics`.
* :mod:`~pipeline.phantom.acquisition` -- ``ideal`` or ``realistic`` acquisition: which scanner effects act.
* :mod:`~pipeline.phantom.kspace` -- k-space line ordering of signal trains, resolution by truncation.
* :mod:`~pipeline.phantom.variety` -- anatomical variety: pose, scaling, atrophy, lesion load, unseen brains.
* :mod:`~pipeline.phantom.lesions` -- white-matter lesions: irregular blobs drawn in deep white matter.
* :mod:`~pipeline.phantom.subject_parameters` -- everything random about one subject, drawn once from its seed.
* :mod:`~pipeline.phantom.fine_anatomy` -- the realistic 0.5 mm anatomy: sharp tissue boundaries, 1 mm block means.
* :mod:`~pipeline.phantom.simulate` -- one subject: deformation, lesions, maps, weighted images, noise.
* :mod:`~pipeline.phantom.labels` -- low-resolution (thick-slab) label maps.
* :mod:`~pipeline.phantom.subject_files` -- one subject's NIfTI files and ``phantom.json``, and its manifest entry.
* :mod:`~pipeline.phantom.study` -- the subjects of a study and the decathlon manifest (:func:`generate_study`).
* :mod:`~pipeline.phantom.figure` -- PNG of one sagittal slice set.

Command line: ``python -m pipeline.phantom --out DIR [--acquisition realistic]`` (see ``--help``).
"""

from pipeline.phantom.study import DEFAULT_SNR, generate_study, study_manifest

__all__ = ["DEFAULT_SNR", "generate_study", "study_manifest"]
