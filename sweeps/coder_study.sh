#!/usr/bin/env bash
# The real-pair study (issue 17; results: docs/results/coder_study.md): Qwen2.5-Coder-1.5B-Instruct
# expert and 0.5B-Instruct amateur, LightReasoner vs rejection-sampling SFT vs the untuned expert.
# Every step is one Hydra command with a run_name: stop it at any moment and rerun this script
# (or the one step) to resume - sampling from its cache shards, fine-tunes from their checkpoints,
# evaluations from their per-problem records; the untuned models' rows live in the shared
# evaluation store (eval.cache), so later steps reuse them.
#   bash sweeps/coder_study.sh [STEP...]   # steps: budget untuned lightreasoner sft math500 report (default: all, in this order)
#   (bundle / restore: carry finished runs and their caches to another machine or session in a local,
#    git-ignored folder, docs/results/coder_study_records/bundle/: copy it beside the checkout yourself)
#   (lr_sample: LightReasoner's sampling alone, into the shared trace cache that `lightreasoner` then reads)
#   (efficiency: both methods' sampling and fine-tune timed side by side on this machine, on a subset)
# On a CPU, run it with the Python that has vLLM (README, "Generation engines"), e.g.
#   PYTHON=/tmp/vllm-venv/bin/python VLLM_CPU_OMP_THREADS_BIND=0-1 \
#   LD_PRELOAD="/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4:/tmp/vllm-venv/lib/libiomp5.so" bash sweeps/coder_study.sh
# Fetch the models first: ../shared/tools/fetch-offline-models
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
STEPS=${*:-budget untuned lightreasoner sft math500 report}
OUT=docs/results/coder_study
MATH="stage=evaluate eval.benchmarks=[math500] eval.max_problems=100 eval.max_new_tokens=1024"

# print a report table into FILE atomically (a killed report leaves the old file, not half a new one)
table() { local file=$1; shift; $PY -m lightreasoner.analysis.report "$@" > "$file.tmp" && mv "$file.tmp" "$file" && cat "$file"; }
COMMON="experiment=coder_study logger=csv"

