#!/usr/bin/env bash
# The main job on the embedded digital brain phantom, end to end with the bundle's own commands:
#   0. generate the realistic phantom study (python -m pipeline.phantom --acquisition realistic) if it is missing:
#      scanner effects the loss does not model and an unseen test brain (QMAP_STUDY=ideal: the ideal study of
#      data_manifest.json, imaged with the loss's own simplified equations),
#   1. train the hybrid model (train.json: the default loss setting),
#   2. train the supervised-only baseline (train_supervised.json: lambda_self = 0, everything else the same),
#   3. calibrate each model's QC on the validation subject (qc_calibration.json beside model.pt),
#   4. infer both on the test subject (maps, qc.json, report.html per subject, index.html),
#   5. evaluate both against the 1 mm reference maps: CSVs, Table-2 summary with paired t-tests, Figure-2 PNG.
# Extra arguments go to both training runs (e.g. --max_epochs 2 for a quick look).
# Outputs go to $QMAP_OUT (default runs/phantom_study); existing maps there are replaced.
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=bundles/qmap_hybrid
configs=$bundle/configs
out=${QMAP_OUT:-runs/phantom_study}
if [ "${QMAP_STUDY:-realistic}" = realistic ]; then
  [ -f data/phantom_realistic/dataset.json ] || python -m pipeline.phantom --out data/phantom_realistic --acquisition realistic
  study=(--datalist data/phantom_realistic/dataset.json --dataset_dir data/phantom_realistic)
else
  study=(--datalist data_manifest.json --dataset_dir data/phantom)
fi
run() { python -m monai.bundle run "$1" --meta_file $configs/metadata.json --logging_file $configs/logging.conf \
          --bundle_root $bundle "${study[@]}" "${@:2}"; }

run training --config_file $configs/train.json --ckpt_dir $out/hybrid/models --log_dir $out/hybrid/logs --overwrite true "$@"
run training --config_file "['$configs/train.json','$configs/train_supervised.json']" \
  --ckpt_dir $out/supervised/models --log_dir $out/supervised/logs --overwrite true "$@"
for model in hybrid supervised; do
  run calibrating --config_file "['$configs/inference.json','$configs/calibrate.json']" \
    --checkpoint $out/$model/models/model.pt --overwrite true
  run inference --config_file $configs/inference.json --checkpoint $out/$model/models/model.pt \
    --output_dir $out/$model/maps --overwrite true
done
run evaluating --config_file $configs/evaluate.json --predictions_dir $out/hybrid/maps \
  --baseline_dir $out/supervised/maps --output_dir $out/report
echo "QC reports: $out/hybrid/maps/index.html, $out/supervised/maps/index.html"
