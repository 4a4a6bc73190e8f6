#!/usr/bin/env bash
# The paper experiment (cpu profile, robust loss setting) on the realistic phantom (docs/results/README.md):
#   1. generate the realistic study (python -m pipeline.phantom --acquisition realistic);
#   2. choose lambda on its validation subject (mean T1/T2 MPE over seeds 0-2; the test subject chooses nothing);
#   3. train supervised / hybrid (chosen lambda) / oracle for seeds 0-2 and evaluate them on the test subject;
#   4. one loss improvement: the T2w edge term through the EPG TSE model (self_contrasts mprage + tse_epg), same lambda.
# Trainings that are exactly the same (same configs, data, seed and overrides; lambda = 0 makes self_contrasts
# irrelevant) are not repeated: their models are copied (reuse) and only inference runs again.
# Slices are padded/cropped to 208x192: the realistic grid (175x211x186, a 14 mm margin for head pose and scaling)
# is larger than the ideal one and the default 192x160 would crop brain in training.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=data/phantom_realistic
SEARCH=runs/realistic_search
RUN=runs/realistic_experiment
EPG=runs/realistic_experiment_epg_loss
LAMBDAS=(0.03 0.1)
COMMON=(--datalist "$DATA/dataset.json" --dataset_dir "$DATA" --jobs 2)
SLICES="slice_size=[208,192]"

reuse() {  # reuse SOURCE_RUN TARGET_RUN: copy a finished training's models unless the target has its own
    if [ ! -f "$2/models/model.pt" ]; then mkdir -p "$2/models" && cp "$1"/models/*.pt "$2/models/"; fi
}

[ -f "$DATA/dataset.json" ] || python -m pipeline.phantom --out "$DATA" --acquisition realistic
python scripts/run_paper_experiment.py search --setting robust --lambdas "${LAMBDAS[@]}" --seeds 0 1 2 \
    --out "$SEARCH" "${COMMON[@]}" --set "$SLICES"
CHOSEN=$(python - "$SEARCH/search_robust.csv" <<'PY'
import sys
import pandas as pd
summary = pd.read_csv(sys.argv[1], index_col=0)
hybrids = summary[summary.index.str.contains("_lambda")]
print(hybrids["mean_T1_T2_MPE"].idxmin().rsplit("_lambda", 1)[1])
PY
)
echo "lambda chosen on the validation subject: $CHOSEN"
for seed in 0 1 2; do
    reuse "$SEARCH/runs/robust/supervised_seed$seed" "$RUN/runs/robust/supervised_seed$seed"
    reuse "$SEARCH/runs/robust/hybrid_lambda${CHOSEN}_seed$seed" "$RUN/runs/robust/hybrid_seed$seed"
done
python scripts/run_paper_experiment.py run --settings robust --seeds 0 1 2 --out "$RUN" "${COMMON[@]}" \
    --set "$SLICES" "lambda_self=$CHOSEN"
for seed in 0 1 2; do
    for model in supervised oracle; do reuse "$RUN/runs/robust/${model}_seed$seed" "$EPG/runs/robust/${model}_seed$seed"; done
done
python scripts/run_paper_experiment.py run --settings robust --seeds 0 1 2 --out "$EPG" "${COMMON[@]}" \
    --set "$SLICES" "lambda_self=$CHOSEN" "self_contrasts=['mprage','tse_epg']"