for step in $STEPS; do
  case $step in
    budget)   # 0. the token budget: the base model on the first 50 problems of each benchmark at
              #    the preset's eval.max_new_tokens; the report's cut-off column must be <= 5%
      $PY train.py $COMMON stage=evaluate eval.models=[base] eval.max_problems=50 run_name=coder_study/budget ;;
    untuned)  # 1. the untuned expert and the amateur on the whole evaluation (their rows are reused below)
      $PY train.py $COMMON stage=evaluate eval.models=[base,amateur] run_name=coder_study/untuned ;;
    lr_sample)  # 2a. only the contrastive sampling of step 2 (500 problems x 128 tokens), resumable on its own
      $PY train.py $COMMON stage=sample run_name=coder_study/lr_sample ;;
    lightreasoner)  # 2. LightReasoner: contrastive sampling (500 problems x 128 tokens), fine-tune, evaluate
      $PY train.py $COMMON method=lightreasoner eval.models=[tuned,base] run_name=coder_study/lightreasoner ;;
    sft)      # 3. rejection-sampling SFT on the same problems: k=4 solutions each at T=0.7, the same LoRA and update budget
      $PY train.py $COMMON method=sft method.samples_per_problem=4 eval.models=[tuned,base] run_name=coder_study/sft ;;
    math500)  # 4. MATH500, first 100 problems at 1,024 new tokens: base + LightReasoner-tuned in one run,
              #    SFT-tuned in another (the base rows come from the shared store); needs the merged
              #    models of steps 2 and 3 (rerunning those steps rebuilds a missing merged/ from its adapter)
      $PY train.py $COMMON $MATH eval.models=[base,tuned] tuned=outputs/coder_study/lightreasoner/merged run_name=coder_study/math500_lightreasoner
      $PY train.py $COMMON $MATH eval.models=[base,tuned] tuned=outputs/coder_study/sft/merged run_name=coder_study/math500_sft ;;
    efficiency)  # the two methods' costs measured back to back on one machine (the whole runs above may have
              #    run on different CPUs): each samples the first 32 problems into a fresh cache (the models'
              #    dequantized copies and file hashes shared), then 40 updates of each fine-tune (no merge)
      EFF=outputs/coder_study/efficiency
      mkdir -p $EFF/cache
      CACHE=${LIGHTREASONER_CACHE:-$HOME/.cache/lightreasoner}
      for d in dequantized file_hashes; do mkdir -p "$CACHE/$d"; [ -e $EFF/cache/$d ] || ln -s "$CACHE/$d" $EFF/cache/$d; done
      SUB="stage=sample dataset.max_problems=32 paths.cache_dir=$PWD/$EFF/cache"
      $PY train.py $COMMON $SUB method=lightreasoner run_name=coder_study/efficiency/lightreasoner_sample32
      $PY train.py $COMMON $SUB method=sft method.samples_per_problem=4 run_name=coder_study/efficiency/sft_sample32
      FT="stage=distill trainer.max_steps=40 distill.merge=false"
      $PY train.py $COMMON $FT method=lightreasoner run_name=coder_study/efficiency/lightreasoner_finetune40
      $PY train.py $COMMON $FT method=sft method.samples_per_problem=4 run_name=coder_study/efficiency/sft_finetune40 ;;
    report)   # 5. accuracy, paired gains (tuned vs base on the same problems), SFT-tuned vs
              #    LightReasoner-tuned per problem, and the efficiency table
      $PY -m lightreasoner.analysis.report outputs/coder_study/lightreasoner outputs/coder_study/sft --out $OUT
      table $OUT/head_to_head.md --head-to-head outputs/coder_study/lightreasoner outputs/coder_study/sft
      table $OUT/efficiency.md --efficiency outputs/coder_study/lightreasoner outputs/coder_study/sft
      for r in lightreasoner sft; do   # tuned vs base per benchmark and pooled over both
        table $OUT/pooled_$r.md --head-to-head outputs/coder_study/$r outputs/coder_study/$r --models base tuned
      done
      # machine noise: the base expert of step 1 (Intel Xeon) against the same model's rows of step 2 (AMD EPYC)
      table $OUT/machine_noise.md --head-to-head docs/results/coder_study_records/untuned outputs/coder_study/lightreasoner --models base base
      # strict vs flexible scores, format rates, the format share of each gain (issue 32; docs/results/format_or_reasoning.md)
      audit=$(for r in lightreasoner sft math500_lightreasoner math500_sft; do if [ -d outputs/coder_study/$r/eval ]; then echo outputs/coder_study/$r; fi; done)
      table docs/results/format_or_reasoning/coder_study_audit.md --format-audit $audit docs/results/coder_study_records/untuned
      if [ -d outputs/coder_study/efficiency ]; then table $OUT/efficiency_side_by_side.md --efficiency outputs/coder_study/efficiency; fi
      if [ -f outputs/coder_study/math500_sft/summary.json ]; then
        $PY -m lightreasoner.analysis.report outputs/coder_study/math500_lightreasoner outputs/coder_study/math500_sft --out $OUT/math500
        table $OUT/math500/head_to_head.md --head-to-head outputs/coder_study/math500_lightreasoner outputs/coder_study/math500_sft
        for r in lightreasoner sft; do
          table $OUT/math500/tuned_vs_base_$r.md --head-to-head outputs/coder_study/math500_$r outputs/coder_study/math500_$r --models base tuned
        done
      fi ;;
    bundle)   # carry the finished runs and the caches they read (traces, SFT solutions, shared
              # evaluation rows; no checkpoints or merged weights) into a git-ignored folder
      runs=$(for r in lightreasoner sft math500_lightreasoner math500_sft; do if [ -d outputs/coder_study/$r/.hydra ]; then echo outputs/coder_study/$r; fi; done)
      $PY -m lightreasoner.run.cache_bundle export $runs --to docs/results/coder_study_records/bundle ;;
    restore)  # in a fresh session, after copying a bundle there: put it back, then rerun any step to resume from it
      $PY -m lightreasoner.run.cache_bundle import docs/results/coder_study_records/bundle ;;
    *) echo "unknown step '$step' (expected: budget untuned lr_sample lightreasoner sft math500 efficiency report bundle restore)" >&2; exit 2 ;;
  esac
done
