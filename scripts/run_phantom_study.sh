#!/usr/bin/env bash
# The main job on the embedded digital brain phantom, end to end with the bundle's own commands:
#   1. train the hybrid model (generates the phantom study from data_manifest.json if missing),
#   2. train the supervised-only baseline (lambda_self = 0, same everything else),
#   3. infer both on the test subject(s),
#   4. evaluate against the 1 mm reference maps: CSVs, Table-2 summary with paired t-tests, Figure-2 PNG.
# Extra arguments are passed to both training runs (e.g. --max_epochs 2 for a quick look).
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=bundles/qmap_hybrid
run="python -m monai.bundle run --meta_file $bundle/configs/metadata.json --logging_file $bundle/configs/logging.conf"
out=${QMAP_OUT:-runs/phantom_study}

$run training --config_file $bundle/configs/train.json --bundle_root $bundle --ckpt_dir $out/hybrid/models --log_dir $out/hybrid/logs "$@"
$run training --config_file "['$bundle/configs/train.json','$bundle/configs/train_supervised.json']" --bundle_root $bundle --ckpt_dir $out/supervised/models --log_dir $out/supervised/logs "$@"
for model in hybrid supervised; do
  $run inference --config_file $bundle/configs/inference.json --bundle_root $bundle \
    --checkpoint $out/$model/models/model.pt --output_dir $out/$model/maps --overwrite true
done
$run evaluating --config_file $bundle/configs/evaluate.json --bundle_root $bundle \
  --predictions "{'supervised': '$out/supervised/maps', 'hybrid': '$out/hybrid/maps'}" --output_dir $out/report
echo "Report: $out/report/summary.csv, $out/report/per_slice.csv, $out/report/figure.png"
