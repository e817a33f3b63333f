#!/usr/bin/env bash
# The real-pair study (issue 17; results: docs/results/coder_study.md): Qwen2.5-Coder-1.5B-Instruct
# expert and 0.5B-Instruct amateur, LightReasoner vs rejection-sampling SFT vs the untuned expert.
# Every step is one Hydra command with a run_name: stop it at any moment and rerun this script
# (or the one step) to resume - sampling from its cache shards, fine-tunes from their checkpoints,
# evaluations from their per-problem records; the untuned models' rows live in the shared
# evaluation store (eval.cache), so later steps reuse them.
#   bash sweeps/coder_study.sh [STEP...]        # steps: budget untuned methods report (default: all)
# On a CPU, run it with the Python that has vLLM (README, "Generation engines"), e.g.
#   PYTHON=/tmp/vllm-venv/bin/python VLLM_CPU_OMP_THREADS_BIND=0-1 \
#   LD_PRELOAD="/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/tmp/vllm-venv/lib/libiomp5.so" bash sweeps/coder_study.sh
# Fetch the models first: ../shared/tools/fetch-offline-models
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
STEPS=${*:-budget untuned methods report}
COMMON="experiment=coder_study logger=csv"

for step in $STEPS; do
  case $step in
    budget)   # 0. the token budget: the base model on the first 50 problems of each benchmark at
              #    the preset's eval.max_new_tokens; the report's cut-off column must be <= 5%
      $PY train.py $COMMON stage=evaluate eval.models=[base] eval.max_problems=50 run_name=coder_study/budget ;;
    untuned)  # 1. the untuned expert and the amateur on the whole evaluation (their rows are reused below)
      $PY train.py $COMMON stage=evaluate eval.models=[base,amateur] run_name=coder_study/untuned ;;
    methods)  # 2. LightReasoner and SFT: sample, fine-tune with the same LoRA and update budget, evaluate
      $PY train.py -m $COMMON method=lightreasoner,sft run_name=coder_study/methods ;;
    report)   # 3. accuracy, paired gains and the efficiency table
      $PY -m lightreasoner.report multirun/coder_study/methods --out docs/results/coder_study ;;
    *) echo "unknown step '$step' (expected: budget untuned methods report)" >&2; exit 2 ;;
  esac
done
