#!/usr/bin/env bash
# The expertise-gap study on the offline demo (issue 16; results: docs/results/expertise_gap.md).
# Every step is a Hydra multirun with a run_name: rerunning this script resumes where it stopped
# (finished fine-tunes are skipped, evaluations continue from their per-problem records).
#   bash sweeps/expertise_gap.sh            # from the repository root; ~1 h on 2 quiet CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
CKPTS="demo.expert_checkpoints=[100,200,300,450]"   # the expert's own earlier checkpoints: amateurs of graded strength
VAL="eval.split=validation eval.max_problems=500 eval.models=[base,tuned,amateur] logger=none"

# 1. Screen beta x alpha for each amateur (LightReasoner, seed 0, validation split).
$PY train.py -m model_pair=demo $CKPTS $VAL selection.beta=0.1,0.4,1.0 selection.alpha=0.05,0.2 run_name=gap/screen_trained
$PY train.py -m model_pair=demo_checkpoint model_pair.amateur.name_or_path=expert_step100,expert_step300,expert_step450 \
    $CKPTS $VAL selection.beta=0.1,0.4,1.0 selection.alpha=0.05,0.2 run_name=gap/screen_ckpt

# 2. Each amateur at its best screened (beta, alpha), 3 seeds: LightReasoner for every amateur, and
#    its two ablations (random_steps, no_contrast) for the widest- and the narrowest-gap amateur.
$PY - "$CKPTS" "$VAL" <<'PYEOF'
import subprocess, sys
from lightreasoner.analysis.gap import GAP, best_per_amateur, gap_table
from lightreasoner.analysis.discovery import load_runs
ckpts, val = sys.argv[1], sys.argv[2]
runs = load_runs(["multirun/gap/screen_trained", "multirun/gap/screen_ckpt"])
best = best_per_amateur(gap_table(runs[runs.status == "finished"], ["selection.beta", "selection.alpha"]), [])
ends = {best.sort_values(GAP).iloc[0]["amateur"], best.sort_values(GAP).iloc[-1]["amateur"]}
for _, row in best.iterrows():
    name = row["amateur"]
    pair = "model_pair=demo" if name == "trained amateur" else f"model_pair=demo_checkpoint model_pair.amateur.name_or_path={name}"
    methods = "lightreasoner,random_steps,no_contrast" if name in ends else "lightreasoner"
    cmd = (f"{sys.executable} train.py -m {pair} {ckpts} {val} selection.beta={row['selection.beta']} selection.alpha={row['selection.alpha']} "
           f"method={methods} seed=0,1,2 run_name=gap/methods_{name.replace(' ', '_')}")
    print("+", cmd, flush=True)
    subprocess.run(cmd.split(), check=True)
PYEOF

# 3. The study's tables and plots (the notebook reads the runs the steps above wrote).
$PY -m lightreasoner.analysis.report multirun/gap --out docs/results/expertise_gap
