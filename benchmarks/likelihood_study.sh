#!/usr/bin/env bash
# The CPU study of issue #16: SmolLM2-135M, Wanda 50%, the commonsense train files, full test sets, likelihood
# scoring. Resumable: rerun the same command and finished rows, trainings and checkpoints are kept.
#   bash benchmarks/likelihood_study.sh [WORK]        (default /tmp/likelihood_study; extra args go to both runs)
# Rows: dense (untuned, + LoRA r32) and Wanda 50% (untuned, + LoRA r32, + Shears maximal / heuristic /
# hill-climbing / minimal), every adapter with the same training budget; the hill-climbing sub-adapter is chosen
# on the validation records carved off the training data, never on a test set.
set -euo pipefail
work=${1:-/tmp/likelihood_study}
shift || true
py=${PYTHON:-.venv/bin/python}
common=(--suite commonsense --work "$work" --results "$work/commonsense_likelihood.json" --scoring likelihood
        --eval-precision bf16 --max-steps 40 --warmup-steps 4 --batch-size 16 --micro-batch-size 8 --bf16 --val-set-size 64
        --budget 12 --nsamples 64 --seqlen 512 --save-steps 10 --group-by-length)
"$py" benchmarks/accuracy_table.py "${common[@]}" --sparsities 0.5 --rows none,lora,nls "$@"
"$py" benchmarks/accuracy_table.py "${common[@]}" --sparsities 0 --rows none,lora "$@"
