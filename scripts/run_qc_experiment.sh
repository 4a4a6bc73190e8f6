#!/usr/bin/env bash
# QC and adaptation on the realistic phantom, from scratch (docs/results/qc/README.md):
#   1. the realistic study and the same brains imaged with another site's protocol (TSE TE 120 ms / echo spacing
#      10 ms, FLAIR TI 2000 ms), if missing;
#   2. the default hybrid model (train.json as it is) for seeds 0-2 on the realistic study, if missing;
#   3. scripts/run_qc_experiment.py: calibration, the QC cases, the adaptation (finished steps are reused).
set -euo pipefail
cd "$(dirname "$0")/.."
REALISTIC=data/phantom_realistic
SHIFTED=data/phantom_shifted
[ -f $REALISTIC/dataset.json ] || python -m pipeline.phantom --out $REALISTIC --acquisition realistic
[ -f $SHIFTED/dataset.json ] || python -m pipeline.phantom --out $SHIFTED --acquisition realistic \
  --protocol tse.te=120 --protocol tse.echo_spacing=10 --protocol flair.ti=2000
B=bundles/qmap_hybrid
for seed in 0 1 2; do
  models=runs/qc/seed$seed/models
  ls $models/*epoch=16.pt >/dev/null 2>&1 && continue                  # finished (16 epochs, train.json's)
  resume=false; ls $models/*epoch=*.pt >/dev/null 2>&1 && resume=true  # interrupted: go on from its last epoch
  python -m monai.bundle run training --meta_file $B/configs/metadata.json --logging_file $B/configs/logging.conf \
    --config_file $B/configs/train.json --bundle_root $B --datalist $REALISTIC/dataset.json --dataset_dir $REALISTIC \
    --ckpt_dir $models --log_dir runs/qc/seed$seed/logs --seed $seed --resume $resume
done
python scripts/run_qc_experiment.py --seeds 0 1 2 "$@"
