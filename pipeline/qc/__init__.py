"""Trust without ground truth: quality control of predicted maps on subjects that have no 1 mm reference.

* :mod:`~pipeline.qc.consistency` -- do the maps re-synthesise the acquired images through the physics in force?
* :mod:`~pipeline.qc.plausibility` -- median T1/T2 per tissue class against published 3 T values.
* :mod:`~pipeline.qc.label_check` -- the prediction degraded to the geometry of low-resolution labels, against them.
* :mod:`~pipeline.qc.tissues` -- tissue classes from the T1w input.
* :mod:`~pipeline.qc.calibration` -- thresholds calibrated on validation subjects, stored beside the model.
* :mod:`~pipeline.qc.assess` -- one subject's checks as the ``qc.json`` record.
* :mod:`~pipeline.qc.report` -- the HTML report per subject and the index per run.
* :mod:`~pipeline.qc.transforms` -- the transform inference runs, the run index, the calibration step.

``python -m pipeline.qc check|calibrate`` runs the same checks on maps already on disk.
"""

from pipeline.qc.assess import assess_subject
from pipeline.qc.calibration import QCCalibration
from pipeline.qc.transforms import (
    SubjectQCd,
    calibrate_directory,
    read_reports,
    write_run_index,
)

__all__ = ["QCCalibration", "SubjectQCd", "assess_subject", "calibrate_directory", "read_reports", "write_run_index"]
