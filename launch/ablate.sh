#!/usr/bin/env bash
# The masking-strategy ablation sweep: every variant of a sweep file (format: configs/ablations/
# sweep.yaml) trained one after another into $OUT/<variant>/seed<k>/, then the comparison $OUT/summary.md.
#
#   launch/ablate.sh [SWEEP] [section.key=value ...]     overrides apply to every variant
#
# OUT (default runs/ablate), SEEDS (default 1: seeds per variant), NPROC_PER_NODE (default 1: processes
# per run, torchrun when > 1).
# Re-running the same command continues the sweep: finished variants are skipped and an interrupted
# one resumes from its checkpoint. On Slurm (one node per sweep; a requeued job picks up where it
# stopped, a SIGTERM makes the running variant save a checkpoint first):
#   sbatch --nodes=1 --gpus-per-node=8 --signal=B:TERM@120 --requeue \
#          --wrap "NPROC_PER_NODE=8 launch/ablate.sh configs/ablations/sweep.yaml"
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP=${1:-configs/ablations/sweep.yaml}
shift $(( $# > 0 ? 1 : 0 ))
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m pretrain ablate --sweep "$SWEEP" --out "${OUT:-runs/ablate}" \
    --seeds "${SEEDS:-1}" --nproc "${NPROC_PER_NODE:-1}" "$@"
